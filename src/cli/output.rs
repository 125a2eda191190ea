//! What people (and scripts) see.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::control::protocol::{AtStake, MoorError, MountInfo, MountStatus, PendingInfo, StatusEvent, Timestamp};
use crate::control::registry::Notice;

pub fn error(e: &MoorError) {
    eprintln!("moor: {}", printable(&e.message));
}

/// Text for a terminal: control characters shown escaped (`\u{1b}`, `\n`), so that what
/// a server sent (an error message, a path) cannot move the cursor, recolour or clear
/// the screen, or forge lines. JSON output escapes them itself.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

pub fn mounted(m: &MountInfo) {
    println!("{}", printable(&format!("mounted {} on {} (name: {})", m.remote, m.mountpoint.display(), m.name)));
}

pub fn unmounted(mountpoint: &Path) {
    println!("unmounted {}", mountpoint.display());
}

/// After `unmount --force`: what was dropped, on stderr.
pub fn lost(mountpoint: &Path, lost: &AtStake) {
    let text = format!(
        "{} of {} written to {} never reached the server and {} lost: {}",
        bytes(lost.bytes),
        files(lost.files.len()),
        mountpoint.display(),
        if lost.bytes == 1 { "is" } else { "are" },
        lost.files.join(", ")
    );
    eprintln!("moor: {}", printable(&text));
}

/// On unmount with changes made while the link was down still waiting: where they are.
pub fn pending(remote: &str, p: &PendingInfo) {
    let text = format!(
        "{} made while the link was down ({} of {}) kept in the offline journal: the next mount of {remote} replays them",
        if p.changes == 1 { "1 change".to_string() } else { format!("{} changes", p.changes) },
        bytes(p.bytes),
        files(p.files as usize),
    );
    eprintln!("moor: {}", printable(&text));
}

/// "1 file", "3 files".
pub fn files(n: usize) -> String {
    if n == 1 {
        "1 file".into()
    } else {
        format!("{n} files")
    }
}

pub fn ago(since: Timestamp) -> String {
    let s = since.elapsed().as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// Bytes for people: 1.2 MiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn status(mounts: &[MountInfo], orphans: &[PathBuf], notices: &[Notice], json: bool) {
    if json {
        let doc = serde_json::json!({ "mounts": mounts, "orphans": orphans, "notices": notices });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return;
    }
    if mounts.is_empty() {
        println!("no mounts");
    }
    let rows: Vec<[String; 10]> = mounts
        .iter()
        .map(|m| {
            [
                m.name.clone(),
                m.mountpoint.display().to_string(),
                m.remote.clone(),
                state_of(m),
                ago(m.since),
                m.rtt_ms.map_or("-".into(), |r| format!("{r:.1}ms")),
                m.reconnects.to_string(),
                format!("{}/{}", bytes(m.bytes_read), bytes(m.bytes_written)),
                m.open_handles.to_string(),
                m.connections.len().to_string(),
            ]
            .map(|cell| printable(&cell))
        })
        .collect();
    let head =
        ["NAME", "MOUNTPOINT", "REMOTE", "STATE", "FOR", "RTT", "RECONNECTS", "READ/WRITTEN", "HANDLES", "CONNS"];
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells.iter().zip(width.iter()).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    if !rows.is_empty() {
        line(&head.map(String::from));
    }
    for r in &rows {
        line(r);
    }
    for m in mounts.iter().filter(|m| matches!(m.status, MountStatus::Failed { .. })) {
        if let Some(log) = &m.log {
            println!("{}: failed; its log is {}", m.name, log.display());
        }
    }
    for o in orphans {
        println!("{}: left by an agent that is gone; clean it with `moor unmount {}`", o.display(), o.display());
    }
    for n in notices {
        println!("{}", printable(&format!("{} {} on {}: {}", n.at, n.name, n.mountpoint.display(), n.what)));
    }
}

/// A mount's state as a person reads it: while the link is down, what its offline cache
/// serves meanwhile.
fn state_of(m: &MountInfo) -> String {
    match (&m.status, &m.offline_cache) {
        (MountStatus::Reconnecting { .. }, Some(c)) => {
            format!("{}; serving {} from the offline cache", m.status, files(c.files as usize))
        }
        _ => m.status.to_string(),
    }
}

