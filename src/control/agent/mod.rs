//! The per-user agent: owns every mount, answers the CLI on a private unix socket, and
//! exits by itself when its last mount is gone.

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot, Mutex, Notify};

use super::lines::WipedLines;
use super::links::Links;
use super::mount::{self, LiveMount};
use super::names::{absolute, derive_name, not_mounted};
use super::paths;
use super::protocol::{
    AnswerLine, AtStake, Envelope, ErrorKind, MoorError, MountInfo, MountRequest, Request, Response, PROTOCOL_VERSION,
};
use super::registry;
use super::status::{MountStatus, StatusEvent, Timestamp};
use crate::link::auth::{Asker, Question, Secret};
use crate::link::backoff::Backoff;
use crate::link::ssh::PERSON_DEADLINE;
use crate::link::{Destination, LinkState};
use crate::logging::{self, RotatingLog};
use crate::remote::sftp::SftpLink;

mod asker;
mod mounting;

use asker::*;

/// How long a fresh agent waits for its first request before leaving.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(30);
/// How long a new agent waits for a leaving one to release the lock.
const LOCK_WAIT: Duration = Duration::from_secs(3);
/// How long a client may take to send its request line.
const READ_DEADLINE: Duration = Duration::from_secs(10);
/// How long an ending mount gives its queued writes to reach the server.
const DRAIN_AT_UNMOUNT: Duration = Duration::from_secs(10);
/// How long `unmount --force` gives written data to reach the server after unmounting.
const FORCE_DRAIN: Duration = Duration::from_secs(1);

struct Agent {
    mounts: Mutex<HashMap<PathBuf, Arc<LiveMount>>>,
    /// The links mounts hold, each counted by its mounts.
    links: Mutex<Links<Destination, SftpLink>>,
    /// Requests being served; the agent stays while any is in flight.
    in_flight: AtomicUsize,
    served_any: AtomicBool,
    changed: Notify,
    /// Every mount's state changes, for `moor mount status --watch`.
    events: broadcast::Sender<StatusEvent>,
}

impl Default for Agent {
    fn default() -> Self {
        Agent {
            mounts: Mutex::default(),
            links: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            served_any: AtomicBool::new(false),
            changed: Notify::new(),
            events: broadcast::channel(1024).0,
        }
    }
}

/// Set when the client that asked for a mount hung up (Ctrl-C): stop waiting for it.
#[derive(Clone, Default)]
struct Cancel {
    flag: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Cancel {
    fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    async fn cancelled(&self) {
        loop {
            let wake = self.notify.notified();
            if self.is_cancelled() {
                return;
            }
            wake.await;
        }
    }
}

/// Takes the agent lock, held for the life of the process: one agent per user.
fn take_lock() -> Result<Option<nix::fcntl::Flock<std::fs::File>>, MoorError> {
    take_lock_at(&paths::lock_path()?)
}

fn take_lock_at(path: &Path) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, MoorError> {
    use std::os::unix::fs::OpenOptionsExt;
    // Never through a symlink: whoever placed one would have the agent (perhaps root's)
    // create or lock a file of their choosing.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| MoorError::new(ErrorKind::Agent, format!("cannot open {}: {e}", path.display())))?;
    let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
    // An agent that is just leaving still holds the lock for a moment: wait for it a
    // little, so that the client that started us is served.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut file = file;
    loop {
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(Some(lock)),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                if std::time::Instant::now() >= deadline {
                    return Ok(None);
                }
                file = f;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((_, e)) => {
                return Err(MoorError::new(ErrorKind::Agent, format!("cannot lock {}: {e}", path.display())))
            }
        }
    }
}

