//! One SSH connection carrying one session (`Session`, the remote layer's SFTP): dial,
//! check the host key, authenticate, open the session's subsystem and start it there.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use russh::client;
use russh::{ChannelMsg, Disconnect};
use tokio::net::TcpStream;

use super::auth::{self, Asker, Keyring};
use super::config::Destination;
use super::error::LinkError;
use super::handler::Handler;
use super::known_hosts;
use super::session::Session;
use crate::timestamp::Timestamp;

/// A live SSH connection with its session.
pub struct Conn<S> {
    /// What the connection carries: the session the remote layer speaks.
    pub session: S,
    /// Which connection of its link this is: handles opened on an older one must be
    /// opened again.
    pub generation: u64,
    /// Its place in the link's pool.
    pub index: usize,
    pub connected_at: SystemTime,
    /// Unix milliseconds of the last request answered on this connection.
    last_activity_ms: AtomicU64,
    ops: AtomicU64,
    /// The quickest round trip of a small request seen on this connection, in
    /// microseconds (`u64::MAX`: none yet): the path's latency with nothing queued.
    least_rtt_us: AtomicU64,
    /// What carries the session, kept to abort the connection.
    carrier: Carrier,
    ssh: client::Handle<Handler>,
}

/// How long a person may take over the questions of one login (passphrase, password,
/// one-time code), on top of the connect timeout.
pub const PERSON_DEADLINE: Duration = Duration::from_secs(300);

/// What one pooled connection has been doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnStats {
    pub connected_at: Timestamp,
    pub last_activity: Timestamp,
    pub operations: u64,
    pub idle_secs: f64,
}

impl<S: Session> Conn<S> {
    pub fn is_closed(&self) -> bool {
        self.ssh.is_closed()
    }

    /// Counts one answered request.
    pub fn touch(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.last_activity_ms.store(Timestamp::now().0, Ordering::Relaxed);
    }

    pub fn stats(&self) -> ConnStats {
        let last = Timestamp(self.last_activity_ms.load(Ordering::Relaxed));
        ConnStats {
            connected_at: Timestamp::from(self.connected_at),
            last_activity: last,
            operations: self.ops.load(Ordering::Relaxed),
            idle_secs: last.elapsed().as_secs_f64(),
        }
    }

    /// How long this connection has had requests out without receiving anything.
    pub fn stalled_for(&self) -> Option<Duration> {
        self.session.stalled_for()
    }

    /// Bytes of file data out on this connection.
    pub fn bulk_out(&self) -> usize {
        self.session.bulk_out()
    }

