use super::*;
use crate::remote::fake::{read_all, FakeRemote};

fn reading() -> OpenOptions {
    OpenOptions { read: true, ..OpenOptions::default() }
}

/// A remote with a cache in a fresh directory, and the directory.
fn cached(fake: FakeRemote) -> (tempfile::TempDir, Offline<FakeRemote>) {
    let dir = tempfile::tempdir().unwrap();
    let cache = OfflineCache::open(dir.path(), 64 << 20).unwrap();
    (dir, Offline::new(Arc::new(fake), Some(cache)))
}

/// Waits until what was sent to the store is in it.
fn settle(r: &Offline<FakeRemote>) {
    r.flush();
}

async fn list_all(r: &Offline<FakeRemote>, path: &str) -> Result<Vec<String>> {
    let mut s = r.list(path).await?;
    let mut names = Vec::new();
    while let Some(batch) = s.next().await {
        names.extend(batch?.into_iter().map(|e| e.name).filter(|n| n != "." && n != ".."));
    }
    names.sort();
    Ok(names)
}

fn tree() -> FakeRemote {
    let fake = FakeRemote::new();
    fake.put_dir("/r");
    fake.put_file("/r/big", &(0..200_000u32).map(|i| i as u8).collect::<Vec<_>>());
    fake.put_file("/r/small", b"hello");
    fake.put_file("/r/unread", b"never read");
    fake
}

#[tokio::test]
async fn what_was_read_is_served_while_the_link_is_down() {
    let (_dir, r) = cached(tree());
    let big = read_all(&r, "/r/big").await.unwrap();
    assert_eq!(read_all(&r, "/r/small").await.unwrap(), b"hello");
    assert_eq!(list_all(&r, "/r").await.unwrap(), ["big", "small", "unread"]);
    r.lstat("/r/big").await.unwrap();
    settle(&r);

    r.inner().go_down();
    assert_eq!(read_all(&r, "/r/big").await.unwrap(), big);
    assert_eq!(read_all(&r, "/r/small").await.unwrap(), b"hello");
    assert_eq!(list_all(&r, "/r").await.unwrap(), ["big", "small", "unread"]);
    assert_eq!(r.lstat("/r/big").await.unwrap().size, 200_000);
    // Known from the listing, though never stat'ed alone.
    assert_eq!(r.lstat("/r/small").await.unwrap().size, 5);
    // Listed but never read: its content is not here.
    assert!(matches!(read_all(&r, "/r/unread").await, Err(RemoteError::Unavailable(_))));
    // Absent from a complete listing: not there.
    assert_eq!(r.lstat("/r/nothing").await, Err(RemoteError::NotFound));
    // Under a directory never listed: not known.
    assert!(matches!(r.lstat("/elsewhere/x").await, Err(RemoteError::Unavailable(_))));
    let served = r.served_offline();
    assert!(served.contains(&"/r/big".to_string()) && served.contains(&"/r".to_string()), "{served:?}");
    let usage = r.usage().unwrap();
    assert!(usage.hits > 0 && usage.files == 2, "{usage:?}");
}

#[tokio::test]
async fn once_the_link_is_back_a_changed_file_is_read_fresh() {
    let (_dir, r) = cached(tree());
    read_all(&r, "/r/small").await.unwrap();
    settle(&r);
    r.inner().go_down();
    assert_eq!(read_all(&r, "/r/small").await.unwrap(), b"hello");
    r.inner().come_back();
    r.inner().replace_on_server("/r/small", b"changed!");
    assert_eq!(read_all(&r, "/r/small").await.unwrap(), b"changed!");
}

#[tokio::test]
async fn a_version_read_up_is_served_from_the_store_without_the_server() {
    let (_dir, r) = cached(tree());
    let big = read_all(&r, "/r/big").await.unwrap();
    settle(&r);
    let asked = r.inner().requests();
    assert_eq!(read_all(&r, "/r/big").await.unwrap(), big);
    // Open and close only: no read reached the server.
    assert_eq!(r.inner().requests() - asked, 2);
}

