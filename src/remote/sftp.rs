//! [`Remote`] over SFTP: each operation is one or a few SFTP requests on a session taken
//! from the link, with the SFTP status turned into a [`RemoteError`].

use std::collections::HashMap;
use std::sync::Arc;

use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags as SftpOpenFlags, Packet, StatusCode};

use super::{Attr, DirEntry, Extensions, Handle, OpenOptions, Remote, RemoteError, Result, SetAttr, StatFs};
use crate::link::{Link, SftpConn};

const ST_RDONLY: u64 = 1;

pub struct SftpRemote {
    link: Arc<Link>,
}

impl SftpRemote {
    pub fn new(link: Arc<Link>) -> SftpRemote {
        SftpRemote { link }
    }

    fn conn(&self) -> Result<Arc<SftpConn>> {
        self.link.conn().map_err(|e| RemoteError::Disconnected(e.to_string()))
    }
}

/// Reads which OpenSSH extensions the server announced in its version reply.
pub fn extensions_from(announced: &HashMap<String, String>) -> Extensions {
    let has = |name: &str, version: &str| announced.get(name).is_some_and(|v| v == version);
    Extensions {
        posix_rename: has("posix-rename@openssh.com", "1"),
        hardlink: has("hardlink@openssh.com", "1"),
        statvfs: has("statvfs@openssh.com", "2"),
        fsync: has("fsync@openssh.com", "1"),
    }
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
            StatusCode::Failure | StatusCode::Ok => RemoteError::Failure(s.error_message),
        },
        SftpError::Timeout => RemoteError::Timeout,
        SftpError::Limited(m) => RemoteError::BadMessage(m),
        SftpError::UnexpectedPacket => RemoteError::Failure("unexpected reply from the server".into()),
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
        _ => Err(RemoteError::Failure("unexpected reply from the server".into())),
    }
}

fn two_strings(a: &str, b: &str) -> Result<Vec<u8>> {
    russh_sftp::ser::to_bytes(&(a, b)).map(|b| b.to_vec()).map_err(|e| RemoteError::BadMessage(e.to_string()))
}

impl SftpRemote {
    async fn current_owner(&self, conn: &SftpConn, path: &str) -> Option<(u32, u32)> {
        conn.sftp.lstat(path).await.ok().map(|a| (a.attrs.uid.unwrap_or(0), a.attrs.gid.unwrap_or(0)))
    }
}

impl Remote for SftpRemote {
    fn extensions(&self) -> Extensions {
        self.link.conn().map(|c| extensions_from(&c.extensions)).unwrap_or_default()
    }

    async fn realpath(&self, path: &str) -> Result<String> {
        let c = self.conn()?;
        let name = c.sftp.realpath(path).await.map_err(map_err)?;
        name.files
            .into_iter()
            .next()
            .map(|f| f.filename)
            .ok_or_else(|| RemoteError::Failure("empty realpath reply".into()))
    }

    async fn stat(&self, path: &str) -> Result<Attr> {
        let c = self.conn()?;
        c.sftp.stat(path).await.map(|a| attr_from(&a.attrs)).map_err(map_err)
    }

    async fn lstat(&self, path: &str) -> Result<Attr> {
        let c = self.conn()?;
        c.sftp.lstat(path).await.map(|a| attr_from(&a.attrs)).map_err(map_err)
    }

    async fn setstat(&self, path: &str, set: SetAttr) -> Result<()> {
        let c = self.conn()?;
        let owner = if set.uid.is_some() != set.gid.is_some() { self.current_owner(&c, path).await } else { None };
        c.sftp.setstat(path, attrs_to(set, owner)).await.map(|_| ()).map_err(map_err)
    }

    async fn fsetstat(&self, handle: &Handle, set: SetAttr) -> Result<()> {
        let c = self.conn()?;
        let owner = if set.uid.is_some() != set.gid.is_some() {
            c.sftp.fstat(handle.0.clone()).await.ok().map(|a| (a.attrs.uid.unwrap_or(0), a.attrs.gid.unwrap_or(0)))
        } else {
            None
        };
        c.sftp.fsetstat(handle.0.clone(), attrs_to(set, owner)).await.map(|_| ()).map_err(map_err)
    }

