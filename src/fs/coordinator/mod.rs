//! The filesystem core: POSIX operations on inode numbers and handles, served by a
//! [`Remote`]. It knows nothing of the kernel (see `fuse.rs`) or of SSH (see `remote`).
//! `Fs` keeps the open handles and coordinates the owners of each concern (metadata,
//! write-behind, read-ahead, small files, listing ahead, retries), each of which holds
//! its own state and background tasks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::errno::{self, Errno, Op};
use super::handles::{DirItem, FileState, Handles, OpenDir, OpenFile};
use super::list_ahead::ListAhead;
use super::listing::Listing;
use super::meta::{Ino, Known, Meta, ROOT};
use super::path::{check_name, join, parent, parent_and_name};
use super::read_ahead::ReadAhead;
use super::retries::{Attempt, Retries};
use super::small_files::SmallFiles;
use super::tasks::Tasks;
use super::write_behind::WriteBehind;
use crate::remote::{
    close_quietly, Attr, Bytes, DirEntry, FileKind, Handle, OpenOptions, Remote, RemoteError, SetAttr, StatFs,
};

mod attributes;
mod namespace;
mod values;

pub use super::error::{FsError, FsResult};
pub use values::{AttrChange, Entry, FsOptions, OpenFlags, TimeSet};

/// What the kernel keeps of the mount that the core can take back.
pub trait KernelCache: Send + Sync + 'static {
    /// The kernel's attributes and pages of `ino` are out of date.
    fn inode_changed(&self, ino: Ino);
    /// The kernel's entry for `name` in directory `dir` is out of date.
    fn name_changed(&self, dir: Ino, name: &str);
}

/// Listings and small files fetched ahead at once.
const BACKGROUND_FETCHES: usize = 8;

pub struct Fs<R: Remote> {
    remote: Arc<R>,
    tasks: Tasks,
    meta: Arc<Meta>,
    files: Handles<OpenFile>,
    dirs: Handles<OpenDir>,
    write_behind: WriteBehind<R>,
    read_ahead: ReadAhead<R>,
    small_files: SmallFiles<R>,
    list_ahead: ListAhead<R>,
    retries: Retries,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    /// The remote login user's uid, when known (`FsOptions::login_uid`).
    login_uid: Option<u32>,
    read_only: bool,
}

impl<R: Remote> Fs<R> {
    pub fn new(remote: Arc<R>, root: &str, opts: FsOptions) -> Fs<R> {
        let tasks = Tasks::default();
        let meta = Arc::new(Meta::new(root, opts.cache_timeout));
        let slots = Arc::new(Semaphore::new(BACKGROUND_FETCHES));
        Fs {
            write_behind: WriteBehind::new(remote.clone(), tasks.clone(), opts.dirty_limit, meta.landings()),
            read_ahead: ReadAhead::new(remote.clone(), tasks.clone(), opts.read_ahead),
            small_files: SmallFiles::new(
                remote.clone(),
                tasks.clone(),
                meta.clone(),
                slots.clone(),
                opts.cache_timeout,
            ),
            list_ahead: ListAhead::new(
                remote.clone(),
                tasks.clone(),
                meta.clone(),
                slots,
                opts.list_ahead,
                opts.cache_timeout,
            ),
            retries: Retries::default(),
            files: Handles::default(),
            dirs: Handles::default(),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            login_uid: opts.login_uid,
            read_only: opts.read_only,
            meta,
            tasks,
            remote,
        }
    }

    /// Waits up to `limit` for queued writes to reach the server; returns how many
    /// written bytes did not.
    pub async fn drain_all(&self, limit: Duration) -> u64 {
        let _ = tokio::time::timeout(limit, self.write_behind.all_written()).await;
        self.write_behind.queued_bytes()
    }

    /// Ends the mount's background work: `drain_all`, then every task is stopped and
    /// awaited. Returns how many written bytes never reached the server.
    pub async fn shutdown(&self, limit: Duration) -> u64 {
        let left = self.drain_all(limit).await;
        if !self.tasks.shutdown(Duration::from_secs(1)).await {
            tracing::warn!("background tasks still running after shutdown");
        }
        left
    }

