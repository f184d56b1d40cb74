//! The audit log's writer: one background thread owns the chain, appends what the server
//! queues (a batch per transaction: whatever queued while the last one ran), signs the head of
//! every batch, and keeps permanent checkpoints. Before it appends anything, `open` checks that
//! the stored log is still what was signed (`start.rs`).
//!
//! Storage is behind two interfaces, so that the chain's rules live here once and each store
//! (SQLite today) only moves rows: [`Storage`], the writer's own connection, which appends a
//! batch atomically together with the rows that go with it (the gateway's usage rows); and
//! [`Stored`], the reads the start check needs.
//!
//! Invariant I5 rests on [`Log::send`]: its receiver answers `true` only once the record is
//! committed. What the stored log guards against, and what it cannot, is written at the top of
//! `airlock-gateway/src/usage.rs`.

mod start;
#[cfg(test)]
mod tests;
mod writer;

pub use start::{append_checkpoint, last_checkpoint_in_file};

use crate::{AuditKey, Checkpoint, PublicKeys, Record, Sealed};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// A store's error, carried as text to the log's own messages.
pub type StoreError = Box<dyn std::error::Error + Send + Sync>;

/// A row stored in the same transaction as the records of its batch (the gateway's usage row).
pub trait Row: Clone + Send + 'static {
    /// The request was answered 503 because its record could not be written: the row says
    /// what the client got, whatever the provider said.
    fn mark_not_answered(&mut self);
}

/// No companion rows.
impl Row for () {
    fn mark_not_answered(&mut self) {}
}

/// A batch sealed after the stored head, as [`Storage::append`] stores it.
#[derive(Debug, Clone)]
pub struct Sealing {
    /// The records, chained after the head the storage read.
    pub records: Vec<Sealed>,
    /// A permanent checkpoint, when one is due.
    pub checkpoint: Option<Checkpoint>,
    /// The signed head (replacing the previous one); `None` when nothing is to be signed.
    pub head: Option<Checkpoint>,
    /// The chain's last (seq, hash) once this batch is stored.
    pub tip: (i64, String),
}

/// The writer's side of a store: its own connection, used from the writer's thread only (calls
/// may block).
pub trait Storage: Send + 'static {
    /// Rows stored with the records.
    type Row: Row;
    /// Whether other writers (other servers) append to the same log. If so the stored head
    /// moving between two batches is expected; if not, it means someone else wrote to the log,
    /// and the writer stops.
    fn shared(&self) -> bool {
        false
    }
    /// Stores one batch atomically. Inside one transaction that holds the log's write lock,
    /// reads the last stored record's (seq, hash) (or (0, GENESIS)), calls `seal` with it, and
    /// stores `rows` and what `seal` returns: the records, the signed head (replacing the
    /// previous one) and, when due, a permanent checkpoint. All or nothing. `Ok(None)`, with
    /// nothing stored, when `seal` declines (the head is not what the writer expected). `seal`
    /// is called at most once per call: a store must not retry inside `append`.
    fn append(
        &mut self,
        rows: &[Self::Row],
        seal: &mut dyn FnMut(i64, &str) -> Option<Sealing>,
    ) -> Result<Option<Sealing>, StoreError>;
    /// Whether the record stored at `seq` has this hash (to tell a commit reported failed
    /// from a failed one).
    fn holds(&mut self, seq: i64, hash: &str) -> Result<bool, StoreError>;
}

