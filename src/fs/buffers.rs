//! Buffers for the data of large writes, used again once the server has the data.
//!
//! The kernel hands write data over in a buffer that is reused for the next request, so
//! it is copied out. A fresh megabyte per write costs the allocator a new mapping and
//! 256 page faults each time (measured: an eighth of the session thread's time during
//! a 512 MiB `dd`); a few recycled buffers cost nothing after the first use.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Writes at least this large use pooled buffers; smaller ones are cheap to allocate.
const POOLED_FROM: usize = 64 * 1024;

pub struct BufferPool {
    size: usize,
    /// Buffers kept for reuse at most: what stays allocated once writing stops.
    keep: usize,
    free: Mutex<Vec<Vec<u8>>>,
}

struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

impl BufferPool {
    /// A pool of `keep` buffers of `size` bytes at most.
    pub fn new(size: usize, keep: usize) -> Arc<BufferPool> {
        Arc::new(BufferPool { size, keep, free: Mutex::new(Vec::new()) })
    }

    /// A copy of `data`, in a recycled buffer when it is large.
    pub fn copy(self: &Arc<Self>, data: &[u8]) -> Bytes {
        if data.len() < POOLED_FROM || data.len() > self.size {
            return Bytes::copy_from_slice(data);
        }
        let mut buf = self.lock().pop().unwrap_or_else(|| Vec::with_capacity(self.size));
        buf.clear();
        buf.extend_from_slice(data);
        Bytes::from_owner(Pooled { buf, pool: self.clone() })
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut free = self.lock();
        if free.len() < self.keep && buf.capacity() == self.size {
            free.push(buf);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        crate::sync::lock(&self.free)
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_once_every_slice_is_gone() {
        let pool = BufferPool::new(1 << 20, 2);
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let b = pool.copy(&data);
        assert_eq!(b, data);
        let part = b.slice(100..200);
        drop(b);
        assert_eq!(pool.kept(), 0, "a slice still uses the buffer");
        assert_eq!(part, data[100..200]);
        drop(part);
        assert_eq!(pool.kept(), 1);
        // Reused, with the new content only.
        let again = pool.copy(&data[..70_000]);
        assert_eq!(pool.kept(), 0);
        assert_eq!(again, data[..70_000]);
    }

    #[test]
    fn small_writes_and_the_cap_bypass_the_pool() {
        let pool = BufferPool::new(1 << 20, 1);
        drop(pool.copy(b"small"));
        assert_eq!(pool.kept(), 0);
        let big = vec![7u8; 100_000];
        let (a, b) = (pool.copy(&big), pool.copy(&big));
        drop(a);
        drop(b);
        assert_eq!(pool.kept(), 1, "keeps no more than asked");
    }
}
