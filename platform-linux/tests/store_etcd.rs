//! The etcd store backend (SPEC 6.4) against a real single-member etcd: the operations of
//! SPEC 5.4 through `StoreClient`, ranks on leases, generations, prefixes.

mod etcd_common;

use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use etcd_common::Cluster;
use smem_core::ErrorCode;
use smem_linux::store::{CasResult, ClientOptions, StoreClient, StoreTarget};

fn opts() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(20),
        op_timeout: Duration::from_secs(10),
        tls: None,
        ..ClientOptions::default()
    }
}

fn connect(url: &str, o: ClientOptions) -> StoreClient {
    StoreClient::connect_to(StoreTarget::parse(url).unwrap(), o).expect("connect to etcd")
}

#[test]
fn operations_match_the_tcp_store() {
    let Some(cluster) = Cluster::start(1, "ops") else {
        return;
    };
    let url = cluster.url("/ops/");
    let c = connect(&url, opts());
    assert!(c.is_etcd());
    assert_eq!(c.get(b"k").unwrap(), None);
    c.set(b"k", b"v1").unwrap();
    assert_eq!(c.get(b"k").unwrap().as_deref(), Some(&b"v1"[..]));
    // Empty keys and binary values are data like any other.
    c.set(b"", b"\x00\xff").unwrap();
    assert_eq!(c.get(b"").unwrap().as_deref(), Some(&b"\x00\xff"[..]));
    assert!(c.remove(b"k").unwrap());
    assert!(!c.remove(b"k").unwrap());
    // ADD: absent stores the increment; a non-number and overflow are refused.
    assert_eq!(c.add(b"n", 5).unwrap(), 5);
    assert_eq!(c.add(b"n", -7).unwrap(), -2);
    c.set(b"s", b"abc").unwrap();
    assert_eq!(c.add(b"s", 1).unwrap_err().code(), ErrorCode::StoreRejected);
    c.set(b"big", i64::MAX.to_string().as_bytes()).unwrap();
    assert_eq!(
        c.add(b"big", 1).unwrap_err().code(),
        ErrorCode::StoreRejected
    );
    // APPEND returns the new length.
    assert_eq!(c.append(b"log", b"ab;").unwrap(), 3);
    assert_eq!(c.append(b"log", b"cd;").unwrap(), 6);
    assert_eq!(c.get(b"log").unwrap().as_deref(), Some(&b"ab;cd;"[..]));
    // CAS: absent -> created; equal -> swapped; else the current value.
    assert_eq!(c.cas(b"c", b"x", b"1").unwrap(), CasResult::Swapped);
    assert_eq!(c.cas(b"c", b"1", b"2").unwrap(), CasResult::Swapped);
    assert_eq!(
        c.cas(b"c", b"1", b"3").unwrap(),
        CasResult::Mismatch(b"2".to_vec())
    );
    // WRITE: zero-filled extension.
    c.write(b"w", 4, b"xy").unwrap();
    assert_eq!(c.get(b"w").unwrap().as_deref(), Some(&b"\0\0\0\0xy"[..]));
    c.write(b"w", 1, b"z").unwrap();
    assert_eq!(c.get(b"w").unwrap().as_deref(), Some(&b"\0z\0\0xy"[..]));
    // PREFIX: full keys, our own only.
    c.set(b"p/a", b"1").unwrap();
    c.set(b"p/b", b"2").unwrap();
    let mut got = c.prefix(b"p/").unwrap();
    got.sort();
    assert_eq!(
        got,
        vec![
            (b"p/a".to_vec(), b"1".to_vec()),
            (b"p/b".to_vec(), b"2".to_vec())
        ]
    );
    assert!(c.prefix(b"nothing/").unwrap().is_empty());
    // GET with wait: a miss times out, a later SET answers a waiting GET.
    let e = c
        .wait_get(b"later", Duration::from_millis(300))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Timeout);
    let c2 = c.clone();
    let waiter = std::thread::spawn(move || c2.wait_get(b"later", Duration::from_secs(20)));
    std::thread::sleep(Duration::from_millis(200));
    c.set(b"later", b"here").unwrap();
    assert_eq!(waiter.join().unwrap().unwrap(), b"here");
    c.close();
    assert!(!c.is_connected());
    assert_eq!(c.get(b"k").unwrap_err().code(), ErrorCode::IoError);
}

#[test]
fn watch_delivers_values_and_appended_pieces() {
    let Some(cluster) = Cluster::start(1, "watch") else {
        return;
    };
    let url = cluster.url("/w/");
    let c = connect(&url, opts());
    c.set(b"log", b"a;").unwrap();
    let rx = c.watch(b"log").unwrap();
    let t = Duration::from_secs(10);
    // The current value first, then what each wake carries.
    assert_eq!(rx.recv_timeout(t).unwrap(), b"a;");
    c.append(b"log", b"b;").unwrap();
    assert_eq!(rx.recv_timeout(t).unwrap(), b"b;");
    c.set(b"log", b"a;b;").unwrap(); // same value: no wake
    c.write(b"log", 0, b"A").unwrap(); // WRITE: no wake
    c.set(b"log", b"new").unwrap();
    assert_eq!(rx.recv_timeout(t).unwrap(), b"new");
    assert_eq!(c.add(b"log2", 1).unwrap(), 1);
    // Another client's writes wake us too.
    let other = connect(&url, opts());
    other.append(b"log", b"+x").unwrap();
    assert_eq!(rx.recv_timeout(t).unwrap(), b"+x");
    // A second watch replaces the first receiver; unwatch disconnects.
    let rx2 = c.watch(b"log").unwrap();
    assert_eq!(rx2.recv_timeout(t).unwrap(), b"new+x");
    assert!(matches!(
        rx.recv_timeout(t),
        Err(RecvTimeoutError::Disconnected)
    ));
    c.unwatch(b"log").unwrap();
    assert!(matches!(
        rx2.recv_timeout(t),
        Err(RecvTimeoutError::Disconnected)
    ));
}

