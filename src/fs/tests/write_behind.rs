//! Write-behind through the fs core: writes kept across outages, the dirty budget,
//! attribute changes queued behind writes.

use super::*;

#[tokio::test]
async fn writes_accepted_while_down_are_kept_and_replayed() {
    let (remote, fs) = setup();
    let (e, fh) = fs.create(ROOT, "f", 0o644, rw()).await.unwrap();
    remote.go_down();
    assert_eq!(fs.write(fh, 0, b"hello ").await.unwrap(), 6);
    assert_eq!(fs.write(fh, 6, b"world").await.unwrap(), 5);
    // The size counts the queued writes, and close says the data is not there yet.
    assert_eq!(fs.queued_end(e.ino), 11);
    assert_eq!(fs.flush(fh).await.unwrap_err(), Errno::EAGAIN);
    assert_eq!(fs.fsync(fh).await.unwrap_err(), Errno::EAGAIN);
    assert_eq!(remote.file("/srv/f").unwrap(), b"");
    remote.come_back();
    fs.fsync(fh).await.unwrap();
    assert_eq!(remote.file("/srv/f").unwrap(), b"hello world");
    fs.release(fh).await.unwrap();
    closed_soon(&remote).await;
}

#[tokio::test]
async fn released_file_still_drains_after_the_outage() {
    let (remote, fs) = setup();
    let (_, fh) = fs.create(ROOT, "f", 0o644, rw()).await.unwrap();
    remote.go_down();
    fs.write(fh, 0, b"late").await.unwrap();
    fs.release(fh).await.unwrap();
    remote.come_back();
    assert_eq!(fs.drain_all(std::time::Duration::from_secs(5)).await, 0);
    assert_eq!(remote.file("/srv/f").unwrap(), b"late");
}

#[tokio::test]
async fn dirty_budget_full_while_down_is_eagain_not_loss() {
    let remote = Arc::new(FakeRemote::new());
    let fs = Fs::new(remote.clone(), "/", FsOptions { dirty_limit: 8 * 1024, ..FsOptions::default() });
    let (_, fh) = fs.create(ROOT, "f", 0o644, rw()).await.unwrap();
    remote.go_down();
    fs.write(fh, 0, &[1; 8 * 1024]).await.unwrap();
    assert_eq!(fs.write(fh, 8 * 1024, &[2; 1024]).await.unwrap_err(), Errno::EAGAIN);
    remote.come_back();
    fs.fsync(fh).await.unwrap();
    // Room again: the refused write can be retried.
    fs.write(fh, 8 * 1024, &[2; 1024]).await.unwrap();
    fs.fsync(fh).await.unwrap();
    let data = remote.file("/f").unwrap();
    assert_eq!(data.len(), 9 * 1024);
    assert!(data[..8192].iter().all(|b| *b == 1) && data[8192..].iter().all(|b| *b == 2));
}

#[tokio::test]
async fn failed_link_reports_eio() {
    let (remote, fs) = setup_with(uncached());
    remote.put_file("/srv/f", b"x");
    let f = fs.lookup(ROOT, "f").await.unwrap().ino;
    remote.fail_for_good();
    assert_eq!(fs.getattr(f).await.unwrap_err(), Errno::EIO);
}

/// The fake makes files as uid 0: with that as the login uid, they are the login
/// user's own, whose mode and time changes may wait behind the writes.
fn owned() -> FsOptions {
    FsOptions { login_uid: Some(0), ..FsOptions::default() }
}

#[tokio::test]
async fn attribute_changes_on_an_open_file_queue_behind_its_writes() {
    let (remote, fs) = setup_with(owned());
    let (e, fh) = fs.create(ROOT, "f", 0o600, rw()).await.unwrap();
    remote.go_down();
    fs.write(fh, 0, b"data").await.unwrap();
    // Answered at once, from what is known, even with the link down.
    let change = AttrChange {
        mode: Some(0o640),
        mtime: Some(TimeSet::At(777)),
        atime: Some(TimeSet::At(1)),
        ..AttrChange::default()
    };
    let a = fs.setattr(e.ino, Some(fh), change).await.unwrap();
    assert_eq!((a.mode & 0o777, a.mtime, a.size), (0o640, 777, 4));
    remote.come_back();
    fs.fsync(fh).await.unwrap();
    assert_eq!(remote.file("/srv/f").unwrap(), b"data");
    let server = remote.lstat("/srv/f").await.unwrap();
    assert_eq!((server.mode & 0o777, server.mtime), (0o640, 777));
    fs.release(fh).await.unwrap();
}

/// A directory `/srv/d` holding `names`, with its listing in the mount's cache.

#[tokio::test]
async fn fchmod_without_a_handle_queues_behind_the_files_one_writer() {
    let (remote, fs) = setup_with(owned());
    let (e, fh) = fs.create(ROOT, "f", 0o600, rw()).await.unwrap();
    remote.go_down();
    fs.write(fh, 0, b"data").await.unwrap();
    // The kernel sends fchmod, fchown and futimens without their handle.
    let chmod = AttrChange { mode: Some(0o644), ..AttrChange::default() };
    let a = fs.setattr(e.ino, None, chmod).await.unwrap();
    assert_eq!(a.mode & 0o777, 0o644, "answered from what is known while the link is down");
    remote.come_back();
    fs.fsync(fh).await.unwrap();
    // With a second writer the order against its writes is unknown: to the server
    // (which, being unreachable, makes it EAGAIN rather than queued).
    let fh2 = fs.open(e.ino, rw()).await.unwrap();
    remote.go_down();
    let again = AttrChange { mode: Some(0o600), ..AttrChange::default() };
    assert_eq!(fs.setattr(e.ino, None, again).await.unwrap_err(), Errno::EAGAIN);
    remote.come_back();
    fs.release(fh2).await.unwrap();
    assert_eq!(remote.lstat("/srv/f").await.unwrap().mode & 0o777, 0o644);
    fs.release(fh).await.unwrap();
}

#[tokio::test]
async fn a_file_keeps_as_many_writes_out_as_the_remote_asks() {
    let (remote, fs) = setup();
    remote.write_depth.store(3, Ordering::SeqCst);
    let (_, fh) = fs.create(ROOT, "f", 0o644, rw()).await.unwrap();
    remote.writes.hold();
    let chunk = remote.write_size() as usize;
    let data: Vec<u8> = (0..10 * chunk).map(|i| (i % 251) as u8).collect();
    fs.write(fh, 0, &data).await.unwrap();
    assert!(eventually(|| remote.writes_waiting.load(Ordering::SeqCst) == 3).await, "three writes never went out");
    remote.writes.release();
    fs.fsync(fh).await.unwrap();
    assert_eq!(remote.most_writes_waiting.load(Ordering::SeqCst), 3, "more writes went out than asked");
    assert_eq!(remote.file("/srv/f").unwrap(), data);
    fs.release(fh).await.unwrap();
}
