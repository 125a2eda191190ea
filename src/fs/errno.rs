//! The one place where remote failures become errno values.
//!
//! SFTP v3 has only a handful of status codes, and OpenSSH's server folds most errno
//! values into `SSH_FX_FAILURE`. So a generic failure is explained with facts gathered
//! right after it (`errno_for`: does the target exist, is the directory empty, is the
//! remote filesystem read-only or full), and mapped by the pure `explain` by what the
//! operation was.

use super::path;
use crate::remote::{FileKind, Remote, RemoteError};

/// A POSIX error number as given back to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl From<path::BadName> for Errno {
    fn from(bad: path::BadName) -> Errno {
        match bad {
            path::BadName::TooLong => Errno::ENAMETOOLONG,
            path::BadName::NotAName => Errno::EINVAL,
        }
    }
}

impl Errno {
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EAGAIN: Errno = Errno(libc::EAGAIN);
    pub const EINTR: Errno = Errno(libc::EINTR);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ESTALE: Errno = Errno(libc::ESTALE);
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

/// The filesystem operation that failed, which decides how a failure is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Getattr,
    Setattr,
    Chown,
    Readdir,
    Open,
    Create,
    Read,
    Write,
    Fsync,
    Mkdir,
    Rmdir,
    Unlink,
    Rename,
    Symlink,
    Readlink,
    Link,
    Statfs,
}

impl Op {
    /// Its name, as a log line says it.
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Setattr => "setattr",
            Op::Chown => "chown",
            Op::Readdir => "readdir",
            Op::Open => "open",
            Op::Create => "create",
            Op::Read => "read",
            Op::Write => "write",
            Op::Fsync => "fsync",
            Op::Mkdir => "mkdir",
            Op::Rmdir => "rmdir",
            Op::Unlink => "unlink",
            Op::Rename => "rename",
            Op::Symlink => "symlink",
            Op::Readlink => "readlink",
            Op::Link => "link",
            Op::Statfs => "statfs",
        }
    }

    /// Whether the operation changes the remote filesystem (and so may meet EROFS/ENOSPC).
    fn modifies(self) -> bool {
        matches!(
            self,
            Op::Setattr
                | Op::Chown
                | Op::Create
                | Op::Write
                | Op::Fsync
                | Op::Mkdir
                | Op::Rmdir
                | Op::Unlink
                | Op::Rename
                | Op::Symlink
                | Op::Link
        )
    }
}

/// What the fs core found out after a generic failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facts {
    /// Kind of the file at the operation's target path, if one exists there.
    pub target: Option<FileKind>,
    /// Kind of the file being moved or linked (rename, link).
    pub source: Option<FileKind>,
    /// The target is a directory with entries in it.
    pub target_nonempty: bool,
    /// The remote filesystem is mounted read-only.
    pub read_only: bool,
    /// The remote filesystem has no free blocks for the user.
    pub full: bool,
}

/// Maps an error that needs no further facts. Returns `None` for a generic failure that
/// `explain` should refine.
pub(super) fn direct(op: Op, err: &RemoteError) -> Option<Errno> {
    Some(match err {
        RemoteError::NotFound => Errno::ENOENT,
        // The server folds EPERM into "permission denied"; for ownership changes POSIX
        // says EPERM.
        RemoteError::PermissionDenied if op == Op::Chown => Errno::EPERM,
        RemoteError::PermissionDenied => Errno::EACCES,
        RemoteError::BadMessage(_) => Errno::EINVAL,
        RemoteError::Unsupported => Errno::EOPNOTSUPP,
        RemoteError::Eof => Errno::EIO,
        // Whatever the link does, the program gets "try again", at once.
        RemoteError::Unavailable(_) | RemoteError::Disconnected(_) | RemoteError::Timeout => Errno::EAGAIN,
        RemoteError::LinkFailed(_) | RemoteError::FileLost(_) => Errno::EIO,
        RemoteError::TooManyOpen => Errno(libc::EMFILE),
        RemoteError::NoSpace => Errno(libc::ENOSPC),
        RemoteError::ServerFailure(_) => return None,
    })
}

/// The errno for `err`, the failure of `op` on `target` (moving or linking `source`):
/// asks the server the facts `explain` needs when the failure is a generic one.
pub(super) async fn errno_for<R: Remote>(
    remote: &R,
    op: Op,
    err: &RemoteError,
    target: &str,
    source: Option<&str>,
) -> Errno {
    if let Some(e) = direct(op, err) {
        return e;
    }
    tracing::debug!(?op, target, %err, "explaining generic failure");
    explain(op, facts(remote, op, target, source).await)
}

