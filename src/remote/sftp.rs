//! [`Remote`] over SFTP: each operation is one or a few SFTP requests on a session taken
//! from the link, with the SFTP status turned into a [`RemoteError`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags as SftpOpenFlags, Packet, StatusCode};

use futures_util::stream::{FuturesOrdered, StreamExt};

use super::{
    Attr, Bytes, DirEntry, DirStream, Extensions, Handle, OpenOptions, Remote, RemoteError, Result, SetAttr, StatFs,
};
use crate::link::{Link, SftpConn, Unavailable};
use crate::sync::lock;
use tokio::sync::OwnedSemaphorePermit;

const ST_RDONLY: u64 = 1;
/// READDIRs out at once on one listing.
const READDIRS_IN_FLIGHT: usize = 16;
/// Batches a listing fetches ahead of the one who reads it.
const LIST_BATCHES_AHEAD: usize = 16;

pub struct SftpRemote {
    link: Arc<Link>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_handle: AtomicU64,
    /// Turns taken by opens over the connections.
    next_open: AtomicUsize,
    /// What the last connection announced, for answers while the link is down.
    known_extensions: Mutex<Extensions>,
}

/// What is needed to open a file again on a new connection.
struct OpenFile {
    path: String,
    opts: OpenOptions,
    /// The data lane the file was opened on (counted among the link's data lanes):
    /// where its requests go unless told otherwise.
    home: usize,
    /// The server's handles, by lane, with the connection generation each belongs to and
    /// the slot it takes on that connection.
    live: tokio::sync::Mutex<HashMap<usize, (u64, String, OwnedSemaphorePermit)>>,
}

impl SftpRemote {
    pub fn new(link: Arc<Link>) -> SftpRemote {
        let known = link.conn().map(|c| extensions_from(&c.extensions)).unwrap_or_default();
        SftpRemote {
            link,
            files: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            next_open: AtomicUsize::new(0),
            known_extensions: Mutex::new(known),
        }
    }

    fn conn(&self) -> Result<Arc<SftpConn>> {
        self.link.conn().map_err(RemoteError::from)
    }

    /// Maps a result, telling the link when the connection itself failed.
    fn check<T>(&self, conn: &SftpConn, r: std::result::Result<T, SftpError>) -> Result<T> {
        conn.touch();
        r.map_err(|e| report(&self.link, conn, e))
    }

    fn file(&self, h: &Handle) -> Result<Arc<OpenFile>> {
        lock(&self.files).get(&h.0).cloned().ok_or_else(|| RemoteError::ServerFailure("unknown handle".into()))
    }

    /// The connection for `h`'s requests: always the one it was opened on, whatever lane
    /// the caller names. Opening the file again by name on another connection could reach
    /// another file (renamed or replaced since), none at all (unlinked), or be refused
    /// (a file created 0444, or chmod 000 since): the handle `open` returned is the only
    /// sure way to the file. Its requests are pipelined on that connection instead.
    fn file_conn(&self, h: &Handle, _lane: Option<usize>) -> Result<Arc<SftpConn>> {
        let home = self.file(h)?.home;
        self.link.data_conn(home).map_err(RemoteError::from)
    }

    /// The server's handle for `h` on `conn`, opening the file again by name when the
    /// connection it was opened on was replaced after a reconnect: the old handle died
    /// with it, and the name is all that is left.
    /// `Ok(None)`: that connection has no handle slot free.
    async fn live_handle_opt(&self, conn: &SftpConn, h: &Handle) -> Result<Option<String>> {
        let file = self.file(h)?;
        let mut live = file.live.lock().await;
        if let Some((generation, handle, _)) = live.get(&conn.lane) {
            if *generation == conn.generation {
                return Ok(Some(handle.clone()));
            }
        }
        // A handle of an older connection died with it, and so did its slot.
        live.remove(&conn.lane);
        let Ok(slot) = conn.handle_slots.clone().try_acquire_owned() else { return Ok(None) };
        // Reopening must not create, truncate or fail on existence again.
        let opts = OpenOptions { create: false, truncate: false, exclusive: false, ..file.opts };
        let r = conn.sftp.open(file.path.as_str(), open_flags(opts), FileAttributes::empty()).await;
        let handle = self.check(conn, r)?.handle;
        tracing::debug!(path = %file.path, lane = conn.lane, "opened the file on another connection");
        live.insert(conn.lane, (conn.generation, handle.clone(), slot));
        Ok(Some(handle))
    }

