//! `-o` as people type it for sshfs and put in fstab: comma lists of mount options,
//! sshfs options and ssh_config `Key=Value` options, sorted into moor's own settings.
//! Options that belong to mount(8) and systemd are accepted and have no effect here.

use std::path::PathBuf;
use std::time::Duration;

use crate::fs::IdMap;

/// What the `-o` options ask for. `None`: not given, the flag (or its default) stands.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    pub read_only: Option<bool>,
    pub allow_other: bool,
    pub allow_root: bool,
    pub default_permissions: bool,
    pub follow_symlinks: bool,
    pub no_exec: bool,
    pub idmap: Option<IdMap>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub umask: Option<u32>,
    pub cache_timeout: Option<Duration>,
    pub connections: Option<u16>,
    pub offline_cache: Option<u64>,
    pub offline_cache_dir: Option<PathBuf>,
    /// ssh_config options, `Key=Value`, in order, for the ssh config resolution.
    pub ssh: Vec<String>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("unknown option '{0}' in -o: moor takes {ACCEPTED}, and ssh_config options as Key=Value")]
    Unknown(String),
    #[error("bad value in -o {name}={value}: {expected}")]
    BadValue { name: String, value: String, expected: &'static str },
    #[error("option '{0}' in -o needs a value: {0}=VALUE")]
    NoValue(String),
    #[error("-o allow_other and allow_root cannot go together: pick one")]
    OtherAndRoot,
}

/// The options `-o` takes besides ssh_config ones, for the error that lists them.
const ACCEPTED: &str = "ro, rw, allow_other, allow_root, default_permissions, idmap=user|none, uid=N, gid=N, \
     umask=OCTAL, reconnect, follow_symlinks, cache=yes|no, cache_timeout=SECS, max_conns=N, noexec, \
     offline_cache=SIZE, offline_cache_dir=DIR, \
     the mount flags dev, suid, exec, atime and their no- forms, and those of mount and systemd \
     (_netdev, nofail, noauto, user, users, defaults, x-systemd.*, comment=)";

/// Mount options with no effect on a moor mount. mount(8) and systemd act on theirs before
/// the helper runs (and normally strip them); moor mounts are always `nodev,nosuid`,
/// SFTP keeps no access times, and writes go out in order anyway.
const IGNORED: &[&str] = &[
    "_netdev",
    "nofail",
    "noauto",
    "auto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "defaults",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "lazytime",
    "nolazytime",
    "async",
    // sshfs's own: always so here.
    "reconnect",
    "delay_connect",
    "transform_symlinks",
];

/// ssh_config(5) keywords (OpenSSH 9), matched without regard to case as ssh does.
const SSH_KEYWORDS: &[&str] = &[
    "AddKeysToAgent",
    "AddressFamily",
    "BatchMode",
    "BindAddress",
    "BindInterface",
    "CanonicalDomains",
    "CanonicalizeFallbackLocal",
    "CanonicalizeHostname",
    "CanonicalizeMaxDots",
    "CanonicalizePermittedCNAMEs",
    "CASignatureAlgorithms",
    "CertificateFile",
    "ChannelTimeout",
    "CheckHostIP",
    "Ciphers",
    "ClearAllForwardings",
    "Compression",
    "ConnectionAttempts",
    "ConnectTimeout",
    "ControlMaster",
    "ControlPath",
    "ControlPersist",
    "DynamicForward",
    "EnableEscapeCommandline",
    "EnableSSHKeysign",
    "EscapeChar",
    "ExitOnForwardFailure",
    "FingerprintHash",
    "ForkAfterAuthentication",
    "ForwardAgent",
    "ForwardX11",
    "ForwardX11Timeout",
    "ForwardX11Trusted",
    "GatewayPorts",
    "GlobalKnownHostsFile",
    "GSSAPIAuthentication",
    "GSSAPIClientIdentity",
    "GSSAPIDelegateCredentials",
    "GSSAPIKeyExchange",
    "GSSAPIRenewalForcesRekey",
    "GSSAPIServerIdentity",
    "GSSAPITrustDns",
    "GSSAPIKexAlgorithms",
    "HashKnownHosts",
    "HostbasedAcceptedAlgorithms",
    "HostbasedAuthentication",
    "HostKeyAlgorithms",
    "HostKeyAlias",
    "HostName",
    "IdentitiesOnly",
    "IdentityAgent",
    "IdentityFile",
    "IgnoreUnknown",
    "IPQoS",
    "KbdInteractiveAuthentication",
    "KbdInteractiveDevices",
    "KexAlgorithms",
    "KnownHostsCommand",
    "LocalCommand",
    "LocalForward",
    "LogLevel",
    "LogVerbose",
    "MACs",
    "NoHostAuthenticationForLocalhost",
    "NumberOfPasswordPrompts",
    "ObscureKeystrokeTiming",
    "PasswordAuthentication",
    "PermitLocalCommand",
    "PermitRemoteOpen",
    "PKCS11Provider",
    "Port",
    "PreferredAuthentications",
    "ProxyCommand",
    "ProxyJump",
    "ProxyUseFdpass",
    "PubkeyAcceptedAlgorithms",
    "PubkeyAcceptedKeyTypes",
    "PubkeyAuthentication",
    "RekeyLimit",
    "RemoteCommand",
    "RemoteForward",
    "RequestTTY",
    "RequiredRSASize",
    "RevokedHostKeys",
    "SecurityKeyProvider",
    "SendEnv",
    "ServerAliveCountMax",
    "ServerAliveInterval",
    "SessionType",
    "SetEnv",
    "StdinNull",
    "StreamLocalBindMask",
    "StreamLocalBindUnlink",
    "StrictHostKeyChecking",
    "SyslogFacility",
    "Tag",
    "TCPKeepAlive",
    "Tunnel",
    "TunnelDevice",
    "UpdateHostKeys",
    "User",
    "UserKnownHostsFile",
    "VerifyHostKeyDNS",
    "VisualHostKey",
    "XAuthLocation",
];

