//! Configuration: `airlock.toml`, every key overridable by an `AIRLOCK_*` environment variable
//! (`AIRLOCK_LISTEN`, `AIRLOCK_LIMITS__MAX_BODY_BYTES`, …: `__` separates nested keys).
//!
//! Why one file: the whole configuration surface (every table, its defaults and its checks) in one
//! place, as `airlock.toml` is one file.
//!
//! The overlay is a few lines over `toml::Value` rather than a layered-config crate: the
//! mapping is one rule and the set of keys is closed (`deny_unknown_fields`).

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the gateway listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Directory holding keys and (by default) the database.
    pub state_dir: PathBuf,
    /// Database.
    #[serde(default)]
    pub store: StoreConfig,
    /// Signing keys.
    #[serde(default)]
    pub keys: KeysConfig,
    /// Timeouts and sizes.
    #[serde(default)]
    pub limits: crate::proxy::Limits,
    /// Token lifetimes.
    #[serde(default)]
    pub tokens: TokensConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Secret caching.
    #[serde(default)]
    pub secrets: SecretsConfig,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Rotation policy.
    #[serde(default)]
    pub rotation: RotationConfig,
    /// Budget enforcement.
    #[serde(default)]
    pub budgets: BudgetsConfig,
    /// `[anomaly]`: spikes and first sights per credential and identity.
    #[serde(default)]
    pub anomaly: crate::alarms::AnomalyConfig,
    /// `[otel]`: OpenTelemetry traces (off unless `endpoint` is set).
    #[serde(default)]
    pub otel: OtelConfig,
    /// Token exchange (`POST /v1/token/exchange`) timing.
    #[serde(default)]
    pub oidc: crate::oidc::OidcConfig,
    /// Trust policies: which workload identity tokens are exchanged for which airlock tokens
    /// (`[[trust]]` tables; more can be added through the admin API).
    #[serde(default)]
    pub trust: Vec<crate::oidc::TrustPolicy>,
    /// Prices per model pattern, in US dollars per million tokens, for spend in the audit log
    /// and the inventory: `[pricing."gpt-4o-mini"] input = 0.15, output = 0.60`.
    #[serde(default)]
    pub pricing: std::collections::BTreeMap<String, Price>,
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// `closed` (default): a request whose record cannot be written is refused. `open`: it is
    /// served, counted in `airlock_audit_unrecorded_total` and logged as a warning.
    pub on_failure: String,
    /// Sign a checkpoint after this many records…
    pub checkpoint_every: i64,
    /// …or after this many seconds with unsigned records, whichever comes first.
    pub checkpoint_interval_secs: u64,
    /// Also append every checkpoint (one JSON line) to this file, kept away from the database,
    /// so that a rewrite of the whole database is caught too.
    pub checkpoint_file: Option<PathBuf>,
    /// Set by `serve --accept-unsigned-tail` only (never from the file): sign an unusual
    /// unsigned tail found at start.
    #[serde(skip)]
    pub accept_unsigned_tail: bool,
    /// Id of the audit signing key (`audit-<id>.key` in the key directory).
    pub key_id: i64,
    /// Refusals without a valid token are audited up to this many per second; the rest are
    /// counted (`airlock_unauthenticated_total`) so that junk traffic cannot flood the log.
    pub anonymous_per_sec: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            on_failure: "closed".into(),
            checkpoint_every: 1000,
            checkpoint_interval_secs: 10,
            checkpoint_file: None,
            accept_unsigned_tail: false,
            key_id: 1,
            anonymous_per_sec: 20,
        }
    }
}

impl AuditConfig {
    /// Whether requests are served when their record cannot be written.
    pub fn fail_open(&self) -> Result<bool, String> {
        match self.on_failure.as_str() {
            "closed" => Ok(false),
            "open" => Ok(true),
            other => Err(format!(
                "audit.on_failure = \"{other}\": use \"closed\" (refuse unaudited requests) or \"open\""
            )),
        }
    }
}

/// `[budgets]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetsConfig {
    /// Output tokens reserved for a request that sets no `max_tokens` (or
    /// `max_completion_tokens`, `max_output_tokens`).
    pub default_max_output_tokens: i64,
}