    async fn live_handle(&self, conn: &SftpConn, h: &Handle) -> Result<String> {
        self.live_handle_opt(conn, h).await?.ok_or(RemoteError::TooManyOpen)
    }

    /// The connection and server handle for `h`'s requests (on its own connection).
    async fn handle_on(&self, h: &Handle, lane: Option<usize>) -> Result<(Arc<SftpConn>, String)> {
        let home = self.file_conn(h, lane)?;
        let handle = self.live_handle(&home, h).await?;
        Ok((home, handle))
    }

    /// A connection to open a file on (`data`: one of the data lanes, where the file's
    /// reads and writes will go; else the least busy), with a handle slot taken on it;
    /// returns its data lane too. The next in turn, or any with a slot free.
    fn conn_for_open(&self, data: bool) -> Result<(usize, Arc<SftpConn>, OwnedSemaphorePermit)> {
        let turn = self.next_open.fetch_add(1, Ordering::Relaxed);
        let first = if data { self.link.data_conn(turn)? } else { self.conn()? };
        if let Ok(slot) = first.handle_slots.clone().try_acquire_owned() {
            return Ok((turn, first, slot));
        }
        let lanes = if data { self.link.data_lanes() } else { self.link.lanes() };
        for k in (0..lanes).map(|i| turn.wrapping_add(i) % lanes) {
            let c = if data { self.link.data_conn(k)? } else { self.link.conn_at(k)? };
            if let Ok(slot) = c.handle_slots.clone().try_acquire_owned() {
                return Ok((k, c, slot));
            }
        }
        Err(RemoteError::TooManyOpen)
    }
}

impl SftpRemote {
    async fn read_lane_opt(&self, handle: &Handle, lane: Option<usize>, offset: u64, len: u32) -> Result<Bytes> {
        let (c, h) = self.handle_on(handle, lane).await?;
        match c.direct.read(&h, offset, len).await {
            Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => {
                c.touch();
                Ok(Bytes::new())
            }
            r => self.check(&c, r),
        }
    }

    async fn write_lane_opt(&self, handle: &Handle, lane: Option<usize>, offset: u64, data: Bytes) -> Result<()> {
        let (c, h) = self.handle_on(handle, lane).await?;
        let r = c.direct.write(&h, offset, data).await;
        self.check(&c, r)
    }

    /// Numbers a server handle so it can be opened again after a reconnect.
    fn register(
        &self,
        path: &str,
        opts: OpenOptions,
        (home, conn, slot): (usize, &SftpConn, OwnedSemaphorePermit),
        handle: String,
    ) -> Handle {
        let id = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let live = HashMap::from([(conn.lane, (conn.generation, handle, slot))]);
        let file = OpenFile { path: path.to_string(), opts, home, live: tokio::sync::Mutex::new(live) };
        lock(&self.files).insert(id, Arc::new(file));
        Handle(id)
    }
}

fn open_flags(o: OpenOptions) -> SftpOpenFlags {
    let mut flags = SftpOpenFlags::empty();
    // APPEND is left out on purpose: the kernel gives every write its offset, and an
    // append-mode handle would make a replayed write land twice.
    for (on, f) in [
        (o.read, SftpOpenFlags::READ),
        (o.write, SftpOpenFlags::WRITE),
        (o.create, SftpOpenFlags::CREATE),
        (o.truncate, SftpOpenFlags::TRUNCATE),
        (o.exclusive, SftpOpenFlags::EXCLUDE),
    ] {
        if on {
            flags |= f;
        }
    }
    flags
}

