//! The command line: parse, turn into requests for the agent (or a foreground mount),
//! print results for people or as JSON for scripts.

mod commands;
mod generate;
mod hooks;
mod options;
mod output;
mod setup;
mod terminal;

use std::ffi::OsString;
use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::control::client::{self, Client, Mounted, Reconnected, Unmounted, WatchUpdate};
use crate::control::protocol::{AtStake, ErrorKind, MoorError, MountInfo, MountRequest, MountStatus};
use crate::control::{agent, mount, names, paths, registry, systemd};
use crate::deadline;
use crate::fs::IdMap;
use crate::link::auth::{Asker, Question, Secret};
use crate::link::config::{self, Overrides};
use crate::link::LinkOptions;
use crate::remote::sftp::SftpLink;
use commands::*;
use setup::*;

#[derive(Parser, Debug)]
#[command(
    name = "moor",
    version,
    about = "Mount a remote directory over SSH/SFTP, and keep it mounted through bad networks",
    long_about = "moor mounts a remote directory over SSH/SFTP as a local FUSE filesystem.\n\n\
        It reads your ~/.ssh/config, uses ssh-agent and your keys, and checks host keys\n\
        against known_hosts exactly as ssh does.",
    after_help = "Examples:\n  moor mount alice@build:/srv/src ~/src    mount a remote directory\n  \
        moor mount status                        list mounts and their health\n  \
        moor unmount ~/src                       take it down again\n\n\
        As a mount helper (fstab, mount -t fuse.moor), `moor SOURCE MOUNTPOINT -o OPTIONS` is\n\
        `moor mount SOURCE MOUNTPOINT -o OPTIONS`; `umount MOUNTPOINT` ends it."
)]
pub struct Cli {
    /// More detail in logs (-v: debug, -vv: trace)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mount [USER@]HOST[:PATH] on MOUNTPOINT, or show mounts with `moor mount status`
    Mount(Box<MountArgs>),
    /// Unmount a moor mount, given its mountpoint or name
    #[command(
        after_help = "Examples:\n  moor unmount ~/src\n  moor unmount build-src\n  moor unmount --lazy ~/src    detach now even if busy\n  moor unmount --all"
    )]
    Unmount(UnmountArgs),
    /// Reconnect a mount now, skipping the backoff (also after it failed), and say how it went
    #[command(after_help = "Examples:\n  moor reconnect ~/src\n  moor reconnect build-src")]
    Reconnect(ReconnectArgs),
    /// See or empty a mount's offline cache (`moor mount --offline-cache SIZE`)
    #[command(after_help = "Examples:\n  moor cache clear ~/src\n  moor cache clear build-src --json")]
    Cache(CacheCommandArgs),
    /// Print a shell completion script for moor (bash, zsh, fish, elvish or powershell)
    #[command(after_help = generate::COMPLETIONS_HELP)]
    Completions(generate::CompletionsArgs),
    /// Write man pages for moor and each of its commands (moor.1, moor-mount.1, ...)
    #[command(after_help = generate::MAN_HELP)]
    Man(generate::ManArgs),
    /// Serve mounts (started by `moor mount` on demand; not run by hand)
    #[command(hide = true)]
    Agent,
}

