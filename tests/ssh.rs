//! SSH as users have it: a target reached through a bastion (`ProxyJump`, `ProxyCommand`),
//! with the bastion's own host key checked, and reconnects taking the same way; and
//! known_hosts as OpenSSH writes it (hashed names, `@revoked`, `@cert-authority`).

mod common;

use std::fs;
use std::time::Duration;

use common::*;

const HOST_KEY: i32 = 5;

/// The client's config: `bastion` (reached at `bastion_port`) and `target` (the test
/// dials only the bastion; `how` says how the target is reached), and known_hosts for
/// both.
fn write_jump_config(c: &Client, bastion: &Sshd, bastion_port: u16, target: &Sshd, how: &str) {
    let key = c.key();
    let kh = c.known_hosts.display().to_string();
    let text = format!(
        "Host bastion\n  HostName 127.0.0.1\n  Port {bastion_port}\n  User {REMOTE_USER}\n  IdentityFile {k}\n  \
         IdentitiesOnly yes\n  UserKnownHostsFile {kh}\n  ConnectTimeout 5\n\
         Host target\n  HostName 127.0.0.1\n  Port {tp}\n  User {REMOTE_USER}\n  IdentityFile {k}\n  \
         IdentitiesOnly yes\n  UserKnownHostsFile {kh}\n  ConnectTimeout 5\n  {how}\n",
        k = key.display(),
        tp = target.port,
    );
    fs::write(&c.ssh_config, text).unwrap();
    fs::write(
        &c.known_hosts,
        format!(
            "[127.0.0.1]:{bastion_port} {}\n[127.0.0.1]:{} {}\n",
            bastion.host_pub.trim(),
            target.port,
            target.host_pub.trim()
        ),
    )
    .unwrap();
    c.give_home();
}

/// The target's key is the bastion's too, so one client key logs in to both.
fn target_for(bastion: &Sshd) -> Sshd {
    let target = Sshd::start();
    fs::copy(bastion.dir.path().join("authorized_keys"), target.dir.path().join("authorized_keys")).unwrap();
    target
}

/// `ProxyJump`: the mount goes through the bastion (cutting the bastion's path takes the
/// mount down, and restoring it brings the mount back the same way).
#[test]
fn a_target_behind_a_bastion_mounts_through_proxy_jump() {
    let bastion = Sshd::start();
    let target = target_for(&bastion);
    let proxy = proxy::Proxy::start(bastion.port);
    let c = Client::via(&bastion, proxy.port);
    write_jump_config(&c, &bastion, proxy.port, &target, "ProxyJump bastion");
    let mnt = c.mountpoint("jumped");
    let out = c.try_mount_host("target", target.export.to_str().unwrap(), &mnt, &[]);
    assert!(out.status.success(), "mount through the bastion failed: {}", stderr(&out));
    let m = Mount { path: mnt };
    let via = c.mount_json()["via"].as_str().unwrap_or("").to_string();
    assert!(via.contains(&format!("-W 127.0.0.1:{}", target.port)) && via.ends_with("bastion"), "status shows: {via}");
    sh_ok(&format!("echo through > {}", m.p("f").display()));
    assert_eq!(fs::read_to_string(target.export.join("f")).unwrap(), "through\n");

    // The way to the target is the bastion: cut it, and the mount is down.
    proxy.reset_all();
    proxy.black_hole();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let _ = fs::metadata(m.p("probe"));
            c.state() == "reconnecting"
        }),
        "the mount did not notice the bastion's path going"
    );
    proxy.restore();
    assert!(
        wait_until(Duration::from_secs(30), || fs::read_to_string(m.p("f")).is_ok_and(|s| s == "through\n")),
        "no way back through the bastion"
    );
    assert!(wait_until(Duration::from_secs(10), || c.state() == "active"));
}

