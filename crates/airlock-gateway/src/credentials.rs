//! The credentials the router chooses from, compiled from the store, and their secrets.
//!
//! Each credential's key is held by an [`airlock_secretstore::SecretCell`]: read from its
//! store when first needed (or by the background refresher), kept in memory only, re-read
//! ahead of its TTL (a `file:` when it changes), served stale while the store is down up to
//! `max_stale`, dropped when the store refuses. Every read is audited (`secret.resolve`, with
//! the store and version, never the value) and a changed key's fingerprint is written to the
//! inventory.

use crate::usage::Recorder;
use crate::util::now_ms;
use airlock_providers::adapter::ProviderKind;
use airlock_secrets::HmacKey;
use airlock_secrets::{ResolveError, Secret, SecretRef};
use airlock_secretstore::{CachePolicy, Stores};
use airlock_secretstore::{Fetch, SecretCell};
use airlock_store::{CredentialRow, Store};
use airlock_token::glob::Glob;
use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The credentials in force and what reading their keys needs: the secret stores, the cache's
/// timing, the HMAC key for fingerprints, the store for the inventory and the audit writer.
pub struct Credentials {
    set: ArcSwap<CredentialSet>,
    /// One reload at a time, so an older read never replaces a newer set.
    reload_lock: tokio::sync::Mutex<()>,
    /// The database (credential rows, the inventory's fingerprints).
    pub store: Store,
    /// HMAC key for fingerprints.
    pub hmac: Arc<HmacKey>,
    /// The secret stores (Vault, AWS, commands, sealed secrets).
    pub secrets: Stores,
    /// The secret cache's timing.
    pub cache_policy: CachePolicy,
    /// Where reads are audited.
    pub recorder: Recorder,
}

impl Credentials {
    /// No credentials until the first `reload`.
    pub fn new(
        store: Store,
        hmac: Arc<HmacKey>,
        secrets: Stores,
        cache_policy: CachePolicy,
        recorder: Recorder,
    ) -> Self {
        Credentials {
            set: ArcSwap::from_pointee(CredentialSet::default()),
            reload_lock: tokio::sync::Mutex::new(()),
            store,
            hmac,
            secrets,
            cache_policy,
            recorder,
        }
    }

    /// The set in force now.
    pub fn load(&self) -> arc_swap::Guard<Arc<CredentialSet>> {
        self.set.load()
    }

    /// The set in force now, owned.
    pub fn load_full(&self) -> Arc<CredentialSet> {
        self.set.load_full()
    }

    /// Reloads credentials from the store (one reload at a time, so an older read never
    /// replaces a newer set); cached keys of unchanged references are kept.
    pub async fn reload(&self) -> Result<(), airlock_store::StoreError> {
        let _one = self.reload_lock.lock().await;
        let rows = self.store.list_credentials().await?;
        let old = self.set.load_full();
        self.set.store(Arc::new(CredentialSet::from_rows(
            &rows,
            Some(&old),
            &self.hmac,
        )));
        Ok(())
    }
}

/// A usable credential.
pub struct Credential {
    /// Name.
    pub name: String,
    /// Provider.
    pub provider: ProviderKind,
    /// Environment tag.
    pub env: String,
    /// Base URL (default for the provider when none was given).
    pub base_url: String,
    /// Models served.
    pub models: Vec<Glob>,
    /// Lower first.
    pub priority: i64,
    /// Suspended credentials are never chosen.
    pub suspended: bool,
    reference: SecretRef,
    cell: Arc<SecretCell>,
    /// The fingerprint and version last written to the inventory.
    seen: Arc<Mutex<(Option<String>, Option<String>)>>,
    /// One rotation at a time (manual or automatic).
    pub rotating: Arc<tokio::sync::Mutex<()>>,
    /// The automatic rotation of a candidate key: under test, when to retest, alerted (also
    /// how many tests in a row could not reach the provider).
    pub auto: Arc<Mutex<AutoRotation>>,
}

