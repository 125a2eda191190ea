use super::*;
use crate::offline_cache::OfflineCache;
use crate::remote::fake::{read_all, FakeRemote};
use crate::remote::offline::Offline;

type Stack = Journaled<Offline<FakeRemote>>;

/// The mount's remote with a cache and a journal in `dir`.
fn stack(fake: &Arc<FakeRemote>, dir: &std::path::Path) -> Stack {
    let cache = OfflineCache::open(&dir.join("cache"), 64 << 20).unwrap();
    let journal = Journal::open(&dir.join("cache"), 64 << 20).unwrap();
    Journaled::new(Arc::new(Offline::new(fake.clone(), Some(cache))), Some(journal), "laptop")
}

fn tree() -> Arc<FakeRemote> {
    let fake = FakeRemote::new();
    fake.put_dir("/r");
    fake.put_dir("/r/d");
    fake.put_file("/r/notes", b"first line\n");
    fake.put_file("/r/other", b"other\n");
    Arc::new(fake)
}

fn writing() -> OpenOptions {
    OpenOptions { write: true, ..OpenOptions::default() }
}

fn creating() -> OpenOptions {
    OpenOptions { write: true, create: true, truncate: true, mode: Some(0o640), ..OpenOptions::default() }
}

async fn names<R: Remote>(r: &R, dir: &str) -> Result<Vec<String>> {
    let mut names: Vec<_> =
        r.list(dir).await?.collect().await?.into_iter().map(|e| e.name).filter(|n| n != "." && n != "..").collect();
    names.sort();
    Ok(names)
}

/// Reads and lists what the tests change, so that the cache holds it, then cuts the link.
async fn read_then_cut(fake: &FakeRemote, r: &Stack) {
    for f in ["/r/notes", "/r/other"] {
        read_all(r, f).await.unwrap();
    }
    for d in ["/r", "/r/d"] {
        names(r, d).await.unwrap();
    }
    r.inner().flush();
    fake.go_down();
}

async fn write_file(r: &Stack, path: &str, opts: OpenOptions, at: u64, data: &[u8]) -> Result<()> {
    let h = r.open(path, opts).await?;
    r.write(&h, at, Bytes::copy_from_slice(data)).await?;
    r.fsync(&h).await?;
    r.close(&h).await
}

#[tokio::test]
async fn changes_made_while_down_are_seen_at_once_and_on_the_server_once_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = tree();
    let r = stack(&fake, dir.path());
    read_then_cut(&fake, &r).await;

    write_file(&r, "/r/new", creating(), 0, &[7; 1 << 20]).await.unwrap();
    write_file(&r, "/r/notes", writing(), 11, b"second line\n").await.unwrap();
    r.mkdir("/r/made", 0o755).await.unwrap();
    r.rename("/r/other", "/r/made/moved").await.unwrap();
    r.symlink("notes", "/r/link").await.unwrap();

    assert_eq!(read_all(&r, "/r/new").await.unwrap(), vec![7; 1 << 20]);
    assert_eq!(read_all(&r, "/r/notes").await.unwrap(), b"first line\nsecond line\n");
    assert_eq!(read_all(&r, "/r/made/moved").await.unwrap(), b"other\n");
    assert_eq!(names(&r, "/r").await.unwrap(), ["d", "link", "made", "new", "notes"]);
    assert_eq!(names(&r, "/r/made").await.unwrap(), ["moved"]);
    assert_eq!(r.lstat("/r/new").await.unwrap().size, 1 << 20);
    assert_eq!(r.lstat("/r/new").await.unwrap().mode & 0o7777, 0o640);
    assert!(matches!(r.lstat("/r/other").await, Err(RemoteError::NotFound)));
    assert_eq!(r.readlink("/r/link").await.unwrap(), "notes");
    assert!(!fake.exists("/r/new"), "nothing reaches the server while down");
    let pending = r.pending().unwrap();
    assert_eq!((pending.files, pending.bytes), (2, (1 << 20) + 23));

    fake.come_back();
    // The first call once the link is back replays what waits, before it is answered.
    assert_eq!(names(&r, "/r").await.unwrap(), ["d", "link", "made", "new", "notes"]);
    assert_eq!(fake.file("/r/new").unwrap(), vec![7; 1 << 20]);
    assert_eq!(fake.file("/r/notes").unwrap(), b"first line\nsecond line\n");
    assert_eq!(fake.file("/r/made/moved").unwrap(), b"other\n");
    assert!(!fake.exists("/r/other"));
    assert!(r.conflicts().is_empty());
    assert_eq!(r.pending().unwrap().changes, 0);
    assert!(!fake.paths().iter().any(|p| p.contains("moor-replay")), "no temporary file is left");
}

#[tokio::test]
async fn a_file_changed_on_both_sides_keeps_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let fake = tree();
    let r = stack(&fake, dir.path());
    read_then_cut(&fake, &r).await;
    write_file(&r, "/r/notes", writing(), 0, b"LOCAL").await.unwrap();
    r.remove("/r/other").await.unwrap();
    fake.replace_on_server("/r/notes", b"changed on the server\n");
    fake.replace_on_server("/r/other", b"also changed there\n");
    let told = Arc::new(Mutex::new(Vec::new()));
    let heard = told.clone();
    r.on_conflict(Box::new(move |c| heard.lock().unwrap().push(c.path.clone())));
    fake.come_back();
    r.replay().await;
    assert_eq!(*told.lock().unwrap(), ["/r/notes", "/r/other"], "each conflict is told as it is found");

    assert_eq!(fake.file("/r/notes").unwrap(), b"changed on the server\n", "the server's version stays");
    assert_eq!(fake.file("/r/other").unwrap(), b"also changed there\n", "a removal never loses a change");
    let conflicts = r.conflicts();
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    let kept = conflicts[0].kept_as.clone().unwrap();
    assert!(kept.starts_with("/r/notes.conflict-laptop-"), "{kept}");
    assert_eq!(fake.file(&kept).unwrap(), b"LOCAL line\n");
    assert_eq!(conflicts[1].path, "/r/other");
    assert_eq!(r.pending().unwrap().changes, 0);
}

