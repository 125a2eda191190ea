//! Whole small files fetched ahead. A program reading one small file after another in
//! a directory (`cat *`, `grep -r`, `tar c`, a compiler) pays two round trips per file;
//! once it has opened a couple in one directory, the rest of that directory's small
//! files are fetched in parallel and later opens are served from memory. Contents are
//! trusted as long as the metadata cache trusts the file's attributes, and dropped on
//! any change the mount makes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::remote::{Attr, Bytes};

/// Files up to this size are fetched whole.
pub const SMALL: u64 = 128 * 1024;
/// Bytes held at most.
const CAPACITY: usize = 32 * 1024 * 1024;
/// Opens in one directory before its other small files are fetched.
const OPENS_BEFORE_FETCH: u32 = 2;
/// Files fetched per directory at most.
pub const MAX_FILES_PER_DIR: usize = 512;

#[derive(Debug)]
struct Content {
    data: Bytes,
    attr: Attr,
    at: Instant,
}

#[derive(Debug)]
pub struct SmallFiles {
    ttl: Duration,
    files: HashMap<String, Content>,
    bytes: usize,
    opens: HashMap<String, u32>,
}

impl SmallFiles {
    pub fn new(ttl: Duration) -> SmallFiles {
        SmallFiles { ttl, files: HashMap::new(), bytes: 0, opens: HashMap::new() }
    }

    /// The content of `path`, if fetched recently and the file still looks the same.
    pub fn get(&self, path: &str, attr: &Attr) -> Option<Bytes> {
        let c = self.files.get(path)?;
        (c.at.elapsed() < self.ttl && c.attr.size == attr.size && c.attr.mtime == attr.mtime).then(|| c.data.clone())
    }

    pub fn contains(&self, path: &str) -> bool {
        self.files.contains_key(path)
    }

    pub fn put(&mut self, path: &str, attr: Attr, data: Bytes) {
        if self.ttl.is_zero() || data.len() as u64 != attr.size {
            return;
        }
        if self.bytes + data.len() > CAPACITY {
            let ttl = self.ttl;
            self.files.retain(|_, c| c.at.elapsed() < ttl);
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
    pub fn forget(&mut self, path: &str) {
        if let Some(c) = self.files.remove(path) {
            self.bytes -= c.data.len();
        }
    }

    /// Counts an open of a small file in `dir`; true when the directory's other small
    /// files should now be fetched (once per directory while it stays cached).
    pub fn opened_in(&mut self, dir: &str) -> bool {
        if self.ttl.is_zero() {
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
        let mut c = SmallFiles::new(Duration::from_secs(60));
        c.put("/a", attr(3, 10), Bytes::from_static(b"abc"));
        assert_eq!(c.get("/a", &attr(3, 10)).unwrap(), &b"abc"[..]);
        assert!(c.get("/a", &attr(4, 10)).is_none());
        assert!(c.get("/a", &attr(3, 11)).is_none());
        c.forget("/a");
        assert!(c.get("/a", &attr(3, 10)).is_none());
    }

    #[test]
    fn incomplete_content_is_not_kept() {
        let mut c = SmallFiles::new(Duration::from_secs(60));
        c.put("/a", attr(10, 1), Bytes::from_static(b"short"));
        assert!(!c.contains("/a"));
    }

    #[test]
    fn second_open_in_a_directory_triggers_the_fetch_once() {
        let mut c = SmallFiles::new(Duration::from_secs(60));
        assert!(!c.opened_in("/d"));
        assert!(c.opened_in("/d"));
        assert!(!c.opened_in("/d"));
        assert!(!c.opened_in("/e"));
    }

    #[test]
    fn capacity_is_respected() {
        let mut c = SmallFiles::new(Duration::from_secs(60));
        let big = Bytes::from(vec![0u8; CAPACITY / 2 + 1]);
        c.put("/a", attr(big.len() as u64, 1), big.clone());
        c.put("/b", attr(big.len() as u64, 1), big);
        assert!(c.contains("/a") && !c.contains("/b"));
    }
}
