//! The self-healing link through a real mount: a fault proxy between moor and a real
//! sshd black-holes, resets and restores the network while real programs use the mount.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn env() -> Proxied {
    Proxied::start()
}

fn status(c: &Client) -> serde_json::Value {
    c.mount_json()["status"].clone()
}

fn state(c: &Client) -> String {
    c.state()
}

/// Python for a program that retries a call for as long as it gets EAGAIN, as programs
/// written for moor do.
const RETRY_ON_EAGAIN: &str = "
import os, sys, errno, hashlib, time, json
def retry(f, *a):
    while True:
        try: return f(*a)
        except OSError as e:
            if e.errno != errno.EAGAIN: raise
            time.sleep(0.05)
";

/// Runs a Python probe and parses the JSON it prints last.
fn probe(script: &str) -> serde_json::Value {
    let file = script_file(script);
    let out = sh_ok(&format!("python3 {}", file.path().display()));
    serde_json::from_str(out.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("probe output {out}: {e}"))
}

const TIMING: &str = r#"
import os, time, errno, json, sys
def timed(i):
    t = time.monotonic()
    try:
        os.stat(os.path.join(mnt, "probe-%d-%d" % (os.getpid(), i)))
        r = "ok"
    except OSError as e:
        r = errno.errorcode.get(e.errno, str(e.errno))
    return r, time.monotonic() - t
"#;

#[test]
fn black_hole_gives_eagain_fast_then_recovers() {
    let e = env();
    e.sshd.put("f", "data");
    assert_eq!(fs::read_to_string(e.m.p("f")).unwrap(), "data");
    e.proxy.black_hole();
    // Calls during the outage: the first ones end within the deadline, and once the link
    // is known down every call fails with EAGAIN at once.
    let script = format!(
        "mnt='{}'\n{TIMING}\nres=[timed(i) for i in range(40)]\nfast=[]\nt0=time.monotonic()\nwhile time.monotonic()-t0 < 10:\n  r,d = timed(len(res)+len(fast))\n  if r == 'EAGAIN' and d < 0.5: fast.append(d)\n  if len(fast) >= 300: break\nfast.sort()\nprint(json.dumps({{'max': max(d for _, d in res), 'kinds': sorted(set(r for r, _ in res)), 'fast': len(fast), 'p99': fast[int(len(fast)*0.99)-1] if fast else None}}))",
        e.m.s()
    );
    let r = probe(&script);
    let max = r["max"].as_f64().unwrap();
    assert!(max < 3.2, "a call took {max:.2}s during the outage: {r}");
    assert!(r["kinds"].as_array().unwrap().iter().all(|k| k == "EAGAIN" || k == "ENOENT"), "{r}");
    assert_eq!(r["fast"], 300, "not enough fast EAGAINs: {r}");
    let p99 = r["p99"].as_f64().unwrap();
    assert!(p99 < 0.010, "EAGAIN p99 {:.1} ms", p99 * 1000.0);
    eprintln!("measured: longest call in outage {max:.3}s, EAGAIN p99 {:.2}ms", p99 * 1000.0);
    let st = status(&e.c);
    assert_eq!(st["state"], "reconnecting", "{st}");
    assert!(st["attempt"].as_u64().is_some() && st["last_error"].is_string(), "{st}");

    // Restore; a call brings the reconnect forward, so the mount is back within about a
    // second whatever the backoff had reached.
    e.proxy.restore();
    let restored = Instant::now();
    let back = wait_until(Duration::from_secs(8), || fs::read_to_string(e.m.p("f")).is_ok_and(|s| s == "data"));
    let took = restored.elapsed();
    assert!(back, "mount did not come back");
    assert!(took < Duration::from_secs(3), "recovery took {took:?}");
    eprintln!("measured: back {took:?} after the network returned");
    assert!(wait_until(Duration::from_secs(5), || state(&e.c) == "active"));
    let _ = &e.c;
}