/// State of the automatic test of a new key version seen in the store.
#[derive(Default)]
pub struct AutoRotation {
    /// A test is running.
    pub testing: bool,
    /// The candidate last tested.
    pub fp: Option<String>,
    /// Not retested before this.
    pub next_test: Option<Instant>,
    /// The candidate an alert was raised for.
    pub alerted: Option<String>,
    /// Tests in a row that could not reach the provider.
    pub unreachable: u32,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .field("env", &self.env)
            .field("reference", &self.reference)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// Compiles a stored row.
    pub fn from_row(
        row: &CredentialRow,
        hmac: &Arc<airlock_secrets::HmacKey>,
    ) -> Result<Self, String> {
        let provider = ProviderKind::parse(&row.provider)
            .ok_or_else(|| format!("unknown provider {}", row.provider))?;
        let base_url = row
            .base_url
            .clone()
            .or_else(|| provider.default_base_url().map(str::to_string))
            .ok_or_else(|| format!("credential {} needs a base URL", row.name))?;
        let models = airlock_token::glob::parse_list(&row.models).map_err(|e| e.to_string())?;
        let reference = SecretRef::parse(&row.secret_ref).map_err(|e| e.to_string())?;
        let seen = Arc::new(Mutex::new((
            row.fingerprint.clone(),
            row.secret_version.clone(),
        )));
        Ok(Credential {
            name: row.name.clone(),
            provider,
            env: row.env.clone(),
            base_url,
            models,
            priority: row.priority,
            suspended: row.suspended,
            reference,
            cell: Arc::new(SecretCell::with_approval({
                // A key read into an empty cell serves at once only if it is the one the
                // inventory last approved; any other waits for its test.
                let seen = seen.clone();
                let hmac = hmac.clone();
                Arc::new(move |s: &Secret| match seen.lock() {
                    Ok(g) => g.0.as_deref().is_none_or(|fp| s.fingerprint(&hmac) == fp),
                    Err(_) => false,
                })
            })),
            seen,
            rotating: Default::default(),
            auto: Default::default(),
        })
    }

    /// Whether this credential serves `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|g| g.matches(model))
    }

    /// The key, from memory when it is usable; a read from the store is audited under
    /// `request_id`.
    pub async fn secret(
        &self,
        app: &Credentials,
        request_id: &str,
    ) -> Result<Arc<Secret>, ResolveError> {
        let (got, fetch) = self
            .cell
            .get(&app.secrets, &self.reference, &self.name, &app.cache_policy)
            .await;
        if let Some(f) = fetch {
            self.report(app, &f, Some(request_id), "read");
        }
        got
    }

    /// Reads the key from its store now, bypassing the cache (`credential verify`,
    /// `doctor`); the read is audited and its result kept.
    pub async fn read_now(&self, app: &Credentials, why: &str) -> Fetch {
        let f = self
            .cell
            .read_now(&app.secrets, &self.reference, &self.name, &app.cache_policy)
            .await;
        self.report(app, &f, None, why);
        f
    }

    /// The background refresher's step for this credential.
    async fn refresh(&self, app: &Credentials) {
        if let Some(f) = self
            .cell
            .refresh(&app.secrets, &self.reference, &self.name, &app.cache_policy)
            .await
        {
            self.report(app, &f, None, "refreshed");
        }
    }

    /// The store's version of the key held now.
    pub fn version(&self) -> Option<String> {
        self.cell.version()
    }

    /// The cached key.
    pub fn cell(&self) -> &SecretCell {
        &self.cell
    }

    /// The fingerprint and version the inventory last approved (the key in service, or the
    /// one that was in service before a restart).
    pub fn approved(&self) -> (Option<String>, Option<String>) {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Records that the inventory now holds this fingerprint and version (after a promotion).
    pub fn mark_seen(&self, fp: &str, version: Option<String>) {
        if let Ok(mut s) = self.seen.lock() {
            *s = (Some(fp.to_string()), version);
        }
    }

    /// Audits one read and records a changed fingerprint or version in the inventory.
    fn report(&self, app: &Credentials, f: &Fetch, request_id: Option<&str>, why: &str) {
        let store = self.reference.store();
        let (outcome, reason) = match &f.result {
            Ok(_) if f.candidate => {
                let mut r = format!("{why} from {store}");
                if let Some(v) = &f.version {
                    r.push_str(&format!(" (version {v})"));
                }
                r.push_str("; a new key, not used until the provider accepts it");
                ("ok", r)
            }
            Ok(secret) => {
                let fp = secret.fingerprint(&app.hmac);
                let mut changed = false;
                let mut record = false;
                if let Ok(mut seen) = self.seen.lock() {
                    changed = seen.0.as_deref().is_some_and(|old| old != fp);
                    record = seen.0.as_deref() != Some(fp.as_str())
                        || (f.version.is_some() && seen.1 != f.version);
                    *seen = (Some(fp.clone()), f.version.clone().or(seen.1.take()));
                }
                if record {
                    let store = app.store.clone();
                    let name = self.name.clone();
                    let last4 = secret.last4();
                    let version = f.version.clone();
                    tokio::spawn(async move {
                        if let Err(e) = store
                            .set_fingerprint(&name, &fp, &last4, version.as_deref(), now_ms())
                            .await
                        {
                            tracing::warn!(error = %e, "could not record a changed fingerprint");
                        }
                    });
                }
                let mut r = format!("{why} from {store}");
                if let Some(v) = &f.version {
                    r.push_str(&format!(" (version {v})"));
                }
                if changed {
                    r.push_str("; the key is not the one last seen");
                }
                ("ok", r)
            }
            Err(e) => {
                let mut r = format!("{why} from {store} failed: {e}");
                if f.dropped {
                    r.push_str("; the cached key was dropped");
                } else if f.serving_stale {
                    r.push_str("; the cached key is served until max_stale");
                }
                tracing::warn!(credential = %self.name, store, error = %e, dropped = f.dropped, stale = f.serving_stale, "secret read failed");
                app.recorder
                    .counters
                    .secret_read_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                ("failed", r)
            }
        };
        app.recorder.write_nowait(
            None,
            airlock_audit::Record {
                ts: now_ms(),
                actor_kind: "system".into(),
                action: "secret.resolve".into(),
                target_kind: Some("credential".into()),
                target: Some(self.name.clone()),
                outcome: outcome.into(),
                reason: Some(reason),
                request_id: request_id.map(str::to_string),
                credential: Some(self.name.clone()),
                ..Default::default()
            },
        );
    }

    /// The reference (safe to show).
    pub fn reference(&self) -> &SecretRef {
        &self.reference
    }

    /// Keeps `old`'s cached key when the reference is the same (a reload after another
    /// credential changed must not re-read every store).
    fn adopt(&mut self, old: &Credential) {
        if old.reference == self.reference {
            self.cell = old.cell.clone();
            self.seen = old.seen.clone();
            self.rotating = old.rotating.clone();
            self.auto = old.auto.clone();
        }
    }
}

