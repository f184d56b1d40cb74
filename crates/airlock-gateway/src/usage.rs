//! Usage and audit recording, from one place: every request owns a `Record` (`record.rs`);
//! whichever way the request ends (refusal, upstream error, finished stream, client gone) the
//! record is sent exactly once, through the [`Recorder`] here, to the audit log's writer
//! (`airlock_audit::log`), which appends the audit records to the hash chain and stores the
//! usage rows with them, a batch per transaction (group commit: whatever queued while the last
//! transaction ran goes into the next), and signs the head of every batch. The store side is
//! `airlock_store::BatchWriter` (the writer's own SQLite connection) behind
//! `airlock_audit::log::Storage`.
//!
//! Invariant I5: a request is not answered before its audit record is durable. Refusals and
//! non-streamed responses wait for the writer's acknowledgement before they are sent; a
//! stream's end is held back until its record is written. When a write fails, the default
//! (`audit.on_failure = "closed"`) refuses or aborts the response; `"open"` serves it and
//! counts it in `airlock_audit_unrecorded_total`.
//!
//! Token counts come from the provider's response: the `usage` object of a JSON body, or of the
//! SSE events of a stream (OpenAI's final chunk with `stream_options.include_usage`, Anthropic's
//! `message_start` / `message_delta`, the Responses API's `response.completed`). The parser
//! looks only for the `"usage"` key, so it never parses whole bodies and never keeps content.
//!
//! # What the log guards against, and what it cannot
//!
//! | tampering | how `audit verify` names it |
//! | --- | --- |
//! | a field changed | `changed` at that record (its hash no longer matches) |
//! | changed and re-hashed | `broken_link` at the next record |
//! | everything after it re-hashed | `checkpoint_mismatch` at the next signed checkpoint |
//! | a record deleted, two swapped | `missing` / `reordered` at the first gap |
//! | tail cut off | `truncated` when a checkpoint (in the database or the external copy) signs past the end |
//! | checkpoint forged or altered | `bad_signature` |
//! | checkpoints deleted, or records added without them | `unsigned` when records older than `--max-unsigned-age` (300 s) are not signed |
//! | the start of an export cut off | `partial`, unless `--partial` says the export was made with `--since` |
//!
//! What the server itself checks, and when:
//!
//! - **Every batch is signed**: the writer signs the head of each batch it writes and stores
//!   that signature (`audit_head`, one row, replaced) in the same transaction; permanent
//!   checkpoints (`audit_checkpoints`, and the copy in `checkpoint_file`) are kept every
//!   `checkpoint_every` records or `checkpoint_interval_secs`. So a log airlock wrote never holds
//!   an unsigned record, and `/admin/v1/audit/checkpoints` includes the signed head.
//! - **At start** (`airlock_audit::log::start`), before appending anything: the signatures of the
//!   last permanent checkpoint and of the signed head (any `keys/audit-*.pub`), every record from
//!   that checkpoint on (unchanged, linked, the signed hashes where they say), that no record
//!   follows the signed head, and that the last checkpoint in `audit.checkpoint_file` (read
//!   backwards past any padding; a short torn last line is cut off, anything else refused) is one
//!   the database holds; checkpoints committed but not copied are copied, signatures checked. Any
//!   mismatch and `serve` refuses to start, so a rewritten or extended database is never signed
//!   over; `serve --accept-unsigned-tail` signs records after the signed head once an operator has
//!   looked at them, and records that it did (`audit.tail_accepted`). The chain continues from
//!   what was verified, not from a second read. A missing audit key is not regenerated while the
//!   log has records. One server per state directory (`airlock.lock`, taken before anything else;
//!   the listener is bound first). Records before the last permanent checkpoint are left to
//!   `audit verify`.
//! - **While running**: the writer owns the chain, on its own thread and SQLite connection. When
//!   a write fails it reads the stored head: unchanged, it keeps the batch for another attempt
//!   (bounded, `RETRY_LIMIT`); the waiting requests were refused (or, for admin changes and
//!   stream ends, answered in part), and their records say so; exactly its own batch, it carries
//!   on; anything else (another process appended), it stops appending for good and the server
//!   refuses requests; the records found there are then after the signed head, so a restart
//!   refuses them too.
//! - **What cannot be protected**: someone who can write the database can delete whole records
//!   from the end back to a permanent checkpoint together with the signed head row, leaving an
//!   older but consistent log; that truncation shows only against `checkpoint_file` (for the
//!   records since the last permanent checkpoint, not even there). Someone who holds the audit
//!   private key can forge everything; keep it out of the database's reach. `init` puts
//!   `checkpoint_file` in the state directory, next to the database: whoever can rewrite one can
//!   usually rewrite the other, so point it at other storage for the whole-database guarantee.
//! - **Exports** end on a checkpoint the server signs for the export (`POST
//!   /admin/v1/audit/checkpoint`); `verify --file` refuses a file that starts after record 1 or
//!   has records after its last checkpoint unless `--partial` says it is an excerpt.
//! - **Durability**: SQLite runs in WAL mode with `synchronous = FULL` by default (`[store]
//!   synchronous`): a record the client waited for survives a power loss. `normal` survives a
//!   crash of airlock only. The checkpoint copy is `fsync`ed per checkpoint.
//! - **Streams**: a durable `inference.stream` / `started` record precedes the first byte; the
//!   `inference` record with token counts closes the stream. A client that disconnects mid-stream
//!   still leaves both.
//! - **Memory**: a non-streamed response is held until its record is durable; bodies over
//!   64 MiB are answered with 502 `upstream_body_failed` rather than buffered, so the bound per request is
//!   64 MiB and in aggregate that times the concurrent non-streamed requests; a deployment that
//!   expects large concurrent JSON bodies should front airlock with a connection limit.
//! - **Fallbacks**: the `inference` record names the credential that answered; `reason` lists the
//!   ones tried before it and why (`fell back from bad-500 (HTTP 500)`), because each of them used
//!   its key.
//!
//! Anonymous refusals are audited up to `audit.anonymous_per_sec` (one budget for the whole
//! server, not per client address) and counted beyond it (`airlock_audit_anonymous_skipped_total`),
//! so junk traffic cannot flood the log; a flood can therefore hide other anonymous refusals in
//! that second, never an authenticated request or an admin change.

