//! airlock's gateway: the proxy, the admin API, usage recording, and the mock provider used
//! by `airlock demo` and the tests. See ARCHITECTURE.md for the request path.

pub mod admin;
pub mod alarms;

pub mod config;
pub mod credentials;
pub mod histogram;
pub mod identity;

pub mod incident;
pub mod models;
pub mod oidc;
pub mod otel;

pub mod policy;

pub mod proxy;
pub mod record;
pub mod rotation;
pub mod server;
pub mod state;
#[cfg(test)]
mod testkit;
pub mod tokens;
pub mod upstream;
pub mod usage;
pub mod util;

use airlock_secrets::HmacKey;
use airlock_store::Store;
use airlock_token::{KeyRing, Verifier};
use anyhow::Context;
use config::Config;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The id of a request (also returned as `x-airlock-request-id`).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Name of the HMAC key file in the key directory.
pub const HMAC_KEY_FILE: &str = "hmac.key";

/// Loads keys, opens the store and starts the usage writer.
pub async fn build_app(cfg: Config) -> anyhow::Result<(Arc<App>, tokio::task::JoinHandle<()>)> {
    let keys_dir = cfg.keys_dir();
    let hmac_path = keys_dir.join(HMAC_KEY_FILE);
    let hmac_text = std::fs::read_to_string(&hmac_path)
        .with_context(|| format!("cannot read {}", hmac_path.display()))?;
    let hmac = HmacKey::from_hex(&hmac_text)
        .with_context(|| format!("{} is not a 32-byte hex key", hmac_path.display()))?;
    check_private(&keys_dir)?;
    // Before anything is read or written: one server per state directory.
    let lock_path = cfg.state_dir.join("airlock.lock");
    let state_lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    if state_lock.try_lock().is_err() {
        anyhow::bail!(
            "another airlock is serving from {} (it holds {}); stop it first",
            cfg.state_dir.display(),
            lock_path.display()
        );
    }
    let store = Store::open_with(
        &cfg.store_connect_url()?,
        cfg.store.sync().map_err(anyhow::Error::msg)?,
    )
    .await?;
    let Some(store_lock) = store.server_lock().await? else {
        anyhow::bail!(
            "another airlock is serving from {} (one server per database until replicas share one audit chain); stop it first",
            airlock_store::redact_url(&cfg.store_url())
        );
    };
    // After an incident lockdown, its root-key generation overrides the configuration's.
    let keys = Arc::new(match store.token_epoch().await? {
        Some((min, signing)) => {
            KeyRing::load(&keys_dir, signing.max(cfg.keys.root_key_id))?.retire_below(min)
        }
        None => KeyRing::load(&keys_dir, cfg.keys.root_key_id)?,
    });
    let audit_key = match airlock_audit::AuditKey::load(&keys_dir, cfg.audit.key_id) {
        Ok(k) => k,
        Err(_)
            if !keys_dir
                .join(format!("audit-{}.key", cfg.audit.key_id))
                .exists() =>
        {
            // State from before the audit log existed: create its key once. Never when the
            // log has records: a new key would sign over a chain nobody can check the old
            // checkpoints of.
            let (records, _) = store.audit_head().await?;
            if records > 0 {
                anyhow::bail!(
                    "the audit signing key {} is missing but the audit log holds {records} records; restore the key file (a new key would make the old checkpoints unverifiable)",
                    keys_dir.join(format!("audit-{}.key", cfg.audit.key_id)).display()
                );
            }
            airlock_audit::AuditKey::generate(&keys_dir, cfg.audit.key_id)
                .map_err(anyhow::Error::msg)?;
            tracing::warn!(dir = %keys_dir.display(), "created the audit signing key");
            airlock_audit::AuditKey::load(&keys_dir, cfg.audit.key_id)
                .map_err(anyhow::Error::msg)?
        }
        Err(e) => return Err(anyhow::Error::msg(e)),
    };
    let pricing = cfg.prices().map_err(anyhow::Error::msg)?;
    let settings = usage::AuditSettings {
        log: airlock_audit::log::Settings {
            key: audit_key,
            every: cfg.audit.checkpoint_every,
            interval: Duration::from_secs(cfg.audit.checkpoint_interval_secs),
            sink: cfg.audit.checkpoint_file.clone(),
            verify_keys: airlock_audit::PublicKeys::from_dir(&keys_dir)
                .map_err(anyhow::Error::msg)?,
            fail_open: cfg.audit.fail_open().map_err(anyhow::Error::msg)?,
            accept_unsigned_tail: cfg.audit.accept_unsigned_tail,
        },
        anonymous_per_sec: cfg.audit.anonymous_per_sec,
        pricing,
    };
    if settings.log.sink.is_none() {
        tracing::warn!("audit.checkpoint_file is not set: a rewrite of the whole database would only be caught by a copy of the checkpoints kept elsewhere");
    }
    let (recorder, writer) = usage::Recorder::start(store.clone(), settings).await?;
    let client = util::http_client(Duration::from_millis(
        cfg.limits.upstream_connect_timeout_ms,
    ))?;
    let verifier = Verifier::new(keys, cfg.tokens.cache_capacity);
    let ref_policy = cfg.reference_policy();
    let hmac = Arc::new(hmac);
    let cache_policy = cfg.secrets.cache_policy().map_err(anyhow::Error::msg)?;
    let secrets = airlock_secretstore::Stores::new(
        airlock_secretstore::Settings {
            vault: cfg.secrets.vault.clone(),
            aws: cfg.secrets.aws.clone(),
            kek: cfg.secrets.kek.clone(),
            timeout: Duration::from_secs_f64(cfg.secrets.timeout_secs),
            exec: airlock_secretstore::exec::ExecPolicy {
                allow: airlock_secretstore::exec::ExecPolicy::parse_allow(&cfg.secrets.exec_allow)
                    .map_err(anyhow::Error::msg)?,
                env: cfg.secrets.exec_env.clone(),
                timeout: Duration::from_secs_f64(cfg.secrets.exec_timeout_secs),
            },
            file_policy: ref_policy.clone(),
        },
        client.clone(),
        store.clone(),
        // Configuration: the secret stores' standard variables (VAULT_ADDR, AWS_REGION…).
        #[allow(clippy::disallowed_methods)]
        &|name| config::env_var(name).filter(|v| !v.is_empty()),
    )
    .map_err(anyhow::Error::msg)?;
    let budgets = Arc::new(airlock_spend::budget::Budgets::load(&store).await?);
    let rate_limits = Arc::new(airlock_spend::ratelimit::RateLimits::default());
    rate_limits.reload(&store).await?;
    let tokens = Arc::new(tokens::Tokens::new(store.clone(), verifier));
    let creds = Arc::new(credentials::Credentials::new(
        store.clone(),
        hmac.clone(),
        secrets,
        cache_policy,
        recorder.clone(),
    ));
    let issuer = Arc::new(identity::Issuer {
        store: store.clone(),
        tokens: tokens.clone(),
        creds: creds.clone(),
        hmac: hmac.clone(),
        recorder: recorder.clone(),
        max_ttl: cfg.max_ttl().unwrap_or(airlock_token::MAX_TTL),
        default_ttl: cfg.default_ttl().unwrap_or(airlock_token::DEFAULT_TTL),
    });
    let trust = Arc::new(oidc::Trust::new(
        issuer.clone(),
        cfg.oidc.clone(),
        cfg.trust.clone(),
        client.clone(),
    ));
    let rotator = Arc::new(rotation::Rotator {
        store: store.clone(),
        creds: creds.clone(),
        hmac: hmac.clone(),
        recorder: recorder.clone(),
        client: client.clone(),
        grace_secs: cfg.rotation.grace_secs,
    });
    let responder = Arc::new(incident::Responder {
        store: store.clone(),
        tokens: tokens.clone(),
        creds: creds.clone(),
        recorder: recorder.clone(),
        keys_dir: cfg.keys_dir(),
        cache_capacity: cfg.tokens.cache_capacity,
    });
    let reactor = Arc::new(alarms::Reactor {
        store: store.clone(),
        creds: creds.clone(),
        tokens: tokens.clone(),
        recorder: recorder.clone(),
        client: client.clone(),
    });
    let gateway = Arc::new(proxy::Gateway {
        tokens: tokens.clone(),
        creds: creds.clone(),
        budgets: budgets.clone(),
        rate_limits: rate_limits.clone(),
        recorder: recorder.clone(),
        hmac: hmac.clone(),
        client: client.clone(),
        limits: cfg.limits.clone(),
        default_max_output_tokens: cfg.budgets.default_max_output_tokens,
        model_lists: Default::default(),
    });
    let control = Arc::new(admin::Control {
        store: store.clone(),
        hmac: hmac.clone(),
        tokens: tokens.clone(),
        creds: creds.clone(),
        budgets: budgets.clone(),
        rate_limits: rate_limits.clone(),
        recorder: recorder.clone(),
        client: client.clone(),
        issuer: issuer.clone(),
        trust: trust.clone(),
        rotator: rotator.clone(),
        responder: responder.clone(),
        anomaly: Default::default(),
        rotation_max_age_days: cfg.rotation.max_age_days,
    });
    let app = Arc::new(App {
        control,
        gateway,
        reactor,
        rotator,
        responder,
        issuer: issuer.clone(),
        ref_policy,
        cfg,
        tokens,
        hmac: hmac.clone(),
        creds,
        store,
        client,
        recorder,
        started: Instant::now(),
        trust,
        budgets,
        rate_limits,
        state_lock,
        store_lock,
    });
    app.trust
        .reload()
        .await
        .map_err(|e| anyhow::anyhow!("trust policies: {e}"))?;
    app.creds.reload().await?;
    app.tokens.reload_revocations().await?;
    // A hook for tests only: lets the owner move the anomaly detector's clock (a simulated
    // week of traffic without waiting a week). Never set it in production.
    #[allow(clippy::disallowed_methods)] // configuration: the test clock's switch
    let test_clock = config::env_var("AIRLOCK_TEST_CLOCK").as_deref() == Some("1");
    if test_clock {
        tracing::warn!("AIRLOCK_TEST_CLOCK=1: the anomaly detector's clock can be moved through the admin API (tests only)");
    }
    if let Some(endpoint) = app.cfg.otel.endpoint.as_deref() {
        let t = otel::Tracer::start(
            endpoint,
            &app.cfg.otel.service_name,
            app.cfg.otel.capture_prompts,
            Duration::from_secs_f64(app.cfg.otel.timeout_secs),
            app.client.clone(),
        )
        .map_err(anyhow::Error::msg)?;
        tracing::info!(
            endpoint,
            prompts = app.cfg.otel.capture_prompts,
            "exporting traces over OTLP/HTTP"
        );
        let loopback = endpoint
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_string))
            .is_some_and(|h| {
                h == "localhost"
                    || h.trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
        if endpoint.starts_with("http://") && !loopback {
            tracing::warn!("[otel] endpoint is plain http to another machine: spans (identities, client addresses, prompts if captured) travel unencrypted; prefer https");
        }
        app.recorder.trace_with(t);
    }
    if let Some(d) = alarms::start(&app.reactor, &app.cfg.anomaly, test_clock).await? {
        app.recorder.watch(d.clone());
        let _ = app.control.anomaly.set(d);
    }
    spawn_revocation_refresh(Arc::downgrade(&app));
    {
        let rotate = Arc::downgrade(&app.rotator);
        credentials::spawn_refresher(Arc::downgrade(&app.creds), move |c| {
            if let Some(a) = rotate.upgrade() {
                tokio::spawn(rotation::auto_rotate(a, c));
            }
        });
    }
    Ok((app, writer))
}

