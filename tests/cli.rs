//! The command line against a real sshd: status, unmount, foreground mode, and every kind
//! of bad input, each with a one-line error, the documented exit code, and nothing left
//! mounted or running.

mod common;

use std::fs;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// Exit codes, as README documents them.
const USAGE: i32 = 2;
const CONNECT: i32 = 3;
const AUTH: i32 = 4;
const HOST_KEY: i32 = 5;
const REMOTE_PATH: i32 = 6;
const MOUNTPOINT: i32 = 7;
const NOT_MOUNTED: i32 = 8;

/// Asserts a failed command: exit code, one line on stderr containing `needle`, no panic.
fn assert_fails(out: &std::process::Output, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {err}");
    assert!(err.contains(needle), "stderr lacks '{needle}': {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "want one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Nothing is mounted on `mnt`, and the agent has gone (it serves no mount).
fn assert_clean(c: &Client, mnt: &std::path::Path) {
    assert!(!is_mounted(mnt), "{} left mounted", mnt.display());
    assert!(wait_until(Duration::from_secs(10), || c.agent_pids().is_empty()), "agent left running");
}

#[test]
fn status_table_and_json() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let m = c.mount(sshd.export.to_str().unwrap());
    let out = c.run(&["mount", "status"]);
    assert!(out.status.success());
    let table = stdout(&out);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains(&m.s()) && table.contains("active") && table.contains("moor-remote@testhost:"), "{table}");
    let out = c.run(&["mount", "status", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    let mounts = doc["mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0]["status"]["state"], "active");
    assert_eq!(mounts[0]["mountpoint"], m.s());
    assert_eq!(mounts[0]["remote"], format!("{REMOTE_USER}@testhost:{}", sshd.export.display()));
}

#[test]
fn unmount_by_path_and_name_and_agent_exits() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let export = sshd.export.to_str().unwrap();
    let a = c.mount_at(export, "a", &[]);
    let b = c.mount_at(export, "b", &["--name", "second"]);
    assert_eq!(c.agent_pids().len(), 1, "one agent serves both mounts");
    let out = c.run(&["unmount", &a.s()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!is_mounted(&a.path));
    assert!(is_mounted(&b.path));
    let out = c.run(&["unmount", "second"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_clean(&c, &b.path);
}

#[test]
fn busy_unmount_is_refused_then_lazy_works() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let m = c.mount(sshd.export.to_str().unwrap());
    let mut holder =
        std::process::Command::new("sleep").arg("60").current_dir(&m.path).stdin(Stdio::null()).spawn().unwrap();
    let out = c.run(&["unmount", &m.s()]);
    assert_fails(&out, MOUNTPOINT, "--lazy");
    assert!(is_mounted(&m.path));
    let out = c.run(&["unmount", "--lazy", &m.s()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!is_mounted(&m.path));
    let _ = holder.kill();
    let _ = holder.wait();
    assert_clean(&c, &m.path);
}

#[test]
fn foreground_mount_unmounts_on_interrupt() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let mnt = c.mountpoint("fg");
    let spec = format!("testhost:{}", sshd.export.display());
    let mut child = c
        .moor()
        .args(["mount", "--foreground", "--allow-other", "-F", c.cfg(), &spec, mnt.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(15), || is_mounted(&mnt)), "foreground mount did not appear");
    sshd.put("f", "x");
    assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "x");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let exited = wait_until(Duration::from_secs(15), || child.try_wait().ok().flatten().is_some());
    if !exited {
        let _ = child.kill();
    }
    assert!(exited, "foreground moor did not exit on SIGINT");
    assert!(child.wait().unwrap().success());
    assert!(!is_mounted(&mnt));
}

/// Root with a user's runtime or state directory in its environment (`su` without `-`
/// keeps them) would put its socket, lock, registry and logs where that user can swap
/// them: refused, with what to do.
#[test]
fn root_refuses_a_users_runtime_and_state_directories() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let own = tempfile::tempdir().unwrap();
    let root_moor = |run: &std::path::Path, state: &std::path::Path| {
        let mut cmd = std::process::Command::new(MOOR);
        cmd.args(["mount", "status"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", own.path())
            .env("XDG_RUNTIME_DIR", run)
            .env("XDG_STATE_HOME", state)
            .stdin(Stdio::null());
        run_with_deadline(cmd, Duration::from_secs(30))
    };
    let users_run = c.home.path().join("run");
    let out = root_moor(&users_run, own.path());
    assert_fails(&out, 9, &format!("XDG_RUNTIME_DIR={} is not a directory of yours", users_run.display()));
    assert!(stderr(&out).contains("su -"), "{}", stderr(&out));
    assert!(!users_run.join("moor").exists(), "root made its runtime dir in the user's");
    // With its own runtime dir, the user's state dir is refused in turn (status needs
    // none: it says so, and goes on).
    let out = root_moor(own.path(), &c.home.path().join("state"));
    assert!(stderr(&out).contains("XDG_STATE_HOME="), "{}", stderr(&out));
    assert!(!c.home.path().join("state/moor").exists(), "root made its state dir in the user's");
}

/// The uid that owns `/proc/PID`'s files: the process's own, unless it is not dumpable
/// (then root's, and other processes of its user can neither trace it nor read its
/// memory, environment or descriptors).
fn proc_owner(pid: u32) -> u32 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(format!("/proc/{pid}/status")).unwrap().uid()
}

#[test]
fn the_agent_and_a_foreground_mount_cannot_be_dumped_or_traced() {
    let (local_uid, _) = ids_of(LOCAL_USER);
    assert_ne!(local_uid, 0);
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let _m = c.mount(sshd.export.to_str().unwrap());
    let agents = c.agent_pids();
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert_eq!(proc_owner(agents[0] as u32), 0, "the agent is dumpable");
    let mnt = c.mountpoint("fg");
    let spec = format!("testhost:{}", sshd.export.display());
    let mut child = c
        .moor()
        .args(["mount", "--foreground", "--allow-other", "-F", c.cfg(), &spec, mnt.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mounted = wait_until(Duration::from_secs(15), || is_mounted(&mnt));
    let owner = proc_owner(child.id());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let exited = wait_until(Duration::from_secs(15), || child.try_wait().ok().flatten().is_some());
    if !exited {
        let _ = child.kill();
    }
    assert!(mounted, "foreground mount did not appear");
    assert_eq!(owner, 0, "the foreground mount is dumpable");
}

#[test]
fn unknown_host_name() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    c.write_config(&sshd, "Host nosuch\n  HostName nosuch-host.invalid\n");
    let mnt = c.mountpoint("mnt");
    // No network of its own: the lookup fails here without any traffic leaving the machine.
    // unshare needs root; moor runs as the local user again, whose directories it uses.
    let mut cmd = c.moor();
    cmd.args(["mount", "-F", c.cfg(), "nosuch:/", mnt.to_str().unwrap()]);
    let (uid, gid) = ids_of(LOCAL_USER);
    let mut un = std::process::Command::new("unshare");
    un.arg("-n")
        .arg("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => un.env(k, v),
            None => un.env_remove(k),
        };
    }
    un.env_remove("SSH_AUTH_SOCK").stdin(Stdio::null());
    let out = run_with_deadline(un, Duration::from_secs(30));
    assert_fails(&out, CONNECT, "nosuch-host.invalid");
    assert_clean(&c, &mnt);
}

#[test]
fn connection_refused() {
    let mut sshd = Sshd::start();
    let c = Client::new(&sshd);
    sshd.stop();
    let mnt = c.mountpoint("mnt");
    let out = c.try_mount("/", &mnt, &[]);
    assert_fails(&out, CONNECT, "refused");
    assert_clean(&c, &mnt);
}

#[test]
fn key_not_accepted() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    c.offer_unknown_key(&sshd);
    let mnt = c.mountpoint("mnt");
    let out = c.try_mount("/", &mnt, &[]);
    assert_fails(&out, AUTH, "refused every key");
    assert_clean(&c, &mnt);
}

#[test]
fn unknown_host_key_is_refused_with_fingerprint() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    fs::write(&c.known_hosts, "").unwrap();
    let mnt = c.mountpoint("mnt");
    let out = c.try_mount("/", &mnt, &[]);
    assert_fails(&out, HOST_KEY, "SHA256:");
    assert!(stderr(&out).contains("accept-new"));
    assert_eq!(fs::read_to_string(&c.known_hosts).unwrap(), "", "nothing recorded");
    assert_clean(&c, &mnt);
    // "no" does not mean "skip checking": it records the key like accept-new.
    let out = c.try_mount("/", &mnt, &["-o", "StrictHostKeyChecking=no"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let kh = fs::read_to_string(&c.known_hosts).unwrap();
    assert!(kh.contains(&format!("[127.0.0.1]:{}", sshd.port)), "{kh}");
    let out = c.run(&["unmount", mnt.to_str().unwrap()]);
    assert!(out.status.success());
}

#[test]
fn accept_new_records_the_key() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    fs::write(&c.known_hosts, "").unwrap();
    let m = c.mount_at(sshd.export.to_str().unwrap(), "mnt", &["-o", "StrictHostKeyChecking=accept-new"]);
    let kh = fs::read_to_string(&c.known_hosts).unwrap();
    let key_b64 = sshd.host_pub.split_whitespace().nth(1).unwrap();
    assert!(kh.contains(key_b64), "{kh}");
    drop(m);
}

#[test]
fn changed_host_key_is_refused_loudly() {
    let mut sshd = Sshd::start();
    let c = Client::new(&sshd);
    sshd.restart(true);
    let mnt = c.mountpoint("mnt");
    // Even accept-new must refuse a changed key.
    let out = c.try_mount("/", &mnt, &["-o", "StrictHostKeyChecking=accept-new"]);
    assert_fails(&out, HOST_KEY, "HAS CHANGED");
    assert_clean(&c, &mnt);
}

#[test]
fn remote_path_missing_or_not_a_directory() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    sshd.put("file", "x");
    let mnt = c.mountpoint("mnt");
    let out = c.try_mount(&format!("{}/nope", sshd.export.display()), &mnt, &[]);
    assert_fails(&out, REMOTE_PATH, "does not exist");
    let out = c.try_mount(&format!("{}/file", sshd.export.display()), &mnt, &[]);
    assert_fails(&out, REMOTE_PATH, "not a directory");
    assert_clean(&c, &mnt);
}

#[test]
fn relative_and_default_remote_paths() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    // The remote home of the test user.
    let m = c.mount_at("", "home", &[]);
    let out = c.run(&["mount", "status", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let home = doc["mounts"][0]["remote"].as_str().unwrap().to_string();
    assert!(home.ends_with(&format!(":/home/{REMOTE_USER}")), "{home}");
    drop(m);
}

#[test]
fn bad_mountpoints() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let export = sshd.export.to_str().unwrap();
    let missing = c.home.path().join("missing");
    let out = c.try_mount(export, &missing, &[]);
    assert_fails(&out, MOUNTPOINT, "does not exist");
    let file = c.home.path().join("afile");
    fs::write(&file, "").unwrap();
    let out = c.try_mount(export, &file, &[]);
    assert_fails(&out, MOUNTPOINT, "not a directory");
    let m = c.mount(export);
    let out = c.try_mount("/", &m.path, &[]);
    assert_fails(&out, MOUNTPOINT, "already has");
    // A mount made by something else is refused before anyone is dialled.
    let other = c.mountpoint("other");
    // Mounting a tmpfs needs root.
    sh_root_ok(&format!("mount -t tmpfs none {}", other.display()));
    let out = c.try_mount(export, &other, &[]);
    let _ = std::process::Command::new("umount").arg(&other).status();
    assert_fails(&out, MOUNTPOINT, "already a mount");
    assert!(is_mounted(&m.path), "the existing mount is untouched");
}

#[test]
fn garbage_options() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let mnt = c.mountpoint("mnt");
    let m = mnt.to_str().unwrap();
    for args in [
        vec!["mount", "-p", "notaport", "testhost:/", m],
        vec!["mount", "-p", "70000", "testhost:/", m],
        vec!["mount", "testhost:/"],
        vec!["mount", "--bogus", "testhost:/", m],
        vec!["unmount"],
    ] {
        let out = c.run(&args);
        assert_eq!(out.status.code(), Some(USAGE), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"));
    }
    for (size, needle) in [("12Q", "unknown unit 'Q'"), ("2G", "out of range")] {
        let out = c.run(&["mount", "--read-ahead", size, "testhost:/", m]);
        assert_eq!(out.status.code(), Some(USAGE), "--read-ahead {size}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "--read-ahead {size}: {}", stderr(&out));
    }
    for (args, needle) in [
        (vec!["mount", "-F", c.cfg(), "-o", "nonsense", "testhost:/", m], "unknown option 'nonsense' in -o"),
        (vec!["mount", "-F", "/nonexistent/config", "testhost:/", m], "/nonexistent/config"),
        (vec!["mount", "-F", c.cfg(), "-o", "StrictHostKeyChecking=maybe", "testhost:/", m], "StrictHostKeyChecking"),
        (vec!["mount", "-F", c.cfg(), "-o", "Port=notaport", "testhost:/", m], "-o Port=notaport"),
        (vec!["mount", "-F", c.cfg(), "@testhost:/", m], "empty user name"),
    ] {
        let out = c.run(&args);
        assert_fails(&out, USAGE, needle);
    }
    assert_clean(&c, &mnt);
}

/// A duration that is not zero yet rounds to nothing (a zero heartbeat interval panicked
/// the link), or past any sensible wait, is refused before anything starts.
#[test]
fn durations_under_a_millisecond_or_beyond_a_year_are_refused() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let mnt = c.mountpoint("mnt");
    let m = mnt.to_str().unwrap();
    let spec = format!("testhost:{}", sshd.export.display());
    for flag in [
        "--heartbeat-interval",
        "--request-timeout",
        "--call-timeout",
        "--backoff-base",
        "--backoff-cap",
        "--cache-timeout",
        "--wait",
    ] {
        let out = c.run(&["mount", "-F", c.cfg(), flag, "0.0000000001s", &spec, m]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(USAGE), "{flag}: {err}");
        assert!(err.lines().next().unwrap_or("").contains("is too short: use at least 1ms"), "{flag}: {err}");
        assert!(!err.contains("panicked"), "{flag}: {err}");
        let out = c.run(&["mount", "-F", c.cfg(), flag, "9000h", &spec, m]);
        assert_eq!(out.status.code(), Some(USAGE), "{flag} 9000h: {}", stderr(&out));
    }
    let out = c.run(&["mount", "-F", c.cfg(), "-o", "cache_timeout=18446744073709551615", &spec, m]);
    assert_fails(&out, USAGE, "-o cache_timeout=18446744073709551615");
    assert_clean(&c, &mnt);
}

/// A mount's name becomes its log's file name: one that could reach another directory
/// is refused before anything is mounted or written.
#[test]
fn a_name_that_is_not_a_plain_file_name_is_refused() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let mnt = c.mountpoint("mnt");
    let export = sshd.export.to_str().unwrap();
    for name in ["../../../x", "a/b", "..", ".hidden"] {
        let out = c.try_mount(export, &mnt, &["--name", name]);
        assert_fails(&out, USAGE, "bad --name");
        assert!(!is_mounted(&mnt), "mounted with --name {name}");
    }
    // Where `../../../x` would have put the log, from the state dir's logs/.
    assert!(!c.home.path().join("x.log").exists(), "a log escaped its directory");
    assert_clean(&c, &mnt);
}

