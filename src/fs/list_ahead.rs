//! Listing ahead: the subdirectories of a directory being read are listed in the
//! background, a few at a time, so that a tree walk (`find`, `ls -R`, `du`) finds each
//! listing in the cache instead of waiting a round trip per directory. One level ahead
//! only, so listing a large tree's root does not crawl the whole tree, and within a
//! budget: a directory of more than `AHEAD_PER_DIR` entries is not listed ahead (it
//! streams when a program opens it), and once `AHEAD_ENTRIES` entries listed ahead wait
//! for a program to enter their directories, nothing more is listed ahead until some
//! are entered or expire.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};

use super::listing;
use super::meta::Meta;
use super::path::join;
use super::tasks::Tasks;
use crate::remote::{DirEntry, FileKind, Remote};
use crate::sync::lock;

/// Entries of one directory past which it is not listed ahead.
const AHEAD_PER_DIR: usize = 5_000;
/// Entries listed ahead, not yet entered, past which nothing more is listed ahead.
const AHEAD_ENTRIES: usize = 50_000;

enum Ahead {
    Queued,
    /// Being listed; the sender is dropped when the listing ends, however it ends.
    Started(watch::Receiver<()>),
}

pub(super) struct ListAhead<R: Remote> {
    remote: Arc<R>,
    tasks: Tasks,
    meta: Arc<Meta>,
    /// Background fetches out at once, shared with small-file fetching.
    slots: Arc<Semaphore>,
    enabled: bool,
    /// Directories listed ahead that no program has entered yet: their entries, and
    /// when they were listed (they expire with the cache).
    waiting: Arc<Mutex<HashMap<String, (usize, Instant)>>>,
    /// Directories to be listed ahead: a program that opens one being listed waits for
    /// that listing instead of asking the server a second time, and one still queued
    /// is taken over by the program.
    underway: Arc<Mutex<HashMap<String, Ahead>>>,
    timeout: Duration,
}

impl<R: Remote> ListAhead<R> {
    pub(super) fn new(
        remote: Arc<R>,
        tasks: Tasks,
        meta: Arc<Meta>,
        slots: Arc<Semaphore>,
        enabled: bool,
        timeout: Duration,
    ) -> Self {
        ListAhead { remote, tasks, meta, slots, enabled, waiting: Arc::default(), underway: Arc::default(), timeout }
    }

    /// Waits for `dir` if it is being listed ahead right now; the caller then looks in
    /// the cache again (a failed listing ahead leaves nothing there).
    pub(super) async fn joined(&self, dir: &str) {
        let mut done = {
            let mut underway = lock(&self.underway);
            match underway.get(dir) {
                Some(Ahead::Started(done)) => done.clone(),
                Some(Ahead::Queued) => {
                    underway.remove(dir);
                    return;
                }
                None => return,
            }
        };
        let _ = done.changed().await;
    }

    /// A program opened `dir`: what was listed ahead of it is used.
    pub(super) fn entered(&self, dir: &str) {
        lock(&self.waiting).remove(dir);
    }

    /// Entries listed ahead and waiting, after forgetting what expired.
    fn waiting_entries(&self) -> usize {
        let mut waiting = lock(&self.waiting);
        waiting.retain(|_, (_, at)| at.elapsed() < self.timeout);
        waiting.values().map(|(n, _)| n).sum()
    }

    /// Lists, in the background, the subdirectories in `list` (the listing of `dir`)
    /// that the cache does not hold, within the budget.
    pub(super) fn subdirs_of(&self, dir: &str, list: &[DirEntry]) {
        if !self.enabled || !self.meta.enabled() || self.waiting_entries() >= AHEAD_ENTRIES {
            return;
        }
        let unlisted: Vec<String> = list
            .iter()
            .filter(|e| e.attr.kind() == FileKind::Dir)
            .map(|e| join(dir, &e.name))
            .filter(|p| !self.meta.has_listing(p))
            .collect();
        let subdirs: Vec<String> = {
            let waiting = lock(&self.waiting);
            let mut underway = lock(&self.underway);
            let mut subdirs = Vec::new();
            for p in unlisted {
                if !waiting.contains_key(&p) && !underway.contains_key(&p) {
                    underway.insert(p.clone(), Ahead::Queued);
                    subdirs.push(p);
                }
            }
            subdirs
        };
        for sub in subdirs {
            let (remote, meta, slots, waiting, underway) = (
                self.remote.clone(),
                self.meta.clone(),
                self.slots.clone(),
                self.waiting.clone(),
                self.underway.clone(),
            );
            self.tasks.spawn(async move {
                let Ok(_slot) = slots.acquire_owned().await else { return };
                let (_done, rx) = watch::channel(());
                {
                    // Asked before taking `underway`: the metadata owner's locks are never
                    // taken while holding it.
                    let listed = meta.has_listing(&sub);
                    let mut underway = lock(&underway);
                    match underway.get(&sub) {
                        Some(Ahead::Queued) if !listed => {
                            underway.insert(sub.clone(), Ahead::Started(rx));
                        }
                        Some(Ahead::Queued) => {
                            underway.remove(&sub);
                            return;
                        }
                        // Taken over by a program that opened it meanwhile.
                        _ => return,
                    }
                }
                let asked = meta.snapshot();
                if let Ok(Some(l)) = listing::whole(&*remote, &sub, AHEAD_PER_DIR).await {
                    meta.remember_listing(&sub, &l, asked);
                    lock(&waiting).insert(sub.clone(), (l.len(), Instant::now()));
                }
                lock(&underway).remove(&sub);
            });
        }
    }
}
