//! The start check: before the writer appends anything, the stored log must be what was
//! signed, and the checkpoint file must agree with it.

use super::{Refused, Settings, Stored};
use crate::{ChainVerifier, Checkpoint, Line, Problem, Summary, GENESIS};
use serde::Deserialize;

/// What the start check verified: the chain continues from here.
pub(super) struct Verified {
    pub(super) accepted_tail: Option<u64>,
    pub(super) seq: i64,
    pub(super) head: String,
    pub(super) last_cp: i64,
}

/// Before appending, checks that the stored log is still what was signed. The writer signs the
/// head in the transaction of every batch (`audit_head`) and a permanent checkpoint every
/// `checkpoint_every` records or `checkpoint_interval_secs`, so a log airlock wrote has nothing
/// unsigned: the check verifies the signatures, the records from the last permanent checkpoint
/// on, that nothing follows the signed head, and that the last checkpoint in
/// `audit.checkpoint_file` is one the database holds. Without this a server restarted on a
/// rewritten or extended database would sign the forgery at its next batch.
pub(super) async fn check(store: &impl Stored, settings: &Settings) -> Result<Verified, Refused> {
    let refuse = |p: Problem| {
        Refused(format!(
            "the audit log in the database is not what was signed (record {}: {}); airlock will not append to it. \
             Keep the database for investigation (`airlock audit verify --file` works on a copy exported with sqlite3), \
             and point state_dir or store.url at a fresh database to serve again",
            p.seq,
            p.message
        ))
    };
    let io =
        |what: &'static str| move |e: super::StoreError| Refused(format!("cannot {what}: {e}"));
    let last = store
        .last_checkpoint()
        .await
        .map_err(io("read the last audit checkpoint"))?;
    let signed = store
        .signed_head()
        .await
        .map_err(io("read the signed audit head"))?;
    let anchors: Vec<Checkpoint> = last.iter().chain(signed.iter()).cloned().collect();
    // From the last permanent checkpoint (or the start), and never after the signed head.
    let from = last
        .as_ref()
        .map(|c| c.seq)
        .unwrap_or(0)
        .min(signed.as_ref().map(|c| c.seq).unwrap_or(i64::MAX));
    let mut v = ChainVerifier::new(anchors, &settings.verify_keys, from == 0).map_err(refuse)?;
    let mut after = (from - 1).max(0);
    loop {
        let page = store
            .records_after(after, 10_000)
            .await
            .map_err(io("read audit records"))?;
        let Some(first) = page.first() else { break };
        if after == from - 1 && first.record.seq != from {
            return Err(refuse(Problem {
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
        head: summary.head.clone().unwrap_or_else(|| GENESIS.to_string()),
        last_cp: last.as_ref().map(|c| c.seq).unwrap_or(0),
    };
    let Some(path) = &settings.sink else {
        return Ok(verified);
    };
    let copied = last_checkpoint_in_file(path, last.is_some())?;
    let catch_up_from = match &copied {
        Some(c) => {
            let stored = store
                .checkpoints(c.seq, c.seq)
                .await
                .map_err(io("read audit checkpoints"))?;
            if stored.first().map(|s| (&s.head, &s.signature)) != Some((&c.head, &c.signature)) {
                return Err(refuse(Problem {
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
    for cp in store
        .checkpoints(catch_up_from, i64::MAX)
        .await
        .map_err(io("read audit checkpoints"))?
    {
        if !cp.signature_ok(&settings.verify_keys) {
            return Err(refuse(Problem {
                seq: cp.seq,
                kind: "bad_signature",
                message: format!("the checkpoint at record {} has a bad signature", cp.seq),
            }));
        }
        append_checkpoint(path, &cp).map_err(|e| {
            Refused(format!(
                "cannot append to audit.checkpoint_file {}: {e}",
                path.display()
            ))
        })?;
    }
    Ok(verified)
}

/// The writer signs every batch, so records after the signed head were not written by airlock
/// (or by a version that did not sign every batch). They are not signed unless an operator
/// says so.
fn check_unsigned_tail(summary: &Summary, settings: &Settings) -> Result<Option<u64>, Refused> {
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
    Err(Refused(format!(
        "the audit log has {tail} records after its last signature (#{first} to #{}); airlock signs every batch it writes, \
         so they were added to the database by something else. airlock will not sign them. Inspect them \
         (sqlite3: SELECT * FROM audit WHERE seq >= {first}); if they are genuine, start once with \
         `airlock serve --accept-unsigned-tail`, which signs them and records that you did",
        summary.last_seq.unwrap_or(0),
    )))
}

/// The last checkpoint of a checkpoint file, read forwards through the whole file: every line
/// must be a checkpoint with a higher `seq` than the one before (so an old line appended again
/// is caught, not taken as the latest). A last line torn by a crash (no newline, shorter than
/// any checkpoint line) is cut off; blank lines are skipped; anything else is refused, and so is
/// a file with content but no checkpoint while the database has some. Only `seq` is parsed per
/// line; the caller checks the last one against the database.
pub fn last_checkpoint_in_file(
    path: &std::path::Path,
    db_has_checkpoints: bool,
) -> Result<Option<Checkpoint>, Refused> {
    use std::io::BufRead;
    const TORN_MAX: usize = 512;
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "type")]
        kind: String,
        seq: i64,
    }
    let damaged = |why: String| {
        Refused(format!(
            "audit.checkpoint_file {} {why}: it was damaged or edited; compare it with the database before serving",
            path.display()
        ))
    };
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && db_has_checkpoints => {
            // Unmounted storage, or deleted: the copy's guarantee would be lost silently.
            return Err(Refused(format!(
                "audit.checkpoint_file {} does not exist but the database has checkpoints; if the file is newly \
                 configured, create it empty (touch) and airlock copies the checkpoints into it",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Refused(format!(
                "cannot read audit.checkpoint_file {}: {e}",
                path.display()
            )))
        }
    };
    let mut r = std::io::BufReader::with_capacity(256 * 1024, f);
    let (mut line, mut offset, mut n) = (Vec::new(), 0u64, 0u64);
    let mut last: Option<Vec<u8>> = None;
    let mut last_seq = 0i64;
    loop {
        line.clear();
        let read = r.read_until(b'\n', &mut line).map_err(|e| {
            Refused(format!(
                "cannot read audit.checkpoint_file {}: {e}",
                path.display()
            ))
        })?;
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
                .map_err(|e| {
                    Refused(format!(
                        "audit.checkpoint_file {} ends with a torn line that cannot be removed (an append-only file?): {e}; remove it by hand",
                        path.display()
                    ))
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
    match Line::parse(text.trim()) {
        Ok(Line::Checkpoint(c)) => Ok(Some(c)),
        _ => Err(damaged("ends with a malformed checkpoint".into())),
    }
}

/// Appends one checkpoint line to a checkpoint file and syncs it to disk.
pub fn append_checkpoint(path: &std::path::Path, cp: &Checkpoint) -> std::io::Result<()> {
    use std::io::Write;
    let line = Line::Checkpoint(cp.clone()).to_line();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(format!("{line}\n").as_bytes())?;
    f.sync_data()
}
