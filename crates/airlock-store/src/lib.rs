//! airlock's database. SQLite by default (one file, WAL mode); every query lives here so the
//! rest of the code never writes SQL. No column ever holds a provider key (invariant I1).
//!
//! Why one file: every SQL statement of the SQLite schema; it is split per aggregate behind one
//! store interface when the PostgreSQL backend comes (issue 17).
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

/// Appends audit records, usage rows and checkpoints, a batch per transaction, synchronously on
/// the calling thread (the audit writer's own thread), with cached prepared statements.
pub struct BatchWriter {
    inner: Writer,
}

enum Writer {
    /// A connection of its own: one synchronous call per batch, no hand-off per statement.
    Sqlite(rusqlite::Connection),
    /// The store's pool, driven from the writer's thread: a batch is a few multi-row INSERTs
    /// in one transaction.
    Postgres {
        pool: AnyPool,
        runtime: tokio::runtime::Handle,
    },
}

/// Rows per multi-row INSERT (PostgreSQL takes at most 65 535 parameters per statement).
const PG_ROWS_PER_INSERT: usize = 1000;

impl BatchWriter {
    /// Writes one batch in one transaction, with `head`, the signature over its last record
    /// (stored as the signed head, replacing the previous one) and, when due, a permanent
    /// `checkpoint`. Must not be called from within the async runtime (the writer runs on a
    /// thread of its own).
    pub fn write_batch(
        &mut self,
        batch: &[UsageRow],
        audit: &[Sealed],
        checkpoint: Option<&Checkpoint>,
        head: Option<&Checkpoint>,
    ) -> Result<()> {
        let conn = match &mut self.inner {
            Writer::Sqlite(conn) => conn,
            Writer::Postgres { pool, runtime } => {
                return runtime.block_on(pg_write_batch(pool, batch, audit, checkpoint, head));
            }
        };
        use rusqlite::params;
        let tx = conn.transaction().map_err(wdb("begin"))?;
        {
            if let Some(h) = head {
                tx.prepare_cached(
                    "INSERT INTO audit_head (id, seq, ts, head, key_id, signature) VALUES (1,?,?,?,?,?)
                     ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, ts = excluded.ts, head = excluded.head,
                       key_id = excluded.key_id, signature = excluded.signature",
                )
                .and_then(|mut st| st.execute(params![h.seq, h.ts, h.head, h.key_id, h.signature]))
                .map_err(wdb("sign the head"))?;
            }
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO audit (seq, ts, actor_kind, actor, subject, action, target_kind, target,
                       outcome, reason, request_id, client_ip, credential, model, status, input_tokens,
                       output_tokens, cost_micros, prev, hash, key) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                )
                .map_err(wdb("append audit record"))?;
            for s in audit {
                let r = &s.record;
                ins.execute(params![
                    r.seq,
                    r.ts,
                    r.actor_kind,
                    r.actor,
                    r.subject,
                    r.action,
                    r.target_kind,
                    r.target,
                    r.outcome,
                    r.reason,
                    r.request_id,
                    r.client_ip,
                    r.credential,
                    r.model,
                    r.status,
                    r.input_tokens,
                    r.output_tokens,
                    r.cost_micros,
                    r.prev,
                    s.hash,
                    r.key
                ])
                .map_err(wdb("append audit record"))?;
            }
            if let Some(c) = checkpoint {
                tx.prepare_cached(
                    "INSERT INTO audit_checkpoints (seq, ts, head, key_id, signature) VALUES (?,?,?,?,?)",
                )
                .and_then(|mut st| st.execute(params![c.seq, c.ts, c.head, c.key_id, c.signature]))
                .map_err(wdb("write audit checkpoint"))?;
            }
            let mut usage = tx
                .prepare_cached(
                    "INSERT INTO usage (ts, request_id, token_id, subject, env, credential, provider, endpoint, model,
                       status, outcome, input_tokens, output_tokens, cached_tokens, latency_ms, ttfb_ms, stream,
                       attempts, client_ip, cost_nanos, project, charged_nanos) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                )
                .map_err(wdb("record usage"))?;
            let mut used = tx
                .prepare_cached(
                    "UPDATE credentials SET last_used_at = max(COALESCE(last_used_at, 0), ?) WHERE name = ?",
                )
                .map_err(wdb("record usage"))?;
            // One update per credential per batch, with the latest time.
            let mut last_used: Vec<(&str, i64)> = Vec::new();
            for u in batch {
                usage
                    .execute(params![
                        u.ts,
                        u.request_id,
                        u.token_id,
                        u.subject,
                        u.env,
                        u.credential,
                        u.provider,
                        u.endpoint,
                        u.model,
                        u.status,
                        u.outcome,
                        u.input_tokens,
                        u.output_tokens,
                        u.cached_tokens,
                        u.latency_ms,
                        u.ttfb_ms,
                        u.stream,
                        u.attempts,
                        u.client_ip,
                        u.cost_nanos,
                        u.project,
                        u.charged_nanos
                    ])
                    .map_err(wdb("record usage"))?;
                if let (Some(c), true) = (&u.credential, u.status < 500 && u.outcome != "refused") {
                    match last_used.iter_mut().find(|(n, _)| *n == c.as_str()) {
                        Some(e) => e.1 = e.1.max(u.ts),
                        None => last_used.push((c.as_str(), u.ts)),
                    }
                }
            }
            for (name, ts) in last_used {
                used.execute(params![ts, name])
                    .map_err(wdb("record usage"))?;
            }
        }
        tx.commit().map_err(wdb("commit"))
    }

    /// The last record's (seq, hash), or (0, GENESIS) for an empty log.
    pub fn audit_head(&self) -> Result<(i64, String)> {
        use rusqlite::OptionalExtension;
        let conn = match &self.inner {
            Writer::Sqlite(conn) => conn,
            Writer::Postgres { pool, runtime } => {
                return runtime.block_on(async {
                    let row = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
                        .fetch_optional(pool)
                        .await
                        .map_err(db("read audit head"))?;
                    Ok(row
                        .map(|r| (r.get("seq"), r.get("hash")))
                        .unwrap_or((0, airlock_audit::GENESIS.to_string())))
                });
            }
        };
        let row = conn
            .query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(wdb("read audit head"))?;
        Ok(row.unwrap_or((0, airlock_audit::GENESIS.to_string())))
    }
}

/// `($1,…,$cols),($cols+1,…)…` for `rows` rows: numbered placeholders, which both databases
/// read (sqlx's query builder writes `?` for the Any driver, which PostgreSQL does not).
fn values(rows: usize, cols: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ",(" });
        for c in 0..cols {
            if c > 0 {
                out.push(',');
            }
            out.push_str(&format!("${}", r * cols + c + 1));
        }
        out.push(')');
    }
    out
}