/// A changed host key on the bastion fails the mount as one on the target would.
#[test]
fn a_changed_bastion_host_key_fails_the_mount() {
    let mut bastion = Sshd::start();
    let target = target_for(&bastion);
    let c = Client::new(&bastion);
    write_jump_config(&c, &bastion, bastion.port, &target, "ProxyJump bastion");
    bastion.restart(true);
    let mnt = c.mountpoint("mnt");
    let out = c.try_mount_host("target", target.export.to_str().unwrap(), &mnt, &[]);
    assert_eq!(out.status.code(), Some(HOST_KEY), "{}", stderr(&out));
    assert!(stderr(&out).to_lowercase().contains("host key"), "{}", stderr(&out));
    assert!(!is_mounted(&mnt));
}

/// `ProxyCommand`, with its tokens: a process whose stdin and stdout are the connection.
#[test]
fn a_proxy_command_carries_the_connection() {
    let target = Sshd::start();
    let c = Client::new(&target);
    c.write_config(&target, "  ProxyCommand /bin/bash -c 'exec 3<>/dev/tcp/%h/%p; cat <&3 & exec cat >&3'\n");
    let m = c.mount(target.export.to_str().unwrap());
    sh_ok(&format!("echo carried > {}", m.p("f").display()));
    assert_eq!(fs::read_to_string(target.export.join("f")).unwrap(), "carried\n");
}

/// `-J` on the command line, as with ssh: the config says nothing of the bastion for
/// the target, the flag does.
#[test]
fn the_jump_flag_reaches_a_target_behind_a_bastion() {
    let bastion = Sshd::start();
    let target = target_for(&bastion);
    let c = Client::new(&bastion);
    write_jump_config(&c, &bastion, bastion.port, &target, "");
    let mnt = c.mountpoint("jumped");
    let out = c.try_mount_host("target", target.export.to_str().unwrap(), &mnt, &["-J", "bastion"]);
    assert!(out.status.success(), "mount with -J failed: {}", stderr(&out));
    let m = Mount { path: mnt };
    assert!(c.mount_json()["via"].as_str().unwrap_or("").ends_with("bastion"));
    sh_ok(&format!("echo flag > {}", m.p("f").display()));
    assert_eq!(fs::read_to_string(target.export.join("f")).unwrap(), "flag\n");
}

/// Nothing is mounted on `mnt`, and the agent has gone (it serves no mount).
fn assert_clean(c: &Client, mnt: &std::path::Path) {
    assert!(!is_mounted(mnt), "{} left mounted", mnt.display());
    assert!(wait_until(Duration::from_secs(10), || c.agent_pids().is_empty()), "agent left running");
}

/// A known_hosts hashed by `ssh-keygen -H` (as `HashKnownHosts yes` writes it) is read.
#[test]
fn a_hashed_known_hosts_mounts() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    sh_root_ok(&format!("ssh-keygen -q -H -f {}", c.known_hosts.display()));
    let kh = fs::read_to_string(&c.known_hosts).unwrap();
    assert!(kh.starts_with("|1|") && !kh.contains("127.0.0.1"), "not hashed: {kh}");
    c.give_home();
    let m = c.mount(sshd.export.to_str().unwrap());
    sh_ok(&format!("echo hashed > {}", m.p("f").display()));
    assert_eq!(fs::read_to_string(sshd.export.join("f")).unwrap(), "hashed\n");
}

