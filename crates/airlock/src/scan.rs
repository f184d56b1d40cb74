//! `airlock scan`: finds leaked provider keys in files and git history, offline; with
//! `--inventory` it asks the server which inventory credential each key is.

use crate::client::Admin;
use crate::Failure;
use airlock_api::credentials::{Credentials, MatchRequest, Matches};
use airlock_api::SecretValue;
use airlock_scan::{report, Options, Progress, Report};
use clap::{Args, ValueEnum};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Output formats.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// For people.
    Text,
    /// One JSON object: `findings` and `stats`.
    Json,
    /// SARIF 2.1.0 (GitHub code scanning and other SARIF consumers).
    Sarif,
}

/// Find leaked AI provider keys in files and git history.
///
/// Walks PATHs (default `.`) honouring `.gitignore`, hidden files included, binaries skipped;
/// with --git also every blob in the repository's history, once. Each distinct key is reported
/// once with every place it occurs, as a redacted preview and a fingerprint: never the key.
///
/// Exit status: 0 nothing new, 1 a high-confidence key that is not in the baseline, 2 usage
/// error, 3 the server could not be asked (--inventory).
#[derive(Args)]
#[command(after_help = "Examples:
  airlock scan                                 # the working tree
  airlock scan --git                           # and every commit of its history
  airlock scan --git --since-commit origin/main --format sarif > scan.sarif
  airlock scan --format json > baseline.json   # accept today's findings ...
  airlock scan --baseline baseline.json        # ... and fail only on new ones
  airlock scan --inventory                     # name the inventory credential of each key")]
pub struct ScanArgs {
    /// Files and directories to scan.
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Also scan every blob in the git history of the repository holding the first PATH.
    #[arg(long)]
    git: bool,
    /// Only history after this revision (implies --git), e.g. origin/main in a pull request.
    #[arg(long, value_name = "REV")]
    since_commit: Option<String>,
    /// Output format (--json is the same as --format json).
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Ask the airlock server (AIRLOCK_URL, AIRLOCK_ADMIN_TOKEN) which inventory credential each
    /// key is. Keys are matched by fingerprint when --fingerprint-key is given (nothing leaves
    /// this machine); otherwise only keys whose last four characters match an inventory
    /// credential's are sent to the server to be fingerprinted there.
    #[arg(long)]
    inventory: bool,
    /// The server's fingerprint key file (`keys/hmac.key` in its state directory), to match
    /// against the inventory locally.
    #[arg(long, value_name = "FILE", requires = "inventory")]
    fingerprint_key: Option<PathBuf>,
    /// A previous `--format json` report: its findings are accepted and not reported again.
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// Skip paths matching this glob (gitignore syntax; repeatable), in files and history.
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Also scan files that .gitignore, .ignore and git's exclude files leave out.
    #[arg(long)]
    no_ignore: bool,
    /// Show low-confidence findings (generic assignments, a lone AWS key id) in text output.
    #[arg(long)]
    show_low: bool,
    /// Fail (exit 1) on low-confidence findings too.
    #[arg(long)]
    fail_on_low: bool,
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub async fn run(a: ScanArgs, json_flag: bool) -> Result<(), Failure> {
    let format = if json_flag { Format::Json } else { a.format };
    let baseline = match &a.baseline {
        Some(p) => Some(load_baseline(p)?),
        None => None,
    };
    let opts = Options {
        paths: a.paths.clone(),
        git: a.git || a.since_commit.is_some(),
        since_commit: a.since_commit.clone(),
        exclude: a.exclude.clone(),
        no_ignore: a.no_ignore,
        threads: a.threads,
    };
    let mut report = tokio::task::spawn_blocking(move || scan_with_progress(&opts))
        .await
        .map_err(|e| Failure::remote(format!("the scan stopped: {e}")))?
        .map_err(|e| Failure::usage(e.to_string()))?;
    if let Some(b) = &baseline {
        airlock_scan::apply_baseline(&mut report, b);
    }
    if a.inventory {
        match_inventory(&mut report, a.fingerprint_key.as_deref()).await?;
    }
    match format {
        Format::Text => print!("{}", report::text(&report, a.show_low)),
        Format::Json => crate::print_json(&report::json(&report)),
        Format::Sarif => crate::print_json(&report::sarif(&report)),
    }
    let failing = if a.fail_on_low {
        report.stats.findings
    } else {
        report.stats.new_high
    };
    if failing > 0 {
        return Err(Failure {
            code: 1,
            message: String::new(),
        });
    }
    Ok(())
}

fn scan_with_progress(opts: &Options) -> Result<Report, airlock_scan::ScanError> {
    let progress = Progress::default();
    if !std::io::stderr().is_terminal() {
        return airlock_scan::scan(opts, &progress);
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let p = &progress;
                let blobs = p.blobs.load(Ordering::Relaxed);
                let total = p.blobs_total.load(Ordering::Relaxed);
                let mut msg = format!(
                    "scanning: {} files, {:.1} MB",
                    p.files.load(Ordering::Relaxed),
                    p.bytes.load(Ordering::Relaxed) as f64 / 1e6
                );
                if total > 0 {
                    msg.push_str(&format!(", history {blobs}/{total} blobs"));
                }
                bar.set_message(msg);
                bar.tick();
                std::thread::sleep(Duration::from_millis(100));
            }
            bar.finish_and_clear();
        });
        let r = airlock_scan::scan(opts, &progress);
        done.store(true, Ordering::Relaxed);
        r
    })
}

