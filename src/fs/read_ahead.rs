//! Read-ahead, and the read path that uses it. The kernel asks for at most 128 KiB ahead,
//! which on a link with any latency means one round trip per 128 KiB. Once a file is
//! read sequentially, its `Window` fetches chunks ahead of the reader with many requests
//! in flight, doubling up to a limit (`--read-ahead`), so a stream runs at the link's
//! bandwidth. `ReadAhead` owns the mount's side: which files were written (what was
//! fetched of them is stale), the fetch tasks, and reads that go straight to the server.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::BytesMut;
use futures_util::future::{try_join_all, BoxFuture, FutureExt, Shared};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::meta::Ino;
use super::tasks::Tasks;
use crate::remote::{Bytes, Handle, Remote, RemoteError};
use crate::sync::lock;

pub(super) type ChunkResult = Result<Bytes, RemoteError>;
type Chunk = Shared<BoxFuture<'static, ChunkResult>>;

/// The first window, and the largest by default (`--read-ahead`), in bytes.
pub const INITIAL_WINDOW: u64 = 1024 * 1024;
pub const MAX_WINDOW: u64 = 16 * 1024 * 1024;

/// The mount's read path.
pub(super) struct ReadAhead<R: Remote> {
    remote: Arc<R>,
    tasks: Tasks,
    /// The largest window per open file, in bytes (zero: no read-ahead).
    max_window: u64,
    /// What all windows may hold at once.
    budget: ReadBudget,
    /// How often each file was written through this mount: what was fetched ahead of
    /// it is stale once this changes.
    writes: Mutex<HashMap<Ino, u64>>,
}

impl<R: Remote> ReadAhead<R> {
    pub(super) fn new(remote: Arc<R>, tasks: Tasks, max_window: u64) -> Self {
        // Room for a few files read at full speed together.
        let budget = ReadBudget::new((4 * max_window).max(MAX_WINDOW));
        ReadAhead { remote, tasks, max_window, budget, writes: Mutex::default() }
    }

    /// The window for a file just opened read-only, if read-ahead is on.
    pub(super) fn window(&self) -> Option<Window> {
        (self.max_window > 0).then(|| Window::new(self.max_window, self.budget.clone()))
    }

    /// `ino` was written through the mount.
    pub(super) fn note_write(&self, ino: Ino) {
        *lock(&self.writes).entry(ino).or_default() += 1;
    }

    /// The kernel forgot `ino`: its count goes too.
    pub(super) fn forget(&self, ino: Ino) {
        lock(&self.writes).remove(&ino);
    }

    fn writes_to(&self, ino: Ino) -> u64 {
        lock(&self.writes).get(&ino).copied().unwrap_or(0)
    }

    /// Reads `size` bytes at `offset` of `ino`, open as `handle`: from the chunks of its
    /// `window` once reads are sequential, else straight from the server, `size` cut
    /// into requests the server takes whole, all out at once.
    pub(super) async fn read(
        &self,
        ino: Ino,
        handle: Handle,
        window: Option<&Window>,
        size_hint: u64,
        offset: u64,
        size: u32,
    ) -> ChunkResult {
        let io = self.remote.read_size().max(4096);
        if let Some(window) = window {
            let (remote, tasks) = (self.remote.clone(), self.tasks.clone());
            let fetch = move |off: u64, len: u32| -> BoxFuture<'static, ChunkResult> {
                let remote = remote.clone();
                // Started now, not when first awaited: that is the point of reading ahead.
                let task = tasks.spawn(async move { read_fully(&*remote, &handle, off, len).await });
                async move {
                    match task.await {
                        Ok(Some(r)) => r,
                        Ok(None) => Err(RemoteError::Unavailable("unmounting".into())),
                        Err(e) => Err(RemoteError::ServerFailure(format!("read task: {e}"))),
                    }
                }
                .boxed()
            };
            if let Some(plan) = window.plan(offset, size, io, size_hint, self.writes_to(ino), fetch) {
                let mut parts = Vec::with_capacity(plan.len());
                for (start, chunk) in plan {
                    match chunk.await {
                        Ok(data) => parts.push((start, data)),
                        Err(e) => {
                            window.reset();
                            return Err(e);
                        }
                    }
                }
                return Ok(assemble(offset, size, io, &parts));
            }
        }
        self.read_direct(handle, offset, size, io).await
    }

    async fn read_direct(&self, handle: Handle, offset: u64, size: u32, io: u32) -> ChunkResult {
        let chunks = (0..size.div_ceil(io)).map(|i| {
            let off = offset + u64::from(i * io);
            let len = io.min(size - i * io);
            read_fully(&*self.remote, &handle, off, len)
        });
        let parts = try_join_all(chunks).await?;
        if let [only] = &parts[..] {
            return Ok(only.clone());
        }
        let mut out = BytesMut::with_capacity(size as usize);
        for (i, part) in parts.iter().enumerate() {
            let want = io.min(size - i as u32 * io) as usize;
            out.extend_from_slice(part);
            if part.len() < want {
                break;
            }
        }
        Ok(out.freeze())
    }
}

