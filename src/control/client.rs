//! The CLI's side of the socket: find the agent (starting it when a mount needs it) and
//! exchange one request for one response.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::paths;
use super::protocol::{Envelope, ErrorKind, MoorError, Request, Response, PROTOCOL_VERSION};

/// How long a fresh agent may take to open its socket.
const AGENT_START_DEADLINE: Duration = Duration::from_secs(10);

fn agent_err(m: String) -> MoorError {
    MoorError::new(ErrorKind::Agent, m)
}

/// Connects to the running agent, if there is one.
pub async fn connect() -> Result<Option<UnixStream>, MoorError> {
    let sock = paths::socket_path()?;
    match UnixStream::connect(&sock).await {
        Ok(s) => Ok(Some(s)),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => Ok(None),
        Err(e) => Err(agent_err(format!("cannot reach the agent at {}: {e}", sock.display()))),
    }
}

fn spawn_agent(verbose: u8) -> Result<(), MoorError> {
    let exe = std::env::current_exe().map_err(|e| agent_err(format!("cannot find the moor binary: {e}")))?;
    let log = paths::agent_log()?;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| agent_err(format!("cannot open {}: {e}", log.display())))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("agent");
    for _ in 0..verbose {
        cmd.arg("-v");
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log_file);
    // A session of its own: the agent must outlive the shell that started it and not
    // get the terminal's signals.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
    }
    cmd.spawn().map_err(|e| agent_err(format!("cannot start the agent: {e}")))?;
    Ok(())
}

/// Connects to the agent, starting one if none runs. Two racing starters are fine: the
/// agent lock lets one win and the other exit, and both clients reach the winner.
pub async fn connect_or_start(verbose: u8) -> Result<UnixStream, MoorError> {
    if let Some(s) = connect().await? {
        return Ok(s);
    }
    spawn_agent(verbose)?;
    let deadline = tokio::time::Instant::now() + AGENT_START_DEADLINE;
    loop {
        if let Some(s) = connect().await? {
            return Ok(s);
        }
        if tokio::time::Instant::now() >= deadline {
            let log = paths::agent_log().map(|p| p.display().to_string()).unwrap_or_default();
            return Err(agent_err(format!("the agent did not start within {AGENT_START_DEADLINE:?}: see {log}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends one request and waits (up to `deadline`) for its response.
pub async fn exchange(stream: UnixStream, req: Request, deadline: Duration) -> Result<Response, MoorError> {
    let (rd, mut wr) = stream.into_split();
    let mut text = serde_json::to_string(&Envelope { version: PROTOCOL_VERSION, body: req })
        .map_err(|e| agent_err(format!("cannot encode request: {e}")))?;
    text.push('\n');
    wr.write_all(text.as_bytes()).await.map_err(|e| agent_err(format!("cannot talk to the agent: {e}")))?;
    let mut line = String::new();
    let read = tokio::time::timeout(deadline, BufReader::new(rd).read_line(&mut line)).await;
    match read {
        Err(_) => Err(agent_err(format!("the agent did not answer within {deadline:?}"))),
        Ok(Err(e)) => Err(agent_err(format!("cannot read the agent's answer: {e}"))),
        Ok(Ok(0)) => Err(agent_err("the agent closed the connection without answering (see its log)".into())),
        Ok(Ok(_)) => {
            let env: Envelope<Response> =
                serde_json::from_str(&line).map_err(|e| agent_err(format!("bad answer from the agent: {e}")))?;
            match env.body {
                Response::Error { error } => Err(error),
                other => Ok(other),
            }
        }
    }
}

/// The lines of a streamed answer (`Watch`).
pub struct Lines {
    rd: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    _wr: tokio::net::unix::OwnedWriteHalf,
}

impl Lines {
    /// The next response, or `None` when the agent ends the stream.
    pub async fn next(&mut self) -> Result<Option<Response>, MoorError> {
        match self.rd.next_line().await {
            Ok(Some(line)) => {
                let env: Envelope<Response> =
                    serde_json::from_str(&line).map_err(|e| agent_err(format!("bad answer from the agent: {e}")))?;
                match env.body {
                    Response::Error { error } => Err(error),
                    other => Ok(Some(other)),
                }
            }
            Ok(None) => Ok(None),
            Err(e) => Err(agent_err(format!("cannot read from the agent: {e}"))),
        }
    }
}

/// Sends a request whose answer is a stream of responses.
pub async fn stream(stream: UnixStream, req: Request) -> Result<Lines, MoorError> {
    let (rd, mut wr) = stream.into_split();
    let mut text = serde_json::to_string(&Envelope { version: PROTOCOL_VERSION, body: req })
        .map_err(|e| agent_err(format!("cannot encode request: {e}")))?;
    text.push('\n');
    wr.write_all(text.as_bytes()).await.map_err(|e| agent_err(format!("cannot talk to the agent: {e}")))?;
    Ok(Lines { rd: BufReader::new(rd).lines(), _wr: wr })
}