/// A key marked `@revoked` is refused, loudly, even though another line lists it as the
/// host's, and even with accept-new; nothing is learned or left behind.
#[test]
fn a_revoked_host_key_fails_the_mount() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let kh = format!("[127.0.0.1]:{} {key}\n@revoked * {key}\n", c.port, key = sshd.host_pub.trim());
    c.write_known_hosts(&kh);
    let mnt = c.mountpoint("mnt");
    let out = c.try_mount(sshd.export.to_str().unwrap(), &mnt, &["-o", "StrictHostKeyChecking=accept-new"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(HOST_KEY), "{err}");
    assert!(err.contains("REVOKED") && err.contains("line 2"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "want one line: {err}");
    assert_eq!(fs::read_to_string(&c.known_hosts).unwrap(), kh, "known_hosts untouched");
    assert_clean(&c, &mnt);
}

/// The test sshd with a host certificate for its key, signed by a throwaway CA for
/// `principal`; returns it and the CA's public key.
fn certified_sshd(principal: &str) -> (Sshd, String) {
    let mut ca_pub = String::new();
    let sshd = Sshd::start_with(|d| {
        sh_root_ok(&format!(
            "cd {d} && ssh-keygen -q -t ed25519 -N '' -C test-ca -f ca && \
             ssh-keygen -q -s ca -h -I test-host -n {principal} -V -5m:+1h host_key.pub",
            d = d.display()
        ));
        ca_pub = fs::read_to_string(d.join("ca.pub")).unwrap();
        format!("HostCertificate {}\n", d.join("host_key-cert.pub").display())
    });
    (sshd, ca_pub)
}

/// A host certificate signed by a CA listed with `@cert-authority` (and nothing else in
/// known_hosts) is trusted.
#[test]
fn a_host_certificate_from_a_trusted_ca_mounts() {
    let (sshd, ca) = certified_sshd("127.0.0.1");
    let c = Client::new(&sshd);
    c.write_known_hosts(&format!("@cert-authority 127.0.0.*,[127.0.0.1]:* {}", ca.trim()));
    let m = c.mount(sshd.export.to_str().unwrap());
    sh_ok(&format!("echo certified > {}", m.p("f").display()));
    assert_eq!(fs::read_to_string(sshd.export.join("f")).unwrap(), "certified\n");
}

/// A certificate for another name is refused, though its CA is trusted: as ssh, no
/// falling back to the key inside.
#[test]
fn a_host_certificate_for_another_name_is_refused() {
    let (sshd, ca) = certified_sshd("elsewhere.example.com");
    let c = Client::new(&sshd);
    c.write_known_hosts(&format!("@cert-authority * {}\n", ca.trim()));
    let mnt = c.mountpoint("mnt");
    let out = c.try_mount(sshd.export.to_str().unwrap(), &mnt, &["-o", "StrictHostKeyChecking=accept-new"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(HOST_KEY), "{err}");
    assert!(err.contains("certificate") && err.contains("elsewhere.example.com"), "{err}");
    assert_clean(&c, &mnt);
}

/// A certificate whose CA known_hosts does not list is judged by the key inside, as
/// ssh judges it: here a known one.
#[test]
fn a_host_certificate_from_an_unknown_ca_falls_back_to_the_known_key() {
    let (sshd, _) = certified_sshd("127.0.0.1");
    let c = Client::new(&sshd);
    let stranger = sshd.dir.path().join("stranger");
    sh_root_ok(&format!("ssh-keygen -q -t ed25519 -N '' -f {}", stranger.display()));
    let stranger = fs::read_to_string(stranger.with_extension("pub")).unwrap();
    fs::write(
        &c.known_hosts,
        format!("@cert-authority * {}\n[127.0.0.1]:{} {}\n", stranger.trim(), c.port, sshd.host_pub.trim()),
    )
    .unwrap();
    c.give_home();
    let m = c.mount(sshd.export.to_str().unwrap());
    assert!(fs::read_dir(&m.path).is_ok());
}

/// A server with several host keys proves the one known_hosts has (ssh orders the
/// algorithms it asks for by the keys it knows), not its first choice, which would be
/// unknown.
#[test]
fn the_known_key_type_is_asked_for_first() {
    let mut ecdsa_pub = String::new();
    let sshd = Sshd::start_with(|d| {
        let key = d.join("host_key_ecdsa");
        sh_root_ok(&format!("ssh-keygen -q -t ecdsa -N '' -f {}", key.display()));
        ecdsa_pub = fs::read_to_string(key.with_extension("pub")).unwrap();
        format!("HostKey {}\n", key.display())
    });
    let c = Client::new(&sshd);
    c.write_known_hosts(&format!("[127.0.0.1]:{} {}\n", c.port, ecdsa_pub.trim()));
    let m = c.mount(sshd.export.to_str().unwrap());
    assert!(fs::read_dir(&m.path).is_ok());
}

/// A key listed in the `RevokedHostKeys` file is refused as an `@revoked` one is, even
/// with accept-new and the key in known_hosts; a KRL, which moor cannot read, is refused
/// by name rather than ignored.
#[test]
fn a_host_key_in_revoked_host_keys_fails_the_mount() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let revoked = c.home.path().join(".ssh/revoked_host_keys");
    fs::write(&revoked, format!("# retired keys\n{}\n", sshd.host_pub.trim())).unwrap();
    c.write_config(&sshd, &format!("  RevokedHostKeys {}\n", revoked.display()));
    let kh = fs::read_to_string(&c.known_hosts).unwrap();
    let mnt = c.mountpoint("mnt");
    let out = c.try_mount(sshd.export.to_str().unwrap(), &mnt, &["-o", "StrictHostKeyChecking=accept-new"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(HOST_KEY), "{err}");
    assert!(err.contains("REVOKED") && err.contains("revoked_host_keys line 2"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "want one line: {err}");
    assert_eq!(fs::read_to_string(&c.known_hosts).unwrap(), kh, "known_hosts untouched");
    assert_clean(&c, &mnt);

    let host_pub = sshd.dir.path().join("host_key.pub");
    sh_root_ok(&format!("ssh-keygen -q -k -f {} {}", revoked.display(), host_pub.display()));
    assert!(fs::read(&revoked).unwrap().starts_with(b"SSHKRL"));
    c.give_home();
    let out = c.try_mount(sshd.export.to_str().unwrap(), &mnt, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(HOST_KEY), "{err}");
    assert!(err.contains("KRL") && err.contains("revoked_host_keys"), "{err}");
    assert_clean(&c, &mnt);
}

/// An sshd that proves itself only with an RSA host key, signing with `algorithms`
/// (its HostKeyAlgorithms), trusted by the client's known_hosts.
fn rsa_only(algorithms: &str) -> (Sshd, Client) {
    let mut rsa_pub = String::new();
    let sshd = Sshd::start_with(|d| {
        let key = d.join("host_key_rsa");
        sh_root_ok(&format!("ssh-keygen -q -t rsa -b 2048 -N '' -f {}", key.display()));
        rsa_pub = fs::read_to_string(key.with_extension("pub")).unwrap();
        format!("HostKey {}\nHostKeyAlgorithms {algorithms}\n", key.display())
    });
    let c = Client::new(&sshd);
    c.write_known_hosts(&format!("[127.0.0.1]:{} {}\n", c.port, rsa_pub.trim()));
    (sshd, c)
}

/// As OpenSSH since 8.8: a server that signs only with SHA-1 RSA (`ssh-rsa`) is refused,
/// saying how to allow it, until the config allows it.
#[test]
fn sha1_rsa_host_keys_are_refused_unless_the_config_allows_them() {
    let (sshd, c) = rsa_only("ssh-rsa");
    let mnt = c.mountpoint("mnt");
    let out = c.try_mount(sshd.export.to_str().unwrap(), &mnt, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(HOST_KEY), "{err}");
    assert!(err.contains("HostKeyAlgorithms=+ssh-rsa") && err.contains("SHA-1"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "want one line: {err}");
    assert_clean(&c, &mnt);
    let m = c.mount_at(sshd.export.to_str().unwrap(), "allowed", &["-o", "HostKeyAlgorithms=+ssh-rsa"]);
    assert!(fs::read_dir(&m.path).is_ok());
}

/// `HostKeyAlgorithms` restricts what may prove the server: an RSA-only server (SHA-2
/// signatures, accepted by default) is refused when the config allows only Ed25519.
#[test]
fn host_key_algorithms_restrict_the_host_keys_accepted() {
    let (sshd, c) = rsa_only("rsa-sha2-512,rsa-sha2-256");
    let mnt = c.mountpoint("mnt");
    let out = c.try_mount(sshd.export.to_str().unwrap(), &mnt, &["-o", "HostKeyAlgorithms=ssh-ed25519"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(HOST_KEY), "{err}");
    assert!(err.contains("HostKeyAlgorithms") && err.contains("rsa-sha2-512"), "{err}");
    assert_clean(&c, &mnt);
    let m = c.mount_at(sshd.export.to_str().unwrap(), "default", &[]);
    assert!(fs::read_dir(&m.path).is_ok());
}