/// Reads which OpenSSH extensions the server announced in its version reply.
pub fn extensions_from(announced: &HashMap<String, String>) -> Extensions {
    let has = |name: &str, version: &str| announced.get(name).is_some_and(|v| v == version);
    Extensions {
        posix_rename: has("posix-rename@openssh.com", "1"),
        hardlink: has("hardlink@openssh.com", "1"),
        statvfs: has("statvfs@openssh.com", "2"),
        fsync: has("fsync@openssh.com", "1"),
        lsetstat: has("lsetstat@openssh.com", "1"),
    }
}

impl From<Unavailable> for RemoteError {
    fn from(e: Unavailable) -> RemoteError {
        match e {
            Unavailable::Down(m) => RemoteError::Unavailable(m),
            Unavailable::Failed(m) => RemoteError::LinkFailed(m),
        }
    }
}

/// Maps an error, telling `link` when the connection itself failed.
fn report(link: &Link, conn: &SftpConn, e: SftpError) -> RemoteError {
    let e = map_err(e);
    if e.outcome_unknown() {
        link.report_failure(conn.generation, &e.to_string());
    }
    e
}

fn map_err(err: SftpError) -> RemoteError {
    match err {
        SftpError::Status(s) => match s.status_code {
            StatusCode::NoSuchFile => RemoteError::NotFound,
            StatusCode::PermissionDenied => RemoteError::PermissionDenied,
            StatusCode::BadMessage => RemoteError::BadMessage(s.error_message),
            StatusCode::OpUnsupported => RemoteError::Unsupported,
            StatusCode::Eof => RemoteError::Eof,
            StatusCode::NoConnection | StatusCode::ConnectionLost => RemoteError::Disconnected(s.error_message),
            StatusCode::Failure | StatusCode::Ok => RemoteError::ServerFailure(s.error_message),
        },
        SftpError::Timeout => RemoteError::Timeout,
        SftpError::Limited(m) => RemoteError::BadMessage(m),
        SftpError::UnexpectedPacket => RemoteError::ServerFailure("unexpected reply from the server".into()),
        SftpError::IO(m) | SftpError::UnexpectedBehavior(m) => RemoteError::Disconnected(m),
    }
}

fn attr_from(a: &FileAttributes) -> Attr {
    Attr {
        size: a.size.unwrap_or(0),
        mode: a.permissions.unwrap_or(0),
        uid: a.uid.unwrap_or(0),
        gid: a.gid.unwrap_or(0),
        atime: a.atime.unwrap_or(0),
        mtime: a.mtime.unwrap_or(0),
    }
}

fn attrs_to(set: SetAttr, uid_gid_now: Option<(u32, u32)>) -> FileAttributes {
    let mut a = FileAttributes::empty();
    a.size = set.size;
    a.permissions = set.mode;
    if set.uid.is_some() || set.gid.is_some() {
        // SFTP sends uid and gid as a pair; keep whichever is not being changed.
        let (u, g) = uid_gid_now.unwrap_or((0, 0));
        a.uid = Some(set.uid.unwrap_or(u));
        a.gid = Some(set.gid.unwrap_or(g));
    }
    if let Some((at, mt)) = set.times {
        a.atime = Some(at);
        a.mtime = Some(mt);
    }
    a
}

fn status_of(packet: Packet) -> Result<()> {
    match packet {
        Packet::Status(s) if s.status_code == StatusCode::Ok => Ok(()),
        Packet::Status(s) => Err(map_err(SftpError::Status(s))),
        _ => Err(RemoteError::ServerFailure("unexpected reply from the server".into())),
    }
}

fn two_strings(a: &str, b: &str) -> Result<Vec<u8>> {
    russh_sftp::ser::to_bytes(&(a, b)).map(|b| b.to_vec()).map_err(|e| RemoteError::BadMessage(e.to_string()))
}

impl Remote for SftpRemote {
    fn extensions(&self) -> Extensions {
        match self.link.conn() {
            Ok(c) => {
                let ext = extensions_from(&c.extensions);
                *lock(&self.known_extensions) = ext;
                ext
            }
            Err(_) => *lock(&self.known_extensions),
        }
    }

    fn is_available(&self) -> bool {
        self.link.conn().is_ok()
    }

    async fn wait_unavailable(&self) {
        self.link.wait_not_up().await
    }

