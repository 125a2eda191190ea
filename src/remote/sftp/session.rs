//! One connection's SFTP session, as the link carries it ([`Session`]): the russh-sftp
//! session (which opens the session and carries heartbeats) and moor's direct path
//! beside it on the same channel (`channel`), with what was agreed at the start: the
//! server's extensions, the read and write sizes, and the handles the connection may
//! hold.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use russh::client::Msg;
use russh::Channel;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::StatusCode;

use super::channel::{self, DirectSftp, Progress};
use crate::link::{LinkError, Session};

/// How long one request may go unanswered in any case. Whether a connection is alive is
/// judged by what it moves (`Conn::stalled_for`), not by this: it only makes sure no
/// request waits for ever on a connection that keeps answering others.
const REQUEST_BACKSTOP: Duration = Duration::from_secs(300);

/// See `SftpSession::handle_slots`.
pub const MAX_HANDLES_PER_CONNECTION: usize = 500;

/// The SFTP session of one pooled connection.
pub struct SftpSession {
    pub sftp: RawSftpSession,
    /// File data goes this way, beside the library (see `channel`).
    pub direct: DirectSftp,
    /// Extensions the server announced in its SFTP version reply.
    pub extensions: HashMap<String, String>,
    /// Largest read to ask for, within what the server allows.
    pub read_size: u32,
    /// Largest write to send, within what the server allows.
    pub write_size: u32,
    /// Server handles this connection may hold at once. Handles travel as opaque bytes
    /// (`wire`); the bound keeps within the file descriptors OpenSSH's server process
    /// has (1 024 by default), with room for directory listings.
    pub handle_slots: Arc<tokio::sync::Semaphore>,
    /// Requests out and bytes in, to tell a slow connection from a dead one.
    progress: Arc<Progress>,
}

impl Session for SftpSession {
    const SUBSYSTEM: &'static str = "sftp";

    async fn start(channel: Channel<Msg>) -> Result<(SftpSession, Option<Duration>), LinkError> {
        let cfg = russh_sftp::client::Config { request_timeout_secs: REQUEST_BACKSTOP.as_secs(), ..Default::default() };
        let (read_half, write_half) = channel.split();
        let progress = Arc::new(Progress::default());
        let (direct, library) = channel::start(read_half, write_half, REQUEST_BACKSTOP, progress.clone());
        let mut sftp = RawSftpSession::new_with_config(library, cfg);
        let version = sftp.init().await.map_err(|e| LinkError::NoSftp { detail: e.to_string() })?;
        let (read_size, write_size, rtt) = agree_sizes(&mut sftp, &version.extensions).await;
        let session = SftpSession {
            sftp,
            direct,
            extensions: version.extensions,
            read_size,
            write_size,
            handle_slots: Arc::new(tokio::sync::Semaphore::new(MAX_HANDLES_PER_CONNECTION)),
            progress,
        };
        Ok((session, rtt))
    }

    async fn heartbeat(&self) -> bool {
        self.sftp.stat(".").await.is_ok()
    }

    async fn path_gone(&self, path: &str) -> bool {
        matches!(self.sftp.stat(path).await, Err(SftpError::Status(s)) if s.status_code == StatusCode::NoSuchFile)
    }

    fn stalled_for(&self) -> Option<Duration> {
        self.progress.stalled_for()
    }

    fn bulk_out(&self) -> usize {
        self.direct.bulk_out()
    }

    fn stop(&self) {
        self.direct.stop();
    }

    fn close(&self) {
        let _ = self.sftp.close_session();
    }
}

/// The read and write sizes to use with this server, and the round trip of the limits
/// request when it was made.
async fn agree_sizes(sftp: &mut RawSftpSession, extensions: &HashMap<String, String>) -> (u32, u32, Option<Duration>) {
    // Reads: 255 KiB fits OpenSSH's 256 KiB message limit with room for the headers,
    // and is what the library accepts for an answer. Writes: 64 KiB. OpenSSH's SFTP
    // server gathers each message from a 64 KiB pipe into a buffer that, for larger
    // messages plus the start of the next, passes glibc's 128 KiB mmap threshold. One
    // connection serves each open file (see `remote::sftp`), so the server's two
    // processes for it are the limit on a fast link: 512 MiB written with 64 KiB writes
    // took 0.83 s and 0.69 CPU-s of sshd, with 120 KiB writes 0.91 s and 0.76 CPU-s
    // (medians of 10, loopback, 2 cores).
    let (mut read_size, mut write_size): (u32, u32) = (255 * 1024, 64 * 1024);
    if extensions.get("limits@openssh.com").is_none_or(|v| v != "1") {
        // Without limits, stay where every server is known to be fine.
        return (32 * 1024, 32 * 1024, None);
    }
    // The limits request is the first with nothing before it: its round trip is the
    // path's latency (`Conn::least_rtt`).
    let asked = Instant::now();
    let limits = sftp.limits().await;
    let rtt = Some(asked.elapsed());
    if let Ok(l) = limits {
        let within = |size: u32, lim: u64| if lim > 0 { size.min(lim.min(u64::from(u32::MAX)) as u32) } else { size };
        read_size = within(read_size, l.max_read_len);
        write_size = within(write_size, l.max_write_len);
        sftp.set_limits(l.into());
    }
    (read_size, write_size, rtt)
}
