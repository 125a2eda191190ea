//! The thin adapter between the kernel (fuser) and the filesystem core: decode the
//! request, run the core's operation on the runtime, encode the reply. Nothing here
//! decides anything about files.

use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenFlags as FuseOpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::buffers::BufferPool;
use super::coordinator::{AttrChange, Entry, Fs, KernelCache, OpenFlags, TimeSet};
use super::errno::Errno;
use super::error::FsResult;
use super::interrupt;
use super::owners::Owners;
use crate::remote::{name, Attr, FileKind, Remote};

macro_rules! name_or_reply {
    ($name:expr, $reply:ident) => {
        match name_str($name) {
            Ok(n) => n,
            Err(e) => return $reply.error(e),
        }
    };
}

mod call;
mod convert;

use call::*;
pub(super) use call::{close_unheard, forget_unheard, release_unheard, Ctx};
use convert::*;

/// The largest write the kernel sends in one request.
const MAX_WRITE: u32 = 1024 * 1024;
/// Write buffers kept for reuse: enough for a steady stream, little when idle.
const POOLED_BUFFERS: usize = 16;

/// How long the kernel may trust what it was told before asking again.
#[derive(Debug, Clone, Copy)]
pub struct KernelTimeouts {
    pub attr: Duration,
    pub entry: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct AdapterOptions {
    pub kernel: KernelTimeouts,
    /// A call waiting this long on a link that is down, or has moved nothing for as
    /// long, gets EAGAIN; on a link that moves data it waits on.
    pub call_timeout: Duration,
    /// Who files show as owned by.
    pub owners: Owners,
    /// Permission bits taken away from every mode as shown (`--umask`).
    pub umask: u32,
}

impl Default for AdapterOptions {
    fn default() -> Self {
        AdapterOptions {
            kernel: KernelTimeouts { attr: Duration::from_secs(1), entry: Duration::from_secs(1) },
            call_timeout: Duration::from_secs(3),
            owners: Owners::none(),
            umask: 0,
        }
    }
}

/// The kernel's caches of a mounted session, as the core takes them back.
pub struct KernelNotifier(pub fuser::Notifier);

impl KernelCache for KernelNotifier {
    fn inode_changed(&self, ino: u64) {
        // Gone from the kernel already, or the session ended: nothing to take back.
        let _ = self.0.inval_inode(INodeNo(ino), 0, 0);
    }

    fn name_changed(&self, dir: u64, name: &str) {
        let _ = self.0.inval_entry(INodeNo(dir), OsStr::new(name));
    }
}

pub struct FuseAdapter<R: Remote> {
    fs: Arc<Fs<R>>,
    moving: LinkMoving,
    rt: tokio::runtime::Handle,
    opts: AdapterOptions,
    /// Where write data is copied out of the kernel's buffer.
    buffers: Arc<BufferPool>,
}

impl<R: Remote> FuseAdapter<R> {
    pub fn new(fs: Arc<Fs<R>>, rt: tokio::runtime::Handle, opts: AdapterOptions) -> Self {
        let moving: LinkMoving = {
            let fs = fs.clone();
            Arc::new(move |within| fs.link_moving(within))
        };
        FuseAdapter { fs, moving, rt, opts, buffers: BufferPool::new(MAX_WRITE as usize, POOLED_BUFFERS) }
    }

