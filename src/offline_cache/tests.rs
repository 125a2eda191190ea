use super::*;

const V1: Version = Version { size: 10, mtime: 100 };
const V2: Version = Version { size: 10, mtime: 101 };

/// Puts a block and waits for it to be committed, as a test must before it looks.
fn put(cache: &OfflineCache, path: &str, v: Version, index: u64, data: &[u8]) -> bool {
    let kept = cache.put(path, v, index, Bytes::copy_from_slice(data));
    cache.flush();
    kept
}

/// Reads a block, and waits for what that changes (its use, or its removal).
fn get(cache: &OfflineCache, path: &str, v: Version, index: u64) -> Option<Vec<u8>> {
    let got = cache.get(path, v, index);
    cache.flush();
    got
}

/// Where block file `id` of `cache` lives.
fn block_file(cache: &OfflineCache, id: u64) -> PathBuf {
    cache.shared.files.path(id)
}

fn block(byte: u8, len: usize) -> Vec<u8> {
    vec![byte; len]
}

/// A cache in a fresh directory whose blocks may take `room` bytes besides the index.
fn cache_with_room(room: u64) -> (tempfile::TempDir, OfflineCache) {
    let dir = tempfile::tempdir().unwrap();
    let probe = OfflineCache::open(dir.path(), u64::MAX).unwrap();
    let index = 2 * probe.shared.index_size() + DIRECTORIES;
    drop(probe);
    let cache = OfflineCache::open(dir.path(), index + room).unwrap();
    (dir, cache)
}

