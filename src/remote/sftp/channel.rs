//! The SSH channel under one SFTP session, shared by two clients: the russh-sftp
//! session (which opens the session and carries heartbeats), and a direct path for
//! every file operation (READ and WRITE, and the requests `wire` frames).
//!
//! The direct path is there for speed. The library copies a write's data three times on
//! its way to the channel and a read's answer twice on the way back; here a write goes
//! out as a small header followed by the caller's buffer, and a read's answer is handed
//! over as a slice of the frame it arrived in. On two cores those copies were a sixth of
//! the agent's time during a large write.
//!
//! Frames stay whole: everything going out passes through one writer task, and answers
//! are routed by request id. Direct requests use ids with the top bit set, which the
//! library, counting up from 1, does not reach.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::pacing::Pacing;
use crate::sync::lock;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use russh::client::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{Status, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};

const FXP_VERSION: u8 = 2;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
pub const FXP_STATUS: u8 = 101;
const FXP_DATA: u8 = 103;

const DIRECT_ID: u32 = 0x8000_0000;
/// Larger frames than OpenSSH ever sends mean the stream is out of step.
const MAX_FRAME: usize = 1 << 20;
/// The largest SSH packet OpenSSH takes on a session channel.
const PACKET: usize = 32 * 1024;

/// What a channel has moved, for telling a slow link from a dead one: a connection is
/// stalled while it has requests out and has received nothing for a while, however long
/// its requests have been waiting behind others.
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests sent and not yet answered.
    outstanding: AtomicU64,
    /// When bytes last arrived, or a request went out with none outstanding (the
    /// channel's clock, in milliseconds).
    last_moved_ms: AtomicU64,
}

