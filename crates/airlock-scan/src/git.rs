//! History: every blob reachable from any reference, read once from the object database.
//!
//! Commits are visited oldest first and each tree is read once (trees are content-addressed:
//! a tree seen before holds only blobs seen before), so the first time a blob turns up is in
//! the oldest commit that has it, at the path it had there. The distinct blobs are then read
//! and scanned in parallel, one repository handle (with its own pack cache) a thread.

use crate::engine::Matcher;
use crate::fs::{is_binary, to_hits, Excludes, Worker};
use crate::{CommitInfo, Progress, Sink};
use gix::objs::{CommitRef, TreeRefIter};
use gix::prelude::Find;
use gix::ObjectId;
use rayon::prelude::*;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Bytes of decoded delta bases each thread caches.
const PACK_CACHE_BYTES: usize = 16 << 20;
/// Bytes of decoded trees kept between the newest-first and oldest-first history walks.
const TREE_CACHE_BYTES: usize = 32 << 20;

/// A repository that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// No repository at or above the path.
    #[error("{0}: not in a git repository ({1})")]
    NotARepo(String, String),
    /// `--since-commit` does not name a commit.
    #[error("--since-commit {0}: {1}")]
    BadRevision(String, String),
    /// The object database or references could not be read.
    #[error("reading the repository failed: {0}")]
    Read(String),
}

fn read_err(e: impl std::fmt::Display) -> GitError {
    GitError::Read(e.to_string())
}

/// What the history walk found.
pub(crate) struct History {
    pub commits: u64,
    pub blobs: u64,
    pub head_blobs: HashSet<ObjectId>,
}

struct Commit {
    tree: ObjectId,
    time: i64,
    info: Arc<CommitInfo>,
}

