//! Working offline, writes (`--offline-cache`): changes made through a real mount while
//! a fault proxy black-holes the link to a real sshd are kept in the journal, outlive
//! kill -9 of the agent, and reach the server when the next mount finds the link.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

const OPTS: &[&str] = &["--offline-cache", "64M", "--cache-timeout", "1s"];

fn wait_state(c: &Client, want: &str) {
    assert!(wait_until(Duration::from_secs(20), || c.state() == want), "never {want}: {}", c.mount_json());
}

/// What the changes made while down do, as a program sees each: "ok" or the errno.
const CHANGES: &str = r#"
import os, sys, errno, hashlib
root = sys.argv[1]
def step(name, f):
    try:
        f()
        print(name, "ok")
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, e.errno))
def new():
    fd = os.open(os.path.join(root, "t/new"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    data = bytes((i * 7) % 256 for i in range(1 << 20))
    os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
def append():
    with open(os.path.join(root, "t/f1"), "a") as f:
        f.write("appended offline\n")
def edit(name):
    def go():
        with open(os.path.join(root, name), "r+") as f:
            f.write("EDITED")
    return go
step("new", new)
step("append", append)
step("mkdir", lambda: os.mkdir(os.path.join(root, "t/made")))
step("rename", lambda: os.rename(os.path.join(root, "t/f2"), os.path.join(root, "t/made/f2")))
step("unlink", lambda: os.unlink(os.path.join(root, "t/f3")))
step("edit", edit("t/f4"))
step("both", edit("t/f5"))
step("read-new", lambda: open(os.path.join(root, "t/new"), "rb").read() == bytes((i * 7) % 256 for i in range(1 << 20)) or 1/0)
step("list", lambda: sorted(os.listdir(os.path.join(root, "t/made"))) == ["f2"] or 1/0)
step("unknown-dir", lambda: open(os.path.join(root, "t/unlisted/deep/x"), "w").close())
"#;

#[test]
fn changes_made_while_down_outlive_kill_9_and_reach_the_server_with_conflicts_kept() {
    let e = Proxied::start_with(OPTS);
    // The mount lists ahead the directories in one it lists: `deep` is never listed.
    e.sshd.mkdir("t/unlisted/deep");
    for i in 0..8 {
        e.sshd.put(&format!("t/f{i}"), format!("file {i}\n").repeat(3));
    }
    sh_root_ok(&format!("cd {} && touch -d '1 hour ago' t/f*", e.sshd.export.display()));
    e.sshd.give_export();
    // Read and listed: the cache can decide what the changes need.
    sh_ok(&format!("cat {}/t/f* > /dev/null && ls {}/t > /dev/null", e.m.path.display(), e.m.path.display()));

    e.proxy.black_hole();
    wait_state(&e.c, "reconnecting");
    // Changed on the server meanwhile, by someone else.
    e.sshd.put("t/f5", "changed on the server\n");
    let script = script_file(CHANGES);
    let out = sh_ok(&format!("python3 {} {}", script.path().display(), e.m.path.display()));
    let want = "new ok\nappend ok\nmkdir ok\nrename ok\nunlink ok\nedit ok\nboth ok\nread-new ok\nlist ok\nunknown-dir EAGAIN\n";
    assert_eq!(out, want);
    let m = e.c.mount_json();
    assert!(m["pending"]["changes"].as_u64().unwrap() >= 7, "{m}");
    assert!(!e.sshd.export.join("t/new").exists(), "nothing reaches the server while down");

    // The agent dies with all of it pending.
    for pid in e.c.agent_pids() {
        sh_root_ok(&format!("kill -9 {pid}"));
    }
    sh_root_ok(&format!("fusermount3 -uz {} || umount -l {} || true", e.m.path.display(), e.m.path.display()));
    e.proxy.restore();

    let again = e.c.mount_at(e.sshd.export.to_str().unwrap(), "mnt", OPTS);
    let replayed = || !e.sshd.export.join("t/f3").exists() && e.c.mount_json()["pending"].is_null();
    assert!(wait_until(Duration::from_secs(20), replayed), "never replayed: {}", e.c.mount_json());
    let server = |rel: &str| fs::read(e.sshd.export.join(rel)).unwrap();
    assert_eq!(server("t/new"), (0..1u32 << 20).map(|i| ((i * 7) % 256) as u8).collect::<Vec<_>>());
    assert_eq!(server("t/f1"), format!("{}appended offline\n", "file 1\n".repeat(3)).as_bytes());
    assert_eq!(server("t/made/f2"), "file 2\n".repeat(3).as_bytes());
    assert!(!e.sshd.export.join("t/f2").exists());
    assert_eq!(server("t/f4"), format!("EDITED{}", &"file 4\n".repeat(3)[6..]).as_bytes());
    assert_eq!(server("t/f5"), b"changed on the server\n", "the server's version stays");
    let m = e.c.mount_json();
    let conflicts = m["conflicts"].as_array().unwrap_or_else(|| panic!("no conflicts listed: {m}"));
    assert_eq!(conflicts.len(), 1, "{m}");
    let kept = conflicts[0]["kept_as"].as_str().unwrap();
    assert!(kept.contains("/t/f5.conflict-"), "{kept}");
    assert_eq!(fs::read(kept).unwrap(), format!("EDITED{}", &"file 5\n".repeat(3)[6..]).as_bytes());
    let text = stdout(&e.c.run(&["mount", "status", again.path.to_str().unwrap()]));
    assert!(text.contains("conflict:") && text.contains("yours is at"), "{text}");
    // And through the mount, as on the server.
    assert_eq!(fs::read(again.p("t/made/f2")).unwrap(), "file 2\n".repeat(3).as_bytes());
}
