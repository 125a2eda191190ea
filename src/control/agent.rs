//! The per-user agent: owns every mount, answers the CLI on a private unix socket, and
//! exits by itself when its last mount is gone.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, Notify};

use super::mount::{self, LiveMount};
use super::paths;
use super::protocol::{Envelope, ErrorKind, MoorError, MountInfo, MountRequest, Request, Response, PROTOCOL_VERSION};
use crate::link::{Destination, Link, LinkState};

/// How long a fresh agent waits for its first request before leaving.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(30);
/// How long a client may take to send its request line.
const READ_DEADLINE: Duration = Duration::from_secs(10);
/// How long an ending mount gives its queued writes to reach the server.
const DRAIN_AT_UNMOUNT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Agent {
    mounts: Mutex<HashMap<PathBuf, Arc<LiveMount>>>,
    /// One managed link per destination, shared by its mounts, with how many use it.
    links: Mutex<HashMap<Destination, (Arc<Link>, usize)>>,
    /// Requests being served; the agent stays while any is in flight.
    in_flight: AtomicUsize,
    served_any: AtomicBool,
    changed: Notify,
}

/// Takes the agent lock, held for the life of the process: one agent per user.
fn take_lock() -> Result<Option<nix::fcntl::Flock<std::fs::File>>, MoorError> {
    let path = paths::lock_path()?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| MoorError::new(ErrorKind::Agent, format!("cannot open {}: {e}", path.display())))?;
    let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(MoorError::new(ErrorKind::Agent, format!("cannot lock {}: {e}", path.display()))),
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
    let _ = std::fs::remove_file(&sock);
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
            let _ = mount::kernel_unmount(&m.mountpoint, true).await;
            m.drain(Duration::from_secs(5)).await;
            m.link().close().await;
        }
    }

    async fn serve(self: &Arc<Self>, stream: UnixStream) {
        if !same_user(&stream) {
            tracing::warn!("refused a connection from another user");
            return;
        }
        let (rd, mut wr) = stream.into_split();
        let mut line = String::new();
        let read = tokio::time::timeout(READ_DEADLINE, BufReader::new(rd).read_line(&mut line)).await;
        let response = match read {
            Ok(Ok(n)) if n > 0 => match serde_json::from_str::<Envelope<Request>>(&line) {
                Ok(env) if env.version == PROTOCOL_VERSION => self.handle(env.body).await,
                Ok(env) => error(ErrorKind::Agent, format!(
                    "the running agent speaks protocol {PROTOCOL_VERSION}, this moor speaks {}: unmount everything (`moor unmount --all`) to restart it",
                    env.version
                )),
                Err(e) => error(ErrorKind::Agent, format!("bad request: {e}")),
            },
            _ => return,
        };
        let env = Envelope { version: PROTOCOL_VERSION, body: response };
        if let Ok(mut text) = serde_json::to_string(&env) {
            text.push('\n');
            let _ = wr.write_all(text.as_bytes()).await;
        }
    }

    async fn handle(self: &Arc<Self>, req: Request) -> Response {
        match req {
            Request::Mount(m) => match self.mount(*m).await {
                Ok(mount) => Response::Mounted { mount },
                Err(error) => Response::Error { error },
            },
            Request::Unmount { target, lazy } => match self.unmount(&target, lazy).await {
                Ok(mount) => Response::Unmounted { mount },
                Err(error) => Response::Error { error },
            },
            Request::Status => {
                let mut mounts: Vec<MountInfo> = self.mounts.lock().await.values().map(|m| m.info()).collect();
                mounts.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
                Response::Status { mounts }
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

    async fn mount(self: &Arc<Self>, req: MountRequest) -> Result<MountInfo, MoorError> {
        if let Some(n) = &req.name {
            if self.mounts.lock().await.values().any(|m| &m.name == n) {
                return Err(MoorError::new(
                    ErrorKind::Usage,
                    format!("a mount named '{n}' exists already: pick another --name"),
                ));
            }
        }
        // Fail fast on a bad mountpoint before dialling anyone.
        mount::check_mountpoint(&req.mountpoint)?;
        let name = self.unique_name(&req).await;
        let link = self.link_for(&req).await?;
        let live = match mount::start(&req, name, link.clone()).await {
            Ok(m) => Arc::new(m),
            Err(e) => {
                self.release_link(&req.dest).await;
                return Err(e);
            }
        };
        let info = live.info();
        self.mounts.lock().await.insert(live.mountpoint.clone(), live.clone());
        tracing::info!(name = %info.name, mountpoint = %info.mountpoint.display(), remote = %info.remote, "mounted");
        let agent = self.clone();
        let dest = req.dest.clone();
        tokio::spawn(async move {
            let mut ended = live.ended();
            let _ = ended.wait_for(|e| *e).await;
            live.drain(DRAIN_AT_UNMOUNT).await;
            agent.mounts.lock().await.remove(&live.mountpoint);
            agent.release_link(&dest).await;
            tracing::info!(mountpoint = %live.mountpoint.display(), "unmounted");
            agent.changed.notify_one();
        });
        Ok(info)
    }

    /// The destination's link, connecting it if no mount uses one yet.
    async fn link_for(&self, req: &MountRequest) -> Result<Arc<Link>, MoorError> {
        {
            let mut links = self.links.lock().await;
            if let Some((link, users)) = links.get_mut(&req.dest) {
                if !matches!(link.state(), LinkState::Failed { .. } | LinkState::Closed) {
                    *users += 1;
                    return Ok(link.clone());
                }
            }
        }
        let link = Link::connect(req.dest.clone(), req.link.clone()).await?;
        let mut links = self.links.lock().await;
        let entry = links.entry(req.dest.clone()).or_insert_with(|| (link.clone(), 0));
        if !Arc::ptr_eq(&entry.0, &link) {
            // Replaces a link that had failed for good.
            *entry = (link.clone(), 0);
        }
        entry.1 += 1;
        Ok(link)
    }

    /// One mount fewer uses the destination's link; the last one closes it.
    async fn release_link(&self, dest: &Destination) {
        let closing = {
            let mut links = self.links.lock().await;
            match links.get_mut(dest) {
                Some((link, users)) => {
                    *users = users.saturating_sub(1);
                    if *users == 0 {
                        let link = link.clone();
                        links.remove(dest);
                        Some(link)
                    } else {
                        None
                    }
                }
                None => None,
            }
        };
        if let Some(link) = closing {
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

    async fn unmount(&self, target: &str, lazy: bool) -> Result<MountInfo, MoorError> {
        let Some(m) = self.find(target).await else {
            return Err(not_mounted(target));
        };
        mount::stop(&m, lazy).await?;
        let mut info = m.info();
        info.status = super::protocol::MountStatus::Unmounted;
        Ok(info)
    }
}

pub fn not_mounted(target: &str) -> MoorError {
    MoorError::new(
        ErrorKind::NotMounted,
        format!("'{target}' is not a moor mount: see `moor mount status` for what is mounted"),
    )
}

/// The absolute, normalised form of a path that may no longer be reachable.
pub fn absolute(p: &Path) -> PathBuf {
    // canonicalize fails on a dead FUSE mount; fall back to a lexical absolute path.
    std::fs::canonicalize(p).unwrap_or_else(|_| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
}

fn error(kind: ErrorKind, message: String) -> Response {
    Response::Error { error: MoorError::new(kind, message) }
}

/// A short name from host and path: `host-dir`, or just `host` for the home directory.
pub fn derive_name(host: &str, path: &str) -> String {
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let raw = if last.is_empty() || last == "." || last == "~" { host.to_string() } else { format!("{host}-{last}") };
    raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '-' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(derive_name("box", ""), "box");
        assert_eq!(derive_name("box", "/srv/data/"), "box-data");
        assert_eq!(derive_name("box", "my dir"), "box-my-dir");
        assert_eq!(derive_name("box", "/"), "box");
    }
}
