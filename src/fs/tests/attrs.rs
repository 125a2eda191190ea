//! Attribute changes land where they are made (a symlink itself, never its target) and
//! fail where they are made (only what cannot be refused waits behind queued writes).

use super::*;

fn mtime(t: u32) -> AttrChange {
    AttrChange { mtime: Some(TimeSet::At(t)), atime: Some(TimeSet::At(t)), ..AttrChange::default() }
}

#[tokio::test]
async fn a_change_on_a_symlink_changes_the_link_not_its_target() {
    let (remote, fs) = setup();
    remote.put_file("/srv/t", b"t");
    let l = fs.symlink(ROOT, "l", "t").await.unwrap();
    let a = fs.setattr(l.ino, None, mtime(1000)).await.unwrap();
    assert_eq!(a.mtime, 1000);
    assert_eq!(remote.lstat("/srv/l").await.unwrap().mtime, 1000);
    assert_eq!(remote.lstat("/srv/t").await.unwrap().mtime, 0, "the target's time changed");
    let a = fs.setattr(l.ino, None, AttrChange { uid: Some(7), gid: Some(8), ..AttrChange::default() }).await.unwrap();
    assert_eq!((a.uid, a.gid), (7, 8));
    assert_eq!(remote.lstat("/srv/t").await.unwrap().uid, 0, "the target's owner changed");
}

#[tokio::test]
async fn without_lsetstat_a_change_on_a_symlink_is_refused() {
    let (remote, fs) = setup_without(|e| e.lsetstat = false);
    remote.put_file("/srv/t", b"t");
    let l = fs.symlink(ROOT, "l", "t").await.unwrap();
    assert_eq!(fs.setattr(l.ino, None, mtime(1000)).await.unwrap_err(), Errno::EOPNOTSUPP);
    assert_eq!(remote.lstat("/srv/t").await.unwrap().mtime, 0, "the target's time changed");
}

/// With the link down, a change that waits behind the queued writes is answered at once
/// and one sent now fails: that tells which way each one went.
async fn goes_behind(login: u32, file_uid: u32, change: AttrChange) -> bool {
    let (remote, fs) = setup_with(FsOptions { login_uid: Some(login), ..FsOptions::default() });
    let (e, fh) = fs.create(ROOT, "f", 0o644, rw()).await.unwrap();
    // Owned by `file_uid` (sent now, with nothing queued yet).
    let owner = AttrChange { uid: Some(file_uid), gid: Some(file_uid), ..AttrChange::default() };
    assert_eq!(fs.setattr(e.ino, Some(fh), owner).await.unwrap().uid, file_uid);
    fs.write(fh, 0, b"data").await.unwrap();
    remote.go_down();
    let behind = fs.setattr(e.ino, Some(fh), change).await.is_ok();
    remote.come_back();
    behind
}

#[tokio::test]
async fn only_changes_the_server_cannot_refuse_wait_behind_writes() {
    let chmod = AttrChange { mode: Some(0o600), ..AttrChange::default() };
    let chown = AttrChange { uid: Some(5), ..AttrChange::default() };
    let cases = [
        (1000, 1000, chmod, true, "the login user's own file: chmod cannot be refused"),
        (1000, 1000, mtime(5), true, "the login user's own file: utimens cannot be refused"),
        (1000, 1000, chown, false, "a chown may be refused"),
        (1000, 0, chmod, false, "another user's file: chmod may be refused"),
        (0, 0, chown, true, "root may do anything"),
    ];
    for (login, file_uid, change, want, why) in cases {
        assert_eq!(goes_behind(login, file_uid, change).await, want, "{why}");
    }
}

/// Without posix-rename@openssh.com: a rename over an existing name replaces it (the
/// target moved aside, then removed), and one the server refuses leaves the target.
#[tokio::test]
async fn without_posix_rename_a_failed_rename_keeps_its_target() {
    let (remote, fs) = setup_without(|e| e.posix_rename = false);
    remote.put_file("/srv/a", b"a");
    remote.put_file("/srv/b", b"b");
    fs.rename(ROOT, "a", ROOT, "b", 0).await.unwrap();
    assert_eq!(remote.file("/srv/b").as_deref(), Some(&b"a"[..]));
    assert!(!remote.exists("/srv/a"));

    remote.put_file("/srv/c", b"c");
    remote.refuse_renames_of.lock().unwrap().push("/srv/c".into());
    assert_eq!(fs.rename(ROOT, "c", ROOT, "b", 0).await.unwrap_err(), Errno::EACCES);
    assert_eq!(remote.file("/srv/b").as_deref(), Some(&b"a"[..]), "the refused rename lost its target");
    assert_eq!(remote.file("/srv/c").as_deref(), Some(&b"c"[..]));
    let names = list_all(&fs, ROOT).await;
    assert!(!names.iter().any(|n| n.contains("aside")), "a moved-aside target was left: {names:?}");
}

#[tokio::test]
async fn setattr_size_mode_times() {
    let (remote, fs) = setup();
    remote.put_file("/srv/f", b"hello world");
    let f = fs.lookup(ROOT, "f").await.unwrap().ino;
    let a = fs.setattr(f, None, AttrChange { size: Some(5), ..AttrChange::default() }).await.unwrap();
    assert_eq!(a.size, 5);
    assert_eq!(remote.file("/srv/f").unwrap(), b"hello");
    let a = fs.setattr(f, None, AttrChange { mode: Some(0o100600), ..AttrChange::default() }).await.unwrap();
    assert_eq!(a.mode, S_IFREG_TEST | 0o600);
    let a = fs.setattr(f, None, AttrChange { mtime: Some(TimeSet::At(1234)), ..AttrChange::default() }).await.unwrap();
    assert_eq!((a.atime, a.mtime), (0, 1234));
    // A size change through an open handle goes to that handle.
    let fh = fs.open(f, rw()).await.unwrap();
    let a = fs.setattr(f, Some(fh), AttrChange { size: Some(2), ..AttrChange::default() }).await.unwrap();
    assert_eq!(a.size, 2);
}
