//! Listing ahead: the subdirectories of a directory being read are listed in the
//! background, a few at a time, so that a tree walk (`find`, `ls -R`, `du`) finds each
//! listing in the cache instead of waiting a round trip per directory. One level ahead
//! only, so listing a large tree's root does not crawl the whole tree.

use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use super::cache::MetaCache;
use super::path::join;
use super::tasks::Tasks;
use crate::remote::{DirEntry, FileKind, Remote};
use crate::sync::lock;

pub(super) struct ListAhead<R: Remote> {
    remote: Arc<R>,
    tasks: Tasks,
    cache: Arc<Mutex<MetaCache>>,
    /// Background fetches out at once, shared with small-file fetching.
    slots: Arc<Semaphore>,
    enabled: bool,
}

impl<R: Remote> ListAhead<R> {
    pub(super) fn new(
        remote: Arc<R>,
        tasks: Tasks,
        cache: Arc<Mutex<MetaCache>>,
        slots: Arc<Semaphore>,
        enabled: bool,
    ) -> Self {
        ListAhead { remote, tasks, cache, slots, enabled }
    }

    /// Lists, in the background, the subdirectories in `list` (the listing of `dir`)
    /// that the cache does not hold.
    pub(super) fn subdirs_of(&self, dir: &str, list: &[DirEntry]) {
        if !self.enabled || !lock(&self.cache).enabled() {
            return;
        }
        let subdirs: Vec<String> = {
            let cache = lock(&self.cache);
            list.iter()
                .filter(|e| e.attr.kind() == FileKind::Dir)
                .map(|e| join(dir, &e.name))
                .filter(|p| !cache.has_listing(p))
                .collect()
        };
        for sub in subdirs {
            let (remote, cache, slots) = (self.remote.clone(), self.cache.clone(), self.slots.clone());
            self.tasks.spawn(async move {
                let Ok(_slot) = slots.acquire_owned().await else { return };
                if lock(&cache).has_listing(&sub) {
                    return;
                }
                let asked = lock(&cache).snapshot();
                if let Ok(l) = remote.read_dir(&sub).await {
                    lock(&cache).put_listing(&sub, &l, asked);
                }
            });
        }
    }
}
