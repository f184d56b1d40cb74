//! The `airlock` command line. Server commands run the gateway; management commands talk to a
//! running server through the admin API (`AIRLOCK_URL`, `AIRLOCK_ADMIN_TOKEN`); `init`,
//! `scan`, `token attenuate` and `mock-provider` work offline.
//!
//! Why one file: the command line's definition is one clap tree, read as a whole; the work of each
//! command lives in its own module.
//!
//! Exit codes: 0 success, 1 a check found a problem, 2 usage or configuration error,
//! 3 a remote or store failure. Errors go to stderr.

mod audit;
mod client;
mod demo;
mod scan;

use airlock_gateway::config::Config;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// airlock: a least-trust AI gateway and credential broker.
///
/// Applications hold short-lived scoped tokens; provider keys stay in your own store.
/// Quick start: `airlock demo`, then point the OpenAI or Anthropic SDK at the printed URL.
#[derive(Parser)]
#[command(name = "airlock", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway, admin API and metrics.
    Serve {
        /// Configuration file.
        #[arg(long, env = "AIRLOCK_CONFIG", default_value = "airlock.toml")]
        config: PathBuf,
        /// Listen address (overrides the file).
        #[arg(long)]
        listen: Option<String>,
        /// Sign records found after the audit log's last checkpoint even though a running
        /// airlock would not have left them unsigned (more than checkpoint_every, or newer than
        /// checkpoint_interval_secs). Only after inspecting them; the acceptance is itself
        /// recorded in the log.
        #[arg(long)]
        accept_unsigned_tail: bool,
    },
    /// Run a throwaway gateway with a built-in mock provider and print a demo token.
    Demo {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8400")]
        listen: String,
    },
    /// Run a mock OpenAI + Anthropic provider (for tests and demos).
    MockProvider(MockArgs),
    /// Create a state directory: configuration, signing key, database, owner admin key.
    Init {
        /// Directory to create.
        #[arg(long, default_value = "./airlock-state")]
        dir: PathBuf,
        /// Address the server will listen on.
        #[arg(long, default_value = "127.0.0.1:8400")]
        listen: String,
        /// The database: `postgres://user@host:5432/db` (its schema is created now) or
        /// `sqlite:///path/airlock.db`; default a SQLite file in the directory.
        #[arg(long, value_name = "URL")]
        store: Option<String>,
    },
    /// Manage provider credentials (the inventory).
    #[command(subcommand)]
    Credential(CredentialCmd),
    /// Mint, narrow, list and revoke client tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Read, export and verify the tamper-evident audit log.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Find leaked AI provider keys in files and git history (offline).
    Scan(scan::ScanArgs),
    /// The key-encryption key that seals secrets given with --secret-stdin.
    #[command(subcommand)]
    Kek(KekCmd),
    /// Run a command with a short-lived token instead of provider keys: gets a token, starts
    /// CMD with OPENAI_BASE_URL, OPENAI_API_KEY, ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY
    /// pointing at airlock and holding the token (no admin or service-account key is passed
    /// on), revokes the token when CMD ends, and exits with CMD's exit code.
    ///
    /// The token comes from the first of: --oidc-token-file (a workload identity token, e.g.
    /// a Kubernetes projected service-account token, exchanged at /v1/token/exchange); GitHub
    /// Actions' identity token (ACTIONS_ID_TOKEN_REQUEST_URL, needs `permissions: id-token:
    /// write`); a service-account key (AIRLOCK_SERVICE_ACCOUNT_KEY); an admin key
    /// (AIRLOCK_ADMIN_TOKEN).
    Run(RunArgs),
    /// Requests, tokens and cost (integer nano-dollars from the price table) grouped by token,
    /// identity, credential, model or environment, optionally per hour or day (UTC).
    Usage {
        /// What to group by: token, identity, credential, model or env.
        #[arg(long, default_value = "credential")]
        by: String,
        /// Start: RFC 3339 or a duration ago (24h, 7d); default 24h.
        #[arg(long, default_value = "24h")]
        since: String,
        /// End (default now).
        #[arg(long)]
        until: Option<String>,
        /// Time buckets: hour, day or none.
        #[arg(long, default_value = "none")]
        bucket: String,
    },
    /// Anomalies detected (spend and request spikes against each credential's and identity's
    /// own baseline; first use of a model, address range, country or hour), newest last.
    Anomalies {
        /// Start: RFC 3339 or a duration ago (24h, 7d); default 7d.
        #[arg(long, default_value = "7d")]
        since: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Spend caps on a token, an identity or a credential, per day, month or in total.
    #[command(subcommand)]
    Budget(BudgetCmd),
    /// Requests and tokens per minute on a token, an identity or a credential.
    #[command(subcommand, name = "rate-limit")]
    RateLimit(RateLimitCmd),
    /// Keys for workloads without an OIDC identity: a service-account key can only mint
    /// tokens within its scope (POST /v1/token), never call a model itself.
    #[command(subcommand, name = "service-account")]
    ServiceAccount(ServiceAccountCmd),
    /// Trust policies: which workload identity tokens (GitHub Actions, GitLab CI, Kubernetes,
    /// any OIDC issuer) are exchanged for which airlock tokens.
    #[command(subcommand)]
    Trust(TrustCmd),
    /// Keys for people and automation on the admin API, each with a role: owner, admin,
    /// auditor, developer or viewer.
    #[command(subcommand, name = "admin-key")]
    AdminKey(AdminKeyCmd),
    /// Incident response: lock everything down at once; report the blast radius.
    #[command(subcommand)]
    Incident(IncidentCmd),
    /// Check that every secret store answers, the KEK wraps and unwraps, and every
    /// credential's key can be read and is accepted by its provider (exit code 1 when
    /// something fails).
    Doctor,
}

