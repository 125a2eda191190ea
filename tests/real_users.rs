//! A real user's files: an ordinary local user mounts as an ordinary remote user with
//! another uid. An open file stays the file `open` returned for its whole life, files
//! show as the local user's, and attribute changes land (and fail) where they are made.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::*;

fn env() -> Proxied {
    Proxied::start()
}

/// Sizes every open-file case runs with: a byte, a small file, and one big enough to be
/// written and read in many requests at once.
const SIZES: [usize; 3] = [1, 100 * 1024, 8 << 20];

/// Runs a Python program as the local user with `mnt`, `sizes`, `data(n, seed)` and
/// `read_back(fd)` (the whole file from its start) defined, and returns its last line
/// of output.
fn run_py(mnt: &str, body: &str) -> String {
    let script = format!(
        "import os, sys, json\nmnt = '{mnt}'\nsizes = {SIZES:?}\n\
         def data(n, seed):\n    return bytes((i * 7 + seed) % 251 for i in range(n))\n\
         def read_back(fd):\n    os.lseek(fd, 0, 0)\n    got = b''\n    while True:\n        b = os.read(fd, 1 << 20)\n        \
         if not b: return got\n        got += b\n{body}"
    );
    let f = script_file(&script);
    let out = sh(&format!("python3 {}", f.path().display()));
    if !out.status.success() {
        return format!("failed: {}", stderr(&out));
    }
    stdout(&out).lines().last().unwrap_or("").to_string()
}

/// A file created 0444 or 0400 and written through its descriptor: every byte lands
/// and nothing fails (git's objects, `cp` of read-only files, `install -m 444`).
#[test]
fn a_read_only_file_created_and_written_keeps_every_byte() {
    let e = env();
    let out = run_py(
        &e.m.s(),
        "
for mode in (0o444, 0o400):
    for n in sizes:
        p = '%s/ro-%o-%d' % (mnt, mode, n)
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)
        os.write(fd, data(n, 1))
        os.fsync(fd)
        os.close(fd)
print('ok')
",
    );
    assert_eq!(out, "ok");
    for mode in [0o444u32, 0o400] {
        for n in SIZES {
            let server = e.sshd.export.join(format!("ro-{mode:o}-{n}"));
            let got = fs::read(&server).unwrap();
            assert_eq!(got.len(), n, "mode {mode:o}, {n} bytes: size on the server");
            assert!(got.iter().enumerate().all(|(i, b)| *b == ((i * 7 + 1) % 251) as u8), "mode {mode:o}, {n} bytes");
            assert_eq!(fs::metadata(&server).unwrap().mode() & 0o777, mode);
        }
    }
}

