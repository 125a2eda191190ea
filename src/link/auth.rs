//! Logging in as ssh does: keys first (ssh-agent's, then identity files, each with its
//! certificate), then keyboard-interactive and password, as far as the server allows.
//!
//! Invariants:
//! - Nothing here has a terminal. A question goes to an `Asker`: the `moor mount` or
//!   `moor reconnect` waiting on the agent's socket, which asks on its own terminal.
//!   Without one, a server that wants an answer fails the login at once, naming the
//!   method it wanted (`LinkError::NeedsLogin`).
//! - Answers that hold again (a password, a key's passphrase: the decrypted key is kept,
//!   not the passphrase) are kept in the `Keyring`, in memory only, so that reconnects
//!   need nobody. A one-time code is never kept: a server asking for one again makes
//!   the link need a login. The keyring is wiped when the link closes.
//! - Secrets are never logged: `Secret` has no `Display`, and its `Debug` hides it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use russh::client::{self, KeyboardInteractiveAuthResponse};
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::{Certificate, HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::{MethodKind, MethodSet};

use super::config::Destination;
use super::error::LinkError;
use super::known_hosts;
use crate::sync::lock;

/// Rounds of keyboard-interactive questions one login may take (some carry no
/// question at all); of those, a person is asked in at most `NumberOfPasswordPrompts`
/// (a server asking again after a wrong answer counts, as ssh counts them).
const ROUNDS: usize = 10;

/// Something typed that must not be seen: wiped from memory when dropped. Made only from
/// a `Zeroizing` string, so that it has been in wiped memory since it was read.
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Takes the text without copying it: what the `Zeroizing` held moves here, wiped when
/// this is dropped.
impl From<zeroize::Zeroizing<String>> for Secret {
    fn from(mut typed: zeroize::Zeroizing<String>) -> Secret {
        Secret(std::mem::take(&mut *typed))
    }
}

impl Clone for Secret {
    fn clone(&self) -> Secret {
        Secret(self.0.clone())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// A question for the user: what to show, and whether the answer may be shown as typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub text: String,
    pub echo: bool,
}

/// Whoever can answer questions now; `None` from `ask` means nobody will.
pub trait Asker: Send + Sync {
    fn ask<'a>(&'a self, q: Question) -> Pin<Box<dyn Future<Output = Option<Secret>> + Send + 'a>>;
}

/// What a login learned that a reconnect may use again without asking.
#[derive(Default)]
pub struct Keyring {
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    password: Option<Secret>,
    /// Key files that needed a passphrase, decrypted.
    keys: Vec<(PathBuf, Arc<PrivateKey>)>,
    /// Keyboard-interactive answers that hold again (passwords), by question.
    answers: Vec<(String, Secret)>,
    /// The last login needed an answer that cannot be given again (a one-time code):
    /// every new connection would need a person.
    needs_person: bool,
}

impl Keyring {
    /// Forgets everything kept (at unmount).
    pub fn wipe(&self) {
        *lock(&self.kept) = Kept::default();
    }

    /// Whether logging in again needs a person (a one-time code was asked last time).
    pub fn needs_person(&self) -> bool {
        lock(&self.kept).needs_person
    }

    fn key(&self, path: &Path) -> Option<Arc<PrivateKey>> {
        lock(&self.kept).keys.iter().find(|(p, _)| p == path).map(|(_, k)| k.clone())
    }

    fn keep_key(&self, path: &Path, key: Arc<PrivateKey>) {
        lock(&self.kept).keys.push((path.to_path_buf(), key));
    }

    fn password(&self) -> Option<Secret> {
        lock(&self.kept).password.clone()
    }

    fn keep_password(&self, password: Option<Secret>) {
        lock(&self.kept).password = password;
    }

    fn set_needs_person(&self, needs: bool) {
        lock(&self.kept).needs_person = needs;
    }

    fn answer(&self, q: &str) -> Option<Secret> {
        lock(&self.kept).answers.iter().find(|(k, _)| k == q).map(|(_, a)| a.clone())
    }

    /// Keeps `answer` to the question `q`, in place of an earlier one.
    fn keep_answer(&self, q: &str, answer: Secret) {
        let mut kept = lock(&self.kept);
        kept.answers.retain(|(k, _)| k != q);
        kept.answers.push((q.to_string(), answer));
    }
}

/// Whether an answer to `q` may be given again on a later login: a password does, a
/// one-time code does not. Shown answers are never secrets worth keeping.
pub fn reusable(q: &Question) -> bool {
    let t = q.text.to_ascii_lowercase();
    !q.echo && (t.contains("password") || t.contains("passphrase")) && !t.contains("one-time") && !t.contains("otp")
}

/// How one login attempt went so far.
struct Login<'a> {
    ssh: &'a mut client::Handle<super::handler::Handler>,
    dest: &'a Destination,
    keyring: &'a Keyring,
    asker: Option<&'a dyn Asker>,
    rsa_hash: Option<HashAlg>,
    /// What the server still allows; `None` until it has said.
    methods: Option<MethodSet>,
    tried: Vec<String>,
    hints: Vec<String>,
    /// A method that needed a person when none was there.
    unanswered: Option<&'static str>,
}

