//! A fault-injecting TCP proxy on loopback, between moor and the test sshd: it passes
//! traffic, black-holes it (both ways, connections held open and silent, new ones held
//! unanswered), resets every connection, delays each chunk, limits each connection's
//! bandwidth, or stalls and lets the stalled connections deliver late.
//!
//! The proxy stands for the network, so it keeps little in its own buffers: a small
//! receive buffer and small reads mean that, while traffic is held, what a sender wrote
//! waits in the sender's kernel, as unacknowledged data does on a real stalled path. A
//! sender that aborts its connection (RST) drops that data; one that does not has it
//! delivered when the path comes back.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(50);
/// Bytes taken from a sender at once: what is "in the network" at any moment.
const CHUNK: usize = 16 * 1024;
/// The proxy's receive buffer (the kernel doubles it).
const RCVBUF: usize = 16 * 1024;

struct Shared {
    upstream: u16,
    black_hole: Mutex<bool>,
    restored: Condvar,
    delay_ms: AtomicU64,
    /// Bytes per second each connection may move each way (0: no limit).
    rate: AtomicU64,
    /// After `restore_late`: connections held by the black hole pass only from then on.
    late_until: Mutex<Option<Instant>>,
    /// Pumps holding data back right now.
    holding: AtomicUsize,
    /// Bytes passed on by pumps that had been held past a `restore_late`.
    late_bytes: AtomicU64,
    /// Pumps held past a `restore_late` that are still running.
    late_open: AtomicUsize,
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

    fn is_black_hole(&self) -> bool {
        *self.black_hole.lock().unwrap()
    }

    /// Holds a pump that has data while the path is black-holed and, if it was held and
    /// a late restore says so, until the late time. Returns (may go on, was held late);
    /// a pump first held late counts in `late_open` (unless `already_late`) before it
    /// stops counting as holding, so that the two together never read zero too early.
    fn pass(&self, already_late: bool) -> (bool, bool) {
        if !self.is_black_hole() {
            return (!self.stop.load(Ordering::SeqCst), false);
        }
        self.holding.fetch_add(1, Ordering::SeqCst);
        let open = self.wait_open();
        let late = *self.late_until.lock().unwrap();
        let mut held_late = false;
        if let Some(until) = late {
            while open && Instant::now() < until && !self.stop.load(Ordering::SeqCst) {
                held_late = true;
                thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
                // the injected stall itself
            }
        }
        if held_late && !already_late {
            self.late_open.fetch_add(1, Ordering::SeqCst);
        }
        self.holding.fetch_sub(1, Ordering::SeqCst);
        (open && !self.stop.load(Ordering::SeqCst), held_late)
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

/// Moves what `from` sends to `to`; `toward_server` counts late deliveries.
fn pump(shared: Arc<Shared>, mut from: TcpStream, mut to: TcpStream, toward_server: bool) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buf = vec![0u8; CHUNK];
    // When the rate limit lets the next byte through.
    let mut next_free = Instant::now();
    let mut late = false;
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
            // The sender aborted: what it had not yet handed over is gone with it.
            Err(_) => break,
        };
        // A black hole holds what it got, and reads nothing more, until restored.
        let (open, held_late) = shared.pass(late);
        late |= held_late;
        if !open {
            break;
        }
        let delay = shared.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            thread::sleep(Duration::from_millis(delay)); // the injected latency itself
        }
        let rate = shared.rate.load(Ordering::SeqCst);
        if rate > 0 {
            let now = Instant::now();
            if next_free > now {
                thread::sleep(next_free - now); // the injected bandwidth limit itself
            }
            next_free = next_free.max(now) + Duration::from_secs_f64(n as f64 / rate as f64);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if late && toward_server {
            shared.late_bytes.fetch_add(n as u64, Ordering::SeqCst);
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    if late {
        shared.late_open.fetch_sub(1, Ordering::SeqCst);
    }
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
    let t = thread::spawn(move || pump(s2, c2, u2, true));
    pump(shared, upstream, client, false);
    let _ = t.join();
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream` on loopback.
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // Inherited by accepted connections: the proxy holds little of a sender's data.
        let _ = nix::sys::socket::setsockopt(&listener.as_fd(), nix::sys::socket::sockopt::RcvBuf, &RCVBUF);
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream,
            black_hole: Mutex::new(false),
            restored: Condvar::new(),
            delay_ms: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            late_until: Mutex::new(None),
            holding: AtomicUsize::new(0),
            late_bytes: AtomicU64::new(0),
            late_open: AtomicUsize::new(0),
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
        *self.shared.late_until.lock().unwrap() = None;
        *self.shared.black_hole.lock().unwrap() = true;
    }

    /// Traffic flows again, held data first.
    pub fn restore(&self) {
        *self.shared.black_hole.lock().unwrap() = false;
        self.shared.restored.notify_all();
    }

    /// Traffic flows again for new connections at once; connections held by the black
    /// hole pass what they held, and the rest, only `after` from now (as a stalled
    /// path's retransmissions arrive seconds after new connections got through).
    pub fn restore_late(&self, after: Duration) {
        *self.shared.late_until.lock().unwrap() = Some(Instant::now() + after);
        self.restore();
    }

    /// Connections holding data back right now.
    pub fn holding(&self) -> usize {
        self.shared.holding.load(Ordering::SeqCst)
    }

    /// Directions of connections held past a late restore that are still open: zero
    /// once all they were going to deliver late has been delivered, or dropped.
    pub fn late_open(&self) -> usize {
        self.shared.late_open.load(Ordering::SeqCst)
    }

    /// Bytes towards the server that connections held past a late restore passed on
    /// afterwards.
    pub fn late_bytes(&self) -> u64 {
        self.shared.late_bytes.load(Ordering::SeqCst)
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

    /// Lets each connection move at most `bytes_per_sec` each way (0: no limit): a slow
    /// link that is alive.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.shared.rate.store(bytes_per_sec, Ordering::SeqCst);
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
