//! `airlock audit tail|export|verify`: the audit log through the admin API, and offline
//! verification of an export with nothing but the public key.

use crate::client::Admin;
use crate::{print_json, Failure};
use airlock_audit::{ChainVerifier, Checkpoint, Line, Problem, PublicKeys, Sealed, Summary};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Recompute the hash chain and check every signed checkpoint. Exit 0 when intact, 1 naming
    /// the first bad record. Without --file it reads the server's log through the admin API.
    Verify {
        /// Verify this export (JSON Lines from `audit export`) offline; needs --public-key.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Audit public key(s): `ed25519/<hex>` or a file holding one (`keys/audit-1.pub`).
        /// Without it, online verification uses the key the server reports.
        #[arg(long = "public-key")]
        public_keys: Vec<String>,
        /// A copy of the checkpoints kept elsewhere (`audit.checkpoint_file`): catches a rewrite
        /// or truncation of the whole database.
        #[arg(long)]
        checkpoints: Option<PathBuf>,
        /// Accept an excerpt: an export that does not start at record 1 (`audit export
        /// --since`) or ends after its last checkpoint (`--until`); it is then anchored only by
        /// the checkpoints it contains. Without it such a file fails: a log whose beginning was
        /// cut off, or with records added after its last signature, looks the same.
        #[arg(long)]
        partial: bool,
        /// Fail when records written longer ago than this many seconds are not covered by a
        /// signed checkpoint (the server signs every `audit.checkpoint_interval_secs`). Offline,
        /// the age is measured against the last record in the file.
        #[arg(long, default_value_t = 300, value_name = "SECS")]
        max_unsigned_age: i64,
    },
    /// Print the latest records; --follow keeps printing new ones.
    Tail {
        /// How many records to show first.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: i64,
        /// Keep waiting for new records.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        filter: Filter,
    },
    /// Write records and their checkpoints as JSON Lines (streamed), for archiving or for
    /// `audit verify --file`.
    Export {
        /// From this time (RFC 3339 or unix milliseconds).
        #[arg(long)]
        since: Option<String>,
        /// Until this time (exclusive).
        #[arg(long)]
        until: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

/// Which records `tail` shows.
#[derive(Args)]
pub struct Filter {
    /// Only records of this credential.
    #[arg(long)]
    credential: Option<String>,
    /// Only this actor: a token id, admin key id, or subject.
    #[arg(long)]
    actor: Option<String>,
    /// Only this action (inference, request.refused, secret.resolve, credential.add, token.mint…).
    #[arg(long)]
    action: Option<String>,
    /// From this time (RFC 3339 or unix milliseconds).
    #[arg(long)]
    since: Option<String>,
    /// Until this time.
    #[arg(long)]
    until: Option<String>,
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn records_of(v: &Value) -> Result<Vec<Sealed>, Failure> {
    v.get("records")
        .and_then(Value::as_array)
        .ok_or_else(|| Failure::remote("the server's answer has no records"))?
        .iter()
        .map(|r| {
            Sealed::from_json(r.clone())
                .map_err(|e| Failure::remote(format!("bad record from the server: {e}")))
        })
        .collect()
}

fn text_line(r: &Sealed) -> String {
    let r = &r.record;
    let when = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis(r.ts.max(0) as u64),
    );
    let who = match (&r.subject, &r.actor) {
        (Some(s), _) => format!("{}:{s}", r.actor_kind),
        (None, Some(a)) => format!("{}:{a}", r.actor_kind),
        _ => r.actor_kind.clone(),
    };
    let mut line = format!(
        "#{:<7} {when}  {who}  {}  {}  {}",
        r.seq,
        r.action,
        r.target.as_deref().unwrap_or("-"),
        r.outcome
    );
    if let Some(c) = &r.credential {
        line.push_str(&format!(
            "  credential={c} model={} status={} tokens={}/{}",
            r.model.as_deref().unwrap_or("-"),
            r.status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            r.input_tokens
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into()),
            r.output_tokens
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into()),
        ));
    }
    if let Some(reason) = &r.reason {
        line.push_str(&format!("  ({reason})"));
    }
    line
}

