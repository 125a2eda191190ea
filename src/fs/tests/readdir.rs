//! Listings: dot entries, resuming at an offset, big directories streamed, names a server should never list.

use super::*;

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
async fn a_big_directory_streams_and_is_not_cached_whole() {
    let (remote, fs) = setup();
    remote.put_dir("/srv/big");
    let n = super::super::listing::CACHE_UP_TO + 500;
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
