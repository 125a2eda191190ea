//! Waiting for a child process with a deadline: a command that hangs (an `ssh -G` stuck
//! on a `Match exec`, a wedged service manager) must not hang moor with it.

use std::process::{Child, Output};
use std::time::Duration;

/// Waits for `child` to end and collects its output. Once `deadline` has passed, the
/// child is killed (and still reaped, by the thread that waits) and `None` is returned.
pub fn wait_within(child: Child, deadline: Duration) -> Option<std::io::Result<Output>> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(out) => Some(out),
        Err(_) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn a_child_that_ends_gives_its_output_and_one_that_hangs_is_killed() {
        let quick = Command::new("echo").arg("hi").stdout(Stdio::piped()).spawn().unwrap();
        let out = wait_within(quick, Duration::from_secs(10)).unwrap().unwrap();
        assert_eq!(out.stdout, b"hi\n");
        let stuck = Command::new("sleep").arg("600").spawn().unwrap();
        let proc_dir = format!("/proc/{}", stuck.id());
        let started = std::time::Instant::now();
        assert!(wait_within(stuck, Duration::from_millis(200)).is_none());
        assert!(started.elapsed() < Duration::from_secs(5));
        // Killed, and reaped by the thread that waits: the process goes away.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::path::Path::new(&proc_dir).exists() && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(!std::path::Path::new(&proc_dir).exists(), "the hanging child is still there");
    }
}
