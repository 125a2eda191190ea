//! Attributes and complete directory listings, each trusted for `--cache-timeout` and
//! kept true through the mount's own changes. A fresh listing also answers "no such
//! file" without asking the server. Whether an answer may be kept at all is `Meta`'s
//! call (its `Snapshot`); `generation` counts the changes it needs for that.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::super::path::{join, parent_and_name, strip_subtree};
use crate::remote::{Attr, DirEntry};

/// The time now, in the seconds SFTP carries (32 bits).
pub(in crate::fs) fn sftp_now() -> u32 {
    u32::try_from(crate::timestamp::unix_secs()).unwrap_or(u32::MAX)
}

/// What the cache can say about a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    Exists(Attr),
    Absent,
    Unknown,
}

#[derive(Debug)]
struct CachedListing {
    entries: Vec<DirEntry>,
    at: Instant,
}

#[derive(Debug)]
pub(super) struct MetaCache {
    timeout: Duration,
    attrs: HashMap<String, (Attr, Instant)>,
    dirs: HashMap<String, CachedListing>,
    /// Bumped by every change the mount makes; an answer fetched across a change is
    /// not cached, since it may predate it.
    generation: u64,
    max_entries: usize,
    /// Nothing held answers (the offline cache answers while the link is down, and what
    /// is held may be from it or older); set until `forget_all`.
    distrusted: bool,
}

impl MetaCache {
    /// A cache trusting what it holds for `timeout` (zero: nothing is kept).
    pub fn new(timeout: Duration) -> MetaCache {
        MetaCache {
            timeout,
            attrs: HashMap::new(),
            dirs: HashMap::new(),
            generation: 0,
            max_entries: 200_000,
            distrusted: false,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.timeout.is_zero()
    }

    /// How many changes the mount has made.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn fresh(&self, at: Instant) -> bool {
        !self.distrusted && at.elapsed() < self.timeout
    }

    /// Nothing held answers until `forget_all`.
    pub fn distrust(&mut self) {
        self.distrusted = true;
    }

    pub fn attr(&self, path: &str) -> Option<Attr> {
        self.attrs.get(path).filter(|(_, at)| self.fresh(*at)).map(|(a, _)| *a)
    }

    pub fn lookup(&self, dir: &str, name: &str) -> Known {
        let path = join(dir, name);
        if let Some(a) = self.attr(&path) {
            return Known::Exists(a);
        }
        match self.dirs.get(dir).filter(|l| self.fresh(l.at)) {
            Some(l) => match l.entries.iter().find(|e| e.name == name) {
                Some(e) => Known::Exists(e.attr),
                None => Known::Absent,
            },
            None => Known::Unknown,
        }
    }

    pub fn listing(&self, dir: &str) -> Option<Vec<DirEntry>> {
        self.dirs.get(dir).filter(|l| self.fresh(l.at)).map(|l| l.entries.clone())
    }

    pub fn has_listing(&self, dir: &str) -> bool {
        self.dirs.get(dir).is_some_and(|l| self.fresh(l.at))
    }

    fn make_room(&mut self) {
        if self.attrs.len() + self.dirs.len() < self.max_entries {
            return;
        }
        let timeout = self.timeout;
        self.attrs.retain(|_, (_, at)| at.elapsed() < timeout);
        self.dirs.retain(|_, l| l.at.elapsed() < timeout);
        if self.attrs.len() + self.dirs.len() >= self.max_entries {
            self.attrs.clear();
            self.dirs.clear();
        }
    }

    /// Records what the server said (`Meta` checked that nothing changed meanwhile).
    pub fn put_attr(&mut self, path: &str, attr: Attr) {
        if !self.enabled() {
            return;
        }
        self.make_room();
        self.attrs.insert(path.to_string(), (attr, Instant::now()));
    }

    pub fn put_listing(&mut self, dir: &str, entries: &[DirEntry]) {
        if !self.enabled() {
            return;
        }
        self.make_room();
        let now = Instant::now();
        for e in entries {
            self.attrs.insert(join(dir, &e.name), (e.attr, now));
        }
        self.dirs.insert(dir.to_string(), CachedListing { entries: entries.to_vec(), at: now });
    }