/// Fingerprints listed by a previous JSON report (or a plain JSON array of fingerprints).
fn load_baseline(p: &std::path::Path) -> Result<HashSet<String>, Failure> {
    let text = std::fs::read_to_string(p)
        .map_err(|e| Failure::usage(format!("--baseline {}: {e}", p.display())))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        Failure::usage(format!(
            "--baseline {}: not JSON ({e}); write one with `airlock scan --format json > FILE`",
            p.display()
        ))
    })?;
    let list = match &v {
        Value::Array(a) => a.clone(),
        _ => match v.get("findings").and_then(Value::as_array) {
            Some(a) => a.clone(),
            None => {
                return Err(Failure::usage(format!(
                    "--baseline {}: no `findings` array; write one with `airlock scan --format json > FILE`",
                    p.display()
                )))
            }
        },
    };
    Ok(list
        .iter()
        .filter_map(|f| match f {
            Value::String(s) => Some(s.clone()),
            _ => f
                .get("fingerprint")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
        .collect())
}

async fn match_inventory(
    report: &mut Report,
    key_file: Option<&std::path::Path>,
) -> Result<(), Failure> {
    if report.findings.is_empty() {
        return Ok(());
    }
    let admin = Admin::from_env()?;
    let list: Credentials = admin
        .typed(http::Method::GET, "/credentials", None::<&()>)
        .await?;
    let creds: Vec<(String, String, String)> = list
        .credentials
        .into_iter()
        .map(|c| {
            (
                c.name,
                c.fingerprint.unwrap_or_default(),
                c.last4.unwrap_or_default(),
            )
        })
        .collect();
    if let Some(path) = key_file {
        // Local: the same keyed fingerprint the server stores, computed here.
        let text =
            zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                Failure::usage(format!("--fingerprint-key {}: {e}", path.display()))
            })?);
        let key = airlock_secrets::HmacKey::from_hex(&text).ok_or_else(|| {
            Failure::usage(format!(
                "--fingerprint-key {}: not a 32-byte hex key (the server's keys/hmac.key)",
                path.display()
            ))
        })?;
        let by_fp: HashMap<&str, &str> = creds
            .iter()
            .map(|(n, fp, _)| (fp.as_str(), n.as_str()))
            .collect();
        for f in &mut report.findings {
            let fp = key.fingerprint(f.secret().expose());
            f.credential = by_fp.get(fp.as_str()).map(|n| n.to_string());
        }
        return Ok(());
    }
    // Remote: only keys that could be in the inventory (same last four) go to the server.
    let last4: HashSet<&str> = creds.iter().map(|c| c.2.as_str()).collect();
    let idx: Vec<usize> = (0..report.findings.len())
        .filter(|&i| {
            let l = String::from_utf8_lossy(report.findings[i].last4());
            last4.contains(l.as_ref())
        })
        .collect();
    for chunk in idx.chunks(1000) {
        // Wiped when `ask` is dropped.
        let candidates: Vec<SecretValue> = chunk
            .iter()
            .map(|&i| {
                SecretValue::new(
                    String::from_utf8_lossy(report.findings[i].secret().expose()).into_owned(),
                )
            })
            .collect();
        let ask = MatchRequest { candidates };
        let r: Result<Matches, Failure> = admin
            .typed(http::Method::POST, "/inventory/match", Some(&ask))
            .await;
        drop(ask);
        let matches = r?.matches;
        for (k, &i) in chunk.iter().enumerate() {
            report.findings[i].credential = matches.get(k).cloned().flatten();
        }
    }
    Ok(())
}