fn is_ssh_keyword(key: &str) -> bool {
    SSH_KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(key))
}

/// Splits each `-o` argument on commas (`\,` is a comma inside a value). A piece without
/// `=` that names no option continues the ssh option before it, so a list-valued one
/// such as `Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com` stays whole.
fn pieces(args: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for arg in args {
        let mut cur = String::new();
        let mut split = Vec::new();
        let mut chars = arg.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&',') => cur.push(chars.next().unwrap()),
                ',' => split.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        split.push(cur);
        let mut after_ssh = false;
        for piece in split.into_iter().filter(|p| !p.is_empty()) {
            let continues = after_ssh && !piece.contains('=') && !is_moor_name(&piece);
            if continues {
                let last = out.last_mut().expect("an ssh option came before");
                last.push(',');
                last.push_str(&piece);
                continue;
            }
            after_ssh = piece.split_once('=').is_some_and(|(k, _)| is_ssh_keyword(k.trim()));
            out.push(piece);
        }
    }
    out
}

/// Whether `name` (without value) is one of the options `parse` knows by name.
fn is_moor_name(name: &str) -> bool {
    IGNORED.contains(&name)
        || name.starts_with("x-")
        || matches!(
            name,
            "ro" | "rw" | "allow_other" | "allow_root" | "default_permissions" | "follow_symlinks" | "noexec"
        )
}

/// Sorts `-o` arguments (each a comma list) into settings; the last of two that
/// disagree wins, as with mount(8).
pub fn parse(args: &[String]) -> Result<MountOptions, OptionError> {
    let mut o = MountOptions::default();
    for piece in pieces(args) {
        let (name, value) = match piece.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (piece.trim(), None),
        };
        apply(&mut o, name, value)?;
    }
    if o.allow_other && o.allow_root {
        return Err(OptionError::OtherAndRoot);
    }
    Ok(o)
}

