//! The offline cache: what was read through a mount, kept on local disk so that it stays
//! readable while the link is down (`--offline-cache SIZE`). It owns its directory: the
//! block files (`blocks`) and the index (`index.redb`), which maps a file's version and
//! block number to its block, keeps the blocks in order of last use, and counts what the
//! directory holds.
//!
//! Content is kept per version of a file (its size and mtime on the server): a version
//! the server no longer has is never asked for again, and ages out. The bound is kept on
//! every insert, by evicting the least recently used blocks first, never by polling; a
//! block larger than the whole cache is not kept. Opening takes constant time, whatever
//! the cache holds.
//!
//! Beside the blocks, the index keeps facts by path (`Fact`): what a stat, a listing or
//! a symlink said, as bytes its user encodes. They live in the index file, whose size
//! counts against the limit; they are not kept while the index takes over a quarter of it.
//!
//! One writer thread writes every block file and makes every change to the index, a
//! batch of them per commit, so that a program reading through the mount never waits for
//! the disk, and what the cache fills with is dropped rather than queued without bound
//! when the disk is slower than the link.
//!
//! Crash safety: a block file is written whole in `tmp/`, its index entry committed
//! (fsync), and only then the file renamed into place; the file of a block evicted or
//! replaced is removed before the commit that drops its entry. So no block file is ever
//! left that no entry names, and an entry whose file is gone is a miss. A checksum in the
//! index is checked on every read: a block torn by a power loss is never served.

mod blocks;
pub mod journal;

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use blocks::{checksum, private_dir, BlockFiles, DIRECTORIES};

/// A version of a file as the server describes it; content is kept per version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Version {
    pub size: u64,
    pub mtime: u64,
}

/// What the cache holds and how it has served, for `moor mount status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes the directory holds: blocks as the filesystem stores them, and the index.
    pub bytes: u64,
    pub limit: u64,
    /// Files whose first block is held.
    pub files: u64,
    pub hits: u64,
    pub misses: u64,
}

/// A block's key: (path, size, mtime, block number).
type Key<'a> = (&'a str, u64, u64, u64);
/// A block's entry: (block file, length, checksum, last use).
type Indexed = (u64, u64, u32, u64);

/// Key → entry.
const BLOCKS: TableDefinition<Key<'static>, Indexed> = TableDefinition::new("blocks");
/// (last use, block file) → the block's key: the blocks in order of last use.
const RECENCY: TableDefinition<(u64, u64), Key<'static>> = TableDefinition::new("recency");
/// (path, fact) → what its user said of the path.
const FACTS: TableDefinition<(&str, u8), &[u8]> = TableDefinition::new("facts");
/// Counters: `BYTES`, `FILES`, `NEXT_ID`, `TICK`.
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const BYTES: &str = "bytes";
const FILES: &str = "files";
const NEXT_ID: &str = "next_id";
const TICK: &str = "tick";

/// Changes a cache may do without (blocks, facts learnt, uses) waiting for the writer;
/// more are dropped. Unlearnings, a clear and a flush are never dropped.
const QUEUED: usize = 4096;
/// Bytes of blocks waiting for the writer; more are dropped.
const QUEUED_BYTES: u64 = 32 << 20;
/// How long the writer gathers changes after the first before it commits them: a commit
/// costs the disk a flush, and every commit the writer's time. It sleeps meanwhile
/// rather than wake for each change: on a busy machine a thread woken per change of a
/// burst (an `rm -rf`) takes the core the mount's next call needs.
const GATHER: std::time::Duration = std::time::Duration::from_millis(100);
/// Changes made in one commit at most: a durable commit costs a flush of the disk, so
/// a burst of changes (a tree removed) takes few.
const BATCH: usize = 1024;
/// What a file costs on disk: whole filesystem blocks.
const DISK_BLOCK: u64 = 4096;

fn on_disk(len: u64) -> u64 {
    len.div_ceil(DISK_BLOCK) * DISK_BLOCK
}

/// What a fact of a path is about; its bytes are its user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fact {
    /// The path's attributes, as a stat said.
    Attr = 0,
    /// A directory's complete listing.
    Listing = 1,
    /// A symlink's target.
    Target = 2,
    /// The canonical form of a path the mount was asked for.
    Canonical = 3,
    /// The path's attributes as a stat that follows symlinks said.
    Followed = 4,
}

