//! What the mount knows of an open file: the name it now has and the attributes it was
//! last known to have. A server handle dies with its connection, and SFTP has no other
//! way back to a file than its name. So after a reconnect a file is opened again by name
//! only where that name provably still leads to it: the name follows every rename and
//! removal made through the mount, and what the server then says of the file must match
//! what the mount last knew of it. Anything else (the name taken away through the mount,
//! the file renamed, replaced or changed on the server while the link was down) loses the
//! file for good: its requests fail, and nothing meant for it is written elsewhere.

use super::{Attr, SetAttr, S_IFMT};

#[derive(Debug, Clone)]
pub(super) struct KnownFile {
    /// The file's name now; `None` once a removal or a replacement through the mount
    /// took the name away from it.
    path: Option<String>,
    /// The file's attributes as last known: at open, then changed as the mount changed
    /// them. `None` when the server did not say at open.
    attr: Option<Attr>,
    /// The mount changed the file's data since `attr` was true, or sent a change that may
    /// have landed: its size is `attr.size` or more (see `sent_end`), and its mtime may
    /// have moved on.
    changed: bool,
    /// The furthest end of writes sent since: the ones not yet answered may or may not
    /// have landed.
    sent_end: u64,
}

impl KnownFile {
    pub fn new(path: &str, attr: Option<Attr>) -> KnownFile {
        KnownFile { path: Some(path.to_string()), attr, changed: false, sent_end: attr.map_or(0, |a| a.size) }
    }

    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// `from` was renamed to `to` through the mount: a file at or under `from` moves
    /// with it; a file at `to` lost its name to the one moved there.
    pub fn renamed(&mut self, from: &str, to: &str) {
        let Some(path) = &self.path else { return };
        if from == to {
            return;
        }
        if let Some(moved) = moved(path, from, to) {
            self.path = Some(moved);
        } else if under(path, to).is_some() {
            self.path = None;
        }
    }

    /// A rename onto `to` may have landed (its answer was lost): a file at or under `to`
    /// may have lost its name to the one moved there, which nothing can tell from it
    /// by attributes alone.
    pub fn maybe_renamed_onto(&mut self, to: &str) {
        if self.path.as_deref().is_some_and(|p| under(p, to).is_some()) {
            self.path = None;
        }
    }

    /// `path` was removed through the mount.
    pub fn removed(&mut self, path: &str) {
        if self.path.as_deref() == Some(path) {
            self.path = None;
        }
    }

    /// A write ending at `end` is on its way: from now on it may have landed, whether
    /// its answer comes or is lost with the connection.
    pub fn sending(&mut self, end: u64) {
        self.changed = true;
        self.sent_end = self.sent_end.max(end);
    }

    /// A write ending at `end` landed.
    pub fn written(&mut self, end: u64) {
        if let Some(a) = &mut self.attr {
            a.size = a.size.max(end);
        }
        self.sending(end);
    }

    /// The mount changed the file's attributes as `set` says.
    pub fn set(&mut self, set: &SetAttr) {
        let Some(a) = &mut self.attr else { return };
        if let Some(size) = set.size {
            a.size = size;
            self.sent_end = size;
            // The server moves mtime on a truncate.
            self.changed = true;
        }
        if let Some(mode) = set.mode {
            a.mode = (a.mode & S_IFMT) | (mode & 0o7777);
        }
        a.uid = set.uid.unwrap_or(a.uid);
        a.gid = set.gid.unwrap_or(a.gid);
        if let Some((atime, mtime)) = set.times {
            a.atime = atime;
            a.mtime = mtime;
            self.changed = false;
        }
    }

    /// What the server says is the file at `path()` now: whether it is this file as far
    /// as SFTP can tell (no inode numbers: type, mode, owners, size and mtime). A file
    /// known nothing of is never taken for itself.
    pub fn same_file(&self, now: &Attr) -> bool {
        let Some(was) = &self.attr else { return false };
        let size_fits = now.size >= was.size && now.size <= was.size.max(self.sent_end);
        let mtime_fits = if self.changed { now.mtime >= was.mtime } else { now.mtime == was.mtime };
        now.mode == was.mode && now.uid == was.uid && now.gid == was.gid && size_fits && mtime_fits
    }
}

/// Where `path` is after `from` was renamed to `to`, if it moved: it is `from` or lies
/// under it.
pub fn moved(path: &str, from: &str, to: &str) -> Option<String> {
    under(path, from).map(|rest| format!("{to}{rest}"))
}

