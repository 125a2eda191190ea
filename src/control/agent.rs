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
use crate::link::{Destination, Link, LinkState};
use crate::logging::{self, RotatingLog};

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
    links: Mutex<Links<Destination, Link>>,
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

/// Puts a login's questions to the client that asked for the mount or reconnect, which
/// asks its user on its terminal.
struct SocketAsker {
    asks: mpsc::UnboundedSender<(Question, oneshot::Sender<Option<Secret>>)>,
}

impl Asker for SocketAsker {
    fn ask<'a>(&'a self, q: Question) -> Pin<Box<dyn Future<Output = Option<Secret>> + Send + 'a>> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            self.asks.send((q, reply)).ok()?;
            tokio::time::timeout(PERSON_DEADLINE, answer).await.ok()?.ok()?
        })
    }
}

/// The answer an `Answer` line carries (`None` inside: the user would not say); anything
/// else from the client is taken as no answer.
fn answer_in(line: &[u8]) -> Option<Secret> {
    AnswerLine::parse(line).flatten().map(|typed| Secret::from(typed.into_inner()))
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
            Request::Watch => error(ErrorKind::Internal, "watch is served as a stream".into()),
            Request::Answer { .. } => error(ErrorKind::Usage, "an answer with no question asked".into()),
        }
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

    async fn unique_name(&self, req: &MountRequest) -> String {
        let base = req.name.clone().unwrap_or_else(|| derive_name(&req.dest.alias, &req.remote_path));
        let mounts = self.mounts.lock().await;
        let taken = |n: &str| mounts.values().any(|m| m.name == n);
        if !taken(&base) {
            return base;
        }
        (2..).map(|i| format!("{base}-{i}")).find(|n| !taken(n)).unwrap_or(base)
    }

    async fn mount(
        self: &Arc<Self>,
        req: MountRequest,
        cancel: Cancel,
        asker: Arc<dyn Asker>,
    ) -> Result<(MountInfo, bool), MoorError> {
        if let Some(existing) = self.mounts.lock().await.get(&req.mountpoint).cloned() {
            if existing.same_as(&req) {
                return Ok((existing.info(), true));
            }
            return Err(MoorError::new(
                ErrorKind::Mountpoint,
                format!(
                    "{} already has {} mounted (name {}): unmount it first, or pick another directory",
                    req.mountpoint.display(),
                    existing.remote,
                    existing.name
                ),
            ));
        }
        if let Some(n) = &req.name {
            // The name becomes the log's file name: a client of another version may not
            // have checked it.
            super::names::check_name(n)?;
            if self.mounts.lock().await.values().any(|m| &m.name == n) {
                return Err(MoorError::new(
                    ErrorKind::Usage,
                    format!("a mount named '{n}' exists already: pick another --name"),
                ));
            }
        }
        // Fail fast on a bad mountpoint before dialling anyone.
        mount::checked_mountpoint(&req.mountpoint).await?;
        let name = self.unique_name(&req).await;
        let link = self.link_for(&req, &cancel, req.interactive.then_some(asker)).await?;
        let mut live = match mount::start(&req, name, link.clone()).await {
            Ok(m) => m,
            Err(e) => {
                self.release_link(&link).await;
                return Err(e);
            }
        };
        let log = self.open_log(&live, req.verbose);
        live.log = log.as_ref().map(|(p, _)| p.clone());
        let live = Arc::new(live);
        if cancel.is_cancelled() {
            // Asked for and abandoned: leave nothing behind.
            let _ = mount::stop(&live, true).await;
            self.release_link(&link).await;
            return Err(MoorError::new(ErrorKind::Cancelled, "cancelled"));
        }
        let info = live.info();
        self.mounts.lock().await.insert(live.mountpoint.clone(), live.clone());
        tracing::info!(name = %info.name, mountpoint = %info.mountpoint.display(), remote = %info.remote, "mounted");
        let entry = registry::Entry {
            name: info.name.clone(),
            mountpoint: info.mountpoint.clone(),
            remote: info.remote.clone(),
            request: req.clone(),
            uid: nix::unistd::getuid().as_raw(),
            agent_pid: std::process::id(),
            log: live.log.clone().unwrap_or_default(),
            mounted_at: Timestamp::now(),
        };
        if let Err(e) = registry::record(entry) {
            tracing::warn!(%e, "cannot record the mount in the registry");
        }
        let _ = self.events.send(StatusEvent {
            mount: info.name.clone(),
            at: Timestamp::now(),
            old: MountStatus::Connecting,
            new: info.status.clone(),
        });
        let log = log.map(|(_, f)| f);
        self.forward_events(&live, log.clone(), req.verbose);
        let agent = self.clone();
        tokio::spawn(async move {
            let mut ended = live.ended();
            let _ = ended.wait_for(|e| *e).await;
            live.finish(DRAIN_AT_UNMOUNT).await;
            agent.mounts.lock().await.remove(&live.mountpoint);
            if let Err(e) = registry::remove(&live.mountpoint) {
                tracing::warn!(%e, "cannot update the registry");
            }
            let (last, _) = live.monitor().current();
            let _ = agent.events.send(StatusEvent {
                mount: live.name.clone(),
                at: Timestamp::now(),
                old: last,
                new: MountStatus::Unmounted,
            });
            agent.release_link(&live.link()).await;
            // Written here, before the agent may leave with its last mount, so that it
            // is never lost to the exit.
            if let Some(f) = &log {
                write_log(f, "unmounted");
            }
            tracing::info!(mountpoint = %live.mountpoint.display(), "unmounted");
            agent.changed.notify_one();
        });
        Ok((info, false))
    }

    /// The mount's own log file, private to the user.
    fn open_log(&self, live: &LiveMount, verbose: u8) -> Option<(PathBuf, Arc<std::sync::Mutex<RotatingLog>>)> {
        let dir = registry::log_dir().ok()?;
        let path = dir.join(format!("{}.log", live.name));
        let file =
            logging::rotating(&path, logging::MOUNT_LOG_LIMIT, logging::MOUNT_LOGS_KEPT, logging::Symlinks::Refuse)
                .ok()?;
        let file = Arc::new(std::sync::Mutex::new(file));
        write_log(&file, &format!("mounted {} on {} (log detail {verbose})", live.remote, live.mountpoint.display()));
        Some((path, file))
    }

    /// Passes the mount's state changes to watchers and to its log file.
    fn forward_events(&self, live: &Arc<LiveMount>, log: Option<Arc<std::sync::Mutex<RotatingLog>>>, verbose: u8) {
        let mut rx = live.monitor().subscribe();
        let events = self.events.clone();
        let mut ended = live.ended();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Ok(ev) => {
                            // The agent itself reports the end of a mount.
                            if ev.new == MountStatus::Unmounted {
                                continue;
                            }
                            if let Some(f) = &log {
                                if verbose > 0 || !ev.old.same_kind(&ev.new) {
                                    write_log(f, &format!("{} -> {}", ev.old, ev.new));
                                }
                            }
                            let _ = events.send(ev);
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    // The task that ends the mount writes "unmounted".
                    _ = ended.wait_for(|e| *e) => break,
                }
            }
        });
    }

    /// A working link to the destination, connecting one if no mount holds one (or only
    /// one that failed for good); the caller holds it until `release_link`. With `--wait`,
    /// a host that refuses or does not answer is tried again until the deadline.
    async fn link_for(
        &self,
        req: &MountRequest,
        cancel: &Cancel,
        asker: Option<Arc<dyn Asker>>,
    ) -> Result<Arc<Link>, MoorError> {
        let dest = req.destination();
        let usable = |l: &Link| !matches!(l.state(), LinkState::Failed { .. } | LinkState::Closed);
        if let Some(link) = self.links.lock().await.share(&dest, usable) {
            return Ok(link);
        }
        let started = tokio::time::Instant::now();
        let deadline = req.wait.map(|w| crate::deadline::later(started, w));
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(3));
        let link = loop {
            let attempt = tokio::select! {
                r = Link::connect(dest.clone(), req.link_options(), asker.clone()) => r,
                _ = cancel.cancelled() => return Err(MoorError::new(ErrorKind::Cancelled, "cancelled")),
            };
            match attempt {
                Ok(link) => break link,
                Err(e) if e.is_transient() && deadline.is_some_and(|d| tokio::time::Instant::now() < d) => {
                    let left = deadline.map(|d| d - tokio::time::Instant::now()).unwrap_or_default();
                    tracing::debug!(error = %e, "host not ready; waiting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay().min(left)) => {}
                        _ = cancel.cancelled() => return Err(MoorError::new(ErrorKind::Cancelled, "cancelled")),
                    }
                }
                Err(e) if e.is_transient() && deadline.is_some() => {
                    let mut err = MoorError::from(e);
                    err.message =
                        format!("gave up waiting after {:.0}s: {}", started.elapsed().as_secs_f64(), err.message);
                    return Err(err);
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.links.lock().await.add(dest, link.clone());
        Ok(link)
    }

    /// One mount fewer holds `link`; the last one closes it (ending its supervisor and
    /// wiping what its logins learned).
    async fn release_link(&self, link: &Arc<Link>) {
        let last = self.links.lock().await.release(link);
        if last {
            link.close().await;
        }
    }

    async fn find(&self, target: &str) -> Option<Arc<LiveMount>> {
        let mounts = self.mounts.lock().await;
        if let Some(m) = mounts.values().find(|m| m.name == target) {
            return Some(m.clone());
        }
        let abs = absolute(Path::new(target));
        mounts.get(&abs).cloned()
    }

    /// Unmounts once the mount's written data is on the server (see `LiveMount::settle`);
    /// with `force` or `lazy`, at once. Returns what was dropped.
    async fn unmount(
        &self,
        target: &str,
        lazy: bool,
        force: bool,
        cancel: Cancel,
        progress: mpsc::UnboundedSender<Response>,
    ) -> Result<(MountInfo, Option<AtStake>), MoorError> {
        let Some(m) = self.find(target).await else {
            return Err(not_mounted(target));
        };
        if !force && !lazy {
            m.settle(cancel.cancelled(), |stake, moving| {
                let _ = progress.send(Response::Draining { mount: m.name.clone(), at_stake: stake.clone(), moving });
            })
            .await?;
        }
        mount::stop(&m, lazy).await?;
        // With --force, what never reached the server is known now, and told.
        let lost = if force { m.finish(FORCE_DRAIN).await } else { None };
        let mut info = m.info();
        info.status = super::protocol::MountStatus::Unmounted;
        Ok((info, lost))
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
