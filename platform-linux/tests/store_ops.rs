//! Config store through the client API: every op, waking rules, deadlines, ranks, lifetime,
//! link loss and concurrency. Real sockets on loopback, port 0.

use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use smem_core::ErrorCode;
use smem_linux::store::{CasResult, ClientOptions, Posted, ServerConfig, StoreClient, StoreServer};

/// Timing-sensitive tests and CPU-heavy tests of this file run one at a time, so a deadline
/// measurement is not disturbed by another test saturating the (small) machine.
#[allow(clippy::disallowed_methods)] // The test's own lock, not a lock of smem.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn server() -> StoreServer {
    let cfg = ServerConfig {
        heartbeat_timeout: None,
        ..ServerConfig::default()
    };
    StoreServer::start(cfg).expect("start store")
}

fn opts(world: Option<u32>, rank: Option<u32>) -> ClientOptions {
    ClientOptions {
        world_size: world,
        rank,
        connect_timeout: Duration::from_secs(5),
        op_timeout: Duration::from_secs(5),
        reconnect: false,
        ..ClientOptions::default()
    }
}

fn client(s: &StoreServer) -> StoreClient {
    StoreClient::connect(s.local_addr(), opts(None, None)).expect("connect")
}

/// A client holding a rank, so the store is not wiped when unranked clients come and go.
fn ranked(s: &StoreServer, rank: u32) -> StoreClient {
    StoreClient::connect(s.local_addr(), opts(Some(64), Some(rank))).expect("connect ranked")
}

fn poll_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn set_get_remove() {
    let s = server();
    let c = client(&s);
    assert_eq!(c.get(b"k").unwrap(), None);
    c.set(b"k", b"v1").unwrap();
    assert_eq!(c.get(b"k").unwrap().as_deref(), Some(&b"v1"[..]));
    c.set(b"", b"empty key ok").unwrap();
    assert_eq!(c.get(b"").unwrap().as_deref(), Some(&b"empty key ok"[..]));
    c.set(b"k", b"").unwrap();
    assert_eq!(c.get(b"k").unwrap(), Some(vec![]));
    assert!(c.remove(b"k").unwrap());
    assert!(!c.remove(b"k").unwrap());
    assert_eq!(c.get(b"k").unwrap(), None);
    let big = vec![0xA5u8; 3 << 20];
    c.set(b"big", &big).unwrap();
    assert_eq!(c.get(b"big").unwrap().unwrap(), big);
}

#[test]
fn add_append_cas_write_prefix() {
    let s = server();
    let c = client(&s);
    assert_eq!(c.add(b"n", 5).unwrap(), 5);
    assert_eq!(c.add(b"n", -7).unwrap(), -2);
    assert_eq!(c.get(b"n").unwrap().unwrap(), b"-2");
    c.set(b"s", b"abc").unwrap();
    assert_eq!(c.add(b"s", 1).unwrap_err().code(), ErrorCode::StoreRejected);
    c.set(b"m", i64::MAX.to_string().as_bytes()).unwrap();
    let e = c.add(b"m", 1).unwrap_err();
    assert!(e.message().contains("overflow"), "{e}");

    assert_eq!(c.append(b"a", b"xy").unwrap(), 2);
    assert_eq!(c.append(b"a", b"zzz").unwrap(), 5);
    assert_eq!(c.get(b"a").unwrap().unwrap(), b"xyzzz");

    assert_eq!(
        c.cas(b"c", b"whatever", b"one").unwrap(),
        CasResult::Swapped
    );
    assert_eq!(c.cas(b"c", b"one", b"two").unwrap(), CasResult::Swapped);
    assert_eq!(
        c.cas(b"c", b"one", b"three").unwrap(),
        CasResult::Mismatch(b"two".to_vec())
    );
    assert_eq!(c.get(b"c").unwrap().unwrap(), b"two");

    c.write(b"w", 4, b"ab").unwrap();
    assert_eq!(c.get(b"w").unwrap().unwrap(), b"\0\0\0\0ab");
    c.write(b"w", 1, b"Z").unwrap();
    assert_eq!(c.get(b"w").unwrap().unwrap(), b"\0Z\0\0ab");
    assert!(c.write(b"w", 1 << 30, b"x").is_err());

    c.set(b"p/1", b"a").unwrap();
    c.set(b"p/2", b"b").unwrap();
    c.set(b"q/1", b"c").unwrap();
    let mut p = c.prefix(b"p/").unwrap();
    p.sort();
    assert_eq!(
        p,
        vec![
            (b"p/1".to_vec(), b"a".to_vec()),
            (b"p/2".to_vec(), b"b".to_vec())
        ]
    );
    assert!(c.prefix(b"none/").unwrap().is_empty());
    assert!(c.prefix(b"").unwrap().len() >= 7);
}

