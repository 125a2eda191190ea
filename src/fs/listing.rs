//! A directory open for reading. Its entries stream from the server in batches (or come
//! from a cached listing) and are kept only until the kernel has read past them, so the
//! first `getdents` is answered as soon as the first batch is in, and a directory of a
//! million entries costs a batch or two of memory, not a million entries. A listing
//! small enough to cache is collected on the way and cached once complete.

use std::collections::VecDeque;

use super::meta::Snapshot;
use crate::remote::{DirEntry, DirStream, Remote, RemoteError};

/// Entries in a listing that is still cached whole once complete.
pub(super) const CACHE_UP_TO: usize = 10_000;
/// Batches already arrived that one read takes without waiting, at most.
const READY_BATCHES: usize = 16;

/// Where the entries come from.
enum Source {
    /// Streaming from the server.
    Server(DirStream),
    /// Everything there is is buffered (a cached listing, or the server's end reached).
    Done,
}

pub(super) struct Listing {
    /// Position of `buffered[0]`: "." is 0, ".." is 1, the first entry 2.
    base: usize,
    buffered: VecDeque<DirEntry>,
    source: Source,
    /// Every entry so far, while few enough to cache; `None` once there were more.
    collected: Option<Vec<DirEntry>>,
    /// Where things stood when the listing was asked for (see `meta::Snapshot`).
    asked: Option<Snapshot>,
}

/// What a batch fetched brought.
pub(super) enum Fetched {
    /// More entries (also handed to `collected` callers through `Listing::collected`).
    More,
    /// The end: the complete listing, if it is small enough to cache.
    End(Option<Vec<DirEntry>>),
}

/// Whether a name the server listed can stand in a directory here. A broken or hostile
/// server may list names with "/" (which would address another file), empty names, or
/// "." and ".." (which the mount adds itself); those are skipped and logged, as
/// OpenSSH's client does.
fn usable(name: &str) -> bool {
    let ok = !name.is_empty() && name != "." && name != ".." && !name.contains('/');
    if !ok && name != "." && name != ".." {
        tracing::warn!(name = %name.escape_debug(), "the server listed a name that cannot be a file name; skipped");
    }
    ok
}

/// The whole listing of `path` as a program would see it (without "." and ".."), or
/// `Ok(None)` once it has more than `limit` entries (the rest is not asked for).
pub(super) async fn whole<R: Remote>(
    remote: &R,
    path: &str,
    limit: usize,
) -> Result<Option<Vec<DirEntry>>, RemoteError> {
    let mut stream = remote.list(path).await?;
    let mut all = Vec::new();
    while let Some(batch) = stream.next().await {
        all.extend(batch?.into_iter().filter(|e| usable(&e.name)));
        if all.len() > limit {
            return Ok(None);
        }
    }
    Ok(Some(all))
}

impl Listing {
    /// A listing served from what the cache holds.
    pub(super) fn cached(entries: Vec<DirEntry>) -> Listing {
        Listing { base: 2, buffered: entries.into(), source: Source::Done, collected: None, asked: None }
    }

    /// A listing streaming from the server, asked for at `asked`.
    pub(super) fn streaming(stream: DirStream, asked: Snapshot) -> Listing {
        Listing {
            base: 2,
            buffered: VecDeque::new(),
            source: Source::Server(stream),
            collected: Some(Vec::new()),
            asked: Some(asked),
        }
    }

    /// Where things stood when the listing was asked for, if it came from the server.
    pub(super) fn asked(&self) -> Option<Snapshot> {
        self.asked
    }

    /// Whether the entry at position `from` may need an earlier one: the kernel went back
    /// (rewinddir, seekdir) behind what is still kept, and the listing must start again.
    pub(super) fn is_behind(&self, from: usize) -> bool {
        from < self.base
    }

    /// Fetches the next batch from the server.
    pub(super) async fn fetch(&mut self) -> Result<Fetched, RemoteError> {
        let Source::Server(stream) = &mut self.source else { return Ok(Fetched::End(None)) };
        let next = stream.next().await;
        self.take(next)
    }

    /// Takes what has already arrived without waiting: a small directory's end comes
    /// with its first batch, and seeing it at once lets the listing be cached (and its
    /// subdirectories listed ahead) before the kernel asks for more.
    fn take_ready(&mut self) -> Result<Option<Fetched>, RemoteError> {
        let Source::Server(stream) = &mut self.source else { return Ok(None) };
        match stream.ready() {
            Some(next) => self.take(next).map(Some),
            None => Ok(None),
        }
    }

    fn take(&mut self, next: Option<Result<Vec<DirEntry>, RemoteError>>) -> Result<Fetched, RemoteError> {
        match next {
            Some(Ok(mut batch)) => {
                batch.retain(|e| usable(&e.name));
                if let Some(all) = &mut self.collected {
                    if all.len() + batch.len() <= CACHE_UP_TO {
                        all.extend(batch.iter().cloned());
                    } else {
                        self.collected = None;
                    }
                }
                self.buffered.extend(batch);
                Ok(Fetched::More)
            }
            Some(Err(e)) => Err(e),
            None => {
                self.source = Source::Done;
                Ok(Fetched::End(self.collected.take()))
            }
        }
    }

