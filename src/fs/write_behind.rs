//! Write-behind: a write is acknowledged once queued, and reaches the server behind the
//! writes before it. Per open file, a `FileQueue` sends its queue in order with many
//! requests in flight, keeps what was not acknowledged across a lost connection and sends
//! it again once the link is back, and records a failure so that the next write, fsync or
//! close reports it. Nothing that was acknowledged to a program is dropped without such a
//! report. Mount-wide, `WriteBehind` owns the queues by inode (a released file's queue
//! stays until it drains), the dirty-data budget, the count of acknowledged writes, and
//! the flushers it starts.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::errno::{self, Errno, Op};
use super::meta::{Ino, Landings};
use super::tasks::Tasks;
use crate::remote::{close_quietly, Handle, Remote, RemoteError, SetAttr};
use crate::sync::lock;

pub(super) struct WriteBehind<R: Remote> {
    remote: Arc<R>,
    tasks: Tasks,
    /// Write queues by inode, including those of released files still draining.
    queues: Arc<Mutex<HashMap<Ino, Vec<Arc<FileQueue>>>>>,
    /// Permits of one KiB of dirty (queued, unacknowledged) data, for the whole mount.
    dirty: Arc<Semaphore>,
    /// Counts every write the server acknowledged, mount-wide: what the server said of
    /// a file while a write to it was landing may predate it (see `meta::Snapshot`).
    landings: Landings,
    /// Written data given up for good, by file: for the mount's status.
    lost: Lost,
}

/// Files whose written data was given up for good, with how many bytes.
type Lost = Arc<Mutex<Vec<(String, u64)>>>;

fn kib(n: usize) -> u32 {
    n.div_ceil(1024).min(u32::MAX as usize) as u32
}

impl<R: Remote> WriteBehind<R> {
    pub(super) fn new(remote: Arc<R>, tasks: Tasks, dirty_limit: usize, landings: Landings) -> Self {
        WriteBehind {
            remote,
            tasks,
            queues: Arc::default(),
            dirty: Arc::new(Semaphore::new(kib(dirty_limit) as usize)),
            landings,
            lost: Lost::default(),
        }
    }

    /// Waits for `work` while the link is up, however slowly it moves: a filesystem
    /// does not give up on a disk for being slow. While the link is down nothing drains,
    /// so the caller hears EAGAIN at once, or as soon as the link goes down. (The call's
    /// own deadline, in `fuse`, ends a wait on a link that moves nothing at all.)
    async fn while_up<T>(&self, work: impl Future<Output = T>) -> Result<T, Errno> {
        if !self.remote.is_available() {
            return Err(Errno::EAGAIN);
        }
        tokio::select! {
            biased;
            out = work => Ok(out),
            _ = self.remote.wait_unavailable() => Err(Errno::EAGAIN),
        }
    }

    /// `while_up`, but for files kept here (`Remote::is_local`): their writes land
    /// without the link, so their waits never end in EAGAIN.
    async fn while_up_unless<T>(&self, local: bool, work: impl Future<Output = T>) -> Result<T, Errno> {
        if local {
            return Ok(work.await);
        }
        self.while_up(work).await
    }

    fn all_local(&self, queues: &[Arc<FileQueue>]) -> bool {
        queues.iter().all(|q| self.remote.is_local(&q.handle))
    }

    /// The queue of a file just opened for writing on the server as `handle`.
    pub(super) fn open(&self, ino: Ino, handle: Handle, path: &str) -> Arc<FileQueue> {
        let queue =
            Arc::new(FileQueue { lost: self.lost.clone(), ..FileQueue::new(self.landings.clone(), handle, path) });
        lock(&self.queues).entry(ino).or_default().push(queue.clone());
        queue
    }

