//! [`Remote`] over SFTP: each operation is one or a few SFTP requests on a connection
//! taken from the link, with the SFTP status turned into a [`RemoteError`].
//!
//! Everything SFTP lives in this module tree: a connection's session and what was
//! agreed at its start (`session`, the link's `Session`), the framing on its SSH
//! channel (`channel`) with its budget for file data (`pacing`), the encoding of
//! requests and answers (`wire`), and the operations (`ops`). The link below carries
//! the channel's bytes and watches its health through `Session`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::StatusCode;

use futures_util::stream::{FuturesOrdered, StreamExt};

use super::identity::KnownFile;
use super::{
    Attr, Bytes, DirEntry, DirStream, Extensions, FileKind, Handle, OpenOptions, Remote, RemoteError, Result, SetAttr,
    StatFs, DEEP_WRITES, SHALLOW_WRITES,
};
use crate::link::{Conn, Link, Unavailable};
use crate::sync::lock;
use wire::{Body, ServerHandle};

mod bodies;
mod channel;
mod errors;
mod ops;
mod pacing;
mod session;
mod wire;

pub use session::SftpSession;

/// The link to one destination, its connections carrying SFTP sessions.
pub type SftpLink = Link<SftpSession>;
/// One of its connections.
pub type SftpConn = Conn<SftpSession>;

use bodies::*;
use errors::*;
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
    link: Arc<SftpLink>,
    files: Mutex<HashMap<u64, Arc<RemoteFile>>>,
    next_handle: AtomicU64,
    /// Turns taken by opens over the connections.
    next_open: AtomicUsize,
    /// What the last connection announced, for answers while the link is down.
    known_extensions: Mutex<Extensions>,
    /// Symlinks are shown as what they point to (`--follow-symlinks`).
    follow_symlinks: bool,
}

/// What is needed to open a file again on a new connection.
struct RemoteFile {
    opts: OpenOptions,
    /// The data connection the file was opened on (counted among the link's data
    /// connections, `Link::data_conn`): where all its requests go.
    home: usize,
    /// Its name now and what is known of it: the only way back to it after a reconnect.
    /// Shared by every handle of the same file, so that each learns what the others
    /// changed.
    known: Arc<Mutex<KnownFile>>,
    /// What the server said the file was as it opened.
    opened_as: Option<Attr>,
    /// Why the file cannot be reached any more, once that is so: for good.
    lost: Mutex<Option<String>>,
    /// The server's handle on that connection, while it lives.
    live: tokio::sync::Mutex<Option<Live>>,
}

/// A server handle, with the connection it belongs to and the slot it takes there.
struct Live {
    /// The connection's place in the pool.
    index: usize,
    generation: u64,
    handle: ServerHandle,
    _slot: OwnedSemaphorePermit,
}

