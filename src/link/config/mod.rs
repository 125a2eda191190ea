//! Where and how to connect, resolved from `~/.ssh/config` (or `-F`), `-o` options and the
//! command line. When OpenSSH's client is installed, `ssh -G` itself resolves them, so
//! `Match`, `Include`, negated patterns, tokens and canonicalization come out exactly
//! as ssh sees them. Without it, moor reads the config file itself: the first value
//! obtained wins, the command line comes first, and `Match` blocks are not understood.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use ssh2_config::{ParseRule, SshConfig};

use super::algorithms;

mod builtin;
mod ssh_g;
mod tokens;

pub use builtin::resolve_builtin;
use ssh_g::*;
use tokens::*;

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
    /// OpenSSH certificates offered with the identity whose key they hold (`CertificateFile`).
    #[serde(default)]
    pub certificate_files: Vec<PathBuf>,
    /// Files checked for the host key; new keys are recorded in the first.
    pub known_hosts: Vec<PathBuf>,
    pub global_known_hosts: Vec<PathBuf>,
    pub host_key_policy: HostKeyPolicy,
    pub connect_timeout: Duration,
    pub agent_socket: Option<PathBuf>,
    /// The name known_hosts is searched for instead of the host (`HostKeyAlias`).
    #[serde(default)]
    pub host_key_alias: Option<String>,
    /// Which addresses to dial (`AddressFamily`).
    #[serde(default)]
    pub address_family: AddressFamily,
    /// The heartbeat the config asks for (`ServerAliveInterval`, `ServerAliveCountMax`).
    #[serde(default)]
    pub server_alive: Option<(Duration, u32)>,
    /// A command whose stdin and stdout carry the connection (`ProxyCommand`, or
    /// `ProxyJump` as OpenSSH runs it: `ssh -W %h:%p` through the jump hosts).
    #[serde(default)]
    pub proxy_command: Option<String>,
    /// Which login methods the config allows, and whether anyone may be asked.
    #[serde(default)]
    pub login: LoginPrefs,
    /// Which host keys may prove the server, beside known_hosts.
    #[serde(default)]
    pub host_keys: HostKeyPrefs,
}

/// What the config says about host keys beside known_hosts (`HostKeyAlgorithms`,
/// `CASignatureAlgorithms`, `RevokedHostKeys`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostKeyPrefs {
    /// Host key algorithms offered and accepted, plain and certificate ones, in order.
    pub algorithms: Vec<String>,
    /// What a CA may have signed a host certificate with.
    pub ca_signature_algorithms: Vec<String>,
    /// A file of public keys never to accept from any host.
    pub revoked: Option<PathBuf>,
}

impl Default for HostKeyPrefs {
    fn default() -> Self {
        HostKeyPrefs {
            algorithms: algorithms::default_host_key(),
            ca_signature_algorithms: algorithms::default_ca_signature(),
            revoked: None,
        }
    }
}

impl HostKeyPrefs {
    /// The algorithms the options' values allow (`None`: unset), as OpenSSH assembles them.
    fn from_options(host_key: Option<&str>, ca: Option<&str>, revoked: Option<PathBuf>) -> Result<Self, ConfigError> {
        let algorithms = algorithms::assemble(
            "HostKeyAlgorithms",
            host_key,
            &algorithms::default_host_key(),
            algorithms::ALL_HOST_KEY,
        )
        .map_err(ConfigError::BadValue)?;
        let ca_signature_algorithms = algorithms::assemble(
            "CASignatureAlgorithms",
            ca,
            &algorithms::default_ca_signature(),
            algorithms::ALL_CA_SIGNATURE,
        )
        .map_err(ConfigError::BadValue)?;
        Ok(HostKeyPrefs { algorithms, ca_signature_algorithms, revoked })
    }
}

/// What the config says about logging in (`PubkeyAuthentication`,
/// `KbdInteractiveAuthentication`, `PasswordAuthentication`, `BatchMode`,
/// `NumberOfPasswordPrompts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LoginPrefs {
    pub pubkey: bool,
    pub keyboard_interactive: bool,
    pub password: bool,
    /// Never ask anyone anything (`BatchMode yes`).
    pub batch_mode: bool,
    /// Wrong answers allowed before giving up.
    pub password_prompts: u32,
}

impl Default for LoginPrefs {
    fn default() -> Self {
        LoginPrefs { pubkey: true, keyboard_interactive: true, password: true, batch_mode: false, password_prompts: 3 }
    }
}
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressFamily {
    #[default]
    Any,
    Inet,
    Inet6,
}

