//! A link's supervisor: keeps the link up, and when it goes down restores it by the
//! reconnect policy (exponential backoff with full jitter), or at once when asked.

use super::*;

impl<S: Session> Link<S> {
    /// Keeps the link up until it is closed, then lets go of what a reconnect attempt
    /// under way at the close may have left: its connections and what its login learned.
    pub(super) async fn supervise(self: Arc<Self>) {
        self.keep_up().await;
        retire(std::mem::take(&mut *write(&self.current)));
        self.keyring.wipe();
        lock(&self.asker).take();
        tracing::info!(host = %self.dest.host_name, "link closed");
    }

    /// Watches the link while up and restores it while down, as the policy decides,
    /// until it is closed.
    pub(super) async fn keep_up(&self) {
        let mut policy =
            Policy::new(self.opts.backoff_base, self.opts.backoff_cap, self.opts.stable_after, self.opts.reconnect);
        let mut up_since = Instant::now();
        loop {
            let Some(lost) = self.watch_while_up().await else { return };
            let old = std::mem::take(&mut *write(&self.current));
            retire(old);
            let next = policy.on_lost(&lost, up_since.elapsed());
            if !self.restore(&mut policy, next, lost).await {
                return;
            }
            policy.on_connected();
            up_since = Instant::now();
        }
    }

    /// Runs reconnect attempts until one succeeds (`true`) or the link is closed.
    pub(super) async fn restore(&self, policy: &mut Policy, mut next: Next, mut last_error: String) -> bool {
        let since = SystemTime::now();
        let mut last_attempt_end = Instant::now() - MIN_ATTEMPT_GAP;
        loop {
            match next {
                Next::Fail { reason } => {
                    tracing::warn!(host = %self.dest.host_name, %reason, "link failed");
                    self.publish(LinkState::Failed { reason });
                    // Only `moor reconnect` (or closing) moves a failed link.
                    tokio::select! {
                        _ = self.attempt_now.notified() => next = policy.on_manual(),
                        _ = self.close_requested.notified() => return false,
                    }
                    continue;
                }
                Next::Retry { delay, attempt } => {
                    self.publish(LinkState::Down {
                        since,
                        attempt,
                        next_attempt_at: crate::deadline::wall_after(delay),
                        last_error: last_error.clone(),
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.attempt_wanted.notified() => {
                            let gap = MIN_ATTEMPT_GAP.saturating_sub(last_attempt_end.elapsed());
                            tokio::time::sleep(gap).await;
                        }
                        _ = self.attempt_now.notified() => {}
                        _ = self.close_requested.notified() => return false,
                    }
                    if self.is_closed() {
                        return false;
                    }
                    let outcome = self.attempt(attempt).await;
                    last_attempt_end = Instant::now();
                    match outcome {
                        Ok(()) => {
                            self.report_outcome(Ok(()));
                            return true;
                        }
                        Err(AttemptError::Dial(LinkError::NeedsLogin { method, .. })) => {
                            tracing::warn!(host = %self.dest.host_name, %method, "the server wants a person to log in");
                            self.report_outcome(Err(format!("the server asks for a {method}")));
                            self.publish(LinkState::NeedsLogin { method, since: SystemTime::now() });
                            // Only `moor reconnect` (with someone to answer) or closing moves it.
                            tokio::select! {
                                _ = self.attempt_now.notified() => next = policy.on_manual(),
                                _ = self.close_requested.notified() => return false,
                            }
                        }
                        Err(AttemptError::Dial(e)) => {
                            tracing::debug!(attempt, error = %e, "reconnect attempt failed");
                            last_error = e.to_string();
                            self.report_outcome(Err(last_error.clone()));
                            next = policy.on_attempt_failed(&e);
                        }
                        Err(AttemptError::Unusable(reason)) => {
                            self.report_outcome(Err(reason.clone()));
                            next = Next::Fail { reason };
                        }
                    }
                }
            }
        }
    }

    /// One reconnect attempt: on success the new pool is installed and the link is up.
    pub(super) async fn attempt(&self, attempt: u32) -> Result<(), AttemptError> {
        let generation = self.generation.load(Ordering::SeqCst) + 1;
        let mut dest = self.dest.clone();
        dest.connect_timeout = dest.connect_timeout.min(self.opts.reconnect_timeout);
        let asker = lock(&self.asker).take();
        let pool = dial_pool(&dest, &self.opts, generation, &self.keyring, asker.as_deref())
            .await
            .map_err(AttemptError::Dial)?;
        if let Err(reason) = self.check_required_paths(&pool[0]).await {
            for c in pool {
                c.close().await;
            }
            return Err(AttemptError::Unusable(reason));
        }
        self.generation.store(generation, Ordering::SeqCst);
        self.install(pool);
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(host = %self.dest.host_name, attempt, "reconnected");
        self.publish(LinkState::Up { since: SystemTime::now() });
        Ok(())
    }

    pub(super) fn report_outcome(&self, r: Result<(), String>) {
        self.outcomes.send_modify(|(seq, last)| {
            *seq += 1;
            *last = r;
        });
    }

    /// Makes an attempt now, skipping the backoff (also after a failure), and says how
    /// it went. Waits at most `limit`.
    pub async fn reconnect_now(&self, limit: Duration, asker: Option<Arc<dyn Asker>>) -> Result<&'static str, String> {
        match self.state() {
            LinkState::Up { .. } => return Ok("already active"),
            LinkState::Closed => return Err("the mount is being unmounted".into()),
            _ => {}
        }
        let mut rx = self.outcomes.subscribe();
        let seen = rx.borrow_and_update().0;
        *lock(&self.asker) = asker;
        self.attempt_now.notify_one();
        let wait = async {
            loop {
                if rx.changed().await.is_err() {
                    return Err("the link is gone".to_string());
                }
                let (seq, r) = rx.borrow_and_update().clone();
                if seq != seen {
                    return r.map(|()| "reconnected");
                }
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or_else(|_| Err("no outcome within the time limit".into()))
    }
}
