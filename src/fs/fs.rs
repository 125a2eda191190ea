//! The filesystem core: POSIX operations on inode numbers and handles, served by a
//! [`Remote`]. It knows nothing of the kernel (see `fuse.rs`) or of SSH (see `remote`).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::future::try_join_all;

use super::errno::{self, Errno, Facts, Op};
use super::handle::{DirItem, Handles, OpenDir, OpenFile};
use super::inode::{Ino, Inodes, ROOT};
use crate::remote::{Attr, FileKind, OpenOptions, Remote, RemoteError, SetAttr, StatFs};

pub type FsResult<T> = Result<T, Errno>;

/// Largest single SFTP read or write: OpenSSH's server caps reads at 256 KiB, and smaller
/// requests in flight together keep the pipe full.
pub const CHUNK: u32 = 64 * 1024;
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

pub struct Fs<R: Remote> {
    remote: Arc<R>,
    inodes: Mutex<Inodes>,
    files: Handles<OpenFile>,
    dirs: Handles<OpenDir>,
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
    pub fn new(remote: Arc<R>, root: &str) -> Fs<R> {
        Fs { remote, inodes: Mutex::new(Inodes::new(root)), files: Handles::default(), dirs: Handles::default() }
    }

    pub fn open_handles(&self) -> usize {
        self.files.len() + self.dirs.len()
    }

    fn inodes(&self) -> MutexGuard<'_, Inodes> {
        // Every update of the table is a few map operations; a panic cannot tear one.
        self.inodes.lock().unwrap_or_else(|e| e.into_inner())
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

    pub async fn lookup(&self, parent: Ino, name: &str) -> FsResult<Entry> {
        let path = self.child_of(parent, name)?;
        match self.remote.lstat(&path).await {
            Ok(attr) => Ok(self.entry(&path, attr)),
            Err(e) => Err(self.fail(Op::Lookup, e, &path, None).await),
        }
    }

    pub fn forget(&self, ino: Ino, n: u64) {
        self.inodes().forget(ino, n);
    }

