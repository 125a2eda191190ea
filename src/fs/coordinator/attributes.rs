//! Attributes: asked for (answered from the cache where it is fresh, and counting writes
//! still on their way) and changed (chmod, chown, truncate, utimens), on a name or
//! through an open file, queued behind that file's writes when it has some.

use super::*;

impl<R: Remote> Fs<R> {
    pub async fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        let path = self.path_of(ino)?;
        let cached = self.meta.attr(&path);
        let mut attr = match cached {
            Some(a) => a,
            None => {
                let asked = self.meta.snapshot();
                let a = self.remote.lstat(&path).await.map_err(|e| self.fail_now(Op::Getattr, e, &path))?;
                self.meta.remember_attr(&path, a, asked);
                a
            }
        };
        // Writes still queued make the file longer than the server knows yet.
        attr.size = attr.size.max(self.write_behind.queued_end(ino));
        Ok(attr)
    }

    /// `getattr` as the kernel asks it, naming the open file it asks through (`fstat`).
    /// A file unlinked while open has no path left; its handle still reaches it.
    pub async fn getattr_open(&self, ino: Ino, fh: Option<u64>) -> FsResult<Attr> {
        let Err(gone) = self.path_of(ino) else { return self.getattr(ino).await };
        let file = fh.and_then(|fh| self.files.get(fh)).filter(|f| f.ino == ino).ok_or(gone.clone())?;
        let handle = file.remote_handle().ok_or(gone)?;
        let mut attr = self.remote.fstat(&handle).await.map_err(|e| self.fail_now(Op::Getattr, e, &file.path))?;
        attr.size = attr.size.max(self.write_behind.queued_end(ino));
        Ok(attr)
    }

    pub async fn setattr(&self, ino: Ino, fh: Option<u64>, change: AttrChange) -> FsResult<Attr> {
        self.may_change()?;
        let path = self.path_of(ino)?;
        if self.meta.kind(ino) == Some(FileKind::Symlink) {
            return self.setattr_link(&path, change).await;
        }
        if change.size.is_some() {
            // A truncate must come after the writes queued before it.
            self.write_behind.written(ino).await?;
        }
        let mut set = SetAttr {
            size: change.size,
            mode: change.mode.map(|m| m & 0o7777),
            uid: change.uid,
            gid: change.gid,
            times: None,
        };
        if change.atime.is_some() || change.mtime.is_some() {
            set.times = Some(self.times_for(&path, change).await?);
        }
        let op = if set.uid.is_some() || set.gid.is_some() { Op::Chown } else { Op::Setattr };
        self.forget_content(&path);
        if let Some(attr) = self.queue_setattr(ino, fh, &path, set) {
            return Ok(attr);
        }
        // A size change on an open handle must work even when the file's mode no longer
        // allows opening it for writing (ftruncate after chmod).
        let file = fh.and_then(|fh| self.files.get(fh));
        let writing = file.as_ref().and_then(|f| match &f.state {
            FileState::Writing { handle, .. } => Some(*handle),
            _ => None,
        });
        let known = self.write_behind.queued_end(ino);
        let res = match writing {
            Some(handle) => self.remote.fsetstat_stat(&handle, &path, set).await,
            None => self.remote.setstat_stat(&path, set).await,
        };
        match res {
            Ok(Some(mut attr)) => {
                if change.size.is_none() {
                    // Writes out on other connections may land after the stat.
                    attr.size = attr.size.max(known).max(self.write_behind.queued_end(ino));
                }
                self.meta.changed(&path, attr);
                Ok(attr)
            }
            Ok(None) => {
                self.meta.unsure(&path);
                self.getattr(ino).await
            }
            Err(e) => {
                self.meta.unsure(&path);
                Err(self.fail(op, e, &path, None).await)
            }
        }
    }

    /// A symlink's own attributes (`lchown`, `utimensat(AT_SYMLINK_NOFOLLOW)`). SFTP's
    /// SETSTAT follows the link, so the change would land on its target, perhaps outside
    /// the mount; only lsetstat@openssh.com changes the link itself, and without it the
    /// change is refused.
    async fn setattr_link(&self, path: &str, change: AttrChange) -> FsResult<Attr> {
        if change.size.is_some() {
            return Err(Errno::EINVAL.into());
        }
        if !self.remote.extensions().lsetstat {
            return Err(Errno::EOPNOTSUPP.into());
        }
        let mut set = SetAttr {
            size: None,
            mode: change.mode.map(|m| m & 0o7777),
            uid: change.uid,
            gid: change.gid,
            times: None,
        };
        if change.atime.is_some() || change.mtime.is_some() {
            set.times = Some(self.times_for(path, change).await?);
        }
        let op = if set.uid.is_some() || set.gid.is_some() { Op::Chown } else { Op::Setattr };
        self.meta.unsure(path);
        self.answered(op, path, self.remote.lsetstat(path, set).await).await?;
        let attr = self.answered(Op::Getattr, path, self.remote.lstat(path).await).await?;
        self.meta.changed(path, attr);
        Ok(attr)
    }

    /// SFTP sets both times at once: the one not being changed is kept (known, or asked
    /// for only when needed).
    async fn times_for(&self, path: &str, change: AttrChange) -> FsResult<(u32, u32)> {
        let cached = self.meta.attr(path);
        let cur = match cached {
            Some(a) => a,
            None if change.atime.is_some() && change.mtime.is_some() => Attr::default(),
            None => self.remote.lstat(path).await.map_err(|e| self.fail_now(Op::Setattr, e, path))?,
        };
        let pick = |t: Option<TimeSet>, keep: u32| match t {
            Some(TimeSet::Now) => super::super::meta::sftp_now(),
            Some(TimeSet::At(s)) => s,
            None => keep,
        };
        Ok((pick(change.atime, cur.atime), pick(change.mtime, cur.mtime)))
    }

    /// `fchmod` and `futimens` on a file open for writing go behind its queued writes,
    /// like the writes themselves: answered at once, sent in order (pipelined with the
    /// writes on the file's connection). This is what makes unpacking an archive fast.
    /// Only a change the server cannot refuse goes there: the login user changing mode
    /// or times of its own file (or root changing anything). Anything else (a `chown`,
    /// another user's file) is sent now, so that a refusal is the answer of the call
    /// that asked, as `cp -a` and `tar x` expect, not of a later `close`.
    fn queue_setattr(&self, ino: Ino, fh: Option<u64>, path: &str, set: SetAttr) -> Option<Attr> {
        if set.size.is_some() {
            return None;
        }
        let login = self.login_uid?;
        let file = match fh {
            Some(fh) => self.files.get(fh)?,
            // fchmod, fchown and futimens reach a filesystem without their handle: the
            // file's one open writer stands for it. With several, the change could land
            // before another one's writes, so it goes to the server now instead.
            None => {
                let mut writers = self.files.find_all(|f| f.ino == ino && f.queue().is_some());
                if writers.len() != 1 || self.write_behind.queue_count(ino) > 1 {
                    return None;
                }
                writers.pop()?
            }
        };
        let queue = file.queue()?;
        let mut attr = self.meta.attr(path)?;
        let owner_change = set.uid.is_some() || set.gid.is_some();
        if login != 0 && (owner_change || attr.uid != login) {
            return None;
        }
        if let Some(m) = set.mode {
            attr.mode = (attr.mode & crate::remote::S_IFMT) | m;
        }
        attr.uid = set.uid.unwrap_or(attr.uid);
        attr.gid = set.gid.unwrap_or(attr.gid);
        if let Some((a, m)) = set.times {
            attr.atime = a;
            attr.mtime = m;
        }
        // Both ids go together in SFTP; the one not given is the current one.
        let set =
            SetAttr { uid: set.uid.or(set.gid.map(|_| attr.uid)), gid: set.gid.or(set.uid.map(|_| attr.gid)), ..set };
        self.write_behind.queue_setattr(queue, set);
        attr.size = attr.size.max(self.write_behind.queued_end(ino));
        self.meta.changed(path, attr);
        Some(attr)
    }
}
