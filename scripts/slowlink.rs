//! A loopback TCP proxy that adds latency, and optionally limits bandwidth, for the
//! slow-link profiles of `scripts/bench` (no `tc netem` here). Built by the bench as a
//! cargo example; not part of moor.
//!
//!     slowlink LISTEN_PORT UPSTREAM_PORT DELAY_MS [RATE_BYTES_PER_SEC]
//!
//! Each direction is a delay line: a reader stamps every chunk with the time it is
//! through the link and a writer sends it once the delay has passed, so many chunks are
//! in flight at once, as on a real long link. With a rate, every connection shares one
//! bottleneck per direction (as on a Wi-Fi or a VPN: more connections do not get more
//! bandwidth), in front of which each connection may queue a little, as in a router.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// One direction's bottleneck: when it is free to send the next byte.
struct Bottleneck {
    rate: u64,
    free_at: Mutex<Instant>,
}

impl Bottleneck {
    /// Reserves the link for `n` bytes; returns when they are through.
    fn pass(&self, n: usize) -> Instant {
        let mut free = self.free_at.lock().unwrap();
        let start = (*free).max(Instant::now());
        *free = start + Duration::from_secs_f64(n as f64 / self.rate as f64);
        *free
    }
}

fn delay_line(mut from: TcpStream, mut to: TcpStream, delay: Duration, bottleneck: Option<Arc<Bottleneck>>) {
    // Bounded: a slow receiver pushes back on the sender, as TCP would. With a bottleneck
    // the queue is what a router holds per connection (64 x 16 KiB).
    let (depth, chunk) = if bottleneck.is_some() { (64, 16 * 1024) } else { (1024, 256 * 1024) };
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(depth);
    let writer = thread::spawn(move || {
        for (at, chunk) in rx {
            let due = at + delay;
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now); // the latency being simulated
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; chunk];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let through = bottleneck.as_ref().map_or_else(Instant::now, |b| b.pass(n));
                if tx.send((through, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 && args.len() != 5 {
        eprintln!("usage: slowlink LISTEN_PORT UPSTREAM_PORT DELAY_MS [RATE_BYTES_PER_SEC]");
        std::process::exit(2);
    }
    let listen: u16 = args[1].parse().expect("listen port");
    let upstream: u16 = args[2].parse().expect("upstream port");
    let delay = Duration::from_micros((args[3].parse::<f64>().expect("delay ms") * 1000.0) as u64);
    let rate: Option<u64> = args.get(4).map(|r| r.parse().expect("rate in bytes per second"));
    let bottleneck =
        |rate: Option<u64>| rate.map(|rate| Arc::new(Bottleneck { rate, free_at: Mutex::new(Instant::now()) }));
    let (up_link, down_link) = (bottleneck(rate), bottleneck(rate));
    let listener = TcpListener::bind(("127.0.0.1", listen)).expect("bind");
    for client in listener.incoming().flatten() {
        let (up_link, down_link) = (up_link.clone(), down_link.clone());
        thread::spawn(move || {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (c2, s2) = (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
            let up = thread::spawn(move || delay_line(c2, s2, delay, up_link));
            delay_line(server, client, delay, down_link);
            let _ = up.join();
        });
    }
}
