//! Host key checks against known_hosts files, as OpenSSH does them (sshd(8), "SSH_KNOWN_HOSTS
//! FILE FORMAT"): host patterns with `*`, `?` and `!`, hashed names, `[host]:port`,
//! several keys per host, `@revoked` and `@cert-authority` lines, user files then global
//! ones. A key found is trusted, a different key of the same type is refused, a revoked
//! key is refused whatever else says, an unknown key is refused or recorded according to
//! the policy. Checking is never skipped.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use data_encoding::BASE64;
use hmac::{KeyInit, Mac};
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::{Algorithm, Certificate, HashAlg, PublicKey, PublicKeyOrCertificate};

use super::algorithms;
use super::config::{Destination, HostKeyPolicy};
use super::error::LinkError;
use super::patterns::wildcard_matches;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Known,
    Learned,
    Unknown,
    Changed {
        file: PathBuf,
        line: usize,
    },
    /// The key (or the CA that signed its certificate) is on a `@revoked` line.
    Revoked {
        file: PathBuf,
        line: usize,
    },
    /// A CA of known_hosts signed the certificate, but it is not valid for this host now.
    BadCertificate(String),
    Error(String),
}

pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// What a known_hosts line says of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    /// The host's key.
    Plain,
    /// `@cert-authority`: a CA whose host certificates are trusted.
    CertAuthority,
    /// `@revoked`: never to be accepted.
    Revoked,
}

/// The host names field of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hosts {
    /// `|1|salt|hash`: HMAC-SHA1 of the name, keyed with the salt (`HashKnownHosts`).
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
    /// Comma-separated patterns, `!` negating one.
    Patterns(String),
}

/// One line of a known_hosts file that names a key.
#[derive(Debug, Clone)]
struct HostLine {
    marker: Marker,
    hosts: Hosts,
    key: KeyData,
    file: PathBuf,
    line: usize,
}

type HmacSha1 = hmac::Hmac<sha1::Sha1>;

impl Hosts {
    fn parse(field: &str) -> Result<Hosts, String> {
        let Some(hashed) = field.strip_prefix("|1|") else {
            return Ok(Hosts::Patterns(field.to_string()));
        };
        let bad = || format!("bad hashed host name {field}");
        let (salt, hash) = hashed.split_once('|').ok_or_else(bad)?;
        let salt = BASE64.decode(salt.as_bytes()).map_err(|_| bad())?;
        let hash = BASE64.decode(hash.as_bytes()).map_err(|_| bad())?;
        Ok(Hosts::Hashed { salt, hash })
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Hosts::Hashed { salt, hash } => hashed_name_matches(salt, hash, name),
            Hosts::Patterns(list) => pattern_list_matches(list, name),
        }
    }
}

fn hashed_name_matches(salt: &[u8], hash: &[u8], name: &str) -> bool {
    let Ok(mut mac) = HmacSha1::new_from_slice(salt) else { return false };
    mac.update(name.as_bytes());
    mac.verify_slice(hash).is_ok()
}

/// Whether `name` matches a comma-separated pattern list, case-insensitively: some
/// pattern matches and no negated one does (a negated match rules the line out).
fn pattern_list_matches(list: &str, name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let mut matched = false;
    for pattern in list.split(',') {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        if wildcard_matches(pattern.to_ascii_lowercase().as_bytes(), name.as_bytes()) {
            if negated {
                return false;
            }
            matched = true;
        }
    }
    matched
}

/// A line's marker, host names and key; `None` for blank and comment lines.
fn parse_line(text: &str) -> Result<Option<(Marker, Hosts, KeyData)>, String> {
    let mut words = text.split_whitespace();
    let first = match words.next() {
        None => return Ok(None),
        Some(w) if w.starts_with('#') => return Ok(None),
        Some(w) => w,
    };
    let (marker, hosts) = match first {
        "@cert-authority" => (Marker::CertAuthority, words.next()),
        "@revoked" => (Marker::Revoked, words.next()),
        m if m.starts_with('@') => return Err(format!("unknown marker {m}")),
        h => (Marker::Plain, Some(h)),
    };
    let (Some(hosts), Some(kind), Some(base64)) = (hosts, words.next(), words.next()) else {
        return Err("expected host names, key type and key".into());
    };
    let key = PublicKey::from_openssh(&format!("{kind} {base64}")).map_err(|e| format!("key not understood: {e}"))?;
    Ok(Some((marker, Hosts::parse(hosts)?, key.key_data().clone())))
}

/// Every key line of some known_hosts files, in the order ssh reads them.
#[derive(Debug, Default)]
struct KnownHosts {
    entries: Vec<HostLine>,
}

