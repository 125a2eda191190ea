//! Logging in as ssh does, against a real sshd: a password and keyboard-interactive
//! questions asked on the terminal of the `moor mount` that waits (the agent has none),
//! a key's passphrase, a certificate from a trusted CA, and no terminal at all.
mod common;

use std::fs;
use std::process::Command;
use std::time::Duration;

use common::*;

const PASSWORD: &str = "Moor-test-pw-7";

/// An sshd that takes passwords (checked through PAM, as Debian's sshd does) and no keys.
const PASSWORD_SSHD: &str = "UsePAM yes\nPasswordAuthentication yes\nPubkeyAuthentication no\n";

/// Gives the remote login user a password (the test sshd checks it against shadow).
fn set_remote_password() {
    sh_root_ok(&format!("echo '{REMOTE_USER}:{PASSWORD}' | chpasswd"));
}

/// `moor mount -F CONFIG testhost:/export ~/mnt` as a command, to run on a terminal.
fn mount_cmd(c: &Client, sshd: &Sshd, mnt: &std::path::Path) -> Command {
    let mut cmd = c.moor();
    cmd.args(["mount", "--allow-other", "-F", c.cfg()]).arg(format!("testhost:{}", sshd.export.display())).arg(mnt);
    cmd
}

fn unmount(c: &Client, mnt: &std::path::Path) {
    let out = c.run(&["unmount", mnt.to_str().unwrap()]);
    assert!(out.status.success(), "unmount: {}", stderr(&out));
}

/// Everything the client's moor wrote to its logs.
fn all_logs(c: &Client) -> String {
    sh_root_ok(&format!(
        "cat $(find {} -name '*.log' -type f) 2>/dev/null || true",
        c.home.path().join("state").display()
    ))
}

#[test]
fn a_password_is_asked_on_the_terminal_and_kept_for_reconnects() {
    set_remote_password();
    let mut sshd = Sshd::start_with(|_| PASSWORD_SSHD);
    let c = Client::new(&sshd);
    let mnt = c.mountpoint("mnt");
    let out = run_on_terminal(&mount_cmd(&c, &sshd, &mnt), &[("password:", PASSWORD)]);
    let shown = stdout(&out);
    assert!(out.status.success(), "mount failed: {shown}{}", stderr(&out));
    assert!(shown.contains(&format!("{REMOTE_USER}@127.0.0.1's password:")), "{shown}");
    assert!(!shown.contains(PASSWORD), "the password was echoed: {shown}");
    sh_ok(&format!("echo one > {}/a", mnt.display()));
    assert_eq!(fs::read_to_string(sshd.export.join("a")).unwrap(), "one\n");

    // The server goes away and comes back: the mount logs in again with the kept
    // password, asking nobody.
    sshd.restart(false);
    let back = wait_until(Duration::from_secs(30), || sh(&format!("echo two > {}/b", mnt.display())).status.success());
    assert!(back, "the mount did not come back after sshd restarted: {}", all_logs(&c));
    assert_eq!(fs::read_to_string(sshd.export.join("b")).unwrap(), "two\n");
    assert!(!all_logs(&c).contains(PASSWORD), "a log holds the password");
    unmount(&c, &mnt);
}

