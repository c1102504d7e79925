//! Throughput of the config store on loopback (ignored by default; run with
//! `cargo test --release -p smem-linux --test store_bench -- --ignored --nocapture`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use smem_core::wire::handshake::Handshake;
use smem_core::wire::message::{self, MessageHeader};
use smem_core::wire::{FrameHeader, MessageType};
use smem_linux::store::{ClientOptions, ServerConfig, StoreClient, StoreServer};

fn run(threads: usize, shared_link: bool, value_len: usize, dur: Duration) -> f64 {
    let s = StoreServer::start(ServerConfig {
        heartbeat_timeout: None,
        ..ServerConfig::default()
    })
    .unwrap();
    let base = StoreClient::connect(s.local_addr(), ClientOptions::default()).unwrap();
    let value = vec![0x5Au8; value_len];
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let c = if shared_link {
                base.clone()
            } else {
                StoreClient::connect(s.local_addr(), ClientOptions::default()).unwrap()
            };
            let value = value.clone();
            std::thread::spawn(move || {
                let key = format!("bench/{t}");
                let mut n = 0u64;
                while start.elapsed() < dur {
                    c.set(key.as_bytes(), &value).unwrap();
                    assert_eq!(
                        c.get(key.as_bytes()).unwrap().map(|v| v.len()),
                        Some(value_len)
                    );
                    n += 2;
                }
                n
            })
        })
        .collect();
    let ops: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    ops as f64 / start.elapsed().as_secs_f64()
}

#[test]
#[ignore = "benchmark"]
fn throughput() {
    let d = Duration::from_secs(2);
    for (threads, shared, len) in [
        (1, true, 16),
        (16, true, 16),
        (16, false, 16),
        (64, false, 16),
        (16, false, 65_536),
    ] {
        let ops = run(threads, shared, len, d);
        println!(
            "{threads:3} threads, {} link(s), {len:6} B values: {:9.0} ops/s",
            if shared { "one" } else { "own" },
            ops
        );
    }
}

/// CPU time this process's threads named `comm` have used so far (`schedstat`: nanoseconds;
/// threads that exited are not counted, so measure while they live).
fn thread_cpu(comm: &str) -> Duration {
    let mut ns = 0u64;
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let p = t.path();
        let name = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if name.trim_end() != comm {
            continue;
        }
        let s = std::fs::read_to_string(p.join("schedstat")).unwrap_or_default();
        ns += s
            .split(' ')
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Duration::from_nanos(ns)
}

fn raw_frame(seq: u32, mt: MessageType, keys: &[&[u8]]) -> Vec<u8> {
    let k = keys.iter().copied();
    let len = message::encoded_len(k.clone(), std::iter::empty());
    let mut out = vec![0u8; 16 + len];
    FrameHeader::new(0, len as u32, seq)
        .emit(&mut out[..16])
        .unwrap();
    let h = MessageHeader {
        user_def: 0,
        request_id: 0,
        msg_type: mt,
    };
    message::emit(&h, k, std::iter::empty(), &mut out[16..]).unwrap();
    out
}