#[derive(Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:\n  moor mount build:/srv/src ~/src         HOST from ~/.ssh/config, absolute path\n  \
        moor mount alice@10.0.0.5: ~/home       the remote home directory\n  \
        moor mount -p 2222 -i ~/.ssh/id_work box:projects ~/p   path relative to the remote home\n  \
        moor mount -F ./ssh_config -o StrictHostKeyChecking=accept-new lab:/data /mnt/lab\n  \
        moor mount status --json"
)]
struct MountArgs {
    #[command(subcommand)]
    action: Option<MountAction>,
    /// [USER@]HOST[:PATH]: HOST may be an alias from your ssh config; PATH defaults to the
    /// remote home, and a relative PATH is relative to it
    #[arg(value_name = "[USER@]HOST[:PATH]", required = true)]
    remote: Option<String>,
    /// Local directory to mount on (must exist)
    #[arg(value_name = "MOUNTPOINT", required = true)]
    mountpoint: Option<PathBuf>,
    /// Port to connect to on the remote host (as ssh -p)
    #[arg(short, long)]
    port: Option<u16>,
    /// Identity (private key) file to authenticate with; may be repeated (as ssh -i)
    #[arg(short = 'i', long = "identity", value_name = "FILE")]
    identity: Vec<PathBuf>,
    /// Read this ssh config file instead of ~/.ssh/config (as ssh -F)
    #[arg(short = 'F', long = "ssh-config", value_name = "FILE")]
    ssh_config: Option<PathBuf>,
    /// User to log in as (as ssh -l)
    #[arg(short = 'l', long)]
    user: Option<String>,
    /// Reach the host through these jump hosts, [USER@]HOST[:PORT] separated by commas
    /// (as ssh -J; each jump host uses its own config, keys and known_hosts)
    #[arg(short = 'J', long = "jump", value_name = "JUMPS")]
    jump: Option<String>,
    /// Mount and sshfs options, comma-separated (ro, allow_other, idmap=user, uid=N,
    /// cache_timeout=SECS, max_conns=N, ...), and ssh_config options, e.g.
    /// -o ConnectTimeout=5; may be repeated (as with sshfs and ssh -o)
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Name for the mount, up to 64 letters, digits, '.', '-' and '_' (default: derived
    /// from host and path)
    #[arg(long)]
    name: Option<String>,
    /// Stay attached: serve the mount from this process until Ctrl-C or SIGTERM, then
    /// unmount. Under systemd (a `Type=notify` unit) it says READY=1 once the mount
    /// answers, and its state in STATUS=
    #[arg(long)]
    foreground: bool,
    /// With --foreground: write the log to FILE (rotated at 10 MiB, 3 kept) instead of
    /// stderr
    #[arg(long, value_name = "FILE", requires = "foreground")]
    log_file: Option<PathBuf>,
    /// Keep trying a host that refuses or does not answer (e.g. still booting) this long
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    wait: Option<Duration>,
    #[command(flatten)]
    resilience: ResilienceArgs,
    #[command(flatten)]
    cache: CacheArgs,
    #[command(flatten)]
    sharing: SharingArgs,
}

/// Who may use the mount, and who its files show as owned by.
#[derive(Args, Debug)]
#[command(next_help_heading = "Sharing and ownership")]
struct SharingArgs {
    /// Let other local users (and root) use the mount; needs `user_allow_other` in
    /// /etc/fuse.conf unless you are root. The server still checks every access as the
    /// remote login user
    #[arg(long)]
    allow_other: bool,
    /// `user`: files of the remote login user show as yours (a `chown` to you maps back),
    /// as sshfs's `-o idmap=user`; `none`: owners show as the server's numbers
    #[arg(long, value_name = "MAP", default_value = "user", value_parser = parse_idmap)]
    idmap: IdMap,
    /// The local uid the remote login user's files show as (default: yours)
    #[arg(long, value_name = "UID")]
    uid: Option<u32>,
    /// The local gid the remote login user's files show as (default: yours)
    #[arg(long, value_name = "GID")]
    gid: Option<u32>,
    /// Let root use the mount too (besides you); needs `user_allow_other` in
    /// /etc/fuse.conf unless you are root
    #[arg(long, conflicts_with = "allow_other")]
    allow_root: bool,
    /// Let the kernel check each file's mode bits before an access (as for a local disk),
    /// besides the server's own check as the remote login user
    #[arg(long)]
    default_permissions: bool,
    /// Permission bits to take away from every file's mode as shown, in octal (e.g. 022);
    /// the server's modes are unchanged
    #[arg(long, value_name = "MASK", value_parser = parse_umask)]
    umask: Option<u32>,
    /// Show symlinks on the server as what they point to (a dangling one stays a symlink)
    #[arg(long)]
    follow_symlinks: bool,
    /// Mount read-only: every change fails with "read-only file system", and nothing is
    /// sent to the server
    #[arg(long)]
    read_only: bool,
}

impl SharingArgs {
    /// The flags with what `-o` says on top: an option given there wins.
    fn with(&self, o: &options::MountOptions) -> Result<SharingArgs, MoorError> {
        let merged = SharingArgs {
            allow_other: self.allow_other || o.allow_other,
            idmap: o.idmap.unwrap_or(self.idmap),
            uid: o.uid.or(self.uid),
            gid: o.gid.or(self.gid),
            allow_root: self.allow_root || o.allow_root,
            default_permissions: self.default_permissions || o.default_permissions,
            umask: o.umask.or(self.umask),
            follow_symlinks: self.follow_symlinks || o.follow_symlinks,
            read_only: o.read_only.unwrap_or(self.read_only),
        };
        if merged.allow_other && merged.allow_root {
            return Err(MoorError::new(
                ErrorKind::Usage,
                "--allow-other and --allow-root cannot go together: pick one",
            ));
        }
        Ok(merged)
    }
}

fn parse_umask(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("'{s}' is not a umask: use octal, e.g. 022"))
}

