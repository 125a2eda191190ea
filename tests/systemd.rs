//! A foreground mount under systemd: `Type=notify` hears READY=1 once the mount answers,
//! and STOPPING=1 when SIGTERM ends it cleanly. The service manager is a datagram socket
//! the test listens on, as systemd's is (a real manager is not available in tests).
mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;

/// Kills the foreground moor and detaches its mount if the test ends early.
struct Foreground {
    child: Option<Child>,
    mnt: std::path::PathBuf,
}

impl Drop for Foreground {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::process::Command::new("fusermount3").args(["-uz"]).arg(&self.mnt).stderr(Stdio::null()).status();
    }
}

/// Messages the manager's socket receives until one contains `wanted` (or the deadline).
fn receive_until(sock: &UnixDatagram, wanted: &str, deadline: Duration) -> Vec<String> {
    let end = std::time::Instant::now() + deadline;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < end {
        sock.set_read_timeout(Some(
            end.saturating_duration_since(std::time::Instant::now()).max(Duration::from_millis(1)),
        ))
        .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                let done = msg.contains(wanted);
                got.push(msg);
                if done {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    got
}

#[test]
fn a_foreground_mount_tells_systemd_when_it_is_ready_and_stops_on_sigterm() {
    let sshd = Sshd::start();
    sshd.put("hello", "hi\n");
    let c = Client::new(&sshd);
    let mnt = c.mountpoint("mnt");
    let work = work_dir();
    let notify = work.path().join("notify");
    let manager = UnixDatagram::bind(&notify).unwrap();
    std::fs::set_permissions(&notify, std::fs::Permissions::from_mode(0o666)).unwrap();
    let log = work.path().join("fg.log");

    let mut cmd = c.moor();
    cmd.args(["mount", "--foreground", "-v", "--allow-other", "-F", c.cfg()])
        .arg("--log-file")
        .arg(&log)
        .arg(format!("testhost:{}", sshd.export.display()))
        .arg(&mnt)
        .env("NOTIFY_SOCKET", &notify)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut fg = Foreground { child: Some(cmd.spawn().unwrap()), mnt: mnt.clone() };

    let got = receive_until(&manager, "READY=1", Duration::from_secs(20));
    let ready = got.iter().find(|m| m.contains("READY=1")).unwrap_or_else(|| panic!("no READY=1: {got:?}"));
    // Ready means usable: the mount answers at that moment.
    assert!(is_mounted(&mnt), "READY=1 before the mount was there");
    assert!(ready.contains("STATUS=active"), "{ready}");
    assert_eq!(std::fs::read_to_string(mnt.join("hello")).unwrap(), "hi\n");
    // The log went to the file, private to the user.
    assert!(std::fs::metadata(&log).unwrap().len() > 0);
    assert_eq!(std::fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o600);

    let mut child = fg.child.take().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let stopping = receive_until(&manager, "STOPPING=1", Duration::from_secs(20));
    assert!(stopping.iter().any(|m| m.contains("STOPPING=1")), "{stopping:?}");
    let ended = wait_until(Duration::from_secs(20), || matches!(child.try_wait(), Ok(Some(_))));
    assert!(ended, "moor --foreground did not end after SIGTERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status}");
    assert!(!is_mounted(&mnt), "still mounted after SIGTERM");
}

#[test]
fn a_log_file_that_cannot_be_written_is_a_usage_error() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let mnt = c.mountpoint("mnt");
    let out = c.run(&[
        "mount",
        "--foreground",
        "--log-file",
        "/proc/no-such-dir/moor.log",
        "-F",
        c.cfg(),
        &format!("testhost:{}", sshd.export.display()),
        mnt.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot log to /proc/no-such-dir/moor.log"), "{}", stderr(&out));
    assert!(!is_mounted(&mnt));
}
