//! moor's side of an SSH handshake: the host key check, against `known_hosts` as
//! OpenSSH does it, with what it decided kept for the error a refused handshake reports.

use std::sync::{Arc, Mutex};

use russh::client;
use russh::keys::{PublicKey, PublicKeyOrCertificate};

use super::config::Destination;
use super::known_hosts::{self, Verdict};

/// What the host key check decided: the key the server showed and the verdict on it.
pub(super) type Decided = Arc<Mutex<Option<(PublicKey, Verdict)>>>;

pub(super) struct Handler {
    dest: Arc<Destination>,
    /// What the host key check decided, read back when the handshake fails.
    verdict: Decided,
}

impl Handler {
    pub(super) fn new(dest: Arc<Destination>) -> Handler {
        Handler { dest, verdict: Arc::default() }
    }

    /// Where the host key check's verdict will be, once the handshake has asked.
    pub(super) fn verdict(&self) -> Decided {
        self.verdict.clone()
    }
}

impl client::Handler for Handler {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let verdict = known_hosts::check(&self.dest, key);
        let key = key.public_key();
        let ok = matches!(verdict, Verdict::Known | Verdict::Learned);
        if let Ok(mut v) = self.verdict.lock() {
            *v = Some((key, verdict));
        }
        Ok(ok)
    }
}
