//! Read-ahead for one open file. The kernel asks for at most 128 KiB ahead, which on a
//! link with any latency means one round trip per 128 KiB. Once reads run sequentially,
//! chunks ahead of the reader are fetched with many requests in flight, the window
//! doubling up to a limit, so a stream runs at the link's bandwidth.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use futures_util::future::{BoxFuture, FutureExt, Shared};

use bytes::BytesMut;

use crate::remote::{Bytes, RemoteError};

pub type ChunkResult = Result<Bytes, RemoteError>;
pub type Chunk = Shared<BoxFuture<'static, ChunkResult>>;

/// The first window, and the largest by default (`--read-ahead`), in bytes.
pub const INITIAL_WINDOW: u64 = 1024 * 1024;
pub const MAX_WINDOW: u64 = 16 * 1024 * 1024;

#[derive(Debug, Default)]
struct State {
    /// Where a sequential reader reads next.
    next: u64,
    streak: u32,
    window: u64,
    chunks: BTreeMap<u64, Chunk>,
    /// The file's write count when the chunks were fetched.
    seen_writes: u64,
}

#[derive(Debug)]
pub struct ReadAhead {
    state: Mutex<State>,
    max_window: u64,
}

impl Default for ReadAhead {
    fn default() -> Self {
        ReadAhead::new(MAX_WINDOW)
    }
}

impl ReadAhead {
    /// Read-ahead whose window grows up to `max_window` bytes.
    pub fn new(max_window: u64) -> ReadAhead {
        ReadAhead { state: Mutex::default(), max_window: max_window.max(1) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A few map operations per critical section; a panic cannot tear one.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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
            s.chunks.entry(start).or_insert_with(|| fetch(start, chunk).shared());
            start += cs;
        }
        s.window = (s.window * 2).min(self.max_window);
        Some(s.chunks.range(first..read_end).map(|(k, v)| (*k, v.clone())).collect())
    }
}

/// Cuts the bytes of `[offset, offset + size)` out of consecutive chunks; stops at a
/// short chunk (end of file).
pub fn assemble(offset: u64, size: u32, chunk: u32, parts: &[(u64, Bytes)]) -> Bytes {
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
        let ra = ReadAhead::default();
        let n = Arc::new(AtomicUsize::new(0));
        assert!(ra.plan(4096, 4096, 65536, 1 << 30, 0, counting(n.clone())).is_none());
        assert!(ra.plan(100_000, 4096, 65536, 1 << 30, 0, counting(n.clone())).is_none());
        assert_eq!(n.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn sequential_reads_fetch_a_growing_window_within_the_file() {
        let ra = ReadAhead::default();
        let n = Arc::new(AtomicUsize::new(0));
        let cs = 64 * 1024;
        let plan = ra.plan(0, 131072, cs, 1 << 30, 0, counting(n.clone())).unwrap();
        assert_eq!(plan.len(), 2);
        let first = n.load(Ordering::SeqCst);
        assert_eq!(first as u64, (131072 + INITIAL_WINDOW) / u64::from(cs));
        ra.plan(131072, 131072, cs, 1 << 30, 0, counting(n.clone())).unwrap();
        assert!(n.load(Ordering::SeqCst) > first, "window grew");
        // Never beyond the end of the file.
        let ra = ReadAhead::default();
        let n = Arc::new(AtomicUsize::new(0));
        ra.plan(0, 4096, cs, 100_000, 0, counting(n.clone())).unwrap();
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_window_stops_growing_at_its_limit() {
        let cs: u32 = 64 * 1024;
        let limit = 256 * 1024;
        let ra = ReadAhead::new(limit);
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
    fn a_write_drops_what_was_fetched() {
        let ra = ReadAhead::default();
        let n = Arc::new(AtomicUsize::new(0));
        ra.plan(0, 4096, 65536, 1 << 20, 0, counting(n.clone())).unwrap();
        let before = n.load(Ordering::SeqCst);
        ra.plan(4096, 4096, 65536, 1 << 20, 1, counting(n.clone())).unwrap();
        assert!(n.load(Ordering::SeqCst) > before, "refetched after a write");
    }

    #[tokio::test]
    async fn assembled_bytes_are_the_right_ones() {
        let ra = ReadAhead::default();
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