/// A read's answer, refused if it holds more than was asked: a server that does that is
/// broken or hostile, and its extra bytes would land past what the program asked for.
fn checked(data: Bytes, asked: u32) -> ChunkResult {
    if data.len() > asked as usize {
        return Err(RemoteError::ServerFailure(format!(
            "the server answered a read of {asked} bytes with {}",
            data.len()
        )));
    }
    Ok(data)
}

/// Reads `len` bytes at `offset`, asking again after a short answer, stopping at end of
/// file.
pub(super) async fn read_fully<R: Remote>(remote: &R, handle: &Handle, offset: u64, len: u32) -> ChunkResult {
    let first = checked(remote.read(handle, offset, len).await?, len)?;
    if first.len() as u32 >= len || first.is_empty() {
        return Ok(first);
    }
    let mut buf = BytesMut::with_capacity(len as usize);
    buf.extend_from_slice(&first);
    while (buf.len() as u32) < len {
        let want = len - buf.len() as u32;
        let got = checked(remote.read(handle, offset + buf.len() as u64, want).await?, want)?;
        if got.is_empty() {
            break;
        }
        buf.extend_from_slice(&got);
    }
    Ok(buf.freeze())
}

#[derive(Debug, Default)]
struct WindowState {
    /// Where a sequential reader reads next.
    next: u64,
    streak: u32,
    window: u64,
    /// Chunks fetched or on their way; those fetched ahead of a read hold their share of
    /// the mount's read-ahead memory until they are dropped.
    chunks: BTreeMap<u64, (Chunk, Option<OwnedSemaphorePermit>)>,
    /// The file's write count when the chunks were fetched.
    seen_writes: u64,
}

/// Read-ahead memory of a whole mount, in KiB: every file's chunks fetched ahead of its
/// reader share it, so many files read at once cannot hold many windows' worth each.
#[derive(Debug, Clone)]
pub(super) struct ReadBudget(Arc<Semaphore>);

impl ReadBudget {
    pub(super) fn new(bytes: u64) -> ReadBudget {
        ReadBudget(Arc::new(Semaphore::new((bytes / 1024).clamp(1, Semaphore::MAX_PERMITS as u64) as usize)))
    }

    fn take(&self, bytes: u32) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_many_owned(bytes.div_ceil(1024).max(1)).ok()
    }

    #[cfg(test)]
    fn free(&self) -> usize {
        self.0.available_permits() * 1024
    }
}

/// Read-ahead for one open file.
#[derive(Debug)]
pub(super) struct Window {
    state: Mutex<WindowState>,
    max_window: u64,
    budget: ReadBudget,
}

impl Default for Window {
    fn default() -> Self {
        Window::new(MAX_WINDOW, ReadBudget::new(4 * MAX_WINDOW))
    }
}

impl Window {
    /// A window that grows up to `max_window` bytes, within the mount's `budget`.
    pub fn new(max_window: u64, budget: ReadBudget) -> Window {
        Window { state: Mutex::default(), max_window: max_window.max(1), budget }
    }