/// What heartbeats of 1024 ranks cost the store thread (issue 11 item 3): 1024 handshaken
/// links with ranks, each sending HEARTBEAT (SPEC 5.4 op 11) every
/// `smem_linux::store::client::HEARTBEAT_INTERVAL`, spread evenly as real ranks drift apart, against
/// the same links idle; then the cost of one heartbeat with the store saturated.
/// `cargo test --release -p smem-linux --test store_bench -- --ignored --nocapture heartbeat`
#[test]
#[ignore = "benchmark"]
fn heartbeat_load() {
    let (soft, _) = smem_linux::sys::fd::raise_nofile_limit(8192).unwrap();
    let n = 1024u32.min(u32::try_from(soft.saturating_sub(128) / 2).unwrap());
    let s = StoreServer::start(ServerConfig::default()).unwrap();
    let mut links: Vec<TcpStream> = (0..n)
        .map(|r| {
            let mut l = TcpStream::connect(s.local_addr()).unwrap();
            let mut hs = [0u8; 16];
            Handshake::new(Some(n), Some(r), false)
                .emit(&mut hs)
                .unwrap();
            l.write_all(&hs).unwrap();
            let mut reply = [0u8; 2];
            l.read_exact(&mut reply).unwrap();
            assert_eq!(reply, [0, 0]);
            l
        })
        .collect();
    let hb = raw_frame(0, MessageType::Heartbeat, &[]);
    let interval = smem_linux::store::client::HEARTBEAT_INTERVAL;
    let window = interval * 2;
    let idle = {
        let c0 = thread_cpu("smem-store");
        std::thread::sleep(window);
        thread_cpu("smem-store") - c0
    };
    let spaced = {
        let c0 = thread_cpu("smem-store");
        let t0 = Instant::now();
        let gap = interval / n;
        let mut sent = 0u64;
        while t0.elapsed() < window {
            links[(sent % u64::from(n)) as usize]
                .write_all(&hb)
                .unwrap();
            sent += 1;
            let next = gap * u32::try_from(sent).unwrap();
            std::thread::sleep(next.saturating_sub(t0.elapsed()));
        }
        (thread_cpu("smem-store") - c0, sent, t0.elapsed())
    };
    let burst = {
        let rounds = 50u32;
        let c0 = thread_cpu("smem-store");
        for _ in 0..rounds {
            for l in &mut links {
                l.write_all(&hb).unwrap();
            }
        }
        // A request behind every heartbeat: its reply says they were all handled.
        let get = raw_frame(9, MessageType::Get, &[b"none"]);
        for l in &mut links {
            l.write_all(&get).unwrap();
        }
        for l in &mut links {
            let mut h = [0u8; 16];
            l.read_exact(&mut h).unwrap();
            let fh = FrameHeader::parse(&h).unwrap();
            let mut b = vec![0u8; fh.body_len as usize];
            l.read_exact(&mut b).unwrap();
        }
        (thread_cpu("smem-store") - c0, u64::from(rounds * n))
    };
    let pct = |d: Duration, over: Duration| 100.0 * d.as_secs_f64() / over.as_secs_f64();
    println!(
        "{n} links idle (heartbeat scan every 2 s): store thread {:.3} % of a core",
        pct(idle, window)
    );
    println!(
        "{n} links heartbeating every {} ms ({} frames in {:.1} s, {:.0}/s): store thread {:.3} % of a core, {:.1} us per heartbeat",
        interval.as_millis(),
        spaced.1,
        spaced.2.as_secs_f64(),
        spaced.1 as f64 / spaced.2.as_secs_f64(),
        pct(spaced.0, spaced.2),
        spaced.0.as_secs_f64() * 1e6 / spaced.1 as f64
    );
    println!(
        "saturated: {} heartbeats back to back: {:.2} us of store thread each",
        burst.1,
        burst.0.as_secs_f64() * 1e6 / burst.1 as f64
    );
}

/// What a watch event costs the store thread and the clients' reader threads: `WATCHERS`
/// clients watch one key while `APPENDERS` of them append `EVENTS` entries to it (a
/// membership log), every append a WATCH event to every watcher.
/// `cargo test --release -p smem-linux --test store_bench -- --ignored --nocapture fan_out`
#[test]
#[ignore = "benchmark"]
fn watch_fan_out() {
    const WATCHERS: usize = 1024;
    const APPENDERS: usize = 32;
    const EVENTS: usize = 512;
    smem_linux::sys::fd::raise_nofile_limit(8192).unwrap();
    let s = StoreServer::start(ServerConfig {
        heartbeat_timeout: None,
        ..ServerConfig::default()
    })
    .unwrap();
    let clients: Vec<StoreClient> = (0..WATCHERS)
        .map(|_| StoreClient::connect(s.local_addr(), ClientOptions::default()).unwrap())
        .collect();
    let rx: Vec<_> = clients.iter().map(|c| c.watch(b"log").unwrap()).collect();
    let entry = [0x42u8; 24];
    let (s0, r0) = (thread_cpu("smem-store"), thread_cpu("smem-store-rx"));
    let t0 = Instant::now();
    std::thread::scope(|sc| {
        for c in &clients[..APPENDERS] {
            sc.spawn(|| {
                for _ in 0..EVENTS / APPENDERS {
                    c.append(b"log", &entry).unwrap();
                }
            });
        }
    });
    for r in &rx {
        for _ in 0..EVENTS {
            r.recv_timeout(Duration::from_secs(60)).unwrap();
        }
    }
    let wall = t0.elapsed();
    let (store, readers) = (
        thread_cpu("smem-store") - s0,
        thread_cpu("smem-store-rx") - r0,
    );
    let events = (WATCHERS * EVENTS) as f64;
    println!(
        "{WATCHERS} watchers, {EVENTS} appends by {APPENDERS} clients: {events} events in {:.2} s; store thread {:.2} s ({:.2} us/event), reader threads {:.2} s ({:.2} us/event)",
        wall.as_secs_f64(),
        store.as_secs_f64(),
        store.as_secs_f64() * 1e6 / events,
        readers.as_secs_f64(),
        readers.as_secs_f64() * 1e6 / events
    );
}
