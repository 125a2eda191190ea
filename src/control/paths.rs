//! Where the agent keeps its socket and where state and logs go, private to the user.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::protocol::{ErrorKind, MoorError};

fn private_dir(path: &Path) -> Result<PathBuf, MoorError> {
    let fail = |e: std::io::Error| MoorError::new(ErrorKind::Agent, format!("cannot create {}: {e}", path.display()));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(fail)?;
    // An existing directory may have been made with looser permissions.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
    Ok(path.to_path_buf())
}

/// `$XDG_RUNTIME_DIR/moor`, else `/run/user/$UID/moor`, else `/tmp/moor-$UID`.
pub fn runtime_dir() -> Result<PathBuf, MoorError> {
    let uid = nix::unistd::getuid().as_raw();
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from(format!("/run/user/{uid}"))).filter(|p| p.is_dir()));
    let dir = match base {
        Some(b) => b.join("moor"),
        None => PathBuf::from(format!("/tmp/moor-{uid}")),
    };
    private_dir(&dir)
}

/// `$XDG_STATE_HOME/moor`, else `~/.local/state/moor`.
pub fn state_dir() -> Result<PathBuf, MoorError> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .ok_or_else(|| MoorError::new(ErrorKind::Agent, "cannot tell where to keep state: set HOME"))?;
    private_dir(&base.join("moor"))
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