impl KnownHosts {
    /// Reads `files`; missing ones are skipped, as are lines ssh would skip.
    fn load<'a>(files: impl IntoIterator<Item = &'a PathBuf>) -> KnownHosts {
        let mut known = KnownHosts::default();
        for file in files {
            match std::fs::read(file) {
                Ok(bytes) => known.add_text(&String::from_utf8_lossy(&bytes), file),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // As ssh: a file it cannot read counts as empty, said once.
                Err(e) => tracing::warn!(file = %file.display(), error = %e, "cannot read known_hosts file"),
            }
        }
        known
    }

    fn add_text(&mut self, text: &str, file: &Path) {
        for (i, line) in text.lines().enumerate() {
            match parse_line(line) {
                Ok(Some((marker, hosts, key))) => {
                    self.entries.push(HostLine { marker, hosts, key, file: file.to_path_buf(), line: i + 1 })
                }
                Ok(None) => {}
                Err(why) => tracing::debug!(file = %file.display(), line = i + 1, %why, "known_hosts line skipped"),
            }
        }
    }

    fn for_host<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a HostLine> + 'a {
        self.entries.iter().filter(move |e| e.hosts.matches(name))
    }

    /// What known_hosts says of `presented` for the host looked up as `name`, whose
    /// certificates must be as `cert_rules` say, at `now` (Unix seconds).
    fn judge(&self, name: &str, cert_rules: &CertRules, presented: &PublicKeyOrCertificate, now: u64) -> Verdict {
        let lines: Vec<&HostLine> = self.for_host(name).collect();
        let certificate = presented.certificate();
        let plain = match certificate {
            Some(c) => c.public_key(),
            None => presented_key_data(presented),
        };
        let ca = certificate.map(Certificate::signature_key);
        let revoked = lines
            .iter()
            .find(|e| e.marker == Marker::Revoked && (e.key == *plain || Some(&e.key) == ca))
            .map(|e| Verdict::Revoked { file: e.file.clone(), line: e.line });
        if let Some(r) = revoked {
            return r;
        }
        if let Some(cert) = certificate {
            if let Some(v) = judge_certificate(&lines, cert, cert_rules, now) {
                return v;
            }
            // No CA of known_hosts signed it: as ssh, the key inside may still be known.
        }
        judge_plain_key(&lines, plain)
    }

    /// The host key algorithms to offer for the host looked up as `name`, of those
    /// `allowed`: those of keys known for it first (so that the server proves the key we
    /// have, not another we would call unknown), then the rest, in `allowed`'s order; and
    /// of `certificates`, the certificate algorithms, only when a CA is trusted for the host.
    fn preferences(
        &self,
        name: &str,
        allowed: &[Algorithm],
        certificates: &[Algorithm],
    ) -> (Vec<Algorithm>, Vec<Algorithm>) {
        let lines: Vec<&HostLine> = self.for_host(name).collect();
        let known =
            |a: &Algorithm| lines.iter().any(|e| e.marker == Marker::Plain && same_key_type(&e.key.algorithm(), a));
        let (mut keys, rest): (Vec<Algorithm>, Vec<Algorithm>) = allowed.iter().cloned().partition(known);
        keys.extend(rest);
        let certificates =
            if lines.iter().any(|e| e.marker == Marker::CertAuthority) { certificates.to_vec() } else { Vec::new() };
        (keys, certificates)
    }
}

fn presented_key_data(presented: &PublicKeyOrCertificate) -> &KeyData {
    match presented {
        PublicKeyOrCertificate::PublicKey { key, .. } => key.key_data(),
        PublicKeyOrCertificate::Certificate(c) => c.public_key(),
    }
}

/// Whether a key of algorithm `key` can sign with `offered` (RSA keys sign with any of
/// the RSA hashes).
fn same_key_type(key: &Algorithm, offered: &Algorithm) -> bool {
    match (key, offered) {
        (Algorithm::Rsa { .. }, Algorithm::Rsa { .. }) => true,
        (a, b) => a == b,
    }
}

/// What a host certificate must be for: the name it must list, and what its CA may
/// have signed it with (`CASignatureAlgorithms`).
struct CertRules<'a> {
    principal: &'a str,
    ca_algorithms: &'a [String],
}

/// The verdict on a certificate signed by a CA trusted for the host, or `None` when no
/// such CA signed it.
fn judge_certificate(lines: &[&HostLine], cert: &Certificate, rules: &CertRules, now: u64) -> Option<Verdict> {
    let ca = lines.iter().find(|e| e.marker == Marker::CertAuthority && e.key == *cert.signature_key())?;
    tracing::debug!(file = %ca.file.display(), line = ca.line, "host certificate signed by a trusted CA");
    Some(match certificate_fault(cert, rules, now) {
        None => Verdict::Known,
        Some(why) => Verdict::BadCertificate(why),
    })
}

/// Why a certificate is not a valid host certificate for `rules` at `now`, as ssh
/// judges it: a host certificate, within its validity period, signed by its CA with an
/// algorithm `CASignatureAlgorithms` allows, naming the host among its principals (a
/// certificate naming none is refused, as current OpenSSH refuses it), with no critical
/// options.
fn certificate_fault(cert: &Certificate, rules: &CertRules, now: u64) -> Option<String> {
    let principal = rules.principal;
    if cert.cert_type() != CertType::Host {
        return Some("it is a user certificate, not a host certificate".into());
    }
    let signed_with = cert.signature().algorithm();
    if !rules.ca_algorithms.iter().any(|a| a == signed_with.as_str()) {
        return Some(format!(
            "its CA signed it with {signed_with}, which CASignatureAlgorithms does not allow (it allows {})",
            rules.ca_algorithms.join(",")
        ));
    }
    if now < cert.valid_after() {
        return Some(format!("it is not valid before {} (Unix time; now {now})", cert.valid_after()));
    }
    if now >= cert.valid_before() {
        return Some(format!("it expired at {} (Unix time; now {now})", cert.valid_before()));
    }
    let ca = cert.signature_key().fingerprint(HashAlg::Sha256);
    if cert.validate_at(now, [&ca]).is_err() {
        return Some("its signature does not verify".into());
    }
    let principals = cert.valid_principals();
    if principals.is_empty() {
        return Some("it names no principals".into());
    }
    if !principals.iter().any(|p| p == principal) {
        return Some(format!("it is for {}, not for {principal}", principals.join(", ")));
    }
    if !cert.critical_options().is_empty() {
        let names: Vec<&str> = cert.critical_options().keys().map(String::as_str).collect();
        return Some(format!("it carries critical options ssh does not support ({})", names.join(", ")));
    }
    None
}

