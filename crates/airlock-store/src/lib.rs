//! airlock's database: SQLite by default (one file, WAL mode) or PostgreSQL; every query lives
//! in this crate so the rest of the code never writes SQL. No column ever holds a provider key
//! (invariant I1).
//!
//! One [`Store`] handle; its queries are split per aggregate (`credentials`, `tokens`,
//! `access`, `rotations`, `incidents`, `audit`, `usage`, `limits`), each written once for both
//! databases (see `store.rs`); `writer.rs` is the audit writer's batch. This file holds the
//! row types the queries return. `tests/conformance/` runs every query on both databases.
#![warn(missing_docs)]

pub use airlock_audit::{Checkpoint, Sealed};
use serde::Serialize;
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use sqlx::{Executor, Row};
use std::path::Path;
use std::time::Duration;

/// Database failures. Messages name the operation, never a value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A row with this key exists already.
    #[error("{0} already exists")]
    Conflict(String),
    /// The database failed.
    #[error("database error during {op}: {source}")]
    Db {
        /// What we were doing.
        op: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The audit writer's connection failed.
    #[error("database error during {op}: {source}")]
    Writer {
        /// What we were doing.
        op: &'static str,
        /// The driver's error.
        #[source]
        source: rusqlite::Error,
    },
}

fn wdb(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Writer { op, source }
}

fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Db { op, source }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A credential as stored: where its key lives, never the key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CredentialRow {
    /// Unique name, e.g. `openai-prod`.
    pub name: String,
    /// `openai`, `anthropic`, `azure`, `openai-compatible`.
    pub provider: String,
    /// Environment tag.
    pub env: String,
    /// Secret reference (`env:NAME`, `file:/path`).
    pub secret_ref: String,
    /// Base URL override.
    pub base_url: Option<String>,
    /// Model globs this credential serves.
    pub models: Vec<String>,
    /// Lower is tried first.
    pub priority: i64,
    /// Keyed fingerprint of the key.
    pub fingerprint: Option<String>,
    /// Last four characters of the key.
    pub last4: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub rotated_at: Option<i64>,
    /// Unix milliseconds.
    pub last_used_at: Option<i64>,
    /// Suspended credentials serve nothing.
    pub suspended: bool,
    /// The version last read from the secret's store (never the value).
    pub secret_version: Option<String>,
}

/// A sealed secret: ciphertext and a wrapped data key (I1: nothing here opens without the KEK).
#[derive(Clone)]
pub struct SealedRow {
    /// `sealed:ID` names it.
    pub id: String,
    /// The credential it belongs to (bound into the ciphertext).
    pub credential: String,
    /// The KEK reference that wrapped the data key.
    pub kek: String,
    /// Which version of the KEK (keyfile `vN`, Transit `vN`, KMS key ARN).
    pub kek_version: String,
    /// The wrapped data key.
    pub wrapped_key: Vec<u8>,
    /// AES-GCM nonce of the ciphertext.
    pub nonce: Vec<u8>,
    /// The secret, encrypted under the data key.
    pub ciphertext: Vec<u8>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds of the last rewrap.
    pub rewrapped_at: Option<i64>,
}

impl std::fmt::Debug for SealedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedRow")
            .field("id", &self.id)
            .field("credential", &self.credential)
            .field("kek", &self.kek)
            .field("kek_version", &self.kek_version)
            .finish_non_exhaustive()
    }
}

/// Which column `seen_before` reads.
#[derive(Debug, Clone, Copy)]
pub enum SeenColumn {
    /// The token's subject.
    Subject,
    /// The client address.
    ClientIp,
}

/// Requests of one (credential, identity, token, address, model) in a time window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UseGroup {
    /// Credential.
    pub credential: String,
    /// The token's subject (the identity).
    pub subject: Option<String>,
    /// Token id.
    pub token_id: Option<String>,
    /// Client address.
    pub client_ip: Option<String>,
    /// Model asked for.
    pub model: Option<String>,
    /// Requests.
    pub requests: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
}

/// One rotation of a credential's key: what replaced what (fingerprints, last 4, store
/// versions; never a key) and when each step happened.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RotationRow {
    /// `rot_…`.
    pub id: String,
    /// Credential name.
    pub credential: String,
    /// `stdin` (a new sealed value), `store` (a new version in the store), `auto` (seen by
    /// the background refresh).
    pub source: String,
    /// `staged`, `failed`, `promoted`, `confirmed`.
    pub state: String,
    /// Why it failed, or what was checked.
    pub reason: Option<String>,
    /// The key replaced.
    pub old_fingerprint: Option<String>,
    /// Its last 4.
    pub old_last4: Option<String>,
    /// Its store version.
    pub old_version: Option<String>,
    /// The reference that read it.
    pub old_ref: Option<String>,
    /// The new key.
    pub new_fingerprint: Option<String>,
    /// Its last 4.
    pub new_last4: Option<String>,
    /// Its store version.
    pub new_version: Option<String>,
    /// Unix milliseconds.
    pub started_at: i64,
    /// When the provider accepted (or refused) the new key.
    pub tested_at: Option<i64>,
    /// When new requests started using the new key.
    pub promoted_at: Option<i64>,
    /// When the provider was seen refusing the old key, with no use of it on record after
    /// the promotion.
    pub confirmed_at: Option<i64>,
}

