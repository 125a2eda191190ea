//! What the CLI and the agent say to each other: one JSON request per line, one JSON
//! response per line, over the agent's unix socket. Both sides use these definitions, and
//! the protocol owns every type it carries, so the link layer can change its own freely.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use super::status::{ConflictInfo, MountStatus, StatusEvent, Timestamp};
use crate::fs::IdMap;
use crate::link::config::{AddressFamily, HostKeyPolicy, HostKeyPrefs, LoginPrefs};
use crate::link::{ConnStats, Destination, LinkError, LinkOptions};

/// Bumped whenever a request or response changes shape.
pub const PROTOCOL_VERSION: u32 = 4;

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
    /// Unmounts once the mount's queued writes are on the server (`force`: at once,
    /// dropping what is not).
    Unmount {
        target: String,
        lazy: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        force: bool,
    },
    Status,
    /// Stream every state change until the client hangs up.
    Watch,
    Reconnect {
        target: String,
        /// The client can ask its user questions (it has a terminal).
        #[serde(default, skip_serializing_if = "is_false")]
        interactive: bool,
    },
    /// Empties a mount's offline cache.
    ClearCache {
        target: String,
    },
    /// The user's answer to the agent's last `Prompt` (`None`: they would not say).
    Answer {
        answer: Option<Typed>,
    },
}

/// What the user typed in answer to a `Prompt`: a password, a passphrase, a code. Wiped
/// from memory when dropped, and never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Typed(Zeroizing<String>);

impl Typed {
    pub fn new(text: Zeroizing<String>) -> Typed {
        Typed(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> Zeroizing<String> {
        self.0
    }
}

impl std::fmt::Debug for Typed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<typed>")
    }
}

impl Serialize for Typed {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Typed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Typed, D::Error> {
        String::deserialize(d).map(|t| Typed(Zeroizing::new(t)))
    }
}

/// An `Answer` line as the agent reads it: straight into its fields, as `Envelope`'s
/// flattened, tagged body would be read through copies that are never wiped.
#[derive(Deserialize)]
pub struct AnswerLine {
    pub version: u32,
    pub request: String,
    #[serde(default)]
    pub answer: Option<Typed>,
}

