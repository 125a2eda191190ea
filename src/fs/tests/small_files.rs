//! Small files fetched ahead and served from memory, through the fs core.

use super::*;

#[tokio::test]
async fn small_files_are_fetched_ahead_and_served_from_memory() {
    let (remote, fs) = setup();
    remote.put_dir("/srv/d");
    for i in 0..10 {
        remote.put_file(&format!("/srv/d/f{i}"), format!("content {i}").as_bytes());
    }
    let d = fs.lookup(ROOT, "d").await.unwrap().ino;
    list_all(&fs, d).await;
    let ro = OpenFlags { read: true, ..OpenFlags::default() };
    for i in 0..2 {
        let f = fs.lookup(d, &format!("f{i}")).await.unwrap().ino;
        let fh = fs.open(f, ro).await.unwrap();
        assert_eq!(fs.read(fh, 0, 100).await.unwrap(), format!("content {i}").as_bytes());
        fs.release(fh).await.unwrap();
    }
    let fetched = eventually(|| (2..10).all(|i| fs.holds_content(&format!("/srv/d/f{i}")))).await;
    assert!(fetched, "the directory's other files were not fetched");
    // With the link down, the fetched files still open and read.
    remote.go_down();
    let f = fs.lookup(d, "f7").await.unwrap().ino;
    let fh = fs.open(f, ro).await.unwrap();
    assert_eq!(fs.read(fh, 0, 100).await.unwrap(), &b"content 7"[..]);
    assert_eq!(fs.read(fh, 3, 2).await.unwrap(), &b"te"[..]);
    fs.release(fh).await.unwrap();
    remote.come_back();
    // A change through the mount drops the fetched copy.
    let (_, wh) = fs.create(d, "f8", 0o644, OpenFlags { truncate: true, ..rw() }).await.unwrap();
    fs.write(wh, 0, b"new").await.unwrap();
    fs.fsync(wh).await.unwrap();
    fs.release(wh).await.unwrap();
    let f = fs.lookup(d, "f8").await.unwrap().ino;
    let fh = fs.open(f, ro).await.unwrap();
    assert_eq!(fs.read(fh, 0, 100).await.unwrap(), &b"new"[..]);
}