#[test]
fn wait_get_is_woken_and_times_out_on_time() {
    let _serial = serial();
    let s = server();
    let c = client(&s);
    let c2 = c.clone();
    let t = std::thread::spawn(move || c2.wait_get(b"later", Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(50));
    c.set(b"later", b"here").unwrap();
    assert_eq!(t.join().unwrap().unwrap(), b"here");
    // Present already: immediate.
    assert_eq!(
        c.wait_get(b"later", Duration::from_millis(10)).unwrap(),
        b"here"
    );

    for ms in [100u64, 300] {
        let start = Instant::now();
        let e = c.wait_get(b"never", Duration::from_millis(ms)).unwrap_err();
        let took = start.elapsed();
        assert_eq!(e.code(), ErrorCode::Timeout);
        assert!(e.message().contains("never"), "{e}");
        assert!(took >= Duration::from_millis(ms), "fired early: {took:?}");
        assert!(
            took < Duration::from_millis(ms + 50),
            "fired late: {took:?}"
        );
    }
}

#[test]
fn watch_rules() {
    let s = server();
    let c = client(&s);
    c.set(b"w", b"v0").unwrap();
    let rx = c.watch(b"w").unwrap();
    let next = || rx.recv_timeout(Duration::from_secs(2)).unwrap();
    assert_eq!(next(), b"v0");
    c.set(b"w", b"v1").unwrap();
    assert_eq!(next(), b"v1");
    c.set(b"w", b"v1").unwrap(); // same value: no wake
    c.append(b"w", b"+x").unwrap(); // wakes with the piece
    assert_eq!(next(), b"+x");
    c.remove(b"w").unwrap(); // never wakes
    c.write(b"w", 0, b"zz").unwrap(); // never wakes
    c.add(b"w2", 1).unwrap();
    c.set(b"w", b"v2").unwrap(); // value differs from "zz"
    assert_eq!(next(), b"v2");
    assert_eq!(c.cas(b"w", b"v2", b"v3").unwrap(), CasResult::Swapped);
    assert_eq!(next(), b"v3");
    c.unwatch(b"w").unwrap();
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(2)),
        Err(RecvTimeoutError::Disconnected)
    ));

    // Absent key: nothing at once, then every wake; ADD always wakes.
    let rx = c.watch(b"n").unwrap();
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(50)),
        Err(RecvTimeoutError::Timeout)
    ));
    c.add(b"n", 0).unwrap();
    c.add(b"n", 0).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(2)).unwrap(), b"0");
    assert_eq!(rx.recv_timeout(Duration::from_secs(2)).unwrap(), b"0");
}

#[test]
fn auto_ranking_and_query_alive() {
    let s = server();
    let first = StoreClient::connect(s.local_addr(), opts(Some(3), None)).unwrap();
    let others: Vec<StoreClient> = (0..2).map(|_| client(&s)).collect();
    let mut ranks = vec![first.auto_rank(b"x").unwrap()];
    assert_eq!(
        first.auto_rank(b"again").unwrap(),
        ranks[0],
        "a link keeps its rank"
    );
    for c in &others {
        ranks.push(c.auto_rank(b"x").unwrap());
    }
    ranks.sort_unstable();
    assert_eq!(ranks, [0, 1, 2]);
    let extra = client(&s);
    assert_eq!(
        extra.auto_rank(b"x").unwrap_err().code(),
        ErrorCode::LimitExceeded
    );
    for r in 0..3 {
        assert!(extra.query_alive(r).unwrap());
    }
    assert!(!extra.query_alive(3).unwrap());
    // Sent together, answered in order; a repeated rank and an empty list are fine.
    let ask = [3, 0, 2, 1, 1000, 0];
    assert_eq!(
        extra.query_alive_each(&ask).unwrap(),
        [false, true, true, true, false, true]
    );
    assert!(extra.query_alive_each(&[]).unwrap().is_empty());
    let r1 = others[0].auto_rank(b"").unwrap();
    others[0].close();
    poll_until("rank to be freed", Duration::from_secs(2), || {
        !extra.query_alive(r1).unwrap()
    });
    let mut alive = vec![true; 3];
    alive[r1 as usize] = false;
    assert_eq!(extra.query_alive_each(&[0, 1, 2]).unwrap(), alive);
    assert_eq!(
        extra.auto_rank(b"x").unwrap(),
        r1,
        "the freed rank is reused"
    );
}

