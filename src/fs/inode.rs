//! Inode numbers for remote paths, stable for the life of the mount.
//!
//! A path keeps its number until it is unlinked or renamed away; the kernel is told only
//! numbers it can trust, so a file replaced by another kind of file gets a new number.

use std::collections::HashMap;

use super::path::{join, strip_subtree};
use crate::remote::FileKind;

pub type Ino = u64;
pub const ROOT: Ino = 1;

#[derive(Debug)]
struct Node {
    /// `None` once the path was removed while the kernel still knew the number.
    path: Option<String>,
    kind: FileKind,
    lookups: u64,
}

#[derive(Debug)]
pub(super) struct Inodes {
    nodes: HashMap<Ino, Node>,
    by_path: HashMap<String, Ino>,
    next: Ino,
}

impl Inodes {
    pub fn new(root_path: &str) -> Inodes {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node { path: Some(root_path.to_string()), kind: FileKind::Dir, lookups: 1 });
        let mut by_path = HashMap::new();
        by_path.insert(root_path.to_string(), ROOT);
        Inodes { nodes, by_path, next: ROOT + 1 }
    }

    pub fn path(&self, ino: Ino) -> Option<&str> {
        self.nodes.get(&ino).and_then(|n| n.path.as_deref())
    }

    #[cfg(test)]
    pub fn kind(&self, ino: Ino) -> Option<FileKind> {
        self.nodes.get(&ino).map(|n| n.kind)
    }

    /// The number `path` has, if any.
    pub fn lookup_path(&self, path: &str) -> Option<Ino> {
        self.by_path.get(path).copied()
    }

    pub fn child_path(&self, parent: Ino, name: &str) -> Option<String> {
        self.path(parent).map(|p| join(p, name))
    }

    /// The number for `path`, assigning one if needed. `lookup` counts a reference the
    /// kernel now holds (lookup, create, readdirplus), which `forget` later returns.
    pub fn intern(&mut self, path: &str, kind: FileKind, lookup: bool) -> Ino {
        let ino = match self.by_path.get(path) {
            Some(&ino) if self.nodes.get(&ino).is_some_and(|n| n.kind == kind) => ino,
            Some(&stale) => {
                self.detach(stale);
                self.assign(path, kind)
            }
            None => self.assign(path, kind),
        };
        if lookup {
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.lookups += 1;
            }
        }
        ino
    }

    fn assign(&mut self, path: &str, kind: FileKind) -> Ino {
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(ino, Node { path: Some(path.to_string()), kind, lookups: 0 });
        self.by_path.insert(path.to_string(), ino);
        ino
    }

    fn detach(&mut self, ino: Ino) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            if let Some(p) = n.path.take() {
                self.by_path.remove(&p);
            }
            if n.lookups == 0 {
                self.nodes.remove(&ino);
            }
        }
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&mut self, ino: Ino, n: u64) {
        if ino == ROOT {
            return;
        }
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(n);
            if node.lookups == 0 && node.path.is_none() {
                self.nodes.remove(&ino);
            }
        }
    }

    /// The file at `path` is gone (unlink, rmdir, or replaced by a rename).
    pub fn remove_path(&mut self, path: &str) {
        if let Some(ino) = self.by_path.get(path).copied() {
            if ino != ROOT {
                self.detach(ino);
            }
        }
    }

    /// `from` now lives at `to`, with everything below it.
    pub fn rename(&mut self, from: &str, to: &str) {
        self.remove_path(to);
        let moved: Vec<(String, String, Ino)> = self
            .by_path
            .iter()
            .filter_map(|(p, &i)| strip_subtree(p, from).map(|rest| (p.clone(), format!("{to}{rest}"), i)))
            .collect();
        for (old, new, ino) in moved {
            self.by_path.remove(&old);
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.path = Some(new.clone());
            }
            self.by_path.insert(new, ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_and_distinct() {
        let mut t = Inodes::new("/r");
        let a = t.intern("/r/a", FileKind::File, true);
        let b = t.intern("/r/b", FileKind::Dir, true);
        assert_ne!(a, b);
        assert_eq!(t.intern("/r/a", FileKind::File, true), a);
        t.forget(a, 2);
        // Forgotten but not removed: the number survives.
        assert_eq!(t.intern("/r/a", FileKind::File, false), a);
        assert_eq!(t.path(ROOT), Some("/r"));
    }

    #[test]
    fn removed_path_gets_new_number() {
        let mut t = Inodes::new("/r");
        let a = t.intern("/r/a", FileKind::File, true);
        t.remove_path("/r/a");
        assert_eq!(t.path(a), None);
        let a2 = t.intern("/r/a", FileKind::File, true);
        assert_ne!(a, a2);
        t.forget(a, 1);
        assert_eq!(t.kind(a), None);
    }

    #[test]
    fn kind_change_gets_new_number() {
        let mut t = Inodes::new("/r");
        let a = t.intern("/r/a", FileKind::File, false);
        let d = t.intern("/r/a", FileKind::Dir, false);
        assert_ne!(a, d);
    }

    #[test]
    fn rename_moves_subtree() {
        let mut t = Inodes::new("/r");
        let d = t.intern("/r/d", FileKind::Dir, true);
        let f = t.intern("/r/d/f", FileKind::File, true);
        let other = t.intern("/r/dx", FileKind::File, true);
        let victim = t.intern("/r/e", FileKind::Dir, true);
        t.rename("/r/d", "/r/e");
        assert_eq!(t.path(d), Some("/r/e"));
        assert_eq!(t.path(f), Some("/r/e/f"));
        assert_eq!(t.path(other), Some("/r/dx"));
        assert_eq!(t.path(victim), None);
        assert_eq!(t.intern("/r/e/f", FileKind::File, false), f);
    }
}
