//! Delete-behind: in a burst of removals in one directory (`rm -rf`, `rm *.o`, `make
//! clean`), `unlink` of a file the mount knows answers once the removal is on its way,
//! so that many removals are out at once instead of one round trip each (the server's
//! own work per removal, a disk discard included, then overlaps too). A lone `rm` still
//! waits for the server, so a program that removes one file and looks on the server
//! finds it gone; `rm -rf` ends with an `rmdir`, which waits for everything before it.
//!
//! Order is kept where a program could see it: every other change of the namespace, and
//! every listing or lookup that asks the server, first waits for the removals before it.
//! A removal the server refuses leaves the file where it was: the caches forget its
//! directory, so that it shows again, and the `rmdir` of that directory reports the
//! error the removal got. Nothing written is at stake: only names.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::cache::parent_and_name;
use super::errno::Errno;

/// Removals out at once, at most.
const MAX_OUT: usize = 64;
/// Directories whose refused removals are remembered until their `rmdir`.
const MAX_REFUSED_DIRS: usize = 1024;
/// An unlink this soon after another in the same directory is part of a burst.
const BURST_GAP: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    pending: HashSet<String>,
    refused: HashMap<String, Errno>,
    /// The directory of the last unlink, and when.
    last: Option<(String, Instant)>,
}

pub struct Removals {
    state: Mutex<State>,
    changed: Notify,
    slots: Arc<Semaphore>,
}

impl Default for Removals {
    fn default() -> Self {
        Removals { state: Mutex::default(), changed: Notify::new(), slots: Arc::new(Semaphore::new(MAX_OUT)) }
    }
}

/// One removal on its way; `finish` reports how it ended.
pub struct Removal {
    path: String,
    _slot: OwnedSemaphorePermit,
}

impl Removals {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Each holder inserts or removes a few entries.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_idle(&self) -> bool {
        self.lock().pending.is_empty()
    }

    /// Records an unlink in `dir`; whether it follows another there closely enough to
    /// go behind.
    pub fn in_burst(&self, dir: &str) -> bool {
        let now = Instant::now();
        let mut s = self.lock();
        let burst = matches!(&s.last, Some((d, at)) if d == dir && now.duration_since(*at) < BURST_GAP);
        s.last = Some((dir.to_string(), now));
        burst
    }

    /// Registers the removal of `path`, waiting while `MAX_OUT` are out.
    pub async fn start(&self, path: &str) -> Removal {
        let slot = match self.slots.clone().acquire_owned().await {
            Ok(s) => s,
            // The semaphore is never closed.
            Err(_) => unreachable!("removal slots closed"),
        };
        self.lock().pending.insert(path.to_string());
        Removal { path: path.to_string(), _slot: slot }
    }

    /// Ends `removal`; a refusal is kept for the `rmdir` of its directory.
    pub fn finish(&self, removal: Removal, result: Result<(), Errno>) {
        {
            let mut s = self.lock();
            s.pending.remove(&removal.path);
            if let Err(e) = result {
                let (dir, _) = parent_and_name(&removal.path);
                if s.refused.len() < MAX_REFUSED_DIRS {
                    s.refused.entry(dir.to_string()).or_insert(e);
                }
            }
        }
        self.changed.notify_waiters();
    }

    /// Resolves once every removal started before is done.
    pub async fn settled(&self) {
        loop {
            let wake = self.changed.notified();
            if self.is_idle() {
                return;
            }
            wake.await;
        }
    }

    /// The first refusal of a removal inside `dir`, reported once.
    pub fn take_refusal(&self, dir: &str) -> Option<Errno> {
        self.lock().refused.remove(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::time::Duration;

    #[tokio::test]
    async fn settled_waits_for_every_removal_out() {
        let r = Arc::new(Removals::default());
        let a = r.start("/d/a").await;
        let b = r.start("/d/b").await;
        assert!(!r.is_idle());
        let waiter = tokio::spawn({
            let r = r.clone();
            async move { r.settled().await }
        });
        r.finish(a, Ok(()));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "settled with a removal still out");
        r.finish(b, Err(Errno::EACCES));
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert!(r.is_idle());
        assert_eq!(r.take_refusal("/d"), Some(Errno::EACCES));
        assert_eq!(r.take_refusal("/d"), None, "reported once");
    }

    #[test]
    fn a_burst_is_unlinks_following_each_other_in_one_directory() {
        let r = Removals::default();
        assert!(!r.in_burst("/a"), "a lone unlink");
        assert!(r.in_burst("/a"));
        assert!(!r.in_burst("/b"), "another directory starts afresh");
        r.lock().last = Some(("/b".into(), Instant::now() - BURST_GAP));
        assert!(!r.in_burst("/b"), "too long after the last one");
    }

    #[tokio::test]
    async fn removals_out_are_bounded() {
        let r = Arc::new(Removals::default());
        let mut out = Vec::new();
        for i in 0..MAX_OUT {
            out.push(r.start(&format!("/f{i}")).await);
        }
        assert!(r.start("/one-more").now_or_never().is_none(), "a removal past the bound did not wait");
        r.finish(out.pop().unwrap(), Ok(()));
        tokio::time::timeout(Duration::from_secs(5), r.start("/one-more")).await.unwrap();
    }
}
