//! An in-memory [`Remote`] that answers like OpenSSH's sftp-server (generic failures for
//! EEXIST, ENOTEMPTY and friends), for testing the fs core without a kernel or network.
//! It can be told to drop the link, to fail for good, to lose the reply of an operation
//! it applied, or to give short reads.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

use super::*;

#[derive(Debug, Clone)]
enum Body {
    File(Vec<u8>),
    Dir,
    Symlink(String),
}

#[derive(Debug, Clone)]
struct Node {
    /// The file itself, whatever its name: what an open handle holds on to, as an inode.
    id: u64,
    body: Body,
    mode: u32,
    uid: u32,
    gid: u32,
    atime: u32,
    mtime: u32,
}

/// A node of its own, numbered.
/// The fake's clock for modification times: every change of a file's data moves it on,
/// as a server's clock would (a real one may not within the same second).
fn tick() -> u32 {
    static NOW: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1_000_000);
    NOW.fetch_add(1, Ordering::Relaxed)
}

fn node(body: Body, mode: u32) -> Node {
    static IDS: AtomicU64 = AtomicU64::new(1);
    Node { id: IDS.fetch_add(1, Ordering::Relaxed), body, mode, uid: 0, gid: 0, atime: 0, mtime: 0 }
}

/// An open file: the node it was opened on, whatever its name becomes, even none.
#[derive(Debug)]
struct Open {
    node: u64,
    append: bool,
    /// The file as it opened.
    opened_as: Attr,
}

/// Resolves whether `cond` came to hold within five seconds, letting the runtime's other
/// tasks run between checks: how the fs core's tests wait for background work.
pub async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let polled = async {
        while !cond() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), polled).await.is_ok()
}

/// A request's place in line while it waits; it leaves the line however its wait ends
/// (its turn came, or its call gave it up).
struct Waiting<'a> {
    fake: &'a FakeRemote,
    n: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.fake.waiting.lock().unwrap().remove(&self.n);
        self.fake.held.opened.notify_waiters();
    }
}

/// Where requests of one kind wait while a test holds them.
#[derive(Debug, Default)]
pub struct Gate {
    held: AtomicBool,
    opened: Notify,
}

impl Gate {
    pub fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    /// Lets what waits go on, and what comes later pass.
    pub fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
        self.opened.notify_waiters();
    }

    async fn pass(&self) {
        loop {
            let opened = self.opened.notified();
            if !self.held.load(Ordering::SeqCst) {
                return;
            }
            opened.await;
        }
    }
}

#[derive(Debug)]
pub struct FakeRemote {
    tree: Mutex<BTreeMap<String, Node>>,
    handles: Mutex<HashMap<u64, Open>>,
    /// Files removed or replaced while open: still there for their handles.
    orphans: Mutex<HashMap<u64, Node>>,
    next: AtomicU64,
    down: AtomicBool,
    failed: AtomicBool,
    /// The next operation is applied, but answered as if the link broke.
    pub lose_reply: AtomicBool,
    available: Notify,
    went_down: Notify,
    /// Largest read answered at once, to exercise short reads.
    pub max_read: AtomicU64,
    /// Removals wait here (before anything else) while it is held.
    pub removals: Gate,
    /// Removals of files are refused as the server refuses them without permission.
    pub refuse_removals: AtomicBool,
    /// Removals that got past the hold.
    pub removal_attempts: AtomicU64,
    /// Writes wait here (before anything else) while it is held.
    pub writes: Gate,
    /// Writes out at once per file, as the fs core is told (`Remote::write_depth`).
    pub write_depth: AtomicUsize,
    /// Writes waiting at `writes` now, and the most that ever waited there at once.
    pub writes_waiting: AtomicUsize,
    pub most_writes_waiting: AtomicUsize,
    /// `fsetstat` requests received.
    pub fsetstats: AtomicU64,
    /// Entries a listing of a directory shows besides its files, as a broken or hostile
    /// server might send them (names with "/", empty names, "." and "..").
    pub odd_entries: Mutex<Vec<(String, String)>>,
    /// Reads are answered with one byte more than was asked for.
    pub overlong_reads: AtomicBool,
    /// Renames of these paths are refused, as a server refuses them without permission.
    pub refuse_renames_of: Mutex<Vec<String>>,
    /// Listings started (OPENDIR), to see that a walk lists each directory once.
    pub listings: AtomicU64,
    /// Microseconds each listing takes to start, as a server's round trip.
    pub list_latency_us: AtomicU64,
    /// Requests received so far, each numbered in turn.
    requests: AtomicU64,
    /// The request of this number waits at `held` (see `hold_request`).
    hold_at: AtomicU64,
    /// Requests waiting in line, by number (see `step`).
    waiting: Mutex<std::collections::BTreeSet<u64>>,
    pub held: Gate,
    pub ext: Extensions,
}

