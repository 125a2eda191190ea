//! What the CLI and the agent say to each other: one JSON request per line, one JSON
//! response per line, over the agent's unix socket. Both sides use these definitions.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use super::status::{MountStatus, StatusEvent, Timestamp};
use crate::link::{ConnStats, Destination, LinkError, LinkOptions};

/// Bumped whenever a request or response changes shape.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub version: u32,
    #[serde(flatten)]
    pub body: T,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Mount(Box<MountRequest>),
    Unmount {
        target: String,
        lazy: bool,
    },
    Status,
    /// Stream every state change until the client hangs up.
    Watch,
    Reconnect {
        target: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    /// `already` is true when the same remote was mounted there before.
    Mounted {
        mount: MountInfo,
        already: bool,
    },
    Unmounted {
        mount: MountInfo,
    },
    Status {
        mounts: Vec<MountInfo>,
    },
    /// The first answer to `Watch`: where things stand; `Event`s follow.
    Watching {
        mounts: Vec<MountInfo>,
    },
    Event {
        event: StatusEvent,
    },
    Reconnected {
        mount: MountInfo,
        outcome: String,
    },
    Error {
        error: MoorError,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountRequest {
    pub dest: Destination,
    /// As the user gave it: empty for the remote home, relative to it, or absolute.
    pub remote_path: String,
    pub mountpoint: PathBuf,
    pub name: Option<String>,
    pub link: LinkOptions,
    /// Longest any filesystem call may take.
    pub call_timeout: std::time::Duration,
    /// How long attributes and listings are trusted (zero: always ask the server).
    pub cache_timeout: std::time::Duration,
    /// Largest read-ahead window per open file, in bytes (zero: no read-ahead).
    pub read_ahead: u64,
    /// Keep retrying a host that refuses or does not answer for this long (`--wait`).
    pub wait: Option<std::time::Duration>,
    /// Log detail for the mount's log file.
    pub verbose: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountInfo {
    pub name: String,
    pub mountpoint: PathBuf,
    /// `user@host:/absolute/path`
    pub remote: String,
    pub status: MountStatus,
    /// When the mount entered its current state.
    pub since: Timestamp,
    /// Round-trip time of the last heartbeat, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Connections made again after one was lost.
    pub reconnects: u64,
    pub open_handles: usize,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// The connections of the mount's link.
    pub connections: Vec<ConnStats>,
    /// The mount's own log file.
    pub log: Option<PathBuf>,
}

/// What kind of failure, which decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Bad command line or config values.
    Usage,
    /// The host could not be reached (name, refused, timeout, lost).
    Connect,
    /// Every key was refused.
    Auth,
    /// The host key is unknown, changed, or cannot be checked.
    HostKey,
    /// The remote path is missing or not a directory.
    RemotePath,
    /// The mountpoint is missing, not a directory, already a mount, or busy.
    Mountpoint,
    /// The target names no moor mount.
    NotMounted,
    /// The user interrupted the command.
    Cancelled,
    /// The agent could not be started or reached.
    Agent,
    Internal,
}

impl ErrorKind {
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Internal => 1,
            ErrorKind::Usage => 2,
            ErrorKind::Connect => 3,
            ErrorKind::Auth => 4,
            ErrorKind::HostKey => 5,
            ErrorKind::RemotePath => 6,
            ErrorKind::Mountpoint => 7,
            ErrorKind::NotMounted => 8,
            ErrorKind::Agent => 9,
            ErrorKind::Cancelled => 130,
        }
    }
}

/// A failure to report to the user: one line that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct MoorError {
    pub kind: ErrorKind,
    pub message: String,
}

impl MoorError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> MoorError {
        MoorError { kind, message: message.into() }
    }
}

impl From<LinkError> for MoorError {
    fn from(e: LinkError) -> MoorError {
        let kind = match &e {
            LinkError::AuthRefused { .. } => ErrorKind::Auth,
            LinkError::HostKeyUnknown { .. }
            | LinkError::HostKeyChanged { .. }
            | LinkError::HostKeyUnverifiable { .. } => ErrorKind::HostKey,
            _ => ErrorKind::Connect,
        };
        MoorError::new(kind, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_roundtrip() {
        let r = Envelope { version: PROTOCOL_VERSION, body: Request::Unmount { target: "/m".into(), lazy: true } };
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains("\"request\":\"unmount\""));
        let back: Envelope<Request> = serde_json::from_str(&line).unwrap();
        assert!(matches!(back.body, Request::Unmount { lazy: true, .. }));
    }

    #[test]
    fn exit_codes_are_distinct() {
        use ErrorKind::*;
        let all = [Usage, Connect, Auth, HostKey, RemotePath, Mountpoint, NotMounted, Agent, Internal, Cancelled];
        let mut codes: Vec<i32> = all.iter().map(|k| k.exit_code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }
}
