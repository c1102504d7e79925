//! SHM runtime with ranks as real processes (this test binary run again as each rank):
//! lifecycle, windows shared across processes, barrier ordering, allgather bytes, extra
//! context, reach, error cases, a bounded store over 10,000 barriers, a rank dying inside a
//! barrier, timeouts naming the missing ranks, ranks on "different hosts".

mod shm_common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shm_common::{Role, client, config, free_url, role, spawn};
use smem_core::ErrorCode;
use smem_linux::runtime::shm::{self, DATA_OP_MTE, DATA_OP_SDMA, ShmHandle};

const MIB: u64 = 1 << 20;
const DEADLINE: Duration = Duration::from_secs(60);

fn code<T: std::fmt::Debug>(r: smem_linux::Result<T>) -> ErrorCode {
    r.expect_err("expected an error").code()
}

/// Rank `r`'s window.
fn window(base: u64, size: u64, r: u32) -> *mut u8 {
    (base + u64::from(r) * size) as *mut u8
}

/// Writes `data` at `off` of rank `r`'s window.
fn store_bytes(base: u64, size: u64, r: u32, off: u64, data: &[u8]) {
    assert!(off + data.len() as u64 <= size);
    // SAFETY: the window of `r` is mapped read/write for `size` bytes while the object lives
    // (shm_create returned after every same-host window was mapped); the range is inside it.
    unsafe {
        std::ptr::copy_nonoverlapping(
            data.as_ptr(),
            window(base, size, r).add(off as usize),
            data.len(),
        )
    }
}

/// Reads `len` bytes at `off` of rank `r`'s window.
fn load_bytes(base: u64, size: u64, r: u32, off: u64, len: usize) -> Vec<u8> {
    assert!(off + len as u64 <= size);
    let mut v = vec![0; len];
    // SAFETY: as in `store_bytes`.
    unsafe {
        std::ptr::copy_nonoverlapping(window(base, size, r).add(off as usize), v.as_mut_ptr(), len)
    }
    v
}

/// A counter at `off` of rank `r`'s window, shared by every process mapping it.
fn counter(base: u64, size: u64, r: u32, off: u64) -> &'static AtomicU64 {
    assert!(off % 8 == 0 && off + 8 <= size);
    // SAFETY: 8-aligned, inside a mapped shared window that outlives the uses in these tests
    // (the object is destroyed only after the last use); all accesses are atomic.
    unsafe { &*window(base, size, r).add(off as usize).cast::<AtomicU64>() }
}

fn pattern(from: u32, to: u32, i: usize) -> u8 {
    (from as u8)
        .wrapping_mul(37)
        .wrapping_add((to as u8).wrapping_mul(11))
        .wrapping_add(i as u8)
        .wrapping_add(1)
}

#[test]
#[cfg_attr(miri, ignore)]
fn four_ranks_whole_lifecycle() {
    if let Some(r) = role() {
        return lifecycle_rank(&r);
    }
    let url = free_url();
    spawn(
        "four_ranks_whole_lifecycle",
        "life",
        &url,
        4,
        &[0, 1, 2, 3],
        &[],
    )
    .wait_ok(DEADLINE);
}