/// Entries per listing batch.
pub const LIST_BATCH: usize = 100;

fn failure() -> RemoteError {
    RemoteError::ServerFailure("Failure".into())
}

/// The whole of `path` through `r`: opened to be read, read to its end, closed.
pub async fn read_all<R: Remote>(r: &R, path: &str) -> Result<Vec<u8>> {
    let h = r.open(path, OpenOptions { read: true, ..OpenOptions::default() }).await?;
    let mut out = Vec::new();
    loop {
        let got = r.read(&h, out.len() as u64, 65_536).await?;
        if got.is_empty() {
            break;
        }
        out.extend_from_slice(&got);
    }
    r.close(&h).await?;
    Ok(out)
}

impl FakeRemote {
    pub fn new() -> FakeRemote {
        let mut tree = BTreeMap::new();
        tree.insert("/".to_string(), node(Body::Dir, S_IFDIR | 0o755));
        FakeRemote {
            tree: Mutex::new(tree),
            handles: Mutex::new(HashMap::new()),
            orphans: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            down: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            lose_reply: AtomicBool::new(false),
            available: Notify::new(),
            went_down: Notify::new(),
            max_read: AtomicU64::new(u64::MAX),
            removals: Gate::default(),
            refuse_removals: AtomicBool::new(false),
            removal_attempts: AtomicU64::new(0),
            writes: Gate::default(),
            write_depth: AtomicUsize::new(crate::remote::DEEP_WRITES),
            writes_waiting: AtomicUsize::new(0),
            most_writes_waiting: AtomicUsize::new(0),
            fsetstats: AtomicU64::new(0),
            odd_entries: Mutex::new(Vec::new()),
            overlong_reads: AtomicBool::new(false),
            refuse_renames_of: Mutex::new(Vec::new()),
            listings: AtomicU64::new(0),
            list_latency_us: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            hold_at: AtomicU64::new(u64::MAX),
            waiting: Mutex::default(),
            held: Gate::default(),
            ext: Extensions { posix_rename: true, hardlink: true, statvfs: true, fsync: true, lsetstat: true },
        }
    }

    fn up(&self) -> Result<()> {
        if self.failed.load(Ordering::SeqCst) {
            Err(RemoteError::LinkFailed("fake link failed".into()))
        } else if self.down.load(Ordering::SeqCst) {
            Err(RemoteError::Unavailable("fake link down".into()))
        } else {
            Ok(())
        }
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// The request numbered `n` (counting from the first one ever received, which is 1)
    /// waits at `held` until it is released: a call caught at one of its waiting points.
    pub fn hold_request(&self, n: u64) {
        self.hold_at.store(n, Ordering::SeqCst);
        self.held.hold();
    }

    /// Another client renames `from` to `to` (files only), replacing `to`.
    pub fn rename_on_server(&self, from: &str, to: &str) {
        let mut tree = self.tree.lock().unwrap();
        if let Some(n) = tree.remove(from) {
            if let Some(replaced) = tree.insert(to.to_string(), n) {
                self.unlinked(replaced);
            }
        }
    }

    /// Another client removes `path`.
    pub fn remove_on_server(&self, path: &str) {
        let gone = self.tree.lock().unwrap().remove(path);
        if let Some(n) = gone {
            self.unlinked(n);
        }
    }

    /// Another client writes a new file over `path` (a new file, as an editor saves).
    pub fn replace_on_server(&self, path: &str, data: &[u8]) {
        let old = self.tree.lock().unwrap().insert(path.to_string(), node(Body::File(data.to_vec()), S_IFREG | 0o644));
        if let Some(n) = old {
            self.unlinked(n);
        }
    }

    /// Every name on the server with its content (`None` for a directory or a link).
    pub fn contents(&self) -> Vec<(String, Option<Vec<u8>>)> {
        let tree = self.tree.lock().unwrap();
        tree.iter()
            .map(|(p, n)| (p.clone(), if let Body::File(d) = &n.body { Some(d.clone()) } else { None }))
            .collect()
    }

    /// No request is held any more, and one that waits goes on.
    pub fn let_go(&self) {
        self.held.release();
    }

    /// Every request passes here first. The held request, and every one after it, waits
    /// for the release; requests that wait go on in the order they came, as a server
    /// takes the requests of a stalled connection once it moves again. A hold set while
    /// earlier requests still wait leaves them their turn.
    async fn step(&self) {
        let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let held = || self.held.held.load(Ordering::SeqCst) && n >= self.hold_at.load(Ordering::SeqCst);
        {
            let mut waiting = self.waiting.lock().unwrap();
            if !held() && waiting.is_empty() {
                return;
            }
            waiting.insert(n);
        }
        let _in_line = Waiting { fake: self, n };
        loop {
            let wake = self.held.opened.notified();
            if !held() && self.waiting.lock().unwrap().first() == Some(&n) {
                return;
            }
            wake.await;
        }
    }

    /// The link drops: requests fail as not sent until `come_back`.
    pub fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.went_down.notify_waiters();
    }

