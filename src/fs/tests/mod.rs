//! The fs core against the in-memory remote: no kernel, no network. One file per
//! concern, as the code is split; this one holds the harness and the plain operations.

mod attrs;
mod cancel;
mod list_ahead;
mod model;
mod read_only;
mod retries;
mod small_files;
mod unlink;
mod write_behind;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::coordinator::{AttrChange, Fs, FsOptions, OpenFlags, TimeSet};
use super::errno::Errno;
use super::inode::{Ino, ROOT};
use crate::remote::fake::{eventually, FakeRemote};
use crate::remote::{FileKind, Remote};

fn setup() -> (Arc<FakeRemote>, Fs<FakeRemote>) {
    setup_with(FsOptions::default())
}

fn setup_with(opts: FsOptions) -> (Arc<FakeRemote>, Fs<FakeRemote>) {
    let remote = Arc::new(FakeRemote::new());
    remote.put_dir("/srv");
    let fs = Fs::new(remote.clone(), "/srv", opts);
    (remote, fs)
}

/// Like `setup`, with a server that lacks what `off` turns off of its extensions.
fn setup_without(off: impl FnOnce(&mut crate::remote::Extensions)) -> (Arc<FakeRemote>, Fs<FakeRemote>) {
    let mut remote = FakeRemote::new();
    off(&mut remote.ext);
    let remote = Arc::new(remote);
    remote.put_dir("/srv");
    let fs = Fs::new(remote.clone(), "/srv", FsOptions::default());
    (remote, fs)
}

fn uncached() -> FsOptions {
    FsOptions { cache_timeout: std::time::Duration::ZERO, ..FsOptions::default() }
}

/// Waits (bounded) for the asynchronous closes to reach the remote.
async fn closed_soon(remote: &FakeRemote) {
    let done = eventually(|| remote.open_handles() == 0).await;
    assert!(done, "remote handles left open: {}", remote.open_handles());
}

fn rw() -> OpenFlags {
    OpenFlags { read: true, write: true, ..OpenFlags::default() }
}

