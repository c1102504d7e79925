//! Job-level failover on etcd (issue 16, SPEC 6.4): 4 BM ranks (real processes, this binary
//! run again, see `bm_common`) on an `etcd://` URL of a real 3-member cluster; mid-job the
//! test SIGKILLs the etcd leader and rank 0 (by PID, while every rank is copying) and the
//! survivors go on: rank 0 is dropped, copies among them succeed, one leaves and joins again,
//! a new object is created, joined and copied into, and (in the SHM job the same ranks run
//! under another prefix) a new SHM object of `rankSize` 3 is created with stores into every
//! window, a barrier and an allgather. Every rank has its own deadline; the
//! ranks and the etcd members are killed by PID when the test fails. Skips with a printed
//! reason only where no etcd binary exists (`.ci/run` installs one).

mod bm_common;
mod etcd_common;

#[path = "common/copy.rs"]
mod copy;
use copy::raw_copy;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bm_common::{Role, barrier, barrier_last, client, config, pattern, role};
use etcd_common::Cluster;
use smem_core::ErrorCode;
use smem_linux::runtime::shm::{self, DATA_OP_MTE, ShmConfig};
use smem_linux::runtime::{self, BmHandle};
use smem_linux::store::StoreClient;

const M: u64 = 1 << 20;
const G2H: u32 = 2;
const H2G: u32 = 3;
/// The whole test, as the parent waits for it.
const DEADLINE: Duration = Duration::from_secs(120);
/// One rank's own limit: it exits with status 3 when it runs longer.
const RANK_DEADLINE: Duration = Duration::from_secs(100);
/// How long a wait on store state may take (covers a leader election and a lease expiry).
const WAIT: Duration = Duration::from_secs(40);
const WORLD: u32 = 4;
const SURVIVORS: [u32; 3] = [1, 2, 3];
const NAME: &str = "leader_and_rank0_killed_mid_job";

fn write(h: BmHandle, dst: u64, data: &[u8]) -> smem_linux::Result<()> {
    // SAFETY: `data` is a live slice of `data.len()` readable bytes.
    unsafe { raw_copy(h, data.as_ptr() as u64, dst, data.len() as u64, H2G) }
}

fn read(h: BmHandle, src: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    // SAFETY: `buf` is a live buffer of `len` writable bytes.
    unsafe { raw_copy(h, src, buf.as_mut_ptr() as u64, len as u64, G2H) }
        .expect("read from a window");
    buf
}

fn win(h: BmHandle, p: u32) -> u64 {
    runtime::bm_ptr(h, p as u16).expect("ptr")
}

/// Every rank of `ranks` writes 8 bytes `pattern(rank, p, part)` at `rank * 8` into the window
/// of every `p` in `to`; after a barrier, every byte is checked from this side.
fn copy_all(c: &StoreClient, h: BmHandle, rank: u32, ranks: &[u32], to: &[u32], part: u8) {
    for &p in to {
        write(
            h,
            win(h, p) + u64::from(rank) * 8,
            &[pattern(rank, p, part); 8],
        )
        .unwrap_or_else(|e| panic!("rank {rank}: copy {part} into {p}: {e}"));
    }
    barrier(c, &format!("written-{part}"), ranks.len() as u32);
    for &p in to {
        for &from in ranks {
            assert_eq!(
                read(h, win(h, p) + u64::from(from) * 8, 8),
                [pattern(from, p, part); 8],
                "rank {rank}: window {p}, bytes of {from}, part {part}"
            );
        }
    }
    barrier(c, &format!("checked-{part}"), ranks.len() as u32);
}

