//! The remote filesystem as the fs layer sees it: plain async operations on paths and
//! handles, with no SSH types. `sftp` implements it over the link; `fake` (tests only)
//! implements it in memory.

mod identity;
pub use identity::moved;
pub mod journaled;
pub mod name;
pub mod offline;
pub mod sftp;

#[cfg(test)]
pub mod fake;

use std::future::Future;

pub use bytes::Bytes;

/// The directory `path` is in (`/` for a name at the top).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => "/",
    }
}

/// File type bits as in `st_mode` (`S_IFMT`).
pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;

/// Writes out at once per file where the path's latency needs them: 4 MiB of 64 KiB
/// writes, more than OpenSSH's 2 MiB channel window, so that the window is the limit.
pub const DEEP_WRITES: usize = 64;
/// Writes out at once per file on a path with next to no latency (loopback, a LAN),
/// where the server's CPU is the limit: 1 MiB. Fewer bytes waiting in the server's
/// buffers cost it less per byte (512 MiB: 0.79 s with 16 out, 0.87 s with 32).
pub const SHALLOW_WRITES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// Attributes of a remote file, as far as SFTP v3 carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attr {
    pub size: u64,
    /// Full `st_mode`: type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: u32,
    pub mtime: u32,
}

impl Attr {
    pub fn kind(&self) -> FileKind {
        match self.mode & S_IFMT {
            S_IFDIR => FileKind::Dir,
            S_IFREG => FileKind::File,
            S_IFLNK => FileKind::Symlink,
            _ => FileKind::Other,
        }
    }
}

/// A change of attributes; `None` leaves a field as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetAttr {
    pub size: Option<u64>,
    /// Permission bits only.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// SFTP sets access and modification time together.
    pub times: Option<(u32, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub attr: Attr,
}

/// A directory being listed: batches of entries as the server sends them ("." and ".."
/// left out), then the end. Dropping it stops the listing.
pub struct DirStream {
    batches: tokio::sync::mpsc::Receiver<Result<Vec<DirEntry>>>,
    /// What was listed so far, and who hears the whole listing once it ends well.
    recorder: Option<(Vec<DirEntry>, Recorder)>,
}

type Recorder = Box<dyn FnOnce(&[DirEntry]) + Send>;

impl std::fmt::Debug for DirStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirStream").field("recording", &self.recorder.is_some()).finish()
    }
}

impl DirStream {
    /// A listing whose batches arrive on `batches`; the sender closing is the end.
    pub fn new(batches: tokio::sync::mpsc::Receiver<Result<Vec<DirEntry>>>) -> DirStream {
        DirStream { batches, recorder: None }
    }

    /// A listing that is over before it starts: `entries`, then the end.
    pub fn of(entries: Vec<DirEntry>) -> DirStream {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let _ = tx.try_send(Ok(entries));
        DirStream::new(rx)
    }

