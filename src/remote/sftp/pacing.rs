//! How much file data one connection may have out at once. Whatever is out sits in
//! queues (ours, the SSH channel's, the socket's, the network's) ahead of every request
//! sent after it, heartbeats included: on a slow link, megabytes out means seconds of
//! waiting for a `stat`. So reads and writes take a share of a per-connection budget
//! before they go out and give it back when answered, and the budget follows the link:
//! it grows while answers come back about as fast as the link's unloaded latency, and
//! shrinks when they come back late, which means they queued. A fast link keeps a large
//! budget (its bandwidth times latency is large); a slow one a small one.
//!
//! Requests wait for their share in the order they asked: a file's writes on one
//! connection go out in the order they were queued.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::sync::lock;

/// The smallest budget: two largest requests (255 KiB reads), so that a connection
/// carrying one file on a narrow link keeps one request out while the other is
/// answered, instead of falling to stop-and-wait (a round trip lost per request).
pub const MIN_BUDGET: usize = 512 * 1024;
/// The largest budget.
pub const MAX_BUDGET: usize = 16 * 1024 * 1024;
/// How much later than the unloaded latency an answer may come before the budget
/// shrinks: the queueing a small request may meet behind file data.
const TARGET_QUEUEING: Duration = Duration::from_millis(40);
/// How long the unloaded latency is remembered: the least latency seen in this window
/// (and the one before) stands for it.
const BASE_WINDOW: Duration = Duration::from_secs(10);
/// Permits are counted in units of this many bytes.
const UNIT: usize = 1024;

/// The budget's arithmetic, without the waiting.
#[derive(Debug)]
struct Budget {
    /// Bytes that may be out now.
    limit: usize,
    /// Least latency seen in the current window, and in the one before.
    base_now: Option<Duration>,
    base_before: Option<Duration>,
    window_start: Instant,
}

impl Budget {
    fn new(now: Instant) -> Budget {
        Budget { limit: MAX_BUDGET / 4, base_now: None, base_before: None, window_start: now }
    }

    fn base(&self) -> Option<Duration> {
        match (self.base_now, self.base_before) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A request of `bytes` was answered `latency` after it was sent; returns the new
    /// limit.
    fn answered(&mut self, now: Instant, bytes: usize, latency: Duration) -> usize {
        if now.duration_since(self.window_start) >= BASE_WINDOW {
            self.base_before = self.base_now.take();
            self.window_start = now;
        }
        self.base_now = Some(self.base_now.map_or(latency, |b| b.min(latency)));
        let base = self.base().unwrap_or(latency);
        if latency > base + TARGET_QUEUEING {
            // It queued: out with less.
            self.limit = (self.limit - self.limit / 8).max(MIN_BUDGET);
        } else {
            // It did not: room for one more of its size.
            self.limit = (self.limit + bytes.max(UNIT)).min(MAX_BUDGET);
        }
        self.limit
    }
}

/// One connection's budget for file data out.
#[derive(Debug)]
pub struct Pacing {
    permits: Arc<Semaphore>,
    state: Mutex<PacingState>,
}

#[derive(Debug)]
struct PacingState {
    budget: Budget,
    /// Units in the semaphore's total (out or free).
    total: usize,
    /// Units to take out of circulation as they come back (after a shrink).
    debt: usize,
}

/// A request's share of the budget, given back by `Pacing::answered`.
pub struct Share {
    permit: OwnedSemaphorePermit,
    bytes: usize,
    sent: Instant,
}

impl Default for Pacing {
    fn default() -> Self {
        let budget = Budget::new(Instant::now());
        let total = budget.limit / UNIT;
        Pacing { permits: Arc::new(Semaphore::new(total)), state: Mutex::new(PacingState { budget, total, debt: 0 }) }
    }
}

impl Pacing {
    /// Waits, in turn, for room to send a request carrying `bytes` of file data (out or
    /// asked for).
    pub async fn share(&self, bytes: usize) -> Share {
        let units = bytes.div_ceil(UNIT).clamp(1, MIN_BUDGET / UNIT) as u32;
        let permit = match self.permits.clone().acquire_many_owned(units).await {
            Ok(p) => p,
            // The semaphore is never closed.
            Err(_) => unreachable!("pacing permits closed"),
        };
        Share { permit, bytes, sent: Instant::now() }
    }

