//! A connection storm (issue 11 item 3): every rank of a 1024-rank job connects to the config
//! store at once. The store must take them all without a reset (listen backlog, accept loop,
//! handshake deadlines; `store/server/accept.rs`), and the client must not report anything.
//!
//! Both tests hold 1024 links in this one process (client and server ends: over 2048
//! descriptors), so they raise the soft `RLIMIT_NOFILE` (the store also does at start) and run
//! one at a time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use smem_core::wire::handshake::Handshake;
use smem_core::wire::message::{self, MessageHeader};
use smem_core::wire::{FrameHeader, MessageType, MessageView};
use smem_linux::store::{ClientOptions, ServerConfig, StoreClient, StoreServer};

const RANKS: u32 = 1024;
/// Threads that open the links, released together.
const THREADS: u32 = 16;
/// Far beyond what the storm takes on a loaded 2-core machine (about a second).
const DEADLINE: Duration = Duration::from_secs(60);

#[allow(clippy::disallowed_methods)] // The test's own lock, not a lock of smem.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Ranks whose two link ends (plus threads' and the harness's descriptors) fit the descriptor
/// limit after raising it to the hard limit: [`RANKS`] on any usual system.
fn ranks_that_fit() -> u32 {
    let (soft, hard) = smem_linux::sys::fd::raise_nofile_limit(8192).expect("getrlimit");
    let fit = u32::try_from(soft.saturating_sub(128) / 2).unwrap_or(u32::MAX);
    if fit < RANKS {
        println!(
            "NOTICE: descriptor limit {soft} (hard {hard}) holds {fit} links with both ends in one process, not {RANKS}; running {fit}"
        );
    }
    fit.min(RANKS)
}

fn server() -> StoreServer {
    StoreServer::start(ServerConfig {
        heartbeat_timeout: None,
        ..ServerConfig::default()
    })
    .expect("start store")
}

fn frame(seq: u32, mt: MessageType, keys: &[&[u8]], values: &[&[u8]]) -> Vec<u8> {
    let (k, v) = (keys.iter().copied(), values.iter().copied());
    let len = message::encoded_len(k.clone(), v.clone());
    let mut out = vec![0u8; 16 + len];
    FrameHeader::new(0, len as u32, seq)
        .emit(&mut out[..16])
        .unwrap();
    message::emit(&MessageHeader::reply(mt), k, v, &mut out[16..]).unwrap();
    out
}

fn recv(s: &mut TcpStream) -> std::io::Result<(i16, u32, Vec<u8>)> {
    let mut h = [0u8; 16];
    s.read_exact(&mut h)?;
    let fh = FrameHeader::parse(&h).unwrap();
    let mut b = vec![0u8; fh.body_len as usize];
    s.read_exact(&mut b)?;
    Ok((fh.result, fh.seq_no, b))
}

/// One rank's link on the wire, step by step, as the reference client does it: connect,
/// 16-byte handshake, `i16` reply, then a SET and a GET pipelined.
struct RawRank {
    rank: u32,
    s: TcpStream,
}

impl RawRank {
    fn hello(&mut self, world: u32) -> std::io::Result<()> {
        let mut hs = [0u8; 16];
        Handshake::new(Some(world), Some(self.rank), false)
            .emit(&mut hs)
            .unwrap();
        self.s.write_all(&hs)
    }

    fn hello_reply(&mut self) -> std::io::Result<i16> {
        let mut r = [0u8; 2];
        self.s.read_exact(&mut r)?;
        Ok(i16::from_le_bytes(r))
    }

    fn key(&self) -> Vec<u8> {
        format!("storm/{}", self.rank).into_bytes()
    }

    fn set_and_get(&mut self) -> std::io::Result<()> {
        let (key, value) = (self.key(), self.rank.to_le_bytes());
        let mut out = frame(1, MessageType::Set, &[&key], &[&value]);
        out.extend(frame(2, MessageType::Get, &[&key], &[]));
        self.s.write_all(&out)
    }

    fn check_replies(&mut self) -> Result<(), String> {
        let io = |e: std::io::Error| format!("reading replies: {e}");
        let (st, seq, b) = recv(&mut self.s).map_err(io)?;
        if (st, seq, b.as_slice()) != (0, 1, b"success") {
            return Err(format!("SET answered {st} seq {seq} {b:?}"));
        }
        let (st, seq, b) = recv(&mut self.s).map_err(io)?;
        let got = MessageView::parse(&b)
            .ok()
            .map(|m| m.values.get(0).map(<[u8]>::to_vec));
        if (st, seq, got) != (0, 2, Some(Some(self.rank.to_le_bytes().to_vec()))) {
            return Err(format!("GET answered {st} seq {seq}"));
        }
        Ok(())
    }
}

