//! One SSH connection carrying one SFTP session: dial, check the host key, authenticate,
//! start the sftp subsystem.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use russh::client::{self, AuthResult};
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};
use russh_sftp::client::RawSftpSession;

use super::channel::{DirectSftp, Progress};
use tokio::net::TcpStream;

use super::config::Destination;
use super::error::LinkError;
use super::known_hosts::{self, Verdict};
use crate::timestamp::Timestamp;

/// A live SSH connection with its SFTP session.
pub struct SftpConn {
    pub sftp: RawSftpSession,
    /// File data goes this way, beside the library (see `channel`).
    pub direct: DirectSftp,
    /// Extensions the server announced in its SFTP version reply.
    pub extensions: HashMap<String, String>,
    /// Which connection of its link this is: handles opened on an older one must be
    /// opened again.
    pub generation: u64,
    /// Its place in the link's pool.
    pub lane: usize,
    /// Largest read to ask for, within what the server allows.
    pub read_size: u32,
    /// Largest write to send, within what the server allows.
    pub write_size: u32,
    pub connected_at: SystemTime,
    /// Server handles this connection may hold at once. Handles travel as opaque bytes
    /// (`remote::wire`); the bound keeps within the file descriptors OpenSSH's server
    /// process has (1 024 by default), with room for directory listings.
    pub handle_slots: Arc<tokio::sync::Semaphore>,
    /// Unix milliseconds of the last request answered on this connection.
    last_activity_ms: AtomicU64,
    ops: AtomicU64,
    /// Requests out and bytes in, to tell a slow connection from a dead one.
    progress: Arc<Progress>,
    /// The TCP socket under the session (a duplicate: russh owns the original), kept to
    /// abort the connection.
    socket: OwnedFd,
    ssh: client::Handle<Client>,
}

/// How long one request may go unanswered in any case. Whether a connection is alive is
/// judged by what it moves (`SftpConn::stalled_for`), not by this: it only makes sure no
/// request waits for ever on a connection that keeps answering others.
const REQUEST_BACKSTOP: Duration = Duration::from_secs(300);

/// See `SftpConn::handle_slots`.
pub const MAX_HANDLES_PER_CONNECTION: usize = 500;

/// What one pooled connection has been doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnStats {
    pub connected_at: Timestamp,
    pub last_activity: Timestamp,
    pub operations: u64,
    pub idle_secs: f64,
}

impl SftpConn {
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
        self.progress.stalled_for()
    }

    /// Bytes of file data out on this connection.
    pub fn bulk_out(&self) -> usize {
        self.direct.bulk_out()
    }

    pub async fn close(&self) {
        let _ = self.sftp.close_session();
        let _ = self.ssh.disconnect(Disconnect::ByApplication, "unmounted", "en").await;
    }

    /// Aborts the TCP connection at once: the kernel drops whatever it has not yet sent
    /// and resets the connection, so nothing written on it can reach the server later,
    /// after the same writes were replayed (and newer ones made) on a new connection, as
    /// a stalled path's retransmissions would. `connect` with `AF_UNSPEC` does that on
    /// Linux without closing the descriptor, which russh still owns.
    pub fn abort(&self) {
        // SAFETY: an all-zero sockaddr with family AF_UNSPEC is a valid argument, its
        // size is given, and the descriptor is ours (a duplicate) for as long as `self`.
        let rc = unsafe {
            let mut addr: libc::sockaddr = std::mem::zeroed();
            addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
            libc::connect(self.socket.as_raw_fd(), &addr, std::mem::size_of::<libc::sockaddr>() as libc::socklen_t)
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "aborting the connection");
        }
        // Whatever russh makes of the dead socket, and whenever: the requests still out
        // fail now, so that what they carried is sent again on the new connection.
        self.direct.stop();
    }
}

struct Client {
    dest: Arc<Destination>,
    /// What the host key check decided, read back when the handshake fails.
    verdict: Arc<Mutex<Option<(PublicKey, Verdict)>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let key = key.public_key();
        let verdict = known_hosts::check(&self.dest, &key);
        let ok = matches!(verdict, Verdict::Known | Verdict::Learned);
        if let Ok(mut v) = self.verdict.lock() {
            *v = Some((key, verdict));
        }
        Ok(ok)
    }
}