/// Unlinked while open: the descriptor goes on reading and writing, as on the server's
/// own filesystem (sshfs's `tst_open_unlink`).
#[test]
fn an_unlinked_open_file_still_reads_and_writes() {
    let e = env();
    let out = run_py(
        &e.m.s(),
        "
for n in sizes:
    p = '%s/gone-%d' % (mnt, n)
    fd = os.open(p, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
    os.write(fd, data(1, 2))
    os.fsync(fd)
    os.unlink(p)
    assert not os.path.exists(p), 'still there'
    os.write(fd, data(n, 3))
    os.fsync(fd)
    got = read_back(fd)
    assert got == data(1, 2) + data(n, 3), 'read back %d of %d bytes, differing' % (len(got), 1 + n)
    os.close(fd)
print('ok')
",
    );
    assert_eq!(out, "ok");
    assert!(fs::read_dir(&e.sshd.export).unwrap().next().is_none(), "an unlinked file came back");
}

/// Renamed while open (through the mount, and on the server by another client), then
/// a new file made at the old name: the descriptor's writes land in the renamed file,
/// and the new one is untouched.
#[test]
fn a_renamed_open_file_keeps_its_writes() {
    use std::io::{BufRead, BufReader, Write};
    let e = env();
    let script = format!(
        "
import os, sys
mnt = '{mnt}'
def data(n, seed):
    return bytes((i * 7 + seed) % 251 for i in range(n))
for where in ('mount', 'server'):
    for n in {SIZES:?}:
        name = '%s-%d' % (where, n)
        p = mnt + '/' + name
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        os.write(fd, data(1, 4))
        os.fsync(fd)
        if where == 'mount':
            os.rename(p, p + '.moved')
        else:
            print('rename', name, flush=True)
            assert sys.stdin.readline().strip() == 'done'
        with open(p, 'wb') as f:
            f.write(b'new')
        os.write(fd, data(n, 5))
        os.fsync(fd)
        os.close(fd)
print('ok', flush=True)
",
        mnt = e.m.s()
    );
    let f = script_file(&script);
    let mut child = as_local_user(&mut std::process::Command::new("python3"))
        .arg(f.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut to = child.stdin.take().unwrap();
    let from = BufReader::new(child.stdout.take().unwrap());
    let mut last = String::new();
    for line in from.lines() {
        let line = line.unwrap();
        if let Some(name) = line.strip_prefix("rename ") {
            // Another client of the server renames the open file there.
            let p = e.sshd.export.join(name);
            fs::rename(&p, format!("{}.moved", p.display())).unwrap();
            writeln!(to, "done").unwrap();
        } else {
            last = line;
        }
    }
    let out = run_with_deadline_child(child, std::time::Duration::from_secs(120));
    assert!(out.status.success() && last == "ok", "python: {last} {}", stderr(&out));
    for where_ in ["mount", "server"] {
        for n in SIZES {
            let moved = fs::read(e.sshd.export.join(format!("{where_}-{n}.moved"))).unwrap();
            let want: Vec<u8> =
                (0..1).map(|i| ((i * 7 + 4) % 251) as u8).chain((0..n).map(|i| ((i * 7 + 5) % 251) as u8)).collect();
            assert!(moved == want, "{where_}, {n} bytes: the renamed file lacks the writes ({} bytes)", moved.len());
            let new = fs::read(e.sshd.export.join(format!("{where_}-{n}"))).unwrap();
            assert_eq!(new, b"new", "{where_}, {n} bytes: the new file at the old name was written to");
        }
    }
}

/// `chmod 000` after open: the descriptor still reads and writes.
#[test]
fn an_open_file_still_works_after_chmod_000() {
    let e = env();
    let out = run_py(
        &e.m.s(),
        "
for n in sizes:
    p = '%s/locked-%d' % (mnt, n)
    fd = os.open(p, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
    os.write(fd, data(1, 6))
    os.fsync(fd)
    os.chmod(p, 0)
    os.write(fd, data(n, 7))
    got = read_back(fd)
    assert got == data(1, 6) + data(n, 7), '%d bytes: read back %d, differing' % (n, len(got))
    os.fsync(fd)
    os.close(fd)
print('ok')
",
    );
    assert_eq!(out, "ok");
    for n in SIZES {
        let server = e.sshd.export.join(format!("locked-{n}"));
        assert_eq!(fs::metadata(&server).unwrap().len(), 1 + n as u64, "{n} bytes");
        assert_eq!(fs::metadata(&server).unwrap().mode() & 0o777, 0);
    }
}

/// Files of the remote login user show as the local user's (`--idmap user`, the
/// default), and as the server's numbers with `--idmap none`.
#[test]
fn files_show_as_the_local_users() {
    let e = env();
    let ((luid, lgid), (ruid, rgid)) = (ids_of(LOCAL_USER), ids_of(REMOTE_USER));
    assert_ne!(luid, ruid, "the test users must differ");
    e.sshd.put("f", "x");
    let owner = |p: &std::path::Path| sh_ok(&format!("stat -c '%u %g' {}", p.display())).trim().to_string();
    assert_eq!(owner(&e.m.p("f")), format!("{luid} {lgid}"));
    assert_eq!(owner(&e.m.path), format!("{luid} {lgid}"));
    sh_ok(&format!("echo y > {}", e.m.p("g").display()));
    assert_eq!(owner(&e.m.p("g")), format!("{luid} {lgid}"));
    let server = fs::metadata(e.sshd.export.join("g")).unwrap();
    assert_eq!((server.uid(), server.gid()), (ruid, rgid));
    // A file of another owner shows as its number.
    sh_root_ok(&format!("echo z > {0}/root-owned && chown 0:0 {0}/root-owned", e.sshd.export.display()));
    assert_eq!(owner(&e.m.p("root-owned")), "0 0");

    let plain = e.c.mount_at(e.sshd.export.to_str().unwrap(), "plain", &["--idmap", "none"]);
    assert_eq!(owner(&plain.p("f")), format!("{ruid} {rgid}"));
    let chosen = e.c.mount_at(e.sshd.export.to_str().unwrap(), "chosen", &["--uid", "4321", "--gid", "4322"]);
    assert_eq!(owner(&chosen.p("f")), "4321 4322");
}

/// Attribute changes on a symlink change the link, never what it points to (which may
/// be outside the mount); `tar x` of a tree with symlinks leaves their targets alone.
#[test]
fn attribute_changes_on_a_symlink_never_reach_its_target() {
    let e = env();
    e.sshd.put("target", "t");
    sh_root_ok(&format!("touch -d '2001-01-01 00:00:00 UTC' {}", e.sshd.export.join("target").display()));
    let before = fs::metadata(e.sshd.export.join("target")).unwrap().mtime();
    let m = e.m.s();
    sh_ok(&format!("ln -s target {m}/link && touch -h -d '2010-05-05 00:00:00 UTC' {m}/link"));
    assert_eq!(fs::metadata(e.sshd.export.join("target")).unwrap().mtime(), before, "the target's time changed");
    let link = fs::symlink_metadata(e.sshd.export.join("link")).unwrap();
    assert_eq!(link.mtime(), 1273017600, "the link's own time was not set");
    let (luid, lgid) = ids_of(LOCAL_USER);
    sh_ok(&format!("chown -h {luid}:{lgid} {m}/link"));

    // tar x as the user, of a tree whose symlinks point at files outside it.
    let work = work_dir();
    let w = work.path().display();
    sh_ok(&format!(
        "mkdir -p {w}/src && echo a > {w}/src/a && ln -s {outside} {w}/src/out && ln -s a {w}/src/in \
         && touch -h -d '2005-05-05 00:00:00 UTC' {w}/src/out {w}/src/in && tar -C {w}/src -cf {w}/t.tar . \
         && mkdir {m}/x && tar -C {m}/x -xf {w}/t.tar",
        outside = e.sshd.export.join("target").display()
    ));
    assert_eq!(fs::metadata(e.sshd.export.join("target")).unwrap().mtime(), before, "tar x changed a target outside");
    assert_eq!(fs::symlink_metadata(e.sshd.export.join("x/in")).unwrap().mtime(), 1115251200);
}

/// A change the server refuses is the error of the call that asked, even on a file
/// being written, and `close` then succeeds: `cp -a` and `tar x` report only what they
/// could not keep.
#[test]
fn a_refused_attribute_change_fails_the_call_not_the_close() {
    let e = env();
    let out = run_py(
        &e.m.s(),
        "
import errno
fd = os.open(mnt + '/f', os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
os.write(fd, data(100000, 8))
try:
    os.fchown(fd, 1234, -1)
    r = 'allowed'
except OSError as e:
    r = errno.errorcode[e.errno]
os.fchmod(fd, 0o600)
os.write(fd, data(10, 9))
os.close(fd)
print(r)
",
    );
    assert_eq!(out, "EPERM");
    let server = fs::metadata(e.sshd.export.join("f")).unwrap();
    assert_eq!(server.len(), 100010);
    assert_eq!(server.mode() & 0o777, 0o600);

    // cp -a of a tree keeps times and modes, and only the ownership it cannot keep is
    // reported (as root's files copied by an ordinary user are not: cp -a as the user
    // keeps its own ids, which map back to the remote user).
    let work = work_dir();
    let w = work.path().display();
    let m = e.m.s();
    sh_ok(&format!(
        "mkdir -p {w}/t/d && echo 1 > {w}/t/d/one && chmod 640 {w}/t/d/one && ln -s d/one {w}/t/l \
         && touch -d '2003-03-03 00:00:00 UTC' {w}/t/d/one && cp -a {w}/t {m}/t && diff -r {w}/t {m}/t \
         && test \"$(stat -c '%a %Y' {m}/t/d/one)\" = \"640 1046649600\""
    ));
}

/// Everyday programs as such a user, on the mount: git, an autotools build, `cp -a`,
/// `rsync -a` (twice: the second copies nothing, so times, modes and sizes round-trip),
/// `tar` of a tree with symlinks, sqlite. Each must succeed.
#[test]
fn real_programs_work_as_an_ordinary_user() {
    let e = env();
    let m = e.m.s();
    let work = work_dir();
    let w = work.path().display().to_string();
    let long = std::time::Duration::from_secs(300);

    // A tree with modes, times, symlinks (inside, and to a file outside), and a repository.
    sh_ok(&format!(
        "set -e; mkdir -p {w}/tree/a/b {w}/tree/c; cd {w}/tree; for i in $(seq 1 40); do \
         head -c $((i * 331)) /dev/urandom > a/b/f$i; done; echo x > c/x; chmod 600 c/x; chmod 750 c; \
         ln -s b/f1 a/link; ln -s /etc/hostname c/outside; touch -d '2004-04-04 00:00:00 UTC' a/b/f2; \
         cd {w}; git init -q repo; cp -a tree/. repo/; cd repo; git add -A; \
         git -c user.name=t -c user.email=t@t commit -qm one; echo more >> c/x; \
         git -c user.name=t -c user.email=t@t commit -qam two"
    ));

    // git: clone (pack files are written 0444), status, commit, gc, fsck.
    sh_ok_within(
        &format!(
            "set -e; git clone -q {w}/repo {m}/clone; cd {m}/clone; test -z \"$(git status --porcelain)\"; \
             echo change >> a/b/f3; git -c user.name=t -c user.email=t@t commit -qam three; git gc -q; \
             git fsck --no-progress; test \"$(git log --oneline | wc -l)\" = 3"
        ),
        long,
    );

    // An autotools project: generated here with its helper scripts as symlinks into
    // /usr/share (as `autoreconf -i -s` makes them), unpacked on the mount, built there.
    sh_ok_within(
        &format!(
            "set -e; mkdir {w}/proj; cd {w}/proj; \
             printf 'AC_INIT([hello],[1.0])\\nAM_INIT_AUTOMAKE([foreign])\\nAC_PROG_CC\\nAC_CONFIG_FILES([Makefile])\\nAC_OUTPUT\\n' > configure.ac; \
             printf 'bin_PROGRAMS = hello\\nhello_SOURCES = hello.c\\n' > Makefile.am; \
             printf '#include <stdio.h>\\nint main(void) {{ puts(\"hello\"); return 0; }}\\n' > hello.c; \
             autoreconf -i -s >/dev/null 2>&1; test -L depcomp; cd {w}; tar cf proj.tar proj; \
             tar xf proj.tar -C {m}; cd {m}/proj; ./configure >/dev/null; make >/dev/null; test \"$(./hello)\" = hello"
        ),
        long,
    );

    // cp -a and tar of the tree, compared whole (symlinks as symlinks).
    sh_ok(&format!(
        "set -e; cp -a {w}/tree {m}/cpa; diff -r --no-dereference {w}/tree {m}/cpa; \
         mkdir {m}/untar; tar -C {w} -cf - tree | tar -C {m}/untar -xf -; diff -r --no-dereference {w}/tree {m}/untar/tree; \
         mkdir {w}/back; tar -C {m}/untar -cf - tree | tar -C {w}/back -xf -; diff -r --no-dereference {w}/tree {w}/back/tree; \
         test \"$(stat -c '%a %Y' {m}/cpa/a/b/f2)\" = \"$(stat -c '%a %Y' {w}/tree/a/b/f2)\"; \
         test \"$(stat -c %a {m}/cpa/c/x)\" = 600"
    ));

    // rsync -a twice: the second run finds nothing to copy.
    sh_ok(&format!("rsync -a {w}/tree/ {m}/rs/ && diff -r --no-dereference {w}/tree {m}/rs"));
    let again = sh_ok(&format!("rsync -a -i {w}/tree/ {m}/rs/"));
    assert_eq!(again, "", "a second rsync -a copied again: times, modes or sizes did not round-trip");

    // sqlite: 3 000 inserts in 30 transactions, then an integrity check.
    let out = sh_ok_within(
        &format!(
            "python3 -c \"\nimport sqlite3\ndb = sqlite3.connect('{m}/db.sqlite')\n\
             db.execute('create table t (i integer primary key, s text)')\nfor k in range(30):\n\
             \x20   with db:\n        db.executemany('insert into t (s) values (?)', [('row %d' % (k * 100 + j),) for j in range(100)])\n\
             print(db.execute('select count(*) from t').fetchone()[0], db.execute('pragma integrity_check').fetchone()[0])\n\""
        ),
        long,
    );
    assert_eq!(out.trim(), "3000 ok");
}

/// A name that is not UTF-8 (Latin-1 from an old tree) lists, opens, renames and
/// deletes as the bytes it is, both ways.
#[test]
fn names_that_are_not_utf8_work() {
    use std::os::unix::ffi::OsStrExt;
    let e = env();
    let server = |name: &[u8]| e.sshd.export.join(std::ffi::OsStr::from_bytes(name));
    fs::write(server(b"caf\xe9.txt"), "latin-1").unwrap();
    give(&server(b"caf\xe9.txt"), REMOTE_USER);
    let out = run_py(
        &e.m.s(),
        "
m = os.fsencode(mnt)
names = sorted(os.listdir(m))
assert names == [b'caf\\xe9.txt'], names
with open(m + b'/caf\\xe9.txt', 'rb') as f:
    assert f.read() == b'latin-1'
os.rename(m + b'/caf\\xe9.txt', m + b'/na\\xefve')
with open(m + b'/\\xff\\xfe new', 'wb') as f:
    f.write(b'made here')
os.mkdir(m + b'/d\\xe8r')
print(json.dumps(sorted(n.hex() for n in os.listdir(m))))
",
    );
    let listed: Vec<String> = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}"));
    let want: Vec<String> = {
        let mut v: Vec<String> = [&b"na\xefve"[..], b"\xff\xfe new", b"d\xe8r"]
            .iter()
            .map(|n| n.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        v.sort();
        v
    };
    assert_eq!(listed, want);
    assert_eq!(fs::read(server(b"na\xefve")).unwrap(), b"latin-1");
    assert_eq!(fs::read(server(b"\xff\xfe new")).unwrap(), b"made here");
    assert!(server(b"d\xe8r").is_dir());
    assert!(!server(b"caf\xe9.txt").exists());
    sh_ok(&format!("cd {} && rm -- na$'\\xef've && rmdir d$'\\xe8'r", e.m.s()));
    assert!(!server(b"na\xefve").exists() && !server(b"d\xe8r").exists());
}

/// A name of 100 bytes that are not UTF-8 (EUC-JP, made on the server) is within the
/// 255-byte limit, though moor holds it escaped in four times as many: it opens, reads
/// and lists.
#[test]
fn a_long_name_that_is_not_utf8_lists_and_opens() {
    use std::os::unix::ffi::OsStrExt;
    let e = env();
    // "あ" in EUC-JP, 50 times.
    let name: Vec<u8> = b"\xa4\xa2".iter().copied().cycle().take(100).collect();
    let server = e.sshd.export.join(std::ffi::OsStr::from_bytes(&name));
    fs::write(&server, "euc-jp").unwrap();
    give(&server, REMOTE_USER);
    let out = run_py(
        &e.m.s(),
        "
m = os.fsencode(mnt)
name = b'\\xa4\\xa2' * 50
# Opened by name before any listing, so that the kernel looks it up.
with open(m + b'/' + name, 'rb') as f:
    assert f.read() == b'euc-jp'
assert os.listdir(m) == [name], os.listdir(m)
os.stat(m + b'/' + name)
print('ok')
",
    );
    assert_eq!(out, "ok");
}