/// Where one try of a method leaves the login.
enum Step {
    Done,
    /// Accepted, but the server wants another method too (two-factor).
    Partial,
    Refused,
}

impl Login<'_> {
    fn lost(&self, detail: impl Into<String>) -> LinkError {
        LinkError::Lost { host: self.dest.host_name.clone(), detail: detail.into() }
    }

    /// Whether the server (as far as it has said) and the config allow `m`.
    fn allows(&self, m: MethodKind) -> bool {
        let config = match m {
            MethodKind::PublicKey => self.dest.login.pubkey,
            MethodKind::KeyboardInteractive => self.dest.login.keyboard_interactive,
            MethodKind::Password => self.dest.login.password,
            _ => true,
        };
        config && self.methods.as_ref().is_none_or(|set| set.contains(&m))
    }

    /// Wrong answers allowed (`NumberOfPasswordPrompts`).
    fn tries(&self) -> usize {
        self.dest.login.password_prompts.max(1) as usize
    }

    fn step<E: std::fmt::Display>(&mut self, r: Result<client::AuthResult, E>) -> Result<Step, LinkError> {
        match r {
            Ok(client::AuthResult::Success) => Ok(Step::Done),
            Ok(client::AuthResult::Failure { remaining_methods, partial_success }) => {
                self.methods = Some(remaining_methods);
                if self.ssh.is_closed() {
                    return Err(self.lost("connection closed during authentication"));
                }
                Ok(if partial_success { Step::Partial } else { Step::Refused })
            }
            Err(e) => Err(self.lost(e.to_string())),
        }
    }

    async fn ask(&mut self, method: &'static str, q: Question) -> Option<Secret> {
        // `BatchMode yes`: never ask, as ssh never does.
        let asker = if self.dest.login.batch_mode { None } else { self.asker };
        let Some(asker) = asker else {
            self.unanswered.get_or_insert(method);
            return None;
        };
        let a = asker.ask(q).await;
        if a.is_none() {
            self.unanswered.get_or_insert(method);
        }
        a
    }

    /// ssh-agent's keys and certificates.
    async fn agent_keys(&mut self, wanted: &[PublicKey]) -> Result<Step, LinkError> {
        let Some(sock) = &self.dest.agent_socket else { return Ok(Step::Refused) };
        let mut agent = match AgentClient::connect_uds(sock).await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(socket = %sock.display(), %e, "ssh-agent not usable");
                return Ok(Step::Refused);
            }
        };
        let user = self.dest.user.clone();
        for id in agent.request_identities().await.unwrap_or_default() {
            let r = match id {
                AgentIdentity::PublicKey { key, comment } => {
                    if self.dest.identities_only && !wanted.iter().any(|w| w.key_data() == key.key_data()) {
                        continue;
                    }
                    let name = if comment.is_empty() { known_hosts::fingerprint(&key) } else { comment };
                    self.tried.push(format!("agent key {name}"));
                    self.ssh.authenticate_publickey_with(&user, key, self.rsa_hash, &mut agent).await
                }
                AgentIdentity::Certificate { certificate, comment } => {
                    let key = PublicKey::from(certificate.public_key().clone());
                    if self.dest.identities_only && !wanted.iter().any(|w| w.key_data() == key.key_data()) {
                        continue;
                    }
                    self.tried.push(format!("agent certificate {comment}"));
                    self.ssh.authenticate_certificate_with(&user, certificate, self.rsa_hash, &mut agent).await
                }
            };
            match self.step(r)? {
                Step::Refused => {}
                done_or_partial => return Ok(done_or_partial),
            }
        }
        Ok(Step::Refused)
    }

    /// The private key in `path`: kept from an earlier login, unencrypted, or decrypted
    /// with a passphrase asked for.
    async fn load_key(&mut self, path: &Path) -> Option<Arc<PrivateKey>> {
        if let Some(k) = self.keyring.key(path) {
            return Some(k);
        }
        match russh::keys::load_secret_key(path, None) {
            Ok(k) => return Some(Arc::new(k)),
            Err(russh::keys::Error::IO(e)) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(russh::keys::Error::KeyIsEncrypted) => {}
            Err(e) => {
                self.hints.push(format!("cannot read {}: {e}", path.display()));
                return None;
            }
        }
        for _ in 0..self.tries() {
            let q = Question { text: format!("Enter passphrase for key '{}': ", path.display()), echo: false };
            let Some(pass) = self.ask("key passphrase", q).await else {
                self.hints.push(format!(
                    "{} is passphrase-protected: load it with `ssh-add {}`, or mount from a terminal",
                    path.display(),
                    path.display()
                ));
                return None;
            };
            match russh::keys::load_secret_key(path, Some(pass.expose())) {
                Ok(k) => {
                    let k = Arc::new(k);
                    self.keyring.keep_key(path, k.clone());
                    return Some(k);
                }
                Err(e) => tracing::info!(key = %path.display(), %e, "wrong passphrase"),
            }
        }
        self.hints.push(format!("wrong passphrase for {}", path.display()));
        None
    }

    /// The certificates to offer with the key in `path`: `CertificateFile`s holding its
    /// public key, then `path-cert.pub`, as ssh looks for them.
    fn certificates_for(&self, path: &Path, key: &PrivateKey) -> Vec<Certificate> {
        let own = PathBuf::from(format!("{}-cert.pub", path.display()));
        self.dest
            .certificate_files
            .iter()
            .chain(std::iter::once(&own))
            .filter_map(|p| russh::keys::load_openssh_certificate(p).ok())
            .filter(|c| c.public_key() == key.public_key().key_data())
            .collect()
    }

    /// Identity files, each with its certificates first.
    async fn key_files(&mut self) -> Result<Step, LinkError> {
        let user = self.dest.user.clone();
        for path in self.dest.identity_files.clone() {
            let Some(key) = self.load_key(&path).await else { continue };
            for cert in self.certificates_for(&path, &key) {
                self.tried.push(format!("certificate for {}", path.display()));
                let r = self.ssh.authenticate_openssh_cert(&user, key.clone(), cert).await;
                match self.step(r)? {
                    Step::Refused => {}
                    done_or_partial => return Ok(done_or_partial),
                }
            }
            self.tried.push(path.display().to_string());
            let r = self.ssh.authenticate_publickey(&user, PrivateKeyWithHashAlg::new(key, self.rsa_hash)).await;
            match self.step(r)? {
                Step::Refused => {}
                done_or_partial => return Ok(done_or_partial),
            }
        }
        Ok(Step::Refused)
    }

    /// Keyboard-interactive: every question the server asks, answered from the keyring
    /// where an earlier answer holds, else by the asker.
    async fn keyboard_interactive(&mut self) -> Result<Step, LinkError> {
        let user = self.dest.user.clone();
        self.tried.push("keyboard-interactive".into());
        let mut reply = self.ssh.authenticate_keyboard_interactive_start(&user, None).await;
        let mut asked_person = false;
        let mut person_rounds = 0;
        // A kept answer is given once per login: asked again, it no longer holds.
        let mut kept_used = false;
        for _ in 0..ROUNDS {
            let (name, instructions, prompts) = match reply {
                Ok(KeyboardInteractiveAuthResponse::Success) => {
                    self.keyring.set_needs_person(asked_person);
                    return Ok(Step::Done);
                }
                Ok(KeyboardInteractiveAuthResponse::Failure { remaining_methods, partial_success }) => {
                    self.methods = Some(remaining_methods);
                    if partial_success {
                        self.keyring.set_needs_person(asked_person);
                    }
                    return Ok(if partial_success { Step::Partial } else { Step::Refused });
                }
                Ok(KeyboardInteractiveAuthResponse::InfoRequest { name, instructions, prompts }) => {
                    (name, instructions, prompts)
                }
                Err(e) => return Err(self.lost(e.to_string())),
            };
            let mut answers = Vec::with_capacity(prompts.len());
            let mut asked_now = false;
            for (i, p) in prompts.iter().enumerate() {
                let mut text = p.prompt.clone();
                // What the server says before its first question is shown with it.
                if i == 0 {
                    let head: Vec<&str> =
                        [name.trim(), instructions.trim()].into_iter().filter(|s| !s.is_empty()).collect();
                    if !head.is_empty() {
                        text = format!("{}\n{text}", head.join("\n"));
                    }
                }
                let q = Question { text, echo: p.echo };
                let kept = if reusable(&q) && !kept_used { self.keyring.answer(&p.prompt) } else { None };
                let answer = match kept {
                    Some(a) => {
                        kept_used = true;
                        a
                    }
                    None => {
                        if person_rounds >= self.tries() {
                            return Ok(Step::Refused);
                        }
                        asked_now = true;
                        let Some(a) = self.ask("keyboard-interactive", q.clone()).await else {
                            return Ok(Step::Refused);
                        };
                        asked_person |= !reusable(&q);
                        if reusable(&q) {
                            self.keyring.keep_answer(&p.prompt, a.clone());
                        }
                        a
                    }
                };
                answers.push(answer.expose().to_string());
            }
            person_rounds += usize::from(asked_now);
            reply = self.ssh.authenticate_keyboard_interactive_respond(answers).await;
        }
        Ok(Step::Refused)
    }

    /// Password: the kept one first, then asked for, up to `NumberOfPasswordPrompts` times.
    async fn password(&mut self) -> Result<Step, LinkError> {
        let user = self.dest.user.clone();
        self.tried.push("password".into());
        let mut kept = self.keyring.password();
        for _ in 0..self.tries() {
            let pass = match kept.take() {
                Some(p) => p,
                None => {
                    let q = Question { text: format!("{user}@{}'s password: ", self.dest.host_name), echo: false };
                    let Some(p) = self.ask("password", q).await else { return Ok(Step::Refused) };
                    p
                }
            };
            let r = self.ssh.authenticate_password(&user, pass.expose()).await;
            match self.step(r)? {
                Step::Refused => self.keyring.keep_password(None),
                done_or_partial => {
                    self.keyring.keep_password(Some(pass));
                    return Ok(done_or_partial);
                }
            }
            if !self.allows(MethodKind::Password) {
                break;
            }
        }
        Ok(Step::Refused)
    }

    fn refused(self) -> LinkError {
        let (user, host) = (self.dest.user.clone(), self.dest.host_name.clone());
        if let Some(method) = self.unanswered {
            return LinkError::NeedsLogin { user, host, method: method.into() };
        }
        LinkError::AuthRefused {
            user,
            host,
            tried: if self.tried.is_empty() { "no keys found".into() } else { self.tried.join(", ") },
            hint: if self.hints.is_empty() { String::new() } else { format!("; {}", self.hints.join("; ")) },
        }
    }
}

