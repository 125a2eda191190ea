//! [`Remote`] over SFTP: each operation is one or a few SFTP requests on a session taken
//! from the link, with the SFTP status turned into a [`RemoteError`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::StatusCode;

use futures_util::stream::{FuturesOrdered, StreamExt};

use super::identity::Known;
use super::wire::{self, Body, ServerHandle};
use super::{
    Attr, Bytes, DirEntry, DirStream, Extensions, FileKind, Handle, OpenOptions, Remote, RemoteError, Result, SetAttr,
    StatFs, DEEP_WRITES, SHALLOW_WRITES,
};
use crate::link::{Link, SftpConn, Unavailable};
use crate::sync::lock;
use tokio::sync::OwnedSemaphorePermit;

const ST_RDONLY: u64 = 1;
/// READDIRs out at once on one listing.
const READDIRS_IN_FLIGHT: usize = 16;
/// READDIRs sent at first: a small directory's entries and its end come back in one
/// round trip, and most directories are small. From the second batch with entries on,
/// the directory is big: each such batch doubles the READDIRs out.
const READDIRS_AT_FIRST: usize = 2;
/// Batches a listing fetches ahead of the one who reads it.
const LIST_BATCHES_AHEAD: usize = 16;
/// A path this quick (unloaded, one request) is near: loopback or a LAN.
const NEAR: Duration = Duration::from_millis(2);

pub struct SftpRemote {
    link: Arc<Link>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_handle: AtomicU64,
    /// Turns taken by opens over the connections.
    next_open: AtomicUsize,
    /// What the last connection announced, for answers while the link is down.
    known_extensions: Mutex<Extensions>,
    /// Symlinks are shown as what they point to (`--follow-symlinks`).
    follow_symlinks: bool,
}

/// What is needed to open a file again on a new connection.
struct OpenFile {
    opts: OpenOptions,
    /// The data lane the file was opened on (counted among the link's data lanes): where
    /// all its requests go.
    home: usize,
    /// Its name now and what is known of it: the only way back to it after a reconnect.
    /// Shared by every handle of the same file, so that each learns what the others
    /// changed.
    known: Arc<Mutex<Known>>,
    /// Why the file cannot be reached any more, once that is so: for good.
    lost: Mutex<Option<String>>,
    /// The server's handle on that lane's connection, while that connection lives.
    live: tokio::sync::Mutex<Option<Live>>,
}

