//! `moor mount status --watch --exec CMD`: a command run on each change of a mount's
//! state, so that a user can wire `notify-send` or a script to "reconnecting" or "failed".

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::control::protocol::StatusEvent;

/// `--exec`'s long help: what the command is told.
pub const EXEC_HELP: &str = "With --watch: run CMD with `sh -c` each time a mount changes state, e.g. to \
notify you. CMD runs once per change of state (not on each retry while reconnecting) and once per conflict \
found replaying changes made offline, one run at a time and in order, with these in its environment:

  MOOR_MOUNT       the mount's name
  MOOR_MOUNTPOINT  where it is mounted
  MOOR_OLD_STATE   the state it left, and
  MOOR_NEW_STATE   the state it entered: connecting, active, reconnecting,
                   failed, needs_login or unmounted (the JSON `state` names)
  MOOR_DETAIL      why, if the new state has a reason: the last error while
                   reconnecting, the reason it failed, the login it needs;
                   for a conflict, what happened
  MOOR_CONFLICT    for a conflict found replaying changes made while the
                   link was down (the state stays): the file's remote path
  MOOR_CONFLICT_KEPT_AS  where your version was put beside it, if anywhere
  MOOR_AT          when (RFC 3339, UTC)
  MOOR_EVENT_JSON  the whole event, as `--watch --json` prints it

Its output goes to stderr (stdout carries the watch). A command that fails or runs over \
--exec-timeout is reported on stderr, and the watch goes on.";

/// Runs the hook for each event handed to it, one at a time and in order, in a task of
/// its own: a slow hook delays the next hooks, never the watch.
pub struct Hooks {
    queue: mpsc::UnboundedSender<Job>,
}

/// One run of the hook: what it finds in its environment, and how reports name it.
struct Job {
    env: Vec<(&'static str, String)>,
    what: String,
}

impl Hooks {
    pub fn start(command: String, timeout: Duration) -> Hooks {
        let (queue, mut jobs) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            while let Some(job) = jobs.recv().await {
                run(&command, job, timeout).await;
            }
        });
        Hooks { queue }
    }

    /// Queues the hook for `event`, if the mount changed state: a new attempt while
    /// reconnecting is not a change a user wants to be told about each time.
    pub fn on_event(&self, event: &StatusEvent, mountpoint: Option<&Path>) {
        if event.old.same_kind(&event.new) && event.conflict.is_none() {
            return;
        }
        let what = match &event.conflict {
            Some(c) => format!("{} (conflict on {})", event.mount, c.path),
            None => format!("{} ({} -> {})", event.mount, event.old.name(), event.new.name()),
        };
        let _ = self.queue.send(Job { env: environment(event, mountpoint), what });
    }
}

/// The variables a hook reads; the state names are those of the JSON `state` field.
fn environment(event: &StatusEvent, mountpoint: Option<&Path>) -> Vec<(&'static str, String)> {
    vec![
        ("MOOR_MOUNT", event.mount.clone()),
        ("MOOR_MOUNTPOINT", mountpoint.map(|p| p.display().to_string()).unwrap_or_default()),
        ("MOOR_OLD_STATE", event.old.name().to_string()),
        ("MOOR_NEW_STATE", event.new.name().to_string()),
        (
            "MOOR_DETAIL",
            match &event.conflict {
                Some(c) => c.reason.clone(),
                None => event.new.detail().unwrap_or_default().to_string(),
            },
        ),
        ("MOOR_CONFLICT", event.conflict.as_ref().map(|c| c.path.clone()).unwrap_or_default()),
        ("MOOR_CONFLICT_KEPT_AS", event.conflict.as_ref().and_then(|c| c.kept_as.clone()).unwrap_or_default()),
        ("MOOR_AT", event.at.to_string()),
        ("MOOR_EVENT_JSON", serde_json::to_string(event).unwrap_or_default()),
    ]
}

