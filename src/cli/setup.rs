//! The process as the command line starts it: runtime size, the sshfs-style command
//! forms, the environment, inherited descriptors and memory kept private.

use super::*;

/// One worker per core: the work is short and crosses threads often, and extra workers
/// on a small machine only add wake-ups (measured with `scripts/bench`). One worker on
/// two cores wrote no faster once writes were shallow (0.79 s vs 0.80 s per 512 MiB)
/// and read slower (1.29 s vs 1.07 s per GiB): decryption wants both cores.
/// `MOOR_WORKERS` sets the number, for tests and diagnosis: with one worker, a task that
/// spins starves every other instead of hiding behind a second worker.
pub(in crate::cli) fn worker_threads() -> usize {
    match std::env::var("MOOR_WORKERS").ok().and_then(|v| v.parse::<usize>().ok()) {
        Some(n) if n > 0 => n.min(64),
        _ => std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8),
    }
}

/// mount(8) runs a FUSE helper as `moor SOURCE MOUNTPOINT -o OPTIONS` (through
/// mount.fuse3, for type `fuse.moor`): with no command named, that is `moor mount`.
pub(in crate::cli) fn with_command(mut argv: Vec<OsString>) -> Vec<OsString> {
    use clap::CommandFactory;
    let commands: Vec<String> = Cli::command()
        .get_subcommands()
        .flat_map(|c| std::iter::once(c.get_name().to_string()).chain(c.get_all_aliases().map(str::to_string)))
        .chain(std::iter::once("help".to_string()))
        .collect();
    let mut i = 1;
    while let Some(arg) = argv.get(i).map(|a| a.to_string_lossy()) {
        match arg.as_ref() {
            "-o" => i += 2,
            a if a.starts_with('-') => i += 1,
            a if commands.iter().any(|c| c == a) => return argv,
            _ => {
                argv.insert(1, "mount".into());
                return argv;
            }
        }
    }
    argv
}

/// mount(8) runs helpers without PATH, and mount.fuse3's `setuid=USER` leaves no HOME:
/// they are filled in as a login would, so that ssh, fusermount3 and ~/.ssh are found.
pub(in crate::cli) fn fill_environment() {
    if std::env::var_os("PATH").is_none() {
        std::env::set_var("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    }
    if std::env::var_os("HOME").is_none() {
        if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::getuid()) {
            std::env::set_var("HOME", user.dir);
        }
    }
}

/// The agent outlives whoever started it: descriptors it was handed by mistake (a lock
/// `flock` holds, a pipe a test harness reads to its end) would be held for as long as
/// it serves mounts. Everything past stdin, stdout and stderr goes, before the agent
/// opens anything of its own.
pub(in crate::cli) fn close_inherited_descriptors() {
    // SAFETY: close_range only closes descriptors; none above 2 is in use yet.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc != 0 {
        for fd in 3..1024 {
            let _ = nix::unistd::close(fd);
        }
    }
}

/// Keeps what this process will hold (passwords and passphrases typed, keys decrypted,
/// the agent's and a foreground mount's live sessions) out of core dumps and away from
/// other processes of the same user: a process that is not dumpable cannot be traced
/// by them, and its /proc files are root's. Programs it runs are dumpable again.
pub(in crate::cli) fn keep_memory_private() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        // Logging is not set up yet; the process works on, only less guarded.
        eprintln!("moor: warning: cannot keep this process out of core dumps: {e}");
    }
}
