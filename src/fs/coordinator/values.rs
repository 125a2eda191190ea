//! The values the core's operations take and give: entries, attribute changes, open
//! flags, and the mount's options for the core.

use std::time::Duration;

use super::super::meta::Ino;
use super::super::read_ahead::MAX_WINDOW;
use crate::remote::Attr;

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

/// Tunables of the filesystem core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsOptions {
    /// Data written but not yet on the server, for the whole mount.
    pub dirty_limit: usize,
    /// How long attributes and listings are trusted (`--cache-timeout`; zero: not cached).
    pub cache_timeout: Duration,
    /// List subdirectories ahead of a tree walk.
    pub list_ahead: bool,
    /// Largest read-ahead window per open file, in bytes (`--read-ahead`; zero: none).
    pub read_ahead: u64,
    /// The uid the server acts as (the remote login user), when known: whose mode and
    /// time changes cannot be refused on its own files.
    pub login_uid: Option<u32>,
    /// Every modifying call fails with EROFS before anything is sent (`--read-only`).
    pub read_only: bool,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            dirty_limit: 64 * 1024 * 1024,
            cache_timeout: Duration::from_secs(5),
            list_ahead: true,
            read_ahead: MAX_WINDOW,
            login_uid: None,
            read_only: false,
        }
    }
}