/// The parent: starts the cluster and the ranks, kills the leader and rank 0 once every rank
/// is copying, and checks that rank 0 died of SIGKILL and every survivor printed `rank-ok`.
#[test]
#[cfg_attr(miri, ignore)]
fn leader_and_rank0_killed_mid_job() {
    if let Some(r) = role() {
        return failover_rank(&r);
    }
    let start = Instant::now();
    let Some(mut cluster) = Cluster::start(3, "failover") else {
        return;
    };
    let url = cluster.url("/failover/");
    let c = client(&url);
    let ranks = bm_common::spawn(NAME, "failover", &url, WORLD, &[0, 1, 2, 3]);
    // Every rank created, joined, copied and is now copying in a loop.
    c.wait_get(b"test/barrier/busy/go", WAIT)
        .expect("ranks busy");
    let pid: i32 = String::from_utf8(c.get(b"test/pid0").expect("get pid").expect("pid set"))
        .expect("utf8")
        .parse()
        .expect("pid");
    let leader = cluster.wait_leader(WAIT);
    cluster.kill(leader);
    // SAFETY: sends SIGKILL to rank 0, our own child (its PID published by itself).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill rank 0");
    println!(
        "killed etcd member {leader} (the leader) and rank 0 (pid {pid}) at {:?}",
        start.elapsed()
    );
    // Through the members left: the survivors stop their loop and go on.
    c.set(b"test/killed", b"1").expect("set killed");
    let out = ranks.wait_any(DEADLINE);
    let (status0, text0) = &out[&0];
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(status0),
        Some(libc::SIGKILL),
        "rank 0: {text0}"
    );
    for r in SURVIVORS {
        let (status, text) = &out[&r];
        assert!(
            status.success() && text.contains("rank-ok"),
            "rank {r} ({status}): {text}"
        );
        print!(
            "{}",
            text.lines()
                .find(|l| l.contains("copies during"))
                .unwrap_or("")
        );
        println!();
    }
    println!("failover test took {:?}", start.elapsed());
}