fn parse_idmap(s: &str) -> Result<IdMap, String> {
    match s {
        "user" => Ok(IdMap::User),
        "none" => Ok(IdMap::None),
        _ => Err(format!("'{s}' is not an id mapping: use user or none")),
    }
}

/// How the link is watched and restored.
#[derive(Args, Debug)]
#[command(next_help_heading = "Resilience")]
struct ResilienceArgs {
    /// Time between heartbeats (an SFTP stat on every connection) [default: 1s, or
    /// ServerAliveInterval from your ssh config]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// Heartbeats failing outright in a row before the link counts as down [default: 3,
    /// or ServerAliveCountMax with ServerAliveInterval]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_heartbeat_failures: Option<u32>,
    /// First reconnect delay bound; it doubles per attempt up to --backoff-cap (with full jitter)
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
    backoff_base: Duration,
    /// Largest reconnect delay
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    backoff_cap: Duration,
    /// How long a connection may have requests out and receive nothing before the link counts as down
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// A call waiting this long gets EAGAIN if the link is down or moved nothing for as long; on a moving link it waits on
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    call_timeout: Duration,
    /// Do not reconnect: a lost link fails the mount
    #[arg(long)]
    no_reconnect: bool,
}

/// How much is cached, and how many connections carry the traffic.
#[derive(Args, Debug)]
#[command(next_help_heading = "Performance")]
struct CacheArgs {
    /// SSH connections per destination; requests, reads ahead and writes behind are
    /// spread over them. More helps big transfers on fast links and many cores
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32))]
    connections: u16,
    /// How long attributes, directory listings and "no such file" are trusted before
    /// asking the server again; 0 turns caching off. Changes made through this mount are
    /// always seen at once; changes made on the server show after at most this long
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration_or_zero)]
    cache_timeout: Duration,
    /// How far ahead of a sequential reader a file is fetched, at most (the window grows
    /// from 1 MiB to this). Larger helps long fat links; 0 turns read-ahead off
    #[arg(long, value_name = "SIZE", default_value = "16M", value_parser = parse_size)]
    read_ahead: u64,
    /// Keep what is read (contents, attributes, listings) on local disk, up to SIZE
    /// (e.g. 2G), and serve it while the link is down; see "Working offline" in the README.
    /// Off unless given
    #[arg(long, value_name = "SIZE", value_parser = options::cache_size)]
    offline_cache: Option<u64>,
    /// Where offline caches live, one per destination and remote path
    /// [default: $XDG_CACHE_HOME/moor, else ~/.cache/moor]
    #[arg(long, value_name = "DIR")]
    offline_cache_dir: Option<PathBuf>,
}

