//! Resolving by OpenSSH's own client: `ssh -G` prints the configuration it would use,
//! `Match`, `Include`, tokens and canonicalization included.

use super::*;

pub(super) fn find_in_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// How long `ssh -G` may take: a `Match exec` runs a command, which might hang.
pub(super) const SSH_G_DEADLINE: Duration = Duration::from_secs(10);

/// What `ssh -G` prints for `user_host`: each key (lowercase) with its values, in order.
pub(super) fn ssh_g(ssh: &Path, user_host: &str, ov: &Overrides) -> Result<Vec<(String, String)>, ConfigError> {
    let mut cmd = std::process::Command::new(ssh);
    cmd.arg("-G");
    if let Some(f) = config_arg(ov) {
        cmd.arg("-F").arg(f);
    }
    if let Some(p) = ov.port {
        cmd.arg("-p").arg(p.to_string());
    }
    if let Some(u) = &ov.user {
        cmd.arg("-l").arg(u);
    }
    for i in &ov.identity_files {
        cmd.arg("-i").arg(i);
    }
    if let Some(j) = &ov.jump {
        cmd.arg("-J").arg(j);
    }
    option_lines(&ov.options)?;
    for o in &ov.options {
        cmd.arg("-o").arg(o);
    }
    // "--": a destination starting with "-" is a destination, never an option.
    cmd.arg("--").arg(user_host);
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = cmd.spawn().map_err(|e| ConfigError::Ssh(format!("cannot run {} -G: {e}", ssh.display())))?;
    let out = match crate::process::wait_within(child, SSH_G_DEADLINE) {
        Some(Ok(out)) => out,
        Some(Err(e)) => return Err(ConfigError::Ssh(format!("ssh -G failed: {e}"))),
        None => {
            return Err(ConfigError::Ssh(format!(
                "ssh -G {user_host} did not finish within {}s: check Match exec lines in your ssh config",
                SSH_G_DEADLINE.as_secs()
            )));
        }
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("ssh -G failed");
        if line.starts_with("command-line") {
            let given: Vec<String> = ov.options.iter().map(|o| format!("-o {o}")).collect();
            return Err(ConfigError::Ssh(format!("bad -o option ({}): ssh says: {line}", given.join(" "))));
        }
        return Err(ConfigError::Ssh(format!("ssh config: {line}")));
    }
    Ok(parse_ssh_g(&String::from_utf8_lossy(&out.stdout)))
}

/// The config file to hand ssh with `-F`, if any. ssh reads ~/.ssh/config from the
/// password database's home; moor honours $HOME, as it always has (a private HOME, as
/// the demo and the tests use, means its own config).
pub(super) fn config_arg(ov: &Overrides) -> Option<PathBuf> {
    if let Some(f) = &ov.config_file {
        return Some(f.clone());
    }
    let home = home().ok()?;
    if pw_home().as_deref() == Some(home.as_path()) {
        return None;
    }
    let own = home.join(".ssh/config");
    Some(if own.exists() { own } else { PathBuf::from("/dev/null") })
}

/// Options that change how ssh connects and that moor cannot honour: refused by name
/// when the config sets them, rather than silently connecting another way.
pub(super) fn refuse_unsupported<'a>(one: &impl Fn(&str) -> Option<&'a str>) -> Result<(), ConfigError> {
    let set = |key: &str| one(key).is_some_and(|v| !matches!(v, "none" | "no" | "false"));
    let refusals: [(&str, &'static str, &'static str); 6] = [
        ("pkcs11provider", "PKCS11Provider", "load the token's key into ssh-agent (`ssh-add -s`) instead"),
        ("knownhostscommand", "KnownHostsCommand", "put the host key in a known_hosts file"),
        ("verifyhostkeydns", "VerifyHostKeyDNS", "put the host key in a known_hosts file"),
        ("bindaddress", "BindAddress", "remove it for this host"),
        ("bindinterface", "BindInterface", "remove it for this host"),
        ("proxyusefdpass", "ProxyUseFdpass", "use a ProxyCommand that carries the connection on its stdin/stdout"),
    ];
    for (key, name, what_to_do) in refusals {
        if set(key) {
            return Err(ConfigError::Unsupported(name, what_to_do));
        }
    }
    Ok(())
}

/// `ssh -G`'s lines as (lowercase key, value) pairs.
pub(super) fn parse_ssh_g(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect()
}