#[test]
fn unmount_of_something_that_is_not_a_moor_mount() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let dir = c.mountpoint("plain");
    let out = c.run(&["unmount", dir.to_str().unwrap()]);
    assert_fails(&out, NOT_MOUNTED, "not a moor mount");
    let out = c.run(&["unmount", "no-such-name"]);
    assert_fails(&out, NOT_MOUNTED, "not a moor mount");
    // With an agent running, too.
    let m = c.mount(sshd.export.to_str().unwrap());
    let out = c.run(&["unmount", dir.to_str().unwrap()]);
    assert_fails(&out, NOT_MOUNTED, "not a moor mount");
    drop(m);
}

#[test]
fn help_teaches_with_examples() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    for args in [vec!["--help"], vec!["mount", "--help"], vec!["unmount", "--help"], vec!["mount", "status", "--help"]]
    {
        let out = c.run(&args);
        assert!(out.status.success());
        assert!(stdout(&out).contains("Examples:"), "{args:?}: {}", stdout(&out));
    }
}

#[test]
fn ssh_agent_authentication() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    // Only the agent holds the key: the config names a key file that does not exist.
    c.write_config(&sshd, "");
    let cfg = fs::read_to_string(&c.ssh_config).unwrap().replace(&c.key().display().to_string(), "/nonexistent/key");
    fs::write(&c.ssh_config, cfg.replace("IdentitiesOnly yes", "IdentitiesOnly no")).unwrap();
    let sock = c.home.path().join("agent.sock");
    // ssh-agent serves only its own user: it runs as the one moor runs as.
    let (uid, gid) = ids_of(LOCAL_USER);
    let mut agent = std::process::Command::new("ssh-agent")
        .uid(uid)
        .gid(gid)
        .args(["-D", "-a"])
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || sock.exists()));
    let add = std::process::Command::new("ssh-add").arg(sshd.user_key()).env("SSH_AUTH_SOCK", &sock).output().unwrap();
    assert!(add.status.success(), "{}", stderr(&add));
    let mnt = c.mountpoint("mnt");
    let mut cmd = c.moor();
    cmd.env("SSH_AUTH_SOCK", &sock).args([
        "mount",
        "-F",
        c.cfg(),
        &format!("testhost:{}", sshd.export.display()),
        mnt.to_str().unwrap(),
    ]);
    let out = run_with_deadline(cmd, Duration::from_secs(60));
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(is_mounted(&mnt));
    let out = c.run(&["unmount", mnt.to_str().unwrap()]);
    assert!(out.status.success());
}