#[test]
fn without_a_terminal_a_password_login_fails_at_once_naming_the_method() {
    set_remote_password();
    let sshd = Sshd::start_with(|_| PASSWORD_SSHD);
    let c = Client::new(&sshd);
    let mnt = c.mountpoint("mnt");
    let started = std::time::Instant::now();
    let out = c.try_mount(&sshd.export.display().to_string(), &mnt, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(e.contains("asks for a password") && e.contains("no terminal"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(!is_mounted(&mnt));
}

#[test]
fn keyboard_interactive_after_a_key_is_relayed_to_the_terminal() {
    set_remote_password();
    // Two factors: the key, then PAM's questions (keyboard-interactive).
    let sshd = Sshd::start_with(|_| {
        "UsePAM yes\nKbdInteractiveAuthentication yes\nPasswordAuthentication no\n\
         AuthenticationMethods publickey,keyboard-interactive\n"
    });
    let c = Client::new(&sshd);
    let mnt = c.mountpoint("mnt");
    let out = run_on_terminal(&mount_cmd(&c, &sshd, &mnt), &[("Password:", PASSWORD)]);
    assert!(out.status.success(), "mount failed: {}\n{}", stdout(&out), sshd.log());
    sh_ok(&format!("echo kbd > {}/k", mnt.display()));
    assert_eq!(fs::read_to_string(sshd.export.join("k")).unwrap(), "kbd\n");
    unmount(&c, &mnt);

    // A wrong answer is refused as a login failure, and nothing is left mounted.
    let out = run_on_terminal(&mount_cmd(&c, &sshd, &mnt), &[("Password:", "wrong")]);
    assert_eq!(out.status.code(), Some(4), "{}", stdout(&out));
    assert!(!is_mounted(&mnt));
}

#[test]
fn a_passphrase_protected_key_is_asked_for_on_the_terminal() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    sh_root_ok(&format!("ssh-keygen -q -p -P '' -N 'key-pass-9' -f {}", c.key().display()));
    c.give_home();
    let mnt = c.mountpoint("mnt");
    let out = run_on_terminal(&mount_cmd(&c, &sshd, &mnt), &[("Enter passphrase for key", "key-pass-9")]);
    assert!(out.status.success(), "mount failed: {}{}", stdout(&out), stderr(&out));
    sh_ok(&format!("echo pp > {}/p", mnt.display()));
    assert_eq!(fs::read_to_string(sshd.export.join("p")).unwrap(), "pp\n");
    unmount(&c, &mnt);

    // Without a terminal the error says how to use the key.
    let out = c.try_mount(&sshd.export.display().to_string(), &mnt, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("passphrase"), "{}", stderr(&out));
}

/// A throwaway CA for user certificates.
struct UserCa {
    _dir: tempfile::TempDir,
    key: std::path::PathBuf,
}

impl UserCa {
    fn new() -> UserCa {
        let dir = work_dir();
        let key = dir.path().join("ca");
        sh_root_ok(&format!("ssh-keygen -q -t ed25519 -N '' -C test-ca -f {}", key.display()));
        UserCa { _dir: dir, key }
    }

    /// An sshd that trusts this CA and authorizes no plain key: only a certificate can
    /// let the user in.
    fn sshd(&self) -> Sshd {
        let sshd = Sshd::start_with(|_| format!("TrustedUserCAKeys {}.pub\n", self.key.display()));
        fs::write(sshd.dir.path().join("authorized_keys"), "").unwrap();
        sshd
    }

    /// Signs the client's key for the remote login user: `KEY-cert.pub` beside it.
    fn sign(&self, c: &Client, sshd: &Sshd) {
        fs::copy(sshd.dir.path().join("user_key.pub"), c.key().with_extension("pub")).unwrap();
        sh_root_ok(&format!(
            "ssh-keygen -q -s {} -I moor-test -n {REMOTE_USER} -V -5m:+1h {}.pub",
            self.key.display(),
            c.key().display()
        ));
    }
}

#[test]
fn a_certificate_from_a_trusted_ca_logs_in() {
    let ca = UserCa::new();
    let sshd = ca.sshd();
    let c = Client::new(&sshd);
    let mnt = c.mountpoint("mnt");
    let out = c.try_mount(&sshd.export.display().to_string(), &mnt, &[]);
    assert_eq!(out.status.code(), Some(4), "the plain key was accepted: {}", stderr(&out));

    ca.sign(&c, &sshd);
    let cert = format!("{}-cert.pub", c.key().display());
    let kept = c.home.path().join(".ssh/user-cert.pub");
    fs::rename(&cert, &kept).unwrap();
    c.write_config(&sshd, &format!("  CertificateFile {}\n", kept.display()));
    let out = c.try_mount(&sshd.export.display().to_string(), &mnt, &[]);
    assert!(out.status.success(), "mount with the certificate failed: {}\n{}", stderr(&out), sshd.log());
    sh_ok(&format!("echo cert > {}/c", mnt.display()));
    assert_eq!(fs::read_to_string(sshd.export.join("c")).unwrap(), "cert\n");
    unmount(&c, &mnt);
}

/// The one-time-password secret of the test's HOTP token (hex), and its PAM service.
const OTP_SECRET: &str = "3132333435363738393031323334353637383930";
const OTP_SERVICE: &str = "moor-test-otp";

/// The token's code number `counter`, as an authenticator app would show it.
fn otp(counter: u64) -> String {
    sh_root_ok(&format!("oathtool --hotp -c {counter} {OTP_SECRET}")).trim().to_string()
}

/// /etc/pam.d/moor-test-otp for the test's sshd, removed when dropped.
struct PamService;

impl PamService {
    fn install(users_file: &std::path::Path) -> PamService {
        let text = format!(
            "auth required pam_oath.so usersfile={} window=10 digits=6\naccount required pam_permit.so\n\
             session required pam_permit.so\npassword required pam_deny.so\n",
            users_file.display()
        );
        fs::write(format!("/etc/pam.d/{OTP_SERVICE}"), text).unwrap();
        PamService
    }
}

impl Drop for PamService {
    fn drop(&mut self) {
        let _ = fs::remove_file(format!("/etc/pam.d/{OTP_SERVICE}"));
    }
}

#[test]
fn a_fresh_one_time_code_is_asked_for_by_moor_reconnect() {
    let users = work_dir();
    let users_file = users.path().join("users.oath");
    fs::write(&users_file, format!("HOTP {REMOTE_USER} - {OTP_SECRET}\n")).unwrap();
    let _pam = PamService::install(&users_file);
    // Two factors: the key, then a one-time code (keyboard-interactive through PAM).
    let mut sshd = Sshd::start_as(Some(OTP_SERVICE), |_| {
        "UsePAM yes\nKbdInteractiveAuthentication yes\nPasswordAuthentication no\n\
         AuthenticationMethods publickey,keyboard-interactive\n"
    });
    let c = Client::new(&sshd);
    let mnt = c.mountpoint("mnt");
    let out = run_on_terminal(&mount_cmd(&c, &sshd, &mnt), &[("One-time password", &otp(0))]);
    assert!(out.status.success(), "mount failed: {}{}\n{}", stdout(&out), stderr(&out), sshd.log());
    sh_ok(&format!("echo before > {}/f", mnt.display()));
    // Every login costs a code: the mount keeps the one connection it has.
    assert_eq!(c.mount_json()["connections"].as_array().map(Vec::len), Some(1), "{}", c.mount_json());

    // The server restarts: the code cannot be given again, so the mount waits for a person.
    sshd.restart(false);
    let waiting = wait_until(Duration::from_secs(30), || c.mount_json()["status"]["state"] == "needs_login");
    assert!(waiting, "never needed a login: {}", c.mount_json());
    // Meanwhile calls fail at once instead of hanging.
    let started = std::time::Instant::now();
    let cat = sh(&format!("cat {}/f", mnt.display()));
    assert!(!cat.status.success());
    assert!(stderr(&cat).contains("Resource temporarily unavailable"), "{}", stderr(&cat));
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let shown = String::from_utf8_lossy(&c.run(&["mount", "status"]).stdout).to_string();
    assert!(shown.contains("needs login"), "{shown}");

    // `moor reconnect` from a terminal asks for a fresh code and brings the mount back.
    let mut reconnect = c.moor();
    reconnect.args(["reconnect", mnt.to_str().unwrap()]);
    let out = run_on_terminal(&reconnect, &[("One-time password", &otp(1))]);
    assert!(out.status.success(), "reconnect failed: {}{}", stdout(&out), stderr(&out));
    assert_eq!(c.mount_json()["status"]["state"], "active");
    assert_eq!(sh_ok(&format!("cat {}/f", mnt.display())), "before\n");
    unmount(&c, &mnt);
}

#[test]
fn a_certificate_held_by_ssh_agent_logs_in() {
    let ca = UserCa::new();
    let sshd = ca.sshd();
    let c = Client::new(&sshd);
    ca.sign(&c, &sshd);
    c.give_home();
    // ssh-add loads the key and, beside it, its certificate; then the key file goes, so
    // only the agent can log in.
    let sock = c.home.path().join("run/agent.sock");
    sh_ok(&format!(
        "ssh-agent -a {} >/dev/null && SSH_AUTH_SOCK={} ssh-add -q {}",
        sock.display(),
        sock.display(),
        c.key().display()
    ));
    let _agent = AgentGuard(sock.clone());
    fs::remove_file(c.key()).unwrap();
    c.write_config(&sshd, &format!("  IdentityAgent {}\n", sock.display()));
    let mnt = c.mountpoint("mnt");
    let out = c.try_mount(&sshd.export.display().to_string(), &mnt, &[]);
    assert!(out.status.success(), "mount with the agent's certificate failed: {}\n{}", stderr(&out), sshd.log());
    sh_ok(&format!("echo agentcert > {}/a", mnt.display()));
    assert_eq!(fs::read_to_string(sshd.export.join("a")).unwrap(), "agentcert\n");
    unmount(&c, &mnt);
}

/// Ends the ssh-agent serving `.0` when dropped.
struct AgentGuard(std::path::PathBuf);

impl Drop for AgentGuard {
    fn drop(&mut self) {
        let _ = Command::new("pkill").args(["-f", &format!("ssh-agent -a {}", self.0.display())]).status();
    }
}

#[test]
fn batch_mode_never_asks_even_on_a_terminal() {
    set_remote_password();
    let sshd = Sshd::start_with(|_| PASSWORD_SSHD);
    let c = Client::new(&sshd);
    let mnt = c.mountpoint("mnt");
    let mut cmd = c.moor();
    cmd.args(["mount", "--allow-other", "-o", "BatchMode=yes", "-F", c.cfg()])
        .arg(format!("testhost:{}", sshd.export.display()))
        .arg(&mnt);
    let out = run_on_terminal(&cmd, &[("password:", PASSWORD)]);
    let shown = stdout(&out);
    assert_eq!(out.status.code(), Some(4), "{shown}");
    assert!(!shown.contains("'s password:"), "asked despite BatchMode: {shown}");
    assert!(!is_mounted(&mnt));
}
