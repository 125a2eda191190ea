//! The remote operations over SFTP: each a request or a few pipelined ones on a
//! connection the link chooses, or on the open file's own.

use super::*;

/// A request naming one path.
/// Entries that are symlinks take the attributes of what they point to, asked all at
/// once; a dangling one stays a symlink.
pub(super) async fn follow_links(c: &SftpConn, dir: &str, entries: &mut [DirEntry]) {
    let stats = entries.iter().map(|e| async move {
        if e.attr.kind() != FileKind::Symlink {
            return None;
        }
        let path = format!("{}/{}", dir.trim_end_matches('/'), e.name);
        wire::attrs(&c.session.direct, wire::STAT, path_body(&path)).await.ok()
    });
    let targets = futures_util::future::join_all(stats).await;
    for (e, target) in entries.iter_mut().zip(targets) {
        if let Some(attr) = target {
            e.attr = attr;
        }
    }
}

impl Remote for SftpRemote {
    fn extensions(&self) -> Extensions {
        match self.link.conn() {
            Ok(c) => {
                let ext = extensions_from(&c.session.extensions);
                *lock(&self.known_extensions) = ext;
                ext
            }
            Err(_) => *lock(&self.known_extensions),
        }
    }

    fn is_available(&self) -> bool {
        self.link.conn().is_ok()
    }

    async fn wait_unavailable(&self) {
        self.link.wait_not_up().await
    }

    fn stalled_for(&self) -> Option<std::time::Duration> {
        self.link.stalled_for()
    }

    async fn wait_available(&self) -> Result<()> {
        self.link.wait_up().await.map_err(RemoteError::from)
    }

    async fn realpath(&self, path: &str) -> Result<String> {
        self.ask_name(wire::REALPATH, "realpath", path_body(path)).await
    }

    async fn stat(&self, path: &str) -> Result<Attr> {
        self.ask_attrs(wire::STAT, path_body(path)).await
    }

    async fn lstat(&self, path: &str) -> Result<Attr> {
        if self.follow_symlinks {
            match self.stat(path).await {
                // Dangling, a loop, or nothing there: the name itself answers.
                Err(e) if !e.is_link() => {}
                r => return r,
            }
        }
        self.ask_attrs(wire::LSTAT, path_body(path)).await
    }

    async fn fstat(&self, handle: &Handle) -> Result<Attr> {
        let (_, c, h) = self.handle_on(handle).await?;
        let r = wire::attrs(&c.session.direct, wire::FSTAT, handle_body(&h)).await;
        self.check(&c, r)
    }

    async fn setstat(&self, path: &str, set: SetAttr) -> Result<()> {
        let c = self.conn()?;
        let owner = self.owner_for(&c, &set, || path_body(path), wire::LSTAT).await;
        let r = wire::done(&c.session.direct, wire::SETSTAT, path_body(path).attrs(&set, owner)).await;
        self.check(&c, r)?;
        self.attrs_changed(path, &set);
        Ok(())
    }

    async fn fsetstat(&self, handle: &Handle, set: SetAttr) -> Result<()> {
        let (file, c, h) = self.handle_on(handle).await?;
        let owner = self.owner_for(&c, &set, || handle_body(&h), wire::FSTAT).await;
        let r = wire::done(&c.session.direct, wire::FSETSTAT, handle_body(&h).attrs(&set, owner)).await;
        self.check(&c, r)?;
        lock(&file.known).set(&set);
        Ok(())
    }

    async fn lsetstat(&self, path: &str, set: SetAttr) -> Result<()> {
        let c = self.conn()?;
        let owner = self.owner_for(&c, &set, || path_body(path), wire::LSTAT).await;
        let body = extended("lsetstat@openssh.com").name(path).attrs(&set, owner);
        let r = wire::done(&c.session.direct, wire::EXTENDED, body).await;
        self.check(&c, r)
    }

    async fn list(&self, path: &str) -> Result<DirStream> {
        let (_, c, slot) = self.conn_for_open(false)?;
        let r = wire::handle(&c.session.direct, wire::OPENDIR, path_body(path)).await;
        let h = self.check(&c, r)?;
        let (tx, rx) = tokio::sync::mpsc::channel(LIST_BATCHES_AHEAD);
        let link = self.link.clone();
        let follow = self.follow_symlinks.then(|| path.to_string());
        tokio::spawn(async move {
            // Several READDIRs in flight, answered in order: a small directory comes back,
            // with its end, in one round trip, and a big one streams. Every READDIR past
            // the end is wasted work on both sides, so only a big directory gets many.
            let mut out = FuturesOrdered::new();
            let mut in_flight = READDIRS_AT_FIRST;
            let mut batches = 0;
            loop {
                // After the first batch, the second READDIR out is likely the end.
                let wanted = if batches == 1 { 1 } else { in_flight };
                while out.len() < wanted {
                    out.push_back(wire::names(&c.session.direct, wire::READDIR, handle_body(&h)));
                }
                let batch = match out.next().await {
                    Some(Ok(names)) => {
                        let mut entries: Vec<DirEntry> =
                            names.into_iter().map(|(name, attr)| DirEntry { name, attr }).collect();
                        if let Some(dir) = &follow {
                            follow_links(&c, dir, &mut entries).await;
                        }
                        Ok(entries)
                    }
                    Some(Err(SftpError::Status(s))) if s.status_code == StatusCode::Eof => break,
                    Some(Err(e)) => Err(report(&link, &c, e)),
                    None => break,
                };
                c.touch();
                batches += 1;
                if batches > 1 {
                    in_flight = (in_flight * 2).min(READDIRS_IN_FLIGHT);
                }
                let failed = batch.is_err();
                // Nobody listening any more (the directory was closed early): stop.
                if tx.send(batch).await.is_err() || failed {
                    break;
                }
            }
            // The end is told before the handle is closed: that takes a round trip.
            drop(tx);
            drop(out);
            let _ = wire::done(&c.session.direct, wire::CLOSE, handle_body(&h)).await;
            drop(slot);
        });
        Ok(DirStream::new(rx))
    }

