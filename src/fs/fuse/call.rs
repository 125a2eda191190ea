//! A call from the kernel as the core runs it: under its deadline, ended early with
//! EINTR when its program is being stopped, and never abandoned: an operation answered
//! early runs on to its end, and what the kernel never heard of is given back.

use super::*;

/// Whether the link is up and has moved something within the given time.
pub(super) type LinkMoving = Arc<dyn Fn(Duration) -> bool + Send + Sync>;

/// How often a call past its deadline looks again at whether the link still moves.
pub(super) const RECHECK: Duration = Duration::from_millis(250);

/// Who made a call, watched for being stopped.
#[derive(Clone)]
pub(super) enum Caller {
    /// The calling thread.
    Thread(u32),
    /// A test's stand-in: stopped once the flag is set.
    #[cfg(test)]
    Flag(Arc<std::sync::atomic::AtomicBool>),
}

impl Caller {
    fn being_stopped(&self) -> bool {
        match self {
            Caller::Thread(tid) => interrupt::being_stopped(*tid),
            #[cfg(test)]
            Caller::Flag(f) => f.load(std::sync::atomic::Ordering::SeqCst),
        }
    }
}

/// What a call's future must be handed to run under its deadline.
#[derive(Clone)]
pub(in crate::fs) struct Ctx {
    pub(super) kernel: KernelTimeouts,
    pub(super) call_timeout: Duration,
    pub(super) moving: LinkMoving,
    /// The thread that made the call, watched for Ctrl-C.
    pub(super) caller: Caller,
    pub(super) owners: Owners,
    pub(super) umask: u32,
}

impl Ctx {
    /// A call of a test's, on a link that always moves, whose program counts as being
    /// stopped once `stopped` is set.
    #[cfg(test)]
    pub(in crate::fs) fn stopped_by(stopped: Arc<std::sync::atomic::AtomicBool>) -> Ctx {
        let opts = AdapterOptions::default();
        Ctx {
            kernel: opts.kernel,
            call_timeout: opts.call_timeout,
            moving: Arc::new(|_| true),
            caller: Caller::Flag(stopped),
            owners: opts.owners,
            umask: opts.umask,
        }
    }

    /// What the kernel is told of a file: its attributes, owners and mode as presented
    /// here.
    pub(super) fn attr(&self, ino: u64, a: &Attr) -> FileAttr {
        let mut fa = file_attr(ino, a);
        (fa.uid, fa.gid) = self.owners.shown(a.uid, a.gid);
        fa.perm &= !(self.umask as u16);
        fa
    }

    /// Runs one core operation under the call deadline and gives its outcome to `reply`.
    /// The deadline measures progress, not duration: past `call_timeout`, a call goes on
    /// waiting as long as the link is up and moving data (a slow link is not a dead one),
    /// and gets EAGAIN once the link is down or has moved nothing for `call_timeout`.
    /// Whenever it waits, the caller being stopped (Ctrl-C) ends it with EINTR.
    ///
    /// A call answered early does not abandon its operation: what it started on the
    /// server runs on to its end here, so that the fs state follows what really happened
    /// (a rename landed, a name moved aside put back), and `undo` takes back what its
    /// success would have handed the kernel, which never heard of it (an open handle, a
    /// reference to an inode).
    ///
    /// A failure is logged here, once (`FsError::log`); the kernel gets its errno.
    pub(in crate::fs) async fn call<T, U: Future<Output = ()>>(
        &self,
        op: impl Future<Output = FsResult<T>>,
        reply: impl FnOnce(Result<T, Errno>),
        undo: impl FnOnce(T) -> U,
    ) {
        let mut op = std::pin::pin!(op);
        let early = match self.within(op.as_mut()).await {
            Ok(outcome) => {
                return reply(outcome.map_err(|e| {
                    e.log(false);
                    e.errno()
                }))
            }
            Err(early) => early,
        };
        reply(Err(early));
        match op.await {
            Ok(unheard) => undo(unheard).await,
            Err(e) => e.log(true),
        }
    }

    /// Waits for `op` under the call deadline: its outcome, or the errno the call must
    /// return with before `op` ends.
    async fn within<T>(&self, mut op: Pin<&mut impl Future<Output = FsResult<T>>>) -> Result<FsResult<T>, Errno> {
        let mut deadline = crate::deadline::after(self.call_timeout);
        loop {
            let look = (tokio::time::Instant::now() + RECHECK).min(deadline);
            match tokio::time::timeout_at(look, op.as_mut()).await {
                Ok(r) => return Ok(r),
                Err(_) if self.caller.being_stopped() => {
                    tracing::debug!("call interrupted: the program is being stopped");
                    return Err(Errno::EINTR);
                }
                Err(_) if look < deadline => {}
                Err(_) if (self.moving)(self.call_timeout) => deadline = tokio::time::Instant::now() + RECHECK,
                Err(_) => {
                    tracing::debug!(timeout = ?self.call_timeout, "call hit its deadline on a link that moves nothing");
                    return Err(Errno::EAGAIN);
                }
            }
        }
    }
}

/// Nothing to take back: what the operation did is all the kernel needs to know of.
pub(super) fn nothing<T>(_: T) -> std::future::Ready<()> {
    std::future::ready(())
}

/// The kernel never heard of the entry a call made: the reference it would have held goes.
pub(in crate::fs) async fn forget_unheard<R: Remote>(fs: &Fs<R>, e: Entry) {
    fs.forget(e.ino, 1);
}

/// The kernel never heard of the directory handle a call opened.
pub(super) async fn release_dir_unheard<R: Remote>(fs: &Fs<R>, fh: u64) {
    fs.releasedir(fh);
}

/// The kernel never heard of the file a call created and opened.
pub(in crate::fs) async fn close_unheard<R: Remote>(fs: &Fs<R>, e: Entry, fh: u64) {
    forget_unheard(fs, e).await;
    release_unheard(fs, fh).await;
}

/// The kernel never heard of the handle a call opened: it is closed.
pub(in crate::fs) async fn release_unheard<R: Remote>(fs: &Fs<R>, fh: u64) {
    let _ = fs.release(fh).await;
}

pub(super) fn reply_entry(reply: ReplyEntry, cx: &Ctx, r: Result<Entry, Errno>) {
    let kernel = cx.kernel;
    match r {
        Ok(e) => reply.entry_with_ttls(&kernel.attr, &kernel.entry, &cx.attr(e.ino, &e.attr), Generation(0)),
        Err(e) => reply.error(errno(e)),
    }
}

pub(super) fn reply_lookup(reply: ReplyEntry, cx: &Ctx, r: Result<Entry, Errno>) {
    let kernel = cx.kernel;
    match r {
        Ok(e) => reply.entry_with_ttls(&kernel.attr, &kernel.entry, &cx.attr(e.ino, &e.attr), Generation(0)),
        // Node 0 with a timeout: the kernel remembers that the name does not exist.
        Err(Errno::ENOENT) if !kernel.entry.is_zero() => {
            let mut none = file_attr(0, &Attr::default());
            none.ino = INodeNo(0);
            reply.entry(&kernel.entry, &none, Generation(0))
        }
        Err(e) => reply.error(errno(e)),
    }
}