    /// Queues a write of `data` at `offset`, split into requests without copying. When
    /// the dirty budget is full, waits for room while the link is up (writes push back);
    /// while it is down, the write is refused with EAGAIN: not accepted, so not lost.
    pub(super) async fn write(&self, ino: Ino, queue: &Arc<FileQueue>, offset: u64, data: Bytes) -> Result<(), Errno> {
        if let Some(e) = queue.take_error() {
            return Err(e);
        }
        if queue.is_dead() {
            return Err(Errno::EIO);
        }
        self.after_overlapping(ino, queue, offset, offset + data.len() as u64).await?;
        let budget = self.reserve(data.len(), self.remote.is_local(&queue.handle)).await?;
        let io = self.remote.write_size().max(4096) as usize;
        let chunks = data.len().div_ceil(io);
        let mut budget = Some(budget);
        for i in 0..chunks {
            let off = offset + (i * io) as u64;
            let chunk = data.slice(i * io..((i + 1) * io).min(data.len()));
            // The whole write's budget rides on its last chunk, acknowledged last.
            let permit = if i + 1 == chunks { budget.take() } else { None };
            if queue.push(off, chunk, permit) {
                self.start_flusher(queue);
            }
        }
        Ok(())
    }

    /// Waits, while the link is up, for writes to `start..end` queued through the file's
    /// other descriptors: each queue drains on its own, so a later write through one could
    /// otherwise land before an earlier one through another, and the earlier bytes win.
    async fn after_overlapping(&self, ino: Ino, queue: &Arc<FileQueue>, start: u64, end: u64) -> Result<(), Errno> {
        let earlier: Vec<_> =
            self.queues_of(ino).into_iter().filter(|q| !Arc::ptr_eq(q, queue) && q.overlaps(start, end)).collect();
        if earlier.is_empty() {
            return Ok(());
        }
        let local = self.all_local(&earlier);
        self.while_up_unless(local, futures_util::future::join_all(earlier.iter().map(|q| q.idle()))).await.map(|_| ())
    }

    async fn reserve(&self, len: usize, local: bool) -> Result<OwnedSemaphorePermit, Errno> {
        let need = kib(len);
        if let Ok(p) = self.dirty.clone().try_acquire_many_owned(need) {
            return Ok(p);
        }
        self.while_up_unless(local, self.dirty.clone().acquire_many_owned(need)).await?.map_err(|_| Errno::EIO)
    }

    /// Queues a change of attributes behind the file's writes.
    pub(super) fn queue_setattr(&self, queue: &Arc<FileQueue>, set: SetAttr) {
        if queue.push_setattr(set) {
            self.start_flusher(queue);
        }
    }

    fn start_flusher(&self, queue: &Arc<FileQueue>) {
        self.tasks.spawn(queue.clone().flush(self.remote.clone()));
    }

    fn queues_of(&self, ino: Ino) -> Vec<Arc<FileQueue>> {
        lock(&self.queues).get(&ino).cloned().unwrap_or_default()
    }

    /// How many queues `ino` has, released ones still draining included.
    pub(super) fn queue_count(&self, ino: Ino) -> usize {
        lock(&self.queues).get(&ino).map_or(0, Vec::len)
    }

    /// The size of `ino` counting writes not yet on the server.
    pub(super) fn queued_end(&self, ino: Ino) -> u64 {
        self.queues_of(ino).iter().map(|q| q.end()).max().unwrap_or(0)
    }

    /// Waits, while the link is up, until the writes queued for `ino` are on the server,
    /// so that what the server says about the file next includes them.
    pub(super) async fn written(&self, ino: Ino) -> Result<(), Errno> {
        let pending: Vec<_> = self.queues_of(ino).into_iter().filter(|q| !q.is_idle()).collect();
        if pending.is_empty() {
            return Ok(());
        }
        let local = self.all_local(&pending);
        self.while_up_unless(local, futures_util::future::join_all(pending.iter().map(|q| q.idle()))).await.map(|_| ())
    }

