//! The filesystem core: POSIX operations on inode numbers and handles, served by a
//! [`Remote`]. It knows nothing of the kernel (see `fuse.rs`) or of SSH (see `remote`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use futures_util::future::try_join_all;
use tokio::sync::Semaphore;

use super::cache::{parent_and_name, Known, MetaCache};
use super::errno::{self, Errno, Facts, Op};
use super::handle::{DirItem, Handles, OpenDir, OpenFile};
use super::inode::{Ino, Inodes, ROOT};
use super::prefetch::{assemble, ChunkResult, ReadAhead};
use super::removals::Removals;
use super::smallfiles::{SmallFiles, MAX_FILES_PER_DIR, SMALL};
use super::writeback::WriteBack;
use crate::remote::{Attr, Bytes, FileKind, OpenOptions, Remote, RemoteError, SetAttr, StatFs};
use futures_util::future::{BoxFuture, FutureExt};

pub type FsResult<T> = Result<T, Errno>;

const NAME_MAX: usize = 255;

/// A file the kernel now knows by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub ino: Ino,
    pub attr: Attr,
}

/// How a set of attributes changes, as the kernel asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttrChange {
    pub size: Option<u64>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(u32),
}

/// Open flags the core cares about, decoded from `open(2)` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenFlags {
    pub read: bool,
    pub write: bool,
    pub append: bool,
    pub truncate: bool,
    pub exclusive: bool,
}

impl OpenFlags {
    pub fn from_libc(flags: i32) -> OpenFlags {
        let acc = flags & libc::O_ACCMODE;
        OpenFlags {
            read: acc == libc::O_RDONLY || acc == libc::O_RDWR,
            write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
            append: flags & libc::O_APPEND != 0,
            truncate: flags & libc::O_TRUNC != 0,
            exclusive: flags & libc::O_EXCL != 0,
        }
    }
}

/// Tunables of the filesystem core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsOptions {
    /// Data written but not yet on the server, for the whole mount.
    pub dirty_limit: usize,
    /// Longest a call waits for queued writes to reach the server.
    pub write_wait: Duration,
    /// How long attributes and listings are trusted (zero: not cached).
    pub cache_ttl: Duration,
    /// List subdirectories ahead of a tree walk.
    pub readdir_ahead: bool,
    /// Largest read-ahead window per open file, in bytes (zero: none).
    pub read_ahead: u64,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            dirty_limit: 64 * 1024 * 1024,
            write_wait: Duration::from_millis(2500),
            cache_ttl: Duration::from_secs(5),
            readdir_ahead: true,
            read_ahead: super::prefetch::MAX_WINDOW,
        }
    }
}

/// Directory listings fetched ahead at once.
const READ_AHEAD_DIRS: usize = 8;

/// How long a failed non-idempotent operation stays on record: a retry within this time
/// that meets "already done" was the first attempt landing after all.
const UNCERTAIN_FOR: Duration = Duration::from_secs(600);

pub struct Fs<R: Remote> {
    remote: Arc<R>,
    opts: FsOptions,
    inodes: Mutex<Inodes>,
    files: Handles<OpenFile>,
    dirs: Handles<OpenDir>,
    /// Permits of one KiB of dirty (queued, unacknowledged) data.
    dirty: Arc<Semaphore>,
    /// Write queues by inode, including those of released handles still draining.
    writebacks: Arc<Mutex<HashMap<Ino, Vec<Arc<WriteBack>>>>>,
    /// Non-idempotent operations whose outcome the link swallowed.
    uncertain: Mutex<HashMap<String, Instant>>,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    cache: Arc<Mutex<MetaCache>>,
    dir_permits: Arc<Semaphore>,
    write_counts: Mutex<HashMap<Ino, u64>>,
    small: Arc<Mutex<SmallFiles>>,
    /// Writes acknowledged by the server, mount-wide (see `Asked`).
    acks: Arc<AtomicU64>,
    /// Removals answered but not yet done on the server.
    removals: Arc<Removals>,
}

/// When a question went to the server: its answer may be cached only if the mount
/// changed nothing and no write of it landed meanwhile (on another connection of the
/// pool, a write in flight can land after the answer was made).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Asked(u64, u64);

/// `read_fully` on one lane of the pool.
async fn read_fully_on<R: Remote>(
    remote: &R,
    handle: &crate::remote::Handle,
    lane: usize,
    offset: u64,
    len: u32,
) -> Result<Bytes, RemoteError> {
    let first = remote.read_lane(handle, lane, offset, len).await?;
    if first.len() as u32 >= len || first.is_empty() {
        return Ok(first);
    }
    let mut buf = BytesMut::with_capacity(len as usize);
    buf.extend_from_slice(&first);
    while (buf.len() as u32) < len {
        let got = remote.read_lane(handle, lane, offset + buf.len() as u64, len - buf.len() as u32).await?;
        if got.is_empty() {
            break;
        }
        buf.extend_from_slice(&got);
    }
    Ok(buf.freeze())
}

/// Reads `len` bytes at `offset` on the file's own connection, re-asking after a short
/// answer, stopping at EOF.
async fn read_fully<R: Remote>(
    remote: &R,
    handle: &crate::remote::Handle,
    offset: u64,
    len: u32,
) -> Result<Bytes, RemoteError> {
    read_fully_on(remote, handle, 0, offset, len).await
}

