//! The offline cache in front of a remote (`--offline-cache`): what the remote answers is
//! kept in the store (`crate::offline_cache`), and while the link is down what the store
//! holds answers instead: attributes, complete listings, symlink targets, and the blocks
//! of files read. Without a cache it passes every call through.
//!
//! Never stale once the link is back: facts are only served while the link is down (up,
//! every stat and listing goes to the server), and blocks are served up only for a
//! version the server just gave: as the file opened, or in a stat or listing within the
//! last second (such a file opens from the store with no request at all). A version is
//! kept only once its mtime is two seconds old: SFTP carries whole seconds, so a change
//! in the second a version was read could keep its size and mtime (git's "racy" rule).
//!
//! Every change the mount makes drops what the store knew of the names it touched, and a
//! fact is kept only if no change was made while it was asked, so that a fact outdated by
//! the mount's own change is never kept.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;

use super::{parent, SetAttr, StatFs};
use super::{Attr, Bytes, DirEntry, DirStream, Extensions, FileKind, Handle, OpenOptions, Remote, RemoteError, Result};
use crate::offline_cache::{Fact, Facts, OfflineCache, Usage, Version};
use crate::sync::lock;

/// Bytes per block: a file and an index entry per MiB costs the disk and the index
/// little, and a reader's reads join up to whole blocks (`keep_blocks`).
pub const BLOCK: u64 = 1024 * 1024;
/// Blocks read from the store kept in memory for the reads that follow: a program reads
/// a block in many smaller reads.
const BLOCKS_AT_HAND: usize = 8;
/// What `changed` is told when it cannot know how many facts were sent before the
/// change began: as if some were.
const UNKNOWN_LEARNT: u64 = u64::MAX;
/// Handles of files opened from the store while the link was down.
const LOCAL: u64 = 1 << 63;
/// How old a version's mtime must be, in seconds, before its content is kept.
const SETTLED: u64 = 2;
/// Blocks being filled by an open file's reads, at most: reads that jump about leave
/// pieces that never join, and these are dropped past it.
const PIECES: usize = 32;

/// How long what the server said of a file lets a program open it from the store
/// without asking the server again: about as long as the kernel trusts an attribute.
const FRESH: std::time::Duration = std::time::Duration::from_secs(1);
/// Attributes kept as fresh at most; past that they are all let go.
const FRESH_KEPT: usize = 50_000;

/// Attributes the server gave lately, by path, with when and the count of the mount's
/// changes then (an answer from before any change since is not fresh).
type Recent = HashMap<String, (Attr, std::time::Instant, u64)>;

/// Parts of a block read so far, each at where it starts in the file.
type Pieces = Vec<(u64, Bytes)>;

/// An open file as the cache sees it.
#[derive(Debug, Clone)]
struct Opened {
    path: String,
    /// The version whose blocks may be served and kept; `None` for a file opened to be
    /// written, or whose version is not settled.
    version: Option<Version>,
    /// Opened for writing: what is known of the file goes when it closes.
    writes: bool,
    /// For a file opened from the store while the link was down: the server's handle on
    /// the same version, once the link is back and the store lacks a part.
    server: Option<Handle>,
}

pub struct Offline<R: Remote> {
    inner: Arc<R>,
    cache: Option<Arc<OfflineCache>>,
    opened: Arc<Mutex<HashMap<Handle, Opened>>>,
    next_local: AtomicU64,
    /// Counts the mount's changes: a fact asked across one is not kept.
    changes: Arc<AtomicU64>,
    /// Counts the facts sent to the store.
    learnt: Arc<AtomicU64>,
    /// Paths the store answered for while the link was down.
    served: Mutex<HashSet<String>>,
    /// What the server said of paths lately: a file it says is a version the store
    /// holds opens from the store, with no request (revalidated by that answer).
    recent: Arc<Mutex<Recent>>,
    /// The blocks last read from the store, newest last.
    at_hand: Mutex<std::collections::VecDeque<(String, Version, u64, Bytes)>>,
    /// Blocks part read, by handle and block number: the pieces read so far, by where
    /// each starts in the file.
    pieces: Mutex<HashMap<(Handle, u64), Pieces>>,
}