fn ssh_config() -> client::Config {
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
    let addrs = resolve(dest).await?;
    let mut last = None;
    for addr in addrs {
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                set_keepalive(&tcp);
                return Ok(tcp);
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = Some(LinkError::Refused { addr: addr.to_string() })
            }
            Ok(Err(e)) => last = Some(LinkError::Unreachable { addr: addr.to_string(), detail: e.to_string() }),
            Err(_) => {
                return Err(LinkError::ConnectTimeout { addr: addr.to_string(), secs: dest.connect_timeout.as_secs() })
            }
        }
    }
    Err(last.unwrap_or_else(|| LinkError::Unreachable { addr: dest.host_name.clone(), detail: "no address".into() }))
}

/// Connects, authenticates and starts SFTP, all within the destination's connect timeout.
pub async fn connect(dest: &Destination, generation: u64) -> Result<SftpConn, LinkError> {
    let deadline = tokio::time::Instant::now() + dest.connect_timeout;
    let timeout = || LinkError::ConnectTimeout {
        addr: format!("{}:{}", dest.host_name, dest.port),
        secs: dest.connect_timeout.as_secs(),
    };
    match tokio::time::timeout_at(deadline, connect_inner(dest, deadline, generation)).await {
        Ok(r) => r,
        Err(_) => Err(timeout()),
    }
}

async fn connect_inner(
    dest: &Destination,
    deadline: tokio::time::Instant,
    generation: u64,
) -> Result<SftpConn, LinkError> {
    let tcp = dial(dest, deadline).await?;
    let socket = tcp.as_fd().try_clone_to_owned().map_err(|e| LinkError::Lost {
        host: dest.host_name.clone(),
        detail: format!("cannot keep the socket: {e}"),
    })?;
    let verdict = Arc::new(Mutex::new(None));
    let handler = Client { dest: Arc::new(dest.clone()), verdict: verdict.clone() };
    let protocol = |e: russh::Error| LinkError::Protocol { host: dest.host_name.clone(), detail: e.to_string() };
    let mut ssh = match client::connect_stream(Arc::new(ssh_config()), tcp, handler).await {
        Ok(h) => h,
        Err(e) => {
            let seen = verdict.lock().ok().and_then(|v| v.clone());
            if let Some((key, v)) = seen {
                if let Some(refusal) = known_hosts::refusal(dest, &key, &v) {
                    return Err(refusal);
                }
            }
            return Err(match e {
                russh::Error::IO(io) => LinkError::Lost { host: dest.host_name.clone(), detail: io.to_string() },
                russh::Error::Disconnect => {
                    LinkError::Lost { host: dest.host_name.clone(), detail: "the server closed the connection".into() }
                }
                other => protocol(other),
            });
        }
    };
    authenticate(&mut ssh, dest).await?;
    let channel = ssh.channel_open_session().await.map_err(protocol)?;
    channel.request_subsystem(true, "sftp").await.map_err(protocol)?;
    let mut channel = channel;
    loop {
        match channel.wait().await {
            Some(ChannelMsg::Success) => break,
            Some(ChannelMsg::Failure) => return Err(LinkError::NoSftp { detail: "subsystem request refused".into() }),
            None => return Err(LinkError::NoSftp { detail: "channel closed".into() }),
            Some(_) => {}
        }
    }
    let cfg = russh_sftp::client::Config { request_timeout_secs: REQUEST_BACKSTOP.as_secs(), ..Default::default() };
    let (read_half, write_half) = channel.split();
    let progress = Arc::new(Progress::default());
    let (direct, library) = super::channel::start(read_half, write_half, REQUEST_BACKSTOP, progress.clone());
    let mut sftp = RawSftpSession::new_with_config(library, cfg);
    let version = sftp.init().await.map_err(|e| LinkError::NoSftp { detail: e.to_string() })?;
    // Reads: 255 KiB fits OpenSSH's 256 KiB message limit with room for the headers,
    // and is what the library accepts for an answer. Writes: 120 KiB keeps each message
    // under glibc's 128 KiB mmap threshold in the server, which otherwise maps and
    // unmaps every message on a fresh connection (measured: 512 MiB written in 0.80-0.84 s
    // at 120 KiB, 0.93-0.98 s at 255 KiB, 0.84-0.86 s at 64 KiB; fresh mounts, loopback).
    let (mut read_size, mut write_size): (u32, u32) = (255 * 1024, 120 * 1024);
    if version.extensions.get("limits@openssh.com").is_some_and(|v| v == "1") {
        if let Ok(l) = sftp.limits().await {
            let within =
                |size: u32, lim: u64| if lim > 0 { size.min(lim.min(u64::from(u32::MAX)) as u32) } else { size };
            read_size = within(read_size, l.max_read_len);
            write_size = within(write_size, l.max_write_len);
            sftp.set_limits(l.into());
        }
    } else {
        // Without limits, stay where every server is known to be fine.
        (read_size, write_size) = (32 * 1024, 32 * 1024);
    }
    let now = SystemTime::now();
    Ok(SftpConn {
        sftp,
        direct,
        extensions: version.extensions,
        generation,
        lane: 0,
        read_size,
        write_size,
        connected_at: now,
        handle_slots: Arc::new(tokio::sync::Semaphore::new(MAX_HANDLES_PER_CONNECTION)),
        last_activity_ms: AtomicU64::new(Timestamp::from(now).0),
        ops: AtomicU64::new(0),
        progress,
        socket,
        ssh,
    })
}

