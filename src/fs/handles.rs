//! Open files and directories, numbered for the kernel. What an open file is decides
//! how it is served: from memory, read from the server (with read-ahead), or written
//! through write-behind; `FileState` says which, so no operation has to guess from
//! optional fields.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::listing::Listing;
use super::meta::Ino;
use super::read_ahead::Window;
use super::write_behind::FileQueue;
use crate::remote::{Attr, Bytes, FileKind, Handle};
use crate::sync::lock;

/// An open file.
#[derive(Debug)]
pub(super) struct OpenFile {
    pub ino: Ino,
    pub path: String,
    pub state: FileState,
}

#[derive(Debug)]
pub(super) enum FileState {
    /// The whole file, fetched ahead: reads need no server, and nothing is open there.
    Memory(Bytes),
    /// Open read-only on the server.
    Reading {
        handle: Handle,
        /// Chunks fetched ahead of a sequential reader (none with `--read-ahead 0`).
        window: Option<Window>,
        /// The size known when the file was opened: read-ahead stops there.
        size_hint: u64,
    },
    /// Open for writing (and perhaps reading); writes go through its queue.
    Writing { handle: Handle, queue: Arc<FileQueue> },
}

impl OpenFile {
    /// The queue of a file open for writing.
    /// The server's handle, for a file read or written through one.
    pub fn remote_handle(&self) -> Option<Handle> {
        match &self.state {
            FileState::Memory(_) => None,
            FileState::Reading { handle, .. } | FileState::Writing { handle, .. } => Some(*handle),
        }
    }

    pub fn queue(&self) -> Option<&Arc<FileQueue>> {
        match &self.state {
            FileState::Writing { queue, .. } => Some(queue),
            _ => None,
        }
    }
}

/// A directory open for reading.
pub(super) struct OpenDir {
    pub ino: Ino,
    /// The number of its parent, for "..".
    pub parent: Ino,
    pub path: String,
    pub listing: tokio::sync::Mutex<Listing>,
}

#[derive(Debug, Clone)]
pub struct DirItem {
    pub ino: Ino,
    pub kind: FileKind,
    pub name: String,
    /// `None` for "." and "..", which readdirplus must not count as lookups.
    pub attr: Option<Attr>,
}

/// A table of open handles of one kind.
#[derive(Debug)]
pub(super) struct Handles<T> {
    map: Mutex<HashMap<u64, Arc<T>>>,
    next: AtomicU64,
}

impl<T> Default for Handles<T> {
    fn default() -> Self {
        Handles { map: Mutex::new(HashMap::new()), next: AtomicU64::new(1) }
    }
}

impl<T> Handles<T> {
    pub fn insert(&self, value: T) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(fh, Arc::new(value));
        fh
    }

    pub fn get(&self, fh: u64) -> Option<Arc<T>> {
        self.lock().get(&fh).cloned()
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<T>> {
        self.lock().remove(&fh)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Every open handle `pick` chooses.
    pub fn find_all(&self, pick: impl Fn(&T) -> bool) -> Vec<Arc<T>> {
        self.lock().values().filter(|v| pick(v)).cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<T>>> {
        lock(&self.map)
    }
}
