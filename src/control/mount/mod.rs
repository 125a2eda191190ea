//! One mount's life: check the mountpoint, connect, find the remote directory, hand the
//! filesystem to the kernel; and take it down again.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::protocol::{
    AtStake, ConflictInfo, ConnectionInfo, ErrorKind, MoorError, MountInfo, MountRequest, OfflineCacheInfo, PendingInfo,
};
use super::status::{Monitor, MountStatus, Timestamp};
use crate::fs::{AdapterOptions, Fs, FsOptions, FuseAdapter, IdMap, KernelNotifier, KernelTimeouts, Owners};
use crate::offline_cache::journal::Journal;
use crate::offline_cache::{self, OfflineCache};
use crate::remote::journaled::{Conflict, Journaled};
use crate::remote::offline::Offline;
use crate::remote::sftp::{SftpLink, SftpRemote};
use crate::remote::{FileKind, Remote, RemoteError};

mod checks;
mod kernel;

pub use checks::*;
pub use kernel::*;

/// A mount being served.
pub struct LiveMount {
    pub name: String,
    pub mountpoint: PathBuf,
    pub remote: String,
    /// What the user asked for, to recognise the same mount asked for again.
    pub request: MountRequest,
    pub log: Option<PathBuf>,
    link: Arc<SftpLink>,
    fs: Arc<Fs<MountRemote>>,
    /// What the core talks to: the server, through the offline cache if there is one.
    offline: Arc<MountRemote>,
    monitor: Arc<Monitor>,
    /// Becomes true when the kernel session has ended, whoever unmounted it.
    ended: watch::Receiver<bool>,
    /// What the mount's end dropped, once it ended (see `finish`).
    finished: tokio::sync::OnceCell<Option<AtStake>>,
}

/// How long an unmount waits for a link that is down to come back, with written data not
/// yet on the server, before it refuses.
pub const DOWN_GRACE: Duration = Duration::from_secs(10);
/// How often an unmount waiting for written data says how it goes.
const DRAIN_TICK: Duration = Duration::from_millis(500);

/// Files and their bytes as the wire carries them; `None` when there are none.
fn stake_of(files: Vec<(String, u64)>) -> Option<AtStake> {
    if files.is_empty() {
        return None;
    }
    Some(AtStake { bytes: files.iter().map(|(_, b)| b).sum(), files: files.into_iter().map(|(p, _)| p).collect() })
}

impl LiveMount {
    pub fn info(&self) -> MountInfo {
        let (mut status, mut since) = self.monitor.current();
        if *self.ended.borrow() {
            status = MountStatus::Unmounted;
            since = Timestamp::now();
        }
        MountInfo {
            name: self.name.clone(),
            mountpoint: self.mountpoint.clone(),
            remote: self.remote.clone(),
            status,
            since,
            rtt_ms: self.link.last_rtt().map(|d| d.as_secs_f64() * 1000.0),
            reconnects: self.link.reconnects(),
            open_handles: self.fs.open_handles(),
            bytes_read: self.fs.traffic().0,
            bytes_written: self.fs.traffic().1,
            connections: self.link.connections().into_iter().map(ConnectionInfo::from).collect(),
            log: self.log.clone(),
            via: self.link.via(),
            lost: stake_of(self.fs.lost()),
            offline_cache: self.offline.inner().usage().map(|u| OfflineCacheInfo {
                bytes: u.bytes,
                limit: u.limit,
                files: u.files,
                hits: u.hits,
                misses: u.misses,
            }),
            pending: self.offline.pending().filter(|p| p.changes > 0).map(|p| PendingInfo {
                changes: p.changes,
                files: p.files,
                bytes: p.bytes,
            }),
            conflicts: self.offline.conflicts().iter().map(conflict_info).collect(),
        }
    }

    /// Empties the mount's offline cache; false when it has none.
    pub async fn clear_offline_cache(&self) -> bool {
        let offline = self.offline.clone();
        // Waits for the cache's writer: off the runtime.
        tokio::task::spawn_blocking(move || offline.inner().clear()).await.unwrap_or(false)
    }

    pub fn ended(&self) -> watch::Receiver<bool> {
        self.ended.clone()
    }

    pub fn link(&self) -> Arc<SftpLink> {
        self.link.clone()
    }

