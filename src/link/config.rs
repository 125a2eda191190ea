//! Where and how to connect, resolved from `~/.ssh/config` (or `-F`), `-o` options and the
//! command line the way OpenSSH resolves them: the first value obtained wins, and the
//! command line comes first.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use ssh2_config::{ParseRule, SshConfig};

/// What to do with a host key that known_hosts does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicy {
    /// Refuse unknown keys (`yes`, and `ask` since the agent cannot ask).
    Strict,
    /// Record unknown keys in known_hosts (`accept-new`, and `no`, which never means
    /// "skip checking" here: a changed key is always refused).
    AcceptNew,
}

/// A fully resolved SSH destination: everything needed to (re)connect without reading
/// any config again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Destination {
    /// The host as the user wrote it (a config alias or a name).
    pub alias: String,
    pub host_name: String,
    pub port: u16,
    pub user: String,
    pub identity_files: Vec<PathBuf>,
    pub identities_only: bool,
    /// Files checked for the host key; new keys are recorded in the first.
    pub known_hosts: Vec<PathBuf>,
    pub global_known_hosts: Vec<PathBuf>,
    pub host_key_policy: HostKeyPolicy,
    pub connect_timeout: Duration,
    pub agent_socket: Option<PathBuf>,
}

impl Destination {
    /// `user@host` or `user@host:port`, for messages and status.
    pub fn display(&self) -> String {
        if self.port == 22 {
            format!("{}@{}", self.user, self.alias)
        } else {
            format!("{}@{}:{}", self.user, self.alias, self.port)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read ssh config {path}: {msg}")]
    Read { path: PathBuf, msg: String },
    #[error("bad -o option '{0}': expected KEY=VALUE, as with ssh -o")]
    BadOption(String),
    #[error("bad ssh config value: {0}")]
    BadValue(String),
    #[error("cannot tell your home directory: set HOME")]
    NoHome,
}

/// What the command line says; it wins over the config file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_files: Vec<PathBuf>,
    pub config_file: Option<PathBuf>,
    /// `-o Key=Value` options, in order.
    pub options: Vec<String>,
}

fn home() -> Result<PathBuf, ConfigError> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from).ok_or(ConfigError::NoHome)
}

fn local_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|u| u.name))
        .unwrap_or_else(|| "root".into())
}

/// Turns `-o` options into config lines, refusing ones that are not `KEY=VALUE` or `KEY VALUE`.
fn option_lines(options: &[String]) -> Result<String, ConfigError> {
    let mut text = String::new();
    for o in options {
        let (k, v) = o
            .split_once('=')
            .or_else(|| o.trim().split_once(char::is_whitespace))
            .ok_or_else(|| ConfigError::BadOption(o.clone()))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || v.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(ConfigError::BadOption(o.clone()));
        }
        text.push_str(&format!("{k} {v}\n"));
    }
    Ok(text)
}

/// Expands `~` and the `%` tokens OpenSSH allows in file names.
fn expand(raw: &str, home: &Path, d: &Destination) -> PathBuf {
    let mut s = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            s.push(c);
            continue;
        }
        match chars.next() {
            Some('h') => s.push_str(&d.host_name),
            Some('n') => s.push_str(&d.alias),
            Some('p') => s.push_str(&d.port.to_string()),
            Some('r') => s.push_str(&d.user),
            Some('u') => s.push_str(&local_user()),
            Some('d') => s.push_str(&home.to_string_lossy()),
            Some('%') => s.push('%'),
            Some(other) => {
                s.push('%');
                s.push(other);
            }
            None => s.push('%'),
        }
    }
    if let Some(rest) = s.strip_prefix("~/") {
        home.join(rest)
    } else if s == "~" {
        home.to_path_buf()
    } else {
        PathBuf::from(s)
    }
}

fn parse_config(text: &str, home: &Path, path: &Path) -> Result<SshConfig, ConfigError> {
    SshConfig::default()
        .home_dir(home)
        .parse(
            &mut BufReader::new(text.as_bytes()),
            ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
        )
        .map_err(|e| ConfigError::Read { path: path.to_path_buf(), msg: e.to_string() })
}