fn lifecycle_rank(role: &Role) {
    let (rank, n) = (role.rank, role.world);
    shm::shm_init(&role.url, n, rank, 0, &config(20)).expect("init");
    // Identical second init is fine; different arguments are refused.
    shm::shm_init(&role.url, n, rank, 0, &config(20)).expect("same init");
    assert_eq!(
        code(shm::shm_init(&role.url, n, rank, 1, &config(20))),
        ErrorCode::RepeatCall
    );
    assert_eq!(
        shm::shm_query_support_data_operation(),
        DATA_OP_MTE | DATA_OP_SDMA
    );
    // Argument errors (local, no collective started).
    let op = DATA_OP_MTE;
    assert_eq!(
        code(shm::shm_create(64, n, rank, 2 * MIB, op, 0)),
        ErrorCode::InvalidParam
    );
    assert_eq!(
        code(shm::shm_create(1, n, rank, 3 * MIB, op, 0)),
        ErrorCode::InvalidParam
    );
    assert_eq!(
        code(shm::shm_create(1, n, rank, 0, op, 0)),
        ErrorCode::InvalidParam
    );
    assert_eq!(
        code(shm::shm_create(1, n, n, 2 * MIB, op, 0)),
        ErrorCode::InvalidParam
    );
    assert_eq!(
        code(shm::shm_create(1, n + 1, rank, 2 * MIB, op, 0)),
        ErrorCode::InvalidParam
    );
    assert_eq!(
        code(shm::shm_create(1, n, rank, 2 * MIB, 0, 0)),
        ErrorCode::InvalidParam
    );
    assert_eq!(
        code(shm::shm_create(1, n, rank, 2 * MIB, 8, 0)),
        ErrorCode::InvalidParam
    );

    let size = 4 * MIB;
    // Twice with the same id: the second instance must not see keys of the first.
    for round in 0..2u8 {
        let (h, base) = shm::shm_create(1, n, rank, size, op | DATA_OP_SDMA, 0).expect("create");
        assert_eq!(
            code(shm::shm_create(1, n, rank, size, op, 0)),
            ErrorCode::DuplicatedObject
        );
        assert_eq!(shm::shm_global_rank(h).unwrap(), rank);
        assert_eq!(shm::shm_global_rank_size(h).unwrap(), n);
        assert_eq!(base % (2 * MIB), 0);
        check_object(h, base, size, rank, n, round);
        shm::shm_destroy(h, 0).expect("destroy");
        assert_eq!(code(shm::shm_destroy(h, 0)), ErrorCode::ObjectNotExists);
        assert_eq!(
            code(shm::shm_control_barrier(h)),
            ErrorCode::ObjectNotExists
        );
    }
    if rank == 0 {
        // Every member destroyed both instances: their keys are gone (the last destroyer
        // removes them; wait for it briefly).
        let c = client(&role.url);
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let keys: Vec<String> = c
                .prefix(b"smem/shm/1.")
                .unwrap()
                .into_iter()
                .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
                .collect();
            if keys.is_empty() {
                break;
            }
            assert!(Instant::now() < until, "keys left behind: {keys:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Wait until every other rank unregistered, then shut the store down.
        let until = Instant::now() + Duration::from_secs(20);
        while c.prefix(b"smem/shm/rank/").unwrap().len() > 1 {
            assert!(Instant::now() < until, "ranks did not uninit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    shm::shm_uninit(0);
    shm::shm_uninit(0);
    assert_eq!(
        code(shm::shm_create(1, n, rank, size, op, 0)),
        ErrorCode::NotInitialized
    );
    println!("rank {rank} ok");
}

fn check_object(h: ShmHandle, base: u64, size: u64, rank: u32, n: u32, round: u8) {
    // Every rank got the same base.
    let mut all = vec![0u8; 8 * n as usize];
    shm::shm_control_allgather(h, &base.to_le_bytes(), &mut all).expect("allgather base");
    for r in 0..n as usize {
        assert_eq!(
            &all[r * 8..r * 8 + 8],
            &base.to_le_bytes(),
            "base of rank {r}"
        );
    }
    // A fresh instance has no context.
    assert_eq!(
        code(shm::shm_get_extra_context(h)),
        ErrorCode::ObjectNotExists
    );
    shm::shm_control_barrier(h).expect("barrier");

    // Cross-process stores: rank r writes a slot in every window (its own included).
    for to in 0..n {
        let data: Vec<u8> = (0..4096).map(|i| pattern(rank, to, i) ^ round).collect();
        store_bytes(base, size, to, MIB + u64::from(rank) * 4096, &data);
    }
    // The last byte of each window is usable.
    store_bytes(base, size, rank, size - 1, &[0xA5 ^ rank as u8]);
    shm::shm_control_barrier(h).expect("barrier after stores");
    for from in 0..n {
        let got = load_bytes(base, size, rank, MIB + u64::from(from) * 4096, 4096);
        let want: Vec<u8> = (0..4096).map(|i| pattern(from, rank, i) ^ round).collect();
        assert!(got == want, "rank {from}'s store into my window");
        assert_eq!(
            load_bytes(base, size, from, size - 1, 1),
            vec![0xA5 ^ from as u8]
        );
    }

    // Barrier ordering: nobody leaves barrier k before all entered it.
    let c0 = counter(base, size, 0, 0);
    let start = c0.load(Ordering::SeqCst);
    shm::shm_control_barrier(h).expect("barrier");
    let rounds = 50u64;
    for k in 1..=rounds {
        c0.fetch_add(1, Ordering::SeqCst);
        shm::shm_control_barrier(h).expect("ordering barrier");
        let v = c0.load(Ordering::SeqCst) - start;
        let n64 = u64::from(n);
        assert!(
            v >= n64 * k && v <= n64 * (k + 1),
            "barrier {k}: counter {v} (a rank left before all entered)"
        );
    }

    // Allgather of 64 B and 64 KiB.
    for len in [64usize, 65_536] {
        let send: Vec<u8> = (0..len).map(|i| pattern(rank, 99, i) ^ round).collect();
        let mut recv = vec![0u8; len * n as usize];
        shm::shm_control_allgather(h, &send, &mut recv).expect("allgather");
        for r in 0..n {
            let want: Vec<u8> = (0..len).map(|i| pattern(r, 99, i) ^ round).collect();
            assert!(
                recv[r as usize * len..(r as usize + 1) * len] == want[..],
                "allgather {len}: rank {r}'s bytes"
            );
        }
        // recvSize != sendSize * rankSize: refused, recv untouched.
        let mut short = vec![7u8; len * n as usize - 1];
        assert_eq!(
            code(shm::shm_control_allgather(h, &send, &mut short)),
            ErrorCode::InvalidParam
        );
        assert!(short.iter().all(|&b| b == 7));
    }
    let mut big = vec![0u8; 65_537 * n as usize];
    assert_eq!(
        code(shm::shm_control_allgather(h, &vec![1; 65_537], &mut big)),
        ErrorCode::InvalidParam
    );
    assert_eq!(
        code(shm::shm_control_allgather(h, &[], &mut [])),
        ErrorCode::InvalidParam
    );

    // Extra context: rank 0 sets it, everybody reads it.
    assert_eq!(
        code(shm::shm_set_extra_context(h, &[])),
        ErrorCode::InvalidParam
    );
    assert_eq!(
        code(shm::shm_set_extra_context(h, &vec![0; 65_537])),
        ErrorCode::InvalidParam
    );
    let ctx: Vec<u8> = (0..1000).map(|i| (i as u8) ^ round).collect();
    if rank == 0 {
        shm::shm_set_extra_context(h, &ctx).expect("set context");
    }
    shm::shm_control_barrier(h).expect("barrier after context");
    assert_eq!(shm::shm_get_extra_context(h).expect("get context"), ctx);

    // Reach: every member is on this host; remoteRank is checked.
    for r in 0..n {
        assert_eq!(
            shm::shm_topology_can_reach(h, r).unwrap(),
            DATA_OP_MTE | DATA_OP_SDMA
        );
    }
    assert_eq!(
        code(shm::shm_topology_can_reach(h, n)),
        ErrorCode::InvalidParam
    );
    shm::shm_control_barrier(h).expect("last barrier");
}

#[test]
#[cfg_attr(miri, ignore)]
fn ten_thousand_barriers_keep_the_store_bounded() {
    if let Some(r) = role() {
        return many_barriers_rank(&r);
    }
    let url = free_url();
    let done = spawn(
        "ten_thousand_barriers_keep_the_store_bounded",
        "many",
        &url,
        4,
        &[0, 1, 2, 3],
        &[],
    )
    .wait_ok(Duration::from_secs(120));
    println!("{}", done[0].stdout);
}

fn many_barriers_rank(role: &Role) {
    let (rank, n) = (role.rank, role.world);
    shm::shm_init(&role.url, n, rank, 0, &config(30)).expect("init");
    let (h, _) = shm::shm_create(5, n, rank, 2 * MIB, DATA_OP_MTE, 0).expect("create");
    let c = (rank == 0).then(|| client(&role.url));
    let mut max_keys = 0;
    let start = Instant::now();
    for i in 0..10_000u32 {
        shm::shm_control_barrier(h).expect("barrier");
        if let Some(c) = &c {
            if i % 500 == 0 || i == 9_999 {
                let keys = c.prefix(b"").expect("prefix").len();
                max_keys = max_keys.max(keys);
                // 4 ranks + epoch + open + the init rendezvous (2) + the object's agreement and
                // window keys (17), at most 8 control keys, at most 16 + 1 queued or in-flight
                // removals per process.
                assert!(keys <= 45, "store holds {keys} keys after {i} barriers");
            }
        }
    }
    if rank == 0 {
        println!(
            "10000 barriers in {:?}; at most {max_keys} keys in the store",
            start.elapsed()
        );
    }
    shm::shm_control_barrier(h).expect("barrier");
    shm::shm_destroy(h, 0).expect("destroy");
    if let Some(c) = &c {
        let until = Instant::now() + Duration::from_secs(20);
        while c.prefix(b"smem/shm/rank/").unwrap().len() > 1 {
            assert!(Instant::now() < until, "ranks did not uninit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    shm::shm_uninit(0);
    println!("rank {rank} ok");
}

/// Rank 3 dies (SIGKILL) while ranks 0-2 wait in a barrier / an allgather: they fail with
/// `SM_IO_ERROR` or `SM_TIMEOUT` within the control timeout, never hang.
#[test]
#[cfg_attr(miri, ignore)]
fn rank_dying_inside_a_barrier_fails_the_others_in_time() {
    if let Some(r) = role() {
        return dying_rank(&r);
    }
    for op in ["barrier", "allgather"] {
        let url = free_url();
        let done = spawn(
            "rank_dying_inside_a_barrier_fails_the_others_in_time",
            "dying",
            &url,
            4,
            &[0, 1, 2, 3],
            &[(u32::MAX, "SHM_TEST_OP", op)],
        )
        .finish(Duration::from_secs(60));
        for f in &done {
            if f.rank == 3 {
                assert!(!f.status.success(), "rank 3 should have been killed");
            } else {
                for line in f.stdout.lines().filter(|l| l.contains("failed in")) {
                    println!("{op}: {line}");
                }
                assert!(
                    f.status.success() && f.stdout.contains(&format!("rank {} ok", f.rank)),
                    "{op}: rank {}: {}\n{}",
                    f.rank,
                    f.stdout,
                    f.stderr
                );
            }
        }
    }
}

fn dying_rank(role: &Role) {
    let (rank, n) = (role.rank, role.world);
    let control = 8;
    shm::shm_init(&role.url, n, rank, 0, &config(control)).expect("init");
    let (h, _) = shm::shm_create(2, n, rank, 2 * MIB, DATA_OP_MTE, 0).expect("create");
    shm::shm_control_barrier(h).expect("first barrier");
    if rank == 3 {
        // Dies without entering: SIGKILL, no unwinding, no goodbye to the store.
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: plain syscalls on this process.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        unreachable!();
    }
    let start = Instant::now();
    let r = if std::env::var("SHM_TEST_OP").as_deref() == Ok("allgather") {
        let mut recv = vec![0u8; 64 * n as usize];
        shm::shm_control_allgather(h, &[rank as u8; 64], &mut recv)
    } else {
        shm::shm_control_barrier(h)
    };
    let took = start.elapsed();
    let e = r.expect_err("a member is dead");
    assert!(
        matches!(e.code(), ErrorCode::IoError | ErrorCode::Timeout),
        "unexpected error {e}"
    );
    assert!(
        took <= Duration::from_secs(control) + Duration::from_secs(2),
        "took {took:?}"
    );
    println!("rank {rank} failed in {took:?} with {e}");
    // Rank 0 hosts the store: let the others see their error first.
    if rank == 0 {
        std::thread::sleep(Duration::from_millis(500));
    }
    shm::shm_destroy(h, 0).expect("destroy");
    shm::shm_uninit(0);
    println!("rank {rank} ok");
}

/// Init names the ranks that never came; create times out when a member never calls it.
#[test]
#[cfg_attr(miri, ignore)]
fn timeouts_name_what_is_missing() {
    if let Some(r) = role() {
        return timeout_rank(&r);
    }
    // World of 3, rank 2 never starts.
    let url = free_url();
    spawn(
        "timeouts_name_what_is_missing",
        "init",
        &url,
        3,
        &[0, 1],
        &[],
    )
    .wait_ok(DEADLINE);
    // World of 2, rank 1 never creates.
    let url = free_url();
    spawn(
        "timeouts_name_what_is_missing",
        "create",
        &url,
        2,
        &[0, 1],
        &[],
    )
    .wait_ok(DEADLINE);
    // World of 2, rank 1 (alive) never enters the barrier.
    let url = free_url();
    spawn(
        "timeouts_name_what_is_missing",
        "control",
        &url,
        2,
        &[0, 1],
        &[],
    )
    .wait_ok(DEADLINE);
}

fn timeout_rank(role: &Role) {
    let (rank, n) = (role.rank, role.world);
    let mut cfg = config(2);
    if role.role == "init" {
        // Rank 0 hosts the store and gives up (taking the store down) after rank 1 did.
        let secs = if rank == 0 { 5 } else { 2 };
        cfg.init_timeout = Duration::from_secs(secs);
        let start = Instant::now();
        let e = shm::shm_init(&role.url, n, rank, 0, &cfg).expect_err("rank 2 is missing");
        assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
        assert!(e.message().contains("missing rank(s) 2"), "{e}");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(secs) && took < Duration::from_secs(secs + 3),
            "{took:?}"
        );
    } else if role.role == "control" {
        cfg.init_timeout = Duration::from_secs(20);
        cfg.create_timeout = Duration::from_secs(20);
        shm::shm_init(&role.url, n, rank, 0, &cfg).expect("init");
        let (h, _) = shm::shm_create(0, n, rank, 2 * MIB, DATA_OP_MTE, 0).expect("create");
        if rank == 0 {
            let start = Instant::now();
            let e = shm::shm_control_barrier(h).expect_err("rank 1 never enters");
            let took = start.elapsed();
            assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
            assert!(e.message().contains("1 of 2 members arrived"), "{e}");
            assert!(
                took >= Duration::from_secs(2) && took < Duration::from_secs(5),
                "{took:?}"
            );
            let mut recv = [0u8; 2];
            let e = shm::shm_control_allgather(h, &[1], &mut recv).expect_err("nor the allgather");
            assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
            client(&role.url).set(b"test/done", b"1").unwrap();
        } else {
            client(&role.url)
                .wait_get(b"test/done", Duration::from_secs(20))
                .unwrap();
        }
        shm::shm_destroy(h, 0).expect("destroy");
        shm::shm_uninit(0);
    } else {
        cfg.init_timeout = Duration::from_secs(20);
        shm::shm_init(&role.url, n, rank, 0, &cfg).expect("init");
        if rank == 0 {
            let start = Instant::now();
            let e = shm::shm_create(0, n, rank, 2 * MIB, DATA_OP_MTE, 0)
                .expect_err("rank 1 never creates");
            assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
            let took = start.elapsed();
            assert!(
                took >= Duration::from_secs(2) && took < Duration::from_secs(5),
                "{took:?}"
            );
            client(&role.url).set(b"test/done", b"1").unwrap();
        } else {
            client(&role.url)
                .wait_get(b"test/done", Duration::from_secs(20))
                .unwrap();
        }
        shm::shm_uninit(0);
    }
    println!("rank {rank} ok");
}

/// Ranks that see different host identities (`SMEM_HOST_ID`) do not map each other's windows
/// and report no engine reaching each other; control operations still work.
#[test]
#[cfg_attr(miri, ignore)]
fn ranks_on_different_hosts() {
    if let Some(r) = role() {
        return hosts_rank(&r);
    }
    let url = free_url();
    spawn(
        "ranks_on_different_hosts",
        "hosts",
        &url,
        3,
        &[0, 1, 2],
        &[
            (0, "SMEM_HOST_ID", "a"),
            (1, "SMEM_HOST_ID", "a"),
            (2, "SMEM_HOST_ID", "b"),
        ],
    )
    .wait_ok(DEADLINE);
}

fn hosts_rank(role: &Role) {
    let (rank, n) = (role.rank, role.world);
    shm::shm_init(&role.url, n, rank, 0, &config(20)).expect("init");
    let size = 2 * MIB;
    let (h, base) = shm::shm_create(9, n, rank, size, DATA_OP_MTE, 0).expect("create");
    let host = |r: u32| if r == 2 { 'b' } else { 'a' };
    for r in 0..n {
        let want = if host(r) == host(rank) {
            DATA_OP_MTE | DATA_OP_SDMA
        } else {
            0
        };
        assert_eq!(
            shm::shm_topology_can_reach(h, r).unwrap(),
            want,
            "reach {r}"
        );
    }
    // Same-host windows are shared.
    if host(rank) == 'a' {
        store_bytes(
            base,
            size,
            0,
            64 * (u64::from(rank) + 1),
            &[rank as u8 + 1; 8],
        );
    }
    shm::shm_control_barrier(h).expect("barrier");
    if host(rank) == 'a' {
        assert_eq!(load_bytes(base, size, 0, 64 * 2, 8), vec![2u8; 8]);
    }
    let mut recv = vec![0u8; 3];
    shm::shm_control_allgather(h, &[rank as u8 + 10], &mut recv).expect("allgather");
    assert_eq!(recv, vec![10, 11, 12]);
    shm::shm_control_barrier(h).expect("barrier");
    shm::shm_destroy(h, 0).expect("destroy");
    if rank == 0 {
        let c = client(&role.url);
        let until = Instant::now() + Duration::from_secs(20);
        while c.prefix(b"smem/shm/rank/").unwrap().len() > 1 {
            assert!(Instant::now() < until, "ranks did not uninit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    shm::shm_uninit(0);
    println!("rank {rank} ok");
}