#[tokio::test]
async fn the_mounts_own_changes_drop_what_the_store_knew() {
    let (_dir, r) = cached(tree());
    read_all(&r, "/r/small").await.unwrap();
    list_all(&r, "/r").await.unwrap();
    r.lstat("/r/small").await.unwrap();
    r.remove("/r/small").await.unwrap();
    settle(&r);
    r.inner().go_down();
    assert!(matches!(r.lstat("/r/small").await, Err(RemoteError::Unavailable(_))), "neither served nor denied");
    assert!(matches!(read_all(&r, "/r/small").await, Err(RemoteError::Unavailable(_))));
    assert!(matches!(list_all(&r, "/r").await, Err(RemoteError::Unavailable(_))), "the listing changed");
}

#[tokio::test]
async fn a_version_changed_within_its_second_is_not_kept() {
    let (_dir, r) = cached(tree());
    let now = crate::timestamp::unix_secs() as u32;
    r.setstat("/r/small", SetAttr { times: Some((now, now)), ..SetAttr::default() }).await.unwrap();
    read_all(&r, "/r/small").await.unwrap();
    settle(&r);
    assert_eq!(r.usage().unwrap().files, 0);
}

#[tokio::test]
async fn without_a_cache_every_call_passes_through() {
    let r = Offline::new(Arc::new(tree()), None);
    assert_eq!(read_all(&r, "/r/small").await.unwrap(), b"hello");
    r.inner().go_down();
    assert!(matches!(read_all(&r, "/r/small").await, Err(RemoteError::Unavailable(_))));
    assert!(matches!(r.lstat("/r/small").await, Err(RemoteError::Unavailable(_))));
    assert_eq!(r.usage(), None);
}

#[test]
fn listings_and_attributes_read_back_as_kept() {
    let a = Attr { size: 1 << 40, mode: 0o100644, uid: 1, gid: 2, atime: 3, mtime: u32::MAX };
    let entries =
        vec![DirEntry { name: "é x".into(), attr: a }, DirEntry { name: String::new(), attr: Attr::default() }];
    assert_eq!(decode_listing(&encode_listing(&entries)), Some(entries));
    assert_eq!(decode_listing(&[1, 0]), None, "cut short");
}

#[tokio::test]
async fn blocks_kept_from_reads_of_any_shape_read_back_as_the_file() {
    let (_dir, r) = cached(tree());
    let want: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    let h = r.open("/r/big", reading()).await.unwrap();
    for (off, len) in [(0u64, 4096u32), (4096, 131072), (135168, 1 << 20), (70000, 5000)] {
        let got = r.read(&h, off, len).await.unwrap();
        let end = (off as usize + len as usize).min(want.len());
        assert_eq!(&got[..], &want[off as usize..end], "up {off}+{len}");
    }
    r.close(&h).await.unwrap();
    settle(&r);
    r.inner().go_down();
    let h = r.open("/r/big", reading()).await.unwrap();
    for (off, len) in [(0u64, 200_000u32), (65536, 65536), (1, 3), (131000, 70000), (199_999, 10), (200_000, 5)] {
        match r.read(&h, off, len).await {
            Ok(got) => {
                let end = (off as usize + len as usize).min(want.len());
                assert_eq!(&got[..], &want[off as usize..end], "down {off}+{len}");
            }
            Err(e) => panic!("down {off}+{len}: {e}"),
        }
    }
}

