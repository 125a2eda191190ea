//! `moor mount`: in the agent, or in the foreground (`-f`), answering a login's
//! questions at the terminal.

use super::super::*;

pub(in crate::cli) async fn mount_cmd(args: MountArgs, verbose: u8) -> Result<(), MoorError> {
    // Listen for Ctrl-C from the start, so that it always cancels cleanly.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| MoorError::new(ErrorKind::Internal, format!("cannot watch signals: {e}")))?;
    let foreground_mount = args.foreground;
    let (req, what) = mount_request(args, verbose)?;
    if foreground_mount {
        return foreground(req).await;
    }
    let mountpoint = req.mountpoint.clone();
    let progress =
        if req.wait.is_some() { output::ProgressLine::start_or_say(what) } else { output::ProgressLine::start(what) };
    let agent = Client::connect_or_start(verbose).await?;
    // Ctrl-C hangs up on the agent, which then gives up the mount and leaves nothing.
    let res = tokio::select! {
        r = agent.mount(req, Some(terminal::ask)) => r,
        _ = interrupt.recv() => {
            terminal::restore();
            Err(MoorError::new(ErrorKind::Cancelled, "cancelled: nothing was mounted"))
        }
    };
    progress.finish();
    let Mounted { mount, already } = res?;
    if already {
        println!("already mounted: {} on {} (name: {})", mount.remote, mount.mountpoint.display(), mount.name);
        return Ok(());
    }
    // The command returns only once the mount answers.
    if !answers(&mountpoint).await {
        return Err(MoorError::new(
            ErrorKind::Internal,
            format!("mounted, but {} does not answer", mountpoint.display()),
        ));
    }
    output::mounted(&mount);
    Ok(())
}

/// The request for the agent that the command line describes, with the destination
/// resolved as ssh would; and what to say while it is carried out.
fn mount_request(args: MountArgs, verbose: u8) -> Result<(MountRequest, String), MoorError> {
    let (Some(spec), Some(mountpoint)) = (args.remote, args.mountpoint) else {
        return Err(MoorError::new(ErrorKind::Usage, "moor mount needs [USER@]HOST[:PATH] and MOUNTPOINT"));
    };
    if let Some(name) = &args.name {
        names::check_name(name)?;
    }
    let o = options::parse(&args.options).map_err(|e| MoorError::new(ErrorKind::Usage, e.to_string()))?;
    let dir = o.offline_cache_dir.clone();
    let sharing = args.sharing.with(&o)?;
    let connections = o.connections.unwrap_or(args.cache.connections);
    let (user_host, remote_path) = parse_remote(&spec)?;
    let ov = Overrides {
        user: args.user,
        port: args.port,
        // The agent runs from "/": a relative key path means the one here.
        identity_files: args.identity.iter().map(|p| names::absolute(p)).collect(),
        config_file: args.ssh_config,
        options: o.ssh,
        jump: args.jump,
    };
    let dest = config::resolve(&user_host, &ov).map_err(|e| MoorError::new(ErrorKind::Usage, e.to_string()))?;
    let mountpoint = mountpoint_for(&mountpoint)?;
    let what = match args.wait {
        Some(w) => format!("waiting for host {} (up to {:.0}s)", dest.alias, w.as_secs_f64()),
        None => format!("connecting to {}", dest.display()),
    };
    let link = args.resilience.link_options(connections, dest.server_alive).into();
    let req = MountRequest {
        dest: dest.into(),
        remote_path,
        mountpoint,
        name: args.name,
        link,
        call_timeout: args.resilience.call_timeout,
        wait: args.wait,
        verbose,
        cache_timeout: o.cache_timeout.unwrap_or(args.cache.cache_timeout),
        read_ahead: args.cache.read_ahead,
        allow_other: sharing.allow_other,
        idmap: sharing.idmap,
        uid: sharing.uid,
        gid: sharing.gid,
        interactive: terminal::available(),
        read_only: sharing.read_only,
        allow_root: sharing.allow_root,
        default_permissions: sharing.default_permissions,
        follow_symlinks: sharing.follow_symlinks,
        umask: sharing.umask,
        no_exec: o.no_exec,
        offline_cache: o.offline_cache.or(args.cache.offline_cache),
        offline_cache_dir: None,
    };
    let req = MountRequest {
        offline_cache_dir: req.offline_cache.map(|_| cache_base(dir.clone(), &args.cache)).transpose()?,
        ..req
    };
    Ok((req, what))
}

