//! The kernel's side of a mount: what /proc/self/mountinfo says, mounting (as root through
//! a held descriptor of the mountpoint), the read-ahead raise, and unmounting.

use super::*;

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone)]
pub struct KernelMount {
    pub path: PathBuf,
    pub fstype: String,
    pub source: String,
    /// The `user_id=` a FUSE mount was made for.
    pub fuse_user: Option<u32>,
}

impl KernelMount {
    /// Made by moor (by any agent) for the current user: type `fuse.moor`, or plain
    /// `fuse` with moor's source (root mounts directly, without a subtype in the type).
    /// Another FUSE filesystem whose source happens to start with "moor" is not.
    pub fn is_moor_of_mine(&self) -> bool {
        let moor = match self.fstype.as_str() {
            "fuse.moor" => self.source.starts_with("moor"),
            "fuse" => self.server_pid().is_some(),
            _ => false,
        };
        moor && self.fuse_user == Some(nix::unistd::getuid().as_raw())
    }

    /// The process serving the mount, as recorded in its source (`moor:PID#...`).
    pub fn server_pid(&self) -> Option<u32> {
        self.source.strip_prefix("moor:")?.split('#').next()?.parse().ok()
    }

    /// A moor mount of this user whose serving process is gone: a dead mount to clean.
    /// One served by another live agent (another runtime dir) is not ours to touch.
    pub fn is_orphan(&self) -> bool {
        self.is_moor_of_mine() && self.server_pid().is_none_or(|pid| !serves_mounts(pid))
    }
}

/// Text safe inside a mount option: the options are one comma-separated string, so a
/// comma in a path would end the source and start an option of its own (`a,ro` would
/// mount read-only). Commas, backslashes, `%`, whitespace and control characters are
/// written as `%XX`.
pub fn option_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == ',' || c == '\\' || c == '%' || c.is_whitespace() || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `pid` is a moor process that serves mounts (an agent, or `mount --foreground`).
pub fn serves_mounts(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmd| cmd.split(|b| *b == 0).skip(1).any(|a| a == b"agent" || a == b"--foreground"))
        .unwrap_or(false)
}

/// Mounts as the kernel lists them, unescaped.
pub fn kernel_mounts() -> Vec<KernelMount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mp = pre.split(' ').nth(4)?;
            let mut post = post.split(' ');
            let fstype = post.next()?.to_string();
            let source = unescape(post.next().unwrap_or(""));
            let fuse_user = post
                .next()
                .unwrap_or("")
                .split(',')
                .find_map(|o| o.strip_prefix("user_id="))
                .and_then(|u| u.parse().ok());
            Some(KernelMount { path: PathBuf::from(unescape(mp)), fstype, source, fuse_user })
        })
        .collect()
}

pub(super) fn unescape(s: &str) -> String {
    // The kernel writes space, tab, newline and backslash as three octal digits.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn is_mountpoint(path: &Path) -> bool {
    kernel_mounts().iter().any(|m| m.path == path)
}

/// Whether a mount on `path` would go over another mount that is not one to refuse: an
/// automounter's trigger (systemd automount, autofs) on top, which exists to have the
/// real mount made over it.
pub(super) fn taken(mounts: &[KernelMount], path: &Path) -> bool {
    mounts.iter().rev().find(|m| m.path == path).is_some_and(|top| top.fstype != "autofs")
}

/// A FUSE mount at `path` made by moor for this user (by this or an earlier agent).
pub fn is_moor_mount(path: &Path) -> bool {
    kernel_mounts().iter().any(|m| m.path == path && m.is_moor_of_mine())
}

/// A moor mount at `path` whose serving process is gone.
pub fn is_orphan_mount(path: &Path) -> bool {
    kernel_mounts().iter().any(|m| m.path == path && m.is_orphan())
}

/// The kernel asks a FUSE filesystem for at most 128 KiB ahead of a reader; moor reads
/// much further ahead itself, so larger kernel requests mean fewer round trips through
/// the kernel. Only root may change it; others keep the default.
const KERNEL_READAHEAD_KB: u32 = 1024;

pub(super) fn raise_readahead(mountpoint: &Path) {
    // The device number comes from the mount table: a stat of the mountpoint would be a
    // request to this very process.
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // The last mount listed there is this one: it may sit on an automounter's trigger.
    let Some(dev) = text.lines().rev().find_map(|l| {
        let mut f = l.split(' ');
        let dev = f.nth(2)?;
        let mp = f.nth(1)?;
        (Path::new(&unescape(mp)) == mountpoint).then(|| dev.to_string())
    }) else {
        return;
    };
    let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, KERNEL_READAHEAD_KB.to_string()) {
        tracing::debug!(%knob, %e, "kernel read-ahead left as it is");
    }
}

/// The kernel's own options the request asks for. Read-only is refused by the kernel
/// too, so that programs see a read-only filesystem (`mount` lists it `ro`).
pub(super) fn kernel_options(req: &MountRequest) -> Vec<fuser::MountOption> {
    let wanted = [
        (req.read_only, fuser::MountOption::RO),
        (req.default_permissions, fuser::MountOption::DefaultPermissions),
        (req.no_exec, fuser::MountOption::NoExec),
    ];
    wanted.into_iter().filter(|(on, _)| *on).map(|(_, o)| o).collect()
}

