//! Listing ahead through the fs core.

use super::*;

#[tokio::test]
async fn subdirectories_are_listed_ahead() {
    let (remote, fs) = setup();
    for d in ["a", "b", "c"] {
        remote.put_dir(&format!("/srv/{d}"));
        remote.put_file(&format!("/srv/{d}/f"), b"1");
    }
    list_all(&fs, ROOT).await;
    // The listings arrive in the background; then they answer without the server.
    let ready = eventually(|| ["/srv/a", "/srv/b", "/srv/c"].iter().all(|p| fs.has_listing(p))).await;
    assert!(ready);
    remote.go_down();
    let b = fs.lookup(ROOT, "b").await.unwrap().ino;
    let fh = fs.opendir(b).await.unwrap();
    assert_eq!(fs.readdir(fh, 0).await.unwrap().len(), 3);
}

/// Walks the tree under `ino` as `find` does: each directory opened and read to its end,
/// each subdirectory looked up and entered.
async fn walk(fs: &Fs<FakeRemote>, ino: Ino) -> usize {
    let mut dirs = 1;
    for name in list_all(fs, ino).await {
        if name == "." || name == ".." {
            continue;
        }
        let e = fs.lookup(ino, &name).await.unwrap();
        if e.attr.kind() == FileKind::Dir {
            dirs += Box::pin(walk(fs, e.ino)).await;
        }
    }
    dirs
}

#[tokio::test]
async fn a_tree_walk_lists_each_directory_once() {
    let (remote, fs) = setup();
    // Listings take a while, so the walk catches up with listings ahead still out.
    remote.list_latency_us.store(2_000, std::sync::atomic::Ordering::Relaxed);
    remote.put_dir("/srv/t");
    for a in 0..4 {
        remote.put_dir(&format!("/srv/t/d{a}"));
        for b in 0..6 {
            remote.put_dir(&format!("/srv/t/d{a}/e{b}"));
            for f in 0..3 {
                remote.put_file(&format!("/srv/t/d{a}/e{b}/f{f}"), b"x");
            }
        }
    }
    let t = fs.lookup(ROOT, "t").await.unwrap().ino;
    let dirs = walk(&fs, t).await;
    assert_eq!(dirs, 1 + 4 + 4 * 6);
    // Listings ahead still out when the walk ends would be counted late: wait for them.
    let settled = eventually(|| fs.background_tasks() == 0).await;
    assert!(settled);
    assert_eq!(remote.listings.load(std::sync::atomic::Ordering::Relaxed), dirs as u64);
}