/// Re-reads keys ahead of their TTL, notices changed files, drops keys older than
/// `max_stale`; hands each credential with a candidate key waiting to `candidate` (the
/// automatic rotation); runs until the credentials are dropped.
pub fn spawn_refresher(
    app: std::sync::Weak<Credentials>,
    candidate: impl Fn(Arc<Credential>) + Send + 'static,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(a) = app.upgrade() else { return };
            let now = Instant::now();
            for c in a.load().all.iter().filter(|c| !c.suspended) {
                if c.cell.expire(&c.reference, &a.cache_policy, now) {
                    tracing::error!(credential = %c.name, "no good read of the key within max_stale: requests needing it are refused until its store answers");
                    a.recorder.write_nowait(
                        None,
                        airlock_audit::Record {
                            ts: now_ms(),
                            actor_kind: "system".into(),
                            action: "secret.expired".into(),
                            target_kind: Some("credential".into()),
                            target: Some(c.name.clone()),
                            outcome: "failed".into(),
                            reason: Some(format!(
                                "no good read from {} within max_stale; the cached key was dropped",
                                c.reference.store()
                            )),
                            credential: Some(c.name.clone()),
                            ..Default::default()
                        },
                    );
                }
                if c.cell.due(&c.reference, &a.cache_policy, now) {
                    let (a2, c2) = (a.clone(), c.clone());
                    tokio::spawn(async move { c2.refresh(&a2).await });
                }
                if c.cell.candidate().is_some() {
                    candidate(c.clone());
                }
            }
        }
    });
}

/// All credentials, sorted by priority then name.
#[derive(Default)]
pub struct CredentialSet {
    /// The credentials.
    pub all: Vec<Arc<Credential>>,
}

impl CredentialSet {
    /// Compiles rows; a row that cannot be compiled is skipped with an error log (it was
    /// validated on the way in, so this only happens after a manual database edit).
    pub fn from_rows(
        rows: &[CredentialRow],
        old: Option<&CredentialSet>,
        hmac: &Arc<airlock_secrets::HmacKey>,
    ) -> Self {
        let mut all: Vec<Arc<Credential>> = rows
            .iter()
            .filter_map(|r| match Credential::from_row(r, hmac) {
                Ok(mut c) => {
                    if let Some(prev) = old.and_then(|o| o.get(&c.name)) {
                        c.adopt(prev);
                    }
                    Some(Arc::new(c))
                }
                Err(e) => {
                    tracing::error!(credential = %r.name, error = %e, "credential skipped");
                    None
                }
            })
            .collect();
        all.sort_by(|a, b| {
            a.priority
                .cmp(&b.priority)
                .then_with(|| a.name.cmp(&b.name))
        });
        CredentialSet { all }
    }

