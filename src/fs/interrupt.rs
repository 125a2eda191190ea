//! Whether the program behind a waiting call is being stopped (Ctrl-C), so the call can
//! end with EINTR.
//!
//! The kernel's own way, FUSE_INTERRUPT, never reaches us: fuser answers it with ENOSYS
//! itself, after which the kernel stops sending it. So a call that waits looks at its
//! caller instead. A local disk never fails a regular file's call with EINTR, and
//! programs do not retry one: so only a signal that stops the program counts. Those are
//! SIGINT, SIGTERM, SIGHUP and SIGQUIT, whether the program handles them or not, and any
//! signal that would kill it (the kernel shows a fatal signal as a pending SIGKILL). A
//! handled SIGCHLD, SIGWINCH, SIGALRM or SIGUSR1 (make, shells, editors, pagers) is left
//! pending: the kernel delivers it once the call returns, as on a local disk.

/// Signals that mean the program is being stopped, handled or not.
const STOPPING: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Signals whose default action is not to end the program (ignore, stop, continue): one
/// of these pending and not handled ends nothing.
const HARMLESS_BY_DEFAULT: [i32; 7] =
    [libc::SIGCHLD, libc::SIGWINCH, libc::SIGURG, libc::SIGCONT, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU];

/// Whether thread `tid`'s program is being stopped by a signal pending for it. False
/// when the thread cannot be read (gone, or another pid namespace).
pub fn being_stopped(tid: u32) -> bool {
    if tid == 0 {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{tid}/status")).is_ok_and(|s| stopping_in_status(&s))
}

fn bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

/// The decision on the text of `/proc/<tid>/status`: a signal pending for the thread or
/// the process, neither blocked nor ignored, that stops the program: one of `STOPPING`,
/// SIGKILL, or one not handled whose default action ends the program. A field that is
/// missing or not hex counts as no signal: never interrupt on a guess.
fn stopping_in_status(status: &str) -> bool {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    let (Some(thread), Some(shared), Some(blocked), Some(ignored), Some(caught)) =
        (field("SigPnd"), field("ShdPnd"), field("SigBlk"), field("SigIgn"), field("SigCgt"))
    else {
        return false;
    };
    let pending = (thread | shared) & !blocked & !ignored;
    let stopping = STOPPING.iter().fold(bit(libc::SIGKILL), |m, &s| m | bit(s));
    let harmless = HARMLESS_BY_DEFAULT.iter().fold(0, |m, &s| m | bit(s));
    pending & stopping != 0 || pending & !caught & !harmless != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(pnd: u64, shd: u64, blk: u64, ign: u64, cgt: u64) -> String {
        format!(
            "Name:\tcat\nState:\tS (sleeping)\nSigQ:\t0/96365\nSigPnd:\t{pnd:016x}\nShdPnd:\t{shd:016x}\nSigBlk:\t{blk:016x}\nSigIgn:\t{ign:016x}\nSigCgt:\t{cgt:016x}\n"
        )
    }

    #[test]
    fn only_a_signal_that_stops_the_program_interrupts() {
        let int = bit(libc::SIGINT);
        let kill = bit(libc::SIGKILL);
        let chld = bit(libc::SIGCHLD);
        let usr1 = bit(libc::SIGUSR1);
        let winch = bit(libc::SIGWINCH);
        let cases = [
            (status(0, 0, 0, 0, 0), false, "nothing pending"),
            (status(int, 0, 0, 0, 0), true, "thread's own pending SIGINT"),
            (status(0, int, 0, 0, int), true, "process-wide SIGINT, handled"),
            (status(0, bit(libc::SIGTERM), 0, 0, 0), true, "SIGTERM"),
            (status(0, bit(libc::SIGHUP), 0, 0, bit(libc::SIGHUP)), true, "SIGHUP, handled"),
            (status(0, bit(libc::SIGQUIT), 0, 0, 0), true, "SIGQUIT"),
            (status(0, kill, 0, 0, 0), true, "fatal signal"),
            (status(0, int, int, 0, 0), false, "blocked"),
            (status(0, int, 0, int, 0), false, "ignored"),
            (status(int, kill, int, 0, 0), true, "blocked one, fatal other"),
            (status(0, chld, 0, 0, chld), false, "SIGCHLD handled (make, shells)"),
            (status(0, chld, 0, 0, 0), false, "SIGCHLD not handled: ignored by default"),
            (status(winch, 0, 0, 0, winch), false, "SIGWINCH handled (a terminal resize)"),
            (status(0, bit(libc::SIGALRM), 0, 0, bit(libc::SIGALRM)), false, "SIGALRM handled"),
            (status(0, bit(libc::SIGPROF), 0, 0, bit(libc::SIGPROF)), false, "SIGPROF handled"),
            (status(0, bit(libc::SIGIO), 0, 0, bit(libc::SIGIO)), false, "SIGIO handled"),
            (status(0, bit(libc::SIGURG), 0, 0, 0), false, "SIGURG not handled: ignored by default"),
            (status(0, usr1, 0, 0, usr1), false, "SIGUSR1 handled"),
            (status(0, bit(libc::SIGUSR2), 0, 0, bit(libc::SIGUSR2)), false, "SIGUSR2 handled"),
            (status(0, bit(libc::SIGCONT), 0, 0, bit(libc::SIGCONT)), false, "SIGCONT handled"),
            (status(0, bit(libc::SIGTSTP), 0, 0, 0), false, "SIGTSTP (Ctrl-Z) stops, does not end"),
            (status(0, usr1, 0, 0, 0), true, "SIGUSR1 not handled: it ends the program"),
            (status(0, 1 << 40, 0, 0, 1 << 40), false, "a handled real-time signal"),
            ("Name:\tcat\nSigPnd:\t0000000000000002\n".to_string(), false, "fields missing"),
            (status(0, 0, 0, 0, 0).replace("SigPnd:\t0000000000000000", "SigPnd:\tzz"), false, "not hex"),
        ];
        for (text, want, why) in cases {
            assert_eq!(stopping_in_status(&text), want, "{why}");
        }
    }

    #[test]
    fn reads_a_live_thread() {
        // This thread has nothing pending; a thread that does not exist reads as none.
        let me = nix::unistd::gettid().as_raw() as u32;
        assert!(std::fs::metadata(format!("/proc/{me}/status")).is_ok());
        assert!(!being_stopped(me));
        assert!(!being_stopped(0));
        assert!(!being_stopped(u32::MAX));
    }
}