use airlock_audit::log::{Log, Note, Settings as LogSettings, Stats};
use airlock_audit::Record as AuditRecord;
use airlock_store::{Store, UsageRow};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Counters exposed on `/metrics` (the audit writer's own are in [`Stats`]).
#[derive(Default)]
pub struct Counters {
    /// Requests finished.
    pub requests: AtomicU64,
    /// Input tokens.
    pub input_tokens: AtomicU64,
    /// Output tokens.
    pub output_tokens: AtomicU64,
    /// Upstream fallbacks taken.
    pub fallbacks: AtomicU64,
    /// Refused requests.
    pub refused: AtomicU64,
    /// Requests refused before a token was verified: not stored as usage; audited up to
    /// `audit.anonymous_per_sec`.
    pub unauthenticated: AtomicU64,
    /// Requests served without a durable record (only with `audit.on_failure = "open"`).
    pub audit_unrecorded: AtomicU64,
    /// Anonymous refusals not audited because of the rate cap.
    pub audit_anonymous_skipped: AtomicU64,
    /// New key versions from a store that the provider refused (not promoted; alerted).
    pub rotations_rejected: AtomicU64,
    /// Spend, nano-dollars.
    pub cost_nanos: AtomicU64,
    /// Requests refused by a budget.
    pub budget_refusals: AtomicU64,
    /// Requests refused by a rate limit.
    pub rate_limited: AtomicU64,
    /// Token exchanges granted.
    pub exchanges_granted: AtomicU64,
    /// Token exchanges refused.
    pub exchanges_refused: AtomicU64,
    /// Secret reads (background refreshes and first reads) that failed.
    pub secret_read_failures: AtomicU64,
    /// Request durations, by endpoint (the order of [`ENDPOINTS`]).
    pub request_seconds: [crate::histogram::Histogram; ENDPOINTS.len()],
    /// Time until the provider's first byte.
    pub upstream_ttfb_seconds: crate::histogram::Histogram,
    /// Time from a record's request to its audit batch being durable (what "audited before
    /// answered" costs), per batch: its oldest message.
    pub audit_lag_seconds: crate::histogram::Histogram,
}

/// The endpoints whose durations are kept apart on `/metrics`; others count under the last.
pub const ENDPOINTS: [&str; 8] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/models",
    "other",
];

