use super::*;

const V1: Version = Version { size: 3, mtime: 1_000 };

fn journal() -> (tempfile::TempDir, Journal) {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 1 << 20).unwrap();
    (dir, j)
}

fn content(j: &Journal, path: &str, base: Option<Version>, data: &[u8]) -> u64 {
    let file = j.new_content().unwrap();
    j.write(file, 0, data).unwrap();
    j.sync(file).unwrap();
    j.record(Change::Content { path: path.into(), base, file, mode: 0o644 }).unwrap();
    file
}

fn files_in(dir: &Path) -> usize {
    fs::read_dir(dir.join("journal")).unwrap().count()
}

#[test]
fn changes_and_content_outlive_a_reopen_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 1 << 20).unwrap();
    j.record(Change::Mkdir { path: "/r/d".into(), mode: 0o755 }).unwrap();
    let f = content(&j, "/r/d/new", None, b"hello");
    j.record(Change::Rename { from: "/r/d/new".into(), to: "/r/d/n2".into() }).unwrap();
    let before = j.changes();
    drop(j);
    let j = Journal::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(j.changes(), before);
    assert_eq!(j.read(f, 0, 100).unwrap(), b"hello");
    assert_eq!(j.pending(), Pending { changes: 3, files: 1, bytes: 5 });
}

#[test]
fn a_file_made_and_removed_while_down_leaves_nothing() {
    let (dir, j) = journal();
    content(&j, "/r/tmp", None, b"scratch");
    j.record(Change::Remove { path: "/r/tmp".into(), base: None }).unwrap();
    j.record(Change::Mkdir { path: "/r/d".into(), mode: 0o755 }).unwrap();
    j.record(Change::Rmdir { path: "/r/d".into() }).unwrap();
    j.record(Change::Symlink { path: "/r/l".into(), target: "x".into() }).unwrap();
    j.record(Change::Remove { path: "/r/l".into(), base: None }).unwrap();
    assert_eq!(j.changes(), vec![]);
    assert_eq!(files_in(dir.path()), 0);
    assert_eq!(j.local("/r/tmp"), None);
}

#[test]
fn removing_a_file_edited_while_down_keeps_only_the_removal_of_its_base() {
    let (dir, j) = journal();
    content(&j, "/r/f", Some(V1), b"edited");
    j.record(Change::Remove { path: "/r/f".into(), base: None }).unwrap();
    let changes: Vec<_> = j.changes().into_iter().map(|(_, c)| c).collect();
    assert_eq!(changes, vec![Change::Remove { path: "/r/f".into(), base: Some(V1) }]);
    assert_eq!(files_in(dir.path()), 0);
    assert_eq!(j.local("/r/f"), Some(Local::Gone));
}

#[test]
fn writing_a_file_again_adds_no_change() {
    let (_dir, j) = journal();
    let f = content(&j, "/r/f", Some(V1), b"one");
    j.write(f, 3, b" two").unwrap();
    j.record(Change::Content { path: "/r/f".into(), base: Some(V1), file: f, mode: 0o644 }).unwrap();
    assert_eq!(j.changes().len(), 1);
    assert_eq!(j.read(f, 0, 100).unwrap(), b"one two");
}

#[test]
fn past_its_quota_the_journal_refuses_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 8 * 1024).unwrap();
    let f = content(&j, "/r/a", None, &[1; 4096]);
    let g = j.new_content().unwrap();
    let full = j.write(g, 0, &[2; 4096]).unwrap_err();
    assert_eq!(full.raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(j.set_len(g, 1 << 20).unwrap_err().raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(j.read(f, 0, 8192).unwrap(), vec![1; 4096]);
    assert_eq!(j.changes().len(), 1);
}

#[test]
fn what_changes_made_of_a_path_follows_renames() {
    let (_dir, j) = journal();
    let f = content(&j, "/r/a/x", None, b"x");
    j.record(Change::Chmod { path: "/r/old".into(), mode: 0o600 }).unwrap();
    j.record(Change::Rename { from: "/r/a".into(), to: "/r/b".into() }).unwrap();
    j.record(Change::Rename { from: "/r/old".into(), to: "/r/new".into() }).unwrap();
    assert_eq!(j.local("/r/b/x"), Some(Local::File { file: f, base: None, mode: 0o644 }));
    assert_eq!(j.local("/r/a/x"), Some(Local::Gone));
    assert_eq!(j.local("/r/a"), Some(Local::Gone));
    assert_eq!(j.local("/r/b"), Some(Local::Server { was: "/r/a".into(), mode: None, times: None }));
    assert_eq!(j.local("/r/new"), Some(Local::Server { was: "/r/old".into(), mode: Some(0o600), times: None }));
    assert_eq!(j.local("/r/untouched"), None);
    // A name moved away and put back is what was put there.
    j.record(Change::Mkdir { path: "/r/a".into(), mode: 0o700 }).unwrap();
    assert_eq!(j.local("/r/a"), Some(Local::Dir { mode: 0o700 }));
    assert_eq!(j.local("/r/a/x"), Some(Local::Gone), "the new directory holds only what changes put there");
}

#[test]
fn a_directory_lists_what_changes_put_in_it_and_took_out() {
    let (_dir, j) = journal();
    let f = content(&j, "/r/new", None, b"n");
    j.record(Change::Mkdir { path: "/r/sub".into(), mode: 0o755 }).unwrap();
    j.record(Change::Rename { from: "/r/sub".into(), to: "/r/moved".into() }).unwrap();
    j.record(Change::Remove { path: "/r/old".into(), base: Some(V1) }).unwrap();
    j.record(Change::Rename { from: "/r/other/in".into(), to: "/r/came".into() }).unwrap();
    let got = j.children("/r");
    let want = vec![
        ("came".to_string(), Local::Server { was: "/r/other/in".into(), mode: None, times: None }),
        ("moved".to_string(), Local::Dir { mode: 0o755 }),
        ("new".to_string(), Local::File { file: f, base: None, mode: 0o644 }),
        ("old".to_string(), Local::Gone),
        ("sub".to_string(), Local::Gone),
    ];
    assert_eq!(got, want);
    assert_eq!(j.children("/r/other"), vec![("in".to_string(), Local::Gone)]);
}

#[test]
fn replayed_changes_go_with_their_content_and_strays_go_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), 1 << 20).unwrap();
    content(&j, "/r/a", None, b"a");
    j.record(Change::Mkdir { path: "/r/d".into(), mode: 0o755 }).unwrap();
    // Made, but the agent stopped before its change was recorded.
    j.new_content().unwrap();
    assert_eq!(files_in(dir.path()), 2);
    let (first, _) = j.changes()[0].clone();
    j.replayed(first).unwrap();
    assert_eq!(files_in(dir.path()), 1);
    drop(j);
    let j = Journal::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(files_in(dir.path()), 0);
    assert_eq!(j.changes().len(), 1);
    // New content files never reuse a number a change names.
    let again = j.new_content().unwrap();
    assert!(j.read(again, 0, 10).unwrap().is_empty());
}

#[test]
fn journal_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, j) = journal();
    let f = content(&j, "/r/a", None, b"secret");
    for p in
        [dir.path().join("journal"), dir.path().join("journal.redb"), dir.path().join("journal").join(f.to_string())]
    {
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
    }
}