    fn is_done(&self) -> bool {
        matches!(self.source, Source::Done)
    }

    /// Entries at positions `from` and after that are buffered now, with their positions,
    /// fetching a batch first when none is; entries before `from` are dropped (the kernel
    /// has read past them). Calls `ended` with the complete listing when the end is
    /// reached with one small enough to cache.
    pub(super) async fn entries_from(
        &mut self,
        from: usize,
        mut ended: impl FnMut(Vec<DirEntry>),
    ) -> Result<Vec<(usize, DirEntry)>, RemoteError> {
        loop {
            while self.base < from && !self.buffered.is_empty() {
                self.buffered.pop_front();
                self.base += 1;
            }
            if self.base >= from && !self.buffered.is_empty() || self.is_done() {
                break;
            }
            if let Fetched::End(Some(all)) = self.fetch().await? {
                ended(all);
            }
        }
        // While the listing is small enough to cache, what has already arrived is taken
        // too (a few batches at most): its end, once seen, lets it be cached at once.
        for _ in 0..READY_BATCHES {
            if self.collected.is_none() {
                break;
            }
            match self.take_ready()? {
                Some(Fetched::More) => {}
                Some(Fetched::End(all)) => {
                    if let Some(all) = all {
                        ended(all);
                    }
                    break;
                }
                None => break,
            }
        }
        Ok(self.buffered.iter().cloned().enumerate().map(|(i, e)| (self.base + i, e)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::Attr;

    fn entries(n: usize) -> Vec<DirEntry> {
        (0..n).map(|i| DirEntry { name: format!("e{i}"), attr: Attr::default() }).collect()
    }

    fn stream_of(batches: Vec<Vec<DirEntry>>) -> DirStream {
        let (tx, rx) = tokio::sync::mpsc::channel(batches.len().max(1));
        for b in batches {
            tx.try_send(Ok(b)).unwrap();
        }
        DirStream::new(rx)
    }

    fn snapshot() -> Snapshot {
        super::super::meta::Meta::new("/", std::time::Duration::ZERO).snapshot()
    }

    #[tokio::test]
    async fn entries_come_a_batch_at_a_time_and_go_once_read_past() {
        let all = entries(250);
        // The server's batches arrive one by one, after they are asked for.
        let (tx, rx) = tokio::sync::mpsc::channel(3);
        tx.try_send(Ok(all[..100].to_vec())).unwrap();
        let mut l = Listing::streaming(DirStream::new(rx), snapshot());
        let first = l.entries_from(2, |_| panic!("not the end yet")).await.unwrap();
        assert_eq!(first.len(), 100, "more than the first batch was waited for");
        assert_eq!(first[0], (2, all[0].clone()));
        // The kernel read 60 entries: what it read goes, the rest stays.
        let next = l.entries_from(62, |_| panic!("not the end yet")).await.unwrap();
        assert_eq!(next[0], (62, all[60].clone()));
        assert_eq!(next.len(), 40);
        tx.try_send(Ok(all[100..200].to_vec())).unwrap();
        tx.try_send(Ok(all[200..].to_vec())).unwrap();
        drop(tx);
        let mut ended = None;
        let tail = l.entries_from(202, |all| ended = Some(all)).await.unwrap();
        assert_eq!(tail.len(), 50);
        let beyond = l.entries_from(252, |all| ended = Some(all)).await.unwrap();
        assert!(beyond.is_empty());
        assert_eq!(ended.map(|v| v.len()), Some(250), "the complete small listing was not handed on");
        assert!(l.is_behind(10), "an earlier position must start the listing again");
    }

    #[tokio::test]
    async fn a_big_listing_is_not_collected_for_the_cache() {
        let all = entries(CACHE_UP_TO + 1);
        let batches: Vec<Vec<DirEntry>> = all.chunks(1000).map(<[DirEntry]>::to_vec).collect();
        let mut l = Listing::streaming(stream_of(batches), snapshot());
        let mut from = 2;
        let mut ended = false;
        loop {
            let got = l.entries_from(from, |_| ended = true).await.unwrap();
            let Some((last, _)) = got.last() else { break };
            from = last + 1;
            assert!(l.buffered.len() <= (READY_BATCHES + 1) * 1000, "kept more than the batches that had arrived");
        }
        assert_eq!(from, CACHE_UP_TO + 3);
        assert!(!ended, "a listing too big to cache was collected");
    }

    #[tokio::test]
    async fn a_cached_listing_needs_no_server() {
        let mut l = Listing::cached(entries(3));
        let got = l.entries_from(3, |_| {}).await.unwrap();
        assert_eq!(got.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![3, 4]);
    }
}
