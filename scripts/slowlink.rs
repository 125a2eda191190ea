//! A loopback TCP proxy that adds latency without limiting bandwidth, for the slow-link
//! profile of `scripts/bench` (no `tc netem` here). Built by the bench as a cargo
//! example; not part of moor.
//!
//!     slowlink LISTEN_PORT UPSTREAM_PORT DELAY_MS
//!
//! Each direction is a delay line: a reader stamps every chunk with its arrival time and a
//! writer sends it once the delay has passed, so many chunks are in flight at once, as on
//! a real long link.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

fn delay_line(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    // Bounded: a slow receiver pushes back on the sender, as TCP would.
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(1024);
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
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
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
    if args.len() != 4 {
        eprintln!("usage: slowlink LISTEN_PORT UPSTREAM_PORT DELAY_MS");
        std::process::exit(2);
    }
    let listen: u16 = args[1].parse().expect("listen port");
    let upstream: u16 = args[2].parse().expect("upstream port");
    let delay = Duration::from_micros((args[3].parse::<f64>().expect("delay ms") * 1000.0) as u64);
    let listener = TcpListener::bind(("127.0.0.1", listen)).expect("bind");
    for client in listener.incoming().flatten() {
        thread::spawn(move || {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (c2, s2) = (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
            let up = thread::spawn(move || delay_line(c2, s2, delay));
            delay_line(server, client, delay);
            let _ = up.join();
        });
    }
}
