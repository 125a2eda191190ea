//! How the user refers to a mount: by its name (derived from host and path unless given)
//! or by its mountpoint. The agent and the CLI both resolve what the user typed, so the
//! rules live here, once.

use std::path::{Path, PathBuf};

use super::protocol::{ErrorKind, MoorError};

/// A short name from host and path: `host-dir`, or just `host` for the home directory.
pub fn derive_name(host: &str, path: &str) -> String {
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let raw = if last.is_empty() || last == "." || last == "~" { host.to_string() } else { format!("{host}-{last}") };
    raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '-' }).collect()
}

/// The absolute, normalised form of a path that may no longer be reachable.
pub fn absolute(p: &Path) -> PathBuf {
    // canonicalize fails on a dead FUSE mount; fall back to a lexical absolute path.
    std::fs::canonicalize(p).unwrap_or_else(|_| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
}

/// The answer for a target that names no mount.
pub fn not_mounted(target: &str) -> MoorError {
    MoorError::new(
        ErrorKind::NotMounted,
        format!("'{target}' is not a moor mount: see `moor mount status` for what is mounted"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(derive_name("box", ""), "box");
        assert_eq!(derive_name("box", "/srv/data/"), "box-data");
        assert_eq!(derive_name("box", "my dir"), "box-my-dir");
        assert_eq!(derive_name("box", "/"), "box");
    }
}