    /// Every entry to its end, or the first failure.
    pub async fn collect(mut self) -> Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        while let Some(batch) = self.next().await {
            out.extend(batch?);
        }
        Ok(out)
    }

    /// This listing, whose every entry `heard` is given once it has ended without a
    /// failure; a listing dropped before its end, or failed, is not heard.
    pub fn recording(self, heard: impl FnOnce(&[DirEntry]) + Send + 'static) -> DirStream {
        DirStream { batches: self.batches, recorder: Some((Vec::new(), Box::new(heard))) }
    }

    /// The next batch, or `None` at the end.
    pub async fn next(&mut self) -> Option<Result<Vec<DirEntry>>> {
        let got = self.batches.recv().await;
        self.record(got)
    }

    /// The next batch if it is already here (`Some(Some(..))`), the end if that is
    /// (`Some(None)`), or `None` when neither has arrived yet.
    pub fn ready(&mut self) -> Option<Option<Result<Vec<DirEntry>>>> {
        match self.batches.try_recv() {
            Ok(batch) => Some(self.record(Some(batch))),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => Some(self.record(None)),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => None,
        }
    }

    fn record(&mut self, got: Option<Result<Vec<DirEntry>>>) -> Option<Result<Vec<DirEntry>>> {
        match &got {
            Some(Ok(batch)) => {
                if let Some((seen, _)) = &mut self.recorder {
                    seen.extend(batch.iter().cloned());
                }
            }
            Some(Err(_)) => self.recorder = None,
            None => {
                if let Some((seen, heard)) = self.recorder.take() {
                    heard(&seen);
                }
            }
        }
        got
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenOptions {
    pub read: bool,
    pub write: bool,
    pub append: bool,
    pub create: bool,
    pub truncate: bool,
    pub exclusive: bool,
    /// Permission bits for a file being created.
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatFs {
    pub block_size: u64,
    pub fragment_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_avail: u64,
    pub files: u64,
    pub files_free: u64,
    pub files_avail: u64,
    pub name_max: u64,
    pub read_only: bool,
}

impl StatFs {
    /// What to report when the server cannot tell: a large, empty filesystem.
    pub fn unknown() -> StatFs {
        StatFs {
            block_size: 4096,
            fragment_size: 4096,
            blocks: 1 << 30,
            blocks_free: 1 << 30,
            blocks_avail: 1 << 30,
            files: 1 << 20,
            files_free: 1 << 20,
            files_avail: 1 << 20,
            name_max: 255,
            read_only: false,
        }
    }
}

/// An open remote file. Opaque to the fs layer; it stays valid across reconnects (the
/// remote layer opens the file again on the new connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handle(pub u64);

/// What went wrong with a remote operation. SFTP v3 reports few distinct codes, so the fs
/// layer refines `ServerFailure` by context (see `fs::errno`).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RemoteError {
    #[error("no such file")]
    NotFound,
    #[error("permission denied")]
    PermissionDenied,
    /// The server's generic failure (`SSH_FX_FAILURE`), which folds most causes.
    #[error("operation failed: {0}")]
    ServerFailure(String),
    #[error("bad message: {0}")]
    BadMessage(String),
    #[error("operation not supported by the server")]
    Unsupported,
    #[error("end of file")]
    Eof,
    /// The link is down; the request was not sent.
    #[error("link down: {0}")]
    Unavailable(String),
    /// The link broke while the request was out: it may or may not have been applied.
    #[error("connection lost: {0}")]
    Disconnected(String),
    /// The request outlived its deadline: it may or may not have been applied.
    #[error("no answer within the request timeout")]
    Timeout,
    /// The link has given up for good (host key changed, remote path gone, ...).
    #[error("link failed: {0}")]
    LinkFailed(String),
    /// Every connection holds as many open files as it safely can.
    #[error("too many files open on the server")]
    TooManyOpen,
    /// An open file could not be reached again after a reconnect, for good (see
    /// `identity`): what is meant for it goes nowhere else.
    #[error("{0}")]
    FileLost(String),
    /// The offline journal has no room for the change (its quota is full).
    #[error("no room left in the offline journal")]
    NoSpace,
}

impl RemoteError {
    /// The request may have reached the server before the link broke.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, RemoteError::Disconnected(_) | RemoteError::Timeout)
    }

    /// The link, not the server, failed the request.
    pub fn is_link(&self) -> bool {
        matches!(self, RemoteError::Unavailable(_) | RemoteError::Disconnected(_) | RemoteError::Timeout)
    }
}

pub type Result<T> = std::result::Result<T, RemoteError>;

/// Server capabilities learnt from the SFTP version exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Extensions {
    pub posix_rename: bool,
    pub hardlink: bool,
    pub statvfs: bool,
    pub fsync: bool,
    /// `lsetstat@openssh.com`: attributes of a symlink itself.
    pub lsetstat: bool,
}

