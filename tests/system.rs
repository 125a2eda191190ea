//! moor as the system mounts it: `mount -t fuse.moor` and fstab lines through the FUSE
//! mount helper (mount.fuse3 runs `moor SOURCE MOUNTPOINT -o OPTIONS`), `umount` ending
//! the mount in the agent, and the sshfs options people type: read-only, sharing with other local users, kernel permission
//! checks, symlinks followed.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// A third local user, for "another user reads the mount".
const OTHER_USER: &str = "moor-other";

/// Where mount.fuse3 finds the helper: mount(8) runs helpers without PATH, so the shell
/// mount.fuse3 starts searches its default one, which begins here.
const HELPER_LINK: &str = "/usr/local/sbin/moor";

/// Tests using the helper link now; the last one out removes it.
static HELPER_USERS: Mutex<usize> = Mutex::new(0);

/// `moor` made findable by mount.fuse3 for as long as it lives: a symlink to the moor
/// under test, never replacing anything that was there.
struct HelperOnPath;

impl HelperOnPath {
    fn install() -> HelperOnPath {
        let mut users = HELPER_USERS.lock().unwrap_or_else(|e| e.into_inner());
        if *users == 0 {
            match fs::read_link(HELPER_LINK) {
                Ok(target) if target == Path::new(MOOR) => {}
                _ if fs::symlink_metadata(HELPER_LINK).is_ok() => {
                    panic!("{HELPER_LINK} exists and is not this build's moor: remove it to run these tests")
                }
                _ => std::os::unix::fs::symlink(MOOR, HELPER_LINK).expect("link moor into /usr/local/sbin"),
            }
        }
        *users += 1;
        HelperOnPath
    }
}

impl Drop for HelperOnPath {
    fn drop(&mut self) {
        let mut users = HELPER_USERS.lock().unwrap_or_else(|e| e.into_inner());
        *users -= 1;
        if *users == 0 && fs::read_link(HELPER_LINK).is_ok_and(|t| t == Path::new(MOOR)) {
            let _ = fs::remove_file(HELPER_LINK);
        }
    }
}

/// Agents started through mount(8) get their HOME from the password database, so the
/// client's own guard does not know them: these are found by their runtime directory
/// and killed on drop, and a mountpoint left mounted is detached first.
struct SystemMount {
    mountpoint: PathBuf,
    /// The runtime and state directories the mount's agent is given.
    runtime: PathBuf,
    state: PathBuf,
    /// Root's own directories, when root serves the mount.
    _root_dirs: Option<tempfile::TempDir>,
}

impl SystemMount {
    /// A mount served by the client's user (`setuid=`), with the client's directories.
    fn of(c: &Client, mountpoint: &Path) -> SystemMount {
        SystemMount {
            mountpoint: mountpoint.to_path_buf(),
            runtime: c.home.path().join("run"),
            state: c.home.path().join("state"),
            _root_dirs: None,
        }
    }

    /// A mount root serves, with runtime and state directories of root's own: moor
    /// refuses the user's, as it would after `su` without `-`.
    fn as_root(mountpoint: &Path) -> SystemMount {
        let dirs = tempfile::Builder::new().prefix("moor-root-").tempdir().unwrap();
        for sub in ["run", "state"] {
            fs::create_dir(dirs.path().join(sub)).unwrap();
            fs::set_permissions(dirs.path().join(sub), fs::Permissions::from_mode(0o700)).unwrap();
        }
        SystemMount {
            mountpoint: mountpoint.to_path_buf(),
            runtime: dirs.path().join("run"),
            state: dirs.path().join("state"),
            _root_dirs: Some(dirs),
        }
    }