/// A plain key is known if any line for the host has it; changed if none has it and a
/// line has a key of the same type; else unknown.
fn judge_plain_key(lines: &[&HostLine], key: &KeyData) -> Verdict {
    let plain = || lines.iter().filter(|e| e.marker == Marker::Plain);
    if plain().any(|e| e.key == *key) {
        return Verdict::Known;
    }
    match plain().find(|e| e.key.algorithm() == key.algorithm()) {
        Some(e) => Verdict::Changed { file: e.file.clone(), line: e.line },
        None => Verdict::Unknown,
    }
}

/// The name known_hosts is searched for, as ssh forms it: the `HostKeyAlias` (which
/// stands for host and port both), else the host for port 22, else `[host]:port`.
fn lookup_name(dest: &Destination) -> String {
    match &dest.host_key_alias {
        Some(alias) => alias.clone(),
        None if dest.port == 22 => dest.host_name.to_ascii_lowercase(),
        None => format!("[{}]:{}", dest.host_name.to_ascii_lowercase(), dest.port),
    }
}

/// The name a host certificate must list: the alias, else the host (never the port).
fn principal_name(dest: &Destination) -> String {
    dest.host_key_alias.clone().unwrap_or_else(|| dest.host_name.to_ascii_lowercase())
}

fn all_files(dest: &Destination) -> impl Iterator<Item = &PathBuf> {
    dest.known_hosts.iter().chain(dest.global_known_hosts.iter())
}

/// The host key algorithms to offer for `dest`, of those its config allows (see
/// `KnownHosts::preferences`): plain ones, and certificate ones.
pub fn preferences(dest: &Destination) -> (Vec<Algorithm>, Vec<Algorithm>) {
    let (allowed, certificates) = algorithms::host_key_algorithms(&dest.host_keys.algorithms);
    KnownHosts::load(all_files(dest)).preferences(&lookup_name(dest), &allowed, &certificates)
}

/// Checks what the server presented for `dest`, recording its key when the policy
/// allows a new one. A key the `RevokedHostKeys` file lists is refused first, as ssh
/// refuses it.
pub fn check(dest: &Destination, presented: &PublicKeyOrCertificate) -> Verdict {
    if let Some(why) = type_not_allowed(dest, presented) {
        return Verdict::Error(why);
    }
    if let Some(file) = &dest.host_keys.revoked {
        if let Some(v) = revoked_by_file(file, presented) {
            return v;
        }
    }
    let name = lookup_name(dest);
    let principal = principal_name(dest);
    let rules = CertRules { principal: &principal, ca_algorithms: &dest.host_keys.ca_signature_algorithms };
    let verdict = KnownHosts::load(all_files(dest)).judge(&name, &rules, presented, crate::timestamp::unix_secs());
    if verdict != Verdict::Unknown {
        return verdict;
    }
    let key = presented.public_key();
    match (dest.host_key_policy, dest.known_hosts.first()) {
        (HostKeyPolicy::AcceptNew, Some(file)) => match learn(file, &name, &key) {
            Ok(()) => {
                tracing::warn!(host = %dest.host_name, fingerprint = %fingerprint(&key), file = %file.display(), "recorded new host key");
                Verdict::Learned
            }
            Err(e) => Verdict::Error(format!("cannot record the host key in {}: {e}", file.display())),
        },
        _ => Verdict::Unknown,
    }
}

/// Why `presented` may not prove the server, if its type is not among those
/// `HostKeyAlgorithms` allows. What was negotiated already is; this holds whatever key a
/// server sends all the same.
fn type_not_allowed(dest: &Destination, presented: &PublicKeyOrCertificate) -> Option<String> {
    let (plain, certificates) = algorithms::host_key_algorithms(&dest.host_keys.algorithms);
    let (allowed, kind) = match presented {
        PublicKeyOrCertificate::PublicKey { .. } => (plain, "key"),
        PublicKeyOrCertificate::Certificate(_) => (certificates, "certificate"),
    };
    let algorithm = presented_key_data(presented).algorithm();
    if allowed.iter().any(|a| same_key_type(&algorithm, a)) {
        return None;
    }
    Some(format!(
        "it proved itself with a {} {kind}, a type HostKeyAlgorithms does not allow ({})",
        algorithm.as_str(),
        dest.host_keys.algorithms.join(",")
    ))
}

