//! The SSH side: where to connect (`config`), how (`ssh`, `known_hosts`), and the managed
//! link that keeps a connection alive for the remote layer: heartbeats detect a dead
//! connection, a supervisor reconnects with backoff (`backoff`), and the connection is
//! swapped underneath whoever uses the link.

pub mod backoff;
pub mod config;
pub mod error;
pub mod known_hosts;
pub mod ssh;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;

pub use config::Destination;
pub use error::LinkError;
pub use ssh::SftpConn;

use backoff::Backoff;

/// Dials to all destinations together, so that a laptop waking with many mounts does not
/// trip the servers' MaxStartups.
pub const MAX_CONCURRENT_DIALS: usize = 16;
static DIALS: Semaphore = Semaphore::const_new(MAX_CONCURRENT_DIALS);

/// A reconnect attempt started by a filesystem call waits at least this long after the
/// previous attempt ended, so a busy mount cannot turn into a dial storm.
const MIN_ATTEMPT_GAP: Duration = Duration::from_millis(300);

/// How a link watches and restores its connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkOptions {
    pub heartbeat_interval: Duration,
    pub max_heartbeat_failures: u32,
    /// How long one SFTP request may take before the connection counts as dead.
    pub request_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// A connection that held this long resets the backoff.
    pub stable_after: Duration,
    /// Upper bound on one reconnect attempt (dial, handshake, authentication).
    pub reconnect_timeout: Duration,
    pub reconnect: bool,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            heartbeat_interval: Duration::from_secs(1),
            max_heartbeat_failures: 3,
            request_timeout: Duration::from_secs(2),
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            stable_after: Duration::from_secs(10),
            reconnect_timeout: Duration::from_secs(5),
            reconnect: true,
        }
    }
}

/// Where a link stands. Every change is published to the link's watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    Up { since: SystemTime },
    Down { since: SystemTime, attempt: u32, next_attempt_at: SystemTime, last_error: String },
    Failed { reason: String },
    Closed,
}

/// Why the link cannot serve a request right now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// Down, and being restored: try again soon.
    #[error("link down: {0}")]
    Down(String),
    /// Given up for good (host key changed, authentication refused, ...).
    #[error("link failed: {0}")]
    Failed(String),
}

/// The managed link to one destination. The remote layer asks it for the current
/// connection on every request, so the connection can be replaced underneath.
pub struct Link {
    dest: Destination,
    opts: LinkOptions,
    current: RwLock<Option<Arc<SftpConn>>>,
    generation: AtomicU64,
    state: watch::Sender<LinkState>,
    /// A filesystem call found the link down: try now rather than after the backoff.
    attempt_wanted: Notify,
    /// The remote layer saw the current connection fail.
    failure_seen: Notify,
    last_failure: Mutex<String>,
    closed: AtomicBool,
    close_requested: Notify,
    reconnects: AtomicU64,
    last_rtt_us: AtomicU64,
    /// Paths that must still exist after a reconnect (mount roots).
    required_paths: Mutex<Vec<String>>,
}

impl Link {
    /// Connects to `dest`, failing with the reason if it cannot, then keeps the
    /// connection alive in the background until `close`.
    pub async fn connect(dest: Destination, opts: LinkOptions) -> Result<Arc<Link>, LinkError> {
        let conn = {
            let _permit = DIALS.acquire().await;
            ssh::connect(&dest, opts.request_timeout, 1).await?
        };
        let (state, _) = watch::channel(LinkState::Up { since: SystemTime::now() });
        let link = Arc::new(Link {
            dest,
            opts,
            current: RwLock::new(Some(Arc::new(conn))),
            generation: AtomicU64::new(1),
            state,
            attempt_wanted: Notify::new(),
            failure_seen: Notify::new(),
            last_failure: Mutex::new(String::new()),
            closed: AtomicBool::new(false),
            close_requested: Notify::new(),
            reconnects: AtomicU64::new(0),
            last_rtt_us: AtomicU64::new(0),
            required_paths: Mutex::new(Vec::new()),
        });
        tokio::spawn(link.clone().supervise());
        Ok(link)
    }