/// The destination `ssh -G` resolves.
pub(super) fn resolve_by_ssh(ssh: &Path, user_host: &str, ov: &Overrides) -> Result<Destination, ConfigError> {
    let home = home()?;
    let alias = user_host.rsplit_once('@').map_or(user_host, |(_, h)| h).to_string();
    let pairs = ssh_g(ssh, user_host, ov)?;
    let one = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let all = |key: &str| pairs.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    let bad = |key: &str, v: &str| ConfigError::BadValue(format!("{key} {v}"));
    let port = match one("port") {
        Some(p) => p.parse().map_err(|_| bad("Port", p))?,
        None => 22,
    };
    let mut d = Destination {
        alias,
        host_name: one("hostname").unwrap_or(user_host).to_string(),
        port,
        user: one("user").map(str::to_string).unwrap_or_else(local_user),
        identity_files: Vec::new(),
        certificate_files: Vec::new(),
        identities_only: one("identitiesonly") == Some("yes"),
        known_hosts: Vec::new(),
        global_known_hosts: Vec::new(),
        host_key_policy: HostKeyPolicy::Strict,
        connect_timeout: connect_timeout(match one("connecttimeout") {
            None | Some("none") => None,
            Some(t) => Some(Duration::from_secs(t.parse().map_err(|_| bad("ConnectTimeout", t))?)),
        }),
        agent_socket: None,
        host_key_alias: one("hostkeyalias").filter(|a| *a != "none").map(str::to_string),
        address_family: match one("addressfamily") {
            Some("inet") => AddressFamily::Inet,
            Some("inet6") => AddressFamily::Inet6,
            _ => AddressFamily::Any,
        },
        server_alive: None,
        proxy_command: None,
        login: LoginPrefs::default(),
        host_keys: HostKeyPrefs::default(),
    };
    d.host_key_policy = host_key_policy(one("stricthostkeychecking"))?;
    let interval: u64 = one("serveraliveinterval").and_then(|v| v.parse().ok()).unwrap_or(0);
    let count: u32 = one("serveralivecountmax").and_then(|v| v.parse().ok()).unwrap_or(3);
    if interval > 0 {
        d.server_alive = Some((crate::deadline::clamp(Duration::from_secs(interval)), count.max(1)));
    }
    d.identity_files = all("identityfile").iter().map(|i| expand(i, &home, &d)).collect();
    // ssh expands `~` in these from the password database's home; moor means $HOME.
    let pw_home = pw_home();
    let rehome = |p: PathBuf| match pw_home.as_deref().and_then(|pw| p.strip_prefix(pw).ok()) {
        Some(rest) if pw_home.as_deref() != Some(home.as_path()) => home.join(rest),
        _ => p,
    };
    let files = |key: &str, d: &Destination| -> Vec<PathBuf> {
        all(key)
            .iter()
            .flat_map(|v| v.split_whitespace())
            .filter(|s| *s != "none")
            .map(|s| rehome(expand(s, &home, d)))
            .collect()
    };
    d.known_hosts = files("userknownhostsfile", &d);
    d.global_known_hosts = files("globalknownhostsfile", &d);
    d.agent_socket = agent_socket(one("identityagent"), &home, &d);
    d.certificate_files = all("certificatefile").iter().map(|c| rehome(expand(c, &home, &d))).collect();
    refuse_unsupported(&one)?;
    d.login = login_prefs(&one);
    d.proxy_command = proxy_command(one("proxycommand"), one("proxyjump"), ssh, config_arg(ov).as_deref(), &d)?;
    let revoked = one("revokedhostkeys").filter(|v| *v != "none").map(|v| rehome(expand(v, &home, &d)));
    let (host_key, ca) = configured_algorithms(ssh, user_host, &one);
    d.host_keys = HostKeyPrefs::from_options(host_key, ca, revoked)?;
    Ok(d)
}

/// `StrictHostKeyChecking` as `ssh -G` prints it; `ask` counts as strict: an unknown
/// key is refused, never learned.
fn host_key_policy(value: Option<&str>) -> Result<HostKeyPolicy, ConfigError> {
    match value {
        None | Some("true") | Some("yes") | Some("ask") => Ok(HostKeyPolicy::Strict),
        Some("accept-new") | Some("false") | Some("no") | Some("off") => Ok(HostKeyPolicy::AcceptNew),
        Some(other) => Err(ConfigError::BadValue(format!("StrictHostKeyChecking {other}"))),
    }
}

