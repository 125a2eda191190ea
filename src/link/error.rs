//! Why a link could not be made or was lost, classified for retrying.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LinkError {
    #[error("cannot resolve host name '{host}': {detail}; check the name or its HostName in your ssh config")]
    Resolve { host: String, detail: String },
    #[error("connection to {addr} refused: is sshd running there, and on that port?")]
    Refused { addr: String },
    #[error(
        "no answer from {addr} within {secs}s (ConnectTimeout); check the network or raise it with -o ConnectTimeout=N"
    )]
    ConnectTimeout { addr: String, secs: u64 },
    #[error("cannot reach {addr}: {detail}")]
    Unreachable { addr: String, detail: String },
    #[error(
        "host key for {host} is not known (it offers {fingerprint}); if you trust it, add it with \
         `ssh-keyscan -p {port} {host} >> {known_hosts}` or mount once with -o StrictHostKeyChecking=accept-new"
    )]
    HostKeyUnknown { host: String, port: u16, fingerprint: String, known_hosts: String },
    #[error(
        "HOST KEY FOR {host} HAS CHANGED (it now offers {fingerprint}; {file} line {line} has another): \
         someone may be intercepting the connection. If the server was reinstalled, remove the old key \
         with `ssh-keygen -R {host}` and try again"
    )]
    HostKeyChanged { host: String, fingerprint: String, file: PathBuf, line: usize },
    #[error(
        "HOST KEY FOR {host} IS REVOKED ({fingerprint} is revoked by {file} line {line}, an @revoked line \
         of known_hosts or a RevokedHostKeys file): it must never be trusted; the server may be compromised, \
         or its key was retired. Ask the host's administrator for its current key, and keep that line"
    )]
    HostKeyRevoked { host: String, fingerprint: String, file: PathBuf, line: usize },
    #[error(
        "the host certificate of {host} is refused: {reason}. It is signed by a CA your known_hosts \
         trusts (@cert-authority); ask the host's administrator for a valid one, e.g. \
         `ssh-keygen -s CA_KEY -h -n {principal} HOST_KEY.pub`"
    )]
    HostCertificateInvalid { host: String, principal: String, reason: String },
    #[error("cannot check the host key of {host}: {detail}")]
    HostKeyUnverifiable { host: String, detail: String },
    #[error("{user}@{host} refused every key offered ({tried}); check -i/IdentityFile, ssh-agent, and the server's authorized_keys{hint}")]
    AuthRefused { user: String, host: String, tried: String, hint: String },
    #[error(
        "{user}@{host} asks for a {method} and there is no terminal to ask on: run `moor mount` in a terminal \
         (`moor reconnect` for a mount waiting for a login), or log in with a key (ssh-add, -i)"
    )]
    NeedsLogin { user: String, host: String, method: String },
    #[error("the server does not offer SFTP ({detail}); enable the sftp Subsystem in its sshd_config")]
    NoSftp { detail: String },
    #[error("ssh protocol error with {host}: {detail}")]
    Protocol { host: String, detail: String },
    #[error("connection to {host} lost: {detail}")]
    Lost { host: String, detail: String },
}

impl LinkError {
    /// Whether trying again later may succeed without anyone changing anything.
    /// A host that is booting refuses or does not answer; one that has no route or no
    /// name will not come by waiting.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LinkError::Refused { .. }
                | LinkError::ConnectTimeout { .. }
                | LinkError::Lost { .. }
                | LinkError::Protocol { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(LinkError::Refused { addr: "a".into() }.is_transient());
        assert!(LinkError::ConnectTimeout { addr: "a".into(), secs: 1 }.is_transient());
        assert!(!LinkError::AuthRefused { user: "u".into(), host: "h".into(), tried: "k".into(), hint: String::new() }
            .is_transient());
        let changed =
            LinkError::HostKeyChanged { host: "h".into(), fingerprint: "f".into(), file: "k".into(), line: 1 };
        assert!(!changed.is_transient());
        assert!(changed.to_string().contains("HAS CHANGED"));
        let revoked =
            LinkError::HostKeyRevoked { host: "h".into(), fingerprint: "f".into(), file: "k".into(), line: 2 };
        assert!(!revoked.is_transient());
        assert!(revoked.to_string().contains("REVOKED") && revoked.to_string().contains("k line 2"));
        assert!(!LinkError::Resolve { host: "h".into(), detail: "d".into() }.is_transient());
    }
}
