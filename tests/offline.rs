//! Working offline (`--offline-cache`) through a real mount: a fault proxy between moor
//! and a real sshd black-holes the link while real programs read what they read before.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

/// A mount with an offline cache whose kernel and core caches are short, so that what a
/// test reads while the link is down comes from the offline cache.
fn env() -> Proxied {
    Proxied::start_with(&["--offline-cache", "64M", "--cache-timeout", "1s"])
}

/// A tree on the server whose files' mtimes are an hour old (settled: see
/// `remote::offline`): small files, one of several blocks, a subdirectory, a symlink.
fn tree(e: &Proxied) {
    e.sshd.mkdir("t/sub");
    e.sshd.mkdir("t/unlisted/deep");
    e.sshd.put("t/unlisted/deep/x", "in a directory never listed");
    for i in 0..20 {
        e.sshd.put(&format!("t/f{i}"), format!("file {i}\n").repeat(i + 1));
    }
    e.sshd.put("t/sub/big", (0..700_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    // Past what the mount fetches ahead of a reader (small files).
    e.sshd.put("t/sub/unread", "never read through the mount\n".repeat(10_000));
    sh_root_ok(&format!(
        "cd {} && ln -s f1 t/link && touch -h -d '1 hour ago' t/link t/f* t/sub/* t/unlisted/deep/x",
        e.sshd.export.display()
    ));
    e.sshd.give_export();
}

/// Everything the tree holds as seen through `dir`, but `sub/unread`: a listing with sizes
/// and every file's digest.
const READ_ALL: &str = r#"
import os, sys, json, hashlib, time, errno
def read_all(root):
    out, slowest = {}, 0.0
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x != "unlisted")
        for n in sorted(files) + sorted(dirs):
            p = os.path.join(d, n)
            if n == "unread":
                continue
            t = time.monotonic()
            st = os.lstat(p)
            if os.path.islink(p):
                v = "-> " + os.readlink(p)
            elif os.path.isdir(p):
                v = "dir"
            else:
                with open(p, "rb") as f:
                    v = hashlib.sha256(f.read()).hexdigest()
            slowest = max(slowest, time.monotonic() - t)
            out[os.path.relpath(p, root)] = [st.st_size, v]
    return out, slowest
"#;

fn read_tree(dir: &std::path::Path) -> serde_json::Value {
    let script =
        format!("{READ_ALL}\nt, s = read_all('{}')\nprint(json.dumps({{'tree': t, 'slowest': s}}))", dir.display());
    let file = script_file(&script);
    let out = sh_ok(&format!("python3 {}", file.path().display()));
    serde_json::from_str(out.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{out}: {e}"))
}

/// What `call` on `path` gets: "ok" or the errno's name.
fn outcome(call: &str, path: &std::path::Path) -> String {
    let script = format!(
        "import os, errno\ntry:\n  {call}('{}')\n  print('ok')\nexcept OSError as e:\n  print(errno.errorcode.get(e.errno, e.errno))",
        path.display()
    );
    let file = script_file(&script);
    sh_ok(&format!("python3 {}", file.path().display())).trim().to_string()
}

/// A Python call that reads a file's start. (Python's `read()` of a whole file takes
/// EAGAIN for "nothing more yet" and returns what it has.)
const READ: &str = "(lambda p: os.read(os.open(p, os.O_RDONLY), 1 << 20))";

/// Drops the kernel's page, dentry and inode caches, so that reads reach the mount.
fn drop_kernel_caches() {
    sh_root_ok("sync; echo 3 > /proc/sys/vm/drop_caches");
}

fn wait_state(e: &Proxied, want: &str) {
    assert!(wait_until(Duration::from_secs(20), || e.c.state() == want), "never {want}: {}", e.c.mount_json());
}

#[test]
fn what_was_read_stays_readable_while_the_link_is_down() {
    let e = env();
    tree(&e);
    let before = read_tree(&e.m.path);
    assert_eq!(before["tree"].as_object().unwrap().len(), 24, "{before}");

    e.proxy.black_hole();
    wait_state(&e, "reconnecting");
    drop_kernel_caches();
    let during = read_tree(&e.m.path);
    assert_eq!(during["tree"], before["tree"], "the tree reads back the same while down");
    let slowest = during["slowest"].as_f64().unwrap();
    assert!(slowest < 0.05, "a read took {:.1} ms while down", slowest * 1000.0);
    eprintln!("measured: slowest stat+read while down {:.2} ms", slowest * 1000.0);

    // Listed, never read: not here. Absent from a complete listing: not there.
    assert_eq!(outcome(READ, &e.m.p("t/sub/unread")), "EAGAIN");
    assert_eq!(outcome("os.stat", &e.m.p("t/nothing")), "ENOENT");
    // In a directory never listed (the walk left out `unlisted`, and the mount lists
    // ahead only the directories in one it listed): not known.
    assert_eq!(outcome("os.stat", &e.m.p("t/unlisted/deep/x")), "EAGAIN");

    let m = e.c.mount_json();
    let cache = &m["offline_cache"];
    assert!(cache["files"].as_u64().unwrap() >= 21, "{m}");
    assert!(cache["hits"].as_u64().unwrap() > 0, "{m}");
    assert!(cache["bytes"].as_u64().unwrap() <= cache["limit"].as_u64().unwrap(), "{m}");
    let text = stdout(&e.c.run(&["mount", "status"]));
    assert!(text.contains("from the offline cache"), "{text}");

    e.proxy.restore();
    wait_state(&e, "active");
    let unread = fs::read_to_string(e.m.p("t/sub/unread")).unwrap();
    assert_eq!(unread, "never read through the mount\n".repeat(10_000));

    // Emptied on demand; a mount without one says so.
    let out = e.c.run(&["cache", "clear", e.m.path.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cleared: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cleared["offline_cache"]["files"], 0, "{cleared}");
    let out = e.c.run(&["cache", "clear", "/nowhere"]);
    assert!(!out.status.success());
}

/// The bytes under the client's offline caches, as the filesystem stores them.
fn cache_disk_usage(c: &Client) -> u64 {
    let dir = c.home.path().join(".cache/moor");
    let out = sh_ok(&format!("du -s --block-size=1 {}", dir.display()));
    out.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn a_file_twice_the_cache_streams_through_within_the_bound() {
    let limit: u64 = 8 << 20;
    let e = Proxied::start_with(&["--offline-cache", "8M", "--cache-timeout", "1s"]);
    e.sshd.put("big", (0..(16u32 << 20)).map(|i| (i % 253) as u8).collect::<Vec<_>>());
    sh_root_ok(&format!("touch -d '1 hour ago' {}", e.sshd.export.join("big").display()));
    let want = sh_ok(&format!("sha256sum < {}", e.sshd.export.join("big").display()));
    for _ in 0..2 {
        let got = sh_ok(&format!("sha256sum < {}", e.m.p("big").display()));
        assert_eq!(got, want);
        let m = e.c.mount_json();
        let bytes = m["offline_cache"]["bytes"].as_u64().unwrap();
        assert!(bytes <= limit, "the cache holds {bytes} bytes, over its {limit}: {m}");
        // On disk: within the limit but for one block (1 MiB) in the making per reader.
        let on_disk = cache_disk_usage(&e.c);
        assert!(on_disk <= limit + (1 << 20), "{on_disk} bytes on disk, over {limit}");
        drop_kernel_caches();
    }
}

/// Every entry of the tree on the server itself, read as root.
fn server_tree(e: &Proxied) -> serde_json::Value {
    read_tree(&e.sshd.export)["tree"].clone()
}

#[test]
fn once_the_link_is_back_nothing_stale_is_served() {
    // Caches that would trust what they hold for half a minute.
    let e = Proxied::start_with(&["--offline-cache", "64M", "--cache-timeout", "30s"]);
    tree(&e);
    let before = read_tree(&e.m.path);
    assert_eq!(before["tree"], server_tree(&e));

    e.proxy.black_hole();
    wait_state(&e, "reconnecting");
    drop_kernel_caches();
    assert_eq!(read_tree(&e.m.path)["tree"], before["tree"]);

    // Meanwhile on the server: a change of the same size, a removal, a new file, a
    // directory's file replaced by a bigger one.
    let f3 = fs::read(e.sshd.export.join("t/f3")).unwrap();
    e.sshd.put("t/f3", f3.iter().map(|b| b ^ 0x20).collect::<Vec<_>>());
    fs::remove_file(e.sshd.export.join("t/f4")).unwrap();
    e.sshd.put("t/new", "made while the mount was away");
    e.sshd.put("t/sub/big", "small now");
    let want = server_tree(&e);
    assert_ne!(want, before["tree"]);

    e.proxy.restore();
    wait_state(&e, "active");
    assert_eq!(read_tree(&e.m.path)["tree"], want, "stale after the link came back");
}

#[test]
fn a_mount_made_while_the_host_is_away_serves_its_cache_then_turns_active() {
    let e = env();
    tree(&e);
    let before = read_tree(&e.m.path);
    let out = e.c.run(&["unmount", e.m.path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    e.proxy.black_hole();
    let started = std::time::Instant::now();
    let again =
        e.c.mount_at(e.sshd.export.to_str().unwrap(), "mnt", &["--offline-cache", "64M", "--cache-timeout", "1s"]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "mounting while the host is away took {took:?}");
    eprintln!("measured: mounted from the offline cache in {took:?}");
    assert_eq!(e.c.state(), "reconnecting", "{}", e.c.mount_json());
    assert_eq!(read_tree(&again.path)["tree"], before["tree"]);

    e.proxy.restore();
    wait_state(&e, "active");
    assert_eq!(read_tree(&again.path)["tree"], server_tree(&e));
}

#[test]
fn without_a_cache_a_mount_while_the_host_is_away_fails_as_before() {
    let e = env();
    let out = e.c.run(&["unmount", e.m.path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    e.proxy.black_hole();
    let mnt = e.c.mountpoint("other");
    let out = e.c.try_mount(e.sshd.export.to_str().unwrap(), &mnt, &["-o", "ConnectTimeout=2"]);
    assert!(!out.status.success(), "mounted without a cache while the host was away");
    assert!(!is_mounted(&mnt));
}

/// Python that reads `path` in 64 KiB pieces and prints how many came back as the
/// server's bytes, how many were refused with EAGAIN, and how many were wrong.
const CHECK_PIECES: &str = r#"
import os, sys, json, errno
path, want_path = sys.argv[1], sys.argv[2]
want = open(want_path, "rb").read()
fd = os.open(path, os.O_RDONLY)
ok = again = wrong = 0
for off in range(0, len(want), 65536):
    try:
        got = os.pread(fd, 65536, off)
    except OSError as e:
        if e.errno != errno.EAGAIN:
            raise
        again += 1
        continue
    if got == want[off:off + 65536]:
        ok += 1
    else:
        wrong += 1
print(json.dumps({"ok": ok, "again": again, "wrong": wrong}))
"#;

#[test]
fn a_cache_killed_while_it_fills_never_serves_a_torn_block() {
    let e = env();
    let data: Vec<u8> = (0..(24u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    e.sshd.put("big", &data);
    sh_root_ok(&format!("touch -d '1 hour ago' {}", e.sshd.export.join("big").display()));
    // Reading fills the cache; the agent dies part way.
    let mut reader = std::process::Command::new("cat")
        .arg(e.m.p("big"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let m = || e.c.mount_json()["offline_cache"]["files"].as_u64().unwrap_or(0);
    assert!(wait_until(Duration::from_secs(20), || m() > 0 || e.c.mount_json()["bytes_read"].as_u64() > Some(4 << 20)));
    for pid in e.c.agent_pids() {
        sh_root_ok(&format!("kill -9 {pid}"));
    }
    let _ = reader.kill();
    let _ = reader.wait();
    sh_root_ok(&format!("fusermount3 -uz {} || umount -l {} || true", e.m.path.display(), e.m.path.display()));

    // Mounted again with the host away: what the cache holds is right, or refused.
    e.proxy.black_hole();
    let again =
        e.c.mount_at(e.sshd.export.to_str().unwrap(), "mnt", &["--offline-cache", "64M", "--cache-timeout", "1s"]);
    let script = script_file(CHECK_PIECES);
    let out = sh_ok(&format!(
        "python3 {} {} {}",
        script.path().display(),
        again.path.join("big").display(),
        e.sshd.export.join("big").display()
    ));
    let r: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(r["wrong"], 0, "{r}");
    assert!(r["ok"].as_u64().unwrap() > 0, "nothing of what was read before the kill was kept: {r}");
    eprintln!("measured: after kill -9, {r}");
}

#[test]
fn a_file_changed_within_the_second_it_was_read_is_read_again() {
    let e = env();
    // Two versions of the same size and the same mtime, in the current second: what
    // SFTP shows of them is the same.
    let now = "import os, time, sys; t = int(time.time()); os.utime(sys.argv[1], (t, t))";
    e.sshd.put("racy", "first version");
    sh_root_ok(&format!("python3 -c '{now}' {}", e.sshd.export.join("racy").display()));
    assert_eq!(fs::read_to_string(e.m.p("racy")).unwrap(), "first version");
    let mtime = fs::metadata(e.sshd.export.join("racy")).unwrap().modified().unwrap();
    e.sshd.put("racy", "other version");
    let f = fs::File::options().write(true).open(e.sshd.export.join("racy")).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    // Once the mount's caches time out, the new content shows.
    let seen = wait_until(Duration::from_secs(5), || {
        drop_kernel_caches();
        fs::read_to_string(e.m.p("racy")).is_ok_and(|s| s == "other version")
    });
    assert!(seen, "the change within the second was never seen");
}

#[test]
fn a_second_mount_of_the_same_path_with_a_cache_is_refused_with_the_reason() {
    let e = env();
    let other = e.c.mountpoint("other");
    let out = e.c.try_mount(e.sshd.export.to_str().unwrap(), &other, &["--offline-cache", "64M"]);
    assert!(!out.status.success(), "two mounts shared one offline cache");
    let err = stderr(&out);
    assert!(err.contains("offline cache") && err.lines().count() == 1, "{err}");
    assert!(!is_mounted(&other), "a half-made mount was left");
    // The first one still serves.
    e.sshd.put("f", "still here");
    assert!(wait_until(Duration::from_secs(5), || fs::read_to_string(e.m.p("f")).is_ok_and(|s| s == "still here")));
}
