//! The tokens in force: the verifier (replaced whole by an incident lockdown) and the set of
//! revoked token ids (changed at once by a revocation, re-read from the store every second).
//! Authentication of a presented token happens here, for the proxy and the token endpoints.

use crate::util::{now_ms, presented_token};
use airlock_providers::dialect::ApiError;
use airlock_store::Store;
use airlock_token::{TokenError, Verified, Verifier};
use arc_swap::ArcSwap;
use http::{HeaderMap, StatusCode};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

/// Proof that the caller holds the revocation lock of a [`Tokens`] (only `Tokens::serial`
/// makes one).
pub struct RevocationSerial<'a>(#[allow(dead_code)] tokio::sync::MutexGuard<'a, ()>);

/// The verifier and the revocation set.
pub struct Tokens {
    store: Store,
    /// Token verifier (with its cache); replaced whole by an incident lockdown.
    pub verifier: ArcSwap<Verifier>,
    revoked: ArcSwap<HashSet<String>>,
    /// Serialises changes to the revocation set (revocations and reloads).
    lock: tokio::sync::Mutex<()>,
}

impl Tokens {
    /// Tokens verified by `verifier`, revocations read from `store`.
    pub fn new(store: Store, verifier: Verifier) -> Self {
        Tokens {
            store,
            verifier: ArcSwap::from_pointee(verifier),
            revoked: ArcSwap::from_pointee(HashSet::new()),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Reloads the revocation list from the store.
    pub async fn reload_revocations(&self) -> Result<(), airlock_store::StoreError> {
        let _serial = self.lock.lock().await;
        let ids = self.store.revoked_token_ids(now_ms() / 1000).await?;
        self.revoked.store(Arc::new(ids.into_iter().collect()));
        Ok(())
    }

    /// Serialises a change to the revocations: held across the store's write and the
    /// in-memory update, so a periodic reload cannot read the store before the write and then
    /// replace the set after it. Drop it before `reload_revocations`.
    pub async fn serial(&self) -> RevocationSerial<'_> {
        RevocationSerial(self.lock.lock().await)
    }

    /// Marks `id` revoked in memory at once, after the store recorded it; the guard from
    /// `serial` proves the change is serialised with reloads.
    pub fn mark_revoked(&self, _serial: &RevocationSerial<'_>, id: &str) {
        self.revoked.rcu(|cur| {
            let mut next = HashSet::clone(cur);
            next.insert(id.to_string());
            next
        });
    }

    /// Whether a token id is revoked.
    pub fn is_revoked(&self, id: &str) -> bool {
        self.revoked.load().contains(id)
    }

    /// Authenticates the client: verified, unexpired, unrevoked token.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Verified>, ApiError> {
        self.authenticate_identified(headers).map_err(|(e, _)| e)
    }

    /// As [`Tokens::authenticate`], and on refusal the token's identity when its signature
    /// verified (a revoked token still says whose it was: what an incident review needs).
    pub fn authenticate_identified(
        &self,
        headers: &HeaderMap,
    ) -> Result<Arc<Verified>, (ApiError, Option<Arc<Verified>>)> {
        let Some(tok) = presented_token(headers) else {
            return Err((
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing_token",
                    "no token: pass your airlock token as the SDK's api_key (sent as Authorization: Bearer or x-api-key)",
                ),
                None,
            ));
        };
        let v = self
            .verifier
            .load()
            .verify(tok, SystemTime::now())
            .map_err(|e| (token_error(&e), None))?;
        if self.is_revoked(&v.id) {
            return Err((token_error(&TokenError::Revoked(v.id.clone())), Some(v)));
        }
        Ok(v)
    }
}

/// A token refusal in the client's terms: 401 for who you are, 403 for what you may do.
pub fn token_error(e: &TokenError) -> ApiError {
    if e.is_authentication() {
        let code = match e {
            TokenError::Expired(_) => "token_expired",
            TokenError::Revoked(_) => "token_revoked",
            _ => "invalid_token",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
    } else {
        ApiError::new(StatusCode::FORBIDDEN, "not_allowed", e.to_string())
    }
}
