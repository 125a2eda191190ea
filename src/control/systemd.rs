//! Living under systemd: a `Type=notify` unit hears when a foreground mount is ready and
//! how it is doing, and a user with a systemd user manager gets the agent started in a
//! unit of its own, so that it leaves the terminal's session and cgroup (closing the
//! terminal or logging out of one session must not take the mounts with it).

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;

/// The transient user unit the agent runs in (`journalctl --user -u moor-agent`).
pub const AGENT_UNIT: &str = "moor-agent";

/// Tells the service manager `state` (`READY=1`, `STATUS=...`, `STOPPING=1`) when this
/// process runs under one that listens (`$NOTIFY_SOCKET`); says whether it was sent.
/// Best effort: a message that cannot be sent must not fail the mount.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return false };
    let Ok(sock) = UnixDatagram::unbound() else { return false };
    let sent = match path.as_encoded_bytes().strip_prefix(b"@") {
        // An abstract socket, as systemd usually gives it.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
        }
        None => sock.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = &sent {
        tracing::debug!(%e, "cannot notify the service manager");
    }
    sent.is_ok()
}

/// Whether stderr goes to the journal (this process is a systemd unit's), where the
/// agent then logs instead of in its own file.
pub fn logs_to_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}

/// Whether the user has a systemd user manager running to start the agent under.
pub fn user_manager() -> bool {
    let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR") else { return false };
    Path::new(&runtime).join("systemd/private").exists()
}

/// What the agent needs of the caller's environment: the unit starts from the user
/// manager's, which may lack the login's ssh-agent or its own directories.
const PASSED_ENV: [&str; 8] =
    ["HOME", "PATH", "USER", "XDG_RUNTIME_DIR", "XDG_STATE_HOME", "SSH_AUTH_SOCK", "MOOR_LOG", "LANG"];

/// `systemd-run` starting `exe agent` in the transient user unit `AGENT_UNIT`, with
/// the variables of `PASSED_ENV` that `env` has.
pub fn agent_unit_command(exe: &Path, verbose: u8, env: impl Fn(&str) -> Option<OsString>) -> Command {
    let mut cmd = Command::new("systemd-run");
    cmd.args(["--user", "--quiet", "--collect", "--unit", AGENT_UNIT, "--property=KillMode=mixed"]);
    for key in PASSED_ENV {
        if let Some(v) = env(key) {
            let mut arg = OsString::from(format!("--setenv={key}="));
            arg.push(v);
            cmd.arg(arg);
        }
    }
    cmd.arg("--").arg(exe).arg("agent");
    for _ in 0..verbose {
        cmd.arg("-v");
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_unit_gets_the_callers_environment() {
        let env = |k: &str| match k {
            "HOME" => Some(OsString::from("/home/a")),
            "SSH_AUTH_SOCK" => Some(OsString::from("/run/user/1000/ssh")),
            _ => None,
        };
        let cmd = agent_unit_command(Path::new("/usr/bin/moor"), 1, env);
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(cmd.get_program(), "systemd-run");
        assert_eq!(
            args,
            [
                "--user",
                "--quiet",
                "--collect",
                "--unit",
                "moor-agent",
                "--property=KillMode=mixed",
                "--setenv=HOME=/home/a",
                "--setenv=SSH_AUTH_SOCK=/run/user/1000/ssh",
                "--",
                "/usr/bin/moor",
                "agent",
                "-v"
            ]
        );
    }

    #[test]
    fn notify_reaches_a_listening_socket_and_fails_quietly_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        // The variable is this process's; tests that read it run here only.
        std::env::set_var("NOTIFY_SOCKET", &path);
        assert!(notify("READY=1"));
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::env::set_var("NOTIFY_SOCKET", dir.path().join("nobody"));
        assert!(!notify("READY=1"));
        std::env::remove_var("NOTIFY_SOCKET");
        assert!(!notify("READY=1"));
    }
}
