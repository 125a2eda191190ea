//! Watching a link that is up: heartbeats with deadlines, stalls, and the paths a mount
//! needs, so that a dead link is found and given to the supervisor.

use super::*;

impl<S: Session> Link<S> {
    /// Returns why the pool was declared dead, or `None` once the link is closed.
    ///
    /// A connection is dead when it has had requests out and received nothing for
    /// `request_timeout`: how long a request waits says nothing on a slow link, where it
    /// may queue behind megabytes, while bytes arriving say the link is alive. Every
    /// connection gets a heartbeat each `heartbeat_interval`, so an idle connection has
    /// a request out too; a heartbeat that fails outright `max_heartbeat_failures` times
    /// in a row also takes the pool down (and the pool comes back whole).
    pub(super) async fn watch_while_up(&self) -> Option<String> {
        let pool = read(&self.current).clone();
        let Some(generation) = pool.first().map(|c| c.generation) else {
            return Some(lock(&self.last_failure).clone());
        };
        let stall_limit = self.opts.request_timeout;
        let mut failures = vec![0u32; pool.len()];
        let mut beating = vec![false; pool.len()];
        let mut beats = FuturesUnordered::new();
        // The smallest heartbeat round trip since the last tick: the connection with the
        // least queued on it shows the link's own latency.
        let mut fastest: Option<Duration> = None;
        // A zero interval panics the timer; the CLI refuses one, a request from a client of
        // another version might not.
        let mut tick = tokio::time::interval(self.opts.heartbeat_interval.max(crate::deadline::SHORTEST));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut check = tokio::time::interval(WATCHDOG_PERIOD.min(stall_limit / 4).max(Duration::from_millis(10)));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.is_closed() {
                return None;
            }
            tokio::select! {
                _ = tick.tick() => {
                    if pool.iter().any(|c| c.is_closed()) {
                        return Some("an SSH session ended".into());
                    }
                    if !self.current_is(generation) {
                        return Some(lock(&self.last_failure).clone());
                    }
                    if let Some(rtt) = fastest.take() {
                        self.last_rtt_us.store(rtt.as_micros().max(1) as u64, Ordering::Relaxed);
                    }
                    for (i, c) in pool.iter().enumerate() {
                        if !std::mem::replace(&mut beating[i], true) {
                            let c = c.clone();
                            beats.push(async move {
                                let started = Instant::now();
                                let ok = c.session.heartbeat().await;
                                let rtt = started.elapsed();
                                if ok {
                                    c.note_rtt(rtt);
                                }
                                (i, rtt, ok)
                            });
                        }
                    }
                }
                Some((i, rtt, ok)) = beats.next(), if !beats.is_empty() => {
                    beating[i] = false;
                    if ok {
                        failures[i] = 0;
                        fastest = Some(fastest.map_or(rtt, |f| f.min(rtt)));
                    } else {
                        failures[i] += 1;
                        tracing::debug!(connection = i, failures = failures[i], "heartbeat failed");
                        if failures[i] >= self.opts.max_heartbeat_failures {
                            return Some(format!("{} heartbeats failed", failures[i]));
                        }
                    }
                }
                _ = check.tick() => {
                    if let Some(stalled) = pool.iter().filter_map(|c| c.stalled_for()).find(|d| *d >= stall_limit) {
                        return Some(format!("nothing received for {:.1}s with requests out", stalled.as_secs_f64()));
                    }
                }
                _ = self.failure_seen.notified() => {
                    if !self.current_is(generation) || pool.iter().any(|c| c.is_closed()) {
                        return Some(lock(&self.last_failure).clone());
                    }
                }
                _ = self.close_requested.notified() => return None,
            }
        }
    }

    /// How long the link has had requests out without receiving anything (the longest
    /// of its connections); `None` when nothing is out.
    pub fn stalled_for(&self) -> Option<Duration> {
        read(&self.current).iter().filter_map(|c| c.stalled_for()).max()
    }

    pub(super) fn current_is(&self, generation: u64) -> bool {
        read(&self.current).first().is_some_and(|c| c.generation == generation)
    }

    pub(super) async fn check_required_paths(&self, conn: &Conn<S>) -> Result<(), String> {
        let paths = lock(&self.required_paths).clone();
        for p in paths {
            if conn.session.path_gone(&p).await {
                return Err(format!("remote path {p} is gone"));
            }
        }
        Ok(())
    }
}
