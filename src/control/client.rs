//! The CLI's side of the socket: find the agent (starting it when a mount needs it) and
//! ask it one typed question per connection. Answers are checked here, once: the agent's
//! error comes back as the error, and an answer of the wrong kind as "unexpected answer".

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use zeroize::Zeroizing;

use super::paths;
use super::protocol::{
    AtStake, Envelope, ErrorKind, MoorError, MountInfo, MountRequest, Request, Response, StatusEvent, Typed,
    PROTOCOL_VERSION,
};
use super::systemd;

/// How long a fresh agent may take to open its socket.
const AGENT_START_DEADLINE: Duration = Duration::from_secs(10);
/// How long the agent may take to list its mounts.
const STATUS_DEADLINE: Duration = Duration::from_secs(10);
/// How long an unmount may go without news: the agent waits for the kernel and for the
/// session to end, and sends word of queued writes draining as they go.
const UNMOUNT_DEADLINE: Duration = Duration::from_secs(30);
/// How long a reconnect may take: the agent gives the attempt the link's reconnect timeout
/// and more.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(60);
/// How long a mount may take beyond dialling and `--wait`: finding the remote directory
/// and handing the filesystem to the kernel.
const MOUNT_SLACK: Duration = Duration::from_secs(30);

fn agent_err(m: String) -> MoorError {
    MoorError::new(ErrorKind::Agent, m)
}

/// The error for an answer of the wrong kind to a request (a bug, in the agent or here).
fn unexpected_answer() -> MoorError {
    MoorError::new(ErrorKind::Agent, "unexpected answer from the agent")
}

/// Asks the user a question the agent relays (text, whether the answer may show as
/// typed); `None` when they cannot or will not answer. Runs on a blocking thread. The
/// answer is a secret: it stays in wiped memory up to the socket.
pub type Ask = fn(&str, bool) -> Option<Zeroizing<String>>;

/// A mount made, or found already there.
#[derive(Debug)]
pub struct Mounted {
    pub mount: MountInfo,
    /// True when the same remote was mounted there before.
    pub already: bool,
}

/// A mount taken down, and what written data it dropped (after `--force`).
#[derive(Debug)]
pub struct Unmounted {
    pub mount: MountInfo,
    pub lost: Option<AtStake>,
}

/// How a `moor reconnect` went.
#[derive(Debug)]
pub struct Reconnected {
    pub mount: MountInfo,
    pub outcome: String,
}

/// What a watch brings, in order.
#[derive(Debug)]
pub enum WatchUpdate {
    /// Where things stand when the watch begins.
    Mounts(Vec<MountInfo>),
    /// One state change of one mount.
    Event(StatusEvent),
}

/// A connection to the agent. Each carries one request, so every call consumes it.
pub struct Client {
    stream: UnixStream,
}

/// Whether the process at the other end of `stream` runs as this user.
fn served_by_me(stream: &UnixStream) -> bool {
    stream.peer_cred().is_ok_and(|c| c.uid() == nix::unistd::getuid().as_raw())
}