async fn facts<R: Remote>(remote: &R, op: Op, target: &str, source: Option<&str>) -> Facts {
    let mut facts = Facts::default();
    if let Ok(a) = remote.lstat(target).await {
        facts.target = Some(a.kind());
        if a.kind() == FileKind::Dir && matches!(op, Op::Rmdir | Op::Rename) {
            // More than none is all that is asked.
            facts.target_nonempty = matches!(super::listing::whole(remote, target, 0).await, Ok(None));
        }
    }
    if let Some(src) = source {
        facts.source = remote.lstat(src).await.ok().map(|a| a.kind());
    }
    if remote.extensions().statvfs {
        if let Ok(s) = remote.statfs(path::parent(target)).await {
            facts.read_only = s.read_only;
            facts.full = s.blocks_avail == 0;
        }
    }
    facts
}

/// Maps a generic failure of `op` given what was found out after it.
pub(super) fn explain(op: Op, f: Facts) -> Errno {
    use FileKind::Dir;
    let by_op = match op {
        Op::Mkdir | Op::Symlink | Op::Link | Op::Create if f.target.is_some() => Some(Errno::EEXIST),
        Op::Rmdir if f.target.is_some_and(|k| k != Dir) => Some(Errno::ENOTDIR),
        Op::Rmdir if f.target_nonempty => Some(Errno::ENOTEMPTY),
        Op::Unlink if f.target == Some(Dir) => Some(Errno::EISDIR),
        Op::Rename if f.target_nonempty => Some(Errno::ENOTEMPTY),
        Op::Rename if f.source == Some(Dir) && f.target.is_some_and(|k| k != Dir) => Some(Errno::ENOTDIR),
        Op::Rename if f.source.is_some_and(|k| k != Dir) && f.target == Some(Dir) => Some(Errno::EISDIR),
        Op::Open if f.target == Some(Dir) => Some(Errno::EISDIR),
        _ => None,
    };
    if let Some(e) = by_op {
        return e;
    }
    if op.modifies() && f.read_only {
        return Errno::EROFS;
    }
    if op.modifies() && f.full {
        return Errno::ENOSPC;
    }
    Errno::EIO
}

#[cfg(test)]
mod tests {
    use super::*;
    use FileKind::*;

    #[test]
    fn direct_codes() {
        assert_eq!(direct(Op::Lookup, &RemoteError::NotFound), Some(Errno::ENOENT));
        assert_eq!(direct(Op::Open, &RemoteError::PermissionDenied), Some(Errno::EACCES));
        assert_eq!(direct(Op::Chown, &RemoteError::PermissionDenied), Some(Errno::EPERM));
        assert_eq!(direct(Op::Read, &RemoteError::Disconnected("x".into())), Some(Errno::EAGAIN));
        assert_eq!(direct(Op::Read, &RemoteError::Unavailable("x".into())), Some(Errno::EAGAIN));
        assert_eq!(direct(Op::Read, &RemoteError::Timeout), Some(Errno::EAGAIN));
        assert_eq!(direct(Op::Read, &RemoteError::LinkFailed("x".into())), Some(Errno::EIO));
        assert_eq!(direct(Op::Write, &RemoteError::FileLost("x".into())), Some(Errno::EIO));
        assert_eq!(direct(Op::Link, &RemoteError::Unsupported), Some(Errno::EOPNOTSUPP));
        assert_eq!(direct(Op::Mkdir, &RemoteError::ServerFailure("x".into())), None);
    }

    #[test]
    fn failures_explained_by_context() {
        let exists = |k| Facts { target: Some(k), ..Facts::default() };
        assert_eq!(explain(Op::Mkdir, exists(Dir)), Errno::EEXIST);
        assert_eq!(explain(Op::Create, exists(File)), Errno::EEXIST);
        assert_eq!(explain(Op::Rmdir, exists(File)), Errno::ENOTDIR);
        let nonempty = Facts { target: Some(Dir), target_nonempty: true, ..Facts::default() };
        assert_eq!(explain(Op::Rmdir, nonempty), Errno::ENOTEMPTY);
        assert_eq!(explain(Op::Rename, nonempty), Errno::ENOTEMPTY);
        assert_eq!(explain(Op::Unlink, exists(Dir)), Errno::EISDIR);
        let dir_over_file = Facts { source: Some(Dir), target: Some(File), ..Facts::default() };
        assert_eq!(explain(Op::Rename, dir_over_file), Errno::ENOTDIR);
        let file_over_dir = Facts { source: Some(File), target: Some(Dir), ..Facts::default() };
        assert_eq!(explain(Op::Rename, file_over_dir), Errno::EISDIR);
        let ro = Facts { read_only: true, ..Facts::default() };
        assert_eq!(explain(Op::Write, ro), Errno::EROFS);
        assert_eq!(explain(Op::Read, ro), Errno::EIO);
        let full = Facts { full: true, ..Facts::default() };
        assert_eq!(explain(Op::Write, full), Errno::ENOSPC);
        assert_eq!(explain(Op::Write, Facts::default()), Errno::EIO);
    }
}