    /// Once the link is back after an outage in which a local store answered
    /// (`Remote::served_offline`), everything the mount and the kernel hold is forgotten,
    /// so that the next call asks the server: nothing that may have come from the store,
    /// and nothing older, is trusted once the server can say.
    pub fn revalidate_after_outages(&self, kernel: Arc<dyn KernelCache>) {
        let (remote, meta) = (self.remote.clone(), self.meta.clone());
        self.tasks.spawn(async move {
            // Changes an earlier agent kept while the link was down.
            if remote.is_available() {
                remote.replay().await;
            }
            loop {
                remote.wait_unavailable().await;
                if remote.serves_offline() {
                    meta.distrust();
                }
                if remote.wait_available().await.is_err() {
                    return;
                }
                remote.replay().await;
                if !remote.serves_offline() {
                    continue;
                }
                let served = remote.served_offline();
                let held = meta.unsure_of_all();
                tracing::info!(
                    served = served.len(),
                    held = held.len(),
                    "link back: asking the server again for everything the offline cache may have answered"
                );
                let stale: Vec<_> = held
                    .into_iter()
                    .map(|(ino, path)| {
                        let (dir, name) = parent_and_name(&path);
                        (ino, meta.ino_of(dir).filter(|d| *d != ino), name.to_string())
                    })
                    .collect();
                let kernel = kernel.clone();
                // The kernel may wait on calls of this very mount while it drops what it
                // holds: never on a runtime worker.
                let _ = tokio::task::spawn_blocking(move || {
                    for (ino, dir, name) in stale {
                        kernel.inode_changed(ino);
                        if let Some(dir) = dir {
                            kernel.name_changed(dir, &name);
                        }
                    }
                })
                .await;
            }
        });
    }

    /// Runs a kernel call's work among the mount's tracked tasks.
    pub(super) fn track(&self, call: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(call);
    }

    /// Whether a call waiting on the link may wait on: the link is up, has requests out
    /// (a call past its deadline with nothing out waits on something else), and has
    /// received something within `within`. Slow is not dead.
    pub fn link_moving(&self, within: Duration) -> bool {
        self.remote.is_available() && self.remote.stalled_for().is_some_and(|s| s < within)
    }

    /// Files with written data not yet on the server: their paths and bytes.
    pub fn at_stake(&self) -> Vec<(String, u64)> {
        self.write_behind.at_stake()
    }

    /// Files whose written data was given up for good (their link failed for good, or
    /// they could not be found again after a reconnect): their paths and bytes.
    pub fn lost(&self) -> Vec<(String, u64)> {
        self.write_behind.lost()
    }

    /// Bytes read and written through the mount.
    pub fn traffic(&self) -> (u64, u64) {
        (self.bytes_read.load(Ordering::Relaxed), self.bytes_written.load(Ordering::Relaxed))
    }

    pub fn open_handles(&self) -> usize {
        self.files.len() + self.dirs.len()
    }

    /// Refuses a change on a read-only mount, before anything reaches the server. The
    /// kernel refuses most itself (the mount is `ro`); this holds whatever gets through.
    fn may_change(&self) -> FsResult<()> {
        if self.read_only {
            return Err(Errno::EROFS.into());
        }
        Ok(())
    }

    fn path_of(&self, ino: Ino) -> FsResult<String> {
        self.meta.path(ino).ok_or(Errno::ENOENT.into())
    }

    fn child_of(&self, parent: Ino, name: &str) -> FsResult<String> {
        check_name(name)?;
        self.meta.child(parent, name).ok_or(Errno::ENOENT.into())
    }

    fn entry(&self, path: &str, attr: Attr) -> Entry {
        Entry { ino: self.meta.held(path, attr.kind()), attr }
    }

    /// The entry for what an operation just made at `path`, which was free on the server:
    /// a number the mount still had there (a rename whose answer was lost, another
    /// client's removal) belongs to another file, and so do its queued writes.
    fn new_entry(&self, path: &str, attr: Attr) -> Entry {
        Entry { ino: self.meta.held_new(path, attr.kind()), attr }
    }

    fn file(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.files.get(fh).ok_or(Errno::EBADF.into())
    }

    /// What the server answered `op` on `path`: its value, or the errno its failure means.
    async fn answered<T>(&self, op: Op, path: &str, answer: crate::remote::Result<T>) -> FsResult<T> {
        match answer {
            Ok(v) => Ok(v),
            Err(e) => Err(self.fail(op, e, path, None).await),
        }
    }

    /// The failure of `op` on `target` (moving or linking `source`), with the errno the
    /// server's failure `err` means (see `errno::errno_for`).
    async fn fail(&self, op: Op, err: RemoteError, target: &str, source: Option<&str>) -> FsError {
        let errno = errno::errno_for(&*self.remote, op, &err, target, source).await;
        FsError::remote(errno, op, target, err)
    }

