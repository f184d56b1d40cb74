//! A gateway without a listener, for unit tests: `airlock init` in a temporary directory, then
//! the same `build_app` that `serve` runs (SQLite, the audit writer, every handle), plus the
//! mock provider on a loopback port and helpers to add credentials and read the audit log.

use crate::state::App;
use airlock_secrets::Secret;
use airlock_store::{AuditFilter, CredentialRow};
use std::sync::Arc;

/// A built gateway in a temporary state directory.
pub struct Kit {
    /// The state directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// Every handle, as `serve` builds them.
    pub app: Arc<App>,
    /// Where `file:` keys live (a reference may not point into the state directory).
    pub files: tempfile::TempDir,
}

/// A key-shaped value made at run time (no key-like string is committed).
pub fn key(tag: &str) -> String {
    format!("sk-test-{tag}-{}", airlock_secrets::random_token(12))
}

impl Kit {
    /// `init` then `build_app`, with `extra` appended to the configuration.
    pub async fn new(extra: &str) -> Kit {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let init = crate::init(dir.path(), "127.0.0.1:0", None)
            .await
            .unwrap_or_else(|e| panic!("init: {e}"));
        if !extra.is_empty() {
            let mut text = std::fs::read_to_string(&init.config).unwrap_or_default();
            text.push('\n');
            text.push_str(extra);
            std::fs::write(&init.config, text).unwrap_or_else(|e| panic!("config: {e}"));
        }
        let cfg = crate::config::Config::load(&init.config, std::iter::empty())
            .unwrap_or_else(|e| panic!("config: {e}"));
        let (app, _writer) = crate::build_app(cfg)
            .await
            .unwrap_or_else(|e| panic!("build_app: {e}"));
        let files = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        Kit { dir, app, files }
    }

    /// A file outside the state directory holding `value`.
    pub fn key_file(&self, name: &str, value: &str) -> std::path::PathBuf {
        let p = self.files.path().join(name);
        std::fs::write(&p, value).unwrap_or_else(|e| panic!("write: {e}"));
        p
    }

    /// Adds a credential whose key is sealed under the KEK, and reloads the set.
    pub async fn sealed_credential(&self, name: &str, env: &str, value: &str, base_url: &str) {
        let sealed = self
            .app
            .creds
            .secrets
            .seal(name, &Secret::new(value.to_string()))
            .await
            .unwrap_or_else(|e| panic!("seal: {e}"));
        let reference = format!("sealed:{}", sealed.id);
        self.insert(name, env, &reference, base_url, Some(&sealed))
            .await;
    }

    /// Adds a credential row and reloads the set.
    pub async fn credential(&self, name: &str, env: &str, reference: &str, base_url: &str) {
        self.insert(name, env, reference, base_url, None).await;
    }

    async fn insert(
        &self,
        name: &str,
        env: &str,
        reference: &str,
        base_url: &str,
        sealed: Option<&airlock_store::SealedRow>,
    ) {
        let row = CredentialRow {
            name: name.into(),
            provider: "openai".into(),
            env: env.into(),
            secret_ref: reference.into(),
            base_url: Some(base_url.into()),
            models: vec!["gpt-*".into()],
            priority: 0,
            fingerprint: None,
            last4: None,
            created_at: crate::util::now_ms(),
            rotated_at: None,
            last_used_at: None,
            suspended: false,
            secret_version: None,
        };
        self.app
            .store
            .insert_credential_with(&row, sealed)
            .await
            .unwrap_or_else(|e| panic!("insert credential: {e}"));
        self.app
            .creds
            .reload()
            .await
            .unwrap_or_else(|e| panic!("reload: {e}"));
    }

    /// The headers of a client holding a fresh token (subject `alice`, 10 minutes) for `env`
    /// and `models`, signed by the server's current root key.
    pub fn token(&self, env: &str, models: &[&str]) -> http::HeaderMap {
        let opts = airlock_token::MintOptions {
            subject: "alice".into(),
            env: env.into(),
            models: models.iter().map(|m| m.to_string()).collect(),
            credentials: Vec::new(),
            ttl: std::time::Duration::from_secs(600),
            project: None,
        };
        let v = self.app.tokens.verifier.load_full();
        let t = airlock_token::mint(v.keys(), &opts, std::time::SystemTime::now())
            .unwrap_or_else(|e| panic!("mint: {e}"));
        let mut h = http::HeaderMap::new();
        let value = http::HeaderValue::from_str(&format!("Bearer {}", t.token));
        h.insert(
            http::header::AUTHORIZATION,
            value.unwrap_or_else(|_| panic!("header")),
        );
        h
    }

    /// Waits until every record queued so far is durable.
    pub async fn flush(&self) {
        let marker = airlock_audit::Record {
            ts: crate::util::now_ms(),
            actor_kind: "system".into(),
            action: "test.flush".into(),
            outcome: "ok".into(),
            ..Default::default()
        };
        assert!(self.app.recorder.write(None, marker).await.may_answer());
    }

    /// I1: `needle` appears in no file of the state directory (database, WAL, checkpoint
    /// copy, keys), read after every queued record is durable.
    pub async fn assert_nowhere(&self, needle: &str) {
        self.flush().await;
        let mut dirs = vec![self.dir.path().to_path_buf()];
        let mut files = 0;
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if let Ok(bytes) = std::fs::read(&p) {
                    files += 1;
                    let found = bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
                    assert!(!found, "I1: a key's bytes are in {}", p.display());
                }
            }
        }
        assert!(files >= 3, "the state directory was read ({files} files)");
    }

    /// The audit records with `action`, oldest first.
    pub async fn audit(&self, action: &str) -> Vec<airlock_audit::Record> {
        self.flush().await;
        let f = AuditFilter {
            action: Some(action.into()),
            limit: 10_000,
            ..Default::default()
        };
        self.app
            .store
            .audit_records(&f)
            .await
            .unwrap_or_else(|e| panic!("audit: {e}"))
            .into_iter()
            .map(|s| s.record)
            .collect()
    }
}

/// The mock provider on a loopback port, accepting `keys`; its base URL (`…/v1`).
pub async fn mock_provider(keys: &[&str]) -> String {
    let router = airlock_providers::mock::router(airlock_providers::mock::MockOptions {
        expect_keys: keys.iter().map(|k| Secret::new(k.to_string())).collect(),
        fail_status: None,
        chunk_delay: std::time::Duration::ZERO,
        name: "unit".into(),
        models: vec!["gpt-4o-mini".into()],
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}/v1")
}