    /// The link is back; whoever waits for it goes on.
    pub fn come_back(&self) {
        self.down.store(false, Ordering::SeqCst);
        self.available.notify_waiters();
    }

    /// The link gives up for good.
    pub fn fail_for_good(&self) {
        self.failed.store(true, Ordering::SeqCst);
        self.went_down.notify_waiters();
        self.available.notify_waiters();
    }

    /// The answer to an operation that was applied: lost if so arranged.
    fn answer(&self) -> Result<()> {
        if self.lose_reply.swap(false, Ordering::SeqCst) {
            Err(RemoteError::Disconnected("fake reply lost".into()))
        } else {
            Ok(())
        }
    }

    pub fn put_file(&self, path: &str, data: &[u8]) {
        self.tree.lock().unwrap().insert(path.into(), node(Body::File(data.to_vec()), S_IFREG | 0o644));
    }

    pub fn put_dir(&self, path: &str) {
        self.tree.lock().unwrap().insert(path.into(), node(Body::Dir, S_IFDIR | 0o755));
    }

    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        match self.tree.lock().unwrap().get(path).map(|n| n.body.clone()) {
            Some(Body::File(d)) => Some(d),
            _ => None,
        }
    }

    pub fn exists(&self, path: &str) -> bool {
        self.tree.lock().unwrap().contains_key(path)
    }

    /// Every path on the server, in order.
    pub fn paths(&self) -> Vec<String> {
        self.tree.lock().unwrap().keys().cloned().collect()
    }

    pub fn open_handles(&self) -> usize {
        self.handles.lock().unwrap().len()
    }

    fn attr(n: &Node) -> Attr {
        let size = match &n.body {
            Body::File(d) => d.len() as u64,
            Body::Dir => 4096,
            Body::Symlink(t) => t.len() as u64,
        };
        Attr { size, mode: n.mode, uid: n.uid, gid: n.gid, atime: n.atime, mtime: n.mtime }
    }

    fn children(tree: &BTreeMap<String, Node>, dir: &str) -> Vec<String> {
        let prefix = if dir == "/" { "/".to_string() } else { format!("{dir}/") };
        tree.keys()
            .filter(|k| k.starts_with(&prefix) && k.len() > prefix.len() && !k[prefix.len()..].contains('/'))
            .cloned()
            .collect()
    }

    /// Runs `f` on the file `h` was opened on, wherever it is now; with whether `h` appends.
    fn with_open<T>(&self, h: &Handle, f: impl FnOnce(&mut Node, bool) -> T) -> Result<T> {
        let (id, append) = self.handles.lock().unwrap().get(&h.0).map(|o| (o.node, o.append)).ok_or_else(failure)?;
        let mut tree = self.tree.lock().unwrap();
        if let Some(n) = tree.values_mut().find(|n| n.id == id) {
            return Ok(f(n, append));
        }
        self.orphans.lock().unwrap().get_mut(&id).map(|n| f(n, append)).ok_or_else(failure)
    }

    /// `n` left the tree: kept while a handle holds it, as a server keeps an unlinked
    /// open file.
    fn unlinked(&self, n: Node) {
        if self.handles.lock().unwrap().values().any(|o| o.node == n.id) {
            self.orphans.lock().unwrap().insert(n.id, n);
        }
    }

    fn apply(n: &mut Node, set: SetAttr) {
        if let Some(size) = set.size {
            if let Body::File(d) = &mut n.body {
                d.resize(size as usize, 0);
                n.mtime = tick();
            }
        }
        if let Some(m) = set.mode {
            n.mode = (n.mode & S_IFMT) | (m & 0o7777);
        }
        if let Some(u) = set.uid {
            n.uid = u;
        }
        if let Some(g) = set.gid {
            n.gid = g;
        }
        if let Some((a, m)) = set.times {
            n.atime = a;
            n.mtime = m;
        }
    }
}