/// The PostgreSQL half of [`BatchWriter::write_batch`]: the same rows, multi-row INSERTs.
async fn pg_write_batch(
    pool: &AnyPool,
    batch: &[UsageRow],
    audit: &[Sealed],
    checkpoint: Option<&Checkpoint>,
    head: Option<&Checkpoint>,
) -> Result<()> {
    let mut tx = pool.begin().await.map_err(db("begin"))?;
    if let Some(h) = head {
        sqlx::query(
            "INSERT INTO audit_head (id, seq, ts, head, key_id, signature) VALUES (1,$1,$2,$3,$4,$5)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, ts = excluded.ts, head = excluded.head,
               key_id = excluded.key_id, signature = excluded.signature",
        )
        .bind(h.seq)
        .bind(h.ts)
        .bind(&h.head)
        .bind(h.key_id)
        .bind(&h.signature)
        .execute(&mut *tx)
        .await
        .map_err(db("sign the head"))?;
    }
    for chunk in audit.chunks(PG_ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO audit (seq, ts, actor_kind, actor, subject, action, target_kind, target,
               outcome, reason, request_id, client_ip, credential, model, status, input_tokens,
               output_tokens, cost_micros, prev, hash, key) VALUES {}",
            values(chunk.len(), 21)
        );
        let mut q = sqlx::query(&sql);
        for s in chunk {
            let r = &s.record;
            q = q
                .bind(r.seq)
                .bind(r.ts)
                .bind(&r.actor_kind)
                .bind(&r.actor)
                .bind(&r.subject)
                .bind(&r.action)
                .bind(&r.target_kind)
                .bind(&r.target)
                .bind(&r.outcome)
                .bind(&r.reason)
                .bind(&r.request_id)
                .bind(&r.client_ip)
                .bind(&r.credential)
                .bind(&r.model)
                .bind(r.status)
                .bind(r.input_tokens)
                .bind(r.output_tokens)
                .bind(r.cost_micros)
                .bind(&r.prev)
                .bind(&s.hash)
                .bind(&r.key);
        }
        q.execute(&mut *tx)
            .await
            .map_err(db("append audit record"))?;
    }
    if let Some(c) = checkpoint {
        sqlx::query(
            "INSERT INTO audit_checkpoints (seq, ts, head, key_id, signature) VALUES ($1,$2,$3,$4,$5)",
        )
        .bind(c.seq)
        .bind(c.ts)
        .bind(&c.head)
        .bind(c.key_id)
        .bind(&c.signature)
        .execute(&mut *tx)
        .await
        .map_err(db("write audit checkpoint"))?;
    }
    for chunk in batch.chunks(PG_ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO usage (ts, request_id, token_id, subject, env, credential, provider, endpoint, model,
               status, outcome, input_tokens, output_tokens, cached_tokens, latency_ms, ttfb_ms, stream,
               attempts, client_ip, cost_nanos, project, charged_nanos) VALUES {}",
            values(chunk.len(), 22)
        );
        let mut q = sqlx::query(&sql);
        for u in chunk {
            q = q
                .bind(u.ts)
                .bind(&u.request_id)
                .bind(&u.token_id)
                .bind(&u.subject)
                .bind(&u.env)
                .bind(&u.credential)
                .bind(&u.provider)
                .bind(&u.endpoint)
                .bind(&u.model)
                .bind(u.status)
                .bind(&u.outcome)
                .bind(u.input_tokens)
                .bind(u.output_tokens)
                .bind(u.cached_tokens)
                .bind(u.latency_ms)
                .bind(u.ttfb_ms)
                .bind(i64::from(u.stream))
                .bind(u.attempts)
                .bind(&u.client_ip)
                .bind(u.cost_nanos)
                .bind(&u.project)
                .bind(u.charged_nanos);
        }
        q.execute(&mut *tx).await.map_err(db("record usage"))?;
    }
    // One update per credential per batch, with the latest time.
    let mut last_used: Vec<(&str, i64)> = Vec::new();
    for u in batch {
        if let (Some(c), true) = (&u.credential, u.status < 500 && u.outcome != "refused") {
            match last_used.iter_mut().find(|(n, _)| *n == c.as_str()) {
                Some(e) => e.1 = e.1.max(u.ts),
                None => last_used.push((c.as_str(), u.ts)),
            }
        }
    }
    for (name, ts) in last_used {
        sqlx::query(
            "UPDATE credentials SET last_used_at = GREATEST(COALESCE(last_used_at, 0), $1) WHERE name = $2",
        )
        .bind(ts)
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db("record usage"))?;
    }
    tx.commit().await.map_err(db("commit"))
}

impl airlock_audit::log::Storage for BatchWriter {
    type Row = UsageRow;

    fn append(
        &mut self,
        rows: &[UsageRow],
        records: &[Sealed],
        checkpoint: Option<&Checkpoint>,
        head: Option<&Checkpoint>,
    ) -> std::result::Result<(), airlock_audit::log::StoreError> {
        Ok(self.write_batch(rows, records, checkpoint, head)?)
    }

    fn head(&mut self) -> std::result::Result<(i64, String), airlock_audit::log::StoreError> {
        Ok(self.audit_head()?)
    }
}

impl airlock_audit::log::Row for UsageRow {
    fn mark_not_answered(&mut self) {
        if self.outcome == "ok" {
            self.outcome = "not_answered".into();
            self.status = 503;
        }
    }
}

impl airlock_audit::log::Stored for Store {
    async fn last_checkpoint(
        &self,
    ) -> std::result::Result<Option<Checkpoint>, airlock_audit::log::StoreError> {
        Ok(Store::last_checkpoint(self).await?)
    }

    async fn signed_head(
        &self,
    ) -> std::result::Result<Option<Checkpoint>, airlock_audit::log::StoreError> {
        Ok(Store::signed_head(self).await?)
    }

    async fn records_after(
        &self,
        after: i64,
        limit: i64,
    ) -> std::result::Result<Vec<Sealed>, airlock_audit::log::StoreError> {
        let f = AuditFilter {
            after_seq: Some(after),
            limit,
            ..Default::default()
        };
        Ok(self.audit_records(&f).await?)
    }

    async fn checkpoints(
        &self,
        from: i64,
        to: i64,
    ) -> std::result::Result<Vec<Checkpoint>, airlock_audit::log::StoreError> {
        Ok(self.audit_checkpoints(from, to).await?)
    }
}

/// What a commit waits for (SQLite's `synchronous` in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Synced to disk: a committed audit record survives a power loss. The default.
    #[default]
    Full,
    /// Written to the operating system: survives a crash of airlock, not of the machine.
    Normal,
}

/// A store URL fit to print: the password, if any, replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => {
            let user = &rest[..at];
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            let shown = if rest[..at].contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!("{scheme}://{shown}{}", &rest[at..])
        }
        None => url.to_string(),
    }
}

/// Which database a store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One file on this machine (the embedded default).
    Sqlite,
    /// A PostgreSQL server, which several airlock servers may share.
    Postgres,
}

