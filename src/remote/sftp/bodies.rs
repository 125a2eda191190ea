//! The bodies of SFTP requests, as OpenSSH's server reads them.

use super::*;

/// SFTP's open flags for `o`.
pub(super) fn open_flags(o: OpenOptions) -> u32 {
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
pub(super) fn open_body(path: &str, o: OpenOptions, mode: Option<u32>) -> Body {
    let set = SetAttr { mode, ..SetAttr::default() };
    Body::new().name(path).u32(open_flags(o)).attrs(&set, None)
}

pub(super) fn path_body(path: &str) -> Body {
    Body::new().name(path)
}

/// A request naming one handle.
pub(super) fn handle_body(h: &[u8]) -> Body {
    Body::new().bytes(h)
}

/// An OpenSSH extended request: its name, then its fields.
pub(super) fn extended(name: &str) -> Body {
    Body::new().bytes(name.as_bytes())
}

/// A SYMLINK request. OpenSSH's server takes the arguments in the reverse of the
/// draft's order (target first), as its own client sends them.
pub(super) fn symlink_body(target: &str, link: &str) -> Body {
    Body::new().name(target).name(link)
}
