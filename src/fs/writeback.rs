//! Write-behind for one open file: a write is acknowledged once queued; a flusher sends
//! the queue to the server in order with many requests in flight, keeps what was not
//! acknowledged across a lost connection and sends it again once the link is back, and
//! records a failure so that the next write, fsync or close reports it. Nothing that was
//! acknowledged to a program is dropped without such a report.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::{Notify, OwnedSemaphorePermit};

use super::errno::{self, Errno, Op};
use crate::remote::{Handle, Remote, RemoteError, SetAttr};

/// Writes out at once per file; the server answers them in order.
const MAX_IN_FLIGHT: usize = 32;

#[derive(Debug)]
struct Pending {
    offset: u64,
    data: Bytes,
    /// A change of attributes queued behind the writes before it (`data` is empty).
    set: Option<SetAttr>,
    /// Holds this write's share of the mount's dirty-data budget until it is done.
    _budget: Option<OwnedSemaphorePermit>,
}

#[derive(Debug, Default)]
struct State {
    /// Writes not yet acknowledged by the server, oldest first.
    queue: VecDeque<Pending>,
    /// The first failure not yet reported to the program.
    error: Option<Errno>,
    flushing: bool,
    /// The flusher has sent all it was given and has room for more: the next push
    /// wakes it rather than waiting for an answer.
    wants_more: bool,
    /// Set when the link failed for good: later writes fail at once.
    dead: bool,
}

#[derive(Debug, Default)]
pub struct WriteBack {
    state: Mutex<State>,
    changed: Notify,
    /// Something was queued: the flusher sends it without waiting for an answer first.
    pushed: Notify,
    /// Counts every write the server acknowledged, mount-wide: what the server said of
    /// a file while a write to it was landing may predate it.
    acks: Arc<AtomicU64>,
}

