//! Which host key algorithms a destination offers and accepts, and which algorithms a CA
//! may sign host certificates with: `HostKeyAlgorithms` and `CASignatureAlgorithms`,
//! assembled as OpenSSH assembles them (kex.c, `kex_assemble_names`): unset means the
//! default; `+list` appends to it, `-list` removes from it, `^list` puts first; any other
//! list replaces it. Lists may hold `*` and `?` patterns. As OpenSSH since 8.8, the
//! defaults leave out `ssh-rsa`, RSA signed with SHA-1: only a config naming it allows it.

use russh::keys::Algorithm;

use super::patterns::wildcard_matches;

const CERT_SUFFIX: &str = "-cert-v01@openssh.com";

/// Every host key algorithm moor can take, in OpenSSH's order: certificates first.
pub const ALL_HOST_KEY: &[&str] = &[
    "ssh-ed25519-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "rsa-sha2-512-cert-v01@openssh.com",
    "rsa-sha2-256-cert-v01@openssh.com",
    "ssh-rsa-cert-v01@openssh.com",
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
];

/// Every signature algorithm a CA may have signed a host certificate with.
pub const ALL_CA_SIGNATURE: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
];

/// Whether `name` signs with SHA-1, which OpenSSH no longer offers unless asked to.
fn is_sha1_rsa(name: &str) -> bool {
    name == "ssh-rsa" || name == "ssh-rsa-cert-v01@openssh.com"
}

fn without_sha1(all: &[&str]) -> Vec<String> {
    all.iter().filter(|n| !is_sha1_rsa(n)).map(|n| n.to_string()).collect()
}

/// The host key algorithms used when the config names none.
pub fn default_host_key() -> Vec<String> {
    without_sha1(ALL_HOST_KEY)
}

/// The CA signature algorithms accepted when the config names none.
pub fn default_ca_signature() -> Vec<String> {
    without_sha1(ALL_CA_SIGNATURE)
}

/// `b` appended to `a`, each name once.
fn concat(mut a: Vec<String>, b: impl IntoIterator<Item = String>) -> Vec<String> {
    for n in b {
        if !a.contains(&n) {
            a.push(n);
        }
    }
    a
}

/// The names of `all` that `pattern` matches, in `all`'s order.
fn matching<'a>(all: &'a [&'a str], pattern: &'a str) -> impl Iterator<Item = String> + 'a {
    all.iter().filter(move |n| wildcard_matches(pattern.as_bytes(), n.as_bytes())).map(|n| n.to_string())
}

/// `spec` (an option's value, `None` when unset) assembled against `default`, keeping
/// only names of `all`, as OpenSSH does; `Err` says why the value is refused.
pub fn assemble(option: &str, spec: Option<&str>, default: &[String], all: &[&str]) -> Result<Vec<String>, String> {
    let Some(spec) = spec.map(str::trim).filter(|s| !s.is_empty()) else { return Ok(default.to_vec()) };
    let patterns = |list: &str| -> Result<Vec<String>, String> {
        let list: Vec<&str> = list.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
        if let Some(p) = list.iter().find(|p| p.starts_with('!')) {
            return Err(format!("{option} {spec}: a negated name ({p}) is not allowed there; use -{}", &p[1..]));
        }
        Ok(list.into_iter().map(str::to_string).collect())
    };
    let names = match spec.as_bytes()[0] {
        b'-' => {
            let remove = patterns(&spec[1..])?;
            default
                .iter()
                .filter(|n| !remove.iter().any(|p| wildcard_matches(p.as_bytes(), n.as_bytes())))
                .cloned()
                .collect()
        }
        b'+' => concat(default.to_vec(), only_known(&patterns(&spec[1..])?, all)),
        b'^' => concat(only_known(&patterns(&spec[1..])?, all), default.iter().cloned()),
        _ => only_known(&patterns(spec)?, all),
    };
    if names.is_empty() {
        return Err(format!("{option} {spec} leaves no algorithm moor can use; it can use {}", all.join(",")));
    }
    Ok(names)
}

/// For each pattern in turn, the names of `all` it matches, each name once.
fn only_known(patterns: &[String], all: &[&str]) -> Vec<String> {
    patterns.iter().fold(Vec::new(), |acc, p| concat(acc, matching(all, p)))
}

