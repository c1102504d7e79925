//! Same-host collectives (SPEC 6.5) with ranks as real processes: allgather bytes in rank order
//! for uneven groups on simulated hosts (`SMEM_HOST_ID`), and a member killed while the others
//! wait in a barrier (one host, two hosts): every survivor fails within 1 s with `SM_IO_ERROR`
//! naming it, and the next collective is refused.

mod shm_common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shm_common::{Role, client, config, free_url, role, spawn};
use smem_core::ErrorCode;
use smem_linux::runtime::shm::{self, DATA_OP_MTE};

const MIB: u64 = 1 << 20;

/// Nanoseconds since the epoch: comparable between the processes of this machine.
fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}

/// Five ranks on three simulated hosts, interleaved (`a b a c a`): barriers and allgathers of
/// 1 B, 64 B and 64 KiB gather every rank's bytes in rank order, many rounds in a row (slot
/// parities and store generations cycle), then the same on one host.
#[test]
#[cfg_attr(miri, ignore)]
fn uneven_hosts_gather_in_rank_order() {
    if let Some(r) = role() {
        return gather_rank(&r);
    }
    let hosts = ["a", "b", "a", "c", "a"];
    let extra: Vec<(u32, &str, &str)> = (0..5u32)
        .map(|r| (r, "SMEM_HOST_ID", hosts[r as usize]))
        .collect();
    let url = free_url();
    spawn(
        "uneven_hosts_gather_in_rank_order",
        "gather",
        &url,
        5,
        &[0, 1, 2, 3, 4],
        &extra,
    )
    .wait_ok(Duration::from_secs(120));
    let url = free_url();
    spawn(
        "uneven_hosts_gather_in_rank_order",
        "gather",
        &url,
        3,
        &[0, 1, 2],
        &[],
    )
    .wait_ok(Duration::from_secs(120));
}

fn gather_rank(role: &Role) {
    let (rank, n) = (role.rank, role.world);
    shm::shm_init(&role.url, n, rank, 0, &config(30)).expect("init");
    let (h, _) = shm::shm_create(3, n, rank, 2 * MIB, DATA_OP_MTE, 0).expect("create");
    for round in 0..40u32 {
        let len = [1usize, 64, 65_536][round as usize % 3];
        let fill = |r: u32, i: usize| (r as u8).wrapping_mul(31) ^ (round as u8) ^ (i as u8);
        let send: Vec<u8> = (0..len).map(|i| fill(rank, i)).collect();
        let mut recv = vec![0u8; len * n as usize];
        shm::shm_control_allgather(h, &send, &mut recv).expect("allgather");
        for r in 0..n {
            let part = &recv[r as usize * len..(r as usize + 1) * len];
            assert!(
                part.iter().enumerate().all(|(i, &b)| b == fill(r, i)),
                "round {round}: rank {r}'s {len} bytes"
            );
        }
        shm::shm_control_barrier(h).expect("barrier");
    }
    // Argument errors are local and leave the object usable.
    let mut small = vec![0u8; 3];
    assert_eq!(
        shm::shm_control_allgather(h, &[1, 2], &mut small)
            .unwrap_err()
            .code(),
        ErrorCode::InvalidParam
    );
    shm::shm_control_barrier(h).expect("barrier after an argument error");
    shm::shm_destroy(h, 0).expect("destroy");
    finish(role, n as usize - 1);
}