/// What a `RevokedHostKeys` file says of `presented`: `Revoked` when it lists the key, or
/// for a certificate the key inside or its CA; `None` when it lists neither. As ssh, a
/// file it cannot read, or a line it cannot, refuses every key (`Error`): a revocation
/// list that is not understood must not let a revoked key through.
fn revoked_by_file(file: &Path, presented: &PublicKeyOrCertificate) -> Option<Verdict> {
    let refuse = |why: String| Some(Verdict::Error(why));
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            return refuse(format!(
                "cannot read the RevokedHostKeys file {}: {e}; ssh refuses every host key while it cannot be read",
                file.display()
            ))
        }
    };
    if bytes.starts_with(b"SSHKRL") {
        return refuse(format!(
            "the RevokedHostKeys file {} is an OpenSSH key revocation list (KRL), which moor cannot read; \
             list the revoked public keys in a text file instead, one per line",
            file.display()
        ));
    }
    let key = presented_key_data(presented);
    let ca = presented.certificate().map(Certificate::signature_key);
    for (i, line) in String::from_utf8_lossy(&bytes).lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let listed = match PublicKey::from_openssh(line) {
            Ok(k) => k,
            Err(e) => {
                return refuse(format!(
                    "line {} of the RevokedHostKeys file {} is not a public key ({e}); fix or remove it",
                    i + 1,
                    file.display()
                ))
            }
        };
        if listed.key_data() == key || Some(listed.key_data()) == ca {
            return Some(Verdict::Revoked { file: file.to_path_buf(), line: i + 1 });
        }
    }
    None
}

/// Appends `name key` to `file` as ssh does, making the file (0600) and its directory
/// (0700) if need be.
fn learn(file: &Path, name: &str, key: &PublicKey) -> std::io::Result<()> {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let mut f = OpenOptions::new().read(true).append(true).create(true).mode(0o600).open(file)?;
    let key = PublicKey::new(key.key_data().clone(), "").to_openssh().map_err(std::io::Error::other)?;
    // A last line without its newline would swallow ours.
    let glue = if ends_without_newline(&mut f)? { "\n" } else { "" };
    f.write_all(format!("{glue}{name} {}\n", key.trim_end()).as_bytes())
}

