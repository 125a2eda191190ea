//! The control plane through the real binary: watching state changes live, forcing a
//! reconnect, named mounts, waiting for a booting host, cleaning up after a dead agent,
//! private state, and refusing other users.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::*;

fn status_json(c: &Client) -> serde_json::Value {
    c.status_json()
}

fn state(c: &Client) -> String {
    c.state()
}

#[test]
fn watch_json_streams_reconnecting_then_active() {
    let sshd = Sshd::start();
    let proxy = Proxy::start(sshd.port);
    let c = Client::via(&sshd, proxy.port);
    let m = c.mount(sshd.export.to_str().unwrap());
    let mut watcher = c
        .moor()
        .args(["mount", "status", "--watch", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<serde_json::Value>();
    let out = watcher.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let next_state = |want: &str| -> Option<serde_json::Value> {
        let end = Instant::now() + Duration::from_secs(15);
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(ev) if ev["new"]["state"] == want => return Some(ev),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    };
    proxy.black_hole();
    let _ = fs::metadata(m.p("poke"));
    let ev = next_state("reconnecting").expect("no reconnecting event");
    assert_eq!(ev["old"]["state"], "active");
    assert!(ev["mount"].as_str().unwrap().starts_with("testhost"));
    assert!(ev["at"].as_str().unwrap().ends_with('Z'), "{ev}");
    proxy.restore();
    let _ = fs::metadata(m.p("poke"));
    let ev = next_state("active").expect("no active event");
    assert_eq!(ev["old"]["state"], "reconnecting");
    let _ = watcher.kill();
    let _ = watcher.wait();
}

#[test]
fn reconnect_skips_the_backoff() {
    let mut sshd = Sshd::start();
    let c = Client::new(&sshd);
    let export = sshd.export.to_str().unwrap().to_string();
    let m = c.mount_at(&export, "mnt", &["--backoff-base", "20s", "--backoff-cap", "60s", "--name", "slow"]);
    sshd.stop();
    // Wait (without touching the mount) until the next attempt is far away.
    let mut next_at = String::new();
    let far = wait_until(Duration::from_secs(60), || {
        let st = &status_json(&c)["mounts"][0]["status"];
        if st["state"] != "reconnecting" {
            return false;
        }
        next_at = st["next_attempt_at"].as_str().unwrap_or("").to_string();
        let out = sh_ok(&format!("date -d '{next_at}' +%s.%N"));
        out.trim().parse::<f64>().unwrap_or(0.0) - now_secs() > 8.0
    });
    assert!(far, "never saw a long backoff");
    sshd.restart(false);
    let t = Instant::now();
    let out = c.run(&["reconnect", "slow"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("reconnected"), "{}", stdout(&out));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(state(&c), "active");
    let at: f64 = sh_ok(&format!("date -d '{next_at}' +%s.%N")).trim().parse().unwrap();
    assert!(now_secs() < at, "reconnected only when the backoff ran out");
    // Unknown names are refused clearly.
    let out = c.run(&["reconnect", "nope"]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    drop(m);
}

fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn status_of_one_mount_shows_its_connections() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let m = c.mount_at(sshd.export.to_str().unwrap(), "mnt", &["--name", "work"]);
    fs::write(m.p("f"), vec![7u8; 100_000]).unwrap();
    assert_eq!(fs::read(m.p("f")).unwrap().len(), 100_000);
    for target in ["work", m.path.to_str().unwrap()] {
        let out = c.run(&["mount", "status", target]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("name:          work") && text.contains("connections:   4"), "{text}");
        assert_eq!(text.matches("  #").count(), 4, "{text}");
        assert!(text.contains("operations") && text.contains("idle"), "{text}");
    }
    let out = c.run(&["mount", "status", "--json", "work"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["bytes_written"].as_u64().unwrap() >= 100_000, "{v}");
    // Which connection served the file is the pool's choice: one of them did.
    let conns = v["connections"].as_array().unwrap();
    assert!(conns.iter().any(|c| c["operations"].as_u64().unwrap() > 0), "{v}");
    let out = c.run(&["mount", "status", "nope"]);
    assert_eq!(out.status.code(), Some(8));
}

#[test]
fn same_remote_again_is_offered_and_another_is_refused() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let export = sshd.export.to_str().unwrap().to_string();
    let m = c.mount(&export);
    let out = c.try_mount(&export, &m.path, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("already mounted"), "{}", stdout(&out));
    sshd.mkdir("sub");
    let out = c.try_mount(&format!("{export}/sub"), &m.path, &[]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("already has"), "{}", stderr(&out));
}

#[test]
fn killed_agent_leaves_no_dead_mount_behind() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let m = c.mount(sshd.export.to_str().unwrap());
    let pids = c.agent_pids();
    assert_eq!(pids.len(), 1);
    Command::new("kill").args(["-9", &pids[0].to_string()]).status().unwrap();
    // The kernel now has a dead mount there.
    // (Opening the directory always reaches the server side; a stat may be cached.)
    let dead = wait_until(Duration::from_secs(5), || {
        fs::read_dir(&m.path).err().and_then(|e| e.raw_os_error()) == Some(libc::ENOTCONN)
    });
    assert!(
        dead,
        "the mount is not dead 5 s after the agent's SIGKILL: {:?}\n{}",
        fs::read_dir(&m.path).err(),
        kernel_view(pids[0] as u32)
    );
    let out = c.run(&["mount", "status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("died"), "the cleanup is reported: {}", stderr(&out));
    assert!(stdout(&out).contains("died"), "status says what happened: {}", stdout(&out));
    assert!(!is_mounted(&m.path), "dead mount left behind");
    // Reported once.
    let out = c.run(&["mount", "status"]);
    assert!(!stdout(&out).contains("died"), "{}", stdout(&out));
    // The dead agent's socket is still there; a new mount replaces it with a new agent.
    assert!(c.home.path().join("run/moor/agent.sock").exists());
    let m2 = c.mount_at(sshd.export.to_str().unwrap(), "again", &[]);
    assert!(is_mounted(&m2.path));
    assert_eq!(c.agent_pids().len(), 1);
}

#[test]
fn racing_mounts_share_one_agent() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let spec = format!("testhost:{}", sshd.export.display());
    let children: Vec<_> = (0..3)
        .map(|i| {
            let mnt = c.mountpoint(&format!("race{i}"));
            c.moor()
                .args(["mount", "-F", c.cfg(), &spec, mnt.to_str().unwrap()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = run_with_deadline_child(child, Duration::from_secs(60));
        let log = fs::read_to_string(c.home.path().join("state/moor/agent.log")).unwrap_or_default();
        assert!(out.status.success(), "{}\nagent log:\n{log}", stderr(&out));
    }
    // Agents that lost the race leave once they see the winner keeps the lock.
    assert!(wait_until(Duration::from_secs(10), || c.agent_pids().len() == 1), "exactly one agent serves every mount");
    let out = c.run(&["mount", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mounts"].as_array().unwrap().len(), 3);
    let out = c.run(&["unmount", "--all"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn interrupted_wait_leaves_nothing_behind() {
    let mut sshd = Sshd::start();
    let c = Client::new(&sshd);
    sshd.stop();
    let mnt = c.mountpoint("mnt");
    let spec = format!("testhost:{}", sshd.export.display());
    let mut child = c
        .moor()
        .args(["mount", "--wait", "60s", "-F", c.cfg(), &spec, mnt.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The plain progress line says what it waits for.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("waiting for host testhost"), "{line}");
    assert!(wait_until(Duration::from_secs(10), || c.agent_pids().len() == 1));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    assert!(wait_until(Duration::from_secs(10), || child.try_wait().ok().flatten().is_some()));
    assert_eq!(child.wait().unwrap().code(), Some(130), "Ctrl-C exits with 130");
    // The agent notices, gives up waiting, and leaves: nothing mounted, nothing running.
    sshd.restart(false);
    assert!(wait_until(Duration::from_secs(15), || c.agent_pids().is_empty()), "agent still running");
    assert!(!is_mounted(&mnt));
}

#[test]
fn wait_succeeds_when_the_host_comes_up_later() {
    let mut sshd = Sshd::start();
    let c = Client::new(&sshd);
    sshd.stop();
    let mnt = c.mountpoint("mnt");
    let spec = format!("testhost:{}", sshd.export.display());
    let child = c
        .moor()
        .args(["mount", "--wait", "30s", "-F", c.cfg(), &spec, mnt.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The host "boots" five seconds after the command started.
    let started = Instant::now();
    pause(Duration::from_secs(5));
    sshd.restart(false);
    let out = run_with_deadline_child(child, Duration::from_secs(40));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert!(is_mounted(&mnt));
    let out = c.run(&["unmount", mnt.to_str().unwrap()]);
    assert!(out.status.success());
}

#[test]
fn wait_fails_at_once_on_a_refused_key() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    c.offer_unknown_key(&sshd);
    let mnt = c.mountpoint("mnt");
    let t = Instant::now();
    let out = c.try_mount("/", &mnt, &["--wait", "60s"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    assert!(!is_mounted(&mnt));
}

#[test]
fn garbage_durations_are_refused() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let mnt = c.mountpoint("mnt");
    for bad in ["soon", "5x", "-3s"] {
        let out = c.try_mount("/", &mnt, &["--wait", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
    }
}

#[test]
fn state_is_private_and_other_users_are_refused() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let m = c.mount(sshd.export.to_str().unwrap());
    let run = c.home.path().join("run/moor");
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&run), 0o700);
    assert_eq!(mode(&run.join("agent.sock")), 0o600);
    let state = c.home.path().join("state/moor");
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("mounts.json")), 0o600);
    assert_eq!(mode(&state.join("agent.log")), 0o600, "the agent's log is readable by others");
    let log = m.log_of(&c);
    assert_eq!(mode(&log), 0o600, "the mount's log is readable by others");
    let registry = fs::read_to_string(state.join("mounts.json")).unwrap();
    assert!(registry.contains("testhost") && registry.contains("\"uid\""), "{registry}");

    // Another user cannot reach the agent...
    let elsewhere = tempfile::tempdir().unwrap();
    fs::set_permissions(elsewhere.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let as_nobody = |args: &[&str]| {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "nobody", "--", "env", "-i"])
            .arg(format!("HOME={}", elsewhere.path().display()))
            .arg(format!("XDG_RUNTIME_DIR={}", c.home.path().join("run").display()))
            .arg(format!("XDG_STATE_HOME={}", elsewhere.path().display()))
            .arg(MOOR)
            .args(args)
            .stdin(Stdio::null());
        run_with_deadline(cmd, Duration::from_secs(30))
    };
    for args in [vec!["mount", "status", "--json"], vec!["unmount", m.path.to_str().unwrap()]] {
        let out = as_nobody(&args);
        assert!(!out.status.success(), "{args:?} succeeded as nobody: {}", stdout(&out));
        assert!(!stdout(&out).contains("testhost"), "{}", stdout(&out));
    }
    // ...and even with the directories opened up, the agent itself refuses them (the
    // CLI would not use a runtime dir it does not own, so a raw client speaks here).
    for dir in [c.home.path().to_path_buf(), c.home.path().join("run"), run.clone()] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::set_permissions(run.join("agent.sock"), fs::Permissions::from_mode(0o777)).unwrap();
    let raw = format!(
        r#"import socket
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
try:
    s.connect('{}')
    s.sendall(b'{{"version":1,"request":"status"}}\n')
    print('answered' if s.recv(4096) else 'refused')
except ConnectionError:
    print('refused')"#,
        run.join("agent.sock").display()
    );
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "nobody", "--", "python3", "-c", &raw]).stdin(Stdio::null());
    let out = run_with_deadline(cmd, Duration::from_secs(30));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "refused", "the agent answered another user");
    fs::set_permissions(&run, fs::Permissions::from_mode(0o700)).unwrap();
    assert!(is_mounted(&m.path), "another user took the mount down");
    let log = fs::read_to_string(state.join("agent.log")).unwrap();
    assert!(log.contains("refused a connection from another user"), "{log}");
}

#[test]
fn failed_mount_names_its_log() {
    let mut sshd = Sshd::start();
    let c = Client::new(&sshd);
    let m = c.mount_at(sshd.export.to_str().unwrap(), "mnt", &["--name", "keyed"]);
    sshd.restart(true);
    assert!(wait_until(Duration::from_secs(15), || {
        let _ = fs::metadata(m.p("poke"));
        state(&c) == "failed"
    }));
    let out = c.run(&["mount", "status"]);
    let text = stdout(&out);
    assert!(text.contains("keyed: failed; its log is"), "{text}");
    let log = status_json(&c)["mounts"][0]["log"].as_str().unwrap().to_string();
    let content = fs::read_to_string(&log).unwrap();
    assert!(content.contains("mounted") && content.contains("failed"), "{content}");
    assert_eq!(fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o600);
}

/// The state of the mount named `name`, "" when there is none.
fn state_of(c: &Client, name: &str) -> String {
    let doc = status_json(c);
    let mounts = doc["mounts"].as_array().cloned().unwrap_or_default();
    let mine = mounts.iter().find(|m| m["name"] == name);
    mine.and_then(|m| m["status"]["state"].as_str()).unwrap_or("").to_string()
}

/// Issue 20, point 4: each mount holds the link it uses. Mount A's link fails for good
/// (host key changed); once known_hosts is fixed, mount B of the same destination gets a
/// new link. Unmounting A closes A's link, never B's: B goes on reading and writing.
#[test]
fn unmounting_a_failed_mount_leaves_the_new_link_of_another_alone() {
    let mut sshd = Sshd::start();
    let c = Client::new(&sshd);
    let export = sshd.export.to_str().unwrap().to_string();
    let a = c.mount_at(&export, "a", &["--name", "a"]);
    sshd.restart(true);
    assert!(
        wait_until(Duration::from_secs(15), || {
            let _ = fs::metadata(a.p("poke"));
            state_of(&c, "a") == "failed"
        }),
        "{}",
        status_json(&c)
    );
    // Not `c.trust`: that hands the whole home over again, failed mount included.
    fs::write(&c.known_hosts, format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_pub.trim())).unwrap();
    give(&c.known_hosts, LOCAL_USER);
    let b = c.mount_at(&export, "b", &["--name", "b"]);
    assert_eq!(state_of(&c, "b"), "active");
    let out = c.run(&["unmount", &a.s()]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A's link goes with A: its supervisor ends (and says so) once A is unmounted.
    let agent_log = c.home.path().join("state/moor/agent.log");
    let closed = || fs::read_to_string(&agent_log).unwrap_or_default().matches("link closed").count();
    assert!(wait_until(Duration::from_secs(10), || closed() >= 1), "A's link was never closed");

    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    let mut f = fs::File::create(b.p("big")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert!(fs::read(b.p("big")).unwrap() == data, "B read back other data than it wrote");
    assert!(fs::read(sshd.export.join("big")).unwrap() == data, "the server has other data than B wrote");
    let doc = status_json(&c);
    assert_eq!(doc["mounts"].as_array().map(Vec::len), Some(1), "{doc}");
    assert_eq!(state_of(&c, "b"), "active", "{doc}");
    assert_eq!(closed(), 1, "only A's link is closed");
    let out = c.run(&["unmount", &b.s()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The agent runs from "/", so that it never keeps the directory it was started from
/// busy, and a key given as a relative path means the one where moor was run.
#[test]
fn the_agent_runs_from_root_and_relative_paths_mean_the_callers() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let here = c.home.path().join("work");
    fs::create_dir_all(&here).unwrap();
    fs::copy(sshd.user_key(), here.join("key")).unwrap();
    fs::set_permissions(here.join("key"), fs::Permissions::from_mode(0o600)).unwrap();
    // A config that names no key of its own.
    let config = c.home.path().join("bare_config");
    fs::write(
        &config,
        format!(
            "Host testhost\n  HostName 127.0.0.1\n  Port {}\n  User {REMOTE_USER}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n",
            sshd.port,
            c.known_hosts.display()
        ),
    )
    .unwrap();
    c.give_home();
    let mnt = c.mountpoint("mnt");
    let spec = format!("testhost:{}", sshd.export.display());
    let mut cmd = c.moor();
    cmd.current_dir(&here).args(["mount", "-F", config.to_str().unwrap(), "-i", "key", &spec, mnt.to_str().unwrap()]);
    let out = run_with_deadline(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "mount with a relative key failed: {}", stderr(&out));
    let agent = c.agent_pids();
    assert_eq!(agent.len(), 1);
    let cwd = fs::read_link(format!("/proc/{}/cwd", agent[0])).unwrap();
    assert_eq!(cwd, std::path::Path::new("/"), "the agent runs from {}", cwd.display());
    let out = c.run(&["unmount", mnt.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The CLI talks only to an agent of its own user: a socket in its runtime dir served
/// by another user (here root) is refused before anything is sent on it.
#[test]
fn the_cli_refuses_an_agent_socket_of_another_user() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let run = c.home.path().join("run/moor");
    fs::create_dir_all(&run).unwrap();
    c.give_home();
    fs::set_permissions(&run, fs::Permissions::from_mode(0o700)).unwrap();
    let sock = run.join("agent.sock");
    // A listener run by root, which reports whatever it is sent.
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o777)).unwrap();
    let heard = std::thread::spawn(move || {
        use std::io::Read;
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let _ = conn.read_to_end(&mut got);
        got
    });
    let out = c.run(&["mount", "status", "--json"]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    assert!(stderr(&out).contains("served by another user"), "{}", stderr(&out));
    let heard = heard.join().unwrap();
    assert!(heard.is_empty(), "the CLI spoke to another user's socket: {}", String::from_utf8_lossy(&heard));
}

/// A comma in the remote path is part of the path, not the start of a mount option
/// (`a,ro` must not mount read-only), and the mount is still known as moor's.
#[test]
fn a_comma_in_the_remote_path_is_not_a_mount_option() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    sshd.mkdir("a,ro");
    let m = c.mount_at(sshd.export.join("a,ro").to_str().unwrap(), "mnt", &[]);
    sh_ok(&format!("echo x > {}", m.p("f").display()));
    assert_eq!(fs::read_to_string(sshd.export.join("a,ro/f")).unwrap(), "x\n");
    let doc = status_json(&c);
    assert!(doc["mounts"][0]["remote"].as_str().unwrap().ends_with("/a,ro"), "{doc}");
    let out = c.run(&["unmount", "--all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!is_mounted(&m.path));
}

/// `moor mount status --watch ARGS` in the background, its output collected as it comes;
/// killed when dropped, whatever the test's outcome.
struct Watcher {
    child: std::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Watcher {
    fn start(c: &Client, args: &[&str]) -> Watcher {
        let mut child = c
            .moor()
            .args(["mount", "status", "--watch"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Watcher { child, stdout, stderr }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Whether the watch reached the agent within 15 s: it then prints the table of
    /// mounts, and every later change reaches it.
    fn connected(&self) -> bool {
        wait_until(Duration::from_secs(15), || self.stdout().contains("NAME"))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Gathers what `r` yields, line by line, until it closes.
fn collect(r: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            let mut t = sink.lock().unwrap();
            t.push_str(&line);
            t.push('\n');
        }
    });
    text
}

/// The lines of the file `--exec` commands append to ("" until the first one ran).
fn hook_lines(path: &std::path::Path) -> Vec<String> {
    fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

#[test]
fn watch_exec_runs_a_command_on_each_change_of_state() {
    let p = Proxied::start();
    let changes = p.c.home.path().join("changes");
    let hook =
        format!("echo \"$MOOR_MOUNT $MOOR_OLD_STATE $MOOR_NEW_STATE $MOOR_MOUNTPOINT\" >> {}", changes.display());
    let watch = Watcher::start(&p.c, &["--exec", &hook]);
    assert!(watch.connected(), "the watch never reached the agent: {}", watch.stderr());
    let saw = |old: &str, new: &str| {
        wait_until(Duration::from_secs(20), || {
            hook_lines(&changes).iter().any(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                f.len() == 4 && f[0].starts_with("testhost") && f[1] == old && f[2] == new && f[3] == p.m.s()
            })
        })
    };
    p.proxy.black_hole();
    let _ = fs::metadata(p.m.p("poke"));
    assert!(saw("active", "reconnecting"), "no hook for active -> reconnecting: {:?}", hook_lines(&changes));
    p.proxy.restore();
    let _ = fs::metadata(p.m.p("poke"));
    assert!(saw("reconnecting", "active"), "no hook for reconnecting -> active: {:?}", hook_lines(&changes));
    // Once per change of state: the retries in between ran nothing.
    assert_eq!(hook_lines(&changes).len(), 2, "{:?}", hook_lines(&changes));
    assert!(!watch.stderr().contains("--exec"), "{}", watch.stderr());
}

#[test]
fn watch_exec_reports_a_hanging_or_failing_command_and_goes_on() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let export = sshd.export.to_str().unwrap();
    // Keeps the agent up, so that the watch has one to reach before the mount it hears of.
    let _first = c.mount(export);
    let changes = c.home.path().join("changes");
    let hung_pid = c.home.path().join("hung.pid");
    let hook = format!(
        "echo \"$MOOR_OLD_STATE $MOOR_NEW_STATE $MOOR_MOUNTPOINT\" >> {}; case $MOOR_NEW_STATE in \
         active) echo $$ > {}; exec sleep 600;; unmounted) exit 3;; esac",
        changes.display(),
        hung_pid.display()
    );
    let mut watch = Watcher::start(&c, &["--exec", &hook, "--exec-timeout", "1s"]);
    assert!(watch.connected(), "the watch never reached the agent: {}", watch.stderr());
    let second = c.mount_at(export, "second", &["--name", "second"]);
    let reported = |needle: &str| wait_until(Duration::from_secs(20), || watch.stderr().contains(needle));
    assert!(
        reported("for second (connecting -> active) ran longer than 1s and was killed"),
        "no report of the hanging command: {}",
        watch.stderr()
    );
    let hung = fs::read_to_string(&hung_pid).unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{}", hung.trim())).exists(), "the hanging command still runs");
    // The next change's command runs; its failure is reported, and the watch goes on.
    let out = c.run(&["unmount", "second"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        reported("for second (active -> unmounted) exited with code 3"),
        "no report of the failing command: {}",
        watch.stderr()
    );
    let mp = second.s();
    assert_eq!(hook_lines(&changes), [format!("connecting active {mp}"), format!("active unmounted {mp}")]);
    assert!(watch.stdout().contains("second: active -> unmounted"), "{}", watch.stdout());
    assert!(watch.child.try_wait().unwrap().is_none(), "the watch ended: {}", watch.stderr());
}

#[test]
fn the_agent_holds_nothing_its_starter_had_open() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let mnt = c.mountpoint("mnt");
    let work = work_dir();
    let lock = work.path().join("lock");
    // `flock LOCK moor mount ...`: the lock's descriptor is open in moor mount, and
    // would be in the agent it starts if the agent kept what it was handed.
    let template = c.moor();
    let mut cmd = std::process::Command::new("flock");
    cmd.arg(&lock).arg(MOOR).args(["mount", "--allow-other", "-F", c.cfg()]);
    cmd.arg(format!("testhost:{}", sshd.export.display())).arg(&mnt);
    as_local_user(&mut cmd);
    for (k, v) in template.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let out = run_with_deadline(cmd, std::time::Duration::from_secs(60));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!c.agent_pids().is_empty(), "no agent serves the mount");
    let free = std::process::Command::new("flock").args(["-n"]).arg(&lock).arg("true").status().unwrap();
    assert!(free.success(), "the agent still holds the lock its starter held");
    let out = c.run(&["unmount", mnt.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}