impl Default for BudgetsConfig {
    fn default() -> Self {
        BudgetsConfig {
            default_max_output_tokens: 4096,
        }
    }
}

/// `[otel]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtelConfig {
    /// OTLP/HTTP base URL of the collector (spans go to `{endpoint}/v1/traces`, JSON); traces
    /// are off when unset.
    pub endpoint: Option<String>,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Put the prompt (`messages`, `input`, `prompt`, `system`; 16 KiB at most) into each span
    /// as `gen_ai.input.messages`. Off: prompts are private by default.
    pub capture_prompts: bool,
    /// Timeout of one export request, seconds.
    pub timeout_secs: f64,
}

impl Default for OtelConfig {
    fn default() -> Self {
        OtelConfig {
            endpoint: None,
            service_name: "airlock".into(),
            capture_prompts: false,
            timeout_secs: 10.0,
        }
    }
}

/// `[rotation]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RotationConfig {
    /// A credential whose key is older than this is flagged as overdue in the inventory.
    pub max_age_days: u32,
    /// After a promotion, how long requests already under way may still finish with the old
    /// key: `credential verify --old` counts uses of the old key after promotion + this.
    pub grace_secs: u64,
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            max_age_days: 90,
            grace_secs: 60,
        }
    }
}

/// A model's price, US dollars per million tokens.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Per million input tokens.
    pub input: f64,
    /// Per million output tokens.
    pub output: f64,
    /// Per million input tokens served from the provider's cache (default: `input`).
    #[serde(default)]
    pub cached_input: Option<f64>,
}

/// `[store]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite:///path/airlock.db`; default `STATE_DIR/airlock.db`.
    pub url: Option<String>,
    /// `full` (default): a commit, and so every audit record a response waits for, is synced
    /// to disk and survives a power loss. `normal`: survives a crash of airlock but not of the
    /// machine; fewer disk syncs.
    pub synchronous: Option<String>,
}

impl StoreConfig {
    /// The commit mode.
    pub fn sync(&self) -> Result<airlock_store::SyncMode, String> {
        match self.synchronous.as_deref() {
            None | Some("full") => Ok(airlock_store::SyncMode::Full),
            Some("normal") => Ok(airlock_store::SyncMode::Normal),
            Some(other) => Err(format!(
                "store.synchronous = \"{other}\": use \"full\" (sync every commit) or \"normal\""
            )),
        }
    }
}

/// `[keys]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// Key directory; default `STATE_DIR/keys`.
    pub dir: Option<PathBuf>,
    /// Id of the root key that signs new tokens.
    pub root_key_id: u32,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            dir: None,
            root_key_id: 1,
        }
    }
}

/// `[tokens]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// Lifetime of a token minted without `--ttl`.
    pub default_ttl: String,
    /// Longest lifetime the server mints (at most 24h).
    pub max_ttl: String,
    /// Verified tokens kept in the cache.
    pub cache_capacity: usize,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            default_ttl: "1h".into(),
            max_ttl: "24h".into(),
            cache_capacity: 100_000,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace` or a tracing filter.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// `[secrets]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// How often a `file:` reference is checked for a change (milliseconds).
    pub file_check_ms: u64,
    /// When set, `file:` references must point inside one of these directories. Files under
    /// the state and key directories are always refused.
    pub file_roots: Vec<PathBuf>,
    /// How long a key read from a remote store (`vault://`, `aws-sm://`, `exec:`, `sealed:`)
    /// is used before it is read again; refreshed in the background ahead of that.
    pub refresh_secs: f64,
    /// How long after its last good read a key is still served while its store is down;
    /// after that, requests needing it get a 503. At least `refresh_secs`.
    pub max_stale_secs: f64,
    /// Longest a store may take to answer one read.
    pub timeout_secs: f64,
    /// Longest an `exec:` command may run.
    pub exec_timeout_secs: f64,
    /// Commands `exec:` references may run, each an absolute program path with its fixed
    /// leading arguments, e.g. `"/usr/local/bin/op read"`; a reference is one of them plus at
    /// most one more argument, which may not start with `-` (empty: `exec:` is off). Whoever
    /// may add a credential chooses that argument: list only commands that print one secret.
    pub exec_allow: Vec<String>,
    /// Variables passed to `exec:` commands besides PATH, HOME, USER, LOGNAME, LANG, LC_ALL,
    /// TMPDIR and TZ (e.g. `OP_SERVICE_ACCOUNT_TOKEN`); `AIRLOCK_*`, `VAULT_*`, `BAO_*` and
    /// `AWS_*` never are.
    pub exec_env: Vec<String>,
    /// The key-encryption key for `sealed:` secrets: `transit://KEY`, `aws-kms://KEY_ID` or
    /// `keyfile:/path`.
    pub kek: Option<String>,
    /// `[secrets.vault]`
    pub vault: airlock_secretstore::vault::VaultConfig,
    /// `[secrets.aws]`
    pub aws: airlock_secretstore::aws::AwsConfig,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        SecretsConfig {
            file_check_ms: 1000,
            file_roots: Vec::new(),
            refresh_secs: 300.0,
            max_stale_secs: 3600.0,
            timeout_secs: 5.0,
            exec_timeout_secs: 10.0,
            exec_allow: Vec::new(),
            exec_env: Vec::new(),
            kek: None,
            vault: Default::default(),
            aws: Default::default(),
        }
    }
}