/// The algorithms to offer for `names`: plain ones, and those whose certificates may be
/// asked for.
pub fn host_key_algorithms(names: &[String]) -> (Vec<Algorithm>, Vec<Algorithm>) {
    let (mut plain, mut certificates) = (Vec::new(), Vec::new());
    for n in names {
        let (list, parsed) = match n.strip_suffix(CERT_SUFFIX) {
            Some(_) => (&mut certificates, Algorithm::new_certificate(n)),
            None => (&mut plain, Algorithm::new(n)),
        };
        match parsed {
            Ok(a) if !list.contains(&a) => list.push(a),
            Ok(_) => {}
            Err(e) => tracing::debug!(algorithm = %n, %e, "host key algorithm not understood"),
        }
    }
    (plain, certificates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::HashAlg;

    fn host(spec: Option<&str>) -> Result<Vec<String>, String> {
        assemble("HostKeyAlgorithms", spec, &default_host_key(), ALL_HOST_KEY)
    }

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn the_default_leaves_out_sha1_rsa_as_openssh_does() {
        let d = host(None).unwrap();
        assert!(!d.iter().any(|n| is_sha1_rsa(n)), "{d:?}");
        assert!(d.contains(&"rsa-sha2-512".to_string()) && d.contains(&"rsa-sha2-256".to_string()));
        assert_eq!(d.len(), ALL_HOST_KEY.len() - 2);
        assert_eq!(host(Some("")).unwrap(), d, "an empty value is no value");
        let ca = assemble("CASignatureAlgorithms", None, &default_ca_signature(), ALL_CA_SIGNATURE).unwrap();
        assert!(!ca.contains(&"ssh-rsa".to_string()) && ca.contains(&"rsa-sha2-256".to_string()));
    }

    #[test]
    fn lists_assemble_as_openssh_assembles_them() {
        let d = default_host_key();
        let plus = host(Some("+ssh-rsa")).unwrap();
        assert_eq!(plus, concat(d.clone(), list(&["ssh-rsa"])), "appended, last");
        assert_eq!(host(Some("+ssh-ed25519")).unwrap(), d, "already there: unchanged");
        let minus = host(Some("-ecdsa-*,*-cert-v01@openssh.com")).unwrap();
        assert_eq!(minus, list(&["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"]));
        let caret = host(Some("^rsa-sha2-256,rsa-sha2-512")).unwrap();
        assert_eq!(caret[..2], list(&["rsa-sha2-256", "rsa-sha2-512"])[..]);
        assert_eq!(caret.len(), d.len(), "moved first, not repeated");
        assert_eq!(host(Some("ssh-ed25519,rsa-sha2-512")).unwrap(), list(&["ssh-ed25519", "rsa-sha2-512"]));
        assert_eq!(
            host(Some("ecdsa-sha2-nistp???,ssh-ed25519*")).unwrap(),
            list(&[
                "ecdsa-sha2-nistp256",
                "ecdsa-sha2-nistp384",
                "ecdsa-sha2-nistp521",
                "ssh-ed25519-cert-v01@openssh.com",
                "ssh-ed25519"
            ]),
            "a pattern takes every name it matches, in the order of all names"
        );
        assert_eq!(host(Some("ssh-rsa")).unwrap(), list(&["ssh-rsa"]), "named: allowed");
        assert_eq!(
            host(Some("sk-ssh-ed25519@openssh.com,ssh-ed25519")).unwrap(),
            list(&["ssh-ed25519"]),
            "names moor cannot use are left out"
        );
        assert_eq!(host(Some(" ssh-ed25519 , rsa-sha2-256 ")).unwrap(), list(&["ssh-ed25519", "rsa-sha2-256"]));
    }

    #[test]
    fn lists_that_leave_nothing_or_negate_are_refused() {
        for bad in ["sk-ssh-ed25519@openssh.com", "-*", "nonsense", "!ssh-rsa", "+!ssh-rsa"] {
            let e = host(Some(bad)).unwrap_err();
            assert!(e.starts_with("HostKeyAlgorithms"), "{bad}: {e}");
            assert_eq!(e.lines().count(), 1);
        }
    }

    #[test]
    fn names_become_the_algorithms_offered() {
        let (plain, certs) = host_key_algorithms(&default_host_key());
        assert_eq!(plain.len(), 6);
        assert!(!plain.contains(&Algorithm::Rsa { hash: None }), "{plain:?}");
        assert!(plain.contains(&Algorithm::Rsa { hash: Some(HashAlg::Sha512) }));
        assert_eq!(certs[0], Algorithm::Ed25519);
        assert!(!certs.contains(&Algorithm::Rsa { hash: None }), "{certs:?}");
        let (plain, certs) = host_key_algorithms(&list(&["ssh-rsa", "ssh-rsa-cert-v01@openssh.com"]));
        assert_eq!((plain, certs), (vec![Algorithm::Rsa { hash: None }], vec![Algorithm::Rsa { hash: None }]));
    }
}