/// Removes `path` (last known as `known`) for `unlink_behind`, across reconnects.
/// "No such file" counts as done: the name is gone either way. After the link lost a
/// removal, the file is removed only if it still looks as it did: a file made under the
/// same name meanwhile, by someone else, is not ours to remove.
async fn remove_reliably<R: Remote>(remote: &R, path: &str, known: Attr) -> FsResult<()> {
    loop {
        match remote.remove(path).await {
            Ok(()) | Err(RemoteError::NotFound) => return Ok(()),
            Err(e) if e.is_link() => {
                if remote.wait_available().await.is_err() {
                    return Err(Errno::EIO);
                }
                match remote.lstat(path).await {
                    Err(RemoteError::NotFound) => return Ok(()),
                    Ok(now) if now.size != known.size || now.mtime != known.mtime || now.kind() != known.kind() => {
                        tracing::warn!(path, "after a reconnect another file has the name of one removed; leaving it");
                        return Ok(());
                    }
                    // Ours, or unknown yet (the link went again): try again.
                    _ => {}
                }
            }
            Err(e) => {
                return Err(
                    errno::direct(Op::Unlink, &e).unwrap_or_else(|| errno::explain(Op::Unlink, Facts::default()))
                )
            }
        }
    }
}

/// Splits a pipelined result into the operation's outcome and the stat that came with it.
fn split(r: crate::remote::Result<Option<Attr>>) -> (crate::remote::Result<()>, Option<Attr>) {
    match r {
        Ok(a) => (Ok(()), a),
        Err(e) => (Err(e), None),
    }
}

fn kib(n: usize) -> u32 {
    n.div_ceil(1024).min(u32::MAX as usize) as u32
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few map operations; a panic cannot tear one.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_secs() -> u32 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(0)
}