#[test]
fn reset_connections_recover() {
    let e = env();
    e.sshd.put("f", "before");
    assert_eq!(fs::read_to_string(e.m.p("f")).unwrap(), "before");
    e.proxy.reset_all();
    e.sshd.put("g", "after");
    assert!(
        wait_until(Duration::from_secs(8), || fs::read_to_string(e.m.p("g")).is_ok_and(|s| s == "after")),
        "no recovery after a reset"
    );
    assert!(wait_until(Duration::from_secs(5), || state(&e.c) == "active"));
    let reconnects = {
        let out = e.c.run(&["mount", "status", "--json"]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["mounts"][0]["reconnects"].as_u64().unwrap()
    };
    assert!(reconnects >= 1);
}

#[test]
fn sshd_restart_recovers() {
    let mut e = env();
    e.sshd.put("f", "1");
    assert_eq!(fs::read_to_string(e.m.p("f")).unwrap(), "1");
    e.sshd.stop();
    assert!(wait_until(Duration::from_secs(10), || state(&e.c) == "reconnecting"));
    let st = status(&e.c);
    assert!(st["last_error"].as_str().unwrap_or("").len() > 3, "{st}");
    e.sshd.restart(false);
    assert!(
        wait_until(Duration::from_secs(10), || fs::read_to_string(e.m.p("f")).is_ok_and(|s| s == "1")),
        "no recovery after sshd restart"
    );
    assert_eq!(state(&e.c), "active");
}

#[test]
fn changed_host_key_on_reconnect_fails_the_mount() {
    let mut e = env();
    e.sshd.put("f", "x");
    assert!(fs::read_dir(&e.m.path).is_ok());
    e.sshd.restart(true);
    // Make the mount notice: any call triggers the reconnect.
    let failed = wait_until(Duration::from_secs(15), || {
        let _ = fs::metadata(e.m.p("x"));
        state(&e.c) == "failed"
    });
    assert!(failed, "status: {}", status(&e.c));
    let reason = status(&e.c)["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("HOST KEY") && reason.contains("CHANGED"), "{reason}");
    // Calls that need the server fail at once with EIO, and unmount still works.
    let err = fs::read(e.m.p("f")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let out = e.c.run(&["unmount", &e.m.s()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!is_mounted(&e.m.path));
}

#[test]
fn unmount_works_while_the_link_is_down() {
    let e = env();
    e.proxy.black_hole();
    let _ = fs::metadata(e.m.p("x"));
    assert!(wait_until(Duration::from_secs(10), || state(&e.c) == "reconnecting"));
    let t = Instant::now();
    let out = e.c.run(&["unmount", &e.m.s()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(5), "unmount took {:?}", t.elapsed());
    assert!(!is_mounted(&e.m.path));
}

/// A program holding files open across an outage that replaces the connection reads
/// and writes them correctly afterwards.
#[test]
fn open_files_survive_a_reconnect() {
    let e = env();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    e.sshd.put("big", &data);
    let script = format!(
        r#"{RETRY_ON_EAGAIN}
r = os.open('{m}/big', os.O_RDONLY)
w = os.open('{m}/out', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
first = retry(os.pread, r, 1000000, 0)
retry(os.pwrite, w, b'A' * 100000, 0)
print('ready', flush=True)
sys.stdin.readline()
rest = b''
while len(first) + len(rest) < {n}:
    chunk = retry(os.pread, r, 1 << 20, len(first) + len(rest))
    if not chunk: break
    rest += chunk
retry(os.pwrite, w, b'B' * 100000, 100000)
retry(os.fsync, w)
os.close(w); os.close(r)
print(json.dumps({{'sha': hashlib.sha256(first + rest).hexdigest()}}))
"#,
        m = e.m.s(),
        n = data.len()
    );
    // Kill the connection under the open files, and make the next one wait.
    let got = across_an_outage(&e, &script, "");
    let want = sh_root_ok(&format!("sha256sum < {}", e.sshd.export.join("big").display()));
    assert_eq!(got["sha"].as_str().unwrap(), want.split_whitespace().next().unwrap());
    let out = fs::read(e.sshd.export.join("out")).unwrap();
    assert_eq!(out.len(), 200_000);
    assert!(out[..100_000].iter().all(|b| *b == b'A') && out[100_000..].iter().all(|b| *b == b'B'));
}

/// Random black holes and resets every few seconds for 30 s, under a writer that retries
/// on EAGAIN and a reader: every byte arrives intact.
#[test]
fn flapping_link_loses_nothing() {
    let e = env();
    let src: Vec<u8> = (0..4_000_000u32).map(|i| (i.wrapping_mul(40503) >> 7) as u8).collect();
    e.sshd.put("src", &src);
    let script = format!(
        r#"{RETRY_ON_EAGAIN}
def pattern(n, seed):
    return bytes(((i * 131 + seed) >> 3) & 0xff for i in range(n))
written = []
reads = 0
end = time.monotonic() + {secs}
k = 0
while time.monotonic() < end:
    name = '{m}/w%d' % k
    data = pattern(1 << 20, k)
    fd = retry(os.open, name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for off in range(0, len(data), 65536):
        retry(os.pwrite, fd, data[off:off + 65536], off)
    retry(os.fsync, fd)
    try: os.close(fd)
    except OSError as e:
        if e.errno != errno.EAGAIN: raise
    written.append((name, hashlib.sha256(data).hexdigest()))
    r = retry(os.open, '{m}/src', os.O_RDONLY)
    got = b''
    while True:
        c = retry(os.pread, r, 1 << 20, len(got))
        if not c: break
        got += c
    os.close(r)
    reads += 1
    if hashlib.sha256(got).hexdigest() != '{src_sha}':
        print(json.dumps({{'bad_read': reads}})); sys.exit(1)
    k += 1
print(json.dumps({{'written': written, 'reads': reads}}))
"#,
        m = e.m.s(),
        secs = 32,
        src_sha = sh_root_ok(&format!("sha256sum < {}", e.sshd.export.join("src").display()))
            .split_whitespace()
            .next()
            .unwrap()
    );
    let file = script_file(&script);
    let child = as_local_user(&mut Command::new("python3"))
        .arg(file.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let flapper = {
        let start = Instant::now();
        let mut rng = 0x2545f4914f6cdd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut faults = 0;
        while start.elapsed() < Duration::from_secs(30) {
            let calm = Duration::from_millis(1500 + next() % 2000);
            pause(calm);
            if next() % 2 == 0 {
                e.proxy.black_hole();
                pause(Duration::from_millis(500 + next() % 1500));
                e.proxy.restore();
            } else {
                e.proxy.reset_all();
            }
            faults += 1;
        }
        faults
    };
    let out = run_with_deadline_child(child, Duration::from_secs(120));
    assert!(out.status.success(), "writer/reader failed: {}{}", stdout(&out), stderr(&out));
    assert!(flapper >= 8, "only {flapper} faults injected");
    let result: serde_json::Value = serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    let written = result["written"].as_array().unwrap();
    assert!(written.len() >= 3, "too little written: {result}");
    for w in written {
        let name = w[0].as_str().unwrap();
        let remote = e.sshd.export.join(std::path::Path::new(name).file_name().unwrap());
        let sum = sh_root_ok(&format!("sha256sum < {}", remote.display()));
        assert_eq!(sum.split_whitespace().next().unwrap(), w[1].as_str().unwrap(), "{name} differs on the server");
    }
    assert!(result["reads"].as_u64().unwrap() >= 3);
}

/// Python for a writer that holds `log` open across an outage: it writes and syncs, says
/// `ready`, waits for a line on stdin (the outage happens then), writes again and says
/// how each call ended.
fn writer_across_an_outage(m: &str, before_outage: &str) -> String {
    format!(
        r#"{RETRY_ON_EAGAIN}
fd = retry(os.open, '{m}/log', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
retry(os.write, fd, b'old-1\n')
retry(os.fsync, fd)
{before_outage}
print('ready', flush=True)
sys.stdin.readline()
def outcome(f, *a):
    try:
        retry(f, *a)
        return 'ok'
    except OSError as e:
        return errno.errorcode[e.errno]
result = {{'write': outcome(os.write, fd, b'old-2\n')}}
result['fsync'] = outcome(os.fsync, fd)
result['close'] = outcome(os.close, fd)
print(json.dumps(result), flush=True)
"#
    )
}

/// Runs `script` as the local user, cuts the link once it says `ready`, runs
/// `while_down` (on the server, as root) while the mount reconnects, restores the link
/// and returns what the script printed last.
fn across_an_outage(e: &Proxied, script: &str, while_down: &str) -> serde_json::Value {
    let file = script_file(script);
    let mut child = as_local_user(&mut Command::new("python3"))
        .arg(file.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    e.proxy.black_hole();
    e.proxy.reset_all();
    assert!(wait_until(Duration::from_secs(10), || state(&e.c) == "reconnecting"));
    if !while_down.is_empty() {
        sh_root_ok(while_down);
    }
    e.proxy.restore();
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let result = lines.next().expect("the writer finished").unwrap();
    assert!(child.wait().unwrap().success());
    serde_json::from_str(&result).unwrap()
}

/// logrotate through the mount, then a reset: the old descriptor writes on into the
/// renamed file, never into the new file that took its name.
#[test]
fn a_file_renamed_through_the_mount_is_written_under_its_new_name_after_a_reconnect() {
    let e = env();
    let m = e.m.s();
    let rotate = format!("os.rename('{m}/log', '{m}/log.1')\nwith open('{m}/log', 'wb') as f: f.write(b'NEW\\n')");
    let got = across_an_outage(&e, &writer_across_an_outage(&m, &rotate), "");
    assert_eq!(got, serde_json::json!({"write": "ok", "fsync": "ok", "close": "ok"}));
    assert_eq!(fs::read_to_string(e.sshd.export.join("log")).unwrap(), "NEW\n");
    assert_eq!(fs::read_to_string(e.sshd.export.join("log.1")).unwrap(), "old-1\nold-2\n");
    assert_eq!(e.c.mount_json().get("lost"), None);
}

/// The same file renamed and its name given to another file on the server while the link
/// was down: the descriptor fails with EIO, the other file is untouched, and the loss is
/// in the mount's status and the agent's log.
#[test]
fn a_file_replaced_on_the_server_while_down_is_never_written_after_a_reconnect() {
    let e = env();
    let m = e.m.s();
    let export = e.sshd.export.display().to_string();
    let replace = format!(
        "mv {export}/log {export}/log.1 && printf 'other!\\n' > {export}/log && chown {REMOTE_USER}: {export}/log"
    );
    let got = across_an_outage(&e, &writer_across_an_outage(&m, ""), &replace);
    assert!(got["write"] == "EIO" || got["fsync"] == "EIO" || got["close"] == "EIO", "the program was not told: {got}");
    assert_eq!(fs::read_to_string(e.sshd.export.join("log")).unwrap(), "other!\n");
    assert_eq!(fs::read_to_string(e.sshd.export.join("log.1")).unwrap(), "old-1\n");
    let lost = e.c.mount_json()["lost"].clone();
    assert_eq!(lost["bytes"], 6, "status: {lost}");
    let agent_log = fs::read_to_string(e.c.home.path().join("state/moor/agent.log")).unwrap_or_default();
    assert!(agent_log.contains("cannot reach the open file again"), "agent log: {agent_log}");
}
