//! One pass over every client operation with the documented results, against any store
//! server: ours (in-process or `smem-store`) or the reference's.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use smem_linux::store::{CasResult, ClientOptions, StoreClient};

/// Runs every op of SPEC 5.4 through our client against the server at `addr` and asserts the
/// documented results. The server must be fresh or fixed to world size 2.
pub fn exercise_every_op(addr: SocketAddr) {
    let o = ClientOptions {
        world_size: Some(2),
        ..ClientOptions::default()
    };
    let c = StoreClient::connect(addr, o.clone()).unwrap();
    let rank = c.auto_rank(b"127.0.0.1").unwrap();
    assert!(rank < 2);
    assert_eq!(c.auto_rank(b"127.0.0.1").unwrap(), rank);
    assert!(c.query_alive(rank).unwrap());
    // A unique prefix so a long-running store is not disturbed by earlier runs.
    let p = format!("compat/{}/", std::process::id());
    let k = |s: &str| format!("{p}{s}").into_bytes();
    c.set(&k("a"), b"1").unwrap();
    assert_eq!(c.get(&k("a")).unwrap().unwrap(), b"1");
    assert_eq!(c.get(&k("none")).unwrap(), None);
    assert_eq!(c.add(&k("a"), 41).unwrap(), 42);
    assert_eq!(c.append(&k("ap"), b"xy").unwrap(), 2);
    assert_eq!(c.append(&k("ap"), b"z").unwrap(), 3);
    assert_eq!(c.cas(&k("c"), b"", b"one").unwrap(), CasResult::Swapped);
    assert_eq!(
        c.cas(&k("c"), b"two", b"three").unwrap(),
        CasResult::Mismatch(b"one".to_vec())
    );
    c.write(&k("w"), 2, b"hi").unwrap();
    assert_eq!(c.get(&k("w")).unwrap().unwrap(), b"\0\0hi");
    let mut all = c.prefix(p.as_bytes()).unwrap();
    all.sort();
    assert_eq!(all.len(), 4);
    assert!(c.remove(&k("w")).unwrap());
    assert!(!c.remove(&k("w")).unwrap());
    // Parked GET: woken, and timing out on time.
    let c2 = c.clone();
    let key = k("later");
    let t = std::thread::spawn(move || c2.wait_get(&key, Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(50));
    c.set(&k("later"), b"now").unwrap();
    assert_eq!(t.join().unwrap().unwrap(), b"now");
    let start = Instant::now();
    let r = c.wait_get(&k("never"), Duration::from_millis(200));
    let waited = start.elapsed();
    assert!(
        r.is_err(),
        "a parked GET of a key nobody sets succeeded: {r:?}"
    );
    assert!(
        waited >= Duration::from_millis(195),
        "parked GET returned after {waited:?}: {r:?}"
    );
    // Watch.
    let rx = c.watch(&k("a")).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(2)).unwrap(), b"42");
    c.set(&k("a"), b"43").unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(2)).unwrap(), b"43");
    c.unwatch(&k("a")).unwrap();
    // Rank down events from a second ranked link.
    let down = c.watch_rank_down().unwrap();
    // WATCH_RANK_STATE has no reply: a round trip on the same link makes sure the server read
    // the registration before the other link registers and goes down. Without it, a server
    // under load could handle the other link's close first and never report it (timed out
    // below now and then against the reference server).
    let _ = c.get(&k("watch-sync")).unwrap();
    let other = StoreClient::connect(addr, o).unwrap();
    let r2 = other.auto_rank(b"127.0.0.1").unwrap();
    assert_ne!(r2, rank);
    other.close();
    assert_eq!(down.recv_timeout(Duration::from_secs(20)).unwrap(), r2);
}
