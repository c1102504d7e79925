//! Hostile clients at scale against a config store server running in its own process with
//! explicit limits (issue 8, item 2): 1500 idle links, slow senders dribbling a handshake and a
//! frame one byte at a time, clients that never read their replies, 10 keys of 2048 bytes, and
//! handshakes past `max_links`. Meanwhile a well-behaved client keeps a bounded p99 latency and
//! loses none of its data, and the server's resident memory stays within what its limits allow.
//!
//! The server is this test binary run again with `SMEM_HOSTILE_ROLE=server` (so its limits are
//! set in code, and its RSS is its own); it is killed by PID when the test ends.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use smem_core::wire::handshake::Handshake;
use smem_core::wire::message::{self, MessageHeader};
use smem_core::wire::{FrameHeader, MessageType};
use smem_linux::store::{ClientOptions, Limits, ServerConfig, StoreClient, StoreServer};
use smem_tests::{ChildGuard, parse_tcp_url, wait_for_line};

const ROLE: &str = "SMEM_HOSTILE_ROLE";
const IDLE_LINKS: usize = 1500;
const SLOW_SENDERS: usize = 16;
const NON_READERS: usize = 8;
const MAX_LINKS: usize = 1600;
const MAX_TOTAL_BYTES: u64 = 1 << 20;
const MAX_WRITE_QUEUE: usize = 256 << 10;
const MAX_INPUT_BYTES: u64 = 4 << 20;
const KEY_LEN: usize = 2048;
const VALUE_LEN: usize = 2048;
/// p99 latency bound of the well-behaved client (generous: the machine is small and shared).
const P99_BOUND: Duration = Duration::from_millis(200);

fn limits() -> Limits {
    Limits {
        max_links: MAX_LINKS,
        max_body_len: 1 << 20,
        max_keys: 1024,
        max_key_len: 2048,
        max_value_len: 64 << 10,
        max_total_bytes: MAX_TOTAL_BYTES,
        max_write_queue: MAX_WRITE_QUEUE,
        max_waiters_per_link: 1024,
        max_input_bytes: MAX_INPUT_BYTES,
    }
}

/// The server process: runs only when this binary is started with `SMEM_HOSTILE_ROLE=server`.
#[test]
fn hostile_server_child() {
    if std::env::var(ROLE).as_deref() != Ok("server") {
        return;
    }
    let cfg = ServerConfig {
        limits: limits(),
        heartbeat_timeout: None,
        handshake_timeout: Duration::from_secs(20),
        ..ServerConfig::default()
    };
    smem_linux::logging::init();
    let server = StoreServer::start(cfg).expect("start store");
    println!("HOSTILE_SERVER listening on tcp://{}", server.local_addr());
    let _ = std::io::stdout().flush();
    // Serve until the parent closes our stdin (or kills us); bounded in any case.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs(180));
    server.shutdown();
    std::process::exit(0);
}

/// Raises RLIMIT_NOFILE so that the test (and the server it spawns, which inherits it) can
/// hold `need` descriptors; `Err` with the reason when the hard limit does not allow it.
fn raise_nofile(need: u64) -> Result<(), String> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    if rl.rlim_cur >= need {
        return Ok(());
    }
    if rl.rlim_max < need {
        return Err(format!(
            "RLIMIT_NOFILE hard limit {} is below the {need} descriptors this test needs",
            rl.rlim_max
        ));
    }
    rl.rlim_cur = need;
    // SAFETY: `rl` is a valid rlimit with cur <= max.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
        return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn handshake_bytes() -> [u8; 16] {
    let mut hs = [0u8; 16];
    Handshake::new(None, None, false)
        .emit(&mut hs)
        .expect("16 bytes");
    hs
}

fn frame(seq: u32, mt: MessageType, keys: &[&[u8]], values: &[&[u8]]) -> Vec<u8> {
    let len = message::encoded_len(keys.iter().copied(), values.iter().copied());
    let mut out = vec![0u8; 16 + len];
    FrameHeader::new(0, u32::try_from(len).expect("small"), seq)
        .emit(&mut out[..16])
        .expect("header");
    let h = MessageHeader {
        user_def: 0,
        request_id: 1,
        msg_type: mt,
    };
    message::emit(
        &h,
        keys.iter().copied(),
        values.iter().copied(),
        &mut out[16..],
    )
    .expect("body");
    out
}

/// Connects and handshakes; `Ok(0)` when accepted, `Ok(code)` when refused with a code,
/// `Err` when the server closed (or reset) without a reply.
fn try_link(addr: SocketAddr) -> Result<(TcpStream, i16), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(&handshake_bytes())
        .map_err(|e| format!("send handshake: {e}"))?;
    let mut r = [0u8; 2];
    s.read_exact(&mut r)
        .map_err(|e| format!("handshake reply: {e}"))?;
    Ok((s, i16::from_le_bytes(r)))
}