    pub fn monitor(&self) -> Arc<Monitor> {
        self.monitor.clone()
    }

    /// Whether `req` asks for exactly this mount again.
    pub fn same_as(&self, req: &MountRequest) -> bool {
        self.request.dest == req.dest && self.request.remote_path == req.remote_path
    }

    /// Written data not yet on the server.
    pub fn at_stake(&self) -> AtStake {
        stake_of(self.fs.at_stake()).unwrap_or(AtStake { bytes: 0, files: Vec::new() })
    }

    /// Waits until the mount's written data is on the server, telling `progress` how it
    /// goes: for as long as the link moves data, however slowly, and for at most
    /// `DOWN_GRACE` in all while it is down; then refuses, naming what is at stake.
    /// `stop` ends the wait early (the user gave up), also with a refusal.
    pub async fn settle(
        &self,
        stop: impl std::future::Future<Output = ()>,
        mut progress: impl FnMut(&AtStake, bool),
    ) -> Result<(), MoorError> {
        let mut stop = std::pin::pin!(stop);
        let mut down_for = Duration::ZERO;
        loop {
            let stake = self.at_stake();
            if stake.bytes == 0 {
                return Ok(());
            }
            let moving = self.fs.link_moving(self.request.call_timeout);
            progress(&stake, moving);
            if moving {
                down_for = Duration::ZERO;
            } else if down_for >= DOWN_GRACE {
                return Err(refusal(&self.mountpoint, &stake));
            } else {
                down_for += DRAIN_TICK;
            }
            tokio::select! {
                _ = tokio::time::sleep(DRAIN_TICK) => {}
                _ = &mut stop => return Err(MoorError::new(ErrorKind::Cancelled, "cancelled; still mounted")),
            }
        }
    }

    /// Ends the mount's filesystem work once its kernel session is gone: gives written
    /// data up to `limit` to reach the server, then stops its tasks. Says, in the logs,
    /// what never reached the server, and returns it. Only the first call does the work.
    pub async fn finish(&self, limit: Duration) -> Option<AtStake> {
        self.finished
            .get_or_init(|| async {
                let left = self.fs.shutdown(limit).await;
                if left == 0 {
                    return None;
                }
                let lost = AtStake { bytes: left, ..self.at_stake() };
                let line = format!(
                    "unmounted with {} bytes written that never reached the server, now lost: {}",
                    lost.bytes,
                    lost.files.join(", ")
                );
                tracing::error!(mountpoint = %self.mountpoint.display(), "{line}");
                if let Some(log) = &self.log {
                    crate::logging::append_line(log, &line);
                }
                Some(lost)
            })
            .await
            .clone()
    }
}

/// The refusal to unmount while written data cannot reach the server.
fn refusal(mountpoint: &Path, stake: &AtStake) -> MoorError {
    let mut names: Vec<&str> = stake.files.iter().take(3).map(String::as_str).collect();
    if stake.files.len() > 3 {
        names.push("...");
    }
    MoorError::new(
        ErrorKind::DataAtStake,
        format!(
            "{} bytes written to {} ({}) are not on the server yet and the link is down: unmount again once it is back, or with --force to drop them",
            stake.bytes,
            mountpoint.display(),
            names.join(", ")
        ),
    )
}

/// Mounts over `link`, leaving nothing behind if any step fails (the caller owns the
/// link and closes it if no other mount uses it).
pub async fn start(req: &MountRequest, name: String, link: Arc<SftpLink>) -> Result<LiveMount, MoorError> {
    let mountpoint = checked_mountpoint(&req.mountpoint).await?;
    let (fs, offline, adapter, root) = core_for(req, &link).await?;
    let remote_label = format!("{}@{}:{}", req.dest.user, req.dest.alias, root);
    let (cfg, direct) = session_config(req, &root)?;
    let (ended, notifier) = mount_session(&mountpoint, adapter, cfg, direct).await?;
    fs.revalidate_after_outages(Arc::new(KernelNotifier(notifier)));
    raise_readahead(&mountpoint);
    let monitor = Monitor::start(name.clone(), &link);
    let told = monitor.clone();
    offline.on_conflict(Box::new(move |c| told.conflict(conflict_info(c))));
    Ok(LiveMount {
        name,
        mountpoint,
        remote: remote_label,
        request: req.clone(),
        log: None,
        link,
        fs,
        offline,
        monitor,
        ended,
        finished: tokio::sync::OnceCell::new(),
    })
}