/// Milliseconds on a monotonic clock that starts with the first call.
fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Progress {
    fn sent(&self) {
        if self.outstanding.fetch_add(1, Ordering::SeqCst) == 0 {
            self.last_moved_ms.store(clock_ms(), Ordering::SeqCst);
        }
    }

    fn received(&self) {
        self.last_moved_ms.store(clock_ms(), Ordering::SeqCst);
    }

    fn answered(&self) {
        let _ = self.outstanding.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// How long requests have been out with nothing arriving; `None` when none is out.
    pub fn stalled_for(&self) -> Option<Duration> {
        if self.outstanding.load(Ordering::SeqCst) == 0 {
            return None;
        }
        Some(Duration::from_millis(clock_ms().saturating_sub(self.last_moved_ms.load(Ordering::SeqCst))))
    }
}

enum Outgoing {
    Frame(Bytes),
    /// A header and the data it announces: the header goes out in the data's first SSH
    /// packet, a small body whole with it, and the rest of a large one as it is.
    Split(Bytes, Bytes),
    Close,
}

/// Direct requests waiting for their answer; `None` once the channel has ended.
type Waiting = Arc<Mutex<Option<HashMap<u32, oneshot::Sender<Bytes>>>>>;

/// Direct READ and WRITE on an SFTP channel.
pub struct DirectSftp {
    out: mpsc::UnboundedSender<Outgoing>,
    waiting: Waiting,
    next_id: AtomicU32,
    timeout: Duration,
    /// File data out on this channel is kept within a budget (see `pacing`).
    pacing: Pacing,
    /// Ends the channel's reader: every request still out fails at once.
    stop: CancellationToken,
}

/// The library's side of the channel: a byte stream like the channel itself.
pub struct LibraryStream {
    incoming: mpsc::UnboundedReceiver<Bytes>,
    current: Bytes,
    out: mpsc::UnboundedSender<Outgoing>,
    partial: BytesMut,
}

/// Starts the writer and reader tasks of an SFTP channel, counting what moves in
/// `progress`. Direct requests not answered within `timeout` fail with
/// [`SftpError::Timeout`], as the library's do.
pub fn start(
    read: ChannelReadHalf,
    write: ChannelWriteHalf<Msg>,
    timeout: Duration,
    progress: Arc<Progress>,
) -> (DirectSftp, LibraryStream) {
    let (out, out_rx) = mpsc::unbounded_channel();
    let (to_library, incoming) = mpsc::unbounded_channel();
    let waiting: Waiting = Arc::new(Mutex::new(Some(HashMap::new())));
    let stop = CancellationToken::new();
    tokio::spawn(write_frames(out_rx, write, progress.clone()));
    tokio::spawn(read_frames(read, waiting.clone(), to_library, progress, stop.clone()));
    let direct =
        DirectSftp { out: out.clone(), waiting, next_id: AtomicU32::new(0), timeout, pacing: Pacing::default(), stop };
    (direct, LibraryStream { incoming, current: Bytes::new(), out, partial: BytesMut::new() })
}

async fn write_frames(
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    channel: ChannelWriteHalf<Msg>,
    progress: Arc<Progress>,
) {
    while let Some(item) = queue.recv().await {
        // Every SFTP packet going out is a request that gets one answer.
        if !matches!(item, Outgoing::Close) {
            progress.sent();
        }
        let sent = match item {
            Outgoing::Frame(frame) => channel.data_bytes(frame).await,
            Outgoing::Split(head, mut body) => {
                // A packet of its own for the header would cost the server a packet's
                // work for a few bytes.
                let first = body.len().min(PACKET.saturating_sub(head.len()));
                let mut lead = BytesMut::with_capacity(head.len() + first);
                lead.extend_from_slice(&head);
                lead.extend_from_slice(&body.split_to(first));
                match channel.data_bytes(lead.freeze()).await {
                    Ok(()) if !body.is_empty() => channel.data_bytes(body).await,
                    r => r,
                }
            }
            Outgoing::Close => {
                let _ = channel.eof().await;
                let _ = channel.close().await;
                return;
            }
        };
        if sent.is_err() {
            // The session is gone; the reader sees the channel end and fails the waiters.
            return;
        }
    }
    let _ = channel.close().await;
}

async fn read_frames(
    mut channel: ChannelReadHalf,
    waiting: Waiting,
    to_library: mpsc::UnboundedSender<Bytes>,
    progress: Arc<Progress>,
    stop: CancellationToken,
) {
    let mut frames = Frames::default();
    loop {
        let msg = tokio::select! {
            msg = channel.wait() => msg,
            // Given up: what is waiting fails now, whatever the session still does.
            _ = stop.cancelled() => break,
        };
        let Some(msg) = msg else { break };
        let data = match msg {
            ChannelMsg::Data { data } => data,
            ChannelMsg::Eof | ChannelMsg::Close => break,
            _ => continue,
        };
        // Bytes arriving are progress, even when they complete no answer yet.
        progress.received();
        let done = frames.push(data, |frame| {
            progress.answered();
            route(frame, &waiting, &to_library)
        });
        if let Err(len) = done {
            tracing::warn!(len, "SFTP frame too large; closing the channel");
            break;
        }
    }
    // Dropping the senders fails every direct request still waiting, and later ones are
    // refused at once; dropping `to_library` ends the library's stream.
    lock(&waiting).take();
}

/// Cuts the channel's byte stream into SFTP frames.
#[derive(Default)]
struct Frames {
    partial: BytesMut,
}

impl Frames {
    /// Hands every frame `data` completes to `out`; `Err(len)` if a frame announces more
    /// than any server sends, after which the stream cannot be followed.
    fn push(&mut self, mut data: Bytes, mut out: impl FnMut(Bytes)) -> Result<(), usize> {
        if self.partial.is_empty() {
            // Whole frames in one SSH packet are handed on without a copy.
            while let Some(len) = frame_len(&data) {
                if len > MAX_FRAME {
                    return Err(len);
                }
                if data.len() < len {
                    break;
                }
                out(data.split_to(len));
            }
        }
        self.partial.extend_from_slice(&data);
        while let Some(len) = frame_len(&self.partial) {
            if len > MAX_FRAME {
                return Err(len);
            }
            if self.partial.len() < len {
                self.partial.reserve(len - self.partial.len());
                break;
            }
            out(self.partial.split_to(len).freeze());
        }
        Ok(())
    }
}

/// The length of the frame at the start of `b`, its 4-byte length field included.
fn frame_len(b: &[u8]) -> Option<usize> {
    let head: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(4 + u32::from_be_bytes(head) as usize)
}

fn route(frame: Bytes, waiting: &Waiting, to_library: &mpsc::UnboundedSender<Bytes>) {
    let id = match (frame.get(4), frame.get(5..9)) {
        (Some(&kind), Some(id)) if kind != FXP_VERSION => u32::from_be_bytes([id[0], id[1], id[2], id[3]]),
        _ => 0,
    };
    if id & DIRECT_ID != 0 {
        // A request that timed out is no longer waited for; its answer is dropped.
        if let Some(tx) = lock(waiting).as_mut().and_then(|w| w.remove(&id)) {
            let _ = tx.send(frame);
        }
    } else {
        let _ = to_library.send(frame);
    }
}

fn lost() -> SftpError {
    SftpError::IO("the SFTP channel closed".into())
}

impl DirectSftp {
    /// Reads up to `len` bytes; `Err(Status(Eof))` at end of file, as the library does.
    pub async fn read(&self, handle: &[u8], offset: u64, len: u32) -> Result<Bytes, SftpError> {
        let id = self.next_id();
        let mut f = frame(FXP_READ, id, handle, 12);
        f.put_u64(offset);
        f.put_u32(len);
        let share = self.pacing.share(len as usize).await;
        let answer = self.request(id, Outgoing::Frame(finish(f))).await;
        self.pacing.answered(share);
        let answer = answer?;
        match answer.get(4) {
            Some(&FXP_DATA) => {
                let mut body = answer.slice(9..);
                if body.len() < 4 {
                    return Err(SftpError::UnexpectedPacket);
                }
                let n = body.get_u32() as usize;
                if n > body.len() {
                    return Err(SftpError::UnexpectedPacket);
                }
                Ok(body.slice(..n))
            }
            Some(&FXP_STATUS) => Err(status(&answer)),
            _ => Err(SftpError::UnexpectedPacket),
        }
    }

    /// Writes `data` at `offset`, sending the caller's buffer itself.
    pub async fn write(&self, handle: &[u8], offset: u64, data: Bytes) -> Result<(), SftpError> {
        let share = self.pacing.share(data.len()).await;
        let id = self.next_id();
        let mut head = frame(FXP_WRITE, id, handle, 12);
        head.put_u64(offset);
        head.put_u32(data.len() as u32);
        let answer = self.request(id, Outgoing::Split(finish_with(head, data.len()), data)).await;
        self.pacing.answered(share);
        let answer = answer?;
        match answer.get(4) {
            Some(&FXP_STATUS) => match status(&answer) {
                SftpError::Status(s) if s.status_code == StatusCode::Ok => Ok(()),
                e => Err(e),
            },
            _ => Err(SftpError::UnexpectedPacket),
        }
    }

    /// Sends one request of `kind` with `body` (all that follows its id) and returns the
    /// answer's whole frame.
    pub async fn call(&self, kind: u8, body: &[u8]) -> Result<Bytes, SftpError> {
        let id = self.next_id();
        let mut f = BytesMut::with_capacity(9 + body.len());
        f.put_u32(0);
        f.put_u8(kind);
        f.put_u32(id);
        f.extend_from_slice(body);
        self.request(id, Outgoing::Frame(finish(f))).await
    }

    /// Gives the channel up: every request out on it, direct or the library's, fails at
    /// once (as if the connection broke), without waiting for the session to notice.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Bytes of file data out on this channel now.
    pub fn bulk_out(&self) -> usize {
        self.pacing.out()
    }

    fn next_id(&self) -> u32 {
        DIRECT_ID | (self.next_id.fetch_add(1, Ordering::Relaxed) & !DIRECT_ID)
    }

    async fn request(&self, id: u32, item: Outgoing) -> Result<Bytes, SftpError> {
        let (tx, rx) = oneshot::channel();
        match lock(&self.waiting).as_mut() {
            Some(w) => w.insert(id, tx),
            None => return Err(lost()),
        };
        if self.out.send(item).is_err() {
            self.forget(id);
            return Err(lost());
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(_)) => Err(lost()),
            Err(_) => {
                self.forget(id);
                Err(SftpError::Timeout)
            }
        }
    }

    fn forget(&self, id: u32) {
        if let Some(w) = lock(&self.waiting).as_mut() {
            w.remove(&id);
        }
    }
}

