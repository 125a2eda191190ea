//! Deadlines from durations that come from outside (flags, `-o`, the ssh config, a
//! client's request): adding a duration to an instant panics on overflow, and some of
//! these are as large as the user cares to type. Every such sum goes through here.

use std::time::{Duration, SystemTime};

/// The longest wait moor honours; anything longer is as good as forever.
pub const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);

/// The shortest duration a timeout, interval or delay option may have: zero would panic
/// a timer (a zero interval) or make every call fail at once, and below a millisecond
/// the timers cannot tell the difference.
pub const SHORTEST: Duration = Duration::from_millis(1);

/// `d`, at most `LONGEST`.
pub fn clamp(d: Duration) -> Duration {
    d.min(LONGEST)
}

/// The instant `d` from now, at most `LONGEST` away.
pub fn after(d: Duration) -> tokio::time::Instant {
    later(tokio::time::Instant::now(), d)
}

/// `at + d`, at most `LONGEST` later than `at`.
pub fn later(at: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    // LONGEST after any instant the clock can show is well within range.
    at.checked_add(clamp(d)).unwrap_or(at)
}

/// The wall-clock time `d` from now, at most `LONGEST` away.
pub fn wall_after(d: Duration) -> SystemTime {
    let now = SystemTime::now();
    now.checked_add(clamp(d)).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_are_clamped_not_a_panic() {
        let now = tokio::time::Instant::now();
        for huge in [Duration::MAX, Duration::from_secs(u64::MAX), Duration::from_secs(i64::MAX as u64)] {
            assert_eq!(later(now, huge), now + LONGEST);
            assert!(after(huge) > now);
            assert!(wall_after(huge) > SystemTime::now());
            assert_eq!(clamp(huge), LONGEST);
        }
        assert_eq!(later(now, Duration::from_secs(3)), now + Duration::from_secs(3));
    }
}
