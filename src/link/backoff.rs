//! Exponential backoff with full jitter: the n-th retry waits a uniformly random time in
//! [0, min(cap, base · 2^n)], so that many clients that lost the same server do not come
//! back in lockstep.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff { base, cap: cap.max(base), attempt: 0, rng: fastrand::Rng::new() }
    }

    #[cfg(test)]
    fn with_seed(base: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff { rng: fastrand::Rng::with_seed(seed), ..Backoff::new(base, cap) }
    }

    /// Attempts made since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.checked_mul(factor).unwrap_or(self.cap).min(self.cap)
    }

    /// The delay before the next attempt; counts the attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = ceiling.as_nanos().min(u128::from(u64::MAX)) as u64;
        Duration::from_nanos(self.rng.u64(0..=nanos))
    }

    /// Back to the first step, after a connection that held.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_the_growing_ceiling() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        let mut b = Backoff::with_seed(base, cap, 7);
        for n in 0..40u32 {
            let ceiling = (base * 2u32.saturating_pow(n.min(20))).min(cap);
            assert_eq!(b.ceiling(), ceiling, "attempt {n}");
            let d = b.next_delay();
            assert!(d <= ceiling, "attempt {n}: {d:?} > {ceiling:?}");
        }
        assert_eq!(b.ceiling(), cap);
    }

    #[test]
    fn jitter_is_spread_over_the_whole_range() {
        let mut b = Backoff::with_seed(Duration::from_secs(1), Duration::from_secs(1), 42);
        let samples: Vec<Duration> = (0..2000).map(|_| b.next_delay()).collect();
        let low = samples.iter().filter(|d| **d < Duration::from_millis(250)).count();
        let high = samples.iter().filter(|d| **d > Duration::from_millis(750)).count();
        // Full jitter: about a quarter of the draws in each outer quarter.
        assert!((400..600).contains(&low), "low quarter: {low}");
        assert!((400..600).contains(&high), "high quarter: {high}");
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 1900);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::with_seed(Duration::from_millis(10), Duration::from_secs(60), 1);
        for _ in 0..10 {
            b.next_delay();
        }
        assert_eq!(b.attempt(), 10);
        assert_eq!(b.ceiling(), Duration::from_millis(10240));
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.ceiling(), Duration::from_millis(10));
        assert!(b.next_delay() <= Duration::from_millis(10));
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::with_seed(Duration::from_secs(1), Duration::from_secs(30), 3);
        b.attempt = u32::MAX - 1;
        assert_eq!(b.ceiling(), Duration::from_secs(30));
        assert!(b.next_delay() <= Duration::from_secs(30));
        assert!(b.next_delay() <= Duration::from_secs(30));
    }
}