    fn agents(&self) -> Vec<u32> {
        let needle = format!("XDG_RUNTIME_DIR={}", self.runtime.display());
        let mut pids = Vec::new();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if !cmd.split(|b| *b == 0).any(|a| a == b"agent") {
                continue;
            }
            let env = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for SystemMount {
    fn drop(&mut self) {
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
        }
        for pid in self.agents() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// The ssh options that reach the test sshd without any ssh config, as an fstab line
/// gives them.
fn ssh_options(c: &Client) -> String {
    format!(
        "Port={},IdentityFile={},UserKnownHostsFile={},IdentitiesOnly=yes",
        c.port,
        c.key().display(),
        c.known_hosts.display()
    )
}

fn source(sshd: &Sshd) -> String {
    format!("{REMOTE_USER}@127.0.0.1:{}", sshd.export.display())
}

/// `mount ARGS` as root, as the system runs it, with the guard's runtime and state
/// directories in the environment (mount(8) passes those on to the helper).
fn system_mount(guard: &SystemMount, program: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args).env("XDG_RUNTIME_DIR", &guard.runtime).env("XDG_STATE_HOME", &guard.state).stdin(Stdio::null());
    run_with_deadline(cmd, Duration::from_secs(60))
}

fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed ({}): {}{}", out.status, stdout(out), stderr(out));
}

/// The mounts the client's registry lists.
fn registered(guard: &SystemMount) -> Vec<String> {
    let text = fs::read_to_string(guard.state.join("moor/mounts.json")).unwrap_or_default();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    let mut found = Vec::new();
    collect_mountpoints(&doc, &mut found);
    found
}

fn collect_mountpoints(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(mp) = m.get("mountpoint").and_then(|p| p.as_str()) {
                out.push(mp.to_string());
            }
            m.values().for_each(|x| collect_mountpoints(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_mountpoints(x, out)),
        _ => {}
    }
}

/// After a kernel unmount, the agent ends the mount as `moor unmount` does: out of the
/// registry, its link closed, and the agent gone with its last mount.
fn assert_ended_in_agent(guard: &SystemMount) {
    let mnt = guard.mountpoint.display().to_string();
    assert!(!is_mounted(&guard.mountpoint), "{mnt} still mounted");
    assert_agent_let_go(guard);
}

/// The agent's side of the end of a mount: gone from the registry, the mount's log
/// says so, and the agent left with its last mount.
fn assert_agent_let_go(guard: &SystemMount) {
    let mnt = guard.mountpoint.display().to_string();
    assert!(
        wait_until(Duration::from_secs(20), || guard.agents().is_empty()),
        "the agent did not end after the unmount"
    );
    assert!(!registered(guard).contains(&mnt), "{mnt} still in the registry: {:?}", registered(guard));
    let logs: String = fs::read_dir(guard.state.join("moor/logs"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(logs.contains("unmounted"), "the mount's log does not say it ended: {logs}");
}

#[test]
fn mount_t_fuse_moor_mounts_and_umount_ends_it_in_the_agent() {
    let _helper = HelperOnPath::install();
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    sshd.put("hello", "from the server");
    let mnt = c.mountpoint("mnt");
    let guard = SystemMount::of(&c, &mnt);
    // setuid= is mount.fuse3's: the mount is the local user's, as with sshfs in fstab.
    let opts =
        format!("setuid={LOCAL_USER},allow_other,reconnect,idmap=user,ServerAliveInterval=15,{}", ssh_options(&c));
    let out = system_mount(&guard, "mount", &["-t", "fuse.moor", "-o", &opts, &source(&sshd), mnt.to_str().unwrap()]);
    assert_ok(&out, "mount -t fuse.moor");
    // mount(8) returned: the mount answers already.
    assert_eq!(fs::read_to_string(mnt.join("hello")).unwrap(), "from the server");
    let status = c.status_json();
    assert_eq!(status["mounts"][0]["mountpoint"], mnt.display().to_string(), "{status}");
    assert!(registered(&guard).contains(&mnt.display().to_string()));
    sh_ok(&format!("echo written > {}/new", mnt.display()));
    let out = system_mount(&guard, "umount", &[mnt.to_str().unwrap()]);
    assert_ok(&out, "umount");
    assert_ended_in_agent(&guard);
    assert_eq!(fs::read_to_string(sshd.export.join("new")).unwrap(), "written\n");
}

#[test]
fn an_fstab_line_mounts_and_umount_l_ends_it() {
    let _helper = HelperOnPath::install();
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    sshd.put("f", "x");
    let mnt = c.mountpoint("mnt");
    let guard = SystemMount::of(&c, &mnt);
    let fstab = c.home.path().join("fstab");
    let line = format!(
        "{} {} fuse.moor noauto,_netdev,nofail,user,x-systemd.automount,x-systemd.idle-timeout=60,comment=moor,\
         setuid={LOCAL_USER},allow_other,{} 0 0\n",
        source(&sshd),
        mnt.display(),
        ssh_options(&c)
    );
    fs::write(&fstab, line).unwrap();
    let out = system_mount(&guard, "mount", &["--fstab", fstab.to_str().unwrap(), mnt.to_str().unwrap()]);
    assert_ok(&out, "mount --fstab");
    assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "x");
    // `user` in fstab means noexec for mount(8), and moor keeps it.
    let opts = mount_options(&mnt);
    assert!(opts.contains(&"noexec".to_string()), "{opts:?}");
    let out = system_mount(&guard, "umount", &["-l", mnt.to_str().unwrap()]);
    assert_ok(&out, "umount -l");
    assert_ended_in_agent(&guard);
}

/// The options of the mount on `mnt`, as /proc/mounts lists them.
fn mount_options(mnt: &Path) -> Vec<String> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts.lines().find(|l| l.split(' ').nth(1) == Some(mnt.to_str().unwrap())).expect("mounted");
    line.split(' ').nth(3).unwrap().split(',').map(str::to_string).collect()
}

/// `moor SOURCE MOUNTPOINT -o ro`: every change fails with EROFS, the kernel lists the
/// mount `ro`, and the server's files stay as they were.
#[test]
fn a_read_only_mount_refuses_every_change() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    sshd.put("f", "original");
    sshd.mkdir("d");
    let mnt = c.mountpoint("ro");
    let spec = format!("testhost:{}", sshd.export.display());
    // The helper form, with -o as fstab gives it.
    let out = c.run(&[&spec, mnt.to_str().unwrap(), "-F", c.cfg(), "-o", "ro,allow_other", "-o", "cache=no"]);
    assert_ok(&out, "moor SOURCE MOUNTPOINT -o ro");
    let _m = Mount { path: mnt.clone() };
    assert!(mount_options(&mnt).contains(&"ro".to_string()), "{:?}", mount_options(&mnt));
    let before = sh_root_ok(&format!("cd {} && ls -lR --time-style=+%s", sshd.export.display()));
    let m = mnt.display();
    for change in [
        format!("echo x > {m}/f"),
        format!("echo x > {m}/new"),
        format!("rm {m}/f"),
        format!("mkdir {m}/newdir"),
        format!("rmdir {m}/d"),
        format!("mv {m}/f {m}/g"),
        format!("chmod 600 {m}/f"),
        format!("touch -d @1000 {m}/f"),
        format!("ln -s f {m}/l"),
        format!("truncate -s 0 {m}/f"),
    ] {
        let out = sh(&change);
        assert!(!out.status.success(), "`{change}` worked on a read-only mount");
        assert!(stderr(&out).contains("Read-only file system"), "`{change}`: {}", stderr(&out));
    }
    assert_eq!(sh_ok(&format!("cat {m}/f")), "original");
    let after = sh_root_ok(&format!("cd {} && ls -lR --time-style=+%s", sshd.export.display()));
    assert_eq!(before, after, "the server's files changed");
}