fn conflict_info(c: &Conflict) -> ConflictInfo {
    ConflictInfo {
        path: c.path.clone(),
        kept_as: c.kept_as.clone(),
        reason: c.reason.clone(),
        at: Timestamp(c.at * 1000),
    }
}

/// What a mount's core talks to: the server, through its offline cache and journal if
/// it has them.
pub type MountRemote = Journaled<Offline<SftpRemote>>;

/// The directory of the offline cache for `req`: one per destination and remote path as
/// the user gave it (the cache knows what it resolves to). `None` without a cache.
fn offline_cache_dir(req: &MountRequest) -> Option<PathBuf> {
    req.offline_cache?;
    let base = req.offline_cache_dir.as_ref()?;
    let root = if req.remote_path.is_empty() { "~" } else { &req.remote_path };
    Some(offline_cache::dir_for(base, &format!("{}@{}", req.dest.user, req.dest.alias), root))
}

/// Whether `req` asks for an offline cache that an earlier mount filled.
pub fn offline_cache_present(req: &MountRequest) -> bool {
    offline_cache_dir(req).is_some_and(|d| OfflineCache::exists(&d))
}

/// The offline cache for `req`, holding at most `limit` bytes.
fn open_cache(req: &MountRequest, limit: u64) -> Result<OfflineCache, MoorError> {
    let dir = offline_cache_dir(req).ok_or_else(|| {
        MoorError::new(ErrorKind::Usage, "no directory for the offline cache: give --offline-cache-dir")
    })?;
    OfflineCache::open(&dir, limit).map_err(|e| {
        MoorError::new(
            ErrorKind::Usage,
            format!(
                "cannot open the offline cache in {}: {e}; is another mount of the same path using it? \
                 Otherwise give another --offline-cache-dir",
                dir.display()
            ),
        )
    })
}

/// The journal of changes made while down for `req`, in a directory beside its offline
/// cache's (`NAME.journal`), with a quota of its own as large as the cache's.
fn open_journal(req: &MountRequest, quota: u64) -> Result<Journal, MoorError> {
    let cache = offline_cache_dir(req).ok_or_else(|| {
        MoorError::new(ErrorKind::Usage, "no directory for the offline cache: give --offline-cache-dir")
    })?;
    let mut name = cache.file_name().unwrap_or_default().to_os_string();
    name.push(".journal");
    let dir = cache.with_file_name(name);
    Journal::open(&dir, quota).map_err(|e| {
        MoorError::new(ErrorKind::Usage, format!("cannot open the offline journal in {}: {e}", dir.display()))
    })
}

/// This machine's name, as conflict copies are named after it.
fn this_host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let name = if ok {
        String::from_utf8_lossy(buf.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
    } else {
        String::new()
    };
    let name: String =
        name.split('.').next().unwrap_or_default().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    if name.is_empty() {
        "local".into()
    } else {
        name
    }
}

/// The filesystem core for `req` on `link`, and its kernel adapter; with the remote
/// root it serves, resolved.
async fn core_for(
    req: &MountRequest,
    link: &Arc<SftpLink>,
) -> Result<(Arc<Fs<MountRemote>>, Arc<MountRemote>, FuseAdapter<MountRemote>, String), MoorError> {
    let sftp = SftpRemote::new(link.clone()).following_symlinks(req.follow_symlinks);
    let cache = req.offline_cache.map(|limit| open_cache(req, limit)).transpose()?;
    let journal = req.offline_cache.map(|limit| open_journal(req, limit)).transpose()?;
    let offline = Offline::new(Arc::new(sftp), cache);
    let remote = Arc::new(Journaled::new(Arc::new(offline), journal, &this_host()));
    let root = resolve_root(&*remote, &req.remote_path, &req.dest.alias).await?;
    link.require_path(&root);
    let login = login_ids(&*remote).await;
    let owners = owners_for(req, login);
    let fs_opts = FsOptions {
        cache_timeout: req.cache_timeout,
        read_ahead: req.read_ahead,
        login_uid: login.map(|(uid, _)| uid),
        read_only: req.read_only,
        ..FsOptions::default()
    };
    let fs = Arc::new(Fs::new(remote.clone(), &root, fs_opts));
    // The kernel may trust what it was told as long as the mount's own cache does.
    let kernel = KernelTimeouts { attr: req.cache_timeout, entry: req.cache_timeout };
    let adapter = FuseAdapter::new(
        fs.clone(),
        tokio::runtime::Handle::current(),
        AdapterOptions { call_timeout: req.call_timeout, kernel, owners, umask: req.umask.unwrap_or(0) },
    );
    Ok((fs, remote, adapter, root))
}

