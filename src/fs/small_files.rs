//! Whole small files fetched ahead. A program reading one small file after another in
//! a directory (`cat *`, `grep -r`, `tar c`, a compiler) pays two round trips per file;
//! once it has opened a couple in one directory, the rest of that directory's small
//! files are fetched in parallel and later opens are served from memory. Contents are
//! trusted as long as the metadata cache trusts the file's attributes, and dropped on
//! any change the mount makes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::meta::Meta;
use super::path::{join, parent_and_name};
use super::read_ahead::read_fully;
use super::tasks::Tasks;
use crate::remote::{Attr, Bytes, FileKind, OpenOptions, Remote};
use crate::sync::lock;

/// Files up to this size are fetched whole.
const SMALL: u64 = 128 * 1024;
/// Bytes held at most.
const CAPACITY: usize = 32 * 1024 * 1024;
/// Opens in one directory before its other small files are fetched.
const OPENS_BEFORE_FETCH: u32 = 2;
/// Files fetched per directory at most.
const MAX_FILES_PER_DIR: usize = 512;

/// The mount's small files fetched ahead, and the fetching.
pub(super) struct SmallFiles<R: Remote> {
    remote: Arc<R>,
    tasks: Tasks,
    meta: Arc<Meta>,
    /// Background fetches out at once, shared with listing ahead.
    slots: Arc<Semaphore>,
    contents: Arc<Mutex<Contents>>,
}

impl<R: Remote> SmallFiles<R> {
    pub(super) fn new(remote: Arc<R>, tasks: Tasks, meta: Arc<Meta>, slots: Arc<Semaphore>, timeout: Duration) -> Self {
        SmallFiles { remote, tasks, meta, slots, contents: Arc::new(Mutex::new(Contents::new(timeout))) }
    }

    /// The mount changed `path`: what was fetched of it is no longer true.
    pub(super) fn forget(&self, path: &str) {
        lock(&self.contents).forget(path);
    }

    #[cfg(test)]
    pub(super) fn holds(&self, path: &str) -> bool {
        lock(&self.contents).contains(path)
    }

    /// The content of the small file `path`, opened read-only, if it was fetched ahead.
    /// Counts the open, and fetches the directory's other small files once a program
    /// is seen going through them.
    pub(super) fn open(&self, path: &str) -> Option<Bytes> {
        let attr = self.meta.attr(path)?;
        if attr.kind() != FileKind::File || attr.size > SMALL {
            return None;
        }
        let (dir, _) = parent_and_name(path);
        let (content, fetch_dir) = {
            let mut contents = lock(&self.contents);
            (contents.get(path, &attr), contents.opened_in(dir))
        };
        if fetch_dir {
            self.fetch_dir(dir, path);
        }
        content
    }

    /// Fetches the small files of `dir` (as the cached listing has them, after `from`)
    /// a few at a time in the background.
    fn fetch_dir(&self, dir: &str, from: &str) {
        let Some(listing) = self.meta.listing(dir) else { return };
        let (_, from_name) = parent_and_name(from);
        let mut names: Vec<_> = listing
            .into_iter()
            .filter(|e| e.attr.kind() == FileKind::File && e.attr.size <= SMALL && e.name.as_str() != from_name)
            .collect();
        // Programs mostly go on in listing or name order from where they are.
        names.sort_by(|a, b| {
            (a.name.as_str() <= from_name).cmp(&(b.name.as_str() <= from_name)).then(a.name.cmp(&b.name))
        });
        names.truncate(MAX_FILES_PER_DIR);
        for e in names {
            let path = join(dir, &e.name);
            if lock(&self.contents).contains(&path) {
                continue;
            }
            let (remote, contents, meta, slots) =
                (self.remote.clone(), self.contents.clone(), self.meta.clone(), self.slots.clone());
            self.tasks.spawn(async move {
                let Ok(_slot) = slots.acquire_owned().await else { return };
                let asked = meta.snapshot();
                let opts = OpenOptions { read: true, ..OpenOptions::default() };
                let Ok(h) = remote.open(&path, opts).await else { return };
                let data = read_fully(&*remote, &h, 0, e.attr.size.max(1) as u32).await;
                let _ = remote.close(&h).await;
                if let Ok(data) = data {
                    // Kept only if the mount changed nothing meanwhile.
                    if meta.unchanged_since(asked) {
                        lock(&contents).put(&path, e.attr, data);
                    }
                }
            });
        }
    }
}

