//! Where the agent keeps its socket and where state and logs go, private to the user.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::protocol::{ErrorKind, MoorError};

/// Makes `path` a directory only the user can enter, or checks that it is one. On a
/// shared machine another user may have made the path first (in `/tmp`, anyone can):
/// a symlink, or a directory not the user's, is refused, never followed or adopted.
/// `shared_parent`: the parent is world-writable (the `/tmp` fallback), so the directory
/// must also already be exactly 0700; under the user's own directories a looser mode
/// is tightened instead.
fn private_dir(path: &Path, shared_parent: bool) -> Result<PathBuf, MoorError> {
    let fail = |e: std::io::Error| MoorError::new(ErrorKind::Agent, format!("cannot create {}: {e}", path.display()));
    if !shared_parent {
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(fail)?;
        }
    }
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail(e)),
    }
    let meta = std::fs::symlink_metadata(path).map_err(fail)?;
    let refuse = |why: &str| {
        MoorError::new(
            ErrorKind::Agent,
            format!("{} {why}: remove it (or set XDG_RUNTIME_DIR) and try again", path.display()),
        )
    };
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(refuse("is not a directory of its own (a symlink or a file)"));
    }
    if meta.uid() != nix::unistd::getuid().as_raw() {
        return Err(refuse("belongs to another user"));
    }
    if meta.mode() & 0o777 != 0o700 {
        if shared_parent {
            return Err(refuse("is open to other users (its mode is not 0700)"));
        }
        // An existing directory may have been made with looser permissions.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
    }
    Ok(path.to_path_buf())
}

/// Whether `dir` is a directory of the user's that nobody else may write in: only then
/// may what moor keeps there be trusted (another user could swap its contents).
fn is_users_own(dir: &Path, uid: u32) -> bool {
    std::fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o022 == 0)
}

/// Makes `dir` (and what is missing above it) when it does not exist yet (a fresh
/// account's `~/.local/state`), but only inside a directory of the user's own: made in
/// someone else's, it would be theirs to swap.
fn make_if_missing(dir: &Path, uid: u32) {
    if dir.exists() {
        return;
    }
    if dir.ancestors().skip(1).find(|a| a.exists()).is_some_and(|a| is_users_own(a, uid)) {
        let _ = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir);
    }
}

/// The base directory the environment variable `var` names (`value`), checked to be the
/// user's own. One inherited from another user (root through `su` without `-` keeps the
/// user's `XDG_RUNTIME_DIR`) is refused rather than written in.
fn base_from_env(var: &str, value: Option<std::ffi::OsString>, uid: u32) -> Result<Option<PathBuf>, MoorError> {
    let Some(dir) = value.filter(|s| !s.is_empty()).map(PathBuf::from) else {
        return Ok(None);
    };
    make_if_missing(&dir, uid);
    if !is_users_own(&dir, uid) {
        return Err(MoorError::new(
            ErrorKind::Agent,
            format!(
                "{var}={} is not a directory of yours that only you can write in: unset {var} \
                 (after `su`, use `su -`), or fix its owner and mode (`chmod go-w`)",
                dir.display()
            ),
        ));
    }
    Ok(Some(dir))
}

/// `$XDG_RUNTIME_DIR/moor`, else `/run/user/$UID/moor`, else `/tmp/moor-$UID`.
pub fn runtime_dir() -> Result<PathBuf, MoorError> {
    let uid = nix::unistd::getuid().as_raw();
    let base = base_from_env("XDG_RUNTIME_DIR", std::env::var_os("XDG_RUNTIME_DIR"), uid)?
        .or_else(|| Some(PathBuf::from(format!("/run/user/{uid}"))).filter(|p| is_users_own(p, uid)));
    match base {
        Some(b) => private_dir(&b.join("moor"), false),
        None => private_dir(&PathBuf::from(format!("/tmp/moor-{uid}")), true),
    }
}

/// `$XDG_STATE_HOME/moor`, else `~/.local/state/moor`.
pub fn state_dir() -> Result<PathBuf, MoorError> {
    let uid = nix::unistd::getuid().as_raw();
    let base = base_from_env("XDG_STATE_HOME", std::env::var_os("XDG_STATE_HOME"), uid)?
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .ok_or_else(|| MoorError::new(ErrorKind::Agent, "cannot tell where to keep state: set HOME"))?;
    private_dir(&base.join("moor"), false)
}

/// `$XDG_CACHE_HOME/moor`, else `~/.cache/moor`: where offline caches live by default.
pub fn cache_dir() -> Result<PathBuf, MoorError> {
    let uid = nix::unistd::getuid().as_raw();
    let base = base_from_env("XDG_CACHE_HOME", std::env::var_os("XDG_CACHE_HOME"), uid)?
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or_else(|| {
            MoorError::new(
                ErrorKind::Usage,
                "cannot tell where to keep the offline cache: set HOME or give --offline-cache-dir",
            )
        })?;
    Ok(base.join("moor"))
}