/// The kernel session's options for `req` serving `root`, and what a root mount needs.
fn session_config(req: &MountRequest, root: &str) -> Result<(fuser::Config, DirectMount), MoorError> {
    let source = format!(
        "moor:{}#{}@{}:{}",
        std::process::id(),
        option_safe(&req.dest.user),
        option_safe(&req.dest.alias),
        option_safe(root)
    );
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        // The serving process is named in the source, so that a mount it leaves behind
        // when it dies can be told from one another live agent serves.
        fuser::MountOption::FSName(source.clone()),
        fuser::MountOption::Subtype("moor".into()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    cfg.mount_options.extend(kernel_options(req));
    if req.allow_other {
        may_share("--allow-other")?;
        cfg.acl = fuser::SessionACL::All;
    } else if req.allow_root {
        may_share("--allow-root")?;
        cfg.acl = fuser::SessionACL::RootAndOwner;
    }
    let direct = DirectMount {
        source,
        read_only: req.read_only,
        no_exec: req.no_exec,
        default_permissions: req.default_permissions,
        shared: req.allow_other || req.allow_root,
    };
    Ok((cfg, direct))
}

/// Mounts `adapter` on `mountpoint` (as root by a held descriptor, else through
/// fusermount3); what it returns turns true once the kernel session is gone.
async fn mount_session(
    mountpoint: &Path,
    adapter: FuseAdapter<MountRemote>,
    cfg: fuser::Config,
    direct: DirectMount,
) -> Result<(watch::Receiver<bool>, fuser::Notifier), MoorError> {
    let mp = mountpoint.to_path_buf();
    let mount = move || {
        if nix::unistd::geteuid().is_root() {
            mount_as_root(&mp, &direct, adapter, cfg)
        } else {
            let session = fuser::spawn_mount(adapter, &mp, &cfg);
            // The session's descriptor comes from fusermount3 without close-on-exec: a
            // program the agent starts later must not keep the mount alive after the
            // agent is gone.
            close_on_exec_where(|target| target == Path::new("/dev/fuse"));
            session
        }
    };
    let session = match tokio::task::spawn_blocking(mount).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(MoorError::new(ErrorKind::Mountpoint, format!("cannot mount on {}: {e}", mountpoint.display())))
        }
        Err(e) => return Err(MoorError::new(ErrorKind::Internal, format!("mount task failed: {e}"))),
    };
    let (tx, ended) = watch::channel(false);
    let notifier = session.notifier();
    std::thread::Builder::new()
        .name("moor-session".into())
        .spawn(move || {
            // Returns once the kernel session is gone (our unmount, or someone else's).
            let _ = session.join();
            let _ = tx.send(true);
        })
        .map_err(|e| MoorError::new(ErrorKind::Internal, format!("cannot start session thread: {e}")))?;
    Ok((ended, notifier))
}

