//! The mount's background work, tracked. Every task an owner starts (write-behind
//! flushers, removals, read-ahead, listing and fetching ahead, closes) is spawned here,
//! so that unmounting can stop them all and know when they are gone, instead of leaving
//! detached tasks to finish, or not, after the mount.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub(super) struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    /// Runs `work` in the background until it ends or the mount shuts down (then it
    /// yields `None`).
    pub(super) fn spawn<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> JoinHandle<Option<T>> {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                _ = stop.cancelled() => None,
                out = work => Some(out),
            }
        })
    }

    /// Stops every task and waits, at most `limit`, until all are gone; says whether
    /// they were.
    pub(super) async fn shutdown(&self, limit: Duration) -> bool {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(limit, self.tracker.wait()).await.is_ok()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_stops_and_awaits_every_task() {
        let tasks = Tasks::default();
        let done = tasks.spawn(async { 7 });
        assert_eq!(done.await.unwrap(), Some(7));
        let stuck = tasks.spawn(std::future::pending::<()>());
        assert_eq!(tasks.len(), 1);
        assert!(tasks.shutdown(Duration::from_secs(5)).await, "a task outlived shutdown");
        assert_eq!(stuck.await.unwrap(), None);
        assert_eq!(tasks.len(), 0);
    }
}