    /// Looks up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Credential>> {
        self.all.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use crate::testkit::{key, Kit};
    use std::sync::atomic::Ordering;

    // Single-threaded runtime (tokio::test's default): the background refresher, which also
    // reads a credential that has no key yet, cannot run between the two reads below.
    #[tokio::test]
    async fn a_key_is_read_once_audited_and_inventoried_without_its_bytes() {
        let kit = Kit::new("").await;
        let k = key("cred");
        let f = kit.key_file("openai", &k);
        let reference = format!("file:{}", f.display());
        kit.credential("c1", "prod", &reference, "http://127.0.0.1:9/v1")
            .await;
        let c = kit.app.creds.load().get("c1").cloned();
        let c = c.unwrap_or_else(|| panic!("loaded"));
        let one = c.secret(&kit.app.creds, "req-1").await;
        let two = c.secret(&kit.app.creds, "req-2").await;
        let (one, two) = (one.ok(), two.ok());
        let fp = one.map(|s| s.fingerprint(&kit.app.hmac));
        assert!(fp.is_some());
        assert_eq!(fp, two.map(|s| s.fingerprint(&kit.app.hmac)));
        let reads = kit.audit("secret.resolve").await;
        assert_eq!(reads.len(), 1, "the second use is served from memory");
        assert_eq!(reads[0].request_id.as_deref(), Some("req-1"));
        assert_eq!(reads[0].outcome, "ok");
        let text = serde_json::to_string(&reads).unwrap_or_default();
        assert!(!text.contains(&k), "I1: no key bytes in the audit record");
        // The inventory learns the key's fingerprint and last four (written in the background).
        let mut row = None;
        for _ in 0..100 {
            row = kit.app.store.get_credential("c1").await.ok().flatten();
            if row.as_ref().is_some_and(|r| r.fingerprint.is_some()) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let row = row.unwrap_or_else(|| panic!("row"));
        assert_eq!(row.fingerprint, fp);
        assert_eq!(row.last4.as_deref(), Some(&k[k.len() - 4..]));
        kit.assert_nowhere(&k).await;
    }

    #[tokio::test]
    async fn an_unreadable_key_is_refused_audited_and_counted() {
        let kit = Kit::new("").await;
        let missing = kit.files.path().join("nothing-here");
        let reference = format!("file:{}", missing.display());
        kit.credential("gone", "prod", &reference, "http://127.0.0.1:9/v1")
            .await;
        let c = kit.app.creds.load().get("gone").cloned();
        let c = c.unwrap_or_else(|| panic!("loaded"));
        assert!(c.secret(&kit.app.creds, "req-1").await.is_err());
        // The background refresher may try again meanwhile; each try is counted, then recorded.
        let failures = kit
            .app
            .recorder
            .counters
            .secret_read_failures
            .load(Ordering::Relaxed);
        let reads = kit.audit("secret.resolve").await;
        assert!(failures >= 1);
        assert!(reads.len() as u64 >= failures);
        assert!(reads
            .iter()
            .all(|r| r.outcome == "failed" && r.credential.as_deref() == Some("gone")));
    }

    #[tokio::test]
    async fn a_reload_keeps_the_cached_key_of_an_unchanged_reference() {
        let kit = Kit::new("").await;
        let f = kit.key_file("a", &key("a"));
        kit.credential(
            "a",
            "prod",
            &format!("file:{}", f.display()),
            "http://127.0.0.1:9/v1",
        )
        .await;
        let c = kit.app.creds.load().get("a").cloned();
        let c = c.unwrap_or_else(|| panic!("loaded"));
        assert!(c.secret(&kit.app.creds, "r1").await.is_ok());
        // Another credential changes the set; `a` keeps its cell.
        let g = kit.key_file("b", &key("b"));
        kit.credential(
            "b",
            "prod",
            &format!("file:{}", g.display()),
            "http://127.0.0.1:9/v1",
        )
        .await;
        let again = kit.app.creds.load().get("a").cloned();
        let again = again.unwrap_or_else(|| panic!("still there"));
        assert!(!std::sync::Arc::ptr_eq(&c, &again), "a new set");
        assert!(again.secret(&kit.app.creds, "r2").await.is_ok());
        let reads = kit.audit("secret.resolve").await;
        let of_a: Vec<_> = reads
            .iter()
            .filter(|r| r.credential.as_deref() == Some("a"))
            .collect();
        assert_eq!(of_a.len(), 1, "not read again after the reload");
    }
}