    fn changed(&mut self) {
        self.generation += 1;
    }

    /// The mount made or changed `path`; `attr` is what it is now.
    pub fn set(&mut self, path: &str, attr: Attr) {
        self.changed();
        if !self.enabled() {
            return;
        }
        self.attrs.insert(path.to_string(), (attr, Instant::now()));
        let (dir, name) = parent_and_name(path);
        if let Some(l) = self.dirs.get_mut(dir) {
            match l.entries.iter_mut().find(|e| e.name == name) {
                Some(e) => e.attr = attr,
                None => l.entries.push(DirEntry { name: name.to_string(), attr }),
            }
        }
    }

    /// The mount made `path` (a file, link or name): its directory changed too.
    pub fn added(&mut self, path: &str, attr: Attr) {
        self.set(path, attr);
        self.entries_changed(parent_and_name(path).0);
    }

    /// The mount added or removed a name in `dir`, so the server changed the
    /// directory's times, which no cached answer knows: its attributes are asked again
    /// (`rsync -a` and `tar` check them before setting them), and its entry in its
    /// parent's listing shows the time of the change.
    fn entries_changed(&mut self, dir: &str) {
        self.attrs.remove(dir);
        let now = sftp_now();
        let (parent, name) = parent_and_name(dir);
        if let Some(e) = self.dirs.get_mut(parent).and_then(|l| l.entries.iter_mut().find(|e| e.name == name)) {
            e.attr.mtime = now;
        }
    }

    /// The mount made an empty directory: its listing is known.
    pub fn new_dir(&mut self, path: &str, attr: Attr) {
        self.added(path, attr);
        if self.enabled() {
            self.dirs.insert(path.to_string(), CachedListing { entries: Vec::new(), at: Instant::now() });
        }
    }

    /// The mount removed `path`.
    pub fn remove(&mut self, path: &str) {
        self.changed();
        self.attrs.remove(path);
        self.dirs.remove(path);
        let (dir, name) = parent_and_name(path);
        if let Some(l) = self.dirs.get_mut(dir) {
            l.entries.retain(|e| e.name != name);
        }
        self.entries_changed(dir);
    }

    /// Whether `path` exists is no longer known (a removal was refused, or someone else
    /// removed it): its attributes go, and so does its directory's listing, whether or
    /// not the listing still names it.
    pub fn forget_name(&mut self, path: &str) {
        self.forget(path);
        let (dir, _) = parent_and_name(path);
        self.dirs.remove(dir);
    }

    /// Nothing held is known to be true any more: ask the server next time.
    pub fn forget_all(&mut self) {
        self.changed();
        self.attrs.clear();
        self.dirs.clear();
        self.distrusted = false;
    }

    /// `path` changed in a way the mount cannot describe: ask the server next time.
    pub fn forget(&mut self, path: &str) {
        self.changed();
        self.attrs.remove(path);
        let (dir, name) = parent_and_name(path);
        if let Some(l) = self.dirs.get(dir) {
            if l.entries.iter().any(|e| e.name == name) {
                self.dirs.remove(dir);
            }
        }
    }

    /// The file at `path` grew to at least `size` through this mount.
    pub fn grew(&mut self, path: &str, size: u64) {
        // What the server says about the file while this write is on its way is stale.
        self.changed();
        let (dir, name) = parent_and_name(path);
        if let Some((a, _)) = self.attrs.get_mut(path) {
            a.size = a.size.max(size);
        }
        if let Some(l) = self.dirs.get_mut(dir) {
            if let Some(e) = l.entries.iter_mut().find(|e| e.name == name) {
                e.attr.size = e.attr.size.max(size);
            }
        }
    }

