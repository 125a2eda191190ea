//! A directory of a million entries through a real mount: it streams, on loopback and
//! on a slow link, in bounded memory. On its own, since it keeps the machine busy.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;

/// Longest one step on a million entries may take here.
const LONG: Duration = Duration::from_secs(400);

/// Peak resident memory of the mount's agent, in MiB.
fn agent_peak_mib(c: &Client) -> u64 {
    c.agent_pids()
        .iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .filter_map(|l| l.split_whitespace().nth(1).and_then(|kib| kib.parse::<u64>().ok()))
        .max()
        .unwrap_or(0)
        / 1024
}

/// A directory of a million entries: `ls -f` and `ls -l` work on loopback, `ls -f` on
/// a slow link too; the first entries come at once, and the agent's memory stays
/// bounded.
#[test]
fn a_directory_of_a_million_entries_streams_in_bounded_memory() {
    let e = Proxied::start();
    let (m, c, proxy, sshd) = (&e.m, &e.c, &e.proxy, &e.sshd);
    let big = sshd.export.join("big");
    fs::create_dir(&big).unwrap();
    let _tmpfs = Tmpfs::on(&big);
    sh_root_ok(&format!("cd {} && seq -f 'entry-%07g' 0 999999 | xargs touch", big.display()));
    let dir = m.p("big");
    let first = probe_secs(&format!(
        "import os, time; t = time.monotonic(); it = os.scandir('{}'); next(it); print(time.monotonic() - t)",
        dir.display()
    ));
    let started = Instant::now();
    let count = sh_ok_within(&format!("ls -f {} | wc -l", dir.display()), LONG);
    let ls_f = started.elapsed();
    assert_eq!(count.trim(), "1000002", "ls -f listed {count}");
    let started = Instant::now();
    let count = sh_ok_within(&format!("ls -l {} | wc -l", dir.display()), LONG);
    let ls_l = started.elapsed();
    assert_eq!(count.trim(), "1000001", "ls -l listed {count}");
    let loopback_peak = agent_peak_mib(c);
    proxy.set_delay(Duration::from_millis(5));
    let started = Instant::now();
    let count = sh_ok_within(&format!("ls -f {} | wc -l", dir.display()), LONG);
    let slow_ls_f = started.elapsed();
    assert_eq!(count.trim(), "1000002", "ls -f on the slow link listed {count}");
    let peak = agent_peak_mib(c);
    eprintln!(
        "measured: 1 000 000 entries: first entry after {first:.3}s; ls -f {ls_f:?}, ls -l {ls_l:?} on loopback \
         (agent peak RSS {loopback_peak} MiB); ls -f {slow_ls_f:?} with +5 ms each way (peak {peak} MiB)"
    );
    assert!(first < 2.0, "the first entry took {first:.2}s: the listing was waited for whole");
    assert!(peak < 400, "the agent grew to {peak} MiB");
}

/// A tmpfs on a directory for as long as it lives: the server's million files are made
/// there in seconds instead of minutes on a disk. Mounting it needs root; the mount of
/// moor itself is made and read by the ordinary users.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn on(dir: &std::path::Path) -> Tmpfs {
        sh_root_ok(&format!("mount -t tmpfs -o size=2g,nr_inodes=2000000,mode=0755 tmpfs {}", dir.display()));
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Runs a Python one-liner that prints a number of seconds.
fn probe_secs(script: &str) -> f64 {
    let out = sh_ok(&format!("python3 -c \"{script}\""));
    out.trim().parse().unwrap_or_else(|e| panic!("probe printed {out}: {e}"))
}