impl Client {
    /// Connects to the running agent, if there is one.
    pub async fn connect() -> Result<Option<Client>, MoorError> {
        let sock = paths::socket_path()?;
        match UnixStream::connect(&sock).await {
            // Only an agent of our own may hear what we ask (paths, names, keys' places).
            Ok(stream) if !served_by_me(&stream) => Err(agent_err(format!(
                "the agent socket {} is served by another user: remove it, and check who can write to {}",
                sock.display(),
                sock.parent().unwrap_or(&sock).display()
            ))),
            Ok(stream) => Ok(Some(Client { stream })),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
                Ok(None)
            }
            Err(e) => Err(agent_err(format!("cannot reach the agent at {}: {e}", sock.display()))),
        }
    }

    /// Connects to the agent, starting one if none runs. Two racing starters are fine: the
    /// agent lock lets one win and the other exit, and both clients reach the winner.
    pub async fn connect_or_start(verbose: u8) -> Result<Client, MoorError> {
        if let Some(c) = Client::connect().await? {
            return Ok(c);
        }
        spawn_agent(verbose)?;
        let deadline = tokio::time::Instant::now() + AGENT_START_DEADLINE;
        loop {
            if let Some(c) = Client::connect().await? {
                return Ok(c);
            }
            if tokio::time::Instant::now() >= deadline {
                let log = paths::agent_log().map(|p| p.display().to_string()).unwrap_or_default();
                return Err(agent_err(format!("the agent did not start within {AGENT_START_DEADLINE:?}: see {log}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks for a mount; waits as long as dialling (and `--wait`) may take, and more.
    /// Dropping the future hangs up, which makes the agent give the mount up.
    /// Questions of the login (passphrase, password, one-time code) go to `ask`.
    pub async fn mount(self, req: MountRequest, ask: Option<Ask>) -> Result<Mounted, MoorError> {
        let deadline =
            req.dest.connect_timeout.saturating_add(req.wait.unwrap_or_default()).saturating_add(MOUNT_SLACK);
        self.ask(Request::Mount(Box::new(req)), deadline, ask, |r| match r {
            Response::Mounted { mount, already } => Some(Mounted { mount, already }),
            _ => None,
        })
        .await
    }

    /// Unmounts the mount named by `target` (a name or a mountpoint) once its queued
    /// writes are on the server (`force`: at once), telling `draining` how they go.
    pub async fn unmount(
        self,
        target: &str,
        lazy: bool,
        force: bool,
        mut draining: impl FnMut(&AtStake, bool),
    ) -> Result<Unmounted, MoorError> {
        let (rd, mut wr) = self.stream.into_split();
        send(&mut wr, Request::Unmount { target: target.to_string(), lazy, force }).await?;
        let mut rd = BufReader::new(rd).lines();
        loop {
            match read_answer(&mut rd, UNMOUNT_DEADLINE).await? {
                Response::Draining { at_stake, moving, .. } => draining(&at_stake, moving),
                Response::Unmounted { mount, lost } => return Ok(Unmounted { mount, lost }),
                _ => return Err(unexpected_answer()),
            }
        }
    }

    /// Every mount the agent serves, in mountpoint order.
    pub async fn status(self) -> Result<Vec<MountInfo>, MoorError> {
        self.ask(Request::Status, STATUS_DEADLINE, None, |r| match r {
            Response::Status { mounts } => Some(mounts),
            _ => None,
        })
        .await
    }

    /// Reconnects the mount named by `target` now, and says how it went; a login that
    /// needs a person puts its questions to `ask`.
    pub async fn reconnect(self, target: &str, ask: Option<Ask>) -> Result<Reconnected, MoorError> {
        let req = Request::Reconnect { target: target.to_string(), interactive: ask.is_some() };
        self.ask(req, RECONNECT_DEADLINE, ask, |r| match r {
            Response::Reconnected { mount, outcome } => Some(Reconnected { mount, outcome }),
            _ => None,
        })
        .await
    }

    /// Empties the offline cache of the mount named by `target`; the mount as it is then.
    pub async fn clear_cache(self, target: &str) -> Result<MountInfo, MoorError> {
        self.ask(Request::ClearCache { target: target.to_string() }, STATUS_DEADLINE, None, |r| match r {
            Response::CacheCleared { mount } => Some(mount),
            _ => None,
        })
        .await
    }

    /// Starts a watch: where things stand, then every state change.
    pub async fn watch(self) -> Result<Watch, MoorError> {
        let (rd, mut wr) = self.stream.into_split();
        send(&mut wr, Request::Watch).await?;
        Ok(Watch { rd: BufReader::new(rd).lines(), _wr: wr })
    }

    /// Sends `req`, waits up to `deadline` for the answer (the clock starts again after
    /// each question the user answers), and keeps it if `expected` recognises it.
    async fn ask<T>(
        self,
        req: Request,
        deadline: Duration,
        ask: Option<Ask>,
        expected: impl FnOnce(Response) -> Option<T>,
    ) -> Result<T, MoorError> {
        let (rd, mut wr) = self.stream.into_split();
        send(&mut wr, req).await?;
        let mut rd = BufReader::new(rd).lines();
        loop {
            match read_answer(&mut rd, deadline).await? {
                Response::Prompt { text, echo } => {
                    let answer = match ask {
                        Some(f) => tokio::task::spawn_blocking(move || f(&text, echo)).await.ok().flatten(),
                        None => None,
                    };
                    send_answer(&mut wr, answer.map(Typed::new)).await?;
                }
                other => return expected(other).ok_or_else(unexpected_answer),
            }
        }
    }
}

/// Reads the next answer, waiting up to `deadline` for it.
async fn read_answer(
    rd: &mut tokio::io::Lines<BufReader<OwnedReadHalf>>,
    deadline: Duration,
) -> Result<Response, MoorError> {
    match tokio::time::timeout(deadline, rd.next_line()).await {
        Err(_) => Err(agent_err(format!("the agent did not answer within {deadline:?}"))),
        Ok(Err(e)) => Err(agent_err(format!("cannot read the agent's answer: {e}"))),
        Ok(Ok(None)) => Err(agent_err("the agent closed the connection without answering (see its log)".into())),
        Ok(Ok(Some(line))) => decode(&line),
    }
}

/// The updates of a watch, until the agent ends it.
pub struct Watch {
    rd: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    /// Held so that the agent sees the watcher is still there.
    _wr: OwnedWriteHalf,
}

impl Watch {
    /// The next update, or `None` when the agent ends the stream. Answers of other kinds
    /// mean nothing to a watcher and are skipped.
    pub async fn next(&mut self) -> Result<Option<WatchUpdate>, MoorError> {
        loop {
            let line = match self.rd.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) => return Ok(None),
                Err(e) => return Err(agent_err(format!("cannot read from the agent: {e}"))),
            };
            match decode(&line)? {
                Response::Watching { mounts } => return Ok(Some(WatchUpdate::Mounts(mounts))),
                Response::Event { event } => return Ok(Some(WatchUpdate::Event(event))),
                _ => {}
            }
        }
    }
}

/// Writes one request line.
async fn send(wr: &mut OwnedWriteHalf, req: Request) -> Result<(), MoorError> {
    let mut text = serde_json::to_string(&Envelope { version: PROTOCOL_VERSION, body: req })
        .map_err(|e| agent_err(format!("cannot encode request: {e}")))?;
    text.push('\n');
    wr.write_all(text.as_bytes()).await.map_err(|e| agent_err(format!("cannot talk to the agent: {e}")))
}

/// Writes an `Answer` line, encoded into wiped memory that never grows (growing would
/// copy the answer and free the old allocation unwiped): JSON escapes a byte into at
/// most six.
async fn send_answer(wr: &mut OwnedWriteHalf, answer: Option<Typed>) -> Result<(), MoorError> {
    let room = 64 + answer.as_ref().map_or(0, |a| 6 * a.expose().len());
    let mut line = Zeroizing::new(Vec::with_capacity(room));
    let env = Envelope { version: PROTOCOL_VERSION, body: Request::Answer { answer } };
    serde_json::to_writer(&mut *line, &env).map_err(|e| agent_err(format!("cannot encode the answer: {e}")))?;
    line.push(b'\n');
    debug_assert!(line.len() <= room, "the answer outgrew its buffer");
    wr.write_all(&line).await.map_err(|e| agent_err(format!("cannot talk to the agent: {e}")))
}

/// Reads one response line; the agent's error becomes the error.
fn decode(line: &str) -> Result<Response, MoorError> {
    let env: Envelope<Response> =
        serde_json::from_str(line).map_err(|e| agent_err(format!("bad answer from the agent: {e}")))?;
    match env.body {
        Response::Error { error } => Err(error),
        other => Ok(other),
    }
}

/// How long `systemd-run` may take to start the agent's unit.
const UNIT_START_DEADLINE: Duration = Duration::from_secs(5);

/// Starts the agent in a user unit of its own (see `systemd`); says whether it did.
fn start_agent_unit(exe: &std::path::Path, verbose: u8) -> bool {
    let mut cmd = systemd::agent_unit_command(exe, verbose, |k| std::env::var_os(k));
    let Ok(child) = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn() else {
        return false;
    };
    matches!(crate::process::wait_within(child, UNIT_START_DEADLINE), Some(Ok(out)) if out.status.success())
}

fn spawn_agent(verbose: u8) -> Result<(), MoorError> {
    let exe = std::env::current_exe().map_err(|e| agent_err(format!("cannot find the moor binary: {e}")))?;
    if systemd::user_manager() && start_agent_unit(&exe, verbose) {
        tracing::debug!("agent started in the user unit {}", systemd::AGENT_UNIT);
        return Ok(());
    }
    let log = paths::agent_log()?;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log)
        .map_err(|e| agent_err(format!("cannot open {}: {e}", log.display())))?;
    // A log made before with a looser mode is made private too.
    let _ = log_file.set_permissions(std::fs::Permissions::from_mode(0o600));
    let mut cmd = std::process::Command::new(exe);
    // Not the directory it was started in: the agent outlives it, and must not keep a
    // mount or a removable disk busy (every path it is given is absolute).
    cmd.current_dir("/");
    cmd.arg("agent");
    for _ in 0..verbose {
        cmd.arg("-v");
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log_file);
    // A session of its own: the agent must outlive the shell that started it and not
    // get the terminal's signals.
    // SAFETY: setsid is async-signal-safe, and nothing else runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
    }
    cmd.spawn().map_err(|e| agent_err(format!("cannot start the agent: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client whose agent reads one request and answers with `answers`, one per line.
    fn client_answered_by(answers: Vec<Response>) -> Client {
        let (ours, theirs) = UnixStream::pair().unwrap();
        tokio::spawn(async move {
            let (rd, mut wr) = theirs.into_split();
            let mut line = String::new();
            BufReader::new(rd).read_line(&mut line).await.unwrap();
            for body in answers {
                let mut text = serde_json::to_string(&Envelope { version: PROTOCOL_VERSION, body }).unwrap();
                text.push('\n');
                wr.write_all(text.as_bytes()).await.unwrap();
            }
        });
        Client { stream: ours }
    }

    #[tokio::test]
    async fn an_answer_reaches_the_agent_as_typed() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (_, mut wr) = ours.into_split();
        let mut lines = super::super::lines::WipedLines::new(theirs);
        // Quotes, backslashes and control characters take the most room once escaped.
        let typed = "p\"w\\\u{1}\u{1f}ü".repeat(50);
        send_answer(&mut wr, Some(Typed::new(Zeroizing::new(typed.clone())))).await.unwrap();
        send_answer(&mut wr, None).await.unwrap();
        let line = lines.next_line().await.unwrap().unwrap();
        let got = super::super::protocol::AnswerLine::parse(&line).unwrap().unwrap();
        assert_eq!(got.expose(), typed);
        let line = lines.next_line().await.unwrap().unwrap();
        assert!(super::super::protocol::AnswerLine::parse(&line).unwrap().is_none(), "no answer");
    }

    #[tokio::test]
    async fn the_expected_answer_is_returned() {
        let mounts = client_answered_by(vec![Response::Status { mounts: Vec::new() }]).status().await.unwrap();
        assert!(mounts.is_empty());
    }

    #[tokio::test]
    async fn an_answer_of_the_wrong_kind_is_unexpected() {
        let err = client_answered_by(vec![Response::Watching { mounts: Vec::new() }]).status().await.unwrap_err();
        assert_eq!(err, unexpected_answer());
        assert_eq!(err.kind, ErrorKind::Agent);
    }

    #[tokio::test]
    async fn the_agents_error_is_the_error() {
        let refusal = MoorError::new(ErrorKind::NotMounted, "'x' is not a moor mount");
        let err = client_answered_by(vec![Response::Error { error: refusal.clone() }])
            .unmount("x", false, false, |_, _| {})
            .await
            .unwrap_err();
        assert_eq!(err, refusal);
    }

    #[tokio::test]
    async fn an_unmount_hears_its_writes_drain_before_the_answer() {
        let stake = |bytes| AtStake { bytes, files: vec!["/srv/a".into()] };
        let mount = MountInfo { connections: Vec::new(), ..crate::control::protocol::tests::sample_mount_info() };
        let mut heard = Vec::new();
        let done = client_answered_by(vec![
            Response::Draining { mount: "m".into(), at_stake: stake(200), moving: true },
            Response::Draining { mount: "m".into(), at_stake: stake(100), moving: false },
            Response::Unmounted { mount, lost: None },
        ])
        .unmount("m", false, false, |s, moving| heard.push((s.bytes, moving)))
        .await
        .unwrap();
        assert_eq!(heard, vec![(200, true), (100, false)]);
        assert!(done.lost.is_none());
    }

    #[tokio::test]
    async fn a_watch_skips_answers_that_are_not_updates() {
        let mut watch = client_answered_by(vec![
            Response::Status { mounts: Vec::new() },
            Response::Watching { mounts: Vec::new() },
        ])
        .watch()
        .await
        .unwrap();
        assert!(matches!(watch.next().await.unwrap(), Some(WatchUpdate::Mounts(m)) if m.is_empty()));
        assert!(watch.next().await.unwrap().is_none());
    }
}