pub use state::App;

/// Re-reads the revocation list every second, so revocations written by another process (a
/// second gateway on the same database, a restore) take effect within a second; revocations
/// made through this server's own API take effect at once. Stops when the app is dropped.
fn spawn_revocation_refresh(app: std::sync::Weak<App>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(app) = app.upgrade() else { return };
            if let Err(e) = app.tokens.reload_revocations().await {
                tracing::warn!(error = %e, "cannot refresh the revocation list; keeping the last one");
            }
        }
    });
}

/// Refuses to start when private key files are readable by others.
fn check_private(dir: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for e in std::fs::read_dir(dir)?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".key") {
                let mode = e.metadata()?.permissions().mode();
                if mode & 0o077 != 0 {
                    anyhow::bail!(
                        "{} is readable by other users (mode {:o}); run chmod 600 on it",
                        e.path().display(),
                        mode & 0o777
                    );
                }
            }
        }
    }
    Ok(())
}

/// What `airlock init` produced. `Debug` leaves out the admin token.
#[derive(serde::Serialize)]
pub struct Initialized {
    /// Path of the configuration file.
    pub config: PathBuf,
    /// The owner admin key, shown once.
    pub admin_token: String,
    /// Public key that verifies tokens offline (`ed25519/<hex>`).
    pub public_key: String,
    /// Public key that verifies the audit log's checkpoints offline.
    pub audit_public_key: String,
    /// Database URL.
    pub store: String,
    /// The address the server will listen on.
    pub listen: String,
}