    /// Waits, while the link is up, until `queue`'s writes are on the server, reporting
    /// any failure.
    pub(super) async fn file_written(&self, queue: &FileQueue) -> Result<(), Errno> {
        if queue.is_idle() {
            return queue.drained().await;
        }
        self.while_up_unless(self.remote.is_local(&queue.handle), queue.drained()).await?
    }

    /// The file was closed for the last time: its queued writes still reach the server,
    /// then the remote file is closed and the queue leaves the registry. Nothing here
    /// waits for that.
    pub(super) fn release(&self, ino: Ino, queue: Arc<FileQueue>) {
        let close = close_quietly(self.remote.clone(), queue.handle, queue.path());
        if queue.is_idle() {
            unregister(&self.queues, ino, &queue);
            self.tasks.spawn(close);
            return;
        }
        let queues = self.queues.clone();
        self.tasks.spawn(async move {
            queue.idle().await;
            close.await;
            unregister(&queues, ino, &queue);
        });
    }

    /// Resolves once every queued write is on the server (or given up).
    pub(super) async fn all_written(&self) {
        let all: Vec<Arc<FileQueue>> = lock(&self.queues).values().flatten().cloned().collect();
        futures_util::future::join_all(all.iter().map(|q| q.idle())).await;
    }

    /// `from` was renamed to `to` through the mount: queues of files at or under it
    /// follow, so that reports name each file where it is.
    pub(super) fn renamed(&self, from: &str, to: &str) {
        for q in lock(&self.queues).values().flatten() {
            let mut path = lock(&q.path);
            if let Some(moved) = crate::remote::moved(&path, from, to) {
                *path = moved;
            }
        }
    }

    /// Files whose written data was given up for good, and how many bytes of each.
    pub(super) fn lost(&self) -> Vec<(String, u64)> {
        lock(&self.lost).clone()
    }

    /// Each file with bytes queued: its path and how many.
    pub(super) fn at_stake(&self) -> Vec<(String, u64)> {
        let mut files: Vec<(String, u64)> = lock(&self.queues)
            .values()
            .flatten()
            .map(|q| (q.path(), q.queued_bytes()))
            .filter(|(_, bytes)| *bytes > 0)
            .collect();
        files.sort();
        files.dedup_by(|b, a| {
            let same = a.0 == b.0;
            if same {
                a.1 += b.1;
            }
            same
        });
        files
    }

    /// Bytes queued and not yet on the server, mount-wide.
    pub(super) fn queued_bytes(&self) -> u64 {
        lock(&self.queues).values().flatten().map(|q| q.queued_bytes()).sum()
    }
}

