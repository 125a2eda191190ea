//! The journal of changes made while the link was down (`--offline-cache`): an ordered
//! list of changes, each with the version of the file it started from, kept durably
//! beside the cache (`journal.redb`, and `journal/` for the content of files written) so
//! that it outlives the agent, until each change is replayed on the server.
//!
//! A file written while down is kept whole: its content file holds what the file is now,
//! and replaying it replaces the server's content as a whole. So writes to one file
//! merge by themselves, and a file made and removed while down leaves nothing.
//!
//! The journal has its own quota, apart from the cache's: nothing in it is ever evicted,
//! and a change it has no room for is refused (ENOSPC).
//!
//! Besides keeping changes, it says what they made of a path (`local`) and which names a
//! directory gained (`added_to`), following renames: that is what reads and listings
//! show while down, before the server has heard of any of it.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::blocks::private_dir;
use super::Version;

/// Sequence number → the change, as JSON.
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");

/// What a change costs the quota besides the content it keeps: its record.
const RECORD: u64 = 512;

/// A change made while the link was down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// `path`'s content is now content file `file`. `base` is the version it was made
    /// from, `None` for a file made while down.
    Content {
        path: String,
        base: Option<Version>,
        file: u64,
        mode: u32,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// `base`: the version removed (`None`: not a regular file).
    Remove {
        path: String,
        base: Option<Version>,
    },
    Rmdir {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Times {
        path: String,
        atime: u32,
        mtime: u32,
    },
}

/// What the changes made of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    File {
        file: u64,
        base: Option<Version>,
        mode: u32,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: String,
    },
    /// Removed, or moved away.
    Gone,
    /// Still the server's, under this name before the changes (renamed here), with
    /// what changed its mode or times.
    Server {
        was: String,
        mode: Option<u32>,
        times: Option<(u32, u32)>,
    },
}

/// What waits to be replayed, for `moor mount status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending {
    pub changes: u64,
    pub files: u64,
    pub bytes: u64,
}

pub struct Journal {
    db: Database,
    files: PathBuf,
    quota: u64,
    state: Mutex<State>,
}

/// The changes in order, and the content files they name.
struct State {
    changes: Vec<(u64, Change)>,
    next_seq: u64,
    next_file: u64,
    /// Content files by number: open, with their length.
    contents: HashMap<u64, (std::sync::Arc<File>, u64)>,
}

impl State {
    /// Bytes counted against the quota: the content files and a record per change.
    fn used(&self) -> u64 {
        self.contents.values().map(|(_, len)| len).sum::<u64>() + self.changes.len() as u64 * RECORD
    }
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("offline journal: {e}"))
}

fn no_room() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

/// Whether `path` is `base` or lies under it.
fn within(path: &str, base: &str) -> bool {
    let b = base.trim_end_matches('/');
    path == base || path.strip_prefix(b).is_some_and(|rest| rest.starts_with('/')) || b.is_empty()
}

/// `path` with its `from` prefix replaced by `to`, if it is within `from`.
fn moved(path: &str, from: &str, to: &str) -> Option<String> {
    if path == from {
        return Some(to.to_string());
    }
    let rest = path.strip_prefix(from.trim_end_matches('/'))?;
    rest.starts_with('/').then(|| format!("{}{rest}", to.trim_end_matches('/')))
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => "/",
    }
}

impl Change {
    /// The paths the change names.
    pub fn paths(&self) -> Vec<&str> {
        match self {
            Change::Rename { from, to } => vec![from, to],
            Change::Content { path, .. }
            | Change::Mkdir { path, .. }
            | Change::Symlink { path, .. }
            | Change::Remove { path, .. }
            | Change::Rmdir { path }
            | Change::Chmod { path, .. }
            | Change::Times { path, .. } => vec![path],
        }
    }

    fn file(&self) -> Option<u64> {
        match self {
            Change::Content { file, .. } => Some(*file),
            _ => None,
        }
    }

