//! Open file and directory handles, numbered for the kernel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::inode::Ino;
use super::prefetch::ReadAhead;
use super::writeback::WriteBack;
use crate::remote::{Attr, FileKind, Handle};

/// An open remote file.
#[derive(Debug)]
pub struct OpenFile {
    pub ino: Ino,
    pub handle: Handle,
    pub path: String,
    pub writable: bool,
    pub wb: Arc<WriteBack>,
    /// For files opened read-only: chunks fetched ahead of a sequential reader.
    pub ra: Option<ReadAhead>,
    /// The size known when the file was opened: read-ahead stops there.
    pub size_hint: u64,
    /// The whole file, when it was fetched ahead: reads need no server and `handle`
    /// is not open on it.
    pub memory: Option<crate::remote::Bytes>,
}

/// A directory listing taken at `opendir`, served from memory by `readdir`.
#[derive(Debug)]
pub struct OpenDir {
    pub entries: Vec<DirItem>,
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
pub struct Handles<T> {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<T>>> {
        // A panic while holding this lock leaves the map itself consistent.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}