/// Metadata of a minted token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenRow {
    /// Token id.
    pub id: String,
    /// Subject.
    pub subject: String,
    /// Environment.
    pub env: String,
    /// Model globs.
    pub models: Vec<String>,
    /// Credential names (empty: any of the environment).
    pub credentials: Vec<String>,
    /// Root key id.
    pub key_id: i64,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Unix milliseconds.
    pub revoked_at: Option<i64>,
    /// Who minted it: an admin key id, `sa:<id>` (a service account) or `trust:<policy>` (an
    /// exchanged workload identity).
    pub minted_by: String,
    /// The claims of the identity token that satisfied a trust policy (exchange only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<serde_json::Value>,
}

/// An admin API key (hash only).
#[derive(Debug, Clone)]
pub struct AdminKeyRow {
    /// Public id part of the key.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Role name.
    pub role: String,
    /// Keyed hash of the secret part.
    pub hash: String,
    /// Unix milliseconds.
    pub revoked_at: Option<i64>,
    /// A developer key's grant (JSON scope), if any.
    pub grant: Option<String>,
}

/// An admin key as listed (no hash).
#[derive(Debug, Clone, Serialize)]
pub struct AdminKeyInfo {
    /// Public id part of the key.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Role name.
    pub role: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub revoked_at: Option<i64>,
    /// A developer key's grant.
    pub grant: Option<serde_json::Value>,
}

/// A service account (hash never leaves the store except for the key check).
#[derive(Debug, Clone, Serialize)]
pub struct ServiceAccountRow {
    /// Public id part of the key.
    pub id: String,
    /// Name.
    pub name: String,
    /// What its tokens may do (JSON scope).
    pub scope: serde_json::Value,
    /// Keyed hash of the secret part.
    #[serde(skip)]
    pub hash: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Admin key id that created it.
    pub created_by: String,
    /// Unix milliseconds.
    pub last_used_at: Option<i64>,
    /// Unix milliseconds.
    pub revoked_at: Option<i64>,
}

/// A trust policy added through the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct TrustPolicyRow {
    /// Name.
    pub name: String,
    /// The policy (JSON).
    pub policy: serde_json::Value,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Admin key id that added it.
    pub created_by: String,
}

/// A credential or identity (`true` first) seen with a model, a client address or an hour.
pub type SeenWith = (bool, String, Option<String>, Option<String>, Option<i64>);

/// What the usage table says about each credential and identity (`true` in the first field
/// means identity), for the anomaly detector's start.
#[derive(Debug, Default)]
pub struct AnomalyHistory {
    /// (identity?, name, first use).
    pub firsts: Vec<(bool, String, i64)>,
    /// (identity?, name, bucket index, requests, nano-dollars).
    pub tallies: Vec<(bool, String, i64, i64, i64)>,
    /// (identity?, name, model, client address, hour of day): one of the three each.
    pub seen: Vec<SeenWith>,
    /// A list hit its limit: some values seen are missing.
    pub truncated: bool,
}

/// One finished request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UsageRow {
    /// Unix milliseconds at request start.
    pub ts: i64,
    /// Request id (also sent to the client as `x-request-id`).
    pub request_id: String,
    /// Token id, when the token verified.
    pub token_id: Option<String>,
    /// Token subject.
    pub subject: Option<String>,
    /// Token environment.
    pub env: Option<String>,
    /// Credential that served (the last one tried).
    pub credential: Option<String>,
    /// Its provider.
    pub provider: Option<String>,
    /// Endpoint path.
    pub endpoint: String,
    /// Model asked for.
    pub model: Option<String>,
    /// Status sent to the client.
    pub status: i64,
    /// `ok`, `refused`, `upstream_error`, `client_disconnected`, `timeout`, …
    pub outcome: String,
    /// Input tokens reported by the provider.
    pub input_tokens: Option<i64>,
    /// Output tokens reported by the provider.
    pub output_tokens: Option<i64>,
    /// Cached input tokens.
    pub cached_tokens: Option<i64>,
    /// Milliseconds until the response finished.
    pub latency_ms: i64,
    /// Milliseconds until the first byte of the upstream response.
    pub ttfb_ms: Option<i64>,
    /// Whether the response was streamed.
    pub stream: bool,
    /// Upstream attempts (more than 1 after fallbacks).
    pub attempts: i64,
    /// Client address.
    pub client_ip: Option<String>,
    /// Cost in nano-dollars, when the model has a price.
    pub cost_nanos: Option<i64>,
    /// The project the token is accounted to.
    pub project: Option<String>,
    /// What budgets and anomaly detection charged: the cost, or the whole estimate when the
    /// provider may have billed more than it reported.
    pub charged_nanos: Option<i64>,
}