    pub fn subscribe(&self) -> watch::Receiver<LinkState> {
        self.state.subscribe()
    }

    pub fn state(&self) -> LinkState {
        self.state.borrow().clone()
    }

    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Round-trip time of the last heartbeat.
    pub fn last_rtt(&self) -> Option<Duration> {
        match self.last_rtt_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// A path the link must find after reconnecting, or fail: a mount's root.
    pub fn require_path(&self, path: &str) {
        lock(&self.required_paths).push(path.to_string());
    }

    /// The live connection, at once; or why there is none. Asking while the link is down
    /// brings the next reconnect attempt forward.
    pub fn conn(&self) -> Result<Arc<SftpConn>, Unavailable> {
        if let Some(c) = self.current.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        match &*self.state.borrow() {
            LinkState::Failed { reason } => Err(Unavailable::Failed(reason.clone())),
            LinkState::Closed => Err(Unavailable::Failed("unmounted".into())),
            LinkState::Down { last_error, .. } => {
                self.attempt_wanted.notify_one();
                Err(Unavailable::Down(last_error.clone()))
            }
            _ => {
                self.failure_seen.notify_one();
                Err(Unavailable::Down("connection closed".into()))
            }
        }
    }

    /// Waits until the link is up (`Ok`) or has failed for good (`Err`).
    pub async fn wait_up(&self) -> Result<(), Unavailable> {
        let mut rx = self.state.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                LinkState::Up { .. } => return Ok(()),
                LinkState::Failed { reason } => return Err(Unavailable::Failed(reason.clone())),
                LinkState::Closed => return Err(Unavailable::Failed("unmounted".into())),
                LinkState::Down { .. } => self.attempt_wanted.notify_one(),
            }
            if rx.changed().await.is_err() {
                return Err(Unavailable::Failed("link gone".into()));
            }
        }
    }

    /// The remote layer saw a request on connection `generation` time out or the session
    /// break: the link is down from now on.
    pub fn report_failure(&self, generation: u64, what: &str) {
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        let taken = {
            let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
            match cur.as_ref() {
                Some(c) if c.generation == generation => cur.take(),
                _ => None,
            }
        };
        if let Some(old) = taken {
            tracing::warn!(host = %self.dest.host_name, what, "connection lost");
            *lock(&self.last_failure) = what.to_string();
            self.failure_seen.notify_one();
            retire(old);
        }
    }

    /// Ends the link and its connection.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.close_requested.notify_one();
        let conn = self.current.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(c) = conn {
            c.close().await;
        }
        self.publish(LinkState::Closed);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn publish(&self, s: LinkState) {
        if self.is_closed() && s != LinkState::Closed {
            return;
        }
        self.state.send_replace(s);
    }

    fn install(&self, conn: SftpConn) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(conn));
    }

    /// Keeps the link up until it is closed: watch while up, restore while down.
    async fn supervise(self: Arc<Self>) {
        let mut backoff = Backoff::new(self.opts.backoff_base, self.opts.backoff_cap);
        let mut up_since = Instant::now();
        loop {
            let lost = match self.watch_while_up().await {
                Some(why) => why,
                None => return,
            };
            if let Some(old) = self.current.write().unwrap_or_else(|e| e.into_inner()).take() {
                retire(old);
            }
            if up_since.elapsed() >= self.opts.stable_after {
                backoff.reset();
            }
            if !self.opts.reconnect {
                self.publish(LinkState::Failed { reason: format!("connection lost and reconnecting is off: {lost}") });
                return;
            }
            match self.restore(&mut backoff, lost).await {
                Some(()) => up_since = Instant::now(),
                None => return,
            }
        }
    }

    /// Returns why the connection was declared dead, or `None` once the link is closed.
    async fn watch_while_up(&self) -> Option<String> {
        let conn = match self.current.read().unwrap_or_else(|e| e.into_inner()).clone() {
            Some(c) => c,
            None => return Some(lock(&self.last_failure).clone()),
        };
        let mut misses = 0u32;
        let mut tick = tokio::time::interval(self.opts.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.is_closed() {
                return None;
            }
            tokio::select! {
                _ = tick.tick() => {
                    if conn.is_closed() {
                        return Some("the SSH session ended".into());
                    }
                    if !self.current_is(conn.generation) {
                        return Some(lock(&self.last_failure).clone());
                    }
                    let started = Instant::now();
                    let beat = tokio::time::timeout(self.opts.heartbeat_interval, conn.sftp.stat(".")).await;
                    match beat {
                        Ok(Ok(_)) => {
                            misses = 0;
                            let rtt = started.elapsed().as_micros().max(1) as u64;
                            self.last_rtt_us.store(rtt, Ordering::Relaxed);
                        }
                        _ => {
                            misses += 1;
                            tracing::debug!(misses, "heartbeat missed");
                            if misses >= self.opts.max_heartbeat_failures {
                                return Some(format!("{misses} heartbeats missed"));
                            }
                        }
                    }
                }
                _ = self.failure_seen.notified() => {
                    if !self.current_is(conn.generation) || conn.is_closed() {
                        return Some(lock(&self.last_failure).clone());
                    }
                }
                _ = self.close_requested.notified() => return None,
            }
        }
    }

    fn current_is(&self, generation: u64) -> bool {
        self.current.read().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|c| c.generation == generation)
    }

    /// Reconnects with backoff. `Some` once up again; `None` if closed or failed for good.
    async fn restore(&self, backoff: &mut Backoff, mut last_error: String) -> Option<()> {
        let since = SystemTime::now();
        let mut last_attempt_end = Instant::now() - MIN_ATTEMPT_GAP;
        loop {
            let delay = backoff.next_delay();
            let attempt = backoff.attempt();
            self.publish(LinkState::Down {
                since,
                attempt,
                next_attempt_at: SystemTime::now() + delay,
                last_error: last_error.clone(),
            });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.attempt_wanted.notified() => {
                    let gap = MIN_ATTEMPT_GAP.saturating_sub(last_attempt_end.elapsed());
                    tokio::time::sleep(gap).await;
                }
                _ = self.close_requested.notified() => return None,
            }
            if self.is_closed() {
                return None;
            }
            let generation = self.generation.load(Ordering::SeqCst) + 1;
            let mut dest = self.dest.clone();
            dest.connect_timeout = dest.connect_timeout.min(self.opts.reconnect_timeout);
            let result = {
                let _permit = DIALS.acquire().await;
                ssh::connect(&dest, self.opts.request_timeout, generation).await
            };
            last_attempt_end = Instant::now();
            match result {
                Ok(conn) => match self.check_required_paths(&conn).await {
                    Ok(()) => {
                        self.generation.store(generation, Ordering::SeqCst);
                        self.install(conn);
                        self.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(host = %self.dest.host_name, attempt, "reconnected");
                        self.publish(LinkState::Up { since: SystemTime::now() });
                        return Some(());
                    }
                    Err(reason) => {
                        conn.close().await;
                        self.publish(LinkState::Failed { reason });
                        return None;
                    }
                },
                // A name that does not resolve while the network comes back is not final.
                Err(e) if e.is_transient() || matches!(e, LinkError::Resolve { .. }) => {
                    tracing::debug!(attempt, error = %e, "reconnect attempt failed");
                    last_error = e.to_string();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "giving up reconnecting");
                    self.publish(LinkState::Failed { reason: e.to_string() });
                    return None;
                }
            }
        }
    }

    async fn check_required_paths(&self, conn: &SftpConn) -> Result<(), String> {
        let paths = lock(&self.required_paths).clone();
        for p in paths {
            if let Err(russh_sftp::client::error::Error::Status(s)) = conn.sftp.stat(p.as_str()).await {
                if s.status_code == russh_sftp::protocol::StatusCode::NoSuchFile {
                    return Err(format!("remote path {p} is gone"));
                }
            }
        }
        Ok(())
    }
}

/// Ends a connection that is no longer used, without waiting on a dead network.
fn retire(conn: Arc<SftpConn>) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
    });
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every holder of these locks does a single assignment or clone.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