/// The link, not the server, failed a call: the store may answer it.
fn down(e: &RemoteError) -> bool {
    matches!(e, RemoteError::Unavailable(_) | RemoteError::Disconnected(_))
}

fn missing() -> RemoteError {
    RemoteError::Unavailable("link down, and not in the offline cache".into())
}

fn name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The version of a regular file whose content may be kept: its mtime settled.
fn settled(attr: &Attr) -> Option<Version> {
    let now = crate::timestamp::unix_secs();
    (attr.kind() == FileKind::File && u64::from(attr.mtime) + SETTLED <= now)
        .then_some(Version { size: attr.size, mtime: u64::from(attr.mtime) })
}

const ATTR_LEN: usize = 28;

fn put_attr(out: &mut Vec<u8>, a: &Attr) {
    out.extend_from_slice(&a.size.to_le_bytes());
    for v in [a.mode, a.uid, a.gid, a.atime, a.mtime] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn get_attr(b: &[u8]) -> Option<Attr> {
    let b = b.get(..ATTR_LEN)?;
    let word = |i: usize| u32::from_le_bytes([b[8 + 4 * i], b[9 + 4 * i], b[10 + 4 * i], b[11 + 4 * i]]);
    Some(Attr {
        size: u64::from_le_bytes(b[..8].try_into().ok()?),
        mode: word(0),
        uid: word(1),
        gid: word(2),
        atime: word(3),
        mtime: word(4),
    })
}

/// A listing as the store keeps it: per entry, the name's length (2 bytes), the name,
/// its attributes.
fn encode_listing(entries: &[DirEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * (ATTR_LEN + 16));
    for e in entries {
        let Ok(len) = u16::try_from(e.name.len()) else { continue };
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(e.name.as_bytes());
        put_attr(&mut out, &e.attr);
    }
    out
}

fn decode_listing(mut b: &[u8]) -> Option<Vec<DirEntry>> {
    let mut entries = Vec::new();
    while !b.is_empty() {
        let len = usize::from(u16::from_le_bytes([*b.first()?, *b.get(1)?]));
        let name = std::str::from_utf8(b.get(2..2 + len)?).ok()?.to_string();
        let attr = get_attr(b.get(2 + len..)?)?;
        entries.push(DirEntry { name, attr });
        b = &b[2 + len + ATTR_LEN..];
    }
    Some(entries)
}

/// Keeps what the server just said of `paths` as fresh.
fn heard(recent: &Mutex<Recent>, paths: impl IntoIterator<Item = (String, Attr)>, changes: u64) {
    let now = std::time::Instant::now();
    let mut recent = lock(recent);
    for (path, attr) in paths {
        if recent.len() >= FRESH_KEPT {
            recent.retain(|_, (_, at, _)| at.elapsed() < FRESH);
            if recent.len() >= FRESH_KEPT {
                recent.clear();
            }
        }
        recent.insert(path, (attr, now, changes));
    }
}

/// The bytes `start..end` that `parts` (each at where it starts) cover together, if
/// they cover all of them.
fn joined(parts: &mut [(u64, Bytes)], start: u64, end: u64) -> Option<Bytes> {
    parts.sort_by_key(|(at, _)| *at);
    let mut out = BytesMut::with_capacity((end - start) as usize);
    for (at, data) in parts.iter() {
        let filled = start + out.len() as u64;
        let part_end = at + data.len() as u64;
        if *at > filled {
            return None;
        }
        if part_end > filled {
            out.extend_from_slice(&data[(filled - at) as usize..]);
        }
    }
    (start + out.len() as u64 == end).then(|| out.freeze())
}

impl<R: Remote> Offline<R> {
    pub fn new(inner: Arc<R>, cache: Option<OfflineCache>) -> Offline<R> {
        Offline {
            inner,
            cache: cache.map(Arc::new),
            opened: Arc::default(),
            next_local: AtomicU64::new(0),
            changes: Arc::default(),
            learnt: Arc::default(),
            served: Mutex::default(),
            pieces: Mutex::default(),
            at_hand: Mutex::default(),
            recent: Arc::default(),
        }
    }

    #[cfg(test)]
    pub fn inner(&self) -> &Arc<R> {
        &self.inner
    }

    /// What the cache holds and how it has served; `None` without one.
    pub fn usage(&self) -> Option<Usage> {
        self.cache.as_ref().map(|c| c.usage())
    }

    /// Waits until what was sent to the store is in it.
    #[cfg(test)]
    pub fn flush(&self) {
        if let Some(c) = &self.cache {
            c.flush();
        }
    }

    /// Empties the cache; false without one.
    pub fn clear(&self) -> bool {
        lock(&self.at_hand).clear();
        self.cache.as_ref().map(|c| c.clear()).is_some()
    }

    fn served(&self, path: &str) {
        lock(&self.served).insert(path.to_string());
    }

    fn asked(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// Keeps `value` as `fact` of `path`, unless the mount changed something since it
    /// asked (`asked`).
    fn learn(&self, path: &str, fact: Fact, value: Vec<u8>, asked: u64) {
        if let Some(c) = &self.cache {
            if self.asked() == asked {
                self.learnt.fetch_add(1, Ordering::SeqCst);
                c.learn(path, fact, value);
            }
        }
    }

    /// Keeps what a stat said of `path`, unless the mount has it open for writing: its
    /// size and mtime then move with every write that lands.
    fn learn_attr(&self, path: &str, attr: &Attr, asked: u64) {
        let written = || lock(&self.opened).values().any(|o| o.writes && o.path == path);
        if self.cache.is_some() && !written() {
            let mut b = Vec::with_capacity(ATTR_LEN);
            put_attr(&mut b, attr);
            self.learn(path, Fact::Attr, b, asked);
        }
    }

    /// The mount is about to change `paths` (and what is under them): what the store
    /// knows of them and of their directories' listings goes, and facts asked meanwhile
    /// are not kept. `changed` follows once the change is answered, with what this
    /// returns: how many facts had been sent to the store.
    fn changing(&self, paths: &[&str]) -> u64 {
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.unlearn(paths);
        self.learnt.load(Ordering::SeqCst)
    }

    fn unlearn(&self, paths: &[&str]) {
        if let Some(c) = &self.cache {
            for p in paths {
                c.unlearn(p, Facts::Tree);
                c.unlearn(parent(p), Facts::One(Fact::Listing));
            }
        }
    }

    /// Runs `change`, a change of `paths` on the server (sent only when awaited),
    /// between `changing` and `changed`.
    async fn change<T>(&self, paths: &[&str], change: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let learnt = self.changing(paths);
        let answer = change.await;
        self.changed(paths, learnt);
        answer
    }

    /// The mount changed `paths`, or may have (`changing` said `learnt` before): facts
    /// learnt while it did may predate it and go too, and so does the content kept under
    /// their names, no longer worth its room.
    fn changed(&self, paths: &[&str], learnt: u64) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        if self.learnt.load(Ordering::SeqCst) != learnt {
            self.unlearn(paths);
        }
        if let Some(c) = &self.cache {
            // The writer finds what to drop: no reading of the index on the way.
            for p in paths {
                c.forget(p);
            }
            // A program reading one of them must see the change: the server says.
            let under = |o: &Opened| paths.iter().any(|p| o.path == *p || o.path.starts_with(&format!("{p}/")));
            for o in lock(&self.opened).values_mut().filter(|o| under(o)) {
                o.version = None;
            }
        }
    }

    /// The server's answer naming something for `path` (a canonical path, a symlink's
    /// target), kept as `fact`; or, when the link failed it, what the store kept.
    fn text_answered(&self, path: &str, fact: Fact, answer: Result<String>, asked: u64) -> Result<String> {
        match answer {
            Ok(text) => {
                self.learn(path, fact, text.clone().into_bytes(), asked);
                Ok(text)
            }
            Err(e) if down(&e) => {
                let found = self.cache.as_ref().and_then(|c| c.recall(path, fact));
                let text = found.and_then(|b| String::from_utf8(b).ok()).ok_or(e)?;
                self.served(path);
                Ok(text)
            }
            Err(e) => Err(e),
        }
    }

    /// `path`'s attributes from the store: its own, or its directory's listing's. A name
    /// absent from a complete listing is not there.
    fn recall_attr(&self, path: &str) -> Option<Result<Attr>> {
        let c = self.cache.as_ref()?;
        if let Some(a) = c.recall(path, Fact::Attr).as_deref().and_then(get_attr) {
            return Some(Ok(a));
        }
        let listing = decode_listing(&c.recall(parent(path), Fact::Listing)?)?;
        Some(listing.into_iter().find(|e| e.name == name(path)).map(|e| e.attr).ok_or(RemoteError::NotFound))
    }

    /// The answer to a stat of `path` from the store, when the link failed it (`e`).
    fn stat_offline(&self, path: &str, e: RemoteError) -> Result<Attr> {
        if !down(&e) {
            return Err(e);
        }
        match self.recall_attr(path) {
            Some(answer) => {
                self.served(path);
                answer
            }
            None => Err(e),
        }
    }

    /// A server's stat of `path`, kept; a path the server says is gone is forgotten.
    fn stat_answered(&self, path: &str, answer: Result<Attr>, asked: u64) -> Result<Attr> {
        match answer {
            Ok(a) => {
                self.learn_attr(path, &a, asked);
                if self.cache.is_some() && self.asked() == asked {
                    heard(&self.recent, [(path.to_string(), a)], asked);
                }
                Ok(a)
            }
            Err(RemoteError::NotFound) => {
                if let Some(c) = &self.cache {
                    c.unlearn(path, Facts::Tree);
                }
                Err(RemoteError::NotFound)
            }
            Err(e) => self.stat_offline(path, e),
        }
    }

    fn opened(&self, handle: &Handle) -> Option<Opened> {
        lock(&self.opened).get(handle).cloned()
    }

    /// Bytes `offset..offset + len` of `path` at `version` from the store, if it holds
    /// every block they span.
    fn read_stored(&self, path: &str, version: Version, offset: u64, len: u32) -> Option<Bytes> {
        let c = self.cache.as_ref()?;
        let end = (offset + u64::from(len)).min(version.size);
        if offset >= end {
            return Some(Bytes::new());
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for index in offset / BLOCK..end.div_ceil(BLOCK) {
            let data = self.block(c, path, version, index)?;
            let start = index * BLOCK;
            let from = offset.saturating_sub(start) as usize;
            let to = (end - start).min(BLOCK) as usize;
            out.extend_from_slice(data.get(from..to)?);
        }
        Some(out.freeze())
    }

    /// Block `index` of `path` at `version`: at hand, or from the store.
    fn block(&self, c: &OfflineCache, path: &str, version: Version, index: u64) -> Option<Bytes> {
        let same = |(p, v, i, _): &&(String, Version, u64, Bytes)| p == path && *v == version && *i == index;
        if let Some((.., data)) = lock(&self.at_hand).iter().find(same) {
            return Some(data.clone());
        }
        let data = Bytes::from(c.get(path, version, index)?);
        let mut at_hand = lock(&self.at_hand);
        if at_hand.len() >= BLOCKS_AT_HAND {
            at_hand.pop_front();
        }
        at_hand.push_back((path.to_string(), version, index, data.clone()));
        Some(data)
    }

    /// Keeps every block that `data`, read at `offset` through `handle` of `path` at
    /// `version`, completes: whole in `data`, or with pieces of it that reads before
    /// brought (a reader's reads need not be aligned to blocks, nor answered in order).
    fn keep_blocks(&self, handle: Handle, path: &str, version: Version, offset: u64, data: &Bytes) {
        let Some(c) = &self.cache else { return };
        let end = offset + data.len() as u64;
        for index in offset / BLOCK..end.div_ceil(BLOCK) {
            let start = index * BLOCK;
            let block_end = (start + BLOCK).min(version.size);
            let (from, to) = (offset.max(start), end.min(block_end));
            if from >= to {
                continue;
            }
            let piece = data.slice((from - offset) as usize..(to - offset) as usize);
            if from == start && to == block_end {
                c.put(path, version, index, piece);
                continue;
            }
            let key = (handle, index);
            let mut pieces = lock(&self.pieces);
            if pieces.len() >= PIECES && !pieces.contains_key(&key) {
                pieces.retain(|(h, _), _| *h != handle);
            }
            let parts = pieces.entry(key).or_default();
            parts.push((from, piece));
            if let Some(whole) = joined(parts, start, block_end) {
                pieces.remove(&key);
                c.put(path, version, index, whole);
            }
        }
    }

    /// A part of a file opened from the store (`handle`) that the store lacks, read from
    /// the server once the link is back: from the same version only, opened once; a file
    /// that changed meanwhile is another file to this handle, and gone.
    async fn read_on_server(&self, handle: &Handle, offset: u64, len: u32) -> Result<Bytes> {
        let o = self.opened(handle).ok_or_else(missing)?;
        let server = match o.server {
            Some(h) => h,
            None => {
                if !self.inner.is_available() {
                    return Err(missing());
                }
                let h = self.inner.open(&o.path, OpenOptions { read: true, ..OpenOptions::default() }).await?;
                // No version left: the mount itself changed the file since, and what the
                // server has now is what the program must read.
                if o.version.is_some() && self.inner.opened_as(&h).as_ref().and_then(settled) != o.version {
                    crate::remote::close_quietly(self.inner.clone(), h, o.path.clone()).await;
                    return Err(RemoteError::FileLost(format!(
                        "{} changed on the server while the link was down: open it again",
                        o.path
                    )));
                }
                match lock(&self.opened).get_mut(handle) {
                    Some(open) => *open.server.get_or_insert(h),
                    None => h,
                }
            }
        };
        self.inner.read(&server, offset, len).await
    }

    /// `path` was opened on the server as `handle`: a file opened to be read is known by
    /// the version it opened as, while the mount does not write it. (A program reading
    /// a file the mount writes must see each write: no handle of it reads from the store
    /// from then on.)
    fn opened_now(&self, path: &str, handle: Handle, writes: bool, asked: u64) {
        let mut version = None;
        if !writes {
            if let Some(attr) = self.inner.opened_as(&handle) {
                self.learn_attr(path, &attr, asked);
                version = settled(&attr);
            }
        }
        let mut opened = lock(&self.opened);
        if writes {
            for o in opened.values_mut().filter(|o| o.path == path) {
                o.version = None;
            }
        } else if opened.values().any(|o| o.writes && o.path == path) {
            version = None;
        }
        opened.insert(handle, Opened { path: path.to_string(), version, writes, server: None });
    }

    /// A file to be read that the server just described (`recent`) as a version the
    /// store holds, opened from the store without a request; a part it lacks is read
    /// from the server, from that version only (`read_on_server`).
    fn open_revalidated(&self, path: &str) -> Option<Handle> {
        let c = self.cache.as_ref()?;
        let (attr, at, changes) = lock(&self.recent).get(path).copied()?;
        // Any change the mount made since may have been to this file.
        let fresh = at.elapsed() < FRESH && changes == self.asked();
        let version = settled(&attr).filter(|_| fresh)?;
        if lock(&self.opened).values().any(|o| o.writes && o.path == path) || !c.holds(path, version, 0) {
            return None;
        }
        let handle = Handle(LOCAL | self.next_local.fetch_add(1, Ordering::Relaxed));
        let opened = Opened { path: path.to_string(), version: Some(version), writes: false, server: None };
        lock(&self.opened).insert(handle, opened);
        Some(handle)
    }

    /// A file the link cannot open now, opened from the store: its settled version, if
    /// the store holds its attributes.
    fn open_offline(&self, path: &str, opts: OpenOptions, e: RemoteError) -> Result<Handle> {
        let writes = opts.write || opts.append || opts.create || opts.truncate;
        if !down(&e) || writes {
            return Err(e);
        }
        let attr = match self.recall_attr(path) {
            Some(Ok(a)) => a,
            Some(Err(gone)) => {
                self.served(path);
                return Err(gone);
            }
            None => return Err(e),
        };
        let Some(version) = settled(&attr) else { return Err(e) };
        self.served(path);
        let handle = Handle(LOCAL | self.next_local.fetch_add(1, Ordering::Relaxed));
        let opened = Opened { path: path.to_string(), version: Some(version), writes: false, server: None };
        lock(&self.opened).insert(handle, opened);
        Ok(handle)
    }
}

impl<R: Remote> Remote for Offline<R> {
    fn extensions(&self) -> Extensions {
        self.inner.extensions()
    }

    fn is_available(&self) -> bool {
        self.inner.is_available()
    }

    async fn wait_available(&self) -> Result<()> {
        self.inner.wait_available().await
    }

    async fn wait_unavailable(&self) {
        self.inner.wait_unavailable().await
    }

    fn stalled_for(&self) -> Option<std::time::Duration> {
        self.inner.stalled_for()
    }

    async fn realpath(&self, path: &str) -> Result<String> {
        let asked = self.asked();
        let answer = self.inner.realpath(path).await;
        self.text_answered(path, Fact::Canonical, answer, asked)
    }

    async fn stat(&self, path: &str) -> Result<Attr> {
        // What a stat says of a symlink is its target's: kept apart from the name's.
        let asked = self.asked();
        match self.inner.stat(path).await {
            Ok(a) => {
                if self.cache.is_some() {
                    let mut b = Vec::with_capacity(ATTR_LEN);
                    put_attr(&mut b, &a);
                    self.learn(path, Fact::Followed, b, asked);
                }
                Ok(a)
            }
            Err(e) if down(&e) => {
                let found = self.cache.as_ref().and_then(|c| c.recall(path, Fact::Followed));
                found.as_deref().and_then(get_attr).ok_or(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn lstat(&self, path: &str) -> Result<Attr> {
        let asked = self.asked();
        let answer = self.inner.lstat(path).await;
        self.stat_answered(path, answer, asked)
    }

    async fn fstat(&self, handle: &Handle) -> Result<Attr> {
        let opened = self.opened(handle);
        if handle.0 & LOCAL != 0 {
            let o = opened.ok_or_else(missing)?;
            return self.recall_attr(&o.path).unwrap_or_else(|| Err(missing()));
        }
        match self.inner.fstat(handle).await {
            Err(e) if down(&e) && opened.as_ref().is_some_and(|o| !o.writes) => {
                self.recall_attr(&opened.map(|o| o.path).unwrap_or_default()).unwrap_or(Err(e))
            }
            answer => answer,
        }
    }

    async fn setstat(&self, path: &str, set: SetAttr) -> Result<()> {
        self.change(&[path], self.inner.setstat(path, set)).await
    }

    async fn fsetstat(&self, handle: &Handle, set: SetAttr) -> Result<()> {
        let path = self.opened(handle).map(|o| o.path);
        let paths: Vec<&str> = path.as_deref().into_iter().collect();
        let learnt = self.changing(&paths);
        let answer = match (handle.0 & LOCAL != 0, path.as_deref()) {
            // The server has no handle of it: by its name.
            (true, Some(path)) => self.inner.setstat(path, set).await,
            (true, None) => Err(missing()),
            (false, _) => self.inner.fsetstat(handle, set).await,
        };
        self.changed(&paths, learnt);
        answer
    }

    async fn lsetstat(&self, path: &str, set: SetAttr) -> Result<()> {
        self.change(&[path], self.inner.lsetstat(path, set)).await
    }

    async fn list(&self, path: &str) -> Result<DirStream> {
        let asked = self.asked();
        match self.inner.list(path).await {
            Ok(stream) => match &self.cache {
                Some(c) => {
                    let (c, changes, path) = (c.clone(), self.changes.clone(), path.to_string());
                    let learnt = self.learnt.clone();
                    let (opened, recent) = (self.opened.clone(), self.recent.clone());
                    Ok(stream.recording(move |entries| {
                        // Sizes of files being written move with every write that lands.
                        let written = lock(&opened).values().any(|o| o.writes && parent(&o.path) == path);
                        if changes.load(Ordering::SeqCst) == asked && !written {
                            learnt.fetch_add(1, Ordering::SeqCst);
                            c.learn(&path, Fact::Listing, encode_listing(entries));
                            let dir = path.trim_end_matches('/');
                            let entries = entries.iter().map(|e| (format!("{dir}/{}", e.name), e.attr));
                            heard(&recent, entries, asked);
                        }
                    }))
                }
                None => Ok(stream),
            },
            Err(e) if down(&e) => {
                let found = self.cache.as_ref().and_then(|c| c.recall(path, Fact::Listing));
                match found.as_deref().and_then(decode_listing) {
                    Some(entries) => {
                        self.served(path);
                        Ok(DirStream::of(entries))
                    }
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn open(&self, path: &str, opts: OpenOptions) -> Result<Handle> {
        let writes = opts.write || opts.append || opts.create || opts.truncate;
        if self.cache.is_none() {
            return self.inner.open(path, opts).await;
        }
        if writes {
            self.changing(&[path]);
        }
        if !writes {
            if let Some(handle) = self.open_revalidated(path) {
                return Ok(handle);
            }
        }
        let asked = self.asked();
        match self.inner.open(path, opts).await {
            Ok(handle) => {
                self.opened_now(path, handle, writes, asked);
                Ok(handle)
            }
            Err(e) => self.open_offline(path, opts, e),
        }
    }

    async fn close(&self, handle: &Handle) -> Result<()> {
        let opened = lock(&self.opened).remove(handle);
        if opened.as_ref().is_some_and(|o| o.version.is_some()) {
            lock(&self.pieces).retain(|(h, _), _| h != handle);
        }
        if handle.0 & LOCAL != 0 {
            if let Some(server) = opened.and_then(|o| o.server) {
                return self.inner.close(&server).await;
            }
            return Ok(());
        }
        let answer = self.inner.close(handle).await;
        if let Some(o) = opened.filter(|o| o.writes) {
            // Written through this handle since it opened: whatever was learnt goes.
            self.changed(&[&o.path], UNKNOWN_LEARNT);
        }
        answer
    }

    async fn read(&self, handle: &Handle, offset: u64, len: u32) -> Result<Bytes> {
        let opened = self.opened(handle);
        let stored = opened.as_ref().and_then(|o| Some((o.path.as_str(), o.version?)));
        let local = handle.0 & LOCAL != 0;
        // The version the file opened as is the file to this handle, its end included,
        // until the mount changes it (`changed`): as a program reading after a fresh open
        // would find it.
        if let Some((path, version)) = stored {
            if let Some(data) = self.read_stored(path, version, offset, len) {
                return Ok(data);
            }
        }
        if local {
            return self.read_on_server(handle, offset, len).await;
        }
        match self.inner.read(handle, offset, len).await {
            Ok(data) => {
                if let Some((path, version)) = stored {
                    self.keep_blocks(*handle, path, version, offset, &data);
                }
                Ok(data)
            }
            Err(e) if down(&e) => match stored {
                Some((path, version)) => self.read_stored(path, version, offset, len).ok_or(e),
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    async fn write(&self, handle: &Handle, offset: u64, data: Bytes) -> Result<()> {
        self.inner.write(handle, offset, data).await
    }

    async fn fsync(&self, handle: &Handle) -> Result<()> {
        if handle.0 & LOCAL != 0 {
            // Opened to be read, from the store: nothing of it to sync.
            return Ok(());
        }
        self.inner.fsync(handle).await
    }

    async fn mkdir(&self, path: &str, mode: u32) -> Result<()> {
        self.change(&[path], self.inner.mkdir(path, mode)).await
    }

    async fn rmdir(&self, path: &str) -> Result<()> {
        self.change(&[path], self.inner.rmdir(path)).await
    }

    async fn remove(&self, path: &str) -> Result<()> {
        self.change(&[path], self.inner.remove(path)).await
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let learnt = self.changing(&[from, to]);
        let answer = self.inner.rename(from, to).await;
        if answer.is_ok() {
            // Open files keep their identity under their new names: a file opened at the
            // new name later is the same file, written by the same handles.
            for o in lock(&self.opened).values_mut() {
                if o.path == from {
                    o.path = to.to_string();
                } else if let Some(rest) = o.path.strip_prefix(from).filter(|r| r.starts_with('/')) {
                    o.path = format!("{to}{rest}");
                }
            }
        }
        self.changed(&[from, to], learnt);
        answer
    }

    async fn symlink(&self, target: &str, link: &str) -> Result<()> {
        self.change(&[link], self.inner.symlink(target, link)).await
    }

    async fn readlink(&self, path: &str) -> Result<String> {
        let asked = self.asked();
        let answer = self.inner.readlink(path).await;
        self.text_answered(path, Fact::Target, answer, asked)
    }

    async fn hardlink(&self, existing: &str, new: &str) -> Result<()> {
        self.change(&[existing, new], self.inner.hardlink(existing, new)).await
    }

    async fn statfs(&self, path: &str) -> Result<StatFs> {
        self.inner.statfs(path).await
    }

    fn read_size(&self) -> u32 {
        self.inner.read_size()
    }

    fn write_size(&self) -> u32 {
        self.inner.write_size()
    }

    fn write_depth(&self, handle: &Handle) -> usize {
        self.inner.write_depth(handle)
    }

    fn opened_as(&self, handle: &Handle) -> Option<Attr> {
        self.inner.opened_as(handle)
    }

    fn serves_offline(&self) -> bool {
        self.cache.is_some()
    }

    fn served_offline(&self) -> Vec<String> {
        lock(&self.served).drain().collect()
    }

    async fn open_stat(&self, path: &str, opts: OpenOptions) -> Result<(Handle, Option<Attr>)> {
        if self.cache.is_none() {
            return self.inner.open_stat(path, opts).await;
        }
        let writes = opts.write || opts.append || opts.create || opts.truncate;
        if writes {
            self.changing(&[path]);
        }
        let asked = self.asked();
        let (handle, attr) = self.inner.open_stat(path, opts).await?;
        self.opened_now(path, handle, writes, asked);
        Ok((handle, attr))
    }

    async fn mkdir_stat(&self, path: &str, mode: u32) -> Result<Option<Attr>> {
        self.change(&[path], self.inner.mkdir_stat(path, mode)).await
    }

    async fn symlink_stat(&self, target: &str, link: &str) -> Result<Option<Attr>> {
        self.change(&[link], self.inner.symlink_stat(target, link)).await
    }

    async fn setstat_stat(&self, path: &str, set: SetAttr) -> Result<Option<Attr>> {
        self.change(&[path], self.inner.setstat_stat(path, set)).await
    }

    async fn fsetstat_stat(&self, handle: &Handle, path: &str, set: SetAttr) -> Result<Option<Attr>> {
        let learnt = self.changing(&[path]);
        let answer = if handle.0 & LOCAL != 0 {
            self.inner.setstat_stat(path, set).await
        } else {
            self.inner.fsetstat_stat(handle, path, set).await
        };
        self.changed(&[path], learnt);
        answer
    }
}

#[cfg(test)]
mod tests;
