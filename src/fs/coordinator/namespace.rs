//! The namespace: making, removing, renaming and linking names. A change whose answer
//! the link lost is settled through `retries`; a plain SFTP rename onto an existing name
//! moves the target aside first and puts it back if the rename fails.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// Splits a pipelined result into the operation's outcome and the stat that came with it.
fn split(r: crate::remote::Result<Option<Attr>>) -> (crate::remote::Result<()>, Option<Attr>) {
    match r {
        Ok(a) => (Ok(()), a),
        Err(e) => (Err(e), None),
    }
}

/// A hidden name beside `path`, for a rename's target moved out of the way.
fn aside_name(path: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let (dir, name) = parent_and_name(path);
    join(dir, &format!(".{name}.moor-aside-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)))
}

impl<R: Remote> Fs<R> {
    pub async fn mkdir(&self, parent: Ino, name: &str, mode: u32) -> FsResult<Entry> {
        self.may_change()?;
        let path = self.child_of(parent, name)?;
        let (res, attr) = split(self.remote.mkdir_stat(&path, mode & 0o7777).await);
        let attempt = Attempt::new(Op::Mkdir, &path);
        self.conclude(attempt, res).await?;
        let e = self.made(&path, attr, Op::Mkdir).await?;
        match attr {
            // Made just now by us: known to be empty.
            Some(a) => self.meta.made_dir(&path, a),
            None => self.meta.created(&path, e.attr),
        }
        Ok(e)
    }

    /// The entry for what an operation just made, from its stat if that came back.
    async fn made(&self, path: &str, attr: Option<Attr>, op: Op) -> FsResult<Entry> {
        match attr {
            Some(a) => Ok(self.new_entry(path, a)),
            None => self.created(path, op).await,
        }
    }

    /// Looks up what an operation just made.
    async fn created(&self, path: &str, op: Op) -> FsResult<Entry> {
        let attr = self.answered(op, path, self.remote.lstat(path).await).await?;
        Ok(self.new_entry(path, attr))
    }

    pub async fn unlink(&self, parent: Ino, name: &str) -> FsResult<()> {
        self.may_change()?;
        let path = self.child_of(parent, name)?;
        let res = self.remote.remove(&path).await;
        let attempt = Attempt::new(Op::Unlink, &path);
        let concluded = self.conclude(attempt, res).await;
        self.forget_content(&path);
        if concluded.is_err() {
            // Refused, or unknown: the file may well still be there.
            self.meta.unsure(&path);
            return concluded;
        }
        self.meta.removed(&path);
        Ok(())
    }

    pub async fn rmdir(&self, parent: Ino, name: &str) -> FsResult<()> {
        self.may_change()?;
        let path = self.child_of(parent, name)?;
        let res = self.remote.rmdir(&path).await;
        let attempt = Attempt::new(Op::Rmdir, &path);
        let concluded = self.conclude(attempt, res).await;
        self.meta.unsure(&path);
        concluded?;
        self.meta.removed(&path);
        Ok(())
    }

    pub async fn symlink(&self, parent: Ino, name: &str, target: &str) -> FsResult<Entry> {
        self.may_change()?;
        let path = self.child_of(parent, name)?;
        let (res, attr) = split(self.remote.symlink_stat(target, &path).await);
        let attempt = Attempt::new(Op::Symlink, &path).pointing_to(target);
        self.conclude(attempt, res).await?;
        let e = self.made(&path, attr, Op::Symlink).await?;
        self.meta.created(&path, e.attr);
        Ok(e)
    }

    pub async fn rename(&self, parent: Ino, name: &str, new_parent: Ino, new_name: &str, flags: u32) -> FsResult<()> {
        self.may_change()?;
        let from = self.child_of(parent, name)?;
        let to = self.child_of(new_parent, new_name)?;
        if flags & libc::RENAME_EXCHANGE != 0 {
            // SFTP has no way to swap two names atomically.
            return Err(Errno::EINVAL.into());
        }
        if flags & libc::RENAME_NOREPLACE != 0 && self.remote.lstat(&to).await.is_ok() {
            return Err(Errno::EEXIST.into());
        }
        let res = self.rename_replacing(&from, &to).await;
        self.forget_content(&from);
        self.forget_content(&to);
        // A retry that finds the source gone and the target there was the first
        // attempt taking effect.
        let attempt = Attempt::new(Op::Rename, &to).of(&from);
        let concluded = self.conclude(attempt, res).await;
        if concluded.is_err() {
            // Whatever happened, what the cache knew of both names may be wrong now.
            self.meta.unsure(&from);
            self.meta.unsure(&to);
            return concluded;
        }
        self.meta.renamed(&from, &to);
        self.write_behind.renamed(&from, &to);
        Ok(())
    }

    /// Moves `from` to `to`, replacing what is there. With posix-rename@openssh.com the
    /// server does that atomically. A plain SFTP rename refuses an existing target: the
    /// target is moved aside to a hidden name first and put back if the rename still
    /// fails, so a failed rename never loses it (not atomic: another client may find no
    /// `to` for a moment).
    async fn rename_replacing(&self, from: &str, to: &str) -> crate::remote::Result<()> {
        let first = self.remote.rename(from, to).await;
        let refused = match first {
            Err(e) if !self.remote.extensions().posix_rename && !e.outcome_unknown() => e,
            r => return r,
        };
        let Ok(target) = self.remote.lstat(to).await else { return Err(refused) };
        let aside = aside_name(to);
        if self.remote.rename(to, &aside).await.is_err() {
            return Err(refused);
        }
        match self.remote.rename(from, to).await {
            Ok(()) => {
                let gone = match target.kind() {
                    FileKind::Dir => self.remote.rmdir(&aside).await,
                    _ => self.remote.remove(&aside).await,
                };
                if let Err(e) = gone {
                    tracing::warn!(path = %aside, error = %e, "cannot remove the replaced target moved aside");
                }
                Ok(())
            }
            Err(e) => {
                if let Err(back) = self.remote.rename(&aside, to).await {
                    tracing::error!(path = %to, aside = %aside, error = %back, "cannot put a rename's target back");
                }
                Err(e)
            }
        }
    }

    pub async fn link(&self, ino: Ino, new_parent: Ino, new_name: &str) -> FsResult<Entry> {
        self.may_change()?;
        let existing = self.path_of(ino)?;
        let path = self.child_of(new_parent, new_name)?;
        if !self.remote.extensions().hardlink {
            return Err(Errno::EOPNOTSUPP.into());
        }
        let res = self.remote.hardlink(&existing, &path).await;
        let attempt = Attempt::new(Op::Link, &path).of(&existing);
        self.conclude(attempt, res).await?;
        let e = self.created(&path, Op::Link).await?;
        self.meta.created(&path, e.attr);
        self.meta.unsure(&existing);
        Ok(e)
    }
}
