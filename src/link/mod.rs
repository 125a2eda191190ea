//! The SSH side: where to connect (`config`), how (`ssh`, `known_hosts`, `auth`), and
//! the managed link that keeps a pool of connections alive for the remote layer:
//! heartbeats detect a dead connection, a supervisor reconnects with backoff
//! (`backoff`), and the pool is swapped underneath whoever uses the link.
//!
//! The link carries bytes and watches health; it does not speak SFTP. What each
//! connection carries is a [`Session`] (`session`), which the remote layer implements
//! and starts on the channel the link opens for it.

pub mod algorithms;
pub mod auth;
pub mod backoff;
pub mod config;
mod dial;
pub mod error;
mod handler;
pub mod known_hosts;
mod patterns;
pub mod policy;
mod session;
pub mod ssh;
mod supervisor;
mod watchdog;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;

pub use config::Destination;
pub use error::LinkError;
pub use session::Session;
pub use ssh::{Conn, ConnStats};

use auth::{Asker, Keyring};
use policy::{Next, Policy};

use crate::sync::{lock, read, write};
use dial::*;

/// Dials to all destinations together, so that a laptop waking with many mounts does not
/// trip the servers' MaxStartups.
pub const MAX_CONCURRENT_DIALS: usize = 16;
static DIALS: Semaphore = Semaphore::const_new(MAX_CONCURRENT_DIALS);

/// A reconnect attempt started by a filesystem call waits at least this long after the
/// previous attempt ended, so a busy mount cannot turn into a dial storm.
const MIN_ATTEMPT_GAP: Duration = Duration::from_millis(300);
/// How often the connections are checked for a stall.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(250);

/// How a link watches and restores its connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkOptions {
    pub heartbeat_interval: Duration,
    pub max_heartbeat_failures: u32,
    /// How long a connection may have requests out and receive nothing before it counts
    /// as dead (`--request-timeout`). A request waiting longer behind others on a link
    /// that keeps delivering is fine.
    pub request_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// A connection that held this long resets the backoff.
    pub stable_after: Duration,
    /// Upper bound on one reconnect attempt (dial, handshake, authentication).
    pub reconnect_timeout: Duration,
    pub reconnect: bool,
    /// SSH connections in the pool.
    pub connections: usize,
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
            connections: 4,
        }
    }
}

/// Where a link stands. Every change is published to the link's watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    Up {
        since: SystemTime,
    },
    Down {
        since: SystemTime,
        attempt: u32,
        next_attempt_at: SystemTime,
        last_error: String,
    },
    Failed {
        reason: String,
    },
    /// The server wants a person to log in again (a fresh one-time code): only
    /// `moor reconnect`, from a terminal, brings it back.
    NeedsLogin {
        method: String,
        since: SystemTime,
    },
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

/// Why a reconnect attempt did not bring the link back.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    /// The dial failed; the policy decides whether and when to try again.
    #[error(transparent)]
    Dial(LinkError),
    /// It connected, but the mount cannot go on (its remote path is gone): retrying
    /// will not help, so the link fails.
    #[error("{0}")]
    Unusable(String),
}

/// The managed link to one destination, its connections carrying sessions `S`. The
/// remote layer asks it for the current connection on every request, so the connection
/// can be replaced underneath.
pub struct Link<S: Session> {
    dest: Destination,
    opts: LinkOptions,
    /// The pool: every connection of the current generation (empty while down).
    current: RwLock<Vec<Arc<Conn<S>>>>,
    /// Spreads requests over the pool.
    next_conn: AtomicUsize,
    generation: AtomicU64,
    state: watch::Sender<LinkState>,
    /// A filesystem call found the link down: try now rather than after the backoff.
    attempt_wanted: Notify,
    /// `moor reconnect`: try now, whatever the backoff or an earlier failure says.
    attempt_now: Notify,
    /// Results of reconnect attempts, numbered, for whoever asked for one.
    outcomes: watch::Sender<(u64, Result<(), String>)>,
    /// The remote layer saw the current connection fail.
    failure_seen: Notify,
    last_failure: Mutex<String>,
    closed: AtomicBool,
    close_requested: Notify,
    reconnects: AtomicU64,
    last_rtt_us: AtomicU64,
    /// Paths that must still exist after a reconnect (mount roots).
    required_paths: Mutex<Vec<String>>,
    /// What logins learned that reconnects may use again (memory only; wiped at close).
    keyring: Keyring,
    /// Who answers the questions of the next attempt: the `moor reconnect` that asked.
    asker: Mutex<Option<Arc<dyn Asker>>>,
}