    /// Runs one operation: what can be answered at once (a cache hit, data already read
    /// ahead, a write that only needs queueing) is answered on this thread, sparing a
    /// hop to a runtime worker and back; the rest moves to the runtime so that the
    /// kernel's next request is read at once and slow calls never queue here.
    fn run<F>(&self, req: &Request, op: impl FnOnce(Arc<Fs<R>>, Ctx) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let ctx = Ctx {
            kernel: self.opts.kernel,
            call_timeout: self.opts.call_timeout,
            moving: self.moving.clone(),
            caller: Caller::Thread(req.pid()),
            owners: self.opts.owners,
            umask: self.opts.umask,
        };
        let _runtime = self.rt.enter();
        let mut fut = Box::pin(op(self.fs.clone(), ctx));
        // A first poll with a waker that does nothing: every future re-registers the
        // waker it is given on each poll, so the runtime's polls take over cleanly.
        if fut.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending() {
            // Tracked: a call answered early may still be finishing its operation.
            self.fs.track(fut);
        }
    }
}

impl<R: Remote> Filesystem for FuseAdapter<R> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO;
        let _ = config.add_capabilities(wanted & config.capabilities());
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name_or_reply!(name, reply);
        self.run(req, |fs, cx| async move {
            cx.call(fs.lookup(parent.0, &name), |r| reply_lookup(reply, &cx, r), |e| forget_unheard(&fs, e)).await
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.run(req, |fs, cx| async move {
            cx.call(
                fs.getattr_open(ino.0, fh.map(|f| f.0)),
                |r| match r {
                    Ok(a) => reply.attr(&cx.kernel.attr, &cx.attr(ino.0, &a)),
                    Err(e) => reply.error(errno(e)),
                },
                nothing,
            )
            .await;
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let (uid, gid) = self.opts.owners.sent(uid, gid);
        let change = AttrChange { size, mode, uid, gid, atime: atime.map(time_set), mtime: mtime.map(time_set) };
        self.run(req, |fs, cx| async move {
            cx.call(
                fs.setattr(ino.0, fh.map(|f| f.0), change),
                |r| match r {
                    Ok(a) => reply.attr(&cx.kernel.attr, &cx.attr(ino.0, &a)),
                    Err(e) => reply.error(errno(e)),
                },
                nothing,
            )
            .await;
        });
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        self.run(req, |fs, cx| async move {
            cx.call(
                fs.readlink(ino.0),
                |r| match r {
                    Ok(t) => reply.data(&name::to_bytes(&t)),
                    Err(e) => reply.error(errno(e)),
                },
                nothing,
            )
            .await;
        });
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // SFTP can create regular files, directories and symlinks only; regular files
        // come through `create`.
        reply.error(fuser::Errno::EPERM);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let name = name_or_reply!(name, reply);
        self.run(req, |fs, cx| async move {
            cx.call(fs.mkdir(parent.0, &name, mode), |r| reply_entry(reply, &cx, r), |e| forget_unheard(&fs, e)).await
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        self.run(
            req,
            |fs, cx| async move { cx.call(fs.unlink(parent.0, &name), |r| reply_empty(reply, r), nothing).await },
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        self.run(
            req,
            |fs, cx| async move { cx.call(fs.rmdir(parent.0, &name), |r| reply_empty(reply, r), nothing).await },
        );
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let name = name_or_reply!(link_name, reply);
        let target = name_or_reply!(target.as_os_str(), reply);
        self.run(req, |fs, cx| async move {
            cx.call(fs.symlink(parent.0, &name, &target), |r| reply_entry(reply, &cx, r), |e| forget_unheard(&fs, e))
                .await
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let name = name_or_reply!(name, reply);
        let newname = name_or_reply!(newname, reply);
        self.run(req, |fs, cx| async move {
            cx.call(fs.rename(parent.0, &name, newparent.0, &newname, flags.bits()), |r| reply_empty(reply, r), nothing)
                .await
        });
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let newname = name_or_reply!(newname, reply);
        self.run(req, |fs, cx| async move {
            cx.call(fs.link(ino.0, newparent.0, &newname), |r| reply_entry(reply, &cx, r), |e| forget_unheard(&fs, e))
                .await
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: FuseOpenFlags, reply: ReplyOpen) {
        let flags = OpenFlags::from_libc(flags.0);
        self.run(req, |fs, cx| async move {
            cx.call(
                fs.open(ino.0, flags),
                |r| match r {
                    Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                    Err(e) => reply.error(errno(e)),
                },
                |fh| release_unheard(&fs, fh),
            )
            .await;
        });
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.run(req, |fs, cx| async move {
            cx.call(
                fs.read(fh.0, offset, size),
                |r| match r {
                    Ok(data) => reply.data(&data),
                    Err(e) => reply.error(errno(e)),
                },
                nothing,
            )
            .await;
        });
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = self.buffers.copy(data);
        self.run(req, |fs, cx| async move {
            cx.call(
                fs.write_bytes(fh.0, offset, data),
                |r| match r {
                    Ok(n) => reply.written(n),
                    Err(e) => reply.error(errno(e)),
                },
                nothing,
            )
            .await;
        });
    }

    fn flush(&self, req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        self.run(req, |fs, cx| async move { cx.call(fs.flush(fh.0), |r| reply_empty(reply, r), nothing).await });
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.run(req, |fs, cx| async move { cx.call(fs.release(fh.0), |r| reply_empty(reply, r), nothing).await });
    }

    fn fsync(&self, req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.run(req, |fs, cx| async move { cx.call(fs.fsync(fh.0), |r| reply_empty(reply, r), nothing).await });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: FuseOpenFlags, reply: ReplyOpen) {
        self.run(req, |fs, cx| async move {
            cx.call(
                fs.opendir(ino.0),
                |r| match r {
                    Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                    Err(e) => reply.error(errno(e)),
                },
                |fh| release_dir_unheard(&fs, fh),
            )
            .await;
        });
    }

    fn readdir(&self, req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.run(req, |fs, cx| async move {
            cx.call(
                fs.readdir(fh.0, offset),
                |r| match r {
                    Ok(items) => {
                        for (next, item) in items {
                            if reply.add(INodeNo(item.ino), next, kind_type(item.kind), name_os(&item.name)) {
                                break;
                            }
                        }
                        reply.ok();
                    }
                    Err(e) => reply.error(errno(e)),
                },
                nothing,
            )
            .await;
        });
    }

    fn readdirplus(&self, req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let entry_timeout = self.opts.kernel.entry;
        self.run(req, |fs, cx| async move {
            cx.call(
                fs.readdir(fh.0, offset),
                |r| match r {
                    Ok(items) => {
                        for (next, item) in items {
                            let attr = match item.attr {
                                Some(a) => cx.attr(item.ino, &a),
                                // "." and "..": the kernel takes no reference and uses no attributes.
                                None => {
                                    let mut a = file_attr(item.ino, &Attr { mode: 0o040755, ..Attr::default() });
                                    a.ino = INodeNo(item.ino);
                                    a
                                }
                            };
                            let timeout = if item.attr.is_some() { entry_timeout } else { Duration::ZERO };
                            if reply.add(INodeNo(item.ino), next, name_os(&item.name), &timeout, &attr, Generation(0)) {
                                break;
                            }
                            fs.count_lookup(&item);
                        }
                        reply.ok();
                    }
                    Err(e) => reply.error(errno(e)),
                },
                nothing,
            )
            .await;
        });
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: FuseOpenFlags, reply: ReplyEmpty) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.run(req, |fs, cx| async move {
            cx.call(
                fs.statfs(),
                |r| match r {
                    Ok(s) => reply.statfs(
                        s.blocks,
                        s.blocks_free,
                        s.blocks_avail,
                        s.files,
                        s.files_free,
                        s.block_size as u32,
                        s.name_max as u32,
                        s.fragment_size as u32,
                    ),
                    Err(e) => reply.error(errno(e)),
                },
                nothing,
            )
            .await;
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name_or_reply!(name, reply);
        let flags = OpenFlags::from_libc(flags);
        self.run(req, |fs, cx| async move {
            cx.call(
                fs.create(parent.0, &name, mode, flags),
                |r| match r {
                    Ok((e, fh)) => reply.created(
                        &cx.kernel.entry,
                        &cx.attr(e.ino, &e.attr),
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::empty(),
                    ),
                    Err(e) => reply.error(errno(e)),
                },
                |(e, fh)| close_unheard(&fs, e, fh),
            )
            .await;
        });
    }
}