impl SftpRemote {
    pub fn new(link: Arc<SftpLink>) -> SftpRemote {
        let known = link.conn().map(|c| extensions_from(&c.session.extensions)).unwrap_or_default();
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

    // Requests that need no open file, each on the pool's least busy connection, with
    // the answer checked (`check`): one per kind of reply.

    async fn ask_done(&self, kind: u8, body: Body) -> Result<()> {
        let c = self.conn()?;
        let r = wire::done(&c.session.direct, kind, body).await;
        self.check(&c, r)
    }

    async fn ask_attrs(&self, kind: u8, body: Body) -> Result<Attr> {
        let c = self.conn()?;
        let r = wire::attrs(&c.session.direct, kind, body).await;
        self.check(&c, r)
    }

    /// The one name a REALPATH or READLINK (`what`) answers with.
    async fn ask_name(&self, kind: u8, what: &str, body: Body) -> Result<String> {
        let c = self.conn()?;
        let r = wire::names(&c.session.direct, kind, body).await;
        let names = self.check(&c, r)?;
        names
            .into_iter()
            .next()
            .map(|(n, _)| n)
            .ok_or_else(|| RemoteError::ServerFailure(format!("empty {what} reply")))
    }

    /// Maps a result, telling the link when the connection itself failed.
    fn check<T>(&self, conn: &SftpConn, r: std::result::Result<T, SftpError>) -> Result<T> {
        conn.touch();
        r.map_err(|e| report(&self.link, conn, e))
    }

    fn file(&self, h: &Handle) -> Result<Arc<RemoteFile>> {
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
    async fn live_handle(&self, conn: &SftpConn, file: &RemoteFile) -> Result<ServerHandle> {
        let mut live = file.live.lock().await;
        if let Some(l) = live.as_ref().filter(|l| l.index == conn.index && l.generation == conn.generation) {
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
        let Ok(slot) = conn.session.handle_slots.clone().try_acquire_owned() else {
            return Err(RemoteError::TooManyOpen);
        };
        // Reopening must not create, truncate or fail on existence again.
        let opts = OpenOptions { create: false, truncate: false, exclusive: false, ..file.opts };
        let handle = match wire::handle(&conn.session.direct, wire::OPEN, open_body(&path, opts, None)).await {
            Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile => {
                conn.touch();
                return Err(lose(file, &path, "it is gone from the server"));
            }
            r => self.check(conn, r)?,
        };
        let now = wire::attrs(&conn.session.direct, wire::FSTAT, handle_body(&handle)).await;
        let now = self.check(conn, now)?;
        if !lock(&file.known).same_file(&now) {
            let closed = wire::done(&conn.session.direct, wire::CLOSE, handle_body(&handle)).await;
            let _ = self.check(conn, closed);
            return Err(lose(file, &path, "another file has its name now, or it was changed on the server"));
        }
        tracing::debug!(path = %path, connection = conn.index, "opened the file again on a new connection");
        *live = Some(Live { index: conn.index, generation: conn.generation, handle: handle.clone(), _slot: slot });
        Ok(handle)
    }

    /// The file behind `h`, with the connection and server handle for its requests (on
    /// its own connection).
    async fn handle_on(&self, h: &Handle) -> Result<(Arc<RemoteFile>, Arc<SftpConn>, ServerHandle)> {
        let file = self.file(h)?;
        let home = self.link.data_conn(file.home).map_err(RemoteError::from)?;
        let handle = self.live_handle(&home, &file).await?;
        Ok((file, home, handle))
    }

    /// Tells every open file that `change` happened to the names through the mount
    /// (once each, however many handles it has).
    fn names_changed(&self, change: impl Fn(&mut KnownFile)) {
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
    fn known_for(&self, path: &str, attr: Option<Attr>) -> Arc<Mutex<KnownFile>> {
        let files = lock(&self.files);
        let same = files.values().find(|f| {
            let k = lock(&f.known);
            k.path() == Some(path) && attr.is_some_and(|a| k.same_file(&a))
        });
        match same {
            Some(f) => f.known.clone(),
            None => Arc::new(Mutex::new(KnownFile::new(path, attr))),
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

    /// A connection to open a file on (`data`: one of the data connections, where the
    /// file's reads and writes will go; else the least busy), with a handle slot taken
    /// on it; returns its number among the data connections too. The next in turn, or any with a slot free.
    fn conn_for_open(&self, data: bool) -> Result<(usize, Arc<SftpConn>, OwnedSemaphorePermit)> {
        let turn = self.next_open.fetch_add(1, Ordering::Relaxed);
        let first = if data { self.link.data_conn(turn)? } else { self.conn()? };
        if let Ok(slot) = first.session.handle_slots.clone().try_acquire_owned() {
            return Ok((turn, first, slot));
        }
        let n = if data { self.link.data_pool_len() } else { self.link.pool_len() };
        for k in (0..n).map(|i| turn.wrapping_add(i) % n) {
            let c = if data { self.link.data_conn(k)? } else { self.link.conn_at(k)? };
            if let Ok(slot) = c.session.handle_slots.clone().try_acquire_owned() {
                return Ok((k, c, slot));
            }
        }
        Err(RemoteError::TooManyOpen)
    }
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
        let live = Some(Live { index: conn.index, generation: conn.generation, handle, _slot: slot });
        let file = RemoteFile {
            opts,
            home,
            known: self.known_for(path, attr),
            opened_as: attr,
            lost: Mutex::new(None),
            live: tokio::sync::Mutex::new(live),
        };
        lock(&self.files).insert(id, Arc::new(file));
        Handle(id)
    }

    /// The owner pair now, when a change sets only one of uid and gid (SFTP sends both).
    async fn owner_for(&self, c: &SftpConn, set: &SetAttr, about: impl Fn() -> Body, kind: u8) -> Option<(u32, u32)> {
        if set.uid.is_some() == set.gid.is_some() {
            return None;
        }
        let r = wire::attrs(&c.session.direct, kind, about()).await;
        self.check(c, r).ok().map(|a| (a.uid, a.gid))
    }
}

/// Marks `file` lost for good, saying why once; what its requests get from now on.
fn lose(file: &RemoteFile, path: &str, why: &str) -> RemoteError {
    let why = format!("{path}: cannot reach the open file again after a reconnect: {why}");
    tracing::error!("{why}; its descriptors fail with EIO and nothing queued for it is written elsewhere");
    *lock(&file.lost) = Some(why.clone());
    RemoteError::FileLost(why)
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

#[cfg(test)]
mod tests {
    use super::ops::depth_for;
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
