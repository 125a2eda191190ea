//! Whether the program behind a waiting call has been signalled (Ctrl-C), so the call
//! can end with EINTR.
//!
//! The kernel's own way, FUSE_INTERRUPT, never reaches us: fuser answers it with ENOSYS
//! itself, after which the kernel stops sending it. So a call that waits looks at its
//! caller instead: a signal that is pending and not blocked means the caller wants the
//! call back. A signal the program handles stays pending while the thread sleeps in the
//! call; one that would kill it shows as a pending SIGKILL. Either way EINTR lets the
//! kernel deliver it: the handler runs, or the program ends.

/// Whether thread `tid`'s status shows a signal pending that it does not block or ignore.
/// False when the thread cannot be read (gone, or another pid namespace).
pub fn signal_pending(tid: u32) -> bool {
    if tid == 0 {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{tid}/status")).is_ok_and(|s| pending_in_status(&s))
}

/// The decision on the text of `/proc/<tid>/status`: (thread's pending | process's
/// pending) and not blocked and not ignored. A field that is missing or not hex counts
/// as no signal: never interrupt on a guess.
fn pending_in_status(status: &str) -> bool {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    let (Some(thread), Some(shared), Some(blocked), Some(ignored)) =
        (field("SigPnd"), field("ShdPnd"), field("SigBlk"), field("SigIgn"))
    else {
        return false;
    };
    (thread | shared) & !blocked & !ignored != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(pnd: &str, shd: &str, blk: &str, ign: &str) -> String {
        format!(
            "Name:\tcat\nState:\tS (sleeping)\nSigQ:\t0/96365\nSigPnd:\t{pnd}\nShdPnd:\t{shd}\nSigBlk:\t{blk}\nSigIgn:\t{ign}\nSigCgt:\t0000000000000000\n"
        )
    }

    const NONE: &str = "0000000000000000";
    /// SIGINT is signal 2: bit 1.
    const SIGINT: &str = "0000000000000002";
    /// SIGKILL is signal 9: bit 8. A fatal signal shows as this.
    const SIGKILL: &str = "0000000000000100";

    #[test]
    fn explains_pending_signals() {
        let cases = [
            (status(NONE, NONE, NONE, NONE), false, "nothing pending"),
            (status(SIGINT, NONE, NONE, NONE), true, "thread's own pending SIGINT"),
            (status(NONE, SIGINT, NONE, NONE), true, "process-wide pending SIGINT"),
            (status(NONE, SIGKILL, NONE, NONE), true, "fatal signal"),
            (status(NONE, SIGINT, SIGINT, NONE), false, "blocked"),
            (status(NONE, SIGINT, NONE, SIGINT), false, "ignored"),
            (status(SIGINT, SIGKILL, SIGINT, NONE), true, "blocked one, fatal other"),
            ("Name:\tcat\nSigPnd:\t0000000000000002\n".to_string(), false, "fields missing"),
            (status("zz", NONE, NONE, NONE), false, "not hex"),
        ];
        for (text, want, why) in cases {
            assert_eq!(pending_in_status(&text), want, "{why}");
        }
    }

    #[test]
    fn reads_a_live_thread() {
        // This thread has nothing pending; a thread that does not exist reads as none.
        let me = nix::unistd::gettid().as_raw() as u32;
        assert!(std::fs::metadata(format!("/proc/{me}/status")).is_ok());
        assert!(!signal_pending(me));
        assert!(!signal_pending(0));
        assert!(!signal_pending(u32::MAX));
    }
}
