//! Resolving without OpenSSH's client: moor reads the config file itself (the first value
//! obtained wins, the command line comes first, `Match` blocks are not understood).

use super::*;

pub(super) fn parse_config(text: &str, home: &Path, path: &Path) -> Result<SshConfig, ConfigError> {
    // `+`, `-` and `^` lists apply to moor's defaults, which leave out SHA-1 RSA.
    let defaults = ssh2_config::DefaultAlgorithms {
        host_key_algorithms: algorithms::default_host_key(),
        ca_signature_algorithms: algorithms::default_ca_signature(),
        ..ssh2_config::DefaultAlgorithms::default()
    };
    SshConfig::default()
        .default_algorithms(defaults)
        .home_dir(home)
        .parse(
            &mut BufReader::new(text.as_bytes()),
            ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
        )
        .map_err(|e| ConfigError::Read { path: path.to_path_buf(), msg: e.to_string() })
}

/// The config file (`-F`, or `~/.ssh/config` if there is one) with the `-o` options
/// before it, so that, as with ssh, they win over the file.
fn read_config(ov: &Overrides, home: &Path) -> Result<SshConfig, ConfigError> {
    let file = ov.config_file.clone().unwrap_or_else(|| home.join(".ssh/config"));
    let file_text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if ov.config_file.is_none() && e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(ConfigError::Read { path: file, msg: e.to_string() }),
    };
    let text = format!("{}\n{}", option_lines(&ov.options)?, file_text);
    parse_config(&text, home, &file)
}

/// `StrictHostKeyChecking` as the file says it, in any case; `ask` counts as strict.
fn host_key_policy(value: Option<String>) -> Result<HostKeyPolicy, ConfigError> {
    match value.map(|v| v.to_ascii_lowercase()).as_deref() {
        None | Some("yes") | Some("ask") | Some("true") => Ok(HostKeyPolicy::Strict),
        Some("accept-new") | Some("no") | Some("off") | Some("false") => Ok(HostKeyPolicy::AcceptNew),
        Some(other) => {
            Err(ConfigError::BadValue(format!("StrictHostKeyChecking {other}: use yes, ask, accept-new or no")))
        }
    }
}

/// The keys to offer: those given (`-i`) and configured, or ssh's default ones.
fn identity_files(ov: &Overrides, configured: &[PathBuf], home: &Path, d: &Destination) -> Vec<PathBuf> {
    let given = ov.identity_files.iter().chain(configured);
    let files: Vec<PathBuf> = given.map(|i| expand(&i.to_string_lossy(), home, d)).collect();
    if !files.is_empty() {
        return files;
    }
    ["id_ed25519", "id_ecdsa", "id_rsa"].iter().map(|n| home.join(".ssh").join(n)).collect()
}

/// Resolves `[user@]host` with moor's own reading of the config file (no OpenSSH
/// client installed): `Match` blocks are not understood.
pub fn resolve_builtin(user_host: &str, ov: &Overrides) -> Result<Destination, ConfigError> {
    let home = home()?;
    let (spec_user, alias) = match user_host.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h.to_string()),
        None => (None, user_host.to_string()),
    };
    let cfg = read_config(ov, &home)?;
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
        certificate_files: Vec::new(),
        identities_only: yes("identitiesonly"),
        known_hosts: Vec::new(),
        global_known_hosts: Vec::new(),
        host_key_policy: HostKeyPolicy::Strict,
        connect_timeout: connect_timeout(p.connect_timeout),
        agent_socket: None,
        host_key_alias: extra("hostkeyalias"),
        address_family: AddressFamily::Any,
        server_alive: None,
        proxy_command: None,
        login: LoginPrefs::default(),
        host_keys: HostKeyPrefs::default(),
    };
    if ov.jump.is_some()
        || extra("proxyjump").is_some_and(|v| v != "none")
        || extra("proxycommand").is_some_and(|v| v != "none")
    {
        return Err(ConfigError::Unsupported(
            "ProxyJump/ProxyCommand",
            "moor runs them through OpenSSH's client: install openssh-client",
        ));
    }
    d.host_name = expand(&d.host_name.replace("%h", &alias), &home, &d).to_string_lossy().to_string();

    d.host_key_policy = host_key_policy(extra("stricthostkeychecking"))?;

    d.identity_files = identity_files(ov, p.identity_file.as_deref().unwrap_or_default(), &home, &d);

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

    d.agent_socket = agent_socket(extra("identityagent").as_deref(), &home, &d);
    let listed = |a: &ssh2_config::Algorithms| (!a.is_default()).then(|| a.algorithms().join(","));
    let revoked = extra("revokedhostkeys").filter(|v| v != "none").map(|v| expand(&v, &home, &d));
    d.host_keys = HostKeyPrefs::from_options(
        listed(&p.host_key_algorithms).as_deref(),
        listed(&p.ca_signature_algorithms).as_deref(),
        revoked,
    )?;
    Ok(d)
}