/// Where the offline caches of this mount's destination live: `-o offline_cache_dir`,
/// `--offline-cache-dir`, or the user's cache directory.
fn cache_base(o: Option<PathBuf>, args: &CacheArgs) -> Result<PathBuf, MoorError> {
    match o.or_else(|| args.offline_cache_dir.as_deref().map(names::absolute)) {
        Some(dir) => Ok(dir),
        None => paths::cache_dir(),
    }
}

/// The mountpoint, checked; a moor mount there may be this very mount asked for again,
/// which the agent decides.
fn mountpoint_for(given: &std::path::Path) -> Result<PathBuf, MoorError> {
    match mount::check_mountpoint(given) {
        Ok(p) => Ok(p),
        Err(_) if mount::is_moor_mount(&names::absolute(given)) => Ok(names::absolute(given)),
        Err(e) => Err(e),
    }
}

/// How long a new mount may take to answer its first `stat`.
pub(in crate::cli) const FIRST_ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// Whether the mount on `mountpoint` answers a `stat` (off the runtime: the call goes
/// through the kernel to a FUSE server that may be this very process).
pub(in crate::cli) async fn answers(mountpoint: &std::path::Path) -> bool {
    let mp = mountpoint.to_path_buf();
    let stat = tokio::task::spawn_blocking(move || std::fs::metadata(&mp));
    matches!(tokio::time::timeout(FIRST_ANSWER_DEADLINE, stat).await, Ok(Ok(Ok(_))))
}

/// A state as one line: the service manager reads one assignment per line.
pub(in crate::cli) fn one_line(s: &impl std::fmt::Display) -> String {
    s.to_string().replace(['\n', '\r'], " ")
}

/// A foreground mount asks its own terminal.
pub(in crate::cli) struct TerminalAsker;

impl Asker for TerminalAsker {
    fn ask<'a>(&'a self, q: Question) -> Pin<Box<dyn Future<Output = Option<Secret>> + Send + 'a>> {
        Box::pin(async move {
            let answer = tokio::task::spawn_blocking(move || terminal::ask(&q.text, q.echo)).await.ok().flatten();
            answer.map(Secret::from)
        })
    }
}

pub(in crate::cli) async fn foreground(req: MountRequest) -> Result<(), MoorError> {
    let name = req.name.clone().unwrap_or_else(|| names::derive_name(&req.dest.alias, &req.remote_path));
    let asker = req.interactive.then(|| Arc::new(TerminalAsker) as Arc<dyn Asker>);
    let link = SftpLink::connect(req.destination(), req.link_options(), asker).await?;
    let live = match mount::start(&req, name, link.clone()).await {
        Ok(m) => m,
        Err(e) => {
            link.close().await;
            return Err(e);
        }
    };
    output::mounted(&live.info());
    eprintln!("serving in the foreground; press Ctrl-C to unmount");
    // Ready once the mount answers, as for a mount through the agent.
    if answers(&live.mountpoint).await {
        systemd::notify(&format!("READY=1\nSTATUS={}", one_line(&live.monitor().current().0)));
    }
    let mut events = live.monitor().subscribe();
    let mut ended = live.ended();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| MoorError::new(ErrorKind::Internal, format!("cannot watch signals: {e}")))?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = ended.wait_for(|e| *e) => break,
            ev = events.recv() => match ev {
                Ok(ev) => {
                    systemd::notify(&format!("STATUS={}", one_line(&ev.new)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    systemd::notify("STOPPING=1");
    if !*live.ended().borrow() {
        if let Err(e) = mount::stop(&live, false).await {
            output::error(&e);
            mount::stop(&live, true).await?;
        }
    }
    if let Some(lost) = live.finish(Duration::from_secs(10)).await {
        output::lost(&live.mountpoint, &lost);
    }
    live.link().close().await;
    Ok(())
}