/// Block files on disk, by number.
fn files_on_disk(dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(dir.join("blocks"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    ids.sort();
    ids
}

/// Block files the index names, and the bytes it counts for blocks.
fn indexed(cache: &OfflineCache) -> (Vec<u64>, u64) {
    let txn = cache.shared.db.begin_read().unwrap();
    let blocks = txn.open_table(BLOCKS).unwrap();
    let mut ids = Vec::new();
    let mut bytes = 0;
    for e in blocks.iter().unwrap() {
        let (id, len, _, _) = e.unwrap().1.value();
        ids.push(id);
        bytes += on_disk(len);
    }
    ids.sort();
    (ids, bytes)
}

/// The index and the directory agree: every file has its entry and the other way round,
/// and the counted bytes are the entries' bytes.
fn assert_consistent(dir: &Path, cache: &OfflineCache) {
    let (ids, bytes) = indexed(cache);
    assert_eq!(files_on_disk(dir), ids, "block files and index entries");
    assert_eq!(cache.usage().bytes - cache.shared.index_size() - DIRECTORIES, bytes, "counted bytes");
}

#[test]
fn a_block_reads_back_for_its_version_only() {
    let (dir, cache) = cache_with_room(1 << 20);
    assert!(put(&cache, "/r/f", V1, 0, &block(b'a', 5000)));
    assert_eq!(get(&cache, "/r/f", V1, 0), Some(block(b'a', 5000)));
    assert_eq!(get(&cache, "/r/f", V2, 0), None, "another version of the file");
    assert_eq!(get(&cache, "/r/f", V1, 1), None, "another block");
    assert_eq!(get(&cache, "/r/g", V1, 0), None, "another file");
    let u = cache.usage();
    assert_eq!((u.hits, u.misses, u.files), (1, 3, 1));
    assert_consistent(dir.path(), &cache);
}

#[test]
fn every_insert_keeps_the_bound_evicting_the_least_recently_used() {
    // Room for three 4 KiB blocks.
    let (dir, cache) = cache_with_room(3 * 4096);
    for i in 0..3 {
        assert!(put(&cache, "/r/f", V1, i, &block(b'a' + i as u8, 4096)));
    }
    // Block 0 used last: block 1 is now the least recently used.
    assert!(get(&cache, "/r/f", V1, 0).is_some());
    assert!(put(&cache, "/r/f", V1, 3, &block(b'd', 4096)));
    assert!(cache.usage().bytes <= cache.shared.limit, "over the bound: {:?}", cache.usage());
    assert_eq!(get(&cache, "/r/f", V1, 1), None, "the least recently used went");
    for i in [0, 2, 3] {
        assert!(get(&cache, "/r/f", V1, i).is_some(), "block {i} stays");
    }
    assert_consistent(dir.path(), &cache);
}

#[test]
fn a_block_larger_than_the_cache_is_not_kept_and_evicts_nothing() {
    let (dir, cache) = cache_with_room(2 * 4096);
    assert!(put(&cache, "/r/small", V1, 0, &block(b's', 100)));
    assert!(!put(&cache, "/r/big", V1, 0, &block(b'b', 3 * 4096)));
    assert!(get(&cache, "/r/small", V1, 0).is_some());
    assert!(cache.usage().bytes <= cache.shared.limit);
    assert_consistent(dir.path(), &cache);
}

#[test]
fn a_file_twice_the_cache_streams_through_within_the_bound() {
    let (dir, cache) = cache_with_room(8 * 4096);
    for i in 0..16 {
        assert!(put(&cache, "/r/big", V1, i, &block(i as u8, 4096)));
        assert!(cache.usage().bytes <= cache.shared.limit, "over the bound after block {i}");
    }
    assert!(get(&cache, "/r/big", V1, 15).is_some(), "the last blocks stay");
    assert_eq!(get(&cache, "/r/big", V1, 0), None, "the first ones went");
    assert_consistent(dir.path(), &cache);
}

#[test]
fn a_torn_or_changed_block_is_never_served() {
    let (dir, cache) = cache_with_room(1 << 20);
    put(&cache, "/r/f", V1, 0, &block(b'a', 5000));
    put(&cache, "/r/g", V1, 0, &block(b'b', 5000));
    let (ids, _) = indexed(&cache);
    let file = |id: u64| block_file(&cache, id);
    // Cut short, as a power loss may leave it; and changed in place, same length.
    std::fs::write(file(ids[0]), block(b'a', 100)).unwrap();
    std::fs::write(file(ids[1]), block(b'x', 5000)).unwrap();
    assert_eq!(get(&cache, "/r/f", V1, 0), None);
    assert_eq!(get(&cache, "/r/g", V1, 0), None);
    assert_eq!(indexed(&cache).0, Vec::<u64>::new(), "the entries went with them");
    assert_eq!(cache.usage().files, 0);
    assert_consistent(dir.path(), &cache);
}

#[test]
fn a_replaced_block_leaves_no_file_behind() {
    let (dir, cache) = cache_with_room(1 << 20);
    put(&cache, "/r/f", V1, 0, &block(b'a', 5000));
    put(&cache, "/r/f", V1, 0, &block(b'b', 6000));
    assert_eq!(get(&cache, "/r/f", V1, 0), Some(block(b'b', 6000)));
    assert_eq!(cache.usage().files, 1);
    assert_consistent(dir.path(), &cache);
}

#[test]
fn forget_and_clear_remove_blocks_and_their_files() {
    let (dir, cache) = cache_with_room(1 << 20);
    put(&cache, "/r/f", V1, 0, &block(b'a', 10));
    put(&cache, "/r/f", V2, 0, &block(b'b', 10));
    put(&cache, "/r/f", V2, 1, &block(b'b', 10));
    put(&cache, "/r/g", V1, 0, &block(b'c', 10));
    // Names that sort right beside it are other files.
    put(&cache, "/r/f2", V1, 0, &block(b'd', 10));
    put(&cache, "/r/e", V1, 0, &block(b'e', 10));
    cache.forget("/r/f");
    cache.flush();
    assert_eq!(get(&cache, "/r/f", V1, 0), None);
    assert_eq!(get(&cache, "/r/f", V2, 0), None);
    assert_eq!(get(&cache, "/r/f", V2, 1), None);
    assert!(get(&cache, "/r/g", V1, 0).is_some());
    assert!(get(&cache, "/r/f2", V1, 0).is_some());
    assert!(get(&cache, "/r/e", V1, 0).is_some());
    assert_consistent(dir.path(), &cache);
    cache.clear();
    assert_eq!(files_on_disk(dir.path()), Vec::<u64>::new());
    assert_eq!(cache.usage().files, 0);
}

#[test]
fn reopening_keeps_what_was_committed_and_clears_what_a_crash_left() {
    let dir = tempfile::tempdir().unwrap();
    let cache = OfflineCache::open(dir.path(), 1 << 20).unwrap();
    put(&cache, "/r/f", V1, 0, &block(b'a', 5000));
    drop(cache);
    let next = first_numbers(&Database::open(dir.path().join("index.redb")).unwrap()).unwrap().0;
    // What a crash leaves: a block written but never committed.
    BlockFiles::open(dir.path()).unwrap().write_temp(next, b"never committed").unwrap();
    let cache = OfflineCache::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(get(&cache, "/r/f", V1, 0), Some(block(b'a', 5000)));
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "tmp/ is emptied");
    assert_consistent(dir.path(), &cache);
    put(&cache, "/r/g", V1, 0, &block(b'g', 10));
    let (ids, _) = indexed(&cache);
    assert!(ids.contains(&next), "the number a crash left unused is handed out once: {ids:?}");
    assert_eq!(get(&cache, "/r/g", V1, 0), Some(block(b'g', 10)));
}

#[test]
fn a_block_whose_file_is_gone_is_a_miss_and_its_entry_goes() {
    let (dir, cache) = cache_with_room(1 << 20);
    put(&cache, "/r/f", V1, 0, &block(b'a', 5000));
    let (ids, _) = indexed(&cache);
    std::fs::remove_file(block_file(&cache, ids[0])).unwrap();
    assert_eq!(get(&cache, "/r/f", V1, 0), None);
    assert_consistent(dir.path(), &cache);
}

#[test]
fn files_and_directories_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, cache) = cache_with_room(1 << 20);
    put(&cache, "/r/f", V1, 0, b"secret");
    let (ids, _) = indexed(&cache);
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.path().join("index.redb")), 0o600);
    assert_eq!(mode(dir.path().join("blocks")), 0o700);
    assert_eq!(mode(dir.path().join("tmp")), 0o700);
    let f = block_file(&cache, ids[0]);
    assert_eq!(mode(f.parent().unwrap().to_path_buf()), 0o700);
    assert_eq!(mode(f), 0o600);
}

