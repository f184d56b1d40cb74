//! The writer against an in-memory store: the chain it leaves verifies, and each way a write
//! can fail ends as the module says.

use super::*;
use crate::{ChainVerifier, GENESIS};
use std::sync::Mutex;

/// A row whose outcome the writer may rewrite.
#[derive(Clone, Debug, PartialEq)]
struct Usage(String);

impl Row for Usage {
    fn mark_not_answered(&mut self) {
        if self.0 == "ok" {
            self.0 = "not_answered".into();
        }
    }
}

#[derive(Default)]
struct Db {
    records: Vec<Sealed>,
    rows: Vec<Usage>,
    checkpoints: Vec<Checkpoint>,
    head: Option<Checkpoint>,
    /// The next appends fail: `Fail` before storing, `Lie` after storing the batch.
    mode: Mode,
}

#[derive(Default, Clone, Copy, PartialEq)]
enum Mode {
    #[default]
    Works,
    Fail,
    Lie,
}

#[derive(Clone, Default)]
struct Mem(Arc<Mutex<Db>>);

impl Storage for Mem {
    type Row = Usage;

    fn append(
        &mut self,
        rows: &[Usage],
        seal: &mut dyn FnMut(i64, &str) -> Option<Sealing>,
    ) -> Result<Option<Sealing>, StoreError> {
        let mut db = self.0.lock().unwrap();
        if db.mode == Mode::Fail {
            return Err("disk full".into());
        }
        let (seq, hash) = db
            .records
            .last()
            .map(|s| (s.record.seq, s.hash.clone()))
            .unwrap_or((0, GENESIS.into()));
        let Some(s) = seal(seq, &hash) else {
            return Ok(None);
        };
        // As the databases' primary key on checkpoints' seq.
        if let Some(cp) = &s.checkpoint {
            if db.checkpoints.iter().any(|c| c.seq == cp.seq) {
                return Err("duplicate checkpoint".into());
            }
        }
        db.rows.extend_from_slice(rows);
        db.records.extend_from_slice(&s.records);
        db.checkpoints.extend(s.checkpoint.clone());
        if let Some(h) = &s.head {
            db.head = Some(h.clone());
        }
        if db.mode == Mode::Lie {
            return Err("connection reset after commit".into());
        }
        Ok(Some(s))
    }

    fn holds(&mut self, seq: i64, hash: &str) -> Result<bool, StoreError> {
        let db = self.0.lock().unwrap();
        Ok(db
            .records
            .iter()
            .any(|s| s.record.seq == seq && s.hash == hash))
    }
}

impl Stored for Mem {
    async fn last_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        Ok(self.0.lock().unwrap().checkpoints.last().cloned())
    }
    async fn signed_head(&self) -> Result<Option<Checkpoint>, StoreError> {
        Ok(self.0.lock().unwrap().head.clone())
    }
    async fn records_after(&self, after: i64, limit: i64) -> Result<Vec<Sealed>, StoreError> {
        let db = self.0.lock().unwrap();
        Ok(db
            .records
            .iter()
            .filter(|s| s.record.seq > after)
            .take(limit as usize)
            .cloned()
            .collect())
    }
    async fn checkpoints(&self, from: i64, to: i64) -> Result<Vec<Checkpoint>, StoreError> {
        let db = self.0.lock().unwrap();
        Ok(db
            .checkpoints
            .iter()
            .filter(|c| c.seq >= from && c.seq <= to)
            .cloned()
            .collect())
    }
}

struct Keys {
    dir: PathBuf,
}

impl Keys {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "airlock-log-{}",
            hex::encode(rand::random::<[u8; 6]>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        AuditKey::generate(&dir, 1).unwrap();
        Keys { dir }
    }