/// Lists `ino` as the kernel does: opendir, readdir until an empty answer, releasedir.
async fn list_all(fs: &Fs<FakeRemote>, ino: Ino) -> Vec<String> {
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
async fn listed_dir(remote: &FakeRemote, fs: &Fs<FakeRemote>, names: &[&str]) -> Ino {
    remote.put_dir("/srv/d");
    for n in names.iter().chain(&["first"]) {
        remote.put_file(&format!("/srv/d/{n}"), n.as_bytes());
    }
    let d = fs.lookup(ROOT, "d").await.unwrap().ino;
    list_all(fs, d).await;
    d
}

#[tokio::test]
async fn lookup_missing_is_enoent() {
    let (_, fs) = setup();
    assert_eq!(fs.lookup(ROOT, "nope").await, Err(Errno::ENOENT));
}

#[tokio::test]
async fn create_write_read_roundtrip_across_chunks() {
    let (remote, fs) = setup();
    let (e, fh) = fs.create(ROOT, "f", 0o600, rw()).await.unwrap();
    assert_eq!(e.attr.mode & 0o777, 0o600);
    let data: Vec<u8> = (0..(64 * 1024 * 3 + 123)).map(|i| (i % 251) as u8).collect();
    assert_eq!(fs.write(fh, 0, &data).await.unwrap() as usize, data.len());
    assert_eq!(fs.read(fh, 0, data.len() as u32 + 1000).await.unwrap(), data);
    assert_eq!(fs.read(fh, 10, 5).await.unwrap(), data[10..15].to_vec());
    assert_eq!(fs.read(fh, data.len() as u64 + 5, 100).await.unwrap(), Vec::<u8>::new());
    fs.release(fh).await.unwrap();
    assert_eq!(remote.file("/srv/f").unwrap(), data);
    closed_soon(&remote).await;
    assert_eq!(fs.open_handles(), 0);
}

#[tokio::test]
async fn short_reads_are_completed() {
    let (remote, fs) = setup();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 7) as u8).collect();
    remote.put_file("/srv/big", &data);
    remote.max_read.store(1000, Ordering::SeqCst);
    let e = fs.lookup(ROOT, "big").await.unwrap();
    let fh = fs.open(e.ino, OpenFlags { read: true, ..OpenFlags::default() }).await.unwrap();
    assert_eq!(fs.read(fh, 0, 200_000).await.unwrap(), data);
    assert_eq!(fs.read(fh, 150_000, 100_000).await.unwrap(), data[150_000..].to_vec());
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
async fn truncate_on_open() {
    let (remote, fs) = setup();
    remote.put_file("/srv/f", b"hello");
    let e = fs.lookup(ROOT, "f").await.unwrap();
    let fh = fs.open(e.ino, OpenFlags { truncate: true, ..rw() }).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(remote.file("/srv/f").unwrap(), b"");
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
async fn readdir_lists_dot_entries_and_resumes_at_offset() {
    let (remote, fs) = setup();
    for n in ["a", "b", "c"] {
        remote.put_file(&format!("/srv/{n}"), b"");
    }
    let fh = fs.opendir(ROOT).await.unwrap();
    let all = fs.readdir(fh, 0).await.unwrap();
    let names: Vec<_> = all.iter().map(|(_, i)| i.name.clone()).collect();
    assert_eq!(names, [".", "..", "a", "b", "c"]);
    assert!(all.iter().skip(2).all(|(_, i)| i.attr.is_some()));
    let (off, _) = &all[2];
    let rest: Vec<_> = fs.readdir(fh, *off).await.unwrap().into_iter().map(|(_, i)| i.name).collect();
    assert_eq!(rest, ["b", "c"]);
    // The numbers readdir hands out are the ones lookup gives.
    let a = all[2].1.ino;
    assert_eq!(fs.lookup(ROOT, "a").await.unwrap().ino, a);
    fs.releasedir(fh);
    assert_eq!(fs.readdir(fh, 0).await.unwrap_err(), Errno::EBADF);
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

const S_IFREG_TEST: u32 = crate::remote::S_IFREG;

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
async fn bad_handles_are_ebadf() {
    let (_, fs) = setup();
    assert_eq!(fs.read(99, 0, 10).await.unwrap_err(), Errno::EBADF);
    assert_eq!(fs.write(99, 0, b"x").await.unwrap_err(), Errno::EBADF);
    assert_eq!(fs.release(99).await.unwrap_err(), Errno::EBADF);
}

#[tokio::test]
async fn statfs_and_failure_facts() {
    let (_, fs) = setup();
    let s = fs.statfs().await.unwrap();
    assert_eq!(s.blocks_avail, 10);
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
async fn open_of_a_name_removed_elsewhere_is_estale_and_the_next_lookup_asks() {
    let (remote, fs) = setup();
    let d = listed_dir(&remote, &fs, &["gone"]).await;
    let ino = fs.lookup(d, "gone").await.unwrap().ino;
    // Another client removes it; the mount still has it cached.
    remote.remove("/srv/d/gone").await.unwrap();
    let write = OpenFlags { write: true, ..OpenFlags::default() };
    assert_eq!(fs.open(ino, write).await, Err(Errno::ESTALE), "the kernel is told to look again");
    assert_eq!(fs.lookup(d, "gone").await, Err(Errno::ENOENT), "and the look goes to the server");
}

#[tokio::test]
async fn a_big_directory_streams_and_is_not_cached_whole() {
    let (remote, fs) = setup();
    remote.put_dir("/srv/big");
    let n = super::listing::CACHE_UP_TO + 500;
    for i in 0..n {
        remote.put_file(&format!("/srv/big/f{i:06}"), b"");
    }
    let d = fs.lookup(ROOT, "big").await.unwrap().ino;
    let fh = fs.opendir(d).await.unwrap();
    let first = fs.readdir(fh, 0).await.unwrap();
    // What had arrived, not the whole directory.
    assert!(first.len() < n / 2, "the first answer held {} entries", first.len());
    fs.releasedir(fh);
    let names = list_all(&fs, d).await;
    assert_eq!(names.len(), n + 2);
    let unique: std::collections::HashSet<_> = names.iter().collect();
    assert_eq!(unique.len(), n + 2, "an entry came twice");
    assert!(!fs.has_listing("/srv/big"), "a listing too big to keep was cached whole");
}

#[tokio::test]
async fn going_back_in_a_directory_lists_it_again() {
    let (remote, fs) = setup();
    remote.put_dir("/srv/d");
    for i in 0..250 {
        remote.put_file(&format!("/srv/d/f{i:03}"), b"");
    }
    let d = fs.lookup(ROOT, "d").await.unwrap().ino;
    let fh = fs.opendir(d).await.unwrap();
    assert!(fs.readdir(fh, 0).await.unwrap().len() > 2);
    // Read to the end: nothing is kept any more.
    assert!(fs.readdir(fh, 252).await.unwrap().is_empty());
    // rewinddir: from the start again, every entry once more.
    let again = fs.readdir(fh, 0).await.unwrap();
    assert_eq!(again[0].1.name, ".");
    assert_eq!(again[2].1.name, "f000");
    // seekdir to a position kept earlier (telldir after 50 entries).
    let at = fs.readdir(fh, 52).await.unwrap();
    assert_eq!(at[0].1.name, "f050");
    fs.releasedir(fh);
}

#[tokio::test]
async fn names_a_server_should_never_list_are_skipped() {
    let (remote, fs) = setup();
    remote.put_dir("/srv/d");
    remote.put_file("/srv/d/good", b"1");
    {
        let mut odd = remote.odd_entries.lock().unwrap();
        for name in ["../../etc/passwd", "a/b", "", ".", ".."] {
            odd.push(("/srv/d".to_string(), name.to_string()));
        }
    }
    let d = fs.lookup(ROOT, "d").await.unwrap().ino;
    let mut names = list_all(&fs, d).await;
    names.sort();
    assert_eq!(names, vec![".", "..", "good"]);
}

#[tokio::test]
async fn a_read_answered_with_more_than_was_asked_is_refused() {
    let (remote, fs) = setup();
    remote.put_file("/srv/f", b"0123456789");
    let ro = OpenFlags { read: true, ..OpenFlags::default() };
    let f = fs.lookup(ROOT, "f").await.unwrap().ino;
    let plain = Fs::new(remote.clone(), "/srv", FsOptions { read_ahead: 0, ..FsOptions::default() });
    let plain_fh = plain.open(plain.lookup(ROOT, "f").await.unwrap().ino, ro).await.unwrap();
    let fh = fs.open(f, ro).await.unwrap();
    remote.overlong_reads.store(true, Ordering::SeqCst);
    assert_eq!(plain.read(plain_fh, 0, 4).await, Err(Errno::EIO));
    // With read-ahead too.
    assert_eq!(fs.read(fh, 0, 4).await, Err(Errno::EIO));
}
