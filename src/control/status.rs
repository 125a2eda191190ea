//! The health of each mount as a typed state, and the per-mount monitor that turns the
//! link's state changes into `MountStatus` events for any number of subscribers.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::link::LinkState;
use crate::remote::sftp::SftpLink;
pub use crate::timestamp::Timestamp;

/// The state of one mount, the same in code, CLI output and JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MountStatus {
    Connecting,
    Active,
    Reconnecting {
        attempt: u32,
        since: Timestamp,
        next_attempt_at: Timestamp,
        last_error: String,
    },
    Failed {
        reason: String,
    },
    /// The server wants a person to log in (a fresh one-time code): `moor reconnect`
    /// from a terminal asks and brings the mount back.
    NeedsLogin {
        method: String,
        since: Timestamp,
    },
    Unmounted,
}

impl std::fmt::Display for MountStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MountStatus::Connecting => write!(f, "connecting"),
            MountStatus::Active => write!(f, "active"),
            MountStatus::Reconnecting { attempt, next_attempt_at, last_error, .. } => {
                let next = next_attempt_at.until().as_secs_f64();
                write!(f, "reconnecting (attempt {attempt}, next in {next:.1}s: {last_error})")
            }
            MountStatus::Failed { reason } => write!(f, "failed: {reason}"),
            MountStatus::NeedsLogin { method, .. } => {
                write!(f, "needs login (the server asks for a {method}): run `moor reconnect`")
            }
            MountStatus::Unmounted => write!(f, "unmounted"),
        }
    }
}

impl MountStatus {
    /// The same state without the details that change on every retry.
    pub fn same_kind(&self, other: &MountStatus) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }

    /// The state's name, as the JSON `state` field spells it (one name everywhere:
    /// scripts compare hook variables and JSON alike).
    pub fn name(&self) -> &'static str {
        match self {
            MountStatus::Connecting => "connecting",
            MountStatus::Active => "active",
            MountStatus::Reconnecting { .. } => "reconnecting",
            MountStatus::Failed { .. } => "failed",
            MountStatus::NeedsLogin { .. } => "needs_login",
            MountStatus::Unmounted => "unmounted",
        }
    }

    /// Why the mount is in this state, for states that have a reason: the last error
    /// while reconnecting, the reason it failed, the login method the server asks for.
    pub fn detail(&self) -> Option<&str> {
        match self {
            MountStatus::Reconnecting { last_error, .. } => Some(last_error),
            MountStatus::Failed { reason } => Some(reason),
            MountStatus::NeedsLogin { method, .. } => Some(method),
            MountStatus::Connecting | MountStatus::Active | MountStatus::Unmounted => None,
        }
    }
}

impl From<&LinkState> for MountStatus {
    fn from(s: &LinkState) -> MountStatus {
        match s {
            LinkState::Up { .. } => MountStatus::Active,
            LinkState::Down { since, attempt, next_attempt_at, last_error } => MountStatus::Reconnecting {
                attempt: *attempt,
                since: Timestamp::from(*since),
                next_attempt_at: Timestamp::from(*next_attempt_at),
                last_error: last_error.clone(),
            },
            LinkState::Failed { reason } => MountStatus::Failed { reason: reason.clone() },
            LinkState::NeedsLogin { method, since } => {
                MountStatus::NeedsLogin { method: method.clone(), since: Timestamp::from(*since) }
            }
            LinkState::Closed => MountStatus::Unmounted,
        }
    }
}

/// A change made while the link was down that replay could not apply as made: the
/// server's version stays at `path`; the local one, if it could be kept, is at `kept_as`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictInfo {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_as: Option<String>,
    pub reason: String,
    pub at: Timestamp,
}

/// One state change of one mount, or a conflict found while its offline changes were
/// replayed (`conflict`; its state then stays what it was: `old` and `new` are the same).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEvent {
    pub mount: String,
    pub at: Timestamp,
    pub old: MountStatus,
    pub new: MountStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<ConflictInfo>,
}

