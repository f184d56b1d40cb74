//! Files: the `.gitignore`-aware walk, binary detection, streaming of large files.

use crate::engine::{Matcher, RawMatch, Scratch};
use crate::{redact, Hit, Location, Options, Progress, ScanError, Sink};
use ignore::overrides::{Override, OverrideBuilder};
use rayon::iter::{ParallelBridge, ParallelIterator};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use zeroize::Zeroizing;

/// Files up to this size are read whole; larger ones are streamed in chunks of this size.
pub(crate) const CHUNK: usize = 8 << 20;
/// Bytes carried from one chunk to the next, more than the longest match.
const OVERLAP: usize = 32 << 10;
/// A NUL byte in the first this-many bytes marks a file as binary.
const BINARY_PROBE: usize = 8 << 10;

/// `--exclude` globs, matched against paths relative to the scan root (or the repository).
#[derive(Clone)]
pub(crate) struct Excludes(Option<Override>);

impl Excludes {
    pub fn new(globs: &[String]) -> Result<Self, ScanError> {
        if globs.is_empty() {
            return Ok(Excludes(None));
        }
        let mut b = OverrideBuilder::new("/");
        for g in globs {
            // An override glob without `!` means "include only"; with it, "ignore".
            b.add(&format!("!{g}"))
                .map_err(|e| ScanError::BadGlob(g.clone(), e.to_string()))?;
        }
        let o = b
            .build()
            .map_err(|e| ScanError::BadGlob(globs.join(" "), e.to_string()))?;
        Ok(Excludes(Some(o)))
    }

    /// Whether a relative path is excluded.
    pub fn excluded(&self, rel: &str, is_dir: bool) -> bool {
        match &self.0 {
            None => false,
            Some(o) => {
                let p = Path::new("/").join(rel.trim_start_matches("./"));
                o.matched(&p, is_dir).is_ignore()
                    || p.ancestors()
                        .skip(1)
                        .take_while(|a| *a != Path::new("/"))
                        .any(|a| o.matched(a, true).is_ignore())
            }
        }
    }
}

/// Per-thread state.
pub(crate) struct Worker {
    pub scratch: Scratch,
    pub buf: Vec<u8>,
    pub raw: Vec<RawMatch>,
}

impl Worker {
    pub fn new(m: &Matcher) -> Self {
        Worker {
            scratch: m.scratch(),
            buf: Vec::new(),
            raw: Vec::new(),
        }
    }
}

pub(crate) fn scan_paths(
    paths: &[PathBuf],
    opts: &Options,
    excludes: &Excludes,
    matcher: &Matcher,
    progress: &Progress,
    sink: &Sink,
) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<PathBuf>(4096);
    std::thread::scope(|s| {
        s.spawn(move || {
            for root in paths {
                walk(root, opts, excludes, &tx);
            }
        });
        rx.into_iter().par_bridge().for_each_init(
            || Worker::new(matcher),
            |w, path| scan_file(&path, matcher, w, progress, sink),
        );
    });
}

fn walk(
    root: &Path,
    opts: &Options,
    excludes: &Excludes,
    tx: &std::sync::mpsc::SyncSender<PathBuf>,
) {
    let mut b = ignore::WalkBuilder::new(root);
    b.hidden(false)
        .follow_links(false)
        .require_git(false)
        .git_global(false);
    if opts.no_ignore {
        b.standard_filters(false).hidden(false);
    }
    let root_owned = root.to_path_buf();
    let excludes = excludes.clone();
    b.filter_entry(move |e| {
        let is_dir = e.file_type().is_some_and(|t| t.is_dir());
        if is_dir && e.file_name() == ".git" {
            return false;
        }
        let rel = e.path().strip_prefix(&root_owned).unwrap_or(e.path());
        rel.as_os_str().is_empty() || !excludes.excluded(&rel.to_string_lossy(), is_dir)
    });
    for entry in b.build() {
        let Ok(e) = entry else { continue };
        let Some(ft) = e.file_type() else { continue };
        if ft.is_file() && tx.send(e.into_path()).is_err() {
            return;
        }
    }
}

fn scan_file(path: &Path, matcher: &Matcher, w: &mut Worker, progress: &Progress, sink: &Sink) {
    let Ok(mut f) = std::fs::File::open(path) else {
        sink.unreadable.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let display = path.to_string_lossy();
    let display = display.strip_prefix("./").unwrap_or(&display).to_string();
    let mut hits = Vec::new();
    let mut line_base = 0u64;
    let mut carried = 0usize;
    // Read a probe first, so that a large binary costs one small read.
    w.buf.clear();
    if (&mut f)
        .take(BINARY_PROBE as u64)
        .read_to_end(&mut w.buf)
        .is_err()
    {
        sink.unreadable.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if is_binary(&w.buf) {
        sink.skipped_binary.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut pending = w.buf.len();
    loop {
        // Keep the tail of the previous chunk, then fill up to CHUNK more bytes.
        if carried > 0 {
            let n = w.buf.len();
            w.buf.copy_within(n - carried.., 0);
            w.buf.truncate(carried);
        }
        let want = (CHUNK - pending) as u64;
        let got = match (&mut f).take(want).read_to_end(&mut w.buf) {
            Ok(n) => n + pending,
            Err(_) => {
                sink.unreadable.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        pending = 0;
        progress.bytes.fetch_add(got as u64, Ordering::Relaxed);
        let last = got < CHUNK;
        // Matches that start in the last OVERLAP bytes of a chunk that is not the last are
        // left to the next chunk, which starts with those bytes.
        let report_below = if last {
            usize::MAX
        } else {
            w.buf.len() - OVERLAP
        };
        w.raw.clear();
        matcher.scan(&w.buf, &mut w.scratch, &mut w.raw);
        w.raw.retain(|m| m.secret.0 < report_below);
        to_hits(&w.buf, &w.raw, &display, line_base, None, &mut hits);
        if last {
            break;
        }
        line_base += memchr::memchr_iter(b'\n', &w.buf[..report_below]).count() as u64;
        carried = OVERLAP;
    }
    if w.buf.capacity() > 2 * CHUNK {
        w.buf = Vec::new();
    }
    progress.files.fetch_add(1, Ordering::Relaxed);
    sink.push(hits);
}

pub(crate) fn is_binary(buf: &[u8]) -> bool {
    memchr::memchr(0, &buf[..buf.len().min(BINARY_PROBE)]).is_some()
}

/// Turns raw matches in `buf` into hits with line and column.
pub(crate) fn to_hits(
    buf: &[u8],
    raw: &[RawMatch],
    path: &str,
    line_base: u64,
    commit: Option<(&std::sync::Arc<crate::CommitInfo>, gix::ObjectId)>,
    out: &mut Vec<Hit>,
) {
    for m in raw {
        let start = m.shown.0.min(m.secret.0);
        let line = line_base + 1 + memchr::memchr_iter(b'\n', &buf[..start]).count() as u64;
        let col = match memchr::memrchr(b'\n', &buf[..start]) {
            Some(i) => start - i,
            None => start + 1,
        } as u64;
        out.push(Hit {
            rule: m.rule,
            secret: Zeroizing::new(buf[m.secret.0..m.secret.1].to_vec()),
            redacted: redact(&buf[m.shown.0..m.shown.1], m.rule.prefix_len),
            location: Location {
                path: path.to_string(),
                line,
                column: col,
                commit: commit.map(|c| c.0.clone()),
            },
            blob: commit.map(|c| c.1),
        });
    }
}
