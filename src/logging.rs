//! Log setup: warnings to stderr for the CLI; the agent's stderr is its log file.

use tracing_subscriber::EnvFilter;

pub fn init(verbose: u8, agent: bool) {
    let default = match (verbose, agent) {
        (0, false) => "warn",
        (0, true) => "info",
        (1, _) => "moor=debug,info",
        _ => "moor=trace,debug",
    };
    let filter = EnvFilter::try_from_env("MOOR_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!agent && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Appends one timestamped line to a log file that exists (a mount's log).
pub fn append_line(path: &std::path::Path, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) {
        let _ = writeln!(f, "{} {line}", crate::timestamp::Timestamp::now());
    }
}