impl AnswerLine {
    /// The answer the line carries (`Some(None)`: the user would not say); `None` for a
    /// line that is no answer of this protocol.
    pub fn parse(line: &[u8]) -> Option<Option<Typed>> {
        match serde_json::from_slice::<AnswerLine>(line) {
            Ok(l) if l.version == PROTOCOL_VERSION && l.request == "answer" => Some(l.answer),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    /// `already` is true when the same remote was mounted there before.
    Mounted {
        mount: MountInfo,
        already: bool,
    },
    /// `lost`: written data that never reached the server (after `force`).
    Unmounted {
        mount: MountInfo,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lost: Option<AtStake>,
    },
    /// Before `Unmounted`: writes still on their way to the server, sent as they go.
    Draining {
        mount: String,
        at_stake: AtStake,
        /// Whether the link is moving data (else it is down, and the unmount waits only
        /// a while before refusing).
        moving: bool,
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
    /// The mount's offline cache is empty; `mount` shows it so.
    CacheCleared {
        mount: MountInfo,
    },
    /// A question from the server (or a key file) for the user: the client asks it on
    /// its terminal (without echo unless `echo`) and sends the `Answer`.
    Prompt {
        text: String,
        echo: bool,
    },
    Error {
        error: MoorError,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountRequest {
    pub dest: DestinationSpec,
    /// As the user gave it: empty for the remote home, relative to it, or absolute.
    pub remote_path: String,
    pub mountpoint: PathBuf,
    pub name: Option<String>,
    pub link: LinkSettings,
    /// Longest any filesystem call may take.
    pub call_timeout: Duration,
    /// How long attributes and listings are trusted (zero: always ask the server).
    pub cache_timeout: Duration,
    /// Largest read-ahead window per open file, in bytes (zero: no read-ahead).
    pub read_ahead: u64,
    /// Keep retrying a host that refuses or does not answer for this long (`--wait`).
    pub wait: Option<Duration>,
    /// Log detail for the mount's log file.
    pub verbose: u8,
    /// Other local users (and root) may use the mount (`--allow-other`).
    #[serde(default)]
    pub allow_other: bool,
    /// Whether the remote login user's files show as the local user's (`--idmap`).
    #[serde(default)]
    pub idmap: IdMap,
    /// The local uid and gid they show as (`--uid`, `--gid`); unset: the user's own.
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    /// The client can ask its user questions (it has a terminal): passphrases,
    /// passwords, one-time codes.
    #[serde(default)]
    pub interactive: bool,
    /// Every modifying call fails with EROFS, and nothing is sent (`--read-only`).
    #[serde(default)]
    pub read_only: bool,
    /// Root may use the mount too (`--allow-root`).
    #[serde(default)]
    pub allow_root: bool,
    /// The kernel checks mode bits before each access (`--default-permissions`).
    #[serde(default)]
    pub default_permissions: bool,
    /// Symlinks show as what they point to (`--follow-symlinks`).
    #[serde(default)]
    pub follow_symlinks: bool,
    /// Permission bits taken away from every file's mode as shown (`--umask`).
    #[serde(default)]
    pub umask: Option<u32>,
    /// Programs on the mount may not be executed (`-o noexec`).
    #[serde(default)]
    pub no_exec: bool,
    /// Bytes the offline cache may hold (`--offline-cache`); `None`: no offline cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_cache: Option<u64>,
    /// Where offline caches live (`--offline-cache-dir`, or the default the client
    /// found); one directory per destination and remote path inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_cache_dir: Option<PathBuf>,
}

impl MountRequest {
    /// Where the link layer is to connect for this mount.
    pub fn destination(&self) -> Destination {
        self.dest.clone().into()
    }

    /// How the link layer is to keep this mount's link.
    pub fn link_options(&self) -> LinkOptions {
        self.link.clone().into()
    }
}

/// A fully resolved SSH destination as the wire carries it (see `link::Destination`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationSpec {
    /// The host as the user wrote it (a config alias or a name).
    pub alias: String,
    pub host_name: String,
    pub port: u16,
    pub user: String,
    pub identity_files: Vec<PathBuf>,
    pub identities_only: bool,
    #[serde(default)]
    pub certificate_files: Vec<PathBuf>,
    /// Files checked for the host key; new keys are recorded in the first.
    pub known_hosts: Vec<PathBuf>,
    pub global_known_hosts: Vec<PathBuf>,
    pub host_key_policy: HostKeyCheck,
    pub connect_timeout: Duration,
    pub agent_socket: Option<PathBuf>,
    #[serde(default)]
    pub host_key_alias: Option<String>,
    #[serde(default)]
    pub address_family: Family,
    #[serde(default)]
    pub server_alive: Option<(Duration, u32)>,
    #[serde(default)]
    pub proxy_command: Option<String>,
    #[serde(default)]
    pub login: LoginSettings,
    #[serde(default)]
    pub host_keys: HostKeySettings,
}

/// Which host keys may prove the server (see `link::config::HostKeyPrefs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKeySettings {
    pub algorithms: Vec<String>,
    pub ca_signature_algorithms: Vec<String>,
    pub revoked: Option<PathBuf>,
}

impl Default for HostKeySettings {
    fn default() -> Self {
        HostKeyPrefs::default().into()
    }
}

/// Which login methods the config allows (see `link::config::LoginPrefs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginSettings {
    pub pubkey: bool,
    pub keyboard_interactive: bool,
    pub password: bool,
    pub batch_mode: bool,
    pub password_prompts: u32,
}

impl Default for LoginSettings {
    fn default() -> Self {
        LoginPrefs::default().into()
    }
}

/// Which addresses to dial (see `link::config::AddressFamily`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    #[default]
    Any,
    Inet,
    Inet6,
}

impl From<AddressFamily> for Family {
    fn from(f: AddressFamily) -> Family {
        match f {
            AddressFamily::Any => Family::Any,
            AddressFamily::Inet => Family::Inet,
            AddressFamily::Inet6 => Family::Inet6,
        }
    }
}

impl From<Family> for AddressFamily {
    fn from(f: Family) -> AddressFamily {
        match f {
            Family::Any => AddressFamily::Any,
            Family::Inet => AddressFamily::Inet,
            Family::Inet6 => AddressFamily::Inet6,
        }
    }
}

/// What to do with a host key that known_hosts does not have (see `link::config::HostKeyPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyCheck {
    Strict,
    AcceptNew,
}