/// `NAME` under `dir` (a private directory of moor's), made a private directory too.
pub fn private_subdir(dir: &Path, name: &str) -> Result<PathBuf, MoorError> {
    private_dir(&dir.join(name), false)
}

pub fn socket_path() -> Result<PathBuf, MoorError> {
    Ok(runtime_dir()?.join("agent.sock"))
}

pub fn lock_path() -> Result<PathBuf, MoorError> {
    Ok(runtime_dir()?.join("agent.lock"))
}

pub fn agent_log() -> Result<PathBuf, MoorError> {
    Ok(state_dir()?.join("agent.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_directory_is_made_0700() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("moor-test");
        private_dir(&d, true).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        // Made already, and still right: fine.
        private_dir(&d, true).unwrap();
    }

    #[test]
    fn a_base_directory_must_be_the_users_own() {
        let uid = nix::unistd::getuid().as_raw();
        let t = tempfile::tempdir().unwrap();
        let mine = t.path().join("mine");
        std::fs::DirBuilder::new().mode(0o700).create(&mine).unwrap();
        assert!(is_users_own(&mine, uid));
        for mode in [0o770, 0o757, 0o777, 0o1777] {
            std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(!is_users_own(&mine, uid), "mode {mode:o}");
        }
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(is_users_own(&mine, uid), "readable by others is fine");
        assert!(!is_users_own(&t.path().join("missing"), uid));
        // Another user's (as root's XDG_RUNTIME_DIR after `su` without `-`).
        assert!(!is_users_own(&mine, uid + 1));
        if nix::unistd::getuid().is_root() {
            nix::unistd::chown(&mine, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            assert!(!is_users_own(&mine, uid));
        }
    }

    #[test]
    fn a_missing_base_is_made_only_inside_the_users_own() {
        let uid = nix::unistd::getuid().as_raw();
        let t = tempfile::tempdir().unwrap();
        let fresh = t.path().join("home/.local/state");
        let value = Some(fresh.clone().into_os_string());
        assert_eq!(base_from_env("XDG_STATE_HOME", value.clone(), uid).unwrap(), Some(fresh.clone()));
        assert!(fresh.is_dir());
        if nix::unistd::getuid().is_root() {
            let theirs = t.path().join("theirs");
            std::fs::DirBuilder::new().mode(0o755).create(&theirs).unwrap();
            nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let inside = theirs.join("state");
            assert!(base_from_env("XDG_STATE_HOME", Some(inside.clone().into_os_string()), uid).is_err());
            assert!(!inside.exists(), "made a directory in another user's");
        }
    }

    #[test]
    fn an_inherited_runtime_dir_is_refused_with_what_to_do() {
        let t = tempfile::tempdir().unwrap();
        let theirs = t.path().join("theirs");
        std::fs::DirBuilder::new().mode(0o700).create(&theirs).unwrap();
        let uid = nix::unistd::getuid().as_raw();
        let value = Some(theirs.clone().into_os_string());
        assert_eq!(base_from_env("XDG_RUNTIME_DIR", value.clone(), uid).unwrap(), Some(theirs.clone()));
        let err = base_from_env("XDG_RUNTIME_DIR", value, uid + 1).unwrap_err();
        assert!(err.message.contains("XDG_RUNTIME_DIR=") && err.message.contains("su -"), "{}", err.message);
        assert!(!err.message.contains('\n'));
        assert_eq!(base_from_env("XDG_RUNTIME_DIR", None, uid).unwrap(), None);
        assert_eq!(base_from_env("XDG_RUNTIME_DIR", Some("".into()), uid).unwrap(), None);
    }

    #[test]
    fn what_another_user_placed_there_is_refused() {
        let t = tempfile::tempdir().unwrap();
        // A symlink to somewhere else, placed first.
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = t.path().join("moor-link");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let err = private_dir(&link, false).unwrap_err();
        assert!(err.message.contains("symlink"), "{}", err.message);
        assert_eq!(std::fs::metadata(&elsewhere).unwrap().mode() & 0o777, 0o755, "the symlink's target was changed");
        // A directory open to others, in a shared place.
        let open = t.path().join("moor-open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = private_dir(&open, true).unwrap_err();
        assert!(err.message.contains("0700"), "{}", err.message);
        // A directory of another user (the tests run as root, which can make one).
        if nix::unistd::getuid().is_root() {
            let theirs = t.path().join("moor-theirs");
            std::fs::DirBuilder::new().mode(0o700).create(&theirs).unwrap();
            nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let err = private_dir(&theirs, true).unwrap_err();
            assert!(err.message.contains("another user"), "{}", err.message);
        }
    }
}
