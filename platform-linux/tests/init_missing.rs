//! Init with a rank missing, real processes: in a world of 3, rank 1 never starts and rank 2
//! starts 500 ms after rank 0 (which hosts the store). Rank 0 times out first and takes the
//! store down with it; rank 2 must still return `SM_TIMEOUT` naming rank 1 at its own deadline
//! (not `SM_IO_ERROR` for the lost link), for BM and SHM alike.

mod bm_common;

use std::time::{Duration, Instant};

use bm_common::{config, free_url, role, spawn};
use smem_core::ErrorCode;
use smem_linux::runtime::{self, shm};

const TIMEOUT_S: u64 = 3;
/// What a rank may take beyond its own deadline (process start is not counted: the child
/// measures from its init call).
const SLACK: Duration = Duration::from_millis(1500);

/// Child side: init, print `init-result code=<n> ms=<elapsed> msg=<message>`.
fn child(r: &bm_common::Role) {
    let t0 = Instant::now();
    let res = match r.role.as_str() {
        "bm" => runtime::bm_init(&r.url, r.world, 0, &config(r.rank, TIMEOUT_S)),
        "bm-standalone" => {
            let c = runtime::BmConfig {
                start_config_store: false,
                ..config(r.rank, 3 * TIMEOUT_S)
            };
            runtime::bm_init(&r.url, r.world, 0, &c)
        }
        "shm" => {
            let c = shm::ShmConfig {
                init_timeout: Duration::from_secs(TIMEOUT_S),
                ..shm::ShmConfig::default()
            };
            shm::shm_init(&r.url, r.world, r.rank, 0, &c)
        }
        other => panic!("unknown role {other}"),
    };
    let (code, msg) = match &res {
        Ok(()) => (0, String::new()),
        Err(e) => (e.code() as i32, e.message().to_owned()),
    };
    println!(
        "init-result code={code} ms={} msg={msg}",
        t0.elapsed().as_millis()
    );
}

fn run(test: &str, role_name: &str) {
    let url = free_url();
    let r0 = spawn(test, role_name, &url, 3, &[0]);
    std::thread::sleep(Duration::from_millis(500));
    let r2 = spawn(test, role_name, &url, 3, &[2]);
    let limit = Duration::from_secs(TIMEOUT_S) + SLACK + Duration::from_secs(10);
    let mut out = r0.wait_any(limit);
    out.extend(r2.wait_any(limit));
    for (rank, (status, text)) in &out {
        assert!(status.success(), "rank {rank} crashed: {text}");
        let line = text
            .lines()
            .find_map(|l| l.split_once("init-result ").map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("rank {rank} printed no result: {text}"));
        let code: i32 = line
            .strip_prefix("code=")
            .and_then(|l| l.split_whitespace().next())
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("rank {rank}: {line}"));
        let ms: u64 = line
            .split(" ms=")
            .nth(1)
            .and_then(|l| l.split_whitespace().next())
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("rank {rank}: {line}"));
        assert_eq!(code, ErrorCode::Timeout as i32, "rank {rank}: {line}");
        assert!(
            line.contains("missing rank(s) 1;"),
            "rank {rank} names rank 1 (only): {line}"
        );
        let took = Duration::from_millis(ms);
        assert!(
            took >= Duration::from_secs(TIMEOUT_S) - Duration::from_millis(100)
                && took <= Duration::from_secs(TIMEOUT_S) + SLACK,
            "rank {rank} returned at its own deadline: {line}"
        );
        if *rank == 2 {
            assert!(line.contains("went away at +"), "rank 2: {line}");
        }
        println!("rank {rank}: {line}");
    }
}

#[test]
fn bm_init_survivors_time_out_naming_the_missing_rank() {
    if let Some(r) = role() {
        return child(&r);
    }
    run("bm_init_survivors_time_out_naming_the_missing_rank", "bm");
}

#[test]
fn shm_init_survivors_time_out_naming_the_missing_rank() {
    if let Some(r) = role() {
        return child(&r);
    }
    run("shm_init_survivors_time_out_naming_the_missing_rank", "shm");
}

/// The store comes back: a standalone store (here, in the test process) goes away while rank 1
/// waits for rank 0 at init and is started again on the same address; rank 1 connects again,
/// registers again, and both ranks finish init.
#[test]
fn bm_init_survives_a_store_restart() {
    if let Some(r) = role() {
        return child(&r);
    }
    use smem_linux::store::{ServerConfig, StoreServer};
    let url = free_url();
    let addr = bm_common::addr_of(&url);
    let first = StoreServer::start(ServerConfig::new(addr)).expect("store");
    let r1 = spawn(
        "bm_init_survives_a_store_restart",
        "bm-standalone",
        &url,
        2,
        &[1],
    );
    // Rank 1 registered (it waits for rank 0 now).
    let c = bm_common::client(&url);
    c.wait_get(b"smem/bm/rank/1", Duration::from_secs(10))
        .expect("rank 1 registers");
    drop(c);
    first.shutdown();
    std::thread::sleep(Duration::from_millis(700));
    let _second = StoreServer::start(ServerConfig::new(addr)).expect("store again");
    let r0 = spawn(
        "bm_init_survives_a_store_restart",
        "bm-standalone",
        &url,
        2,
        &[0],
    );
    let limit = Duration::from_secs(3 * TIMEOUT_S) + Duration::from_secs(10);
    let mut out = r1.wait_any(limit);
    out.extend(r0.wait_any(limit));
    for (rank, (status, text)) in &out {
        assert!(status.success(), "rank {rank} crashed: {text}");
        assert!(text.contains("init-result code=0 "), "rank {rank}: {text}");
    }
}