pub async fn run(cmd: AuditCmd, json_out: bool) -> Result<(), Failure> {
    match cmd {
        AuditCmd::Verify {
            file: Some(file),
            public_keys,
            checkpoints,
            partial,
            max_unsigned_age,
        } => {
            let keys = given_keys(&public_keys)?;
            if keys.is_empty() {
                return Err(Failure::usage(
                    "offline verification needs --public-key (ed25519/<hex> or the audit-1.pub file)",
                ));
            }
            let result = verify_file(&file, &keys, checkpoints.as_ref(), partial).map(|r| {
                r.and_then(|s| {
                    if s.unsigned_tail > 0 && !partial {
                        let first = s.last_seq.unwrap_or(0) - s.unsigned_tail as i64 + 1;
                        return Err(Problem {
                            seq: first,
                            kind: "unsigned",
                            message: format!(
                                "records {first} to {} are after the file's last checkpoint, so nothing vouches for them \
                                 (`audit export` without --until ends on a fresh checkpoint; pass --partial to accept an excerpt)",
                                s.last_seq.unwrap_or(first)
                            ),
                        });
                    }
                    match s.stale_unsigned(s.last_ts.unwrap_or(0), max_unsigned_age * 1000) {
                        Some(p) => Err(p),
                        None => Ok(s),
                    }
                })
            });
            report(result, json_out)
        }
        AuditCmd::Verify {
            file: None,
            public_keys,
            checkpoints,
            partial: _,
            max_unsigned_age,
        } => {
            let admin = Admin::from_env()?;
            let mut keys = given_keys(&public_keys)?;
            let mut key_source = "given";
            if keys.is_empty() {
                let v = admin.get("/audit/keys").await?;
                for k in v
                    .get("keys")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let id = k.get("id").and_then(Value::as_i64).unwrap_or(0);
                    let text = k.get("public_key").and_then(Value::as_str).unwrap_or("");
                    keys.add(id, text)
                        .map_err(|e| Failure::remote(e.to_string()))?;
                }
                key_source = "server";
                if !json_out {
                    eprintln!("note: using the audit key the server reports; pass --public-key for a check that does not trust the server");
                }
            }
            let mut cps = admin_checkpoints(&admin).await?;
            if let Some(f) = &checkpoints {
                cps = merge_checkpoints(cps, read_checkpoint_file(f)?).map_err(|p| {
                    report_problem(&p, json_out);
                    Failure {
                        code: 1,
                        message: String::new(),
                    }
                })?;
            }
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            let result = verify_server(&admin, cps, &keys).await?.and_then(|s| {
                match s.stale_unsigned(now_ms, max_unsigned_age * 1000) {
                    Some(p) => Err(p),
                    None => Ok(s),
                }
            });
            if json_out {
                if let Ok(s) = &result {
                    print_json(&json!({ "ok": true, "summary": s, "key_source": key_source }));
                    return Ok(());
                }
            }
            report(Ok(result), json_out)
        }
        AuditCmd::Tail {
            lines,
            follow,
            filter,
        } => {
            let admin = Admin::from_env()?;
            let base = [
                ("credential", filter.credential),
                ("actor", filter.actor),
                ("action", filter.action),
                ("since", filter.since),
                ("until", filter.until),
            ];
            let mut q = base.to_vec();
            q.push(("limit", Some(lines.clamp(1, 10_000).to_string())));
            q.push(("newest", Some("true".into())));
            let first = records_of(&admin.get(&format!("/audit{}", query(&q))).await?)?;
            let mut last = first.last().map(|r| r.record.seq).unwrap_or(0);
            for r in &first {
                print_record(r, json_out);
            }
            if !follow {
                return Ok(());
            }
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let mut q = base.to_vec();
                q.push(("after_seq", Some(last.to_string())));
                q.push(("limit", Some("1000".into())));
                let batch = records_of(&admin.get(&format!("/audit{}", query(&q))).await?)?;
                for r in &batch {
                    print_record(r, json_out);
                    last = r.record.seq;
                }
            }
        }
        AuditCmd::Export {
            since,
            until,
            output,
        } => {
            let admin = Admin::from_env()?;
            let mut out: Box<dyn Write> = match &output {
                Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).map_err(
                    |e| Failure::usage(format!("cannot create {}: {e}", p.display())),
                )?)),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            // A contiguous run of records, from the first written at or after --since to the
            // last written before --until: record times follow the order requests started, not
            // the chain's order, so filtering each record by time would leave gaps that
            // verification reports as missing records.
            let edge = |newest: bool| {
                let mut q = vec![("limit", Some("1".to_string()))];
                if newest {
                    q.push(("until", until.clone()));
                    q.push(("newest", Some("true".into())));
                } else {
                    q.push(("since", since.clone()));
                }
                let admin = &admin;
                async move {
                    Ok::<_, Failure>(
                        records_of(&admin.get(&format!("/audit{}", query(&q))).await?)?
                            .first()
                            .map(|r| r.record.seq),
                    )
                }
            };
            let first = if since.is_some() {
                edge(false).await?
            } else {
                Some(1)
            };
            // Without --until the export ends on a checkpoint signed now, so that it verifies
            // offline with nothing unsigned at its end.
            let last = if until.is_some() {
                edge(true).await?
            } else {
                let v = admin.post("/audit/checkpoint", json!({})).await?;
                Some(
                    v.get("checkpoint")
                        .and_then(|c| c.get("seq"))
                        .and_then(Value::as_i64)
                        .unwrap_or(0),
                )
            };
            let (first, last) = match (first, last) {
                (Some(f), Some(l)) if f <= l => (f, l),
                _ => (1, 0),
            };
            let cps = admin_checkpoints(&admin).await?;
            let mut cp_iter = cps.into_iter().peekable();
            let mut after = first - 1;
            let mut n = 0u64;
            let w = |e: std::io::Error| Failure::usage(format!("cannot write the export: {e}"));
            loop {
                if after >= last {
                    break;
                }
                let q = [
                    ("after_seq", Some(after.to_string())),
                    ("limit", Some((last - after).clamp(1, 10_000).to_string())),
                ];
                let v = admin.get(&format!("/audit{}", query(&q))).await?;
                let batch = records_of(&v)?;
                for r in batch.iter().filter(|r| r.record.seq <= last) {
                    while cp_iter.peek().is_some_and(|c| c.seq < r.record.seq) {
                        // Checkpoints between exported records (or before the first).
                        if let Some(c) = cp_iter.next() {
                            if n > 0 {
                                writeln!(out, "{}", Line::Checkpoint(c).to_line()).map_err(w)?;
                            }
                        }
                    }
                    writeln!(out, "{}", Line::Record(r.clone()).to_line()).map_err(w)?;
                    n += 1;
                    after = r.record.seq;
                    while cp_iter.peek().is_some_and(|c| c.seq == r.record.seq) {
                        if let Some(c) = cp_iter.next() {
                            writeln!(out, "{}", Line::Checkpoint(c).to_line()).map_err(w)?;
                        }
                    }
                }
                if v.get("next_after_seq").and_then(Value::as_i64).is_none() {
                    break;
                }
                if output.is_some() && std::io::stderr().is_terminal() {
                    eprint!("\rexported {n} records…");
                }
            }
            out.flush().map_err(w)?;
            if output.is_some() {
                if std::io::stderr().is_terminal() {
                    eprint!("\r");
                }
                if json_out {
                    print_json(&json!({ "records": n, "last_seq": after }));
                } else {
                    eprintln!("exported {n} records (through #{after})");
                }
            }
            Ok(())
        }
    }
}

