//! One credential's key in memory: fresh for `ttl`, refreshed ahead of that in the background,
//! served stale while its store is down for at most `max_stale` after the last good read, and
//! dropped at once when the store gives a definite "no" (refused, deleted, KEK revoked).
//!
//! The hot path never waits on a store while a usable value is held; without one, concurrent
//! requests share one read (single flight), and after a failure they fail fast until the
//! retry time (exponential backoff with jitter), so a dead store costs no request a timeout.

use crate::{Resolution, Stores};
use airlock_secrets::{ResolveError, Secret, SecretRef};
use rand::Rng;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Timing of the cache.
#[derive(Debug, Clone, Copy)]
pub struct CachePolicy {
    /// How long a value read from a remote store is fresh.
    pub ttl: Duration,
    /// How long after its last good read a value may still be served while the store is down.
    pub max_stale: Duration,
    /// How often a `file:` reference's modification time is checked.
    pub file_check: Duration,
    /// First retry delay after a failed read (doubles up to `ttl`, with jitter).
    pub retry_min: Duration,
    /// Whether a changed key read from the store waits as a candidate (tested, then promoted
    /// by the caller) instead of replacing the key in service at once.
    pub test_changes: bool,
}

/// What one read from the store gave (every read is audited by the caller).
pub struct Fetch {
    /// The value read, or why not.
    pub result: Result<Arc<Secret>, ResolveError>,
    /// The store's version of it.
    pub version: Option<String>,
    /// Whether a held value was dropped because of this read's answer.
    pub dropped: bool,
    /// Whether a stale value is still being served after this failed read.
    pub serving_stale: bool,
    /// Whether the value read differs from the key in service and waits as a candidate.
    pub candidate: bool,
}

struct Held {
    secret: Arc<Secret>,
    version: Option<String>,
    read_at: Instant,
    mtime: Option<SystemTime>,
}

#[derive(Default)]
struct State {
    /// Bumped by every promotion: a read that started before one is stale and discarded.
    generation: u64,
    held: Option<Held>,
    /// A different key the store returned, not in service until promoted.
    candidate: Option<(Arc<Secret>, Option<String>)>,
    last_error: Option<ResolveError>,
    retry_at: Option<Instant>,
    failures: u32,
    /// When a `file:` reference's modification time was last compared.
    checked_at: Option<Instant>,
}

/// Decides whether a key read into an empty cell may serve at once (it is the key the
/// inventory last approved); otherwise it waits as a candidate for its test.
pub type Approval = Arc<dyn Fn(&Secret) -> bool + Send + Sync>;