/// A request frame up to its handle, with room for `rest` more bytes; the length field
/// is filled in by `finish`.
fn frame(kind: u8, id: u32, handle: &[u8], rest: usize) -> BytesMut {
    let mut f = BytesMut::with_capacity(4 + 1 + 4 + 4 + handle.len() + rest);
    f.put_u32(0);
    f.put_u8(kind);
    f.put_u32(id);
    f.put_u32(handle.len() as u32);
    f.extend_from_slice(handle);
    f
}

fn finish(f: BytesMut) -> Bytes {
    finish_with(f, 0)
}

/// Fills in the length field of a frame whose last `more` bytes are sent separately.
fn finish_with(mut f: BytesMut, more: usize) -> Bytes {
    let len = (f.len() - 4 + more) as u32;
    f[..4].copy_from_slice(&len.to_be_bytes());
    f.freeze()
}

/// The error a STATUS frame stands for (`Status` with code Ok included).
pub fn status(frame: &Bytes) -> SftpError {
    let mut b = frame.slice(5..);
    if b.len() < 8 {
        return SftpError::UnexpectedPacket;
    }
    let id = b.get_u32();
    let code = b.get_u32();
    let mut text = || -> String {
        if b.len() < 4 {
            return String::new();
        }
        let n = (b.get_u32() as usize).min(b.len());
        let s = String::from_utf8_lossy(&b[..n]).into_owned();
        b.advance(n);
        s
    };
    let error_message = text();
    let language_tag = text();
    let status_code = match code {
        0 => StatusCode::Ok,
        1 => StatusCode::Eof,
        2 => StatusCode::NoSuchFile,
        3 => StatusCode::PermissionDenied,
        5 => StatusCode::BadMessage,
        6 => StatusCode::NoConnection,
        7 => StatusCode::ConnectionLost,
        8 => StatusCode::OpUnsupported,
        _ => StatusCode::Failure,
    };
    SftpError::Status(Status { id, status_code, error_message, language_tag })
}

