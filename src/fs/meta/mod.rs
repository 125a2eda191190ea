//! The one owner of what the mount knows of remote metadata: the inode numbers the
//! kernel holds (`inodes`), attributes and complete listings (`cache`), and the count
//! of writes the server acknowledged, which decides whether an answer may be kept
//! (`Snapshot`).
//!
//! The other owners ask it by verb instead of sharing its locks. The coordinator tells
//! it what the mount did (`created`, `made_dir`, `removed`, `renamed`, `changed`,
//! `grew`) or that it no longer knows (`unsure`, `unsure_of_name`); readers ask
//! (`attr`, `lookup`, `listing`) and hand back what the server said with the
//! `snapshot` taken before asking (`remember_attr`, `remember_listing`). Every change
//! to what the mount believes passes through these verbs: that is where a persistent
//! layer (the offline cache) sits.
//!
//! Its two locks are never held together, so no caller can deadlock on them.

mod cache;
mod inodes;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub(super) use cache::{sftp_now, Known};
pub(super) use inodes::{Ino, ROOT};

use super::path::join;
use crate::remote::{Attr, DirEntry, FileKind};
use crate::sync::lock;
use cache::MetaCache;
use inodes::Inodes;

/// Where things stood when a question went to the server. Its answer may be kept only
/// if the mount changed nothing (`generation`) and no write landed (`landed`)
/// meanwhile: on another connection of the pool, a write in flight can land after the
/// answer was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Snapshot {
    generation: u64,
    landed: u64,
}

/// Counts the writes the server acknowledged, mount-wide, for `Meta`'s snapshots. Write-
/// behind holds one; it can count, nothing else.
#[derive(Debug, Clone, Default)]
pub(super) struct Landings(Arc<AtomicU64>);

impl Landings {
    /// One write was acknowledged (or refused: either way it is no longer on its way).
    pub fn landed(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
pub(super) struct Meta {
    inodes: Mutex<Inodes>,
    cache: Mutex<MetaCache>,
    landings: Landings,
}

impl Meta {
    /// What a mount of `root` knows at first: its root's number. Attributes and listings
    /// are trusted for `timeout` (zero: none is kept).
    pub fn new(root: &str, timeout: Duration) -> Meta {
        Meta {
            inodes: Mutex::new(Inodes::new(root)),
            cache: Mutex::new(MetaCache::new(timeout)),
            landings: Landings::default(),
        }
    }

    fn inodes(&self) -> MutexGuard<'_, Inodes> {
        lock(&self.inodes)
    }

    fn cache(&self) -> MutexGuard<'_, MetaCache> {
        lock(&self.cache)
    }

    /// The counter write-behind reports acknowledged writes to.
    pub fn landings(&self) -> Landings {
        self.landings.clone()
    }

    // Numbers.

    pub fn path(&self, ino: Ino) -> Option<String> {
        self.inodes().path(ino).map(str::to_string)
    }

    /// The path of `name` in the directory numbered `parent`.
    pub fn child(&self, parent: Ino, name: &str) -> Option<String> {
        self.inodes().child_path(parent, name)
    }

    pub fn kind(&self, ino: Ino) -> Option<FileKind> {
        self.inodes().kind(ino)
    }

    /// The number `path` has, if it has one.
    pub fn ino_of(&self, path: &str) -> Option<Ino> {
        self.inodes().lookup_path(path)
    }

    /// The number of `path`, now held by the kernel (a lookup, a create).
    pub fn held(&self, path: &str, kind: FileKind) -> Ino {
        self.inodes().intern(path, kind, true)
    }

    /// The number of `path`, which the kernel does not hold (yet).
    pub fn numbered(&self, path: &str, kind: FileKind) -> Ino {
        self.inodes().intern(path, kind, false)
    }

    /// A number of its own for what an operation just made at `path`, which was free on
    /// the server: a number the mount still had there belongs to another file.
    pub fn held_new(&self, path: &str, kind: FileKind) -> Ino {
        let mut inodes = self.inodes();
        inodes.remove_path(path);
        inodes.intern(path, kind, true)
    }

    /// The kernel took `ino` from a listing as a lookup reference.
    pub fn count_lookup(&self, ino: Ino, kind: FileKind) {
        let mut inodes = self.inodes();
        if let Some(p) = inodes.path(ino).map(str::to_string) {
            inodes.intern(&p, kind, true);
        }
    }

    /// The kernel dropped `n` references to `ino`: once it holds none, the number goes,
    /// unless `in_use`. Returns whether `ino` no longer names a path.
    pub fn forget(&self, ino: Ino, n: u64, in_use: impl Fn(Ino) -> bool) -> bool {
        let mut inodes = self.inodes();
        inodes.forget(ino, n, in_use);
        inodes.path(ino).is_none()
    }

    /// Numbers for the entries of the listing of `dir`, in their order. Numbers the
    /// kernel never took are let go first when too many piled up, unless `in_use`.
    pub fn numbered_entries<'a>(
        &self,
        dir: &str,
        names: impl Iterator<Item = (&'a str, FileKind)>,
        in_use: impl Fn(Ino) -> bool,
    ) -> Vec<Ino> {
        let mut inodes = self.inodes();
        if inodes.crowded() {
            inodes.sweep(in_use);
        }
        names.map(|(name, kind)| inodes.intern(&join(dir, name), kind, false)).collect()
    }

    // What the server said.

    pub fn enabled(&self) -> bool {
        self.cache().enabled()
    }

    /// Where things stand now, for a question about to go to the server.
    pub fn snapshot(&self) -> Snapshot {
        self.at(&self.cache())
    }