/// Marks close-on-exec every descriptor of this process whose target `pick` takes.
fn close_on_exec_where(pick: impl Fn(&Path) -> bool) {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else { return };
    for entry in fds.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if std::fs::read_link(entry.path()).is_ok_and(|t| pick(&t)) {
            // SAFETY: F_SETFD on a descriptor number changes only its flags; one that was
            // closed meanwhile gets EBADF, which is ignored.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// The remote login user's `(uid, gid)`: the owner of the directory the login starts
/// in, as sshfs takes it.
async fn login_ids<R: Remote>(remote: &R) -> Option<(u32, u32)> {
    match remote.stat(".").await {
        Ok(home) => Some((home.uid, home.gid)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot learn the remote user's ids; owners show as the server's numbers");
            None
        }
    }
}

/// Who files show as owned by: with `--idmap user`, the remote login user shows as the
/// local ids.
fn owners_for(req: &MountRequest, login: Option<(u32, u32)>) -> Owners {
    match (req.idmap, login) {
        (IdMap::User, Some(remote)) => {
            let uid = req.uid.unwrap_or_else(|| nix::unistd::getuid().as_raw());
            let gid = req.gid.unwrap_or_else(|| nix::unistd::getgid().as_raw());
            Owners::user(remote, (uid, gid))
        }
        _ => Owners::none(),
    }
}

/// The absolute remote directory to mount, checked to exist and be a directory.
pub async fn resolve_root<R: Remote>(remote: &R, path: &str, host: &str) -> Result<String, MoorError> {
    let want = if path.is_empty() { "." } else { path };
    let missing = || {
        MoorError::new(
            ErrorKind::RemotePath,
            format!("remote path '{want}' does not exist on {host}: check the path after the colon"),
        )
    };
    let root = match remote.realpath(want).await {
        Ok(r) => r,
        Err(RemoteError::NotFound) => return Err(missing()),
        Err(e) => {
            return Err(MoorError::new(
                ErrorKind::RemotePath,
                format!("cannot resolve remote path '{want}' on {host}: {e}"),
            ))
        }
    };
    match remote.stat(&root).await {
        Ok(a) if a.kind() == FileKind::Dir => Ok(root),
        Ok(_) => {
            Err(MoorError::new(ErrorKind::RemotePath, format!("remote path '{root}' on {host} is not a directory")))
        }
        Err(RemoteError::NotFound) => Err(missing()),
        Err(e) => Err(MoorError::new(ErrorKind::RemotePath, format!("cannot use remote path '{root}' on {host}: {e}"))),
    }
}

/// Unmounts a live mount. Unless `lazy`, waits until its session has ended; whoever
/// watches `ended` then closes the link.
pub async fn stop(m: &LiveMount, lazy: bool) -> Result<(), MoorError> {
    kernel_unmount(&m.mountpoint, lazy).await?;
    if !lazy {
        let mut ended = m.ended();
        if tokio::time::timeout(Duration::from_secs(10), ended.wait_for(|e| *e)).await.is_err() {
            tracing::warn!(mountpoint = %m.mountpoint.display(), "session did not end within 10s after unmount");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_picked_become_close_on_exec() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held");
        std::fs::write(&path, b"x").unwrap();
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string; the descriptor is closed below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
        assert!(fd >= 0);
        // SAFETY: querying the flags of a descriptor this test owns.
        let flags = || unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags() & libc::FD_CLOEXEC, 0);
        close_on_exec_where(|t| t == path.as_path());
        assert_eq!(flags() & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        // SAFETY: closing the descriptor this test opened.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn option_safe_text_cannot_end_the_source() {
        assert_eq!(option_safe("/srv/a,ro"), "/srv/a%2Cro");
        assert_eq!(option_safe("a b\\c%d\n"), "a%20b%5Cc%25d%0A");
        assert_eq!(option_safe("/plain/path-ü"), "/plain/path-ü");
    }

    #[test]
    fn only_moor_mounts_of_this_user_are_moor_mounts() {
        let me = nix::unistd::getuid().as_raw();
        let m = |fstype: &str, source: &str, user: u32| KernelMount {
            path: PathBuf::from("/m"),
            fstype: fstype.into(),
            source: source.into(),
            fuse_user: Some(user),
        };
        let cases = [
            (m("fuse.moor", "moor:12#u@h:/p", me), true, "a fusermount3 mount"),
            (m("fuse", "moor:12#u@h:/p", me), true, "root's direct mount"),
            (m("fuse.sshfs", "moor:/srv", me), false, "sshfs of a host named moor"),
            (m("fuse", "moorhost:/srv", me), false, "another plain FUSE mount"),
            (m("fuse.moor", "moor:12#u@h:/p", me + 1), false, "another user's"),
        ];
        for (km, want, why) in cases {
            assert_eq!(km.is_moor_of_mine(), want, "{why}");
        }
    }

    #[test]
    fn an_automounter_on_the_mountpoint_is_mounted_over() {
        let m = |path: &str, fstype: &str| KernelMount {
            path: PathBuf::from(path),
            fstype: fstype.into(),
            source: "x".into(),
            fuse_user: None,
        };
        let cases = [
            (vec![], false, "nothing there"),
            (vec![m("/m", "autofs")], false, "systemd automount's trigger"),
            (vec![m("/m", "ext4")], true, "a disk"),
            (vec![m("/m", "autofs"), m("/m", "fuse.moor")], true, "already mounted over the trigger"),
            (vec![m("/m", "fuse.sshfs"), m("/m", "autofs")], false, "a trigger on top of a mount"),
            (vec![m("/other", "ext4")], false, "another directory"),
        ];
        for (mounts, want, why) in cases {
            assert_eq!(taken(&mounts, Path::new("/m")), want, "{why}");
        }
    }

    #[test]
    fn a_mountpoint_is_held_only_where_no_symlink_leads() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, t.path().join("link")).unwrap();
        std::fs::write(t.path().join("file"), "").unwrap();
        assert!(hold_mountpoint(&real).is_ok());
        let errno = |p: &Path| hold_mountpoint(p).unwrap_err().raw_os_error();
        // The last component a symlink: held as the link itself, which is no directory.
        assert_eq!(errno(&t.path().join("link")), Some(libc::ENOTDIR));
        // A symlink further up the path.
        std::fs::create_dir(real.join("sub")).unwrap();
        assert_eq!(errno(&t.path().join("link/sub")), Some(libc::ELOOP));
        assert_eq!(errno(&t.path().join("file")), Some(libc::ENOTDIR));
        assert_eq!(errno(&t.path().join("missing")), Some(libc::ENOENT));
    }

    /// A filesystem that answers nothing: only whether the kernel mount is made counts.
    struct Nothing;
    impl fuser::Filesystem for Nothing {}

    #[test]
    fn root_never_mounts_through_a_symlink_swapped_in() {
        if !nix::unistd::geteuid().is_root() {
            return; // Only root mounts this way.
        }
        let t = tempfile::tempdir().unwrap();
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        // The checked mountpoint, replaced by a symlink before the mount.
        let mountpoint = t.path().join("mnt");
        std::os::unix::fs::symlink(&elsewhere, &mountpoint).unwrap();
        let direct = DirectMount {
            source: "moor:test#symlink".into(),
            read_only: true,
            no_exec: true,
            default_permissions: false,
            shared: false,
        };
        let made = mount_as_root(&mountpoint, &direct, Nothing, fuser::Config::default());
        let mounted_elsewhere = is_mountpoint(&elsewhere);
        if mounted_elsewhere {
            let _ = nix::mount::umount2(&elsewhere, nix::mount::MntFlags::MNT_DETACH);
        }
        drop(made);
        assert!(!mounted_elsewhere, "root mounted where the symlink led");
        // The directory itself is mounted on, through the descriptor that holds it.
        let made = mount_as_root(&elsewhere, &direct, Nothing, fuser::Config::default());
        let mounted = is_mountpoint(&elsewhere);
        let _ = nix::mount::umount2(&elsewhere, nix::mount::MntFlags::MNT_DETACH);
        assert!(made.is_ok() && mounted, "root did not mount on a plain directory: {:?}", made.err());
    }

    #[test]
    fn sharing_needs_user_allow_other_unless_root() {
        for flag in ["--allow-other", "--allow-root"] {
            let e = sharing_allowed(flag, false, "#user_allow_other\n").unwrap_err();
            assert_eq!(e.kind, ErrorKind::Usage);
            assert!(e.message.starts_with(flag) && e.message.contains("`user_allow_other` in /etc/fuse.conf"), "{e}");
            assert!(sharing_allowed(flag, true, "").is_ok(), "root may");
            assert!(sharing_allowed(flag, false, "user_allow_other\n").is_ok());
        }
    }

    #[test]
    fn reads_user_allow_other_from_fuse_conf() {
        let cases = [
            ("user_allow_other\n", true),
            ("# mount_max = 1000\n  user_allow_other  # for moor\n", true),
            ("#user_allow_other\n", false),
            ("", false),
            ("user_allow_other_not\n", false),
        ];
        for (conf, want) in cases {
            assert_eq!(fuse_conf_allows_other(conf), want, "{conf:?}");
        }
    }
}
