//! The link's reconnect decisions, kept free of I/O so they can be tested on their own:
//! given what just happened, wait how long before the next attempt, or give up.

use std::time::Duration;

use super::backoff::Backoff;
use super::error::LinkError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Try again after `delay`; this will be attempt number `attempt`.
    Retry { delay: Duration, attempt: u32 },
    /// Stop trying until someone asks for a reconnect.
    Fail { reason: String },
}

#[derive(Debug, Clone)]
pub struct Policy {
    backoff: Backoff,
    reconnect: bool,
    stable_after: Duration,
}

impl Policy {
    pub fn new(base: Duration, cap: Duration, stable_after: Duration, reconnect: bool) -> Policy {
        Policy { backoff: Backoff::new(base, cap), reconnect, stable_after }
    }

    fn retry(&mut self) -> Next {
        let delay = self.backoff.next_delay();
        Next::Retry { delay, attempt: self.backoff.attempt() }
    }

    /// The connection was lost after being up for `up_for`.
    pub fn on_lost(&mut self, reason: &str, up_for: Duration) -> Next {
        // A connection that held resets the backoff; one that dropped at once does not,
        // so a server that accepts and then drops us is not hammered.
        if up_for >= self.stable_after {
            self.backoff.reset();
        }
        if !self.reconnect {
            return Next::Fail { reason: format!("connection lost and reconnecting is off: {reason}") };
        }
        self.retry()
    }

    /// An attempt failed: retry if the cause may pass by itself, else give up.
    pub fn on_attempt_failed(&mut self, err: &LinkError) -> Next {
        if Self::worth_retrying(err) {
            self.retry()
        } else {
            Next::Fail { reason: err.to_string() }
        }
    }

    /// Whether a reconnect should retry after `err`. Unlike a first connection, a name that
    /// does not resolve or a network that is unreachable is expected while a laptop
    /// wakes up or a VPN comes back.
    pub fn worth_retrying(err: &LinkError) -> bool {
        err.is_transient() || matches!(err, LinkError::Resolve { .. } | LinkError::Unreachable { .. })
    }

    /// Someone asked for an attempt now (e.g. `moor reconnect`), also after a failure.
    pub fn on_manual(&mut self) -> Next {
        Next::Retry { delay: Duration::ZERO, attempt: self.backoff.attempt() + 1 }
    }

    /// A connection was made.
    pub fn on_connected(&mut self) {
        // The backoff resets only once the connection has proved stable (on_lost).
    }

    #[cfg(test)]
    fn attempt(&self) -> u32 {
        self.backoff.attempt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(Duration::from_millis(100), Duration::from_secs(10), Duration::from_secs(10), true)
    }

    fn refused() -> LinkError {
        LinkError::Refused { addr: "x".into() }
    }

    #[test]
    fn transient_failures_retry_with_growing_delays() {
        let mut p = policy();
        let Next::Retry { delay, attempt: 1 } = p.on_lost("gone", Duration::from_secs(60)) else { panic!() };
        assert!(delay <= Duration::from_millis(100));
        for n in 2..8u32 {
            let Next::Retry { delay, attempt } = p.on_attempt_failed(&refused()) else { panic!() };
            assert_eq!(attempt, n);
            assert!(delay <= Duration::from_millis(100) * 2u32.pow(n - 1), "attempt {n}: {delay:?}");
        }
    }

    #[test]
    fn permanent_failures_give_up_with_the_reason() {
        let mut p = policy();
        p.on_lost("gone", Duration::from_secs(60));
        let changed =
            LinkError::HostKeyChanged { host: "h".into(), fingerprint: "f".into(), file: "k".into(), line: 1 };
        match p.on_attempt_failed(&changed) {
            Next::Fail { reason } => assert!(reason.contains("HAS CHANGED")),
            other => panic!("{other:?}"),
        }
        let auth =
            LinkError::AuthRefused { user: "u".into(), host: "h".into(), tried: "k".into(), hint: String::new() };
        assert!(matches!(p.on_attempt_failed(&auth), Next::Fail { .. }));
    }

    #[test]
    fn dns_failure_is_retried_on_reconnect() {
        let mut p = policy();
        p.on_lost("gone", Duration::from_secs(60));
        let dns = LinkError::Resolve { host: "h".into(), detail: "no network".into() };
        assert!(matches!(p.on_attempt_failed(&dns), Next::Retry { .. }));
    }

    #[test]
    fn stable_connection_resets_backoff_and_flapping_one_does_not() {
        let mut p = policy();
        p.on_lost("gone", Duration::from_secs(60));
        for _ in 0..5 {
            p.on_attempt_failed(&refused());
        }
        assert_eq!(p.attempt(), 6);
        p.on_connected();
        // Dropped right after connecting: keep backing off.
        let Next::Retry { attempt, .. } = p.on_lost("gone", Duration::from_secs(1)) else { panic!() };
        assert_eq!(attempt, 7);
        p.on_connected();
        // Held for a while: start over.
        let Next::Retry { attempt, delay } = p.on_lost("gone", Duration::from_secs(11)) else { panic!() };
        assert_eq!(attempt, 1);
        assert!(delay <= Duration::from_millis(100));
    }

    #[test]
    fn no_reconnect_fails_at_once() {
        let mut p = Policy::new(Duration::from_millis(100), Duration::from_secs(1), Duration::from_secs(1), false);
        match p.on_lost("reset by peer", Duration::from_secs(5)) {
            Next::Fail { reason } => assert!(reason.contains("reset by peer") && reason.contains("off")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn manual_request_skips_the_backoff() {
        let mut p = policy();
        p.on_lost("gone", Duration::from_secs(60));
        for _ in 0..6 {
            p.on_attempt_failed(&refused());
        }
        assert_eq!(p.on_manual(), Next::Retry { delay: Duration::ZERO, attempt: 8 });
    }
}