fn check_name(name: &str) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name.contains('/') {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

impl<R: Remote> Fs<R> {
    pub fn new(remote: Arc<R>, root: &str, opts: FsOptions) -> Fs<R> {
        Fs {
            remote,
            opts,
            inodes: Mutex::new(Inodes::new(root)),
            files: Handles::default(),
            dirs: Handles::default(),
            dirty: Arc::new(Semaphore::new(kib(opts.dirty_limit) as usize)),
            writebacks: Arc::new(Mutex::new(HashMap::new())),
            uncertain: Mutex::new(HashMap::new()),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            cache: Arc::new(Mutex::new(MetaCache::new(opts.cache_ttl))),
            dir_permits: Arc::new(Semaphore::new(READ_AHEAD_DIRS)),
            write_counts: Mutex::new(HashMap::new()),
            small: Arc::new(Mutex::new(SmallFiles::new(opts.cache_ttl))),
            acks: Arc::new(AtomicU64::new(0)),
            removals: Arc::new(Removals::default()),
        }
    }

    /// Waits up to `limit` for every queued write to reach the server; returns how many
    /// bytes did not.
    pub async fn drain_all(&self, limit: Duration) -> u64 {
        let all: Vec<Arc<WriteBack>> = lock(&self.writebacks).values().flatten().cloned().collect();
        let idle = futures_util::future::join_all(all.iter().map(|w| w.idle()));
        let _ = tokio::time::timeout(limit, futures_util::future::join(idle, self.removals.settled())).await;
        all.iter().map(|w| w.queued_bytes()).sum()
    }

    /// Bytes read and written through the mount.
    pub fn traffic(&self) -> (u64, u64) {
        (self.bytes_read.load(Ordering::Relaxed), self.bytes_written.load(Ordering::Relaxed))
    }

    pub fn open_handles(&self) -> usize {
        self.files.len() + self.dirs.len()
    }

    fn inodes(&self) -> MutexGuard<'_, Inodes> {
        lock(&self.inodes)
    }

    /// Records that `key`'s operation may have landed although its answer was lost.
    fn note_uncertain(&self, key: &str) {
        let mut u = lock(&self.uncertain);
        u.retain(|_, at| at.elapsed() < UNCERTAIN_FOR);
        u.insert(key.to_string(), Instant::now());
    }

    /// Whether `key`'s operation was recently left uncertain (and forgets it).
    fn take_uncertain(&self, key: &str) -> bool {
        lock(&self.uncertain).remove(key).is_some_and(|at| at.elapsed() < UNCERTAIN_FOR)
    }

    /// Settles a non-idempotent operation. A lost answer is recorded and reported as
    /// EAGAIN; when the program retries and meets `already_done` (EEXIST for a create,
    /// ENOENT for a removal), `landed` checks that the first attempt did the work, and the
    /// retry succeeds instead of failing wrongly.
    async fn settle_once(
        &self,
        key: &str,
        res: crate::remote::Result<()>,
        op: Op,
        target: &str,
        source: Option<&str>,
        already_done: Errno,
    ) -> FsResult<()> {
        match res {
            Ok(()) => {
                lock(&self.uncertain).remove(key);
                Ok(())
            }
            Err(e) if e.outcome_unknown() => {
                self.note_uncertain(key);
                Err(Errno::EAGAIN)
            }
            Err(e) => {
                let errno = self.fail(op, e, target, source).await;
                if errno == already_done && self.take_uncertain(key) && self.landed(op, target).await {
                    tracing::info!(?op, target, "an earlier attempt had landed; the retry succeeds");
                    return Ok(());
                }
                Err(errno)
            }
        }
    }

    /// Whether the effect of `op` on `target` is in place on the server.
    async fn landed(&self, op: Op, target: &str) -> bool {
        let exists = self.remote.lstat(target).await.is_ok();
        match op {
            Op::Unlink | Op::Rmdir => !exists,
            _ => exists,
        }
    }

    fn writebacks_of(&self, ino: Ino) -> Vec<Arc<WriteBack>> {
        lock(&self.writebacks).get(&ino).cloned().unwrap_or_default()
    }

    /// Waits (bounded) until the writes queued for `ino` are on the server, so that what
    /// the server says about the file includes them.
    async fn settle_writes(&self, ino: Ino) -> FsResult<()> {
        let pending: Vec<_> = self.writebacks_of(ino).into_iter().filter(|w| !w.is_idle()).collect();
        if pending.is_empty() {
            return Ok(());
        }
        if !self.remote.is_available() {
            return Err(Errno::EAGAIN);
        }
        let all = futures_util::future::join_all(pending.iter().map(|w| w.idle()));
        tokio::time::timeout(self.opts.write_wait, all).await.map(|_| ()).map_err(|_| Errno::EAGAIN)
    }

    /// The size of `ino` counting writes not yet on the server.
    fn queued_end(&self, ino: Ino) -> u64 {
        self.writebacks_of(ino).iter().map(|w| w.end()).max().unwrap_or(0)
    }

    fn path_of(&self, ino: Ino) -> FsResult<String> {
        self.inodes().path(ino).map(str::to_string).ok_or(Errno::ENOENT)
    }

    fn child_of(&self, parent: Ino, name: &str) -> FsResult<String> {
        check_name(name)?;
        self.inodes().child_path(parent, name).ok_or(Errno::ENOENT)
    }

    fn entry(&self, path: &str, attr: Attr) -> Entry {
        let ino = self.inodes().intern(path, attr.kind(), true);
        Entry { ino, attr }
    }

    /// Turns a remote error into an errno, asking the server what it needs to know to
    /// tell the cause of a generic failure.
    async fn fail(&self, op: Op, err: RemoteError, target: &str, source: Option<&str>) -> Errno {
        if let Some(e) = errno::direct(op, &err) {
            return e;
        }
        tracing::debug!(?op, target, %err, "explaining generic failure");
        let mut facts = Facts::default();
        if let Ok(a) = self.remote.lstat(target).await {
            facts.target = Some(a.kind());
            if a.kind() == FileKind::Dir && matches!(op, Op::Rmdir | Op::Rename) {
                facts.target_nonempty = self.remote.read_dir(target).await.is_ok_and(|v| !v.is_empty());
            }
        }
        if let Some(src) = source {
            facts.source = self.remote.lstat(src).await.ok().map(|a| a.kind());
        }
        if self.remote.extensions().statvfs {
            if let Ok(s) = self
                .remote
                .statfs(target.rsplit_once('/').map_or("/", |(d, _)| if d.is_empty() { "/" } else { d }))
                .await
            {
                facts.read_only = s.read_only;
                facts.full = s.blocks_avail == 0;
            }
        }
        errno::explain(op, facts)
    }

    fn cache(&self) -> MutexGuard<'_, MetaCache> {
        lock(&self.cache)
    }

    fn asked(&self) -> Asked {
        Asked(self.cache().generation(), self.acks.load(Ordering::SeqCst))
    }

    /// Caches what the server said of `path` if nothing changed since `asked`.
    fn remember_attr(&self, path: &str, attr: Attr, asked: Asked) {
        if self.acks.load(Ordering::SeqCst) == asked.1 {
            self.cache().put_attr(path, attr, asked.0);
        }
    }

    pub async fn lookup(&self, parent: Ino, name: &str) -> FsResult<Entry> {
        let path = self.child_of(parent, name)?;
        let (dir, _) = parent_and_name(&path);
        match self.cache().lookup(dir, name) {
            Known::Exists(attr) => return Ok(self.entry(&path, attr)),
            Known::Absent => return Err(Errno::ENOENT),
            Known::Unknown => {}
        }
        self.after_removals().await?;
        let asked = self.asked();
        // Writes out now may land after the server answers, on another connection.
        let known = self.inodes().lookup_path(&path).map_or(0, |ino| self.queued_end(ino));
        match self.remote.lstat(&path).await {
            Ok(attr) => {
                self.remember_attr(&path, attr, asked);
                let mut e = self.entry(&path, attr);
                // Writes still on their way make the file longer than the server says.
                e.attr.size = e.attr.size.max(known).max(self.queued_end(e.ino));
                Ok(e)
            }
            Err(e) => Err(self.fail(Op::Lookup, e, &path, None).await),
        }
    }

    pub fn forget(&self, ino: Ino, n: u64) {
        self.inodes().forget(ino, n);
    }

    pub async fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        let path = self.path_of(ino)?;
        let cached = self.cache().attr(&path);
        let mut attr = match cached {
            Some(a) => a,
            None => {
                let asked = self.cache().generation();
                let a =
                    self.remote.lstat(&path).await.map_err(|e| errno::direct(Op::Getattr, &e).unwrap_or(Errno::EIO))?;
                self.cache().put_attr(&path, a, asked);
                a
            }
        };
        // Writes still queued make the file longer than the server knows yet.
        attr.size = attr.size.max(self.queued_end(ino));
        Ok(attr)
    }

    pub async fn setattr(&self, ino: Ino, fh: Option<u64>, change: AttrChange) -> FsResult<Attr> {
        let path = self.path_of(ino)?;
        if change.size.is_some() {
            // A truncate must come after the writes queued before it.
            self.settle_writes(ino).await?;
        }
        let mut set = SetAttr {
            size: change.size,
            mode: change.mode.map(|m| m & 0o7777),
            uid: change.uid,
            gid: change.gid,
            times: None,
        };
        if change.atime.is_some() || change.mtime.is_some() {
            // SFTP sets both times at once: keep the one not being changed (known, or
            // asked for only when needed).
            let cached = self.cache().attr(&path);
            let cur = match cached {
                Some(a) => a,
                None if change.atime.is_some() && change.mtime.is_some() => Attr::default(),
                None => {
                    self.remote.lstat(&path).await.map_err(|e| errno::direct(Op::Setattr, &e).unwrap_or(Errno::EIO))?
                }
            };
            let pick = |t: Option<TimeSet>, keep: u32| match t {
                Some(TimeSet::Now) => now_secs(),
                Some(TimeSet::At(s)) => s,
                None => keep,
            };
            set.times = Some((pick(change.atime, cur.atime), pick(change.mtime, cur.mtime)));
        }
        let op = if set.uid.is_some() || set.gid.is_some() { Op::Chown } else { Op::Setattr };
        lock(&self.small).forget(&path);
        if let Some(attr) = self.queue_setattr(ino, fh, &path, set) {
            return Ok(attr);
        }
        // A size change on an open handle must work even when the file's mode no longer
        // allows opening it for writing (ftruncate after chmod).
        let file = fh.and_then(|fh| self.files.get(fh)).filter(|f| f.writable);
        let known = self.queued_end(ino);
        let res = match &file {
            Some(f) => self.remote.fsetstat_stat(&f.handle, &path, set).await,
            None => self.remote.setstat_stat(&path, set).await,
        };
        match res {
            Ok(Some(mut attr)) => {
                if change.size.is_none() {
                    // Writes out on other connections may land after the stat.
                    attr.size = attr.size.max(known).max(self.queued_end(ino));
                }
                self.cache().set(&path, attr);
                Ok(attr)
            }
            Ok(None) => {
                self.cache().forget(&path);
                self.getattr(ino).await
            }
            Err(e) => {
                self.cache().forget(&path);
                Err(self.fail(op, e, &path, None).await)
            }
        }
    }

    /// `fchmod`, `fchown` and `futimens` on a file open for writing go behind its queued
    /// writes, like the writes themselves: answered at once, sent in order (pipelined
    /// with the writes on the file's connection), failures reported at the next write,
    /// fsync or close. This is what makes unpacking an archive fast.
    fn queue_setattr(&self, ino: Ino, fh: Option<u64>, path: &str, set: SetAttr) -> Option<Attr> {
        if set.size.is_some() {
            return None;
        }
        let file = match fh {
            Some(fh) => self.files.get(fh).filter(|f| f.writable && f.memory.is_none())?,
            // fchmod, fchown and futimens reach a filesystem without their handle: the
            // file's one open writer stands for it. With several, the change could land
            // before another one's writes, so it goes to the server now instead.
            None => {
                let mut writers = self.files.find_all(|f| f.ino == ino && f.writable && f.memory.is_none());
                if writers.len() != 1 || self.writebacks_of(ino).len() > 1 {
                    return None;
                }
                writers.pop()?
            }
        };
        let mut attr = self.cache().attr(path)?;
        if let Some(m) = set.mode {
            attr.mode = (attr.mode & crate::remote::S_IFMT) | m;
        }
        attr.uid = set.uid.unwrap_or(attr.uid);
        attr.gid = set.gid.unwrap_or(attr.gid);
        if let Some((a, m)) = set.times {
            attr.atime = a;
            attr.mtime = m;
        }
        // Both ids go together in SFTP; the one not given is the current one.
        let set =
            SetAttr { uid: set.uid.or(set.gid.map(|_| attr.uid)), gid: set.gid.or(set.uid.map(|_| attr.gid)), ..set };
        if file.wb.push_setattr(set) {
            tokio::spawn(file.wb.clone().flush_queue(self.remote.clone(), file.handle));
        }
        attr.size = attr.size.max(self.queued_end(ino));
        self.cache().set(path, attr);
        Some(attr)
    }

    pub async fn readlink(&self, ino: Ino) -> FsResult<String> {
        let path = self.path_of(ino)?;
        match self.remote.readlink(&path).await {
            Ok(t) => Ok(t),
            Err(e) => Err(self.fail(Op::Readlink, e, &path, None).await),
        }
    }

    pub async fn mkdir(&self, parent: Ino, name: &str, mode: u32) -> FsResult<Entry> {
        let path = self.child_of(parent, name)?;
        self.after_removals().await?;
        let (res, attr) = split(self.remote.mkdir_stat(&path, mode & 0o7777).await);
        self.settle_once(&format!("mkdir:{path}"), res, Op::Mkdir, &path, None, Errno::EEXIST).await?;
        let e = self.made(&path, attr, Op::Mkdir).await?;
        match attr {
            // Made just now by us: known to be empty.
            Some(a) => self.cache().new_dir(&path, a),
            None => self.cache().set(&path, e.attr),
        }
        Ok(e)
    }

    /// The entry for what an operation just made, from its stat if that came back.
    async fn made(&self, path: &str, attr: Option<Attr>, op: Op) -> FsResult<Entry> {
        match attr {
            Some(a) => Ok(self.entry(path, a)),
            None => self.created(path, op).await,
        }
    }

    /// Looks up what an operation just made.
    async fn created(&self, path: &str, op: Op) -> FsResult<Entry> {
        match self.remote.lstat(path).await {
            Ok(attr) => Ok(self.entry(path, attr)),
            Err(e) => Err(self.fail(op, e, path, None).await),
        }
    }

    pub async fn unlink(&self, parent: Ino, name: &str) -> FsResult<()> {
        let path = self.child_of(parent, name)?;
        let (dir, _) = parent_and_name(&path);
        let cached = self.cache().lookup(dir, name);
        let burst = self.removals.in_burst(dir);
        if let Known::Exists(known) = cached {
            if burst && known.kind() != FileKind::Dir && self.remote.is_available() {
                return self.unlink_behind(path, known).await;
            }
        }
        let res = self.remote.remove(&path).await;
        let settled = self.settle_once(&format!("unlink:{path}"), res, Op::Unlink, &path, None, Errno::ENOENT).await;
        lock(&self.small).forget(&path);
        if settled.is_err() {
            // Refused, or unknown: the file may well still be there.
            self.cache().forget(&path);
            return settled;
        }
        self.cache().remove(&path);
        self.inodes().remove_path(&path);
        Ok(())
    }

    /// Removes a file the mount knows, in a burst of removals, answering once the
    /// removal is on its way (see `removals`).
    async fn unlink_behind(&self, path: String, known: Attr) -> FsResult<()> {
        let removal = self.removals.start(&path).await;
        lock(&self.small).forget(&path);
        self.cache().remove(&path);
        self.inodes().remove_path(&path);
        let (remote, removals, cache) = (self.remote.clone(), self.removals.clone(), self.cache.clone());
        tokio::spawn(async move {
            let result = remove_reliably(&*remote, &path, known).await;
            match result {
                // Answers asked while the removal was out may predate it.
                Ok(()) => lock(&cache).landed(),
                Err(e) => {
                    tracing::warn!(path, error = %e, "the server refused a removal; the file stays, and rmdir of its directory reports it");
                    lock(&cache).forget_name(&path);
                }
            }
            removals.finish(removal, result);
        });
        Ok(())
    }

    /// Waits for the removals answered before: what the server says next must not
    /// predate them. While the link is down they cannot land, so the caller hears
    /// EAGAIN at once.
    async fn after_removals(&self) -> FsResult<()> {
        if self.removals.is_idle() {
            return Ok(());
        }
        if !self.remote.is_available() {
            return Err(Errno::EAGAIN);
        }
        self.removals.settled().await;
        Ok(())
    }

    pub async fn rmdir(&self, parent: Ino, name: &str) -> FsResult<()> {
        let path = self.child_of(parent, name)?;
        self.after_removals().await?;
        if let Some(e) = self.removals.take_refusal(&path) {
            return Err(e);
        }
        let res = self.remote.rmdir(&path).await;
        let settled = self.settle_once(&format!("rmdir:{path}"), res, Op::Rmdir, &path, None, Errno::ENOENT).await;
        self.cache().forget(&path);
        settled?;
        self.cache().remove(&path);
        self.inodes().remove_path(&path);
        Ok(())
    }

    pub async fn symlink(&self, parent: Ino, name: &str, target: &str) -> FsResult<Entry> {
        let path = self.child_of(parent, name)?;
        self.after_removals().await?;
        let (res, attr) = split(self.remote.symlink_stat(target, &path).await);
        let key = format!("symlink:{path}\0{target}");
        self.settle_once(&key, res, Op::Symlink, &path, None, Errno::EEXIST).await?;
        let e = self.made(&path, attr, Op::Symlink).await?;
        self.cache().set(&path, e.attr);
        Ok(e)
    }

    pub async fn rename(&self, parent: Ino, name: &str, new_parent: Ino, new_name: &str, flags: u32) -> FsResult<()> {
        let from = self.child_of(parent, name)?;
        let to = self.child_of(new_parent, new_name)?;
        if flags & libc::RENAME_EXCHANGE != 0 {
            // SFTP has no way to swap two names atomically.
            return Err(Errno::EINVAL);
        }
        self.after_removals().await?;
        if flags & libc::RENAME_NOREPLACE != 0 && self.remote.lstat(&to).await.is_ok() {
            return Err(Errno::EEXIST);
        }
        let res = self.remote.rename(&from, &to).await;
        {
            let mut small = lock(&self.small);
            small.forget(&from);
            small.forget(&to);
        }
        let key = format!("rename:{from}\0{to}");
        // A retry that finds the source gone and the target there was the first
        // attempt landing.
        let settled = self.settle_once(&key, res, Op::Rename, &to, Some(&from), Errno::ENOENT).await;
        if settled.is_err() {
            // Whatever happened, what the cache knew of both names may be wrong now.
            self.cache().forget(&from);
            self.cache().forget(&to);
            return settled;
        }
        self.cache().rename(&from, &to);
        self.inodes().rename(&from, &to);
        Ok(())
    }

    pub async fn link(&self, ino: Ino, new_parent: Ino, new_name: &str) -> FsResult<Entry> {
        let existing = self.path_of(ino)?;
        let path = self.child_of(new_parent, new_name)?;
        if !self.remote.extensions().hardlink {
            return Err(Errno::EOPNOTSUPP);
        }
        self.after_removals().await?;
        let res = self.remote.hardlink(&existing, &path).await;
        self.settle_once(&format!("link:{path}"), res, Op::Link, &path, Some(&existing), Errno::EEXIST).await?;
        let e = self.created(&path, Op::Link).await?;
        self.cache().set(&path, e.attr);
        self.cache().forget(&existing);
        Ok(e)
    }

    fn register(&self, ino: Ino, handle: crate::remote::Handle, path: String, writable: bool) -> u64 {
        let wb = Arc::new(WriteBack::new(self.acks.clone()));
        if writable {
            lock(&self.writebacks).entry(ino).or_default().push(wb.clone());
        }
        let ra = (!writable && self.opts.read_ahead > 0).then(|| ReadAhead::new(self.opts.read_ahead));
        let size_hint = self.cache().attr(&path).map_or(u64::MAX, |a| a.size);
        self.files.insert(OpenFile { ino, handle, path, writable, wb, ra, size_hint, memory: None })
    }

    /// How often `ino` was written through this mount: read-ahead of it is stale when
    /// this changes.
    fn writes_to(&self, ino: Ino) -> u64 {
        lock(&self.write_counts).get(&ino).copied().unwrap_or(0)
    }

    pub async fn open(&self, ino: Ino, flags: OpenFlags) -> FsResult<u64> {
        let path = self.path_of(ino)?;
        if flags.truncate {
            self.settle_writes(ino).await?;
        }
        let opts = OpenOptions {
            read: flags.read,
            write: flags.write,
            append: flags.append,
            truncate: flags.truncate,
            ..OpenOptions::default()
        };
        if flags.truncate || flags.write {
            self.cache().forget(&path);
            lock(&self.small).forget(&path);
        }
        if !flags.write {
            if let Some(fh) = self.open_from_memory(ino, &path) {
                return Ok(fh);
            }
        }
        match self.remote.open(&path, opts).await {
            Ok(handle) => Ok(self.register(ino, handle, path, flags.write)),
            Err(RemoteError::NotFound) => {
                // The file went away on the server behind the kernel's cached name (another
                // client removed it). ESTALE makes the kernel look the name up once more,
                // which now asks the server: `open(O_CREAT)` then creates the file instead
                // of failing.
                self.cache().forget_name(&path);
                lock(&self.small).forget(&path);
                Err(Errno::ESTALE)
            }
            Err(e) => Err(self.fail(Op::Open, e, &path, None).await),
        }
    }

    /// Serves a read-only open of a small file from memory if it was fetched ahead, and
    /// fetches the directory's other small files once a program is seen going through
    /// them.
    fn open_from_memory(&self, ino: Ino, path: &str) -> Option<u64> {
        let attr = self.cache().attr(path)?;
        if attr.kind() != FileKind::File || attr.size > SMALL {
            return None;
        }
        let (dir, _) = parent_and_name(path);
        let (content, fetch_dir) = {
            let mut small = lock(&self.small);
            (small.get(path, &attr), small.opened_in(dir))
        };
        if fetch_dir {
            self.fetch_small_files(dir.to_string(), path.to_string());
        }
        let data = content?;
        let file = OpenFile {
            ino,
            handle: crate::remote::Handle(0),
            path: path.to_string(),
            writable: false,
            wb: Arc::new(WriteBack::default()),
            ra: None,
            size_hint: attr.size,
            memory: Some(data),
        };
        Some(self.files.insert(file))
    }

    /// Fetches the small files of `dir` (as the cached listing has them, after `from`)
    /// a few at a time in the background.
    fn fetch_small_files(&self, dir: String, from: String) {
        let Some(listing) = self.cache().listing(&dir) else { return };
        let (_, from_name) = parent_and_name(&from);
        let mut names: Vec<_> = listing
            .into_iter()
            .filter(|e| e.attr.kind() == FileKind::File && e.attr.size <= SMALL && e.name.as_str() != from_name)
            .collect();
        // Programs mostly go on in listing or name order from where they are.
        names.sort_by(|a, b| {
            (a.name.as_str() <= from_name).cmp(&(b.name.as_str() <= from_name)).then(a.name.cmp(&b.name))
        });
        names.truncate(MAX_FILES_PER_DIR);
        for e in names {
            let path = super::inode::join(&dir, &e.name);
            if lock(&self.small).contains(&path) {
                continue;
            }
            let (remote, small, cache, permits, acks) = (
                self.remote.clone(),
                self.small.clone(),
                self.cache.clone(),
                self.dir_permits.clone(),
                self.acks.clone(),
            );
            tokio::spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else { return };
                let asked = (lock(&cache).generation(), acks.load(Ordering::SeqCst));
                let opts = OpenOptions { read: true, ..OpenOptions::default() };
                let Ok(h) = remote.open(&path, opts).await else { return };
                let data = read_fully(&*remote, &h, 0, e.attr.size.max(1) as u32).await;
                let _ = remote.close(&h).await;
                if let Ok(data) = data {
                    // Kept only if the mount changed nothing meanwhile.
                    if (lock(&cache).generation(), acks.load(Ordering::SeqCst)) == asked {
                        lock(&small).put(&path, e.attr, data);
                    }
                }
            });
        }
    }

    pub async fn create(&self, parent: Ino, name: &str, mode: u32, flags: OpenFlags) -> FsResult<(Entry, u64)> {
        let path = self.child_of(parent, name)?;
        // A removal of the same name still on its way would remove the new file.
        self.after_removals().await?;
        let mut opts = OpenOptions {
            read: flags.read,
            write: true,
            append: flags.append,
            create: true,
            truncate: flags.truncate,
            exclusive: flags.exclusive,
            mode: Some(mode & 0o7777),
        };
        let key = format!("create:{path}");
        let (handle, attr) = match self.remote.open_stat(&path, opts).await {
            Ok(opened) => opened,
            Err(e) if e.outcome_unknown() && flags.exclusive => {
                self.note_uncertain(&key);
                return Err(Errno::EAGAIN);
            }
            Err(e) => {
                let errno = self.fail(Op::Create, e, &path, None).await;
                if !(errno == Errno::EEXIST && flags.exclusive && self.take_uncertain(&key)) {
                    return Err(errno);
                }
                // Our own earlier exclusive create landed: open what it made.
                opts.exclusive = false;
                match self.remote.open_stat(&path, opts).await {
                    Ok(opened) => opened,
                    Err(e) => return Err(self.fail(Op::Create, e, &path, None).await),
                }
            }
        };
        let entry = match attr {
            Some(a) => self.entry(&path, a),
            None => match self.remote.lstat(&path).await {
                Ok(a) => self.entry(&path, a),
                Err(e) => {
                    let _ = self.remote.close(&handle).await;
                    return Err(self.fail(Op::Create, e, &path, None).await);
                }
            },
        };
        self.cache().set(&path, entry.attr);
        let fh = self.register(entry.ino, handle, path, true);
        Ok((entry, fh))
    }

    fn file(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.files.get(fh).ok_or(Errno::EBADF)
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let file = self.file(fh)?;
        if let Some(data) = &file.memory {
            let start = (offset as usize).min(data.len());
            let end = (offset as usize).saturating_add(size as usize).min(data.len());
            self.bytes_read.fetch_add((end - start) as u64, Ordering::Relaxed);
            return Ok(data.slice(start..end.max(start)));
        }
        // Read what this mount wrote: queued writes go first.
        self.settle_writes(file.ino).await?;
        let io = self.remote.read_size().max(4096);
        if let Some(ra) = &file.ra {
            let (remote, handle) = (self.remote.clone(), file.handle);
            let fetch = move |off: u64, len: u32| -> BoxFuture<'static, ChunkResult> {
                let remote = remote.clone();
                // Started now, not when first awaited: that is the point of reading ahead.
                // Chunks take turns over the pool's connections.
                let lane = (off / u64::from(len.max(1))) as usize;
                let task = tokio::spawn(async move { read_fully_on(&*remote, &handle, lane, off, len).await });
                async move { task.await.unwrap_or_else(|e| Err(RemoteError::Failure(format!("read task: {e}")))) }
                    .boxed()
            };
            if let Some(plan) = ra.plan(offset, size, io, file.size_hint, self.writes_to(file.ino), fetch) {
                let mut parts = Vec::with_capacity(plan.len());
                for (start, chunk) in plan {
                    match chunk.await {
                        Ok(data) => parts.push((start, data)),
                        Err(e) => {
                            ra.reset();
                            return Err(self.fail(Op::Read, e, &file.path, None).await);
                        }
                    }
                }
                let out = assemble(offset, size, io, &parts);
                self.bytes_read.fetch_add(out.len() as u64, Ordering::Relaxed);
                return Ok(out);
            }
        }
        let chunks = (0..size.div_ceil(io)).map(|i| {
            let off = offset + u64::from(i * io);
            let len = io.min(size - i * io);
            self.read_exact_or_eof(&file, off, len)
        });
        let parts = match try_join_all(chunks).await {
            Ok(p) => p,
            Err(e) => return Err(self.fail(Op::Read, e, &file.path, None).await),
        };
        if let [only] = &parts[..] {
            self.bytes_read.fetch_add(only.len() as u64, Ordering::Relaxed);
            return Ok(only.clone());
        }
        let mut out = BytesMut::with_capacity(size as usize);
        for (i, part) in parts.iter().enumerate() {
            let want = io.min(size - i as u32 * io) as usize;
            out.extend_from_slice(part);
            if part.len() < want {
                break;
            }
        }
        self.bytes_read.fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out.freeze())
    }

    async fn read_exact_or_eof(&self, file: &OpenFile, offset: u64, len: u32) -> Result<Bytes, RemoteError> {
        read_fully(&*self.remote, &file.handle, offset, len).await
    }

    /// Queues a write; it is acknowledged at once and reaches the server in order behind
    /// the writes before it. A failure is reported by a later write, fsync or close.
    #[cfg(test)]
    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.write_bytes(fh, offset, bytes::Bytes::copy_from_slice(data)).await
    }

    /// `write` of data the caller owns: split into requests without copying.
    pub async fn write_bytes(&self, fh: u64, offset: u64, data: bytes::Bytes) -> FsResult<u32> {
        let file = self.file(fh)?;
        if let Some(e) = file.wb.take_error() {
            return Err(e);
        }
        if file.wb.is_dead() {
            return Err(Errno::EIO);
        }
        let need = kib(data.len());
        let budget = match self.dirty.clone().try_acquire_many_owned(need) {
            Ok(p) => p,
            // Full, and nothing drains while the link is down: not accepted, not lost.
            Err(_) if !self.remote.is_available() => return Err(Errno::EAGAIN),
            Err(_) => tokio::time::timeout(self.opts.write_wait, self.dirty.clone().acquire_many_owned(need))
                .await
                .map_err(|_| Errno::EAGAIN)?
                .map_err(|_| Errno::EIO)?,
        };
        let io = self.remote.write_size().max(4096) as usize;
        let chunks = data.len().div_ceil(io);
        let mut budget = Some(budget);
        for i in 0..chunks {
            let off = offset + (i * io) as u64;
            let chunk = data.slice(i * io..((i + 1) * io).min(data.len()));
            // The whole write's budget rides on its last chunk, acknowledged last.
            let permit = if i + 1 == chunks { budget.take() } else { None };
            if file.wb.push(off, chunk, permit) {
                tokio::spawn(file.wb.clone().flush_queue(self.remote.clone(), file.handle));
            }
        }
        self.bytes_written.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.cache().grew(&file.path, offset + data.len() as u64);
        lock(&self.small).forget(&file.path);
        *lock(&self.write_counts).entry(file.ino).or_default() += 1;
        Ok(data.len() as u32)
    }

    /// Waits (bounded) until `file`'s writes are on the server, reporting any failure.
    async fn drain(&self, file: &OpenFile) -> FsResult<()> {
        if !file.wb.is_idle() && !self.remote.is_available() {
            return Err(Errno::EAGAIN);
        }
        match tokio::time::timeout(self.opts.write_wait, file.wb.drained()).await {
            Ok(r) => r,
            Err(_) => Err(Errno::EAGAIN),
        }
    }

    /// On close: the data must be on the server, or the program hears why not. Data not
    /// yet sent is kept and sent when the link allows.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let file = self.file(fh)?;
        self.drain(&file).await
    }

    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let file = self.file(fh)?;
        if file.memory.is_some() {
            return Ok(());
        }
        self.drain(&file).await?;
        if !self.remote.extensions().fsync {
            // The data is with the server; without fsync@openssh.com it cannot be forced
            // to disk from here.
            return Ok(());
        }
        match self.remote.fsync(&file.handle).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(Op::Fsync, e, &file.path, None).await),
        }
    }

    /// The last close. Queued writes still reach the server, after which the remote file
    /// is closed; neither waits here.
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let Some(file) = self.files.remove(fh) else { return Err(Errno::EBADF) };
        if file.memory.is_some() {
            return Ok(());
        }
        if file.wb.is_idle() {
            return self.close_remote(&file).await;
        }
        let remote = self.remote.clone();
        let this = self.writebacks_cleanup(file.clone());
        tokio::spawn(async move {
            file.wb.idle().await;
            let _ = remote.close(&file.handle).await;
            this();
        });
        Ok(())
    }

    /// Closes the remote file without making the program wait: its data is already on
    /// the server (flush saw to that), so nothing it could learn depends on the answer.
    async fn close_remote(&self, file: &Arc<OpenFile>) -> FsResult<()> {
        self.forget_writeback(file.ino, &file.wb);
        let remote = self.remote.clone();
        let file = file.clone();
        tokio::spawn(async move {
            if let Err(e) = remote.close(&file.handle).await {
                if !e.is_link() {
                    tracing::debug!(path = %file.path, %e, "close failed");
                }
            }
        });
        Ok(())
    }

    fn forget_writeback(&self, ino: Ino, wb: &Arc<WriteBack>) {
        let mut all = lock(&self.writebacks);
        if let Some(v) = all.get_mut(&ino) {
            v.retain(|w| !Arc::ptr_eq(w, wb));
            if v.is_empty() {
                all.remove(&ino);
            }
        }
    }

    /// A closure that removes `file`'s queue from the registry once it has drained.
    fn writebacks_cleanup(&self, file: Arc<OpenFile>) -> impl FnOnce() + Send + 'static {
        let registry = self.writebacks.clone();
        move || {
            let mut all = lock(&registry);
            if let Some(v) = all.get_mut(&file.ino) {
                v.retain(|w| !Arc::ptr_eq(w, &file.wb));
                if v.is_empty() {
                    all.remove(&file.ino);
                }
            }
        }
    }

    pub async fn opendir(&self, ino: Ino) -> FsResult<u64> {
        let path = self.path_of(ino)?;
        let cached = self.cache().listing(&path);
        let list = match cached {
            Some(l) => l,
            None => {
                self.after_removals().await?;
                let asked = self.asked();
                match self.remote.read_dir(&path).await {
                    Ok(l) => {
                        if self.acks.load(Ordering::SeqCst) == asked.1 {
                            self.cache().put_listing(&path, &l, asked.0);
                        }
                        l
                    }
                    Err(e) => return Err(self.fail(Op::Readdir, e, &path, None).await),
                }
            }
        };
        self.read_ahead_dirs(&path, &list);
        let parent = if ino == ROOT { ROOT } else { self.parent_ino(&path) };
        let mut entries = Vec::with_capacity(list.len() + 2);
        entries.push(DirItem { ino, kind: FileKind::Dir, name: ".".into(), attr: None });
        entries.push(DirItem { ino: parent, kind: FileKind::Dir, name: "..".into(), attr: None });
        let mut inodes = self.inodes();
        for e in list {
            if e.name == "." || e.name == ".." {
                continue;
            }
            let kind = e.attr.kind();
            let child = inodes.intern(&super::inode::join(&path, &e.name), kind, false);
            let mut attr = e.attr;
            attr.size = attr.size.max(self.queued_end(child));
            entries.push(DirItem { ino: child, kind, name: e.name, attr: Some(attr) });
        }
        drop(inodes);
        Ok(self.dirs.insert(OpenDir { entries }))
    }

    /// Lists the subdirectories of a directory being read, a few at a time in the
    /// background: a tree walk (`find`, `ls -R`, `du`) then finds each listing ready
    /// instead of waiting a round trip per directory. One level ahead only, so listing
    /// a large tree's root does not crawl the whole tree.
    fn read_ahead_dirs(&self, dir: &str, list: &[crate::remote::DirEntry]) {
        if !self.opts.readdir_ahead || !self.cache().enabled() {
            return;
        }
        let subdirs: Vec<String> = list
            .iter()
            .filter(|e| e.attr.kind() == FileKind::Dir)
            .map(|e| super::inode::join(dir, &e.name))
            .filter(|p| !self.cache().has_listing(p))
            .collect();
        for sub in subdirs {
            let (remote, cache, permits, acks) =
                (self.remote.clone(), self.cache.clone(), self.dir_permits.clone(), self.acks.clone());
            tokio::spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else { return };
                if lock(&cache).has_listing(&sub) {
                    return;
                }
                let asked = (lock(&cache).generation(), acks.load(Ordering::SeqCst));
                if let Ok(l) = remote.read_dir(&sub).await {
                    if acks.load(Ordering::SeqCst) == asked.1 {
                        lock(&cache).put_listing(&sub, &l, asked.0);
                    }
                }
            });
        }
    }

    fn parent_ino(&self, path: &str) -> Ino {
        let parent = path.rsplit_once('/').map_or("/", |(d, _)| if d.is_empty() { "/" } else { d });
        self.inodes().intern(parent, FileKind::Dir, false)
    }

    /// Entries from `offset` on; each comes with the offset of the one after it.
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<(u64, DirItem)>> {
        let dir = self.dirs.get(fh).ok_or(Errno::EBADF)?;
        Ok(dir.entries.iter().enumerate().skip(offset as usize).map(|(i, e)| (i as u64 + 1, e.clone())).collect())
    }

    /// The kernel keeps an entry from readdirplus as a lookup reference.
    pub fn count_lookup(&self, item: &DirItem) {
        if item.attr.is_some() {
            let mut inodes = self.inodes();
            if let Some(p) = inodes.path(item.ino).map(str::to_string) {
                inodes.intern(&p, item.kind, true);
            }
        }
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.remove(fh);
    }

    pub async fn statfs(&self) -> FsResult<StatFs> {
        if !self.remote.extensions().statvfs {
            // Without statvfs@openssh.com, report a large empty filesystem so that
            // programs checking for room do not refuse to write.
            return Ok(StatFs::unknown());
        }
        let root = self.path_of(ROOT)?;
        match self.remote.statfs(&root).await {
            Ok(s) => Ok(s),
            Err(e) => Err(self.fail(Op::Statfs, e, &root, None).await),
        }
    }
}

#[cfg(test)]
#[path = "fs_tests.rs"]
mod tests;