/// Which facts `unlearn` drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Facts {
    /// One fact of the path.
    One(Fact),
    /// Every fact of the path and of everything under it.
    Tree,
}

/// A key that can travel to the writer.
type OwnedKey = (String, u64, u64, u64);

fn key(path: &str, v: Version, index: u64) -> Key<'_> {
    (path, v.size, v.mtime, index)
}

fn borrowed(k: &OwnedKey) -> Key<'_> {
    (&k.0, k.1, k.2, k.3)
}

/// A change for the writer.
enum Change {
    /// `data` is the block at `key`.
    Put { key: OwnedKey, data: Bytes },
    /// The block at `key`, file `id`, was read.
    Touch { key: OwnedKey, id: u64 },
    /// The entry at this key goes (its block file was torn or missing).
    Drop(OwnedKey),
    /// Every block of this path, of any version, goes.
    Forget(String),
    /// Everything goes.
    Clear,
    /// A fact of a path, learnt.
    Learn { path: String, fact: Fact, value: Vec<u8> },
    /// The unlearning of this number waits in `Shared::pending`: applied here, in order
    /// with what was learnt before and after it.
    Unlearnt(u64),
    /// Answered once what came before is committed.
    Flush(SyncSender<()>),
}

impl Change {
    /// Whether the cache may do without it: an unlearning must be applied in its place
    /// among the facts learnt, and someone waits for a clear or a flush.
    fn droppable(&self) -> bool {
        !matches!(self, Change::Unlearnt(_) | Change::Clear | Change::Flush(_))
    }
}

/// What the reader side and the writer share.
struct Shared {
    db: Database,
    db_path: PathBuf,
    files: BlockFiles,
    limit: u64,
    /// Bytes of the blocks given to the writer and not yet written.
    queued_bytes: AtomicU64,
    /// Changes that may be dropped, given to the writer and not yet taken.
    queued: AtomicUsize,
    /// Unlearnings sent and not yet committed, by number: what they drop is already
    /// false, and `recall` must not find it meanwhile. Never more than the mount's
    /// changes of the last commits: the writer takes them all at each.
    pending: std::sync::Mutex<BTreeMap<u64, (String, Facts)>>,
    next_unlearning: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

pub struct OfflineCache {
    shared: Arc<Shared>,
    changes: Option<Sender<Change>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// The directory of the cache of `root` on `destination` under `base`: one per
/// destination and remote path, named so a person can tell which.
pub fn dir_for(base: &Path, destination: &str, root: &str) -> PathBuf {
    let mut name = String::new();
    for c in format!("{destination}:{root}").chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' | '@' | ':' => name.push(c),
            '/' => name.push('+'),
            c => name.push_str(&format!("%{:02x}", c as u32)),
        }
    }
    // A name too long for the filesystem keeps its start and a checksum of the whole
    // (all ASCII by now, so any byte is a character's end).
    if name.len() > 200 {
        let sum = checksum(name.as_bytes());
        name = format!("{}~{sum:08x}", &name[..190]);
    }
    base.join(name)
}