fn apply(o: &mut MountOptions, name: &str, value: Option<&str>) -> Result<(), OptionError> {
    let need = || value.ok_or_else(|| OptionError::NoValue(name.to_string()));
    let bad = |expected: &'static str| OptionError::BadValue {
        name: name.to_string(),
        value: value.unwrap_or("").to_string(),
        expected,
    };
    match name {
        "ro" => o.read_only = Some(true),
        "rw" => o.read_only = Some(false),
        "allow_other" => o.allow_other = true,
        "allow_root" => o.allow_root = true,
        "default_permissions" => o.default_permissions = true,
        "follow_symlinks" => o.follow_symlinks = true,
        "noexec" => o.no_exec = true,
        "exec" => o.no_exec = false,
        "idmap" => {
            o.idmap = Some(match need()? {
                "user" => IdMap::User,
                "none" => IdMap::None,
                _ => return Err(bad("use user or none (moor has no idmap=file)")),
            })
        }
        "uid" => o.uid = Some(need()?.parse().map_err(|_| bad("use a number"))?),
        "gid" => o.gid = Some(need()?.parse().map_err(|_| bad("use a number"))?),
        "umask" => {
            o.umask = Some(
                u32::from_str_radix(need()?, 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| bad("use octal, e.g. 022"))?,
            )
        }
        "cache" => {
            o.cache_timeout = match need()? {
                "yes" => None,
                "no" => Some(Duration::ZERO),
                _ => return Err(bad("use yes or no")),
            }
        }
        "cache_timeout" => {
            let secs: u64 = need()?.parse().map_err(|_| bad("use a number of seconds, at most a year's"))?;
            let timeout = Duration::from_secs(secs);
            if timeout > crate::deadline::LONGEST {
                return Err(bad("use a number of seconds, at most a year's"));
            }
            o.cache_timeout = Some(timeout);
        }
        "max_conns" => {
            let n: u16 = need()?.parse().map_err(|_| bad("use a number from 1 to 32"))?;
            if !(1..=32).contains(&n) {
                return Err(bad("use a number from 1 to 32"));
            }
            o.connections = Some(n);
        }
        "offline_cache" => o.offline_cache = Some(cache_size(need()?).map_err(|_| bad("use a size from 1M, e.g. 2G"))?),
        "offline_cache_dir" => {
            let dir = PathBuf::from(need()?);
            if !dir.is_absolute() {
                return Err(bad("use an absolute path"));
            }
            o.offline_cache_dir = Some(dir);
        }
        "comment" => {}
        n if n.starts_with("x-") => {}
        n if IGNORED.contains(&n) && value.is_none() => {}
        key if is_ssh_keyword(key) => {
            let v = need()?;
            if v.is_empty() {
                return Err(OptionError::NoValue(key.to_string()));
            }
            o.ssh.push(format!("{key}={v}"));
        }
        other => return Err(OptionError::Unknown(other.to_string())),
    }
    Ok(())
}

/// Parses a size in bytes: `0`, `512K`, `16M`, `1G`, `1T` (powers of 1024), up to `max`
/// (`max_text` as the user would write it).
pub fn size_within(s: &str, max: u64, max_text: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num.parse().map_err(|_| format!("'{s}' is not a size: use e.g. 0, 512K, 16M, 1G"))?;
    let scale: u64 = match unit.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        other => return Err(format!("unknown unit '{other}' in '{s}': use K, M, G or T")),
    };
    match n.checked_mul(scale) {
        Some(v) if v <= max => Ok(v),
        _ => Err(format!("'{s}' is out of range (at most {max_text})")),
    }
}