impl Remote for FakeRemote {
    fn extensions(&self) -> Extensions {
        self.ext
    }

    fn is_available(&self) -> bool {
        self.up().is_ok()
    }

    async fn wait_available(&self) -> Result<()> {
        loop {
            let wake = self.available.notified();
            match self.up() {
                Err(RemoteError::Unavailable(_)) => wake.await,
                other => return other,
            }
        }
    }

    async fn wait_unavailable(&self) {
        loop {
            let wake = self.went_down.notified();
            if self.up().is_err() {
                return;
            }
            wake.await;
        }
    }

    fn stalled_for(&self) -> Option<std::time::Duration> {
        None
    }

    async fn realpath(&self, path: &str) -> Result<String> {
        self.step().await;
        self.up()?;
        let p = if path == "." { "/".to_string() } else { path.trim_end_matches('/').to_string() };
        let p = if p.is_empty() { "/".to_string() } else { p };
        if self.exists(&p) {
            Ok(p)
        } else {
            Err(RemoteError::NotFound)
        }
    }

    async fn stat(&self, path: &str) -> Result<Attr> {
        self.step().await;
        self.lstat(path).await
    }

    async fn lstat(&self, path: &str) -> Result<Attr> {
        self.step().await;
        self.up()?;
        self.tree.lock().unwrap().get(path).map(Self::attr).ok_or(RemoteError::NotFound)
    }

    async fn fstat(&self, handle: &Handle) -> Result<Attr> {
        self.step().await;
        self.up()?;
        self.with_open(handle, |n, _| Self::attr(n))
    }

    /// Follows a symlink, as SFTP's SETSTAT does on a real server.
    async fn setstat(&self, path: &str, set: SetAttr) -> Result<()> {
        self.step().await;
        self.up()?;
        let mut tree = self.tree.lock().unwrap();
        let target = match tree.get(path).map(|n| &n.body) {
            Some(Body::Symlink(t)) if t.starts_with('/') => t.clone(),
            Some(Body::Symlink(t)) => format!("{}/{t}", path.rsplit_once('/').map(|(d, _)| d).unwrap_or("")),
            _ => path.to_string(),
        };
        let n = tree.get_mut(&target).ok_or(RemoteError::NotFound)?;
        Self::apply(n, set);
        Ok(())
    }

    async fn lsetstat(&self, path: &str, set: SetAttr) -> Result<()> {
        self.step().await;
        self.up()?;
        let mut tree = self.tree.lock().unwrap();
        let n = tree.get_mut(path).ok_or(RemoteError::NotFound)?;
        Self::apply(n, set);
        Ok(())
    }

    async fn fsetstat(&self, handle: &Handle, set: SetAttr) -> Result<()> {
        self.step().await;
        self.fsetstats.fetch_add(1, Ordering::SeqCst);
        self.up()?;
        self.with_open(handle, |n, _| Self::apply(n, set))
    }