/// Makes the third local user once, as the harness makes its own.
fn other_user() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| make_user(OTHER_USER));
}

/// Runs a shell snippet as `user`, returning its output.
fn sh_as(user: &str, script: &str) -> Output {
    use std::os::unix::process::CommandExt;
    let (uid, gid) = ids_of(user);
    let mut cmd = Command::new("bash");
    cmd.args(["-c", script]).uid(uid).gid(gid).env("HOME", "/").stdin(Stdio::null());
    run_with_deadline(cmd, Duration::from_secs(60))
}

/// A client whose home other users may pass through, to reach its mountpoints.
fn shared_client(sshd: &Sshd) -> Client {
    other_user();
    let c = Client::new(sshd);
    fs::set_permissions(c.home.path(), fs::Permissions::from_mode(0o755)).unwrap();
    c
}

/// `moor mount` without --allow-other (the harness's own mounts always allow others).
fn mount_private(c: &Client, sshd: &Sshd, dir: &str, extra: &[&str]) -> Mount {
    let mnt = c.mountpoint(dir);
    let spec = format!("testhost:{}", sshd.export.display());
    let mut args = vec!["mount", "-F", c.cfg()];
    args.extend_from_slice(extra);
    args.push(&spec);
    args.push(mnt.to_str().unwrap());
    let out = c.run(&args);
    assert_ok(&out, "moor mount");
    Mount { path: mnt }
}