impl<S: Session> Link<S> {
    /// Connects to `dest`, failing with the reason if it cannot, then keeps the
    /// connection alive in the background until `close`.
    /// The command the link's connections go through (`ProxyCommand`/`ProxyJump`), if any.
    pub fn via(&self) -> Option<String> {
        self.dest.proxy_command.clone()
    }

    pub async fn connect(
        dest: Destination,
        opts: LinkOptions,
        asker: Option<Arc<dyn Asker>>,
    ) -> Result<Arc<Link<S>>, LinkError> {
        let keyring = Keyring::default();
        let pool = dial_pool(&dest, &opts, 1, &keyring, asker.as_deref()).await?;
        Ok(Link::assemble(dest, opts, keyring, pool, String::new()))
    }

    /// A link that could not connect (`error`), already down and reconnecting by its
    /// policy, for a mount that can serve without it meanwhile (its offline cache).
    pub fn start_down(dest: Destination, opts: LinkOptions, error: String) -> Arc<Link<S>> {
        Link::assemble(dest, opts, Keyring::default(), Vec::new(), error)
    }

    /// The link over `pool` (up), or over none (down since `failure`), supervised.
    fn assemble(
        dest: Destination,
        opts: LinkOptions,
        keyring: Keyring,
        pool: Vec<Arc<Conn<S>>>,
        failure: String,
    ) -> Arc<Link<S>> {
        let now = SystemTime::now();
        let first = if pool.is_empty() {
            LinkState::Down { since: now, attempt: 0, next_attempt_at: now, last_error: failure.clone() }
        } else {
            LinkState::Up { since: now }
        };
        let generation = u64::from(!pool.is_empty());
        let (state, _) = watch::channel(first);
        let link = Arc::new(Link {
            dest,
            opts,
            current: RwLock::new(pool),
            next_conn: AtomicUsize::new(0),
            generation: AtomicU64::new(generation),
            state,
            attempt_wanted: Notify::new(),
            attempt_now: Notify::new(),
            outcomes: watch::channel((0, Ok(()))).0,
            failure_seen: Notify::new(),
            last_failure: Mutex::new(failure),
            closed: AtomicBool::new(false),
            close_requested: Notify::new(),
            reconnects: AtomicU64::new(0),
            last_rtt_us: AtomicU64::new(0),
            required_paths: Mutex::new(Vec::new()),
            keyring,
            asker: Mutex::new(None),
        });
        tokio::spawn(link.clone().supervise());
        link
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

    /// What each live connection has been doing.
    pub fn connections(&self) -> Vec<ConnStats> {
        read(&self.current).iter().map(|c| c.stats()).collect()
    }

    /// A path the link must find after reconnecting, or fail: a mount's root.
    pub fn require_path(&self, path: &str) {
        lock(&self.required_paths).push(path.to_string());
    }

    /// A live connection of the pool for a small request, at once; or why there is
    /// none. It goes where the least file data is out, taking turns among equals: a
    /// `stat` during a big copy is not queued behind it. Asking while the link is down
    /// brings the next reconnect attempt forward.
    pub fn conn(&self) -> Result<Arc<Conn<S>>, Unavailable> {
        let turn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        {
            let pool = read(&self.current);
            let n = pool.len();
            let best =
                (0..n).map(|k| (turn + k) % n).filter(|&i| !pool[i].is_closed()).min_by_key(|&i| pool[i].bulk_out());
            if let Some(i) = best {
                return Ok(pool[i].clone());
            }
        }
        self.unavailable()
    }

    /// Connections in the pool.
    pub fn pool_len(&self) -> usize {
        read(&self.current).len()
    }

    /// Connections that carry file data: all but the first when there are several, so
    /// that the first stays quick for small requests and its heartbeat shows the
    /// link's own round-trip time.
    pub fn data_pool_len(&self) -> usize {
        let n = self.pool_len();
        if n >= 2 {
            n - 1
        } else {
            n
        }
    }

    /// Data connection `k` (modulo their number), as `conn_at` numbers the whole pool.
    pub fn data_conn(&self, k: usize) -> Result<Arc<Conn<S>>, Unavailable> {
        let n = self.pool_len();
        let index = if n >= 2 { 1 + k % (n - 1) } else { k };
        self.conn_at(index)
    }

    /// The pool's connection number `index` (modulo its size): requests that must stay
    /// together (a file's handle) ask for the same index.
    pub fn conn_at(&self, index: usize) -> Result<Arc<Conn<S>>, Unavailable> {
        {
            let pool = read(&self.current);
            if !pool.is_empty() {
                let c = &pool[index % pool.len()];
                if !c.is_closed() {
                    return Ok(c.clone());
                }
            }
        }
        self.unavailable()
    }

    fn unavailable(&self) -> Result<Arc<Conn<S>>, Unavailable> {
        match &*self.state.borrow() {
            LinkState::Failed { reason } => Err(Unavailable::Failed(reason.clone())),
            LinkState::Closed => Err(Unavailable::Failed("unmounted".into())),
            LinkState::NeedsLogin { method, .. } => {
                Err(Unavailable::Down(format!("the server asks for a {method}: run `moor reconnect`")))
            }
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

    /// Resolves once the link is not up: down, failed or closed.
    pub async fn wait_not_up(&self) {
        let mut rx = self.state.subscribe();
        loop {
            // Looked at, not asked for: `conn` would take a turn and bring an attempt on.
            let live = read(&self.current).iter().any(|c| !c.is_closed());
            if !matches!(&*rx.borrow_and_update(), LinkState::Up { .. }) || !live {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until the link is up with a connection to use (`Ok`) or has failed for good
    /// (`Err`). Between a connection's loss being reported and the watcher marking the
    /// link down, the state still says up but no connection is left: that is not up, or
    /// a caller retrying at once would spin until the watcher ran (for ever, with one
    /// runtime worker).
    pub async fn wait_up(&self) -> Result<(), Unavailable> {
        let mut rx = self.state.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                LinkState::Up { .. } if !read(&self.current).is_empty() => return Ok(()),
                LinkState::Up { .. } => self.failure_seen.notify_one(),
                LinkState::Failed { reason } => return Err(Unavailable::Failed(reason.clone())),
                LinkState::Closed => return Err(Unavailable::Failed("unmounted".into())),
                LinkState::Down { .. } => self.attempt_wanted.notify_one(),
                LinkState::NeedsLogin { .. } => {}
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
            let mut cur = write(&self.current);
            if cur.first().is_some_and(|c| c.generation == generation) {
                std::mem::take(&mut *cur)
            } else {
                Vec::new()
            }
        };
        if !taken.is_empty() {
            tracing::warn!(host = %self.dest.host_name, what, "connection lost");
            *lock(&self.last_failure) = what.to_string();
            self.failure_seen.notify_one();
            retire(taken);
        }
    }

    /// Ends the link and its connection.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.close_requested.notify_one();
        self.keyring.wipe();
        lock(&self.asker).take();
        let pool = std::mem::take(&mut *write(&self.current));
        for c in pool {
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

    fn install(&self, pool: Vec<Arc<Conn<S>>>) {
        *write(&self.current) = pool;
    }
}