    fn settings(&self) -> Settings {
        Settings {
            key: AuditKey::load(&self.dir, 1).unwrap(),
            every: 1000,
            interval: Duration::from_secs(3600),
            sink: None,
            verify_keys: PublicKeys::from_dir(&self.dir).unwrap(),
            fail_open: false,
            accept_unsigned_tail: false,
        }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rec(action: &str) -> Record {
    Record {
        ts: now_ms(),
        actor_kind: "token".into(),
        action: action.into(),
        outcome: "ok".into(),
        status: Some(200),
        ..Default::default()
    }
}

/// Verifies what `mem` holds as `audit verify` would: every record, the checkpoints and the
/// signed head.
fn verify(mem: &Mem, keys: &Keys) -> crate::Summary {
    let db = mem.0.lock().unwrap();
    let anchors: Vec<Checkpoint> = db
        .checkpoints
        .iter()
        .chain(db.head.iter())
        .cloned()
        .collect();
    let mut v = ChainVerifier::new(anchors, &keys.settings().verify_keys, true).unwrap();
    for s in &db.records {
        v.record(s).unwrap();
    }
    v.finish().unwrap()
}

async fn open(mem: &Mem, settings: Settings) -> Result<Log<Usage>, Refused> {
    open_joined(mem, settings).await.map(|(log, _)| log)
}

/// Opens the log and keeps the writer's handle, for tests that must know it has finished.
async fn open_joined(
    mem: &Mem,
    settings: Settings,
) -> Result<(Log<Usage>, tokio::task::JoinHandle<()>), Refused> {
    Log::open(mem, mem.clone(), settings, |_| {}).await
}

/// Closes the log and waits until its writer has written what was queued and signed the head.
async fn close(log: Log<Usage>, writer: tokio::task::JoinHandle<()>) {
    drop(log);
    writer.await.unwrap();
}

/// Waits (at most 5 s) until the store holds `n` records.
async fn stored(mem: &Mem, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while mem.0.lock().unwrap().records.len() < n {
        assert!(Instant::now() < deadline, "never stored {n} records");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn batches_are_chained_and_every_batch_is_signed() {
    let keys = Keys::new();
    let mem = Mem::default();
    let log = open(&mem, keys.settings()).await.unwrap();
    let waits: Vec<_> = (0..50)
        .map(|i| {
            log.send(
                Some(Usage("ok".into())),
                rec(&format!("a{i}")),
                Note::NotAnswered,
            )
        })
        .collect();
    for w in waits {
        assert!(w.await.unwrap(), "acknowledged only once durable");
    }
    let summary = verify(&mem, &keys);
    assert_eq!(summary.records, 50);
    assert_eq!(
        summary.unsigned_tail, 0,
        "the head of every batch is signed"
    );
    let db = mem.0.lock().unwrap();
    assert_eq!(db.rows.len(), 50, "rows stored with their records");
    let actions: Vec<_> = db.records.iter().map(|s| s.record.action.clone()).collect();
    assert_eq!(actions[0], "a0");
    assert_eq!(actions[49], "a49", "in the order they were queued");
    assert_eq!(log.stats().records.load(Ordering::Relaxed), 50);
}

#[tokio::test]
async fn a_failed_write_is_refused_then_stored_with_a_note() {
    let keys = Keys::new();
    let mem = Mem::default();
    let log = open(&mem, keys.settings()).await.unwrap();
    mem.0.lock().unwrap().mode = Mode::Fail;
    assert!(!log.append(Some(Usage("ok".into())), rec("inference")).await);
    assert!(!log.healthy());
    mem.0.lock().unwrap().mode = Mode::Works;
    // Kept and written again on the writer's retry timer (about a second).
    let deadline = Instant::now() + Duration::from_secs(5);
    while mem.0.lock().unwrap().records.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the failed record was never retried"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    {
        let db = mem.0.lock().unwrap();
        let r = &db.records[0].record;
        assert_eq!(
            r.outcome, "not_answered",
            "the client got a 503, and the record says so"
        );
        assert_eq!(r.status, Some(503));
        assert_eq!(r.reason.as_deref(), Some(Note::NotAnswered.text()));
        assert_eq!(db.rows, vec![Usage("not_answered".into())]);
    }
    assert!(log.append(None, rec("next")).await);
    assert!(log.healthy());
    assert_eq!(verify(&mem, &keys).records, 2);
}

#[tokio::test]
async fn a_batch_committed_but_reported_failed_is_not_written_twice() {
    let keys = Keys::new();
    let mem = Mem::default();
    let log = open(&mem, keys.settings()).await.unwrap();
    mem.0.lock().unwrap().mode = Mode::Lie;
    assert!(
        log.append(None, rec("one")).await,
        "the stored head shows it landed"
    );
    mem.0.lock().unwrap().mode = Mode::Works;
    assert!(log.append(None, rec("two")).await);
    assert_eq!(verify(&mem, &keys).records, 2);
}

#[tokio::test]
async fn a_log_changed_under_the_writer_stops_it() {
    let keys = Keys::new();
    let mem = Mem::default();
    let log = open(&mem, keys.settings()).await.unwrap();
    assert!(log.append(None, rec("one")).await);
    {
        // Another process appends a record, then this writer's next append fails.
        let mut db = mem.0.lock().unwrap();
        let last = db.records.last().unwrap().clone();
        let forged = rec("forged").seal_after(last.record.seq, &last.hash);
        db.records.push(forged);
        db.mode = Mode::Fail;
    }
    assert!(!log.append(None, rec("two")).await);
    mem.0.lock().unwrap().mode = Mode::Works;
    // Wedged: nothing more is appended, even once the store works again.
    assert!(!log.append(None, rec("three")).await);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(mem.0.lock().unwrap().records.len(), 2);
    assert!(!log.healthy());
    assert!(
        log.stats().write_errors.load(Ordering::Relaxed) >= 2,
        "records given up on are counted"
    );
}

#[tokio::test]
async fn fail_open_serves_and_stores_the_record_later_as_it_was() {
    let keys = Keys::new();
    let mem = Mem::default();
    let mut settings = keys.settings();
    settings.fail_open = true;
    let log = open(&mem, settings).await.unwrap();
    assert!(log.fail_open());
    mem.0.lock().unwrap().mode = Mode::Fail;
    assert!(!log.append(Some(Usage("ok".into())), rec("inference")).await);
    mem.0.lock().unwrap().mode = Mode::Works;
    stored(&mem, 1).await;
    let db = mem.0.lock().unwrap();
    let r = &db.records[0].record;
    // The request was answered (fail-open): nothing to rewrite, nothing to note.
    assert_eq!((r.outcome.as_str(), r.status), ("ok", Some(200)));
    assert_eq!(r.reason, None);
    assert_eq!(db.rows, vec![Usage("ok".into())]);
}

#[tokio::test]
async fn a_change_made_is_noted_but_not_rewritten_as_unanswered() {
    let keys = Keys::new();
    let mem = Mem::default();
    let log = open(&mem, keys.settings()).await.unwrap();
    mem.0.lock().unwrap().mode = Mode::Fail;
    let mut change = rec("credential.add");
    change.reason = Some("by the owner".into());
    let ack = log.send(Some(Usage("ok".into())), change, Note::ChangeMade);
    assert!(!ack.await.unwrap());
    mem.0.lock().unwrap().mode = Mode::Works;
    stored(&mem, 1).await;
    let db = mem.0.lock().unwrap();
    let r = &db.records[0].record;
    assert_eq!((r.outcome.as_str(), r.status), ("ok", Some(200)));
    assert_eq!(
        r.reason.as_deref(),
        Some(format!("{}; by the owner", Note::ChangeMade.text()).as_str())
    );
    assert_eq!(
        db.rows,
        vec![Usage("ok".into())],
        "the row is not rewritten"
    );
}

#[tokio::test]
async fn the_retry_queue_is_bounded_and_what_it_drops_is_counted() {
    let keys = Keys::new();
    let mem = Mem::default();
    let log = open(&mem, keys.settings()).await.unwrap();
    mem.0.lock().unwrap().mode = Mode::Fail;
    let extra = 40;
    for i in 0..RETRY_LIMIT + extra {
        log.append_nowait(None, rec(&format!("r{i}")));
    }
    // Wait until the writer has failed every one of them once.
    assert!(!log.append(None, rec("last")).await);
    let dropped = log.stats().write_errors.load(Ordering::Relaxed);
    assert!(dropped >= extra as u64, "{dropped} dropped");
    mem.0.lock().unwrap().mode = Mode::Works;
    stored(&mem, RETRY_LIMIT).await;
    let db = mem.0.lock().unwrap();
    assert_eq!(db.records.len(), RETRY_LIMIT, "the newest are kept");
    assert_eq!(db.records.last().unwrap().record.action, "last");
}

#[tokio::test]
async fn the_checkpoint_file_follows_the_log_and_a_changed_one_refuses_start() {
    let keys = Keys::new();
    let mem = Mem::default();
    let file = keys.dir.join("checkpoints.jsonl");
    let mut settings = keys.settings();
    settings.sink = Some(file.clone());
    let (log, writer) = open_joined(&mem, settings).await.unwrap();
    for i in 0..3 {
        assert!(log.append(None, rec(&format!("r{i}"))).await);
    }
    assert!(log.sign_now().await);
    close(log, writer).await;
    let copied = std::fs::read_to_string(&file).unwrap();
    let lines = copied.lines().count();
    assert_eq!(
        lines,
        mem.0.lock().unwrap().checkpoints.len(),
        "every checkpoint is copied: {copied}"
    );
    assert!(lines >= 1);
    // Reopened on the same file: accepted.
    let mut settings = keys.settings();
    settings.sink = Some(file.clone());
    let (log, writer) = open_joined(&mem, settings).await.unwrap();
    close(log, writer).await;
    // The file edited: its last checkpoint (the one the start check reads) no longer matches
    // the store's.
    let (before, last) = copied
        .trim_end()
        .rsplit_once('\n')
        .unwrap_or(("", copied.trim_end()));
    let last = last.replacen("\"head\":\"", "\"head\":\"00", 1);
    let edited = if before.is_empty() {
        format!("{last}\n")
    } else {
        format!("{before}\n{last}\n")
    };
    assert_ne!(edited, copied);
    std::fs::write(&file, edited).unwrap();
    let mut settings = keys.settings();
    settings.sink = Some(file.clone());
    let err = open(&mem, settings).await.err().expect("refused");
    assert!(err.0.contains("that the database does not have"), "{err}");
}

#[tokio::test]
async fn the_start_check_refuses_a_changed_or_extended_log() {
    let keys = Keys::new();
    let mem = Mem::default();
    let (log, writer) = open_joined(&mem, keys.settings()).await.unwrap();
    for i in 0..3 {
        assert!(log.append(None, rec(&format!("r{i}"))).await);
    }
    assert!(log.sign_now().await);
    close(log, writer).await;
    // A second writer on an unchanged log continues the chain.
    let (log, writer) = open_joined(&mem, keys.settings()).await.unwrap();
    assert!(log.append(None, rec("r3")).await);
    close(log, writer).await;
    assert_eq!(verify(&mem, &keys).records, 4);

    // A field changed in place.
    let changed = Mem(Arc::new(Mutex::new(Db::default())));
    {
        let src = mem.0.lock().unwrap();
        let mut db = changed.0.lock().unwrap();
        db.records = src.records.clone();
        db.checkpoints = src.checkpoints.clone();
        db.head = src.head.clone();
        db.records[3].record.actor = Some("someone else".into());
    }
    let err = open(&changed, keys.settings())
        .await
        .err()
        .expect("refused");
    assert!(err.0.contains("not what was signed"), "{err}");

    // A record appended after the signed head: refused, unless the operator accepts it, which
    // the log then records.
    {
        let mut db = mem.0.lock().unwrap();
        let last = db.records.last().unwrap().clone();
        db.records
            .push(rec("added").seal_after(last.record.seq, &last.hash));
    }
    let err = open(&mem, keys.settings()).await.err().expect("refused");
    assert!(err.0.contains("after its last signature"), "{err}");
    let mut accept = keys.settings();
    accept.accept_unsigned_tail = true;
    let (log, writer) = open_joined(&mem, accept).await.unwrap();
    close(log, writer).await;
    let db = mem.0.lock().unwrap();
    assert_eq!(
        db.records.last().unwrap().record.action,
        "audit.tail_accepted"
    );
    drop(db);
    assert_eq!(verify(&mem, &keys).unsigned_tail, 0);
}

/// The same store, as several servers see it: the head moving between batches is expected.
struct Shared(Mem);

impl Storage for Shared {
    type Row = Usage;

    fn shared(&self) -> bool {
        true
    }

    fn append(
        &mut self,
        rows: &[Usage],
        seal: &mut dyn FnMut(i64, &str) -> Option<Sealing>,
    ) -> Result<Option<Sealing>, StoreError> {
        self.0.append(rows, seal)
    }

    fn holds(&mut self, seq: i64, hash: &str) -> Result<bool, StoreError> {
        self.0.holds(seq, hash)
    }
}

#[tokio::test]
async fn writers_sharing_a_log_take_turns_on_one_chain() {
    let keys = Keys::new();
    let mem = Mem::default();
    let (a, wa) = Log::open(&mem, Shared(mem.clone()), keys.settings(), |_| {})
        .await
        .unwrap();
    let (b, wb) = Log::open(&mem, Shared(mem.clone()), keys.settings(), |_| {})
        .await
        .unwrap();
    let sends: Vec<_> = (0..40)
        .map(|i| {
            let log = if i % 2 == 0 { &a } else { &b };
            log.send(None, rec(&format!("r{i}")), Note::NotAnswered)
        })
        .collect();
    for s in sends {
        assert!(s.await.unwrap());
    }
    assert!(
        a.healthy() && b.healthy(),
        "neither took the other for a forger"
    );
    // A checkpoint at the head is made once: the second writer, with nothing of its own to
    // add, does not try to make it again.
    assert!(a.sign_now().await);
    assert!(b.sign_now().await);
    close(a, wa).await;
    close(b, wb).await;
    let summary = verify(&mem, &keys);
    assert_eq!(
        summary.records, 40,
        "one chain holding both writers' records"
    );
    assert_eq!(summary.unsigned_tail, 0);
    // A writer alone on its log still stops when someone else writes to it.
    let (solo, _) = Log::open(&mem, mem.clone(), keys.settings(), |_| {})
        .await
        .unwrap();
    {
        let mut db = mem.0.lock().unwrap();
        let last = db.records.last().unwrap().clone();
        db.records
            .push(rec("forged").seal_after(last.record.seq, &last.hash));
    }
    assert!(!solo.append(None, rec("next")).await);
    assert!(!solo.healthy());
}
