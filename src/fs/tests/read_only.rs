//! A read-only mount refuses every change with EROFS before anything reaches the server,
//! and still reads.

use super::*;

fn read_only() -> FsOptions {
    FsOptions { read_only: true, ..FsOptions::default() }
}

#[tokio::test]
async fn every_change_is_refused_before_the_server_is_asked() {
    let (remote, fs) = setup_with(read_only());
    remote.put_file("/srv/f", b"data");
    remote.put_dir("/srv/d");
    let f = fs.lookup(ROOT, "f").await.unwrap().ino;
    let d = fs.lookup(ROOT, "d").await.unwrap().ino;
    let reader = fs.open(f, OpenFlags { read: true, ..OpenFlags::default() }).await.unwrap();
    // Down: a change that went to the server would fail otherwise than with EROFS.
    remote.go_down();
    let chmod = AttrChange { mode: Some(0o600), ..AttrChange::default() };
    let truncate = AttrChange { size: Some(0), ..AttrChange::default() };
    let refused = [
        ("chmod", fs.setattr(f, None, chmod).await.err()),
        ("truncate", fs.setattr(f, Some(reader), truncate).await.err()),
        ("open for writing", fs.open(f, rw()).await.err()),
        ("open to truncate", fs.open(f, OpenFlags { read: true, truncate: true, ..OpenFlags::default() }).await.err()),
        ("create", fs.create(ROOT, "new", 0o644, rw()).await.err()),
        ("mkdir", fs.mkdir(ROOT, "newdir", 0o755).await.err()),
        ("symlink", fs.symlink(ROOT, "l", "f").await.err()),
        ("link", fs.link(f, ROOT, "hard").await.err()),
        ("rename", fs.rename(ROOT, "f", ROOT, "g", 0).await.err()),
        ("unlink", fs.unlink(ROOT, "f").await.err()),
        ("rmdir", fs.rmdir(ROOT, "d").await.err()),
        ("write", fs.write(reader, 0, b"x").await.err()),
    ];
    for (what, err) in refused {
        assert_eq!(err.map(Errno::from), Some(Errno::EROFS), "{what}");
    }
    remote.come_back();
    assert_eq!(remote.file("/srv/f").unwrap(), b"data");
    assert!(remote.exists("/srv/d") && !remote.exists("/srv/g") && !remote.exists("/srv/new"));
    assert_eq!(fs.read(reader, 0, 10).await.unwrap().as_ref(), b"data");
    assert_eq!(list_all(&fs, d).await, [".", ".."]);
    fs.release(reader).await.unwrap();
}

#[tokio::test]
async fn a_writable_mount_is_not_refused() {
    let (remote, fs) = setup();
    let (_, fh) = fs.create(ROOT, "new", 0o644, rw()).await.unwrap();
    fs.write(fh, 0, b"x").await.unwrap();
    fs.flush(fh).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(remote.file("/srv/new").unwrap(), b"x");
}
