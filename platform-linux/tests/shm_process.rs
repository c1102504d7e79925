//! SHM in one process with other things: `fork` while control operations run (the child
//! starts uninitialised and can init again; the parent keeps working), and BM + SHM sharing
//! one config store (BM initialised first on the same URL).

mod shm_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shm_common::{Role, client, config, fork_and_wait, free_url, role, spawn};
use smem_core::ErrorCode;
use smem_linux::runtime::{self, BmConfig, shm};

const MIB: u64 = 1 << 20;

fn round_trip(h: shm::ShmHandle, base: u64, text: &[u8]) {
    // SAFETY: rank 0's window of a 1-rank object is this process's own mapped window of at
    // least 2 MiB; the object outlives this call.
    let got = unsafe {
        let p = base as *mut u8;
        std::ptr::copy_nonoverlapping(text.as_ptr(), p, text.len());
        std::slice::from_raw_parts(p, text.len()).to_vec()
    };
    assert_eq!(got, text);
    shm::shm_control_barrier(h).expect("barrier");
    let mut recv = vec![0u8; text.len()];
    shm::shm_control_allgather(h, text, &mut recv).expect("allgather");
    assert_eq!(recv, text);
}

#[test]
#[cfg_attr(miri, ignore)]
fn fork_while_control_operations_run() {
    if let Some(r) = role() {
        return fork_rank(&r);
    }
    let url = free_url();
    spawn(
        "fork_while_control_operations_run",
        "fork",
        &url,
        1,
        &[0],
        &[],
    )
    .wait_ok(Duration::from_secs(60));
}

fn fork_rank(r: &Role) {
    shm::shm_init(&r.url, 1, 0, 0, &config(20)).expect("init");
    let (h, base) = shm::shm_create(3, 1, 0, 2 * MIB, shm::DATA_OP_MTE, 0).expect("create");
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                shm::shm_control_barrier(h).expect("busy barrier");
                let mut recv = [0u8; 8];
                shm::shm_control_allgather(h, &n.to_le_bytes(), &mut recv).expect("busy gather");
                assert_eq!(recv, n.to_le_bytes());
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..3 {
        let child_url = free_url();
        fork_and_wait(
            Duration::from_secs(20),
            Duration::from_millis(10),
            "forked child",
            "forked child hung (deadlock after fork?)",
            || {
                // The parent's object is not the child's.
                assert_eq!(
                    shm::shm_control_barrier(h).map_err(|e| e.code()),
                    Err(ErrorCode::NotInitialized)
                );
                shm::shm_init(&child_url, 1, 0, 0, &config(10)).expect("child init");
                let (ch, cbase) =
                    shm::shm_create(3, 1, 0, 2 * MIB, shm::DATA_OP_MTE, 0).expect("child create");
                round_trip(ch, cbase, b"child");
                shm::shm_uninit(0);
            },
        );
    }
    stop.store(true, Ordering::Relaxed);
    let n = busy.join().expect("busy thread");
    assert!(n > 0);
    round_trip(h, base, b"parent");
    shm::shm_uninit(0);
    println!("rank 0 ok");
}

#[test]
#[cfg_attr(miri, ignore)]
fn bm_and_shm_share_one_store() {
    if let Some(r) = role() {
        return shared_rank(&r);
    }
    let url = free_url();
    spawn(
        "bm_and_shm_share_one_store",
        "shared",
        &url,
        2,
        &[0, 1],
        &[],
    )
    .wait_ok(Duration::from_secs(60));
}