/// The audit log's settings and what the recorder adds to them.
pub struct AuditSettings {
    /// How the writer signs and fails.
    pub log: LogSettings,
    /// Anonymous refusals audited per second.
    pub anonymous_per_sec: u32,
    /// Prices by model pattern.
    pub pricing: airlock_spend::pricing::Prices,
}

/// Sends records to the writer.
#[derive(Clone)]
pub struct Recorder {
    log: Log<UsageRow>,
    /// Shared counters.
    pub counters: Arc<Counters>,
    shared: Arc<Shared>,
}

struct Shared {
    pricing: airlock_spend::pricing::Prices,
    anonymous_per_sec: u32,
    anonymous_window: Mutex<(Instant, u32)>,
    /// Sees every finished request.
    anomaly: std::sync::OnceLock<Arc<airlock_spend::anomaly::Detector>>,
    /// Exports a span per finished request.
    otel: std::sync::OnceLock<Arc<crate::otel::Tracer>>,
}

/// Whether a request may be answered now that its record was (or was not) written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durable {
    /// Written.
    Yes,
    /// Not written, and the operator chose fail-open: answer, but it was counted.
    NoButOpen,
    /// Not written: do not answer (fail-closed).
    No,
}

impl Durable {
    /// Whether to answer.
    pub fn may_answer(self) -> bool {
        !matches!(self, Durable::No)
    }
}

/// The refusal a client gets when its request cannot be audited.
pub fn audit_unavailable() -> airlock_providers::dialect::ApiError {
    airlock_providers::dialect::ApiError::new(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "audit_unavailable",
        "the audit log cannot be written, so this request was not served (audit.on_failure = closed); an operator must check the database",
    )
}

impl Recorder {
    /// Checks the log stored in `store` and starts its writer on a connection of its own; the
    /// writer ends when every `Recorder` is dropped, after writing what is queued and signing
    /// the head.
    pub async fn start(
        store: Store,
        settings: AuditSettings,
    ) -> anyhow::Result<(Self, tokio::task::JoinHandle<()>)> {
        let counters = Arc::new(Counters::default());
        let lag = counters.clone();
        let (log, handle) = Log::open(&store, store.batch_writer()?, settings.log, move |d| {
            lag.audit_lag_seconds.observe(d)
        })
        .await?;
        let shared = Arc::new(Shared {
            pricing: settings.pricing,
            anonymous_per_sec: settings.anonymous_per_sec,
            anonymous_window: Mutex::new((Instant::now(), 0)),
            anomaly: Default::default(),
            otel: Default::default(),
        });
        Ok((
            Recorder {
                log,
                counters,
                shared,
            },
            handle,
        ))
    }

    /// Signs the chain head now and waits until the signature is durable (for exports that
    /// must end on a signature). Returns whether it was written.
    pub async fn sign_now(&self) -> bool {
        self.log.sign_now().await
    }

    /// Writes what is queued, signs the head, and waits (bounded by the caller) until done:
    /// the last thing a stopping server does, while streams may still hold recorders.
    pub async fn shutdown(&self) -> bool {
        self.log.sign_now().await
    }

    /// Queues a record and its usage row; the receiver answers `true` once durable. Queued
    /// before this returns, so a cancelled request cannot lose its record.
    pub(crate) fn send(
        &self,
        usage: Option<UsageRow>,
        audit: AuditRecord,
        note: Note,
    ) -> oneshot::Receiver<bool> {
        self.log.send(usage, audit, note)
    }

