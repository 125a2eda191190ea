//! Filesystem operations through a real kernel FUSE mount served by moor from a real
//! sshd, exercised with ordinary programs.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::*;

struct Env {
    // Drop order matters: unmount, then stop the agent, then sshd.
    m: Mount,
    c: Client,
    sshd: Sshd,
}

fn env() -> Env {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    let m = c.mount(sshd.export.to_str().unwrap());
    Env { m, c, sshd }
}

impl Env {
    fn remote(&self, rel: &str) -> std::path::PathBuf {
        self.sshd.export.join(rel)
    }
}

#[test]
fn cat_ls_cp_mv_rm() {
    let e = env();
    e.sshd.put("hello.txt", "hello from the server\n");
    let mnt = e.m.s();
    assert_eq!(sh_ok(&format!("cat {mnt}/hello.txt")), "hello from the server\n");
    let ls = sh_ok(&format!("ls -l {mnt}"));
    assert!(ls.contains("hello.txt") && ls.contains(" 22 "), "ls -l: {ls}");
    sh_ok(&format!("cp {mnt}/hello.txt {mnt}/copy.txt && mv {mnt}/copy.txt {mnt}/moved.txt"));
    assert_eq!(fs::read_to_string(e.remote("moved.txt")).unwrap(), "hello from the server\n");
    assert!(!e.remote("copy.txt").exists());
    sh_ok(&format!("rm {mnt}/moved.txt"));
    assert!(!e.remote("moved.txt").exists());
    let _ = &e.c;
}

#[test]
fn tar_roundtrip() {
    let e = env();
    let mnt = e.m.s();
    let work = work_dir();
    let w = work.path().display();
    sh_ok(&format!(
        "mkdir -p {w}/src/a/b {w}/src/c && for i in $(seq 1 50); do head -c $((i*97)) /dev/urandom > {w}/src/a/b/f$i; done \
         && echo text > {w}/src/c/t && ln -s ../c/t {w}/src/a/link && chmod 750 {w}/src/c \
         && tar -C {w}/src -cf {w}/in.tar . && mkdir {mnt}/x && tar -C {mnt}/x -xf {w}/in.tar \
         && mkdir {w}/out && tar -C {mnt}/x -cf - . | tar -C {w}/out -xf - \
         && {{ diff -r --no-dereference {w}/src {w}/out || {{ for f in {w}/src/a/b/*; do b=$(basename $f); \
              cmp $f {w}/out/a/b/$b; cmp $f {remote}/x/a/b/$b; ls -l $f {w}/out/a/b/$b {remote}/x/a/b/$b; done; false; }}; }}",
        remote = e.sshd.export.display()
    ));
    assert_eq!(fs::read_link(e.remote("x/a/link")).unwrap().to_str().unwrap(), "../c/t");
    assert_eq!(fs::metadata(e.remote("x/c")).unwrap().mode() & 0o777, 0o750);
}

#[test]
fn git_init_add_commit() {
    let e = env();
    let mnt = e.m.s();
    let out = sh_ok(&format!(
        "cd {mnt} && git init -q repo && cd repo && git config user.email t@example.com && git config user.name t \
         && echo one > a && mkdir d && echo two > d/b && git add -A && git commit -qm first \
         && echo three >> a && git commit -qam second && git log --oneline | wc -l && git fsck --no-progress && git status --porcelain"
    ));
    assert_eq!(out.trim(), "2");
    // The server-side repository is complete and valid too.
    let remote = e.remote("repo");
    let log = sh_root_ok(&format!("git -c safe.directory='*' -C {} log --format=%s", remote.display()));
    assert_eq!(log, "second\nfirst\n");
}

#[test]
fn dd_large_file_checksums_match() {
    let e = env();
    let mnt = e.m.s();
    let work = work_dir();
    let w = work.path().display();
    let out = sh_ok(&format!(
        "head -c $((80*1024*1024)) /dev/urandom > {w}/big && dd if={w}/big of={mnt}/big bs=1M conv=fsync status=none \
         && sha256sum < {w}/big && sha256sum < {mnt}/big && dd if={mnt}/big bs=1M status=none | sha256sum"
    ));
    let sums: Vec<&str> = out.lines().collect();
    assert_eq!(sums.len(), 3);
    assert_eq!(sums[0], sums[1], "read back through the mount differs");
    assert_eq!(sums[0], sums[2]);
    let server = sh_root_ok(&format!("sha256sum < {}", e.remote("big").display()));
    assert_eq!(server.trim(), sums[0].trim(), "server copy differs");
}

