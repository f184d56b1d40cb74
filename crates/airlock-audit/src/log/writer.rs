//! The writer's loop: batches, signatures, checkpoints, and what happens when a write fails.

use super::start::{append_checkpoint, Verified};
use super::{Msg, Note, Row, Sealing, Settings, Stats, Storage, RETRY_LIMIT};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The chain as the writer continues it.
pub(super) struct Chain<R> {
    seq: i64,
    head: String,
    last_cp: i64,
    last_cp_at: Instant,
    settings: Settings,
    /// Messages of failed writes, written again before new ones.
    retry: VecDeque<Msg<R>>,
    /// The stored log changed under the writer (another writer, or someone editing the
    /// database): nothing more is appended until an operator restarts airlock, whose start
    /// check then judges the log.
    wedged: bool,
}

impl<R> Chain<R> {
    pub(super) fn new(v: Verified, settings: Settings) -> Self {
        Chain {
            seq: v.seq,
            head: v.head,
            last_cp: v.last_cp,
            last_cp_at: Instant::now(),
            settings,
            retry: VecDeque::new(),
            wedged: false,
        }
    }

    fn checkpoint_due(&self, seq: i64) -> bool {
        seq > self.last_cp
            && (seq - self.last_cp >= self.settings.every
                || self.last_cp_at.elapsed() >= self.settings.interval)
    }

    fn sink(&self, cp: &crate::Checkpoint) {
        let Some(path) = &self.settings.sink else {
            return;
        };
        if let Err(e) = append_checkpoint(path, cp) {
            tracing::error!(path = %path.display(), error = %e, "cannot append the checkpoint to audit.checkpoint_file");
        }
    }
}

