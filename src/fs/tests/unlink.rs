//! Removals: each unlink answers with its own outcome, in a burst too (`rm *.o`), so a
//! refusal reaches the program that asked and no name made later is ever removed.

use std::sync::atomic::Ordering;

use futures_util::FutureExt;

use super::*;

#[tokio::test]
async fn every_unlink_of_a_burst_waits_for_the_server() {
    let (remote, fs) = setup();
    let d = listed_dir(&remote, &fs, &["a", "b", "c"]).await;
    fs.unlink(d, "a").await.unwrap();
    fs.unlink(d, "b").await.unwrap();
    remote.removals.hold();
    let mut unlink = Box::pin(fs.unlink(d, "c"));
    assert!(unlink.as_mut().now_or_never().is_none(), "an unlink answered before the server did");
    remote.removals.release();
    tokio::time::timeout(std::time::Duration::from_secs(5), unlink).await.unwrap().unwrap();
    assert!(!remote.exists("/srv/d/c"), "gone on the server once answered");
}

#[tokio::test]
async fn a_refused_unlink_in_a_burst_is_reported_by_that_unlink() {
    let (remote, fs) = setup();
    let d = listed_dir(&remote, &fs, &["a", "keep", "z"]).await;
    fs.unlink(d, "a").await.unwrap();
    remote.refuse_removals.store(true, Ordering::SeqCst);
    assert_eq!(
        fs.unlink(d, "keep").await.map_err(Errno::from),
        Err(Errno::EACCES),
        "the refusal is the unlink's own answer"
    );
    remote.refuse_removals.store(false, Ordering::SeqCst);
    fs.unlink(d, "z").await.unwrap();
    assert!(remote.exists("/srv/d/keep"));
    assert!(fs.lookup(d, "keep").await.is_ok(), "the file the server kept still shows");
    assert_eq!(list_all(&fs, d).await.iter().filter(|n| *n == "keep").count(), 1);
}