#[test]
fn another_local_user_reads_a_mount_only_with_allow_other() {
    let sshd = Sshd::start();
    let c = shared_client(&sshd);
    sshd.put("f", "shared");
    let private = mount_private(&c, &sshd, "private", &[]);
    let out = sh_as(OTHER_USER, &format!("cat {}/f", private.s()));
    assert!(!out.status.success() && stderr(&out).contains("Permission denied"), "{}", stderr(&out));
    let shared = mount_private(&c, &sshd, "shared", &["-o", "allow_other"]);
    let out = sh_as(OTHER_USER, &format!("cat {}/f", shared.s()));
    assert_ok(&out, "another user reading with allow_other");
    assert_eq!(stdout(&out), "shared");
    // allow_root: root is let in, other users are not.
    let rooted = mount_private(&c, &sshd, "rooted", &["--allow-root"]);
    assert_eq!(fs::read_to_string(rooted.p("f")).unwrap(), "shared");
    let out = sh_as(OTHER_USER, &format!("cat {}/f", rooted.s()));
    assert!(!out.status.success() && stderr(&out).contains("Permission denied"), "{}", stderr(&out));
}

/// With default_permissions the kernel checks mode bits: a 0600 file of the login user
/// (shown as the local user's) is closed to another local user, though the server, which
/// sees only the remote login user, would serve it.
#[test]
fn default_permissions_has_the_kernel_check_mode_bits() {
    let sshd = Sshd::start();
    let c = shared_client(&sshd);
    sshd.put("secret", "mine");
    sh_root_ok(&format!("chmod 600 {}/secret", sshd.export.display()));
    let open = mount_private(&c, &sshd, "open", &["--allow-other"]);
    let out = sh_as(OTHER_USER, &format!("cat {}/secret", open.s()));
    assert_ok(&out, "without default_permissions the server alone decides");
    let checked = mount_private(&c, &sshd, "checked", &["-o", "allow_other,default_permissions"]);
    let out = sh_as(OTHER_USER, &format!("cat {}/secret", checked.s()));
    assert!(!out.status.success() && stderr(&out).contains("Permission denied"), "{}", stderr(&out));
    assert_eq!(sh_ok(&format!("cat {}/secret", checked.s())), "mine", "the owner still reads it");
}