pub(crate) fn scan_history(
    path: &Path,
    since: Option<&str>,
    excludes: &Excludes,
    matcher: &Matcher,
    progress: &Progress,
    sink: &Sink,
) -> Result<History, GitError> {
    let repo = gix::discover(path)
        .map_err(|e| GitError::NotARepo(path.display().to_string(), e.to_string()))?;
    let mut buf = Vec::new();

    // Every reference and HEAD, peeled to commits.
    let mut tips = Vec::new();
    if let Ok(Some(id)) = repo.head_id().map(|id| Some(id.detach())) {
        tips.push(id);
    }
    let refs = repo.references().map_err(read_err)?;
    for r in refs.all().map_err(read_err)?.flatten() {
        let mut r = r;
        if let Ok(id) = r.peel_to_id() {
            let id = id.detach();
            if is_commit(&repo, id) {
                tips.push(id);
            }
        }
    }
    tips.sort();
    tips.dedup();

    let mut hidden = Vec::new();
    if let Some(rev) = since {
        let id = repo
            .rev_parse_single(rev)
            .map_err(|e| GitError::BadRevision(rev.into(), e.to_string()))?
            .object()
            .map_err(|e| GitError::BadRevision(rev.into(), e.to_string()))?
            .peel_to_commit()
            .map_err(|e| GitError::BadRevision(rev.into(), e.to_string()))?
            .id;
        hidden.push(id);
    }

    let mut commits = Vec::new();
    if !tips.is_empty() {
        let walk = repo
            .rev_walk(tips)
            .with_hidden(hidden.iter().copied())
            .all()
            .map_err(read_err)?;
        for info in walk {
            let info = info.map_err(read_err)?;
            commits.push(read_commit(&repo, info.id, &mut buf)?);
        }
    }
    // Oldest first, so that a blob's first sighting is its first commit. The walk gives
    // children before parents; reversing keeps parents first among equal times.
    commits.reverse();
    commits.sort_by_key(|c| c.time);

    // Packs store older trees as deltas against newer ones, so reading trees oldest first
    // decodes a whole delta chain for each. A first pass newest first decodes each tree once
    // from its cached newer neighbour and leaves it in a bounded object cache for the
    // oldest-first walk below.
    let mut repo = repo;
    repo.object_cache_size(TREE_CACHE_BYTES);
    {
        let (mut trees, mut blobs, mut found) = (HashSet::new(), HashSet::new(), Vec::new());
        for c in commits.iter().rev() {
            walk_tree(
                &repo,
                c.tree,
                &mut trees,
                &mut blobs,
                &mut |p, is_dir| !is_dir || !excludes.excluded(p, is_dir),
                &mut found,
                &mut buf,
            )?;
            found.clear();
        }
    }

    let mut seen_trees = HashSet::new();
    let mut seen_blobs = HashSet::new();
    if let Some(&h) = hidden.first() {
        // Content already in the --since-commit tree is not new.
        let c = read_commit(&repo, h, &mut buf)?;
        let mut blobs = Vec::new();
        walk_tree(
            &repo,
            c.tree,
            &mut seen_trees,
            &mut seen_blobs,
            &mut |_, _| true,
            &mut blobs,
            &mut buf,
        )?;
    }
    let mut todo: Vec<(ObjectId, String, usize)> = Vec::new();
    for (i, c) in commits.iter().enumerate() {
        let mut found = Vec::new();
        walk_tree(
            &repo,
            c.tree,
            &mut seen_trees,
            &mut seen_blobs,
            &mut |p, is_dir| !excludes.excluded(p, is_dir),
            &mut found,
            &mut buf,
        )?;
        todo.extend(found.into_iter().map(|(id, p)| (id, p, i)));
    }
    drop(seen_trees);
    drop(seen_blobs);

    let mut head_blobs = HashSet::new();
    if let Ok(tree) = repo.head_tree_id() {
        let mut trees = HashSet::new();
        let mut found = Vec::new();
        walk_tree(
            &repo,
            tree.detach(),
            &mut trees,
            &mut head_blobs,
            &mut |_, _| true,
            &mut found,
            &mut buf,
        )?;
    }

    repo.object_cache_size(0);

    progress
        .blobs_total
        .store(todo.len() as u64, Ordering::Relaxed);
    let sync = repo.into_sync();
    let commit_infos: Vec<Arc<CommitInfo>> = commits.iter().map(|c| c.info.clone()).collect();
    todo.par_iter().for_each_init(
        || {
            let mut repo = sync.to_thread_local();
            // Delta bases a thread keeps decoded: enough for the chains a packed history
            // has, bounded so that peak memory stays small.
            repo.objects.set_pack_cache(|| {
                Box::new(gix::odb::pack::cache::lru::MemoryCappedHashmap::new(
                    PACK_CACHE_BYTES,
                ))
            });
            (repo, Worker::new(matcher))
        },
        |(repo, w), (id, path, ci)| {
            let data = match repo.objects.try_find(id, &mut w.buf) {
                Ok(Some(d)) => d.data,
                _ => {
                    sink.unreadable.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            progress.blobs.fetch_add(1, Ordering::Relaxed);
            if is_binary(data) {
                sink.skipped_binary.fetch_add(1, Ordering::Relaxed);
                return;
            }
            progress
                .bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            w.raw.clear();
            matcher.scan(data, &mut w.scratch, &mut w.raw);
            if w.raw.is_empty() {
                return;
            }
            let mut hits = Vec::new();
            to_hits(
                data,
                &w.raw,
                path,
                0,
                Some((&commit_infos[*ci], *id)),
                &mut hits,
            );
            sink.push(hits);
        },
    );
    Ok(History {
        commits: commits.len() as u64,
        blobs: todo.len() as u64,
        head_blobs,
    })
}

fn is_commit(repo: &gix::Repository, id: ObjectId) -> bool {
    repo.find_header(id)
        .map(|h| h.kind() == gix::object::Kind::Commit)
        .unwrap_or(false)
}

fn read_commit(
    repo: &gix::Repository,
    id: ObjectId,
    buf: &mut Vec<u8>,
) -> Result<Commit, GitError> {
    let data = repo
        .objects
        .try_find(&id, buf)
        .map_err(read_err)?
        .ok_or_else(|| GitError::Read(format!("commit {id} is missing")))?;
    let c = CommitRef::from_bytes(data.data).map_err(read_err)?;
    let (author, time) = match c.author() {
        Ok(a) => (format!("{} <{}>", a.name, a.email), a.seconds()),
        Err(_) => (String::new(), 0),
    };
    let ctime = c.committer().map(|s| s.seconds()).unwrap_or(time);
    Ok(Commit {
        tree: c.tree(),
        time: ctime,
        info: Arc::new(CommitInfo {
            id: id.to_string(),
            author,
            time,
        }),
    })
}

/// Collects the blobs under `tree` not seen before, with their paths.
fn walk_tree(
    repo: &gix::Repository,
    tree: ObjectId,
    seen_trees: &mut HashSet<ObjectId>,
    seen_blobs: &mut HashSet<ObjectId>,
    keep: &mut dyn FnMut(&str, bool) -> bool,
    out: &mut Vec<(ObjectId, String)>,
    buf: &mut Vec<u8>,
) -> Result<(), GitError> {
    if !seen_trees.insert(tree) {
        return Ok(());
    }
    let mut stack = vec![(tree, String::new())];
    let mut subtrees = Vec::new();
    while let Some((id, prefix)) = stack.pop() {
        let data = repo
            .objects
            .try_find(&id, buf)
            .map_err(read_err)?
            .ok_or_else(|| GitError::Read(format!("tree {id} is missing")))?;
        subtrees.clear();
        for e in TreeRefIter::from_bytes(data.data) {
            let e = e.map_err(read_err)?;
            let path = if prefix.is_empty() {
                e.filename.to_string()
            } else {
                format!("{prefix}/{}", e.filename)
            };
            if e.mode.is_tree() {
                if keep(&path, true) && seen_trees.insert(e.oid.to_owned()) {
                    subtrees.push((e.oid.to_owned(), path));
                }
            } else if e.mode.is_blob() && keep(&path, false) && seen_blobs.insert(e.oid.to_owned())
            {
                out.push((e.oid.to_owned(), path));
            }
        }
        stack.append(&mut subtrees);
    }
    Ok(())
}