/// How the mount's link is watched and restored, as the wire carries it (see
/// `link::LinkOptions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSettings {
    pub heartbeat_interval: Duration,
    pub max_heartbeat_failures: u32,
    pub request_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub stable_after: Duration,
    pub reconnect_timeout: Duration,
    pub reconnect: bool,
    pub connections: usize,
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
    pub connections: Vec<ConnectionInfo>,
    /// The mount's own log file.
    pub log: Option<PathBuf>,
    /// The command the connections go through (`ProxyCommand`, or `ProxyJump` as run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Written data given up for good: files lost after a reconnect (renamed, replaced
    /// or changed on the server while the link was down), or a link that failed for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<AtStake>,
    /// The offline cache, when the mount has one (`--offline-cache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_cache: Option<OfflineCacheInfo>,
    /// Changes made while the link was down, waiting to be replayed on the server
    /// (with `--offline-cache`, when there are any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingInfo>,
    /// Changes the server's state did not let replay apply as made, since the mount began.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<ConflictInfo>,
}

/// What one pooled connection has been doing, as the wire carries it (see
/// `link::ConnStats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    pub connected_at: Timestamp,
    pub last_activity: Timestamp,
    pub operations: u64,
    pub idle_secs: f64,
}

// The conversions to and from the link layer's types take every field apart by name on
// both sides: a field added to either fails to compile here, instead of silently going
// missing from the wire.

/// `From` between a link type and its wire twin, field by field. Every field is named on
/// both sides, so a field added to either type fails to compile until it is handled here.
macro_rules! wire_twin {
    ($link:ident <=> $wire:ident { $($field:ident),* $(,)? }) => {
        wire_twin!($link => $wire { $($field),* });
        wire_twin!($wire => $link { $($field),* });
    };
    ($from:ident => $to:ident { $($field:ident),* $(,)? }) => {
        impl From<$from> for $to {
            #[allow(clippy::useless_conversion)]
            fn from(value: $from) -> $to {
                let $from { $($field),* } = value;
                $to { $($field: $field.into()),* }
            }
        }
    };
}

wire_twin!(Destination <=> DestinationSpec {
    alias,
    host_name,
    port,
    user,
    identity_files,
    identities_only,
    certificate_files,
    known_hosts,
    global_known_hosts,
    host_key_policy,
    connect_timeout,
    agent_socket,
    host_key_alias,
    address_family,
    server_alive,
    proxy_command,
    login,
    host_keys,
});

wire_twin!(HostKeyPrefs <=> HostKeySettings { algorithms, ca_signature_algorithms, revoked });

wire_twin!(LoginPrefs <=> LoginSettings { pubkey, keyboard_interactive, password, batch_mode, password_prompts });

wire_twin!(LinkOptions <=> LinkSettings {
    heartbeat_interval,
    max_heartbeat_failures,
    request_timeout,
    backoff_base,
    backoff_cap,
    stable_after,
    reconnect_timeout,
    reconnect,
    connections,
});

wire_twin!(ConnStats => ConnectionInfo { connected_at, last_activity, operations, idle_secs });

impl From<HostKeyPolicy> for HostKeyCheck {
    fn from(p: HostKeyPolicy) -> HostKeyCheck {
        match p {
            HostKeyPolicy::Strict => HostKeyCheck::Strict,
            HostKeyPolicy::AcceptNew => HostKeyCheck::AcceptNew,
        }
    }
}

