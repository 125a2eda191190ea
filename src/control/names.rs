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

/// The longest name a mount may have: its log file `NAME.log.N` must fit in a file name.
const NAME_MAX: usize = 64;

/// Checks a name the user chose (`--name`): it becomes a file name (the mount's log), so
/// only a single plain component is taken, never one that could reach another directory.
pub fn check_name(name: &str) -> Result<(), MoorError> {
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    let first_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
    if first_ok && name.len() <= NAME_MAX && name.chars().all(plain) {
        return Ok(());
    }
    Err(MoorError::new(
        ErrorKind::Usage,
        format!(
            "bad --name '{}': use up to {NAME_MAX} letters, digits, '.', '-' and '_', starting with a letter, digit or '_'",
            name.escape_default()
        ),
    ))
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

    #[test]
    fn a_chosen_name_is_one_plain_file_name() {
        for good in ["box", "box-src", "my_mount.2", "_x", "9"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        let long = "a".repeat(NAME_MAX + 1);
        for bad in ["", ".", "..", "../../../x", "a/b", "/abs", ".hidden", "-opt", "a b", "tab\t", "ü", long.as_str()]
        {
            let e = check_name(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Usage, "{bad}");
            assert!(!e.message.contains('\n'), "{bad}: {}", e.message);
        }
    }
}
