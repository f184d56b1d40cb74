//! Shared server state.

use crate::config::Config;
use crate::usage::Recorder;
use crate::util::HttpClient;
use airlock_secrets::HmacKey;
use airlock_store::Store;
use std::sync::Arc;
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
    /// Mints tokens (admin keys, developers, service accounts, exchanges).
    pub issuer: Arc<crate::identity::Issuer>,
    /// The control plane (the admin API's state).
    pub control: Arc<crate::admin::Control>,
    /// Acts on anomaly alarms.
    pub reactor: Arc<crate::alarms::Reactor>,
    /// Rotates credentials' keys.
    pub rotator: Arc<crate::rotation::Rotator>,
    /// Incident lockdown and report.
    pub responder: Arc<crate::incident::Responder>,
    /// The credentials in force, their keys and the secret stores.
    pub creds: Arc<crate::credentials::Credentials>,
    /// Provider client.
    pub client: HttpClient,
    /// Usage recorder.
    pub recorder: Recorder,
    /// The data plane.
    pub gateway: Arc<crate::proxy::Gateway>,
    /// When the server started.
    pub started: Instant,
    /// Token exchange: trust policies and issuers' keys.
    pub trust: Arc<crate::oidc::Trust>,
    /// Spend caps and their reservations.
    pub budgets: Arc<airlock_spend::budget::Budgets>,
    /// Requests and tokens per minute.
    pub rate_limits: Arc<airlock_spend::ratelimit::RateLimits>,
    /// Held for the server's life: one server per state directory (a second one would append
    /// to the same audit log).
    pub state_lock: std::fs::File,
    /// Held for the server's life on PostgreSQL: one server per database, for the same reason.
    pub store_lock: airlock_store::ServerLock,
}

impl App {}
