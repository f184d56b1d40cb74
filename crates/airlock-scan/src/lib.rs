//! `airlock scan`: finds AI provider keys leaked into files and git history.
//!
//! The pipeline: a `.gitignore`-aware directory walk (and, with [`Options::git`], every blob of
//! the repository's history, each read once from the object database) feeds a pool of threads;
//! each buffer goes through an Aho-Corasick prefilter, and only the regions around its hits run
//! the rules' one multi-pattern regular expression ([`engine`]). Matches are checked against
//! placeholders ([`validate`]), then grouped by secret: a key found in five files and three
//! commits is one [`Finding`] with eight locations.
//!
//! Secret bytes stay inside [`Finding`]: nothing here prints, serializes or logs them. Output
//! carries a redacted preview (public prefix, two characters, last four) and a fingerprint.
#![warn(missing_docs)]

pub mod engine;
mod fs;
mod git;
pub mod report;
pub mod rules;
pub mod validate;

use rules::{Confidence, Rule};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

pub use engine::Matcher;
pub use git::GitError;

/// What to scan and how.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Files and directories (default: `.`).
    pub paths: Vec<PathBuf>,
    /// Also scan every blob in the history of the git repository that holds the first path.
    pub git: bool,
    /// With `git`: only commits that are not ancestors of this revision.
    pub since_commit: Option<String>,
    /// Glob patterns (gitignore syntax) of paths to skip, in files and history alike.
    pub exclude: Vec<String>,
    /// Scan files that `.gitignore` and friends exclude.
    pub no_ignore: bool,
    /// Worker threads (0: one per core).
    pub threads: usize,
}

/// Live counters, for a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    /// Files scanned so far.
    pub files: AtomicU64,
    /// Git blobs scanned so far.
    pub blobs: AtomicU64,
    /// Bytes scanned so far.
    pub bytes: AtomicU64,
    /// Blobs to scan in total (known once the history walk is done).
    pub blobs_total: AtomicU64,
}

/// Totals of a scan.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    /// Files read.
    pub files: u64,
    /// Distinct blobs read from history.
    pub blobs: u64,
    /// Commits walked.
    pub commits: u64,
    /// Bytes scanned (files and blobs).
    pub bytes: u64,
    /// Files and blobs skipped as binary.
    pub skipped_binary: u64,
    /// Files that could not be read.
    pub unreadable: u64,
    /// Findings reported.
    pub findings: u64,
    /// Findings of high confidence not in the baseline (these fail the run).
    pub new_high: u64,
    /// Findings suppressed because the baseline lists them.
    pub baselined: u64,
    /// Wall time in milliseconds.
    pub elapsed_ms: u64,
}

/// A commit a finding was seen in.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CommitInfo {
    /// Full commit id.
    pub id: String,
    /// Author name and address.
    pub author: String,
    /// Author time (unix seconds).
    pub time: i64,
}

/// One place a secret occurs.
#[derive(Debug, Clone)]
pub struct Location {
    /// Path (as given on the command line for files, repository-relative in history).
    pub path: String,
    /// Line, from 1.
    pub line: u64,
    /// Column in bytes, from 1.
    pub column: u64,
    /// The first commit (oldest) whose tree holds this content, for history locations.
    pub commit: Option<Arc<CommitInfo>>,
}

/// Secret bytes: no `Debug`, no `Serialize`, wiped on drop.
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// The bytes, for fingerprinting and inventory matching only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

/// One distinct secret and every place it occurs.
pub struct Finding {
    /// The rule that matched.
    pub rule: &'static Rule,
    secret: SecretBytes,
    /// Redacted preview: public prefix, two characters, `…`, last four.
    pub redacted: String,
    /// Stable, unkeyed fingerprint of the secret (`sha256:` and 128 bits in hex).
    pub fingerprint: String,
    /// Where it occurs; the first is the one reported as the finding's place.
    pub locations: Vec<Location>,
    /// For history scans: whether the secret is still in a file of HEAD's tree.
    pub in_head: Option<bool>,
    /// The inventory credential this key is, when known.
    pub credential: Option<String>,
}