/// Rank 0 hosts the store: it leaves only after the `others` other live ranks finished.
fn finish(role: &Role, others: usize) {
    let c = client(&role.url);
    if role.rank == 0 {
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while c.prefix(b"test/left/").expect("prefix").len() < others {
            assert!(
                std::time::Instant::now() < until,
                "the others did not finish"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    } else {
        c.set(format!("test/left/{}", role.rank).as_bytes(), b"1")
            .expect("set");
    }
    shm::shm_uninit(0);
    println!("rank {} ok", role.rank);
}

/// Rank 2 is SIGKILLed while ranks 0, 1 and 3 wait in a barrier, with all four on one host and
/// with ranks 0, 1 on host a and 2, 3 on host b: each survivor fails within 1 s of the death
/// (or of its own entry, if later) with `SM_IO_ERROR` naming rank 2, and its next barrier is
/// refused at once.
#[test]
#[cfg_attr(miri, ignore)]
fn member_killed_mid_barrier_fails_the_others_within_a_second() {
    if let Some(r) = role() {
        return victim_rank(&r);
    }
    for two_hosts in [false, true] {
        let mut extra: Vec<(u32, &str, &str)> = Vec::new();
        if two_hosts {
            extra = vec![
                (0, "SMEM_HOST_ID", "a"),
                (1, "SMEM_HOST_ID", "a"),
                (2, "SMEM_HOST_ID", "b"),
                (3, "SMEM_HOST_ID", "b"),
            ];
        }
        let url = free_url();
        let done = spawn(
            "member_killed_mid_barrier_fails_the_others_within_a_second",
            "victim",
            &url,
            4,
            &[0, 1, 2, 3],
            &extra,
        )
        .finish(Duration::from_secs(90));
        let field = |out: &str, key: &str| -> Option<u128> {
            out.lines()
                .find_map(|l| l.split(key).nth(1))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        };
        let died = done
            .iter()
            .find(|f| f.rank == 2)
            .and_then(|f| field(&f.stdout, "dying at "))
            .unwrap_or_else(|| panic!("rank 2 reported no death time: {done:?}"));
        for f in done.iter().filter(|f| f.rank != 2) {
            assert!(
                f.status.success() && f.stdout.contains(&format!("rank {} ok", f.rank)),
                "two hosts {two_hosts}: rank {}: {}\n{}",
                f.rank,
                f.stdout,
                f.stderr
            );
            let entered = field(&f.stdout, "entered at ").expect("entry time");
            let failed = field(&f.stdout, "failed at ").expect("failure time");
            let after = failed.saturating_sub(died.max(entered));
            println!(
                "two hosts {two_hosts}: rank {} failed {} ms after the death",
                f.rank,
                after / 1_000_000
            );
            assert!(
                after <= 1_000_000_000,
                "two hosts {two_hosts}: rank {} failed {} ms after rank 2 died:\n{}",
                f.rank,
                after / 1_000_000,
                f.stdout
            );
        }
    }
}

fn victim_rank(role: &Role) {
    let (rank, n) = (role.rank, role.world);
    // A long control timeout: only the death may end the barrier in time.
    shm::shm_init(&role.url, n, rank, 0, &config(30)).expect("init");
    let (h, _) = shm::shm_create(4, n, rank, 2 * MIB, DATA_OP_MTE, 0).expect("create");
    shm::shm_control_barrier(h).expect("first barrier");
    if rank == 2 {
        // The others go straight into the next barrier; this one dies without entering it:
        // SIGKILL, no unwinding, no goodbye to the store.
        std::thread::sleep(Duration::from_millis(300));
        println!("dying at {}", now_ns());
        // SAFETY: plain syscalls on this process.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        unreachable!();
    }
    println!("entered at {}", now_ns());
    let e = shm::shm_control_barrier(h).expect_err("rank 2 is dead");
    println!("failed at {} with {e}", now_ns());
    assert_eq!(e.code(), ErrorCode::IoError, "{e}");
    assert!(e.message().contains("rank 2 "), "{e}");
    let again = shm::shm_control_barrier(h).expect_err("refused after a failure");
    assert!(again.message().contains("refused"), "{again}");
    let mut recv = vec![0u8; n as usize];
    let again = shm::shm_control_allgather(h, &[1], &mut recv).expect_err("refused too");
    assert!(again.message().contains("refused"), "{again}");
    shm::shm_destroy(h, 0).expect("destroy");
    finish(role, n as usize - 2);
}
