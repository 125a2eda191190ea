//! The registry of mounts: a private JSON file in the state dir that records each
//! mount's name, remote, options and owner, so that mounts left behind by an agent that
//! died can be recognised, cleaned up and reported.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::mount;
use super::paths;
use super::protocol::{ErrorKind, MoorError, MountRequest};
use crate::timestamp::Timestamp;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub mountpoint: PathBuf,
    pub remote: String,
    pub request: MountRequest,
    pub uid: u32,
    pub agent_pid: u32,
    pub log: PathBuf,
    pub mounted_at: Timestamp,
}

/// Something that happened to a mount while nobody was looking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub at: Timestamp,
    pub name: String,
    pub mountpoint: PathBuf,
    pub what: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Registry {
    mounts: Vec<Record>,
    notices: Vec<Notice>,
}

fn err(m: String) -> MoorError {
    MoorError::new(ErrorKind::Agent, m)
}

/// Reads, changes and writes the registry under an exclusive lock.
fn update<T>(f: impl FnOnce(&mut Registry) -> T) -> Result<T, MoorError> {
    update_in(&paths::state_dir()?, f)
}

/// Opens files of the state dir: never through a symlink, which moor never makes there
/// (one would have root's agent read or write where someone else chose).
fn own_file() -> fs::OpenOptions {
    let mut o = fs::OpenOptions::new();
    o.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    o
}

/// The whole of `path`, read without following a symlink.
fn read_own(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    own_file().read(true).open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn update_in<T>(dir: &Path, f: impl FnOnce(&mut Registry) -> T) -> Result<T, MoorError> {
    let lock_path = dir.join("mounts.lock");
    let lock_file = own_file()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| err(format!("cannot open {}: {e}", lock_path.display())))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| err(format!("cannot lock {}: {e}", lock_path.display())))?;
    let path = dir.join("mounts.json");
    let mut reg: Registry = match read_own(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), %e, "registry unreadable; starting a new one");
            Registry::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Registry::default(),
        Err(e) => return Err(err(format!("cannot read {}: {e}", path.display()))),
    };
    let out = f(&mut reg);
    write_private(&path, &serde_json::to_vec_pretty(&reg).unwrap_or_default())?;
    Ok(out)
}

/// Replaces `path` atomically with a file only the user can read.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), MoorError> {
    let tmp = path.with_extension("tmp");
    let mut f = own_file()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| err(format!("cannot write {}: {e}", tmp.display())))?;
    f.set_permissions(fs::Permissions::from_mode(0o600)).map_err(|e| err(format!("{}: {e}", tmp.display())))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| err(format!("cannot write {}: {e}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(|e| err(format!("cannot replace {}: {e}", path.display())))
}

pub fn record(entry: Record) -> Result<(), MoorError> {
    update(|r| {
        r.mounts.retain(|m| m.mountpoint != entry.mountpoint);
        r.mounts.push(entry);
    })
}

pub fn remove(mountpoint: &Path) -> Result<(), MoorError> {
    update(|r| r.mounts.retain(|m| m.mountpoint != mountpoint))
}

/// Notices not shown yet; showing them forgets them.
pub fn take_notices() -> Result<Vec<Notice>, MoorError> {
    update(|r| std::mem::take(&mut r.notices))
}

/// Whether `pid` is a running agent, or `None` if that cannot be told. The binary may
/// have any name (a package may rename it), so the test is the `agent` argument: a pid
/// reused by some other program is very unlikely to carry it.
fn agent_alive(pid: u32) -> Option<bool> {
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmd) => Some(cmd.split(|b| *b == 0).skip(1).any(|a| a == b"agent")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(false),
        Err(_) => None,
    }
}

/// Finds mounts whose agent is gone, detaches what they left in the kernel, and records
/// what happened. Returns the new notices. Only a definite signal removes an entry: a
/// check that cannot be made just warns.
pub async fn clean_stale() -> Result<Vec<Notice>, MoorError> {
    let uid = nix::unistd::getuid().as_raw();
    let entries = update(|r| r.mounts.clone())?;
    let mut gone: Vec<(Record, String)> = Vec::new();
    for e in entries.into_iter().filter(|e| e.uid == uid) {
        match agent_alive(e.agent_pid) {
            Some(true) => {}
            Some(false) => {
                let what = if mount::is_orphan_mount(&e.mountpoint) {
                    match mount::kernel_unmount(&e.mountpoint, true).await {
                        Ok(()) => format!(
                            "the agent serving it (pid {}) died; its dead mount was detached. Mount it again with `moor mount`",
                            e.agent_pid
                        ),
                        Err(err) => {
                            tracing::warn!(mountpoint = %e.mountpoint.display(), %err, "cannot detach a dead mount");
                            continue;
                        }
                    }
                } else {
                    format!("the agent serving it (pid {}) died; nothing was left mounted", e.agent_pid)
                };
                gone.push((e, what));
            }
            None => tracing::warn!(pid = e.agent_pid, "cannot tell whether the agent is alive; leaving its entry"),
        }
    }
    if gone.is_empty() {
        return Ok(Vec::new());
    }
    update(|r| {
        let mut new = Vec::new();
        for (e, what) in gone {
            r.mounts.retain(|m| !(m.mountpoint == e.mountpoint && m.agent_pid == e.agent_pid));
            let n = Notice { at: Timestamp::now(), name: e.name, mountpoint: e.mountpoint, what };
            r.notices.push(n.clone());
            new.push(n);
        }
        new
    })
}

pub fn log_dir() -> Result<PathBuf, MoorError> {
    paths::private_subdir(&paths::state_dir()?, "logs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_files_are_never_opened_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("chosen-by-someone-else");
        std::fs::write(&target, "theirs").unwrap();
        let notices = |d: &Path| update_in(d, |r| r.notices.len());
        // The lock file.
        std::os::unix::fs::symlink(&target, dir.path().join("mounts.lock")).unwrap();
        assert!(notices(dir.path()).is_err());
        std::fs::remove_file(dir.path().join("mounts.lock")).unwrap();
        // The registry itself.
        std::os::unix::fs::symlink(&target, dir.path().join("mounts.json")).unwrap();
        assert!(notices(dir.path()).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "theirs");
        std::fs::remove_file(dir.path().join("mounts.json")).unwrap();
        // The file it is written through first.
        std::os::unix::fs::symlink(&target, dir.path().join("mounts.tmp")).unwrap();
        assert!(notices(dir.path()).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "theirs");
        std::fs::remove_file(dir.path().join("mounts.tmp")).unwrap();
        assert_eq!(notices(dir.path()).unwrap(), 0);
    }
}
