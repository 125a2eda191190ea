//! Questions asked on the user's terminal: a key's passphrase, a password, a one-time
//! code, relayed from the agent (which has no terminal). Answers are read from
//! `/dev/tty`, not stdin, as ssh reads them, so piping into `moor` changes nothing; a
//! secret is read without echo, and the terminal is put back however the read ends.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::sync::Mutex;

use nix::sys::termios::{self, LocalFlags, SetArg, Termios};

/// The terminal's settings while echo is off, to put back on the way out.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

fn open_tty() -> Option<File> {
    OpenOptions::new().read(true).write(true).open("/dev/tty").ok()
}

/// Whether there is a terminal to ask on (none under fstab, systemd or cron).
pub fn available() -> bool {
    open_tty().is_some()
}

/// Asks `text` on the terminal; `None` when there is none or the read fails.
pub fn ask(text: &str, echo: bool) -> Option<String> {
    let mut tty = open_tty()?;
    let _quiet = super::output::hold_progress();
    // Echo goes off before the question shows, so that an answer typed at once is
    // neither shown nor thrown away.
    if !echo {
        let saved = termios::tcgetattr(tty.as_fd()).ok()?;
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        quiet.local_flags.insert(LocalFlags::ECHONL);
        termios::tcsetattr(tty.as_fd(), SetArg::TCSANOW, &quiet).ok()?;
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
    }
    // The text comes from the server: it may not move the cursor or retitle the window.
    let shown: String = text.split('\n').map(super::output::printable).collect::<Vec<_>>().join("\n");
    let shown_ok = write!(tty, "\r\x1b[K{shown}").and_then(|()| tty.flush());
    if shown_ok.is_err() {
        restore();
        return None;
    }
    let mut line = String::new();
    let read = BufReader::new(&tty).read_line(&mut line);
    restore();
    match read {
        Ok(n) if n > 0 => {
            while line.ends_with(['\n', '\r']) {
                line.pop();
            }
            Some(line)
        }
        _ => None,
    }
}

/// Puts the terminal back as it was before a question without echo: after the answer,
/// and when the command is interrupted in the middle of one.
pub fn restore() {
    let Some(saved) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
    if let Some(tty) = open_tty() {
        let _ = termios::tcsetattr(tty.as_fd(), SetArg::TCSANOW, &saved);
    }
}