/// The reads the start check makes.
pub trait Stored: Sync {
    /// The last permanent checkpoint.
    fn last_checkpoint(
        &self,
    ) -> impl Future<Output = Result<Option<Checkpoint>, StoreError>> + Send;
    /// The signature the writer stores with every batch.
    fn signed_head(&self) -> impl Future<Output = Result<Option<Checkpoint>, StoreError>> + Send;
    /// Up to `limit` records with `seq > after`, in order.
    fn records_after(
        &self,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Sealed>, StoreError>> + Send;
    /// Permanent checkpoints with `from <= seq <= to`, in order.
    fn checkpoints(
        &self,
        from: i64,
        to: i64,
    ) -> impl Future<Output = Result<Vec<Checkpoint>, StoreError>> + Send;
}

/// How the writer signs, and what it does when a write fails.
pub struct Settings {
    /// The signing key for checkpoints and heads.
    pub key: AuditKey,
    /// A permanent checkpoint after this many records.
    pub every: i64,
    /// Or after this long with records not under a permanent checkpoint.
    pub interval: Duration,
    /// Append permanent checkpoints to this file too.
    pub sink: Option<PathBuf>,
    /// Keys whose checkpoints the stored log may carry (every `audit-*.pub` in the key
    /// directory): checked before appending.
    pub verify_keys: PublicKeys,
    /// Serve when a record cannot be written (`audit.on_failure = "open"`): failed records are
    /// then kept for another attempt without notes, as nobody was refused for them.
    pub fail_open: bool,
    /// Sign records found after the signed head at start (`serve --accept-unsigned-tail`,
    /// after an operator looked at them). Recorded in the log.
    pub accept_unsigned_tail: bool,
}

/// What the writer counts (for `/metrics`).
pub struct Stats {
    /// Records appended.
    pub records: AtomicU64,
    /// Permanent checkpoints signed.
    pub checkpoints: AtomicU64,
    /// Records that could not be written (dropped after retries, or never queued).
    pub write_errors: AtomicU64,
    /// False after a failed write, true after a good one.
    healthy: AtomicBool,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            records: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
        }
    }
}

/// What a record says when its first write fails and a later attempt stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// Its request was refused because of the failure (a withheld answer becomes a 503).
    NotAnswered,
    /// A proxied request refused, the refusal sent either way.
    Refused,
    /// An admin change, made either way.
    ChangeMade,
    /// An admin or identity request declined, the refusal sent either way.
    Declined,
    /// A token issued, sent either way.
    Issued,
    /// A stream delivered except its held-back end.
    StreamCut,
}

impl Note {
    /// The text prepended to the record's `reason`.
    pub fn text(self) -> &'static str {
        match self {
            Note::NotAnswered => "not answered: the audit log could not be written at the time",
            Note::Refused => "refused; its record could not be written at the time",
            Note::ChangeMade => {
                "the change was made, but its record could not be written at the time"
            }
            Note::Declined => "refused, and its record could not be written at the time",
            Note::Issued => "a token was issued, but its record could not be written at the time",
            Note::StreamCut => {
                "the stream was delivered except its end: the audit log could not be written at the time"
            }
        }
    }
}

/// One message to the writer.
pub(crate) struct Msg<R> {
    /// When it was queued (for the lag observer).
    at: Instant,
    row: Option<R>,
    record: Option<Record>,
    ack: Option<oneshot::Sender<bool>>,
    /// Sign the head now (with whatever is queued).
    sign: bool,
    /// A clock tick for the writer's timers (checkpoint interval, retries); carries nothing.
    tick: bool,
    note: Note,
}

impl<R> Msg<R> {
    fn new(row: Option<R>, record: Option<Record>, ack: Option<oneshot::Sender<bool>>) -> Self {
        Msg {
            at: Instant::now(),
            row,
            record,
            ack,
            sign: false,
            tick: false,
            note: Note::NotAnswered,
        }
    }
}

/// Messages kept for another attempt after a failed write, at most this many; beyond it the
/// oldest are dropped and counted in `write_errors`.
const RETRY_LIMIT: usize = 16_384;
/// Messages waiting for room in a full queue, at most this many at once.
const OVERFLOW_LIMIT: usize = 65_536;
/// The queue's length.
const QUEUE: usize = 16_384;

/// Sends records to the writer. Cloned freely; the writer ends, after writing what is queued
/// and signing the head, when the last clone is dropped.
pub struct Log<R> {
    tx: mpsc::Sender<Msg<R>>,
    stats: Arc<Stats>,
    overflow: Arc<tokio::sync::Semaphore>,
    fail_open: bool,
}

impl<R> Clone for Log<R> {
    fn clone(&self) -> Self {
        Log {
            tx: self.tx.clone(),
            stats: self.stats.clone(),
            overflow: self.overflow.clone(),
            fail_open: self.fail_open,
        }
    }
}