    fn stalled_for(&self) -> Option<std::time::Duration> {
        self.link.stalled_for()
    }

    async fn wait_available(&self) -> Result<()> {
        self.link.wait_up().await.map_err(RemoteError::from)
    }

    async fn realpath(&self, path: &str) -> Result<String> {
        let c = self.conn()?;
        let r = c.sftp.realpath(path).await;
        let name = self.check(&c, r)?;
        name.files
            .into_iter()
            .next()
            .map(|f| f.filename)
            .ok_or_else(|| RemoteError::ServerFailure("empty realpath reply".into()))
    }

    async fn stat(&self, path: &str) -> Result<Attr> {
        let c = self.conn()?;
        let r = c.sftp.stat(path).await;
        self.check(&c, r).map(|a| attr_from(&a.attrs))
    }

    async fn lstat(&self, path: &str) -> Result<Attr> {
        let c = self.conn()?;
        let r = c.sftp.lstat(path).await;
        self.check(&c, r).map(|a| attr_from(&a.attrs))
    }

    async fn fstat(&self, handle: &Handle) -> Result<Attr> {
        let (c, h) = self.handle_on(handle, None).await?;
        let r = c.sftp.fstat(h).await;
        self.check(&c, r).map(|a| attr_from(&a.attrs))
    }

    async fn setstat(&self, path: &str, set: SetAttr) -> Result<()> {
        let c = self.conn()?;
        let owner = if set.uid.is_some() != set.gid.is_some() {
            let r = c.sftp.lstat(path).await;
            self.check(&c, r).ok().map(|a| (a.attrs.uid.unwrap_or(0), a.attrs.gid.unwrap_or(0)))
        } else {
            None
        };
        let r = c.sftp.setstat(path, attrs_to(set, owner)).await;
        self.check(&c, r).map(|_| ())
    }

    async fn fsetstat(&self, handle: &Handle, set: SetAttr) -> Result<()> {
        let c = self.file_conn(handle, None)?;
        let h = self.live_handle(&c, handle).await?;
        let owner = if set.uid.is_some() != set.gid.is_some() {
            let r = c.sftp.fstat(h.clone()).await;
            self.check(&c, r).ok().map(|a| (a.attrs.uid.unwrap_or(0), a.attrs.gid.unwrap_or(0)))
        } else {
            None
        };
        let r = c.sftp.fsetstat(h, attrs_to(set, owner)).await;
        self.check(&c, r).map(|_| ())
    }

    async fn lsetstat(&self, path: &str, set: SetAttr) -> Result<()> {
        let c = self.conn()?;
        let owner = if set.uid.is_some() != set.gid.is_some() {
            let r = c.sftp.lstat(path).await;
            self.check(&c, r).ok().map(|a| (a.attrs.uid.unwrap_or(0), a.attrs.gid.unwrap_or(0)))
        } else {
            None
        };
        let body = russh_sftp::ser::to_bytes(&(path, attrs_to(set, owner)))
            .map_err(|e| RemoteError::BadMessage(e.to_string()))?
            .to_vec();
        let r = c.sftp.extended("lsetstat@openssh.com", body).await;
        status_of(self.check(&c, r)?)
    }

    async fn list(&self, path: &str) -> Result<DirStream> {
        let (_, c, slot) = self.conn_for_open(false)?;
        let r = c.sftp.opendir(path).await;
        let h = self.check(&c, r)?.handle;
        let (tx, rx) = tokio::sync::mpsc::channel(LIST_BATCHES_AHEAD);
        let link = self.link.clone();
        tokio::spawn(async move {
            // Several READDIRs in flight, answered in order: a small directory comes back,
            // with its end, in one round trip, and a big one streams.
            let mut out = FuturesOrdered::new();
            loop {
                while out.len() < READDIRS_IN_FLIGHT {
                    out.push_back(c.sftp.readdir(h.clone()));
                }
                let batch = match out.next().await {
                    Some(Ok(name)) => Ok(name
                        .files
                        .into_iter()
                        .map(|f| DirEntry { attr: attr_from(&f.attrs), name: f.filename })
                        .collect()),
                    Some(Err(SftpError::Status(s))) if s.status_code == StatusCode::Eof => break,
                    Some(Err(e)) => Err(report(&link, &c, e)),
                    None => break,
                };
                let failed = batch.is_err();
                // Nobody listening any more (the directory was closed early): stop.
                if tx.send(batch).await.is_err() || failed {
                    break;
                }
            }
            // The end is told before the handle is closed: that takes a round trip.
            drop(tx);
            drop(out);
            let _ = c.sftp.close(h).await;
            drop(slot);
        });
        Ok(DirStream::new(rx))
    }