impl std::fmt::Debug for Initialized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initialized")
            .field("config", &self.config)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// Creates a state directory: configuration, root key, HMAC key, database, owner admin key.
pub async fn init(dir: &Path, listen: &str, store: Option<&str>) -> anyhow::Result<Initialized> {
    if let Some(url) = store {
        if !(url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || url.starts_with("sqlite:")
            || url.starts_with("env:")
            || url.starts_with("file:"))
        {
            anyhow::bail!(
                "--store {}: give postgres://user@host:5432/db, sqlite:///path/airlock.db, or env:NAME / file:/path holding one",
                airlock_store::redact_url(url)
            );
        }
    }
    let fresh = std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none());
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let cfg_path = dir.join("airlock.toml");
    if cfg_path.exists() {
        anyhow::bail!("{} already exists: this directory is initialised (admin keys are shown only once; mint new ones with the owner key)", cfg_path.display());
    }
    #[cfg(unix)]
    if fresh {
        // The database and configuration are not secret, but nobody else needs them either.
        // Only a directory init created (or found empty) is locked down: `--dir .` must not
        // change the permissions of someone's existing directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let text = Config::template(&dir, listen, store);
    let cfg = Config::parse(&text, std::iter::empty()).map_err(anyhow::Error::msg)?;
    let keys_dir = cfg.keys_dir();
    std::fs::create_dir_all(&keys_dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&keys_dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let public = KeyRing::generate(&keys_dir, cfg.keys.root_key_id)?;
    let audit_public = airlock_audit::AuditKey::generate(&keys_dir, cfg.audit.key_id)
        .map_err(anyhow::Error::msg)?;
    let hmac = HmacKey::generate();
    airlock_token::write_private(&keys_dir.join(HMAC_KEY_FILE), hmac.to_hex().as_bytes())?;
    if let Some(airlock_secretstore::sealed::Kek::Keyfile(p)) = cfg
        .secrets
        .kek
        .as_deref()
        .and_then(|k| airlock_secretstore::sealed::Kek::parse(k).ok())
    {
        airlock_secretstore::sealed::Keyfile::add_version(&p).map_err(anyhow::Error::msg)?;
    }
    let store = Store::open(&cfg.store_connect_url()?).await?;
    let admin_token =
        admin::create_admin_key(&store, &hmac, "owner", admin::Role::Owner, None).await?;
    // Readable by its owner only: a store URL may carry a password.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new();
        f.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut f, 0o600);
        f.open(&cfg_path)
            .with_context(|| format!("cannot create {}", cfg_path.display()))?
            .write_all(text.as_bytes())?;
    }
    Ok(Initialized {
        config: cfg_path,
        admin_token,
        public_key: format!("ed25519/{}", public.to_bytes_hex()),
        audit_public_key: audit_public,
        store: airlock_store::redact_url(&cfg.store_url()),
        listen: listen.to_string(),
    })
}
