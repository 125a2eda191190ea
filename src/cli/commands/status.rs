//! `moor mount status`: every mount and its health, once or as it changes (`--watch`,
//! with hooks).

use super::super::*;

/// Cleans up after agents that died and tells the user what was found.
pub(in crate::cli) async fn report_stale() {
    match registry::clean_stale().await {
        Ok(notices) => {
            for n in notices {
                eprintln!("moor: note: {} on {}: {}", n.name, n.mountpoint.display(), n.what);
            }
        }
        Err(e) => tracing::warn!(%e, "cannot check for mounts left by a dead agent"),
    }
}

/// The agent's mounts; none if no agent runs.
pub(in crate::cli) async fn fetch_status() -> Result<Vec<MountInfo>, MoorError> {
    match Client::connect().await? {
        None => Ok(Vec::new()),
        Some(agent) => agent.status().await,
    }
}

pub(in crate::cli) async fn status(args: StatusArgs) -> Result<(), MoorError> {
    if args.watch {
        let hooks = args.exec.map(|cmd| hooks::Hooks::start(cmd, args.exec_timeout));
        return watch(args.json, hooks).await;
    }
    let mounts = fetch_status().await?;
    if let Some(target) = &args.target {
        let abs = names::absolute(std::path::Path::new(target));
        let Some(m) = mounts.iter().find(|m| &m.name == target || m.mountpoint == abs) else {
            return Err(names::not_mounted(target));
        };
        output::detail(m, args.json);
        return Ok(());
    }
    let orphans: Vec<PathBuf> = mount::kernel_mounts()
        .into_iter()
        .filter(|k| k.is_orphan() && !mounts.iter().any(|m| m.mountpoint == k.path))
        .map(|k| k.path)
        .collect();
    let notices = registry::take_notices().unwrap_or_default();
    output::status(&mounts, &orphans, &notices, args.json);
    Ok(())
}

/// Streams state changes until Ctrl-C, running `hooks` on each; waits for an agent if
/// none runs yet.
pub(in crate::cli) async fn watch(json: bool, hooks: Option<hooks::Hooks>) -> Result<(), MoorError> {
    let mut announced = false;
    let mut mountpoints = hooks::Mountpoints::default();
    loop {
        let agent = match Client::connect().await? {
            Some(a) => a,
            None => {
                if !announced && !json {
                    println!("no mounts yet; waiting for one (Ctrl-C to stop)");
                    announced = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        };
        let mut updates = agent.watch().await?;
        loop {
            let next = tokio::select! {
                r = updates.next() => r,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            match next? {
                Some(WatchUpdate::Mounts(mounts)) => {
                    mountpoints.learn(&mounts);
                    if !json {
                        output::status(&mounts, &[], &[], false);
                    }
                }
                Some(WatchUpdate::Event(event)) => {
                    output::event(&event, json);
                    if let Some(hooks) = &hooks {
                        if mountpoints.of(&event.mount).is_none() {
                            // A mount made since the watch began: the agent knows where.
                            mountpoints.learn(&fetch_status().await.unwrap_or_default());
                        }
                        hooks.on_event(&event, mountpoints.of(&event.mount));
                        // Its name is free again, perhaps for a mount elsewhere.
                        if event.new == MountStatus::Unmounted {
                            mountpoints.forget(&event.mount);
                        }
                    }
                }
                // The agent left (its last mount went): wait for the next one.
                None => break,
            }
        }
    }
}
