//! Names: lookup, create, mkdir, rmdir, rename, links, and the inode numbers that follow them.

use super::*;

#[tokio::test]
async fn lookup_missing_is_enoent() {
    let (_, fs) = setup();
    assert_eq!(fs.lookup(ROOT, "nope").await.map_err(Errno::from), Err(Errno::ENOENT));
}

#[tokio::test]
async fn exclusive_create_of_existing_is_eexist() {
    let (remote, fs) = setup();
    remote.put_file("/srv/f", b"x");
    let flags = OpenFlags { exclusive: true, ..rw() };
    assert_eq!(fs.create(ROOT, "f", 0o644, flags).await.unwrap_err(), Errno::EEXIST);
    assert_eq!(remote.file("/srv/f").unwrap(), b"x");
}

#[tokio::test]
async fn directory_errors_map_to_posix() {
    let (remote, fs) = setup();
    remote.put_dir("/srv/d");
    remote.put_file("/srv/d/x", b"");
    remote.put_file("/srv/f", b"");
    assert_eq!(fs.mkdir(ROOT, "d", 0o755).await.unwrap_err(), Errno::EEXIST);
    assert_eq!(fs.rmdir(ROOT, "d").await.unwrap_err(), Errno::ENOTEMPTY);
    assert_eq!(fs.rmdir(ROOT, "f").await.unwrap_err(), Errno::ENOTDIR);
    assert_eq!(fs.unlink(ROOT, "d").await.unwrap_err(), Errno::EISDIR);
    assert_eq!(fs.rmdir(ROOT, "missing").await.unwrap_err(), Errno::ENOENT);
    assert_eq!(fs.symlink(ROOT, "f", "t").await.unwrap_err(), Errno::EEXIST);
    let long = "x".repeat(300);
    assert_eq!(fs.mkdir(ROOT, &long, 0o755).await.unwrap_err(), Errno::ENAMETOOLONG);
}

#[tokio::test]
async fn mkdir_rmdir() {
    let (remote, fs) = setup();
    let e = fs.mkdir(ROOT, "d", 0o750).await.unwrap();
    assert_eq!(e.attr.kind(), FileKind::Dir);
    assert!(remote.exists("/srv/d"));
    fs.rmdir(ROOT, "d").await.unwrap();
    assert!(!remote.exists("/srv/d"));
}

#[tokio::test]
async fn inode_numbers_stable_and_follow_renames() {
    let (remote, fs) = setup();
    remote.put_dir("/srv/d");
    remote.put_file("/srv/d/f", b"1");
    let d = fs.lookup(ROOT, "d").await.unwrap().ino;
    let f = fs.lookup(d, "f").await.unwrap().ino;
    assert_eq!(fs.lookup(d, "f").await.unwrap().ino, f);
    fs.rename(ROOT, "d", ROOT, "e", 0).await.unwrap();
    assert!(remote.exists("/srv/e/f"));
    let e = fs.lookup(ROOT, "e").await.unwrap().ino;
    assert_eq!(e, d);
    assert_eq!(fs.lookup(e, "f").await.unwrap().ino, f);
    // The moved file is still reachable by its old number.
    assert_eq!(fs.getattr(f).await.unwrap().size, 1);
}

#[tokio::test]
async fn unlinked_path_gets_a_new_number() {
    let (remote, fs) = setup();
    remote.put_file("/srv/f", b"1");
    let a = fs.lookup(ROOT, "f").await.unwrap().ino;
    fs.unlink(ROOT, "f").await.unwrap();
    // The server changes only after the removal landed.
    fs.drain_all(std::time::Duration::from_secs(5)).await;
    remote.put_file("/srv/f", b"2");
    let b = fs.lookup(ROOT, "f").await.unwrap().ino;
    assert_ne!(a, b);
}

#[tokio::test]
async fn rename_replaces_and_refuses_properly() {
    let (remote, fs) = setup();
    remote.put_file("/srv/a", b"a");
    remote.put_file("/srv/b", b"b");
    fs.rename(ROOT, "a", ROOT, "b", 0).await.unwrap();
    assert_eq!(remote.file("/srv/b").unwrap(), b"a");
    assert!(!remote.exists("/srv/a"));
    remote.put_file("/srv/c", b"c");
    assert_eq!(fs.rename(ROOT, "c", ROOT, "b", libc::RENAME_NOREPLACE).await.unwrap_err(), Errno::EEXIST);
    assert_eq!(fs.rename(ROOT, "c", ROOT, "b", libc::RENAME_EXCHANGE).await.unwrap_err(), Errno::EINVAL);
    remote.put_dir("/srv/full");
    remote.put_file("/srv/full/x", b"");
    remote.put_dir("/srv/empty");
    assert_eq!(fs.rename(ROOT, "empty", ROOT, "full", 0).await.unwrap_err(), Errno::ENOTEMPTY);
    assert_eq!(fs.rename(ROOT, "empty", ROOT, "c", 0).await.unwrap_err(), Errno::ENOTDIR);
    assert_eq!(fs.rename(ROOT, "c", ROOT, "empty", 0).await.unwrap_err(), Errno::EISDIR);
    assert_eq!(fs.rename(ROOT, "nope", ROOT, "z", 0).await.unwrap_err(), Errno::ENOENT);
}

#[tokio::test]
async fn symlink_and_hardlink() {
    let (remote, fs) = setup();
    remote.put_file("/srv/f", b"data");
    let s = fs.symlink(ROOT, "s", "f").await.unwrap();
    assert_eq!(s.attr.kind(), FileKind::Symlink);
    assert_eq!(fs.readlink(s.ino).await.unwrap(), "f");
    let f = fs.lookup(ROOT, "f").await.unwrap();
    let l = fs.link(f.ino, ROOT, "l").await.unwrap();
    assert_eq!(l.attr.size, 4);
    assert_eq!(remote.file("/srv/l").unwrap(), b"data");
}

#[tokio::test]
async fn hardlink_without_extension_is_unsupported() {
    let remote = Arc::new({
        let mut r = FakeRemote::new();
        r.ext.hardlink = false;
        r
    });
    remote.put_file("/f", b"");
    let fs = Fs::new(remote, "/", FsOptions::default());
    let f = fs.lookup(ROOT, "f").await.unwrap();
    assert_eq!(fs.link(f.ino, ROOT, "l").await.unwrap_err(), Errno::EOPNOTSUPP);
}

#[tokio::test]
async fn open_of_a_name_removed_elsewhere_is_estale_and_the_next_lookup_asks() {
    let (remote, fs) = setup();
    let d = listed_dir(&remote, &fs, &["gone"]).await;
    let ino = fs.lookup(d, "gone").await.unwrap().ino;
    // Another client removes it; the mount still has it cached.
    remote.remove("/srv/d/gone").await.unwrap();
    let write = OpenFlags { write: true, ..OpenFlags::default() };
    assert_eq!(fs.open(ino, write).await.map_err(Errno::from), Err(Errno::ESTALE), "the kernel is told to look again");
    assert_eq!(fs.lookup(d, "gone").await.map_err(Errno::from), Err(Errno::ENOENT), "and the look goes to the server");
}