/// Runs until every sender is gone, then writes what is left and signs the head.
pub(super) fn run<S: Storage>(
    mut db: S,
    mut rx: mpsc::Receiver<Msg<S::Row>>,
    stats: &Stats,
    mut chain: Chain<S::Row>,
    on_durable: &dyn Fn(Duration),
) {
    let mut batch: Vec<Msg<S::Row>> = Vec::with_capacity(1024);
    let mut last_retry = Instant::now();
    let mut w = Flush { stats, on_durable };
    loop {
        let Some(first) = rx.blocking_recv() else {
            if chain.seq > chain.last_cp || !chain.retry.is_empty() {
                w.flush(&mut db, &mut batch, &mut chain, true);
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
        w.flush(&mut db, &mut batch, &mut chain, sign);
    }
}

struct Flush<'a> {
    stats: &'a Stats,
    on_durable: &'a dyn Fn(Duration),
}

impl Flush<'_> {
    fn flush<S: Storage>(
        &mut self,
        db: &mut S,
        batch: &mut Vec<Msg<S::Row>>,
        chain: &mut Chain<S::Row>,
        force_checkpoint: bool,
    ) {
        if chain.wedged {
            self.fail(batch, chain, false);
            return;
        }
        // Records of earlier failed writes go first, in their order.
        if !chain.retry.is_empty() {
            let mut all: Vec<Msg<S::Row>> = chain.retry.drain(..).collect();
            all.append(batch);
            *batch = all;
        }
        let rows: Vec<S::Row> = batch.iter().filter_map(|m| m.row.clone()).collect();
        let records: Vec<crate::Record> = batch.iter().filter_map(|m| m.record.clone()).collect();
        let shared = db.shared();
        let expected = (chain.seq, chain.head.clone());
        // What the storage found at the head, and what was sealed after it (kept to tell a
        // commit reported failed from a failed one).
        let mut found: Option<(i64, String)> = None;
        let mut attempt: Option<Sealing> = None;
        let result = {
            let chain = &*chain;
            let mut seal = |prev_seq: i64, prev_hash: &str| -> Option<Sealing> {
                found = Some((prev_seq, prev_hash.to_string()));
                if !shared && (prev_seq, prev_hash) != (expected.0, expected.1.as_str()) {
                    return None;
                }
                let (mut seq, mut head) = (prev_seq, prev_hash.to_string());
                let mut sealed = Vec::with_capacity(records.len());
                for r in &records {
                    let s = r.clone().seal_after(seq, &head);
                    seq = s.record.seq;
                    head.clone_from(&s.hash);
                    sealed.push(s);
                }
                let now = super::now_ms();
                // On a shared log another writer may hold a checkpoint at the head found here:
                // a permanent checkpoint is made only over records this batch adds.
                let cp = ((force_checkpoint || chain.checkpoint_due(seq))
                    && seq > chain.last_cp
                    && (!shared || !sealed.is_empty()))
                .then(|| chain.settings.key.checkpoint(seq, now, &head));
                // Every batch signs its head, so no record is ever stored unsigned.
                let head_sig = match &cp {
                    Some(cp) => Some(cp.clone()),
                    None => {
                        (!sealed.is_empty()).then(|| chain.settings.key.checkpoint(seq, now, &head))
                    }
                };
                let sealing = Sealing {
                    records: sealed,
                    checkpoint: cp,
                    head: head_sig,
                    tip: (seq, head),
                };
                attempt = Some(sealing.clone());
                Some(sealing)
            };
            db.append(&rows, &mut seal)
        };
        let stored = match result {
            Ok(Some(s)) => Some(s),
            Ok(None) => {
                // Declined: someone else wrote to a log this writer owns alone. Continuing
                // from it would sign whatever was put there.
                tracing::error!(
                    expected = expected.0,
                    stored = found.as_ref().map(|f| f.0),
                    "the audit log changed under the writer (another process wrote to it): appending stops; \
                     restart airlock so that its start check can judge the log"
                );
                chain.wedged = true;
                None
            }
            Err(e) => {
                tracing::error!(error = %e, records = records.len(), "audit write failed");
                // Try the timer again later rather than spinning on a broken database.
                chain.last_cp_at = Instant::now();
                // Committed, then reported failed? Only if this batch's last record is there.
                match attempt {
                    Some(a) if !a.records.is_empty() => {
                        let (seq, hash) = a
                            .records
                            .last()
                            .map(|r| (r.record.seq, r.hash.clone()))
                            .unwrap_or_default();
                        match db.holds(seq, &hash) {
                            Ok(true) => {
                                tracing::warn!(
                                    "the audit batch was committed although the write reported an error"
                                );
                                Some(a)
                            }
                            _ => None,
                        }
                    }
                    _ => None,
                }
            }
        };
        let Some(stored) = stored else {
            // A wedged writer keeps nothing: it will not write again, so what it drops is
            // counted now rather than left uncounted in the retry queue.
            let keep = !chain.wedged;
            self.fail(batch, chain, keep);
            return;
        };
        self.stats
            .records
            .fetch_add(stored.records.len() as u64, Ordering::Relaxed);
        (chain.seq, chain.head) = stored.tip;
        if let Some(cp) = &stored.checkpoint {
            chain.last_cp = cp.seq;
            chain.last_cp_at = Instant::now();
            self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
            chain.sink(cp);
        }
        self.stats.healthy.store(true, Ordering::Relaxed);
        if let Some(oldest) = batch
            .iter()
            .filter(|m| m.record.is_some() || m.row.is_some())
            .map(|m| m.at)
            .min()
        {
            (self.on_durable)(oldest.elapsed());
        }
        for m in batch.drain(..) {
            if let Some(ack) = m.ack {
                let _ = ack.send(true);
            }
        }
    }

    /// Answers a failed batch's waiters with `false` and keeps its records for another attempt
    /// (not when the writer is wedged: nothing more is written then).
    fn fail<R: Row>(&mut self, batch: &mut Vec<Msg<R>>, chain: &mut Chain<R>, keep: bool) {
        let stats = self.stats;
        stats.healthy.store(false, Ordering::Relaxed);
        for mut m in batch.drain(..) {
            if let Some(ack) = m.ack.take() {
                let _ = ack.send(false);
                if !chain.settings.fail_open {
                    // Its request was refused or cut off because of this failure.
                    if let Some(r) = m.record.as_mut() {
                        let note = m.note.text();
                        r.reason = Some(match r.reason.take() {
                            Some(prev) => format!("{note}; {prev}"),
                            None => note.to_string(),
                        });
                    }
                    // A response withheld for this failure was answered 503, whatever the
                    // provider said: the record and the row say what the client got.
                    if m.note == Note::NotAnswered {
                        if let Some(r) = m.record.as_mut() {
                            if r.outcome == "ok" {
                                r.outcome = "not_answered".into();
                                r.status = Some(503);
                            }
                        }
                        if let Some(u) = m.row.as_mut() {
                            u.mark_not_answered();
                        }
                    }
                }
            }
            m.sign = false;
            if !keep || (m.record.is_none() && m.row.is_none()) {
                if m.record.is_some() {
                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            if chain.retry.len() >= RETRY_LIMIT {
                chain.retry.pop_front();
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
            }
            chain.retry.push_back(m);
        }
    }
}
