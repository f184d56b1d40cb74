//! Usage and audit recording, from one place: every request owns a `Record` (`record.rs`);
//! whichever way the request ends (refusal, upstream error, finished stream, client gone) the
//! record is sent exactly once. One background writer appends the audit records to the hash chain
//! and stores usage rows with them, a batch per transaction (group commit: whatever queued while
//! the last transaction ran goes into the next), and signs checkpoints.
//!
//! Why one file: the audit writer owns the chain: its start-up check, batches, retries and
//! signatures share one state.
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
//! - **At start** (`usage::check_stored_log`), before appending anything: the signatures of the
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

use airlock_audit::{AuditKey, Record as AuditRecord};
use airlock_store::{BatchWriter, Store, UsageRow};
use anyhow::Context as _;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Counters exposed on `/metrics`.
#[derive(Default)]
pub struct Counters {
    /// Requests finished.
    pub requests: AtomicU64,
    /// Records that failed to write.
    pub write_errors: AtomicU64,
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
    /// Audit records appended.
    pub audit_records: AtomicU64,
    /// Checkpoints signed.
    pub audit_checkpoints: AtomicU64,
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

/// How the writer signs and what happens when it fails.
pub struct AuditSettings {
    /// The signing key for checkpoints.
    pub key: AuditKey,
    /// Checkpoint after this many records.
    pub every: i64,
    /// Or after this long with unsigned records.
    pub interval: Duration,
    /// Append checkpoints to this file too.
    pub sink: Option<PathBuf>,
    /// Keys whose checkpoints the stored log may carry (every `audit-*.pub` in the key
    /// directory): checked before appending.
    pub verify_keys: airlock_audit::PublicKeys,
    /// Serve when a record cannot be written.
    pub fail_open: bool,
    /// Anonymous refusals audited per second.
    pub anonymous_per_sec: u32,
    /// Sign records found after the last checkpoint at start even when there are more of them,
    /// or they are newer, than a running server leaves unsigned (`serve --accept-unsigned-tail`,
    /// after an operator looked at them). Recorded in the log.
    pub accept_unsigned_tail: bool,
    /// Prices by model pattern: (pattern, dollars per million input, per million output).
    pub pricing: airlock_spend::pricing::Prices,
}

/// One message to the writer.
pub(crate) struct Msg {
    /// When it was queued (for `airlock_audit_lag_seconds`).
    pub(crate) at: Instant,
    pub(crate) usage: Option<UsageRow>,
    pub(crate) audit: Option<AuditRecord>,
    pub(crate) ack: Option<oneshot::Sender<bool>>,
    /// Sign the head now (with whatever is queued).
    pub(crate) sign: bool,
    /// A clock tick for the writer's timers (checkpoint interval, retries); carries nothing.
    pub(crate) tick: bool,
    /// What the record says if this write fails and is retried later (fail-closed).
    pub(crate) note: &'static str,
}

/// The note of a record whose request was refused because its write failed.
pub(crate) const NOTE_NOT_ANSWERED: &str =
    "not answered: the audit log could not be written at the time";
/// The note of an admin change made whose record could not be written at once.
pub const NOTE_CHANGE_MADE: &str =
    "the change was made, but its record could not be written at the time";
/// The note of a stream whose last frame was held back because its record failed.
pub(crate) const NOTE_STREAM_CUT: &str =
    "the stream was delivered except its end: the audit log could not be written at the time";

/// Messages kept for another attempt after a failed write, at most this many; beyond it the
/// oldest are dropped and counted in `airlock_audit_write_errors_total`.
const RETRY_LIMIT: usize = 16_384;
/// Messages waiting for room in a full queue, at most this many at once.
const OVERFLOW_LIMIT: usize = 65_536;

/// Sends records to the writer.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
    /// Shared counters.
    pub counters: Arc<Counters>,
    shared: Arc<Shared>,
}