#[tokio::test]
async fn what_cannot_be_decided_offline_waits_for_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let fake = tree();
    fake.put_dir("/r/never-listed");
    fake.put_file("/r/never-read", b"x");
    let r = stack(&fake, dir.path());
    read_then_cut(&fake, &r).await;
    let eagain = |e: RemoteError| matches!(e, RemoteError::Unavailable(_));
    assert!(eagain(r.open("/r/never-listed/f", creating()).await.unwrap_err()));
    assert!(eagain(r.mkdir("/r/never-listed/d", 0o755).await.unwrap_err()));
    // Listed, never read: its content is not here to edit (truncating it needs none).
    assert!(eagain(r.open("/r/never-read", writing()).await.unwrap_err()));
    write_file(&r, "/r/never-read", OpenOptions { truncate: true, ..writing() }, 0, b"y").await.unwrap();
    assert!(eagain(r.hardlink("/r/notes", "/r/hard").await.unwrap_err()));
    // Known to be absent, or there: decided at once.
    assert!(matches!(r.remove("/r/absent").await, Err(RemoteError::NotFound)));
    assert!(matches!(r.mkdir("/r/d", 0o755).await, Err(RemoteError::ServerFailure(_))));
    assert!(matches!(r.rmdir("/r").await, Err(RemoteError::ServerFailure(_))), "not empty");
}

#[tokio::test]
async fn changes_outlive_the_agent_and_are_replayed_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let fake = tree();
    {
        let r = stack(&fake, dir.path());
        read_then_cut(&fake, &r).await;
        write_file(&r, "/r/d/kept", creating(), 0, b"made offline").await.unwrap();
        r.rename("/r/notes", "/r/d/notes").await.unwrap();
        // Written but neither synced nor closed: the agent dies here.
        let h = r.open("/r/d/later", creating()).await.unwrap();
        r.write(&h, 0, Bytes::from_static(b"unsynced")).await.unwrap();
    }
    fake.come_back();
    let r = stack(&fake, dir.path());
    assert!(r.pending().unwrap().changes >= 2);
    r.replay().await;
    assert_eq!(fake.file("/r/d/kept").unwrap(), b"made offline");
    assert_eq!(fake.file("/r/d/notes").unwrap(), b"first line\n");
    assert!(!fake.exists("/r/notes"));
    assert_eq!(r.pending().unwrap().changes, 0);
}

#[tokio::test]
async fn a_file_made_and_removed_offline_never_reaches_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let fake = tree();
    let r = stack(&fake, dir.path());
    read_then_cut(&fake, &r).await;
    write_file(&r, "/r/tmp", creating(), 0, b"scratch").await.unwrap();
    r.remove("/r/tmp").await.unwrap();
    r.mkdir("/r/t", 0o700).await.unwrap();
    r.rmdir("/r/t").await.unwrap();
    assert_eq!(r.pending().unwrap().changes, 0);
    assert!(matches!(r.lstat("/r/tmp").await, Err(RemoteError::NotFound)));
    let before = fake.requests();
    fake.come_back();
    r.replay().await;
    assert_eq!(fake.requests(), before, "nothing to replay");
}

#[tokio::test]
async fn the_journal_refuses_past_its_quota_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = tree();
    let cache = OfflineCache::open(&dir.path().join("c"), 64 << 20).unwrap();
    let journal = Journal::open(&dir.path().join("c"), 64 * 1024).unwrap();
    let r = Journaled::new(Arc::new(Offline::new(fake.clone(), Some(cache))), Some(journal), "laptop");
    read_then_cut(&fake, &r).await;
    write_file(&r, "/r/a", creating(), 0, &[1; 32 * 1024]).await.unwrap();
    let full = write_file(&r, "/r/b", creating(), 0, &[2; 64 * 1024]).await.unwrap_err();
    assert!(matches!(full, RemoteError::NoSpace), "{full:?}");
    assert_eq!(read_all(&r, "/r/a").await.unwrap(), vec![1; 32 * 1024]);
}

#[tokio::test]
async fn a_file_made_offline_renamed_written_again_and_removed_replays_as_made() {
    let dir = tempfile::tempdir().unwrap();
    let fake = tree();
    let r = stack(&fake, dir.path());
    read_then_cut(&fake, &r).await;
    write_file(&r, "/r/a", creating(), 0, b"one").await.unwrap();
    r.rename("/r/a", "/r/b").await.unwrap();
    // Written again under its new name, truncated: one content file, recorded once.
    write_file(&r, "/r/b", OpenOptions { truncate: true, ..writing() }, 0, b"two").await.unwrap();
    write_file(&r, "/r/c", creating(), 0, b"gone").await.unwrap();
    r.rename("/r/c", "/r/d/c").await.unwrap();
    r.remove("/r/d/c").await.unwrap();
    fake.come_back();
    r.replay().await;
    assert!(r.conflicts().is_empty(), "{:?}", r.conflicts());
    assert_eq!(fake.file("/r/b").unwrap(), b"two");
    assert!(!fake.exists("/r/a"));
    assert!(!fake.exists("/r/d/c"), "removed after the replay wrote it");
    assert_eq!(r.pending().unwrap().changes, 0);
}