#[derive(Debug)]
struct Content {
    data: Bytes,
    attr: Attr,
    at: Instant,
}

/// What was fetched, by path, within a byte budget.
#[derive(Debug)]
struct Contents {
    timeout: Duration,
    files: HashMap<String, Content>,
    bytes: usize,
    opens: HashMap<String, u32>,
}

impl Contents {
    fn new(timeout: Duration) -> Contents {
        Contents { timeout, files: HashMap::new(), bytes: 0, opens: HashMap::new() }
    }

    /// The content of `path`, if fetched recently and the file still looks the same.
    fn get(&self, path: &str, attr: &Attr) -> Option<Bytes> {
        let c = self.files.get(path)?;
        (c.at.elapsed() < self.timeout && c.attr.size == attr.size && c.attr.mtime == attr.mtime)
            .then(|| c.data.clone())
    }

    fn contains(&self, path: &str) -> bool {
        self.files.contains_key(path)
    }

    fn put(&mut self, path: &str, attr: Attr, data: Bytes) {
        if self.timeout.is_zero() || data.len() as u64 != attr.size {
            return;
        }
        if self.bytes + data.len() > CAPACITY {
            let timeout = self.timeout;
            self.files.retain(|_, c| c.at.elapsed() < timeout);
            self.bytes = self.files.values().map(|c| c.data.len()).sum();
            if self.bytes + data.len() > CAPACITY {
                return;
            }
        }
        self.bytes += data.len();
        if let Some(old) = self.files.insert(path.to_string(), Content { data, attr, at: Instant::now() }) {
            self.bytes -= old.data.len();
        }
    }

    /// The mount changed `path`: its fetched content is no longer true.
    fn forget(&mut self, path: &str) {
        if let Some(c) = self.files.remove(path) {
            self.bytes -= c.data.len();
        }
    }

    /// Counts an open of a small file in `dir`; true when the directory's other small
    /// files should now be fetched (once per directory while it stays cached).
    fn opened_in(&mut self, dir: &str) -> bool {
        if self.timeout.is_zero() {
            return false;
        }
        if self.opens.len() > 10_000 {
            self.opens.clear();
        }
        let n = self.opens.entry(dir.to_string()).or_insert(0);
        *n += 1;
        *n == OPENS_BEFORE_FETCH
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::S_IFREG;

    fn attr(size: u64, mtime: u32) -> Attr {
        Attr { size, mode: S_IFREG | 0o644, mtime, ..Attr::default() }
    }

    #[test]
    fn served_only_while_the_file_looks_the_same() {
        let mut c = Contents::new(Duration::from_secs(60));
        c.put("/a", attr(3, 10), Bytes::from_static(b"abc"));
        assert_eq!(c.get("/a", &attr(3, 10)).unwrap(), &b"abc"[..]);
        assert!(c.get("/a", &attr(4, 10)).is_none());
        assert!(c.get("/a", &attr(3, 11)).is_none());
        c.forget("/a");
        assert!(c.get("/a", &attr(3, 10)).is_none());
    }

    #[test]
    fn incomplete_content_is_not_kept() {
        let mut c = Contents::new(Duration::from_secs(60));
        c.put("/a", attr(10, 1), Bytes::from_static(b"short"));
        assert!(!c.contains("/a"));
    }

    #[test]
    fn second_open_in_a_directory_triggers_the_fetch_once() {
        let mut c = Contents::new(Duration::from_secs(60));
        assert!(!c.opened_in("/d"));
        assert!(c.opened_in("/d"));
        assert!(!c.opened_in("/d"));
        assert!(!c.opened_in("/e"));
    }

    #[test]
    fn capacity_is_respected() {
        let mut c = Contents::new(Duration::from_secs(60));
        let big = Bytes::from(vec![0u8; CAPACITY / 2 + 1]);
        c.put("/a", attr(big.len() as u64, 1), big.clone());
        c.put("/b", attr(big.len() as u64, 1), big);
        assert!(c.contains("/a") && !c.contains("/b"));
    }
}
