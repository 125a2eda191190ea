//! Changes made while the link is down (`--offline-cache`): kept in the journal
//! (`crate::offline_cache::journal`) and answered at once, then replayed on the server, in
//! order, once the link is back. Without a journal it passes every call through.
//!
//! While changes wait, what they made is what every call sees (`Journal::local`): reads,
//! stats and listings of the names they touched come from the journal, the rest from the
//! remote below (the offline cache, while down). A change is taken only where its outcome
//! can be decided here: a name is known to be absent only from a complete cached listing,
//! and a file is edited only if the cache holds all of it; otherwise the call gets EAGAIN
//! as without a journal.
//!
//! Replay checks, just before each change, that the server still has the version the
//! change started from. Where it does not, neither side silently wins: the server's
//! version stays at its name, the local one is written beside it as
//! `NAME.conflict-HOST-YYYYMMDD-HHMMSS`, and the conflict is reported.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{parent, SetAttr, StatFs, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use super::{Attr, Bytes, DirEntry, DirStream, Extensions, FileKind, Handle, OpenOptions, Remote, RemoteError, Result};
use crate::offline_cache::journal::{Change, Journal, Local, Pending};
use crate::offline_cache::Version;
use crate::sync::lock;

/// Handles of files opened on the journal's content.
const JOURNALED: u64 = 1 << 62;
/// Bytes read or written per request when a file's content moves between the journal
/// and the server.
const CHUNK: u32 = 64 * 1024;

/// A change the server's state did not let replay apply as made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The name the change was for.
    pub path: String,
    /// Where the local version was put instead, if anywhere.
    pub kept_as: Option<String>,
    /// What happened, for a person.
    pub reason: String,
    /// When it was found (Unix seconds).
    pub at: u64,
}

/// A file open on journal content.
#[derive(Debug, Clone)]
struct Open {
    file: u64,
    path: String,
    mode: u32,
}

pub struct Journaled<R: Remote> {
    inner: Arc<R>,
    journal: Option<Arc<Journal>>,
    /// What conflict copies are named after.
    host: String,
    opened: Mutex<HashMap<Handle, Open>>,
    next: AtomicU64,
    /// Held while changes are replayed: calls made meanwhile wait for it.
    replaying: tokio::sync::Mutex<()>,
    conflicts: Mutex<Vec<Conflict>>,
    /// Told of each conflict as it is found (the mount's monitor).
    told: Mutex<Option<ConflictHook>>,
}

/// What is told of a conflict.
pub type ConflictHook = Box<dyn Fn(&Conflict) + Send + Sync>;

/// The link, not the server, refused a call before sending it: the journal may take it.
fn down(e: &RemoteError) -> bool {
    matches!(e, RemoteError::Unavailable(_))
}

fn undecidable() -> RemoteError {
    RemoteError::Unavailable("link down, and the offline cache cannot tell what is there".into())
}

fn exists() -> RemoteError {
    RemoteError::ServerFailure("file exists".into())
}

fn io(e: std::io::Error) -> RemoteError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        return RemoteError::NoSpace;
    }
    RemoteError::ServerFailure(format!("offline journal: {e}"))
}

fn version_of(a: &Attr) -> Option<Version> {
    (a.kind() == FileKind::File).then_some(Version { size: a.size, mtime: u64::from(a.mtime) })
}