/// Runs the hook with `sh -c` and reports on stderr how it failed, if it did.
async fn run(command: &str, job: Job, timeout: Duration) {
    let mut child = match spawn(command, &job.env) {
        Ok(c) => c,
        Err(e) => {
            warn(&format!("cannot run the --exec command for {}: {e}", job.what));
            return;
        }
    };
    // The hook leads a process group of its own, so that a hook that hangs is killed
    // with whatever it started; one that ends normally may leave work running (`cmd &`).
    let group = child.id().map(|pid| KillOnDrop(nix::unistd::Pid::from_raw(pid as i32)));
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => {
            if let Some(g) = group {
                g.disarm();
            }
            if !status.success() {
                warn(&format!("the --exec command for {} {}", job.what, how_it_ended(status)));
            }
        }
        Ok(Err(e)) => warn(&format!("cannot wait for the --exec command for {}: {e}", job.what)),
        Err(_) => {
            drop(group);
            let _ = child.wait().await;
            warn(&format!(
                "the --exec command for {} ran longer than {}s and was killed: make it finish sooner \
                 (start slow work with &) or raise --exec-timeout",
                job.what,
                timeout.as_secs_f64()
            ));
        }
    }
}

fn spawn(command: &str, env: &[(&'static str, String)]) -> std::io::Result<tokio::process::Child> {
    tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        // Our stdout carries the event stream (JSON lines with --json): the hook's own
        // output goes beside our messages instead.
        .stdout(stderr_copy()?)
        .process_group(0)
        .spawn()
}

fn stderr_copy() -> std::io::Result<Stdio> {
    Ok(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?))
}

fn how_it_ended(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => format!("ended: {status}"),
    }
}

fn warn(text: &str) {
    eprintln!("moor: {}", super::output::printable(text));
}

/// Kills a hook's process group when dropped: at its deadline, or when the watch ends
/// while the hook runs.
struct KillOnDrop(nix::unistd::Pid);

impl KillOnDrop {
    /// Leaves the group alone: the hook ended in time.
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(self.0, nix::sys::signal::Signal::SIGKILL);
    }
}

/// Mountpoints by mount name: events name only the mount, a hook wants its place too.
#[derive(Default)]
pub struct Mountpoints(std::collections::HashMap<String, PathBuf>);

impl Mountpoints {
    pub fn learn(&mut self, mounts: &[crate::control::protocol::MountInfo]) {
        for m in mounts {
            self.0.insert(m.name.clone(), m.mountpoint.clone());
        }
    }

    pub fn forget(&mut self, name: &str) {
        self.0.remove(name);
    }

    pub fn of(&self, name: &str) -> Option<&Path> {
        self.0.get(name).map(PathBuf::as_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{MountStatus, Timestamp};

    fn event(old: MountStatus, new: MountStatus) -> StatusEvent {
        StatusEvent { mount: "box-src".into(), at: Timestamp(3_000), old, new, conflict: None }
    }

    #[test]
    fn environment_names_the_states_as_json_does() {
        let failed = MountStatus::Failed { reason: "host key changed".into() };
        let env = environment(&event(MountStatus::Active, failed), Some(Path::new("/home/a/src")));
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str()).unwrap();
        assert_eq!(get("MOOR_MOUNT"), "box-src");
        assert_eq!(get("MOOR_MOUNTPOINT"), "/home/a/src");
        assert_eq!(get("MOOR_OLD_STATE"), "active");
        assert_eq!(get("MOOR_NEW_STATE"), "failed");
        assert_eq!(get("MOOR_DETAIL"), "host key changed");
        assert_eq!(get("MOOR_AT"), "1970-01-01T00:00:03.000Z");
        let json: serde_json::Value = serde_json::from_str(get("MOOR_EVENT_JSON")).unwrap();
        assert_eq!(json["new"]["state"], "failed");
        assert_eq!(get("MOOR_CONFLICT"), "");
    }

    #[test]
    fn a_conflict_runs_the_hook_with_what_happened() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let hooks = Hooks { queue: tx };
        let quiet = event(MountStatus::Active, MountStatus::Active);
        hooks.on_event(&quiet, None);
        assert!(rx.try_recv().is_err(), "no change of state, no conflict: no run");
        let conflict = crate::control::protocol::ConflictInfo {
            path: "/srv/notes".into(),
            kept_as: Some("/srv/notes.conflict-laptop-20261205-101500".into()),
            reason: "changed on the server while changed here".into(),
            at: Timestamp(3_000),
        };
        hooks.on_event(&StatusEvent { conflict: Some(conflict), ..quiet }, None);
        let job = rx.try_recv().expect("a conflict runs the hook");
        let get = |k: &str| job.env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(get("MOOR_CONFLICT"), "/srv/notes");
        assert_eq!(get("MOOR_CONFLICT_KEPT_AS"), "/srv/notes.conflict-laptop-20261205-101500");
        assert_eq!(get("MOOR_DETAIL"), "changed on the server while changed here");
        assert_eq!(get("MOOR_NEW_STATE"), "active");
    }
}