fn counter(t: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64, redb::Error> {
    Ok(t.get(name)?.map_or(0, |v| v.value()))
}

fn other(e: redb::Error) -> io::Error {
    io::Error::other(format!("offline cache index: {e}"))
}

impl OfflineCache {
    /// Opens (or makes) the cache in `dir`, holding at most `limit` bytes. Constant
    /// work, whatever the cache holds.
    pub fn open(dir: &Path, limit: u64) -> io::Result<OfflineCache> {
        private_dir(dir)?;
        let db_path = dir.join("index.redb");
        // Made private before redb sees it: an empty file becomes a new index.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&db_path)?;
        let db = Database::create(&db_path).map_err(|e| other(e.into()))?;
        let files = BlockFiles::open(dir)?;
        // Blocks written but never committed by an earlier run.
        files.clear_temp()?;
        let (next_id, tick) = first_numbers(&db).map_err(other)?;
        let shared = Arc::new(Shared {
            db,
            db_path,
            files,
            limit,
            queued_bytes: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            pending: std::sync::Mutex::default(),
            next_unlearning: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        });
        let (changes, queue) = channel();
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("moor-cache".into())
                .spawn(move || write_changes(&shared, &queue, next_id, tick))?
        };
        Ok(OfflineCache { shared, changes: Some(changes), writer: Some(writer) })
    }

    /// Whether `dir` holds a cache an earlier run made.
    pub fn exists(dir: &Path) -> bool {
        dir.join("index.redb").metadata().is_ok_and(|m| m.len() > 0)
    }

    /// Gives `change` to the writer; false when it was dropped (the writer is behind).
    fn send(&self, change: Change) -> bool {
        let queued = &self.shared.queued;
        let droppable = change.droppable();
        if droppable && queued.fetch_add(1, Ordering::SeqCst) >= QUEUED {
            queued.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        let sent = self.changes.as_ref().is_some_and(|c| c.send(change).is_ok());
        if droppable && !sent {
            queued.fetch_sub(1, Ordering::SeqCst);
        }
        sent
    }

    /// Ends the writer's wait for more changes: someone waits for the commit.
    fn hurry(&self) {
        if let Some(w) = &self.writer {
            w.thread().unpark();
        }
    }

    /// Keeps block `index` of `path` at `version` (evicting the least recently used
    /// blocks to stay within the limit, when the writer commits it). False when it is
    /// not kept: larger than the whole cache, or the writer is behind.
    pub fn put(&self, path: &str, version: Version, index: u64, data: Bytes) -> bool {
        let s = &self.shared;
        let len = data.len() as u64;
        if on_disk(len) > s.block_budget() {
            return false;
        }
        if s.queued_bytes.fetch_add(len, Ordering::SeqCst) + len > QUEUED_BYTES {
            s.queued_bytes.fetch_sub(len, Ordering::SeqCst);
            return false;
        }
        let k = key(path, version, index);
        if !self.send(Change::Put { key: (k.0.to_string(), k.1, k.2, k.3), data }) {
            s.queued_bytes.fetch_sub(len, Ordering::SeqCst);
            return false;
        }
        if s.queued_bytes.load(Ordering::SeqCst) > QUEUED_BYTES / 4 {
            // A fast read: commit now rather than drop what follows.
            self.hurry();
        }
        true
    }

    /// Keeps what `fact` of `path` is, in place of what it was. False when it is not
    /// kept: the index takes too much of the limit, or the writer is behind.
    pub fn learn(&self, path: &str, fact: Fact, value: Vec<u8>) -> bool {
        if 4 * self.shared.index_size() > self.shared.limit {
            return false;
        }
        self.send(Change::Learn { path: path.to_string(), fact, value })
    }

    /// What `fact` of `path` was, when last learnt (and not unlearnt since).
    pub fn recall(&self, path: &str, fact: Fact) -> Option<Vec<u8>> {
        if self.shared.unlearning(path, fact) {
            return None;
        }
        let txn = self.shared.db.begin_read().ok()?;
        let facts = txn.open_table(FACTS).ok()?;
        let found = facts.get((path, fact as u8)).ok()??.value().to_vec();
        Some(found)
    }

    /// Drops `facts` of `path`: what was learnt of them is no longer true. Never waits:
    /// it is false from now on (`recall` sees the unlearnings not yet committed), and the
    /// writer's next commit, whatever brings it, applies every one waiting.
    pub fn unlearn(&self, path: &str, facts: Facts) {
        if self.changes.is_none() {
            return;
        }
        let s = &self.shared;
        let seq = s.next_unlearning.fetch_add(1, Ordering::SeqCst);
        lock_pending(s).insert(seq, (path.to_string(), facts));
        self.send(Change::Unlearnt(seq));
    }

    /// Whether block `index` of `path` at `version` is held (not checked, not counted).
    pub fn holds(&self, path: &str, version: Version, index: u64) -> bool {
        self.shared.entry(key(path, version, index)).ok().flatten().is_some()
    }

    /// Block `index` of `path` at `version`, if held and intact.
    pub fn get(&self, path: &str, version: Version, index: u64) -> Option<Vec<u8>> {
        let s = &self.shared;
        let k = key(path, version, index);
        let found = s.entry(k).ok().flatten();
        let data = found.and_then(|(id, len, crc)| s.files.read(id, len, crc));
        let owned = (k.0.to_string(), k.1, k.2, k.3);
        match (found, data) {
            (Some((id, _, _)), Some(data)) => {
                s.hits.fetch_add(1, Ordering::Relaxed);
                self.send(Change::Touch { key: owned, id });
                Some(data)
            }
            (found, _) => {
                s.misses.fetch_add(1, Ordering::Relaxed);
                if found.is_some() {
                    // Gone or torn: the entry goes, and the bytes it counted.
                    self.send(Change::Drop(owned));
                }
                None
            }
        }
    }

    /// Waits until every change sent so far is committed.
    pub fn flush(&self) {
        let (done, wait) = sync_channel(1);
        if self.send(Change::Flush(done)) {
            self.hurry();
            let _ = wait.recv();
        }
    }

    /// Drops every block of `path`, of any version.
    pub fn forget(&self, path: &str) {
        // Blocks are kept by version: those forgotten or not age out alike.
        self.send(Change::Forget(path.to_string()));
    }

    /// Empties the cache; returns once it is empty.
    pub fn clear(&self) {
        self.send(Change::Clear);
        self.flush();
    }

    /// What the cache holds and how it has served.
    pub fn usage(&self) -> Usage {
        let s = &self.shared;
        let counted = || -> Result<(u64, u64), redb::Error> {
            let txn = s.db.begin_read()?;
            let t = txn.open_table(COUNTERS)?;
            Ok((counter(&t, BYTES)?, counter(&t, FILES)?))
        };
        let (bytes, files) = counted().unwrap_or_default();
        Usage {
            bytes: bytes + s.index_size() + DIRECTORIES,
            limit: s.limit,
            files,
            hits: s.hits.load(Ordering::Relaxed),
            misses: s.misses.load(Ordering::Relaxed),
        }
    }
}

impl Drop for OfflineCache {
    /// Commits what is queued, then lets the writer end.
    fn drop(&mut self) {
        self.changes = None;
        self.hurry();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// The next block number and use from the index as last committed.
fn first_numbers(db: &Database) -> Result<(u64, u64), redb::Error> {
    let txn = db.begin_write()?;
    let numbers = {
        let t = txn.open_table(COUNTERS)?;
        (counter(&t, NEXT_ID)?, counter(&t, TICK)?)
    };
    txn.open_table(BLOCKS)?;
    txn.open_table(RECENCY)?;
    txn.open_table(FACTS)?;
    txn.commit()?;
    Ok(numbers)
}

fn lock_pending(s: &Shared) -> std::sync::MutexGuard<'_, BTreeMap<u64, (String, Facts)>> {
    s.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether unlearning `facts` of `unlearnt` drops `fact` of `path`.
fn drops(unlearnt: &str, facts: Facts, path: &str, fact: Fact) -> bool {
    match facts {
        Facts::One(f) => f == fact && unlearnt == path,
        Facts::Tree => {
            let base = unlearnt.trim_end_matches('/');
            path == unlearnt || path.strip_prefix(base).is_some_and(|rest| rest.starts_with('/'))
        }
    }
}

impl Shared {
    /// Whether an unlearning not yet committed drops `fact` of `path`.
    fn unlearning(&self, path: &str, fact: Fact) -> bool {
        lock_pending(self).values().any(|(p, facts)| drops(p, *facts, path, fact))
    }

    fn index_size(&self) -> u64 {
        std::fs::metadata(&self.db_path).map_or(0, |m| m.len())
    }

    /// Room for blocks: the limit less the directories and twice the index's size,
    /// since its file grows by doubling.
    fn block_budget(&self) -> u64 {
        self.limit.saturating_sub(2 * self.index_size() + DIRECTORIES)
    }

    fn entry(&self, k: Key<'_>) -> Result<Option<(u64, u64, u32)>, redb::Error> {
        let txn = self.db.begin_read()?;
        let blocks = txn.open_table(BLOCKS)?;
        let found = blocks.get(k)?.map(|v| v.value());
        Ok(found.map(|(id, len, crc, _)| (id, len, crc)))
    }
}

/// The writer: writes the blocks and commits the changes that come, a batch at a time,
/// until the cache is dropped.
fn write_changes(s: &Shared, queue: &Receiver<Change>, mut next_id: u64, mut tick: u64) {
    // Unlearnings of a batch whose commit failed: first in the next one.
    let mut again = Vec::new();
    while let Ok(first) = queue.recv() {
        let mut batch: Vec<_> = std::mem::take(&mut again);
        batch.extend(gather(first, queue));
        let taken = batch.iter().filter(|c| c.droppable()).count();
        s.queued.fetch_sub(taken, Ordering::SeqCst);
        let unlearnings: Vec<_> =
            batch.iter().filter_map(|c| if let Change::Unlearnt(n) = c { Some(*n) } else { None }).collect();
        let mut flushed = Vec::new();
        let mut published = Vec::new();
        let numbers = (next_id, tick);
        match commit(s, batch, &mut next_id, &mut tick, &mut flushed, &mut published) {
            Ok(()) => {
                for id in published {
                    if let Err(e) = s.files.publish(id) {
                        tracing::debug!(error = %e, "cannot publish an offline cache block");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the offline cache could not record what it read");
                for id in published {
                    s.files.remove(id);
                }
                // Numbers of blocks never published may be given out again.
                (next_id, tick) = numbers;
                again = unlearnings.into_iter().map(Change::Unlearnt).collect();
            }
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

/// A batch to commit: `first` and what follows it within `GATHER` (at once when someone
/// waits for the commit, `OfflineCache::hurry`): a burst of changes, one commit.
fn gather(first: Change, queue: &Receiver<Change>) -> Vec<Change> {
    let until = std::time::Instant::now() + GATHER;
    let mut batch = vec![first];
    while batch.len() < BATCH && !matches!(batch.last(), Some(Change::Flush(_))) {
        match queue.try_recv() {
            Ok(change) => batch.push(change),
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::park_timeout(left);
            }
        }
    }
    batch
}

/// Applies `batch` in one durable commit. Files of dropped entries
/// go before the commit; the blocks put are written in `tmp/` before it and published
/// after it (`published`).
fn commit(
    s: &Shared,
    batch: Vec<Change>,
    next_id: &mut u64,
    tick: &mut u64,
    flushed: &mut Vec<SyncSender<()>>,
    published: &mut Vec<u64>,
) -> Result<(), redb::Error> {
    if batch.iter().all(|c| matches!(c, Change::Flush(_))) {
        flushed.extend(batch.into_iter().filter_map(|c| if let Change::Flush(done) = c { Some(done) } else { None }));
        return Ok(());
    }
    // Every commit is durable: a block's entry must be on disk before its file is
    // published, and commits that are not let the index grow until one is.
    let txn = s.db.begin_write()?;
    let mut unlearnt = Vec::new();
    {
        let mut t = Tables {
            blocks: txn.open_table(BLOCKS)?,
            recency: txn.open_table(RECENCY)?,
            counters: txn.open_table(COUNTERS)?,
            facts: txn.open_table(FACTS)?,
            bytes: 0,
            files: 0,
            gone: Vec::new(),
        };
        t.bytes = counter(&t.counters, BYTES)?;
        t.files = counter(&t.counters, FILES)?;
        for change in batch {
            match change {
                Change::Put { key, data } => {
                    s.queued_bytes.fetch_sub(data.len() as u64, Ordering::SeqCst);
                    let id = *next_id;
                    *next_id += 1;
                    *tick += 1;
                    let entry = (id, data.len() as u64, checksum(&data), *tick);
                    t.put(borrowed(&key), entry, s.block_budget())?;
                    // What it evicted leaves the disk before it comes: the directory
                    // stays within the limit but for the block being written.
                    for gone in t.gone.drain(..) {
                        s.files.remove(gone);
                    }
                    if let Err(e) = s.files.write_temp(id, &data) {
                        tracing::debug!(error = %e, "cannot write an offline cache block");
                        s.files.remove(id);
                        t.drop_block(borrowed(&key))?;
                        t.gone.clear();
                        continue;
                    }
                    published.push(id);
                }
                Change::Touch { key, id } => {
                    *tick += 1;
                    t.touch(borrowed(&key), id, *tick)?;
                }
                Change::Drop(key) => t.drop_block(borrowed(&key))?,
                Change::Forget(path) => t.forget(&path)?,
                Change::Clear => t.clear()?,
                Change::Learn { path, fact, value } => {
                    t.facts.insert((path.as_str(), fact as u8), value.as_slice())?;
                }
                Change::Unlearnt(seq) => {
                    let waiting = lock_pending(s).get(&seq).cloned();
                    if let Some((path, facts)) = waiting {
                        t.unlearn(&path, facts)?;
                        unlearnt.push(seq);
                    }
                }
                Change::Flush(done) => flushed.push(done),
            }
        }
        for id in &t.gone {
            s.files.remove(*id);
        }
        t.counters.insert(BYTES, t.bytes)?;
        t.counters.insert(FILES, t.files)?;
        t.counters.insert(NEXT_ID, *next_id)?;
        t.counters.insert(TICK, *tick)?;
    }
    txn.commit()?;
    if !unlearnt.is_empty() {
        let mut pending = lock_pending(s);
        for seq in unlearnt {
            pending.remove(&seq);
        }
    }
    Ok(())
}

/// The index's tables in one commit, with its running counts and the block files whose
/// entries it dropped.
struct Tables<'t> {
    blocks: redb::Table<'t, Key<'static>, Indexed>,
    recency: redb::Table<'t, (u64, u64), Key<'static>>,
    counters: redb::Table<'t, &'static str, u64>,
    facts: redb::Table<'t, (&'static str, u8), &'static [u8]>,
    bytes: u64,
    files: u64,
    gone: Vec<u64>,
}

impl Tables<'_> {
    /// Drops the entry at `k`, if any, counting it.
    fn drop_block(&mut self, k: Key<'_>) -> Result<(), redb::Error> {
        let old = self.blocks.remove(k)?.map(|v| v.value());
        if let Some((id, len, _, tick)) = old {
            self.recency.remove((tick, id))?;
            self.bytes = self.bytes.saturating_sub(on_disk(len));
            self.files = self.files.saturating_sub(u64::from(k.3 == 0));
            self.gone.push(id);
        }
        Ok(())
    }

    /// Enters block `k` as `entry`, evicting the least recently used first to stay
    /// within `budget`.
    fn put(&mut self, k: Key<'_>, entry: Indexed, budget: u64) -> Result<(), redb::Error> {
        let (id, len, _, tick) = entry;
        self.drop_block(k)?;
        while self.bytes + on_disk(len) > budget {
            let oldest = self.recency.first()?.map(|(_, v)| {
                let (p, s, m, i) = v.value();
                (p.to_string(), s, m, i)
            });
            let Some(oldest) = oldest else { break };
            self.drop_block(borrowed(&oldest))?;
        }
        self.blocks.insert(k, entry)?;
        self.recency.insert((tick, id), k)?;
        self.bytes += on_disk(len);
        self.files += u64::from(k.3 == 0);
        Ok(())
    }

    /// Marks block `k`, file `id`, used at `tick`, if it is still that block.
    fn touch(&mut self, k: Key<'_>, id: u64, tick: u64) -> Result<(), redb::Error> {
        let Some((now_id, len, crc, was)) = self.blocks.get(k)?.map(|v| v.value()) else { return Ok(()) };
        if now_id != id {
            return Ok(());
        }
        self.blocks.insert(k, (id, len, crc, tick))?;
        self.recency.remove((was, id))?;
        self.recency.insert((tick, id), k)?;
        Ok(())
    }

    /// Drops every block of `path`: the keys sort by path first, so they are one range.
    fn forget(&mut self, path: &str) -> Result<(), redb::Error> {
        let first: Key<'_> = (path, 0, 0, 0);
        let last: Key<'_> = (path, u64::MAX, u64::MAX, u64::MAX);
        let picked = self.keys(self.blocks.range(first..=last)?)?;
        self.drop_all(picked)
    }

    /// Drops every block and every fact.
    fn clear(&mut self) -> Result<(), redb::Error> {
        let picked = self.keys(self.blocks.iter()?)?;
        self.facts.retain(|_, _| false)?;
        self.drop_all(picked)
    }

    /// Drops `facts` of `path`. The keys sort by path first: a path's facts are one
    /// range, and so are those of everything under it (`path/` up to `path0`, the
    /// character after `/`).
    fn unlearn(&mut self, path: &str, facts: Facts) -> Result<(), redb::Error> {
        match facts {
            Facts::One(fact) => {
                self.facts.remove((path, fact as u8))?;
            }
            Facts::Tree => {
                self.facts.retain_in((path, 0u8)..=(path, u8::MAX), |_, _| false)?;
                let base = path.trim_end_matches('/');
                let (below, past) = (format!("{base}/"), format!("{base}0"));
                self.facts.retain_in((below.as_str(), 0u8)..(past.as_str(), 0u8), |_, _| false)?;
            }
        }
        Ok(())
    }

    fn keys(&self, range: redb::Range<'_, Key<'static>, Indexed>) -> Result<Vec<OwnedKey>, redb::Error> {
        let mut keys = Vec::new();
        for e in range {
            let (k, _) = e?;
            let (p, s, m, i) = k.value();
            keys.push((p.to_string(), s, m, i));
        }
        Ok(keys)
    }

    fn drop_all(&mut self, keys: Vec<OwnedKey>) -> Result<(), redb::Error> {
        for k in keys {
            self.drop_block(borrowed(&k))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
