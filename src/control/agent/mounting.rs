//! The agent's mounts: making one (checked, on a link it shares by identity, recorded,
//! cleaned up when its session ends), finding one, and taking one down.

use super::*;

/// How long the first connection may take when an offline cache can serve instead.
const OFFLINE_FIRST_TRY: Duration = Duration::from_secs(3);

impl Agent {
    pub(super) async fn unique_name(&self, req: &MountRequest) -> String {
        let base = req.name.clone().unwrap_or_else(|| derive_name(&req.dest.alias, &req.remote_path));
        let mounts = self.mounts.lock().await;
        let taken = |n: &str| mounts.values().any(|m| m.name == n);
        if !taken(&base) {
            return base;
        }
        (2..).map(|i| format!("{base}-{i}")).find(|n| !taken(n)).unwrap_or(base)
    }

    pub(super) async fn mount(
        self: &Arc<Self>,
        req: MountRequest,
        cancel: Cancel,
        asker: Arc<dyn Asker>,
    ) -> Result<(MountInfo, bool), MoorError> {
        if let Some(same) = self.check_new_mount(&req).await? {
            return Ok((same, true));
        }
        // Fail fast on a bad mountpoint before dialling anyone.
        mount::checked_mountpoint(&req.mountpoint).await?;
        let name = self.unique_name(&req).await;
        let link = self.link_for(&req, &cancel, req.interactive.then_some(asker)).await?;
        let mut live = match mount::start(&req, name, link.clone()).await {
            Ok(m) => m,
            Err(e) => {
                self.release_link(&link).await;
                return Err(e);
            }
        };
        let log = self.open_log(&live, req.verbose);
        live.log = log.as_ref().map(|(p, _)| p.clone());
        let live = Arc::new(live);
        if cancel.is_cancelled() {
            // Asked for and abandoned: leave nothing behind.
            let _ = mount::stop(&live, true).await;
            self.release_link(&link).await;
            return Err(MoorError::new(ErrorKind::Cancelled, "cancelled"));
        }
        let info = self.record_mount(&live, &req).await;
        let log = log.map(|(_, f)| f);
        self.forward_events(&live, log.clone(), req.verbose);
        self.clone().clean_up_when_ended(live, log);
        Ok((info, false))
    }

    /// Whether `req` may be mounted: `Some` of the mount already there when it is the
    /// same one; an error when its mountpoint or name is taken by another.
    pub(super) async fn check_new_mount(&self, req: &MountRequest) -> Result<Option<MountInfo>, MoorError> {
        if let Some(existing) = self.mounts.lock().await.get(&req.mountpoint).cloned() {
            if existing.same_as(req) {
                return Ok(Some(existing.info()));
            }
            return Err(MoorError::new(
                ErrorKind::Mountpoint,
                format!(
                    "{} already has {} mounted (name {}): unmount it first, or pick another directory",
                    req.mountpoint.display(),
                    existing.remote,
                    existing.name
                ),
            ));
        }
        if let Some(n) = &req.name {
            // The name becomes the log's file name: a client of another version may not
            // have checked it.
            super::super::names::check_name(n)?;
            if self.mounts.lock().await.values().any(|m| &m.name == n) {
                return Err(MoorError::new(
                    ErrorKind::Usage,
                    format!("a mount named '{n}' exists already: pick another --name"),
                ));
            }
        }
        Ok(None)
    }

    /// Makes a new mount known: in the agent's table, the registry and the events.
    pub(super) async fn record_mount(&self, live: &Arc<LiveMount>, req: &MountRequest) -> MountInfo {
        let info = live.info();
        self.mounts.lock().await.insert(live.mountpoint.clone(), live.clone());
        tracing::info!(name = %info.name, mountpoint = %info.mountpoint.display(), remote = %info.remote, "mounted");
        let entry = registry::Record {
            name: info.name.clone(),
            mountpoint: info.mountpoint.clone(),
            remote: info.remote.clone(),
            request: req.clone(),
            uid: nix::unistd::getuid().as_raw(),
            agent_pid: std::process::id(),
            log: live.log.clone().unwrap_or_default(),
            mounted_at: Timestamp::now(),
        };
        if let Err(e) = registry::record(entry) {
            tracing::warn!(%e, "cannot record the mount in the registry");
        }
        let _ = self.events.send(StatusEvent {
            mount: info.name.clone(),
            at: Timestamp::now(),
            old: MountStatus::Connecting,
            new: info.status.clone(),
            conflict: None,
        });
        info
    }

    /// Once the mount's kernel session ends (our unmount or someone else's): drains what
    /// it can, forgets the mount everywhere and lets its link go.
    pub(super) fn clean_up_when_ended(
        self: Arc<Self>,
        live: Arc<LiveMount>,
        log: Option<Arc<std::sync::Mutex<RotatingLog>>>,
    ) {
        let agent = self;
        tokio::spawn(async move {
            let mut ended = live.ended();
            let _ = ended.wait_for(|e| *e).await;
            live.finish(DRAIN_AT_UNMOUNT).await;
            agent.mounts.lock().await.remove(&live.mountpoint);
            if let Err(e) = registry::remove(&live.mountpoint) {
                tracing::warn!(%e, "cannot update the registry");
            }
            let (last, _) = live.monitor().current();
            let _ = agent.events.send(StatusEvent {
                mount: live.name.clone(),
                at: Timestamp::now(),
                old: last,
                new: MountStatus::Unmounted,
                conflict: None,
            });
            agent.release_link(&live.link()).await;
            // Written here, before the agent may leave with its last mount, so that it
            // is never lost to the exit.
            if let Some(f) = &log {
                write_log(f, "unmounted");
            }
            tracing::info!(mountpoint = %live.mountpoint.display(), "unmounted");
            agent.changed.notify_one();
        });
    }

