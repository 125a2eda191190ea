//! SFTP v3 requests framed here instead of by the library, sent on a connection's
//! direct path beside READ and WRITE. Names and handles travel as the bytes they are:
//! the library carries both as UTF-8 strings, which loses names that are not UTF-8 and
//! corrupts OpenSSH's handles from the 128th open file on.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::StatusCode;

use super::channel::{status, DirectSftp, FXP_STATUS as STATUS};
use crate::remote::name;
use crate::remote::{Attr, SetAttr};

pub const OPEN: u8 = 3;
pub const CLOSE: u8 = 4;
pub const LSTAT: u8 = 7;
pub const FSTAT: u8 = 8;
pub const SETSTAT: u8 = 9;
pub const FSETSTAT: u8 = 10;
pub const OPENDIR: u8 = 11;
pub const READDIR: u8 = 12;
pub const REMOVE: u8 = 13;
pub const MKDIR: u8 = 14;
pub const RMDIR: u8 = 15;
pub const REALPATH: u8 = 16;
pub const STAT: u8 = 17;
pub const RENAME: u8 = 18;
pub const READLINK: u8 = 19;
pub const SYMLINK: u8 = 20;
pub const EXTENDED: u8 = 200;

const HANDLE: u8 = 102;
const NAME: u8 = 104;
const ATTRS: u8 = 105;
const EXTENDED_REPLY: u8 = 201;

const ATTR_SIZE: u32 = 0x1;
const ATTR_UIDGID: u32 = 0x2;
const ATTR_PERMISSIONS: u32 = 0x4;
const ATTR_ACMODTIME: u32 = 0x8;
const ATTR_EXTENDED: u32 = 0x8000_0000;

/// A server's handle: opaque bytes.
pub type ServerHandle = Bytes;

/// The longest handle a server may send (SFTP v3, draft-ietf-secsh-filexfer-02, 3).
const HANDLE_MAX: usize = 256;

/// What follows a request's id.
#[derive(Default)]
pub struct Body(BytesMut);

impl Body {
    pub fn new() -> Body {
        Body::default()
    }

    /// A string: its length, then its bytes.
    pub fn bytes(mut self, b: &[u8]) -> Body {
        self.0.put_u32(b.len() as u32);
        self.0.extend_from_slice(b);
        self
    }

    /// A name or path, as the bytes it stands for.
    pub fn name(self, n: &str) -> Body {
        self.bytes(&name::to_bytes(n))
    }

    pub fn u32(mut self, v: u32) -> Body {
        self.0.put_u32(v);
        self
    }

    /// Attributes to set: only what `set` changes. SFTP sends uid and gid as a pair:
    /// `owner` is the pair now, for the one not being changed.
    pub fn attrs(mut self, set: &SetAttr, owner: Option<(u32, u32)>) -> Body {
        let mut flags = 0;
        let ids = match (set.uid, set.gid) {
            (None, None) => None,
            (u, g) => {
                let (cu, cg) = owner.unwrap_or((0, 0));
                Some((u.unwrap_or(cu), g.unwrap_or(cg)))
            }
        };
        flags |= if set.size.is_some() { ATTR_SIZE } else { 0 };
        flags |= if ids.is_some() { ATTR_UIDGID } else { 0 };
        flags |= if set.mode.is_some() { ATTR_PERMISSIONS } else { 0 };
        flags |= if set.times.is_some() { ATTR_ACMODTIME } else { 0 };
        self.0.put_u32(flags);
        if let Some(size) = set.size {
            self.0.put_u64(size);
        }
        if let Some((u, g)) = ids {
            self.0.put_u32(u);
            self.0.put_u32(g);
        }
        if let Some(mode) = set.mode {
            self.0.put_u32(mode);
        }
        if let Some((a, m)) = set.times {
            self.0.put_u32(a);
            self.0.put_u32(m);
        }
        self
    }
}

