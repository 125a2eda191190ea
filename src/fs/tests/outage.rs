//! While the link is down: EAGAIN at once, cached metadata still answered, the mount's own changes seen.

use super::*;

#[tokio::test]
async fn link_down_gives_eagain() {
    let (remote, fs) = setup_with(uncached());
    remote.put_file("/srv/f", b"x");
    let f = fs.lookup(ROOT, "f").await.unwrap().ino;
    remote.go_down();
    assert_eq!(fs.getattr(f).await.unwrap_err(), Errno::EAGAIN);
    assert_eq!(fs.lookup(ROOT, "g").await.unwrap_err(), Errno::EAGAIN);
    assert_eq!(fs.mkdir(ROOT, "d", 0o755).await.unwrap_err(), Errno::EAGAIN);
}

#[tokio::test]
async fn cached_metadata_answers_while_down() {
    let (remote, fs) = setup();
    remote.put_dir("/srv/d");
    remote.put_file("/srv/d/f", b"abc");
    let d = fs.lookup(ROOT, "d").await.unwrap().ino;
    list_all(&fs, d).await;
    remote.go_down();
    // Known from the listing: attributes, the entry, and that other names do not exist.
    let f = fs.lookup(d, "f").await.unwrap();
    assert_eq!(f.attr.size, 3);
    assert_eq!(fs.getattr(f.ino).await.unwrap().size, 3);
    assert_eq!(fs.lookup(d, "nope").await.unwrap_err(), Errno::ENOENT);
    let fh = fs.opendir(d).await.unwrap();
    assert_eq!(fs.readdir(fh, 0).await.unwrap().len(), 3);
    // Not known: needs the server.
    assert_eq!(fs.lookup(ROOT, "other").await.unwrap_err(), Errno::EAGAIN);
}

#[tokio::test]
async fn own_changes_are_seen_at_once_through_the_cache() {
    let (remote, fs) = setup();
    let d = fs.mkdir(ROOT, "d", 0o755).await.unwrap().ino;
    // A fresh directory is known empty: no question to the server.
    remote.go_down();
    assert_eq!(fs.lookup(d, "x").await.unwrap_err(), Errno::ENOENT);
    remote.come_back();
    let (_, fh) = fs.create(d, "x", 0o644, rw()).await.unwrap();
    fs.write(fh, 0, b"12345").await.unwrap();
    let x = fs.lookup(d, "x").await.unwrap();
    assert_eq!(fs.getattr(x.ino).await.unwrap().size, 5);
    fs.release(fh).await.unwrap();
    fs.rename(d, "x", d, "y", 0).await.unwrap();
    assert_eq!(fs.lookup(d, "x").await.unwrap_err(), Errno::ENOENT);
    assert_eq!(fs.lookup(d, "y").await.unwrap().attr.size, 5);
    fs.unlink(d, "y").await.unwrap();
    assert_eq!(fs.lookup(d, "y").await.unwrap_err(), Errno::ENOENT);
    let h = fs.opendir(d).await.unwrap();
    assert_eq!(fs.readdir(h, 0).await.unwrap().len(), 2);
}

#[tokio::test]
async fn statfs_and_failure_facts() {
    let (_, fs) = setup();
    let s = fs.statfs().await.unwrap();
    assert_eq!(s.blocks_avail, 10);
}
