//! Who files show as owned by. A remote login user's uid means nothing on this machine:
//! by default (`--idmap user`, sshfs's `idmap=user`) the files of the remote user show
//! as the local user's, and a `chown` to the local ids is sent as the remote ones. Other
//! owners pass through as their numbers.

use serde::{Deserialize, Serialize};

/// How owners are presented.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdMap {
    /// The remote login user's files show as the local user's.
    #[default]
    User,
    /// Owners show as the server's numbers.
    None,
}

/// The mapping in force for one mount: a uid and a gid on each side, or none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owners {
    map: Option<Pair>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pair {
    remote: (u32, u32),
    local: (u32, u32),
}

impl Owners {
    /// Numbers pass through unchanged.
    pub fn none() -> Owners {
        Owners { map: None }
    }

    /// The remote `(uid, gid)` shows as the local `(uid, gid)`, and back.
    pub fn user(remote: (u32, u32), local: (u32, u32)) -> Owners {
        Owners { map: Some(Pair { remote, local }) }
    }

    /// The uid and gid to show for what the server reports.
    pub fn shown(&self, uid: u32, gid: u32) -> (u32, u32) {
        match self.map {
            Some(p) => (swap(uid, p.remote.0, p.local.0), swap(gid, p.remote.1, p.local.1)),
            None => (uid, gid),
        }
    }

    /// The uid and gid to send for what a program asked (`chown`).
    pub fn sent(&self, uid: Option<u32>, gid: Option<u32>) -> (Option<u32>, Option<u32>) {
        match self.map {
            Some(p) => (uid.map(|u| swap(u, p.local.0, p.remote.0)), gid.map(|g| swap(g, p.local.1, p.remote.1))),
            None => (uid, gid),
        }
    }
}

/// `id` as `to` when it is `from`; other ids are left alone, so that a file of another
/// remote user never shows as the local user's.
fn swap(id: u32, from: u32, to: u32) -> u32 {
    if id == from {
        to
    } else {
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_login_user_both_ways_and_nothing_else() {
        let o = Owners::user((1001, 1002), (500, 600));
        let shown = [((1001, 1002), (500, 600)), ((0, 0), (0, 0)), ((1001, 0), (500, 0)), ((500, 600), (500, 600))];
        for (server, want) in shown {
            assert_eq!(o.shown(server.0, server.1), want, "shown {server:?}");
        }
        assert_eq!(o.sent(Some(500), Some(600)), (Some(1001), Some(1002)));
        assert_eq!(o.sent(Some(0), None), (Some(0), None));
        assert_eq!(o.sent(None, Some(600)), (None, Some(1002)));
        let n = Owners::none();
        assert_eq!(n.shown(1001, 1002), (1001, 1002));
        assert_eq!(n.sent(Some(500), Some(600)), (Some(500), Some(600)));
    }
}