/// The login methods `ssh -G` says are allowed.
fn login_prefs<'a>(one: &impl Fn(&str) -> Option<&'a str>) -> LoginPrefs {
    let yes = |key: &str, default: bool| one(key).map_or(default, |v| matches!(v, "yes" | "true"));
    LoginPrefs {
        pubkey: yes("pubkeyauthentication", true),
        keyboard_interactive: yes("kbdinteractiveauthentication", true),
        password: yes("passwordauthentication", true),
        batch_mode: yes("batchmode", false),
        password_prompts: one("numberofpasswordprompts").and_then(|n| n.parse().ok()).unwrap_or(3),
    }
}

/// `HostKeyAlgorithms` and `CASignatureAlgorithms` as `ssh -G` prints them, each `None`
/// where it is only ssh's own default. An OpenSSH older than 8.8 offers SHA-1 RSA by
/// default; moor, as newer ones, only when the config names it. So a list with it is
/// compared with what ssh prints without any config (asked only then).
pub(super) fn configured_algorithms<'a>(
    ssh: &Path,
    user_host: &str,
    one: &impl Fn(&str) -> Option<&'a str>,
) -> (Option<&'a str>, Option<&'a str>) {
    let keys = ["hostkeyalgorithms", "casignaturealgorithms"];
    let sha1 = |v: &str| v.split(',').any(|n| n == "ssh-rsa" || n == "ssh-rsa-cert-v01@openssh.com");
    if !keys.iter().any(|k| one(k).is_some_and(sha1)) {
        return (one(keys[0]), one(keys[1]));
    }
    let bare = Overrides { config_file: Some(PathBuf::from("/dev/null")), ..Overrides::default() };
    let defaults = ssh_g(ssh, user_host, &bare).unwrap_or_default();
    let set = |key: &str| {
        let v = one(key)?;
        let default = defaults.iter().find(|(k, _)| k == key).map(|(_, d)| d.as_str());
        (default != Some(v)).then_some(v)
    };
    (set(keys[0]), set(keys[1]))
}

/// The agent socket to use (`IdentityAgent`, else `$SSH_AUTH_SOCK`).
pub(super) fn agent_socket(configured: Option<&str>, home: &Path, d: &Destination) -> Option<PathBuf> {
    match configured {
        Some("none") => None,
        Some(s) if s != "SSH_AUTH_SOCK" && s != "$SSH_AUTH_SOCK" => Some(expand(s.trim_start_matches('$'), home, d)),
        _ => std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()).map(PathBuf::from),
    }
}

/// The command that carries the connection, if any: `ProxyCommand` with its tokens
/// expanded, or `ProxyJump` as OpenSSH itself runs it (`ssh -W host:port` through the
/// jump hosts, each with its own config, keys and host key check).
pub(super) fn proxy_command(
    command: Option<&str>,
    jump: Option<&str>,
    ssh: &Path,
    config: Option<&Path>,
    d: &Destination,
) -> Result<Option<String>, ConfigError> {
    if let Some(c) = command.filter(|c| *c != "none") {
        return Ok(Some(proxy_tokens(c, d)));
    }
    let Some(jumps) = jump.filter(|j| *j != "none") else { return Ok(None) };
    let hops: Vec<&str> = jumps.split(',').map(str::trim).filter(|h| !h.is_empty()).collect();
    let Some((last, before)) = hops.split_last() else { return Ok(None) };
    let mut c =
        format!("{} -W {}:{} -o BatchMode=yes", shell_quote(&ssh.to_string_lossy()), shell_quote(&d.host_name), d.port);
    // The jump hosts are read from the same config, as ssh itself passes it on.
    if let Some(f) = config {
        c.push_str(&format!(" -F {}", shell_quote(&f.to_string_lossy())));
    }
    if !before.is_empty() {
        c.push_str(&format!(" -J {}", shell_quote(&before.join(","))));
    }
    c.push_str(&format!(" -- {}", shell_quote(last)));
    Ok(Some(c))
}

/// `%h`, `%p`, `%r`, `%n` and `%%` in a ProxyCommand, as ssh expands them.
pub(super) fn proxy_tokens(raw: &str, d: &Destination) -> String {
    tokens(raw, |t| destination_token(d, t))
}

/// `s` as one word for `sh -c`.
pub(super) fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:@,=+".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
