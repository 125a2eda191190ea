//! Checks before mounting: the mountpoint is a free directory, and sharing with other
//! users is allowed by /etc/fuse.conf.

use super::*;

/// The absolute form of a mountpoint, checked to be an empty-enough directory that is not
/// mounted on already.
pub fn check_mountpoint(path: &Path) -> Result<PathBuf, MoorError> {
    let bad = |m: String| MoorError::new(ErrorKind::Mountpoint, m);
    let abs = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(bad(format!(
                "mountpoint {} is a dead mount (transport endpoint is not connected): run `moor unmount {}` first",
                path.display(),
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad(format!(
                "mountpoint {} does not exist: create it with `mkdir -p {}`",
                path.display(),
                path.display()
            )))
        }
        Err(e) => return Err(bad(format!("cannot use mountpoint {}: {e}", path.display()))),
    };
    // Without setting off an automounter sitting there (statx would, where stat does
    // not): the mount made over it is what it would wait for.
    let meta = nix::sys::stat::fstatat(nix::fcntl::AT_FDCWD, &abs, nix::fcntl::AtFlags::AT_NO_AUTOMOUNT)
        .map_err(|e| bad(format!("cannot use mountpoint {}: {e}", abs.display())))?;
    if meta.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(bad(format!("mountpoint {} is not a directory", abs.display())));
    }
    if taken(&kernel_mounts(), &abs) {
        let what = if is_moor_mount(&abs) { "a moor mount" } else { "a mount" };
        return Err(bad(format!(
            "{} is already {what}: unmount it first (`moor unmount {}`), or pick another directory",
            abs.display(),
            abs.display()
        )));
    }
    Ok(abs)
}

/// `check_mountpoint` off the runtime's threads: a path through a hung filesystem must
/// stall only this mount, not every mount the agent serves.
pub async fn checked_mountpoint(path: &Path) -> Result<PathBuf, MoorError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || check_mountpoint(&path))
        .await
        .unwrap_or_else(|e| Err(MoorError::new(ErrorKind::Internal, format!("mountpoint check failed: {e}"))))
}

/// Sharing a mount with other users (`allow_other`, `allow_root`) is the kernel's to
/// grant: root may, others only when /etc/fuse.conf says `user_allow_other`. Refused here
/// with what to do, not by fusermount3 later.
pub(super) fn may_share(flag: &str) -> Result<(), MoorError> {
    let conf = std::fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    sharing_allowed(flag, nix::unistd::geteuid().is_root(), &conf)
}

pub(super) fn sharing_allowed(flag: &str, root: bool, fuse_conf: &str) -> Result<(), MoorError> {
    if root || fuse_conf_allows_other(fuse_conf) {
        return Ok(());
    }
    Err(MoorError::new(
        ErrorKind::Usage,
        format!("{flag} needs `user_allow_other` in /etc/fuse.conf: add that line (as root), or mount without {flag}"),
    ))
}

/// Whether fuse.conf's text has an uncommented `user_allow_other` line.
pub fn fuse_conf_allows_other(conf: &str) -> bool {
    conf.lines().any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other")
}