    async fn open(&self, path: &str, o: OpenOptions) -> Result<Handle> {
        let (home, c, slot) = self.conn_for_open(true)?;
        let mut attrs = FileAttributes::empty();
        attrs.permissions = o.mode;
        let r = c.sftp.open(path, open_flags(o), attrs).await;
        let h = self.check(&c, r)?.handle;
        Ok(self.register(path, o, (home, &c, slot), h))
    }

    async fn close(&self, handle: &Handle) -> Result<()> {
        let Some(file) = lock(&self.files).remove(&handle.0) else { return Ok(()) };
        let live = std::mem::take(&mut *file.live.lock().await);
        let mut result = Ok(());
        for (lane, (generation, h, _slot)) in live {
            // A handle of a connection that is gone died with it.
            let Ok(c) = self.link.conn_at(lane) else { continue };
            if c.generation != generation {
                continue;
            }
            let r = c.sftp.close(h).await;
            if let Err(e) = self.check(&c, r) {
                result = Err(e);
            }
        }
        result
    }

    async fn read(&self, handle: &Handle, offset: u64, len: u32) -> Result<Bytes> {
        self.read_lane_opt(handle, None, offset, len).await
    }

    async fn read_lane(&self, handle: &Handle, lane: usize, offset: u64, len: u32) -> Result<Bytes> {
        self.read_lane_opt(handle, Some(lane), offset, len).await
    }

    async fn write_lane(&self, handle: &Handle, lane: usize, offset: u64, data: Bytes) -> Result<()> {
        self.write_lane_opt(handle, Some(lane), offset, data).await
    }

    async fn write(&self, handle: &Handle, offset: u64, data: Bytes) -> Result<()> {
        self.write_lane_opt(handle, None, offset, data).await
    }

    async fn fsync(&self, handle: &Handle) -> Result<()> {
        let c = self.file_conn(handle, None)?;
        let h = self.live_handle(&c, handle).await?;
        let r = c.sftp.fsync(h).await;
        self.check(&c, r).map(|_| ())
    }

    async fn mkdir(&self, path: &str, mode: u32) -> Result<()> {
        let c = self.conn()?;
        let mut attrs = FileAttributes::empty();
        attrs.permissions = Some(mode);
        let r = c.sftp.mkdir(path, attrs).await;
        self.check(&c, r).map(|_| ())
    }

    async fn rmdir(&self, path: &str) -> Result<()> {
        let c = self.conn()?;
        let r = c.sftp.rmdir(path).await;
        self.check(&c, r).map(|_| ())
    }

    async fn remove(&self, path: &str) -> Result<()> {
        let c = self.conn()?;
        let r = c.sftp.remove(path).await;
        self.check(&c, r).map(|_| ())
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let c = self.conn()?;
        if extensions_from(&c.extensions).posix_rename {
            let r = c.sftp.extended("posix-rename@openssh.com", two_strings(from, to)?).await;
            return status_of(self.check(&c, r)?);
        }
        // Plain SFTP rename refuses to replace an existing target; the fs moves it aside.
        let r = c.sftp.rename(from, to).await;
        self.check(&c, r).map(|_| ())
    }

    async fn symlink(&self, target: &str, link: &str) -> Result<()> {
        let c = self.conn()?;
        // OpenSSH's server takes the arguments in the reverse of the draft's order
        // (target first), as its own client sends them.
        let r = c.sftp.symlink(target, link).await;
        self.check(&c, r).map(|_| ())
    }

