//! Between the core's values and the kernel's: errno, names, times, file types and
//! attributes, and the replies that carry them.

use super::*;

pub(super) fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.0)
}

/// A name from the kernel, as the core holds it (bytes that are not UTF-8 kept, see
/// `remote::name`).
pub(super) fn name_str(name: &OsStr) -> Result<String, fuser::Errno> {
    Ok(name::from_bytes(name.as_bytes()))
}

/// A name for the kernel: the bytes it stands for.
pub(super) fn name_os(name: &str) -> std::ffi::OsString {
    std::ffi::OsString::from_vec(name::to_bytes(name))
}

pub(super) fn time(secs: u32) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::from(secs))
}

pub(super) fn file_type(a: &Attr) -> FileType {
    match a.kind() {
        FileKind::Dir => FileType::Directory,
        FileKind::File => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Other => match a.mode & 0o170000 {
            0o010000 => FileType::NamedPipe,
            0o020000 => FileType::CharDevice,
            0o060000 => FileType::BlockDevice,
            0o140000 => FileType::Socket,
            _ => FileType::RegularFile,
        },
    }
}

pub(super) fn kind_type(k: FileKind) -> FileType {
    match k {
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        _ => FileType::RegularFile,
    }
}

pub(super) fn file_attr(ino: u64, a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.mtime),
        crtime: time(a.mtime),
        kind: file_type(a),
        perm: (a.mode & 0o7777) as u16,
        nlink: if a.kind() == FileKind::Dir { 2 } else { 1 },
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 64 * 1024,
        flags: 0,
    }
}

pub(super) fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(st) => {
            TimeSet::At(st.duration_since(UNIX_EPOCH).map(|d| d.as_secs().min(u64::from(u32::MAX)) as u32).unwrap_or(0))
        }
    }
}

pub(super) fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}