    async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        let c = self.conn()?;
        let h = c.sftp.opendir(path).await.map_err(map_err)?.handle;
        let mut out = Vec::new();
        let res = loop {
            match c.sftp.readdir(h.clone()).await {
                Ok(name) => out.extend(
                    name.files
                        .into_iter()
                        .filter(|f| f.filename != "." && f.filename != "..")
                        .map(|f| DirEntry { attr: attr_from(&f.attrs), name: f.filename }),
                ),
                Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => break Ok(out),
                Err(e) => break Err(map_err(e)),
            }
        };
        let _ = c.sftp.close(h).await;
        res
    }

    async fn open(&self, path: &str, o: OpenOptions) -> Result<Handle> {
        let c = self.conn()?;
        let mut flags = SftpOpenFlags::empty();
        for (on, f) in [
            (o.read, SftpOpenFlags::READ),
            (o.write, SftpOpenFlags::WRITE),
            (o.append, SftpOpenFlags::APPEND),
            (o.create, SftpOpenFlags::CREATE),
            (o.truncate, SftpOpenFlags::TRUNCATE),
            (o.exclusive, SftpOpenFlags::EXCLUDE),
        ] {
            if on {
                flags |= f;
            }
        }
        let mut attrs = FileAttributes::empty();
        attrs.permissions = o.mode;
        c.sftp.open(path, flags, attrs).await.map(|h| Handle(h.handle)).map_err(map_err)
    }

    async fn close(&self, handle: &Handle) -> Result<()> {
        let c = self.conn()?;
        c.sftp.close(handle.0.clone()).await.map(|_| ()).map_err(map_err)
    }

    async fn read(&self, handle: &Handle, offset: u64, len: u32) -> Result<Vec<u8>> {
        let c = self.conn()?;
        match c.sftp.read(handle.0.clone(), offset, len).await {
            Ok(d) => Ok(d.data),
            Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => Ok(Vec::new()),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn write(&self, handle: &Handle, offset: u64, data: &[u8]) -> Result<()> {
        let c = self.conn()?;
        c.sftp.write(handle.0.clone(), offset, data.to_vec()).await.map(|_| ()).map_err(map_err)
    }

    async fn fsync(&self, handle: &Handle) -> Result<()> {
        let c = self.conn()?;
        c.sftp.fsync(handle.0.clone()).await.map(|_| ()).map_err(map_err)
    }

    async fn mkdir(&self, path: &str, mode: u32) -> Result<()> {
        let c = self.conn()?;
        let mut attrs = FileAttributes::empty();
        attrs.permissions = Some(mode);
        c.sftp.mkdir(path, attrs).await.map(|_| ()).map_err(map_err)
    }

    async fn rmdir(&self, path: &str) -> Result<()> {
        let c = self.conn()?;
        c.sftp.rmdir(path).await.map(|_| ()).map_err(map_err)
    }

    async fn remove(&self, path: &str) -> Result<()> {
        let c = self.conn()?;
        c.sftp.remove(path).await.map(|_| ()).map_err(map_err)
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let c = self.conn()?;
        if extensions_from(&c.extensions).posix_rename {
            let packet = c.sftp.extended("posix-rename@openssh.com", two_strings(from, to)?).await.map_err(map_err)?;
            return status_of(packet);
        }
        // Plain SFTP rename refuses to replace: remove the target first (not atomic).
        match c.sftp.rename(from, to).await {
            Ok(_) => Ok(()),
            Err(first) => {
                if c.sftp.lstat(to).await.is_ok() && c.sftp.remove(to).await.is_ok() {
                    c.sftp.rename(from, to).await.map(|_| ()).map_err(map_err)
                } else {
                    Err(map_err(first))
                }
            }
        }
    }

    async fn symlink(&self, target: &str, link: &str) -> Result<()> {
        let c = self.conn()?;
        // OpenSSH's server takes the arguments in the reverse of the draft's order
        // (target first), as its own client sends them.
        c.sftp.symlink(target, link).await.map(|_| ()).map_err(map_err)
    }

    async fn readlink(&self, path: &str) -> Result<String> {
        let c = self.conn()?;
        let name = c.sftp.readlink(path).await.map_err(map_err)?;
        name.files
            .into_iter()
            .next()
            .map(|f| f.filename)
            .ok_or_else(|| RemoteError::Failure("empty readlink reply".into()))
    }

    async fn hardlink(&self, existing: &str, new: &str) -> Result<()> {
        let c = self.conn()?;
        c.sftp.hardlink(existing, new).await.map(|_| ()).map_err(map_err)
    }

    async fn statfs(&self, path: &str) -> Result<StatFs> {
        let c = self.conn()?;
        let s = c.sftp.statvfs(path).await.map_err(map_err)?;
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
}