/// Offers ssh-agent keys, then identity files, as OpenSSH does.
async fn authenticate(ssh: &mut client::Handle<Client>, dest: &Destination) -> Result<(), LinkError> {
    let lost =
        || LinkError::Lost { host: dest.host_name.clone(), detail: "connection closed during authentication".into() };
    let rsa_hash = ssh.best_supported_rsa_hash().await.ok().flatten().flatten();
    let mut tried: Vec<String> = Vec::new();
    let mut hints: Vec<String> = Vec::new();

    let wanted: Vec<PublicKey> =
        dest.identity_files.iter().filter_map(|p| russh::keys::load_public_key(p.with_extension("pub")).ok()).collect();
    if let Some(sock) = &dest.agent_socket {
        match AgentClient::connect_uds(sock).await {
            Ok(mut agent) => {
                let ids = agent.request_identities().await.unwrap_or_default();
                for id in ids {
                    let AgentIdentity::PublicKey { key, comment } = id else { continue };
                    if dest.identities_only && !wanted.iter().any(|w| w.key_data() == key.key_data()) {
                        continue;
                    }
                    tried.push(format!(
                        "agent key {}",
                        if comment.is_empty() { known_hosts::fingerprint(&key) } else { comment }
                    ));
                    match ssh.authenticate_publickey_with(&dest.user, key, rsa_hash, &mut agent).await {
                        Ok(AuthResult::Success) => return Ok(()),
                        Ok(_) if ssh.is_closed() => return Err(lost()),
                        _ => {}
                    }
                }
            }
            Err(e) => tracing::debug!(socket = %sock.display(), %e, "ssh-agent not usable"),
        }
    }
    for path in &dest.identity_files {
        let key = match russh::keys::load_secret_key(path, None) {
            Ok(k) => k,
            Err(russh::keys::Error::IO(e)) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(russh::keys::Error::KeyIsEncrypted) => {
                hints.push(format!(
                    "{} is passphrase-protected: load it with `ssh-add {}`",
                    path.display(),
                    path.display()
                ));
                continue;
            }
            Err(e) => {
                hints.push(format!("cannot read {}: {e}", path.display()));
                continue;
            }
        };
        tried.push(path.display().to_string());
        let key = PrivateKeyWithHashAlg::new(Arc::new(key), rsa_hash);
        match ssh.authenticate_publickey(&dest.user, key).await {
            Ok(AuthResult::Success) => return Ok(()),
            Ok(_) if ssh.is_closed() => return Err(lost()),
            Ok(_) => {}
            Err(e) => return Err(LinkError::Lost { host: dest.host_name.clone(), detail: e.to_string() }),
        }
    }
    Err(LinkError::AuthRefused {
        user: dest.user.clone(),
        host: dest.host_name.clone(),
        tried: if tried.is_empty() { "no keys found".into() } else { tried.join(", ") },
        hint: if hints.is_empty() { String::new() } else { format!("; {}", hints.join("; ")) },
    })
}