impl WriteBack {
    /// A queue that counts its acknowledgements in the mount's `acks`.
    pub fn new(acks: Arc<AtomicU64>) -> WriteBack {
        WriteBack { acks, ..WriteBack::default() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each critical section is a few queue operations; a panic cannot tear one.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a write. Returns whether a flusher must be started.
    pub fn push(&self, offset: u64, data: Bytes, budget: Option<OwnedSemaphorePermit>) -> bool {
        let mut s = self.lock();
        s.queue.push_back(Pending { offset, data, set: None, _budget: budget });
        let start = !s.flushing;
        s.flushing = true;
        let wake = std::mem::take(&mut s.wants_more);
        drop(s);
        if wake {
            self.pushed.notify_one();
        }
        start
    }

    /// Queues a change of attributes behind the writes before it. Returns whether a
    /// flusher must be started.
    pub fn push_setattr(&self, set: SetAttr) -> bool {
        let mut s = self.lock();
        s.queue.push_back(Pending { offset: 0, data: Bytes::new(), set: Some(set), _budget: None });
        let start = !s.flushing;
        s.flushing = true;
        let wake = std::mem::take(&mut s.wants_more);
        drop(s);
        if wake {
            self.pushed.notify_one();
        }
        start
    }

    /// Takes the failure to report, if any (reported once, as with a local filesystem).
    pub fn take_error(&self) -> Option<Errno> {
        self.lock().error.take()
    }

    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    pub fn is_idle(&self) -> bool {
        self.lock().queue.is_empty()
    }

    pub fn queued_bytes(&self) -> u64 {
        self.lock().queue.iter().map(|p| p.data.len() as u64).sum()
    }

    /// The end of the furthest queued write: the file is at least this long.
    pub fn end(&self) -> u64 {
        self.lock().queue.iter().map(|p| p.offset + p.data.len() as u64).max().unwrap_or(0)
    }

    /// Waits until everything queued so far is on the server; reports a failure if one
    /// happened since the last report.
    pub async fn drained(&self) -> Result<(), Errno> {
        loop {
            let wake = self.changed.notified();
            {
                let mut s = self.lock();
                if s.queue.is_empty() {
                    return s.error.take().map_or(Ok(()), Err);
                }
            }
            wake.await;
        }
    }

    /// Waits until everything queued so far is on the server (or given up), leaving any
    /// failure for the writer to collect.
    pub async fn idle(&self) {
        loop {
            let wake = self.changed.notified();
            if self.lock().queue.is_empty() {
                return;
            }
            wake.await;
        }
    }

    /// Sends the queue until it is empty, keeping up to `MAX_IN_FLIGHT` writes out at
    /// once. The server answers in order, so what is unanswered when the link dies is
    /// always the tail of what was sent: it is sent again, in order, once the link is
    /// back. Runs as its own task.
    pub async fn flush_queue<R: Remote>(self: Arc<Self>, remote: Arc<R>, handle: Handle) {
        let mut in_flight = FuturesOrdered::new();
        // What is out, oldest first, matching `in_flight`: lane and byte range.
        let mut ranges: VecDeque<(usize, u64, u64)> = VecDeque::new();
        let io = u64::from(remote.write_size().max(1));
        loop {
            {
                let mut s = self.lock();
                while in_flight.len() < MAX_IN_FLIGHT && ranges.len() < s.queue.len() {
                    let p = &s.queue[ranges.len()];
                    // Writes take turns over the pool's lanes, from the file's own; an
                    // attribute change goes on the file's lane and covers everything.
                    let (lane, start, end) = match p.set {
                        Some(_) => (0, 0, u64::MAX),
                        None => ((p.offset / io) as usize, p.offset, p.offset + p.data.len() as u64),
                    };
                    // One connection answers in order, but lanes may land in any order:
                    // what overlaps something out on another lane waits for it.
                    if ranges.iter().any(|r| r.0 != lane && r.1 < end && start < r.2) {
                        break;
                    }
                    let (off, data, set, remote) = (p.offset, p.data.clone(), p.set, remote.clone());
                    in_flight.push_back(async move {
                        match set {
                            Some(set) => remote.fsetstat(&handle, set).await,
                            None => remote.write_lane(&handle, lane, off, data).await,
                        }
                    });
                    ranges.push_back((lane, start, end));
                }
                s.wants_more = ranges.len() == s.queue.len() && in_flight.len() < MAX_IN_FLIGHT;
                if in_flight.is_empty() {
                    s.flushing = false;
                    s.wants_more = false;
                    drop(s);
                    self.changed.notify_waiters();
                    return;
                }
            }
            // What is queued while answers are awaited goes out at once: a file's write
            // and the attribute changes after it share one round trip.
            let result = tokio::select! {
                r = in_flight.next() => match r {
                    Some(r) => r,
                    None => continue,
                },
                _ = self.pushed.notified() => continue,
            };
            match result {
                Ok(()) => self.done_front(None),
                Err(e) if e.is_link() || matches!(e, RemoteError::Failed(_)) => {
                    // Drop what is still out; all of it is sent again, in order.
                    in_flight = FuturesOrdered::new();
                    ranges.clear();
                    self.changed.notify_waiters();
                    if let Err(e) = remote.wait_available().await {
                        self.give_up(e);
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    let errno = write_errno(&*remote, e).await;
                    tracing::warn!(error = %errno, "the server refused a write; reporting it at the next write, fsync or close");
                    self.done_front(Some(errno));
                }
            }
            ranges.pop_front();
            self.changed.notify_waiters();
        }
    }

    /// The oldest write is settled: acknowledged, or refused with `error`.
    fn done_front(&self, error: Option<Errno>) {
        let mut s = self.lock();
        s.queue.pop_front();
        self.acks.fetch_add(1, Ordering::SeqCst);
        if let Some(e) = error {
            s.error.get_or_insert(e);
        }
    }

    fn give_up(&self, e: RemoteError) {
        let mut s = self.lock();
        let lost: usize = s.queue.iter().map(|p| p.data.len()).sum();
        tracing::error!(bytes = lost, error = %e, "link failed for good: queued writes are lost");
        s.queue.clear();
        s.flushing = false;
        s.dead = true;
        s.error.get_or_insert(Errno::EIO);
        drop(s);
        self.changed.notify_waiters();
    }
}

/// The errno for a write the server refused: the filesystem may be full or read-only.
async fn write_errno<R: Remote>(remote: &R, e: RemoteError) -> Errno {
    if let Some(errno) = errno::direct(Op::Write, &e) {
        return errno;
    }
    let mut facts = errno::Facts::default();
    if remote.extensions().statvfs {
        if let Ok(s) = remote.statfs("/").await {
            facts.read_only = s.read_only;
            facts.full = s.blocks_avail == 0;
        }
    }
    errno::explain(Op::Write, facts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::fake::{eventually, FakeRemote};
    use crate::remote::OpenOptions;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    async fn open(remote: &FakeRemote) -> Handle {
        remote.open("/f", OpenOptions { write: true, create: true, ..OpenOptions::default() }).await.unwrap()
    }

    #[tokio::test]
    async fn writes_land_in_order_and_drain() {
        let remote = Arc::new(FakeRemote::new());
        let h = open(&remote).await;
        let wb = Arc::new(WriteBack::default());
        for i in 0..100u64 {
            let start = wb.push(i * 10, Bytes::from(vec![i as u8; 10]), None);
            if start {
                tokio::spawn(wb.clone().flush_queue(remote.clone(), h));
            }
        }
        // An overlapping later write must win.
        if wb.push(5, Bytes::from(vec![0xff; 3]), None) {
            tokio::spawn(wb.clone().flush_queue(remote.clone(), h));
        }
        assert_eq!(wb.end(), 1000);
        tokio::time::timeout(Duration::from_secs(5), wb.drained()).await.unwrap().unwrap();
        let data = remote.file("/f").unwrap();
        assert_eq!(data.len(), 1000);
        assert_eq!(&data[0..5], &[0; 5]);
        assert_eq!(&data[5..8], &[0xff; 3]);
        assert_eq!(data[999], 99);
        assert!(wb.is_idle());
    }

    #[tokio::test]
    async fn what_is_queued_while_a_write_is_out_goes_out_at_once() {
        let remote = Arc::new(FakeRemote::new());
        let h = open(&remote).await;
        let wb = Arc::new(WriteBack::default());
        remote.writes.hold();
        assert!(wb.push(0, Bytes::from_static(b"data"), None));
        tokio::spawn(wb.clone().flush_queue(remote.clone(), h));
        tokio::task::yield_now().await;
        // The write is out and unanswered; an attribute change queued now must not wait
        // for its answer (on a slow link that is a round trip per file).
        assert!(!wb.push_setattr(SetAttr { mode: Some(0o640), ..SetAttr::default() }));
        let sent = eventually(|| remote.fsetstats.load(Ordering::SeqCst) > 0).await;
        assert!(sent, "the change waited for the write's answer");
        remote.writes.release();
        tokio::time::timeout(Duration::from_secs(5), wb.drained()).await.unwrap().unwrap();
        assert_eq!(remote.file("/f").unwrap(), b"data");
    }

    #[tokio::test]
    async fn queued_writes_survive_an_outage() {
        let remote = Arc::new(FakeRemote::new());
        let h = open(&remote).await;
        remote.down.store(true, Ordering::SeqCst);
        let wb = Arc::new(WriteBack::default());
        assert!(wb.push(0, Bytes::from(b"kept".to_vec()), None));
        tokio::spawn(wb.clone().flush_queue(remote.clone(), h));
        // Nothing can land while down, and nothing is dropped.
        let early = tokio::time::timeout(Duration::from_millis(200), wb.drained()).await;
        assert!(early.is_err(), "drained while the link was down");
        assert_eq!(wb.end(), 4);
        remote.down.store(false, Ordering::SeqCst);
        remote.notify_available();
        tokio::time::timeout(Duration::from_secs(5), wb.drained()).await.unwrap().unwrap();
        assert_eq!(remote.file("/f").unwrap(), b"kept");
    }

    #[tokio::test]
    async fn refused_write_is_reported_once() {
        let remote = Arc::new(FakeRemote::new());
        let h = open(&remote).await;
        remote.close(&h).await.unwrap(); // the server no longer knows the handle
        let wb = Arc::new(WriteBack::default());
        assert!(wb.push(0, Bytes::from(b"x".to_vec()), None));
        tokio::spawn(wb.clone().flush_queue(remote.clone(), h));
        let r = tokio::time::timeout(Duration::from_secs(5), wb.drained()).await.unwrap();
        assert_eq!(r, Err(Errno::EIO));
        assert_eq!(wb.take_error(), None);
    }

    #[tokio::test]
    async fn permanent_failure_reports_loss() {
        let remote = Arc::new(FakeRemote::new());
        let h = open(&remote).await;
        remote.failed.store(true, Ordering::SeqCst);
        let wb = Arc::new(WriteBack::default());
        assert!(wb.push(0, Bytes::from(b"x".to_vec()), None));
        tokio::spawn(wb.clone().flush_queue(remote.clone(), h));
        let r = tokio::time::timeout(Duration::from_secs(5), wb.drained()).await.unwrap();
        assert_eq!(r, Err(Errno::EIO));
        assert!(wb.is_dead());
    }
}
