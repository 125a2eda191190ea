//! Where logs go: warnings to stderr for the CLI; the agent's to its own file, rotated at
//! a size limit (or to the journal when it runs as a systemd unit); a foreground mount's
//! to `--log-file` when given. Every log file is private to the user and bounded.

use std::path::Path;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tracing_subscriber::EnvFilter;

/// A log file past which a new one is started, and how many old ones are kept
/// (`NAME.1` the newest): the agent's and a foreground mount's.
const LOG_LIMIT: usize = 10 << 20;
const LOGS_KEPT: usize = 3;
/// The same for a mount's own log (a line per state change).
pub const MOUNT_LOG_LIMIT: usize = 1 << 20;
pub const MOUNT_LOGS_KEPT: usize = 2;

/// A log file that rotates once it passes a size limit, keeping a few old ones.
pub type RotatingLog = FileRotate<AppendCount>;

/// Whether a log file's path may be a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Symlinks {
    /// A file the user named (`--log-file`), opened as the shell would.
    Follow,
    /// A file in moor's own directories: a symlink there was not made by moor, and
    /// following it could have root write where someone else chose.
    Refuse,
}

/// A log file at `path` that rotates once it passes `limit` bytes, keeping `kept` old
/// ones, created 0600; an error when its directory cannot be made or the file opened.
pub fn rotating(path: &Path, limit: usize, kept: usize, links: Symlinks) -> std::io::Result<RotatingLog> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = std::path::absolute(path)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut open = std::fs::OpenOptions::new();
    open.read(true).create(true).append(true).mode(0o600);
    if links == Symlinks::Refuse {
        open.custom_flags(libc::O_NOFOLLOW);
    }
    // Opened once here so that a file that cannot be written is an error, not a log
    // that silently goes nowhere.
    open.open(&path)?;
    Ok(FileRotate::new(
        &path,
        AppendCount::new(kept),
        ContentLimit::BytesSurpassed(limit),
        Compression::None,
        Some(open),
    ))
}

/// Sets up logging: to `file` (rotated) when given, else to stderr. An error says why
/// the file cannot be the log. The agent's file is moor's own (in the state dir); any
/// other was named by the user.
pub fn init(verbose: u8, agent: bool, file: Option<&Path>) -> Result<(), String> {
    let default = match (verbose, agent) {
        (0, false) => "warn",
        (0, true) => "info",
        (1, _) => "moor=debug,info",
        _ => "moor=trace,debug",
    };
    let filter = EnvFilter::try_from_env("MOOR_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match file {
        Some(path) => {
            let links = if agent { Symlinks::Refuse } else { Symlinks::Follow };
            let log = rotating(path, LOG_LIMIT, LOGS_KEPT, links)
                .map_err(|e| format!("cannot log to {}: {e}", path.display()))?;
            let _ = builder.with_writer(std::sync::Mutex::new(log)).with_ansi(false).try_init();
            // A panic is said in the log too, not only on a stderr nobody reads.
            let default_hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                tracing::error!("panic: {info}");
                default_hook(info);
            }));
        }
        None => {
            let _ = builder
                .with_writer(std::io::stderr)
                .with_ansi(!agent && std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .try_init();
        }
    }
    Ok(())
}

/// Appends one timestamped line to a log file that exists (a mount's log, in moor's own
/// directory: never through a symlink).
pub fn append_line(path: &std::path::Path, line: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).custom_flags(libc::O_NOFOLLOW).open(path) {
        let _ = writeln!(f, "{} {line}", crate::timestamp::Timestamp::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_log_rotates_at_its_limit_and_keeps_a_few_private_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/agent.log");
        let mut log = rotating(&path, 1000, 2, Symlinks::Refuse).unwrap();
        for i in 0..100 {
            writeln!(log, "line {i:04} of a log that grows past its limit").unwrap();
        }
        log.flush().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["agent.log", "agent.log.1", "agent.log.2"]);
        for n in &names {
            let meta = std::fs::metadata(dir.path().join("sub").join(n)).unwrap();
            assert!(meta.len() < 1100, "{n} is {} bytes", meta.len());
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{n}");
        }
        assert!(std::fs::read_to_string(&path).unwrap().contains("line 0099"));
    }

    #[test]
    fn a_log_that_cannot_be_made_is_an_error() {
        assert!(rotating(Path::new("/proc/no-such-dir/x.log"), 1000, 2, Symlinks::Follow).is_err());
    }

    #[test]
    fn a_log_of_moors_own_is_never_written_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "theirs\n").unwrap();
        let path = dir.path().join("m.log");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(rotating(&path, 1000, 2, Symlinks::Refuse).is_err());
        append_line(&path, "written through the link");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "theirs\n");
        // A file the user named may be a link, as for the shell's `>`.
        let mut log = rotating(&path, 1000, 2, Symlinks::Follow).unwrap();
        writeln!(log, "mine").unwrap();
        log.flush().unwrap();
        assert!(std::fs::read_to_string(&target).unwrap().ends_with("mine\n"));
    }
}