impl AddressFamily {
    pub fn allows(self, addr: &std::net::SocketAddr) -> bool {
        match self {
            AddressFamily::Any => true,
            AddressFamily::Inet => addr.is_ipv4(),
            AddressFamily::Inet6 => addr.is_ipv6(),
        }
    }
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
    #[error("{0}")]
    Ssh(String),
    #[error("{0} (from your ssh config or -o) is not supported by moor yet: {1}")]
    Unsupported(&'static str, &'static str),
    #[error(
        "{what} '{name}' is not valid: ssh refuses empty names, whitespace, control characters, a leading '-' \
         and the characters ' ` \" $ \\ ; & < > | ( ) {{ }} in it; check the name"
    )]
    BadName { what: &'static str, name: String },
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
    /// `-J` jump hosts (as ssh -J).
    pub jump: Option<String>,
}

/// The home the password database gives this user, which ssh expands `~` to.
fn pw_home() -> Option<PathBuf> {
    nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|u| u.dir)
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

/// How long a connection may take to come up when the config does not say.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The config's `ConnectTimeout`: 0 means none given, as for ssh (never "give up at
/// once"), and a value past any sensible wait is taken as the longest moor honours.
fn connect_timeout(configured: Option<Duration>) -> Duration {
    match configured {
        None => DEFAULT_CONNECT_TIMEOUT,
        Some(t) if t.is_zero() => DEFAULT_CONNECT_TIMEOUT,
        Some(t) => crate::deadline::clamp(t),
    }
}

/// Resolves `[user@]host` into a destination: by `ssh -G` when OpenSSH's client is
/// installed, else by moor's own reading of the config file. The names given are checked
/// first, and the names resolved again: they are spliced into commands run by `sh -c`
/// (`ProxyCommand`'s `%h %n %r`, `Match exec`).
pub fn resolve(user_host: &str, ov: &Overrides) -> Result<Destination, ConfigError> {
    check_given_names(user_host, ov)?;
    let d = match find_in_path("ssh") {
        Some(ssh) => resolve_by_ssh(&ssh, user_host, ov),
        None => resolve_builtin(user_host, ov),
    }?;
    check_user_name(&d.user)?;
    check_host_name("host name", &d.host_name)?;
    Ok(d)
}

/// The characters of the shell that OpenSSH refuses in host and user names (ssh.c,
/// `valid_hostname`, `valid_ruser`).
const SHELL_SPECIAL: &str = "'`\"$\\;&<>|(){}";

/// Whether `name` is one ssh would take: not empty, no leading '-' (an option), no
/// whitespace, control characters or characters special to the shell.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && !name.chars().any(|c| c.is_whitespace() || c.is_control() || SHELL_SPECIAL.contains(c))
}

fn check_host_name(what: &'static str, name: &str) -> Result<(), ConfigError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ConfigError::BadName { what, name: name.escape_debug().to_string() })
    }
}

fn check_user_name(name: &str) -> Result<(), ConfigError> {
    check_host_name("user name", name)
}