impl From<HostKeyCheck> for HostKeyPolicy {
    fn from(c: HostKeyCheck) -> HostKeyPolicy {
        match c {
            HostKeyCheck::Strict => HostKeyPolicy::Strict,
            HostKeyCheck::AcceptNew => HostKeyPolicy::AcceptNew,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What a mount's offline cache holds, and how it has served since the mount began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineCacheInfo {
    /// Bytes its directory holds, index included; never over `limit`.
    pub bytes: u64,
    pub limit: u64,
    /// Files with content in it.
    pub files: u64,
    /// Blocks served from it, and blocks looked for and not found.
    pub hits: u64,
    pub misses: u64,
}

/// Changes made while the link was down and not yet on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingInfo {
    pub changes: u64,
    /// Files written, and their bytes.
    pub files: u64,
    pub bytes: u64,
}

/// Written data not yet on the server: how much, and of which files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtStake {
    pub bytes: u64,
    /// Remote paths of the files, where they are (renames through the mount followed).
    pub files: Vec<String>,
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
    /// Unmounting would drop written data that is not on the server yet.
    DataAtStake,
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
            ErrorKind::DataAtStake => 10,
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
            LinkError::AuthRefused { .. } | LinkError::NeedsLogin { .. } => ErrorKind::Auth,
            LinkError::HostKeyUnknown { .. }
            | LinkError::HostKeyChanged { .. }
            | LinkError::HostKeyRevoked { .. }
            | LinkError::HostCertificateInvalid { .. }
            | LinkError::HostKeyUnverifiable { .. } => ErrorKind::HostKey,
            _ => ErrorKind::Connect,
        };
        MoorError::new(kind, e.to_string())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn request_roundtrip() {
        let r = Envelope {
            version: PROTOCOL_VERSION,
            body: Request::Unmount { target: "/m".into(), lazy: true, force: false },
        };
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains("\"request\":\"unmount\""));
        let back: Envelope<Request> = serde_json::from_str(&line).unwrap();
        assert!(matches!(back.body, Request::Unmount { lazy: true, .. }));
    }

    // The wire text of every request and response is pinned here: a CLI and an agent of
    // different builds must keep understanding each other, so a change to this text needs
    // a new PROTOCOL_VERSION, never a silent edit.

    /// Encodes `body` as it goes on the wire, checks the exact text, and checks that the
    /// text decodes to the same thing.
    fn pin<T: Serialize + serde::de::DeserializeOwned>(body: T, wire: &str) {
        let line = serde_json::to_string(&Envelope { version: PROTOCOL_VERSION, body }).unwrap();
        assert_eq!(line, wire);
        let back: Envelope<T> = serde_json::from_str(wire).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), wire);
    }

    fn sample_mount_request() -> MountRequest {
        MountRequest {
            dest: DestinationSpec {
                alias: "box".into(),
                host_name: "box.example".into(),
                port: 2222,
                user: "alice".into(),
                identity_files: vec!["/home/alice/.ssh/id_ed25519".into()],
                identities_only: true,
                certificate_files: vec![],
                known_hosts: vec!["/home/alice/.ssh/known_hosts".into()],
                global_known_hosts: vec!["/etc/ssh/ssh_known_hosts".into()],
                host_key_policy: HostKeyCheck::AcceptNew,
                connect_timeout: Duration::from_secs(10),
                agent_socket: Some("/run/user/1000/ssh-agent".into()),
                host_key_alias: None,
                address_family: Family::Any,
                server_alive: None,
                proxy_command: None,
                login: LoginSettings::default(),
                host_keys: HostKeySettings {
                    algorithms: vec!["ssh-ed25519".into()],
                    ca_signature_algorithms: vec!["ssh-ed25519".into()],
                    revoked: Some("/home/alice/.ssh/revoked_keys".into()),
                },
            },
            remote_path: "src".into(),
            mountpoint: "/home/alice/src".into(),
            name: Some("box-src".into()),
            link: LinkSettings {
                heartbeat_interval: Duration::from_secs(1),
                max_heartbeat_failures: 3,
                request_timeout: Duration::from_secs(2),
                backoff_base: Duration::from_millis(500),
                backoff_cap: Duration::from_secs(30),
                stable_after: Duration::from_secs(10),
                reconnect_timeout: Duration::from_secs(5),
                reconnect: true,
                connections: 4,
            },
            call_timeout: Duration::from_secs(3),
            cache_timeout: Duration::from_secs(5),
            read_ahead: 16 << 20,
            wait: Some(Duration::from_millis(1500)),
            verbose: 1,
            allow_other: false,
            idmap: IdMap::User,
            uid: None,
            gid: None,
            interactive: false,
            read_only: true,
            allow_root: false,
            default_permissions: true,
            follow_symlinks: false,
            umask: Some(0o022),
            no_exec: false,
            offline_cache: None,
            offline_cache_dir: None,
        }
    }

    pub(crate) fn sample_mount_info() -> MountInfo {
        MountInfo {
            name: "box-src".into(),
            mountpoint: "/home/alice/src".into(),
            remote: "alice@box:/home/alice/src".into(),
            status: MountStatus::Active,
            since: Timestamp(1_000),
            rtt_ms: Some(12.5),
            reconnects: 2,
            open_handles: 3,
            bytes_read: 4096,
            bytes_written: 512,
            connections: vec![
                ConnectionInfo {
                    connected_at: Timestamp(1_000),
                    last_activity: Timestamp(2_500),
                    operations: 42,
                    idle_secs: 1.5,
                },
                ConnectionInfo {
                    connected_at: Timestamp(1_000),
                    last_activity: Timestamp(1_000),
                    operations: 0,
                    idle_secs: 3.0,
                },
            ],
            log: Some("/home/alice/.local/state/moor/logs/box-src.log".into()),
            via: None,
            lost: None,
            offline_cache: None,
            pending: None,
            conflicts: Vec::new(),
        }
    }

    /// The wire text of `sample_mount_info()`, `$conns` being its connections.
    macro_rules! mount_info_wire {
        ($($conns:tt)+) => {
            concat!(
                r#"{"name":"box-src","mountpoint":"/home/alice/src","remote":"alice@box:/home/alice/src","#,
                r#""status":{"state":"active"},"since":"1970-01-01T00:00:01.000Z","rtt_ms":12.5,"reconnects":2,"#,
                r#""open_handles":3,"bytes_read":4096,"bytes_written":512,"connections":"#,
                $($conns)+,
                r#","log":"/home/alice/.local/state/moor/logs/box-src.log"}"#
            )
        };
        () => {
            mount_info_wire!(concat!(
                r#"[{"connected_at":"1970-01-01T00:00:01.000Z","last_activity":"1970-01-01T00:00:02.500Z","#,
                r#""operations":42,"idle_secs":1.5},"#,
                r#"{"connected_at":"1970-01-01T00:00:01.000Z","last_activity":"1970-01-01T00:00:01.000Z","#,
                r#""operations":0,"idle_secs":3.0}]"#
            ))
        };
    }

    #[test]
    fn requests_on_the_wire() {
        pin(
            Request::Mount(Box::new(sample_mount_request())),
            concat!(
                r#"{"version":4,"request":"mount","#,
                r#""dest":{"alias":"box","host_name":"box.example","port":2222,"user":"alice","#,
                r#""identity_files":["/home/alice/.ssh/id_ed25519"],"identities_only":true,"certificate_files":[],"#,
                r#""known_hosts":["/home/alice/.ssh/known_hosts"],"global_known_hosts":["/etc/ssh/ssh_known_hosts"],"#,
                r#""host_key_policy":"accept-new","connect_timeout":{"secs":10,"nanos":0},"#,
                r#""agent_socket":"/run/user/1000/ssh-agent","host_key_alias":null,"address_family":"any","#,
                r#""server_alive":null,"proxy_command":null,"login":{"pubkey":true,"keyboard_interactive":true,"#,
                r#""password":true,"batch_mode":false,"password_prompts":3},"#,
                r#""host_keys":{"algorithms":["ssh-ed25519"],"ca_signature_algorithms":["ssh-ed25519"],"#,
                r#""revoked":"/home/alice/.ssh/revoked_keys"}},"#,
                r#""remote_path":"src","mountpoint":"/home/alice/src","name":"box-src","#,
                r#""link":{"heartbeat_interval":{"secs":1,"nanos":0},"max_heartbeat_failures":3,"#,
                r#""request_timeout":{"secs":2,"nanos":0},"backoff_base":{"secs":0,"nanos":500000000},"#,
                r#""backoff_cap":{"secs":30,"nanos":0},"stable_after":{"secs":10,"nanos":0},"#,
                r#""reconnect_timeout":{"secs":5,"nanos":0},"reconnect":true,"connections":4},"#,
                r#""call_timeout":{"secs":3,"nanos":0},"cache_timeout":{"secs":5,"nanos":0},"#,
                r#""read_ahead":16777216,"wait":{"secs":1,"nanos":500000000},"verbose":1,"#,
                r#""allow_other":false,"idmap":"user","uid":null,"gid":null,"interactive":false,"#,
                r#""read_only":true,"allow_root":false,"default_permissions":true,"follow_symlinks":false,"#,
                r#""umask":18,"no_exec":false}"#
            ),
        );
        pin(
            Request::Unmount { target: "/home/alice/src".into(), lazy: true, force: false },
            r#"{"version":4,"request":"unmount","target":"/home/alice/src","lazy":true}"#,
        );
        pin(
            Request::Unmount { target: "/home/alice/src".into(), lazy: false, force: true },
            r#"{"version":4,"request":"unmount","target":"/home/alice/src","lazy":false,"force":true}"#,
        );
        pin(Request::Status, r#"{"version":4,"request":"status"}"#);
        pin(Request::Watch, r#"{"version":4,"request":"watch"}"#);
        pin(
            Request::Reconnect { target: "box-src".into(), interactive: false },
            r#"{"version":4,"request":"reconnect","target":"box-src"}"#,
        );
        pin(
            Request::Reconnect { target: "box-src".into(), interactive: true },
            r#"{"version":4,"request":"reconnect","target":"box-src","interactive":true}"#,
        );
        pin(
            Request::ClearCache { target: "box-src".into() },
            r#"{"version":4,"request":"clear_cache","target":"box-src"}"#,
        );
        let typed = Typed::new(Zeroizing::new("123456".into()));
        pin(Request::Answer { answer: Some(typed.clone()) }, r#"{"version":4,"request":"answer","answer":"123456"}"#);
        assert_eq!(AnswerLine::parse(br#"{"version":4,"request":"answer","answer":"123456"}"#), Some(Some(typed)));
        assert_eq!(AnswerLine::parse(br#"{"version":4,"request":"answer","answer":null}"#), Some(None));
        assert_eq!(AnswerLine::parse(br#"{"version":4,"request":"status"}"#), None);
        assert_eq!(AnswerLine::parse(br#"{"version":3,"request":"answer","answer":"1"}"#), None);
        assert_eq!(AnswerLine::parse(b"garbage"), None);
        pin(Request::Answer { answer: None }, r#"{"version":4,"request":"answer","answer":null}"#);
    }

    #[test]
    fn responses_on_the_wire() {
        pin(
            Response::Mounted { mount: sample_mount_info(), already: false },
            concat!(r#"{"version":4,"response":"mounted","mount":"#, mount_info_wire!(), r#","already":false}"#),
        );
        pin(
            Response::Unmounted { mount: MountInfo { connections: Vec::new(), ..sample_mount_info() }, lost: None },
            concat!(r#"{"version":4,"response":"unmounted","mount":"#, mount_info_wire!("[]"), "}"),
        );
        let lost = AtStake { bytes: 4096, files: vec!["/srv/a".into()] };
        pin(
            Response::Unmounted {
                mount: MountInfo { connections: Vec::new(), ..sample_mount_info() },
                lost: Some(lost.clone()),
            },
            concat!(
                r#"{"version":4,"response":"unmounted","mount":"#,
                mount_info_wire!("[]"),
                r#","lost":{"bytes":4096,"files":["/srv/a"]}}"#
            ),
        );
        pin(
            Response::Draining { mount: "box-src".into(), at_stake: lost, moving: true },
            r#"{"version":4,"response":"draining","mount":"box-src","at_stake":{"bytes":4096,"files":["/srv/a"]},"moving":true}"#,
        );
        pin(
            Response::Status { mounts: vec![sample_mount_info()] },
            concat!(r#"{"version":4,"response":"status","mounts":["#, mount_info_wire!(), "]}"),
        );
        pin(Response::Watching { mounts: Vec::new() }, r#"{"version":4,"response":"watching","mounts":[]}"#);
        let event = StatusEvent {
            mount: "box-src".into(),
            at: Timestamp(3_000),
            old: MountStatus::Active,
            new: MountStatus::Reconnecting {
                attempt: 1,
                since: Timestamp(3_000),
                next_attempt_at: Timestamp(3_500),
                last_error: "2 heartbeats missed".into(),
            },
            conflict: None,
        };
        pin(
            Response::Event { event },
            concat!(
                r#"{"version":4,"response":"event","event":{"mount":"box-src","at":"1970-01-01T00:00:03.000Z","#,
                r#""old":{"state":"active"},"new":{"state":"reconnecting","attempt":1,"#,
                r#""since":"1970-01-01T00:00:03.000Z","next_attempt_at":"1970-01-01T00:00:03.500Z","#,
                r#""last_error":"2 heartbeats missed"}}}"#
            ),
        );
        let conflict = ConflictInfo {
            path: "/srv/notes".into(),
            kept_as: Some("/srv/notes.conflict-laptop-19700101-000003".into()),
            reason: "changed on the server while changed here".into(),
            at: Timestamp(3_000),
        };
        let event = StatusEvent {
            mount: "box-src".into(),
            at: Timestamp(3_000),
            old: MountStatus::Active,
            new: MountStatus::Active,
            conflict: Some(conflict),
        };
        pin(
            Response::Event { event },
            concat!(
                r#"{"version":4,"response":"event","event":{"mount":"box-src","at":"1970-01-01T00:00:03.000Z","#,
                r#""old":{"state":"active"},"new":{"state":"active"},"conflict":{"path":"/srv/notes","#,
                r#""kept_as":"/srv/notes.conflict-laptop-19700101-000003","#,
                r#""reason":"changed on the server while changed here","at":"1970-01-01T00:00:03.000Z"}}}"#
            ),
        );
        pin(
            Response::Reconnected { mount: sample_mount_info(), outcome: "reconnected".into() },
            concat!(
                r#"{"version":4,"response":"reconnected","mount":"#,
                mount_info_wire!(),
                r#","outcome":"reconnected"}"#
            ),
        );
        let error = MoorError::new(ErrorKind::NotMounted, "'x' is not a moor mount");
        pin(
            Response::Error { error },
            r#"{"version":4,"response":"error","error":{"kind":"not_mounted","message":"'x' is not a moor mount"}}"#,
        );
    }

    /// A registry written before read-only and sharing options existed still reads: the
    /// mount comes back as it was made.
    #[test]
    fn a_mount_request_without_the_newer_options_reads_as_before() {
        let mut old = serde_json::to_value(sample_mount_request()).unwrap();
        let fields = ["read_only", "allow_root", "default_permissions", "follow_symlinks", "umask", "no_exec"];
        for f in fields {
            old.as_object_mut().unwrap().remove(f);
        }
        let back: MountRequest = serde_json::from_value(old).unwrap();
        assert!(!back.read_only && !back.allow_root && !back.default_permissions && !back.follow_symlinks);
        assert_eq!((back.umask, back.no_exec), (None, false));
    }

    #[test]
    fn link_types_convert_both_ways_unchanged() {
        let dest = Destination::from(sample_mount_request().dest);
        assert_eq!(Destination::from(DestinationSpec::from(dest.clone())), dest);
        let opts = LinkOptions::default();
        assert_eq!(LinkOptions::from(LinkSettings::from(opts.clone())), opts);
        let conn = sample_mount_info().connections[0].clone();
        let stats = ConnStats {
            connected_at: conn.connected_at,
            last_activity: conn.last_activity,
            operations: conn.operations,
            idle_secs: conn.idle_secs,
        };
        assert_eq!(ConnectionInfo::from(stats), conn);
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