#[test]
fn ranks_live_on_leases() {
    let Some(cluster) = Cluster::start(1, "ranks") else {
        return;
    };
    let url = cluster.url("/r/");
    let ranked = |rank: Option<u32>, ws: u32| ClientOptions {
        rank,
        world_size: Some(ws),
        ..opts()
    };
    let r0 = connect(&url, ranked(Some(0), 3));
    // A held rank is refused; a different world size too.
    let e =
        StoreClient::connect_to(StoreTarget::parse(&url).unwrap(), ranked(Some(0), 3)).unwrap_err();
    assert_eq!(e.code(), ErrorCode::StoreRejected, "{e}");
    let e =
        StoreClient::connect_to(StoreTarget::parse(&url).unwrap(), ranked(None, 4)).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidParam, "{e}");
    // AutoRanking hands out the free ranks, then refuses.
    let a = connect(&url, ranked(None, 3));
    let b = connect(&url, ranked(None, 3));
    let mut got = vec![a.auto_rank(b"x").unwrap(), b.auto_rank(b"x").unwrap()];
    assert_eq!(
        a.auto_rank(b"x").unwrap(),
        got[0],
        "a client keeps its rank"
    );
    got.sort_unstable();
    assert_eq!(got, [1, 2]);
    let d = connect(&url, ranked(None, 3));
    assert_eq!(
        d.auto_rank(b"x").unwrap_err().code(),
        ErrorCode::LimitExceeded
    );
    assert!(r0.query_alive(1).unwrap() && r0.query_alive(2).unwrap());
    // A rank that goes is reported down, and its rank is free again.
    let down = r0.watch_rank_down().unwrap();
    let gone = if got[0] == a.auto_rank(b"x").unwrap() {
        a
    } else {
        b
    };
    let gone_rank = gone.auto_rank(b"x").unwrap();
    gone.close();
    assert_eq!(
        down.recv_timeout(Duration::from_secs(10)).unwrap(),
        gone_rank
    );
    assert!(!r0.query_alive(gone_rank).unwrap());
    assert_eq!(d.auto_rank(b"x").unwrap(), gone_rank);
}

#[test]
fn a_new_job_never_sees_an_old_jobs_keys_and_prefixes_are_separate() {
    let Some(cluster) = Cluster::start(1, "gen") else {
        return;
    };
    let url = cluster.url("/job/");
    let a = connect(&url, opts());
    a.set(b"stale", b"1").unwrap();
    // While a client of the job lives, others join it and see its keys.
    let b = connect(&url, opts());
    assert_eq!(b.get(b"stale").unwrap().as_deref(), Some(&b"1"[..]));
    // Another prefix is another job.
    let other = connect(&cluster.url("/job2/"), opts());
    assert_eq!(other.get(b"stale").unwrap(), None);
    a.close();
    b.close();
    // Every client of the first job is gone: the next client starts a new generation.
    let c = connect(&url, opts());
    assert_eq!(c.get(b"stale").unwrap(), None);
    assert!(c.prefix(b"").unwrap().is_empty());
    // The default prefix.
    let ports: Vec<String> = cluster
        .members
        .iter()
        .map(|m| format!("127.0.0.1:{}", m.client_port))
        .collect();
    let d = connect(&format!("etcd://{}", ports.join(",")), opts());
    d.set(b"k", b"v").unwrap();
    assert_eq!(d.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

/// 3 members; the leader is SIGKILLed between operations: every later operation succeeds
/// (retried on the other members within its deadline), counters count exactly, and a watch
/// delivers every appended piece across the failover.
#[test]
fn operations_survive_the_leader_being_killed() {
    let Some(mut cluster) = Cluster::start(3, "failover") else {
        return;
    };
    let url = cluster.url("/fo/");
    let c = connect(
        &url,
        ClientOptions {
            op_timeout: Duration::from_secs(30),
            ..opts()
        },
    );
    let rx = c.watch(b"w").unwrap();
    for i in 0..10 {
        assert_eq!(c.add(b"n", 1).unwrap(), i + 1);
    }
    let leader = cluster.wait_leader(Duration::from_secs(30));
    cluster.kill(leader);
    for i in 10..40 {
        assert_eq!(c.add(b"n", 1).unwrap(), i + 1);
        c.append(b"w", b"x").unwrap();
    }
    for _ in 10..40 {
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), b"x");
    }
    assert_eq!(c.get(b"w").unwrap().unwrap().len(), 30);
}