    async fn open(&self, path: &str, o: OpenOptions) -> Result<Handle> {
        let (home, c, slot) = self.conn_for_open(true)?;
        // What the file is as it opens: how it is recognised after a reconnect. STAT,
        // not LSTAT: OPEN follows a symlink too.
        let (opened, stat) = futures_util::join!(
            wire::handle(&c.session.direct, wire::OPEN, open_body(path, o, o.mode)),
            wire::attrs(&c.session.direct, wire::STAT, path_body(path))
        );
        let h = self.check(&c, opened)?;
        let attr = self.check(&c, stat).ok();
        Ok(self.register(path, o, (home, &c, slot), h, attr))
    }

    async fn close(&self, handle: &Handle) -> Result<()> {
        let Some(file) = lock(&self.files).remove(&handle.0) else { return Ok(()) };
        let Some(live) = file.live.lock().await.take() else { return Ok(()) };
        // A handle of a connection that is gone died with it.
        match self.link.conn_at(live.index) {
            Ok(c) if c.generation == live.generation => {
                let r = wire::done(&c.session.direct, wire::CLOSE, handle_body(&live.handle)).await;
                self.check(&c, r)
            }
            _ => Ok(()),
        }
    }

    fn write_depth(&self, handle: &Handle) -> usize {
        depth_for(self.file_conn(handle).ok().and_then(|c| c.least_rtt()))
    }

    fn opened_as(&self, handle: &Handle) -> Option<Attr> {
        lock(&self.files).get(&handle.0).and_then(|f| f.opened_as)
    }

    // A file's reads and writes go to the connection it was opened on (`handle_on`).
    async fn read(&self, handle: &Handle, offset: u64, len: u32) -> Result<Bytes> {
        let (_, c, h) = self.handle_on(handle).await?;
        match c.session.direct.read(&h, offset, len).await {
            Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => {
                c.touch();
                Ok(Bytes::new())
            }
            r => self.check(&c, r),
        }
    }

    async fn write(&self, handle: &Handle, offset: u64, data: Bytes) -> Result<()> {
        let (file, c, h) = self.handle_on(handle).await?;
        let end = offset + data.len() as u64;
        lock(&file.known).sending(end);
        let r = c.session.direct.write(&h, offset, data).await;
        self.check(&c, r)?;
        lock(&file.known).written(end);
        Ok(())
    }

    async fn fsync(&self, handle: &Handle) -> Result<()> {
        let (_, c, h) = self.handle_on(handle).await?;
        let r = wire::done(&c.session.direct, wire::EXTENDED, extended("fsync@openssh.com").bytes(&h)).await;
        self.check(&c, r)
    }

    async fn mkdir(&self, path: &str, mode: u32) -> Result<()> {
        let set = SetAttr { mode: Some(mode), ..SetAttr::default() };
        self.ask_done(wire::MKDIR, path_body(path).attrs(&set, None)).await?;
        self.name_was_free(path);
        Ok(())
    }

    async fn rmdir(&self, path: &str) -> Result<()> {
        self.ask_done(wire::RMDIR, path_body(path)).await
    }