impl AsyncRead for LibraryStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.current.is_empty() {
            match self.incoming.poll_recv(cx) {
                Poll::Ready(Some(frame)) => self.current = frame,
                // The channel ended: end of stream.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.current.len().min(buf.remaining());
        buf.put_slice(&self.current[..n]);
        self.current.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for LibraryStream {
    fn poll_write(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        // Only whole frames go to the writer, so that direct frames never land inside
        // one of the library's.
        self.partial.extend_from_slice(data);
        while let Some(len) = frame_len(&self.partial) {
            if self.partial.len() < len {
                break;
            }
            let frame = self.partial.split_to(len).freeze();
            if self.out.send(Outgoing::Frame(frame)).is_err() {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "SFTP channel closed")));
            }
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = self.out.send(Outgoing::Close);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(kind: u8, id: u32, body: &[u8]) -> Bytes {
        let mut f = BytesMut::new();
        f.put_u32(0);
        f.put_u8(kind);
        f.put_u32(id);
        f.extend_from_slice(body);
        finish(f)
    }

    #[test]
    fn frames_are_cut_across_and_within_packets() {
        let a = framed(FXP_DATA, 1, &[7; 100_000]);
        let b = framed(FXP_STATUS, 2, &[0; 8]);
        let c = framed(FXP_STATUS, 3, &[0; 8]);
        let mut stream = BytesMut::new();
        for f in [&a, &b, &c] {
            stream.extend_from_slice(f);
        }
        let stream = stream.freeze();
        // SSH packets of 32 KiB, and one odd cut inside a length field.
        let mut cuts: Vec<usize> = (1..stream.len() / 32768 + 1).map(|i| i * 32768).collect();
        cuts.push(a.len() + 2);
        cuts.sort();
        let mut frames = Frames::default();
        let mut got = Vec::new();
        let mut at = 0;
        for cut in cuts.into_iter().chain([stream.len()]) {
            frames.push(stream.slice(at..cut), |f| got.push(f)).unwrap();
            at = cut;
        }
        assert_eq!(got, vec![a, b.clone(), c.clone()]);
        // Several whole frames in one packet.
        let mut both = BytesMut::new();
        both.extend_from_slice(&b);
        both.extend_from_slice(&c);
        let mut got = Vec::new();
        frames.push(both.freeze(), |f| got.push(f)).unwrap();
        assert_eq!(got, vec![b, c]);
    }

    #[test]
    fn an_oversized_frame_stops_the_stream() {
        let mut frames = Frames::default();
        let mut head = BytesMut::new();
        head.put_u32(MAX_FRAME as u32 + 1);
        head.put_u8(FXP_DATA);
        assert_eq!(frames.push(head.freeze(), |_| panic!("no frame expected")), Err(MAX_FRAME + 5));
    }

    #[test]
    fn write_header_announces_the_data_sent_after_it() {
        let mut head = frame(FXP_WRITE, DIRECT_ID | 7, b"\0\0\0\x05", 12);
        head.put_u64(42);
        head.put_u32(100_000);
        let f = finish_with(head, 100_000);
        assert_eq!(frame_len(&f), Some(4 + 1 + 4 + 4 + 4 + 8 + 4 + 100_000));
        assert_eq!(f[4], FXP_WRITE);
        assert_eq!(&f[5..9], &(DIRECT_ID | 7).to_be_bytes());
        assert_eq!(&f[9..13], &4u32.to_be_bytes());
        assert_eq!(&f[17..25], &42u64.to_be_bytes());
    }

    #[test]
    fn status_frames_decode() {
        let mut f = BytesMut::new();
        f.put_u32(0);
        f.put_u8(FXP_STATUS);
        f.put_u32(DIRECT_ID | 1);
        f.put_u32(2);
        f.put_u32(4);
        f.extend_from_slice(b"gone");
        f.put_u32(0);
        let f = finish(f);
        match status(&f) {
            SftpError::Status(s) => {
                assert_eq!(s.status_code, StatusCode::NoSuchFile);
                assert_eq!(s.error_message, "gone");
            }
            other => panic!("{other:?}"),
        }
        // Truncated frames are refused, not read past their end.
        assert!(matches!(status(&f.slice(..10)), SftpError::UnexpectedPacket));
    }

    #[test]
    fn answers_go_to_their_waiter_or_to_the_library() {
        let waiting: Waiting = Arc::new(Mutex::new(Some(HashMap::new())));
        let (tx, rx) = oneshot::channel();
        lock(&waiting).as_mut().unwrap().insert(DIRECT_ID | 3, tx);
        let (to_library, mut library) = mpsc::unbounded_channel();
        let answer = |id: u32| {
            let mut f = BytesMut::new();
            f.put_u32(0);
            f.put_u8(FXP_STATUS);
            f.put_u32(id);
            f.put_u32(0);
            finish(f)
        };
        route(answer(3), &waiting, &to_library);
        route(answer(DIRECT_ID | 3), &waiting, &to_library);
        // An answer nobody waits for any more (timed out) is dropped.
        route(answer(DIRECT_ID | 4), &waiting, &to_library);
        assert_eq!(&library.try_recv().unwrap()[5..9], &3u32.to_be_bytes());
        assert!(library.try_recv().is_err());
        assert_eq!(&rx.blocking_recv().unwrap()[5..9], &(DIRECT_ID | 3).to_be_bytes());
    }
}