/// The host and user as the command line gives them, before anything expands them.
fn check_given_names(user_host: &str, ov: &Overrides) -> Result<(), ConfigError> {
    let (user, host) = match user_host.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, user_host),
    };
    check_host_name("host", host)?;
    for u in user.into_iter().chain(ov.user.as_deref()) {
        check_user_name(u)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_config(text: &str, ov: Overrides, host: &str) -> Destination {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(&cfg, text).unwrap();
        let ov = Overrides { config_file: Some(cfg), ..ov };
        resolve_builtin(host, &ov).unwrap()
    }

    #[test]
    fn connect_timeouts_of_zero_or_beyond_reason() {
        for (text, want) in [
            ("ConnectTimeout 0\n", DEFAULT_CONNECT_TIMEOUT),
            ("ConnectTimeout 18446744073709551615\n", crate::deadline::LONGEST),
            ("ConnectTimeout 9\n", Duration::from_secs(9)),
            ("", DEFAULT_CONNECT_TIMEOUT),
        ] {
            let d = with_config(&format!("Host box\n  {text}"), Overrides::default(), "box");
            assert_eq!(d.connect_timeout, want, "{text:?}");
        }
        assert_eq!(connect_timeout(Some(Duration::MAX)), crate::deadline::LONGEST);
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

    /// Configs as people have them, resolved by moor and by `ssh -G` (OpenSSH's own
    /// answer): the fields moor uses must agree, and the expected values say what each
    /// case is about.
    #[test]
    fn resolves_as_ssh_does() {
        let ssh = find_in_path("ssh").expect("the tests need OpenSSH's client (ssh)");
        let me = local_user();
        let dir = tempfile::tempdir().unwrap();
        let inc = dir.path().join("included");
        std::fs::write(&inc, "Host inc\n  HostName included.example\n  Port 2204\n").unwrap();
        struct Case {
            config: String,
            dest: &'static str,
            over: Overrides,
            host: &'static str,
            user: &'static str,
            port: u16,
        }
        let case = |config: &str, dest: &'static str, host: &'static str, user: &'static str, port: u16| Case {
            config: config.to_string(),
            dest,
            over: Overrides::default(),
            host,
            user,
            port,
        };
        let cases = vec![
            case("Host box\n  HostName 10.1.2.3\n  Port 2222\n  User alice\n", "box", "10.1.2.3", "alice", 2222),
            case("Host box\n  HostName real\nMatch host real\n  User m\n", "box", "real", "m", 22),
            case("Host a\n  HostName b\nMatch originalhost a\n  User o\n", "a", "b", "o", 22),
            case("Match user bob\n  Port 2200\n", "bob@x", "x", "bob", 2200),
            case("Match user bob\n  Port 2200\n", "alice@x", "x", "alice", 22),
            case(&format!("Match localuser {me}\n  User l\n"), "x", "x", "l", 22),
            case("Match exec \"true\"\n  Port 2201\nMatch exec \"false\"\n  Port 2299\n", "x", "x", me_static(), 2201),
            case("Match all\n  User everyone\n", "x", "x", "everyone", 22),
            case("Host x\n  HostName y\nMatch final host y\n  Port 2202\n", "x", "y", me_static(), 2202),
            case(&format!("Include {}\n", inc.display()), "inc", "included.example", me_static(), 2204),
            case("Host * !skip\n  User n\n", "skip", "skip", me_static(), 22),
            case("Host * !skip\n  User n\n", "other", "other", "n", 22),
            case("Host box\n  User first\nHost *\n  User second\n", "box", "box", "first", 22),
            case("Host box\n  HostName %h.example.com\n", "box", "box.example.com", me_static(), 22),
            case("Host *.lan\n  Port 2203\n", "nas.lan", "nas.lan", me_static(), 2203),
            case(
                "Host box\n  CanonicalizeHostname yes\n  CanonicalDomains example.invalid\n  CanonicalizeFallbackLocal yes\n",
                "box",
                "box",
                me_static(),
                22,
            ),
            Case {
                over: Overrides { port: Some(2300), user: Some("cli".into()), ..Overrides::default() },
                ..case("Host box\n  Port 2222\n  User alice\n", "box", "box", "cli", 2300)
            },
        ];
        assert!(cases.len() >= 15);
        for (i, c) in cases.into_iter().enumerate() {
            let cfg = dir.path().join(format!("config{i}"));
            std::fs::write(&cfg, &c.config).unwrap();
            let ov = Overrides { config_file: Some(cfg.clone()), ..c.over.clone() };
            let d = resolve_by_ssh(&ssh, c.dest, &ov).unwrap_or_else(|e| panic!("case {i}: {e}"));
            assert_eq!(
                (d.host_name.as_str(), d.user.as_str(), d.port),
                (c.host, c.user, c.port),
                "case {i}: {}",
                c.config
            );
            // Everything else moor takes agrees with what ssh -G prints.
            let g = ssh_g(&ssh, c.dest, &ov).unwrap();
            let one = |k: &str| g.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap_or_default();
            assert_eq!(d.identities_only, one("identitiesonly") == "yes", "case {i}");
            assert_eq!(d.identity_files.len(), g.iter().filter(|(k, _)| k == "identityfile").count(), "case {i}");
            let known: Vec<String> = d.known_hosts.iter().map(|p| p.display().to_string()).collect();
            assert_eq!(
                known.join(" "),
                one("userknownhostsfile").replace('~', &home().unwrap().display().to_string()),
                "case {i}"
            );
        }
    }

    fn me_static() -> &'static str {
        Box::leak(local_user().into_boxed_str())
    }

    #[test]
    fn login_settings_are_honoured_and_what_moor_cannot_do_is_refused_by_name() {
        let ssh = find_in_path("ssh").expect("the tests need OpenSSH's client (ssh)");
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(
            &cfg,
            "Host strict\n  PasswordAuthentication no\n  KbdInteractiveAuthentication no\n  BatchMode yes\n  \
             NumberOfPasswordPrompts 1\n\
             Host token\n  PKCS11Provider /usr/lib/opensc-pkcs11.so\n\
             Host dns\n  VerifyHostKeyDNS yes\n\
             Host bound\n  BindAddress 127.0.0.2\n\
             Host khc\n  KnownHostsCommand /bin/true %H\n\
             Host fdpass\n  ProxyCommand nc %h %p\n  ProxyUseFdpass yes\n",
        )
        .unwrap();
        let ov = Overrides { config_file: Some(cfg.clone()), ..Overrides::default() };
        let d = resolve_by_ssh(&ssh, "strict", &ov).unwrap();
        let want = LoginPrefs {
            pubkey: true,
            keyboard_interactive: false,
            password: false,
            batch_mode: true,
            password_prompts: 1,
        };
        assert_eq!(d.login, want);
        assert_eq!(resolve_by_ssh(&ssh, "plain", &ov).unwrap().login, LoginPrefs::default());
        for (host, name) in [
            ("token", "PKCS11Provider"),
            ("dns", "VerifyHostKeyDNS"),
            ("bound", "BindAddress"),
            ("khc", "KnownHostsCommand"),
            ("fdpass", "ProxyUseFdpass"),
        ] {
            let e = resolve_by_ssh(&ssh, host, &ov).unwrap_err();
            assert!(e.to_string().starts_with(name), "{host}: {e}");
        }
    }

    #[test]
    fn ssh_g_timeouts_of_zero_or_beyond_reason() {
        let ssh = find_in_path("ssh").expect("the tests need OpenSSH's client (ssh)");
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(
            &cfg,
            "Host zero\n  ConnectTimeout 0\nHost huge\n  ConnectTimeout 2147483647\n  ServerAliveInterval 2147483647\n",
        )
        .unwrap();
        let ov = Overrides { config_file: Some(cfg), ..Overrides::default() };
        assert_eq!(resolve_by_ssh(&ssh, "zero", &ov).unwrap().connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        let huge = resolve_by_ssh(&ssh, "huge", &ov).unwrap();
        assert_eq!(huge.connect_timeout, crate::deadline::LONGEST);
        assert_eq!(huge.server_alive, Some((crate::deadline::LONGEST, 3)));
    }

    #[test]
    fn ssh_g_settings_reach_the_destination() {
        let ssh = find_in_path("ssh").expect("the tests need OpenSSH's client (ssh)");
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(
            &cfg,
            "Host box\n  UserKnownHostsFile /tmp/kh_%h\n  StrictHostKeyChecking accept-new\n  HostKeyAlias boxkey\n  \
             ConnectTimeout 7\n  ServerAliveInterval 5\n  ServerAliveCountMax 2\n  AddressFamily inet\n  \
             IdentitiesOnly yes\n  IdentityFile ~/.ssh/box_%r\n  User alice\n\
             Host jumpy\n  ProxyJump j1,bob@j2:2200\n\
             Host cmd\n  ProxyCommand nc %h %p\n\
             Host nocmd\n  ProxyCommand none\nHost *\n  ProxyJump j0\n",
        )
        .unwrap();
        let ov = Overrides { config_file: Some(cfg.clone()), ..Overrides::default() };
        let d = resolve_by_ssh(&ssh, "box", &ov).unwrap();
        assert_eq!(d.known_hosts, vec![PathBuf::from("/tmp/kh_box")]);
        assert_eq!(d.host_key_policy, HostKeyPolicy::AcceptNew);
        assert_eq!(d.host_key_alias.as_deref(), Some("boxkey"));
        assert_eq!(d.connect_timeout, Duration::from_secs(7));
        assert_eq!(d.server_alive, Some((Duration::from_secs(5), 2)));
        assert_eq!(d.address_family, AddressFamily::Inet);
        assert!(d.identities_only);
        assert!(d.identity_files[0].ends_with(".ssh/box_alice"), "{:?}", d.identity_files);
        assert!(d.proxy_command.is_some(), "Host * gives box a ProxyJump");
        // -J on the command line wins, as in ssh.
        let flag = Overrides { jump: Some("cli-jump".into()), ..ov.clone() };
        let f = resolve_by_ssh(&ssh, "jumpy", &flag).unwrap().proxy_command.unwrap();
        assert!(f.ends_with("-- cli-jump") && !f.contains("-J j1"), "{f}");
        let j = resolve_by_ssh(&ssh, "jumpy", &ov).unwrap();
        let c = j.proxy_command.unwrap();
        assert!(c.contains(" -W jumpy:22 ") && c.contains("-J j1") && c.ends_with("-- bob@j2:2200"), "{c}");
        let n = resolve_by_ssh(&ssh, "cmd", &ov).unwrap();
        assert_eq!(n.proxy_command.as_deref(), Some("nc cmd 22"));
        let none = resolve_by_ssh(&ssh, "nocmd", &ov).unwrap();
        assert_eq!(none.proxy_command, None, "ProxyCommand none wins over a later ProxyJump");
        std::fs::write(&cfg, "Host c\n  CertificateFile /tmp/cert\n").unwrap();
        let c = resolve_by_ssh(&ssh, "c", &ov).unwrap();
        assert_eq!(c.certificate_files, vec![PathBuf::from("/tmp/cert")]);
        // A destination that looks like an option is a destination.
        std::fs::write(&cfg, "").unwrap();
        let d = resolve_by_ssh(&ssh, "-oProxyCommand=touch /tmp/moor-pwned", &ov);
        assert!(!std::path::Path::new("/tmp/moor-pwned").exists());
        let _ = d;
    }

    #[test]
    fn hostile_names_are_refused_before_anything_expands_them() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        let flag = dir.path().join("pwned");
        // Were a name expanded unchecked, these would run `touch` (Match exec and
        // ProxyCommand go through sh -c).
        std::fs::write(&cfg, "Match exec \"test %h = x\"\n  Port 2222\nHost *\n  ProxyCommand nc %h %p # %r %n\n")
            .unwrap();
        let touch = format!("touch {}", flag.display());
        let hostile_hosts = [
            format!("x;{touch}"),
            format!("$({touch})"),
            format!("`{touch}`"),
            format!("x|{touch}"),
            format!("x&&{touch}"),
            format!("x {touch}"),
            "-oProxyCommand=sh".to_string(),
            "x\ny".to_string(),
            "x\u{7}".to_string(),
            "a'b".to_string(),
            "a\"b".to_string(),
            "a\\b".to_string(),
            "a>b".to_string(),
            "a<b".to_string(),
            "a{b}".to_string(),
            "a(b)".to_string(),
            "a\tb".to_string(),
            String::new(),
        ];
        for host in &hostile_hosts {
            let ov = Overrides { config_file: Some(cfg.clone()), ..Overrides::default() };
            let e = resolve(host, &ov).unwrap_err();
            assert!(matches!(e, ConfigError::BadName { what: "host", .. }), "{host:?}: {e}");
            assert_eq!(e.to_string().lines().count(), 1, "{e}");
            let e = resolve(&format!("{host}@box"), &ov).unwrap_err();
            assert!(matches!(e, ConfigError::BadName { what: "user name", .. }), "{host:?}: {e}");
            let ov = Overrides { user: Some(host.clone()), ..ov };
            let e = resolve("box", &ov).unwrap_err();
            assert!(matches!(e, ConfigError::BadName { what: "user name", .. }), "{host:?}: {e}");
        }
        assert!(!flag.exists(), "a hostile name ran a command");
        // What the config resolves to is checked too.
        std::fs::write(&cfg, "Host box\n  User a;b\nHost other\n  HostName a$b\n").unwrap();
        let ov = Overrides { config_file: Some(cfg.clone()), ..Overrides::default() };
        assert!(matches!(resolve("box", &ov), Err(ConfigError::BadName { what: "user name", .. })));
        assert!(matches!(resolve("other", &ov), Err(ConfigError::BadName { what: "host name", .. })));
        // Names as people have them pass.
        for ok in ["build.example.com", "10.0.0.1", "fe80::1%eth0", "host_1", "a-b", "xn--bcher-kva.example"] {
            assert!(valid_name(ok), "{ok}");
        }
        assert!(valid_name("first.last") && valid_name("svc-backup") && valid_name("alice@realm"));
    }

    #[test]
    fn host_key_settings_reach_the_destination() {
        let ssh = find_in_path("ssh").expect("the tests need OpenSSH's client (ssh)");
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(
            &cfg,
            "Host old\n  HostKeyAlgorithms +ssh-rsa\n  CASignatureAlgorithms ^ssh-rsa\n  \
             RevokedHostKeys ~/.ssh/revoked_%h\n\
             Host exact\n  HostKeyAlgorithms -ecdsa-sha2-nistp256,rsa-sha2-256\n\
             Host patterns\n  HostKeyAlgorithms -ecdsa*,*-cert-v01@openssh.com\n\
             Host *\n  RevokedHostKeys none\n",
        )
        .unwrap();
        let ov = Overrides { config_file: Some(cfg.clone()), ..Overrides::default() };
        let home = home().unwrap();
        let by_ssh = |host: &str| resolve_by_ssh(&ssh, host, &ov).unwrap().host_keys;
        let builtin = |host: &str| resolve_builtin(host, &ov).unwrap().host_keys;
        let without = |gone: &[&str]| {
            let mut d = algorithms::default_host_key();
            d.retain(|a| !gone.contains(&a.as_str()));
            d
        };
        for (how, resolve) in [("ssh -G", &by_ssh as &dyn Fn(&str) -> HostKeyPrefs), ("builtin", &builtin)] {
            let plain = resolve("plain");
            assert_eq!(plain, HostKeyPrefs::default(), "{how}: unset, the defaults");
            assert!(!plain.algorithms.iter().any(|a| a == "ssh-rsa"), "{how}");
            let old = resolve("old");
            assert_eq!(old.algorithms.last().map(String::as_str), Some("ssh-rsa"), "{how}: {:?}", old.algorithms);
            assert_eq!(old.ca_signature_algorithms[0], "ssh-rsa", "{how}");
            assert_eq!(old.revoked, Some(home.join(".ssh/revoked_old")), "{how}");
            let exact = resolve("exact");
            assert_eq!(exact.algorithms, without(&["ecdsa-sha2-nistp256", "rsa-sha2-256"]), "{how}");
            assert_eq!(exact.revoked, None, "{how}");
        }
        // Patterns in a `-` list: as OpenSSH applies them (its own reading of the config
        // file, without OpenSSH, matches names only).
        assert_eq!(by_ssh("patterns").algorithms, ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"]);
    }

    /// An OpenSSH older than 8.8 prints `ssh-rsa` in its default lists: that is no
    /// choice of the config's, and moor's default (without it) applies.
    #[test]
    fn an_old_ssh_default_with_sha1_rsa_counts_as_unset() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let old_ssh = dir.path().join("ssh");
        std::fs::write(
            &old_ssh,
            "#!/bin/sh\necho hostkeyalgorithms ssh-ed25519,rsa-sha2-512,ssh-rsa\n\
             echo casignaturealgorithms ssh-ed25519,ssh-rsa\n",
        )
        .unwrap();
        std::fs::set_permissions(&old_ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
        let printed = |hk: &'static str, ca: &'static str| {
            move |k: &str| match k {
                "hostkeyalgorithms" => Some(hk),
                "casignaturealgorithms" => Some(ca),
                _ => None,
            }
        };
        let defaults = printed("ssh-ed25519,rsa-sha2-512,ssh-rsa", "ssh-ed25519,ssh-rsa");
        assert_eq!(configured_algorithms(&old_ssh, "box", &defaults), (None, None));
        let added = printed("ssh-ed25519,rsa-sha2-512,ssh-rsa,ssh-rsa-cert-v01@openssh.com", "ssh-ed25519,ssh-rsa");
        let (hk, ca) = configured_algorithms(&old_ssh, "box", &added);
        assert_eq!((hk.is_some(), ca), (true, None));
        // Without SHA-1 RSA in them, the lists are taken as printed, without asking again.
        let gone = dir.path().join("no-such-ssh");
        let modern = printed("ssh-ed25519,rsa-sha2-512", "ssh-ed25519");
        assert_eq!(
            configured_algorithms(&gone, "box", &modern),
            (Some("ssh-ed25519,rsa-sha2-512"), Some("ssh-ed25519"))
        );
    }

    #[test]
    fn garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(&cfg, "").unwrap();
        let ov = Overrides { config_file: Some(cfg.clone()), options: vec!["nonsense".into()], ..Overrides::default() };
        assert!(matches!(resolve_builtin("x", &ov), Err(ConfigError::BadOption(_))));
        let ov = Overrides {
            config_file: Some(cfg.clone()),
            options: vec!["StrictHostKeyChecking=maybe".into()],
            ..Overrides::default()
        };
        assert!(matches!(resolve_builtin("x", &ov), Err(ConfigError::BadValue(_))));
        let ov = Overrides { config_file: Some(dir.path().join("missing")), ..Overrides::default() };
        assert!(matches!(resolve_builtin("x", &ov), Err(ConfigError::Read { .. })));
    }
}