/// Why the writer did not start.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

impl<R: Row> Log<R> {
    /// Checks the stored log (`stored`), then starts the writer on `storage`, continuing the
    /// chain from what was verified. `on_durable` is told, per batch, how long its oldest
    /// message waited. Must be called within a tokio runtime.
    pub async fn open<S: Storage<Row = R>>(
        stored: &impl Stored,
        storage: S,
        settings: Settings,
        on_durable: impl Fn(Duration) + Send + 'static,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), Refused> {
        // Continue from what was verified, not from a second read: a record slipped in after
        // the check collides with the writer's first append and stops it.
        let verified = start::check(stored, &settings).await?;
        let (tx, rx) = mpsc::channel::<Msg<R>>(QUEUE);
        let stats = Arc::new(Stats::default());
        let fail_open = settings.fail_open;
        let accepted_tail = verified.accepted_tail;
        let chain = writer::Chain::new(verified, settings);
        // The writer runs on a thread of its own: a batch is one synchronous call into the
        // store, with no hand-off per statement.
        let handle = tokio::task::spawn_blocking({
            let stats = stats.clone();
            move || writer::run(storage, rx, &stats, chain, &on_durable)
        });
        // Its timers are driven by ticks, so that it can block on its queue. The ticker holds
        // only a weak sender: the queue still closes when the last handle is dropped.
        let weak = tx.downgrade();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(250));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(tx) = weak.upgrade() else { return };
                let mut m = Msg::new(None, None, None);
                m.tick = true;
                let _ = tx.try_send(m);
            }
        });
        let log = Log {
            tx,
            stats,
            overflow: Arc::new(tokio::sync::Semaphore::new(OVERFLOW_LIMIT)),
            fail_open,
        };
        if let Some(n) = accepted_tail {
            let rec = Record {
                ts: now_ms(),
                actor_kind: "system".into(),
                action: "audit.tail_accepted".into(),
                outcome: "ok".into(),
                reason: Some(format!(
                    "{n} records after the last checkpoint were accepted by the operator (serve --accept-unsigned-tail) and signed"
                )),
                ..Default::default()
            };
            if !log.append(None, rec).await {
                return Err(Refused("cannot write to the audit log".into()));
            }
        }
        Ok((log, handle))
    }

    /// Queues a record (and its row) and returns the writer's answer: `true` once durable.
    /// Queued before this returns, so a caller cancelled while waiting cannot lose it; `note`
    /// is what the record says if its first write fails and a later one stores it.
    pub fn send(&self, row: Option<R>, record: Record, note: Note) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        let mut m = Msg::new(row, Some(record), Some(tx));
        m.note = note;
        self.enqueue(m);
        rx
    }

    /// Appends a record (and its row) and waits until it is durable.
    pub async fn append(&self, row: Option<R>, record: Record) -> bool {
        self.send(row, record, Note::NotAnswered)
            .await
            .unwrap_or(false)
    }

    /// Appends without waiting (for events whose request is already over or failing).
    pub fn append_nowait(&self, row: Option<R>, record: Record) {
        self.enqueue(Msg::new(row, Some(record), None));
    }

    /// Signs the chain head now and waits until that signature is durable (for exports that
    /// must end on a signature, and the last thing a stopping server does). Returns whether it
    /// was written.
    pub async fn sign_now(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        let mut m = Msg::new(None, None, Some(tx));
        m.sign = true;
        self.enqueue(m);
        rx.await.unwrap_or(false)
    }

    /// Puts a message on the queue without waiting: when the queue is full the message waits in
    /// a task (at most `OVERFLOW_LIMIT` at once; beyond that it is dropped and counted).
    fn enqueue(&self, msg: Msg<R>) {
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let Ok(permit) = self.overflow.clone().try_acquire_owned() else {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
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
                        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Messages waiting for the writer.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Whether the last write succeeded.
    pub fn healthy(&self) -> bool {
        self.stats.healthy.load(Ordering::Relaxed)
    }

    /// Whether requests are served when the log cannot be written.
    pub fn fail_open(&self) -> bool {
        self.fail_open
    }

    /// The writer's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// Unix milliseconds now.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