    /// Whether the change concerns `path`: names it, a directory above it, or
    /// something under it.
    fn touches(&self, path: &str) -> bool {
        self.paths().iter().any(|p| within(path, p) || within(p, path))
    }
}

impl Journal {
    /// Opens (or makes) the journal in `dir` with room for `quota` bytes. Content files
    /// no change names (left by a crash before their change was recorded) go.
    pub fn open(dir: &Path, quota: u64) -> io::Result<Journal> {
        private_dir(dir)?;
        let files = dir.join("journal");
        private_dir(&files)?;
        let db_path = dir.join("journal.redb");
        fs::OpenOptions::new().create(true).append(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(&db_path)?;
        let db = Database::create(&db_path).map_err(other)?;
        let changes = read_changes(&db)?;
        let named: std::collections::HashSet<u64> = changes.iter().filter_map(|(_, c)| c.file()).collect();
        let mut next_file = 0;
        let mut contents = HashMap::new();
        for entry in fs::read_dir(&files)? {
            let entry = entry?;
            let id = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok());
            match id {
                Some(id) if named.contains(&id) => {
                    next_file = next_file.max(id + 1);
                    let f = open_content(&entry.path(), false)?;
                    let len = f.metadata()?.len();
                    contents.insert(id, (std::sync::Arc::new(f), len));
                }
                _ => fs::remove_file(entry.path())?,
            }
        }
        let next_seq = changes.last().map_or(0, |(s, _)| s + 1);
        let state = State { changes, next_seq, next_file, contents };
        Ok(Journal { db, files, quota, state: Mutex::new(state) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    fn content_path(&self, id: u64) -> PathBuf {
        self.files.join(id.to_string())
    }

    /// A new, empty content file, durably named, not yet part of any change (one that
    /// none names by the next open goes).
    pub fn new_content(&self) -> io::Result<u64> {
        let id = {
            let mut s = self.lock();
            s.next_file += 1;
            s.next_file - 1
        };
        let f = open_content(&self.content_path(id), true)?;
        File::open(&self.files)?.sync_all()?;
        self.lock().contents.insert(id, (std::sync::Arc::new(f), 0));
        Ok(id)
    }

    fn content(&self, id: u64) -> io::Result<(std::sync::Arc<File>, u64)> {
        let s = self.lock();
        let (f, len) = s.contents.get(&id).ok_or_else(|| other(format!("no content file {id}")))?;
        Ok((f.clone(), *len))
    }

    /// Writes `data` at `offset` of content file `id`; ENOSPC past the quota.
    pub fn write(&self, id: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset.checked_add(data.len() as u64).ok_or_else(no_room)?;
        let f = {
            let mut s = self.lock();
            let used = s.used();
            let (f, len) = s.contents.get_mut(&id).ok_or_else(|| other(format!("no content file {id}")))?;
            if end > *len && used + (end - *len) > self.quota {
                return Err(no_room());
            }
            *len = (*len).max(end);
            f.clone()
        };
        f.write_all_at(data, offset)
    }

    /// Makes content file `id` `len` bytes long; ENOSPC past the quota.
    pub fn set_len(&self, id: u64, len: u64) -> io::Result<()> {
        let f = {
            let mut s = self.lock();
            let used = s.used();
            let (f, old) = s.contents.get_mut(&id).ok_or_else(|| other(format!("no content file {id}")))?;
            if len > *old && used + (len - *old) > self.quota {
                return Err(no_room());
            }
            *old = len;
            f.clone()
        };
        f.set_len(len)
    }

    /// Up to `len` bytes of content file `id` from `offset` (fewer at its end).
    pub fn read(&self, id: u64, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        let (f, size) = self.content(id)?;
        let n = size.saturating_sub(offset).min(u64::from(len)) as usize;
        let mut buf = vec![0; n];
        f.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// How long content file `id` is.
    pub fn len(&self, id: u64) -> io::Result<u64> {
        Ok(self.content(id)?.1)
    }

    /// When content file `id` was last written (Unix seconds).
    pub fn modified(&self, id: u64) -> Option<u32> {
        let m = self.content(id).ok()?.0.metadata().ok()?.modified().ok()?;
        Some(m.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as u32)
    }

    /// Puts what was written to content file `id` on disk.
    pub fn sync(&self, id: u64) -> io::Result<()> {
        self.content(id)?.0.sync_data()
    }

    /// Records `change` durably, after the changes before it. A removal of what was
    /// made while down cancels both; a removal of a file written while down drops its
    /// content. Returns once it is on disk.
    pub fn record(&self, change: Change) -> io::Result<()> {
        let mut s = self.lock();
        if s.used() + RECORD > self.quota {
            return Err(no_room());
        }
        let last = |path: &str| s.changes.iter().rposition(|(_, c)| c.touches(path));
        let mut dropped = Vec::new();
        let mut keep = Some(change.clone());
        match &change {
            // Written again, under this name or the one it had: the content file says
            // what it is, and goes to the server with the change that named it first
            // (renames carry it on).
            Change::Content { file, .. } if s.changes.iter().any(|(_, c)| c.file() == Some(*file)) => {
                return Ok(());
            }
            Change::Remove { path, .. } | Change::Rmdir { path } => {
                if let Some(i) = last(path) {
                    match &s.changes[i].1 {
                        Change::Content { path: p, base, .. } if p == path => {
                            dropped.push(i);
                            if base.is_none() {
                                keep = None;
                            } else {
                                keep = Some(Change::Remove { path: path.clone(), base: *base });
                            }
                        }
                        Change::Mkdir { path: p, .. } | Change::Symlink { path: p, .. } if p == path => {
                            dropped.push(i);
                            keep = None;
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        let seq = s.next_seq;
        let txn = self.db.begin_write().map_err(other)?;
        {
            let mut t = txn.open_table(CHANGES).map_err(other)?;
            for i in &dropped {
                t.remove(s.changes[*i].0).map_err(other)?;
            }
            if let Some(c) = &keep {
                let bytes = serde_json::to_vec(c).map_err(other)?;
                t.insert(seq, bytes.as_slice()).map_err(other)?;
            }
        }
        txn.commit().map_err(other)?;
        let gone: Vec<_> = dropped.iter().rev().map(|i| s.changes.remove(*i).1).collect();
        if let Some(c) = keep {
            s.changes.push((seq, c));
            s.next_seq += 1;
        }
        let files: Vec<_> = gone.iter().filter_map(Change::file).collect();
        for f in &files {
            s.contents.remove(f);
        }
        drop(s);
        for f in files {
            let _ = fs::remove_file(self.content_path(f));
        }
        Ok(())
    }

    /// Whether no change waits.
    pub fn is_empty(&self) -> bool {
        self.lock().changes.is_empty()
    }

    /// The changes waiting, in order.
    pub fn changes(&self) -> Vec<(u64, Change)> {
        self.lock().changes.clone()
    }

    /// Change `seq` is on the server: it goes, with its content file.
    pub fn replayed(&self, seq: u64) -> io::Result<()> {
        let txn = self.db.begin_write().map_err(other)?;
        txn.open_table(CHANGES).map_err(other)?.remove(seq).map_err(other)?;
        txn.commit().map_err(other)?;
        let mut s = self.lock();
        let file = s.changes.iter().position(|(n, _)| *n == seq).and_then(|i| s.changes.remove(i).1.file());
        if let Some(f) = file {
            s.contents.remove(&f);
        }
        drop(s);
        if let Some(f) = file {
            let _ = fs::remove_file(self.content_path(f));
        }
        Ok(())
    }

    /// What waits: changes, files written and their bytes.
    pub fn pending(&self) -> Pending {
        let s = self.lock();
        let mut p = Pending { changes: s.changes.len() as u64, ..Pending::default() };
        for f in s.changes.iter().filter_map(|(_, c)| c.file()) {
            p.files += 1;
            p.bytes += s.contents.get(&f).map_or(0, |(_, len)| *len);
        }
        p
    }

    /// What the changes made of `path`, if they touched it: they are read back from the
    /// newest, following renames to the name `path` had before each.
    pub fn local(&self, path: &str) -> Option<Local> {
        let s = self.lock();
        local_in(&s.changes, path)
    }

    /// Names the changes put in directory `dir` (made, or moved in), each with what it
    /// is now. Names moved out or removed are `Gone`.
    pub fn children(&self, dir: &str) -> Vec<(String, Local)> {
        let s = self.lock();
        let mut names = std::collections::BTreeSet::new();
        for (i, (_, c)) in s.changes.iter().enumerate() {
            for p in c.paths() {
                // Where that name is now, after the renames that followed.
                let mut now = p.to_string();
                for (_, later) in &s.changes[i + 1..] {
                    if let Change::Rename { from, to } = later {
                        if let Some(m) = moved(&now, from, to) {
                            now = m;
                        }
                    }
                }
                if parent(&now) == dir && now != dir {
                    names.insert(now);
                }
            }
        }
        names
            .into_iter()
            .filter_map(|p| {
                let l = local_in(&s.changes, &p)?;
                Some((p.rsplit('/').next().unwrap_or_default().to_string(), l))
            })
            .collect()
    }
}

/// What `changes` made of `path`, read back from the newest.
fn local_in(changes: &[(u64, Change)], path: &str) -> Option<Local> {
    let mut path = path.to_string();
    let mut mode = None;
    let mut times = None;
    let mut renamed = false;
    for (_, c) in changes.iter().rev() {
        match c {
            Change::Content { path: p, base, file, mode: m } if *p == path => {
                return Some(Local::File { file: *file, base: *base, mode: mode.unwrap_or(*m) })
            }
            Change::Mkdir { path: p, mode: m } if *p == path => return Some(Local::Dir { mode: mode.unwrap_or(*m) }),
            Change::Symlink { path: p, target } if *p == path => {
                return Some(Local::Symlink { target: target.clone() })
            }
            Change::Remove { path: p, .. } | Change::Rmdir { path: p } if within(&path, p) => return Some(Local::Gone),
            // Made while down, above it: holds only what the newer changes put there.
            Change::Mkdir { path: p, .. } | Change::Content { path: p, .. } | Change::Symlink { path: p, .. }
                if within(&path, p) =>
            {
                return Some(Local::Gone)
            }
            Change::Rename { from, to } => {
                if let Some(before) = moved(&path, to, from) {
                    path = before;
                    renamed = true;
                } else if within(&path, from) {
                    // Moved away, and nothing put here since.
                    return Some(Local::Gone);
                }
            }
            Change::Chmod { path: p, mode: m } if *p == path => {
                mode = mode.or(Some(*m));
            }
            Change::Times { path: p, atime, mtime } if *p == path => {
                times = times.or(Some((*atime, *mtime)));
            }
            _ => {}
        }
    }
    (renamed || mode.is_some() || times.is_some()).then_some(Local::Server { was: path, mode, times })
}

fn open_content(path: &Path, new: bool) -> io::Result<File> {
    fs::OpenOptions::new().read(true).write(true).create_new(new).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path)
}

fn read_changes(db: &Database) -> io::Result<Vec<(u64, Change)>> {
    let txn = db.begin_write().map_err(other)?;
    txn.open_table(CHANGES).map_err(other)?;
    txn.commit().map_err(other)?;
    let txn = db.begin_read().map_err(other)?;
    let t = txn.open_table(CHANGES).map_err(other)?;
    let mut out = Vec::new();
    for e in t.iter().map_err(other)? {
        let (k, v) = e.map_err(other)?;
        let change = serde_json::from_slice(v.value()).map_err(other)?;
        out.push((k.value(), change));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