fn print_record(r: &Sealed, json_out: bool) {
    if json_out {
        println!("{}", r.to_json());
    } else {
        println!("{}", text_line(r));
    }
}

fn given_keys(list: &[String]) -> Result<PublicKeys, Failure> {
    let mut keys = PublicKeys::default();
    for (i, k) in list.iter().enumerate() {
        let path = std::path::Path::new(k);
        let (id, text) = if !k.starts_with("ed25519/") && path.exists() {
            let id = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("audit-"))
                .and_then(|n| n.strip_suffix(".pub"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(-(i as i64) - 1);
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::usage(format!("cannot read {k}: {e}")))?;
            (id, text)
        } else {
            (-(i as i64) - 1, k.clone())
        };
        keys.add(id, &text)
            .map_err(|e| Failure::usage(format!("--public-key {k}: {e}")))?;
    }
    Ok(keys)
}

async fn admin_checkpoints(admin: &Admin) -> Result<Vec<Checkpoint>, Failure> {
    let v = admin.get("/audit/checkpoints").await?;
    serde_json::from_value(v.get("checkpoints").cloned().unwrap_or(Value::Null))
        .map_err(|e| Failure::remote(format!("bad checkpoints from the server: {e}")))
}

fn read_checkpoint_file(path: &PathBuf) -> Result<Vec<Checkpoint>, Failure> {
    let f = std::fs::File::open(path)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        match Line::parse(&line) {
            Ok(Line::Checkpoint(c)) => out.push(c),
            Ok(Line::Record(_)) => {}
            Err(e) => {
                return Err(Failure::usage(format!(
                    "{} line {}: {e}",
                    path.display(),
                    i + 1
                )))
            }
        }
    }
    Ok(out)
}

/// The union of two checkpoint lists; the same position signed with two heads is a problem.
fn merge_checkpoints(a: Vec<Checkpoint>, b: Vec<Checkpoint>) -> Result<Vec<Checkpoint>, Problem> {
    let mut by_seq: std::collections::BTreeMap<i64, Checkpoint> = std::collections::BTreeMap::new();
    for c in a.into_iter().chain(b) {
        if let Some(old) = by_seq.get(&c.seq) {
            if old.head != c.head {
                return Err(Problem {
                    seq: c.seq,
                    kind: "checkpoint_mismatch",
                    message: format!(
                        "the checkpoint file and the log disagree about record {}: the log was rewritten",
                        c.seq
                    ),
                });
            }
            continue;
        }
        by_seq.insert(c.seq, c);
    }
    Ok(by_seq.into_values().collect())
}