    /// The request holding `share` was answered (or failed): its share comes back, and
    /// the budget learns from how long it took.
    pub fn answered(&self, share: Share) {
        let now = Instant::now();
        let mut s = lock(&self.state);
        let limit = s.budget.answered(now, share.bytes, now.duration_since(share.sent)) / UNIT;
        let mut permit = share.permit;
        if limit > s.total {
            self.permits.add_permits(limit - s.total);
            s.total = limit;
        } else if limit < s.total {
            let cut = s.total - limit;
            s.total = limit;
            s.debt += cut - self.permits.forget_permits(cut);
        }
        if s.debt > 0 {
            let keep = (s.debt as u32).min(permit.num_permits() as u32);
            if let Some(kept) = permit.split(keep as usize) {
                kept.forget();
            }
            s.debt -= keep as usize;
        }
        drop(s);
        drop(permit);
    }

    /// Bytes that may be out now.
    #[cfg(test)]
    fn limit(&self) -> usize {
        lock(&self.state).total * UNIT
    }

    /// Bytes out now.
    pub fn out(&self) -> usize {
        let s = lock(&self.state);
        s.total.saturating_sub(self.permits.available_permits() + s.debt) * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn the_budget_grows_while_answers_come_at_the_unloaded_latency() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        let start = b.limit;
        for i in 0..100 {
            b.answered(t0 + Duration::from_millis(i), 128 * 1024, Duration::from_millis(10));
        }
        assert!(b.limit > start);
        assert!(b.limit <= MAX_BUDGET);
    }

    #[test]
    fn the_budget_shrinks_when_answers_queue_but_never_below_two_requests() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        b.answered(t0, 128 * 1024, Duration::from_millis(60));
        for i in 1..200 {
            b.answered(t0 + Duration::from_millis(i), 128 * 1024, Duration::from_millis(60) + TARGET_QUEUEING * 3);
        }
        assert_eq!(b.limit, MIN_BUDGET);
    }

    #[test]
    fn the_unloaded_latency_is_forgotten_after_two_windows() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        b.answered(t0, 1024, Duration::from_millis(1));
        b.answered(t0 + BASE_WINDOW, 1024, Duration::from_millis(50));
        assert_eq!(b.base(), Some(Duration::from_millis(1)));
        b.answered(t0 + BASE_WINDOW * 2, 1024, Duration::from_millis(50));
        assert_eq!(b.base(), Some(Duration::from_millis(50)), "a path that got slower is the new normal");
    }

    #[tokio::test]
    async fn requests_wait_their_turn_within_the_budget() {
        let p = Pacing::default();
        let limit = p.limit();
        let mut shares = Vec::new();
        while p.out() + MIN_BUDGET <= limit {
            shares.push(p.share(MIN_BUDGET).await);
        }
        let next = p.share(MIN_BUDGET);
        let mut next = Box::pin(next);
        assert!((&mut next).now_or_never().is_none(), "a request went out past the budget");
        p.answered(shares.pop().unwrap());
        let got = tokio::time::timeout(Duration::from_secs(5), next).await;
        assert!(got.is_ok(), "an answer did not make room");
    }

    #[tokio::test]
    async fn a_shrunk_budget_takes_its_units_back_as_answers_come() {
        let p = Pacing::default();
        let start = p.limit();
        // One answer at once sets the unloaded latency.
        let quick = p.share(1024).await;
        p.answered(quick);
        let mut shares = Vec::new();
        for _ in 0..8 {
            shares.push(p.share(MIN_BUDGET).await);
        }
        // Every other answer comes late, while its units are still out.
        for mut s in shares {
            s.sent -= TARGET_QUEUEING * 4;
            p.answered(s);
        }
        assert!(p.limit() < start, "the budget did not shrink");
        assert_eq!(p.out(), 0, "units were lost or kept");
        let fresh = p.share(1024).await;
        assert_eq!(p.out(), 1024);
        p.answered(fresh);
    }
}