/// Resolves `[user@]host` into a destination.
pub fn resolve(user_host: &str, ov: &Overrides) -> Result<Destination, ConfigError> {
    let home = home()?;
    let (spec_user, alias) = match user_host.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h.to_string()),
        None => (None, user_host.to_string()),
    };
    let default_file = home.join(".ssh/config");
    let file = ov.config_file.clone().unwrap_or(default_file.clone());
    let file_text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if ov.config_file.is_none() && e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(ConfigError::Read { path: file, msg: e.to_string() }),
    };
    // -o options come first so that, as with ssh, they win over the file.
    let text = format!("{}\n{}", option_lines(&ov.options)?, file_text);
    let cfg = parse_config(&text, &home, &file)?;
    let p = cfg.query(&alias);
    let extra = |key: &str| {
        p.unsupported_fields.get(key).or_else(|| p.ignored_fields.get(key)).and_then(|v| v.first()).cloned()
    };
    let yes = |key: &str| extra(key).is_some_and(|v| v.eq_ignore_ascii_case("yes") || v.eq_ignore_ascii_case("true"));

    let mut d = Destination {
        host_name: p.host_name.clone().unwrap_or_else(|| alias.clone()),
        alias: alias.clone(),
        port: ov.port.or(p.port).unwrap_or(22),
        user: ov.user.clone().or(spec_user).or(p.user.clone()).unwrap_or_else(local_user),
        identity_files: Vec::new(),
        identities_only: yes("identitiesonly"),
        known_hosts: Vec::new(),
        global_known_hosts: Vec::new(),
        host_key_policy: HostKeyPolicy::Strict,
        connect_timeout: p.connect_timeout.unwrap_or(Duration::from_secs(15)),
        agent_socket: None,
    };
    d.host_name = expand(&d.host_name.replace("%h", &alias), &home, &d).to_string_lossy().to_string();

    d.host_key_policy = match extra("stricthostkeychecking").map(|v| v.to_ascii_lowercase()).as_deref() {
        None | Some("yes") | Some("ask") | Some("true") => HostKeyPolicy::Strict,
        Some("accept-new") | Some("no") | Some("off") | Some("false") => HostKeyPolicy::AcceptNew,
        Some(other) => {
            return Err(ConfigError::BadValue(format!("StrictHostKeyChecking {other}: use yes, ask, accept-new or no")))
        }
    };

    let mut ids: Vec<PathBuf> = ov.identity_files.clone();
    ids.extend(p.identity_file.clone().unwrap_or_default());
    d.identity_files = ids.iter().map(|i| expand(&i.to_string_lossy(), &home, &d)).collect();
    if d.identity_files.is_empty() {
        d.identity_files = ["id_ed25519", "id_ecdsa", "id_rsa"].iter().map(|n| home.join(".ssh").join(n)).collect();
    }

    let files = |key: &str, default: &[PathBuf], d: &Destination| -> Vec<PathBuf> {
        match p.unsupported_fields.get(key).or_else(|| p.ignored_fields.get(key)) {
            Some(v) => v
                .iter()
                .flat_map(|s| s.split_whitespace())
                .filter(|s| *s != "none")
                .map(|s| expand(s, &home, d))
                .collect(),
            None => default.to_vec(),
        }
    };
    d.known_hosts = files("userknownhostsfile", &[home.join(".ssh/known_hosts"), home.join(".ssh/known_hosts2")], &d);
    d.global_known_hosts = files(
        "globalknownhostsfile",
        &[PathBuf::from("/etc/ssh/ssh_known_hosts"), PathBuf::from("/etc/ssh/ssh_known_hosts2")],
        &d,
    );

    d.agent_socket = match extra("identityagent").as_deref() {
        Some("none") => None,
        Some(s) if s != "SSH_AUTH_SOCK" => Some(expand(s.trim_start_matches('$'), &home, &d)),
        _ => std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()).map(PathBuf::from),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_config(text: &str, ov: Overrides, host: &str) -> Destination {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(&cfg, text).unwrap();
        let ov = Overrides { config_file: Some(cfg), ..ov };
        resolve(host, &ov).unwrap()
    }

    #[test]
    fn config_values_apply() {
        let d = with_config(
            "Host box\n  HostName 10.1.2.3\n  Port 2222\n  User alice\n  IdentityFile ~/.ssh/box_%r\n  \
             IdentitiesOnly yes\n  UserKnownHostsFile /tmp/kh_%h\n  StrictHostKeyChecking accept-new\n  ConnectTimeout 7\n",
            Overrides::default(),
            "box",
        );
        assert_eq!(d.host_name, "10.1.2.3");
        assert_eq!(d.port, 2222);
        assert_eq!(d.user, "alice");
        assert!(d.identities_only);
        assert!(d.identity_files[0].ends_with(".ssh/box_alice"));
        assert_eq!(d.known_hosts, vec![PathBuf::from("/tmp/kh_10.1.2.3")]);
        assert_eq!(d.host_key_policy, HostKeyPolicy::AcceptNew);
        assert_eq!(d.connect_timeout, Duration::from_secs(7));
    }

    #[test]
    fn command_line_wins() {
        let ov = Overrides {
            user: Some("bob".into()),
            port: Some(2200),
            options: vec!["HostName=other".into(), "StrictHostKeyChecking=yes".into()],
            ..Overrides::default()
        };
        let d = with_config(
            "Host box\n  HostName 10.1.2.3\n  Port 2222\n  User alice\n  StrictHostKeyChecking no\n",
            ov,
            "carol@box",
        );
        assert_eq!(d.user, "bob");
        assert_eq!(d.port, 2200);
        assert_eq!(d.host_name, "other");
        assert_eq!(d.host_key_policy, HostKeyPolicy::Strict);
    }

    #[test]
    fn user_from_spec_and_defaults() {
        let d = with_config("", Overrides::default(), "carol@plain");
        assert_eq!(d.user, "carol");
        assert_eq!(d.host_name, "plain");
        assert_eq!(d.port, 22);
        assert_eq!(d.host_key_policy, HostKeyPolicy::Strict);
        assert!(d.identity_files.iter().any(|p| p.ends_with("id_ed25519")));
    }

    #[test]
    fn no_never_skips_checking() {
        let d = with_config("StrictHostKeyChecking no\n", Overrides::default(), "x");
        assert_eq!(d.host_key_policy, HostKeyPolicy::AcceptNew);
    }

    #[test]
    fn garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(&cfg, "").unwrap();
        let ov = Overrides { config_file: Some(cfg.clone()), options: vec!["nonsense".into()], ..Overrides::default() };
        assert!(matches!(resolve("x", &ov), Err(ConfigError::BadOption(_))));
        let ov = Overrides {
            config_file: Some(cfg.clone()),
            options: vec!["StrictHostKeyChecking=maybe".into()],
            ..Overrides::default()
        };
        assert!(matches!(resolve("x", &ov), Err(ConfigError::BadValue(_))));
        let ov = Overrides { config_file: Some(dir.path().join("missing")), ..Overrides::default() };
        assert!(matches!(resolve("x", &ov), Err(ConfigError::Read { .. })));
    }
}
