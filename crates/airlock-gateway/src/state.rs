//! Shared server state.

use crate::config::Config;
use crate::credentials::CredentialSet;
use crate::usage::Recorder;
use crate::util::HttpClient;
use airlock_secrets::HmacKey;
use airlock_store::Store;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Everything a handler needs.
pub struct App {
    /// Configuration.
    pub cfg: Config,
    /// Database.
    pub store: Store,
    /// The verifier and the revocation set.
    pub tokens: Arc<crate::tokens::Tokens>,
    /// HMAC key for fingerprints and stored key hashes.
    pub hmac: Arc<HmacKey>,
    /// Where `file:` references may point.
    pub ref_policy: airlock_secrets::ReferencePolicy,
    /// The secret stores (Vault, AWS, commands, sealed secrets).
    pub secrets: airlock_secretstore::Stores,
    /// The secret cache's timing.
    pub cache_policy: airlock_secretstore::CachePolicy,
    /// Credentials, swapped whole when they change.
    pub creds: ArcSwap<CredentialSet>,
    /// Serialises credential reloads.
    pub reload_lock: tokio::sync::Mutex<()>,
    /// Provider client.
    pub client: HttpClient,
    /// Usage recorder.
    pub recorder: Recorder,
    /// Upstream model lists per credential, for `/v1/models`.
    pub model_lists: Mutex<HashMap<String, (Instant, Vec<String>)>>,
    /// When the server started.
    pub started: Instant,
    /// Trust policies for token exchange (configuration's, then the API's).
    pub trust: ArcSwap<Vec<Arc<crate::oidc::Compiled>>>,
    /// OIDC issuers' signing keys.
    pub jwks: crate::oidc::JwksCache,
    /// Spend caps and their reservations.
    pub budgets: Arc<airlock_spend::budget::Budgets>,
    /// Requests and tokens per minute.
    pub rate_limits: Arc<airlock_spend::ratelimit::RateLimits>,
    /// Serialises trust policy reloads.
    pub trust_lock: tokio::sync::Mutex<()>,
    /// Held for the server's life: one server per state directory (a second one would append
    /// to the same audit log).
    pub state_lock: std::fs::File,
    /// The anomaly detector (absent with `[anomaly] enabled = false`).
    pub anomaly: std::sync::OnceLock<Arc<airlock_spend::anomaly::Detector>>,
}

impl App {
    /// Reloads credentials from the store (one reload at a time, so an older read never
    /// replaces a newer set).
    pub async fn reload_credentials(&self) -> Result<(), airlock_store::StoreError> {
        let _one = self.reload_lock.lock().await;
        let rows = self.store.list_credentials().await?;
        let old = self.creds.load_full();
        self.creds.store(Arc::new(CredentialSet::from_rows(
            &rows,
            Some(&old),
            &self.hmac,
        )));
        Ok(())
    }

    /// Rebuilds the trust policy list (after a change through the API).
    pub async fn reload_trust(&self) -> Result<(), String> {
        // One reload at a time, so an older read never replaces a newer list.
        let _one = self.trust_lock.lock().await;
        let list = crate::oidc::load_policies(self).await?;
        // Keys are cached per source (a policy's jwks_url or its issuer's discovery), so a
        // changed policy never inherits another's keys and the cache can stay.
        self.trust.store(Arc::new(list));
        Ok(())
    }
}