    /// The mount's own log file, private to the user.
    pub(super) fn open_log(
        &self,
        live: &LiveMount,
        verbose: u8,
    ) -> Option<(PathBuf, Arc<std::sync::Mutex<RotatingLog>>)> {
        let dir = registry::log_dir().ok()?;
        let path = dir.join(format!("{}.log", live.name));
        let file =
            logging::rotating(&path, logging::MOUNT_LOG_LIMIT, logging::MOUNT_LOGS_KEPT, logging::Symlinks::Refuse)
                .ok()?;
        let file = Arc::new(std::sync::Mutex::new(file));
        write_log(&file, &format!("mounted {} on {} (log detail {verbose})", live.remote, live.mountpoint.display()));
        Some((path, file))
    }

    /// Passes the mount's state changes to watchers and to its log file.
    pub(super) fn forward_events(
        &self,
        live: &Arc<LiveMount>,
        log: Option<Arc<std::sync::Mutex<RotatingLog>>>,
        verbose: u8,
    ) {
        let mut rx = live.monitor().subscribe();
        let events = self.events.clone();
        let mut ended = live.ended();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Ok(ev) => {
                            // The agent itself reports the end of a mount.
                            if ev.new == MountStatus::Unmounted {
                                continue;
                            }
                            if let Some(f) = &log {
                                if verbose > 0 || !ev.old.same_kind(&ev.new) {
                                    write_log(f, &format!("{} -> {}", ev.old, ev.new));
                                }
                            }
                            let _ = events.send(ev);
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    // The task that ends the mount writes "unmounted".
                    _ = ended.wait_for(|e| *e) => break,
                }
            }
        });
    }

    /// A working link to the destination, connecting one if no mount holds one (or only
    /// one that failed for good); the caller holds it until `release_link`. With `--wait`,
    /// a host that refuses or does not answer is tried again until the deadline.
    pub(super) async fn link_for(
        &self,
        req: &MountRequest,
        cancel: &Cancel,
        asker: Option<Arc<dyn Asker>>,
    ) -> Result<Arc<SftpLink>, MoorError> {
        let dest = req.destination();
        let usable = |l: &SftpLink| !matches!(l.state(), LinkState::Failed { .. } | LinkState::Closed);
        if let Some(link) = self.links.lock().await.share(&dest, usable) {
            return Ok(link);
        }
        let started = tokio::time::Instant::now();
        let deadline = req.wait.map(|w| crate::deadline::later(started, w));
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(3));
        // With an offline cache to serve from, the mount need not wait for the host.
        let cached = mount::offline_cache_present(req);
        let mut first_try = dest.clone();
        if cached {
            first_try.connect_timeout = first_try.connect_timeout.min(OFFLINE_FIRST_TRY);
        }
        let link = loop {
            let attempt = tokio::select! {
                r = SftpLink::connect(first_try.clone(), req.link_options(), asker.clone()) => r,
                _ = cancel.cancelled() => return Err(MoorError::new(ErrorKind::Cancelled, "cancelled")),
            };
            match attempt {
                Ok(link) => break link,
                Err(e) if e.is_transient() && cached => {
                    tracing::info!(error = %e, "host away: mounting from the offline cache, reconnecting meanwhile");
                    break SftpLink::start_down(dest.clone(), req.link_options(), e.to_string());
                }
                Err(e) if e.is_transient() && deadline.is_some_and(|d| tokio::time::Instant::now() < d) => {
                    let left = deadline.map(|d| d - tokio::time::Instant::now()).unwrap_or_default();
                    tracing::debug!(error = %e, "host not ready; waiting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay().min(left)) => {}
                        _ = cancel.cancelled() => return Err(MoorError::new(ErrorKind::Cancelled, "cancelled")),
                    }
                }
                Err(e) if e.is_transient() && deadline.is_some() => {
                    let mut err = MoorError::from(e);
                    err.message =
                        format!("gave up waiting after {:.0}s: {}", started.elapsed().as_secs_f64(), err.message);
                    return Err(err);
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.links.lock().await.add(dest, link.clone());
        Ok(link)
    }

    /// One mount fewer holds `link`; the last one closes it (ending its supervisor and
    /// wiping what its logins learned).
    pub(super) async fn release_link(&self, link: &Arc<SftpLink>) {
        let last = self.links.lock().await.release(link);
        if last {
            link.close().await;
        }
    }

    pub(super) async fn find(&self, target: &str) -> Option<Arc<LiveMount>> {
        let mounts = self.mounts.lock().await;
        if let Some(m) = mounts.values().find(|m| m.name == target) {
            return Some(m.clone());
        }
        let abs = absolute(Path::new(target));
        mounts.get(&abs).cloned()
    }

    /// Unmounts once the mount's written data is on the server (see `LiveMount::settle`);
    /// with `force` or `lazy`, at once. Returns what was dropped.
    pub(super) async fn unmount(
        &self,
        target: &str,
        lazy: bool,
        force: bool,
        cancel: Cancel,
        progress: mpsc::UnboundedSender<Response>,
    ) -> Result<(MountInfo, Option<AtStake>), MoorError> {
        let Some(m) = self.find(target).await else {
            return Err(not_mounted(target));
        };
        if !force && !lazy {
            m.settle(cancel.cancelled(), |stake, moving| {
                let _ = progress.send(Response::Draining { mount: m.name.clone(), at_stake: stake.clone(), moving });
            })
            .await?;
        }
        mount::stop(&m, lazy).await?;
        // With --force, what never reached the server is known now, and told.
        let lost = if force { m.finish(FORCE_DRAIN).await } else { None };
        let mut info = m.info();
        info.status = super::super::protocol::MountStatus::Unmounted;
        Ok((info, lost))
    }
}