    /// A small request took `rtt` to be answered.
    pub fn note_rtt(&self, rtt: Duration) {
        self.least_rtt_us.fetch_min(rtt.as_micros().clamp(1, u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// The quickest round trip seen: the path's own latency, without what queued.
    pub fn least_rtt(&self) -> Option<Duration> {
        match self.least_rtt_us.load(Ordering::Relaxed) {
            u64::MAX => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    pub async fn close(&self) {
        self.session.close();
        let _ = self.ssh.disconnect(Disconnect::ByApplication, "unmounted", "en").await;
    }

    /// Aborts the connection at once, so that nothing written on it can reach the server
    /// later, after the same writes were replayed (and newer ones made) on a new
    /// connection, as a stalled path's retransmissions would. A TCP connection is reset:
    /// `connect` with `AF_UNSPEC` makes the kernel drop what it has not sent, without
    /// closing the descriptor, which russh still owns. A proxy command is killed, with
    /// what it had not yet read from us.
    pub fn abort(&self) {
        match &self.carrier {
            Carrier::Tcp(socket) => {
                // SAFETY: an all-zero sockaddr with family AF_UNSPEC is a valid argument, its
                // size is given, and the descriptor is ours (a duplicate) for as long as `self`.
                let rc = unsafe {
                    let mut addr: libc::sockaddr = std::mem::zeroed();
                    addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
                    libc::connect(socket.as_raw_fd(), &addr, std::mem::size_of::<libc::sockaddr>() as libc::socklen_t)
                };
                if rc != 0 {
                    tracing::debug!(error = %std::io::Error::last_os_error(), "aborting the connection");
                }
            }
            Carrier::Command(child) => {
                if let Some(c) = crate::sync::lock(child).as_mut() {
                    let _ = c.start_kill();
                }
            }
        }
        // Whatever russh makes of the dead socket, and whenever: the requests still out
        // fail now, so that what they carried is sent again on the new connection.
        self.session.stop();
    }
}

/// What carries one SSH session.
enum Carrier {
    /// A TCP connection (a duplicate of the socket: russh owns the original).
    Tcp(OwnedFd),
    /// A proxy command (`ProxyCommand`, or `ProxyJump` run as `ssh -W`), whose stdin and
    /// stdout are the connection; killed when the session goes.
    Command(Mutex<Option<tokio::process::Child>>),
}

fn ssh_config(dest: &Destination) -> client::Config {
    let (key, host_key_certificates) = known_hosts::preferences(dest);
    client::Config {
        // AES-GCM is fastest where the CPU has AES instructions, which is nearly everywhere.
        preferred: russh::Preferred {
            cipher: Cow::Borrowed(&[
                russh::cipher::AES_128_GCM,
                russh::cipher::AES_256_GCM,
                russh::cipher::CHACHA20_POLY1305,
                russh::cipher::AES_128_CTR,
                russh::cipher::AES_256_CTR,
            ]),
            key: Cow::Owned(key),
            host_key_certificates: Cow::Owned(host_key_certificates),
            ..russh::Preferred::default()
        },
        keepalive_interval: Some(Duration::from_secs(5)),
        keepalive_max: 3,
        window_size: 16 * 1024 * 1024,
        maximum_packet_size: 65535,
        channel_buffer_size: 1024,
        nodelay: true,
        ..client::Config::default()
    }
}

async fn resolve(dest: &Destination) -> Result<Vec<SocketAddr>, LinkError> {
    let lookup = tokio::net::lookup_host((dest.host_name.as_str(), dest.port));
    let resolve_err = |detail: String| LinkError::Resolve { host: dest.host_name.clone(), detail };
    match tokio::time::timeout(dest.connect_timeout, lookup).await {
        Ok(Ok(addrs)) => {
            let v: Vec<_> = addrs.collect();
            if v.is_empty() {
                Err(resolve_err("no addresses".into()))
            } else {
                Ok(v)
            }
        }
        Ok(Err(e)) => Err(resolve_err(e.to_string())),
        Err(_) => Err(LinkError::ConnectTimeout { addr: dest.host_name.clone(), secs: dest.connect_timeout.as_secs() }),
    }
}

fn set_keepalive(tcp: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    // The kernel notices a dead peer even when SSH is idle.
    let fd = tcp.as_fd();
    let _ = setsockopt(&fd, sockopt::KeepAlive, &true);
    let _ = setsockopt(&fd, sockopt::TcpKeepIdle, &10);
    let _ = setsockopt(&fd, sockopt::TcpKeepInterval, &5);
    let _ = setsockopt(&fd, sockopt::TcpKeepCount, &3);
}

async fn dial(dest: &Destination, deadline: tokio::time::Instant) -> Result<TcpStream, LinkError> {
    let addrs: Vec<SocketAddr> = resolve(dest).await?.into_iter().filter(|a| dest.address_family.allows(a)).collect();
    if addrs.is_empty() {
        return Err(LinkError::Resolve {
            host: dest.host_name.clone(),
            detail: format!("no address of the family AddressFamily asks for ({:?})", dest.address_family),
        });
    }
    let tcp = dial_addrs(&addrs, deadline, dest.connect_timeout).await?;
    let _ = tcp.set_nodelay(true);
    set_keepalive(&tcp);
    Ok(tcp)
}

/// How long one address is given before the next is tried beside it.
const NEXT_ADDRESS_AFTER: Duration = Duration::from_millis(300);

/// Connects to the first of `addrs` that answers. Addresses are tried in order, the next
/// one starting when the one before fails or has not answered within
/// `NEXT_ADDRESS_AFTER` (a black-holed IPv6 address on hotel Wi-Fi does not hold up the
/// IPv4 one), all within `deadline`.
async fn dial_addrs(
    addrs: &[SocketAddr],
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<TcpStream, LinkError> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut waiting = addrs.iter().copied();
    let mut trying = FuturesUnordered::new();
    let attempt = |a: SocketAddr| async move { (a, TcpStream::connect(a).await) };
    if let Some(a) = waiting.next() {
        trying.push(attempt(a));
    }
    loop {
        let more = waiting.len() > 0;
        tokio::select! {
            Some((addr, r)) = trying.next() => match r {
                Ok(tcp) => return Ok(tcp),
                Err(e) => {
                    if trying.is_empty() {
                        match waiting.next() {
                            Some(a) => trying.push(attempt(a)),
                            None if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                                return Err(LinkError::Refused { addr: addr.to_string() })
                            }
                            None => return Err(LinkError::Unreachable { addr: addr.to_string(), detail: e.to_string() }),
                        }
                    }
                }
            },
            _ = tokio::time::sleep(NEXT_ADDRESS_AFTER), if more => {
                if let Some(a) = waiting.next() {
                    trying.push(attempt(a));
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                let addr = addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                return Err(LinkError::ConnectTimeout { addr, secs: timeout.as_secs() });
            }
        }
    }
}

/// Starts a proxy command (`sh -c`, as ssh runs it): its stdin and stdout carry the
/// connection, what it says on stderr explains a failure.
fn spawn_proxy(
    command: &str,
) -> Result<(tokio::io::Join<tokio::process::ChildStdout, tokio::process::ChildStdin>, Carrier, ProxyErrors), LinkError>
{
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("exec {command}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| LinkError::Unreachable {
            addr: command.to_string(),
            detail: format!("cannot start the proxy command: {e}"),
        })?;
    let (Some(out), Some(inp), Some(err)) = (child.stdout.take(), child.stdin.take(), child.stderr.take()) else {
        return Err(LinkError::Unreachable { addr: command.to_string(), detail: "proxy command without pipes".into() });
    };
    let lines = Arc::new(Mutex::new(Vec::new()));
    let keep = lines.clone();
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(err).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::debug!(line = %line, "proxy command");
            let mut v = crate::sync::lock(&keep);
            v.push(line);
            if v.len() > 20 {
                v.remove(0);
            }
        }
    });
    Ok((tokio::io::join(out, inp), Carrier::Command(Mutex::new(Some(child))), ProxyErrors { lines, reader }))
}

/// The last lines a proxy command wrote on stderr, and the task reading them.
struct ProxyErrors {
    lines: Arc<Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

/// How long a failed proxy command is given to finish saying why.
const PROXY_LAST_WORDS: Duration = Duration::from_secs(2);

impl ProxyErrors {
    /// Why the proxy failed, as a link error: a host key problem of a jump host fails
    /// the mount as one of the target would. Waits (briefly) for the command to finish
    /// writing: its stdout closing is often what failed the handshake first.
    async fn explain(self, dest: &Destination, command: &str) -> Option<LinkError> {
        let _ = tokio::time::timeout(PROXY_LAST_WORDS, self.reader).await;
        let lines = crate::sync::lock(&self.lines).clone();
        let text = lines.join("; ");
        if text.is_empty() {
            return None;
        }
        if text.contains("Host key verification failed") || text.contains("HOST IDENTIFICATION HAS CHANGED") {
            return Some(LinkError::HostKeyUnverifiable {
                host: format!("a host on the way to {} (via `{command}`)", dest.host_name),
                detail: text,
            });
        }
        Some(LinkError::Lost {
            host: dest.host_name.clone(),
            detail: format!("the proxy command `{command}` said: {text}"),
        })
    }
}

/// The server proves itself only with host key types the config does not allow
/// (`HostKeyAlgorithms`, whose default leaves out SHA-1 RSA, as OpenSSH's since 8.8).
fn no_allowed_host_key(dest: &Destination, offered: &[String]) -> LinkError {
    let first = offered.first().map_or("TYPE", String::as_str);
    let why = if first == "ssh-rsa" { " (RSA signed with SHA-1, which ssh no longer accepts by default)" } else { "" };
    LinkError::HostKeyUnverifiable {
        host: dest.host_name.clone(),
        detail: format!(
            "it offers host keys of types {}, none of which HostKeyAlgorithms allows{why}; if you trust such a key, \
             allow its type for this host, e.g. -o HostKeyAlgorithms=+{first}",
            offered.join(",")
        ),
    }
}

/// Connects, logs in and starts the session, all within the destination's connect timeout,
/// plus, when there is someone to ask, the time a person may take to answer.
pub async fn connect<S: Session>(
    dest: &Destination,
    generation: u64,
    keyring: &Keyring,
    asker: Option<&dyn Asker>,
) -> Result<Conn<S>, LinkError> {
    let deadline = crate::deadline::after(dest.connect_timeout);
    let limit = crate::deadline::later(deadline, if asker.is_some() { PERSON_DEADLINE } else { Duration::ZERO });
    let timeout = || LinkError::ConnectTimeout {
        addr: format!("{}:{}", dest.host_name, dest.port),
        secs: dest.connect_timeout.as_secs(),
    };
    match tokio::time::timeout_at(limit, connect_inner(dest, deadline, generation, keyring, asker)).await {
        Ok(r) => r,
        Err(_) => Err(timeout()),
    }
}

async fn connect_inner<S: Session>(
    dest: &Destination,
    deadline: tokio::time::Instant,
    generation: u64,
    keyring: &Keyring,
    asker: Option<&dyn Asker>,
) -> Result<Conn<S>, LinkError> {
    let (mut ssh, carrier) = handshake(dest, deadline).await?;
    log_in(&mut ssh, dest, deadline, keyring, asker).await?;
    let channel = open_subsystem(&ssh, dest, S::SUBSYSTEM).await?;
    let (session, rtt) = S::start(channel).await?;
    let now = SystemTime::now();
    let conn = Conn {
        session,
        generation,
        index: 0,
        connected_at: now,
        last_activity_ms: AtomicU64::new(Timestamp::from(now).0),
        ops: AtomicU64::new(0),
        least_rtt_us: AtomicU64::new(u64::MAX),
        carrier,
        ssh,
    };
    if let Some(rtt) = rtt {
        conn.note_rtt(rtt);
    }
    Ok(conn)
}

/// The SSH handshake over TCP or the proxy command, with the host key checked. A refused
/// handshake says why as precisely as can be known: the host key's verdict, what the
/// proxy command said, or the transport's failure.
async fn handshake(
    dest: &Destination,
    deadline: tokio::time::Instant,
) -> Result<(client::Handle<Handler>, Carrier), LinkError> {
    let handler = Handler::new(Arc::new(dest.clone()));
    let verdict = handler.verdict();
    let (handshake, carrier, proxy) = match &dest.proxy_command {
        None => {
            let tcp = dial(dest, deadline).await?;
            let socket = tcp.as_fd().try_clone_to_owned().map_err(|e| LinkError::Lost {
                host: dest.host_name.clone(),
                detail: format!("cannot keep the socket: {e}"),
            })?;
            (client::connect_stream(Arc::new(ssh_config(dest)), tcp, handler).await, Carrier::Tcp(socket), None)
        }
        Some(command) => {
            let (stream, carrier, said) = spawn_proxy(command)?;
            let r = client::connect_stream(Arc::new(ssh_config(dest)), stream, handler).await;
            (r, carrier, Some((said, command.clone())))
        }
    };
    let e = match handshake {
        Ok(h) => return Ok((h, carrier)),
        Err(e) => e,
    };
    let seen = verdict.lock().ok().and_then(|v| v.clone());
    if let Some((key, v)) = seen {
        if let Some(refusal) = known_hosts::refusal(dest, &key, &v) {
            return Err(refusal);
        }
    }
    if let Some((said, command)) = proxy {
        if let Some(why) = said.explain(dest, &command).await {
            return Err(why);
        }
    }
    Err(match e {
        russh::Error::NoCommonAlgo { kind: russh::AlgorithmKind::Key, theirs, .. } => {
            no_allowed_host_key(dest, &theirs)
        }
        russh::Error::IO(io) => LinkError::Lost { host: dest.host_name.clone(), detail: io.to_string() },
        russh::Error::Disconnect => {
            LinkError::Lost { host: dest.host_name.clone(), detail: "the server closed the connection".into() }
        }
        other => protocol_error(dest, other),
    })
}

fn protocol_error(dest: &Destination, e: russh::Error) -> LinkError {
    LinkError::Protocol { host: dest.host_name.clone(), detail: e.to_string() }
}

/// Logs in, by the deadline unless a person is asked (their answers take what they take).
async fn log_in(
    ssh: &mut client::Handle<Handler>,
    dest: &Destination,
    deadline: tokio::time::Instant,
    keyring: &Keyring,
    asker: Option<&dyn Asker>,
) -> Result<(), LinkError> {
    let login = auth::authenticate(ssh, dest, keyring, asker);
    match asker {
        Some(_) => login.await,
        None => tokio::time::timeout_at(deadline, login).await.map_err(|_| LinkError::ConnectTimeout {
            addr: format!("{}:{}", dest.host_name, dest.port),
            secs: dest.connect_timeout.as_secs(),
        })?,
    }
}

/// A session channel with `subsystem` started.
async fn open_subsystem(
    ssh: &client::Handle<Handler>,
    dest: &Destination,
    subsystem: &str,
) -> Result<russh::Channel<client::Msg>, LinkError> {
    let protocol = |e| protocol_error(dest, e);
    let mut channel = ssh.channel_open_session().await.map_err(protocol)?;
    channel.request_subsystem(true, subsystem).await.map_err(protocol)?;
    loop {
        match channel.wait().await {
            Some(ChannelMsg::Success) => return Ok(channel),
            Some(ChannelMsg::Failure) => return Err(LinkError::NoSftp { detail: "subsystem request refused".into() }),
            None => return Err(LinkError::NoSftp { detail: "channel closed".into() }),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback address that never answers a connection attempt: a listener whose
    /// accept queue is full drops further SYNs, as a black-holed path does.
    async fn black_hole() -> (std::net::TcpListener, Vec<TcpStream>, SocketAddr) {
        use nix::sys::socket::{bind, listen, socket, AddressFamily as Af, Backlog, SockFlag, SockType, SockaddrIn};
        let fd = socket(Af::Inet, SockType::Stream, SockFlag::empty(), None).unwrap();
        bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
        listen(&fd, Backlog::new(0).unwrap()).unwrap();
        let listener = std::net::TcpListener::from(fd);
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => held.push(s),
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => return (listener, held, addr),
            }
            assert!(held.len() < 64, "the accept queue never filled");
        }
    }

    #[tokio::test]
    async fn a_black_holed_first_address_does_not_stop_the_dial() {
        let (_hole, _held, dead) = black_hole().await;
        let good = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_secs(10);
        let tcp = dial_addrs(&[dead, good.local_addr().unwrap()], deadline, Duration::from_secs(10)).await.unwrap();
        assert_eq!(tcp.peer_addr().unwrap(), good.local_addr().unwrap());
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        // Alone, the black hole runs into the deadline, named.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        let e = dial_addrs(&[dead], deadline, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(e, LinkError::ConnectTimeout { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_refused_first_address_moves_on_at_once() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let good = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let tcp = dial_addrs(&[closed, good.local_addr().unwrap()], deadline, Duration::from_secs(5)).await.unwrap();
        assert_eq!(tcp.peer_addr().unwrap(), good.local_addr().unwrap());
        let e = dial_addrs(&[closed], deadline, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, LinkError::Refused { .. }), "{e}");
    }
}