/// Where ssh keeps the public half of the key in `path`: `path.pub`, whatever `path`
/// ends in (`id.work` has `id.work.pub`, never `id.pub`).
fn public_half(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// Logs in to `dest` on `ssh`, as OpenSSH orders methods: public keys, then
/// keyboard-interactive, then password; a method accepted in part (two-factor) moves on
/// to the next one the server names.
pub(super) async fn authenticate(
    ssh: &mut client::Handle<super::handler::Handler>,
    dest: &Destination,
    keyring: &Keyring,
    asker: Option<&dyn Asker>,
) -> Result<(), LinkError> {
    let rsa_hash = ssh.best_supported_rsa_hash().await.ok().flatten().flatten();
    let wanted: Vec<PublicKey> =
        dest.identity_files.iter().filter_map(|p| russh::keys::load_public_key(public_half(p)).ok()).collect();
    let mut login = Login {
        ssh,
        dest,
        keyring,
        asker,
        rsa_hash,
        methods: None,
        tried: Vec::new(),
        hints: Vec::new(),
        unanswered: None,
    };
    let (mut keys, mut interactive, mut password) = (false, false, false);
    loop {
        let step = if !keys && login.allows(MethodKind::PublicKey) {
            keys = true;
            match login.agent_keys(&wanted).await? {
                Step::Refused => login.key_files().await?,
                other => other,
            }
        } else if login.methods.is_none() {
            // No key was offered, so the server has not said what it allows: ask, as
            // ssh does with "none" first.
            let r = login.ssh.authenticate_none(&dest.user).await;
            login.step(r)?
        } else if !interactive && login.allows(MethodKind::KeyboardInteractive) {
            interactive = true;
            login.keyboard_interactive().await?
        } else if !password && login.allows(MethodKind::Password) {
            password = true;
            login.password().await?
        } else {
            return Err(login.refused());
        };
        match step {
            Step::Done => return Ok(()),
            Step::Refused if login.unanswered.is_some() => return Err(login.refused()),
            // Accepted in part (two-factor), or refused: what the server allows now
            // decides the next method.
            Step::Partial | Step::Refused => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_kept_and_one_time_codes_are_not() {
        let q = |text: &str, echo| Question { text: text.into(), echo };
        for (question, kept) in [
            (q("Password: ", false), true),
            (q("moor@host's password: ", false), true),
            (q("Enter passphrase for key '/k': ", false), true),
            (q("Verification code: ", false), false),
            (q("One-time password: ", false), false),
            (q("OTP password: ", false), false),
            (q("Username: ", true), false),
            (q("Password: ", true), false),
        ] {
            assert_eq!(reusable(&question), kept, "{question:?}");
        }
    }

    #[test]
    fn a_secret_never_shows_in_debug() {
        let s = Secret::from(zeroize::Zeroizing::new("hunter2".to_string()));
        assert_eq!(format!("{s:?}"), "<secret>");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(<secret>)");
    }

    #[test]
    fn the_public_half_is_the_key_file_with_pub_appended() {
        for (key, public) in [
            ("/h/.ssh/id_ed25519", "/h/.ssh/id_ed25519.pub"),
            ("/h/.ssh/id.work", "/h/.ssh/id.work.pub"),
            ("/h/.ssh/id.work.key", "/h/.ssh/id.work.key.pub"),
            ("/h/.ssh.d/id", "/h/.ssh.d/id.pub"),
        ] {
            assert_eq!(public_half(Path::new(key)), PathBuf::from(public), "{key}");
        }
    }

    #[test]
    fn typed_text_moves_into_a_secret_without_a_copy() {
        let mut typed = zeroize::Zeroizing::new(String::with_capacity(16));
        typed.push_str("hunter2");
        let at = typed.as_ptr();
        let s = Secret::from(typed);
        assert_eq!(s.expose().as_ptr(), at, "the same memory, now wiped when the secret goes");
    }

    #[test]
    fn a_wiped_keyring_holds_nothing() {
        let k = Keyring::default();
        lock(&k.kept).password = Some(Secret::from(zeroize::Zeroizing::new("p".to_string())));
        lock(&k.kept).needs_person = true;
        k.wipe();
        assert!(k.password().is_none());
        assert!(!k.needs_person());
    }
}