#[test]
fn follow_symlinks_shows_what_links_point_to() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    sshd.put("target", "pointed at");
    sshd.mkdir("dir");
    let e = sshd.export.display();
    sh_root_ok(&format!(
        "cd {e} && ln -s target file-link && ln -s dir dir-link && ln -s nowhere dangling && \
         chown -h {REMOTE_USER}: file-link dir-link dangling"
    ));
    let kinds = |m: &Mount| {
        sh_ok(&format!("cd {} && stat -c '%n %F' file-link dir-link dangling && find . -type l | sort", m.s()))
    };
    let plain = mount_private(&c, &sshd, "plain", &["--allow-other"]);
    assert_eq!(
        kinds(&plain),
        "file-link symbolic link\ndir-link symbolic link\ndangling symbolic link\n./dangling\n./dir-link\n./file-link\n"
    );
    let followed = mount_private(&c, &sshd, "followed", &["--allow-other", "-o", "follow_symlinks,cache=no"]);
    assert_eq!(kinds(&followed), "file-link regular file\ndir-link directory\ndangling symbolic link\n./dangling\n");
    assert_eq!(fs::read_to_string(followed.p("file-link")).unwrap(), "pointed at");
    assert_eq!(fs::read_link(followed.p("dangling")).unwrap(), Path::new("nowhere"));
}

#[test]
fn an_unknown_option_is_refused_by_name() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let mnt = c.mountpoint("mnt");
    let spec = format!("testhost:{}", sshd.export.display());
    let cases: [(Vec<&str>, &str); 4] = [
        (vec![&spec, mnt.to_str().unwrap(), "-F", c.cfg(), "-o", "ro,frobnicate"], "unknown option 'frobnicate'"),
        (vec!["mount", "-F", c.cfg(), "-o", "sync", &spec, mnt.to_str().unwrap()], "unknown option 'sync'"),
        (vec!["mount", "-F", c.cfg(), "-o", "uid=me", &spec, mnt.to_str().unwrap()], "-o uid=me"),
        (
            vec!["mount", "-F", c.cfg(), "-o", "ServerAliveInterval=often", &spec, mnt.to_str().unwrap()],
            "ServerAliveInterval=often",
        ),
    ];
    for (args, needle) in cases {
        let out = c.run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("ssh config") && !err.contains(c.cfg()), "{args:?} names the config: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(!is_mounted(&mnt));
    }
    let err = stderr(&c.run(&[&spec, mnt.to_str().unwrap(), "-o", "frobnicate"]));
    for listed in ["ro", "allow_other", "idmap=user|none", "follow_symlinks", "max_conns=N", "Key=Value"] {
        assert!(err.contains(listed), "the refusal does not list {listed}: {err}");
    }
}

/// An automounter's trigger on a directory, as systemd's `x-systemd.automount` or autofs
/// puts one there: a direct autofs mount whose "daemon" (a small Python process in its
/// own process group) only records that something set the trigger off and never mounts
/// anything. Whatever sets it off waits for that daemon; dropping the guard ends the
/// daemon and detaches the trigger, which wakes such a waiter.
struct Trigger {
    daemon: std::process::Child,
    dir: PathBuf,
    log: PathBuf,
}