fn shared_rank(r: &Role) {
    let (rank, n) = (r.rank, r.world);
    let bm = BmConfig {
        init_timeout: Duration::from_secs(20),
        create_timeout: Duration::from_secs(20),
        control_timeout: Duration::from_secs(20),
        rank_id: rank as u16,
        ..BmConfig::default()
    };
    runtime::bm_init(&r.url, n, 0, &bm).expect("bm init");
    // SHM on the same store must use the BM rank.
    let e = shm::shm_init(&r.url, n, 1 - rank, 0, &config(20)).expect_err("other rank");
    assert_eq!(e.code(), ErrorCode::InvalidParam, "{e}");
    shm::shm_init(&r.url, n, rank, 0, &config(20)).expect("shm init on the BM store");
    let (h, _) = shm::shm_create(0, n, rank, 2 * MIB, shm::DATA_OP_MTE, 0).expect("create");
    let mut recv = [0u8; 2];
    shm::shm_control_allgather(h, &[rank as u8 + 1], &mut recv).expect("allgather");
    assert_eq!(recv, [1, 2]);
    // BM works beside it.
    let b = runtime::bm_create(0, n, 1, 2 * MIB, 0, 0).expect("bm create");
    runtime::bm_join(b, 0).expect("bm join");
    shm::shm_control_barrier(h).expect("barrier");
    runtime::bm_destroy(b).expect("bm destroy");
    shm::shm_control_barrier(h).expect("barrier");
    shm::shm_uninit(0);
    if rank == 0 {
        // Host of the store: last to go.
        let c = client(&r.url);
        let until = Instant::now() + Duration::from_secs(20);
        while c.get(b"smem/bm/rank/1").unwrap().is_some() {
            assert!(Instant::now() < until, "rank 1 did not uninit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    runtime::bm_uninit(0);
    println!("rank {rank} ok");
}

/// `startConfigStore = false`: no rank hosts the store; a standalone server (here, the test
/// process) does. The instance keys are gone after every member destroyed the object.
#[test]
#[cfg_attr(miri, ignore)]
fn standalone_store() {
    if let Some(r) = role() {
        return standalone_rank(&r);
    }
    let url = free_url();
    let addr = url.trim_start_matches("tcp://").parse().expect("address");
    let server = smem_linux::store::StoreServer::start(smem_linux::store::ServerConfig::new(addr))
        .expect("standalone store");
    spawn("standalone_store", "standalone", &url, 3, &[0, 1, 2], &[])
        .wait_ok(Duration::from_secs(60));
    server.shutdown();
}

fn standalone_rank(r: &Role) {
    let (rank, n) = (r.rank, r.world);
    let mut cfg = config(20);
    cfg.start_config_store = false;
    shm::shm_init(&r.url, n, rank, 0, &cfg).expect("init");
    let (h, _) = shm::shm_create(7, n, rank, 2 * MIB, shm::DATA_OP_SDMA, 0).expect("create");
    let mut recv = [0u8; 3];
    shm::shm_control_allgather(h, &[rank as u8], &mut recv).expect("allgather");
    assert_eq!(recv, [0, 1, 2]);
    shm::shm_control_barrier(h).expect("barrier");
    shm::shm_destroy(h, 0).expect("destroy");
    let c = client(&r.url);
    let until = Instant::now() + Duration::from_secs(20);
    while !c.prefix(b"smem/shm/7.").unwrap().is_empty() {
        assert!(Instant::now() < until, "instance keys left behind");
        std::thread::sleep(Duration::from_millis(20));
    }
    shm::shm_uninit(0);
    println!("rank {rank} ok");
}

/// Members passing different `symmetricSize`s get a clear `SM_INVALID_PARAM` from create,
/// quickly (not the create timeout); the id can then be created again with matching sizes.
#[test]
#[cfg_attr(miri, ignore)]
fn size_mismatch_is_refused() {
    if let Some(r) = role() {
        return mismatch_rank(&r);
    }
    let url = free_url();
    spawn(
        "size_mismatch_is_refused",
        "mismatch",
        &url,
        2,
        &[0, 1],
        &[],
    )
    .wait_ok(Duration::from_secs(60));
}

fn mismatch_rank(r: &Role) {
    let (rank, n) = (r.rank, r.world);
    shm::shm_init(&r.url, n, rank, 0, &config(20)).expect("init");
    let size = 2 * MIB * (u64::from(rank) + 1);
    let start = Instant::now();
    let e = shm::shm_create(4, n, rank, size, shm::DATA_OP_MTE, 0).expect_err("sizes differ");
    assert_eq!(e.code(), ErrorCode::InvalidParam, "{e}");
    assert!(e.message().contains("different sizes"), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    let (h, _) = shm::shm_create(4, n, rank, 2 * MIB, shm::DATA_OP_MTE, 0).expect("same sizes");
    shm::shm_control_barrier(h).expect("barrier");
    shm::shm_destroy(h, 0).expect("destroy");
    if rank == 0 {
        let c = client(&r.url);
        let until = Instant::now() + Duration::from_secs(20);
        while c.prefix(b"smem/shm/rank/").unwrap().len() > 1 {
            assert!(Instant::now() < until, "rank 1 did not uninit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    shm::shm_uninit(0);
    println!("rank {rank} ok");
}

/// A registration key left behind by a dead process (standalone store) does not count as a
/// rank: init waits for a live link and names the rank when the timeout passes.
#[test]
#[cfg_attr(miri, ignore)]
fn stale_registration_is_not_a_rank() {
    if let Some(r) = role() {
        let mut cfg = config(2);
        cfg.start_config_store = false;
        let start = Instant::now();
        let e = shm::shm_init(&r.url, 2, 0, 0, &cfg).expect_err("rank 1 is stale");
        assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
        assert!(
            e.message()
                .contains("rank(s) 1 registered but hold no live"),
            "{e}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        println!("rank 0 ok");
        return;
    }
    let url = free_url();
    let addr = url.trim_start_matches("tcp://").parse().expect("address");
    let server = smem_linux::store::StoreServer::start(smem_linux::store::ServerConfig::new(addr))
        .expect("standalone store");
    let c = client(&url);
    c.set(b"smem/shm/rank/1", b"gone 1").expect("stale key");
    spawn(
        "stale_registration_is_not_a_rank",
        "stale",
        &url,
        2,
        &[0],
        &[],
    )
    .wait_ok(Duration::from_secs(60));
    drop(c);
    server.shutdown();
}

/// A member whose process died after init (rankSize == worldSize, so every world rank is a
/// member) fails the others' collective create at once with `SM_IO_ERROR` naming it, instead
/// of after shmCreateTimeout.
#[test]
#[cfg_attr(miri, ignore)]
fn dead_member_fails_create_fast() {
    if let Some(r) = role() {
        return dead_member_rank(&r);
    }
    let url = free_url();
    spawn(
        "dead_member_fails_create_fast",
        "dead",
        &url,
        3,
        &[0, 1, 2],
        &[],
    )
    .wait_ok(Duration::from_secs(60));
}

fn dead_member_rank(r: &Role) {
    let (rank, n) = (r.rank, r.world);
    shm::shm_init(&r.url, n, rank, 0, &config(20)).expect("init");
    let c = client(&r.url);
    if rank == 2 {
        // Once the others' init saw it alive, it dies without uninit: its store link drops.
        for other in 0..2 {
            c.wait_get(
                format!("test/inited/{other}").as_bytes(),
                Duration::from_secs(20),
            )
            .expect("the others finish init");
        }
        println!("rank {rank} ok");
        std::process::exit(0);
    }
    c.set(format!("test/inited/{rank}").as_bytes(), b"1")
        .expect("say init is done");
    // Whether rank 2 is already gone or dies while the others wait in create, it can never
    // take part: the waits notice it from the store's rank-down report.
    let start = Instant::now();
    let e = shm::shm_create(6, n, rank, 2 * MIB, shm::DATA_OP_MTE, 0).expect_err("rank 2 is dead");
    assert_eq!(e.code(), ErrorCode::IoError, "{e}");
    assert!(e.message().contains("[2]"), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "noticed only after {:?} (create timeout 20 s): {e}",
        start.elapsed()
    );
    if rank == 0 {
        // The store host goes last.
        let until = Instant::now() + Duration::from_secs(20);
        while c
            .prefix(b"smem/shm/rank/")
            .unwrap()
            .iter()
            .any(|(k, _)| k.ends_with(b"/1"))
        {
            assert!(Instant::now() < until, "rank 1 did not uninit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    shm::shm_uninit(0);
    println!("rank {rank} ok");
}