#[derive(Args)]
struct MockArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: String,
    /// The provider key to require; several, comma-separated, play a rotation (the old and
    /// the new key both work until `POST /mock/revoke?index=N` revokes one). Prefer
    /// --expect-key-file or AIRLOCK_MOCK_EXPECT_KEY: a command-line argument is visible to
    /// other users in `ps`.
    #[arg(long, env = "AIRLOCK_MOCK_EXPECT_KEY", hide_env_values = true)]
    expect_key: Option<String>,
    /// Read the required key(s) from a file (one per line).
    #[arg(long)]
    expect_key_file: Option<PathBuf>,
    /// Answer every inference request with this HTTP status (to test fallbacks).
    #[arg(long)]
    fail_status: Option<u16>,
    /// Pause between streamed chunks, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Name echoed in replies.
    #[arg(long, default_value = "mock")]
    name: String,
    /// Models listed by /v1/models.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "gpt-4o-mini,gpt-4o,o3-mini,text-embedding-3-small,claude-mock-1,claude-haiku-4-5"
    )]
    models: Vec<String>,
}

#[derive(Subcommand)]
enum CredentialCmd {
    /// Add a credential: a reference to where the key lives, never the key itself.
    Add {
        /// Unique name, e.g. openai-prod.
        name: String,
        /// openai, anthropic, azure or openai-compatible.
        #[arg(long)]
        provider: String,
        /// Environment tag (prod, eval, dev, …); only tokens of this environment can use it.
        #[arg(long)]
        env: String,
        /// Where the key lives, read by the server: env:NAME, file:/path, exec:COMMAND,
        /// vault://MOUNT/PATH#FIELD, aws-sm://SECRET_ID[#FIELD][?stage=LABEL].
        #[arg(
            long,
            required_unless_present = "secret_stdin",
            conflicts_with = "secret_stdin"
        )]
        secret: Option<String>,
        /// Read the key from standard input (hidden when typed at a terminal) and keep it
        /// sealed under the server's KEK ([secrets] kek): the reference becomes sealed:ID.
        #[arg(long)]
        secret_stdin: bool,
        /// Base URL as the provider's SDK takes it (https://api.openai.com/v1,
        /// https://api.anthropic.com, an Azure deployment URL, any OpenAI-compatible URL).
        #[arg(long)]
        base_url: Option<String>,
        /// Model globs this credential serves (repeatable or comma-separated; default *).
        #[arg(long = "models", alias = "model", value_delimiter = ',')]
        models: Vec<String>,
        /// Lower is tried first when several credentials serve a model.
        #[arg(long, default_value_t = 100)]
        priority: i64,
    },
    /// List credentials.
    List,
    /// Show one credential with its usage.
    Show {
        /// Credential name.
        name: String,
        /// Activity window in days (identities, tokens, addresses, volume, spend).
        #[arg(long, default_value_t = 7)]
        days: u32,
    },
    /// Remove a credential (a sealed key is destroyed with it).
    Remove {
        /// Credential name.
        name: String,
    },
    /// Suspend a credential: it serves nothing until resumed (clients get a 403 that says so).
    Suspend {
        /// Credential name.
        name: String,
    },
    /// Resume a suspended credential (after an incident lockdown or an anomaly suspended it).
    Resume {
        /// Credential name.
        name: String,
    },
    /// Read the key from its store now and make the provider's cheapest authenticated call
    /// (list models): ok, refused or unreachable, with the fingerprint (never the key).
    /// Exit code 1 when the key is refused or cannot be read, 3 when the provider cannot be
    /// reached.
    Verify {
        /// Credential name.
        name: String,
        /// Check the key the last rotation replaced instead: the provider must refuse it and
        /// the audit log must show no use of it after the promotion. Both true confirms the
        /// rotation (exit 0); otherwise exit 1.
        #[arg(long)]
        old: bool,
    },
    /// Rotate a credential's key: stage the new key, test it with the provider, promote it
    /// (new requests use it at once; requests under way finish on the old one), record each
    /// step. The new key comes from the store (a new KV version; AWSPENDING in Secrets
    /// Manager, whose labels are then moved) or, for sealed credentials, from stdin.
    /// Exit code 1 when the test fails (nothing is changed).
    Rotate {
        /// Credential name (or --all).
        #[arg(required_unless_present = "all")]
        name: Option<String>,
        /// Read the new key from standard input (sealed credentials).
        #[arg(long, conflicts_with = "all")]
        new_secret_stdin: bool,
        /// Take the new key from the credential's store (the default without --new-secret-stdin).
        #[arg(long, conflicts_with = "new_secret_stdin")]
        from_store: bool,
        /// Every credential (sealed ones need --new-secret-stdin each and are listed as skipped).
        #[arg(long, conflicts_with = "name")]
        all: bool,
        /// With --all: only this environment.
        #[arg(long, requires = "all")]
        env: Option<String>,
        /// With --all: only credentials whose key was not rotated since this time
        /// (RFC 3339, or a duration ago such as 30d).
        #[arg(long, requires = "all")]
        since: Option<String>,
        /// With --all: how many rotations run at once.
        #[arg(long, default_value_t = 4, requires = "all")]
        parallel: usize,
    },
}