fn read_reply(s: &mut TcpStream) -> std::io::Result<(i16, u32, Vec<u8>)> {
    let mut h = [0u8; 16];
    s.read_exact(&mut h)?;
    let fh = FrameHeader::parse(&h).map_err(|_| std::io::Error::other("bad header"))?;
    let mut b = vec![0u8; fh.body_len as usize];
    s.read_exact(&mut b)?;
    Ok((fh.result, fh.seq_no, b))
}

/// A key of exactly `KEY_LEN` bytes (the protocol's maximum) for index `i`.
fn big_key(i: usize) -> Vec<u8> {
    let mut k = format!("hostile/good/{i:02}/").into_bytes();
    k.resize(KEY_LEN, b'k' + (i as u8 % 10));
    k
}

fn big_value(i: usize, round: u64) -> Vec<u8> {
    let mut v = format!("v{i}-{round}-").into_bytes();
    v.resize(VALUE_LEN, b'a' + (round % 26) as u8);
    v
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn hostile_clients_at_scale() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    if let Err(why) = raise_nofile(4 * MAX_LINKS as u64) {
        println!("SKIPPED hostile_clients_at_scale: {why}");
        return;
    }
    let t0 = Instant::now();
    let exe = std::env::current_exe().expect("test binary");
    let child = Command::new(exe)
        .args(["--exact", "hostile_server_child", "--nocapture"])
        .args(["--test-threads=1"])
        .env(ROLE, "server")
        .env(
            "SMEM_LOG_LEVEL",
            std::env::var("SMEM_LOG_LEVEL").unwrap_or_else(|_| "error".into()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn server");
    let mut server = ChildGuard::new(child, "hostile store server");
    let out = server.take_stdout().expect("stdout");
    let addr = wait_for_line(out, Duration::from_secs(30), |l| {
        l.contains("HOSTILE_SERVER")
            .then(|| parse_tcp_url(l))
            .flatten()
    })
    .expect("server ready line");
    let pid = server.pid();
    let base_rss = vm_rss_kib(pid).expect("server VmRSS");

    // RSS sampler: the largest VmRSS seen until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicU64::new(base_rss));
    let sampler = {
        let (stop, max_rss) = (Arc::clone(&stop), Arc::clone(&max_rss));
        thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                if let Some(r) = vm_rss_kib(pid) {
                    max_rss.fetch_max(r, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // The well-behaved client holds a rank (so the store is never wiped under it) and owns 10
    // keys of 2048 bytes.
    let good = StoreClient::connect(
        addr,
        ClientOptions {
            world_size: Some(1),
            rank: Some(0),
            op_timeout: Duration::from_secs(10),
            ..ClientOptions::default()
        },
    )
    .expect("good client");
    for i in 0..10 {
        good.set(&big_key(i), &big_value(i, 0)).expect("seed key");
    }

    // 1500 idle, handshaken links.
    let mut idle = Vec::with_capacity(IDLE_LINKS);
    for i in 0..IDLE_LINKS {
        match try_link(addr) {
            Ok((s, 0)) => idle.push(s),
            other => panic!("idle link {i}: {:?}", other.map(|(_, c)| c)),
        }
    }
    let idle_done = t0.elapsed();
    let rss_idle = vm_rss_kib(pid).unwrap_or(0);

    // The well-behaved client runs through the whole attack.
    let attack_over = Arc::new(AtomicBool::new(false));
    let good_thread = {
        let attack_over = Arc::clone(&attack_over);
        thread::spawn(move || {
            let mut lat = Vec::new();
            let mut round = 0u64;
            let end = Instant::now() + Duration::from_secs(60);
            while (!attack_over.load(Ordering::Relaxed) || lat.len() < 200) && Instant::now() < end
            {
                round += 1;
                let i = (round % 10) as usize;
                let (k, v) = (big_key(i), big_value(i, round));
                let t = Instant::now();
                good.set(&k, &v).expect("good SET");
                let got = good.get(&k).expect("good GET");
                lat.push(t.elapsed());
                assert_eq!(
                    got.as_deref(),
                    Some(&v[..]),
                    "good client read back key {i}"
                );
            }
            (good, lat, round)
        })
    };

    // Slow senders: a handshake, then a SET frame, one byte at a time, all interleaved.
    let slow_thread = thread::spawn(move || {
        let mut conns: Vec<(TcpStream, Vec<u8>)> = (0..SLOW_SENDERS)
            .map(|i| {
                let s = TcpStream::connect(addr).expect("slow connect");
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let key = format!("hostile/slow/{i:03}").into_bytes();
                let mut bytes = handshake_bytes().to_vec();
                bytes.extend(frame(7, MessageType::Set, &[&key], &[b"dribbled"]));
                (s, bytes)
            })
            .collect();
        let len = conns[0].1.len();
        for at in 0..len {
            for (s, bytes) in &mut conns {
                if let Some(b) = bytes.get(at) {
                    s.write_all(std::slice::from_ref(b))
                        .expect("dribble a byte");
                }
            }
            thread::sleep(Duration::from_millis(15));
        }
        for (i, (s, _)) in conns.iter_mut().enumerate() {
            let mut r = [0u8; 2];
            s.read_exact(&mut r).expect("slow handshake reply");
            assert_eq!(i16::from_le_bytes(r), 0, "slow sender {i} handshake");
            let (st, seq, body) = read_reply(s).expect("slow SET reply");
            assert_eq!(
                (st, seq, &body[..]),
                (0, 7, &b"success"[..]),
                "slow sender {i}"
            );
        }
        len
    });

    // Clients that never read: PREFIX of the good client's keys (~41 KB per reply) as fast as
    // the server takes them, until the server closes the link for its write backlog.
    let nonreaders: Vec<_> = (0..NON_READERS)
        .map(|i| {
            thread::spawn(move || {
                let (mut s, code) = try_link(addr).expect("non-reader link");
                assert_eq!(code, 0);
                s.set_write_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let req = frame(1, MessageType::Prefix, &[b"hostile/good/"], &[]);
                let start = Instant::now();
                // Bounded in count and time; a few MB fit in the kernel's socket buffers, so
                // the cut-off comes once the server has read past them.
                let mut n = 0u32;
                while n < 1_000_000 && start.elapsed() < Duration::from_secs(20) {
                    if let Err(e) = s.write_all(&req) {
                        // Reset/broken pipe: the server closed us. A write timeout means it
                        // stopped reading us, which is also a refusal to buffer more.
                        return (i, n, start.elapsed(), e.kind());
                    }
                    n += 1;
                }
                (i, n, start.elapsed(), ErrorKind::Other)
            })
        })
        .collect();

    let slow_bytes = slow_thread.join().expect("slow senders");
    let mut cut = Vec::new();
    for t in nonreaders {
        let (i, n, took, kind) = t.join().expect("non-reader");
        assert!(
            matches!(
                kind,
                ErrorKind::BrokenPipe
                    | ErrorKind::ConnectionReset
                    | ErrorKind::WouldBlock
                    | ErrorKind::TimedOut
            ),
            "non-reader {i}: sent {n} requests in {took:?} and was never cut off ({kind:?})"
        );
        cut.push((n, took));
    }
    attack_over.store(true, Ordering::Relaxed);
    let (good, mut lat, rounds) = good_thread.join().expect("good client");

    // None of the good client's data was lost: each key holds its last written value.
    for i in 0..10 {
        let last = (1..=rounds)
            .rev()
            .find(|r| (r % 10) as usize == i)
            .unwrap_or(0);
        assert_eq!(
            good.get(&big_key(i)).expect("final GET").as_deref(),
            Some(&big_value(i, last)[..]),
            "key {i} after the attack"
        );
    }
    // A key one byte over the protocol's maximum is refused; the link keeps working.
    let mut long = big_key(0);
    long.push(b'x');
    assert!(
        good.set(&long, b"x").is_err(),
        "a 2049-byte key must be refused"
    );
    assert!(good.get(&big_key(1)).expect("after refusal").is_some());

    // The link limit: fill up to max_links, the next handshakes are refused, and the server
    // recovers once the excess closes.
    let mut extra = Vec::new();
    let mut refused = 0;
    for _ in 0..(MAX_LINKS + 32 - idle.len()) {
        match try_link(addr) {
            Ok((s, 0)) => extra.push(s),
            Ok((_, code)) => {
                assert_eq!(code, -1, "refusal code");
                refused += 1;
            }
            Err(_) => refused += 1,
        }
    }
    let open = idle.len() + extra.len();
    assert!(
        refused >= 1,
        "no handshake was refused with {open} links open"
    );
    assert!(
        open <= MAX_LINKS,
        "{open} links accepted, max_links {MAX_LINKS}"
    );
    drop(extra);
    idle.truncate(IDLE_LINKS / 2);
    let recovered = {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok((_, 0)) = try_link(addr) {
                break true;
            }
            if Instant::now() > end {
                break false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(
        recovered,
        "server did not accept links again after the excess closed"
    );
    assert!(good.get(&big_key(2)).expect("after the limit").is_some());

    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let peak = max_rss.load(Ordering::Relaxed);
    lat.sort();
    let (p50, p99, pmax) = (
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or_default(),
    );
    // What the limits allow: the stored data, every non-reader's backlog (twice, for Vec
    // growth), the large-body input budget, and a small per-link cost (state and buffers of an
    // idle link, 16 KiB each at most) on top of the server's footprint at start.
    let bound_kib = base_rss
        + (2 * MAX_TOTAL_BYTES
            + 2 * (NON_READERS * MAX_WRITE_QUEUE) as u64
            + MAX_INPUT_BYTES
            + 16 * 1024 * MAX_LINKS as u64)
            / 1024;
    println!(
        "hostile store: {IDLE_LINKS} idle links in {idle_done:?}, {SLOW_SENDERS} slow senders \
         ({slow_bytes} B each, 1 B/15 ms), {NON_READERS} non-readers cut after {cut:?}, \
         {refused} handshakes refused at max_links {MAX_LINKS}; good client {} ops: p50 {p50:?} \
         p99 {p99:?} max {pmax:?}; server VmRSS start {base_rss} KiB, with idle links \
         {rss_idle} KiB, peak {peak} KiB (bound {bound_kib} KiB); total {:?}",
        lat.len(),
        t0.elapsed()
    );
    assert!(p99 < P99_BOUND, "good client p99 {p99:?} >= {P99_BOUND:?}");
    assert!(
        peak <= bound_kib,
        "server peak RSS {peak} KiB over the bound {bound_kib} KiB its limits allow"
    );
    drop(idle);
    drop(server);
}

/// Senders that dribble their handshake at one byte a second never finish it within the
/// handshake deadline: the server closes each of them on time, while a well-behaved client is
/// served throughout.
#[test]
fn one_byte_a_second_senders_hit_the_handshake_deadline() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    const SENDERS: usize = 32;
    let deadline = Duration::from_secs(2);
    let server = StoreServer::start(ServerConfig {
        limits: limits(),
        heartbeat_timeout: None,
        handshake_timeout: deadline,
        ..ServerConfig::default()
    })
    .expect("start store");
    let addr = server.local_addr();
    let good = StoreClient::connect(addr, ClientOptions::default()).expect("good client");
    let start = Instant::now();
    let mut slow: Vec<(TcpStream, Option<Duration>)> = (0..SENDERS)
        .map(|_| {
            let s = TcpStream::connect(addr).expect("connect");
            s.set_nonblocking(true).expect("nonblocking");
            (s, None)
        })
        .collect();
    let hs = handshake_bytes();
    let mut lat = Vec::new();
    let mut sent = 0;
    while slow.iter().any(|(_, closed)| closed.is_none()) {
        assert!(
            start.elapsed() < deadline * 3,
            "slow senders still open after {:?}",
            start.elapsed()
        );
        // One byte a second from each sender still open.
        if start.elapsed() >= Duration::from_secs(sent) && (sent as usize) < hs.len() {
            for (s, closed) in &mut slow {
                if closed.is_none() {
                    let _ = s.write(&hs[sent as usize..=sent as usize]);
                }
            }
            sent += 1;
        }
        for (s, closed) in &mut slow {
            if closed.is_none() {
                let mut b = [0u8; 2];
                match s.read(&mut b) {
                    Ok(0) => *closed = Some(start.elapsed()),
                    Ok(_) => panic!("a partial handshake was answered"),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => *closed = Some(start.elapsed()),
                }
            }
        }
        let t = Instant::now();
        good.set(b"hostile/one-byte", b"alive").expect("good SET");
        lat.push(t.elapsed());
        thread::sleep(Duration::from_millis(20));
    }
    lat.sort();
    let median = lat.get(lat.len() / 2).copied().unwrap_or_default();
    let worst = lat.last().copied().unwrap_or_default();
    let first = slow.iter().filter_map(|s| s.1).min().unwrap_or_default();
    let last = slow.iter().filter_map(|s| s.1).max().unwrap_or_default();
    println!(
        "{SENDERS} one-byte-a-second senders closed between {first:?} and {last:?} (handshake \
         deadline {deadline:?}, {sent} bytes sent each); good client SET median {median:?}, worst {worst:?} of {}",
        lat.len()
    );
    assert!(
        first >= deadline - Duration::from_millis(50),
        "closed early: {first:?}"
    );
    assert!(
        last < deadline + Duration::from_secs(1),
        "closed late: {last:?}"
    );
    // A server that read a slow handshake in its event loop would stall the good client for a
    // second per byte, or until the deadline; the worst SET must stay well under that. One SET
    // of ~100 may wait for the CPU on a loaded 2-core machine, so the tight bound is the median.
    assert!(median < P99_BOUND, "good client median SET {median:?}");
    assert!(
        worst < deadline / 2,
        "good client stalled {worst:?}: the store blocked on a slow sender"
    );
    assert_eq!(
        good.get(b"hostile/one-byte").expect("GET").as_deref(),
        Some(&b"alive"[..])
    );
}