/// A server handle, with the connection it belongs to and the slot it takes there.
struct Live {
    lane: usize,
    generation: u64,
    handle: ServerHandle,
    _slot: OwnedSemaphorePermit,
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
            follow_symlinks: false,
        }
    }

    /// Attributes and listings show symlinks as what they point to (sshfs's
    /// `follow_symlinks`); a dangling one stays a symlink.
    pub fn following_symlinks(mut self, follow: bool) -> SftpRemote {
        self.follow_symlinks = follow;
        self
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

    /// The connection for `h`'s requests: always the one it was opened on. Opening the
    /// file again by name on another connection could reach another file (renamed or
    /// replaced since), none at all (unlinked), or be refused (a file created 0444, or
    /// chmod 000 since): the handle `open` returned is the only sure way to the file.
    /// Its requests are pipelined on that connection instead.
    fn file_conn(&self, h: &Handle) -> Result<Arc<SftpConn>> {
        let home = self.file(h)?.home;
        self.link.data_conn(home).map_err(RemoteError::from)
    }

    /// The server's handle for `h` on `conn`, opening the file again by name when the
    /// connection it was opened on was replaced after a reconnect: the old handle died
    /// with it, and the name is all that is left. The file is opened again only where
    /// the name provably still leads to it (see `identity`); otherwise it is lost.
    async fn live_handle(&self, conn: &SftpConn, file: &OpenFile) -> Result<ServerHandle> {
        let mut live = file.live.lock().await;
        if let Some(l) = live.as_ref().filter(|l| l.lane == conn.lane && l.generation == conn.generation) {
            return Ok(l.handle.clone());
        }
        // A handle of an older connection died with it, and so did its slot.
        *live = None;
        if let Some(why) = lock(&file.lost).clone() {
            return Err(RemoteError::FileLost(why));
        }
        let Some(path) = lock(&file.known).path().map(str::to_string) else {
            return Err(lose(file, "(removed)", "its name was removed or replaced through the mount"));
        };
        let Ok(slot) = conn.handle_slots.clone().try_acquire_owned() else { return Err(RemoteError::TooManyOpen) };
        // Reopening must not create, truncate or fail on existence again.
        let opts = OpenOptions { create: false, truncate: false, exclusive: false, ..file.opts };
        let handle = match wire::handle(&conn.direct, wire::OPEN, open_body(&path, opts, None)).await {
            Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => {
                conn.touch();
                return Err(lose(file, &path, "it is gone from the server"));
            }
            r => self.check(conn, r)?,
        };
        let now = wire::attrs(&conn.direct, wire::FSTAT, handle_body(&handle)).await;
        let now = self.check(conn, now)?;
        if !lock(&file.known).same_file(&now) {
            let closed = wire::done(&conn.direct, wire::CLOSE, handle_body(&handle)).await;
            let _ = self.check(conn, closed);
            return Err(lose(file, &path, "another file has its name now, or it was changed on the server"));
        }
        tracing::debug!(path = %path, lane = conn.lane, "opened the file again on a new connection");
        *live = Some(Live { lane: conn.lane, generation: conn.generation, handle: handle.clone(), _slot: slot });
        Ok(handle)
    }

    /// The file behind `h`, with the connection and server handle for its requests (on
    /// its own connection).
    async fn handle_on(&self, h: &Handle) -> Result<(Arc<OpenFile>, Arc<SftpConn>, ServerHandle)> {
        let file = self.file(h)?;
        let home = self.link.data_conn(file.home).map_err(RemoteError::from)?;
        let handle = self.live_handle(&home, &file).await?;
        Ok((file, home, handle))
    }

    /// Tells every open file that `change` happened to the names through the mount
    /// (once each, however many handles it has).
    fn names_changed(&self, change: impl Fn(&mut Known)) {
        let mut seen = std::collections::HashSet::new();
        for file in lock(&self.files).values() {
            if seen.insert(Arc::as_ptr(&file.known)) {
                change(&mut lock(&file.known));
            }
        }
    }

    /// Something was just made at `path`, so no file was there: an open file the mount
    /// still placed there (after a rename whose answer was lost) is elsewhere or gone.
    fn name_was_free(&self, path: &str) {
        self.names_changed(|k| k.removed(path));
    }

    /// What is known of the file just opened at `path` as `attr`: shared with the
    /// handles already open on it, if it is the same file.
    fn known_for(&self, path: &str, attr: Option<Attr>) -> Arc<Mutex<Known>> {
        let files = lock(&self.files);
        let same = files.values().find(|f| {
            let k = lock(&f.known);
            k.path() == Some(path) && attr.is_some_and(|a| k.same_file(&a))
        });
        match same {
            Some(f) => f.known.clone(),
            None => Arc::new(Mutex::new(Known::new(path, attr))),
        }
    }

    /// Tells the open files at `path` that the mount changed their attributes.
    fn attrs_changed(&self, path: &str, set: &SetAttr) {
        self.names_changed(|k| {
            if k.path() == Some(path) {
                k.set(set);
            }
        });
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
    /// Numbers a server handle so it can be opened again after a reconnect; `attr` is
    /// what the server said of the file as it was opened.
    fn register(
        &self,
        path: &str,
        opts: OpenOptions,
        (home, conn, slot): (usize, &SftpConn, OwnedSemaphorePermit),
        handle: ServerHandle,
        attr: Option<Attr>,
    ) -> Handle {
        if opts.create && opts.exclusive {
            self.name_was_free(path);
        }
        let id = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let live = Some(Live { lane: conn.lane, generation: conn.generation, handle, _slot: slot });
        let file = OpenFile {
            opts,
            home,
            known: self.known_for(path, attr),
            lost: Mutex::new(None),
            live: tokio::sync::Mutex::new(live),
        };
        lock(&self.files).insert(id, Arc::new(file));
        Handle(id)
    }
}

/// Marks `file` lost for good, saying why once; what its requests get from now on.
fn lose(file: &OpenFile, path: &str, why: &str) -> RemoteError {
    let why = format!("{path}: cannot reach the open file again after a reconnect: {why}");
    tracing::error!("{why}; its descriptors fail with EIO and nothing queued for it is written elsewhere");
    *lock(&file.lost) = Some(why.clone());
    RemoteError::FileLost(why)
}

/// SFTP's open flags for `o`.
fn open_flags(o: OpenOptions) -> u32 {
    const READ: u32 = 0x1;
    const WRITE: u32 = 0x2;
    const CREATE: u32 = 0x8;
    const TRUNCATE: u32 = 0x10;
    const EXCLUDE: u32 = 0x20;
    // APPEND is left out on purpose: the kernel gives every write its offset, and an
    // append-mode handle would make a replayed write land twice.
    [(o.read, READ), (o.write, WRITE), (o.create, CREATE), (o.truncate, TRUNCATE), (o.exclusive, EXCLUDE)]
        .into_iter()
        .filter(|(on, _)| *on)
        .fold(0, |flags, (_, f)| flags | f)
}

/// An OPEN request: path, flags, and the mode a new file gets.
fn open_body(path: &str, o: OpenOptions, mode: Option<u32>) -> Body {
    let set = SetAttr { mode, ..SetAttr::default() };
    Body::new().name(path).u32(open_flags(o)).attrs(&set, None)
}

/// A request naming one path.
/// Entries that are symlinks take the attributes of what they point to, asked all at
/// once; a dangling one stays a symlink.
async fn follow_links(c: &SftpConn, dir: &str, entries: &mut [DirEntry]) {
    let stats = entries.iter().map(|e| async move {
        if e.attr.kind() != FileKind::Symlink {
            return None;
        }
        let path = format!("{}/{}", dir.trim_end_matches('/'), e.name);
        wire::attrs(&c.direct, wire::STAT, path_body(&path)).await.ok()
    });
    let targets = futures_util::future::join_all(stats).await;
    for (e, target) in entries.iter_mut().zip(targets) {
        if let Some(attr) = target {
            e.attr = attr;
        }
    }
}

fn path_body(path: &str) -> Body {
    Body::new().name(path)
}

/// A request naming one handle.
fn handle_body(h: &[u8]) -> Body {
    Body::new().bytes(h)
}

/// An OpenSSH extended request: its name, then its fields.
fn extended(name: &str) -> Body {
    Body::new().bytes(name.as_bytes())
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
        let r = wire::names(&c.direct, wire::REALPATH, path_body(path)).await;
        let names = self.check(&c, r)?;
        names
            .into_iter()
            .next()
            .map(|(n, _)| n)
            .ok_or_else(|| RemoteError::ServerFailure("empty realpath reply".into()))
    }

    async fn stat(&self, path: &str) -> Result<Attr> {
        let c = self.conn()?;
        let r = wire::attrs(&c.direct, wire::STAT, path_body(path)).await;
        self.check(&c, r)
    }

    async fn lstat(&self, path: &str) -> Result<Attr> {
        if self.follow_symlinks {
            match self.stat(path).await {
                // Dangling, a loop, or nothing there: the name itself answers.
                Err(e) if !e.is_link() => {}
                r => return r,
            }
        }
        let c = self.conn()?;
        let r = wire::attrs(&c.direct, wire::LSTAT, path_body(path)).await;
        self.check(&c, r)
    }

    async fn fstat(&self, handle: &Handle) -> Result<Attr> {
        let (_, c, h) = self.handle_on(handle).await?;
        let r = wire::attrs(&c.direct, wire::FSTAT, handle_body(&h)).await;
        self.check(&c, r)
    }

    async fn setstat(&self, path: &str, set: SetAttr) -> Result<()> {
        let c = self.conn()?;
        let owner = self.owner_for(&c, &set, || path_body(path), wire::LSTAT).await;
        let r = wire::done(&c.direct, wire::SETSTAT, path_body(path).attrs(&set, owner)).await;
        self.check(&c, r)?;
        self.attrs_changed(path, &set);
        Ok(())
    }

    async fn fsetstat(&self, handle: &Handle, set: SetAttr) -> Result<()> {
        let (file, c, h) = self.handle_on(handle).await?;
        let owner = self.owner_for(&c, &set, || handle_body(&h), wire::FSTAT).await;
        let r = wire::done(&c.direct, wire::FSETSTAT, handle_body(&h).attrs(&set, owner)).await;
        self.check(&c, r)?;
        lock(&file.known).set(&set);
        Ok(())
    }

    async fn lsetstat(&self, path: &str, set: SetAttr) -> Result<()> {
        let c = self.conn()?;
        let owner = self.owner_for(&c, &set, || path_body(path), wire::LSTAT).await;
        let body = extended("lsetstat@openssh.com").name(path).attrs(&set, owner);
        let r = wire::done(&c.direct, wire::EXTENDED, body).await;
        self.check(&c, r)
    }

    async fn list(&self, path: &str) -> Result<DirStream> {
        let (_, c, slot) = self.conn_for_open(false)?;
        let r = wire::handle(&c.direct, wire::OPENDIR, path_body(path)).await;
        let h = self.check(&c, r)?;
        let (tx, rx) = tokio::sync::mpsc::channel(LIST_BATCHES_AHEAD);
        let link = self.link.clone();
        let follow = self.follow_symlinks.then(|| path.to_string());
        tokio::spawn(async move {
            // Several READDIRs in flight, answered in order: a small directory comes back,
            // with its end, in one round trip, and a big one streams. Every READDIR past
            // the end is wasted work on both sides, so only a big directory gets many.
            let mut out = FuturesOrdered::new();
            let mut in_flight = READDIRS_AT_FIRST;
            let mut batches = 0;
            loop {
                // After the first batch, the second READDIR out is likely the end.
                let wanted = if batches == 1 { 1 } else { in_flight };
                while out.len() < wanted {
                    out.push_back(wire::names(&c.direct, wire::READDIR, handle_body(&h)));
                }
                let batch = match out.next().await {
                    Some(Ok(names)) => {
                        let mut entries: Vec<DirEntry> =
                            names.into_iter().map(|(name, attr)| DirEntry { name, attr }).collect();
                        if let Some(dir) = &follow {
                            follow_links(&c, dir, &mut entries).await;
                        }
                        Ok(entries)
                    }
                    Some(Err(SftpError::Status(s))) if s.status_code == StatusCode::Eof => break,
                    Some(Err(e)) => Err(report(&link, &c, e)),
                    None => break,
                };
                c.touch();
                batches += 1;
                if batches > 1 {
                    in_flight = (in_flight * 2).min(READDIRS_IN_FLIGHT);
                }
                let failed = batch.is_err();
                // Nobody listening any more (the directory was closed early): stop.
                if tx.send(batch).await.is_err() || failed {
                    break;
                }
            }
            // The end is told before the handle is closed: that takes a round trip.
            drop(tx);
            drop(out);
            let _ = wire::done(&c.direct, wire::CLOSE, handle_body(&h)).await;
            drop(slot);
        });
        Ok(DirStream::new(rx))
    }

    async fn open(&self, path: &str, o: OpenOptions) -> Result<Handle> {
        let (home, c, slot) = self.conn_for_open(true)?;
        // What the file is as it opens: how it is recognised after a reconnect. STAT,
        // not LSTAT: OPEN follows a symlink too.
        let (opened, stat) = futures_util::join!(
            wire::handle(&c.direct, wire::OPEN, open_body(path, o, o.mode)),
            wire::attrs(&c.direct, wire::STAT, path_body(path))
        );
        let h = self.check(&c, opened)?;
        let attr = self.check(&c, stat).ok();
        Ok(self.register(path, o, (home, &c, slot), h, attr))
    }

    async fn close(&self, handle: &Handle) -> Result<()> {
        let Some(file) = lock(&self.files).remove(&handle.0) else { return Ok(()) };
        let Some(live) = file.live.lock().await.take() else { return Ok(()) };
        // A handle of a connection that is gone died with it.
        match self.link.conn_at(live.lane) {
            Ok(c) if c.generation == live.generation => {
                let r = wire::done(&c.direct, wire::CLOSE, handle_body(&live.handle)).await;
                self.check(&c, r)
            }
            _ => Ok(()),
        }
    }

    fn write_depth(&self, handle: &Handle) -> usize {
        depth_for(self.file_conn(handle).ok().and_then(|c| c.least_rtt()))
    }

    // `read_lane` and `write_lane` are the trait's: every lane of a file is its own
    // connection here (see `file_conn`).
    async fn read(&self, handle: &Handle, offset: u64, len: u32) -> Result<Bytes> {
        let (_, c, h) = self.handle_on(handle).await?;
        match c.direct.read(&h, offset, len).await {
            Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => {
                c.touch();
                Ok(Bytes::new())
            }
            r => self.check(&c, r),
        }
    }

    async fn write(&self, handle: &Handle, offset: u64, data: Bytes) -> Result<()> {
        let (file, c, h) = self.handle_on(handle).await?;
        let end = offset + data.len() as u64;
        lock(&file.known).sending(end);
        let r = c.direct.write(&h, offset, data).await;
        self.check(&c, r)?;
        lock(&file.known).written(end);
        Ok(())
    }

    async fn fsync(&self, handle: &Handle) -> Result<()> {
        let (_, c, h) = self.handle_on(handle).await?;
        let r = wire::done(&c.direct, wire::EXTENDED, extended("fsync@openssh.com").bytes(&h)).await;
        self.check(&c, r)
    }

    async fn mkdir(&self, path: &str, mode: u32) -> Result<()> {
        let c = self.conn()?;
        let set = SetAttr { mode: Some(mode), ..SetAttr::default() };
        let r = wire::done(&c.direct, wire::MKDIR, path_body(path).attrs(&set, None)).await;
        self.check(&c, r)?;
        self.name_was_free(path);
        Ok(())
    }

    async fn rmdir(&self, path: &str) -> Result<()> {
        let c = self.conn()?;
        let r = wire::done(&c.direct, wire::RMDIR, path_body(path)).await;
        self.check(&c, r)
    }

    async fn remove(&self, path: &str) -> Result<()> {
        let c = self.conn()?;
        let r = wire::done(&c.direct, wire::REMOVE, path_body(path)).await;
        self.check(&c, r)?;
        self.names_changed(|k| k.removed(path));
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let c = self.conn()?;
        let r = if extensions_from(&c.extensions).posix_rename {
            wire::done(&c.direct, wire::EXTENDED, extended("posix-rename@openssh.com").name(from).name(to)).await
        } else {
            // Plain SFTP rename refuses to replace an existing target; the fs moves it aside.
            wire::done(&c.direct, wire::RENAME, path_body(from).name(to)).await
        };
        match self.check(&c, r) {
            Ok(()) => self.names_changed(|k| k.renamed(from, to)),
            Err(e) if e.outcome_unknown() => {
                self.names_changed(|k| k.maybe_renamed_onto(to));
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    async fn symlink(&self, target: &str, link: &str) -> Result<()> {
        let c = self.conn()?;
        let r = wire::done(&c.direct, wire::SYMLINK, symlink_body(target, link)).await;
        self.check(&c, r)?;
        self.name_was_free(link);
        Ok(())
    }

    async fn readlink(&self, path: &str) -> Result<String> {
        let c = self.conn()?;
        let r = wire::names(&c.direct, wire::READLINK, path_body(path)).await;
        let names = self.check(&c, r)?;
        names
            .into_iter()
            .next()
            .map(|(n, _)| n)
            .ok_or_else(|| RemoteError::ServerFailure("empty readlink reply".into()))
    }

    async fn hardlink(&self, existing: &str, new: &str) -> Result<()> {
        let c = self.conn()?;
        let r = wire::done(&c.direct, wire::EXTENDED, extended("hardlink@openssh.com").name(existing).name(new)).await;
        self.check(&c, r)?;
        self.name_was_free(new);
        Ok(())
    }

    async fn statfs(&self, path: &str) -> Result<StatFs> {
        let c = self.conn()?;
        let r = wire::extended_reply(&c.direct, extended("statvfs@openssh.com").name(path)).await;
        let mut b = self.check(&c, r)?;
        let mut next = || wire::take_u64(&mut b).map_err(|_| RemoteError::BadMessage("short statvfs reply".into()));
        let (block_size, fragment_size, blocks, blocks_free, blocks_avail) =
            (next()?, next()?, next()?, next()?, next()?);
        let (files, files_free, files_avail, _fsid, flags, name_max) =
            (next()?, next()?, next()?, next()?, next()?, next()?);
        Ok(StatFs {
            block_size,
            fragment_size,
            blocks,
            blocks_free,
            blocks_avail,
            files,
            files_free,
            files_avail,
            name_max,
            read_only: flags & ST_RDONLY != 0,
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
        let (opened, stat) = futures_util::join!(
            wire::handle(&c.direct, wire::OPEN, open_body(path, o, o.mode)),
            wire::attrs(&c.direct, wire::LSTAT, path_body(path))
        );
        let h = self.check(&c, opened)?;
        let attr = self.check(&c, stat).ok();
        Ok((self.register(path, o, (home, &c, slot), h, attr), attr))
    }

    async fn mkdir_stat(&self, path: &str, mode: u32) -> Result<Option<Attr>> {
        let c = self.conn()?;
        let set = SetAttr { mode: Some(mode), ..SetAttr::default() };
        let (made, stat) = futures_util::join!(
            wire::done(&c.direct, wire::MKDIR, path_body(path).attrs(&set, None)),
            wire::attrs(&c.direct, wire::LSTAT, path_body(path))
        );
        self.check(&c, made)?;
        self.name_was_free(path);
        Ok(self.check(&c, stat).ok())
    }

    async fn symlink_stat(&self, target: &str, link: &str) -> Result<Option<Attr>> {
        let c = self.conn()?;
        let (made, stat) = futures_util::join!(
            wire::done(&c.direct, wire::SYMLINK, symlink_body(target, link)),
            wire::attrs(&c.direct, wire::LSTAT, path_body(link))
        );
        self.check(&c, made)?;
        self.name_was_free(link);
        Ok(self.check(&c, stat).ok())
    }

    async fn setstat_stat(&self, path: &str, set: SetAttr) -> Result<Option<Attr>> {
        if set.uid.is_some() != set.gid.is_some() {
            // The owner pair needs the current owner first.
            self.setstat(path, set).await?;
            return Ok(self.lstat(path).await.ok());
        }
        let c = self.conn()?;
        let (done, stat) = futures_util::join!(
            wire::done(&c.direct, wire::SETSTAT, path_body(path).attrs(&set, None)),
            wire::attrs(&c.direct, wire::LSTAT, path_body(path))
        );
        self.check(&c, done)?;
        self.attrs_changed(path, &set);
        Ok(self.check(&c, stat).ok())
    }

    async fn fsetstat_stat(&self, handle: &Handle, path: &str, set: SetAttr) -> Result<Option<Attr>> {
        if set.uid.is_some() != set.gid.is_some() {
            self.fsetstat(handle, set).await?;
            return Ok(self.lstat(path).await.ok());
        }
        let (file, c, h) = self.handle_on(handle).await?;
        let (done, stat) = futures_util::join!(
            wire::done(&c.direct, wire::FSETSTAT, handle_body(&h).attrs(&set, None)),
            wire::attrs(&c.direct, wire::FSTAT, handle_body(&h))
        );
        self.check(&c, done)?;
        lock(&file.known).set(&set);
        Ok(self.check(&c, stat).ok())
    }
}

/// Shallow where the file's connection has answered a small request within `NEAR`:
/// there a megabyte out keeps the server busy. Judged by the quickest round trip the
/// connection has shown, not by the file's own answers, which come later the more are
/// out. Not known yet: deep, which is right for any path.
fn depth_for(least_rtt: Option<Duration>) -> usize {
    match least_rtt {
        Some(rtt) if rtt < NEAR => SHALLOW_WRITES,
        _ => DEEP_WRITES,
    }
}

/// A SYMLINK request. OpenSSH's server takes the arguments in the reverse of the
/// draft's order (target first), as its own client sends them.
fn symlink_body(target: &str, link: &str) -> Body {
    Body::new().name(target).name(link)
}

impl SftpRemote {
    /// The owner pair now, when a change sets only one of uid and gid (SFTP sends both).
    async fn owner_for(&self, c: &SftpConn, set: &SetAttr, about: impl Fn() -> Body, kind: u8) -> Option<(u32, u32)> {
        if set.uid.is_some() == set.gid.is_some() {
            return None;
        }
        let r = wire::attrs(&c.direct, kind, about()).await;
        self.check(c, r).ok().map(|a| (a.uid, a.gid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_go_shallow_only_on_a_near_path() {
        let ms = Duration::from_millis;
        let cases = [
            (None, DEEP_WRITES),
            (Some(Duration::from_micros(300)), SHALLOW_WRITES),
            (Some(ms(1)), SHALLOW_WRITES),
            (Some(NEAR), DEEP_WRITES),
            (Some(ms(10)), DEEP_WRITES),
            (Some(ms(200)), DEEP_WRITES),
        ];
        for (rtt, depth) in cases {
            assert_eq!(depth_for(rtt), depth, "least round trip {rtt:?}");
        }
    }
}