struct Shared {
    fail_open: bool,
    /// Room for messages waiting on a full queue.
    overflow: Arc<tokio::sync::Semaphore>,
    /// Set by the writer: false after a failed write, true after a good one.
    healthy: AtomicBool,
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
    /// Starts the writer task, continuing the chain stored in `store`; the task ends when every
    /// `Recorder` is dropped, after writing what is queued and signing the head.
    pub async fn start(
        store: Store,
        settings: AuditSettings,
    ) -> anyhow::Result<(Self, tokio::task::JoinHandle<()>)> {
        // Continue from what was verified, not from a second read: a record slipped in after
        // the check collides with the writer's first append and stops it.
        let Verified {
            accepted_tail,
            seq,
            head,
            last_cp,
        } = check_stored_log(&store, &settings).await?;
        let (tx, rx) = mpsc::channel::<Msg>(16_384);
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            fail_open: settings.fail_open,
            overflow: Arc::new(tokio::sync::Semaphore::new(OVERFLOW_LIMIT)),
            healthy: AtomicBool::new(true),
            pricing: settings.pricing.clone(),
            anonymous_per_sec: settings.anonymous_per_sec,
            anonymous_window: Mutex::new((Instant::now(), 0)),
            anomaly: Default::default(),
            otel: Default::default(),
        });
        let chain = Chain {
            seq,
            head,
            last_cp,
            last_cp_at: Instant::now(),
            settings,
            retry: std::collections::VecDeque::new(),
            wedged: false,
        };
        // The writer owns a connection of its own and runs on a thread of its own: a batch is
        // one synchronous call into SQLite, with no hand-off per statement.
        let db = store.batch_writer()?;
        let handle = tokio::task::spawn_blocking({
            let (c, sh) = (counters.clone(), shared.clone());
            move || writer(db, rx, c, sh, chain)
        });
        // Its timers are driven by ticks, so that it can block on its queue. The ticker holds
        // only a weak sender: the queue still closes when the last recorder is dropped.
        let weak = tx.downgrade();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(250));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(tx) = weak.upgrade() else { return };
                let _ = tx.try_send(Msg {
                    at: Instant::now(),
                    usage: None,
                    audit: None,
                    ack: None,
                    sign: false,
                    tick: true,
                    note: NOTE_NOT_ANSWERED,
                });
            }
        });
        let recorder = Recorder {
            tx,
            counters,
            shared,
        };
        if let Some(n) = accepted_tail {
            let rec = AuditRecord {
                ts: crate::util::now_ms(),
                actor_kind: "system".into(),
                action: "audit.tail_accepted".into(),
                outcome: "ok".into(),
                reason: Some(format!(
                    "{n} records after the last checkpoint were accepted by the operator (serve --accept-unsigned-tail) and signed"
                )),
                ..Default::default()
            };
            if !recorder.write(None, rec).await.may_answer() {
                anyhow::bail!("cannot write to the audit log");
            }
        }
        Ok((recorder, handle))
    }

    /// Signs the chain head now and waits until the checkpoint is durable (for exports that
    /// must end on a signature). Returns whether it was written.
    pub async fn sign_now(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        self.enqueue(Msg {
            at: Instant::now(),
            usage: None,
            audit: None,
            ack: Some(tx),
            sign: true,
            tick: false,
            note: NOTE_NOT_ANSWERED,
        });
        rx.await.unwrap_or(false)
    }

    /// Writes what is queued, signs the head, and waits (bounded by the caller) until done:
    /// the last thing a stopping server does, while streams may still hold recorders.
    pub async fn shutdown(&self) -> bool {
        self.sign_now().await
    }

    /// Puts a message on the writer's queue without waiting: when the queue is full the message
    /// waits in a task (at most `OVERFLOW_LIMIT` at once; beyond that it is dropped and
    /// counted). A message handed to this function survives its caller being cancelled.
    pub(crate) fn enqueue(&self, msg: Msg) {
        if msg.usage.is_none() && msg.audit.is_none() && msg.ack.is_none() && !msg.sign && !msg.tick
        {
            return;
        }
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let Ok(permit) = self.shared.overflow.clone().try_acquire_owned() else {
                    self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("audit queue overflow: a record was dropped");
                    return;
                };
                let tx = self.tx.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(async move {
                            let _ = tx.send(msg).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Messages waiting for the audit writer.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Whether the last write succeeded (fail-closed servers refuse early when it did not).
    pub fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    /// Whether requests are served when the audit log cannot be written.
    pub fn fail_open(&self) -> bool {
        self.shared.fail_open
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
        self.write_noted(usage, audit, NOTE_NOT_ANSWERED).await
    }

    /// As [`Recorder::write`], with what the record should say if its first write fails.
    pub async fn write_noted(
        &self,
        usage: Option<UsageRow>,
        audit: AuditRecord,
        note: &'static str,
    ) -> Durable {
        let (tx, rx) = oneshot::channel();
        self.enqueue(Msg {
            at: Instant::now(),
            usage,
            audit: Some(audit),
            ack: Some(tx),
            sign: false,
            tick: false,
            note,
        });
        let ok = rx.await.unwrap_or(false);
        self.verdict(ok)
    }

    pub(crate) fn verdict(&self, ok: bool) -> Durable {
        if ok {
            Durable::Yes
        } else if self.shared.fail_open {
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
    pub fn write_nowait(&self, usage: Option<UsageRow>, audit: Option<AuditRecord>) {
        self.enqueue(Msg {
            at: Instant::now(),
            usage,
            audit,
            ack: None,
            sign: false,
            tick: false,
            note: NOTE_NOT_ANSWERED,
        });
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

struct Chain {
    seq: i64,
    head: String,
    last_cp: i64,
    last_cp_at: Instant,
    settings: AuditSettings,
    /// Records of failed writes, written again before new ones.
    retry: std::collections::VecDeque<Msg>,
    /// The stored log changed under the writer (another writer, or someone editing the
    /// database): nothing more is appended until an operator restarts airlock, whose start
    /// check then judges the log.
    wedged: bool,
}

impl Chain {
    fn checkpoint_due(&self, seq: i64) -> bool {
        seq > self.last_cp
            && (seq - self.last_cp >= self.settings.every
                || self.last_cp_at.elapsed() >= self.settings.interval)
    }

    fn sink(&self, cp: &airlock_audit::Checkpoint) {
        let Some(path) = &self.settings.sink else {
            return;
        };
        if let Err(e) = append_checkpoint(path, cp) {
            tracing::error!(path = %path.display(), error = %e, "cannot append the checkpoint to audit.checkpoint_file");
        }
    }
}

/// What the start check verified: the chain continues from here.
struct Verified {
    accepted_tail: Option<u64>,
    seq: i64,
    head: String,
    last_cp: i64,
}

/// Before appending, checks that the stored log is still what was signed. The writer signs the
/// head in the transaction of every batch (`audit_head`) and a permanent checkpoint every
/// `checkpoint_every` records or `checkpoint_interval_secs`, so a log airlock wrote has nothing
/// unsigned: the check verifies the signatures, the records from the last permanent checkpoint
/// on, that nothing follows the signed head, and that the last checkpoint in
/// `audit.checkpoint_file` is one the database holds. Without this a server restarted on a
/// rewritten or extended database would sign the forgery at its next batch.
async fn check_stored_log(store: &Store, settings: &AuditSettings) -> anyhow::Result<Verified> {
    let refuse = |p: airlock_audit::Problem| {
        anyhow::anyhow!(
            "the audit log in the database is not what was signed (record {}: {}); airlock will not append to it. \
             Keep the database for investigation (`airlock audit verify --file` works on a copy exported with sqlite3), \
             and point state_dir or store.url at a fresh database to serve again",
            p.seq,
            p.message
        )
    };
    let last = store.last_checkpoint().await?;
    let signed = store.signed_head().await?;
    let anchors: Vec<airlock_audit::Checkpoint> =
        last.iter().chain(signed.iter()).cloned().collect();
    // From the last permanent checkpoint (or the start), and never after the signed head.
    let from = last
        .as_ref()
        .map(|c| c.seq)
        .unwrap_or(0)
        .min(signed.as_ref().map(|c| c.seq).unwrap_or(i64::MAX));
    let mut v = airlock_audit::ChainVerifier::new(anchors, &settings.verify_keys, from == 0)
        .map_err(refuse)?;
    let mut after = (from - 1).max(0);
    loop {
        let page = store
            .audit_records(&airlock_store::AuditFilter {
                after_seq: Some(after),
                limit: 10_000,
                ..Default::default()
            })
            .await?;
        let Some(first) = page.first() else { break };
        if after == from - 1 && first.record.seq != from {
            return Err(refuse(airlock_audit::Problem {
                seq: from,
                kind: "missing",
                message: format!("record {from}, which the last checkpoint signs, is missing"),
            }));
        }
        for r in &page {
            v.record(r).map_err(refuse)?;
            after = r.record.seq;
        }
    }
    let summary = v.finish().map_err(refuse)?;
    let accepted_tail = check_unsigned_tail(&summary, settings)?;
    let verified = Verified {
        accepted_tail,
        seq: summary.last_seq.unwrap_or(0),
        head: summary
            .head
            .clone()
            .unwrap_or_else(|| airlock_audit::GENESIS.to_string()),
        last_cp: last.as_ref().map(|c| c.seq).unwrap_or(0),
    };
    let Some(path) = &settings.sink else {
        return Ok(verified);
    };
    let copied = last_checkpoint_in_file(path, last.is_some())?;
    let catch_up_from = match &copied {
        Some(c) => {
            let stored = store.audit_checkpoints(c.seq, c.seq).await?;
            if stored.first().map(|s| (&s.head, &s.signature)) != Some((&c.head, &c.signature)) {
                return Err(refuse(airlock_audit::Problem {
                    seq: c.seq,
                    kind: "checkpoint_mismatch",
                    message: format!(
                        "{} holds a checkpoint at record {} that the database does not have: the database was replaced or rewritten",
                        path.display(),
                        c.seq
                    ),
                }));
            }
            c.seq + 1
        }
        None => 1,
    };
    // Checkpoints committed to the database but not copied (a crash in between, or a file
    // configured only now).
    for cp in store.audit_checkpoints(catch_up_from, i64::MAX).await? {
        if !cp.signature_ok(&settings.verify_keys) {
            return Err(refuse(airlock_audit::Problem {
                seq: cp.seq,
                kind: "bad_signature",
                message: format!("the checkpoint at record {} has a bad signature", cp.seq),
            }));
        }
        append_checkpoint(path, &cp)?;
    }
    Ok(verified)
}

/// The writer signs every batch, so records after the signed head were not written by airlock
/// (or by a version that did not sign every batch). They are not signed unless an operator
/// says so.
fn check_unsigned_tail(
    summary: &airlock_audit::Summary,
    settings: &AuditSettings,
) -> anyhow::Result<Option<u64>> {
    let tail = summary.unsigned_tail;
    if tail == 0 {
        return Ok(None);
    }
    if settings.accept_unsigned_tail {
        tracing::warn!(
            records = tail,
            "signing unsigned records because of --accept-unsigned-tail"
        );
        return Ok(Some(tail));
    }
    let first = summary.last_seq.unwrap_or(0) - tail as i64 + 1;
    anyhow::bail!(
        "the audit log has {tail} records after its last signature (#{first} to #{}); airlock signs every batch it writes, \
         so they were added to the database by something else. airlock will not sign them. Inspect them \
         (sqlite3: SELECT * FROM audit WHERE seq >= {first}); if they are genuine, start once with \
         `airlock serve --accept-unsigned-tail`, which signs them and records that you did",
        summary.last_seq.unwrap_or(0),
    )
}

/// The last checkpoint of a checkpoint file, read forwards through the whole file: every line
/// must be a checkpoint with a higher `seq` than the one before (so an old line appended again
/// is caught, not taken as the latest). A last line torn by a crash (no newline, shorter than
/// any checkpoint line) is cut off; blank lines are skipped; anything else is refused, and so is
/// a file with content but no checkpoint while the database has some. Only `seq` is parsed per
/// line; the caller checks the last one against the database.
fn last_checkpoint_in_file(
    path: &std::path::Path,
    db_has_checkpoints: bool,
) -> anyhow::Result<Option<airlock_audit::Checkpoint>> {
    use std::io::BufRead;
    const TORN_MAX: usize = 512;
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "type")]
        kind: String,
        seq: i64,
    }
    let damaged = |why: String| {
        anyhow::anyhow!(
            "audit.checkpoint_file {} {why}: it was damaged or edited; compare it with the database before serving",
            path.display()
        )
    };
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && db_has_checkpoints => {
            // Unmounted storage, or deleted: the copy's guarantee would be lost silently.
            anyhow::bail!(
                "audit.checkpoint_file {} does not exist but the database has checkpoints; if the file is newly \
                 configured, create it empty (touch) and airlock copies the checkpoints into it",
                path.display()
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => anyhow::bail!("cannot read audit.checkpoint_file {}: {e}", path.display()),
    };
    let mut r = std::io::BufReader::with_capacity(256 * 1024, f);
    let (mut line, mut offset, mut n) = (Vec::new(), 0u64, 0u64);
    let mut last: Option<Vec<u8>> = None;
    let mut last_seq = 0i64;
    loop {
        line.clear();
        let read = r
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read audit.checkpoint_file {}", path.display()))?;
        if read == 0 {
            break;
        }
        n += 1;
        if !line.ends_with(b"\n") {
            // The last line, unterminated: torn by a crash while it was appended.
            if line.len() > TORN_MAX {
                return Err(damaged("ends with a long unterminated line".into()));
            }
            tracing::warn!(path = %path.display(), "audit.checkpoint_file ends with a torn line; removing it");
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|w| w.set_len(offset))
                .with_context(|| {
                    format!(
                        "audit.checkpoint_file {} ends with a torn line that cannot be removed (an append-only file?); remove it by hand",
                        path.display()
                    )
                })?;
            break;
        }
        offset += read as u64;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let head: Head = serde_json::from_slice(&line)
            .map_err(|_| damaged(format!("has a line ({n}) that is not a checkpoint")))?;
        if head.kind != "checkpoint" {
            return Err(damaged(format!(
                "has a line ({n}) that is not a checkpoint"
            )));
        }
        if head.seq <= last_seq {
            return Err(damaged(format!(
                "has a checkpoint for record {} after one for record {last_seq} (line {n}): an old line was appended again",
                head.seq
            )));
        }
        last_seq = head.seq;
        last = Some(std::mem::take(&mut line));
    }
    let Some(text) = last else {
        if offset > 0 && db_has_checkpoints {
            return Err(damaged(
                "holds no checkpoint although the database has some".into(),
            ));
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&text).map_err(|_| damaged("is not UTF-8".into()))?;
    match airlock_audit::Line::parse(text.trim()) {
        Ok(airlock_audit::Line::Checkpoint(c)) => Ok(Some(c)),
        _ => Err(damaged("ends with a malformed checkpoint".into())),
    }
}

/// Appends one checkpoint line and syncs it to disk.
fn append_checkpoint(
    path: &std::path::Path,
    cp: &airlock_audit::Checkpoint,
) -> std::io::Result<()> {
    use std::io::Write;
    let line = airlock_audit::Line::Checkpoint(cp.clone()).to_line();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(format!("{line}\n").as_bytes())?;
    f.sync_data()
}

fn writer(
    mut db: BatchWriter,
    mut rx: mpsc::Receiver<Msg>,
    c: Arc<Counters>,
    shared: Arc<Shared>,
    mut chain: Chain,
) {
    let mut batch: Vec<Msg> = Vec::with_capacity(1024);
    let mut last_retry = Instant::now();
    loop {
        let Some(first) = rx.blocking_recv() else {
            if chain.seq > chain.last_cp || !chain.retry.is_empty() {
                flush(&mut db, &mut batch, &c, &shared, &mut chain, true);
            }
            return;
        };
        if !first.tick {
            batch.push(first);
        }
        // Group commit: whatever queued while the last transaction ran.
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(m) if m.tick => {}
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let unsigned = chain.seq > chain.last_cp && !chain.wedged;
        let sign_due = unsigned && chain.last_cp_at.elapsed() >= chain.settings.interval;
        let retry_due = !chain.retry.is_empty()
            && !chain.wedged
            && last_retry.elapsed() >= Duration::from_secs(1);
        if batch.is_empty() && !sign_due && !retry_due {
            continue;
        }
        if !chain.retry.is_empty() {
            last_retry = Instant::now();
        }
        let sign = sign_due || batch.iter().any(|m| m.sign);
        flush(&mut db, &mut batch, &c, &shared, &mut chain, sign);
    }
}

fn flush(
    db: &mut BatchWriter,
    batch: &mut Vec<Msg>,
    c: &Counters,
    shared: &Shared,
    chain: &mut Chain,
    force_checkpoint: bool,
) {
    if chain.wedged {
        fail_batch(batch, c, shared, chain, false);
        return;
    }
    // Records of earlier failed writes go first, in their order.
    if !chain.retry.is_empty() {
        let mut all: Vec<Msg> = chain.retry.drain(..).collect();
        all.append(batch);
        *batch = all;
    }
    let mut usage = Vec::new();
    let mut sealed = Vec::new();
    let (mut seq, mut head) = (chain.seq, chain.head.clone());
    for m in batch.iter() {
        if let Some(u) = &m.usage {
            usage.push(u.clone());
        }
        if let Some(r) = &m.audit {
            let s = r.clone().seal_after(seq, &head);
            seq = s.record.seq;
            head.clone_from(&s.hash);
            sealed.push(s);
        }
    }
    let cp = ((force_checkpoint || chain.checkpoint_due(seq)) && seq > chain.last_cp).then(|| {
        chain
            .settings
            .key
            .checkpoint(seq, crate::util::now_ms(), &head)
    });
    // Every batch signs its head, so no record is ever stored unsigned.
    let head_sig = match &cp {
        Some(cp) => Some(cp.clone()),
        None => (!sealed.is_empty()).then(|| {
            chain
                .settings
                .key
                .checkpoint(seq, crate::util::now_ms(), &head)
        }),
    };
    let ok = match db.write_batch(&usage, &sealed, cp.as_ref(), head_sig.as_ref()) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, records = sealed.len(), "audit write failed");
            // Try the timer again later rather than spinning on a broken database.
            chain.last_cp_at = Instant::now();
            // What is stored now? Only two answers are acceptable: nothing of this batch
            // (write again later), or exactly this batch (committed, then reported failed).
            // Anything else means the log changed under the writer; continuing from it would
            // sign whatever was put there.
            match db.audit_head() {
                Ok(now) if now == (chain.seq, chain.head.clone()) => false,
                Ok(now) if now == (seq, head.clone()) => {
                    tracing::warn!(
                        "the audit batch was committed although the write reported an error"
                    );
                    true
                }
                Ok((stored_seq, _)) => {
                    tracing::error!(
                        expected = chain.seq,
                        stored = stored_seq,
                        "the audit log changed under the writer (another process wrote to it): appending stops; \
                         restart airlock so that its start check can judge the log"
                    );
                    chain.wedged = true;
                    false
                }
                Err(_) => false,
            }
        }
    };
    if ok {
        c.audit_records
            .fetch_add(sealed.len() as u64, Ordering::Relaxed);
        chain.seq = seq;
        chain.head = head;
        if let Some(cp) = &cp {
            chain.last_cp = cp.seq;
            chain.last_cp_at = Instant::now();
            c.audit_checkpoints.fetch_add(1, Ordering::Relaxed);
            chain.sink(cp);
        }
        shared.healthy.store(true, Ordering::Relaxed);
        if let Some(oldest) = batch
            .iter()
            .filter(|m| m.audit.is_some() || m.usage.is_some())
            .map(|m| m.at)
            .min()
        {
            c.audit_lag_seconds.observe(oldest.elapsed());
        }
        for m in batch.drain(..) {
            if let Some(ack) = m.ack {
                let _ = ack.send(true);
            }
        }
    } else {
        fail_batch(batch, c, shared, chain, true);
    }
}

/// Answers a failed batch's waiters with `false` and keeps its records for another attempt
/// (not when the writer is wedged: nothing more is written then).
fn fail_batch(batch: &mut Vec<Msg>, c: &Counters, shared: &Shared, chain: &mut Chain, keep: bool) {
    shared.healthy.store(false, Ordering::Relaxed);
    for mut m in batch.drain(..) {
        if let Some(ack) = m.ack.take() {
            let _ = ack.send(false);
            if !shared.fail_open {
                // Its request was refused or cut off because of this failure.
                if let Some(r) = m.audit.as_mut() {
                    let note = m.note;
                    r.reason = Some(match r.reason.take() {
                        Some(prev) => format!("{note}; {prev}"),
                        None => note.to_string(),
                    });
                }
                // A response withheld for this failure was answered 503, whatever the
                // provider said: the record and the usage row say what the client got.
                if m.note == NOTE_NOT_ANSWERED {
                    if let Some(r) = m.audit.as_mut() {
                        if r.outcome == "ok" {
                            r.outcome = "not_answered".into();
                            r.status = Some(503);
                        }
                    }
                    if let Some(u) = m.usage.as_mut() {
                        if u.outcome == "ok" {
                            u.outcome = "not_answered".into();
                            u.status = 503;
                        }
                    }
                }
            }
        }
        m.sign = false;
        if !keep || (m.audit.is_none() && m.usage.is_none()) {
            if m.audit.is_some() {
                c.write_errors.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        if chain.retry.len() >= RETRY_LIMIT {
            chain.retry.pop_front();
            c.write_errors.fetch_add(1, Ordering::Relaxed);
        }
        chain.retry.push_back(m);
    }
}