impl Finding {
    /// The secret's bytes, for fingerprinting against the inventory. Never print them.
    pub fn secret(&self) -> &SecretBytes {
        &self.secret
    }

    /// The last four characters (what the inventory shows).
    pub fn last4(&self) -> &[u8] {
        let s = self.secret.expose();
        &s[s.len().saturating_sub(4)..]
    }
}

/// The result of a scan.
pub struct Report {
    /// Distinct secrets, ordered by path, line.
    pub findings: Vec<Finding>,
    /// Totals.
    pub stats: Stats,
}

/// Why a scan could not run.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A path does not exist.
    #[error("{0}: no such file or directory")]
    NoSuchPath(String),
    /// A bad --exclude pattern.
    #[error("--exclude {0}: {1}")]
    BadGlob(String, String),
    /// The repository could not be read.
    #[error(transparent)]
    Git(#[from] GitError),
    /// The rule table does not compile.
    #[error(transparent)]
    Rules(#[from] engine::BuildError),
    /// The thread pool could not start.
    #[error("cannot start worker threads: {0}")]
    Threads(String),
}

/// A match tied to its place, before grouping.
pub(crate) struct Hit {
    pub rule: &'static Rule,
    pub secret: Zeroizing<Vec<u8>>,
    pub redacted: String,
    pub location: Location,
    /// Blob id for history hits (to compute `in_head`).
    pub blob: Option<gix::ObjectId>,
}

/// Where threads put their hits and counts.
#[derive(Default)]
pub(crate) struct Sink {
    pub hits: Mutex<Vec<Hit>>,
    pub skipped_binary: AtomicU64,
    pub unreadable: AtomicU64,
}

impl Sink {
    pub fn push(&self, mut hits: Vec<Hit>) {
        if hits.is_empty() {
            return;
        }
        if let Ok(mut all) = self.hits.lock() {
            all.append(&mut hits);
        }
    }
}

/// A redacted preview: the rule's public prefix plus two characters, then `…` and the last
/// four, never more than a third of the value.
pub fn redact(shown: &[u8], prefix_len: usize) -> String {
    let n = shown.len();
    let head = (prefix_len + 2).min(n / 3);
    let tail = 4.min(n / 4);
    format!(
        "{}…{}",
        String::from_utf8_lossy(&shown[..head]),
        String::from_utf8_lossy(&shown[n - tail..])
    )
}

/// The finding fingerprint: stable across runs and machines, so baselines and SARIF can use it.
/// Unkeyed (the scanner runs offline); keys are random enough that it reveals nothing.
pub fn fingerprint(secret: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"airlock scan finding v1\0");
    h.update(secret);
    format!("sha256:{}", hex::encode(&h.finalize()[..16]))
}