impl SecretsConfig {
    /// The cache's timing, checked.
    pub fn cache_policy(&self) -> Result<airlock_secretstore::CachePolicy, String> {
        let d = |v: f64, what: &str| {
            if v.is_finite() && v > 0.0 && v < 1e9 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(format!(
                    "[secrets] {what} must be a positive number of seconds"
                ))
            }
        };
        let ttl = d(self.refresh_secs, "refresh_secs")?;
        let max_stale = d(self.max_stale_secs, "max_stale_secs")?;
        if max_stale < ttl {
            return Err("[secrets] max_stale_secs must be at least refresh_secs".into());
        }
        Ok(airlock_secretstore::CachePolicy {
            ttl,
            max_stale,
            file_check: Duration::from_millis(self.file_check_ms.max(1)),
            retry_min: Duration::from_millis(500).min(ttl),
            test_changes: true,
        })
    }
}

fn default_listen() -> String {
    "127.0.0.1:8400".into()
}

const TOP_KEYS: &[&str] = &[
    "listen",
    "state_dir",
    "store",
    "keys",
    "limits",
    "tokens",
    "log",
    "secrets",
    "audit",
    "rotation",
    "oidc",
    "budgets",
    "pricing",
    "anomaly",
    "otel",
];

impl Config {
    /// Reads a file and applies `AIRLOCK_*` overrides from `env`.
    pub fn load(path: &Path, env: impl Iterator<Item = (String, String)>) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text, env).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses TOML text and applies overrides.
    pub fn parse(text: &str, env: impl Iterator<Item = (String, String)>) -> Result<Self, String> {
        let mut v: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        for (k, val) in env {
            let Some(rest) = k.strip_prefix("AIRLOCK_") else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            if !TOP_KEYS.contains(&path[0].as_str()) {
                continue;
            }
            let parsed = toml::from_str::<toml::Table>(&format!("x = {val}"))
                .ok()
                .and_then(|mut t| t.remove("x"))
                .unwrap_or(toml::Value::String(val.clone()));
            let mut table = &mut v;
            for seg in &path[..path.len() - 1] {
                let entry = table
                    .entry(seg.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                table = entry
                    .as_table_mut()
                    .ok_or_else(|| format!("{k}: `{seg}` is not a table"))?;
            }
            if let Some(last) = path.last() {
                table.insert(last.clone(), parsed);
            }
        }
        let c: Config = toml::Value::Table(v)
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), String> {
        self.listen.parse::<std::net::SocketAddr>().map_err(|_| {
            format!(
                "listen = {:?} is not an address like 127.0.0.1:8400",
                self.listen
            )
        })?;
        let d = self.default_ttl()?;
        let m = self.max_ttl()?;
        if m > airlock_token::MAX_TTL || d > m {
            return Err("tokens: default_ttl <= max_ttl <= 24h".into());
        }
        self.audit.fail_open()?;
        self.store.sync()?;
        self.secrets.cache_policy()?;
        for (v, what) in [
            (self.secrets.timeout_secs, "timeout_secs"),
            (self.secrets.exec_timeout_secs, "exec_timeout_secs"),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 600.0) {
                return Err(format!(
                    "[secrets] {what} must be between 0 and 600 seconds"
                ));
            }
        }
        airlock_secretstore::exec::ExecPolicy::parse_allow(&self.secrets.exec_allow)
            .map_err(|e| format!("[secrets] exec_allow: {e}"))?;
        if let Some(v) = self.secrets.exec_env.iter().find(|v| {
            airlock_secrets::RESERVED_ENV_PREFIXES
                .iter()
                .any(|p| v.to_ascii_uppercase().starts_with(p))
        }) {
            return Err(format!(
                "[secrets] exec_env: {v} configures airlock or a secret store and is never passed to a command"
            ));
        }
        if let Some(k) = self.secrets.kek.as_deref().filter(|k| !k.is_empty()) {
            airlock_secretstore::sealed::Kek::parse(k)
                .map_err(|e| format!("[secrets] kek: {e}"))?;
        }
        if self.audit.checkpoint_every < 1 || self.audit.checkpoint_interval_secs < 1 {
            return Err(
                "audit: checkpoint_every and checkpoint_interval_secs must be at least 1".into(),
            );
        }
        self.prices()?;
        self.anomaly.settings()?;
        if let Some(ep) = self.otel.endpoint.as_deref() {
            let uri: http::Uri = ep
                .parse()
                .map_err(|_| format!("[otel] endpoint `{ep}` is not a URL"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https"))
                || uri.host().is_none()
                || uri.query().is_some()
            {
                return Err(format!(
                    "[otel] endpoint `{ep}` must be an http(s) base URL such as http://127.0.0.1:4318 (spans go to its /v1/traces)"
                ));
            }
        }
        if !(self.otel.timeout_secs.is_finite()
            && self.otel.timeout_secs > 0.0
            && self.otel.timeout_secs <= 60.0)
        {
            return Err("[otel] timeout_secs must be in (0, 60]".into());
        }
        if !(self.oidc.fetch_timeout_secs > 0.0 && self.oidc.fetch_timeout_secs <= 60.0)
            || self.oidc.leeway_secs > 300
        {
            return Err(
                "[oidc] fetch_timeout_secs must be in (0, 60] and leeway_secs at most 300".into(),
            );
        }
        let mut names = std::collections::HashSet::new();
        for p in &self.trust {
            if !names.insert(p.name.as_str()) {
                return Err(format!("[[trust]] name `{}` is used twice", p.name));
            }
            crate::oidc::Compile::compile(p.clone(), "config", m)?;
        }
        if self.limits.max_body_bytes < 1024 {
            return Err("limits.max_body_bytes must be at least 1024".into());
        }
        Ok(())
    }

    /// The price list: `[pricing]` first, then the shipped table.
    pub fn prices(&self) -> Result<airlock_spend::pricing::Prices, String> {
        let overrides: Vec<(String, f64, Option<f64>, f64)> = self
            .pricing
            .iter()
            .map(|(k, p)| (k.clone(), p.input, p.cached_input, p.output))
            .collect();
        airlock_spend::pricing::Prices::load(&overrides)
    }

    /// The database URL to connect with: `[store] url`, or what the reference there names
    /// (`env:NAME`, `file:/path`), so that a password need not be written into this file.
    #[allow(clippy::disallowed_methods)] // configuration: the server's start-up reads it
    pub fn store_connect_url(&self) -> anyhow::Result<String> {
        let url = self.store_url();
        let value = if let Some(name) = url.strip_prefix("env:") {
            env_var(name).ok_or_else(|| {
                anyhow::anyhow!("[store] url {url}: the environment variable is not set")
            })?
        } else if let Some(path) = url.strip_prefix("file:") {
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("[store] url {url}: {e}"))?
        } else {
            return Ok(url);
        };
        let value = value.trim().to_string();
        if value.starts_with("env:") || value.starts_with("file:") || value.is_empty() {
            anyhow::bail!("[store] url {url}: names no database URL");
        }
        Ok(value)
    }

    /// The database URL as configured (a reference is not resolved).
    pub fn store_url(&self) -> String {
        self.store
            .url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.state_dir.join("airlock.db").display()))
    }

    /// The key directory.
    /// What `file:` references may point at: never airlock's own state or keys, nor the
    /// secret stores' own credentials (a Vault token, AppRole secret id or service-account
    /// token file, the KEK key file, AWS credential files), whose contents sent to a provider's
    /// base URL would open every secret behind them.
    #[allow(clippy::disallowed_methods)] // configuration: where the AWS SDK reads its files
    pub fn reference_policy(&self) -> airlock_secrets::ReferencePolicy {
        let v = &self.secrets.vault;
        let mut denied = vec![self.state_dir.clone(), self.keys_dir()];
        denied.extend(
            [&v.token_file, &v.secret_id_file, &v.jwt_file]
                .into_iter()
                .flatten()
                .cloned(),
        );
        // A pod's service-account token opens whatever the pod may do.
        denied.push("/var/run/secrets/kubernetes.io".into());
        denied.push("/run/secrets/kubernetes.io".into());
        if let Some(airlock_secretstore::sealed::Kek::Keyfile(p)) = self
            .secrets
            .kek
            .as_deref()
            .and_then(|k| airlock_secretstore::sealed::Kek::parse(k).ok())
        {
            denied.push(p);
        }
        for var in [
            "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_CONFIG_FILE",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        ] {
            if let Some(p) = std::env::var_os(var) {
                denied.push(p.into());
            }
        }
        if let Some(home) = std::env::var_os("HOME") {
            denied.push(PathBuf::from(&home).join(".aws"));
            denied.push(PathBuf::from(&home).join(".vault-token"));
        }
        airlock_secrets::ReferencePolicy::new(&denied, &self.secrets.file_roots)
            .with_reserved_env(&self.secrets.exec_env)
    }

    /// The key directory.
    pub fn keys_dir(&self) -> PathBuf {
        self.keys
            .dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("keys"))
    }

    /// Default token lifetime.
    pub fn default_ttl(&self) -> Result<Duration, String> {
        humantime::parse_duration(&self.tokens.default_ttl)
            .map_err(|e| format!("tokens.default_ttl: {e}"))
    }

    /// Longest token lifetime.
    pub fn max_ttl(&self) -> Result<Duration, String> {
        humantime::parse_duration(&self.tokens.max_ttl).map_err(|e| format!("tokens.max_ttl: {e}"))
    }

    /// A commented configuration file for `airlock init`.
    pub fn template(state_dir: &Path, listen: &str, store: Option<&str>) -> String {
        let dir = state_dir.display();
        let store = match store {
            // Written as a TOML string (escaped), never pasted.
            Some(url) => format!(
                "# PostgreSQL (or a SQLite file: sqlite:///path/airlock.db)\nurl = {}",
                toml::Value::String(url.to_string())
            ),
            None => format!("# SQLite file (default STATE_DIR/airlock.db), or postgres://user@host:5432/db\nurl = \"sqlite://{dir}/airlock.db\""),
        };
        format!(
            r#"# airlock configuration. Every key can be overridden by an environment variable:
# AIRLOCK_LISTEN, AIRLOCK_LIMITS__MAX_BODY_BYTES, AIRLOCK_LOG__LEVEL, ...

listen = "{listen}"
state_dir = "{dir}"

[store]
{store}
synchronous = "full"   # SQLite: every commit synced to disk (audit records survive a power loss); or "normal"

[keys]
# root-<id>.key signs new tokens; other root-*.key files in the directory still verify.
dir = "{dir}/keys"
root_key_id = 1

[tokens]
default_ttl = "1h"
max_ttl = "24h"

[limits]
max_body_bytes = 16777216
header_timeout_secs = 30
body_timeout_secs = 60
upstream_connect_timeout_ms = 5000
upstream_timeout_secs = 600
stream_idle_timeout_secs = 300

[log]
level = "info"   # debug logs never contain keys or prompts
format = "text"  # or "json"

[audit]
on_failure = "closed"          # refuse a request whose audit record cannot be written; or "open"
checkpoint_every = 1000        # sign the chain head every N records...
checkpoint_interval_secs = 10  # ...or every T seconds, whichever comes first
# A copy of every checkpoint; best on other storage than the database (another disk, a log
# shipper's directory), so that a rewrite of the whole database is caught.
checkpoint_file = "{dir}/audit-checkpoints.jsonl"
key_id = 1                     # audit-<id>.key in the key directory (not the token root key)

[rotation]
max_age_days = 90              # credentials older than this are flagged in the inventory
grace_secs = 60                # requests under way at a key's promotion may finish with the old key

[secrets]
refresh_secs = 300             # keys from vault://, aws-sm://, exec: and sealed: are re-read this often
max_stale_secs = 3600          # ...and served this long after the last good read while the store is down
# Secrets given with --secret-stdin are sealed under this key-encryption key. The key file is
# for development; in production use a KEK you hold: transit://KEY (OpenBao/Vault Transit) or
# aws-kms://KEY_ID, so that revoking it at your side makes every sealed secret unreadable.
kek = "keyfile:{dir}/keys/kek.key"
# exec: references may run only these commands (absolute program path and fixed leading
# arguments; a reference adds at most one argument, e.g. exec:/usr/local/bin/op read op://ai/openai/key):
# exec_allow = ["/usr/local/bin/op read"]
# exec_env = ["OP_SERVICE_ACCOUNT_TOKEN"]
# [secrets.vault]              # default: VAULT_ADDR / BAO_ADDR and VAULT_TOKEN / BAO_TOKEN
# addr = "https://vault.example.com:8200"
# auth = "token"               # or "approle" (role_id, secret_id_file) or "kubernetes" (role, jwt_file)
# [secrets.aws]                # default: the standard AWS chain, AWS_REGION, AWS_ENDPOINT_URL
# region = "us-east-1"

# Prices (US dollars per million tokens) for spend in usage, the audit log and the inventory.
# airlock ships a table for OpenAI and Anthropic models; entries here come first:
# [pricing."gpt-4o-mini"]
# input = 0.15
# cached_input = 0.075
# output = 0.60
"#,
            dir = state_dir.display()
        )
    }
}