    async fn list(&self, path: &str) -> Result<DirStream> {
        self.step().await;
        self.up()?;
        self.listings.fetch_add(1, Ordering::Relaxed);
        let latency = self.list_latency_us.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(std::time::Duration::from_micros(latency)).await;
            self.up()?;
        }
        let mut entries: Vec<DirEntry> = {
            let tree = self.tree.lock().unwrap();
            match tree.get(path).map(|n| &n.body) {
                Some(Body::Dir) => {}
                Some(_) => return Err(failure()),
                None => return Err(RemoteError::NotFound),
            }
            // "." and ".." first, as OpenSSH's server lists them.
            let itself = Self::attr(&tree[path]);
            [".", ".."]
                .into_iter()
                .map(|name| DirEntry { name: name.into(), attr: itself })
                .chain(Self::children(&tree, path).into_iter().map(|p| DirEntry {
                    name: p.rsplit('/').next().unwrap_or("").to_string(),
                    attr: Self::attr(&tree[&p]),
                }))
                .collect()
        };
        let odd = self.odd_entries.lock().unwrap();
        entries.extend(
            odd.iter().filter(|(dir, _)| dir == path).map(|(_, name)| DirEntry {
                name: name.clone(),
                attr: Attr { mode: S_IFREG | 0o644, ..Attr::default() },
            }),
        );
        // In batches of a hundred, as OpenSSH's server answers READDIR.
        let batches: Vec<Vec<DirEntry>> = entries.chunks(LIST_BATCH).map(<[DirEntry]>::to_vec).collect();
        let (tx, rx) = tokio::sync::mpsc::channel(batches.len().max(1));
        for b in batches {
            let _ = tx.try_send(Ok(b));
        }
        Ok(DirStream::new(rx))
    }

    async fn open(&self, path: &str, o: OpenOptions) -> Result<Handle> {
        self.step().await;
        self.up()?;
        let mut tree = self.tree.lock().unwrap();
        let (id, opened_as) = match tree.get_mut(path) {
            Some(_) if o.create && o.exclusive => return Err(failure()),
            Some(Node { body: Body::Dir, .. }) if o.write => return Err(failure()),
            Some(n) => {
                if let (Body::File(d), true) = (&mut n.body, o.truncate) {
                    d.clear();
                    n.mtime = tick();
                }
                (n.id, Self::attr(n))
            }
            None if o.create => {
                if !matches!(tree.get(parent(path)).map(|n| &n.body), Some(Body::Dir)) {
                    return Err(RemoteError::NotFound);
                }
                let made = node(Body::File(Vec::new()), S_IFREG | o.mode.unwrap_or(0o644));
                let opened = (made.id, Self::attr(&made));
                tree.insert(path.into(), made);
                opened
            }
            None => return Err(RemoteError::NotFound),
        };
        drop(tree);
        // An answer is lost only with its connection, and the server's handles die with
        // that: an open whose answer was lost leaves no handle behind.
        self.answer()?;
        let h = self.next.fetch_add(1, Ordering::SeqCst);
        self.handles.lock().unwrap().insert(h, Open { node: id, append: o.append, opened_as });
        Ok(Handle(h))
    }

    /// As the remote layer closes: the handle is gone either way; on a link that is
    /// down it died with its connection.
    async fn close(&self, handle: &Handle) -> Result<()> {
        self.step().await;
        let mut handles = self.handles.lock().unwrap();
        let open = handles.remove(&handle.0).ok_or_else(failure)?;
        if !handles.values().any(|o| o.node == open.node) {
            self.orphans.lock().unwrap().remove(&open.node);
        }
        Ok(())
    }

    async fn read(&self, handle: &Handle, offset: u64, len: u32) -> Result<Bytes> {
        self.step().await;
        self.up()?;
        let len = u64::from(len).min(self.max_read.load(Ordering::SeqCst));
        let overlong = self.overlong_reads.load(Ordering::SeqCst);
        let read = self.with_open(handle, |n, _| {
            let Body::File(d) = &n.body else { return None };
            let start = (offset as usize).min(d.len());
            let end = (offset.saturating_add(len) as usize).min(d.len());
            let mut data = d[start..end].to_vec();
            if overlong {
                data.resize(len as usize + 1, 0xee);
            }
            Some(data)
        })?;
        read.map(Bytes::from).ok_or_else(failure)
    }

    fn opened_as(&self, handle: &Handle) -> Option<Attr> {
        self.handles.lock().unwrap().get(&handle.0).map(|o| o.opened_as)
    }

    fn write_depth(&self, _handle: &Handle) -> usize {
        self.write_depth.load(Ordering::SeqCst)
    }

    async fn write(&self, handle: &Handle, offset: u64, data: Bytes) -> Result<()> {
        self.step().await;
        let now = self.writes_waiting.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_writes_waiting.fetch_max(now, Ordering::SeqCst);
        self.writes.pass().await;
        self.writes_waiting.fetch_sub(1, Ordering::SeqCst);
        self.up()?;
        let written = self.with_open(handle, |n, append| {
            let Body::File(d) = &mut n.body else { return false };
            let at = if append { d.len() } else { offset as usize };
            if d.len() < at + data.len() {
                d.resize(at + data.len(), 0);
            }
            d[at..at + data.len()].copy_from_slice(&data);
            n.mtime = tick();
            true
        })?;
        if !written {
            return Err(failure());
        }
        Ok(())
    }

    async fn fsync(&self, handle: &Handle) -> Result<()> {
        self.step().await;
        self.up()?;
        self.with_open(handle, |_, _| ())
    }

    async fn mkdir(&self, path: &str, mode: u32) -> Result<()> {
        self.step().await;
        self.up()?;
        let mut tree = self.tree.lock().unwrap();
        if tree.contains_key(path) {
            return Err(failure());
        }
        if !matches!(tree.get(parent(path)).map(|n| &n.body), Some(Body::Dir)) {
            return Err(RemoteError::NotFound);
        }
        tree.insert(path.into(), node(Body::Dir, S_IFDIR | mode));
        self.answer()
    }

    async fn rmdir(&self, path: &str) -> Result<()> {
        self.step().await;
        self.up()?;
        let mut tree = self.tree.lock().unwrap();
        match tree.get(path).map(|n| &n.body) {
            None => Err(RemoteError::NotFound),
            Some(Body::Dir) if Self::children(&tree, path).is_empty() => {
                tree.remove(path);
                self.answer()
            }
            Some(_) => Err(failure()),
        }
    }

    async fn remove(&self, path: &str) -> Result<()> {
        self.step().await;
        self.removals.pass().await;
        self.removal_attempts.fetch_add(1, Ordering::SeqCst);
        self.up()?;
        if self.refuse_removals.load(Ordering::SeqCst) {
            return Err(RemoteError::PermissionDenied);
        }
        let mut tree = self.tree.lock().unwrap();
        match tree.get(path).map(|n| &n.body) {
            None => Err(RemoteError::NotFound),
            Some(Body::Dir) => Err(failure()),
            Some(_) => {
                if let Some(gone) = tree.remove(path) {
                    self.unlinked(gone);
                }
                self.answer()
            }
        }
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.step().await;
        self.up()?;
        let mut tree = self.tree.lock().unwrap();
        let src = tree.get(from).cloned().ok_or(RemoteError::NotFound)?;
        if self.refuse_renames_of.lock().unwrap().iter().any(|p| p == from) {
            return Err(RemoteError::PermissionDenied);
        }
        if from == to {
            return self.answer();
        }
        // As rename(2) on the server: into a directory, and never into itself.
        if !matches!(tree.get(parent(to)).map(|n| &n.body), Some(Body::Dir)) {
            return Err(RemoteError::NotFound);
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(failure());
        }
        // Plain SFTP rename (without posix-rename@openssh.com) never replaces.
        if !self.ext.posix_rename && tree.contains_key(to) {
            return Err(failure());
        }
        if let Some(dst) = tree.get(to) {
            let dst_dir = matches!(dst.body, Body::Dir);
            let src_dir = matches!(src.body, Body::Dir);
            if dst_dir != src_dir || (dst_dir && !Self::children(&tree, to).is_empty()) {
                return Err(failure());
            }
        }
        let moved: Vec<String> =
            tree.keys().filter(|k| *k == from || k.starts_with(&format!("{from}/"))).cloned().collect();
        if let Some(replaced) = tree.remove(to) {
            self.unlinked(replaced);
        }
        for old in moved {
            let n = tree.remove(&old).expect("listed above");
            tree.insert(format!("{to}{}", &old[from.len()..]), n);
        }
        self.answer()
    }

    async fn symlink(&self, target: &str, link: &str) -> Result<()> {
        self.step().await;
        self.up()?;
        let mut tree = self.tree.lock().unwrap();
        if tree.contains_key(link) {
            return Err(failure());
        }
        tree.insert(link.into(), node(Body::Symlink(target.into()), S_IFLNK | 0o777));
        self.answer()
    }

    async fn readlink(&self, path: &str) -> Result<String> {
        self.step().await;
        self.up()?;
        match self.tree.lock().unwrap().get(path).map(|n| n.body.clone()) {
            Some(Body::Symlink(t)) => Ok(t),
            Some(_) => Err(failure()),
            None => Err(RemoteError::NotFound),
        }
    }

    async fn hardlink(&self, existing: &str, new: &str) -> Result<()> {
        self.step().await;
        self.up()?;
        let mut tree = self.tree.lock().unwrap();
        if tree.contains_key(new) {
            return Err(failure());
        }
        // A copy stands in for a shared inode: enough for the core's bookkeeping.
        let n = tree.get(existing).cloned().ok_or(RemoteError::NotFound)?;
        tree.insert(new.into(), n);
        Ok(())
    }

    async fn statfs(&self, _path: &str) -> Result<StatFs> {
        self.step().await;
        self.up()?;
        Ok(StatFs { blocks_avail: 10, ..StatFs::unknown() })
    }
}
