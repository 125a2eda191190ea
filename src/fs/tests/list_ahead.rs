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