/// What root's own mount(2) of a moor filesystem needs to know.
pub(super) struct DirectMount {
    pub(super) source: String,
    pub(super) read_only: bool,
    pub(super) no_exec: bool,
    pub(super) default_permissions: bool,
    /// Other users may send requests (`allow_other`; `allow_root` is narrowed to root by
    /// the session's ACL).
    pub(super) shared: bool,
}

/// The mountpoint, held by a descriptor that names it without opening it: root checks
/// and mounts on what this refers to, so the path cannot be swapped for a symlink to
/// somewhere else in between. `mountpoint` is canonical, so a symlink anywhere in it now
/// was put there since it was checked, and is refused (`ELOOP`, or a link that is not a
/// directory). `O_PATH` without `O_DIRECTORY`: either an open or `O_DIRECTORY` would set
/// off an automounter's trigger sitting there, as a stat does not.
pub(super) fn hold_mountpoint(mountpoint: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let how = OpenHow::new().flags(flags).resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
    let fd = match nix::fcntl::openat2(nix::fcntl::AT_FDCWD, mountpoint, how) {
        // Before Linux 5.6: the last component at least is never followed.
        Err(nix::errno::Errno::ENOSYS) => nix::fcntl::open(mountpoint, flags, nix::sys::stat::Mode::empty())?,
        other => other?,
    };
    let st = nix::sys::stat::fstat(&fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(std::io::Error::from_raw_os_error(libc::ENOTDIR));
    }
    Ok(fd)
}

/// Root mounts as libfuse does, not as fuser does: fuser opens the mountpoint first,
/// which sets off an automounter's trigger sitting there (systemd's
/// `x-systemd.automount`, autofs) and then waits for the very mount being made. The
/// mountpoint is held by an `O_PATH` descriptor, which does not set it off (see
/// `hold_mountpoint`), and mount(2) goes over the trigger through that descriptor.
pub(super) fn mount_as_root<FS: fuser::Filesystem + Send + 'static>(
    mountpoint: &Path,
    m: &DirectMount,
    fs: FS,
    cfg: fuser::Config,
) -> std::io::Result<fuser::BackgroundSession> {
    use nix::mount::MsFlags;
    let dev = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse")?;
    let held = hold_mountpoint(mountpoint)?;
    let st = nix::sys::stat::fstat(&held)?;
    let target = PathBuf::from(format!("/proc/self/fd/{}", held.as_raw_fd()));
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={}",
        dev.as_raw_fd(),
        st.st_mode & nix::sys::stat::SFlag::S_IFMT.bits(),
        nix::unistd::getuid(),
        nix::unistd::getgid()
    );
    if m.shared {
        data.push_str(",allow_other");
    }
    if m.default_permissions {
        data.push_str(",default_permissions");
    }
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if m.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    if m.no_exec {
        flags |= MsFlags::MS_NOEXEC;
    }
    nix::mount::mount(Some(m.source.as_str()), &target, Some("fuse.moor"), flags, Some(data.as_str()))?;
    let acl = cfg.acl;
    match fuser::Session::from_fd(fs, dev.into(), acl, cfg).and_then(fuser::Session::spawn) {
        Ok(session) => Ok(session),
        Err(e) => {
            let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
            Err(e)
        }
    }
}

/// Asks the kernel to detach the mount at `path`. Busy mounts are refused unless `lazy`.
pub async fn kernel_unmount(path: &Path, lazy: bool) -> Result<(), MoorError> {
    let busy = || {
        MoorError::new(
            ErrorKind::Mountpoint,
            format!(
                "{} is busy: a process has a file open or its working directory there (see `fuser -vm {}`); \
                 close it, or use `moor unmount --lazy` to detach now and finish when it is released",
                path.display(),
                path.display()
            ),
        )
    };
    if nix::unistd::geteuid().is_root() {
        let flags = if lazy { nix::mount::MntFlags::MNT_DETACH } else { nix::mount::MntFlags::empty() };
        return match nix::mount::umount2(path, flags) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EBUSY) => Err(busy()),
            Err(nix::errno::Errno::EINVAL) => Ok(()), // already gone
            Err(e) => Err(MoorError::new(ErrorKind::Mountpoint, format!("cannot unmount {}: {e}", path.display()))),
        };
    }
    let mut cmd = tokio::process::Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    cmd.arg("--").arg(path).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .map_err(|_| {
            MoorError::new(ErrorKind::Mountpoint, format!("fusermount3 -u {} did not finish", path.display()))
        })?
        .map_err(|e| MoorError::new(ErrorKind::Mountpoint, format!("cannot run fusermount3 (install fuse3): {e}")))?;
    if out.status.success() || !is_mountpoint(path) {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("busy") {
        return Err(busy());
    }
    Err(MoorError::new(ErrorKind::Mountpoint, format!("cannot unmount {}: {}", path.display(), err.trim())))
}