#[test]
fn handshake_refusals() {
    let s = server();
    let _a = StoreClient::connect(s.local_addr(), opts(Some(4), Some(1))).unwrap();
    let e = StoreClient::connect(s.local_addr(), opts(Some(5), Some(2))).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidParam, "{e}");
    let e = StoreClient::connect(s.local_addr(), opts(Some(4), Some(1))).unwrap_err();
    assert_eq!(e.code(), ErrorCode::StoreRejected, "{e}");
    // Unknown world size is always fine.
    StoreClient::connect(s.local_addr(), opts(None, Some(2))).unwrap();
}

#[test]
fn rank_down_events_and_wipe() {
    let _serial = serial();
    let s = server();
    let observer = ranked(&s, 0);
    let rx = observer.watch_rank_down().unwrap();
    let r5 = ranked(&s, 5);
    drop(r5);
    assert_eq!(rx.recv_timeout(Duration::from_secs(2)).unwrap(), 5);

    // Wipe: the last ranked link goes; parked GETs and watchers get -602, data is gone.
    observer.set(b"data", b"x").unwrap();
    let plain = client(&s);
    plain.set(b"watched", b"w").unwrap();
    let wrx = plain.watch(b"watched").unwrap();
    assert_eq!(wrx.recv_timeout(Duration::from_secs(2)).unwrap(), b"w");
    let p2 = plain.clone();
    let t = std::thread::spawn(move || p2.wait_get(b"never", Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    observer.close();
    let e = t.join().unwrap().unwrap_err();
    assert_eq!(e.code(), ErrorCode::ObjectNotExists, "{e}");
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(matches!(
        wrx.recv_timeout(Duration::from_secs(2)),
        Err(RecvTimeoutError::Disconnected)
    ));
    assert_eq!(plain.get(b"data").unwrap(), None);
    assert_eq!(plain.get(b"watched").unwrap(), None);
}

#[test]
fn server_death_fails_pending_ops_quickly() {
    let _serial = serial();
    let s = server();
    let c = client(&s);
    let c2 = c.clone();
    let t = std::thread::spawn(move || {
        let start = Instant::now();
        (c2.wait_get(b"never", Duration::from_secs(30)), start)
    });
    std::thread::sleep(Duration::from_millis(100));
    let killed = Instant::now();
    s.shutdown();
    let (r, _) = t.join().unwrap();
    assert_eq!(r.unwrap_err().code(), ErrorCode::IoError);
    assert!(
        killed.elapsed() < Duration::from_secs(1),
        "took {:?}",
        killed.elapsed()
    );
    poll_until("disconnect", Duration::from_secs(1), || !c.is_connected());
    assert_eq!(c.set(b"k", b"v").unwrap_err().code(), ErrorCode::IoError);
}

#[test]
fn close_fails_pending_at_once() {
    let _serial = serial();
    let s = server();
    let c = client(&s);
    let c2 = c.clone();
    let t = std::thread::spawn(move || c2.wait_get(b"never", Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    c.close();
    assert_eq!(t.join().unwrap().unwrap_err().code(), ErrorCode::IoError);
    assert!(start.elapsed() < Duration::from_millis(500));
    assert!(!c.is_connected());
}

#[test]
fn op_timeout_when_store_never_answers() {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut hs = [0u8; 16];
        s.read_exact(&mut hs).unwrap();
        s.write_all(&[0, 0]).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut sink = [0u8; 1024];
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    });
    let mut o = opts(None, None);
    o.op_timeout = Duration::from_millis(200);
    let c = StoreClient::connect(addr, o).unwrap();
    assert_eq!(c.op_timeout(), Duration::from_millis(200));
    let start = Instant::now();
    let e = c.get(b"thekey").unwrap_err();
    assert_eq!(e.code(), ErrorCode::Timeout);
    assert!(
        e.message().contains("GET") && e.message().contains("thekey"),
        "{e}"
    );
    assert!(start.elapsed() < Duration::from_secs(1));
    c.close();
    t.join().unwrap();
}

#[test]
fn connect_retries_until_timeout() {
    // A port nobody listens on (bind, read the port, drop).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut o = opts(None, None);
    o.connect_timeout = Duration::from_millis(300);
    let start = Instant::now();
    let e = StoreClient::connect(addr, o).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
    assert!(
        start.elapsed() >= Duration::from_millis(250) && start.elapsed() < Duration::from_secs(2)
    );
    let m = e.message();
    assert!(
        m.contains(&addr.to_string()) && m.contains("300 ms") && m.contains("last error"),
        "{m}"
    );
}

/// Unreachable hosts and networks, refusals and timeouts are retried until the deadline
/// (a route may come up); errors that waiting cannot fix are not. Only the classification is
/// tested: no traffic leaves loopback.
#[test]
fn connect_retries_unreachable_like_refused() {
    use smem_linux::store::client::connect_error_is_transient;
    let os = std::io::Error::from_raw_os_error;
    for e in [
        libc::EHOSTUNREACH,
        libc::ENETUNREACH,
        libc::ECONNREFUSED,
        libc::ETIMEDOUT,
        libc::ECONNRESET,
        libc::EINTR,
    ] {
        assert!(connect_error_is_transient(&os(e)), "errno {e}");
    }
    assert!(connect_error_is_transient(&std::io::Error::from(
        std::io::ErrorKind::TimedOut
    )));
    for e in [
        libc::EINVAL,
        libc::EAFNOSUPPORT,
        libc::EACCES,
        libc::EADDRNOTAVAIL,
    ] {
        assert!(!connect_error_is_transient(&os(e)), "errno {e}");
    }
}

#[test]
fn sixty_four_threads_mixed_ops() {
    let _serial = serial();
    const THREADS: u64 = 64;
    const ROUNDS: u64 = 20;
    let s = server();
    let shared = client(&s);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            // Half share one pipelined client, half have their own link.
            let c = if t % 2 == 0 {
                shared.clone()
            } else {
                client(&s)
            };
            std::thread::spawn(move || {
                for i in 0..ROUNDS {
                    let k = format!("t{t}/k{i}");
                    let v = format!("value {t} {i}");
                    c.set(k.as_bytes(), v.as_bytes()).unwrap();
                    assert_eq!(c.get(k.as_bytes()).unwrap().unwrap(), v.as_bytes());
                    c.add(b"counter", 1).unwrap();
                    c.append(format!("log{t}").as_bytes(), b"x").unwrap();
                    // CAS increment loop on a shared key.
                    loop {
                        let cur = c.get(b"cas").unwrap().unwrap_or_else(|| b"0".to_vec());
                        let n: u64 = std::str::from_utf8(&cur).unwrap().parse().unwrap();
                        if c.cas(b"cas", &cur, (n + 1).to_string().as_bytes()).unwrap()
                            == CasResult::Swapped
                        {
                            break;
                        }
                    }
                }
                assert_eq!(
                    c.get(format!("log{t}").as_bytes()).unwrap().unwrap().len() as u64,
                    ROUNDS
                );
                assert_eq!(
                    c.prefix(format!("t{t}/").as_bytes()).unwrap().len() as u64,
                    ROUNDS
                );
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(
        shared.add(b"counter", 0).unwrap(),
        (THREADS * ROUNDS) as i64
    );
    assert_eq!(
        shared.get(b"cas").unwrap().unwrap(),
        (THREADS * ROUNDS).to_string().as_bytes()
    );
}

#[test]
fn reconnects_after_store_restart_when_asked() {
    let s = server();
    let addr = s.local_addr();
    let mut o = opts(Some(8), Some(3));
    o.reconnect = true;
    o.connect_timeout = Duration::from_secs(2);
    let c = StoreClient::connect(addr, o).unwrap();
    let plain = client(&s);
    c.set(b"k", b"v").unwrap();
    let rx = c.watch(b"k").unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(2)).unwrap(), b"v");
    s.shutdown();
    poll_until("link loss", Duration::from_secs(1), || {
        !c.is_connected() && !plain.is_connected()
    });
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(1)),
        Err(RecvTimeoutError::Disconnected)
    ));
    // Same address again (std sets SO_REUSEADDR on listeners).
    let cfg = ServerConfig {
        listen: addr,
        heartbeat_timeout: None,
        ..ServerConfig::default()
    };
    let s2 = StoreServer::start(cfg).unwrap();
    assert_eq!(c.get(b"k").unwrap(), None, "new store, empty");
    assert!(c.is_connected());
    assert!(c.query_alive(3).unwrap(), "the rank was claimed again");
    assert_eq!(
        plain.set(b"k", b"v").unwrap_err().code(),
        ErrorCode::IoError,
        "no reconnect asked"
    );
    drop(s2);
}