    /// Where things stand, with the cache locked so that no change slips in before the
    /// answer is kept.
    fn at(&self, cache: &MetaCache) -> Snapshot {
        Snapshot { generation: cache.generation(), landed: self.landings.count() }
    }

    /// Whether an answer asked at `asked` is still true enough to keep.
    pub fn unchanged_since(&self, asked: Snapshot) -> bool {
        self.snapshot() == asked
    }

    pub fn attr(&self, path: &str) -> Option<Attr> {
        self.cache().attr(path)
    }

    pub fn lookup(&self, dir: &str, name: &str) -> Known {
        self.cache().lookup(dir, name)
    }

    pub fn listing(&self, dir: &str) -> Option<Vec<DirEntry>> {
        self.cache().listing(dir)
    }

    pub fn has_listing(&self, dir: &str) -> bool {
        self.cache().has_listing(dir)
    }

    /// Keeps what the server said of `path`, if nothing changed since it was `asked`.
    pub fn remember_attr(&self, path: &str, attr: Attr, asked: Snapshot) {
        let mut cache = self.cache();
        if self.at(&cache) == asked {
            cache.put_attr(path, attr);
        }
    }

    /// Keeps the complete listing of `dir`, if nothing changed since it was `asked`.
    pub fn remember_listing(&self, dir: &str, entries: &[DirEntry], asked: Snapshot) {
        let mut cache = self.cache();
        if self.at(&cache) == asked {
            cache.put_listing(dir, entries);
        }
    }

    // What the mount did.

    /// The mount made `path` (a file, link or name), which is `attr` now.
    pub fn created(&self, path: &str, attr: Attr) {
        self.cache().added(path, attr);
    }

    /// The mount made the empty directory `path`: its listing is known.
    pub fn made_dir(&self, path: &str, attr: Attr) {
        self.cache().new_dir(path, attr);
    }

    /// The mount changed `path`, which is `attr` now.
    pub fn changed(&self, path: &str, attr: Attr) {
        self.cache().set(path, attr);
    }

    /// The mount removed `path`: it is gone, and so is its number.
    pub fn removed(&self, path: &str) {
        self.cache().remove(path);
        self.inodes().remove_path(path);
    }

    /// The mount moved `from` to `to`, with everything below it, replacing what was there.
    pub fn renamed(&self, from: &str, to: &str) {
        self.cache().rename(from, to);
        self.inodes().rename(from, to);
    }

    /// The file numbered `ino` grew to at least `size` through this mount. Returns its
    /// path, if it still has one.
    pub fn grew(&self, ino: Ino, size: u64) -> Option<String> {
        let path = self.path(ino)?;
        self.cache().grew(&path, size);
        Some(path)
    }

    /// `path` changed in a way the mount cannot describe: the server is asked next time.
    pub fn unsure(&self, path: &str) {
        self.cache().forget(path);
    }

    /// Whether `path` exists is no longer known (a removal was refused, or someone else
    /// removed it): its directory's listing goes too.
    pub fn unsure_of_name(&self, path: &str) {
        self.cache().forget_name(path);
    }

    /// The link is down and the offline cache answers: what is held answers nothing
    /// until `unsure_of_all`, since it may be older than the cache's answers.
    pub fn distrust(&self) {
        self.cache().distrust();
    }

    /// Nothing held is known to be true any more (the offline cache answered while the
    /// link was down): every answer is asked again. Returns what the kernel holds, by
    /// number and path, for it to be told the same.
    pub fn unsure_of_all(&self) -> Vec<(Ino, String)> {
        self.cache().forget_all();
        self.inodes().held_paths()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::S_IFREG;

    fn file(size: u64) -> Attr {
        Attr { size, mode: S_IFREG | 0o644, ..Attr::default() }
    }

    fn meta() -> Meta {
        Meta::new("/", Duration::from_secs(60))
    }

    #[test]
    fn answers_from_before_a_change_are_not_cached() {
        let m = meta();
        let asked = m.snapshot();
        m.removed("/d/a");
        m.remember_attr("/d/a", file(1), asked);
        assert_eq!(m.attr("/d/a"), None);
        m.remember_listing("/d", &[DirEntry { name: "a".into(), attr: file(1) }], asked);
        assert!(!m.has_listing("/d"));
    }

    #[test]
    fn answers_from_before_a_write_landed_are_not_cached() {
        let m = meta();
        let asked = m.snapshot();
        m.landings().landed();
        m.remember_attr("/a", file(1), asked);
        assert_eq!(m.attr("/a"), None);
        let asked = m.snapshot();
        m.remember_attr("/a", file(1), asked);
        assert_eq!(m.attr("/a"), Some(file(1)));
    }

    #[test]
    fn removed_and_renamed_keep_numbers_and_cache_in_step() {
        let m = meta();
        let d = m.held("/d", FileKind::Dir);
        let f = m.held("/d/f", FileKind::File);
        m.created("/d/f", file(3));
        m.renamed("/d", "/e");
        assert_eq!(m.path(d).as_deref(), Some("/e"));
        assert_eq!(m.path(f).as_deref(), Some("/e/f"));
        assert_eq!(m.attr("/d/f"), None);
        m.removed("/e/f");
        assert_eq!(m.path(f), None);
        assert_eq!(m.ino_of("/e/f"), None);
        assert_eq!(m.grew(f, 10), None, "a removed file's growth went to a path");
    }

    #[test]
    fn something_made_anew_gets_its_own_number() {
        let m = meta();
        let old = m.held("/a", FileKind::File);
        let new = m.held_new("/a", FileKind::File);
        assert_ne!(old, new);
        assert_eq!(m.path(old), None);
    }
}