fn unregister(queues: &Mutex<HashMap<Ino, Vec<Arc<FileQueue>>>>, ino: Ino, queue: &Arc<FileQueue>) {
    let mut all = lock(queues);
    if let Some(v) = all.get_mut(&ino) {
        v.retain(|q| !Arc::ptr_eq(q, queue));
        if v.is_empty() {
            all.remove(&ino);
        }
    }
}

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
struct QueueState {
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

/// The write-behind queue of one open file.
#[derive(Debug)]
pub(super) struct FileQueue {
    /// The server's handle the writes go to.
    handle: Handle,
    /// Where the file is (following renames through the mount): facts about a refused
    /// write are asked there.
    path: Mutex<String>,
    state: Mutex<QueueState>,
    changed: Notify,
    /// Something was queued: the flusher sends it without waiting for an answer first.
    pushed: Notify,
    /// The mount's count of acknowledged writes.
    landings: Landings,
    /// Where data given up for good is recorded.
    lost: Lost,
}

impl FileQueue {
    /// The handle the writes go to.
    pub(super) fn handle(&self) -> Handle {
        self.handle
    }
    fn new(landings: Landings, handle: Handle, path: &str) -> FileQueue {
        FileQueue {
            lost: Lost::default(),
            handle,
            path: Mutex::new(path.to_string()),
            state: Mutex::default(),
            changed: Notify::new(),
            pushed: Notify::new(),
            landings,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        lock(&self.state)
    }

    fn path(&self) -> String {
        lock(&self.path).clone()
    }

    /// Queues a write. Returns whether a flusher must be started.
    fn push(&self, offset: u64, data: Bytes, budget: Option<OwnedSemaphorePermit>) -> bool {
        self.enqueue(Pending { offset, data, set: None, _budget: budget })
    }

    /// Queues a change of attributes behind the writes before it. Returns whether a
    /// flusher must be started.
    fn push_setattr(&self, set: SetAttr) -> bool {
        self.enqueue(Pending { offset: 0, data: Bytes::new(), set: Some(set), _budget: None })
    }

    /// Queues `p`, waking a flusher that waits for more; returns whether none runs.
    fn enqueue(&self, p: Pending) -> bool {
        let mut s = self.lock();
        s.queue.push_back(p);
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
    fn take_error(&self) -> Option<Errno> {
        self.lock().error.take()
    }

    fn is_dead(&self) -> bool {
        self.lock().dead
    }

    fn is_idle(&self) -> bool {
        self.lock().queue.is_empty()
    }

    fn queued_bytes(&self) -> u64 {
        self.lock().queue.iter().map(|p| p.data.len() as u64).sum()
    }

    /// Whether a write queued here, not yet on the server, touches `start..end`.
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.lock().queue.iter().any(|p| p.set.is_none() && p.offset < end && start < p.offset + p.data.len() as u64)
    }

    /// The end of the furthest queued write: the file is at least this long.
    fn end(&self) -> u64 {
        self.lock().queue.iter().map(|p| p.offset + p.data.len() as u64).max().unwrap_or(0)
    }

    /// Waits until everything queued so far is on the server; reports a failure if one
    /// happened since the last report.
    async fn drained(&self) -> Result<(), Errno> {
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
    async fn idle(&self) {
        loop {
            let wake = self.changed.notified();
            if self.lock().queue.is_empty() {
                return;
            }
            wake.await;
        }
    }

    /// Sends the queue until it is empty, keeping as many writes out at once as the
    /// remote says suit the file (`Remote::write_depth`, asked when the flusher starts
    /// and after each reconnect). The server answers in order, so what is unanswered
    /// when the link dies is always the tail of what was sent: it is sent again, in
    /// order, once the link is back. Runs as its own task.
    async fn flush<R: Remote>(self: Arc<Self>, remote: Arc<R>) {
        let handle = self.handle;
        let mut in_flight = FuturesOrdered::new();
        // How many of the queue's oldest entries are out (`in_flight` holds their
        // answers, oldest first). They all go to the file's one connection, which the
        // server answers in order: overlapping writes land in the order they were queued.
        let mut out = 0;
        let mut depth = remote.write_depth(&handle);
        loop {
            {
                let mut s = self.lock();
                while in_flight.len() < depth && out < s.queue.len() {
                    let p = &s.queue[out];
                    let (off, data, set, remote) = (p.offset, p.data.clone(), p.set, remote.clone());
                    in_flight.push_back(async move {
                        match set {
                            Some(set) => remote.fsetstat(&handle, set).await,
                            None => remote.write(&handle, off, data).await,
                        }
                    });
                    out += 1;
                }
                s.wants_more = out == s.queue.len() && in_flight.len() < depth;
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
                Err(e) if e.is_link() || matches!(e, RemoteError::LinkFailed(_)) => {
                    // Drop what is still out; all of it is sent again, in order.
                    in_flight = FuturesOrdered::new();
                    out = 0;
                    self.changed.notify_waiters();
                    if let Err(e) = remote.wait_available().await {
                        self.give_up(e);
                        return;
                    }
                    depth = remote.write_depth(&handle);
                    continue;
                }
                Err(e @ RemoteError::FileLost(_)) => {
                    self.give_up(e);
                    return;
                }
                Err(e) => {
                    let errno = errno::errno_for(&*remote, Op::Write, &e, &self.path(), None).await;
                    tracing::warn!(error = %errno, "the server refused a write; reporting it at the next write, fsync or close");
                    self.done_front(Some(errno));
                }
            }
            out -= 1;
            self.changed.notify_waiters();
        }
    }

    /// The oldest write is settled: acknowledged, or refused with `error`.
    fn done_front(&self, error: Option<Errno>) {
        let mut s = self.lock();
        s.queue.pop_front();
        self.landings.landed();
        if let Some(e) = error {
            s.error.get_or_insert(e);
        }
    }

    /// The file cannot be written any more (the link failed for good, or the file was
    /// lost): what is queued is dropped, said in the log and kept in the mount's record.
    fn give_up(&self, e: RemoteError) {
        let mut s = self.lock();
        let lost: usize = s.queue.iter().map(|p| p.data.len()).sum();
        let path = self.path();
        tracing::error!(path = %path, bytes = lost, error = %e, "queued writes are lost");
        if lost > 0 {
            lock(&self.lost).push((path, lost as u64));
        }
        s.queue.clear();
        s.flushing = false;
        s.dead = true;
        s.error.get_or_insert(Errno::EIO);
        drop(s);
        self.changed.notify_waiters();
    }
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
        let wb = Arc::new(FileQueue::new(Landings::default(), h, "/f"));
        for i in 0..100u64 {
            let start = wb.push(i * 10, Bytes::from(vec![i as u8; 10]), None);
            if start {
                tokio::spawn(wb.clone().flush(remote.clone()));
            }
        }
        // An overlapping later write must win.
        if wb.push(5, Bytes::from(vec![0xff; 3]), None) {
            tokio::spawn(wb.clone().flush(remote.clone()));
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
        let wb = Arc::new(FileQueue::new(Landings::default(), h, "/f"));
        remote.writes.hold();
        assert!(wb.push(0, Bytes::from_static(b"data"), None));
        tokio::spawn(wb.clone().flush(remote.clone()));
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
        remote.go_down();
        let wb = Arc::new(FileQueue::new(Landings::default(), h, "/f"));
        assert!(wb.push(0, Bytes::from(b"kept".to_vec()), None));
        tokio::spawn(wb.clone().flush(remote.clone()));
        // Nothing can land while down, and nothing is dropped.
        let early = tokio::time::timeout(Duration::from_millis(200), wb.drained()).await;
        assert!(early.is_err(), "drained while the link was down");
        assert_eq!(wb.end(), 4);
        remote.come_back();
        tokio::time::timeout(Duration::from_secs(5), wb.drained()).await.unwrap().unwrap();
        assert_eq!(remote.file("/f").unwrap(), b"kept");
    }

    #[tokio::test]
    async fn refused_write_is_reported_once() {
        let remote = Arc::new(FakeRemote::new());
        let h = open(&remote).await;
        remote.close(&h).await.unwrap(); // the server no longer knows the handle
        let wb = Arc::new(FileQueue::new(Landings::default(), h, "/f"));
        assert!(wb.push(0, Bytes::from(b"x".to_vec()), None));
        tokio::spawn(wb.clone().flush(remote.clone()));
        let r = tokio::time::timeout(Duration::from_secs(5), wb.drained()).await.unwrap();
        assert_eq!(r, Err(Errno::EIO));
        assert_eq!(wb.take_error(), None);
    }

    #[tokio::test]
    async fn permanent_failure_reports_loss() {
        let remote = Arc::new(FakeRemote::new());
        let h = open(&remote).await;
        remote.fail_for_good();
        let wb = Arc::new(FileQueue::new(Landings::default(), h, "/f"));
        assert!(wb.push(0, Bytes::from(b"x".to_vec()), None));
        tokio::spawn(wb.clone().flush(remote.clone()));
        let r = tokio::time::timeout(Duration::from_secs(5), wb.drained()).await.unwrap();
        assert_eq!(r, Err(Errno::EIO));
        assert!(wb.is_dead());
    }
}