#[test]
fn absurd_timeouts_saturate() {
    let cfg = ServerConfig {
        heartbeat_timeout: Some(Duration::MAX),
        heartbeat_check_interval: Duration::MAX,
        handshake_timeout: Duration::MAX,
        ..ServerConfig::default()
    };
    let s = StoreServer::start(cfg).unwrap();
    let o = ClientOptions {
        connect_timeout: Duration::MAX,
        op_timeout: Duration::MAX,
        ..ClientOptions::default()
    };
    let c = StoreClient::connect(s.local_addr(), o).unwrap();
    c.set(b"k", b"v").unwrap();
    assert_eq!(c.wait_get(b"k", Duration::MAX).unwrap(), b"v");
    let c2 = c.clone();
    let t = std::thread::spawn(move || c2.wait_get(b"later", Duration::MAX));
    std::thread::sleep(Duration::from_millis(50));
    c.set(b"later", b"x").unwrap();
    assert_eq!(t.join().unwrap().unwrap(), b"x");
}

#[test]
fn ipv6_loopback() {
    let listen: std::net::SocketAddr = "[::1]:0".parse().unwrap();
    if std::net::TcpListener::bind(listen).is_err() {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    }
    let s = StoreServer::start(ServerConfig {
        listen,
        heartbeat_timeout: None,
        ..ServerConfig::default()
    })
    .unwrap();
    assert!(s.local_addr().is_ipv6());
    let url = smem_core::url::StoreUrl {
        addr: s.local_addr(),
    }
    .to_string();
    let addr = smem_core::url::StoreUrl::parse(&url).unwrap().addr;
    let c = StoreClient::connect(addr, ClientOptions::default()).unwrap();
    c.set(b"k", b"v6").unwrap();
    assert_eq!(c.get(b"k").unwrap().unwrap(), b"v6");
}

#[test]
fn posted_requests_take_effect_in_order() {
    let s = server();
    let c = client(&s);
    c.post(Posted::Set(b"p/a", b"1")).unwrap();
    c.post(Posted::Append(b"p/log", b"x;")).unwrap();
    c.post(Posted::Append(b"p/log", b"y;")).unwrap();
    c.post(Posted::Set(b"p/b", b"2")).unwrap();
    c.post(Posted::Remove(b"p/b")).unwrap();
    // A later request of the same client is answered after the posted ones took effect.
    assert_eq!(c.get(b"p/a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(c.get(b"p/log").unwrap().as_deref(), Some(&b"x;y;"[..]));
    assert_eq!(c.get(b"p/b").unwrap(), None);
    // A refusal goes unseen (the value is not a number) and the link stays usable.
    c.post(Posted::Set(b"p/n", b"abc")).unwrap();
    assert!(c.add(b"p/n", 1).is_err());
    assert_eq!(c.add(b"p/m", 2).unwrap(), 2);
}