async fn verify_server(
    admin: &Admin,
    cps: Vec<Checkpoint>,
    keys: &PublicKeys,
) -> Result<Result<Summary, Problem>, Failure> {
    let mut v = match ChainVerifier::new(cps, keys, true) {
        Ok(v) => v,
        Err(p) => return Ok(Err(p)),
    };
    let mut after = 0i64;
    let progress = std::io::stderr().is_terminal();
    loop {
        let page = admin
            .get(&format!("/audit?after_seq={after}&limit=10000"))
            .await?;
        let batch = records_of(&page)?;
        for r in &batch {
            if let Err(p) = v.record(r) {
                if progress {
                    eprint!("\r");
                }
                return Ok(Err(p));
            }
            after = r.record.seq;
        }
        if progress && after > 0 {
            eprint!("\rverified {after} records…");
        }
        if page.get("next_after_seq").and_then(Value::as_i64).is_none() {
            break;
        }
    }
    if progress {
        eprint!("\r");
    }
    Ok(v.finish())
}

fn verify_file(
    path: &PathBuf,
    keys: &PublicKeys,
    extra: Option<&PathBuf>,
    partial: bool,
) -> Result<Result<Summary, Problem>, Failure> {
    // Two passes over the file: checkpoints first (they are few), then the records in order.
    let mut cps = read_checkpoint_file(path)?;
    if let Some(f) = extra {
        match merge_checkpoints(cps, read_checkpoint_file(f)?) {
            Ok(c) => cps = c,
            Err(p) => return Ok(Err(p)),
        }
    }
    let file = std::fs::File::open(path)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
    let mut verifier: Option<ChainVerifier> = None;
    let mut pending = Some(cps);
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        let rec = match Line::parse(&line) {
            Ok(Line::Record(r)) => r,
            Ok(Line::Checkpoint(_)) => continue,
            Err(e) => {
                return Ok(Err(Problem {
                    seq: 0,
                    kind: "malformed",
                    message: format!("line {} of {} is not a record: {e}", i + 1, path.display()),
                }))
            }
        };
        if verifier.is_none() {
            // A file that starts at record 1 is a whole log and must start from the genesis.
            let from_genesis = rec.record.seq == 1;
            if !from_genesis && !partial {
                return Ok(Err(Problem {
                    seq: 1,
                    kind: "partial",
                    message: format!(
                        "{} starts at record {}, not 1: records before it are missing (pass --partial to verify an export made with --since)",
                        path.display(),
                        rec.record.seq
                    ),
                }));
            }
            match ChainVerifier::new(pending.take().unwrap_or_default(), keys, from_genesis) {
                Ok(v) => verifier = Some(v),
                Err(p) => return Ok(Err(p)),
            }
        }
        if let Some(v) = verifier.as_mut() {
            if let Err(p) = v.record(&rec) {
                return Ok(Err(p));
            }
        }
    }
    match verifier {
        Some(v) => Ok(v.finish()),
        None => Err(Failure::usage(format!(
            "{} holds no records",
            path.display()
        ))),
    }
}

fn report_problem(p: &Problem, json_out: bool) {
    if json_out {
        print_json(&json!({ "ok": false, "problem": p }));
    } else {
        eprintln!("audit log NOT intact at record {}: {}", p.seq, p.message);
    }
}

fn report(
    result: Result<Result<Summary, Problem>, Failure>,
    json_out: bool,
) -> Result<(), Failure> {
    match result? {
        Ok(s) => {
            if json_out {
                print_json(&json!({ "ok": true, "summary": s }));
            } else {
                match (s.first_seq, s.last_seq) {
                    (Some(a), Some(b)) => println!(
                        "audit log intact: {} records (#{a}..#{b}), {} checkpoints verified, head {}{}",
                        s.records,
                        s.checkpoints_verified,
                        s.head.as_deref().map(|h| &h[..16.min(h.len())]).unwrap_or("-"),
                        if s.unsigned_tail > 0 {
                            format!(", {} records after the last checkpoint (signed at the next one)", s.unsigned_tail)
                        } else {
                            String::new()
                        }
                    ),
                    _ => println!("audit log intact: empty"),
                }
            }
            Ok(())
        }
        Err(p) => {
            report_problem(&p, json_out);
            Err(Failure {
                code: 1,
                message: String::new(),
            })
        }
    }
}