    /// The failure of `op` on `path`, read without asking the server why: a generic one
    /// is EIO.
    fn fail_now(&self, op: Op, err: RemoteError, path: &str) -> FsError {
        let errno = errno::direct(op, &err).unwrap_or(Errno::EIO);
        FsError::remote(errno, op, path, err)
    }

    /// The outcome of a non-idempotent operation, given the server's answer (see
    /// `retries`).
    async fn conclude(&self, attempt: Attempt<'_>, answer: crate::remote::Result<()>) -> FsResult<()> {
        Ok(self.retries.conclude(&*self.remote, attempt, answer).await?)
    }

    /// The mount changed `path`: what it fetched of it is no longer true.
    fn forget_content(&self, path: &str) {
        self.small_files.forget(path);
    }

    pub async fn lookup(&self, parent: Ino, name: &str) -> FsResult<Entry> {
        let path = self.child_of(parent, name)?;
        let (dir, _) = parent_and_name(&path);
        match self.meta.lookup(dir, name) {
            Known::Exists(attr) => return Ok(self.entry(&path, attr)),
            Known::Absent => return Err(Errno::ENOENT.into()),
            Known::Unknown => {}
        }
        let asked = self.meta.snapshot();
        // Writes out now may land after the server answers, on another connection.
        let known = self.meta.ino_of(&path).map_or(0, |ino| self.write_behind.queued_end(ino));
        let attr = self.answered(Op::Lookup, &path, self.remote.lstat(&path).await).await?;
        self.meta.remember_attr(&path, attr, asked);
        let mut e = self.entry(&path, attr);
        // Writes still on their way make the file longer than the server says.
        e.attr.size = e.attr.size.max(known).max(self.write_behind.queued_end(e.ino));
        Ok(e)
    }

    /// The kernel dropped `n` references to `ino`: once it holds none, the number goes,
    /// unless writes to it are still on their way.
    pub fn forget(&self, ino: Ino, n: u64) {
        if self.meta.forget(ino, n, |ino| self.in_use(ino)) {
            self.read_ahead.forget(ino);
        }
    }

    /// Whether `ino` is still needed here though the kernel may not hold it.
    fn in_use(&self, ino: Ino) -> bool {
        self.write_behind.queue_count(ino) > 0
    }

    pub async fn readlink(&self, ino: Ino) -> FsResult<String> {
        let path = self.path_of(ino)?;
        self.answered(Op::Readlink, &path, self.remote.readlink(&path).await).await
    }

    /// Numbers a file just opened on the server as `handle`.
    fn register(&self, ino: Ino, handle: Handle, path: String, writable: bool) -> u64 {
        let state = if writable {
            FileState::Writing { handle, queue: self.write_behind.open(ino, handle, &path) }
        } else {
            let size_hint = self.meta.attr(&path).map_or(u64::MAX, |a| a.size);
            FileState::Reading { handle, window: self.read_ahead.window(), size_hint }
        };
        self.files.insert(OpenFile { ino, path, state })
    }

    pub async fn open(&self, ino: Ino, flags: OpenFlags) -> FsResult<u64> {
        if flags.write || flags.truncate {
            self.may_change()?;
        }
        let path = self.path_of(ino)?;
        if flags.truncate {
            self.write_behind.written(ino).await?;
        }
        let opts = OpenOptions {
            read: flags.read,
            write: flags.write,
            append: flags.append,
            truncate: flags.truncate,
            ..OpenOptions::default()
        };
        if flags.truncate || flags.write {
            self.meta.unsure(&path);
            self.forget_content(&path);
        }
        if !flags.write {
            if let Some(data) = self.small_files.open(&path) {
                return Ok(self.files.insert(OpenFile { ino, path, state: FileState::Memory(data) }));
            }
        }
        match self.remote.open(&path, opts).await {
            Ok(handle) => Ok(self.register(ino, handle, path, flags.write)),
            Err(RemoteError::NotFound) => {
                // The file went away on the server behind the kernel's cached name (another
                // client removed it). ESTALE makes the kernel look the name up once more,
                // which now asks the server: `open(O_CREAT)` then creates the file instead
                // of failing.
                self.meta.unsure_of_name(&path);
                self.forget_content(&path);
                Err(Errno::ESTALE.into())
            }
            Err(e) => Err(self.fail(Op::Open, e, &path, None).await),
        }
    }