/// What usage can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageDimension {
    /// Token id.
    Token,
    /// The token's subject (a person, a service account, a workload identity).
    Identity,
    /// Credential that served.
    Credential,
    /// Model asked for.
    Model,
    /// Environment.
    Env,
    /// The token's project.
    Project,
}

impl UsageDimension {
    /// Parses `token`, `identity`, `credential`, `model`, `env`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "token" => Self::Token,
            "identity" => Self::Identity,
            "credential" => Self::Credential,
            "model" => Self::Model,
            "env" => Self::Env,
            "project" => Self::Project,
            _ => return None,
        })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Identity => "identity",
            Self::Credential => "credential",
            Self::Model => "model",
            Self::Env => "env",
            Self::Project => "project",
        }
    }

    fn column(self) -> &'static str {
        match self {
            Self::Token => "token_id",
            Self::Identity => "subject",
            Self::Credential => "credential",
            Self::Model => "model",
            Self::Env => "env",
            Self::Project => "project",
        }
    }
}

/// A spend cap.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetRow {
    /// Id.
    pub id: String,
    /// `token`, `identity` or `credential`.
    pub kind: String,
    /// The token id, subject or credential name.
    pub key: String,
    /// `day`, `month` or `total`.
    pub period: String,
    /// Limit, nano-dollars.
    pub limit_nanos: i64,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Who set it.
    pub created_by: String,
}

/// A rate limit.
#[derive(Debug, Clone, Serialize)]
pub struct RateLimitRow {
    /// Id.
    pub id: String,
    /// `token`, `identity` or `credential`.
    pub kind: String,
    /// The token id, subject or credential name.
    pub key: String,
    /// Requests per minute.
    pub rpm: Option<i64>,
    /// Tokens per minute.
    pub tpm: Option<i64>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Who set it.
    pub created_by: String,
}

/// One group of a usage report.
#[derive(Debug, Clone, Serialize)]
pub struct UsageReportRow {
    /// The value grouped by (None: requests without one, e.g. refused before routing).
    pub key: Option<String>,
    /// Start of the time bucket (unix ms), when bucketed.
    pub bucket_ms: Option<i64>,
    /// Requests.
    pub requests: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cached input tokens.
    pub cached_tokens: i64,
    /// Cost, nano-dollars.
    pub cost_nanos: i64,
    /// Requests with tokens counted but no price for their model.
    pub unpriced: i64,
}

/// Which audit records to read.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only records after this sequence number (pagination cursor).
    pub after_seq: Option<i64>,
    /// Only this credential.
    pub credential: Option<String>,
    /// Only this actor (token id, admin key id) or subject.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub until: Option<i64>,
    /// At most this many (1..=100000).
    pub limit: i64,
    /// The newest matching records (still returned in chain order) instead of the oldest.
    pub newest: bool,
}

/// A name with a request count.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Count {
    /// Subject, token id or address.
    pub name: String,
    /// Requests.
    pub requests: i64,
}

/// Use of one credential over a window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Activity {
    /// Requests served.
    pub requests: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Spend in millionths of a dollar (priced models only).
    pub cost_micros: i64,
    /// Distinct subjects, busiest first (at most 100).
    pub identities: Vec<Count>,
    /// Distinct tokens.
    pub tokens: Vec<Count>,
    /// Distinct client addresses.
    pub client_ips: Vec<Count>,
}

fn checkpoint_from(r: &sqlx::any::AnyRow) -> Checkpoint {
    Checkpoint {
        seq: r.get("seq"),
        ts: r.get("ts"),
        head: r.get("head"),
        key_id: r.get("key_id"),
        signature: r.get("signature"),
    }
}

fn sealed_from(r: &sqlx::any::AnyRow) -> Sealed {
    Sealed {
        record: airlock_audit::Record {
            seq: r.get("seq"),
            ts: r.get("ts"),
            actor_kind: r.get("actor_kind"),
            actor: r.get("actor"),
            subject: r.get("subject"),
            action: r.get("action"),
            target_kind: r.get("target_kind"),
            target: r.get("target"),
            outcome: r.get("outcome"),
            reason: r.get("reason"),
            request_id: r.get("request_id"),
            client_ip: r.get("client_ip"),
            credential: r.get("credential"),
            model: r.get("model"),
            status: r.get("status"),
            input_tokens: r.get("input_tokens"),
            output_tokens: r.get("output_tokens"),
            cost_micros: r.get("cost_micros"),
            key: r.get("key"),
            prev: r.get("prev"),
        },
        hash: r.get("hash"),
    }
}

/// Usage summed over rows.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct UsageTotals {
    /// Number of requests.
    pub requests: i64,
    /// Sum of input tokens.
    pub input_tokens: i64,
    /// Sum of output tokens.
    pub output_tokens: i64,
}

fn json_list(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

fn to_json(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

mod access;
mod audit;
mod credentials;
mod incidents;
mod limits;
mod rotations;
mod store;
mod tokens;
mod usage;
mod writer;

pub use store::{redact_url, Backend, ServerLock, Store, SyncMode};
pub use writer::BatchWriter;