/// A credential's cached key.
#[derive(Default)]
pub struct SecretCell {
    state: Mutex<State>,
    reading: tokio::sync::Mutex<()>,
    approval: Option<Approval>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SecretCell {
    /// An empty cell.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cell whose first key must pass `approval` (be the one last approved) to serve
    /// without a test: after a restart, or after the held key was dropped, a store that now
    /// holds another key (one the provider may refuse) does not put it in service untested.
    pub fn with_approval(approval: Approval) -> Self {
        SecretCell {
            approval: Some(approval),
            ..Self::default()
        }
    }

    /// The value to use now, if one is held and usable without asking the store.
    fn usable(&self, r: &SecretRef, p: &CachePolicy, now: Instant) -> Option<Arc<Secret>> {
        let mut st = lock(&self.state);
        let held = st.held.as_ref()?;
        match r {
            SecretRef::Env(_) => Some(held.secret.clone()),
            SecretRef::File(_) => {
                let due = st
                    .checked_at
                    .is_none_or(|t| now.duration_since(t) >= p.file_check);
                if !due {
                    return Some(held.secret.clone());
                }
                let mtime = r.version_hint();
                if mtime.is_some() && mtime == held.mtime {
                    let s = held.secret.clone();
                    st.checked_at = Some(now);
                    return Some(s);
                }
                None
            }
            _ => (now.duration_since(held.read_at) < p.max_stale).then(|| held.secret.clone()),
        }
    }

    /// The key for a request. `Ok((secret, None))` from memory; otherwise the store was
    /// read and the [`Fetch`] says how (the caller audits it). A recent failure is returned
    /// at once, without a read, until its retry time.
    pub async fn get(
        &self,
        stores: &Stores,
        r: &SecretRef,
        credential: &str,
        p: &CachePolicy,
    ) -> (Result<Arc<Secret>, ResolveError>, Option<Fetch>) {
        let now = Instant::now();
        if let Some(s) = self.usable(r, p, now) {
            return (Ok(s), None);
        }
        if let Some(e) = self.failing(now) {
            return (Err(e), None);
        }
        let _one = self.reading.lock().await;
        // Another request may have read it while this one waited.
        let now = Instant::now();
        if let Some(s) = self.usable(r, p, now) {
            return (Ok(s), None);
        }
        if let Some(e) = self.failing(now) {
            return (Err(e), None);
        }
        let fetch = self.read(stores, r, credential, p).await;
        if fetch.candidate {
            // A changed key is never served before its test: the key in service, if any.
            let st = lock(&self.state);
            let now_serving = match &st.held {
                Some(h) => Ok(h.secret.clone()),
                None => Err(st.last_error.clone().unwrap_or_else(|| {
                    ResolveError::Unavailable("the new key is being tested".into())
                })),
            };
            drop(st);
            return (now_serving, Some(fetch));
        }
        (fetch.result.clone(), Some(fetch))
    }

    fn failing(&self, now: Instant) -> Option<ResolveError> {
        let st = lock(&self.state);
        match (&st.last_error, st.retry_at) {
            (Some(e), Some(t)) if now < t => Some(e.clone()),
            // An untested key waits for its test: nothing to serve meanwhile.
            (Some(e), _) if st.held.is_none() && st.candidate.is_some() => Some(e.clone()),
            _ => None,
        }
    }

    /// Whether the background refresher should read the store now: never read yet, a
    /// remote value past 80% of its TTL, a changed file, or a failed read due for retry.
    pub fn due(&self, r: &SecretRef, p: &CachePolicy, now: Instant) -> bool {
        let st = lock(&self.state);
        if st.retry_at.is_some_and(|t| now < t) {
            return false;
        }
        let Some(held) = &st.held else {
            return true;
        };
        match r {
            SecretRef::Env(_) => false,
            SecretRef::File(_) => {
                st.checked_at
                    .is_none_or(|t| now.duration_since(t) >= p.file_check)
                    && r.version_hint() != held.mtime
            }
            _ => now.duration_since(held.read_at) >= p.ttl.mul_f32(0.8),
        }
    }

    /// A background refresh: reads the store unless a read is already under way.
    pub async fn refresh(
        &self,
        stores: &Stores,
        r: &SecretRef,
        credential: &str,
        p: &CachePolicy,
    ) -> Option<Fetch> {
        let _one = self.reading.try_lock().ok()?;
        if !self.due(r, p, Instant::now()) {
            return None;
        }
        Some(self.read(stores, r, credential, p).await)
    }

    /// Drops a value held past `max_stale` (the refresher calls this so an expired key does
    /// not linger in memory); true when one was dropped.
    pub fn expire(&self, r: &SecretRef, p: &CachePolicy, now: Instant) -> bool {
        if r.is_local() {
            return false;
        }
        let mut st = lock(&self.state);
        let old = st
            .held
            .as_ref()
            .is_some_and(|h| now.duration_since(h.read_at) >= p.max_stale);
        if old {
            st.held = None;
        }
        old
    }

    /// Reads the store now, bypassing the cache, and keeps the result (for `credential
    /// verify` and `doctor`, which must prove the store answers).
    pub async fn read_now(
        &self,
        stores: &Stores,
        r: &SecretRef,
        credential: &str,
        p: &CachePolicy,
    ) -> Fetch {
        let _one = self.reading.lock().await;
        self.read(stores, r, credential, p).await
    }

    /// The version of the value held, if any.
    pub fn version(&self) -> Option<String> {
        lock(&self.state)
            .held
            .as_ref()
            .and_then(|h| h.version.clone())
    }

    /// The key in service and its version.
    pub fn current(&self) -> Option<(Arc<Secret>, Option<String>)> {
        lock(&self.state)
            .held
            .as_ref()
            .map(|h| (h.secret.clone(), h.version.clone()))
    }

    /// A changed key waiting to be tested and promoted.
    pub fn candidate(&self) -> Option<(Arc<Secret>, Option<String>)> {
        lock(&self.state).candidate.clone()
    }

    /// Puts `secret` in service now (a rotation's promotion): every request from here on gets
    /// it; requests already under way keep the key they started with.
    pub fn promote(&self, secret: Arc<Secret>, version: Option<String>, r: &SecretRef) {
        let mut st = lock(&self.state);
        st.held = Some(Held {
            secret,
            version,
            read_at: Instant::now(),
            mtime: r.version_hint(),
        });
        st.candidate = None;
        st.last_error = None;
        st.retry_at = None;
        st.failures = 0;
        st.generation += 1;
    }

    /// Promotes the candidate if it is still `expected`; false when it changed meanwhile.
    pub fn promote_candidate(&self, expected: &Arc<Secret>) -> bool {
        let mut st = lock(&self.state);
        let Some((c, v)) = st.candidate.take() else {
            return false;
        };
        if !Arc::ptr_eq(&c, expected) {
            st.candidate = Some((c, v));
            return false;
        }
        let mtime = st.held.as_ref().and_then(|h| h.mtime);
        st.held = Some(Held {
            secret: c,
            version: v,
            read_at: Instant::now(),
            mtime,
        });
        st.last_error = None;
        st.retry_at = None;
        st.failures = 0;
        st.generation += 1;
        true
    }

    /// Drops a candidate (a rotated-out key the store returned again: never put back).
    pub fn discard_candidate(&self, expected: &Arc<Secret>) {
        let mut st = lock(&self.state);
        if st
            .candidate
            .as_ref()
            .is_some_and(|(c, _)| Arc::ptr_eq(c, expected))
        {
            st.candidate = None;
        }
    }

    async fn read(
        &self,
        stores: &Stores,
        r: &SecretRef,
        credential: &str,
        p: &CachePolicy,
    ) -> Fetch {
        let mtime = r.version_hint();
        let generation = lock(&self.state).generation;
        let got = stores.resolve(r, credential).await;
        let now = Instant::now();
        let mut st = lock(&self.state);
        if st.generation != generation {
            // A promotion happened while the store was read: what it returned predates the
            // key now in service and must not become a candidate to put the old one back.
            let held = st
                .held
                .as_ref()
                .map(|h| (h.secret.clone(), h.version.clone()));
            return Fetch {
                result: held
                    .as_ref()
                    .map(|(s, _)| s.clone())
                    .ok_or_else(|| ResolveError::Unavailable("promoted meanwhile".into())),
                version: held.and_then(|(_, v)| v),
                dropped: false,
                serving_stale: false,
                candidate: false,
            };
        }
        match got {
            Ok(Resolution { secret, version }) => {
                let secret = Arc::new(secret);
                let guarded = p.test_changes && !matches!(r, SecretRef::Env(_));
                if let (true, Some(h)) = (guarded, st.held.as_mut()) {
                    if !h.secret.ct_eq(&secret) {
                        // The key in service stays until the candidate passes its test; the
                        // store did answer, so the held key counts as freshly confirmed.
                        h.read_at = now;
                        h.mtime = mtime;
                        let same = st.candidate.as_ref().is_some_and(|(c, _)| c.ct_eq(&secret));
                        if !same {
                            st.candidate = Some((secret.clone(), version.clone()));
                        }
                        let secret = st
                            .candidate
                            .as_ref()
                            .map(|(c, _)| c.clone())
                            .unwrap_or(secret);
                        st.last_error = None;
                        st.retry_at = None;
                        st.failures = 0;
                        st.checked_at = Some(now);
                        return Fetch {
                            result: Ok(secret),
                            version,
                            dropped: false,
                            serving_stale: false,
                            candidate: true,
                        };
                    }
                }
                let unapproved = guarded
                    && st.held.is_none()
                    && self.approval.as_ref().is_some_and(|ok| !ok(&secret));
                if unapproved {
                    // Not the key last approved: it waits, untested keys never serve.
                    st.candidate = Some((secret.clone(), version.clone()));
                    st.last_error = Some(ResolveError::Unavailable(
                        "the store holds a key other than the one last approved; it is being tested with the provider".into(),
                    ));
                    // Read again (and retested) no sooner than one refresh from now.
                    st.retry_at = Some(now + p.ttl);
                    st.checked_at = Some(now);
                    return Fetch {
                        result: Ok(secret),
                        version,
                        dropped: false,
                        serving_stale: false,
                        candidate: true,
                    };
                }
                st.candidate = None;
                st.held = Some(Held {
                    secret: secret.clone(),
                    version: version.clone(),
                    read_at: now,
                    mtime,
                });
                st.last_error = None;
                st.retry_at = None;
                st.failures = 0;
                st.checked_at = Some(now);
                Fetch {
                    result: Ok(secret),
                    version,
                    dropped: false,
                    serving_stale: false,
                    candidate: false,
                }
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                let base = p
                    .retry_min
                    .saturating_mul(1 << st.failures.min(16).saturating_sub(1))
                    .min(p.ttl.max(p.retry_min));
                let jitter = rand::thread_rng().gen_range(0.8..1.2);
                st.retry_at = Some(now + base.mul_f64(jitter));
                st.checked_at = Some(now);
                let definite = e.is_definite();
                let dropped = definite && st.held.is_some();
                if definite {
                    st.held = None;
                    st.candidate = None;
                }
                let serving_stale = st
                    .held
                    .as_ref()
                    .is_some_and(|h| now.duration_since(h.read_at) < p.max_stale);
                st.last_error = Some(e.clone());
                Fetch {
                    result: Err(e),
                    version: None,
                    dropped,
                    serving_stale,
                    candidate: false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HttpClient, Settings};
    use std::path::Path;

    fn http() -> HttpClient {
        let mut c = hyper_util::client::legacy::connect::HttpConnector::new();
        c.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .unwrap()
            .https_or_http()
            .enable_http1()
            .wrap_connector(c);
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https)
    }

    async fn stores(dir: &Path) -> Stores {
        let db = airlock_store::Store::open_sqlite(&dir.join("t.db"))
            .await
            .unwrap();
        Stores::new(
            Settings {
                vault: Default::default(),
                aws: Default::default(),
                kek: None,
                timeout: Duration::from_secs(2),
                exec: crate::exec::ExecPolicy {
                    allow: vec![vec!["/bin/sh".into(), "-c".into()]],
                    env: Vec::new(),
                    timeout: Duration::from_secs(2),
                },
                file_policy: Default::default(),
            },
            http(),
            db,
            &|_| None,
        )
        .unwrap()
    }

    /// A store played by a command whose behaviour a file decides: `ok KEY` prints the key,
    /// `down` fails (the store did not answer), `gone` prints nothing (a definite "no"),
    /// `slow` sleeps past the timeout. Each run appends a line to `runs`.
    fn script(dir: &Path) -> SecretRef {
        let mode = dir.join("mode");
        let runs = dir.join("runs");
        let sh = format!(
            "echo x >> {r}; m=$(cat {m}); case \"$m\" in ok*) echo \"${{m#ok }}\";; down) exit 1;; gone) ;; slow) sleep 5;; esac",
            r = runs.display(),
            m = mode.display()
        );
        SecretRef::Exec(vec!["/bin/sh".into(), "-c".into(), sh])
    }

    fn set(dir: &Path, mode: &str) {
        std::fs::write(dir.join("mode"), mode).unwrap();
    }

    fn runs(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("runs"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn policy() -> CachePolicy {
        CachePolicy {
            ttl: Duration::from_millis(300),
            max_stale: Duration::from_millis(900),
            file_check: Duration::from_millis(100),
            retry_min: Duration::from_millis(200),
            test_changes: false,
        }
    }

    #[tokio::test]
    async fn stale_while_down_dropped_when_refused_fast_failure_in_backoff() {
        let dir = std::env::temp_dir().join(format!(
            "airlock-cache-{}",
            airlock_secrets::random_token(6)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let s = stores(&dir).await;
        let r = script(&dir);
        let p = policy();
        let cell = SecretCell::new();
        set(&dir, "ok abcdefghijklmnop1");
        let (got, fetch) = cell.get(&s, &r, "c", &p).await;
        assert_eq!(got.unwrap().last4(), "nop1");
        assert!(fetch.is_some(), "the first use reads the store");
        let (got, fetch) = cell.get(&s, &r, "c", &p).await;
        assert!(got.is_ok() && fetch.is_none(), "then memory");
        assert_eq!(runs(&dir), 1);

        // The store goes down: a refresh fails, the old key keeps serving until max_stale.
        set(&dir, "down");
        tokio::time::sleep(p.ttl).await;
        assert!(cell.due(&r, &p, Instant::now()));
        let f = cell.refresh(&s, &r, "c", &p).await.unwrap();
        assert!(f.result.is_err() && f.serving_stale && !f.dropped);
        assert!(
            !cell.due(&r, &p, Instant::now()),
            "backoff before the next try"
        );
        let (got, fetch) = cell.get(&s, &r, "c", &p).await;
        assert_eq!(got.unwrap().last4(), "nop1");
        assert!(fetch.is_none());
        // Past max_stale: the refresher drops it; requests fail fast while backing off.
        tokio::time::sleep(p.max_stale).await;
        assert!(cell.expire(&r, &p, Instant::now()));
        let before = runs(&dir);
        let (got, _) = cell.get(&s, &r, "c", &p).await;
        assert!(matches!(got, Err(ResolveError::Unavailable(_))));
        let t = Instant::now();
        for _ in 0..20 {
            let (got, fetch) = cell.get(&s, &r, "c", &p).await;
            assert!(got.is_err() && fetch.is_none());
        }
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "no store call during backoff"
        );
        assert!(runs(&dir) <= before + 1);

        // Back up: the next read after the backoff serves the new key.
        set(&dir, "ok abcdefghijklmnop2");
        tokio::time::sleep(Duration::from_millis(600)).await;
        let (got, _) = cell.get(&s, &r, "c", &p).await;
        assert_eq!(got.unwrap().last4(), "nop2");

        // A definite "no" (the store answers, nothing there) drops the held key at once.
        set(&dir, "gone");
        tokio::time::sleep(p.ttl).await;
        let f = cell.refresh(&s, &r, "c", &p).await.unwrap();
        assert!(f.dropped && matches!(f.result, Err(ResolveError::NotFound(_))));
        let (got, _) = cell.get(&s, &r, "c", &p).await;
        assert!(
            got.is_err(),
            "a withdrawn key is not served, even within max_stale"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_changed_key_waits_as_a_candidate_until_promoted() {
        let dir = std::env::temp_dir().join(format!(
            "airlock-cache-{}",
            airlock_secrets::random_token(6)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let s = stores(&dir).await;
        let r = script(&dir);
        let p = CachePolicy {
            test_changes: true,
            ..policy()
        };
        let cell = SecretCell::new();
        set(&dir, "ok abcdefghijklmnop1");
        assert!(cell.get(&s, &r, "c", &p).await.0.is_ok());
        set(&dir, "ok abcdefghijklmnop2");
        tokio::time::sleep(p.ttl).await;
        let f = cell.refresh(&s, &r, "c", &p).await.unwrap();
        assert!(f.candidate);
        assert!(
            !cell.due(&r, &p, Instant::now()),
            "the store answered: not due again at once"
        );
        // Still the old key in service; the new one waits.
        assert_eq!(cell.get(&s, &r, "c", &p).await.0.unwrap().last4(), "nop1");
        let (cand, _) = cell.candidate().unwrap();
        assert_eq!(cand.last4(), "nop2");
        // A stale promotion (another candidate arrived) does nothing.
        assert!(!cell.promote_candidate(&Arc::new(Secret::new("other-key-value".into()))));
        assert!(cell.promote_candidate(&cand));
        assert_eq!(cell.get(&s, &r, "c", &p).await.0.unwrap().last4(), "nop2");
        assert!(cell.candidate().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_read_that_started_before_a_promotion_is_discarded() {
        let dir = std::env::temp_dir().join(format!(
            "airlock-cache-{}",
            airlock_secrets::random_token(6)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let s = Arc::new(stores(&dir).await);
        let r = script(&dir);
        let p = CachePolicy {
            test_changes: true,
            ..policy()
        };
        let cell = Arc::new(SecretCell::new());
        set(&dir, "ok abcdefghijklmnop1");
        assert!(cell.get(&s, &r, "c", &p).await.0.is_ok());
        // The store is slow; while it answers with the old key, a rotation promotes a new one.
        std::fs::write(dir.join("mode"), "ok abcdefghijklmnop1").unwrap();
        let slow = SecretRef::Exec(vec![
            "/bin/sh".into(),
            "-c".into(),
            "sleep 0.5; echo abcdefghijklmnop1".into(),
        ]);
        let (s2, c2, slow2) = (s.clone(), cell.clone(), slow.clone());
        let read = tokio::spawn(async move { c2.read_now(&s2, &slow2, "c", &p).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let new = Arc::new(Secret::new("abcdefghijklmnop2".into()));
        cell.promote(new, None, &slow);
        let f = read.await.unwrap();
        assert!(!f.candidate, "the stale read must not become a candidate");
        assert!(cell.candidate().is_none());
        assert_eq!(cell.current().unwrap().0.last4(), "nop2");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn an_unapproved_first_read_waits_and_never_serves() {
        let dir = std::env::temp_dir().join(format!(
            "airlock-cache-{}",
            airlock_secrets::random_token(6)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let s = stores(&dir).await;
        let r = script(&dir);
        let p = CachePolicy {
            test_changes: true,
            ..policy()
        };
        // Only the key ending in 1 is approved.
        let cell = SecretCell::with_approval(Arc::new(|k: &Secret| k.last4() == "nop1"));
        set(&dir, "ok abcdefghijklmnop9");
        let (got, f) = cell.get(&s, &r, "c", &p).await;
        assert!(got.is_err(), "an untested key is not served");
        assert!(f.unwrap().candidate);
        assert_eq!(cell.candidate().unwrap().0.last4(), "nop9");
        let (got, f) = cell.get(&s, &r, "c", &p).await;
        assert!(got.is_err() && f.is_none(), "no store read while it waits");
        // Promoted after its test: served.
        let (cand, _) = cell.candidate().unwrap();
        assert!(cell.promote_candidate(&cand));
        assert_eq!(cell.get(&s, &r, "c", &p).await.0.unwrap().last4(), "nop9");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn concurrent_first_uses_share_one_read_and_a_hung_store_costs_one_timeout() {
        let dir = std::env::temp_dir().join(format!(
            "airlock-cache-{}",
            airlock_secrets::random_token(6)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let s = Arc::new(stores(&dir).await);
        let r = script(&dir);
        let p = policy();
        let cell = Arc::new(SecretCell::new());
        set(&dir, "ok abcdefghijklmnop1");
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (s, r, cell) = (s.clone(), r.clone(), cell.clone());
            tasks.push(tokio::spawn(async move {
                cell.get(&s, &r, "c", &p).await.0.is_ok()
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(runs(&dir), 1, "one read for sixteen first uses");

        // A store that hangs: the read is killed at the timeout, and the waiting requests do
        // not each wait for their own.
        let cell = Arc::new(SecretCell::new());
        set(&dir, "slow");
        let t = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (s, r, cell) = (s.clone(), r.clone(), cell.clone());
            tasks.push(tokio::spawn(async move {
                cell.get(&s, &r, "c", &p).await.0.is_err()
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