/// Parses a size in bytes: `0`, `512K`, `16M`, `1G` (powers of 1024), up to 1 GiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    options::size_within(s, 1 << 30, "1G")
}

/// Like `parse_duration`, also taking 0.
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim().trim_end_matches(|c: char| c.is_ascii_alphabetic()) == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
}

impl ResilienceArgs {
    /// The link's options; the heartbeat is the config's ServerAliveInterval/CountMax
    /// when it gives one and the flags do not.
    fn link_options(&self, connections: u16, server_alive: Option<(Duration, u32)>) -> LinkOptions {
        let (alive_interval, alive_count) = server_alive.map_or((None, None), |(i, c)| (Some(i), Some(c)));
        LinkOptions {
            heartbeat_interval: self.heartbeat_interval.or(alive_interval).unwrap_or(Duration::from_secs(1)),
            max_heartbeat_failures: self.max_heartbeat_failures.or(alive_count).unwrap_or(3),
            request_timeout: self.request_timeout,
            backoff_base: self.backoff_base,
            backoff_cap: self.backoff_cap,
            reconnect: !self.no_reconnect,
            connections: usize::from(connections),
            ..LinkOptions::default()
        }
    }
}

/// Parses `250ms`, `2s`, `1.5s`, `3m`, `1h`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("'{s}' is not a duration: use e.g. 500ms, 2s, 1.5m, 1h"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" | "sec" | "secs" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown unit '{other}' in '{s}': use ms, s, m or h")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > deadline::LONGEST.as_secs_f64() {
        return Err(format!("'{s}' is out of range: use at most 365 days"));
    }
    let d = Duration::from_secs_f64(secs);
    if d < deadline::SHORTEST {
        return Err(format!("'{s}' is too short: use at least 1ms"));
    }
    Ok(d)
}

#[derive(Subcommand, Debug)]
enum MountAction {
    /// Show every mount and its health
    #[command(after_help = "Examples:\n  moor mount status\n  \
        moor mount status --json | jq '.mounts[].status.state'\n  \
        moor mount status --watch --exec 'notify-send \"moor: $MOOR_MOUNT\" \"$MOOR_NEW_STATE $MOOR_DETAIL\"'")]
    Status(StatusArgs),
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// One mount, in detail (with its connections)
    #[arg(value_name = "NAME|MOUNTPOINT")]
    target: Option<String>,
    /// Print JSON instead of a table (with --watch: one object per line per change)
    #[arg(long)]
    json: bool,
    /// Print every state change as it happens, until Ctrl-C
    #[arg(long, conflicts_with = "target")]
    watch: bool,
    #[arg(
        long,
        value_name = "CMD",
        requires = "watch",
        help = "With --watch: run CMD with `sh -c` each time a mount changes state, e.g. to notify you",
        long_help = hooks::EXEC_HELP
    )]
    exec: Option<String>,
    /// How long an --exec command may run before it is killed (with what it started)
    /// and reported; the next change's command runs after it
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, requires = "exec")]
    exec_timeout: Duration,
}

#[derive(Args, Debug)]
struct CacheCommandArgs {
    #[command(subcommand)]
    action: CacheAction,
}

#[derive(Subcommand, Debug)]
enum CacheAction {
    /// Empty the mount's offline cache: what it holds goes, and fills again as files are
    /// read (its size and hits show in `moor mount status`)
    Clear(CacheClearArgs),
}