/// What a minted token may use (shared by `token mint` and `run`).
#[derive(Args)]
struct TokenScope {
    /// Allowed model globs (repeatable or comma-separated; default *).
    #[arg(long = "model", value_delimiter = ',')]
    models: Vec<String>,
    /// Allowed credentials (default: any of the environment).
    #[arg(long = "credential", value_delimiter = ',')]
    credentials: Vec<String>,
    /// Environment (default: the only one there is).
    #[arg(long)]
    env: Option<String>,
    /// The project its use is accounted to (usage --by project, budgets, rate limits).
    #[arg(long)]
    project: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    scope: TokenScope,
    /// Token lifetime (default: 15m with an admin key, otherwise the scope's default and at most
    /// its maximum); revoked when the command ends anyway.
    #[arg(long)]
    ttl: Option<String>,
    /// Who the token is for (default: run:<command>; admin keys only).
    #[arg(long)]
    subject: Option<String>,
    /// Exchange this identity token file (re-read on every run) instead of using a key.
    #[arg(long, value_name = "PATH")]
    oidc_token_file: Option<PathBuf>,
    /// The audience to ask GitHub Actions for (what the trust policy's `audience` expects).
    #[arg(long, default_value = "airlock")]
    oidc_audience: String,
    /// Use this trust policy (by name) for the exchange rather than the first that admits.
    #[arg(long)]
    policy: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

#[derive(Subcommand)]
enum AdminKeyCmd {
    /// Issue a key (owners only); it is printed once, only its keyed hash is kept.
    Create {
        /// A name for whoever holds it.
        name: String,
        /// owner, admin, auditor, developer or viewer.
        #[arg(long)]
        role: String,
        /// A developer's grant: the environment their tokens are for (required for developers).
        #[arg(long)]
        env: Option<String>,
        /// A developer's grant: model globs (default *).
        #[arg(long = "model", value_delimiter = ',')]
        models: Vec<String>,
        /// A developer's grant: credentials (default: any of the environment).
        #[arg(long = "credential", value_delimiter = ',')]
        credentials: Vec<String>,
        /// A developer's grant: longest token lifetime (default: the server's maximum).
        #[arg(long)]
        max_ttl: Option<String>,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key by id (owners only; not the last owner key).
    Revoke {
        /// The key's id (the part after alk_admin_).
        id: String,
    },
}

#[derive(Subcommand)]
enum ServiceAccountCmd {
    /// Create a service account; its key (alk_sa_…) is printed once, only a keyed hash is kept.
    Create {
        /// A name for the workload.
        name: String,
        /// The environment its tokens are for.
        #[arg(long)]
        env: String,
        /// Model globs its tokens may allow (default *).
        #[arg(long = "model", value_delimiter = ',')]
        models: Vec<String>,
        /// Credentials its tokens may use (default: any of the environment).
        #[arg(long = "credential", value_delimiter = ',')]
        credentials: Vec<String>,
        /// Longest lifetime of its tokens (default: the server's maximum).
        #[arg(long)]
        max_ttl: Option<String>,
        /// The project all its tokens are accounted to.
        #[arg(long)]
        project: Option<String>,
    },
    /// List service accounts with their scope and last use (never the keys).
    List,
    /// Revoke a service account by id or name (tokens it minted expire on their own; revoke
    /// them with `token revoke` for an immediate stop).
    Revoke {
        /// Id or name.
        id: String,
    },
}

/// What a budget or rate limit applies to: exactly one of these.
#[derive(Args)]
struct LimitTarget {
    /// A token id (tok_…).
    #[arg(long)]
    token: Option<String>,
    /// An identity: the subject of tokens (admin:NAME, sa:NAME, oidc:POLICY:…).
    #[arg(long)]
    identity: Option<String>,
    /// A credential name.
    #[arg(long)]
    credential: Option<String>,
    /// A project (tokens minted with --project).
    #[arg(long)]
    project: Option<String>,
}

impl LimitTarget {
    /// (`token`|`identity`|`credential`|`project`, key).
    fn kind_key(self) -> Result<(&'static str, String), Failure> {
        match (self.token, self.identity, self.credential, self.project) {
            (Some(t), None, None, None) => Ok(("token", t)),
            (None, Some(i), None, None) => Ok(("identity", i)),
            (None, None, Some(c), None) => Ok(("credential", c)),
            (None, None, None, Some(p)) => Ok(("project", p)),
            _ => Err(Failure::usage(
                "give exactly one of --token ID, --identity SUBJECT, --credential NAME, --project NAME",
            )),
        }
    }
}

#[derive(Subcommand)]
enum BudgetCmd {
    /// Cap the spend of one token, identity (token subject) or credential.
    Set {
        #[command(flatten)]
        target: LimitTarget,
        /// The cap, US dollars.
        #[arg(long)]
        usd: f64,
        /// day (UTC), month (calendar, UTC) or total.
        #[arg(long, default_value = "month")]
        period: String,
    },
    /// Budgets with what they have spent this period.
    List,
    /// Remove a budget.
    Remove {
        /// Its id (bud_…).
        id: String,
    },
}

#[derive(Subcommand)]
enum RateLimitCmd {
    /// Limit one token, identity (token subject) or credential (GCRA: bursts up to a
    /// minute's allowance).
    Set {
        #[command(flatten)]
        target: LimitTarget,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<i64>,
        /// Tokens per minute (input + output; admitted on the request's estimate).
        #[arg(long)]
        tpm: Option<i64>,
    },
    /// List rate limits.
    List,
    /// Remove a rate limit.
    Remove {
        /// Its id (rl_…).
        id: String,
    },
}

#[derive(Subcommand)]
enum TrustCmd {
    /// Add a trust policy from a TOML or JSON file in the shape of a [[trust]] table (see
    /// the README for GitHub Actions, GitLab CI and Kubernetes examples).
    Add {
        /// The policy file.
        #[arg(long)]
        file: PathBuf,
    },
    /// List trust policies (configuration's and the API's).
    List,
    /// Remove a policy added through the API.
    Remove {
        /// Its name.
        name: String,
    },
}

#[derive(Subcommand)]
enum IncidentCmd {
    /// Refuse every token issued so far (a new token root-key generation; effective at once
    /// and after restarts) and optionally suspend credentials, in one audited act. Admin keys
    /// keep working, so fresh tokens can be minted right after.
    Lockdown {
        /// Credentials to suspend: `all`, an environment, or credential names (repeatable or
        /// comma-separated).
        #[arg(long = "suspend-credentials", value_delimiter = ',')]
        suspend: Vec<String>,
        /// Why, for the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// The blast radius since a time: for every credential, each identity, token, client
    /// address and model that used it, volume and spend against its own baseline, identities
    /// and addresses never seen before, and its rotation state.
    Report {
        /// Start: RFC 3339 or a duration ago (24h, 7d).
        #[arg(long)]
        since: String,
        /// End (default now).
        #[arg(long)]
        until: Option<String>,
    },
}

#[derive(Subcommand)]
enum KekCmd {
    /// Add a new version to the key-encryption key and rewrap every sealed secret's data key
    /// under it (the secrets themselves are not decrypted or changed). Secrets sealed under
    /// another KEK move to the configured one.
    Rotate,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Mint a client token (through the admin API).
    Mint {
        #[command(flatten)]
        scope: TokenScope,
        /// Lifetime, e.g. 15m, 1h (default 1h, at most 24h).
        #[arg(long)]
        ttl: Option<String>,
        /// Who the token is for (default: admin:<your key's name>).
        #[arg(long)]
        subject: Option<String>,
        /// A total spend cap on this token, in US dollars (requests that could pass it are
        /// refused with 429 insufficient_quota).
        #[arg(long)]
        budget_usd: Option<f64>,
    },
    /// Narrow a token offline (no server, no key needed).
    Attenuate {
        /// The token to narrow.
        token: String,
        /// Allowed model globs.
        #[arg(long = "model", value_delimiter = ',')]
        models: Vec<String>,
        /// Allowed credentials.
        #[arg(long = "credential", value_delimiter = ',')]
        credentials: Vec<String>,
        /// New, shorter lifetime from now.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Revoke a token (and every token narrowed from it) at once.
    Revoke {
        /// Token id (tok_…).
        id: String,
    },
    /// List minted tokens.
    List {
        /// Include expired tokens.
        #[arg(long)]
        all: bool,
    },
}

/// A failure with its exit code.
pub struct Failure {
    /// Exit code.
    pub code: u8,
    /// Message for stderr.
    pub message: String,
}

impl Failure {
    fn usage(m: impl Into<String>) -> Self {
        Failure {
            code: 2,
            message: m.into(),
        }
    }
    fn remote(m: impl Into<String>) -> Self {
        Failure {
            code: 3,
            message: m.into(),
        }
    }
}

// mimalloc: under load glibc's malloc (its arena locks and consolidation) took a tenth of the
// gateway's CPU in the profile; mimalloc's per-thread free lists do not contend.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands that print end quietly when their reader goes away (`airlock … | head`), as
    // other command-line tools do; the servers keep Rust's default (a closed peer is an
    // error to handle, never a signal).
    if !matches!(
        cli.cmd,
        Cmd::Serve { .. } | Cmd::Demo { .. } | Cmd::MockProvider(_)
    ) {
        sigpipe::reset();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("airlock: cannot start the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("airlock: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// A setting the CLI reads from its environment (`AIRLOCK_URL`, `AIRLOCK_ADMIN_TOKEN`,
/// `RUST_LOG`, GitHub Actions' variables…): the one place it does.
#[allow(clippy::disallowed_methods)] // the CLI's configuration
pub(crate) fn setting(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn init_logging(level: &str, format: &str) {
    let filter = setting("RUST_LOG")
        .unwrap_or_else(|| format!("{level},hyper=info,hyper_util=info,sqlx=warn,h2=info,rustls=info,aws_config=info,aws_runtime=info,aws_smithy_runtime=info,aws_smithy_http_client=info,aws_sdk_kms=info,aws_sdk_secretsmanager=info,aws_sdk_sts=info"));
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let json = cli.json;
    match cli.cmd {
        Cmd::Serve {
            config,
            listen,
            accept_unsigned_tail,
        } => {
            if !config.exists() {
                return Err(Failure::usage(format!(
                    "{} does not exist: run `airlock init --dir DIR` and pass --config DIR/airlock.toml (or try `airlock demo`)",
                    config.display()
                )));
            }
            #[allow(clippy::disallowed_methods)] // configuration: AIRLOCK_* overrides
            let mut cfg = Config::load(&config, std::env::vars()).map_err(Failure::usage)?;
            if let Some(l) = listen {
                cfg.listen = l;
            }
            cfg.audit.accept_unsigned_tail = accept_unsigned_tail;
            init_logging(&cfg.log.level, &cfg.log.format);
            serve(cfg, None).await
        }
        Cmd::Demo { listen } => demo::run(&listen, json).await,
        Cmd::MockProvider(m) => mock(m).await,
        Cmd::Init { dir, listen, store } => {
            listen.parse::<std::net::SocketAddr>().map_err(|_| {
                Failure::usage(format!(
                    "--listen {listen}: not an address like 127.0.0.1:8400"
                ))
            })?;
            let out = airlock_gateway::init(&dir, &listen, store.as_deref())
                .await
                .map_err(|e| Failure::usage(format!("{e:#}")))?;
            if json {
                print_json(&serde_json::to_value(&out).unwrap_or_default());
            } else {
                println!("Initialised {}", dir.display());
                println!("  config      {}", out.config.display());
                println!(
                    "  public key  {}  (verifies tokens offline)",
                    out.public_key
                );
                println!();
                println!("Owner admin key (shown once; store it in your password manager):");
                println!("  {}", out.admin_token);
                println!();
                println!("Next:");
                println!("  airlock serve --config {}", out.config.display());
                println!(
                    "  export AIRLOCK_URL=http://{} AIRLOCK_ADMIN_TOKEN=<the key above>",
                    out.listen
                );
                println!("  airlock credential add openai-prod --provider openai --env prod --secret env:OPENAI_API_KEY");
            }
            Ok(())
        }
        Cmd::Credential(c) => client::credential(c, json).await,
        Cmd::Kek(KekCmd::Rotate) => client::kek_rotate(json).await,
        Cmd::Incident(c) => client::incident(c, json).await,
        Cmd::Run(r) => client::run_with_token(r).await,
        Cmd::AdminKey(c) => client::admin_key(c, json).await,
        Cmd::ServiceAccount(c) => client::service_account(c, json).await,
        Cmd::Trust(c) => client::trust(c, json).await,
        Cmd::Budget(c) => client::budget(c, json).await,
        Cmd::RateLimit(c) => client::rate_limit(c, json).await,
        Cmd::Usage {
            by,
            since,
            until,
            bucket,
        } => client::usage(&by, &since, until.as_deref(), &bucket, json).await,
        Cmd::Anomalies { since, limit } => client::anomalies(&since, limit, json).await,
        Cmd::Doctor => client::doctor(json).await,
        Cmd::Token(t) => client::token(t, json).await,
        Cmd::Audit(a) => audit::run(a, json).await,
        Cmd::Scan(a) => scan::run(a, json).await,
    }
}

/// Runs the gateway until a signal; `ready` receives the bound address.
pub async fn serve(
    cfg: Config,
    ready: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> Result<(), Failure> {
    let header_timeout = std::time::Duration::from_secs(cfg.limits.header_timeout_secs);
    let listen = cfg.listen.clone();
    // Bind first: a server that cannot listen must not touch the audit log.
    let (listener, addr) = airlock_gateway::server::bind(&listen)
        .await
        .map_err(|e| Failure::usage(format!("cannot listen on {listen}: {e}")))?;
    let (app, writer) = airlock_gateway::build_app(cfg)
        .await
        .map_err(|e| Failure::usage(format!("{e:#}")))?;
    tracing::info!(%addr, credentials = app.creds.load().all.len(), "airlock listening");
    if let Some(tx) = ready {
        let _ = tx.send(addr);
    }
    let router = airlock_gateway::server::router(app.clone());
    airlock_gateway::server::serve(listener, router, header_timeout, shutdown_signal()).await;
    tracing::info!("shutting down: writing queued audit records and signing the head");
    // Streams still open keep recorders alive, so the writer is told, not waited for.
    let ten = std::time::Duration::from_secs(10);
    if !matches!(
        tokio::time::timeout(ten, app.recorder.shutdown()).await,
        Ok(true)
    ) {
        tracing::error!("could not sign the audit log's head at shutdown");
    }
    drop(app);
    // What was queued after the head was signed (streams cut by the shutdown) is written
    // before the runtime goes: on PostgreSQL the writer needs the runtime to write at all.
    if tokio::time::timeout(ten, writer).await.is_err() {
        tracing::error!("the audit writer did not finish within 10 s of shutdown");
    }
    Ok(())
}

async fn mock(m: MockArgs) -> Result<(), Failure> {
    init_logging("info", "text");
    let keys = match (m.expect_key, m.expect_key_file) {
        (_, Some(f)) => std::fs::read_to_string(&f)
            .map_err(|e| Failure::usage(format!("{}: {e}", f.display())))?,
        (k, None) => k.unwrap_or_default(),
    };
    let opts = airlock_providers::mock::MockOptions {
        expect_keys: keys
            .split([',', '\n'])
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| airlock_secrets::Secret::new(k.to_string()))
            .collect(),
        fail_status: m.fail_status,
        chunk_delay: std::time::Duration::from_millis(m.chunk_delay_ms),
        name: m.name,
        models: m.models,
    };
    let (listener, addr) = airlock_gateway::server::bind(&m.listen)
        .await
        .map_err(|e| Failure::usage(format!("cannot listen on {}: {e}", m.listen)))?;
    eprintln!("mock provider listening on http://{addr}");
    airlock_gateway::server::serve(
        listener,
        airlock_providers::mock::router(opts),
        std::time::Duration::from_secs(30),
        shutdown_signal(),
    )
    .await;
    Ok(())
}
