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
step("read-append", lambda: open(os.path.join(root, "t/f1")).read() == "file 1\n" * 3 + "appended offline\n" or 1/0)
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
    let want =
        "new ok\nappend ok\nmkdir ok\nrename ok\nunlink ok\nedit ok\nboth ok\nread-new ok\nlist ok\nread-append ok\n\
                unknown-dir EAGAIN\n";
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

/// Random changes made while down, each logged (on local disk) as started and as
/// acknowledged (a new file or an append once fsync and close returned).
const RANDOM_OPS: &str = r#"
import os, sys, json, random, errno
root, log_path, seed, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(seed)
log = open(log_path, "a")
def note(kind, op):
    log.write(json.dumps([kind, op]) + "\n")
    log.flush()
    os.fsync(log.fileno())
d = os.path.join(root, "k")
files = sorted(x for x in os.listdir(d) if os.path.isfile(os.path.join(d, x)))
def do(op):
    p = os.path.join(d, op["name"])
    if op["op"] in ("create", "append"):
        flags = os.O_WRONLY | (os.O_CREAT | os.O_TRUNC if op["op"] == "create" else os.O_APPEND)
        fd = os.open(p, flags, 0o644)
        try:
            os.write(fd, bytes.fromhex(op["data"]))
            os.fsync(fd)
        finally:
            os.close(fd)
    elif op["op"] == "rename":
        os.rename(p, os.path.join(d, op["to"]))
    else:
        os.unlink(p)
for i in range(n):
    kind = rnd.choice(["create", "create", "append", "rename", "unlink"]) if files else "create"
    if kind == "create":
        op = {"op": kind, "name": f"n{seed}-{i}", "data": rnd.randbytes(rnd.randint(0, 3000)).hex()}
    elif kind == "append":
        op = {"op": kind, "name": rnd.choice(files), "data": rnd.randbytes(rnd.randint(1, 500)).hex()}
    elif kind == "rename":
        op = {"op": kind, "name": rnd.choice(files), "to": f"r{seed}-{i}"}
    else:
        op = {"op": kind, "name": rnd.choice(files)}
    note("start", op)
    try:
        do(op)
    except OSError as e:
        note("error", dict(op, errno=errno.errorcode.get(e.errno, str(e.errno))))
        if e.errno != errno.EAGAIN:
            break
        continue
    note("ack", op)
    if op["op"] == "create" and op["name"] not in files:
        files.append(op["name"])
    elif op["op"] == "rename":
        files.remove(op["name"])
        files.append(op["to"])
    elif op["op"] == "unlink":
        files.remove(op["name"])
"#;

/// What the server must hold after a round: the files before it with every acknowledged
/// change applied. A change not acknowledged (under way at the kill, or refused) makes
/// its names uncertain: those may be either way.
const CHECK_ROUND: &str = r#"
import os, sys, json
before, log_path, export = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
model, unsure, acked, started = dict(before), set(), 0, 0
pending = None
for line in open(log_path):
    kind, op = json.loads(line)
    if kind == "start":
        started += 1
        pending = op
        continue
    pending = None
    names = {op["name"], op.get("to", op["name"])}
    if kind != "ack":
        unsure |= names
        continue
    acked += 1
    unsure -= names
    if op["op"] == "create":
        model[op["name"]] = op["data"]
    elif op["op"] == "append":
        model[op["name"]] = model.get(op["name"], "") + op["data"]
    elif op["op"] == "rename":
        model[op["to"]] = model.pop(op["name"])
    else:
        model.pop(op["name"], None)
if pending:
    unsure |= {pending["name"], pending.get("to", pending["name"])}
d = os.path.join(export, "k")
server = {n: open(os.path.join(d, n), "rb").read().hex() for n in os.listdir(d)}
wrong = [n for n in set(model) | set(server) if n not in unsure and model.get(n) != server.get(n)]
conflicts = [n for n in server if ".conflict-" in n]
print(json.dumps({"started": started, "acked": acked, "unsure": sorted(unsure), "wrong": sorted(wrong),
                  "conflicts": conflicts, "files": len(server)}))
"#;

