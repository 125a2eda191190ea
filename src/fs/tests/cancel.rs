//! Calls answered early (the program is being stopped) at each point where their
//! operation waits on the server: the operation runs on to its end, and afterwards the
//! mount's view agrees with the server's, nothing was left moved aside, and no handle is
//! left open on either side.

use std::future::Future;
use std::sync::atomic::AtomicBool;

use super::super::coordinator::Entry;
use super::super::fuse::{close_unheard, forget_unheard, release_unheard, Ctx};
use super::*;

/// The names the checks look at, under `/srv`.
const NAMES: [&str; 4] = ["a", "b", "f", "new"];

/// A server and a mount of it.
type Mounted = (Arc<FakeRemote>, Arc<Fs<FakeRemote>>);

fn server() -> Mounted {
    let (remote, fs) = setup();
    (remote, Arc::new(fs))
}

fn server_without_posix_rename() -> Mounted {
    let (remote, fs) = setup_without(|e| e.posix_rename = false);
    (remote, Arc::new(fs))
}

/// Runs `op` as a kernel call whose program is being stopped while the `k`-th request
/// from now waits on the server; the hold is let go once the call has answered. What a
/// call that did answer handed the kernel, the kernel gives back (`undo`, as a program
/// closing what it opened). Returns the answer, after the mount's work has ended.
async fn stopped_at_request<T, U: Future<Output = ()>>(
    remote: &FakeRemote,
    fs: &Fs<FakeRemote>,
    k: u64,
    op: impl Future<Output = FsResult<T>>,
    undo: impl FnOnce(T) -> U + Copy,
) -> Result<(), Errno> {
    remote.hold_request(remote.requests() + k);
    let stopped = Arc::new(AtomicBool::new(true));
    let cx = Ctx::stopped_by(stopped);
    let answer = std::sync::Mutex::new(None);
    let call = cx.call(op, |r| *answer.lock().unwrap() = Some(r), undo);
    let release = async {
        assert!(eventually(|| answer.lock().unwrap().is_some()).await, "the call never answered");
        remote.held.release();
    };
    futures_util::join!(call, release);
    let answer = answer.into_inner().unwrap().unwrap();
    let answer = match answer {
        Ok(heard) => {
            undo(heard).await;
            Ok(())
        }
        Err(e) => Err(e),
    };
    let closed = eventually(|| remote.open_handles() == 0 && fs.open_handles() == 0).await;
    assert!(
        closed,
        "a handle was left open: {} on the server, {} in the mount",
        remote.open_handles(),
        fs.open_handles()
    );
    answer
}

/// The mount and the server agree on every name the tests use, and nothing is left
/// moved aside.
async fn agree(remote: &FakeRemote, fs: &Fs<FakeRemote>, what: &str) {
    for name in NAMES {
        let path = format!("/srv/{name}");
        let mount = fs.lookup(ROOT, name).await;
        assert_eq!(mount.is_ok(), remote.exists(&path), "{what}: the mount and the server disagree on {name}");
        if let (Ok(e), Some(data)) = (mount, remote.file(&path)) {
            assert_eq!(e.attr.size, data.len() as u64, "{what}: the size of {name}");
            let attr = fs.getattr(e.ino).await.unwrap();
            let on_server = remote.lstat(&path).await.unwrap();
            assert_eq!(attr.mode, on_server.mode, "{what}: the mode of {name}");
        }
    }
    let aside: Vec<String> = remote.paths().into_iter().filter(|p| p.contains("moor-aside")).collect();
    assert!(aside.is_empty(), "{what}: left moved aside: {aside:?}");
}

/// Runs `case` with the program stopped at its first request, then its second, and so
/// on, each on a fresh server, until the operation finishes before the stop.
async fn at_every_step<F: Future<Output = Result<(), Errno>>>(
    what: &str,
    new_server: fn() -> Mounted,
    case: impl Fn(Arc<FakeRemote>, Arc<Fs<FakeRemote>>, u64) -> F,
) {
    for k in 1..=12 {
        let (remote, fs) = new_server();
        remote.put_file("/srv/a", b"aaa");
        remote.put_file("/srv/b", b"bbbbbb");
        remote.put_file("/srv/f", b"ffff");
        for name in NAMES {
            let _ = fs.lookup(ROOT, name).await;
        }
        let answer = case(remote.clone(), fs.clone(), k).await;
        agree(&remote, &fs, &format!("{what}, stopped at request {k}")).await;
        if answer.is_ok() {
            return;
        }
        assert_eq!(answer, Err(Errno::EINTR), "{what}, stopped at request {k}");
    }
    panic!("{what} never finished before the stop");
}

#[tokio::test]
async fn a_stopped_rename_still_lands_in_full() {
    at_every_step("posix-rename", server, |remote, fs, k| async move {
        stopped_at_request(&remote, &fs, k, fs.rename(ROOT, "a", ROOT, "b", 0), nothing).await
    })
    .await;
    at_every_step("rename moving the target aside", server_without_posix_rename, |remote, fs, k| async move {
        stopped_at_request(&remote, &fs, k, fs.rename(ROOT, "a", ROOT, "b", 0), nothing).await
    })
    .await;
}

#[tokio::test]
async fn a_stopped_open_or_create_leaves_no_handle() {
    at_every_step("open", server, |remote, fs, k| async move {
        let ino = fs.lookup(ROOT, "f").await.unwrap().ino;
        stopped_at_request(&remote, &fs, k, fs.open(ino, rw()), |fh| release_unheard(&fs, fh)).await
    })
    .await;
    at_every_step("create", server, |remote, fs, k| async move {
        let create = fs.create(ROOT, "new", 0o644, rw());
        stopped_at_request(&remote, &fs, k, create, |(e, fh): (Entry, u64)| close_unheard(&fs, e, fh)).await
    })
    .await;
}

#[tokio::test]
async fn stopped_changes_are_known_as_they_landed() {
    at_every_step("unlink", server, |remote, fs, k| async move {
        stopped_at_request(&remote, &fs, k, fs.unlink(ROOT, "f"), nothing).await
    })
    .await;
    at_every_step("mkdir", server, |remote, fs, k| async move {
        stopped_at_request(&remote, &fs, k, fs.mkdir(ROOT, "new", 0o755), |e| forget_unheard(&fs, e)).await
    })
    .await;
    at_every_step("chmod", server, |remote, fs, k| async move {
        let ino = fs.lookup(ROOT, "f").await.unwrap().ino;
        let chmod = AttrChange { mode: Some(0o600), ..AttrChange::default() };
        stopped_at_request(&remote, &fs, k, fs.setattr(ino, None, chmod), nothing).await
    })
    .await;
    at_every_step("truncate", server, |remote, fs, k| async move {
        let ino = fs.lookup(ROOT, "f").await.unwrap().ino;
        let truncate = AttrChange { size: Some(1), ..AttrChange::default() };
        stopped_at_request(&remote, &fs, k, fs.setattr(ino, None, truncate), nothing).await
    })
    .await;
}

fn nothing<T>(_: T) -> std::future::Ready<()> {
    std::future::ready(())
}
