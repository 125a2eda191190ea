//! Host key checks against known_hosts files, as OpenSSH does them: a key found is
//! trusted, a different key of the same type is refused, an unknown key is refused or
//! recorded according to the policy. Checking is never skipped.

use std::path::{Path, PathBuf};

use russh::keys::{HashAlg, PublicKey};

use super::config::{Destination, HostKeyPolicy};
use super::error::LinkError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Known,
    Learned,
    Unknown,
    Changed { file: PathBuf, line: usize },
    Error(String),
}

pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn check_file(host: &str, port: u16, key: &PublicKey, file: &Path) -> Verdict {
    match russh::keys::check_known_hosts_path(host, port, key, file) {
        Ok(true) => Verdict::Known,
        Ok(false) => Verdict::Unknown,
        Err(russh::keys::Error::KeyChanged { line }) => Verdict::Changed { file: file.to_path_buf(), line },
        Err(e) => Verdict::Error(format!("{}: {e}", file.display())),
    }
}

/// The name and port known_hosts is searched for: the host, or its `HostKeyAlias`
/// (which stands for host and port both, as in ssh).
fn key_name(dest: &Destination) -> (&str, u16) {
    match &dest.host_key_alias {
        Some(alias) => (alias, 22),
        None => (&dest.host_name, dest.port),
    }
}

/// Checks `key` for `dest`, recording it when the policy allows a new key.
pub fn check(dest: &Destination, key: &PublicKey) -> Verdict {
    let files = dest.known_hosts.iter().chain(dest.global_known_hosts.iter());
    let (name, port) = key_name(dest);
    let mut known = false;
    for f in files {
        match check_file(name, port, key, f) {
            Verdict::Known => known = true,
            Verdict::Unknown => {}
            other => return other,
        }
    }
    if known {
        return Verdict::Known;
    }
    match (dest.host_key_policy, dest.known_hosts.first()) {
        (HostKeyPolicy::AcceptNew, Some(file)) => {
            match russh::keys::known_hosts::learn_known_hosts_path(name, port, key, file) {
                Ok(()) => {
                    tracing::warn!(host = %dest.host_name, fingerprint = %fingerprint(key), file = %file.display(), "recorded new host key");
                    Verdict::Learned
                }
                Err(e) => Verdict::Error(format!("cannot record the host key in {}: {e}", file.display())),
            }
        }
        _ => Verdict::Unknown,
    }
}

/// The error to report for a verdict that does not let the connection go on.
pub fn refusal(dest: &Destination, key: &PublicKey, verdict: &Verdict) -> Option<LinkError> {
    let host = dest.host_name.clone();
    match verdict {
        Verdict::Known | Verdict::Learned => None,
        Verdict::Unknown => Some(LinkError::HostKeyUnknown {
            host,
            port: dest.port,
            fingerprint: fingerprint(key),
            known_hosts: dest
                .known_hosts
                .first()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "~/.ssh/known_hosts".into()),
        }),
        Verdict::Changed { file, line } => {
            Some(LinkError::HostKeyChanged { host, fingerprint: fingerprint(key), file: file.clone(), line: *line })
        }
        Verdict::Error(detail) => Some(LinkError::HostKeyUnverifiable { host, detail: detail.clone() }),
    }
}