/// With no UserKnownHostsFile, known_hosts is `$HOME/.ssh/known_hosts`, as moor has
/// always read it, even though `ssh -G` (which resolves the config) expands `~` from
/// the password database's home.
#[test]
fn the_default_known_hosts_is_in_home() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let cfg = fs::read_to_string(&c.ssh_config).unwrap();
    let cfg: String = cfg.lines().filter(|l| !l.contains("UserKnownHostsFile")).map(|l| format!("{l}\n")).collect();
    fs::write(&c.ssh_config, cfg).unwrap();
    c.give_home();
    assert!(c.known_hosts.starts_with(c.home.path()));
    let m = c.mount(sshd.export.to_str().unwrap());
    assert!(is_mounted(&m.path));
}

/// `moor ARGS` where nothing but the binary is needed (generating text).
fn moor_alone(args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(MOOR);
    cmd.args(args).stdin(Stdio::null());
    run_with_deadline(cmd, Duration::from_secs(30))
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let out = moor_alone(&["completions", "bash"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let file = script_file(&stdout(&out));
    let check = std::process::Command::new("bash").arg("-n").arg(file.path()).output().unwrap();
    assert!(check.status.success(), "bash -n rejects the completion: {}", stderr(&check));
    // What bash offers at a tab, as its completion machinery calls the function.
    let complete = |words: &[&str]| {
        let script = format!(
            "source {}; COMP_WORDS=({}); COMP_CWORD={}; _moor moor \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; \
             echo \"${{COMPREPLY[@]}}\"",
            file.path().display(),
            words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" "),
            words.len() - 1
        );
        let out = std::process::Command::new("bash").args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).split_whitespace().map(str::to_string).collect::<Vec<_>>()
    };
    let commands = complete(&["moor", ""]);
    for sub in ["mount", "unmount", "reconnect", "completions", "man"] {
        assert!(commands.iter().any(|c| c == sub), "bash does not offer {sub}: {commands:?}");
    }
    assert!(!commands.iter().any(|c| c == "agent"), "the hidden agent command is offered: {commands:?}");
    assert_eq!(complete(&["moor", "mount", "status", "--ex"]), ["--exec", "--exec-timeout"]);
    for (shell, mark) in [("zsh", "#compdef moor"), ("fish", "complete -c moor")] {
        let out = moor_alone(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        assert!(stdout(&out).contains(mark), "{shell}: {}", stdout(&out));
        assert!(stdout(&out).contains("reconnect"), "{shell} lacks the subcommands");
    }
    let out = moor_alone(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(USAGE));
    assert!(stderr(&out).contains("possible values: bash, elvish, fish, powershell, zsh"), "{}", stderr(&out));
}

#[test]
fn man_pages_for_each_command() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man1");
    let out = moor_alone(&["man", "--dir", pages.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = [
        "moor",
        "moor-mount",
        "moor-mount-status",
        "moor-unmount",
        "moor-reconnect",
        "moor-cache",
        "moor-cache-clear",
        "moor-completions",
        "moor-man",
    ];
    let mut written: Vec<String> =
        fs::read_dir(&pages).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    written.sort();
    let mut want: Vec<String> = expected.iter().map(|p| format!("{p}.1")).collect();
    want.sort();
    assert_eq!(written, want, "the hidden agent command gets no page");
    assert_eq!(stdout(&out).lines().count(), expected.len(), "one line per page written: {}", stdout(&out));
    for page in expected {
        let path = pages.join(format!("{page}.1"));
        let roff = fs::read_to_string(&path).unwrap();
        assert!(roff.contains(&format!(".TH {page} 1")), "{page}: {roff}");
        for section in [".SH NAME", ".SH SYNOPSIS", ".SH DESCRIPTION"] {
            assert!(roff.contains(section), "{page} lacks {section}");
        }
        // man renders it, as a reader would see it.
        let shown = std::process::Command::new("man")
            .arg("-l")
            .arg(&path)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        assert!(shown.status.success(), "man -l {page}: {}", stderr(&shown));
        assert!(stdout(&shown).contains("SYNOPSIS"), "man -l {page}: {}", stdout(&shown));
    }
    let status = fs::read_to_string(pages.join("moor-mount-status.1")).unwrap();
    assert!(status.contains("MOOR_NEW_STATE"), "the hook's variables are documented");
    assert_fails(&moor_alone(&["man", "--dir", "/proc/no/such"]), USAGE, "cannot write man pages to /proc/no/such");
}