/// One mount in detail.
pub fn detail(m: &MountInfo, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(m).unwrap_or_default());
        return;
    }
    let rtt = m.rtt_ms.map_or("-".into(), |r| format!("{r:.2} ms"));
    println!("name:          {}", printable(&m.name));
    println!("mountpoint:    {}", printable(&m.mountpoint.display().to_string()));
    println!("remote:        {}", printable(&m.remote));
    if let Some(via) = &m.via {
        println!("via:           {}", printable(via));
    }
    println!("state:         {} (for {}, since {})", printable(&state_of(m)), ago(m.since), m.since);
    println!("heartbeat rtt: {rtt}");
    println!("reconnects:    {}", m.reconnects);
    println!("read/written:  {} / {}", bytes(m.bytes_read), bytes(m.bytes_written));
    println!("open handles:  {}", m.open_handles);
    if let Some(lost) = &m.lost {
        let files = lost.files.iter().map(|f| printable(f)).collect::<Vec<_>>().join(", ");
        println!("lost writes:   {} of {files} (see the log)", bytes(lost.bytes));
    }
    if let Some(p) = &m.pending {
        println!(
            "pending:       {} changes made while down, {} in {} (replayed when the link is back)",
            p.changes,
            bytes(p.bytes),
            files(p.files as usize)
        );
    }
    for c in &m.conflicts {
        let kept = c.kept_as.as_deref().map_or(String::new(), |k| format!("; yours is at {k}"));
        println!("conflict:      {}: {}{kept}", printable(&c.path), printable(&c.reason));
    }
    if let Some(c) = &m.offline_cache {
        println!(
            "offline cache: {} of {}, {} (hits {}, misses {})",
            bytes(c.bytes),
            bytes(c.limit),
            files(c.files as usize),
            c.hits,
            c.misses
        );
    }
    if let Some(log) = &m.log {
        println!("log:           {}", log.display());
    }
    println!("connections:   {}", m.connections.len());
    for (i, c) in m.connections.iter().enumerate() {
        println!(
            "  #{}  connected {}  last activity {}  idle {:.1}s  operations {}",
            i + 1,
            c.connected_at,
            c.last_activity,
            c.idle_secs,
            c.operations
        );
    }
}

/// One state change, as it happens.
pub fn event(e: &StatusEvent, json: bool) {
    if json {
        println!("{}", serde_json::to_string(e).unwrap_or_default());
    } else if let Some(c) = &e.conflict {
        let kept = c.kept_as.as_deref().map_or(String::new(), |k| format!("; yours is at {k}"));
        println!("{}", printable(&format!("{} {}: conflict on {}: {}{kept}", e.at, e.mount, c.path, c.reason)));
    } else {
        println!("{}", printable(&format!("{} {}: {} -> {}", e.at, e.mount, e.old, e.new)));
    }
}

/// A spinner with elapsed time on a terminal, for anything slow; silent otherwise.
/// Set while a question is on the terminal: the spinner does not draw over it.
static HELD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Keeps the spinner off the terminal until dropped.
pub struct HeldProgress;

pub fn hold_progress() -> HeldProgress {
    HELD.store(true, std::sync::atomic::Ordering::SeqCst);
    HeldProgress
}

impl Drop for HeldProgress {
    fn drop(&mut self) {
        HELD.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

pub struct ProgressLine {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// What the spinner says; `say` changes it.
    what: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ProgressLine {
    pub fn start(what: String) -> ProgressLine {
        let what = std::sync::Arc::new(std::sync::Mutex::new(what));
        if !std::io::stderr().is_terminal() {
            return ProgressLine { stop: None, thread: None, what };
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let shown = what.clone();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
            let mut i = 0;
            // Only draw once the wait is long enough to notice.
            if rx.recv_timeout(Duration::from_millis(300)).is_ok() {
                return;
            }
            loop {
                let what = shown.lock().map(|w| w.clone()).unwrap_or_default();
                if !HELD.load(std::sync::atomic::Ordering::SeqCst) {
                    eprint!("\r{} {what} ({:.0}s)\x1b[K", frames[i % frames.len()], start.elapsed().as_secs_f64());
                }
                i += 1;
                if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                    eprint!("\r\x1b[K");
                    return;
                }
            }
        });
        ProgressLine { stop: Some(tx), thread: Some(thread), what }
    }

    /// Changes what the spinner says (on a terminal; nothing otherwise).
    pub fn say(&self, what: String) {
        if let Ok(mut w) = self.what.lock() {
            *w = what;
        }
    }

    /// Like `start`, but says it in one plain line when stderr is not a terminal.
    pub fn start_or_say(what: String) -> ProgressLine {
        if !std::io::stderr().is_terminal() {
            eprintln!("moor: {what}...");
            return ProgressLine { stop: None, thread: None, what: Default::default() };
        }
        ProgressLine::start(what)
    }

    pub fn finish(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_text_cannot_drive_the_terminal() {
        assert_eq!(printable("plain /srv/a b"), "plain /srv/a b");
        assert_eq!(printable("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(printable("one\ntwo\r"), "one\\ntwo\\r");
        assert_eq!(printable("tab\there"), "tab\\there");
        assert_eq!(printable("ünïcode ✓"), "ünïcode ✓");
    }
}