/// Remote filesystem operations. Paths are absolute remote paths.
pub trait Remote: Send + Sync + 'static {
    fn extensions(&self) -> Extensions;
    /// Whether requests can be sent right now.
    fn is_available(&self) -> bool;
    /// Resolves once requests can be sent again (`Ok`), or the link has failed for good.
    fn wait_available(&self) -> impl Future<Output = Result<()>> + Send;
    /// Resolves once requests can no longer be sent (the link went down or failed).
    fn wait_unavailable(&self) -> impl Future<Output = ()> + Send;
    /// How long the link has had requests out and received nothing (near zero while it
    /// moves data, however slowly); `None` when it has nothing out.
    fn stalled_for(&self) -> Option<std::time::Duration>;
    /// The canonical absolute form of `path`; relative paths are relative to the home
    /// directory the server gave the session.
    fn realpath(&self, path: &str) -> impl Future<Output = Result<String>> + Send;
    fn stat(&self, path: &str) -> impl Future<Output = Result<Attr>> + Send;
    fn lstat(&self, path: &str) -> impl Future<Output = Result<Attr>> + Send;
    /// The attributes of an open file, through its handle.
    fn fstat(&self, handle: &Handle) -> impl Future<Output = Result<Attr>> + Send;
    fn setstat(&self, path: &str, set: SetAttr) -> impl Future<Output = Result<()>> + Send;
    fn fsetstat(&self, handle: &Handle, set: SetAttr) -> impl Future<Output = Result<()>> + Send;
    /// Changes a symlink's own attributes, never its target's (needs `Extensions::lsetstat`).
    fn lsetstat(&self, path: &str, set: SetAttr) -> impl Future<Output = Result<()>> + Send;
    /// Starts listing `path`; entries come in batches, so a big directory needs neither
    /// waiting for nor holding all of it.
    fn list(&self, path: &str) -> impl Future<Output = Result<DirStream>> + Send;

    fn open(&self, path: &str, opts: OpenOptions) -> impl Future<Output = Result<Handle>> + Send;
    fn close(&self, handle: &Handle) -> impl Future<Output = Result<()>> + Send;
    /// Reads up to `len` bytes; an empty result means end of file.
    fn read(&self, handle: &Handle, offset: u64, len: u32) -> impl Future<Output = Result<Bytes>> + Send;
    fn write(&self, handle: &Handle, offset: u64, data: Bytes) -> impl Future<Output = Result<()>> + Send;
    fn fsync(&self, handle: &Handle) -> impl Future<Output = Result<()>> + Send;
    fn mkdir(&self, path: &str, mode: u32) -> impl Future<Output = Result<()>> + Send;
    fn rmdir(&self, path: &str) -> impl Future<Output = Result<()>> + Send;
    fn remove(&self, path: &str) -> impl Future<Output = Result<()>> + Send;
    /// Renames, replacing `to` atomically where the server offers `posix-rename`; without
    /// it, a plain SFTP rename, which refuses an existing `to`.
    fn rename(&self, from: &str, to: &str) -> impl Future<Output = Result<()>> + Send;
    fn symlink(&self, target: &str, link: &str) -> impl Future<Output = Result<()>> + Send;
    fn readlink(&self, path: &str) -> impl Future<Output = Result<String>> + Send;
    fn hardlink(&self, existing: &str, new: &str) -> impl Future<Output = Result<()>> + Send;
    fn statfs(&self, path: &str) -> impl Future<Output = Result<StatFs>> + Send;

    /// Whether a local store answers while the link is down.
    /// Applies on the server the changes kept while the link was down, if any.
    fn replay(&self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    /// Whether `handle` is served here, without the link (a file written while down,
    /// kept in the offline journal): waiting on it never waits for the link.
    fn is_local(&self, _handle: &Handle) -> bool {
        false
    }

    fn serves_offline(&self) -> bool {
        false
    }

    /// Paths answered from a local store while the link was down, since last asked:
    /// what the mount and the kernel learnt of them must be asked again of the server.
    fn served_offline(&self) -> Vec<String> {
        Vec::new()
    }

    /// What an open file was as it opened (the server's stat sent with the open), when
    /// the remote knows.
    fn opened_as(&self, _handle: &Handle) -> Option<Attr> {
        None
    }

    /// Largest read to ask for in one request.
    fn read_size(&self) -> u32 {
        64 * 1024
    }

    /// Largest write to send in one request.
    fn write_size(&self) -> u32 {
        64 * 1024
    }

    /// How many writes to `handle` to keep out at once.
    fn write_depth(&self, _handle: &Handle) -> usize {
        DEEP_WRITES
    }

    // Operations followed by a stat of what they made or changed. The SFTP remote sends
    // both requests at once (the server answers them in order), saving a round trip.
    // `Ok(None)`: the operation succeeded but the stat did not.

    fn open_stat(&self, path: &str, opts: OpenOptions) -> impl Future<Output = Result<(Handle, Option<Attr>)>> + Send {
        async move {
            let h = self.open(path, opts).await?;
            Ok((h, self.lstat(path).await.ok()))
        }
    }

    fn mkdir_stat(&self, path: &str, mode: u32) -> impl Future<Output = Result<Option<Attr>>> + Send {
        async move {
            self.mkdir(path, mode).await?;
            Ok(self.lstat(path).await.ok())
        }
    }

    fn symlink_stat(&self, target: &str, link: &str) -> impl Future<Output = Result<Option<Attr>>> + Send {
        async move {
            self.symlink(target, link).await?;
            Ok(self.lstat(link).await.ok())
        }
    }

    fn setstat_stat(&self, path: &str, set: SetAttr) -> impl Future<Output = Result<Option<Attr>>> + Send {
        async move {
            self.setstat(path, set).await?;
            Ok(self.lstat(path).await.ok())
        }
    }

    fn fsetstat_stat(
        &self,
        handle: &Handle,
        path: &str,
        set: SetAttr,
    ) -> impl Future<Output = Result<Option<Attr>>> + Send {
        async move {
            self.fsetstat(handle, set).await?;
            Ok(self.lstat(path).await.ok())
        }
    }
}

/// Closes a remote file without anyone waiting on the answer: nothing a program could
/// learn from it is still to come (its data is on the server by then).
pub async fn close_quietly<R: Remote>(remote: std::sync::Arc<R>, handle: Handle, path: String) {
    if let Err(e) = remote.close(&handle).await {
        if !e.is_link() {
            tracing::debug!(path, %e, "close failed");
        }
    }
}