    /// `from` moved to `to`, with everything below it.
    pub fn rename(&mut self, from: &str, to: &str) {
        let moved = self.attrs.get(from).map(|(a, _)| *a);
        self.remove(from);
        let below = |p: &str| strip_subtree(p, from).is_some_and(|rest| !rest.is_empty());
        self.attrs.retain(|p, _| !below(p));
        self.dirs.retain(|p, _| !below(p));
        self.remove(to);
        match moved {
            Some(a) => self.set(to, a),
            None => self.forget(to),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::{S_IFDIR, S_IFREG};

    fn file(size: u64) -> Attr {
        Attr { size, mode: S_IFREG | 0o644, ..Attr::default() }
    }

    fn cache() -> MetaCache {
        MetaCache::new(Duration::from_secs(60))
    }

    #[test]
    fn a_directory_whose_names_change_is_asked_again() {
        let mut c = MetaCache::new(Duration::from_secs(5));
        let dir = Attr { mode: crate::remote::S_IFDIR | 0o755, mtime: 1000, ..Attr::default() };
        c.put_listing("/", &[DirEntry { name: "d".into(), attr: dir }]);
        c.put_listing("/d", &[]);
        assert_eq!(c.attr("/d").map(|a| a.mtime), Some(1000));
        c.added("/d/f", file(1));
        assert_eq!(c.attr("/d"), None, "a create left the directory's old times cached");
        let Known::Exists(seen) = c.lookup("/", "d") else { panic!("the directory is no longer listed") };
        assert!(seen.mtime > 1000, "its listed time is the old one");
        c.set("/d", dir);
        c.remove("/d/f");
        assert_eq!(c.attr("/d"), None, "a removal left the directory's old times cached");
        c.set("/d", dir);
        c.added("/d/g", file(1));
        c.set("/d", dir);
        c.rename("/d/g", "/d/h");
        assert_eq!(c.attr("/d"), None, "a rename left the directory's old times cached");
    }

    #[test]
    fn listing_answers_lookups_and_absence() {
        let mut c = cache();
        c.put_listing("/d", &[DirEntry { name: "a".into(), attr: file(3) }]);
        assert_eq!(c.lookup("/d", "a"), Known::Exists(file(3)));
        assert_eq!(c.lookup("/d", "b"), Known::Absent);
        assert_eq!(c.lookup("/e", "a"), Known::Unknown);
    }

    #[test]
    fn own_changes_keep_the_cache_true() {
        let mut c = cache();
        c.put_listing("/d", &[DirEntry { name: "a".into(), attr: file(3) }]);
        c.set("/d/b", file(0));
        assert_eq!(c.lookup("/d", "b"), Known::Exists(file(0)));
        c.remove("/d/a");
        assert_eq!(c.lookup("/d", "a"), Known::Absent);
        c.grew("/d/b", 100);
        assert_eq!(c.attr("/d/b").unwrap().size, 100);
        assert_eq!(c.listing("/d").unwrap()[0].attr.size, 100);
        c.rename("/d/b", "/d/c");
        assert_eq!(c.lookup("/d", "b"), Known::Absent);
        assert_eq!(c.lookup("/d", "c"), Known::Exists(file(100)));
        c.new_dir("/d/sub", Attr { mode: S_IFDIR | 0o755, ..Attr::default() });
        assert_eq!(c.lookup("/d/sub", "x"), Known::Absent);
    }

    #[test]
    fn entries_expire() {
        let mut c = MetaCache::new(Duration::from_millis(1));
        c.put_attr("/a", file(1));
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(5) {
            std::hint::spin_loop();
        }
        assert_eq!(c.attr("/a"), None);
        assert_eq!(c.lookup("/", "a"), Known::Unknown);
    }

    #[test]
    fn disabled_cache_keeps_nothing() {
        let mut c = MetaCache::new(Duration::ZERO);
        c.put_attr("/a", file(1));
        c.set("/b", file(1));
        assert_eq!(c.attr("/a"), None);
        assert_eq!(c.attr("/b"), None);
    }

    #[test]
    fn rename_of_a_directory_drops_what_was_below() {
        let mut c = cache();
        c.put_listing("/d", &[DirEntry { name: "x".into(), attr: file(1) }]);
        c.set("/d", Attr { mode: S_IFDIR | 0o755, ..Attr::default() });
        c.rename("/d", "/e");
        assert_eq!(c.attr("/d/x"), None);
        assert!(!c.has_listing("/d"));
    }
}