impl Trigger {
    fn on(dir: &Path, work: &Path) -> Trigger {
        const DAEMON: &str = r#"
import ctypes, os, select, sys
mnt, log = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
r, w = os.pipe()
opts = "fd=%d,pgrp=%d,minproto=5,maxproto=5,direct" % (w, os.getpgrp())
if libc.mount(b"moor-test-trigger", mnt.encode(), b"autofs", 0, opts.encode()) != 0:
    sys.exit("mount autofs: " + os.strerror(ctypes.get_errno()))
os.close(w)
print("ready", flush=True)
while True:
    ready, _, _ = select.select([r, sys.stdin], [], [])
    if r in ready:
        if not os.read(r, 4096):
            break
        with open(log, "a") as f:
            f.write("triggered\n")
    if sys.stdin in ready and not sys.stdin.readline():
        break
"#;
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let log = work.join("trigger.log");
        let mut daemon = Command::new("python3")
            .args(["-c", DAEMON])
            .arg(dir)
            .arg(&log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(daemon.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the autofs trigger was not set up");
        Trigger { daemon, dir: dir.to_path_buf(), log }
    }

    fn set_off(&self) -> bool {
        fs::read_to_string(&self.log).is_ok_and(|t| t.contains("triggered"))
    }
}

impl Drop for Trigger {
    fn drop(&mut self) {
        // The daemon first: with its pipe closed, the trigger wakes whatever waits on it
        // and never blocks again. Then whatever sits on the trigger, and the trigger,
        // detached by the system call itself (umount(8) looks at the path first).
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        for _ in 0..2 {
            let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The type of the topmost mount on `dir` (/proc/self/mountinfo lists mounts in order).
fn top_fstype(dir: &Path) -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().rev().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        (Path::new(fields.get(4)?) == dir).then(|| fields.get(sep + 1).map(|t| t.to_string()))?
    })
}

/// Whether the running kernel has autofs (there is no modprobe to load it).
fn kernel_has_autofs() -> bool {
    fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().last() == Some("autofs"))
}

#[test]
fn root_mounts_over_an_automounter_trigger_without_setting_it_off() {
    if !kernel_has_autofs() {
        // `root_mounts_without_opening_the_mountpoint` covers the same path everywhere.
        eprintln!("SKIPPED: the kernel has no autofs (not in /proc/filesystems), so no trigger can be set up");
        return;
    }
    let _helper = HelperOnPath::install();
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    sshd.put("f", "under the trigger");
    let mnt = c.mountpoint("mnt");
    let guard = SystemMount::as_root(&mnt);
    let work = work_dir();
    let trigger = Trigger::on(&mnt, work.path());
    let opts = format!("allow_other,{}", ssh_options(&c));
    let out = system_mount(&guard, "mount", &["-t", "fuse.moor", "-o", &opts, &source(&sshd), mnt.to_str().unwrap()]);
    assert!(!trigger.set_off(), "the mount set the automounter's trigger off");
    assert_ok(&out, "mount -t fuse.moor over an autofs trigger");
    assert_eq!(top_fstype(&mnt).as_deref(), Some("fuse.moor"));
    assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "under the trigger");
    let out = system_mount(&guard, "umount", &[mnt.to_str().unwrap()]);
    assert_ok(&out, "umount");
    // The trigger is what is left there.
    assert_eq!(top_fstype(&mnt).as_deref(), Some("autofs"));
    assert_agent_let_go(&guard);
    assert!(!trigger.set_off(), "the unmount set the automounter's trigger off");
}

/// A directory that records every open of it: `mnt`, the one directory of a small FUSE
/// filesystem the test serves. An open is what sets an automounter's trigger off (a stat
/// does not, nor does mount(2) over it), so this stands in for one on kernels without
/// autofs. Dropping it unmounts whatever sits on `mnt`, then the filesystem.
struct RecordingDir {
    session: Option<fuser::BackgroundSession>,
    top: PathBuf,
    opens: Arc<AtomicUsize>,
}

struct Recorder {
    opens: Arc<AtomicUsize>,
}

const REC_MNT: fuser::INodeNo = fuser::INodeNo(2);

fn rec_attr(ino: fuser::INodeNo) -> fuser::FileAttr {
    let t = std::time::UNIX_EPOCH;
    fuser::FileAttr {
        ino,
        size: 0,
        blocks: 0,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: fuser::FileType::Directory,
        perm: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: 512,
    }
}

impl fuser::Filesystem for Recorder {
    fn lookup(&self, _: &fuser::Request, parent: fuser::INodeNo, name: &std::ffi::OsStr, reply: fuser::ReplyEntry) {
        if parent == fuser::INodeNo::ROOT && name == "mnt" {
            reply.entry(&Duration::ZERO, &rec_attr(REC_MNT), fuser::Generation(0));
        } else {
            reply.error(fuser::Errno::ENOENT);
        }
    }

