//! Reading and writing: whole, in chunks, short, truncated at open; handles that are not open.

use super::*;

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
async fn truncate_on_open() {
    let (remote, fs) = setup();
    remote.put_file("/srv/f", b"hello");
    let e = fs.lookup(ROOT, "f").await.unwrap();
    let fh = fs.open(e.ino, OpenFlags { truncate: true, ..rw() }).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(remote.file("/srv/f").unwrap(), b"");
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
    assert_eq!(plain.read(plain_fh, 0, 4).await.map_err(Errno::from), Err(Errno::EIO));
    // With read-ahead too.
    assert_eq!(fs.read(fh, 0, 4).await.map_err(Errno::from), Err(Errno::EIO));
}

#[tokio::test]
async fn bad_handles_are_ebadf() {
    let (_, fs) = setup();
    assert_eq!(fs.read(99, 0, 10).await.unwrap_err(), Errno::EBADF);
    assert_eq!(fs.write(99, 0, b"x").await.unwrap_err(), Errno::EBADF);
    assert_eq!(fs.release(99).await.unwrap_err(), Errno::EBADF);
}