fn ends_without_newline(f: &mut std::fs::File) -> std::io::Result<bool> {
    if f.metadata()?.len() == 0 {
        return Ok(false);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
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
        Verdict::Revoked { file, line } => {
            Some(LinkError::HostKeyRevoked { host, fingerprint: fingerprint(key), file: file.clone(), line: *line })
        }
        Verdict::BadCertificate(reason) => {
            Some(LinkError::HostCertificateInvalid { host, principal: principal_name(dest), reason: reason.clone() })
        }
        Verdict::Error(detail) => Some(LinkError::HostKeyUnverifiable { host, detail: detail.clone() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::ssh_key::certificate::Builder;
    use russh::keys::ssh_key::private::Ed25519Keypair;
    use russh::keys::PrivateKey;

    /// An ECDSA key, as `ssh-keygen -t ecdsa` made it.
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBPsSGpIxlKmebTowNHyo6p9h8POvlOFqeuyc+urky1vg3XyjgpLm8QeK3V3j6pAdy8GoksvQhFFYGM7rI381yYs=";
    const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDdj6/V6tPBUbst5d1JUxndrgjA6WyiKO/pbOAkeUN8Tp77TY4d8bqGQ9lkeUuRW8p29eILj/SNGTKLdH/un5hm4Jbi5hsj2RsJVgYPgiCXl9DCRAoUr8tkN//atIvdHSW4NNF4RPgeLLKM6nu8XJoq/kw55ypgSUI426sqE63XBQ==";
    /// An Ed25519 key, and `ssh-keygen -H` lines for it: `build.example.com` and
    /// `[nas.lan]:2222`, hashed by OpenSSH itself.
    const REAL_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIINHq1rI2dfrQPQxS8JvbFiwI02Zg7pCq57ADZjofR7u";
    const REAL_HASHED: &str = "|1|7hymtW0qFn8u/1PTS5QJiru4UFo=|snI4U9R0oirUYCaJKhfzsZumUYY= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIINHq1rI2dfrQPQxS8JvbFiwI02Zg7pCq57ADZjofR7u \n\
        |1|MuDe4noyMzyx3ovURO6jqmqcOAE=|/B2tlGfQ6l1v1XOA7H76UJEGUzI= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIINHq1rI2dfrQPQxS8JvbFiwI02Zg7pCq57ADZjofR7u \n";

    fn keypair(seed: u8) -> Ed25519Keypair {
        Ed25519Keypair::from_seed(&[seed; 32])
    }

    /// A distinct Ed25519 key per seed.
    fn ed(seed: u8) -> KeyData {
        KeyData::Ed25519(keypair(seed).public)
    }

    fn parsed(text: &str) -> KeyData {
        PublicKey::from_openssh(text).unwrap().key_data().clone()
    }

    /// A key as a known_hosts line writes it.
    fn text(key: &KeyData) -> String {
        PublicKey::new(key.clone(), "").to_openssh().unwrap()
    }

    fn plain(key: &KeyData) -> PublicKeyOrCertificate {
        PublicKey::new(key.clone(), "").into()
    }

    /// `name` hashed as `HashKnownHosts` does it, with a fixed salt.
    fn hashed(name: &str) -> String {
        let salt = [7u8; 20];
        let mut mac = HmacSha1::new_from_slice(&salt).unwrap();
        mac.update(name.as_bytes());
        format!("|1|{}|{}", BASE64.encode(&salt), BASE64.encode(&mac.finalize().into_bytes()))
    }

    fn known(text: &str) -> KnownHosts {
        let mut k = KnownHosts::default();
        k.add_text(text, Path::new("kh"));
        k
    }

    /// The default CA signature algorithms, as a leaked slice the rules can borrow.
    fn default_ca() -> &'static [String] {
        Box::leak(algorithms::default_ca_signature().into_boxed_slice())
    }

    fn rules(principal: &str) -> CertRules<'_> {
        CertRules { principal, ca_algorithms: default_ca() }
    }

    fn changed(line: usize) -> Verdict {
        Verdict::Changed { file: "kh".into(), line }
    }

    fn revoked(line: usize) -> Verdict {
        Verdict::Revoked { file: "kh".into(), line }
    }

    #[test]
    fn plain_keys_are_matched_as_ssh_matches_them() {
        let (k1, k2, k3) = (text(&ed(1)), text(&ed(2)), text(&ed(3)));
        let cases: Vec<(&str, String, &str, KeyData, Verdict)> = vec![
            ("a plain name", format!("box {k1}\n"), "box", ed(1), Verdict::Known),
            ("another host", format!("box {k1}\n"), "other", ed(1), Verdict::Unknown),
            ("a list of names", format!("a,box,c {k1}\n"), "box", ed(1), Verdict::Known),
            ("names match without case", format!("Box.Example.COM {k1}\n"), "box.example.com", ed(1), Verdict::Known),
            ("a hashed name", format!("{} {k1}\n", hashed("box")), "box", ed(1), Verdict::Known),
            ("a hashed name of another host", format!("{} {k1}\n", hashed("box")), "boxy", ed(1), Verdict::Unknown),
            ("hashed by ssh-keygen -H", REAL_HASHED.into(), "build.example.com", parsed(REAL_KEY), Verdict::Known),
            ("hashed with its port", REAL_HASHED.into(), "[nas.lan]:2222", parsed(REAL_KEY), Verdict::Known),
            ("hashed, port 22 is not 2222", REAL_HASHED.into(), "nas.lan", parsed(REAL_KEY), Verdict::Unknown),
            ("hashed, changed", REAL_HASHED.into(), "build.example.com", ed(1), changed(1)),
            ("a * wildcard", format!("*.example.com {k1}\n"), "a.example.com", ed(1), Verdict::Known),
            ("* needs its dot", format!("*.example.com {k1}\n"), "example.com", ed(1), Verdict::Unknown),
            ("a ? wildcard", format!("node? {k1}\n"), "node7", ed(1), Verdict::Known),
            ("? is one character", format!("node? {k1}\n"), "node17", ed(1), Verdict::Unknown),
            ("* across dots", format!("10.*.1 {k1}\n"), "10.2.3.1", ed(1), Verdict::Known),
            (
                "negation rules the line out",
                format!("*.example.com,!bad.example.com {k1}\n"),
                "bad.example.com",
                ed(2),
                Verdict::Unknown,
            ),
            (
                "negation, first or last",
                format!("!bad.example.com,* {k1}\n"),
                "bad.example.com",
                ed(1),
                Verdict::Unknown,
            ),
            (
                "negation spares others",
                format!("*.example.com,!bad.example.com {k1}\n"),
                "ok.example.com",
                ed(1),
                Verdict::Known,
            ),
            ("negation alone matches nothing", format!("!bad {k1}\n"), "good", ed(1), Verdict::Unknown),
            ("[host]:port", format!("[10.0.0.1]:2222 {k1}\n"), "[10.0.0.1]:2222", ed(1), Verdict::Known),
            ("[host]:port is not the host", format!("[10.0.0.1]:2222 {k1}\n"), "10.0.0.1", ed(1), Verdict::Unknown),
            ("the host is not [host]:port", format!("10.0.0.1 {k1}\n"), "[10.0.0.1]:2222", ed(1), Verdict::Unknown),
            (
                "[host]:port with a wildcard",
                format!("[10.0.0.*]:2222 {k1}\n"),
                "[10.0.0.9]:2222",
                ed(1),
                Verdict::Known,
            ),
            ("a changed key", format!("box {k2}\n"), "box", ed(1), changed(1)),
            (
                "several keys: a later one of the same type matches",
                format!("box {k2}\nbox {ECDSA}\nbox {k1}\n"),
                "box",
                ed(1),
                Verdict::Known,
            ),
            (
                "several keys: none matches",
                format!("other {k1}\nbox {ECDSA}\nbox {k2}\nbox {k3}\n"),
                "box",
                ed(1),
                changed(3),
            ),
            ("only keys of other types", format!("box {k2}\n"), "box", parsed(ECDSA), Verdict::Unknown),
            ("revoked, though also listed", format!("box {k1}\n@revoked * {k1}\n"), "box", ed(1), revoked(2)),
            ("revoked before listed", format!("@revoked box {k1}\nbox {k1}\n"), "box", ed(1), revoked(1)),
            ("revoked for another host", format!("@revoked other {k1}\nbox {k1}\n"), "box", ed(1), Verdict::Known),
            ("a revoked key is not a changed one", format!("@revoked box {k2}\n"), "box", ed(1), Verdict::Unknown),
            ("a CA is not the host's key", format!("@cert-authority box {k1}\n"), "box", ed(1), Verdict::Unknown),
            (
                "comments, blanks, garbage and unknown types are skipped",
                format!(
                    "# box {k2}\n\n   \n  # indented comment\ngarbage\nbox ssh-foo AAAAB3Nz\n@weird box {k2}\n\
                     box ssh-ed25519 !!notbase64\n|1|bad|bad {k2}\nbox {k2} trailing comment words\nbox\n\
                     box 1024 35 1234567\nbox {k1}\n"
                ),
                "box",
                ed(1),
                Verdict::Known,
            ),
            (
                "a skipped line is no old key",
                format!("box ssh-ed25519 AAAAbroken\n@weird box {k2}\n"),
                "box",
                ed(1),
                Verdict::Unknown,
            ),
        ];
        for (what, file, name, key, want) in cases {
            assert_eq!(known(&file).judge(name, &rules(name), &plain(&key), 1_000), want, "{what}:\n{file}");
        }
    }

    const NOW: u64 = 1_700_000_000;

    /// A host certificate for the key of seed 11, signed by the CA of `ca`.
    fn cert(ca: u8, kind: CertType, principals: &[&str], after: u64, before: u64) -> Certificate {
        let mut b = Builder::new([9u8; 32], ed(11), after, before).unwrap();
        b.cert_type(kind).unwrap();
        if principals.is_empty() {
            b.all_principals_valid().unwrap();
        }
        for p in principals {
            b.valid_principal(*p).unwrap();
        }
        b.sign(&PrivateKey::from(keypair(ca))).unwrap()
    }

    fn host_cert(principals: &[&str]) -> Certificate {
        cert(10, CertType::Host, principals, NOW - 60, NOW + 3600)
    }

    #[test]
    fn certificates_are_judged_as_ssh_judges_them() {
        let ca = text(&ed(10));
        let other_ca = text(&ed(12));
        let host = text(&ed(11));
        let web = "web.example.com";
        // `None`: refused as a bad certificate (the reason is for people).
        let known_ = || Some(Verdict::Known);
        let bad = || -> Option<Verdict> { None };
        let cases: Vec<(&str, String, Certificate, Option<Verdict>)> = vec![
            ("signed by a listed CA", format!("@cert-authority *.example.com {ca}\n"), host_cert(&[web]), known_()),
            ("among several principals", format!("@cert-authority * {ca}\n"), host_cert(&["a", web, "b"]), known_()),
            ("for another principal", format!("@cert-authority * {ca}\n"), host_cert(&["db.example.com"]), bad()),
            ("a principal is no pattern", format!("@cert-authority * {ca}\n"), host_cert(&["*.example.com"]), bad()),
            ("with no principals", format!("@cert-authority * {ca}\n"), host_cert(&[]), bad()),
            (
                "expired",
                format!("@cert-authority * {ca}\n"),
                cert(10, CertType::Host, &[web], NOW - 99, NOW - 1),
                bad(),
            ),
            (
                "expiring now",
                format!("@cert-authority * {ca}\n"),
                cert(10, CertType::Host, &[web], NOW - 99, NOW),
                bad(),
            ),
            (
                "not yet valid",
                format!("@cert-authority * {ca}\n"),
                cert(10, CertType::Host, &[web], NOW + 1, NOW + 9),
                bad(),
            ),
            (
                "a user certificate",
                format!("@cert-authority * {ca}\n"),
                cert(10, CertType::User, &[web], 0, NOW + 9),
                bad(),
            ),
            ("CA not listed", format!("@cert-authority * {other_ca}\n"), host_cert(&[web]), Some(Verdict::Unknown)),
            ("CA listed as the host's key", format!("{web} {ca}\n"), host_cert(&[web]), Some(changed(1))),
            (
                "CA listed for other hosts",
                format!("@cert-authority *.org {ca}\n"),
                host_cert(&[web]),
                Some(Verdict::Unknown),
            ),
            (
                "CA not listed, key inside is",
                format!("@cert-authority * {other_ca}\n{web} {host}\n"),
                host_cert(&[web]),
                known_(),
            ),
            ("CA not listed, another key", format!("{web} {other_ca}\n"), host_cert(&[web]), Some(changed(1))),
            ("CA revoked", format!("@cert-authority * {ca}\n@revoked * {ca}\n"), host_cert(&[web]), Some(revoked(2))),
            (
                "key inside revoked",
                format!("@cert-authority * {ca}\n@revoked * {host}\n"),
                host_cert(&[web]),
                Some(revoked(2)),
            ),
        ];
        for (what, file, c, want) in cases {
            let v = known(&file).judge(web, &rules(web), &c.into(), NOW);
            match want {
                Some(w) => assert_eq!(v, w, "{what}\n{file}"),
                None => assert!(matches!(v, Verdict::BadCertificate(_)), "{what}: {v:?}\n{file}"),
            }
        }
    }

    fn dest(host: &str, port: u16, alias: Option<&str>, user: Vec<PathBuf>, global: Vec<PathBuf>) -> Destination {
        Destination {
            alias: host.into(),
            host_name: host.into(),
            port,
            user: "u".into(),
            identity_files: Vec::new(),
            identities_only: false,
            certificate_files: Vec::new(),
            known_hosts: user,
            global_known_hosts: global,
            host_key_policy: HostKeyPolicy::Strict,
            connect_timeout: std::time::Duration::from_secs(5),
            agent_socket: None,
            host_key_alias: alias.map(str::to_string),
            address_family: Default::default(),
            server_alive: None,
            proxy_command: None,
            login: Default::default(),
            host_keys: Default::default(),
        }
    }

    #[test]
    fn user_and_global_files_are_read_together() {
        let dir = tempfile::tempdir().unwrap();
        let (user, global) = (dir.path().join("known_hosts"), dir.path().join("ssh_known_hosts"));
        let k1 = text(&ed(1));
        std::fs::write(&global, format!("[10.0.0.1]:2222 {k1}\n")).unwrap();
        let d = dest("10.0.0.1", 2222, None, vec![user.clone(), dir.path().join("missing")], vec![global.clone()]);
        assert_eq!(check(&d, &plain(&ed(1))), Verdict::Known, "the global file alone knows it");
        assert_eq!(check(&d, &plain(&ed(2))), Verdict::Changed { file: global.clone(), line: 1 });
        std::fs::write(&user, format!("@revoked * {k1}\n")).unwrap();
        assert_eq!(check(&d, &plain(&ed(1))), Verdict::Revoked { file: user.clone(), line: 1 });
    }

    #[test]
    fn host_key_alias_is_the_name_looked_up() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        let d = dest("10.0.0.1", 2222, Some("mybox"), vec![file.clone()], Vec::new());
        std::fs::write(&file, format!("[10.0.0.1]:2222 {}\n", text(&ed(1)))).unwrap();
        assert_eq!(check(&d, &plain(&ed(1))), Verdict::Unknown, "the alias stands for host and port");
        std::fs::write(&file, format!("mybox {}\n", text(&ed(1)))).unwrap();
        assert_eq!(check(&d, &plain(&ed(1))), Verdict::Known);
        // A certificate must name the alias.
        std::fs::write(&file, format!("@cert-authority mybox {}\n", text(&ed(10)))).unwrap();
        let for_alias = cert(10, CertType::Host, &["mybox"], 0, u64::MAX);
        assert_eq!(check(&d, &for_alias.into()), Verdict::Known);
        let for_host = cert(10, CertType::Host, &["10.0.0.1"], 0, u64::MAX);
        assert!(matches!(check(&d, &for_host.into()), Verdict::BadCertificate(_)));
    }

    #[test]
    fn new_keys_are_learned_as_ssh_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("new/.ssh/known_hosts");
        let global = dir.path().join("global");
        std::fs::write(&global, "").unwrap();
        let mut d = dest("Box.Lan", 2222, None, vec![file.clone()], vec![global.clone()]);
        assert_eq!(check(&d, &plain(&ed(1))), Verdict::Unknown, "strict: unknown and not recorded");
        assert!(!file.exists());
        d.host_key_policy = HostKeyPolicy::AcceptNew;
        assert_eq!(check(&d, &plain(&ed(1))), Verdict::Learned);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(file.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("[box.lan]:2222 {}\n", text(&ed(1))));
        assert_eq!(std::fs::read_to_string(&global).unwrap(), "", "only the first user file is written");
        assert_eq!(check(&d, &plain(&ed(1))), Verdict::Known);
        assert_eq!(check(&d, &plain(&ed(2))), Verdict::Changed { file: file.clone(), line: 1 }, "never learned over");
        // A last line without its newline keeps its key.
        std::fs::write(&file, format!("other {}", text(&ed(3)))).unwrap();
        d.port = 22;
        assert_eq!(check(&d, &plain(&ed(1))), Verdict::Learned);
        let lines: Vec<String> = std::fs::read_to_string(&file).unwrap().lines().map(str::to_string).collect();
        assert_eq!(lines, vec![format!("other {}", text(&ed(3))), format!("box.lan {}", text(&ed(1)))]);
        // Revoked keys and refused certificates are never learned.
        std::fs::write(&file, format!("@revoked * {}\n", text(&ed(4)))).unwrap();
        assert!(matches!(check(&d, &plain(&ed(4))), Verdict::Revoked { .. }));
        std::fs::write(&file, format!("@cert-authority * {}\n", text(&ed(10)))).unwrap();
        let wrong = cert(10, CertType::Host, &["elsewhere"], 0, u64::MAX);
        assert!(matches!(check(&d, &wrong.into()), Verdict::BadCertificate(_)));
        assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 1);
    }

    #[test]
    fn known_key_types_are_offered_first() {
        let default = russh::Preferred::DEFAULT.key;
        let certificates = [Algorithm::Ed25519];
        let k = known(&format!("box {ECDSA}\n@cert-authority other {}\n", text(&ed(1))));
        let (keys, certs) = k.preferences("box", &default, &certificates);
        assert_eq!(keys[0], parsed(ECDSA).algorithm(), "{keys:?}");
        assert_eq!(keys.len(), default.len());
        assert!(certs.is_empty(), "no CA for this host: plain keys only");
        let (keys, certs) = k.preferences("other", &default, &certificates);
        assert_eq!(keys, default.to_vec(), "nothing known: the default order");
        assert_eq!(certs, certificates, "a CA for this host: certificates too");
        // An RSA key signs with any RSA hash: all of them come first, in their order.
        let k = known(&format!("box {RSA}\n"));
        let (keys, _) = k.preferences("box", &default, &certificates);
        let rsa: Vec<Algorithm> = default.iter().filter(|a| matches!(a, Algorithm::Rsa { .. })).cloned().collect();
        assert_eq!(keys[..rsa.len()], rsa[..], "{keys:?}");
        assert_eq!(keys.len(), default.len());
    }

    #[test]
    fn only_the_allowed_algorithms_are_offered_and_never_sha1_rsa_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, format!("box {RSA}\n@cert-authority box {}\n", text(&ed(10)))).unwrap();
        let mut d = dest("box", 22, None, vec![file], Vec::new());
        let (keys, certs) = preferences(&d);
        let sha1 = Algorithm::Rsa { hash: None };
        assert!(!keys.contains(&sha1) && !certs.contains(&sha1), "{keys:?} {certs:?}");
        assert_eq!(keys[0], Algorithm::Rsa { hash: Some(HashAlg::Sha512) }, "the known type still first");
        d.host_keys.algorithms = vec!["ssh-ed25519".into(), "ssh-rsa".into()];
        let (keys, certs) = preferences(&d);
        assert_eq!(keys, vec![sha1, Algorithm::Ed25519], "named in the config: allowed, known type first");
        assert!(certs.is_empty(), "no certificate algorithm allowed");
    }

    #[test]
    fn a_key_of_a_type_not_allowed_is_refused_whatever_was_negotiated() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, format!("box {}\nbox {RSA}\n", text(&ed(1)))).unwrap();
        let mut d = dest("box", 22, None, vec![file], Vec::new());
        d.host_keys.algorithms = vec!["rsa-sha2-512".into()];
        match check(&d, &plain(&ed(1))) {
            Verdict::Error(why) => assert!(why.contains("ssh-ed25519") && why.contains("HostKeyAlgorithms"), "{why}"),
            v => panic!("{v:?}"),
        }
        assert_eq!(check(&d, &plain(&parsed(RSA))), Verdict::Known, "an RSA key, allowed with SHA-2");
        let c = cert(10, CertType::Host, &["box"], 0, u64::MAX);
        assert!(matches!(check(&d, &c.into()), Verdict::Error(_)), "no certificate type allowed");
    }

    #[test]
    fn a_certificate_signed_with_an_algorithm_not_allowed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, format!("@cert-authority * {}\n", text(&ed(10)))).unwrap();
        let mut d = dest("web", 22, None, vec![file], Vec::new());
        let c = cert(10, CertType::Host, &["web"], 0, u64::MAX);
        assert_eq!(check(&d, &c.clone().into()), Verdict::Known);
        d.host_keys.ca_signature_algorithms = vec!["rsa-sha2-512".into()];
        match check(&d, &c.into()) {
            Verdict::BadCertificate(why) => assert!(why.contains("CASignatureAlgorithms"), "{why}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_revoked_host_keys_file_refuses_what_it_lists() {
        let dir = tempfile::tempdir().unwrap();
        let (kh, revoked) = (dir.path().join("known_hosts"), dir.path().join("revoked"));
        std::fs::write(&kh, format!("box {}\n@cert-authority * {}\n", text(&ed(1)), text(&ed(10)))).unwrap();
        let mut d = dest("box", 22, None, vec![kh], Vec::new());
        d.host_keys.revoked = Some(revoked.clone());
        std::fs::write(&revoked, format!("# retired\n\n{} old box\n  {}\n", text(&ed(2)), text(&ed(1)))).unwrap();
        assert_eq!(check(&d, &plain(&ed(1))), Verdict::Revoked { file: revoked.clone(), line: 4 });
        let changed_in_kh = Verdict::Changed { file: d.known_hosts[0].clone(), line: 1 };
        assert_eq!(check(&d, &plain(&ed(3))), changed_in_kh, "not listed: known_hosts decides");
        // A certificate: its key, or its CA.
        let c = cert(10, CertType::Host, &["box"], 0, u64::MAX);
        assert_eq!(check(&d, &c.clone().into()), Verdict::Known);
        std::fs::write(&revoked, format!("{}\n", text(&ed(11)))).unwrap();
        assert_eq!(check(&d, &c.clone().into()), Verdict::Revoked { file: revoked.clone(), line: 1 });
        std::fs::write(&revoked, format!("{}\n", text(&ed(10)))).unwrap();
        assert_eq!(check(&d, &c.into()), Verdict::Revoked { file: revoked.clone(), line: 1 });
        // What cannot be read refuses every key, named.
        let error = |d: &Destination| match check(d, &plain(&ed(1))) {
            Verdict::Error(why) => why,
            v => panic!("{v:?}"),
        };
        std::fs::write(&revoked, b"SSHKRL\n\0\0\0\x01binary").unwrap();
        assert!(error(&d).contains("KRL"), "{}", error(&d));
        std::fs::write(&revoked, "ssh-ed25519 !!!\n").unwrap();
        assert!(error(&d).contains("line 1"), "{}", error(&d));
        d.host_keys.revoked = Some(dir.path().join("missing"));
        assert!(error(&d).contains("cannot read"), "{}", error(&d));
    }
}