    fn getattr(&self, _: &fuser::Request, ino: fuser::INodeNo, _: Option<fuser::FileHandle>, reply: fuser::ReplyAttr) {
        reply.attr(&Duration::ZERO, &rec_attr(ino));
    }

    fn opendir(&self, _: &fuser::Request, ino: fuser::INodeNo, _: fuser::OpenFlags, reply: fuser::ReplyOpen) {
        if ino == REC_MNT {
            self.opens.fetch_add(1, Ordering::SeqCst);
        }
        reply.opened(fuser::FileHandle(0), fuser::FopenFlags::empty());
    }

    fn open(&self, _: &fuser::Request, ino: fuser::INodeNo, _: fuser::OpenFlags, reply: fuser::ReplyOpen) {
        if ino == REC_MNT {
            self.opens.fetch_add(1, Ordering::SeqCst);
        }
        reply.opened(fuser::FileHandle(0), fuser::FopenFlags::empty());
    }

    fn readdir(
        &self,
        _: &fuser::Request,
        ino: fuser::INodeNo,
        _: fuser::FileHandle,
        offset: u64,
        mut reply: fuser::ReplyDirectory,
    ) {
        let mut entries = vec![(ino, "."), (fuser::INodeNo::ROOT, "..")];
        if ino == fuser::INodeNo::ROOT {
            entries.push((REC_MNT, "mnt"));
        }
        for (i, (child, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(child, (i + 1) as u64, fuser::FileType::Directory, name) {
                break;
            }
        }
        reply.ok();
    }
}

impl RecordingDir {
    fn under(work: &Path) -> RecordingDir {
        let top = work.join("recording");
        fs::create_dir_all(&top).unwrap();
        let opens = Arc::new(AtomicUsize::new(0));
        let mut cfg = fuser::Config::default();
        cfg.mount_options = vec![fuser::MountOption::FSName("moor-test-recording".into())];
        let session =
            fuser::spawn_mount(Recorder { opens: opens.clone() }, &top, &cfg).expect("mount the recording filesystem");
        RecordingDir { session: Some(session), top, opens }
    }

    fn dir(&self) -> PathBuf {
        self.top.join("mnt")
    }

    fn opened(&self) -> usize {
        self.opens.load(Ordering::SeqCst)
    }
}

impl Drop for RecordingDir {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.dir(), nix::mount::MntFlags::MNT_DETACH);
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
        let _ = nix::mount::umount2(&self.top, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// What the autofs test guards, on every kernel: root's mount (mount(8) and the helper,
/// then the agent) looks at the mountpoint without opening it, so an automounter's
/// trigger sitting there is never set off; the unmount neither.
#[test]
fn root_mounts_without_opening_the_mountpoint() {
    let _helper = HelperOnPath::install();
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    sshd.put("f", "over the recording directory");
    let work = work_dir();
    let rec = RecordingDir::under(work.path());
    let mnt = rec.dir();
    let guard = SystemMount::as_root(&mnt);
    let opts = format!("allow_other,{}", ssh_options(&c));
    let out = system_mount(&guard, "mount", &["-t", "fuse.moor", "-o", &opts, &source(&sshd), mnt.to_str().unwrap()]);
    assert_eq!(rec.opened(), 0, "the mount opened the mountpoint");
    assert_ok(&out, "mount -t fuse.moor over the recording directory");
    assert_eq!(top_fstype(&mnt).as_deref(), Some("fuse.moor"));
    assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "over the recording directory");
    let out = system_mount(&guard, "umount", &[mnt.to_str().unwrap()]);
    assert_ok(&out, "umount");
    assert_agent_let_go(&guard);
    assert_eq!(rec.opened(), 0, "the unmount opened the mountpoint");
    // The recorder itself sees an open: what the test asserts can fail.
    drop(fs::read_dir(&mnt).unwrap());
    assert_eq!(rec.opened(), 1, "the recording directory missed an open");
}