/// Runs a scan.
pub fn scan(opts: &Options, progress: &Progress) -> Result<Report, ScanError> {
    let started = std::time::Instant::now();
    let matcher = Matcher::new()?;
    let mut paths = opts.paths.clone();
    if paths.is_empty() {
        paths.push(PathBuf::from("."));
    }
    for p in &paths {
        if std::fs::symlink_metadata(p).is_err() {
            return Err(ScanError::NoSuchPath(p.display().to_string()));
        }
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .map_err(|e| ScanError::Threads(e.to_string()))?;
    let sink = Sink::default();
    let mut stats = Stats::default();
    let excludes = fs::Excludes::new(&opts.exclude)?;
    pool.install(|| fs::scan_paths(&paths, opts, &excludes, &matcher, progress, &sink));
    stats.files = progress.files.load(Ordering::Relaxed);
    let mut head_blobs = None;
    if opts.git || opts.since_commit.is_some() {
        let g = pool.install(|| {
            git::scan_history(
                &paths[0],
                opts.since_commit.as_deref(),
                &excludes,
                &matcher,
                progress,
                &sink,
            )
        })?;
        stats.commits = g.commits;
        stats.blobs = g.blobs;
        head_blobs = Some(g.head_blobs);
    }
    stats.bytes = progress.bytes.load(Ordering::Relaxed);
    stats.skipped_binary = sink.skipped_binary.load(Ordering::Relaxed);
    stats.unreadable = sink.unreadable.load(Ordering::Relaxed);
    let hits = sink.hits.into_inner().unwrap_or_default();
    let findings = group(hits, head_blobs.as_ref());
    stats.findings = findings.len() as u64;
    stats.new_high = findings
        .iter()
        .filter(|f| f.rule.confidence == Confidence::High)
        .count() as u64;
    stats.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(Report { findings, stats })
}

/// Groups hits by secret. When two rules matched the same secret, the first rule in the table
/// (the more specific one) names the finding.
fn group(
    hits: Vec<Hit>,
    head_blobs: Option<&std::collections::HashSet<gix::ObjectId>>,
) -> Vec<Finding> {
    let mut by_secret: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<(Finding, usize)> = Vec::new();
    let rank = |r: &Rule| {
        rules::all()
            .iter()
            .position(|x| x.id == r.id)
            .unwrap_or(usize::MAX)
    };
    for h in hits {
        let in_head = match (&h.blob, head_blobs) {
            (Some(b), Some(set)) => Some(set.contains(b)),
            (None, Some(_)) => Some(true), // a working-tree file
            _ => None,
        };
        let fp = fingerprint(&h.secret);
        match by_secret.get(&fp) {
            Some(&i) => {
                let (f, r) = &mut out[i];
                f.locations.push(h.location);
                if let Some(x) = in_head {
                    f.in_head = Some(f.in_head.unwrap_or(false) || x);
                }
                let hr = rank(h.rule);
                if hr < *r || (f.rule.confidence < h.rule.confidence) {
                    f.rule = h.rule;
                    f.redacted = h.redacted;
                    *r = hr;
                }
            }
            None => {
                by_secret.insert(fp.clone(), out.len());
                out.push((
                    Finding {
                        rule: h.rule,
                        secret: SecretBytes(h.secret),
                        redacted: h.redacted,
                        fingerprint: fp,
                        locations: vec![h.location],
                        in_head,
                        credential: None,
                    },
                    rank(h.rule),
                ));
            }
        }
    }
    let mut findings: Vec<Finding> = out.into_iter().map(|(f, _)| f).collect();
    for f in &mut findings {
        // Working-tree places first, then history by commit time; then by path and line.
        f.locations.sort_by(|a, b| {
            let ka = (a.commit.as_ref().map(|c| c.time), &a.path, a.line, a.column);
            let kb = (b.commit.as_ref().map(|c| c.time), &b.path, b.line, b.column);
            ka.cmp(&kb)
        });
        f.locations.dedup_by(|a, b| {
            a.path == b.path
                && a.line == b.line
                && a.column == b.column
                && a.commit.as_ref().map(|c| &c.id) == b.commit.as_ref().map(|c| &c.id)
        });
    }
    findings.sort_by(|a, b| {
        let key = |f: &Finding| {
            let l = &f.locations[0];
            (
                std::cmp::Reverse(f.rule.confidence),
                l.commit.as_ref().map(|c| c.time),
                l.path.clone(),
                l.line,
                l.column,
            )
        };
        key(a).cmp(&key(b))
    });
    findings
}

/// Applies a baseline: removes findings whose fingerprint it lists; returns how many.
pub fn apply_baseline(report: &mut Report, baseline: &std::collections::HashSet<String>) {
    let before = report.findings.len();
    report
        .findings
        .retain(|f| !baseline.contains(&f.fingerprint));
    report.stats.baselined = (before - report.findings.len()) as u64;
    report.stats.findings = report.findings.len() as u64;
    report.stats.new_high = report
        .findings
        .iter()
        .filter(|f| f.rule.confidence == Confidence::High)
        .count() as u64;
}

#[cfg(test)]
fn fs_chunk() -> usize {
    fs::CHUNK
}

#[cfg(test)]
mod tests;