/// Watches a mount's link and publishes each change of the mount's state.
pub struct Monitor {
    name: String,
    current: watch::Sender<(MountStatus, Timestamp)>,
    events: broadcast::Sender<StatusEvent>,
}

impl Monitor {
    pub fn start(name: String, link: &SftpLink) -> Arc<Monitor> {
        let initial = MountStatus::from(&link.state());
        let (current, _) = watch::channel((initial, Timestamp::now()));
        let (events, _) = broadcast::channel(256);
        let monitor = Arc::new(Monitor { name, current, events });
        let mut rx = link.subscribe();
        let m = monitor.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let next = MountStatus::from(&*rx.borrow_and_update());
                let ended = next == MountStatus::Unmounted;
                m.publish(next);
                if ended {
                    break;
                }
            }
        });
        monitor
    }

    /// Records a new state and tells subscribers, unless nothing changed.
    pub fn publish(&self, new: MountStatus) {
        let (old, _) = self.current.borrow().clone();
        if old == new {
            return;
        }
        let at = Timestamp::now();
        // The time in a state counts from when its kind began, not from each retry.
        let since = if old.same_kind(&new) { self.current.borrow().1 } else { at };
        self.current.send_replace((new.clone(), since));
        let _ = self.events.send(StatusEvent { mount: self.name.clone(), at, old, new, conflict: None });
    }

    /// Tells subscribers of a conflict found while replaying changes made offline.
    pub fn conflict(&self, conflict: ConflictInfo) {
        let (state, _) = self.current();
        let event = StatusEvent {
            mount: self.name.clone(),
            at: Timestamp::now(),
            old: state.clone(),
            new: state,
            conflict: Some(conflict),
        };
        let _ = self.events.send(event);
    }

    /// The current state and since when the mount has been in it.
    pub fn current(&self) -> (MountStatus, Timestamp) {
        self.current.borrow().clone()
    }

    /// Every change of state from now on, as events.
    pub fn subscribe(&self) -> broadcast::Receiver<StatusEvent> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_is_tagged_snake_case() {
        let s = MountStatus::Reconnecting {
            attempt: 3,
            since: Timestamp(1000),
            next_attempt_at: Timestamp(2500),
            last_error: "refused".into(),
        };
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["state"], "reconnecting");
        assert_eq!(j["attempt"], 3);
        assert_eq!(j["since"], "1970-01-01T00:00:01.000Z");
        let back: MountStatus = serde_json::from_value(j).unwrap();
        assert_eq!(back, s);
        assert_eq!(serde_json::to_value(MountStatus::Active).unwrap()["state"], "active");
        let f = serde_json::to_value(MountStatus::Failed { reason: "host key changed".into() }).unwrap();
        assert_eq!(f["reason"], "host key changed");
    }

    #[test]
    fn names_are_the_json_state_field() {
        let t = Timestamp(0);
        let all = [
            MountStatus::Connecting,
            MountStatus::Active,
            MountStatus::Reconnecting { attempt: 1, since: t, next_attempt_at: t, last_error: "e".into() },
            MountStatus::Failed { reason: "r".into() },
            MountStatus::NeedsLogin { method: "one-time code".into(), since: t },
            MountStatus::Unmounted,
        ];
        for s in all {
            assert_eq!(serde_json::to_value(&s).unwrap()["state"], s.name(), "{s:?}");
        }
    }

    #[test]
    fn link_states_map_to_mount_states() {
        let now = std::time::SystemTime::now();
        assert_eq!(MountStatus::from(&LinkState::Up { since: now }), MountStatus::Active);
        let down = LinkState::Down { since: now, attempt: 2, next_attempt_at: now, last_error: "x".into() };
        assert!(matches!(MountStatus::from(&down), MountStatus::Reconnecting { attempt: 2, .. }));
        assert_eq!(
            MountStatus::from(&LinkState::Failed { reason: "r".into() }),
            MountStatus::Failed { reason: "r".into() }
        );
        assert_eq!(MountStatus::from(&LinkState::Closed), MountStatus::Unmounted);
    }
}