    fn lock(&self) -> MutexGuard<'_, WindowState> {
        lock(&self.state)
    }

    /// Forgets everything fetched (after an error, or when the file was written).
    pub fn reset(&self) {
        let mut s = self.lock();
        s.chunks.clear();
        s.streak = 0;
    }

    /// The chunks that serve a read of `size` bytes at `offset`, starting fetches ahead
    /// of it; `None` while reads are not sequential (read directly then). `end` is the
    /// file size as known (fetching stops there), `writes` the file's write count.
    pub fn plan(
        &self,
        offset: u64,
        size: u32,
        chunk: u32,
        end: u64,
        writes: u64,
        fetch: impl Fn(u64, u32) -> BoxFuture<'static, ChunkResult>,
    ) -> Option<Vec<(u64, Chunk)>> {
        let mut s = self.lock();
        if s.seen_writes != writes {
            s.chunks.clear();
            s.seen_writes = writes;
        }
        let sequential = offset == s.next;
        s.next = offset + u64::from(size);
        if sequential {
            s.streak += 1;
        } else {
            s.streak = 0;
            s.window = INITIAL_WINDOW.min(self.max_window);
            s.chunks.clear();
        }
        // The first read of a file at 0 counts: `cat` and `cp` start there.
        if s.streak < 2 && !(sequential && offset == 0) {
            return None;
        }
        if s.window == 0 {
            s.window = INITIAL_WINDOW.min(self.max_window);
        }
        let cs = u64::from(chunk);
        let first = offset / cs * cs;
        // Chunks wholly behind the reader are done with.
        s.chunks = s.chunks.split_off(&first);
        let read_end = offset + u64::from(size);
        let ahead_end = (read_end + s.window).min(end.max(read_end));
        let mut start = first;
        while start < ahead_end {
            if let Entry::Vacant(slot) = s.chunks.entry(start) {
                // What the read needs is fetched in any case; what is ahead, only within
                // the mount's read-ahead memory.
                let share = if start < read_end { None } else { self.budget.take(chunk) };
                if start >= read_end && share.is_none() {
                    break;
                }
                slot.insert((fetch(start, chunk).shared(), share));
            }
            start += cs;
        }
        s.window = (s.window * 2).min(self.max_window);
        Some(s.chunks.range(first..read_end).map(|(k, (c, _))| (*k, c.clone())).collect())
    }
}