#[tokio::test]
async fn reads_of_random_shapes_are_served_whole_and_right_or_not_at_all() {
    let mut rng = fastrand::Rng::with_seed(7);
    for round in 0..20 {
        let fake = FakeRemote::new();
        fake.put_dir("/r");
        let size = rng.usize(1..400_000);
        let want: Vec<u8> = (0..size).map(|_| rng.u8(..)).collect();
        fake.put_file("/r/f", &want);
        let (_dir, r) = cached(fake);
        let h = r.open("/r/f", reading()).await.unwrap();
        // Mostly in order, as readers and their read-ahead ask, some answered out of
        // order, sometimes a jump.
        let mut asks = Vec::new();
        let mut off = 0u64;
        while (off as usize) < size {
            if rng.u8(..10) == 0 {
                off = rng.u64(..size as u64);
            }
            let len = rng.u32(1..300_000);
            asks.push((off, len));
            off += u64::from(len);
        }
        for pair in asks.chunks_mut(2) {
            if rng.bool() {
                pair.reverse();
            }
        }
        for (off, len) in asks {
            r.read(&h, off, len).await.unwrap();
        }
        r.close(&h).await.unwrap();
        settle(&r);
        r.inner().go_down();
        let h = r.open("/r/f", reading()).await.unwrap();
        for _ in 0..50 {
            let (off, len) = (rng.u64(..size as u64 + 10), rng.u32(1..300_000));
            if let Ok(got) = r.read(&h, off, len).await {
                let (from, to) = ((off as usize).min(size), (off as usize + len as usize).min(size));
                assert_eq!(&got[..], &want[from..to], "round {round}: {off}+{len} of {size}");
            }
        }
    }
}

#[tokio::test]
async fn a_file_read_whole_in_any_order_is_kept_whole() {
    let fake = FakeRemote::new();
    fake.put_dir("/r");
    let want: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
    fake.put_file("/r/f", &want);
    let (_dir, r) = cached(fake);
    let h = r.open("/r/f", reading()).await.unwrap();
    // Reads that straddle blocks, answered last first.
    for i in (0..4u64).rev() {
        r.read(&h, i * 100_000, 100_000).await.unwrap();
    }
    r.close(&h).await.unwrap();
    settle(&r);
    r.inner().go_down();
    assert_eq!(read_all(&r, "/r/f").await.unwrap(), want);
}

#[tokio::test]
async fn a_file_the_server_just_described_as_a_held_version_opens_without_a_request() {
    let (_dir, r) = cached(tree());
    let big = read_all(&r, "/r/big").await.unwrap();
    settle(&r);
    r.lstat("/r/big").await.unwrap();
    let asked = r.inner().requests();
    assert_eq!(read_all(&r, "/r/big").await.unwrap(), big);
    assert_eq!(r.inner().requests(), asked, "open, reads and close all from the store");

    // Changed by the mount since: the server is asked.
    r.setstat("/r/big", SetAttr { mode: Some(0o600), ..SetAttr::default() }).await.unwrap();
    let asked = r.inner().requests();
    assert_eq!(read_all(&r, "/r/big").await.unwrap(), big);
    assert!(r.inner().requests() > asked);
}

#[tokio::test]
async fn a_part_the_store_lacks_comes_from_the_server_from_the_same_version_only() {
    let fake = tree();
    let want: Vec<u8> = (0..(5u32 << 19)).map(|i| (i % 251) as u8).collect();
    fake.put_file("/r/huge", &want);
    let (_dir, r) = cached(fake);
    let h = r.open("/r/huge", reading()).await.unwrap();
    r.read(&h, 0, 1 << 20).await.unwrap();
    r.close(&h).await.unwrap();
    settle(&r);

    let mid = 3 << 19;
    r.lstat("/r/huge").await.unwrap();
    let asked = r.inner().requests();
    let h = r.open("/r/huge", reading()).await.unwrap();
    assert_eq!(r.inner().requests(), asked, "opened from the store");
    assert_eq!(&r.read(&h, 0, 1000).await.unwrap()[..], &want[..1000]);
    assert_eq!(r.inner().requests(), asked, "read from the store");
    assert_eq!(&r.read(&h, mid, 1000).await.unwrap()[..], &want[mid as usize..mid as usize + 1000]);
    r.close(&h).await.unwrap();

    // Replaced on the server after it was described: the handle's version is gone.
    r.lstat("/r/huge").await.unwrap();
    let h = r.open("/r/huge", reading()).await.unwrap();
    r.inner().replace_on_server("/r/huge", &vec![7u8; (5 << 19) + 1]);
    assert!(matches!(r.read(&h, mid, 1000).await, Err(RemoteError::FileLost(_))));
    r.close(&h).await.unwrap();
    assert_eq!(r.inner().open_handles(), 0);
}