/// Connect every rank of `ranks`; the failures as (rank, what happened).
fn storm_thread(
    addr: SocketAddr,
    world: u32,
    ranks: std::ops::Range<u32>,
    start: &Barrier,
) -> (Vec<RawRank>, Vec<(u32, String)>) {
    let mut failed = Vec::new();
    let mut links = Vec::new();
    start.wait();
    // Back to back: a loopback connect completes in the kernel (the accept queue holds it),
    // so the whole job's connections arrive before the store has accepted many.
    for rank in ranks {
        match TcpStream::connect(addr) {
            Ok(s) => links.push(RawRank { rank, s }),
            Err(e) => failed.push((rank, format!("connect: {e}"))),
        }
    }
    let mut ok = Vec::new();
    for mut l in links {
        let r =
            l.s.set_read_timeout(Some(DEADLINE))
                .and_then(|()| l.hello(world));
        match r {
            Ok(()) => ok.push(l),
            Err(e) => failed.push((l.rank, format!("sending the handshake: {e}"))),
        }
    }
    let mut links = Vec::new();
    for mut l in ok {
        match l.hello_reply() {
            Ok(0) => links.push(l),
            Ok(code) => failed.push((l.rank, format!("handshake refused: {code}"))),
            Err(e) => failed.push((l.rank, format!("handshake reply: {e}"))),
        }
    }
    (links, failed)
}

#[test]
fn a_storm_of_1024_ranks_connecting_at_once_is_taken_without_a_reset() {
    let _serial = serial();
    let n = ranks_that_fit();
    let store = server();
    let addr = store.local_addr();
    let start = Arc::new(Barrier::new(THREADS as usize + 1));
    let per = n.div_ceil(THREADS);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let start = Arc::clone(&start);
            let ranks = (t * per).min(n)..((t + 1) * per).min(n);
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || storm_thread(addr, n, ranks, &start))
                .unwrap()
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    let mut links = Vec::new();
    let mut failed = Vec::new();
    for t in threads {
        let (l, f) = t.join().unwrap();
        links.extend(l);
        failed.extend(f);
    }
    let handshaken = t0.elapsed();
    // Every rank's SET and GET at once, then every reply.
    for l in &mut links {
        if let Err(e) = l.set_and_get() {
            failed.push((l.rank, format!("sending SET + GET: {e}")));
        }
    }
    for l in &mut links {
        if let Err(e) = l.check_replies() {
            failed.push((l.rank, e));
        }
    }
    failed.sort();
    assert!(
        failed.is_empty(),
        "{} of {n} ranks failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(8)]
    );
    assert_eq!(links.len(), n as usize);
    println!(
        "{n} ranks connected and handshaken in {:.0} ms, SET + GET each in {:.0} ms more",
        handshaken.as_secs_f64() * 1e3,
        (t0.elapsed() - handshaken).as_secs_f64() * 1e3
    );
    // Every rank is held: one more link asking for rank 0 is refused, the store still serves.
    let mut extra = RawRank {
        rank: 0,
        s: TcpStream::connect(addr).unwrap(),
    };
    extra.s.set_read_timeout(Some(DEADLINE)).unwrap();
    extra.hello(n).unwrap();
    assert_eq!(extra.hello_reply().unwrap(), -1);
    drop(links);
    drop(store);
}

#[test]
fn store_clients_of_1024_ranks_connect_at_once_without_an_error() {
    let _serial = serial();
    let n = ranks_that_fit();
    let store = server();
    let addr = store.local_addr();
    let start = Arc::new(Barrier::new(THREADS as usize));
    let per = n.div_ceil(THREADS);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                let t0 = Instant::now();
                let mut clients = Vec::new();
                let mut errors = Vec::new();
                for rank in (t * per).min(n)..((t + 1) * per).min(n) {
                    let opts = ClientOptions {
                        world_size: Some(n),
                        rank: Some(rank),
                        connect_timeout: DEADLINE,
                        op_timeout: DEADLINE,
                        ..ClientOptions::default()
                    };
                    match StoreClient::connect(addr, opts) {
                        Ok(c) => clients.push((rank, c)),
                        Err(e) => errors.push(format!("rank {rank}: {e}")),
                    }
                }
                for (rank, c) in &clients {
                    let key = format!("storm/{rank}");
                    let r = c
                        .add(b"storm/count", 1)
                        .and_then(|_| c.set(key.as_bytes(), &rank.to_le_bytes()))
                        .and_then(|()| c.get(key.as_bytes()));
                    match r {
                        Ok(Some(v)) if v == rank.to_le_bytes() => {}
                        other => errors.push(format!("rank {rank}: {other:?}")),
                    }
                }
                // The links stay up (with their ranks and data) until the counter is checked.
                (errors, t0.elapsed(), clients)
            })
        })
        .collect();
    let mut errors = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut clients = Vec::new();
    for t in threads {
        let (e, took, c) = t.join().unwrap();
        errors.extend(e);
        slowest = slowest.max(took);
        clients.extend(c);
    }
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(8)]
    );
    println!(
        "{n} store clients connected, counted, set and read back in {:.0} ms",
        slowest.as_secs_f64() * 1e3
    );
    let c = StoreClient::connect(addr, ClientOptions::default()).unwrap();
    assert_eq!(c.add(b"storm/count", 0).unwrap(), i64::from(n));
    assert_eq!(clients.len(), n as usize);
    drop(clients);
    drop(store);
}