/// Cuts the bytes of `[offset, offset + size)` out of consecutive chunks; stops at a
/// short chunk (end of file).
fn assemble(offset: u64, size: u32, chunk: u32, parts: &[(u64, Bytes)]) -> Bytes {
    let end = offset + u64::from(size);
    if let [(start, data)] = parts {
        // Within one chunk: a slice of it, no copy.
        let from = (offset.saturating_sub(*start) as usize).min(data.len());
        let to = ((end - start) as usize).min(data.len());
        return data.slice(from..to.max(from));
    }
    let mut out = BytesMut::with_capacity(size as usize);
    for (start, data) in parts {
        let from = offset.saturating_sub(*start) as usize;
        let to = ((end - start) as usize).min(data.len());
        if from < to {
            out.extend_from_slice(&data[from..to]);
        }
        if data.len() < chunk as usize {
            break;
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn counting(counter: Arc<AtomicUsize>) -> impl Fn(u64, u32) -> BoxFuture<'static, ChunkResult> {
        move |off, len| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { Ok(Bytes::from((off..off + u64::from(len)).map(|b| b as u8).collect::<Vec<u8>>())) }.boxed()
        }
    }

    #[test]
    fn random_reads_fetch_nothing_ahead() {
        let ra = Window::default();
        let n = Arc::new(AtomicUsize::new(0));
        assert!(ra.plan(4096, 4096, 65536, 1 << 30, 0, counting(n.clone())).is_none());
        assert!(ra.plan(100_000, 4096, 65536, 1 << 30, 0, counting(n.clone())).is_none());
        assert_eq!(n.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn sequential_reads_fetch_a_growing_window_within_the_file() {
        let ra = Window::default();
        let n = Arc::new(AtomicUsize::new(0));
        let cs = 64 * 1024;
        let plan = ra.plan(0, 131072, cs, 1 << 30, 0, counting(n.clone())).unwrap();
        assert_eq!(plan.len(), 2);
        let first = n.load(Ordering::SeqCst);
        assert_eq!(first as u64, (131072 + INITIAL_WINDOW) / u64::from(cs));
        ra.plan(131072, 131072, cs, 1 << 30, 0, counting(n.clone())).unwrap();
        assert!(n.load(Ordering::SeqCst) > first, "window grew");
        // Never beyond the end of the file.
        let ra = Window::default();
        let n = Arc::new(AtomicUsize::new(0));
        ra.plan(0, 4096, cs, 100_000, 0, counting(n.clone())).unwrap();
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_window_stops_growing_at_its_limit() {
        let cs: u32 = 64 * 1024;
        let limit = 256 * 1024;
        let ra = Window::new(limit, ReadBudget::new(4 * MAX_WINDOW));
        let n = Arc::new(AtomicUsize::new(0));
        let mut at = 0u64;
        for _ in 0..20 {
            ra.plan(at, cs, cs, 1 << 30, 0, counting(n.clone())).unwrap();
            at += u64::from(cs);
        }
        // Everything read, plus at most `limit` ahead of the last read.
        let fetched = n.load(Ordering::SeqCst) as u64 * u64::from(cs);
        assert!(fetched <= at + limit, "fetched {fetched} for {at} read with a {limit} window");
        assert!(fetched > at, "nothing was read ahead");
    }

    #[test]
    fn windows_share_the_mounts_read_ahead_memory() {
        let cs: u32 = 64 * 1024;
        let budget = ReadBudget::new(512 * 1024);
        let (a, b) = (Window::new(MAX_WINDOW, budget.clone()), Window::new(MAX_WINDOW, budget.clone()));
        let n = Arc::new(AtomicUsize::new(0));
        for w in [&a, &b] {
            let mut at = 0u64;
            for _ in 0..8 {
                w.plan(at, cs, cs, 1 << 30, 0, counting(n.clone())).unwrap();
                at += u64::from(cs);
            }
        }
        let fetched = n.load(Ordering::SeqCst) as u64 * u64::from(cs);
        // Both read 8 chunks; at most the budget more was fetched ahead between them.
        assert!(fetched <= 16 * u64::from(cs) + 512 * 1024, "fetched {fetched}");
        assert_eq!(budget.free(), 0, "the budget was not used");
        drop(a);
        b.reset();
        assert_eq!(budget.free(), 512 * 1024, "read-ahead memory was not given back");
    }

    #[test]
    fn a_write_drops_what_was_fetched() {
        let ra = Window::default();
        let n = Arc::new(AtomicUsize::new(0));
        ra.plan(0, 4096, 65536, 1 << 20, 0, counting(n.clone())).unwrap();
        let before = n.load(Ordering::SeqCst);
        ra.plan(4096, 4096, 65536, 1 << 20, 1, counting(n.clone())).unwrap();
        assert!(n.load(Ordering::SeqCst) > before, "refetched after a write");
    }

    #[tokio::test]
    async fn assembled_bytes_are_the_right_ones() {
        let ra = Window::default();
        let n = Arc::new(AtomicUsize::new(0));
        ra.plan(0, 1000, 1000, 1 << 20, 0, counting(n.clone())).unwrap();
        let plan = ra.plan(1000, 2500, 1000, 1 << 20, 0, counting(n.clone())).unwrap();
        let mut parts = Vec::new();
        for (start, c) in plan {
            parts.push((start, c.await.unwrap()));
        }
        let got = assemble(1000, 2500, 1000, &parts);
        let want: Vec<u8> = (1000u64..3500).map(|b| b as u8).collect();
        assert_eq!(got, want);
        // A short chunk is the end of the file.
        let parts = vec![(0u64, Bytes::from(vec![1u8; 1000])), (1000, Bytes::from(vec![2u8; 10]))];
        assert_eq!(assemble(500, 2000, 1000, &parts).len(), 510);
    }
}