/// Runs the agent until its last mount is gone. Returns at once if another agent runs.
pub async fn run() -> Result<(), MoorError> {
    let Some(_lock) = take_lock()? else {
        tracing::info!("another agent is running; leaving");
        return Ok(());
    };
    let sock = paths::socket_path()?;
    // We hold the lock, so a socket file left here belongs to a dead agent.
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock)
        .map_err(|e| MoorError::new(ErrorKind::Agent, format!("cannot listen on {}: {e}", sock.display())))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| MoorError::new(ErrorKind::Agent, format!("cannot protect {}: {e}", sock.display())))?;
    tracing::info!(socket = %sock.display(), pid = std::process::id(), "agent listening");

    let agent = Arc::new(Agent::default());
    let grace_end = tokio::time::Instant::now() + FIRST_REQUEST_GRACE;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| MoorError::new(ErrorKind::Agent, format!("cannot watch signals: {e}")))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| MoorError::new(ErrorKind::Agent, format!("cannot watch signals: {e}")))?;
    loop {
        let wake = agent.changed.notified();
        let idle = agent.is_idle().await;
        if idle && agent.served_any.load(Ordering::SeqCst) {
            break;
        }
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let agent = agent.clone();
                    agent.in_flight.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        agent.serve(stream).await;
                        agent.served_any.store(true, Ordering::SeqCst);
                        agent.in_flight.fetch_sub(1, Ordering::SeqCst);
                        agent.changed.notify_one();
                    });
                }
            }
            _ = wake => {}
            _ = tokio::time::sleep_until(grace_end), if idle => break,
            _ = term.recv() => { agent.shutdown().await; break; }
            _ = int.recv() => { agent.shutdown().await; break; }
        }
    }
    // No new client can find us once the socket is gone; one that connected just
    // before is still served, and only then does the agent leave.
    let _ = std::fs::remove_file(&sock);
    while let Ok(Ok((stream, _))) = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await {
        agent.serve(stream).await;
    }
    tracing::info!("agent exiting");
    Ok(())
}

/// Refuses connections from anyone but the agent's own user.
fn same_user(stream: &UnixStream) -> bool {
    let me = nix::unistd::getuid().as_raw();
    stream.peer_cred().map(|c| c.uid() == me).unwrap_or(false)
}

impl Agent {
    async fn is_idle(&self) -> bool {
        self.mounts.lock().await.is_empty() && self.in_flight.load(Ordering::SeqCst) == 0
    }

    async fn shutdown(&self) {
        tracing::info!("terminated: unmounting everything");
        let all: Vec<_> = self.mounts.lock().await.values().cloned().collect();
        for m in all {
            // Written data first: while the link moves it, however slowly, and a while
            // if it is down; what still cannot land is logged as lost.
            if let Err(e) = m.settle(std::future::pending(), |_, _| {}).await {
                tracing::error!(mountpoint = %m.mountpoint.display(), "{}", e.message);
            }
            let _ = mount::kernel_unmount(&m.mountpoint, true).await;
            m.finish(Duration::from_secs(1)).await;
            m.link().close().await;
        }
    }

    async fn serve(self: &Arc<Self>, stream: UnixStream) {
        if !same_user(&stream) {
            tracing::warn!("refused a connection from another user");
            return;
        }
        let (rd, mut wr) = stream.into_split();
        // Answers come on this stream: what the user typed goes only through wiped memory.
        let mut lines = WipedLines::new(rd);
        let read = tokio::time::timeout(READ_DEADLINE, lines.next_line()).await;
        let req = match read {
            Ok(Ok(Some(line))) => match serde_json::from_slice::<Envelope<Request>>(&line) {
                Ok(env) if env.version == PROTOCOL_VERSION => env.body,
                Ok(env) => {
                    let msg = format!(
                        "the running agent speaks protocol {PROTOCOL_VERSION}, this moor speaks {}: unmount everything (`moor unmount --all`) to restart it",
                        env.version
                    );
                    let _ = send(&mut wr, error(ErrorKind::Agent, msg)).await;
                    return;
                }
                Err(e) => {
                    let _ = send(&mut wr, error(ErrorKind::Agent, format!("bad request: {e}"))).await;
                    return;
                }
            },
            _ => return,
        };
        if matches!(req, Request::Watch) {
            self.stream_events(wr).await;
            return;
        }
        // The client hanging up (Ctrl-C) cancels what it asked for.
        let cancel = Cancel::default();
        let (progress, mut updates) = mpsc::unbounded_channel();
        let (asks, mut questions) = mpsc::unbounded_channel();
        let asker: Arc<dyn Asker> = Arc::new(SocketAsker { asks });
        let work = self.handle(req, cancel.clone(), progress, asker);
        tokio::pin!(work);
        // The question the client is answering now (a login asks one at a time).
        let mut pending: Option<oneshot::Sender<Option<Secret>>> = None;
        let mut hung_up = false;
        let response = loop {
            tokio::select! {
                r = &mut work => break r,
                Some(update) = updates.recv() => {
                    let _ = send(&mut wr, update).await;
                }
                Some((q, reply)) = questions.recv() => {
                    let q: Question = q;
                    if send(&mut wr, Response::Prompt { text: q.text, echo: q.echo }).await.is_ok() {
                        pending = Some(reply);
                    }
                }
                line = lines.next_line(), if !hung_up => match line.ok().flatten().map(|l| answer_in(&l)) {
                    Some(answer) => {
                        if let Some(reply) = pending.take() {
                            let _ = reply.send(answer);
                        }
                    }
                    None => {
                        tracing::debug!("the client hung up; cancelling its request");
                        hung_up = true;
                        pending = None;
                        cancel.cancel();
                    }
                },
            }
        };
        let _ = send(&mut wr, response).await;
    }