#[test]
fn every_acknowledged_change_survives_kill_9_at_random_points() {
    let e = Proxied::start_with(OPTS);
    e.sshd.mkdir("k");
    for i in 0..5 {
        e.sshd.put(&format!("k/s{i}"), format!("server file {i}\n"));
    }
    e.sshd.give_export();
    let ops = script_file(RANDOM_OPS);
    let check = script_file(CHECK_ROUND);
    let base = fastrand::u64(1..1 << 40);
    eprintln!("random changes from seed {base}");
    let mut mount = e.m.path.clone();
    // Every mount made, unmounted when the test ends however it ends.
    let mut mounts = Vec::new();
    let (mut started, mut round) = (0, 0);
    while started < 1000 {
        round += 1;
        let seed = base + round;
        // Settled on the server, then read and listed through the mount: decidable offline.
        sh_root_ok(&format!("touch -d '1 hour ago' {}/k/*", e.sshd.export.display()));
        sh_ok(&format!("cat {}/k/* > /dev/null", mount.display()));
        let before = script_file(&sh_root_ok(&format!(
            "cd {}/k && python3 -c 'import os, json; print(json.dumps({{n: open(n, \"rb\").read().hex() for n in os.listdir(\".\")}}))'",
            e.sshd.export.display()
        )));
        e.proxy.black_hole();
        wait_state(&e.c, "reconnecting");

        let log = tempfile::NamedTempFile::new().unwrap();
        std::fs::set_permissions(log.path(), std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
        let script =
            format!("python3 {} {} {} {seed} 300", ops.path().display(), mount.display(), log.path().display());
        let mut cmd = std::process::Command::new("bash");
        cmd.args(["-c", &script]).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
        as_local_user(&mut cmd);
        let mut runner = cmd.spawn().unwrap();
        // Killed after a random number of changes have started (or once the run ends,
        // if it ends first).
        let kill_at = fastrand::usize(1..300);
        let started_here = || std::fs::read_to_string(log.path()).map_or(0, |l| l.matches("[\"start\"").count());
        let reached = wait_until(Duration::from_secs(60), || {
            started_here() >= kill_at || runner.try_wait().is_ok_and(|s| s.is_some())
        });
        assert!(reached, "the run neither reached change {kill_at} nor ended");
        for pid in e.c.agent_pids() {
            sh_root_ok(&format!("kill -9 {pid}"));
        }
        // Its calls end once the mount is gone (ENOTCONN).
        let ended = wait_until(Duration::from_secs(30), || runner.try_wait().is_ok_and(|s| s.is_some()));
        if !ended {
            let _ = runner.kill();
        }
        let _ = runner.wait();
        assert!(ended, "the program went on past the agent's death");
        sh_root_ok(&format!("fusermount3 -uz {} || umount -l {} || true", mount.display(), mount.display()));
        e.proxy.restore();

        let again = e.c.mount_at(e.sshd.export.to_str().unwrap(), &format!("mnt{round}"), OPTS);
        let replayed = || e.c.mount_json()["pending"].is_null();
        assert!(wait_until(Duration::from_secs(30), replayed), "never replayed: {}", e.c.mount_json());
        let out = sh_root_ok(&format!(
            "python3 {} {} {} {}",
            check.path().display(),
            before.path().display(),
            log.path().display(),
            e.sshd.export.display()
        ));
        let r: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        eprintln!("round {round} (seed {seed}): {r}");
        assert_eq!(r["wrong"], serde_json::json!([]), "round {round}, seed {seed}: {r}");
        assert_eq!(r["conflicts"], serde_json::json!([]), "nothing changed on the server: {r}");
        assert!(r["unsure"].as_array().unwrap().len() <= 2, "{r}");
        started += r["started"].as_u64().unwrap();
        mount = again.path.clone();
        mounts.push(again);
    }
}

#[test]
fn unmounting_while_down_keeps_the_changes_and_says_so() {
    let e = Proxied::start_with(OPTS);
    e.sshd.mkdir("u");
    e.sshd.give_export();
    sh_ok(&format!("ls {}/u > /dev/null", e.m.path.display()));
    e.proxy.black_hole();
    wait_state(&e.c, "reconnecting");
    sh_ok(&format!("echo kept > {}/u/note", e.m.path.display()));
    let out = e.c.run(&["unmount", e.m.path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("kept in the offline journal") && said.contains("replays them"), "{said}");
    e.proxy.restore();
    let _again = e.c.mount_at(e.sshd.export.to_str().unwrap(), "mnt2", OPTS);
    let landed = || fs::read(e.sshd.export.join("u/note")).is_ok_and(|d| d == b"kept\n");
    assert!(wait_until(Duration::from_secs(20), landed), "never replayed: {}", e.c.mount_json());
}