    pub async fn create(&self, parent: Ino, name: &str, mode: u32, flags: OpenFlags) -> FsResult<(Entry, u64)> {
        self.may_change()?;
        let path = self.child_of(parent, name)?;
        let mut opts = OpenOptions {
            read: flags.read,
            write: true,
            append: flags.append,
            create: true,
            truncate: flags.truncate,
            exclusive: flags.exclusive,
            mode: Some(mode & 0o7777),
        };
        let attempt = Attempt::new(Op::Create, &path);
        // Whether this create proves it made the file now: only an exclusive one does
        // (without O_EXCL it may have opened the one the mount knows; one whose earlier
        // answer was lost made it then, and the mount may have found it since).
        let mut made_now = flags.exclusive;
        let (handle, attr) = match self.remote.open_stat(&path, opts).await {
            Ok(opened) => {
                // This create's own answer: an earlier one's lost answer no longer
                // speaks for what is at the name.
                self.retries.take_lost(&attempt);
                opened
            }
            Err(e) if e.outcome_unknown() && flags.exclusive => {
                self.retries.note_lost(&attempt);
                return Err(Errno::EAGAIN.into());
            }
            Err(e) => {
                let failure = self.fail(Op::Create, e, &path, None).await;
                if !(failure == Errno::EEXIST && flags.exclusive && self.retries.take_lost(&attempt)) {
                    return Err(failure);
                }
                // Our own earlier exclusive create took effect: open what it made.
                opts.exclusive = false;
                made_now = false;
                self.answered(Op::Create, &path, self.remote.open_stat(&path, opts).await).await?
            }
        };
        let entry_for = |a| if made_now { self.new_entry(&path, a) } else { self.entry(&path, a) };
        let entry = match attr {
            Some(a) => entry_for(a),
            None => match self.remote.lstat(&path).await {
                Ok(a) => entry_for(a),
                Err(e) => {
                    let _ = self.remote.close(&handle).await;
                    return Err(self.fail(Op::Create, e, &path, None).await);
                }
            },
        };
        self.meta.created(&path, entry.attr);
        let fh = self.register(entry.ino, handle, path, true);
        Ok((entry, fh))
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let file = self.file(fh)?;
        let read = match &file.state {
            FileState::Memory(data) => {
                let start = (offset as usize).min(data.len());
                let end = (offset as usize).saturating_add(size as usize).min(data.len());
                Ok(data.slice(start..end.max(start)))
            }
            FileState::Reading { handle, window, size_hint } => {
                // Read what this mount wrote: queued writes (of other handles) go first.
                self.write_behind.written(file.ino).await?;
                self.read_ahead.read(file.ino, *handle, window.as_ref(), *size_hint, offset, size).await
            }
            FileState::Writing { handle, .. } => {
                self.write_behind.written(file.ino).await?;
                self.read_ahead.read(file.ino, *handle, None, u64::MAX, offset, size).await
            }
        };
        let data = self.answered(Op::Read, &file.path, read).await?;
        self.bytes_read.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }

