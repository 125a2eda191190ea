//! Retries of operations whose answer the link lost (`retries`), through the fs core.

use std::sync::atomic::Ordering;

use super::*;

#[tokio::test]
async fn retried_mkdir_after_lost_reply_succeeds() {
    let (remote, fs) = setup();
    remote.lose_reply.store(true, Ordering::SeqCst);
    // The server made the directory, but the answer was lost with the link.
    assert_eq!(fs.mkdir(ROOT, "d", 0o755).await.unwrap_err(), Errno::EAGAIN);
    assert!(remote.exists("/srv/d"));
    // The program retries: the first attempt had landed, so this is a success.
    let e = fs.mkdir(ROOT, "d", 0o755).await.unwrap();
    assert_eq!(e.attr.kind(), FileKind::Dir);
    // Without a lost answer before it, EEXIST stays EEXIST.
    assert_eq!(fs.mkdir(ROOT, "d", 0o755).await.unwrap_err(), Errno::EEXIST);
}

#[tokio::test]
async fn retried_unlink_and_rename_after_lost_reply_succeed() {
    let (remote, fs) = setup();
    remote.put_file("/srv/a", b"1");
    remote.put_file("/srv/b", b"2");
    remote.lose_reply.store(true, Ordering::SeqCst);
    assert_eq!(fs.unlink(ROOT, "a").await.unwrap_err(), Errno::EAGAIN);
    fs.unlink(ROOT, "a").await.unwrap();
    assert_eq!(fs.unlink(ROOT, "a").await.unwrap_err(), Errno::ENOENT);

    remote.lose_reply.store(true, Ordering::SeqCst);
    assert_eq!(fs.rename(ROOT, "b", ROOT, "c", 0).await.unwrap_err(), Errno::EAGAIN);
    fs.rename(ROOT, "b", ROOT, "c", 0).await.unwrap();
    assert_eq!(remote.file("/srv/c").unwrap(), b"2");
    assert_eq!(fs.rename(ROOT, "b", ROOT, "c", 0).await.unwrap_err(), Errno::ENOENT);
}

#[tokio::test]
async fn retried_exclusive_create_after_lost_reply_opens_the_file() {
    let (remote, fs) = setup();
    let flags = OpenFlags { exclusive: true, ..rw() };
    remote.lose_reply.store(true, Ordering::SeqCst);
    assert_eq!(fs.create(ROOT, "f", 0o644, flags).await.unwrap_err(), Errno::EAGAIN);
    assert!(remote.exists("/srv/f"));
    let (_, fh) = fs.create(ROOT, "f", 0o644, flags).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(fs.create(ROOT, "f", 0o644, flags).await.unwrap_err(), Errno::EEXIST);
}