#[derive(Args, Debug)]
struct CacheClearArgs {
    /// Mountpoint or mount name
    #[arg(value_name = "MOUNTPOINT|NAME")]
    target: String,
    /// Print the mount as JSON afterwards (as `moor mount status --json` shows it)
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ReconnectArgs {
    /// Mountpoint or mount name
    #[arg(value_name = "MOUNTPOINT|NAME")]
    target: String,
}

#[derive(Args, Debug)]
struct UnmountArgs {
    /// Mountpoint or mount name
    #[arg(value_name = "MOUNTPOINT|NAME", required_unless_present = "all")]
    target: Option<String>,
    /// Detach now even if busy; the mount goes away when the last file is closed
    /// (queued writes are not waited for)
    #[arg(long)]
    lazy: bool,
    /// Unmount now even if written data has not reached the server (it is dropped, and
    /// reported)
    #[arg(long)]
    force: bool,
    /// Unmount every moor mount
    #[arg(long, conflicts_with = "target")]
    all: bool,
}

/// Splits `[user@]host[:path]`; `[v6addr]` may be bracketed.
pub fn parse_remote(spec: &str) -> Result<(String, String), MoorError> {
    let usage =
        |m: &str| MoorError::new(ErrorKind::Usage, format!("bad remote '{spec}': {m}; expected [USER@]HOST[:PATH]"));
    let (user, rest) = match spec.split_once('@') {
        Some((u, r)) if !u.is_empty() => (Some(u), r),
        Some(_) => return Err(usage("empty user name")),
        None => (None, spec),
    };
    let (host, path) = if let Some(r) = rest.strip_prefix('[') {
        let (h, after) = r.split_once(']').ok_or_else(|| usage("unclosed '['"))?;
        (h, after.strip_prefix(':').unwrap_or(after))
    } else {
        rest.split_once(':').unwrap_or((rest, ""))
    };
    if host.is_empty() {
        return Err(usage("empty host name"));
    }
    if host.contains('/') || host.chars().any(char::is_whitespace) {
        return Err(usage("the host name has a '/' or a space"));
    }
    let user_host = match user {
        Some(u) => format!("{u}@{host}"),
        None => host.to_string(),
    };
    Ok((user_host, path.to_string()))
}

pub fn run() -> i32 {
    keep_memory_private();
    // Before any thread starts: the environment is not safe to change after.
    fill_environment();
    let cli = Cli::parse_from(with_command(std::env::args_os().collect()));
    // Generating text needs no logging, runtime or agent.
    match &cli.command {
        Command::Completions(args) => return exit_code(generate::completions(args)),
        Command::Man(args) => return exit_code(generate::man_pages(args)),
        _ => {}
    }
    let is_agent = matches!(cli.command, Command::Agent);
    if is_agent {
        close_inherited_descriptors();
    }
    let log_file = match &cli.command {
        Command::Agent if !systemd::logs_to_journal() => paths::agent_log().ok(),
        Command::Mount(m) => m.log_file.clone(),
        _ => None,
    };
    if let Err(e) = crate::logging::init(cli.verbose, is_agent, log_file.as_deref()) {
        // The agent's own log file is not the user's to fix: it logs to stderr then.
        if is_agent {
            let _ = crate::logging::init(cli.verbose, is_agent, None);
            tracing::warn!("{e}; logging to stderr");
        } else {
            output::error(&MoorError::new(ErrorKind::Usage, e));
            return ErrorKind::Usage.exit_code();
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().worker_threads(worker_threads()).build() {
        Ok(rt) => rt,
        Err(e) => {
            output::error(&MoorError::new(ErrorKind::Internal, format!("cannot start the runtime: {e}")));
            return 1;
        }
    };
    let res = rt.block_on(async move {
        if !is_agent {
            report_stale().await;
        }
        match cli.command {
            Command::Agent => agent::run().await,
            Command::Mount(args) => match args.action {
                Some(MountAction::Status(s)) => status(s).await,
                None => mount_cmd(*args, cli.verbose).await,
            },
            Command::Unmount(args) => unmount_cmd(args).await,
            Command::Reconnect(args) => reconnect_cmd(args).await,
            Command::Cache(args) => match args.action {
                CacheAction::Clear(a) => cache_clear_cmd(a).await,
            },
            Command::Completions(_) | Command::Man(_) => Ok(()), // answered above
        }
    });
    // Background tasks (e.g. a lingering SSH session) must not hold the exit.
    rt.shutdown_timeout(Duration::from_secs(1));
    exit_code(res)
}

/// The process's exit code for a command's outcome, telling the user what went wrong.
fn exit_code(res: Result<(), MoorError>) -> i32 {
    match res {
        Ok(()) => 0,
        Err(e) => {
            output::error(&e);
            e.kind.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_specs() {
        assert_eq!(parse_remote("host").unwrap(), ("host".into(), "".into()));
        assert_eq!(parse_remote("u@host:/srv").unwrap(), ("u@host".into(), "/srv".into()));
        assert_eq!(parse_remote("host:rel/dir").unwrap(), ("host".into(), "rel/dir".into()));
        assert_eq!(parse_remote("[::1]:/x").unwrap(), ("::1".into(), "/x".into()));
        assert_eq!(parse_remote("u@h:").unwrap(), ("u@h".into(), "".into()));
        for bad in ["", ":/x", "@h", "u@:/x", "[::1", "a b:/x"] {
            assert_eq!(parse_remote(bad).unwrap_err().kind, ErrorKind::Usage, "{bad}");
        }
    }

    #[test]
    fn the_mount_helper_form_is_moor_mount() {
        let argv = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let cases: &[(&[&str], &[&str])] = &[
            (
                &["moor", "u@h:/p", "/mnt", "-o", "ro,allow_other"],
                &["moor", "mount", "u@h:/p", "/mnt", "-o", "ro,allow_other"],
            ),
            (&["moor", "h:", "/mnt"], &["moor", "mount", "h:", "/mnt"]),
            (&["moor", "-o", "ro", "h:", "/mnt"], &["moor", "mount", "-o", "ro", "h:", "/mnt"]),
            (&["moor", "-v", "h:", "/mnt"], &["moor", "mount", "-v", "h:", "/mnt"]),
            (&["moor", "mount", "h:", "/mnt"], &["moor", "mount", "h:", "/mnt"]),
            (&["moor", "-v", "unmount", "/mnt"], &["moor", "-v", "unmount", "/mnt"]),
            (&["moor", "mount", "status"], &["moor", "mount", "status"]),
            (&["moor", "help"], &["moor", "help"]),
            (&["moor", "--version"], &["moor", "--version"]),
            (&["moor"], &["moor"]),
        ];
        for (given, want) in cases {
            assert_eq!(with_command(argv(given)), argv(want), "{given:?}");
        }
        let parsed = Cli::try_parse_from(with_command(argv(&["moor", "h:/p", "/mnt", "-o", "ro", "-o", "uid=5"])));
        let Command::Mount(m) = parsed.unwrap().command else { panic!("not a mount") };
        assert_eq!(m.remote.as_deref(), Some("h:/p"));
        assert_eq!(m.options, ["ro", "uid=5"]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("1ms").unwrap(), Duration::from_millis(1));
        for bad in ["", "abc", "5x", "-1s", "0s", "1e999s", "366d", "8761h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        // Not zero, yet zero once stored: a zero interval would panic the link's timer.
        for tiny in ["0.0000000001s", "0.5ms", "0.0009s", "0.00001m"] {
            let e = parse_duration(tiny).unwrap_err();
            assert!(e.contains("at least 1ms"), "{tiny}: {e}");
            let e = parse_duration_or_zero(tiny).unwrap_err();
            assert!(e.contains("at least 1ms"), "{tiny}: {e}");
        }
        assert_eq!(parse_duration_or_zero("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("512K").unwrap(), 512 << 10);
        assert_eq!(parse_size("16M").unwrap(), 16 << 20);
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in ["", "M", "-1M", "2G", "12Q", "99999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
