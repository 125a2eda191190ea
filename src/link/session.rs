//! What a connection carries, as far as the link needs to know: the link dials, logs in
//! and opens the subsystem's channel; the session (the remote layer's SFTP) starts on
//! that channel and answers the link's questions about its health. The link knows no
//! more of the protocol than this, so that it stays below the layer that speaks it.

use std::future::Future;
use std::time::Duration;

use russh::client::Msg;
use russh::Channel;

use super::error::LinkError;

/// A protocol session on one SSH channel of a pooled connection.
///
/// Futures are `Send` (spelled out rather than `async fn`) because the link's watchdog
/// and dials run in spawned tasks.
pub trait Session: Send + Sync + Sized + 'static {
    /// The SSH subsystem the session runs on ("sftp").
    const SUBSYSTEM: &'static str;

    /// Starts the session on `channel`, its subsystem already started. Also returns the
    /// round trip of a first request with nothing before it, when one was made: the
    /// path's latency (see `Conn::least_rtt`).
    fn start(channel: Channel<Msg>) -> impl Future<Output = Result<(Self, Option<Duration>), LinkError>> + Send;

    /// One small request, answered (`true`) or not: the watchdog's heartbeat.
    fn heartbeat(&self) -> impl Future<Output = bool> + Send;

    /// Whether the server says `path` does not exist (a mount's root gone after a
    /// reconnect); any other answer, or none, is not "gone".
    fn path_gone(&self, path: &str) -> impl Future<Output = bool> + Send;

    /// How long the session has had requests out without receiving anything; `None`
    /// when nothing is out.
    fn stalled_for(&self) -> Option<Duration>;

    /// Bytes of file data out on the session.
    fn bulk_out(&self) -> usize;

    /// Gives the session up: every request out on it fails at once, without waiting for
    /// the SSH session to notice its connection is gone.
    fn stop(&self);

    /// Ends the session politely (before the SSH connection is disconnected).
    fn close(&self);
}
