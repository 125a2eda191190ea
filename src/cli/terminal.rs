//! Questions asked on the user's terminal: a key's passphrase, a password, a one-time
//! code, relayed from the agent (which has no terminal). Answers are read from
//! `/dev/tty`, not stdin, as ssh reads them, so piping into `moor` changes nothing; a
//! secret is read without echo, and the terminal is put back however the read ends.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::sync::Mutex;

use nix::sys::termios::{self, LocalFlags, SetArg, Termios};
use zeroize::Zeroizing;

/// The terminal's settings while echo is off, to put back on the way out.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

fn open_tty() -> Option<File> {
    OpenOptions::new().read(true).write(true).open("/dev/tty").ok()
}

/// Whether there is a terminal to ask on (none under fstab, systemd or cron).
pub fn available() -> bool {
    open_tty().is_some()
}

/// Asks `text` on the terminal; `None` when there is none or the read fails. The answer
/// is a secret (a password, a code): it is only ever in wiped memory.
pub fn ask(text: &str, echo: bool) -> Option<Zeroizing<String>> {
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
    let answer = read_line(&tty);
    restore();
    answer
}

/// The longest answer taken: a terminal's line is at most 4 095 bytes.
const ANSWER_MAX: usize = 4096;

/// One line, without its line end, read straight into wiped memory (a `BufReader` would
/// keep a copy in its buffer, a growing `String` in the allocations it leaves); `None`
/// at once at the end of input, or when the read fails or is no text.
fn read_line(mut from: impl Read) -> Option<Zeroizing<String>> {
    let mut buf = Zeroizing::new(vec![0u8; ANSWER_MAX]);
    let mut len = 0;
    while len < buf.len() && !buf[..len].contains(&b'\n') {
        match from.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    if len == 0 {
        return None;
    }
    let mut end = buf[..len].iter().position(|&b| b == b'\n').unwrap_or(len);
    while end > 0 && buf[end - 1] == b'\r' {
        end -= 1;
    }
    let text = std::str::from_utf8(&buf[..end]).ok()?;
    let mut answer = Zeroizing::new(String::with_capacity(text.len()));
    answer.push_str(text);
    Some(answer)
}

/// Puts the terminal back as it was before a question without echo: after the answer,
/// and when the command is interrupted in the middle of one.
pub fn restore() {
    let Some(saved) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
    if let Some(tty) = open_tty() {
        let _ = termios::tcsetattr(tty.as_fd(), SetArg::TCSANOW, &saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_read_without_its_end() {
        let read = |input: &[u8]| read_line(input).map(|a| a.to_string());
        assert_eq!(read(b"hunter2\n").as_deref(), Some("hunter2"));
        assert_eq!(read(b"crlf\r\n").as_deref(), Some("crlf"));
        assert_eq!(read(b"first\nsecond\n").as_deref(), Some("first"));
        assert_eq!(read(b"no end").as_deref(), Some("no end"));
        assert_eq!(read(b"\n").as_deref(), Some(""));
        assert_eq!(read(b""), None, "end of input: no answer");
        assert_eq!(read(b"\xff\n"), None, "not text");
    }
}