/// What follows `dir` in `path` when `path` is `dir` or lies under it.
fn under<'a>(path: &'a str, dir: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(dir)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, mtime: u32) -> Attr {
        Attr { size, mode: 0o100644, uid: 1000, gid: 1000, atime: mtime, mtime }
    }

    #[test]
    fn the_name_follows_renames_and_removals() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>, &'a str);
        let cases: [Case; 8] = [
            ("/a/app.log", &[("/a/app.log", "/a/app.log.1")], Some("/a/app.log.1"), "logrotate"),
            ("/a/app.log", &[("/a", "/b")], Some("/b/app.log"), "its directory renamed"),
            ("/a/app.log", &[("/a/app", "/a/x")], Some("/a/app.log"), "a name that only starts the same"),
            ("/a/f", &[("/a/g", "/a/f")], None, "replaced by a rename onto its name"),
            ("/a/f", &[("/a/f", "/a/f")], Some("/a/f"), "renamed onto itself"),
            ("/a/f", &[("/a/f", "/a/g"), ("/a/g", "/a/f")], Some("/a/f"), "and back"),
            ("/a/f", &[("/a/f", "/a/.f.aside"), ("/a/g", "/a/f")], Some("/a/.f.aside"), "moved aside"),
            ("/ab", &[("/a", "/x")], Some("/ab"), "a sibling that only starts the same"),
        ];
        for (start, renames, want, why) in cases {
            let mut k = KnownFile::new(start, None);
            for (from, to) in renames {
                k.renamed(from, to);
            }
            assert_eq!(k.path(), want, "{why}");
        }
        let mut k = KnownFile::new("/a/f", None);
        k.removed("/a/g");
        assert_eq!(k.path(), Some("/a/f"), "another file removed");
        k.removed("/a/f");
        assert_eq!(k.path(), None, "removed");
        k.renamed("/a/f", "/a/g");
        assert_eq!(k.path(), None, "a lost name stays lost");
    }

    #[test]
    fn a_rename_that_may_have_landed_takes_the_target_name_away() {
        let cases = [
            ("/a/f", "/a/f", None, "at the target"),
            ("/a/d/f", "/a/d", None, "under the target"),
            ("/a/g", "/a/f", Some("/a/g"), "elsewhere: the source keeps its name, which a new file there takes away"),
            ("/a/ff", "/a/f", Some("/a/ff"), "a name that only starts the same"),
        ];
        for (start, to, want, why) in cases {
            let mut k = KnownFile::new(start, None);
            k.maybe_renamed_onto(to);
            assert_eq!(k.path(), want, "{why}");
        }
    }

    #[test]
    fn the_file_is_recognised_only_by_matching_attributes() {
        let k = KnownFile::new("/f", Some(file(10, 100)));
        let mut written = k.clone();
        written.sending(30);
        written.written(20);
        let mut unanswered = k.clone();
        unanswered.sending(15);
        let mut chmodded = k.clone();
        chmodded.set(&SetAttr { mode: Some(0o600), ..SetAttr::default() });
        let mut truncated = written.clone();
        truncated.set(&SetAttr { size: Some(5), ..SetAttr::default() });
        let mut touched = written.clone();
        touched.set(&SetAttr { times: Some((7, 90)), ..SetAttr::default() });
        let cases = [
            (&k, file(10, 100), true, "unchanged"),
            (&k, file(11, 100), false, "grew on the server"),
            (&k, file(10, 101), false, "changed on the server"),
            (&k, Attr { uid: 0, ..file(10, 100) }, false, "another owner"),
            (&k, Attr { mode: 0o100600, ..file(10, 100) }, false, "another mode"),
            (&k, Attr { mode: 0o040644, ..file(10, 100) }, false, "a directory now"),
            (&written, file(20, 105), true, "our writes landed"),
            (&written, file(30, 105), true, "a write out at the cut landed too"),
            (&written, file(31, 105), false, "longer than anything we sent"),
            (&written, file(19, 105), false, "shorter than what landed"),
            (&written, file(20, 99), false, "older than the file we had"),
            (&written, file(4, 200), false, "logrotate's new file"),
            (&unanswered, file(15, 101), true, "a write whose answer was lost landed"),
            (&unanswered, file(10, 101), true, "or did not, the clock having moved on"),
            (&unanswered, file(16, 101), false, "longer than that write"),
            (&chmodded, Attr { mode: 0o100600, ..file(10, 100) }, true, "our chmod"),
            (&chmodded, file(10, 100), false, "our chmod undone by someone"),
            (&truncated, file(5, 200), true, "our truncate"),
            (&truncated, file(20, 200), false, "the truncate lost"),
            (&touched, Attr { atime: 7, ..file(20, 90) }, true, "our utimes"),
            (&touched, file(20, 91), false, "written after our utimes"),
        ];
        for (known, now, want, why) in cases {
            assert_eq!(known.same_file(&now), want, "{why}");
        }
        assert!(!KnownFile::new("/f", None).same_file(&file(10, 100)), "nothing known: never the same");
    }
}