    /// Sends where things stand, then every state change, until the client hangs up.
    async fn stream_events(&self, mut wr: tokio::net::unix::OwnedWriteHalf) {
        let mut rx = self.events.subscribe();
        let mut mounts: Vec<MountInfo> = self.mounts.lock().await.values().map(|m| m.info()).collect();
        mounts.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
        if send(&mut wr, Response::Watching { mounts }).await.is_err() {
            return;
        }
        loop {
            match rx.recv().await {
                Ok(event) => {
                    if send(&mut wr, Response::Event { event }).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!(n, "a watcher fell behind"),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Answers `req`; `progress` carries what the client hears before the answer.
    async fn handle(
        self: &Arc<Self>,
        req: Request,
        cancel: Cancel,
        progress: mpsc::UnboundedSender<Response>,
        asker: Arc<dyn Asker>,
    ) -> Response {
        match req {
            Request::Mount(m) => match self.mount(*m, cancel, asker).await {
                Ok((mount, already)) => Response::Mounted { mount, already },
                Err(error) => Response::Error { error },
            },
            Request::Unmount { target, lazy, force } => {
                match self.unmount(&target, lazy, force, cancel, progress).await {
                    Ok((mount, lost)) => Response::Unmounted { mount, lost },
                    Err(error) => Response::Error { error },
                }
            }
            Request::Status => {
                let mut mounts: Vec<MountInfo> = self.mounts.lock().await.values().map(|m| m.info()).collect();
                mounts.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
                Response::Status { mounts }
            }
            Request::Reconnect { target, interactive } => {
                match self.reconnect(&target, interactive.then_some(asker)).await {
                    Ok((mount, outcome)) => Response::Reconnected { mount, outcome },
                    Err(error) => Response::Error { error },
                }
            }
            Request::ClearCache { target } => match self.clear_cache(&target).await {
                Ok(mount) => Response::CacheCleared { mount },
                Err(error) => Response::Error { error },
            },
            Request::Watch => error(ErrorKind::Internal, "watch is served as a stream".into()),
            Request::Answer { .. } => error(ErrorKind::Usage, "an answer with no question asked".into()),
        }
    }

    async fn clear_cache(&self, target: &str) -> Result<MountInfo, MoorError> {
        let m = self.find(target).await.ok_or_else(|| not_mounted(target))?;
        if !m.clear_offline_cache().await {
            return Err(MoorError::new(
                ErrorKind::Usage,
                format!("{} has no offline cache: mount it with --offline-cache SIZE to have one", m.name),
            ));
        }
        Ok(m.info())
    }

    async fn reconnect(&self, target: &str, asker: Option<Arc<dyn Asker>>) -> Result<(MountInfo, String), MoorError> {
        let m = self.find(target).await.ok_or_else(|| not_mounted(target))?;
        let mut limit = m.request.link.reconnect_timeout.saturating_add(Duration::from_secs(5));
        if asker.is_some() {
            limit = limit.saturating_add(PERSON_DEADLINE);
        }
        match m.link().reconnect_now(limit, asker).await {
            Ok(outcome) => Ok((m.info(), outcome.to_string())),
            Err(reason) => {
                Err(MoorError::new(ErrorKind::Connect, format!("{}: still not connected: {reason}", m.name)))
            }
        }
    }
}

async fn send(wr: &mut tokio::net::unix::OwnedWriteHalf, response: Response) -> std::io::Result<()> {
    let env = Envelope { version: PROTOCOL_VERSION, body: response };
    let mut text = serde_json::to_string(&env).map_err(std::io::Error::other)?;
    text.push('\n');
    wr.write_all(text.as_bytes()).await
}

fn write_log(file: &std::sync::Mutex<RotatingLog>, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = file.lock() {
        let _ = writeln!(f, "{} {line}", Timestamp::now());
    }
}

fn error(kind: ErrorKind, message: String) -> Response {
    Response::Error { error: MoorError::new(kind, message) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_lock_file_is_refused_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("chosen-by-someone-else");
        let lock = dir.path().join("agent.lock");
        std::os::unix::fs::symlink(&target, &lock).unwrap();
        let err = take_lock_at(&lock).unwrap_err();
        assert!(err.message.contains("cannot open"), "{}", err.message);
        assert!(!target.exists(), "the lock was made through the symlink");
        // The real thing still works.
        std::fs::remove_file(&lock).unwrap();
        assert!(take_lock_at(&lock).unwrap().is_some());
    }
}