    pub async fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        let path = self.path_of(ino)?;
        self.remote.lstat(&path).await.map_err(|e| errno::direct(Op::Getattr, &e).unwrap_or(Errno::EIO))
    }

    pub async fn setattr(&self, ino: Ino, fh: Option<u64>, change: AttrChange) -> FsResult<Attr> {
        let path = self.path_of(ino)?;
        let mut set = SetAttr {
            size: change.size,
            mode: change.mode.map(|m| m & 0o7777),
            uid: change.uid,
            gid: change.gid,
            times: None,
        };
        if change.atime.is_some() || change.mtime.is_some() {
            // SFTP sets both times at once: keep the one not being changed.
            let cur =
                self.remote.lstat(&path).await.map_err(|e| errno::direct(Op::Setattr, &e).unwrap_or(Errno::EIO))?;
            let pick = |t: Option<TimeSet>, keep: u32| match t {
                Some(TimeSet::Now) => now_secs(),
                Some(TimeSet::At(s)) => s,
                None => keep,
            };
            set.times = Some((pick(change.atime, cur.atime), pick(change.mtime, cur.mtime)));
        }
        let op = if set.uid.is_some() || set.gid.is_some() { Op::Chown } else { Op::Setattr };
        // A size change on an open handle must work even when the file's mode no longer
        // allows opening it for writing (ftruncate after chmod).
        let file = fh.and_then(|fh| self.files.get(fh)).filter(|f| f.writable);
        let res = match &file {
            Some(f) => self.remote.fsetstat(&f.handle, set).await,
            None => self.remote.setstat(&path, set).await,
        };
        if let Err(e) = res {
            return Err(self.fail(op, e, &path, None).await);
        }
        self.getattr(ino).await
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
        if let Err(e) = self.remote.mkdir(&path, mode & 0o7777).await {
            return Err(self.fail(Op::Mkdir, e, &path, None).await);
        }
        self.created(&path, Op::Mkdir).await
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
        match self.remote.remove(&path).await {
            Ok(()) => {
                self.inodes().remove_path(&path);
                Ok(())
            }
            Err(e) => Err(self.fail(Op::Unlink, e, &path, None).await),
        }
    }

    pub async fn rmdir(&self, parent: Ino, name: &str) -> FsResult<()> {
        let path = self.child_of(parent, name)?;
        match self.remote.rmdir(&path).await {
            Ok(()) => {
                self.inodes().remove_path(&path);
                Ok(())
            }
            Err(e) => Err(self.fail(Op::Rmdir, e, &path, None).await),
        }
    }

    pub async fn symlink(&self, parent: Ino, name: &str, target: &str) -> FsResult<Entry> {
        let path = self.child_of(parent, name)?;
        if let Err(e) = self.remote.symlink(target, &path).await {
            return Err(self.fail(Op::Symlink, e, &path, None).await);
        }
        self.created(&path, Op::Symlink).await
    }

    pub async fn rename(&self, parent: Ino, name: &str, new_parent: Ino, new_name: &str, flags: u32) -> FsResult<()> {
        let from = self.child_of(parent, name)?;
        let to = self.child_of(new_parent, new_name)?;
        if flags & libc::RENAME_EXCHANGE != 0 {
            // SFTP has no way to swap two names atomically.
            return Err(Errno::EINVAL);
        }
        if flags & libc::RENAME_NOREPLACE != 0 && self.remote.lstat(&to).await.is_ok() {
            return Err(Errno::EEXIST);
        }
        if let Err(e) = self.remote.rename(&from, &to).await {
            return Err(self.fail(Op::Rename, e, &to, Some(&from)).await);
        }
        self.inodes().rename(&from, &to);
        Ok(())
    }

    pub async fn link(&self, ino: Ino, new_parent: Ino, new_name: &str) -> FsResult<Entry> {
        let existing = self.path_of(ino)?;
        let path = self.child_of(new_parent, new_name)?;
        if !self.remote.extensions().hardlink {
            return Err(Errno::EOPNOTSUPP);
        }
        if let Err(e) = self.remote.hardlink(&existing, &path).await {
            return Err(self.fail(Op::Link, e, &path, Some(&existing)).await);
        }
        self.created(&path, Op::Link).await
    }

    pub async fn open(&self, ino: Ino, flags: OpenFlags) -> FsResult<u64> {
        let path = self.path_of(ino)?;
        let opts = OpenOptions {
            read: flags.read,
            write: flags.write,
            append: flags.append,
            truncate: flags.truncate,
            ..OpenOptions::default()
        };
        match self.remote.open(&path, opts).await {
            Ok(handle) => Ok(self.files.insert(OpenFile { handle, path, writable: flags.write })),
            Err(e) => Err(self.fail(Op::Open, e, &path, None).await),
        }
    }

    pub async fn create(&self, parent: Ino, name: &str, mode: u32, flags: OpenFlags) -> FsResult<(Entry, u64)> {
        let path = self.child_of(parent, name)?;
        let opts = OpenOptions {
            read: flags.read,
            write: true,
            append: flags.append,
            create: true,
            truncate: flags.truncate,
            exclusive: flags.exclusive,
            mode: Some(mode & 0o7777),
        };
        let handle = match self.remote.open(&path, opts).await {
            Ok(h) => h,
            Err(e) => return Err(self.fail(Op::Create, e, &path, None).await),
        };
        let entry = match self.remote.lstat(&path).await {
            Ok(attr) => self.entry(&path, attr),
            Err(e) => {
                let _ = self.remote.close(&handle).await;
                return Err(self.fail(Op::Create, e, &path, None).await);
            }
        };
        let fh = self.files.insert(OpenFile { handle, path, writable: true });
        Ok((entry, fh))
    }

    fn file(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.files.get(fh).ok_or(Errno::EBADF)
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let file = self.file(fh)?;
        let chunks = (0..size.div_ceil(CHUNK)).map(|i| {
            let off = offset + u64::from(i * CHUNK);
            let len = CHUNK.min(size - i * CHUNK);
            self.read_exact_or_eof(&file, off, len)
        });
        let parts = match try_join_all(chunks).await {
            Ok(p) => p,
            Err(e) => return Err(self.fail(Op::Read, e, &file.path, None).await),
        };
        let mut out = Vec::with_capacity(size as usize);
        for part in parts {
            let short = part.len() < part.capacity().min(CHUNK as usize) || part.is_empty();
            out.extend_from_slice(&part);
            if short {
                break;
            }
        }
        Ok(out)
    }

    /// Reads `len` bytes at `offset`, re-asking after a short answer, stopping at EOF.
    async fn read_exact_or_eof(&self, file: &OpenFile, offset: u64, len: u32) -> Result<Vec<u8>, RemoteError> {
        let mut buf = Vec::with_capacity(len as usize);
        while (buf.len() as u32) < len {
            let got = self.remote.read(&file.handle, offset + buf.len() as u64, len - buf.len() as u32).await?;
            if got.is_empty() {
                break;
            }
            buf.extend_from_slice(&got);
        }
        buf.shrink_to_fit();
        Ok(buf)
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let file = self.file(fh)?;
        let writes = data
            .chunks(CHUNK as usize)
            .enumerate()
            .map(|(i, c)| self.remote.write(&file.handle, offset + (i * CHUNK as usize) as u64, c));
        if let Err(e) = try_join_all(writes).await {
            return Err(self.fail(Op::Write, e, &file.path, None).await);
        }
        Ok(data.len() as u32)
    }

    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        // Writes reach the server before `write` returns, so there is nothing to push.
        self.file(fh).map(|_| ())
    }

    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let file = self.file(fh)?;
        if !self.remote.extensions().fsync {
            // The data is with the server already; without fsync@openssh.com it cannot
            // be forced to disk from here.
            return Ok(());
        }
        match self.remote.fsync(&file.handle).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(Op::Fsync, e, &file.path, None).await),
        }
    }

    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let Some(file) = self.files.remove(fh) else { return Err(Errno::EBADF) };
        match self.remote.close(&file.handle).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(Op::Release, e, &file.path, None).await),
        }
    }

    pub async fn opendir(&self, ino: Ino) -> FsResult<u64> {
        let path = self.path_of(ino)?;
        let list = match self.remote.read_dir(&path).await {
            Ok(l) => l,
            Err(e) => return Err(self.fail(Op::Readdir, e, &path, None).await),
        };
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
            entries.push(DirItem { ino: child, kind, name: e.name, attr: Some(e.attr) });
        }
        drop(inodes);
        Ok(self.dirs.insert(OpenDir { entries }))
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