    async fn remove(&self, path: &str) -> Result<()> {
        self.ask_done(wire::REMOVE, path_body(path)).await?;
        self.names_changed(|k| k.removed(path));
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let c = self.conn()?;
        let r = if extensions_from(&c.session.extensions).posix_rename {
            wire::done(&c.session.direct, wire::EXTENDED, extended("posix-rename@openssh.com").name(from).name(to))
                .await
        } else {
            // Plain SFTP rename refuses to replace an existing target; the fs moves it aside.
            wire::done(&c.session.direct, wire::RENAME, path_body(from).name(to)).await
        };
        match self.check(&c, r) {
            Ok(()) => self.names_changed(|k| k.renamed(from, to)),
            Err(e) if e.outcome_unknown() => {
                self.names_changed(|k| k.maybe_renamed_onto(to));
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    async fn symlink(&self, target: &str, link: &str) -> Result<()> {
        self.ask_done(wire::SYMLINK, symlink_body(target, link)).await?;
        self.name_was_free(link);
        Ok(())
    }

    async fn readlink(&self, path: &str) -> Result<String> {
        self.ask_name(wire::READLINK, "readlink", path_body(path)).await
    }

    async fn hardlink(&self, existing: &str, new: &str) -> Result<()> {
        self.ask_done(wire::EXTENDED, extended("hardlink@openssh.com").name(existing).name(new)).await?;
        self.name_was_free(new);
        Ok(())
    }

    async fn statfs(&self, path: &str) -> Result<StatFs> {
        let c = self.conn()?;
        let r = wire::extended_reply(&c.session.direct, extended("statvfs@openssh.com").name(path)).await;
        let mut b = self.check(&c, r)?;
        let mut next = || wire::take_u64(&mut b).map_err(|_| RemoteError::BadMessage("short statvfs reply".into()));
        let (block_size, fragment_size, blocks, blocks_free, blocks_avail) =
            (next()?, next()?, next()?, next()?, next()?);
        let (files, files_free, files_avail, _fsid, flags, name_max) =
            (next()?, next()?, next()?, next()?, next()?, next()?);
        Ok(StatFs {
            block_size,
            fragment_size,
            blocks,
            blocks_free,
            blocks_avail,
            files,
            files_free,
            files_avail,
            name_max,
            read_only: flags & ST_RDONLY != 0,
        })
    }

    fn read_size(&self) -> u32 {
        self.link.conn().map(|c| c.session.read_size).unwrap_or(64 * 1024)
    }

    fn write_size(&self) -> u32 {
        self.link.conn().map(|c| c.session.write_size).unwrap_or(64 * 1024)
    }

    async fn open_stat(&self, path: &str, o: OpenOptions) -> Result<(Handle, Option<Attr>)> {
        let (home, c, slot) = self.conn_for_open(true)?;
        let (opened, stat) = futures_util::join!(
            wire::handle(&c.session.direct, wire::OPEN, open_body(path, o, o.mode)),
            wire::attrs(&c.session.direct, wire::LSTAT, path_body(path))
        );
        let h = self.check(&c, opened)?;
        let attr = self.check(&c, stat).ok();
        Ok((self.register(path, o, (home, &c, slot), h, attr), attr))
    }

    async fn mkdir_stat(&self, path: &str, mode: u32) -> Result<Option<Attr>> {
        let c = self.conn()?;
        let set = SetAttr { mode: Some(mode), ..SetAttr::default() };
        let (made, stat) = futures_util::join!(
            wire::done(&c.session.direct, wire::MKDIR, path_body(path).attrs(&set, None)),
            wire::attrs(&c.session.direct, wire::LSTAT, path_body(path))
        );
        self.check(&c, made)?;
        self.name_was_free(path);
        Ok(self.check(&c, stat).ok())
    }

    async fn symlink_stat(&self, target: &str, link: &str) -> Result<Option<Attr>> {
        let c = self.conn()?;
        let (made, stat) = futures_util::join!(
            wire::done(&c.session.direct, wire::SYMLINK, symlink_body(target, link)),
            wire::attrs(&c.session.direct, wire::LSTAT, path_body(link))
        );
        self.check(&c, made)?;
        self.name_was_free(link);
        Ok(self.check(&c, stat).ok())
    }

    async fn setstat_stat(&self, path: &str, set: SetAttr) -> Result<Option<Attr>> {
        if set.uid.is_some() != set.gid.is_some() {
            // The owner pair needs the current owner first.
            self.setstat(path, set).await?;
            return Ok(self.lstat(path).await.ok());
        }
        let c = self.conn()?;
        let (done, stat) = futures_util::join!(
            wire::done(&c.session.direct, wire::SETSTAT, path_body(path).attrs(&set, None)),
            wire::attrs(&c.session.direct, wire::LSTAT, path_body(path))
        );
        self.check(&c, done)?;
        self.attrs_changed(path, &set);
        Ok(self.check(&c, stat).ok())
    }

    async fn fsetstat_stat(&self, handle: &Handle, path: &str, set: SetAttr) -> Result<Option<Attr>> {
        if set.uid.is_some() != set.gid.is_some() {
            self.fsetstat(handle, set).await?;
            return Ok(self.lstat(path).await.ok());
        }
        let (file, c, h) = self.handle_on(handle).await?;
        let (done, stat) = futures_util::join!(
            wire::done(&c.session.direct, wire::FSETSTAT, handle_body(&h).attrs(&set, None)),
            wire::attrs(&c.session.direct, wire::FSTAT, handle_body(&h))
        );
        self.check(&c, done)?;
        lock(&file.known).set(&set);
        Ok(self.check(&c, stat).ok())
    }
}

/// Shallow where the file's connection has answered a small request within `NEAR`:
/// there a megabyte out keeps the server busy. Judged by the quickest round trip the
/// connection has shown, not by the file's own answers, which come later the more are
/// out. Not known yet: deep, which is right for any path.
pub(super) fn depth_for(least_rtt: Option<Duration>) -> usize {
    match least_rtt {
        Some(rtt) if rtt < NEAR => SHALLOW_WRITES,
        _ => DEEP_WRITES,
    }
}