/// Sends one request and returns the answer's frame.
async fn call(d: &DirectSftp, kind: u8, body: Body) -> Result<Bytes, SftpError> {
    d.call(kind, &body.0).await
}

/// The answer after its length, type and id; `Err` for a STATUS (Ok included) or an
/// answer of another type than `want`.
fn expect(frame: Bytes, want: u8) -> Result<Bytes, SftpError> {
    match frame.get(4) {
        Some(&k) if k == want && frame.len() >= 9 => Ok(frame.slice(9..)),
        Some(&STATUS) => Err(status(&frame)),
        _ => Err(SftpError::UnexpectedPacket),
    }
}

/// A request answered by a STATUS, Ok meaning done.
pub async fn done(d: &DirectSftp, kind: u8, body: Body) -> Result<(), SftpError> {
    match call(d, kind, body).await? {
        f if f.get(4) == Some(&STATUS) => match status(&f) {
            SftpError::Status(s) if s.status_code == StatusCode::Ok => Ok(()),
            e => Err(e),
        },
        _ => Err(SftpError::UnexpectedPacket),
    }
}

/// A request answered by a HANDLE (OPEN, OPENDIR).
pub async fn handle(d: &DirectSftp, kind: u8, body: Body) -> Result<ServerHandle, SftpError> {
    let mut b = expect(call(d, kind, body).await?, HANDLE)?;
    take_handle(&mut b)
}

/// A handle from a HANDLE answer; one longer than the protocol allows is a broken or
/// hostile server, and is not kept to be sent back with every request.
fn take_handle(b: &mut Bytes) -> Result<ServerHandle, SftpError> {
    let h = take_bytes(b)?;
    if h.len() > HANDLE_MAX {
        // Answered as any reply that breaks the protocol (EIO); the log says which.
        tracing::warn!(bytes = h.len(), "the server sent a handle longer than SFTP's 256 bytes: refused");
        return Err(SftpError::UnexpectedPacket);
    }
    Ok(h)
}

/// A request answered by ATTRS (STAT, LSTAT, FSTAT).
pub async fn attrs(d: &DirectSftp, kind: u8, body: Body) -> Result<Attr, SftpError> {
    let mut b = expect(call(d, kind, body).await?, ATTRS)?;
    take_attrs(&mut b)
}

/// A request answered by NAME (READDIR, REALPATH, READLINK): names with attributes.
/// `Err(Status(Eof))` at the end of a listing.
pub async fn names(d: &DirectSftp, kind: u8, body: Body) -> Result<Vec<(String, Attr)>, SftpError> {
    let mut b = expect(call(d, kind, body).await?, NAME)?;
    let count = take_u32(&mut b)?;
    let mut out = Vec::with_capacity(count.min(4096) as usize);
    for _ in 0..count {
        let filename = take_bytes(&mut b)?;
        let _longname = take_bytes(&mut b)?;
        let attr = take_attrs(&mut b)?;
        out.push((name::from_bytes(&filename), attr));
    }
    Ok(out)
}

/// An extended request answered by EXTENDED_REPLY: its data.
pub async fn extended_reply(d: &DirectSftp, body: Body) -> Result<Bytes, SftpError> {
    expect(call(d, EXTENDED, body).await?, EXTENDED_REPLY)
}

fn short() -> SftpError {
    SftpError::UnexpectedPacket
}

pub fn take_u32(b: &mut Bytes) -> Result<u32, SftpError> {
    if b.remaining() < 4 {
        return Err(short());
    }
    Ok(b.get_u32())
}

pub fn take_u64(b: &mut Bytes) -> Result<u64, SftpError> {
    if b.remaining() < 8 {
        return Err(short());
    }
    Ok(b.get_u64())
}

fn take_bytes(b: &mut Bytes) -> Result<Bytes, SftpError> {
    let n = take_u32(b)? as usize;
    if b.remaining() < n {
        return Err(short());
    }
    Ok(b.split_to(n))
}