    /// Queues a write; it is acknowledged at once and reaches the server in order behind
    /// the writes before it. A failure is reported by a later write, fsync or close.
    #[cfg(test)]
    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.write_bytes(fh, offset, bytes::Bytes::copy_from_slice(data)).await
    }

    /// `write` of data the caller owns: split into requests without copying.
    pub async fn write_bytes(&self, fh: u64, offset: u64, data: bytes::Bytes) -> FsResult<u32> {
        self.may_change()?;
        let file = self.file(fh)?;
        let queue = file.queue().ok_or(Errno::EBADF)?;
        let len = data.len();
        self.write_behind.write(file.ino, queue, offset, data).await?;
        self.bytes_written.fetch_add(len as u64, Ordering::Relaxed);
        // Where the file is now: renamed since it was opened, the name it had may be
        // another file's.
        if let Some(path) = self.meta.grew(file.ino, offset + len as u64) {
            self.forget_content(&path);
        }
        self.read_ahead.note_write(file.ino);
        Ok(len as u32)
    }

    /// On close: the data must be on the server, or the program hears why not. Data not
    /// yet sent is kept and sent when the link allows.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let file = self.file(fh)?;
        match file.queue() {
            Some(queue) => {
                self.write_behind.file_written(queue).await?;
                let handle = queue.handle();
                if self.remote.is_local(&handle) {
                    // Kept here while the link is down: closed once it is on disk.
                    self.answered(Op::Fsync, &file.path, self.remote.fsync(&handle).await).await?;
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let file = self.file(fh)?;
        let handle = match &file.state {
            FileState::Memory(_) => return Ok(()),
            FileState::Reading { handle, .. } => *handle,
            FileState::Writing { handle, queue } => {
                self.write_behind.file_written(queue).await?;
                *handle
            }
        };
        if !self.remote.extensions().fsync && !self.remote.is_local(&handle) {
            // The data is with the server; without fsync@openssh.com it cannot be forced
            // to disk from here.
            return Ok(());
        }
        self.answered(Op::Fsync, &file.path, self.remote.fsync(&handle).await).await
    }

    /// The last close. Queued writes still reach the server, after which the remote file
    /// is closed; neither waits here: the data is already on the server (flush saw to
    /// that), so nothing the program could learn depends on the answer.
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let Some(file) = self.files.remove(fh) else { return Err(Errno::EBADF.into()) };
        match &file.state {
            FileState::Memory(_) => {}
            FileState::Reading { handle, .. } => {
                self.tasks.spawn(close_quietly(self.remote.clone(), *handle, file.path.clone()));
            }
            FileState::Writing { queue, .. } => self.write_behind.release(file.ino, queue.clone()),
        }
        Ok(())
    }

    pub async fn opendir(&self, ino: Ino) -> FsResult<u64> {
        let path = self.path_of(ino)?;
        let listing = self.start_listing(&path).await?;
        let parent = if ino == ROOT { ROOT } else { self.meta.numbered(parent(&path), FileKind::Dir) };
        self.list_ahead.entered(&path);
        Ok(self.dirs.insert(OpenDir { ino, parent, path, listing: tokio::sync::Mutex::new(listing) }))
    }

    /// The listing of `path`, from the cache or streaming from the server.
    async fn start_listing(&self, path: &str) -> FsResult<Listing> {
        self.list_ahead.joined(path).await;
        let cached = self.meta.listing(path);
        if let Some(entries) = cached {
            self.list_ahead.subdirs_of(path, &entries);
            return Ok(Listing::cached(entries));
        }
        let asked = self.meta.snapshot();
        let stream = self.answered(Op::Readdir, path, self.remote.list(path).await).await?;
        Ok(Listing::streaming(stream, asked))
    }

    /// Entries from `offset` on; each comes with the offset of the one after it. The
    /// first call answers as soon as the server's first batch is in.
    pub async fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<(u64, DirItem)>> {
        let dir = self.dirs.get(fh).ok_or(Errno::EBADF)?;
        let mut listing = dir.listing.lock().await;
        let mut out = Vec::new();
        if offset == 0 {
            out.push((1, DirItem { ino: dir.ino, kind: FileKind::Dir, name: ".".into(), attr: None }));
        }
        if offset <= 1 {
            out.push((2, DirItem { ino: dir.parent, kind: FileKind::Dir, name: "..".into(), attr: None }));
        }
        let from = (offset as usize).max(2);
        if listing.is_behind(from) {
            *listing = self.start_listing(&dir.path).await?;
        }
        let asked = listing.asked();
        let complete = |all: Vec<DirEntry>| {
            if let Some(asked) = asked {
                self.meta.remember_listing(&dir.path, &all, asked);
                self.list_ahead.subdirs_of(&dir.path, &all);
            }
        };
        let entries = self.answered(Op::Readdir, &dir.path, listing.entries_from(from, complete).await).await?;
        let names = entries.iter().map(|(_, e)| (e.name.as_str(), e.attr.kind()));
        let numbers = self.meta.numbered_entries(&dir.path, names, |ino| self.in_use(ino));
        for ((pos, e), child) in entries.into_iter().zip(numbers) {
            let kind = e.attr.kind();
            let mut attr = e.attr;
            attr.size = attr.size.max(self.write_behind.queued_end(child));
            out.push((pos as u64 + 1, DirItem { ino: child, kind, name: e.name, attr: Some(attr) }));
        }
        Ok(out)
    }

    /// The kernel keeps an entry from readdirplus as a lookup reference.
    pub fn count_lookup(&self, item: &DirItem) {
        if item.attr.is_some() {
            self.meta.count_lookup(item.ino, item.kind);
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
        self.answered(Op::Statfs, &root, self.remote.statfs(&root).await).await
    }
}

/// What the tests of the core look at inside it.
#[cfg(test)]
impl<R: Remote> Fs<R> {
    pub(super) fn has_listing(&self, dir: &str) -> bool {
        self.meta.has_listing(dir)
    }

    pub(super) fn background_tasks(&self) -> usize {
        self.tasks.len()
    }

    pub(super) fn queued_end(&self, ino: Ino) -> u64 {
        self.write_behind.queued_end(ino)
    }

    pub(super) fn holds_content(&self, path: &str) -> bool {
        self.small_files.holds(path)
    }
}