/// The offline cache's size: from 1 MiB (its index alone takes some) to 16 TiB.
pub fn cache_size(s: &str) -> Result<u64, String> {
    let v = size_within(s, 16 << 40, "16T")?;
    if v < 1 << 20 {
        return Err(format!("'{s}' is too small for an offline cache: give at least 1M, e.g. 2G"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<MountOptions, OptionError> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn sshfs_and_mount_options_map_to_moor_settings() {
        let secs = Duration::from_secs;
        let ssh = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases: Vec<(&[&str], MountOptions)> =
            vec![
            (&[], MountOptions::default()),
            (&["ro"], MountOptions { read_only: Some(true), ..Default::default() }),
            (&["ro,rw"], MountOptions { read_only: Some(false), ..Default::default() }),
            (&["rw", "ro"], MountOptions { read_only: Some(true), ..Default::default() }),
            (&["allow_other"], MountOptions { allow_other: true, ..Default::default() }),
            (&["allow_root"], MountOptions { allow_root: true, ..Default::default() }),
            (&["default_permissions"], MountOptions { default_permissions: true, ..Default::default() }),
            (&["follow_symlinks"], MountOptions { follow_symlinks: true, ..Default::default() }),
            (&["idmap=none"], MountOptions { idmap: Some(IdMap::None), ..Default::default() }),
            (&["idmap=user,uid=1000,gid=100"], MountOptions {
                idmap: Some(IdMap::User),
                uid: Some(1000),
                gid: Some(100),
                ..Default::default()
            }),
            (&["umask=022"], MountOptions { umask: Some(0o022), ..Default::default() }),
            (&["cache=no"], MountOptions { cache_timeout: Some(Duration::ZERO), ..Default::default() }),
            (&["cache=yes"], MountOptions::default()),
            (&["cache_timeout=30"], MountOptions { cache_timeout: Some(secs(30)), ..Default::default() }),
            (&["max_conns=8"], MountOptions { connections: Some(8), ..Default::default() }),
            (&["offline_cache=2G,offline_cache_dir=/var/cache/me"], MountOptions {
                offline_cache: Some(2 << 30),
                offline_cache_dir: Some(PathBuf::from("/var/cache/me")),
                ..Default::default()
            }),
            (&["reconnect,delay_connect"], MountOptions::default()),
            // What mount(8) adds, and what fstab lines carry for mount and systemd.
            (&["rw,nosuid,nodev,noatime,dev,suid,exec,relatime,async"], MountOptions {
                read_only: Some(false),
                ..Default::default()
            }),
            (&["noexec"], MountOptions { no_exec: true, ..Default::default() }),
            (
                &["_netdev,nofail,noauto,user,users,defaults,x-systemd.automount,x-systemd.idle-timeout=60,comment=x"],
                MountOptions::default(),
            ),
            (&["ServerAliveInterval=15,ServerAliveCountMax=3"], MountOptions {
                ssh: ssh(&["ServerAliveInterval=15", "ServerAliveCountMax=3"]),
                ..Default::default()
            }),
            (&["IdentityFile=/k/id,Port=2222"], MountOptions {
                ssh: ssh(&["IdentityFile=/k/id", "Port=2222"]),
                ..Default::default()
            }),
            // Case as ssh takes it; repeated -o; the existing ssh-style spelling.
            (&["port=22", "ConnectTimeout=5"], MountOptions {
                ssh: ssh(&["port=22", "ConnectTimeout=5"]),
                ..Default::default()
            }),
            // A list-valued ssh option keeps its commas; a flag after it is a flag.
            (&["Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com,max_conns=4,ro"], MountOptions {
                ssh: ssh(&["Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com"]),
                connections: Some(4),
                read_only: Some(true),
                ..Default::default()
            }),
            (&[r"KexAlgorithms=curve25519-sha256\,ecdh-sha2-nistp256"], MountOptions {
                ssh: ssh(&["KexAlgorithms=curve25519-sha256,ecdh-sha2-nistp256"]),
                ..Default::default()
            }),
            (&["ProxyCommand=ssh -W %h:%p jump"], MountOptions {
                ssh: ssh(&["ProxyCommand=ssh -W %h:%p jump"]),
                ..Default::default()
            }),
        ];
        for (args, want) in cases {
            assert_eq!(p(args).unwrap(), want, "{args:?}");
        }
    }

    #[test]
    fn bad_options_are_refused_by_name() {
        let cases: &[(&[&str], &str)] = &[
            (&["frobnicate"], "unknown option 'frobnicate' in -o"),
            (&["ro,Nonsense=1"], "unknown option 'Nonsense'"),
            (&["idmap=file"], "-o idmap=file"),
            (&["uid=me"], "-o uid=me: use a number"),
            (&["umask=999"], "use octal"),
            (&["cache=maybe"], "use yes or no"),
            (&["max_conns=0"], "from 1 to 32"),
            (&["cache_timeout=18446744073709551615"], "at most a year"),
            (&["cache_timeout=0.5"], "number of seconds"),
            (&["offline_cache=100K"], "-o offline_cache=100K: use a size from 1M"),
            (&["offline_cache=lots"], "-o offline_cache=lots"),
            (&["offline_cache_dir=rel/dir"], "use an absolute path"),
            (&["uid"], "needs a value"),
            (&["Port"], "needs a value"),
            (&["allow_other,allow_root"], "cannot go together"),
            (&["sync"], "unknown option 'sync'"),
            (&["_netdev=1"], "unknown option '_netdev'"),
        ];
        for (args, needle) in cases {
            let e = p(args).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
            assert!(!e.contains("ssh config") && !e.contains('\n'), "{args:?}: {e}");
        }
        let e = p(&["frobnicate"]).unwrap_err().to_string();
        for listed in ["ro", "allow_other", "idmap=user|none", "max_conns=N", "Key=Value"] {
            assert!(e.contains(listed), "{e}");
        }
    }
}