#[test]
fn each_destination_and_path_has_its_own_directory() {
    let base = Path::new("/c");
    let cases = [
        ("alice@build:22", "/srv/src", "/c/alice@build:22:+srv+src"),
        ("alice@build:22", "/srv/s c", "/c/alice@build:22:+srv+s%20c"),
        ("alice@build:22", "/../x", "/c/alice@build:22:+..+x"),
    ];
    for (dest, root, want) in cases {
        assert_eq!(dir_for(base, dest, root), PathBuf::from(want));
    }
    let long = dir_for(base, "h", &"/x".repeat(300));
    assert!(long.file_name().unwrap().len() <= 200);
    assert_ne!(long, dir_for(base, "h", &format!("{}y", "/x".repeat(300))), "a checksum tells long names apart");
}

#[test]
fn facts_are_recalled_until_unlearnt_one_by_one_or_by_tree() {
    let (_dir, cache) = cache_with_room(1 << 20);
    for p in ["/r/d", "/r/d/a", "/r/d/a/b", "/r/d0", "/r/d.x", "/r/e"] {
        assert!(cache.learn(p, Fact::Attr, p.as_bytes().to_vec()));
    }
    assert!(cache.learn("/r/d", Fact::Listing, b"a".to_vec()));
    cache.flush();
    assert_eq!(cache.recall("/r/d/a", Fact::Attr).as_deref(), Some(&b"/r/d/a"[..]));
    assert_eq!(cache.recall("/r/d/a", Fact::Listing), None);

    cache.unlearn("/r/d", Facts::One(Fact::Listing));
    cache.flush();
    assert_eq!(cache.recall("/r/d", Fact::Listing), None);
    assert!(cache.recall("/r/d", Fact::Attr).is_some());

    cache.unlearn("/r/d", Facts::Tree);
    cache.flush();
    for gone in ["/r/d", "/r/d/a", "/r/d/a/b"] {
        assert_eq!(cache.recall(gone, Fact::Attr), None, "{gone}");
    }
    // Names that only start like the tree's are not in it.
    for kept in ["/r/d0", "/r/d.x", "/r/e"] {
        assert!(cache.recall(kept, Fact::Attr).is_some(), "{kept}");
    }
    cache.clear();
    assert_eq!(cache.recall("/r/e", Fact::Attr), None);
}

#[test]
fn facts_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cache = OfflineCache::open(dir.path(), 1 << 30).unwrap();
    assert!(cache.learn("/r/f", Fact::Target, b"g".to_vec()));
    // A block commit is durable, and with it every fact before it.
    assert!(cache.put("/r/f", V1, 0, Bytes::from_static(b"x")));
    drop(cache);
    let cache = OfflineCache::open(dir.path(), 1 << 30).unwrap();
    assert_eq!(cache.recall("/r/f", Fact::Target).as_deref(), Some(&b"g"[..]));
    assert_eq!(cache.get("/r/f", V1, 0).as_deref(), Some(&b"x"[..]));
}

/// A fact learnt before an unlearning stays unlearnt, however the writer's commits fall
/// between them: the unlearning is applied in its place, never ahead of what was sent
/// before it. (A sweep of unlearnings at the end of each commit once let a fact learnt
/// just before one come back in the next commit: a removed name found while down.)
#[test]
fn a_fact_learnt_before_its_unlearning_never_comes_back() {
    let (_dir, cache) = cache_with_room(64 << 20);
    let paths: Vec<_> = (0..5_000).map(|n| format!("/r/f{n}")).collect();
    for p in &paths {
        cache.learn(p, Fact::Attr, b"old".to_vec());
        cache.unlearn(p, Facts::Tree);
        assert_eq!(cache.recall(p, Fact::Attr), None, "{p}");
    }
    cache.flush();
    let back: Vec<_> = paths.iter().filter(|p| cache.recall(p, Fact::Attr).is_some()).collect();
    assert!(back.is_empty(), "unlearnt facts came back: {back:?}");
}
