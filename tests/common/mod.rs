//! Test harness: a throwaway OpenSSH `sshd` on a loopback port with generated keys, and a
//! private client environment (HOME, runtime and state dirs, ssh config, known_hosts) in
//! which the real `moor` binary mounts with the real kernel FUSE. Every guard tears down
//! what it started on drop, so a failing test leaves no mount or process behind.
#![allow(dead_code)]

pub mod proxy;

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const MOOR: &str = env!("CARGO_BIN_EXE_moor");

/// The ordinary user tests log in as on the test sshd: permission checks bite there as
/// they do for real users.
pub const REMOTE_USER: &str = "moor-remote";
/// The ordinary local user that runs `moor` (and so the agent and the FUSE side), with a
/// uid other than the remote one.
pub const LOCAL_USER: &str = "moor-local";

/// A user's `(uid, gid)`.
pub fn ids_of(user: &str) -> (u32, u32) {
    ordinary_users();
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, user]).output().expect("run id");
        String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().ok()
    };
    match (id("-u"), id("-g")) {
        (Some(u), Some(g)) => (u, g),
        _ => panic!("no user {user}"),
    }
}

/// Makes the local user `user` (with a home and its own group) unless it exists.
pub fn make_user(user: &str) {
    // Another test binary may be making the same user: wait until it exists.
    let made = wait_until(Duration::from_secs(30), || {
        if Command::new("id").arg(user).output().is_ok_and(|o| o.status.success()) {
            return true;
        }
        let _ = Command::new("useradd").args(["-m", "-U", "-s", "/bin/sh", user]).output();
        false
    });
    assert!(made, "cannot create user {user}");
}

/// Makes the machine ready for tests as ordinary users, once per test binary: both users
/// (with homes, the remote one's account unlocked so sshd lets it in), `/dev/fuse` open
/// to users as distributions ship it, and `user_allow_other` in /etc/fuse.conf so that
/// the test process (root) can look into mounts the local user makes with
/// `--allow-other`.
pub fn ordinary_users() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for user in [REMOTE_USER, LOCAL_USER] {
            make_user(user);
            // A locked account ("!" in shadow) is refused by sshd; "*" has no password
            // but is not locked.
            let out = Command::new("usermod").args(["-p", "*", user]).output().expect("run usermod");
            assert!(out.status.success(), "usermod: {}", String::from_utf8_lossy(&out.stderr));
        }
        let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666));
        let conf = fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
        if !conf.lines().any(|l| l.trim() == "user_allow_other") {
            let mut f = fs::OpenOptions::new().append(true).create(true).open("/etc/fuse.conf").unwrap();
            writeln!(f, "user_allow_other").unwrap();
        }
    });
}

/// `chown -R USER PATH`.
pub fn give(path: &Path, user: &str) {
    // Every use of the harness's users passes through here or `ids_of`: they exist first,
    // on a fresh machine too.
    ordinary_users();
    let out = Command::new("chown").args(["-R", &format!("{user}:{user}")]).arg(path).output().expect("run chown");
    assert!(out.status.success(), "chown {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
}

/// Polls `cond` until it holds or `deadline` passes; returns whether it held.
/// What the kernel shows of process `pid` and its threads (state, where each sleeps, its
/// kernel stack) and which processes hold `/dev/fuse` open: for a test that finds a
/// process stuck, to say where.
pub fn kernel_view(pid: u32) -> String {
    let read = |p: String| fs::read_to_string(&p).unwrap_or_else(|e| format!("({e})"));
    let mut view = String::new();
    let status = read(format!("/proc/{pid}/status"));
    let wanted = ["State", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"];
    let fields: Vec<&str> = status.lines().filter(|l| wanted.iter().any(|w| l.starts_with(w))).collect();
    view.push_str(&format!("pid {pid}: {}\n", fields.join(", ")));
    for t in fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let tid = t.file_name().to_string_lossy().to_string();
        let wchan = read(format!("/proc/{pid}/task/{tid}/wchan"));
        let stack = read(format!("/proc/{pid}/task/{tid}/stack"));
        view.push_str(&format!("  thread {tid} wchan {wchan}\n{stack}"));
    }
    for p in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let holds = fs::read_dir(p.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|t| t == Path::new("/dev/fuse")));
        if holds {
            let cmd = read(format!("{}/cmdline", p.path().display())).replace('\0', " ");
            view.push_str(&format!("holds /dev/fuse: {} {cmd}\n", p.file_name().to_string_lossy()));
        }
    }
    view
}

pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lets time pass where the passage of time is itself what a test exercises (a host that
/// comes up later, a fault schedule); never a stand-in for waiting on a condition.
pub fn pause(d: Duration) {
    std::thread::sleep(d);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "moor-test", "-f"])
        .arg(path)
        .status()
        .expect("run ssh-keygen");
    assert!(status.success(), "ssh-keygen failed");
}

/// A running sshd serving `export` (an empty directory) over SFTP.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub export: PathBuf,
    pub host_pub: String,
    /// More sshd_config lines (see `start_with`), put first: sshd takes the first value
    /// of each keyword, so they win over the defaults.
    extra_config: String,
    /// The sshd binary, or a link to it under another name.
    program: PathBuf,
    child: Option<Child>,
}

impl Sshd {
    pub fn start() -> Sshd {
        Sshd::start_with(|_| String::new())
    }

    /// The same, with more sshd_config lines: `prepare` gets the sshd's directory once
    /// its keys are made (to make files there, e.g. a host certificate) and returns them.
    pub fn start_with<S: Into<String>>(prepare: impl FnOnce(&Path) -> S) -> Sshd {
        Sshd::start_as(None, prepare)
    }

    /// The same, run under another program name: sshd uses its name as its PAM service,
    /// so a test can give it its own PAM stack in /etc/pam.d/NAME.
    pub fn start_as<S: Into<String>>(name: Option<&str>, prepare: impl FnOnce(&Path) -> S) -> Sshd {
        ordinary_users();
        let dir = tempfile::Builder::new().prefix("moor-sshd-").tempdir().unwrap();
        let d = dir.path();
        // sshd reads authorized_keys as the user logging in.
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        keygen(&d.join("host_key"));
        keygen(&d.join("user_key"));
        fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).unwrap();
        fs::set_permissions(d.join("authorized_keys"), fs::Permissions::from_mode(0o644)).unwrap();
        let export = d.join("export");
        fs::create_dir(&export).unwrap();
        give(&export, REMOTE_USER);
        // sshd refuses to start without its privilege-separation directory.
        let _ = fs::create_dir_all("/run/sshd");
        let host_pub = fs::read_to_string(d.join("host_key.pub")).unwrap();
        let extra_config = prepare(d).into();
        let program = match name {
            Some(n) => {
                let p = d.join(n);
                std::os::unix::fs::symlink("/usr/sbin/sshd", &p).unwrap();
                p
            }
            None => PathBuf::from("/usr/sbin/sshd"),
        };
        let mut sshd = Sshd { port: 0, export, host_pub, extra_config, program, child: None, dir };
        sshd.spawn_on(free_port());
        sshd
    }

    fn write_config(&self, port: u16) -> PathBuf {
        let d = self.dir.path();
        let cfg = d.join("sshd_config");
        let text = format!(
            "{extra}Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin yes\n\
             UsePAM no\nSubsystem sftp internal-sftp\nLogLevel ERROR\nMaxStartups 100\n\
             MaxSessions 100
",
            hk = d.join("host_key").display(),
            d = d.display(),
            extra = self.extra_config,
        );
        fs::write(&cfg, text).unwrap();
        cfg
    }

    fn spawn_on(&mut self, port: u16) {
        let cfg = self.write_config(port);
        let log = fs::File::create(self.dir.path().join("sshd.log")).unwrap();
        let child = Command::new(&self.program)
            .args(["-D", "-e", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start /usr/sbin/sshd (is openssh-server installed?)");
        self.child = Some(child);
        self.port = port;
        let up = wait_until(Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(up, "sshd did not listen on port {port}: {}", self.log());
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    pub fn user_key(&self) -> PathBuf {
        self.dir.path().join("user_key")
    }

    /// Writes a file on the server, as the remote user's, as if that user had made it.
    pub fn put(&self, rel: &str, data: impl AsRef<[u8]>) {
        let p = self.export.join(rel);
        fs::write(&p, data).unwrap();
        give(&p, REMOTE_USER);
    }

    /// Makes a directory on the server, as the remote user's.
    pub fn mkdir(&self, rel: &str) {
        let p = self.export.join(rel);
        fs::create_dir_all(&p).unwrap();
        give(&p, REMOTE_USER);
    }

    /// Hands everything in the export to the remote user (after a test made files there
    /// as root).
    pub fn give_export(&self) {
        give(&self.export, REMOTE_USER);
    }

    /// Stops sshd and every session it serves, as a server reboot would.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let sessions = descendants(c.id());
            let _ = c.kill();
            let _ = c.wait();
            for pid in sessions {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }

    /// Restarts sshd on the same port, optionally with a fresh host key.
    pub fn restart(&mut self, new_host_key: bool) {
        self.stop();
        if new_host_key {
            let hk = self.dir.path().join("host_key");
            let _ = fs::remove_file(&hk);
            let _ = fs::remove_file(hk.with_extension("pub"));
            keygen(&hk);
            self.host_pub = fs::read_to_string(hk.with_extension("pub")).unwrap();
        }
        self.spawn_on(self.port);
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private client side: HOME, XDG dirs, an ssh config naming the test host `testhost`,
/// and a known_hosts that trusts the test sshd's host key.
pub struct Client {
    pub home: tempfile::TempDir,
    pub ssh_config: PathBuf,
    pub known_hosts: PathBuf,
    /// Where the client connects: the sshd, or a proxy in front of it.
    pub port: u16,
    /// More environment for every `moor` it runs (and so for the agent).
    pub env: Vec<(&'static str, String)>,
}

impl Client {
    pub fn new(sshd: &Sshd) -> Client {
        Client::via(sshd, sshd.port)
    }

    /// A client that reaches the sshd through `port` (a fault proxy in front of it).
    pub fn via(sshd: &Sshd, port: u16) -> Client {
        let home = tempfile::Builder::new().prefix("moor-home-").tempdir().unwrap();
        let h = home.path();
        for sub in ["run", "state", ".ssh"] {
            fs::create_dir_all(h.join(sub)).unwrap();
        }
        fs::set_permissions(h.join("run"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::copy(sshd.user_key(), h.join(".ssh/id_test")).unwrap();
        let known_hosts = h.join(".ssh/known_hosts");
        let ssh_config = h.join(".ssh/config");
        let c = Client { home, ssh_config, known_hosts, port, env: Vec::new() };
        c.trust(sshd);
        c.write_config(sshd, "");
        c
    }

    /// The key the client logs in with.
    pub fn key(&self) -> PathBuf {
        self.home.path().join(".ssh/id_test")
    }

    /// Hands the whole home to the local user, after the test wrote in it as root.
    pub fn give_home(&self) {
        give(self.home.path(), LOCAL_USER);
    }

    /// Rewrites the ssh config for `testhost`, with `extra` lines appended to its block.
    pub fn write_config(&self, sshd: &Sshd, extra: &str) {
        let _ = sshd;
        let text = format!(
            "Host testhost\n  HostName 127.0.0.1\n  Port {}\n  User {REMOTE_USER}\n  IdentityFile {}\n  \
             IdentitiesOnly yes\n  UserKnownHostsFile {}\n  ConnectTimeout 5\n{extra}",
            self.port,
            self.key().display(),
            self.known_hosts.display()
        );
        fs::write(&self.ssh_config, text).unwrap();
        self.give_home();
    }

    /// Records the sshd's current host key in known_hosts, replacing what was there.
    pub fn trust(&self, sshd: &Sshd) {
        self.write_known_hosts(&format!("[127.0.0.1]:{} {}\n", self.port, sshd.host_pub.trim()));
    }

    /// Makes known_hosts hold `text`, still the local user's.
    pub fn write_known_hosts(&self, text: &str) {
        fs::write(&self.known_hosts, text).unwrap();
        self.give_home();
    }

    /// A `moor` command in this client's private environment, run as the local user.
    pub fn moor(&self) -> Command {
        use std::os::unix::process::CommandExt;
        let h = self.home.path();
        let (uid, gid) = ids_of(LOCAL_USER);
        let mut cmd = Command::new(MOOR);
        cmd.uid(uid)
            .gid(gid)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("USER", LOCAL_USER)
            .env("LOGNAME", LOCAL_USER)
            .env("HOME", h)
            .env("XDG_RUNTIME_DIR", h.join("run"))
            .env("XDG_STATE_HOME", h.join("state"))
            .env("RUST_BACKTRACE", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `moor ARGS` (with a hard 60 s limit) and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.moor();
        cmd.args(args);
        run_with_deadline(cmd, Duration::from_secs(60))
    }

    pub fn mountpoint(&self, name: &str) -> PathBuf {
        let p = self.home.path().join(name);
        fs::create_dir_all(&p).unwrap();
        give(&p, LOCAL_USER);
        p
    }

    /// Mounts `testhost:REMOTE` on `~/mnt` and returns its guard.
    pub fn mount(&self, remote: &str) -> Mount {
        self.mount_at(remote, "mnt", &[])
    }

    /// `moor mount -F CONFIG EXTRA... testhost:REMOTE ~/DIR`, which must succeed.
    pub fn mount_at(&self, remote: &str, dir: &str, extra: &[&str]) -> Mount {
        let mnt = self.mountpoint(dir);
        let out = self.try_mount(remote, &mnt, extra);
        assert!(
            out.status.success(),
            "moor mount failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Mount { path: mnt }
    }

    /// Runs `moor mount` and returns its output, whatever happened. The mount allows
    /// others, so that the test process (root) can look into it; every access still
    /// reaches the server as the remote user's.
    pub fn try_mount(&self, remote: &str, mnt: &Path, extra: &[&str]) -> Output {
        self.try_mount_host("testhost", remote, mnt, extra)
    }

    /// The same, of another host of the config.
    pub fn try_mount_host(&self, host: &str, remote: &str, mnt: &Path, extra: &[&str]) -> Output {
        let spec = format!("{host}:{remote}");
        let mut args = vec!["mount", "--allow-other", "-F", self.ssh_config.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(&spec);
        args.push(mnt.to_str().unwrap());
        self.run(&args)
    }

    /// Makes the config offer a fresh key the server does not know, instead of the test
    /// key; returns that key's path.
    pub fn offer_unknown_key(&self, _sshd: &Sshd) -> PathBuf {
        let other = self.home.path().join("other_key");
        sh_ok(&format!("ssh-keygen -q -t ed25519 -N '' -f {}", other.display()));
        let cfg = fs::read_to_string(&self.ssh_config).unwrap();
        let cfg = cfg.replace(&self.key().display().to_string(), &other.display().to_string());
        fs::write(&self.ssh_config, cfg).unwrap();
        self.give_home();
        other
    }

    /// The ssh config path as a str, for argument lists.
    pub fn cfg(&self) -> &str {
        self.ssh_config.to_str().unwrap()
    }

    /// Pids of agents serving this client (its HOME).
    pub fn agent_pids(&self) -> Vec<i32> {
        let out = Command::new("pgrep")
            .args(["-f", &format!("{} agent", MOOR)])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        out.lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/environ"))
                    .map(|e| {
                        let needle = format!("HOME={}", self.home.path().display());
                        e.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
                    })
                    .unwrap_or(false)
            })
            .collect()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        // Whatever a failed test left mounted under this home goes first.
        let home = self.home.path().display().to_string();
        let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
        for mp in mounts.lines().filter_map(|l| l.split(' ').nth(1)).filter(|p| p.starts_with(&home)) {
            let _ = Command::new("fusermount3").args(["-uz", mp]).status();
        }
        // The agent exits by itself after its last unmount; make sure of it.
        for pid in self.agent_pids() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

impl Client {
    /// The end of every log under this client's state directory, for a failed test's
    /// output.
    fn print_logs(&self) {
        let mut dirs = vec![self.home.path().join("state")];
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "log") {
                    let text = fs::read_to_string(&path).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    eprintln!("--- last lines of {}", path.display());
                    for line in &lines[lines.len().saturating_sub(40)..] {
                        eprintln!("{line}");
                    }
                }
            }
        }
    }
}

/// A live mount; unmounted (lazily if need be) on drop.
pub struct Mount {
    pub path: PathBuf,
}

impl Mount {
    /// The mount's own log file, as `moor mount status --json` names it.
    pub fn log_of(&self, c: &Client) -> PathBuf {
        let doc = c.status_json();
        let mine = doc["mounts"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["mountpoint"].as_str() == Some(self.path.to_str().unwrap_or(""))));
        PathBuf::from(mine.and_then(|m| m["log"].as_str()).expect("the mount names its log"))
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn s(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_mounted(&self.path) {
            let _ = Command::new("fusermount3").arg("-uz").arg(&self.path).status();
        }
    }
}

/// Every process below `pid`, read from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // The parent pid is the second field after the parenthesised command name.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(pp) = ppid {
            parent_of.push((p, pp));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(cur) = frontier.pop() {
        for &(p, pp) in &parent_of {
            if pp == cur && !out.contains(&p) {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
}

pub fn is_mounted(path: &Path) -> bool {
    let p = path.to_string_lossy().to_string();
    fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(p.as_str())))
        .unwrap_or(false)
}

/// Runs a command, killing it if it outlives `deadline`.
pub fn run_with_deadline(mut cmd: Command, deadline: Duration) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn command");
    run_with_deadline_child(child, deadline)
}

/// Waits for a started child (with piped output), killing it if it outlives `deadline`.
pub fn run_with_deadline_child(child: std::process::Child, deadline: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(out) => out.expect("wait for command"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("command {pid} did not finish within {deadline:?}");
        }
    }
}

/// Runs `cmd` on a pseudo-terminal (as a person at a terminal runs it), answering each
/// question it asks there: `answers` are (what the question contains, the answer). The
/// output is everything the terminal showed. A hard limit of 60 s applies.
pub fn run_on_terminal(cmd: &Command, answers: &[(&str, &str)]) -> Output {
    const DRIVER: &str = r#"
import json, os, pty, select, sys, time
argv, env, answers = json.loads(sys.argv[1])
pid, fd = pty.fork()
if pid == 0:
    os.execve(argv[0], argv, env)
seen, asked, out = b"", 0, b""
end = time.monotonic() + 55
while time.monotonic() < end:
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
        seen += chunk
        for i, (q, a) in enumerate(answers):
            if q.encode() in seen:
                os.write(fd, a.encode() + b"\n")
                seen = b""
                break
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(out)
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    use std::os::unix::process::CommandExt;
    let argv: Vec<String> = std::iter::once(cmd.get_program().to_string_lossy().to_string())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().to_string()))
        .collect();
    let env: std::collections::HashMap<String, String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_string_lossy().to_string(), v?.to_string_lossy().to_string())))
        .collect();
    let spec = serde_json::json!([argv, env, answers]).to_string();
    let (uid, gid) = ids_of(LOCAL_USER);
    let mut py = Command::new("python3");
    py.args(["-c", DRIVER, &spec]).uid(uid).gid(gid).stdin(Stdio::null());
    run_with_deadline(py, Duration::from_secs(60))
}

/// Makes `cmd` run as the local ordinary user, with that user's own home.
pub fn as_local_user(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    let (uid, gid) = ids_of(LOCAL_USER);
    // A program started from a terminal has Ctrl-C and Ctrl-\ at their defaults. The test
    // process may not: started in the background by a shell without job control, it
    // ignores SIGINT and SIGQUIT, and its children inherit that (Python then installs no
    // KeyboardInterrupt handler at all).
    // SAFETY: `signal` is async-signal-safe, and nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            for sig in [libc::SIGINT, libc::SIGQUIT] {
                if libc::signal(sig, libc::SIG_DFL) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.uid(uid).gid(gid).env("HOME", format!("/home/{LOCAL_USER}")).env("USER", LOCAL_USER).env("LOGNAME", LOCAL_USER)
}

/// Runs a shell snippet as the local ordinary user (with a hard limit), as a user's own
/// programs run on the mount, and returns its output.
pub fn sh(script: &str) -> Output {
    sh_within(script, Duration::from_secs(120))
}

/// Runs a shell snippet as the local ordinary user that may take up to `deadline`.
pub fn sh_within(script: &str, deadline: Duration) -> Output {
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", script]).stdin(Stdio::null());
    as_local_user(&mut cmd);
    run_with_deadline(cmd, deadline)
}

/// Runs a shell snippet as root, for what a test does on the server's side (making or
/// checking the export's files), which must succeed; returns its stdout.
pub fn sh_root_ok(script: &str) -> String {
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", script]).stdin(Stdio::null());
    let out = run_with_deadline(cmd, Duration::from_secs(400));
    assert!(out.status.success(), "`{script}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A scratch directory of the local user's.
pub fn work_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix("moor-work-").tempdir().unwrap();
    give(d.path(), LOCAL_USER);
    d
}

/// A file holding `text` that the local user can read (a script to run).
pub fn script_file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    fs::write(f.path(), text).unwrap();
    fs::set_permissions(f.path(), fs::Permissions::from_mode(0o644)).unwrap();
    f
}

/// Like `sh`, but the snippet must succeed; returns its stdout.
pub fn sh_ok(script: &str) -> String {
    sh_ok_within(script, Duration::from_secs(120))
}

/// Like `sh_within`, but the snippet must succeed; returns its stdout.
pub fn sh_ok_within(script: &str, deadline: Duration) -> String {
    let out = sh_within(script, deadline);
    assert!(
        out.status.success(),
        "`{script}` failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A mount of the test sshd's export through a fault proxy, and all it needs. Fields
/// drop in order: the client unmounts before the proxy and the sshd go.
pub struct Proxied {
    pub m: Mount,
    pub c: Client,
    pub proxy: proxy::Proxy,
    pub sshd: Sshd,
}

impl Proxied {
    pub fn start() -> Proxied {
        Proxied::start_with(&[])
    }

    /// The same, with more `moor mount` options. The agent runs on one runtime worker:
    /// under faults, a task that spins (retrying at once what cannot succeed yet) then
    /// starves the rest and the test fails, instead of burning a second worker unseen.
    pub fn start_with(extra: &[&str]) -> Proxied {
        let sshd = Sshd::start();
        let proxy = proxy::Proxy::start(sshd.port);
        let mut c = Client::via(&sshd, proxy.port);
        c.env.push(("MOOR_WORKERS", "1".into()));
        let m = c.mount_at(sshd.export.to_str().unwrap(), "mnt", extra);
        Proxied { m, c, proxy, sshd }
    }
}

impl Client {
    /// `moor mount status --json`, whole.
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.run(&["mount", "status", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The first mount in `moor mount status --json`.
    pub fn mount_json(&self) -> serde_json::Value {
        self.status_json()["mounts"][0].clone()
    }

    /// Its state: "active", "reconnecting", ...
    pub fn state(&self) -> String {
        self.mount_json()["status"]["state"].as_str().unwrap_or("").to_string()
    }
}