/// The name a conflicting local version is written under, beside `path`.
pub fn conflict_name(path: &str, host: &str, at: u64) -> String {
    let (y, mo, d, h, mi, s) = crate::timestamp::civil(at);
    format!("{path}.conflict-{host}-{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}

impl<R: Remote> Journaled<R> {
    pub fn new(inner: Arc<R>, journal: Option<Journal>, host: &str) -> Journaled<R> {
        Journaled {
            inner,
            journal: journal.map(Arc::new),
            host: host.to_string(),
            opened: Mutex::default(),
            next: AtomicU64::new(0),
            replaying: tokio::sync::Mutex::new(()),
            conflicts: Mutex::default(),
            told: Mutex::default(),
        }
    }

    pub fn inner(&self) -> &Arc<R> {
        &self.inner
    }

    /// What waits to be replayed; `None` without a journal.
    pub fn pending(&self) -> Option<Pending> {
        self.journal.as_ref().map(|j| j.pending())
    }

    /// Tells `hook` of every conflict found so far and from now on.
    pub fn on_conflict(&self, hook: ConflictHook) {
        let mut told = lock(&self.told);
        for c in lock(&self.conflicts).iter() {
            hook(c);
        }
        *told = Some(hook);
    }

    /// Conflicts found by replays so far.
    pub fn conflicts(&self) -> Vec<Conflict> {
        lock(&self.conflicts).clone()
    }

    /// The journal, if changes wait in it: what they made must be seen.
    fn waiting(&self) -> Option<&Journal> {
        self.journal.as_deref().filter(|j| !j.is_empty())
    }

    /// Before a call: once the link is up, changes waiting are replayed first.
    async fn settle(&self) {
        if self.waiting().is_some() && self.inner.is_available() {
            self.replay().await;
        }
    }

    fn open_on(&self, file: u64, path: &str, mode: u32) -> Handle {
        let handle = Handle(JOURNALED | self.next.fetch_add(1, Ordering::Relaxed));
        lock(&self.opened).insert(handle, Open { file, path: path.to_string(), mode });
        handle
    }

    fn opened(&self, handle: &Handle) -> Option<Open> {
        lock(&self.opened).get(handle).cloned()
    }

    /// What `path` is, the journal's changes over what the remote says (from the cache
    /// while down).
    async fn lstat_here(&self, path: &str) -> Result<Attr> {
        let local = self.journal.as_ref().and_then(|j| j.local(path));
        match local {
            None => self.inner.lstat(path).await,
            Some(l) => self.attr_of(l).await,
        }
    }

    async fn attr_of(&self, local: Local) -> Result<Attr> {
        let now = crate::timestamp::unix_secs() as u32;
        let j = self.journal.as_ref().ok_or_else(undecidable)?;
        match local {
            Local::File { file, mode, .. } => {
                let size = j.len(file).map_err(io)?;
                let mtime = j.modified(file).unwrap_or(now);
                Ok(Attr { size, mode: S_IFREG | mode, uid: 0, gid: 0, atime: mtime, mtime })
            }
            Local::Dir { mode } => {
                Ok(Attr { size: 4096, mode: S_IFDIR | mode, uid: 0, gid: 0, atime: now, mtime: now })
            }
            Local::Symlink { target } => {
                Ok(Attr { size: target.len() as u64, mode: S_IFLNK | 0o777, uid: 0, gid: 0, atime: now, mtime: now })
            }
            Local::Gone => Err(RemoteError::NotFound),
            Local::Server { was, mode, times } => {
                let mut a = self.inner.lstat(&was).await?;
                if let Some(m) = mode {
                    a.mode = (a.mode & S_IFMT) | m;
                }
                if let Some((at, mt)) = times {
                    (a.atime, a.mtime) = (at, mt);
                }
                Ok(a)
            }
        }
    }

    /// Whether `path` is absent, as far as can be told here: `Ok(true)` absent,
    /// `Ok(false)` there, `Err` when it cannot be told.
    async fn absent(&self, path: &str) -> Result<bool> {
        match self.lstat_here(path).await {
            Ok(_) => Ok(false),
            Err(RemoteError::NotFound) => Ok(true),
            Err(e) if down(&e) || matches!(e, RemoteError::Disconnected(_)) => Err(undecidable()),
            Err(e) => Err(e),
        }
    }

    /// A directory that can hold new names here: there, and a directory.
    async fn dir_here(&self, dir: &str) -> Result<()> {
        match self.lstat_here(dir).await {
            Ok(a) if a.kind() == FileKind::Dir => Ok(()),
            Ok(_) => Err(RemoteError::NotFound),
            // Never stat'ed alone, but listed whole: a directory.
            Err(e) if down(&e) => self.list_here(dir).await.map(|_| ()).map_err(|_| undecidable()),
            Err(e) => Err(e),
        }
    }

    fn record(&self, change: Change) -> Result<()> {
        let j = self.journal.as_ref().ok_or_else(undecidable)?;
        j.record(change).map_err(io)
    }

    /// The content file `path` is written to while down: the one changes made, or a
    /// copy of the server's version from the cache (empty if it is to be truncated).
    async fn content_for(&self, path: &str, opts: &OpenOptions) -> Result<(u64, u32)> {
        let j = self.journal.clone().ok_or_else(undecidable)?;
        let local = j.local(path);
        if let Some(Local::File { file, mode, base }) = &local {
            if opts.exclusive {
                return Err(exists());
            }
            if opts.truncate {
                j.set_len(*file, 0).map_err(io)?;
                self.record(Change::Content { path: path.into(), base: *base, file: *file, mode: *mode })?;
            }
            return Ok((*file, *mode));
        }
        let (server_name, attr) = match self.lstat_here(path).await {
            Ok(a) => {
                let was = match &local {
                    Some(Local::Server { was, .. }) => was.clone(),
                    _ => path.to_string(),
                };
                (was, Some(a))
            }
            Err(RemoteError::NotFound) => (path.to_string(), None),
            Err(e) if down(&e) => return Err(undecidable()),
            Err(e) => return Err(e),
        };
        let file = j.new_content().map_err(io)?;
        let mode;
        let base = match attr {
            None => {
                if !opts.create {
                    return Err(RemoteError::NotFound);
                }
                self.dir_here(parent(path)).await?;
                mode = opts.mode.unwrap_or(0o644) & 0o7777;
                None
            }
            Some(a) => {
                if opts.exclusive {
                    return Err(exists());
                }
                let Some(v) = version_of(&a) else {
                    return Err(RemoteError::ServerFailure("not a regular file".into()));
                };
                mode = a.mode & 0o7777;
                if !opts.truncate {
                    self.copy_from_cache(&j, file, &server_name, v.size).await?;
                }
                Some(v)
            }
        };
        self.record(Change::Content { path: path.into(), base, file, mode })?;
        Ok((file, mode))
    }

    /// The whole of `path` (`size` bytes) from the remote below (the cache, while down)
    /// into content file `file`.
    async fn copy_from_cache(&self, j: &Journal, file: u64, path: &str, size: u64) -> Result<()> {
        let h = self.inner.open(path, OpenOptions { read: true, ..OpenOptions::default() }).await.map_err(|e| {
            if down(&e) {
                undecidable()
            } else {
                e
            }
        })?;
        let mut at = 0;
        let copied = async {
            while at < size {
                let data = self.inner.read(&h, at, CHUNK).await?;
                if data.is_empty() {
                    break;
                }
                j.write(file, at, &data).map_err(io)?;
                at += data.len() as u64;
            }
            Ok::<(), RemoteError>(())
        }
        .await;
        let _ = self.inner.close(&h).await;
        copied.map_err(|e| if down(&e) { undecidable() } else { e })?;
        if at != size {
            return Err(undecidable());
        }
        Ok(())
    }

    /// Opens `path` on the journal, for a call the link refused.
    async fn open_here(&self, path: &str, opts: OpenOptions) -> Result<Handle> {
        let writes = opts.write || opts.append || opts.create || opts.truncate;
        let local = self.journal.as_ref().and_then(|j| j.local(path));
        if !writes {
            return match local {
                Some(Local::File { file, mode, .. }) => Ok(self.open_on(file, path, mode)),
                Some(Local::Gone) => Err(RemoteError::NotFound),
                Some(Local::Server { was, .. }) => self.inner.open(&was, opts).await,
                _ => self.inner.open(path, opts).await,
            };
        }
        let (file, mode) = self.content_for(path, &opts).await?;
        Ok(self.open_on(file, path, mode))
    }

    /// Keeps `placed` true after `change` was replayed (`applied`: as made).
    async fn note_placed(&self, placed: &mut HashMap<String, Version>, change: &Change, applied: bool) {
        match change {
            Change::Content { path, .. } if applied => {
                if let Ok(a) = self.inner.lstat(path).await {
                    if let Some(v) = version_of(&a) {
                        placed.insert(path.clone(), v);
                    }
                }
            }
            Change::Rename { from, to } if applied => {
                let moved: Vec<_> = placed.keys().filter(|p| within(p, from)).cloned().collect();
                for p in moved {
                    if let (Some(v), Some(now)) = (placed.remove(&p), super::moved(&p, from, to)) {
                        placed.insert(now, v);
                    }
                }
            }
            other => {
                for p in other.paths() {
                    placed.retain(|k, _| !within(k, p));
                }
            }
        }
    }

    fn conflict(&self, path: &str, kept_as: Option<String>, reason: impl Into<String>) -> Option<Conflict> {
        Some(Conflict { path: path.to_string(), kept_as, reason: reason.into(), at: crate::timestamp::unix_secs() })
    }

    /// Applies one change on the server. `Err` only when the link failed: the change
    /// then waits for the next replay.
    async fn apply(&self, j: &Journal, change: &Change) -> Result<Option<Conflict>> {
        let inner = &*self.inner;
        let server = |path: &str| {
            let path = path.to_string();
            async move {
                match inner.lstat(&path).await {
                    Ok(a) => Ok(Some(a)),
                    Err(RemoteError::NotFound) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        };
        match change {
            Change::Content { path, base, file, mode } => {
                let now = server(path).await?;
                let unchanged = match (base, now) {
                    (None, None) => true,
                    (Some(b), Some(a)) => version_of(&a) == Some(*b),
                    _ => false,
                };
                if unchanged {
                    match self.upload(j, *file, path, *mode, true).await {
                        Ok(()) => return Ok(None),
                        Err(e) if down(&e) || e.outcome_unknown() => return Err(e),
                        // Refused: kept beside it, as a conflict.
                        Err(_) => {}
                    }
                }
                let at = crate::timestamp::unix_secs();
                let beside = conflict_name(path, &self.host, at);
                let reason = if unchanged {
                    "the server refused the new content"
                } else {
                    "changed on the server while changed here"
                };
                match self.upload(j, *file, &beside, *mode, false).await {
                    Ok(()) => Ok(self.conflict(path, Some(beside), reason)),
                    Err(e) if down(&e) || e.outcome_unknown() => Err(e),
                    Err(e) => {
                        Ok(self.conflict(path, None, format!("{reason}; the local version could not be kept: {e}")))
                    }
                }
            }
            Change::Mkdir { path, mode } => match inner.mkdir(path, *mode).await {
                Ok(()) => Ok(None),
                Err(e) if down(&e) || e.outcome_unknown() => Err(e),
                Err(e) => match server(path).await? {
                    Some(a) if a.kind() == FileKind::Dir => Ok(None),
                    _ => Ok(self.conflict(path, None, format!("the directory could not be made: {e}"))),
                },
            },
            Change::Symlink { path, target } => match inner.symlink(target, path).await {
                Ok(()) => Ok(None),
                Err(e) if down(&e) || e.outcome_unknown() => Err(e),
                Err(_) => {
                    let beside = conflict_name(path, &self.host, crate::timestamp::unix_secs());
                    match inner.symlink(target, &beside).await {
                        Ok(()) => Ok(self.conflict(path, Some(beside), "the name was taken on the server")),
                        Err(e) if down(&e) || e.outcome_unknown() => Err(e),
                        Err(e) => Ok(self.conflict(path, None, format!("the symlink could not be made: {e}"))),
                    }
                }
            },
            Change::Remove { path, base } => {
                let Some(a) = server(path).await? else { return Ok(None) };
                if base.is_some() && version_of(&a) != *base {
                    return Ok(self.conflict(path, None, "removed here, changed on the server: the server's stays"));
                }
                match inner.remove(path).await {
                    Ok(()) | Err(RemoteError::NotFound) => Ok(None),
                    Err(e) if down(&e) || e.outcome_unknown() => Err(e),
                    Err(e) => Ok(self.conflict(path, None, format!("the server refused the removal: {e}"))),
                }
            }
            Change::Rmdir { path } => match inner.rmdir(path).await {
                Ok(()) | Err(RemoteError::NotFound) => Ok(None),
                Err(e) if down(&e) || e.outcome_unknown() => Err(e),
                Err(e) => Ok(self.conflict(path, None, format!("the directory stays on the server: {e}"))),
            },
            Change::Rename { from, to } => {
                // What was at `to` went first (`Remove`, checked): something there now
                // came from the server meanwhile, and stays.
                let taken = server(to).await?.is_some();
                let onto =
                    if taken { conflict_name(to, &self.host, crate::timestamp::unix_secs()) } else { to.clone() };
                match inner.rename(from, &onto).await {
                    Ok(()) if taken => Ok(self.conflict(to, Some(onto), "the name was taken on the server")),
                    Ok(()) => Ok(None),
                    Err(e) if down(&e) || e.outcome_unknown() => Err(e),
                    Err(e) => {
                        if server(from).await?.is_none() && !taken && server(to).await?.is_some() {
                            // Made by an earlier replay that lost its answer.
                            return Ok(None);
                        }
                        Ok(self.conflict(from, None, format!("could not be renamed to {to}: {e}")))
                    }
                }
            }
            Change::Chmod { path, mode } => {
                let set = SetAttr { mode: Some(*mode), ..SetAttr::default() };
                self.set(path, set).await
            }
            Change::Times { path, atime, mtime } => {
                let set = SetAttr { times: Some((*atime, *mtime)), ..SetAttr::default() };
                self.set(path, set).await
            }
        }
    }

    async fn set(&self, path: &str, set: SetAttr) -> Result<Option<Conflict>> {
        match self.inner.setstat(path, set).await {
            Ok(()) => Ok(None),
            Err(e) if down(&e) || e.outcome_unknown() => Err(e),
            Err(e) => Ok(self.conflict(path, None, format!("its attributes could not be set: {e}"))),
        }
    }

    /// Writes content file `file` to the server as `path`: whole, under a temporary
    /// name beside it, then renamed over `path` (`replace`) or to a name that must be
    /// free.
    async fn upload(&self, j: &Journal, file: u64, path: &str, mode: u32, replace: bool) -> Result<()> {
        let inner = &*self.inner;
        let temp =
            format!("{}/.{}.moor-replay", parent(path).trim_end_matches('/'), path.rsplit('/').next().unwrap_or(""));
        let opts =
            OpenOptions { write: true, create: true, truncate: true, mode: Some(mode), ..OpenOptions::default() };
        let h = inner.open(&temp, opts).await?;
        let size = j.len(file).map_err(io)?;
        let mut at = 0;
        let written = async {
            while at < size {
                let data = j.read(file, at, CHUNK).map_err(io)?;
                let n = data.len() as u64;
                inner.write(&h, at, Bytes::from(data)).await?;
                at += n;
            }
            inner.fsync(&h).await.or_else(|e| if matches!(e, RemoteError::Unsupported) { Ok(()) } else { Err(e) })
        }
        .await;
        let closed = inner.close(&h).await;
        if let Err(e) = written.and(closed) {
            let _ = inner.remove(&temp).await;
            return Err(e);
        }
        let there = inner.lstat(path).await.is_ok();
        if there && !replace {
            let _ = inner.remove(&temp).await;
            return Err(exists());
        }
        if there && !inner.extensions().posix_rename {
            // A plain SFTP rename does not replace: the old version goes first.
            inner.remove(path).await?;
        }
        if let Err(e) = inner.rename(&temp, path).await {
            let _ = inner.remove(&temp).await;
            return Err(e);
        }
        Ok(())
    }
}

impl<R: Remote> Journaled<R> {
    /// Whether changes wait after `settle`: the link is down (or went down during the
    /// replay), and every change goes to the journal.
    async fn offline(&self) -> bool {
        self.settle().await;
        // While the link is down a change goes straight here: tried on the server, the
        // cache below would drop what it knows of the names first.
        self.waiting().is_some() || (self.journal.is_some() && !self.inner.is_available())
    }

    /// Whether `e`, the link's refusal of a change, lets the journal take it.
    fn takes(&self, e: &RemoteError) -> bool {
        self.journal.is_some() && down(e)
    }

    async fn list_here(&self, dir: &str) -> Result<Vec<DirEntry>> {
        let local = self.journal.as_ref().and_then(|j| j.local(dir));
        let mut entries = match local {
            Some(Local::Dir { .. }) => Vec::new(),
            Some(Local::Gone) => return Err(RemoteError::NotFound),
            Some(Local::File { .. } | Local::Symlink { .. }) => {
                return Err(RemoteError::ServerFailure("not a directory".into()))
            }
            Some(Local::Server { was, .. }) => self.inner.list(&was).await?.collect().await?,
            None => self.inner.list(dir).await?.collect().await?,
        };
        let Some(j) = &self.journal else { return Ok(entries) };
        for (name, l) in j.children(dir) {
            entries.retain(|e| e.name != name);
            if l != Local::Gone {
                let attr = self.attr_of(l).await?;
                entries.push(DirEntry { name, attr });
            }
        }
        Ok(entries)
    }

    async fn mkdir_here(&self, path: &str, mode: u32) -> Result<()> {
        self.dir_here(parent(path)).await?;
        if !self.absent(path).await? {
            return Err(exists());
        }
        self.record(Change::Mkdir { path: path.into(), mode: mode & 0o7777 })
    }

    async fn rmdir_here(&self, path: &str) -> Result<()> {
        match self.lstat_here(path).await {
            Ok(a) if a.kind() != FileKind::Dir => return Err(RemoteError::ServerFailure("not a directory".into())),
            // Its listing decides.
            Ok(_) => {}
            Err(e) if down(&e) => {}
            Err(e) => return Err(e),
        }
        if self.list_here(path).await?.iter().any(|e| e.name != "." && e.name != "..") {
            return Err(RemoteError::ServerFailure("directory not empty".into()));
        }
        self.record(Change::Rmdir { path: path.into() })
    }

    async fn remove_here(&self, path: &str) -> Result<()> {
        let a = self.lstat_here(path).await?;
        if a.kind() == FileKind::Dir {
            return Err(RemoteError::ServerFailure("is a directory".into()));
        }
        self.record(Change::Remove { path: path.into(), base: version_of(&a) })
    }

    async fn rename_here(&self, from: &str, to: &str) -> Result<()> {
        let a = self.lstat_here(from).await?;
        self.dir_here(parent(to)).await?;
        if within(to, from) && to != from {
            return Err(RemoteError::ServerFailure("into itself".into()));
        }
        if !self.absent(to).await? {
            let there = self.lstat_here(to).await?;
            if there.kind() == FileKind::Dir {
                if a.kind() != FileKind::Dir
                    || !self.list_here(to).await?.iter().all(|e| e.name == "." || e.name == "..")
                {
                    return Err(RemoteError::ServerFailure("target is a directory".into()));
                }
                self.record(Change::Rmdir { path: to.into() })?;
            } else {
                if a.kind() == FileKind::Dir {
                    return Err(RemoteError::ServerFailure("target is not a directory".into()));
                }
                self.record(Change::Remove { path: to.into(), base: version_of(&there) })?;
            }
        }
        self.record(Change::Rename { from: from.into(), to: to.into() })?;
        for o in lock(&self.opened).values_mut() {
            if let Some(m) = super::moved(&o.path, from, to) {
                o.path = m;
            }
        }
        Ok(())
    }

    async fn symlink_here(&self, target: &str, link: &str) -> Result<()> {
        self.dir_here(parent(link)).await?;
        if !self.absent(link).await? {
            return Err(exists());
        }
        self.record(Change::Symlink { path: link.into(), target: target.into() })
    }

    async fn setstat_here(&self, path: &str, set: SetAttr) -> Result<()> {
        if set.uid.is_some() || set.gid.is_some() {
            return Err(undecidable());
        }
        self.lstat_here(path).await?;
        if let Some(size) = set.size {
            let opts = OpenOptions { write: true, truncate: size == 0, ..OpenOptions::default() };
            let (file, _) = self.content_for(path, &opts).await?;
            let j = self.journal.as_ref().ok_or_else(undecidable)?;
            j.set_len(file, size).map_err(io)?;
        }
        if let Some(mode) = set.mode {
            self.record(Change::Chmod { path: path.into(), mode: mode & 0o7777 })?;
        }
        if let Some((atime, mtime)) = set.times {
            self.record(Change::Times { path: path.into(), atime, mtime })?;
        }
        Ok(())
    }

    /// Runs `change` on the server unless changes wait; takes it here if they do, or
    /// if the link refuses it.
    async fn change<T>(
        &self,
        on_server: impl std::future::Future<Output = Result<T>>,
        here: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        if self.offline().await {
            return here.await;
        }
        match on_server.await {
            Err(e) if self.takes(&e) => here.await,
            answer => answer,
        }
    }
}

/// `path` is `base` or under it.
fn within(path: &str, base: &str) -> bool {
    path == base || path.strip_prefix(base.trim_end_matches('/')).is_some_and(|r| r.starts_with('/'))
}

impl<R: Remote> Remote for Journaled<R> {
    fn extensions(&self) -> Extensions {
        self.inner.extensions()
    }

    fn is_available(&self) -> bool {
        self.inner.is_available()
    }

    async fn wait_available(&self) -> Result<()> {
        self.inner.wait_available().await
    }

    async fn wait_unavailable(&self) {
        self.inner.wait_unavailable().await
    }

    fn stalled_for(&self) -> Option<std::time::Duration> {
        self.inner.stalled_for()
    }

    async fn realpath(&self, path: &str) -> Result<String> {
        self.settle().await;
        match self.waiting().and_then(|j| j.local(path)) {
            Some(Local::Gone) => Err(RemoteError::NotFound),
            Some(_) => Ok(path.to_string()),
            None => self.inner.realpath(path).await,
        }
    }

    async fn stat(&self, path: &str) -> Result<Attr> {
        self.settle().await;
        match self.waiting().and_then(|j| j.local(path)) {
            // What a symlink made here points to is the server's to say.
            Some(Local::Symlink { .. }) | None => self.inner.stat(path).await,
            Some(l) => self.attr_of(l).await,
        }
    }

    async fn lstat(&self, path: &str) -> Result<Attr> {
        self.settle().await;
        self.lstat_here(path).await
    }

    async fn fstat(&self, handle: &Handle) -> Result<Attr> {
        match self.opened(handle) {
            Some(o) => self.attr_of(Local::File { file: o.file, base: None, mode: o.mode }).await,
            None => self.inner.fstat(handle).await,
        }
    }

    async fn setstat(&self, path: &str, set: SetAttr) -> Result<()> {
        self.change(self.inner.setstat(path, set), self.setstat_here(path, set)).await
    }

    async fn fsetstat(&self, handle: &Handle, set: SetAttr) -> Result<()> {
        match self.opened(handle) {
            Some(o) => self.setstat_here(&o.path, set).await,
            None => self.inner.fsetstat(handle, set).await,
        }
    }

    async fn lsetstat(&self, path: &str, set: SetAttr) -> Result<()> {
        self.change(self.inner.lsetstat(path, set), self.setstat_here(path, set)).await
    }

    async fn list(&self, path: &str) -> Result<DirStream> {
        if self.offline().await {
            return Ok(DirStream::of(self.list_here(path).await?));
        }
        self.inner.list(path).await
    }

    async fn open(&self, path: &str, opts: OpenOptions) -> Result<Handle> {
        if self.offline().await {
            return self.open_here(path, opts).await;
        }
        match self.inner.open(path, opts).await {
            Err(e) if self.takes(&e) => self.open_here(path, opts).await,
            answer => answer,
        }
    }

    async fn close(&self, handle: &Handle) -> Result<()> {
        let opened = lock(&self.opened).remove(handle);
        match opened {
            // Closed once what was written is on disk: the program is told it is kept.
            Some(o) => {
                self.journal.as_ref().ok_or_else(undecidable)?.sync(o.file).map_err(io)?;
                // A replay may have stopped at this file.
                self.settle().await;
                Ok(())
            }
            None => self.inner.close(handle).await,
        }
    }

    async fn read(&self, handle: &Handle, offset: u64, len: u32) -> Result<Bytes> {
        match self.opened(handle) {
            Some(o) => {
                let j = self.journal.as_ref().ok_or_else(undecidable)?;
                Ok(Bytes::from(j.read(o.file, offset, len).map_err(io)?))
            }
            None => self.inner.read(handle, offset, len).await,
        }
    }

    async fn write(&self, handle: &Handle, offset: u64, data: Bytes) -> Result<()> {
        match self.opened(handle) {
            Some(o) => self.journal.as_ref().ok_or_else(undecidable)?.write(o.file, offset, &data).map_err(io),
            None => self.inner.write(handle, offset, data).await,
        }
    }

    async fn fsync(&self, handle: &Handle) -> Result<()> {
        match self.opened(handle) {
            Some(o) => self.journal.as_ref().ok_or_else(undecidable)?.sync(o.file).map_err(io),
            None => self.inner.fsync(handle).await,
        }
    }

    async fn mkdir(&self, path: &str, mode: u32) -> Result<()> {
        self.change(self.inner.mkdir(path, mode), self.mkdir_here(path, mode)).await
    }

    async fn rmdir(&self, path: &str) -> Result<()> {
        self.change(self.inner.rmdir(path), self.rmdir_here(path)).await
    }

    async fn remove(&self, path: &str) -> Result<()> {
        self.change(self.inner.remove(path), self.remove_here(path)).await
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.change(self.inner.rename(from, to), self.rename_here(from, to)).await
    }

    async fn symlink(&self, target: &str, link: &str) -> Result<()> {
        self.change(self.inner.symlink(target, link), self.symlink_here(target, link)).await
    }

    async fn readlink(&self, path: &str) -> Result<String> {
        self.settle().await;
        match self.waiting().and_then(|j| j.local(path)) {
            Some(Local::Symlink { target }) => Ok(target),
            Some(Local::Gone) => Err(RemoteError::NotFound),
            Some(Local::Server { was, .. }) => self.inner.readlink(&was).await,
            Some(_) => Err(RemoteError::ServerFailure("not a symlink".into())),
            None => self.inner.readlink(path).await,
        }
    }

    async fn hardlink(&self, existing: &str, new: &str) -> Result<()> {
        if self.offline().await {
            return Err(undecidable());
        }
        self.inner.hardlink(existing, new).await
    }

    async fn statfs(&self, path: &str) -> Result<StatFs> {
        self.inner.statfs(path).await
    }

    fn read_size(&self) -> u32 {
        self.inner.read_size()
    }

    fn write_size(&self) -> u32 {
        self.inner.write_size()
    }

    fn write_depth(&self, handle: &Handle) -> usize {
        if handle.0 & JOURNALED != 0 {
            return 1;
        }
        self.inner.write_depth(handle)
    }

    fn opened_as(&self, handle: &Handle) -> Option<Attr> {
        if handle.0 & JOURNALED != 0 {
            return None;
        }
        self.inner.opened_as(handle)
    }

    /// Replays the changes waiting, in order, each checked against the server first;
    /// stops where the link fails, leaving the rest waiting.
    async fn replay(&self) {
        let Some(j) = self.journal.clone() else { return };
        let _replaying = self.replaying.lock().await;
        // The versions this replay put on the server, by name: a later change of a file
        // the journal wrote checks against what was written, not what it was here.
        let mut placed: HashMap<String, Version> = HashMap::new();
        for (seq, change) in j.changes() {
            if let Change::Content { file, .. } = &change {
                if lock(&self.opened).values().any(|o| o.file == *file) {
                    // Still being written: replayed once it is closed (`close`), and
                    // what follows it waits, to keep the order.
                    return;
                }
            }
            let change = match change {
                Change::Remove { path, base } => {
                    let base = placed.get(&path).copied().or(base);
                    Change::Remove { path, base }
                }
                other => other,
            };
            match self.apply(&j, &change).await {
                Ok(conflict) => {
                    self.note_placed(&mut placed, &change, conflict.is_none()).await;
                    if let Some(c) = conflict {
                        tracing::warn!(path = %c.path, kept_as = ?c.kept_as, "offline change in conflict: {}", c.reason);
                        let told = lock(&self.told);
                        if let Some(hook) = told.as_ref() {
                            hook(&c);
                        }
                        lock(&self.conflicts).push(c);
                    }
                    if let Err(e) = j.replayed(seq) {
                        tracing::warn!(error = %e, "cannot drop a replayed change from the offline journal");
                        return;
                    }
                }
                Err(e) => {
                    tracing::info!(error = %e, "replay of offline changes stopped; the rest wait for the link");
                    return;
                }
            }
        }
    }

    fn is_local(&self, handle: &Handle) -> bool {
        handle.0 & JOURNALED != 0
    }

    fn serves_offline(&self) -> bool {
        self.inner.serves_offline()
    }

    fn served_offline(&self) -> Vec<String> {
        self.inner.served_offline()
    }

    async fn open_stat(&self, path: &str, opts: OpenOptions) -> Result<(Handle, Option<Attr>)> {
        if self.offline().await {
            return Ok((self.open_here(path, opts).await?, None));
        }
        match self.inner.open_stat(path, opts).await {
            Err(e) if self.takes(&e) => Ok((self.open_here(path, opts).await?, None)),
            answer => answer,
        }
    }

    async fn mkdir_stat(&self, path: &str, mode: u32) -> Result<Option<Attr>> {
        let here = async { self.mkdir_here(path, mode).await.map(|()| None) };
        self.change(self.inner.mkdir_stat(path, mode), here).await
    }

    async fn symlink_stat(&self, target: &str, link: &str) -> Result<Option<Attr>> {
        let here = async { self.symlink_here(target, link).await.map(|()| None) };
        self.change(self.inner.symlink_stat(target, link), here).await
    }

    async fn setstat_stat(&self, path: &str, set: SetAttr) -> Result<Option<Attr>> {
        let here = async { self.setstat_here(path, set).await.map(|()| None) };
        self.change(self.inner.setstat_stat(path, set), here).await
    }

    async fn fsetstat_stat(&self, handle: &Handle, path: &str, set: SetAttr) -> Result<Option<Attr>> {
        match self.opened(handle) {
            Some(o) => self.setstat_here(&o.path, set).await.map(|()| None),
            None => self.inner.fsetstat_stat(handle, path, set).await,
        }
    }
}

#[cfg(test)]
mod tests;