    /// Messages waiting for the audit writer.
    pub fn queue_depth(&self) -> usize {
        self.log.queue_depth()
    }

    /// Whether the last write succeeded (fail-closed servers refuse early when it did not).
    pub fn healthy(&self) -> bool {
        self.log.healthy()
    }

    /// Whether requests are served when the audit log cannot be written.
    pub fn fail_open(&self) -> bool {
        self.log.fail_open()
    }

    /// The audit writer's counters.
    pub fn log_stats(&self) -> &Stats {
        self.log.stats()
    }

    /// Hands every finished request to the anomaly detector from now on.
    pub fn watch(&self, detector: Arc<airlock_spend::anomaly::Detector>) {
        let _ = self.shared.anomaly.set(detector);
    }

    /// The anomaly detector that sees every finished request, when there is one.
    pub(crate) fn detector(&self) -> Option<&Arc<airlock_spend::anomaly::Detector>> {
        self.shared.anomaly.get()
    }

    /// Exports a span per finished request from now on.
    pub fn trace_with(&self, tracer: Arc<crate::otel::Tracer>) {
        let _ = self.shared.otel.set(tracer);
    }

    /// The span exporter, when traces are on.
    pub fn tracer(&self) -> Option<&Arc<crate::otel::Tracer>> {
        self.shared.otel.get()
    }

    /// The price list.
    pub fn prices(&self) -> &airlock_spend::pricing::Prices {
        &self.shared.pricing
    }

    /// Appends an audit record (and a usage row) and waits until it is durable.
    pub async fn write(&self, usage: Option<UsageRow>, audit: AuditRecord) -> Durable {
        self.write_noted(usage, audit, Note::NotAnswered).await
    }

    /// As [`Recorder::write`], with what the record should say if its first write fails.
    pub async fn write_noted(
        &self,
        usage: Option<UsageRow>,
        audit: AuditRecord,
        note: Note,
    ) -> Durable {
        let ok = self.send(usage, audit, note).await.unwrap_or(false);
        self.verdict(ok)
    }

    pub(crate) fn verdict(&self, ok: bool) -> Durable {
        if ok {
            Durable::Yes
        } else if self.log.fail_open() {
            self.counters
                .audit_unrecorded
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!("serving a request whose audit record could not be written (audit.on_failure = open)");
            Durable::NoButOpen
        } else {
            Durable::No
        }
    }

    /// Appends without waiting (for events whose request is already over or failing).
    pub fn write_nowait(&self, usage: Option<UsageRow>, audit: AuditRecord) {
        self.log.append_nowait(usage, audit);
    }

    /// Whether one more anonymous refusal may be audited this second.
    pub(crate) fn anonymous_allowed(&self) -> bool {
        let Ok(mut w) = self.shared.anonymous_window.lock() else {
            return false;
        };
        if w.0.elapsed() >= Duration::from_secs(1) {
            *w = (Instant::now(), 0);
        }
        if w.1 < self.shared.anonymous_per_sec {
            w.1 += 1;
            true
        } else {
            false
        }
    }

    pub(crate) fn count(&self, row: &UsageRow, took: Duration) {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let i = ENDPOINTS
            .iter()
            .position(|e| *e == row.endpoint)
            .unwrap_or(ENDPOINTS.len() - 1);
        self.counters.request_seconds[i].observe(took);
        if let Some(t) = row.ttfb_ms {
            self.counters
                .upstream_ttfb_seconds
                .observe(Duration::from_millis(t.max(0) as u64));
        }
        if row.outcome == "refused" {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(i) = row.input_tokens {
            self.counters
                .input_tokens
                .fetch_add(i.max(0) as u64, Ordering::Relaxed);
        }
        if let Some(o) = row.output_tokens {
            self.counters
                .output_tokens
                .fetch_add(o.max(0) as u64, Ordering::Relaxed);
        }
        if let Some(c) = row.cost_nanos {
            self.counters
                .cost_nanos
                .fetch_add(c.max(0) as u64, Ordering::Relaxed);
        }
    }
}