#[test]
fn mmap_read_matches() {
    let e = env();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    e.sshd.put("m.bin", &data);
    let script = format!(
        "import mmap,hashlib\nf=open('{}','rb')\nm=mmap.mmap(f.fileno(),0,access=mmap.ACCESS_READ)\nprint(hashlib.sha256(m[:]).hexdigest(), m[123456])",
        e.m.p("m.bin").display()
    );
    let out = sh_ok(&format!("python3 -c \"{script}\""));
    let expect = sh_root_ok(&format!("sha256sum < {}", e.remote("m.bin").display()));
    let mut parts = out.split_whitespace();
    assert_eq!(parts.next().unwrap(), expect.split_whitespace().next().unwrap());
    assert_eq!(parts.next().unwrap(), data[123456].to_string());
}

#[test]
fn offsets_beyond_4gib() {
    let e = env();
    let mnt = e.m.s();
    // A sparse file: one block written at 5 GiB.
    sh_ok(&format!(
        "head -c 4096 /dev/urandom > {mnt}/.blk && dd if={mnt}/.blk of={mnt}/sparse bs=4096 seek=$((5*1024*1024/4)) conv=notrunc status=none"
    ));
    let size = fs::metadata(e.m.p("sparse")).unwrap().len();
    assert_eq!(size, 5 * 1024 * 1024 * 1024 + 4096);
    assert_eq!(fs::metadata(e.remote("sparse")).unwrap().len(), size);
    let out = sh_ok(&format!(
        "dd if={mnt}/sparse bs=4096 skip=$((5*1024*1024/4)) count=1 status=none | cmp - {mnt}/.blk && echo same"
    ));
    assert_eq!(out.trim(), "same");
}

#[test]
fn metadata_changes() {
    let e = env();
    let mnt = e.m.s();
    e.sshd.put("f", "0123456789");
    sh_ok(&format!("chmod 640 {mnt}/f && truncate -s 4 {mnt}/f && touch -m -d '2001-02-03 04:05:06 UTC' {mnt}/f"));
    let meta = fs::metadata(e.remote("f")).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert_eq!(meta.len(), 4);
    assert_eq!(meta.mtime(), 981173106);
    let seen = sh_ok(&format!("stat -c '%a %s %Y' {mnt}/f"));
    assert_eq!(seen.trim(), "640 4 981173106");
    // The remote login user's files show as the local user's, and a chown to the local
    // user is sent as the remote one.
    let ((luid, lgid), (ruid, rgid)) = (ids_of(LOCAL_USER), ids_of(REMOTE_USER));
    assert_eq!(sh_ok(&format!("stat -c '%u %g' {mnt}/f")).trim(), format!("{luid} {lgid}"));
    sh_ok(&format!("chown {luid}:{lgid} {mnt}/f"));
    let meta = fs::metadata(e.remote("f")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (ruid, rgid));
    // An ordinary user cannot give a file away; the chown itself says so.
    let out = sh(&format!("chown 1234 {mnt}/f"));
    assert!(!out.status.success() && stderr(&out).contains("Operation not permitted"), "{}", stderr(&out));
    assert_eq!(fs::metadata(e.remote("f")).unwrap().uid(), ruid);
}

