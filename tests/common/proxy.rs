//! A fault-injecting TCP proxy on loopback, between moor and the test sshd: it passes
//! traffic, black-holes it (both ways, connections held open and silent, new ones held
//! unanswered), resets every connection, or delays each chunk.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(50);

struct Shared {
    upstream: u16,
    black_hole: Mutex<bool>,
    restored: Condvar,
    delay_ms: AtomicU64,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

impl Shared {
    /// Blocks while traffic is black-holed; false once the proxy is stopping.
    fn wait_open(&self) -> bool {
        let mut bh = self.black_hole.lock().unwrap();
        while *bh && !self.stop.load(Ordering::SeqCst) {
            bh = self.restored.wait_timeout(bh, POLL).unwrap().0;
        }
        !self.stop.load(Ordering::SeqCst)
    }
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

fn rst_on_close(s: &TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    let _ = nix::sys::socket::setsockopt(&s.as_fd(), nix::sys::socket::sockopt::Linger, &linger);
}

fn pump(shared: Arc<Shared>, mut from: TcpStream, mut to: TcpStream) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                continue
            }
            Err(_) => break,
        };
        // A black hole holds what it got, and reads nothing more, until restored.
        if !shared.wait_open() {
            break;
        }
        let delay = shared.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            thread::sleep(Duration::from_millis(delay)); // the injected latency itself
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn serve(shared: Arc<Shared>, client: TcpStream) {
    if !shared.wait_open() {
        return;
    }
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", shared.upstream)) else {
        rst_on_close(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    {
        let mut conns = shared.conns.lock().unwrap();
        conns.push(client.try_clone().unwrap());
        conns.push(upstream.try_clone().unwrap());
    }
    let (c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let s2 = shared.clone();
    let t = thread::spawn(move || pump(s2, c2, u2));
    pump(shared, upstream, client);
    let _ = t.join();
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream` on loopback.
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream,
            black_hole: Mutex::new(false),
            restored: Condvar::new(),
            delay_ms: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(client) = client {
                    let s2 = s.clone();
                    thread::spawn(move || serve(s2, client));
                }
            }
        });
        Proxy { port, shared }
    }

    /// From now on nothing passes, either way; connections stay open and silent.
    pub fn black_hole(&self) {
        *self.shared.black_hole.lock().unwrap() = true;
    }

    /// Traffic flows again, held data first.
    pub fn restore(&self) {
        *self.shared.black_hole.lock().unwrap() = false;
        self.shared.restored.notify_all();
    }

    /// Resets every open connection (the peer sees its connection torn down).
    pub fn reset_all(&self) {
        let conns: Vec<TcpStream> = self.shared.conns.lock().unwrap().drain(..).collect();
        for c in conns {
            rst_on_close(&c);
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Adds `d` of latency to every chunk, each way.
    pub fn set_delay(&self, d: Duration) {
        self.shared.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.restore();
        self.reset_all();
        // Wakes the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
