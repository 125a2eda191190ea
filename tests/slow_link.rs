//! Slow is not dead: through a fault proxy that limits each connection's bandwidth, or
//! stalls it and lets it deliver late, real programs on a real mount see a slow link
//! as slow, never as down, and a connection given up never delivers anything late.

mod common;

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn env() -> Proxied {
    Proxied::start()
}

/// Bytes per second each connection may move each way on the slow link: slow enough
/// that the 64 MiB write-behind queue takes many call deadlines to drain.
const SLOW: u64 = 2_000_000;

fn reconnects(c: &Client) -> u64 {
    c.mount_json()["reconnects"].as_u64().unwrap()
}

/// Bytes that differ from round to round and from one write to the next.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(40503)) >> 13) as u8).collect()
}

/// Repeats `call` while it fails with EAGAIN, as a program written for moor does, for
/// at most `limit`.
fn retry_eagain<T>(limit: Duration, mut call: impl FnMut() -> std::io::Result<T>) -> T {
    let start = Instant::now();
    loop {
        match call() {
            Ok(v) => return v,
            Err(e) if e.kind() == ErrorKind::WouldBlock && start.elapsed() < limit => {
                pause(Duration::from_millis(50)) // the program's own retry delay
            }
            Err(e) => panic!("failed after {:?}: {e}", start.elapsed()),
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    sh(&format!("cmp -s {} {}", a.display(), b.display())).status.success()
}

/// A write is sent on a connection; the path stalls, with the write on its way; the link
/// gives that connection up, and a newer write of the same range is made; the path comes
/// back for new connections at once, and the stalled connection's bytes arrive seconds
/// later, as a stalled path's retransmissions do. The server must end up with the newer
/// data: the given-up connection may deliver nothing that completes a request.
#[test]
fn a_stalled_connection_never_delivers_late() {
    let e = env();
    let f = fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(e.m.p("f")).unwrap();
    let server = e.sshd.export.join("f");
    for round in 0..10u32 {
        let (a, b, c) = (pattern(1 << 20, 3 * round), pattern(1 << 20, 3 * round + 1), pattern(1 << 20, 3 * round + 2));
        retry_eagain(Duration::from_secs(30), || f.write_all_at(&a, 0));
        retry_eagain(Duration::from_secs(30), || f.sync_all());
        assert!(fs::read(&server).unwrap() == a, "round {round}: A not on the server after fsync");

        e.proxy.black_hole();
        // Acknowledged at once, and sent on the connection the stall now holds.
        f.write_all_at(&b, 0).unwrap();
        assert!(wait_until(Duration::from_secs(15), || e.c.state() == "reconnecting"), "round {round}: never down");
        assert!(e.proxy.holding() > 0, "round {round}: the stall caught nothing on its way");
        f.write_all_at(&c, 0).unwrap();

        e.proxy.restore_late(Duration::from_secs(2));
        retry_eagain(Duration::from_secs(30), || f.sync_all());
        let settled = wait_until(Duration::from_secs(20), || e.proxy.holding() == 0 && e.proxy.late_open() == 0);
        let on_server = fs::read(&server).unwrap();
        assert!(
            on_server == c,
            "round {round}: the server's file is not the newest write ({} bytes arrived late; {})",
            e.proxy.late_bytes(),
            if on_server == b { "it holds the older write B" } else { "it holds a mix" }
        );
        assert!(settled, "round {round}: the stalled connections never finished");
    }
    eprintln!("measured: 10 stalls, {} bytes arrived late, none completed a request", e.proxy.late_bytes());
}

/// `dd conv=fsync` of 32 MiB over a slow, live link: every call waits as long as data
/// moves; nothing fails and the link is never taken down.
#[test]
fn dd_with_fsync_over_a_slow_link_succeeds() {
    let e = env();
    let src = e.c.home.path().join("src");
    sh_ok(&format!("head -c 32M /dev/urandom > {}", src.display()));
    e.proxy.set_rate(SLOW);
    let started = Instant::now();
    let out = sh(&format!("dd if={} of={} bs=1M conv=fsync 2>&1", src.display(), e.m.p("x").display()));
    let took = started.elapsed();
    assert!(out.status.success(), "dd failed after {took:?}: {}", stdout(&out));
    assert!(same_file(&src, &e.sshd.export.join("x")), "the server's copy differs");
    assert_eq!(reconnects(&e.c), 0, "the slow link was taken for a dead one");
    eprintln!("measured: dd conv=fsync of 32 MiB at {SLOW} B/s per connection took {took:?}");
}

/// `cp` of 256 MiB over a slow, live link, then `cmp`: `close` waits for the data, the
/// link stays up, and neither the heartbeat nor a program's `stat` waits behind the data.
#[test]
fn cp_of_a_big_file_over_a_slow_link_keeps_every_byte() {
    let e = env();
    let src = e.c.home.path().join("big");
    sh_ok(&format!("head -c 256M /dev/urandom > {}", src.display()));
    // Names looked up in here are new each time, so every lookup asks the server.
    e.sshd.mkdir("sub");
    e.proxy.set_rate(SLOW);
    let started = Instant::now();
    let child = as_local_user(&mut std::process::Command::new("cp"))
        .arg(&src)
        .arg(e.m.p("big"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut rtts = Vec::new();
    let mut lookups = Vec::new();
    let mut child = Some(child);
    let mut out = None;
    while out.is_none() && started.elapsed() < Duration::from_secs(300) {
        if let Some(rtt) = e.c.mount_json()["rtt_ms"].as_f64() {
            rtts.push(rtt);
        }
        let asked = Instant::now();
        let missing = fs::metadata(e.m.p(&format!("sub/probe-{}", lookups.len())));
        lookups.push(asked.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(missing.unwrap_err().kind(), ErrorKind::NotFound);
        let c = child.as_mut().unwrap();
        if c.try_wait().unwrap().is_some() {
            out = Some(child.take().unwrap().wait_with_output().unwrap());
        } else {
            pause(Duration::from_millis(500)); // how often the user looks at the status
        }
    }
    let out = out.unwrap_or_else(|| run_with_deadline_child(child.take().unwrap(), Duration::from_secs(1)));
    let took = started.elapsed();
    assert!(out.status.success(), "cp failed after {took:?}: {}", stderr(&out));
    assert!(same_file(&src, &e.sshd.export.join("big")), "the server's copy differs");
    assert_eq!(reconnects(&e.c), 0, "the slow link was taken for a dead one");
    // Nothing acknowledged is left behind: unmounting at once keeps every byte.
    let unmounted = e.c.run(&["unmount", e.m.s().as_str()]);
    assert!(unmounted.status.success(), "unmount right after cp failed: {}", stderr(&unmounted));
    assert!(same_file(&src, &e.sshd.export.join("big")), "the server's copy differs after the unmount");
    let (rtt_median, rtt_max) = median_and_max(&mut rtts);
    let (lookup_median, lookup_max) = median_and_max(&mut lookups);
    eprintln!(
        "measured: cp of 256 MiB at {SLOW} B/s per connection took {took:?}; during it, heartbeat RTT median \
         {rtt_median:.1} ms (max {rtt_max:.1}), a lookup on the server median {lookup_median:.1} ms (max {lookup_max:.1})"
    );
    // Megabytes queued ahead of them would be seconds at this rate.
    assert!(rtt_median < 50.0, "the heartbeat waited behind the data: median {rtt_median:.1} ms");
    assert!(lookup_median < 50.0, "lookups waited behind the data: median {lookup_median:.1} ms");
    assert!(lookup_max < 1000.0, "a lookup waited {lookup_max:.1} ms behind the data");
}

fn median_and_max(v: &mut [f64]) -> (f64, f64) {
    assert!(!v.is_empty(), "nothing was measured");
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

/// Everyday programs on a slow, live link: `tar x` of 1 000 files, `git clone`, `rsync -a`.
/// Each succeeds, the copies are identical, and the link is never taken down.
#[test]
fn everyday_programs_over_a_slow_link() {
    let e = env();
    let work = e.c.home.path().join("work");
    sh_ok(&format!(
        "set -e; mkdir -p {w}/tree; cd {w}/tree; for d in $(seq 1 20); do mkdir d$d; for f in $(seq 1 50); do \
         head -c $(( (d * 797 + f * 131) % 20000 + 1 )) /dev/urandom > d$d/f$f; done; done; \
         cd {w}; tar cf tree.tar tree; git init -q repo; cp -a tree/. repo/; cd repo; git add -A; \
         git -c user.name=t -c user.email=t@t commit -qm tree",
        w = work.display()
    ));
    e.proxy.set_rate(SLOW);
    let m = e.m.s();
    let started = Instant::now();
    sh_ok(&format!("mkdir {m}/untar && tar xf {w}/tree.tar -C {m}/untar", w = work.display()));
    let untar = started.elapsed();
    sh_ok(&format!("git clone -q {w}/repo {m}/clone", w = work.display()));
    let clone = started.elapsed() - untar;
    sh_ok(&format!("rsync -a {w}/tree/ {m}/rsync/", w = work.display()));
    let rsync = started.elapsed() - untar - clone;
    let export = e.sshd.export.display();
    sh_root_ok(&format!("diff -r {w}/tree {export}/untar/tree", w = work.display()));
    sh_root_ok(&format!("diff -r --exclude=.git {w}/repo {export}/clone", w = work.display()));
    sh_root_ok(&format!(
        "cd {export}/clone && git -c safe.directory='*' fsck 2>&1 && test -z \"$(git -c safe.directory='*' status --porcelain)\""
    ));
    sh_root_ok(&format!("diff -r {w}/tree {export}/rsync", w = work.display()));
    assert_eq!(reconnects(&e.c), 0, "the slow link was taken for a dead one");
    eprintln!(
        "measured at {SLOW} B/s per connection: tar x of 1000 files {untar:?}, git clone {clone:?}, rsync -a {rsync:?}"
    );
}

/// Writes `data` to a new file `name` on the mount, then, with the link black-holed,
/// writes it again and closes: the close gets EAGAIN and the data stays queued. Returns
/// once the link is known down.
fn queue_while_down(e: &Proxied, name: &str, data: &[u8]) {
    let mut f = fs::File::create(e.m.p(name)).unwrap();
    std::io::Write::write_all(&mut f, b"first").unwrap();
    e.proxy.black_hole();
    f.write_all_at(data, 0).unwrap();
    drop(f); // close: EAGAIN, and the data stays queued
    assert!(wait_until(Duration::from_secs(15), || e.c.state() == "reconnecting"), "the link never went down");
}

/// With written data queued and the link down, `moor unmount` waits a while, then
/// refuses with its own exit code, naming what is at stake; once the link moves again,
/// even slowly, `moor unmount` waits for the data and the server has every byte.
#[test]
fn unmount_waits_for_written_data_and_refuses_to_drop_it() {
    let e = env();
    let data = pattern(4 << 20, 7);
    queue_while_down(&e, "queued", &data);
    let asked = Instant::now();
    let out = e.c.run(&["unmount", e.m.s().as_str()]);
    let waited = asked.elapsed();
    assert_eq!(out.status.code(), Some(10), "not refused: {}{}", stdout(&out), stderr(&out));
    let why = stderr(&out);
    assert!(why.contains("queued") && why.contains("bytes") && why.contains("--force"), "{why}");
    assert!(waited >= Duration::from_secs(5), "refused after only {waited:?}: it must give the link a while");
    assert!(is_mounted(&e.m.path), "refused, yet unmounted");

    e.proxy.set_rate(SLOW);
    e.proxy.restore();
    let out = e.c.run(&["unmount", e.m.s().as_str()]);
    assert!(out.status.success(), "unmount failed once the link moved again: {}", stderr(&out));
    assert!(!is_mounted(&e.m.path));
    assert!(fs::read(e.sshd.export.join("queued")).unwrap() == data, "the queued data did not reach the server");
}

/// `moor unmount --force` goes ahead with the link down and says what was lost, on
/// stderr and in the mount's log.
#[test]
fn forced_unmount_says_what_was_lost() {
    let e = env();
    let log = e.c.mount_json()["log"].as_str().map(std::path::PathBuf::from).expect("the mount has a log");
    queue_while_down(&e, "dropped", &pattern(1 << 20, 9));
    let out = e.c.run(&["unmount", "--force", e.m.s().as_str()]);
    assert!(out.status.success(), "forced unmount failed: {}", stderr(&out));
    assert!(!is_mounted(&e.m.path));
    let said = stderr(&out);
    assert!(said.contains("lost") && said.contains("dropped"), "stderr does not say what was lost: {said}");
    let logged = fs::read_to_string(&log).unwrap();
    assert!(logged.contains("lost") && logged.contains("dropped"), "the mount's log does not say: {logged}");
}

/// The agent's SIGTERM with written data still queued: it waits while the link moves the
/// data (slowly), then unmounts and exits; the server has every byte.
#[test]
fn sigterm_waits_for_written_data() {
    let e = env();
    // More than the link moves in the second the agent gives a mount after unmounting.
    let data = pattern(16 << 20, 11);
    queue_while_down(&e, "at-exit", &data);
    e.proxy.set_rate(SLOW);
    e.proxy.restore();
    let agents = e.c.agent_pids();
    assert_eq!(agents.len(), 1, "agents: {agents:?}");
    sh_ok(&format!("kill -TERM {}", agents[0]));
    let gone = wait_until(Duration::from_secs(60), || e.c.agent_pids().is_empty());
    assert!(gone, "the agent did not exit after SIGTERM");
    assert!(!is_mounted(&e.m.path), "still mounted after the agent exited");
    assert!(fs::read(e.sshd.export.join("at-exit")).unwrap() == data, "queued data was dropped at exit");
}

/// Whether `pid` sleeps in a FUSE call, waiting for the mount's answer.
fn in_fuse_call(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/wchan"))
        .is_ok_and(|w| w.contains("request_wait_answer") || w.contains("fuse"))
}

/// Whether `pid` has ended (a zombie until it is waited for).
fn ended(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |s| s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
}

/// Presses Ctrl-C on `child` once it waits in a FUSE call; returns its output and how
/// long it took to end after the signal.
fn ctrl_c_while_waiting(child: std::process::Child, what: &str) -> (std::process::Output, Duration) {
    let pid = child.id();
    assert!(wait_until(Duration::from_secs(10), || in_fuse_call(pid)), "{what} never waited on the mount");
    let before = kernel_view(pid);
    let signalled = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    if !wait_until(Duration::from_secs(10), || ended(pid)) {
        let stuck = kernel_view(pid);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        panic!("{what} had not ended 10 s after SIGINT.\nBefore the signal: {before}\nNow: {stuck}");
    }
    let took = signalled.elapsed();
    (run_with_deadline_child(child, Duration::from_secs(10)), took)
}

/// Ctrl-C ends a call that waits on a stalled link: the program gets EINTR (or dies of
/// the signal) at once, not after the call deadline. The deadlines here are a minute,
/// so only the interrupt can end the calls within the test's bound.
#[test]
fn ctrl_c_ends_a_waiting_call() {
    let e = Proxied::start_with(&["--request-timeout", "60s", "--call-timeout", "60s"]);
    e.sshd.put("f", "f");
    e.sshd.put("g", "g");
    e.proxy.black_hole();

    // A program that handles SIGINT: Python's handler raises KeyboardInterrupt only once
    // the call has returned, with EINTR.
    let script = format!(
        "import os, time\nt = time.monotonic()\ntry:\n    os.read(os.open('{}', os.O_RDONLY), 10)\n    print('returned')\nexcept KeyboardInterrupt:\n    print('interrupted after %.1fs' % (time.monotonic() - t))\n",
        e.m.p("f").display()
    );
    let py = as_local_user(&mut std::process::Command::new("python3"))
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (out, took) = ctrl_c_while_waiting(py, "python");
    assert!(stdout(&out).starts_with("interrupted"), "python: {} {}", stdout(&out), stderr(&out));
    assert!(took < Duration::from_secs(2), "Ctrl-C took {took:?} to end the call");
    eprintln!("measured: a handled SIGINT ended the waiting call in {took:?}");

    // A program the signal kills.
    let cat = as_local_user(&mut std::process::Command::new("cat"))
        .arg(e.m.p("g"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (out, took) = ctrl_c_while_waiting(cat, "cat");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGINT), "cat: {:?}", out.status);
    assert!(took < Duration::from_secs(2), "Ctrl-C took {took:?} to kill cat");
    eprintln!("measured: a fatal SIGINT ended the waiting call in {took:?}");

    // The mount goes on: back on the network, the same files read.
    e.proxy.restore();
    assert!(wait_until(Duration::from_secs(20), || fs::read_to_string(e.m.p("f")).is_ok_and(|s| s == "f")));
    assert_eq!(fs::read_to_string(e.m.p("g")).unwrap(), "g");
}

/// Whether `pid` sleeps in the kernel. A program that does nothing but read a file on the
/// mount sleeps only in a read: a buffered read waits on the page the mount is filling,
/// not in the FUSE request itself.
fn asleep(pid: u32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    let wchan = fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    matches!(state, Some(Some('S' | 'D'))) && !wchan.is_empty() && wchan != "0"
}

/// A C program that handles the signals programs commonly handle, with SA_RESTART as
/// make, shells, editors and pagers do, then reads the file it is given in 1 MiB reads.
/// It says `reading` first, `eintr SIG` for each read that failed with EINTR (SIG: the
/// last signal it got), and how many bytes it read in the end.
const SIGNAL_READER_C: &str = r#"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static volatile sig_atomic_t last;
static void note(int s) { last = s; }
int main(int argc, char **argv) {
    int sigs[] = {SIGCHLD, SIGWINCH, SIGALRM, SIGPROF, SIGIO, SIGURG, SIGUSR1, SIGUSR2, SIGCONT, SIGINT};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = note;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaction(sigs[i], &sa, 0);
    if (argc < 2) return 2;
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) { perror("open"); return 2; }
    static char buf[1 << 20];
    long total = 0;
    printf("reading\n");
    fflush(stdout);
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) { printf("eintr %d\n", (int)last); fflush(stdout); continue; }
        if (n < 0) { perror("read"); return 3; }
        if (n == 0) break;
        total += n;
    }
    printf("read %ld\n", total);
    return 0;
}
"#;

/// Only a program being stopped sees EINTR: signals that programs handle and go on
/// after (a child ended, the terminal resized, a timer, SIGUSR1, ...) leave a slow read
/// waiting, as on a local disk; a handled SIGINT ends the waiting read with EINTR; the
/// program reads on to the end, and the cancelled read costs the link no reconnect.
#[test]
fn only_a_program_being_stopped_sees_eintr() {
    let e = env();
    let size = 4 << 20;
    e.sshd.put("big", pattern(size, 3));
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("reader.c"), SIGNAL_READER_C).unwrap();
    let reader = dir.path().join("reader");
    sh_root_ok(&format!(
        "cc -O -o {r} {d}/reader.c && chmod 755 {d} {r}",
        r = reader.display(),
        d = dir.path().display()
    ));
    // Slow enough that every read waits for seconds: long past the interrupt check.
    e.proxy.set_rate(50_000);
    let mut child = as_local_user(&mut std::process::Command::new(&reader))
        .arg(e.m.p("big"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next_line = || lines.recv_timeout(Duration::from_secs(30)).expect("the reader said nothing");
    assert_eq!(next_line(), "reading");
    use nix::sys::signal::{kill, Signal::*};
    for sig in [SIGCHLD, SIGWINCH, SIGALRM, SIGPROF, SIGIO, SIGURG, SIGUSR1, SIGUSR2, SIGCONT] {
        assert!(wait_until(Duration::from_secs(10), || asleep(child.id())), "the reader never waited");
        kill(pid, sig).unwrap();
    }
    // Those signals stay pending while the read waits: several interrupt checks pass
    // (one each 250 ms) and none may end it. The time passing is what is tested here.
    if let Ok(line) = lines.recv_timeout(Duration::from_secs(1)) {
        panic!("a signal that does not stop the program ended a read: {line}");
    }
    assert!(asleep(child.id()), "the read those signals came in is over: the check proves nothing");
    // Ctrl-C, handled: the read it lands in ends with EINTR. Pressed again until one
    // lands in a read (the reader may be between reads when it comes).
    let mut interrupted = None;
    for _ in 0..20 {
        assert!(wait_until(Duration::from_secs(10), || asleep(child.id())), "the reader never waited");
        kill(pid, SIGINT).unwrap();
        if let Ok(line) = lines.recv_timeout(Duration::from_secs(2)) {
            interrupted = Some(line);
            break;
        }
    }
    assert_eq!(interrupted.as_deref(), Some("eintr 2"), "the first EINTR came after another signal than SIGINT");
    e.proxy.set_rate(0);
    let end = next_line();
    assert_eq!(end, format!("read {size}"), "the reader did not read on to the end");
    assert!(child.wait().unwrap().success());
    assert_eq!(reconnects(&e.c), 0, "a cancelled read cost the link a reconnect");
}