#[test]
fn directories_links_and_renames() {
    let e = env();
    let mnt = e.m.s();
    sh_ok(&format!(
        "mkdir -p {mnt}/a/b && echo x > {mnt}/a/b/f && ln -s b/f {mnt}/a/s && ln {mnt}/a/b/f {mnt}/a/h \
         && mv {mnt}/a {mnt}/z && echo y > {mnt}/z/other && mv -f {mnt}/z/other {mnt}/z/h"
    ));
    assert_eq!(fs::read_to_string(e.remote("z/b/f")).unwrap(), "x\n");
    assert_eq!(fs::read_link(e.remote("z/s")).unwrap().to_str().unwrap(), "b/f");
    assert_eq!(sh_ok(&format!("readlink {mnt}/z/s")).trim(), "b/f");
    assert_eq!(sh_ok(&format!("cat {mnt}/z/s")), "x\n");
    // Rename over an existing file replaced it atomically.
    assert_eq!(fs::read_to_string(e.remote("z/h")).unwrap(), "y\n");
    assert!(!e.remote("z/other").exists());
    sh_ok(&format!("rm -r {mnt}/z"));
    assert!(!e.remote("z").exists());
}

#[test]
fn hardlink_shares_the_server_inode() {
    let e = env();
    let mnt = e.m.s();
    sh_ok(&format!("echo x > {mnt}/f && ln {mnt}/f {mnt}/g"));
    let (a, b) = (fs::metadata(e.remote("f")).unwrap(), fs::metadata(e.remote("g")).unwrap());
    assert_eq!(a.ino(), b.ino());
}

#[test]
fn append_truncate_and_exclusive_create() {
    let e = env();
    let mnt = e.m.s();
    sh_ok(&format!("echo one > {mnt}/f && echo two >> {mnt}/f"));
    assert_eq!(fs::read_to_string(e.remote("f")).unwrap(), "one\ntwo\n");
    sh_ok(&format!("echo three > {mnt}/f"));
    assert_eq!(fs::read_to_string(e.remote("f")).unwrap(), "three\n");
    let py = format!(
        "import os,errno\ntry:\n  os.open('{mnt}/f', os.O_CREAT|os.O_EXCL|os.O_WRONLY)\nexcept OSError as e:\n  print(errno.errorcode[e.errno])"
    );
    assert_eq!(sh_ok(&format!("python3 -c \"{py}\"")).trim(), "EEXIST");
}

/// Runs a Python snippet that prints the errno name of each failing call, one per line.
fn errnos(calls: &[&str]) -> Vec<String> {
    let mut py = String::from("import os,errno\n");
    for c in calls {
        py.push_str(&format!("try:\n  {c}\n  print('OK')\nexcept OSError as e:\n  print(errno.errorcode[e.errno])\n"));
    }
    let file = script_file(&py);
    sh_ok(&format!("python3 {}", file.path().display())).lines().map(String::from).collect()
}

#[test]
fn errors_map_to_the_right_errno() {
    let e = env();
    let m = e.m.s();
    e.sshd.mkdir("full/sub");
    e.sshd.mkdir("empty");
    e.sshd.put("file", "x");
    let got = errnos(&[
        &format!("os.mkdir('{m}/full')"),
        &format!("os.rmdir('{m}/full')"),
        &format!("os.rmdir('{m}/file')"),
        &format!("os.unlink('{m}/full')"),
        &format!("open('{m}/missing')"),
        &format!("os.rename('{m}/empty', '{m}/full')"),
        &format!("os.rename('{m}/empty', '{m}/file')"),
        &format!("os.rename('{m}/file', '{m}/empty')"),
        &format!("os.mkfifo('{m}/fifo')"),
        &format!("os.listdir('{m}/file')"),
        &format!("os.mkdir('{m}/' + 'x' * 300)"),
        &format!("os.symlink('t', '{m}/file')"),
    ]);
    assert_eq!(
        got,
        [
            "EEXIST",
            "ENOTEMPTY",
            "ENOTDIR",
            "EISDIR",
            "ENOENT",
            "ENOTEMPTY",
            "ENOTDIR",
            "EISDIR",
            "EPERM",
            "ENOTDIR",
            "ENAMETOOLONG",
            "EEXIST"
        ]
    );
}

#[test]
fn inode_numbers_are_stable() {
    let e = env();
    let mnt = e.m.s();
    sh_ok(&format!("mkdir {mnt}/d && echo x > {mnt}/d/f"));
    let first = sh_ok(&format!("stat -c %i {mnt}/d/f"));
    let listed = sh_ok(&format!("ls -i {mnt}/d | cut -d' ' -f1"));
    assert_eq!(first, listed);
    sh_ok(&format!("mv {mnt}/d {mnt}/e"));
    assert_eq!(sh_ok(&format!("stat -c %i {mnt}/e/f")), first);
    assert_eq!(sh_ok(&format!("stat -c %i {mnt}/e/f")), first);
}