/// The database handle (cheap to clone). Queries are written once, in SQL both databases
/// read the same way (`$N` parameters, `CAST(SUM(..) AS BIGINT)`, integers for booleans);
/// the few that differ pick their text with [`Store::dialect`].
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The SQLite file (the audit writer opens its own connection to it).
    path: Option<std::path::PathBuf>,
    sync: SyncMode,
}

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and applies migrations, with
    /// every commit synced to disk.
    pub async fn open_sqlite(path: &Path) -> Result<Self> {
        Self::open_sqlite_with(path, SyncMode::Full).await
    }

    /// As [`Store::open_sqlite`], choosing what a commit waits for.
    pub async fn open_sqlite_with(path: &Path, sync: SyncMode) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let synchronous = match sync {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        };
        // What SqliteConnectOptions would set, as statements: the Any driver takes a URL only.
        let pragmas = format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; \
             PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;"
        );
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(move |conn, _| {
                let pragmas = pragmas.clone();
                Box::pin(async move {
                    conn.execute(pragmas.as_str()).await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(db("open"))?;
        SQLITE.run(&pool).await.map_err(|e| StoreError::Db {
            op: "migrate",
            source: e.into(),
        })?;
        Ok(Store {
            pool,
            backend: Backend::Sqlite,
            path: Some(path.to_path_buf()),
            sync,
        })
    }

    /// Opens a PostgreSQL database (`postgres://user@host:port/db`) and applies migrations.
    /// Several servers may start at once: the migrator holds an advisory lock while it runs,
    /// so each migration runs once.
    pub async fn open_postgres(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(db("open"))?;
        POSTGRES.run(&pool).await.map_err(|e| StoreError::Db {
            op: "migrate",
            source: e.into(),
        })?;
        Ok(Store {
            pool,
            backend: Backend::Postgres,
            path: None,
            sync: SyncMode::Full,
        })
    }

    /// Opens from a store URL: `postgres://…` (or `postgresql://…`), `sqlite:///abs/path.db`
    /// or a bare path.
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_with(url, SyncMode::Full).await
    }

    /// As [`Store::open`], choosing what a commit waits for (SQLite only; PostgreSQL waits for
    /// its own `synchronous_commit`).
    pub async fn open_with(url: &str, sync: SyncMode) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Self::open_postgres(url).await;
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        if path.contains('?') || path.contains(":memory:") || path.is_empty() {
            // The audit writer opens the same file with a connection of its own.
            return Err(StoreError::Db {
                op: "open",
                source: sqlx::Error::Configuration(
                    "store.url must name a database file, without query parameters".into(),
                ),
            });
        }
        Self::open_sqlite_with(Path::new(path), sync).await
    }

    /// Every table with its columns, sorted (the conformance tests hold the two schemas to
    /// the same shape).
    pub async fn schema(&self) -> Result<std::collections::BTreeMap<String, Vec<String>>> {
        let sql = self.dialect(
            "SELECT m.name AS t, p.name AS c FROM sqlite_master m, pragma_table_info(m.name) p
              WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name NOT LIKE '_sqlx_%'",
            "SELECT table_name::text AS t, column_name::text AS c FROM information_schema.columns
              WHERE table_schema = current_schema() AND table_name NOT LIKE '_sqlx_%'",
        );
        let rows = sqlx::query(sql)
            .fetch_all(&self.pool)
            .await
            .map_err(db("read the schema"))?;
        let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for r in rows {
            out.entry(r.get("t")).or_default().push(r.get("c"));
        }
        for cols in out.values_mut() {
            cols.sort();
        }
        Ok(out)
    }

    /// Closes every connection (waiting for those in use to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The statement for this database, where the two differ.
    fn dialect(&self, sqlite: &'static str, postgres: &'static str) -> &'static str {
        match self.backend {
            Backend::Sqlite => sqlite,
            Backend::Postgres => postgres,
        }
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    // ---- credentials ------------------------------------------------------------------

    /// Adds a credential; `Conflict` if the name is taken.
    pub async fn insert_credential(&self, c: &CredentialRow) -> Result<()> {
        self.insert_credential_with(c, None).await
    }

    /// Adds a credential and, for a sealed one, its sealed secret, in one transaction.
    pub async fn insert_credential_with(
        &self,
        c: &CredentialRow,
        sealed: Option<&SealedRow>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        if let Some(s) = sealed {
            sqlx::query(
                "INSERT INTO sealed_secrets (id, credential, kek, kek_version, wrapped_key, nonce,
                   ciphertext, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
            )
            .bind(&s.id)
            .bind(&s.credential)
            .bind(&s.kek)
            .bind(&s.kek_version)
            .bind(&s.wrapped_key)
            .bind(&s.nonce)
            .bind(&s.ciphertext)
            .bind(s.created_at)
            .execute(&mut *tx)
            .await
            .map_err(db("insert sealed secret"))?;
        }
        let r = sqlx::query(
            "INSERT INTO credentials (name, provider, env, secret_ref, base_url, models, priority,
               fingerprint, last4, created_at, suspended, secret_version) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,0,$11)",
        )
        .bind(&c.name)
        .bind(&c.provider)
        .bind(&c.env)
        .bind(&c.secret_ref)
        .bind(&c.base_url)
        .bind(to_json(&c.models))
        .bind(c.priority)
        .bind(&c.fingerprint)
        .bind(&c.last4)
        .bind(c.created_at)
        .bind(&c.secret_version)
        .execute(&mut *tx)
        .await;
        match r {
            Ok(_) => tx.commit().await.map_err(db("commit credential")),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::Conflict(format!("credential `{}`", c.name)))
            }
            Err(e) => Err(db("insert credential")(e)),
        }
    }

    fn credential_from(r: &sqlx::any::AnyRow) -> CredentialRow {
        CredentialRow {
            name: r.get("name"),
            provider: r.get("provider"),
            env: r.get("env"),
            secret_ref: r.get("secret_ref"),
            base_url: r.get("base_url"),
            models: json_list(r.get::<&str, _>("models")),
            priority: r.get("priority"),
            fingerprint: r.get("fingerprint"),
            last4: r.get("last4"),
            created_at: r.get("created_at"),
            rotated_at: r.get("rotated_at"),
            last_used_at: r.get("last_used_at"),
            suspended: r.get::<i64, _>("suspended") != 0,
            secret_version: r.get("secret_version"),
        }
    }

    /// All credentials, by priority then name.
    pub async fn list_credentials(&self) -> Result<Vec<CredentialRow>> {
        let rows = sqlx::query("SELECT * FROM credentials ORDER BY priority, name")
            .fetch_all(&self.pool)
            .await
            .map_err(db("list credentials"))?;
        Ok(rows.iter().map(Self::credential_from).collect())
    }

    /// One credential.
    pub async fn get_credential(&self, name: &str) -> Result<Option<CredentialRow>> {
        let row = sqlx::query("SELECT * FROM credentials WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("get credential"))?;
        Ok(row.as_ref().map(Self::credential_from))
    }

    /// Removes a credential and its sealed secret, if any (without the ciphertext the data
    /// key is useless); false if there was none.
    pub async fn delete_credential(&self, name: &str) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        sqlx::query("DELETE FROM sealed_secrets WHERE credential = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db("delete sealed secret"))?;
        let r = sqlx::query("DELETE FROM credentials WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db("delete credential"))?;
        tx.commit().await.map_err(db("commit delete"))?;
        Ok(r.rows_affected() > 0)
    }

    fn sealed_from(r: &sqlx::any::AnyRow) -> SealedRow {
        SealedRow {
            id: r.get("id"),
            credential: r.get("credential"),
            kek: r.get("kek"),
            kek_version: r.get("kek_version"),
            wrapped_key: r.get("wrapped_key"),
            nonce: r.get("nonce"),
            ciphertext: r.get("ciphertext"),
            created_at: r.get("created_at"),
            rewrapped_at: r.get("rewrapped_at"),
        }
    }

    /// One sealed secret.
    pub async fn get_sealed(&self, id: &str) -> Result<Option<SealedRow>> {
        let row = sqlx::query("SELECT * FROM sealed_secrets WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("get sealed secret"))?;
        Ok(row.as_ref().map(Self::sealed_from))
    }

    /// Every sealed secret, oldest first.
    pub async fn list_sealed(&self) -> Result<Vec<SealedRow>> {
        let rows = sqlx::query("SELECT * FROM sealed_secrets ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(db("list sealed secrets"))?;
        Ok(rows.iter().map(Self::sealed_from).collect())
    }

    /// Replaces a sealed secret's wrapped data key (after a KEK rotation), and its nonce and
    /// ciphertext when it was sealed again under a new data key, if the wrapped key is still
    /// the one that was rewrapped; false when it changed meanwhile.
    pub async fn rewrap_sealed(&self, old_wrapped: &[u8], new: &SealedRow) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE sealed_secrets SET kek = $1, kek_version = $2, wrapped_key = $3, nonce = $4,
               ciphertext = $5, rewrapped_at = $6 WHERE id = $7 AND wrapped_key = $8",
        )
        .bind(&new.kek)
        .bind(&new.kek_version)
        .bind(&new.wrapped_key)
        .bind(&new.nonce)
        .bind(&new.ciphertext)
        .bind(new.rewrapped_at)
        .bind(&new.id)
        .bind(old_wrapped)
        .execute(&self.pool)
        .await
        .map_err(db("rewrap sealed secret"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Records a newly observed fingerprint (the key behind the reference changed).
    pub async fn set_fingerprint(
        &self,
        name: &str,
        fingerprint: &str,
        last4: &str,
        version: Option<&str>,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE credentials SET rotated_at = CASE WHEN fingerprint IS NOT NULL AND fingerprint != $1 THEN $3 ELSE rotated_at END,
               fingerprint = $1, last4 = $2, secret_version = COALESCE($5, secret_version) WHERE name = $4",
        )
        .bind(fingerprint)
        .bind(last4)
        .bind(now_ms)
        .bind(name)
        .bind(version)
        .execute(&self.pool)
        .await
        .map_err(db("update fingerprint"))?;
        Ok(())
    }

    // ---- incidents ----------------------------------------------------------------------

    /// Requests that reached a credential in [from, to), grouped by credential, identity,
    /// token, client address and model.
    pub async fn usage_groups(&self, from: i64, to: i64) -> Result<Vec<UseGroup>> {
        let rows = sqlx::query(
            "SELECT credential, subject, token_id, client_ip, model, COUNT(*) AS n,
               CAST(COALESCE(SUM(input_tokens),0) AS BIGINT) AS i, CAST(COALESCE(SUM(output_tokens),0) AS BIGINT) AS o
             FROM usage WHERE credential IS NOT NULL AND ts >= $1 AND ts < $2
             GROUP BY credential, subject, token_id, client_ip, model",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await
        .map_err(db("group usage"))?;
        Ok(rows
            .iter()
            .map(|r| UseGroup {
                credential: r.get("credential"),
                subject: r.get("subject"),
                token_id: r.get("token_id"),
                client_ip: r.get("client_ip"),
                model: r.get("model"),
                requests: r.get("n"),
                input_tokens: r.get("i"),
                output_tokens: r.get("o"),
            })
            .collect())
    }

    /// The identities (`subject`) or addresses (`client_ip`) that used `credential` in
    /// [from, to).
    pub async fn seen_before(
        &self,
        credential: &str,
        what: SeenColumn,
        from: i64,
        to: i64,
    ) -> Result<std::collections::HashSet<String>> {
        let col = match what {
            SeenColumn::Subject => "subject",
            SeenColumn::ClientIp => "client_ip",
        };
        let rows = sqlx::query(&format!(
            "SELECT DISTINCT {col} AS v FROM usage WHERE credential = $1 AND ts >= $2 AND ts < $3 AND {col} IS NOT NULL"
        ))
        .bind(credential)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read earlier usage"))?;
        Ok(rows.iter().map(|r| r.get::<String, _>("v")).collect())
    }

    /// Requests and spend (millionths of a dollar) of `credential` in [from, to).
    pub async fn credential_volume(
        &self,
        credential: &str,
        from: i64,
        to: i64,
    ) -> Result<(i64, i64)> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM usage WHERE credential = $1 AND ts >= $2 AND ts < $3",
        )
        .bind(credential)
        .bind(from)
        .bind(to)
        .fetch_one(&self.pool)
        .await
        .map_err(db("count usage"))?;
        let c: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(cost_micros),0) AS BIGINT) FROM audit WHERE action = 'inference' AND credential = $1 AND ts >= $2 AND ts < $3",
        )
        .bind(credential)
        .bind(from)
        .bind(to)
        .fetch_one(&self.pool)
        .await
        .map_err(db("sum spend"))?;
        Ok((n, c))
    }

    /// The token root-key generation set by the last lockdown: (min id, signing id).
    pub async fn token_epoch(&self) -> Result<Option<(u32, u32)>> {
        let row = sqlx::query(
            "SELECT min_root_key_id, signing_root_key_id FROM token_epoch WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read token epoch"))?;
        Ok(row.map(|r| {
            (
                r.get::<i64, _>("min_root_key_id") as u32,
                r.get::<i64, _>("signing_root_key_id") as u32,
            )
        }))
    }

    /// Records a lockdown: tokens below `min` are refused from now on, `signing` signs; and
    /// suspends the named credentials, in one transaction.
    pub async fn lockdown(
        &self,
        min: u32,
        signing: u32,
        suspend: &[String],
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        sqlx::query(
            "INSERT INTO token_epoch (id, min_root_key_id, signing_root_key_id, at, reason) VALUES (1,$1,$2,$3,$4)
             ON CONFLICT (id) DO UPDATE SET min_root_key_id = excluded.min_root_key_id,
               signing_root_key_id = excluded.signing_root_key_id, at = excluded.at, reason = excluded.reason",
        )
        .bind(i64::from(min))
        .bind(i64::from(signing))
        .bind(now_ms)
        .bind(reason)
        .execute(&mut *tx)
        .await
        .map_err(db("record lockdown"))?;
        for name in suspend {
            sqlx::query("UPDATE credentials SET suspended = 1 WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(db("suspend credential"))?;
        }
        tx.commit().await.map_err(db("commit lockdown"))
    }

    // ---- rotations ----------------------------------------------------------------------

    fn rotation_from(r: &sqlx::any::AnyRow) -> RotationRow {
        RotationRow {
            id: r.get("id"),
            credential: r.get("credential"),
            source: r.get("source"),
            state: r.get("state"),
            reason: r.get("reason"),
            old_fingerprint: r.get("old_fingerprint"),
            old_last4: r.get("old_last4"),
            old_version: r.get("old_version"),
            old_ref: r.get("old_ref"),
            new_fingerprint: r.get("new_fingerprint"),
            new_last4: r.get("new_last4"),
            new_version: r.get("new_version"),
            started_at: r.get("started_at"),
            tested_at: r.get("tested_at"),
            promoted_at: r.get("promoted_at"),
            confirmed_at: r.get("confirmed_at"),
        }
    }

    /// Records a rotation, or updates it (same id).
    pub async fn save_rotation(&self, r: &RotationRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO rotations (id, credential, source, state, reason, old_fingerprint, old_last4,
               old_version, old_ref, new_fingerprint, new_last4, new_version, started_at, tested_at,
               promoted_at, confirmed_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, reason = excluded.reason,
               tested_at = excluded.tested_at, promoted_at = excluded.promoted_at,
               confirmed_at = excluded.confirmed_at",
        )
        .bind(&r.id)
        .bind(&r.credential)
        .bind(&r.source)
        .bind(&r.state)
        .bind(&r.reason)
        .bind(&r.old_fingerprint)
        .bind(&r.old_last4)
        .bind(&r.old_version)
        .bind(&r.old_ref)
        .bind(&r.new_fingerprint)
        .bind(&r.new_last4)
        .bind(&r.new_version)
        .bind(r.started_at)
        .bind(r.tested_at)
        .bind(r.promoted_at)
        .bind(r.confirmed_at)
        .execute(&self.pool)
        .await
        .map_err(db("save rotation"))?;
        Ok(())
    }

    /// Fingerprints a rotation of a credential of this name ever took out of service (never to
    /// be put back), with when each was first retired.
    pub async fn retired_keys(
        &self,
        credential: &str,
    ) -> Result<std::collections::HashMap<String, i64>> {
        let rows = sqlx::query(
            "SELECT old_fingerprint AS f, MIN(promoted_at) AS t FROM rotations
             WHERE credential = $1 AND state IN ('promoted', 'confirmed') AND old_fingerprint IS NOT NULL
             GROUP BY old_fingerprint",
        )
        .bind(credential)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read retired keys"))?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<String, _>("f"),
                    r.get::<Option<i64>, _>("t").unwrap_or(0),
                )
            })
            .collect())
    }

    /// A credential's rotations, newest first.
    pub async fn rotations(&self, credential: &str, limit: i64) -> Result<Vec<RotationRow>> {
        let rows = sqlx::query(
            "SELECT * FROM rotations WHERE credential = $1 ORDER BY started_at DESC, id DESC LIMIT $2",
        )
        .bind(credential)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db("list rotations"))?;
        Ok(rows.iter().map(Self::rotation_from).collect())
    }

    /// Audit records, of any credential (a key may be shared), whose request used the key with
    /// fingerprint `key` (the `key` field lists every key a request used) after `after_ms`.
    pub async fn key_uses_after(&self, key: &str, after_ms: i64) -> Result<i64> {
        let n: i64 = sqlx::query_scalar(self.dialect(
            "SELECT COUNT(*) FROM audit WHERE ts > $1 AND instr(key, $2) > 0",
            "SELECT COUNT(*) FROM audit WHERE ts > $1 AND strpos(key, $2) > 0",
        ))
        .bind(after_ms)
        .bind(key)
        .fetch_one(&self.pool)
        .await
        .map_err(db("count key uses"))?;
        Ok(n)
    }

    /// Promotes a new key: the credential's reference (a new sealed secret stored in the same
    /// transaction, or a new pinned version), fingerprint, last 4, version and rotation time.
    /// Only if the credential still has the reference `expected_ref` (it was not removed, re-added
    /// or rotated meanwhile); `Conflict` otherwise, with nothing changed.
    pub async fn promote_key(
        &self,
        name: &str,
        expected_ref: &str,
        secret_ref: &str,
        sealed: Option<&SealedRow>,
        seen: (&str, &str, Option<&str>),
        now_ms: i64,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        if let Some(s) = sealed {
            sqlx::query(
                "INSERT INTO sealed_secrets (id, credential, kek, kek_version, wrapped_key, nonce,
                   ciphertext, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
            )
            .bind(&s.id)
            .bind(&s.credential)
            .bind(&s.kek)
            .bind(&s.kek_version)
            .bind(&s.wrapped_key)
            .bind(&s.nonce)
            .bind(&s.ciphertext)
            .bind(s.created_at)
            .execute(&mut *tx)
            .await
            .map_err(db("insert sealed secret"))?;
        }
        let r = sqlx::query(
            "UPDATE credentials SET secret_ref = $1, fingerprint = $2, last4 = $3,
               secret_version = $4, rotated_at = $5 WHERE name = $6 AND secret_ref = $7",
        )
        .bind(secret_ref)
        .bind(seen.0)
        .bind(seen.1)
        .bind(seen.2)
        .bind(now_ms)
        .bind(name)
        .bind(expected_ref)
        .execute(&mut *tx)
        .await
        .map_err(db("promote key"))?;
        if r.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!(
                "credential `{name}` changed while its key was being rotated"
            )));
        }
        tx.commit().await.map_err(db("commit promotion"))
    }

    /// Deletes one sealed secret (a rotated-out key, once confirmed dead).
    pub async fn delete_sealed(&self, id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM sealed_secrets WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db("delete sealed secret"))?;
        Ok(r.rows_affected() > 0)
    }

    // ---- tokens -----------------------------------------------------------------------

    /// Records a minted token's metadata.
    pub async fn insert_token(&self, t: &TokenRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO tokens (id, subject, env, models, credentials, key_id, created_at, expires_at, minted_by, claims)
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
        )
        .bind(&t.id)
        .bind(&t.subject)
        .bind(&t.env)
        .bind(to_json(&t.models))
        .bind(to_json(&t.credentials))
        .bind(t.key_id)
        .bind(t.created_at)
        .bind(t.expires_at)
                .bind(&t.minted_by)
        .bind(t.claims.as_ref().map(|c| c.to_string()))
        .execute(&self.pool)
        .await
        .map_err(db("insert token"))?;
        Ok(())
    }

    /// Tokens, newest first; expired ones only when asked.
    pub async fn list_tokens(&self, include_expired: bool, now_s: i64) -> Result<Vec<TokenRow>> {
        let rows = sqlx::query(
            "SELECT * FROM tokens WHERE $1 OR expires_at >= $2 ORDER BY created_at DESC LIMIT 1000",
        )
        .bind(include_expired)
        .bind(now_s)
        .fetch_all(&self.pool)
        .await
        .map_err(db("list tokens"))?;
        Ok(rows
            .iter()
            .map(|r| TokenRow {
                id: r.get("id"),
                subject: r.get("subject"),
                env: r.get("env"),
                models: json_list(r.get::<&str, _>("models")),
                credentials: json_list(r.get::<&str, _>("credentials")),
                key_id: r.get("key_id"),
                created_at: r.get("created_at"),
                expires_at: r.get("expires_at"),
                revoked_at: r.get("revoked_at"),
                minted_by: r.get("minted_by"),
                claims: r
                    .get::<Option<&str>, _>("claims")
                    .and_then(|c| serde_json::from_str(c).ok()),
            })
            .collect())
    }

    /// Marks a token revoked. Returns false when no such token was minted here.
    pub async fn revoke_token(&self, id: &str, now_ms: i64) -> Result<bool> {
        let r =
            sqlx::query("UPDATE tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
                .bind(now_ms)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(db("revoke token"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Revokes every unexpired token minted by `minted_by` (`sa:<id>`, `trust:<name>`);
    /// returns how many.
    pub async fn revoke_tokens_minted_by(&self, minted_by: &str, now_ms: i64) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE minted_by = $2 AND revoked_at IS NULL AND expires_at >= $3",
        )
        .bind(now_ms)
        .bind(minted_by)
        .bind(now_ms / 1000)
        .execute(&self.pool)
        .await
        .map_err(db("revoke tokens"))?;
        Ok(r.rows_affected())
    }

    /// Revokes every unexpired token of a subject (an identity an anomaly suspended); returns
    /// how many.
    pub async fn revoke_tokens_of_subject(&self, subject: &str, now_ms: i64) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE tokens SET revoked_at = $1 WHERE subject = $2 AND revoked_at IS NULL AND expires_at >= $3",
        )
        .bind(now_ms)
        .bind(subject)
        .bind(now_ms / 1000)
        .execute(&self.pool)
        .await
        .map_err(db("revoke tokens"))?;
        Ok(r.rows_affected())
    }

    /// Suspends or resumes a credential; false when there is no such credential.
    pub async fn set_suspended(&self, name: &str, suspended: bool) -> Result<bool> {
        let r = sqlx::query("UPDATE credentials SET suspended = $1 WHERE name = $2")
            .bind(i64::from(suspended))
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db("suspend credential"))?;
        Ok(r.rows_affected() > 0)
    }

    /// What the anomaly detector learns at start: each identity's first token; for credentials
    /// (`credential`) and identities (`subject`) of forwarded requests with a valid token
    /// since `since_ms`, request and charged spend tallies per `bucket_ms`, and the distinct
    /// models the provider accepted, client addresses and hours of the day they were used
    /// with (at most a million of each).
    pub async fn anomaly_history(&self, since_ms: i64, bucket_ms: i64) -> Result<AnomalyHistory> {
        let mut h = AnomalyHistory::default();
        let read = db("read usage history");
        // An identity exists since its first token (whether or not it used it since).
        for r in sqlx::query(
            "SELECT subject AS k, MIN(created_at) AS first FROM tokens GROUP BY subject LIMIT 1000000",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(read)?
        {
            h.firsts.push((true, r.get("k"), r.get("first")));
        }
        // Summed as a float (SQLite) or a numeric (PostgreSQL), so it cannot overflow, then
        // clamped into an i64.
        let charged = self.dialect(
            "CAST(MIN(TOTAL(COALESCE(charged_nanos, cost_nanos)), 9.0e18) AS INTEGER)",
            "CAST(LEAST(COALESCE(SUM(COALESCE(charged_nanos, cost_nanos)), 0), 9.0e18) AS BIGINT)",
        );
        for col in ["credential", "subject"] {
            let identity = col == "subject";
            let live =
                format!("ts >= $1 AND {col} IS NOT NULL AND token_id IS NOT NULL AND attempts > 0");
            let tallies = sqlx::query(&format!(
                "SELECT {col} AS k, ts / $2 AS b, COUNT(*) AS n,
                        {charged} AS c
                 FROM usage WHERE {live} GROUP BY {col}, b"
            ))
            .bind(since_ms)
            .bind(bucket_ms)
            .fetch_all(&self.pool)
            .await
            .map_err(db("read usage history"))?;
            for r in tallies {
                h.tallies
                    .push((identity, r.get("k"), r.get("b"), r.get("n"), r.get("c")));
            }
            // What each was seen with, one dimension at a time (models the provider accepted).
            for (what, expr) in [
                ("model", "CASE WHEN status < 400 THEN model END"),
                ("ip", "client_ip"),
                ("hour", "CAST((ts / 3600000) % 24 AS TEXT)"),
            ] {
                let rows = sqlx::query(&format!(
                    "SELECT DISTINCT {col} AS k, {expr} AS v FROM usage WHERE {live} AND {expr} IS NOT NULL LIMIT 1000000"
                ))
                .bind(since_ms)
                .fetch_all(&self.pool)
                .await
                .map_err(db("read usage history"))?;
                if rows.len() >= 1_000_000 {
                    h.truncated = true;
                }
                for r in rows {
                    let v: String = r.get("v");
                    let k: String = r.get("k");
                    h.seen.push(match what {
                        "model" => (identity, k, Some(v), None, None),
                        "ip" => (identity, k, None, Some(v), None),
                        _ => (identity, k, None, None, v.parse().ok()),
                    });
                }
            }
        }
        Ok(h)
    }

    /// Ids of revoked tokens that have not expired yet (the server keeps these in memory).
    pub async fn revoked_token_ids(&self, now_s: i64) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT id FROM tokens WHERE revoked_at IS NOT NULL AND expires_at >= $1")
                .bind(now_s)
                .fetch_all(&self.pool)
                .await
                .map_err(db("load revocations"))?;
        Ok(rows.iter().map(|r| r.get("id")).collect())
    }

    // ---- admin keys -------------------------------------------------------------------

    /// Stores a new admin key's hash.
    pub async fn insert_admin_key(
        &self,
        id: &str,
        name: &str,
        role: &str,
        hash: &str,
        grant: Option<&str>,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO admin_keys (id, name, role, hash, grant_scope, created_at) VALUES ($1,$2,$3,$4,$5,$6)",
        )
            .bind(id)
            .bind(name)
            .bind(role)
            .bind(hash)
            .bind(grant)
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(db("insert admin key"))?;
        Ok(())
    }

    /// Looks up an admin key by its public id.
    pub async fn admin_key(&self, id: &str) -> Result<Option<AdminKeyRow>> {
        let row = sqlx::query(
            "SELECT id, name, role, hash, revoked_at, grant_scope FROM admin_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("get admin key"))?;
        Ok(row.map(|r| AdminKeyRow {
            id: r.get("id"),
            name: r.get("name"),
            role: r.get("role"),
            hash: r.get("hash"),
            revoked_at: r.get("revoked_at"),
            grant: r.get("grant_scope"),
        }))
    }

    /// Every admin key (no hashes), oldest first.
    pub async fn list_admin_keys(&self) -> Result<Vec<AdminKeyInfo>> {
        let rows = sqlx::query(
            "SELECT id, name, role, created_at, revoked_at, grant_scope FROM admin_keys ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("list admin keys"))?;
        Ok(rows
            .iter()
            .map(|r| AdminKeyInfo {
                id: r.get("id"),
                name: r.get("name"),
                role: r.get("role"),
                created_at: r.get("created_at"),
                revoked_at: r.get("revoked_at"),
                grant: r
                    .get::<Option<&str>, _>("grant_scope")
                    .and_then(|g| serde_json::from_str(g).ok()),
            })
            .collect())
    }

    // ---- service accounts -------------------------------------------------------------

    /// Stores a new service account; `Conflict` when an active one has the name.
    pub async fn insert_service_account(&self, s: &ServiceAccountRow) -> Result<()> {
        let r = sqlx::query(
            "INSERT INTO service_accounts (id, name, scope, hash, created_at, created_by) VALUES ($1,$2,$3,$4,$5,$6)",
        )
        .bind(&s.id)
        .bind(&s.name)
        .bind(s.scope.to_string())
        .bind(&s.hash)
        .bind(s.created_at)
        .bind(&s.created_by)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::Conflict(
                format!("an active service account named `{}`", s.name),
            )),
            Err(e) => Err(db("insert service account")(e)),
        }
    }

    fn service_account_from(r: &sqlx::any::AnyRow) -> ServiceAccountRow {
        ServiceAccountRow {
            id: r.get("id"),
            name: r.get("name"),
            scope: serde_json::from_str(r.get::<&str, _>("scope")).unwrap_or_default(),
            hash: r.get("hash"),
            created_at: r.get("created_at"),
            created_by: r.get("created_by"),
            last_used_at: r.get("last_used_at"),
            revoked_at: r.get("revoked_at"),
        }
    }

    /// A service account by its key's public id.
    pub async fn service_account(&self, id: &str) -> Result<Option<ServiceAccountRow>> {
        let row = sqlx::query("SELECT * FROM service_accounts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("get service account"))?;
        Ok(row.as_ref().map(Self::service_account_from))
    }

    /// Every service account, oldest first.
    pub async fn list_service_accounts(&self) -> Result<Vec<ServiceAccountRow>> {
        let rows = sqlx::query("SELECT * FROM service_accounts ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(db("list service accounts"))?;
        Ok(rows.iter().map(Self::service_account_from).collect())
    }

    /// Revokes an active service account by id or name; returns its id, or None.
    pub async fn revoke_service_account(
        &self,
        id_or_name: &str,
        now_ms: i64,
    ) -> Result<Option<String>> {
        let row = sqlx::query(
            "UPDATE service_accounts SET revoked_at = $1
              WHERE revoked_at IS NULL AND (id = $2 OR name = $2) RETURNING id",
        )
        .bind(now_ms)
        .bind(id_or_name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("revoke service account"))?;
        Ok(row.map(|r| r.get("id")))
    }

    /// Notes a service account's use (at most once a minute per account).
    pub async fn touch_service_account(&self, id: &str, now_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE service_accounts SET last_used_at = $1
              WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1 - 60000)",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db("note service account use"))?;
        Ok(())
    }

    // ---- trust policies ---------------------------------------------------------------

    /// Adds a trust policy; `Conflict` when the name is taken.
    pub async fn insert_trust_policy(&self, p: &TrustPolicyRow) -> Result<()> {
        let r = sqlx::query(
            "INSERT INTO trust_policies (name, policy, created_at, created_by) VALUES ($1,$2,$3,$4)",
        )
        .bind(&p.name)
        .bind(p.policy.to_string())
        .bind(p.created_at)
        .bind(&p.created_by)
        .execute(&self.pool)
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::Conflict(format!("trust policy `{}`", p.name)))
            }
            Err(e) => Err(db("insert trust policy")(e)),
        }
    }

    /// Trust policies added through the API, oldest first.
    pub async fn list_trust_policies(&self) -> Result<Vec<TrustPolicyRow>> {
        let rows = sqlx::query("SELECT * FROM trust_policies ORDER BY created_at, name")
            .fetch_all(&self.pool)
            .await
            .map_err(db("list trust policies"))?;
        Ok(rows
            .iter()
            .map(|r| TrustPolicyRow {
                name: r.get("name"),
                policy: serde_json::from_str(r.get::<&str, _>("policy")).unwrap_or_default(),
                created_at: r.get("created_at"),
                created_by: r.get("created_by"),
            })
            .collect())
    }

    /// Removes a trust policy added through the API.
    pub async fn delete_trust_policy(&self, name: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM trust_policies WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db("delete trust policy"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Revokes an admin key, unless it is the last active owner key (one statement, so two
    /// revocations at once cannot leave no owner); false when nothing was revoked.
    pub async fn revoke_admin_key(&self, id: &str, now_ms: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE admin_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL
               AND (role <> 'owner'
                    OR (SELECT COUNT(*) FROM admin_keys WHERE role = 'owner' AND revoked_at IS NULL) > 1)",
        )
                .bind(now_ms)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(db("revoke admin key"))?;
        Ok(r.rows_affected() == 1)
    }

    // ---- audit ------------------------------------------------------------------------

    /// A connection of its own for the one thread that appends audit records and usage rows.
    pub fn batch_writer(&self) -> Result<BatchWriter> {
        let Some(path) = &self.path else {
            let runtime = tokio::runtime::Handle::try_current().map_err(|_| StoreError::Db {
                op: "open the audit writer",
                source: sqlx::Error::Configuration(
                    "the PostgreSQL audit writer is opened within the async runtime".into(),
                ),
            })?;
            return Ok(BatchWriter {
                inner: Writer::Postgres {
                    pool: self.pool.clone(),
                    runtime,
                },
            });
        };
        let conn = rusqlite::Connection::open(path).map_err(wdb("open the writer"))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(wdb("open the writer"))?;
        conn.execute_batch(match self.sync {
            SyncMode::Full => {
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;"
            }
            SyncMode::Normal => {
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;"
            }
        })
        .map_err(wdb("open the writer"))?;
        Ok(BatchWriter {
            inner: Writer::Sqlite(conn),
        })
    }

    /// The last record's (seq, hash), or (0, GENESIS) for an empty log.
    pub async fn audit_head(&self) -> Result<(i64, String)> {
        let row = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read audit head"))?;
        Ok(row
            .map(|r| (r.get("seq"), r.get("hash")))
            .unwrap_or((0, airlock_audit::GENESIS.to_string())))
    }

    /// The signed head (the signature the writer stores with every batch), if any.
    pub async fn signed_head(&self) -> Result<Option<Checkpoint>> {
        let row =
            sqlx::query("SELECT seq, ts, head, key_id, signature FROM audit_head WHERE id = 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(db("read the signed head"))?;
        Ok(row.map(|r| checkpoint_from(&r)))
    }

    /// The last checkpoint.
    pub async fn last_checkpoint(&self) -> Result<Option<Checkpoint>> {
        let row = sqlx::query(
            "SELECT seq, ts, head, key_id, signature FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read audit checkpoint"))?;
        Ok(row.map(|r| checkpoint_from(&r)))
    }

    /// Audit records matching `f`, in chain order.
    pub async fn audit_records(&self, f: &AuditFilter) -> Result<Vec<Sealed>> {
        // Numbered by hand: sqlx's query builder writes `?` for the Any driver.
        let mut sql = String::from("SELECT * FROM audit WHERE seq > $1");
        let mut n = 1;
        let mut next = |sql: &mut String, text: &str| {
            n += 1;
            sql.push_str(&text.replace('#', &format!("${n}")));
        };
        if f.credential.is_some() {
            next(&mut sql, " AND credential = #");
        }
        if f.actor.is_some() {
            // The same value twice: one parameter.
            next(&mut sql, " AND (actor = # OR subject = #)");
        }
        if f.action.is_some() {
            next(&mut sql, " AND action = #");
        }
        if f.since.is_some() {
            next(&mut sql, " AND ts >= #");
        }
        if f.until.is_some() {
            next(&mut sql, " AND ts < #");
        }
        next(
            &mut sql,
            if f.newest {
                " ORDER BY seq DESC LIMIT #"
            } else {
                " ORDER BY seq LIMIT #"
            },
        );
        let mut q = sqlx::query(&sql).bind(f.after_seq.unwrap_or(0));
        for v in [&f.credential, &f.actor, &f.action].into_iter().flatten() {
            q = q.bind(v);
        }
        for v in [f.since, f.until].into_iter().flatten() {
            q = q.bind(v);
        }
        let rows = q
            .bind(f.limit.clamp(1, 100_000))
            .fetch_all(&self.pool)
            .await
            .map_err(db("read audit records"))?;
        let mut out: Vec<Sealed> = rows.iter().map(sealed_from).collect();
        if f.newest {
            out.reverse();
        }
        Ok(out)
    }

    /// Checkpoints with `from <= seq <= to`, in order.
    pub async fn audit_checkpoints(&self, from: i64, to: i64) -> Result<Vec<Checkpoint>> {
        let rows = sqlx::query(
            "SELECT seq, ts, head, key_id, signature FROM audit_checkpoints WHERE seq >= $1 AND seq <= $2 ORDER BY seq",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read audit checkpoints"))?;
        Ok(rows.iter().map(checkpoint_from).collect())
    }

    /// Who and what used a credential since `since_ms`, from the audit log.
    pub async fn credential_activity(&self, name: &str, since_ms: i64) -> Result<Activity> {
        let group = |col: &'static str| {
            format!(
                "SELECT {col} AS k, COUNT(*) AS n FROM audit WHERE action = 'inference' AND credential = $1                  AND ts >= $2 AND {col} IS NOT NULL GROUP BY {col} ORDER BY n DESC, k LIMIT 100"
            )
        };
        let mut out = Activity::default();
        for (col, into) in [
            ("subject", &mut out.identities),
            ("actor", &mut out.tokens),
            ("client_ip", &mut out.client_ips),
        ] {
            let rows = sqlx::query(&group(col))
                .bind(name)
                .bind(since_ms)
                .fetch_all(&self.pool)
                .await
                .map_err(db("read credential activity"))?;
            *into = rows
                .iter()
                .map(|r| Count {
                    name: r.get("k"),
                    requests: r.get("n"),
                })
                .collect();
        }
        let r = sqlx::query(
            "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(input_tokens),0) AS BIGINT) AS i, CAST(COALESCE(SUM(output_tokens),0) AS BIGINT) AS o,
               CAST(COALESCE(SUM(cost_micros),0) AS BIGINT) AS c FROM audit WHERE action = 'inference' AND credential = $1 AND ts >= $2",
        )
        .bind(name)
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await
        .map_err(db("read credential activity"))?;
        out.requests = r.get("n");
        out.input_tokens = r.get("i");
        out.output_tokens = r.get("o");
        out.cost_micros = r.get("c");
        Ok(out)
    }

    /// The most recent usage rows (newest first).
    pub async fn recent_usage(&self, limit: i64) -> Result<Vec<UsageRow>> {
        let rows = sqlx::query("SELECT * FROM usage ORDER BY id DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db("read usage"))?;
        Ok(rows
            .iter()
            .map(|r| UsageRow {
                ts: r.get("ts"),
                request_id: r.get("request_id"),
                token_id: r.get("token_id"),
                subject: r.get("subject"),
                env: r.get("env"),
                credential: r.get("credential"),
                provider: r.get("provider"),
                endpoint: r.get("endpoint"),
                model: r.get("model"),
                status: r.get("status"),
                outcome: r.get("outcome"),
                input_tokens: r.get("input_tokens"),
                output_tokens: r.get("output_tokens"),
                cached_tokens: r.get("cached_tokens"),
                latency_ms: r.get("latency_ms"),
                ttfb_ms: r.get("ttfb_ms"),
                stream: r.get::<i64, _>("stream") != 0,
                attempts: r.get("attempts"),
                client_ip: r.get("client_ip"),
                cost_nanos: r.get("cost_nanos"),
                project: r.get("project"),
                charged_nanos: r.get("charged_nanos"),
            })
            .collect())
    }

    /// Adds a rate limit.
    pub async fn insert_rate_limit(&self, r: &RateLimitRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO rate_limits (id, kind, key, rpm, tpm, created_at, created_by) VALUES ($1,$2,$3,$4,$5,$6,$7)",
        )
        .bind(&r.id)
        .bind(&r.kind)
        .bind(&r.key)
        .bind(r.rpm)
        .bind(r.tpm)
        .bind(r.created_at)
        .bind(&r.created_by)
        .execute(&self.pool)
        .await
        .map_err(db("insert rate limit"))?;
        Ok(())
    }

    /// Every rate limit, oldest first.
    pub async fn list_rate_limits(&self) -> Result<Vec<RateLimitRow>> {
        let rows = sqlx::query("SELECT * FROM rate_limits ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(db("list rate limits"))?;
        Ok(rows
            .iter()
            .map(|r| RateLimitRow {
                id: r.get("id"),
                kind: r.get("kind"),
                key: r.get("key"),
                rpm: r.get("rpm"),
                tpm: r.get("tpm"),
                created_at: r.get("created_at"),
                created_by: r.get("created_by"),
            })
            .collect())
    }

    /// Removes a rate limit.
    pub async fn delete_rate_limit(&self, id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM rate_limits WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db("delete rate limit"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Adds a budget.
    pub async fn insert_budget(&self, b: &BudgetRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO budgets (id, kind, key, period, limit_nanos, created_at, created_by) VALUES ($1,$2,$3,$4,$5,$6,$7)",
        )
        .bind(&b.id)
        .bind(&b.kind)
        .bind(&b.key)
        .bind(&b.period)
        .bind(b.limit_nanos)
        .bind(b.created_at)
        .bind(&b.created_by)
        .execute(&self.pool)
        .await
        .map_err(db("insert budget"))?;
        Ok(())
    }

    /// Every budget, oldest first.
    pub async fn list_budgets(&self) -> Result<Vec<BudgetRow>> {
        let rows = sqlx::query("SELECT * FROM budgets ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(db("list budgets"))?;
        Ok(rows
            .iter()
            .map(|r| BudgetRow {
                id: r.get("id"),
                kind: r.get("kind"),
                key: r.get("key"),
                period: r.get("period"),
                limit_nanos: r.get("limit_nanos"),
                created_at: r.get("created_at"),
                created_by: r.get("created_by"),
            })
            .collect())
    }

    /// Removes a budget.
    pub async fn delete_budget(&self, id: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM budgets WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db("delete budget"))?;
        Ok(r.rows_affected() > 0)
    }

    /// Nano-dollars spent by `key` of a dimension since `since_ms`.
    pub async fn spent_since(&self, by: UsageDimension, key: &str, since_ms: i64) -> Result<i64> {
        let col = by.column();
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(COALESCE(charged_nanos, cost_nanos)), 0) AS BIGINT) AS c FROM usage WHERE {col} = $1 AND ts >= $2"
        );
        let r = sqlx::query(&sql)
            .bind(key)
            .bind(since_ms)
            .fetch_one(&self.pool)
            .await
            .map_err(db("read spend"))?;
        Ok(r.get("c"))
    }

    /// Usage grouped by one dimension (a column of `usage`, from a fixed list) and optionally
    /// by time bucket (`bucket_ms`, aligned to the Unix epoch, so days are UTC days), for
    /// `ts` in `[since_ms, until_ms)`. Rows ordered by bucket, then cost (highest first).
    pub async fn usage_report(
        &self,
        by: UsageDimension,
        since_ms: i64,
        until_ms: i64,
        bucket_ms: Option<i64>,
    ) -> Result<Vec<UsageReportRow>> {
        let col = by.column();
        let bucket = bucket_ms.unwrap_or(0);
        // The column name comes from the enum, never from the caller's text.
        let sql = format!(
            "SELECT {col} AS k, CASE WHEN $3 > 0 THEN (ts / $3) * $3 END AS b, COUNT(*) AS n,
                    CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS i, CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS o,
                    CAST(COALESCE(SUM(cached_tokens), 0) AS BIGINT) AS ci, CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) AS c,
                    CAST(SUM(CASE WHEN model IS NOT NULL AND cost_nanos IS NULL
                              AND (input_tokens IS NOT NULL OR output_tokens IS NOT NULL) THEN 1 ELSE 0 END) AS BIGINT) AS unpriced
               FROM usage WHERE ts >= $1 AND ts < $2
              GROUP BY k, b ORDER BY b, c DESC, n DESC, k"
        );
        let rows = sqlx::query(&sql)
            .bind(since_ms)
            .bind(until_ms)
            .bind(bucket)
            .fetch_all(&self.pool)
            .await
            .map_err(db("read usage"))?;
        Ok(rows
            .iter()
            .map(|r| UsageReportRow {
                key: r.get("k"),
                bucket_ms: r.get("b"),
                requests: r.get("n"),
                input_tokens: r.get("i"),
                output_tokens: r.get("o"),
                cached_tokens: r.get("ci"),
                cost_nanos: r.get("c"),
                unpriced: r.get("unpriced"),
            })
            .collect())
    }

    /// Totals of successful requests served by a credential.
    pub async fn credential_totals(&self, name: &str) -> Result<UsageTotals> {
        let r = sqlx::query(
            "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(input_tokens),0) AS BIGINT) AS i, CAST(COALESCE(SUM(output_tokens),0) AS BIGINT) AS o
             FROM usage WHERE credential = $1 AND outcome != 'refused'",
        )
        .bind(name)
        .fetch_one(&self.pool)
        .await
        .map_err(db("usage totals"))?;
        Ok(UsageTotals {
            requests: r.get("n"),
            input_tokens: r.get("i"),
            output_tokens: r.get("o"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn roundtrip() {
        let dir = std::env::temp_dir().join(format!("airlock-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        let s = Store::open_sqlite(&path).await.unwrap();
        let c = CredentialRow {
            name: "openai-prod".into(),
            provider: "openai".into(),
            env: "prod".into(),
            secret_ref: "env:OPENAI_API_KEY".into(),
            base_url: None,
            models: vec!["gpt-*".into()],
            priority: 10,
            fingerprint: Some("hmac-sha256:00".into()),
            last4: Some("abcd".into()),
            created_at: 1,
            rotated_at: None,
            last_used_at: None,
            suspended: false,
            secret_version: None,
        };
        s.insert_credential(&c).await.unwrap();
        assert!(matches!(
            s.insert_credential(&c).await,
            Err(StoreError::Conflict(_))
        ));
        let got = s.get_credential("openai-prod").await.unwrap().unwrap();
        assert_eq!(got.models, vec!["gpt-*".to_string()]);
        s.set_fingerprint("openai-prod", "hmac-sha256:11", "wxyz", Some("3"), 5)
            .await
            .unwrap();
        let got = s.get_credential("openai-prod").await.unwrap().unwrap();
        assert_eq!(got.rotated_at, Some(5));
        assert_eq!(got.secret_version.as_deref(), Some("3"));
        // A sealed secret goes in with its credential and is destroyed with it.
        let sealed = SealedRow {
            id: "s_1".into(),
            credential: "sealed-one".into(),
            kek: "keyfile:/k".into(),
            kek_version: "v1".into(),
            wrapped_key: vec![1, 2, 3],
            nonce: vec![0; 12],
            ciphertext: vec![9; 40],
            created_at: 1,
            rewrapped_at: None,
        };
        let sc = CredentialRow {
            name: "sealed-one".into(),
            secret_ref: "sealed:s_1".into(),
            ..c.clone()
        };
        s.insert_credential_with(&sc, Some(&sealed)).await.unwrap();
        assert_eq!(s.list_sealed().await.unwrap().len(), 1);
        let new = SealedRow {
            kek_version: "v2".into(),
            wrapped_key: vec![4],
            rewrapped_at: Some(6),
            ..sealed.clone()
        };
        assert!(!s.rewrap_sealed(&[7], &new).await.unwrap());
        assert!(s.rewrap_sealed(&[1, 2, 3], &new).await.unwrap());
        let got = s.get_sealed("s_1").await.unwrap().unwrap();
        assert_eq!((got.kek_version.as_str(), got.wrapped_key), ("v2", vec![4]));
        assert!(s.delete_credential("sealed-one").await.unwrap());
        assert!(s.get_sealed("s_1").await.unwrap().is_none());
        s.batch_writer()
            .unwrap()
            .write_batch(
                &[UsageRow {
                    ts: 7,
                    request_id: "r".into(),
                    credential: Some("openai-prod".into()),
                    endpoint: "/v1/chat/completions".into(),
                    status: 200,
                    outcome: "ok".into(),
                    input_tokens: Some(3),
                    output_tokens: Some(4),
                    attempts: 1,
                    ..Default::default()
                }],
                &[],
                None,
                None,
            )
            .unwrap();
        let t = s.credential_totals("openai-prod").await.unwrap();
        assert_eq!(
            t,
            UsageTotals {
                requests: 1,
                input_tokens: 3,
                output_tokens: 4
            }
        );
        assert_eq!(
            s.get_credential("openai-prod")
                .await
                .unwrap()
                .unwrap()
                .last_used_at,
            Some(7)
        );
        assert!(s.delete_credential("openai-prod").await.unwrap());
        assert!(!s.delete_credential("openai-prod").await.unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
