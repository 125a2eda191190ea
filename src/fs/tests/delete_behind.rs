//! Delete-behind through the fs core: bursts, ordering, refusals, outages.

use std::sync::atomic::Ordering;

use super::*;

/// `listed_dir`, with a burst of removals started there: its first unlink (of a file
/// named "first") was answered by the server.
async fn removing_in_dir(remote: &FakeRemote, fs: &Fs<FakeRemote>, names: &[&str]) -> Ino {
    let d = listed_dir(remote, fs, names).await;
    fs.unlink(d, "first").await.unwrap();
    assert!(!remote.exists("/srv/d/first"));
    d
}

#[tokio::test]
async fn a_lone_unlink_waits_for_the_server() {
    use futures_util::FutureExt;
    let (remote, fs) = setup();
    let d = listed_dir(&remote, &fs, &["a"]).await;
    remote.removals.hold();
    let mut unlink = Box::pin(fs.unlink(d, "a"));
    assert!(unlink.as_mut().now_or_never().is_none(), "a lone unlink answered before the server");
    remote.removals.release();
    tokio::time::timeout(std::time::Duration::from_secs(5), unlink).await.unwrap().unwrap();
    assert!(!remote.exists("/srv/d/a"), "gone on the server once answered");
}

#[tokio::test]
async fn unlink_answers_before_the_server_and_rmdir_waits_for_it() {
    use futures_util::FutureExt;
    let (remote, fs) = setup();
    let d = removing_in_dir(&remote, &fs, &["a", "b"]).await;
    remote.removals.hold();
    fs.unlink(d, "a").await.unwrap();
    fs.unlink(d, "b").await.unwrap();
    assert!(remote.exists("/srv/d/a"), "answered, but not yet done on the server");
    assert_eq!(fs.lookup(d, "a").await, Err(Errno::ENOENT), "the mount already shows it gone");
    let mut rmdir = Box::pin(fs.rmdir(ROOT, "d"));
    assert!(rmdir.as_mut().now_or_never().is_none(), "rmdir went ahead of the removals in its directory");
    remote.removals.release();
    tokio::time::timeout(std::time::Duration::from_secs(5), rmdir).await.unwrap().unwrap();
    assert!(!remote.exists("/srv/d"));
}

#[tokio::test]
async fn create_after_unlink_waits_so_the_new_file_survives() {
    use futures_util::FutureExt;
    let (remote, fs) = setup();
    let d = removing_in_dir(&remote, &fs, &["f"]).await;
    remote.removals.hold();
    fs.unlink(d, "f").await.unwrap();
    let mut create = Box::pin(fs.create(d, "f", 0o644, rw()));
    assert!(create.as_mut().now_or_never().is_none(), "create went ahead of the removal of the same name");
    remote.removals.release();
    let (_, fh) = tokio::time::timeout(std::time::Duration::from_secs(5), create).await.unwrap().unwrap();
    fs.write(fh, 0, b"new").await.unwrap();
    fs.release(fh).await.unwrap();
    fs.drain_all(std::time::Duration::from_secs(5)).await;
    assert_eq!(remote.file("/srv/d/f").unwrap(), b"new");
}

#[tokio::test]
async fn refused_removal_shows_again_and_rmdir_reports_it() {
    let (remote, fs) = setup();
    let d = removing_in_dir(&remote, &fs, &["keep"]).await;
    remote.refuse_removals.store(true, Ordering::SeqCst);
    fs.unlink(d, "keep").await.unwrap();
    assert_eq!(fs.rmdir(ROOT, "d").await, Err(Errno::EACCES), "the refusal is reported by rmdir");
    assert!(remote.exists("/srv/d/keep"));
    assert!(fs.lookup(d, "keep").await.is_ok(), "the file shows again");
    assert_eq!(fs.rmdir(ROOT, "d").await, Err(Errno::ENOTEMPTY), "reported once");
}

/// Waits (bounded) until the remote has seen `n` removal attempts.
async fn attempted(remote: &FakeRemote, n: u64) {
    let seen = eventually(|| remote.removal_attempts.load(Ordering::SeqCst) >= n).await;
    assert!(seen, "the removal was never tried");
}

/// `d/a` removed behind, the link going down while the removal is out.
async fn removal_caught_by_an_outage(remote: &FakeRemote, fs: &Fs<FakeRemote>) -> Ino {
    let d = removing_in_dir(remote, fs, &["a"]).await;
    let before = remote.removal_attempts.load(Ordering::SeqCst);
    remote.removals.hold();
    fs.unlink(d, "a").await.unwrap();
    remote.go_down();
    remote.removals.release();
    attempted(remote, before + 1).await;
    d
}

#[tokio::test]
async fn removal_out_when_the_link_drops_lands_after_it_returns() {
    let (remote, fs) = setup();
    let d = removal_caught_by_an_outage(&remote, &fs).await;
    // While it cannot land, what must wait for it answers EAGAIN at once.
    assert_eq!(fs.rmdir(ROOT, "d").await, Err(Errno::EAGAIN));
    assert_eq!(fs.create(d, "a", 0o644, rw()).await.unwrap_err(), Errno::EAGAIN);
    assert!(remote.exists("/srv/d/a"));
    remote.come_back();
    assert_eq!(fs.drain_all(std::time::Duration::from_secs(5)).await, 0);
    assert!(!remote.exists("/srv/d/a"));
    fs.rmdir(ROOT, "d").await.unwrap();
}

#[tokio::test]
async fn removal_lost_in_an_outage_spares_a_new_file_of_that_name() {
    let (remote, fs) = setup();
    removal_caught_by_an_outage(&remote, &fs).await;
    // Someone else replaces the file while the link is down.
    remote.put_file("/srv/d/a", b"someone else's, longer");
    remote.come_back();
    fs.drain_all(std::time::Duration::from_secs(5)).await;
    assert_eq!(remote.file("/srv/d/a").unwrap(), b"someone else's, longer");
}
