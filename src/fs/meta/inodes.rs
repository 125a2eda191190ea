//! Inode numbers for remote paths, stable while the kernel knows them.
//!
//! A path keeps its number until it is unlinked or renamed away, or the kernel forgets
//! it; the kernel is told only numbers it can trust, so a file replaced by another kind
//! of file gets a new number. Numbers the kernel forgets are forgotten here too, and
//! those it never took (plain `readdir`) are let go once there are many, so a walk over
//! millions of files does not grow the table without bound.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::super::path::{join, strip_subtree};
use crate::remote::FileKind;

pub type Ino = u64;
pub const ROOT: Ino = 1;

#[derive(Debug)]
struct Node {
    /// `None` once the path was removed while the kernel still knew the number. Shared
    /// with `by_path`: a table of a million files holds each path once.
    path: Option<Arc<str>>,
    kind: FileKind,
    lookups: u64,
}

#[derive(Debug)]
pub(super) struct Inodes {
    nodes: HashMap<Ino, Node>,
    by_path: HashMap<Arc<str>, Ino>,
    next: Ino,
    /// Numbers made without the kernel taking them, oldest first: candidates to let go.
    unheld: VecDeque<Ino>,
}

/// Numbers the kernel never took that are kept before the oldest are let go.
const UNHELD_KEPT: usize = 100_000;

impl Inodes {
    pub fn new(root_path: &str) -> Inodes {
        let mut nodes = HashMap::new();
        let root: Arc<str> = Arc::from(root_path);
        nodes.insert(ROOT, Node { path: Some(root.clone()), kind: FileKind::Dir, lookups: 1 });
        let mut by_path = HashMap::new();
        by_path.insert(root, ROOT);
        Inodes { nodes, by_path, next: ROOT + 1, unheld: VecDeque::new() }
    }

    pub fn path(&self, ino: Ino) -> Option<&str> {
        self.nodes.get(&ino).and_then(|n| n.path.as_deref())
    }

    pub fn kind(&self, ino: Ino) -> Option<FileKind> {
        self.nodes.get(&ino).map(|n| n.kind)
    }

    /// Every number the kernel holds, with the path it has.
    pub fn held_paths(&self) -> Vec<(Ino, String)> {
        let held = self.nodes.iter().filter(|(_, n)| n.lookups > 0);
        held.filter_map(|(ino, n)| Some((*ino, n.path.as_deref()?.to_string()))).collect()
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
        if let Some(n) = self.nodes.get_mut(&ino) {
            if lookup {
                n.lookups += 1;
            } else if n.lookups == 0 {
                self.unheld.push_back(ino);
            }
        }
        ino
    }

    /// Whether enough numbers the kernel never took have piled up to `sweep`.
    pub fn crowded(&self) -> bool {
        self.unheld.len() > 2 * UNHELD_KEPT
    }

    /// Lets go of the oldest numbers the kernel does not hold, down to `UNHELD_KEPT`,
    /// sparing those `keep` says are still in use.
    pub fn sweep(&mut self, keep: impl Fn(Ino) -> bool) {
        while self.unheld.len() > UNHELD_KEPT {
            let Some(ino) = self.unheld.pop_front() else { break };
            if self.nodes.get(&ino).is_some_and(|n| n.lookups == 0) && !keep(ino) {
                self.drop_node(ino);
            }
        }
    }

    fn drop_node(&mut self, ino: Ino) {
        if let Some(n) = self.nodes.remove(&ino) {
            if let Some(p) = n.path {
                if self.by_path.get(&p) == Some(&ino) {
                    self.by_path.remove(&p);
                }
            }
        }
    }

    fn assign(&mut self, path: &str, kind: FileKind) -> Ino {
        let ino = self.next;
        self.next += 1;
        let path: Arc<str> = Arc::from(path);
        self.nodes.insert(ino, Node { path: Some(path.clone()), kind, lookups: 0 });
        self.by_path.insert(path, ino);
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

    /// The kernel dropped `n` references to `ino`; once it holds none, the number goes
    /// unless `keep` says it is still in use here.
    pub fn forget(&mut self, ino: Ino, n: u64, keep: impl Fn(Ino) -> bool) {
        if ino == ROOT {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino) else { return };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups > 0 {
            return;
        }
        if node.path.is_none() || !keep(ino) {
            self.drop_node(ino);
        } else {
            self.unheld.push_back(ino);
        }
    }

    /// How many numbers are known.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.nodes.len()
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
        let moved: Vec<(Arc<str>, Arc<str>, Ino)> = self
            .by_path
            .iter()
            .filter_map(|(p, &i)| strip_subtree(p, from).map(|rest| (p.clone(), Arc::from(format!("{to}{rest}")), i)))
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
        t.forget(a, 1, |_| false);
        // Still held once: the number survives.
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
        t.forget(a, 1, |_| true);
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
    fn what_the_kernel_forgets_is_forgotten_unless_in_use() {
        let mut t = Inodes::new("/r");
        let a = t.intern("/r/a", FileKind::File, true);
        let b = t.intern("/r/b", FileKind::File, true);
        t.forget(a, 1, |_| false);
        assert_eq!(t.path(a), None, "a number the kernel forgot was kept");
        t.forget(b, 1, |ino| ino == b);
        assert_eq!(t.path(b), Some("/r/b"), "a number still in use was dropped");
        assert_ne!(t.intern("/r/a", FileKind::File, true), a);
    }

    #[test]
    fn numbers_the_kernel_never_took_are_let_go_when_crowded() {
        let mut t = Inodes::new("/r");
        let held = t.intern("/r/held", FileKind::File, true);
        let mut first = None;
        for i in 0..(2 * UNHELD_KEPT + 10) {
            let ino = t.intern(&format!("/r/f{i}"), FileKind::File, false);
            first.get_or_insert(ino);
        }
        assert!(t.crowded());
        let spared = first.unwrap();
        t.sweep(|ino| ino == spared);
        assert!(!t.crowded());
        assert!(t.len() <= UNHELD_KEPT + 3, "{} numbers kept", t.len());
        assert_eq!(t.path(held), Some("/r/held"), "a held number was let go");
        assert_eq!(t.path(spared), Some("/r/f0"), "a number in use was let go");
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