#[test]
fn statfs_reports_the_server_filesystem() {
    let e = env();
    let out = sh_ok(&format!("stat -f -c '%b %a %S' {}", e.m.s()));
    let nums: Vec<u64> = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert!(nums[0] > 0 && nums[1] > 0 && nums[2] > 0, "statfs: {out}");
    let server = sh_ok(&format!("stat -f -c '%b' {}", e.sshd.export.display()));
    assert_eq!(nums[0].to_string(), server.trim());
}

/// Several programs unpacking and re-reading trees at once: what the server answers on one
/// connection of the pool must never make a file look shorter than what was written on
/// another (a regression seen as truncated files in `tar c`).
#[test]
fn concurrent_tar_roundtrips_keep_every_byte() {
    let e = env();
    let mnt = e.m.s();
    let work = work_dir();
    let w = work.path().display();
    sh_ok(&format!(
        "mkdir -p {w}/src/a/b && for i in $(seq 1 60); do head -c $((i*97)) /dev/urandom > {w}/src/a/b/f$i; done \
         && tar -C {w}/src -cf {w}/in.tar ."
    ));
    let script = format!(
        "set -e; run() {{ for n in 1 2 3; do d={mnt}/r$1-$n; o={w}/out$1-$n; mkdir $d $o; \
           tar -C $d -xf {w}/in.tar; tar -C $d -cf - . | tar -C $o -xf -; diff -r {w}/src $o; done; }}; \
         pids=; for k in 1 2 3 4; do run $k & pids=\"$pids $!\"; done; for p in $pids; do wait $p; done"
    );
    sh_ok(&script);
}

/// A thousand files open at once: handles are opaque bytes, so OpenSSH's handle numbers
/// of 128 and more survive; each connection holds at most 500 server handles (within the
/// server process's file descriptors), past that opens fail with EMFILE, and no open
/// file ever reads another's bytes.
#[test]
fn many_open_files_stay_correct() {
    let sshd = Sshd::start();
    let c = Client::new(&sshd);
    sh_root_ok(&format!("cd {} && for i in $(seq 0 999); do echo -n $i > f$i; done", sshd.export.display()));
    sshd.give_export();
    let export = sshd.export.to_str().unwrap().to_string();
    let probe = |mnt: &std::path::Path| {
        let py = format!(
            "import os,errno\nfds=[];refused={{}}\nfor i in range(1000):\n  try: fds.append((i,os.open('{m}/f%d'%i,os.O_RDONLY)))\n  except OSError as e: refused[errno.errorcode[e.errno]]=refused.get(errno.errorcode[e.errno],0)+1\nwrong=sum(1 for i,fd in fds if os.pread(fd,10,0)!=str(i).encode())\nprint(len(fds), refused, wrong)",
            m = mnt.display()
        );
        let f = script_file(&py);
        sh_ok(&format!("python3 {}", f.path().display())).trim().to_string()
    };
    let pooled = c.mount_at(&export, "pooled", &["--cache-timeout", "0"]);
    assert_eq!(probe(&pooled.path), "1000 {} 0");
    // Another destination (a different ConnectTimeout), so it gets a link of its own.
    let single =
        c.mount_at(&export, "single", &["--cache-timeout", "0", "--connections", "1", "-o", "ConnectTimeout=6"]);
    assert_eq!(probe(&single.path), "500 {'EMFILE': 500} 0");
}

