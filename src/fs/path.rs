//! Remote path arithmetic. The fs core addresses the server by absolute path; these few
//! rules (joining, splitting, valid names) live here so that no operation open-codes them.

use crate::remote::name;

/// The longest name a directory entry may have.
const NAME_MAX: usize = 255;

/// Joins a remote directory path and a name.
pub(super) fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The directory holding `path` and the name within it; the root is its own parent.
pub(super) fn parent_and_name(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some(("", n)) => ("/", n),
        Some((d, n)) => (d, n),
        None => ("/", path),
    }
}

/// The directory holding `path`.
pub(super) fn parent(path: &str) -> &str {
    parent_and_name(path).0
}

/// Whether `from` is `path` itself or something below it, with what follows `from`.
pub(super) fn strip_subtree<'a>(path: &'a str, from: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(from.trim_end_matches('/'))?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// A name the kernel gave us, checked before it becomes part of a path. Its length is
/// that of the bytes it stands for: a name that is not UTF-8 is held escaped, longer.
pub(super) fn check_name(name: &str) -> Result<(), BadName> {
    if name::byte_len(name) > NAME_MAX {
        return Err(BadName::TooLong);
    }
    if name.is_empty() || name.contains('/') {
        return Err(BadName::NotAName);
    }
    Ok(())
}

/// Why a name cannot be part of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BadName {
    /// Over `NAME_MAX` bytes.
    TooLong,
    /// Empty, or holding a slash.
    NotAName,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_paths() {
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/x", "a"), "/x/a");
    }

    #[test]
    fn parents_and_names() {
        assert_eq!(parent_and_name("/a"), ("/", "a"));
        assert_eq!(parent_and_name("/x/y/a"), ("/x/y", "a"));
        assert_eq!(parent("/x/a"), "/x");
        assert_eq!(parent("/a"), "/");
    }

    #[test]
    fn subtrees() {
        assert_eq!(strip_subtree("/d", "/d"), Some(""));
        assert_eq!(strip_subtree("/d/x", "/d"), Some("/x"));
        assert_eq!(strip_subtree("/dx", "/d"), None);
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(check_name("a"), Ok(()));
        assert_eq!(check_name(""), Err(BadName::NotAName));
        assert_eq!(check_name("a/b"), Err(BadName::NotAName));
        assert_eq!(check_name(&"x".repeat(256)), Err(BadName::TooLong));
        // 200 bytes of EUC-JP, escaped to 800: a name the server may well have.
        let euc_jp: Vec<u8> = b"\xa4\xa2".iter().copied().cycle().take(200).collect();
        assert_eq!(check_name(&name::from_bytes(&euc_jp)), Ok(()));
        let too_long: Vec<u8> = b"\xa4\xa2".iter().copied().cycle().take(256).collect();
        assert_eq!(check_name(&name::from_bytes(&too_long)), Err(BadName::TooLong));
    }
}
