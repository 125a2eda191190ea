//! `moor reconnect` and `moor unmount`.

use super::super::*;

pub(in crate::cli) async fn reconnect_cmd(args: ReconnectArgs) -> Result<(), MoorError> {
    let Some(agent) = Client::connect().await? else {
        return Err(names::not_mounted(&args.target));
    };
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| MoorError::new(ErrorKind::Internal, format!("cannot watch signals: {e}")))?;
    let progress = output::ProgressLine::start(format!("reconnecting {}", args.target));
    let ask = terminal::available().then_some(terminal::ask as client::Ask);
    let res = tokio::select! {
        r = agent.reconnect(&args.target, ask) => r,
        _ = interrupt.recv() => {
            terminal::restore();
            Err(MoorError::new(ErrorKind::Cancelled, "cancelled"))
        }
    };
    progress.finish();
    let Reconnected { mount, outcome } = res?;
    println!("{}: {outcome}", mount.name);
    Ok(())
}

pub(in crate::cli) async fn cache_clear_cmd(args: CacheClearArgs) -> Result<(), MoorError> {
    let Some(agent) = Client::connect().await? else {
        return Err(names::not_mounted(&args.target));
    };
    let mount = agent.clear_cache(&args.target).await?;
    if args.json {
        output::detail(&mount, true);
    } else {
        println!("{}: offline cache emptied", mount.name);
    }
    Ok(())
}

pub(in crate::cli) async fn unmount_cmd(args: UnmountArgs) -> Result<(), MoorError> {
    let targets: Vec<String> = if args.all {
        let mut t: Vec<String> =
            fetch_status().await?.into_iter().map(|m| m.mountpoint.display().to_string()).collect();
        let orphans: Vec<String> = mount::kernel_mounts()
            .into_iter()
            .filter(|k| k.is_orphan() && !t.contains(&k.path.display().to_string()))
            .map(|k| k.path.display().to_string())
            .collect();
        t.extend(orphans);
        t
    } else {
        args.target.into_iter().collect()
    };
    let mut first_err = None;
    for target in targets {
        if let Err(e) = unmount_one(&target, args.lazy, args.force).await {
            if args.all {
                output::error(&e);
            }
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

pub(in crate::cli) async fn unmount_one(target: &str, lazy: bool, force: bool) -> Result<(), MoorError> {
    let progress = output::ProgressLine::start(format!("unmounting {target}"));
    let mut told = false;
    let draining = |stake: &AtStake, moving: bool| {
        let what = format!(
            "unmounting {target}: {} of {} not on the server yet{}",
            output::bytes(stake.bytes),
            output::files(stake.files.len()),
            if moving { "" } else { " (the link is down)" }
        );
        if !std::io::stderr().is_terminal() && !told {
            eprintln!("moor: {what}; waiting...");
            told = true;
        }
        progress.say(what);
    };
    let res = match Client::connect().await? {
        Some(agent) => agent.unmount(target, lazy, force, draining).await,
        None => Err(names::not_mounted(target)),
    };
    progress.finish();
    match res {
        Ok(Unmounted { mount, lost }) => {
            if let Some(lost) = lost {
                output::lost(&mount.mountpoint, &lost);
            }
            if let Some(p) = &mount.pending {
                output::pending(&mount.remote, p);
            }
            output::unmounted(&mount.mountpoint);
            Ok(())
        }
        Err(e) if e.kind == ErrorKind::NotMounted => {
            // A mount left by an agent that died: still ours to clean up.
            let abs = names::absolute(std::path::Path::new(target));
            if mount::is_orphan_mount(&abs) {
                mount::kernel_unmount(&abs, lazy).await?;
                output::unmounted(&abs);
                Ok(())
            } else {
                Err(e)
            }
        }
        Err(e) => Err(e),
    }
}