fn failover_rank(role: &Role) {
    let rank = role.rank;
    std::thread::spawn(|| {
        std::thread::sleep(RANK_DEADLINE);
        eprintln!("rank ran past its deadline of {RANK_DEADLINE:?}");
        std::process::exit(3);
    });
    runtime::bm_init(&role.url, WORLD, 0, &config(rank, 40)).expect("init");
    // An SHM job of the same 4 ranks under another prefix of the same cluster.
    let shm_url = role.url.replace("/failover/", "/failover-shm/");
    let b = config(rank, 40);
    let shm_config = ShmConfig {
        init_timeout: b.init_timeout,
        create_timeout: b.create_timeout,
        control_timeout: b.control_timeout,
        ..ShmConfig::default()
    };
    shm::shm_init(&shm_url, WORLD, rank, 0, &shm_config).expect("shm init");
    let c = client(&role.url);
    let h = runtime::bm_create(1, WORLD, 1, 2 * M, 0, 0).expect("create");
    runtime::bm_join(h, 0).expect("join");
    barrier(&c, "joined", WORLD);
    let all: Vec<u32> = (0..WORLD).collect();
    copy_all(&c, h, rank, &all, &all, 0);
    if rank == 0 {
        c.set(b"test/pid0", std::process::id().to_string().as_bytes())
            .expect("publish pid");
    }
    barrier(&c, "busy", WORLD);
    // Mid-job: copy into the next rank's window until the kills are done (rank 0 until it
    // dies), while another thread waits for the kill notice on the store (its wait spans the
    // leader election; the copies do not touch the store).
    let next = win(h, (rank + 1) % WORLD);
    let until = Instant::now() + WAIT;
    let killed = AtomicBool::new(false);
    let copies = std::thread::scope(|s| {
        if rank != 0 {
            s.spawn(|| {
                c.wait_get(b"test/killed", WAIT).expect("kill notice");
                killed.store(true, Ordering::Release);
            });
        }
        let mut copies = 0u64;
        while !killed.load(Ordering::Acquire) {
            write(h, next + 1024, &copies.to_le_bytes()).expect("copy while the kills happen");
            copies += 1;
            // Paced, so that the spinning ranks do not starve the etcd election on 2 cores.
            std::thread::sleep(Duration::from_millis(1));
            assert!(
                Instant::now() < until,
                "rank {rank}: not killed / no kill notice in {WAIT:?}"
            );
        }
        copies
    });
    println!("rank {rank}: {copies} copies during the kills");
    let n = SURVIVORS.len() as u32;
    barrier(&c, "after-kill", n);
    // Rank 0's lease expires: its window is dropped for every survivor.
    let until = Instant::now() + WAIT;
    loop {
        match write(h, win(h, 0) + u64::from(rank) * 8, b"x") {
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::ObjectNotExists, "{e}");
                break;
            }
            Ok(()) => {
                assert!(
                    Instant::now() < until,
                    "dead rank 0's window still mapped after {WAIT:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    barrier(&c, "rank0-dropped", n);
    copy_all(&c, h, rank, &SURVIVORS, &SURVIVORS, 1);
    // A survivor leaves and joins again.
    if rank == 1 {
        runtime::bm_leave(h, 0).expect("leave after the failover");
    }
    barrier(&c, "left", n);
    if rank != 1 {
        let e = write(h, win(h, 1), b"x").expect_err("leaver's window");
        assert_eq!(e.code(), ErrorCode::ObjectNotExists, "{e}");
    }
    barrier(&c, "left-checked", n);
    if rank == 1 {
        runtime::bm_join(h, 0).expect("join again after the failover");
    }
    barrier(&c, "rejoined", n);
    copy_all(&c, h, rank, &SURVIVORS, &SURVIVORS, 2);
    // A new object among the survivors.
    let h2 = runtime::bm_create(2, WORLD, 1, 2 * M, 0, 0).expect("create after the failover");
    runtime::bm_join(h2, 0).expect("join the new object");
    barrier(&c, "joined-2", n);
    copy_all(&c, h2, rank, &SURVIVORS, &SURVIVORS, 3);
    runtime::bm_destroy(h2).expect("destroy new");
    shm_among_survivors(rank);
    runtime::bm_destroy(h).expect("destroy");
    barrier_last(&c, "destroyed", n);
    println!("rank-ok");
    runtime::bm_uninit(0);
    shm::shm_uninit(0);
}

/// A new SHM object of `rankSize` 3 among the survivors (object ranks 0..2 = ranks 1..3): each
/// stores its id in every window, then a barrier and an allgather, and every value is checked.
fn shm_among_survivors(rank: u32) {
    let n = SURVIVORS.len() as u32;
    let me = rank - 1;
    let (h, base) =
        shm::shm_create(5, n, me, 2 * M, DATA_OP_MTE, 0).expect("SHM create among the survivors");
    for p in 0..n {
        let at = (base + u64::from(p) * 2 * M + u64::from(me)) as *mut u8;
        // SAFETY: byte `me` of window `p`, mapped read/write (same host) while `h` lives.
        unsafe { at.write_volatile(me as u8 + 1) };
    }
    shm::shm_control_barrier(h).expect("SHM barrier among the survivors");
    for p in 0..n {
        for from in 0..n {
            let at = (base + u64::from(p) * 2 * M + u64::from(from)) as *const u8;
            // SAFETY: byte `from` of window `p`, mapped (same host) while `h` lives.
            let got = unsafe { at.read_volatile() };
            assert_eq!(got, from as u8 + 1, "SHM window {p}, byte of {from}");
        }
    }
    let mut all = vec![0u8; n as usize * 4];
    shm::shm_control_allgather(h, &rank.to_le_bytes(), &mut all).expect("SHM allgather");
    let want: Vec<u8> = SURVIVORS.iter().flat_map(|r| r.to_le_bytes()).collect();
    assert_eq!(all, want, "allgather among the survivors");
    shm::shm_control_barrier(h).expect("SHM barrier before destroy");
    shm::shm_destroy(h, 0).expect("SHM destroy");
}
