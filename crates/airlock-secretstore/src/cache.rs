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
}

struct Held {
    secret: Arc<Secret>,
    version: Option<String>,
    read_at: Instant,
    mtime: Option<SystemTime>,
}

#[derive(Default)]
struct State {
    held: Option<Held>,
    last_error: Option<ResolveError>,
    retry_at: Option<Instant>,
    failures: u32,
    /// When a `file:` reference's modification time was last compared.
    checked_at: Option<Instant>,
}

/// A credential's cached key.
#[derive(Default)]
pub struct SecretCell {
    state: Mutex<State>,
    reading: tokio::sync::Mutex<()>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SecretCell {
    /// An empty cell.
    pub fn new() -> Self {
        Self::default()
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
        (fetch.result.clone(), Some(fetch))
    }

    fn failing(&self, now: Instant) -> Option<ResolveError> {
        let st = lock(&self.state);
        match (&st.last_error, st.retry_at) {
            (Some(e), Some(t)) if now < t => Some(e.clone()),
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

    async fn read(
        &self,
        stores: &Stores,
        r: &SecretRef,
        credential: &str,
        p: &CachePolicy,
    ) -> Fetch {
        let mtime = r.version_hint();
        let got = stores.resolve(r, credential).await;
        let now = Instant::now();
        let mut st = lock(&self.state);
        match got {
            Ok(Resolution { secret, version }) => {
                let secret = Arc::new(secret);
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
                }
            }
        }
    }
}