/// A variable of the server's environment that is not an `AIRLOCK_…` setting (`VAULT_ADDR`,
/// `AWS_REGION`, the test clock's switch): the gateway reads the environment only here and in
/// [`Config::load`]'s caller.
#[allow(clippy::disallowed_methods)] // configuration
pub(crate) fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_and_env_overrides() {
        let t = Config::template(Path::new("/tmp/x"), "127.0.0.1:8400", None);
        let c = Config::parse(&t, std::iter::empty()).unwrap();
        assert_eq!(c.keys_dir(), PathBuf::from("/tmp/x/keys"));
        assert_eq!(c.store_url(), "sqlite:///tmp/x/airlock.db");
        let pg = "postgres://airlock@db:5432/airlock";
        let p = Config::template(Path::new("/tmp/x"), "127.0.0.1:8400", Some(pg));
        let p = Config::parse(&p, std::iter::empty()).unwrap();
        assert_eq!(p.store_url(), pg);
        // A reference: the URL (and its password) kept outside the configuration.
        let dir = std::env::temp_dir().join(format!("airlock-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("store-url");
        std::fs::write(&file, format!("{pg}\n")).unwrap();
        let r = format!("file:{}", file.display());
        let c = Config::template(Path::new("/tmp/x"), "127.0.0.1:8400", Some(&r));
        let c = Config::parse(&c, std::iter::empty()).unwrap();
        assert_eq!(c.store_url(), r);
        assert_eq!(c.store_connect_url().unwrap(), pg);
        std::fs::write(&file, "").unwrap();
        assert!(c.store_connect_url().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        let env = vec![
            ("AIRLOCK_LISTEN".to_string(), "127.0.0.1:9999".to_string()),
            (
                "AIRLOCK_LIMITS__MAX_BODY_BYTES".to_string(),
                "2048".to_string(),
            ),
            ("AIRLOCK_URL".to_string(), "http://ignored".to_string()),
        ];
        let c = Config::parse(&t, env.into_iter()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9999");
        assert_eq!(c.limits.max_body_bytes, 2048);
        assert!(Config::parse("state_dir='/x'\nbogus=1", std::iter::empty()).is_err());
        assert!(Config::parse(
            "state_dir='/x'\n[tokens]\nmax_ttl='48h'",
            std::iter::empty()
        )
        .is_err());
    }
}
