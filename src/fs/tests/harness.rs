//! The harness of the fs core's tests: a mount of the in-memory remote, and helpers that
//! act as the kernel would.

pub(super) use std::sync::atomic::Ordering;
pub(super) use std::sync::Arc;

pub(super) use super::super::coordinator::{AttrChange, Fs, FsOptions, OpenFlags, TimeSet};
pub(super) use super::super::errno::Errno;
pub(super) use super::super::error::FsResult;
pub(super) use super::super::meta::{Ino, ROOT};
pub(super) use crate::remote::fake::{eventually, FakeRemote};
pub(super) use crate::remote::{FileKind, Remote};

pub(super) fn setup() -> (Arc<FakeRemote>, Fs<FakeRemote>) {
    setup_with(FsOptions::default())
}

pub(super) fn setup_with(opts: FsOptions) -> (Arc<FakeRemote>, Fs<FakeRemote>) {
    let remote = Arc::new(FakeRemote::new());
    remote.put_dir("/srv");
    let fs = Fs::new(remote.clone(), "/srv", opts);
    (remote, fs)
}

/// Like `setup`, with a server that lacks what `off` turns off of its extensions.
pub(super) fn setup_without(off: impl FnOnce(&mut crate::remote::Extensions)) -> (Arc<FakeRemote>, Fs<FakeRemote>) {
    let mut remote = FakeRemote::new();
    off(&mut remote.ext);
    let remote = Arc::new(remote);
    remote.put_dir("/srv");
    let fs = Fs::new(remote.clone(), "/srv", FsOptions::default());
    (remote, fs)
}

pub(super) fn uncached() -> FsOptions {
    FsOptions { cache_timeout: std::time::Duration::ZERO, ..FsOptions::default() }
}

/// Waits (bounded) for the asynchronous closes to reach the remote.
pub(super) async fn closed_soon(remote: &FakeRemote) {
    let done = eventually(|| remote.open_handles() == 0).await;
    assert!(done, "remote handles left open: {}", remote.open_handles());
}

pub(super) fn rw() -> OpenFlags {
    OpenFlags { read: true, write: true, ..OpenFlags::default() }
}

/// Lists `ino` as the kernel does: opendir, readdir until an empty answer, releasedir.
pub(super) async fn list_all(fs: &Fs<FakeRemote>, ino: Ino) -> Vec<String> {
    let fh = fs.opendir(ino).await.unwrap();
    let mut names = Vec::new();
    let mut offset = 0;
    loop {
        let got = fs.readdir(fh, offset).await.unwrap();
        let Some((next, _)) = got.last() else { break };
        offset = *next;
        names.extend(got.into_iter().map(|(_, item)| item.name));
    }
    fs.releasedir(fh);
    names
}

/// A directory `/srv/d` holding `names`, with its listing in the mount's cache.
pub(super) async fn listed_dir(remote: &FakeRemote, fs: &Fs<FakeRemote>, names: &[&str]) -> Ino {
    remote.put_dir("/srv/d");
    for n in names.iter().chain(&["first"]) {
        remote.put_file(&format!("/srv/d/{n}"), n.as_bytes());
    }
    let d = fs.lookup(ROOT, "d").await.unwrap().ino;
    list_all(fs, d).await;
    d
}

pub(super) const S_IFREG_TEST: u32 = crate::remote::S_IFREG;