/// Clears the immutable flag again, even when the test fails, so the directory can go.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(path: std::path::PathBuf) -> Immutable {
        // Only root may set the flag: it stands for a file the server keeps.
        sh_root_ok(&format!("chattr +i {}", path.display()));
        Immutable(path)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn rm_rf_removes_a_tree_and_reports_a_refused_removal() {
    let e = env();
    let mnt = e.m.s();
    let r = e.sshd.export.display();
    sh_root_ok(&format!(
        "mkdir -p {r}/t/a/b {r}/t/c && for i in $(seq 1 60); do echo $i > {r}/t/a/b/f$i; echo $i > {r}/t/c/g$i; done"
    ));
    e.sshd.give_export();
    sh_ok(&format!("ls -R {mnt}/t > /dev/null && rm -rf {mnt}/t"));
    assert!(!e.remote("t").exists(), "rm -rf left something on the server");

    // A file the server keeps, under rm -rf: the error surfaces and the file shows again.
    sh_root_ok(&format!("mkdir -p {r}/u/v && echo x > {r}/u/v/locked && echo y > {r}/u/v/other"));
    e.sshd.give_export();
    let _locked = Immutable::set(e.remote("u/v/locked"));
    let out = sh(&format!("rm -rf {mnt}/u"));
    assert!(!out.status.success(), "rm -rf succeeded although the server kept a file");
    let refused = |err: &str| err.contains("Permission denied") || err.contains("not permitted");
    assert!(refused(&stderr(&out)), "rm said: {}", stderr(&out));
    assert!(e.remote("u/v/locked").exists());
    // Every unlink was answered by the server: by the time rm exits, all but the kept
    // file are gone.
    assert!(!e.remote("u/v/other").exists(), "rm -rf exited before a removal landed");
    assert_eq!(sh_ok(&format!("ls {mnt}/u/v")), "locked\n", "the kept file shows again");

    // A lone unlink waits for the server: its refusal is the unlink's own error.
    sh_root_ok(&format!("mkdir {r}/w && echo x > {r}/w/locked"));
    give(&e.remote("w"), REMOTE_USER);
    sh_ok(&format!("ls {mnt}/w > /dev/null"));
    let _locked_w = Immutable::set(e.remote("w/locked"));
    let out = sh(&format!("rm {mnt}/w/locked"));
    assert!(!out.status.success() && refused(&stderr(&out)), "rm said: {}", stderr(&out));

    // In a burst (`rm *.o`) each unlink waits for its own answer too: rm names the file
    // the server kept and exits 1, as on sshfs, and removes the rest.
    sh_root_ok(&format!("mkdir {r}/b && for i in $(seq 1 20); do echo $i > {r}/b/f$i.o; done"));
    give(&e.remote("b"), REMOTE_USER);
    sh_ok(&format!("ls {mnt}/b > /dev/null"));
    let _locked_b = Immutable::set(e.remote("b/f7.o"));
    let out = sh(&format!("cd {mnt}/b && rm *.o"));
    assert_eq!(out.status.code(), Some(1), "rm *.o: {}", stderr(&out));
    assert!(stderr(&out).contains("f7.o") && refused(&stderr(&out)), "rm said: {}", stderr(&out));
    assert_eq!(sh_ok(&format!("ls {mnt}/b")), "f7.o\n", "the kept file shows, the rest are gone");
    assert_eq!(fs::read_dir(e.remote("b")).unwrap().count(), 1, "the server holds only the kept file");
}

#[test]
fn a_file_removed_on_the_server_can_be_created_again_through_the_mount() {
    let e = env();
    let mnt = e.m.s();
    e.sshd.put("f", "old\n");
    assert_eq!(sh_ok(&format!("cat {mnt}/f")), "old\n");
    // Another client removes it while the mount still has the name cached.
    fs::remove_file(e.remote("f")).unwrap();
    sh_ok(&format!("echo new > {mnt}/f"));
    assert_eq!(fs::read_to_string(e.remote("f")).unwrap(), "new\n");
}

#[test]
fn reads_are_right_with_read_ahead_small_or_off() {
    let e = env();
    sh_root_ok(&format!("head -c 5000000 /dev/urandom > {}", e.remote("big").display()));
    e.sshd.give_export();
    for ra in ["0", "256K"] {
        let m = e.c.mount_at(e.sshd.export.to_str().unwrap(), &format!("ra{ra}"), &["--read-ahead", ra]);
        sh_ok(&format!("cmp {} {}", m.p("big").display(), e.remote("big").display()));
    }
}
