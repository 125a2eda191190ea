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

use super::cache::MetaCache;
use super::errno::{self, Errno, Op};
use super::path::parent;
use super::tasks::Tasks;
use crate::remote::{Attr, Remote, RemoteError};
use crate::sync::lock;

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

/// The mount's removals answered before the server did them.
pub(super) struct DeleteBehind<R: Remote> {
    remote: Arc<R>,
    tasks: Tasks,
    cache: Arc<Mutex<MetaCache>>,
    removals: Arc<Removals>,
}

impl<R: Remote> DeleteBehind<R> {
    pub(super) fn new(remote: Arc<R>, tasks: Tasks, cache: Arc<Mutex<MetaCache>>) -> Self {
        DeleteBehind { remote, tasks, cache, removals: Arc::default() }
    }

    /// Records an unlink in `dir`; whether it follows another there closely enough to
    /// go behind.
    pub(super) fn in_burst(&self, dir: &str) -> bool {
        self.removals.in_burst(dir)
    }

    /// Registers the removal of `path`, waiting while `MAX_OUT` are out. The caller
    /// makes the mount forget the file, then `send`s the removal.
    pub(super) async fn start(&self, path: &str) -> Removal {
        self.removals.start(path).await
    }

    /// Sends `removal` of the file last known as `known`; how it ends is recorded for
    /// the `rmdir` of its directory.
    pub(super) fn send(&self, removal: Removal, known: Attr) {
        let (remote, removals, cache) = (self.remote.clone(), self.removals.clone(), self.cache.clone());
        self.tasks.spawn(async move {
            let result = remove_reliably(&*remote, &removal.path, known).await;
            match result {
                // Answers asked while the removal was out may predate it.
                Ok(()) => lock(&cache).changed_on_server(),
                Err(e) => {
                    tracing::warn!(path = removal.path, error = %e, "the server refused a removal; the file stays, and rmdir of its directory reports it");
                    lock(&cache).forget_name(&removal.path);
                }
            }
            removals.finish(removal, result);
        });
    }

    /// Waits for the removals answered before: what the server says next must not
    /// predate them. While the link is down they cannot land, so the caller hears
    /// EAGAIN at once.
    pub(super) async fn removed(&self) -> Result<(), Errno> {
        if self.removals.is_idle() {
            return Ok(());
        }
        if !self.remote.is_available() {
            return Err(Errno::EAGAIN);
        }
        self.removals.all_done().await;
        Ok(())
    }

    /// Resolves once every removal out is done, however long that takes.
    pub(super) async fn all_done(&self) {
        self.removals.all_done().await
    }

    /// The first refusal of a removal inside `dir`, reported once.
    pub(super) fn take_refusal(&self, dir: &str) -> Option<Errno> {
        self.removals.take_refusal(dir)
    }
}

/// Removes `path` (last known as `known`) across reconnects. "No such file" counts as
/// done: the name is gone either way. After the link lost a removal, the file is removed
/// only if it still looks as it did: a file made under the same name meanwhile, by
/// someone else, is not ours to remove.
async fn remove_reliably<R: Remote>(remote: &R, path: &str, known: Attr) -> Result<(), Errno> {
    loop {
        match remote.remove(path).await {
            Ok(()) | Err(RemoteError::NotFound) => return Ok(()),
            Err(e) if e.is_link() => {
                if remote.wait_available().await.is_err() {
                    return Err(Errno::EIO);
                }
                match remote.lstat(path).await {
                    Err(RemoteError::NotFound) => return Ok(()),
                    Ok(now) if now.size != known.size || now.mtime != known.mtime || now.kind() != known.kind() => {
                        tracing::warn!(path, "after a reconnect another file has the name of one removed; leaving it");
                        return Ok(());
                    }
                    // Ours, or unknown yet (the link went again): try again.
                    _ => {}
                }
            }
            Err(e) => {
                return Err(errno::direct(Op::Unlink, &e)
                    .unwrap_or_else(|| errno::explain(Op::Unlink, errno::Facts::default())))
            }
        }
    }
}

/// The removals out and their refusals: the bookkeeping, without the sending.
struct Removals {
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
pub(super) struct Removal {
    path: String,
    _slot: OwnedSemaphorePermit,
}

impl Removals {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn is_idle(&self) -> bool {
        self.lock().pending.is_empty()
    }

    /// Records an unlink in `dir`; whether it follows another there closely enough to
    /// go behind.
    fn in_burst(&self, dir: &str) -> bool {
        let now = Instant::now();
        let mut s = self.lock();
        let burst = matches!(&s.last, Some((d, at)) if d == dir && now.duration_since(*at) < BURST_GAP);
        s.last = Some((dir.to_string(), now));
        burst
    }

    /// Registers the removal of `path`, waiting while `MAX_OUT` are out.
    async fn start(&self, path: &str) -> Removal {
        let slot = match self.slots.clone().acquire_owned().await {
            Ok(s) => s,
            // The semaphore is never closed.
            Err(_) => unreachable!("removal slots closed"),
        };
        self.lock().pending.insert(path.to_string());
        Removal { path: path.to_string(), _slot: slot }
    }

    /// Ends `removal`; a refusal is kept for the `rmdir` of its directory.
    fn finish(&self, removal: Removal, result: Result<(), Errno>) {
        {
            let mut s = self.lock();
            s.pending.remove(&removal.path);
            if let Err(e) = result {
                if s.refused.len() < MAX_REFUSED_DIRS {
                    s.refused.entry(parent(&removal.path).to_string()).or_insert(e);
                }
            }
        }
        self.changed.notify_waiters();
    }

    /// Resolves once every removal started before is done.
    async fn all_done(&self) {
        loop {
            let wake = self.changed.notified();
            if self.is_idle() {
                return;
            }
            wake.await;
        }
    }

    /// The first refusal of a removal inside `dir`, reported once.
    fn take_refusal(&self, dir: &str) -> Option<Errno> {
        self.lock().refused.remove(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::time::Duration;

    #[tokio::test]
    async fn all_done_waits_for_every_removal_out() {
        let r = Arc::new(Removals::default());
        let a = r.start("/d/a").await;
        let b = r.start("/d/b").await;
        assert!(!r.is_idle());
        let waiter = tokio::spawn({
            let r = r.clone();
            async move { r.all_done().await }
        });
        r.finish(a, Ok(()));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "all done with a removal still out");
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