fn take_attrs(b: &mut Bytes) -> Result<Attr, SftpError> {
    let flags = take_u32(b)?;
    let mut a = Attr::default();
    if flags & ATTR_SIZE != 0 {
        a.size = take_u64(b)?;
    }
    if flags & ATTR_UIDGID != 0 {
        a.uid = take_u32(b)?;
        a.gid = take_u32(b)?;
    }
    if flags & ATTR_PERMISSIONS != 0 {
        a.mode = take_u32(b)?;
    }
    if flags & ATTR_ACMODTIME != 0 {
        a.atime = take_u32(b)?;
        a.mtime = take_u32(b)?;
    }
    if flags & ATTR_EXTENDED != 0 {
        for _ in 0..take_u32(b)? {
            take_bytes(b)?;
            take_bytes(b)?;
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_go_out_with_only_what_changes() {
        let set = SetAttr { mode: Some(0o644), times: Some((5, 6)), ..SetAttr::default() };
        let b = Body::new().attrs(&set, None).0.freeze();
        let mut r = b.clone();
        assert_eq!(take_u32(&mut r).unwrap(), ATTR_PERMISSIONS | ATTR_ACMODTIME);
        assert_eq!((take_u32(&mut r).unwrap(), take_u32(&mut r).unwrap(), take_u32(&mut r).unwrap()), (0o644, 5, 6));
        assert!(r.is_empty());
        // One id changes: the other is the current one.
        let set = SetAttr { gid: Some(9), ..SetAttr::default() };
        let mut r = Body::new().attrs(&set, Some((3, 4))).0.freeze();
        assert_eq!(take_u32(&mut r).unwrap(), ATTR_UIDGID);
        assert_eq!((take_u32(&mut r).unwrap(), take_u32(&mut r).unwrap()), (3, 9));
    }

    #[test]
    fn attributes_come_back_with_what_the_server_sent() {
        let mut f = BytesMut::new();
        f.put_u32(ATTR_SIZE | ATTR_UIDGID | ATTR_PERMISSIONS | ATTR_ACMODTIME | ATTR_EXTENDED);
        f.put_u64(42);
        f.put_u32(1000);
        f.put_u32(100);
        f.put_u32(0o100644);
        f.put_u32(7);
        f.put_u32(8);
        f.put_u32(1);
        for s in [&b"k"[..], b"v"] {
            f.put_u32(s.len() as u32);
            f.extend_from_slice(s);
        }
        let mut b = f.freeze();
        let a = take_attrs(&mut b).unwrap();
        assert_eq!((a.size, a.uid, a.gid, a.mode, a.atime, a.mtime), (42, 1000, 100, 0o100644, 7, 8));
        assert!(b.is_empty());
        // Cut short: refused, never read past the end.
        let mut f = BytesMut::new();
        f.put_u32(ATTR_SIZE);
        f.put_u32(1);
        assert!(take_attrs(&mut f.freeze()).is_err());
    }

    #[test]
    fn a_handle_longer_than_the_protocol_allows_is_refused() {
        let frame = |len: usize| {
            let mut f = BytesMut::new();
            f.put_u32(len as u32);
            f.extend_from_slice(&vec![7u8; len]);
            f.freeze()
        };
        assert_eq!(take_handle(&mut frame(256)).unwrap().len(), 256);
        let e = take_handle(&mut frame(257)).unwrap_err();
        assert!(matches!(e, SftpError::UnexpectedPacket), "{e}");
        assert!(take_handle(&mut frame(4096)).is_err());
    }

    #[test]
    fn a_name_that_is_not_utf8_goes_out_as_its_bytes() {
        let n = name::from_bytes(b"caf\xe9");
        let mut b = Body::new().name(&n).0.freeze();
        assert_eq!(take_bytes(&mut b).unwrap(), &b"caf\xe9"[..]);
    }
}