    async fn readlink(&self, path: &str) -> Result<String> {
        let c = self.conn()?;
        let r = c.sftp.readlink(path).await;
        let name = self.check(&c, r)?;
        name.files
            .into_iter()
            .next()
            .map(|f| f.filename)
            .ok_or_else(|| RemoteError::ServerFailure("empty readlink reply".into()))
    }

    async fn hardlink(&self, existing: &str, new: &str) -> Result<()> {
        let c = self.conn()?;
        let r = c.sftp.hardlink(existing, new).await;
        self.check(&c, r).map(|_| ())
    }

    async fn statfs(&self, path: &str) -> Result<StatFs> {
        let c = self.conn()?;
        let r = c.sftp.statvfs(path).await;
        let s = self.check(&c, r)?;
        Ok(StatFs {
            block_size: s.block_size,
            fragment_size: s.fragment_size,
            blocks: s.blocks,
            blocks_free: s.blocks_free,
            blocks_avail: s.blocks_avail,
            files: s.inodes,
            files_free: s.inodes_free,
            files_avail: s.inodes_avail,
            name_max: s.name_max,
            read_only: s.flags & ST_RDONLY != 0,
        })
    }

    fn read_size(&self) -> u32 {
        self.link.conn().map(|c| c.read_size).unwrap_or(64 * 1024)
    }

    fn write_size(&self) -> u32 {
        self.link.conn().map(|c| c.write_size).unwrap_or(64 * 1024)
    }

    async fn open_stat(&self, path: &str, o: OpenOptions) -> Result<(Handle, Option<Attr>)> {
        let (home, c, slot) = self.conn_for_open(true)?;
        let mut attrs = FileAttributes::empty();
        attrs.permissions = o.mode;
        let (opened, stat) = futures_util::join!(c.sftp.open(path, open_flags(o), attrs), c.sftp.lstat(path));
        let h = self.check(&c, opened)?.handle;
        let attr = self.check(&c, stat).ok().map(|a| attr_from(&a.attrs));
        Ok((self.register(path, o, (home, &c, slot), h), attr))
    }

    async fn mkdir_stat(&self, path: &str, mode: u32) -> Result<Option<Attr>> {
        let c = self.conn()?;
        let mut attrs = FileAttributes::empty();
        attrs.permissions = Some(mode);
        let (made, stat) = futures_util::join!(c.sftp.mkdir(path, attrs), c.sftp.lstat(path));
        self.check(&c, made)?;
        Ok(self.check(&c, stat).ok().map(|a| attr_from(&a.attrs)))
    }

    async fn symlink_stat(&self, target: &str, link: &str) -> Result<Option<Attr>> {
        let c = self.conn()?;
        let (made, stat) = futures_util::join!(c.sftp.symlink(target, link), c.sftp.lstat(link));
        self.check(&c, made)?;
        Ok(self.check(&c, stat).ok().map(|a| attr_from(&a.attrs)))
    }

    async fn setstat_stat(&self, path: &str, set: SetAttr) -> Result<Option<Attr>> {
        if set.uid.is_some() != set.gid.is_some() {
            // The owner pair needs the current owner first.
            self.setstat(path, set).await?;
            return Ok(self.lstat(path).await.ok());
        }
        let c = self.conn()?;
        let (done, stat) = futures_util::join!(c.sftp.setstat(path, attrs_to(set, None)), c.sftp.lstat(path));
        self.check(&c, done)?;
        Ok(self.check(&c, stat).ok().map(|a| attr_from(&a.attrs)))
    }

    async fn fsetstat_stat(&self, handle: &Handle, path: &str, set: SetAttr) -> Result<Option<Attr>> {
        if set.uid.is_some() != set.gid.is_some() {
            self.fsetstat(handle, set).await?;
            return Ok(self.lstat(path).await.ok());
        }
        let c = self.file_conn(handle, None)?;
        let h = self.live_handle(&c, handle).await?;
        let (done, stat) = futures_util::join!(c.sftp.fsetstat(h.clone(), attrs_to(set, None)), c.sftp.fstat(h));
        self.check(&c, done)?;
        Ok(self.check(&c, stat).ok().map(|a| attr_from(&a.attrs)))
    }
}
