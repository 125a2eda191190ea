//! What a failed call of the core carries to the kernel boundary: the errno the program
//! gets, what failed (the operation and its path), and the remote failure behind it.
//! It is logged once, where the kernel is answered (`fuse::call`), at the level its
//! errno deserves (`level`): most failures are ordinary answers to programs (a name not
//! found, a directory not empty, the link down) and only a failure the program cannot
//! explain is a warning.

use super::errno::{Errno, Op};
use super::path::BadName;
use crate::remote::RemoteError;

#[derive(Debug, Clone)]
pub struct FsError {
    errno: Errno,
    /// What failed, e.g. `rename /a/b to /a/c`; empty where the errno says it all.
    message: String,
    /// The server's or the link's failure behind it, if any.
    source: Option<RemoteError>,
}

pub type FsResult<T> = Result<T, FsError>;

/// How loudly a failure is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// An ordinary answer to a program: nothing to tell a person.
    Debug,
    /// Worth a line: the remote filesystem is full or read-only.
    Info,
    /// The program got EIO: the person may need to know why.
    Warn,
}

/// The level a failure with `errno` deserves (see the module's comment).
pub fn level(errno: Errno) -> Level {
    match errno {
        Errno::EIO => Level::Warn,
        Errno::ENOSPC | Errno::EROFS => Level::Info,
        _ => Level::Debug,
    }
}

impl FsError {
    /// `op` on `path` failed with `errno`, because of `source`.
    pub fn remote(errno: Errno, op: Op, path: &str, source: RemoteError) -> FsError {
        FsError { errno, message: format!("{} {path}", op.name()), source: Some(source) }
    }

    pub fn errno(&self) -> Errno {
        self.errno
    }

    /// Logs the failure: once, where the kernel is answered. `late` when the kernel was
    /// answered before the operation ended (see `fuse::call`).
    pub fn log(&self, late: bool) {
        // Formatted only if the line is written: most failures are debug lines, off.
        let source = self.source.as_ref().map(tracing::field::display);
        let (errno, what) = (self.errno, self.message.as_str());
        let said = if late { "operation failed after its call was answered" } else { "call failed" };
        match level(self.errno) {
            Level::Debug => tracing::debug!(%errno, what, source, "{said}"),
            Level::Info => tracing::info!(%errno, what, source, "{said}"),
            Level::Warn => tracing::warn!(%errno, what, source, "{said}"),
        }
    }
}

impl From<Errno> for FsError {
    fn from(errno: Errno) -> FsError {
        FsError { errno, message: String::new(), source: None }
    }
}

impl From<BadName> for FsError {
    fn from(bad: BadName) -> FsError {
        Errno::from(bad).into()
    }
}

impl From<FsError> for Errno {
    fn from(e: FsError) -> Errno {
        e.errno
    }
}

impl PartialEq<Errno> for FsError {
    fn eq(&self, other: &Errno) -> bool {
        self.errno == *other
    }
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.message, &self.source) {
            (m, _) if m.is_empty() => write!(f, "{}", self.errno),
            (m, None) => write!(f, "{m}: {}", self.errno),
            (m, Some(s)) => write!(f, "{m}: {} ({s})", self.errno),
        }
    }
}

impl std::error::Error for FsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|s| s as _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_a_program_cannot_explain_is_a_warning() {
        let table = [
            (Errno::EIO, Level::Warn),
            (Errno::ENOSPC, Level::Info),
            (Errno::EROFS, Level::Info),
            (Errno::ENOENT, Level::Debug),
            (Errno::EEXIST, Level::Debug),
            (Errno::ENOTEMPTY, Level::Debug),
            (Errno::EACCES, Level::Debug),
            (Errno::EAGAIN, Level::Debug),
            (Errno::EINTR, Level::Debug),
            (Errno::ESTALE, Level::Debug),
        ];
        for (errno, want) in table {
            assert_eq!(level(errno), want, "{errno}");
        }
    }

    #[test]
    fn a_failure_says_what_failed_and_why() {
        let e = FsError::remote(Errno::EIO, Op::Rename, "/a/b", RemoteError::ServerFailure("disk on fire".into()));
        let text = e.to_string();
        assert!(text.starts_with("rename /a/b: "), "{text}");
        assert!(text.contains("disk on fire"), "{text}");
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(FsError::from(Errno::ENOENT).to_string(), Errno::ENOENT.to_string());
        assert_eq!(FsError::from(Errno::ENOENT), Errno::ENOENT);
    }
}
