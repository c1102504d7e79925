//! Multi-process BM tests on one host: every rank is this binary run again as a child process
//! (see `bm_common`), each run bounded by a deadline; children are killed on failure.

mod bm_common;

#[path = "common/copy.rs"]
mod copy;
use copy::{raw_copy, raw_copy_2d};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bm_common::{
    Role, addr_of, barrier, barrier_last, client, config, fork_and_wait, free_url, pattern, role,
    run_all_ok, spawn, spawn_with,
};
use smem_core::ErrorCode;
use smem_core::bm::Copy2d;
use smem_linux::runtime::{self, BmHandle};

const M: u64 = 1 << 20;
const L2G: u32 = 0;
const G2L: u32 = 1;
const G2H: u32 = 2;
const H2G: u32 = 3;
const DEADLINE: Duration = Duration::from_secs(90);

/// The word after `tag` in a child's output (libtest may print it after the test name).
fn tagged<'a>(out: &'a str, tag: &str) -> &'a str {
    let at = out.find(tag).unwrap_or_else(|| panic!("no {tag} in {out}"));
    out[at + tag.len()..]
        .split_whitespace()
        .next()
        .unwrap_or("")
}

fn write(h: BmHandle, dst: u64, data: &[u8], t: u32) -> smem_linux::Result<()> {
    // SAFETY: `data` is a live slice of `data.len()` readable bytes.
    unsafe { raw_copy(h, data.as_ptr() as u64, dst, data.len() as u64, t) }
}

fn read(h: BmHandle, src: u64, len: usize, t: u32) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    // SAFETY: `buf` is a live buffer of `len` writable bytes.
    unsafe { raw_copy(h, src, buf.as_mut_ptr() as u64, len as u64, t) }
        .expect("read from a window");
    buf
}

/// 4 ranks create, join, copy into every window (HBM and DRAM, 1D and 2D, the last byte of a
/// part), verify every byte from every side, leave, destroy.
#[test]
fn four_ranks_copy_every_pair() {
    if let Some(r) = role() {
        return pairs_rank(&r);
    }
    run_all_ok("four_ranks_copy_every_pair", "pairs", 4, DEADLINE);
}

/// The same over the network transport: every rank has its own `SMEM_HOST_ID`, so every other
/// window is "on another host" and reached through TCP on loopback (1D, 2D, last bytes, guards),
/// plus a 64 MiB copy into and out of the next rank's window, every byte verified.
#[test]
fn four_ranks_copy_every_pair_over_tcp() {
    if let Some(r) = role() {
        return pairs_rank(&r);
    }
    let url = free_url();
    let ids = ["host-a", "host-b", "host-c", "host-d"];
    let extra: Vec<(u32, &str, &str)> = (0..4)
        .map(|r| (r, smem_linux::mem::HOST_ID_ENV, ids[r as usize]))
        .collect();
    let out = spawn_with(
        "four_ranks_copy_every_pair_over_tcp",
        "pairs-net",
        &url,
        4,
        &[0, 1, 2, 3],
        &extra,
    )
    .wait(DEADLINE);
    assert!(out.values().all(|o| o.contains("rank-ok")), "{out:?}");
    for o in out.values() {
        println!("{}", o.lines().find(|l| l.contains("big:")).unwrap_or(""));
    }
}

/// The same across two network namespaces joined by a veth pair: ranks 0 and 1 in one (rank 0
/// hosts the store at 10.250.0.1), ranks 2 and 3 in the other, one `SMEM_HOST_ID` per namespace
/// (they share this machine's PID namespace, so they could otherwise share memory directly):
/// ranks of one namespace use shared memory, copies between them cross the veth link. Skips
/// with a printed reason where `ip netns` is not permitted (needs root and iproute2).
#[test]
fn four_ranks_copy_every_pair_across_network_namespaces() {
    if let Some(r) = role() {
        return pairs_rank(&r);
    }
    let pair = match bm_common::NetnsPair::create("p") {
        Ok(p) => p,
        Err(why) => {
            println!(
                "SKIPPED four_ranks_copy_every_pair_across_network_namespaces: cannot create network namespaces here ({why}); needs root (CAP_NET_ADMIN) and iproute2"
            );
            return;
        }
    };
    let port = addr_of(&free_url()).port();
    let url = format!("tcp://10.250.0.1:{port}");
    let ns = |r: u32| {
        if r < 2 {
            pair.a.clone()
        } else {
            pair.b.clone()
        }
    };
    let ids = [format!("netns-{}", pair.a), format!("netns-{}", pair.b)];
    let extra: Vec<(u32, &str, &str)> = (0..4)
        .map(|r| {
            (
                r,
                smem_linux::mem::HOST_ID_ENV,
                ids[(r / 2) as usize].as_str(),
            )
        })
        .collect();
    let out = bm_common::spawn_in(
        "four_ranks_copy_every_pair_across_network_namespaces",
        "pairs-net",
        &url,
        4,
        &[0, 1, 2, 3],
        &extra,
        &|r| {
            vec![
                "ip".to_owned(),
                "netns".to_owned(),
                "exec".to_owned(),
                ns(r),
            ]
        },
    )
    .wait(DEADLINE);
    assert!(out.values().all(|o| o.contains("rank-ok")), "{out:?}");
    for o in out.values() {
        println!("{}", o.lines().find(|l| l.contains("big:")).unwrap_or(""));
    }
    drop(pair);
}

/// `SMEMB_DATA_OP_SDMA | SMEMB_DATA_OP_HOST_TCP`.
const SDMA_TCP: u32 = 1 | 4;

/// 64 MiB from each rank into the next rank's window and back out, every byte checked.
fn big_copy(c: &smem_linux::store::StoreClient, rank: u32, n: u32) {
    let len = 64 * M;
    let h = runtime::bm_create(3, n, SDMA_TCP, len, 0, 0).expect("create 64 MiB");
    runtime::bm_join(h, 0).expect("join");
    barrier(c, "big-joined", n);
    let fill = |from: u32, i: usize| {
        (from as u8).wrapping_mul(29).wrapping_add((i / 4093) as u8) ^ (i as u8)
    };
    let data: Vec<u8> = (0..len as usize).map(|i| fill(rank, i)).collect();
    let next = (rank + 1) % n;
    let t = Instant::now();
    write(h, runtime::bm_ptr(h, next as u16).expect("ptr"), &data, H2G).expect("64 MiB H2G");
    let w = t.elapsed();
    barrier(c, "big-written", n);
    let prev = (rank + n - 1) % n;
    let own = read(
        h,
        runtime::bm_ptr(h, rank as u16).expect("ptr"),
        len as usize,
        G2H,
    );
    assert!(
        own.iter().enumerate().all(|(i, &b)| b == fill(prev, i)),
        "64 MiB from rank {prev} corrupted"
    );
    let t = Instant::now();
    let back = read(
        h,
        runtime::bm_ptr(h, next as u16).expect("ptr"),
        len as usize,
        G2H,
    );
    let r = t.elapsed();
    assert!(back == data, "64 MiB read back from rank {next} differs");
    println!("big: write {w:?} read {r:?}");
    barrier(c, "big-checked", n);
    runtime::bm_destroy(h).expect("destroy");
}

fn pairs_rank(role: &Role) {
    let (rank, n) = (role.rank, role.world);
    let net = role.role == "pairs-net";
    let ops = if net { SDMA_TCP } else { 1 };
    runtime::bm_init(&role.url, n, 0, &config(rank, 30)).expect("init");
    assert_eq!(runtime::bm_rank_id().expect("rank"), rank);
    // Same arguments again: 0; other arguments: SM_REPEAT_CALL.
    runtime::bm_init(&role.url, n, 0, &config(rank, 30)).expect("identical re-init");
    let again =
        runtime::bm_init(&role.url, n, 1, &config(rank, 30)).expect_err("different re-init");
    assert_eq!(again.code(), ErrorCode::RepeatCall);
    let c = client(&role.url);
    let h = runtime::bm_create(1, n, ops, 3 * M, M, 0).expect("create");
    let dup = runtime::bm_create(1, n, ops, 3 * M, M, 0).expect_err("duplicate id");
    assert_eq!(dup.code(), ErrorCode::DuplicatedObject);
    assert_eq!(runtime::bm_local_mem_size(h).expect("size"), 6 * M);
    let base = runtime::bm_join(h, 0).expect("join");
    assert_eq!(base, runtime::bm_ptr(h, rank as u16).expect("ptr"));
    assert!(runtime::bm_ptr(h, n as u16).is_err());
    barrier(&c, "joined", n);

    let (hbm_len, dram_len) = (2 * M, 4 * M);
    for p in 0..n {
        let win = runtime::bm_ptr(h, p as u16).expect("ptr");
        let off = u64::from(rank) * 4096;
        write(h, win + off, &[pattern(rank, p, 0); 4096], L2G).expect("L2G into HBM");
        write(h, win + hbm_len + off, &[pattern(rank, p, 1); 4096], H2G).expect("H2G into DRAM");
        // The last bytes of each part are usable; one byte more is refused.
        let last = win + hbm_len + dram_len - 1 - u64::from(rank);
        write(h, last, &[pattern(rank, p, 2)], H2G).expect("last byte of DRAM");
        let e = write(h, win + hbm_len - 1, &[0, 0], L2G).expect_err("crosses HBM end");
        assert_eq!(e.code(), ErrorCode::InvalidParam);
        // 2D: 4 rows of 100 bytes, pitch 1000, in the DRAM part from 1 MiB.
        let rows: Vec<u8> = (0..400)
            .map(|i| pattern(rank, p, 3).wrapping_add((i / 100) as u8))
            .collect();
        let dst = win + hbm_len + M + u64::from(rank) * 4000;
        // SAFETY: `rows` holds 4 rows of 100 bytes at pitch 100.
        unsafe {
            raw_copy_2d(
                h,
                Copy2d::new(rows.as_ptr() as u64, 100, dst, 1000, 100, 4),
                H2G,
            )
        }
        .expect("2D H2G");
    }
    barrier(&c, "written", n);
    for p in 0..n {
        let win = runtime::bm_ptr(h, p as u16).expect("ptr");
        for from in 0..n {
            let off = u64::from(from) * 4096;
            assert!(
                read(h, win + off, 4096, G2L)
                    .iter()
                    .all(|&b| b == pattern(from, p, 0)),
                "HBM of {p} from {from}"
            );
            assert!(
                read(h, win + hbm_len + off, 4096, G2H)
                    .iter()
                    .all(|&b| b == pattern(from, p, 1)),
                "DRAM of {p} from {from}"
            );
            let last = win + hbm_len + dram_len - 1 - u64::from(from);
            assert_eq!(read(h, last, 1, G2H), [pattern(from, p, 2)]);
            let mut rows = vec![0u8; 400];
            let src = win + hbm_len + M + u64::from(from) * 4000;
            // SAFETY: `rows` is 400 writable bytes: 4 rows of 100 at pitch 100.
            unsafe {
                raw_copy_2d(
                    h,
                    Copy2d::new(src, 1000, rows.as_mut_ptr() as u64, 100, 100, 4),
                    G2H,
                )
            }
            .expect("2D G2H");
            for (i, b) in rows.iter().enumerate() {
                assert_eq!(*b, pattern(from, p, 3).wrapping_add((i / 100) as u8));
            }
        }
    }
    // Bad arguments touch nothing.
    let e = write(h, base, &[1], 7).expect_err("bad type");
    assert_eq!(e.code(), ErrorCode::InvalidParam);
    barrier(&c, "checked", n);
    runtime::bm_leave(h, 0).expect("leave");
    barrier(&c, "left", n);
    if net {
        // Every other window left: copies to it are refused cleanly.
        let other = runtime::bm_ptr(h, ((rank + 1) % n) as u16).expect("ptr");
        let e = write(h, other, &[1], H2G).expect_err("left window");
        assert_eq!(e.code(), ErrorCode::ObjectNotExists, "{e}");
    }
    runtime::bm_destroy(h).expect("destroy");
    if net {
        big_copy(&c, rank, n);
    }
    assert_eq!(
        runtime::bm_destroy(h).expect_err("stale").code(),
        ErrorCode::ObjectNotExists
    );
    barrier_last(&c, "destroyed", n);
    println!("rank-ok");
    runtime::bm_uninit(0);
}

/// A late joiner becomes reachable without calls by the others; a leaver's window is refused
/// cleanly; a member that dies is dropped.
#[test]
fn late_joiner_leaver_and_dead_member() {
    if let Some(r) = role() {
        return late_rank(&r);
    }
    run_all_ok("late_joiner_leaver_and_dead_member", "late", 4, DEADLINE);
}

/// The same with the host segment mapped read/write at create, as objects of over 128
/// members do (`SMEM_BM_PROTECT_MEMBERS_MAX=0`): the windows' states alone keep copies out.
#[test]
fn late_joiner_leaver_and_dead_member_open_segment() {
    const NAME: &str = "late_joiner_leaver_and_dead_member_open_segment";
    if let Some(r) = role() {
        return late_rank(&r);
    }
    let url = free_url();
    let extra: Vec<(u32, &str, &str)> = (0..4)
        .map(|r| (r, "SMEM_BM_PROTECT_MEMBERS_MAX", "0"))
        .collect();
    let out = spawn_with(NAME, "late", &url, 4, &[0, 1, 2, 3], &extra).wait(DEADLINE);
    assert!(out.values().all(|o| o.contains("rank-ok")), "{out:?}");
}

/// The protections of this process's mappings of BM object 2's host segment
/// (`/proc/self/maps`, e.g. `rw-s`, `---s`).
fn host_segment_protections() -> Vec<String> {
    std::fs::read_to_string("/proc/self/maps")
        .expect("maps")
        .lines()
        .filter(|l| l.contains("smem-bm2-host"))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect()
}

fn late_rank(role: &Role) {
    let (rank, n) = (role.rank, role.world);
    runtime::bm_init(&role.url, n, 0, &config(rank, 30)).expect("init");
    let c = client(&role.url);
    let h = runtime::bm_create(2, n, 1, 2 * M, 0, 0).expect("create");
    let win = |p: u32| runtime::bm_ptr(h, p as u16).expect("ptr");
    if rank < 3 {
        runtime::bm_join(h, 0).expect("join");
    }
    barrier(&c, "early", n);
    if rank == 0 {
        // Rank 3 has not joined: its window is inaccessible here, unless the segment is
        // mapped read/write as a whole.
        let prot = host_segment_protections();
        if std::env::var_os("SMEM_BM_PROTECT_MEMBERS_MAX").is_some() {
            assert_eq!(prot, ["rw-s"], "one read/write mapping");
        } else {
            assert!(prot.iter().any(|p| p == "---s"), "{prot:?}");
        }
    }
    if rank == 0 {
        let e = write(h, win(3), b"x", H2G).err().unwrap_or_else(|| {
            let log = c.get(b"smem/bm/o2/log").expect("log");
            panic!("rank 3 not joined yet, but its window is reachable; log {log:?}")
        });
        assert_eq!(e.code(), ErrorCode::ObjectNotExists, "{e}");
    }
    // Rank 3 joins only after rank 0 saw its window unreachable.
    barrier(&c, "checked-early", n);
    if rank == 3 {
        let e = write(h, win(3), b"x", H2G).expect_err("own window not joined");
        assert_eq!(e.code(), ErrorCode::InvalidParam, "{e}");
        runtime::bm_join(h, 0).expect("late join");
    }
    barrier(&c, "late-joined", n);
    if rank < 3 {
        write(
            h,
            win(3) + u64::from(rank) * 8,
            &[pattern(rank, 3, 0); 8],
            H2G,
        )
        .expect("write to the late joiner");
    }
    barrier(&c, "late-written", n);
    if rank == 3 {
        for from in 0..3 {
            assert_eq!(
                read(h, win(3) + u64::from(from) * 8, 8, G2H),
                [pattern(from, 3, 0); 8]
            );
        }
    }
    if rank == 1 {
        runtime::bm_leave(h, 0).expect("leave");
        let e = write(h, win(1), b"x", H2G).expect_err("own window after leave");
        assert_eq!(e.code(), ErrorCode::InvalidParam);
    }
    barrier(&c, "left", n);
    if rank != 1 {
        let e = write(h, win(1), b"x", H2G).expect_err("leaver's window");
        assert_eq!(e.code(), ErrorCode::ObjectNotExists, "{e}");
        assert!(e.message().contains("rank 1"), "{e}");
    }
    barrier(&c, "die", n);
    if rank == 2 {
        println!("rank-ok");
        // Dies without leaving: its link to the store drops.
        std::process::exit(0);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match write(h, win(2), b"x", H2G) {
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::ObjectNotExists, "{e}");
                break;
            }
            Ok(()) => {
                assert!(
                    Instant::now() < deadline,
                    "dead rank 2's window is still mapped"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    barrier(&c, "end", n - 1);
    runtime::bm_destroy(h).expect("destroy");
    barrier_last(&c, "destroyed", n - 1);
    println!("rank-ok");
    runtime::bm_uninit(0);
}

/// 8 ranks with autoRanking: the store hands out 0..7 exactly once; the pool works.
#[test]
fn auto_ranking_eight_ranks() {
    if let Some(r) = role() {
        return auto_rank(&r);
    }
    let url = free_url();
    let out = spawn(
        "auto_ranking_eight_ranks",
        "auto",
        &url,
        8,
        &[0, 1, 2, 3, 4, 5, 6, 7],
    )
    .wait(DEADLINE);
    let ranks: BTreeSet<u32> = out
        .values()
        .map(|o| tagged(o, "rank=").parse().expect("number"))
        .collect();
    assert_eq!(ranks, (0..8).collect());
}

fn auto_rank(role: &Role) {
    let n = role.world;
    let cfg = runtime::BmConfig {
        auto_ranking: true,
        rank_id: u16::MAX,
        ..config(0, 30)
    };
    runtime::bm_init(&role.url, n, 0, &cfg).expect("init");
    let rank = runtime::bm_rank_id().expect("rank");
    let c = client(&role.url);
    let h = runtime::bm_create(0, n, 1, 2 * M, 0, 0).expect("create");
    runtime::bm_join(h, 0).expect("join");
    barrier(&c, "joined", n);
    for p in 0..n {
        write(
            h,
            runtime::bm_ptr(h, p as u16).expect("ptr") + u64::from(rank),
            &[pattern(rank, p, 0)],
            H2G,
        )
        .expect("write");
    }
    barrier(&c, "written", n);
    let own = read(
        h,
        runtime::bm_ptr(h, rank as u16).expect("ptr"),
        n as usize,
        G2H,
    );
    for (from, b) in own.iter().enumerate() {
        assert_eq!(*b, pattern(from as u32, rank, 0));
    }
    println!("rank={rank}");
    // The store lives in one of the ranks: everybody finishes before anybody uninits.
    barrier(&c, "done", n);
    runtime::bm_destroy(h).expect("destroy");
    barrier_last(&c, "destroyed", n);
    runtime::bm_uninit(0);
}

/// World of 3, rank 2 never arrives: init fails with SM_TIMEOUT naming it.
#[test]
fn missing_rank_times_out_by_name() {
    if let Some(r) = role() {
        let cfg = config(r.rank, 2);
        let start = Instant::now();
        let e = runtime::bm_init(&r.url, r.world, 0, &cfg).expect_err("rank 2 never comes");
        // Rank 0 hosts the store and gives it up when its own init fails, so rank 1 may see
        // the link go down instead of its own timeout.
        if r.rank == 0 || e.code() != ErrorCode::IoError {
            assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
            let named = e.message().contains("missing rank(s) 2;")
                || (r.rank == 1 && e.message().contains("rank 2 (at least)"));
            assert!(named, "{e}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timeout not honoured"
        );
        assert_eq!(
            runtime::bm_rank_id().expect_err("not initialised").code(),
            ErrorCode::NotInitialized
        );
        println!("timeout-ok");
        return;
    }
    let url = free_url();
    let out = spawn(
        "missing_rank_times_out_by_name",
        "missing",
        &url,
        3,
        &[0, 1],
    )
    .wait(DEADLINE);
    assert!(out.values().all(|o| o.contains("timeout-ok")), "{out:?}");
}

/// The object's range (chosen by its first creator) is taken in a later member: that member's
/// create fails with `SM_RESOURCE_IN_USE` naming the range, nothing of its own is clobbered,
/// and the others keep working. (The first creator picks a random spot of a region processes
/// rarely use, so this needs a planted proposal.)
#[test]
fn gva_range_taken_in_a_later_member_is_refused() {
    if let Some(r) = role() {
        let (rank, n) = (r.rank, r.world);
        runtime::bm_init(&r.url, n, 0, &config(rank, 30)).expect("init");
        let c = client(&r.url);
        let span = 2 * 2 * M;
        let mut blocker = None;
        if rank == 1 {
            // Occupy a range here and plant it as the object's range.
            let res = smem_linux::mem::Reservation::reserve_anywhere(span, 2 * M).expect("reserve");
            let p = format!(
                "v0 1234 {:x} {span:x} {:x} {:x} {:x}",
                res.base().raw(),
                2 * M,
                0,
                2 * M
            );
            c.set(b"smem/bm/o5/gva", p.as_bytes()).expect("plant");
            blocker = Some(res);
        }
        barrier(&c, "planted", n);
        let created = runtime::bm_create(5, n, 1, 2 * M, 0, 0);
        // Rank 0's destroy (the last holder's) removes the object's keys: not before rank 1
        // tried.
        barrier(&c, "created", n);
        if rank == 1 {
            let e = created.expect_err("the range is taken here");
            assert_eq!(e.code(), ErrorCode::ResourceInUse, "{e}");
            let base = blocker.as_ref().expect("blocker").base().raw();
            assert!(e.message().contains(&format!("{base:#x}")), "{e}");
            // Still ours: reserving it again finds it taken.
            let again =
                smem_linux::mem::Reservation::try_reserve_at(smem_core::gva::Gva(base), span)
                    .expect_err("still mapped");
            assert_eq!(again.code(), ErrorCode::ResourceInUse);
        } else {
            let h = created.expect("free here");
            runtime::bm_join(h, 0).expect("join");
            let own = runtime::bm_ptr(h, 0).expect("ptr");
            write(h, own, b"ok", H2G).expect("write");
            assert_eq!(read(h, own, 2, G2H), b"ok");
            runtime::bm_destroy(h).expect("destroy");
        }
        barrier_last(&c, "done", n);
        drop(blocker);
        runtime::bm_uninit(0);
        println!("rank-ok");
        return;
    }
    run_all_ok(
        "gva_range_taken_in_a_later_member_is_refused",
        "gva",
        2,
        DEADLINE,
    );
}

/// A window owned by a rank of another host (forced with `SMEM_HOST_ID`) stays reserved: join
/// works, copies to it are `SM_NOT_SUPPORTED` with a clear message.
#[test]
fn other_host_window_refused() {
    if let Some(r) = role() {
        let (rank, n) = (r.rank, r.world);
        runtime::bm_init(&r.url, n, 0, &config(rank, 30)).expect("init");
        let c = client(&r.url);
        let h = runtime::bm_create(4, n, 1, 2 * M, 0, 0).expect("create");
        runtime::bm_join(h, 0).expect("join");
        barrier(&c, "joined", n);
        let other = runtime::bm_ptr(h, (1 - rank) as u16).expect("ptr");
        let e = write(h, other, b"x", H2G).expect_err("other host");
        assert_eq!(e.code(), ErrorCode::NotSupported, "{e}");
        assert!(e.message().contains("another host"), "{e}");
        // The own window still works.
        write(h, runtime::bm_ptr(h, rank as u16).expect("ptr"), b"y", H2G).expect("own window");
        barrier(&c, "checked", n);
        runtime::bm_destroy(h).expect("destroy");
        barrier_last(&c, "destroyed", n);
        runtime::bm_uninit(0);
        println!("rank-ok");
        return;
    }
    let url = free_url();
    let extra = [(1, smem_linux::mem::HOST_ID_ENV, "elsewhere")];
    let out = spawn_with(
        "other_host_window_refused",
        "host",
        &url,
        2,
        &[0, 1],
        &extra,
    )
    .wait(DEADLINE);
    assert!(out.values().all(|o| o.contains("rank-ok")), "{out:?}");
}

/// Copies racing a leave either land before it or fail cleanly after it; nothing crashes.
#[test]
fn copies_racing_a_leave() {
    if let Some(r) = role() {
        return race_rank(&r);
    }
    let url = free_url();
    let out = spawn("copies_racing_a_leave", "race", &url, 2, &[0, 1]).wait(DEADLINE);
    assert!(out.values().all(|o| o.contains("rank-ok")), "{out:?}");
}

/// The same with the two ranks on different hosts: the racing copies go through the transport
/// and fail with the same clean error once the owner stopped serving its window.
#[test]
fn copies_racing_a_leave_over_tcp() {
    if let Some(r) = role() {
        return race_rank(&r);
    }
    let url = free_url();
    let extra = [
        (0, smem_linux::mem::HOST_ID_ENV, "race-a"),
        (1, smem_linux::mem::HOST_ID_ENV, "race-b"),
    ];
    let out = spawn_with(
        "copies_racing_a_leave_over_tcp",
        "race-net",
        &url,
        2,
        &[0, 1],
        &extra,
    )
    .wait(DEADLINE);
    assert!(out.values().all(|o| o.contains("rank-ok")), "{out:?}");
}

fn race_rank(r: &Role) {
    {
        let (rank, n) = (r.rank, r.world);
        let ops = if r.role == "race-net" { SDMA_TCP } else { 1 };
        runtime::bm_init(&r.url, n, 0, &config(rank, 30)).expect("init");
        let c = client(&r.url);
        let h = runtime::bm_create(6, n, ops, 2 * M, 0, 0).expect("create");
        runtime::bm_join(h, 0).expect("join");
        barrier(&c, "joined", n);
        if rank == 0 {
            let target = runtime::bm_ptr(h, 1).expect("ptr");
            let data = vec![0x5a_u8; 64 * 1024];
            let threads: Vec<_> = (0..2)
                .map(|t| {
                    let data = data.clone();
                    std::thread::spawn(move || {
                        let (mut ok, deadline) = (0u64, Instant::now() + Duration::from_secs(20));
                        loop {
                            match write(h, target + t * 64 * 1024, &data, H2G) {
                                Ok(()) => ok += 1,
                                Err(e) => {
                                    assert_eq!(e.code(), ErrorCode::ObjectNotExists, "{e}");
                                    return ok;
                                }
                            }
                            assert!(Instant::now() < deadline, "the leave never took effect");
                        }
                    })
                })
                .collect();
            barrier(&c, "copying", n);
            let oks: Vec<u64> = threads
                .into_iter()
                .map(|t| t.join().expect("copier"))
                .collect();
            assert!(
                oks.iter().all(|&k| k > 0),
                "no copy landed before the leave: {oks:?}"
            );
        } else {
            barrier(&c, "copying", n);
            std::thread::sleep(Duration::from_millis(100));
            runtime::bm_leave(h, 0).expect("leave under copies");
        }
        barrier(&c, "done", n);
        runtime::bm_destroy(h).expect("destroy");
        barrier_last(&c, "destroyed", n);
        runtime::bm_uninit(0);
        println!("rank-ok");
    }
}

/// `fork` while the store and the pool are busy: the child initialises its own world and works;
/// the parent keeps working.
#[test]
fn fork_while_busy() {
    if let Some(r) = role() {
        runtime::bm_init(&r.url, 1, 0, &config(0, 30)).expect("init");
        let h = runtime::bm_create(0, 1, 1, 2 * M, 2 * M, 0).expect("create");
        let base = runtime::bm_join(h, 0).expect("join");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let busy: Vec<_> = (0..2)
            .map(|i| {
                let stop = std::sync::Arc::clone(&stop);
                let url = r.url.clone();
                std::thread::spawn(move || {
                    let c = client(&url);
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        c.set(format!("busy/{i}").as_bytes(), n.to_string().as_bytes())
                            .expect("busy set");
                        write(h, base + i * 4096, &[n as u8; 4096], H2G).expect("busy copy");
                        n += 1;
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..3 {
            let child_url = free_url();
            fork_and_wait(
                Duration::from_secs(20),
                Duration::from_millis(10),
                "forked child",
                "forked child hung (deadlock after fork?)",
                || {
                    runtime::bm_init(&child_url, 1, 0, &config(0, 10)).expect("child init");
                    let h = runtime::bm_create(0, 1, 1, 2 * M, 0, 0).expect("child create");
                    let b = runtime::bm_join(h, 0).expect("child join");
                    write(h, b, b"child", H2G).expect("child copy");
                    assert_eq!(read(h, b, 5, G2H), b"child");
                    runtime::bm_uninit(0);
                },
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in busy {
            t.join().expect("busy thread");
        }
        write(h, base + 2 * M, b"parent", L2G).expect("parent still works");
        assert_eq!(read(h, base + 2 * M, 6, G2L), b"parent");
        runtime::bm_uninit(0);
        println!("rank-ok");
        return;
    }
    let url = free_url();
    let out = spawn("fork_while_busy", "fork", &url, 1, &[0]).wait(DEADLINE);
    assert!(out.values().all(|o| o.contains("rank-ok")), "{out:?}");
}

/// Members that pass different sizes (SPEC 2.2: "mismatch: clear error at join"): create works
/// on both (it never waits for the others); the rank whose sizes differ from the object's (set
/// by its first creator) gets a clear `SM_INVALID_PARAM` from join, at once; the other joins.
#[test]
fn size_mismatch_is_refused() {
    if let Some(r) = role() {
        let (rank, n) = (r.rank, r.world);
        runtime::bm_init(&r.url, n, 0, &config(rank, 20)).expect("init");
        let c = client(&r.url);
        let dram = if rank == 0 { 2 * M } else { 4 * M };
        // Rank 0 creates first: its sizes are the object's.
        if rank == 1 {
            barrier(&c, "created0", n);
        }
        let h = runtime::bm_create(7, n, 1, dram, 0, 0).expect("create never checks peers");
        if rank == 0 {
            barrier(&c, "created0", n);
        }
        let start = Instant::now();
        let j = runtime::bm_join(h, 0);
        if rank == 0 {
            j.expect("the first creator's sizes are the object's");
        } else {
            let e = j.expect_err("sizes differ");
            assert_eq!(e.code(), ErrorCode::InvalidParam, "{e}");
            assert!(e.message().contains("same sizes"), "{e}");
            assert!(e.message().contains("DRAM 0x400000"), "{e}");
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "mismatch found only by timeout"
            );
            // Leave and destroy of the refused handle are clean.
            let e = runtime::bm_leave(h, 0).expect_err("never joined");
            assert_eq!(e.code(), ErrorCode::ObjectNotExists, "{e}");
        }
        barrier(&c, "joined", n);
        runtime::bm_destroy(h).expect("destroy");
        barrier_last(&c, "done", n);
        runtime::bm_uninit(0);
        println!("rank-ok");
        return;
    }
    let url = free_url();
    let out = spawn("size_mismatch_is_refused", "mismatch", &url, 2, &[0, 1]).wait(DEADLINE);
    assert!(out.values().all(|o| o.contains("rank-ok")), "{out:?}");
}

/// Create never waits for the other members (SPEC 2.2: create allocates; join makes the window
/// visible): rank 0 creates, joins and writes into its own window while rank 1 has not even
/// called create; rank 1 creates and joins later and reaches rank 0's bytes at the same GVA.
#[test]
fn create_and_join_do_not_wait_for_later_members() {
    if let Some(r) = role() {
        let (rank, n) = (r.rank, r.world);
        runtime::bm_init(&r.url, n, 0, &config(rank, 20)).expect("init");
        let c = client(&r.url);
        if rank == 0 {
            let start = Instant::now();
            let h = runtime::bm_create(9, n, 1, 2 * M, 0, 0).expect("create alone");
            let own = runtime::bm_join(h, 0).expect("join alone");
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "create + join waited for rank 1"
            );
            write(h, own, b"first", H2G).expect("own window");
            c.set(b"test/base", own.to_string().as_bytes())
                .expect("publish");
            barrier(&c, "rank0-ready", n);
            barrier(&c, "rank1-joined", n);
            let peer = runtime::bm_ptr(h, 1).expect("ptr");
            assert_eq!(read(h, peer, 6, G2H), b"second");
            barrier(&c, "done", n);
            runtime::bm_destroy(h).expect("destroy");
        } else {
            barrier(&c, "rank0-ready", n);
            let h = runtime::bm_create(9, n, 1, 2 * M, 0, 0).expect("late create");
            let own = runtime::bm_join(h, 0).expect("late join");
            let base0: u64 = String::from_utf8(c.get(b"test/base").expect("get").expect("set"))
                .expect("utf8")
                .parse()
                .expect("number");
            assert_eq!(runtime::bm_ptr(h, 0).expect("ptr"), base0, "same GVA");
            assert_eq!(read(h, base0, 5, G2H), b"first");
            write(h, own, b"second", H2G).expect("own window");
            barrier(&c, "rank1-joined", n);
            barrier(&c, "done", n);
            runtime::bm_destroy(h).expect("destroy");
        }
        barrier_last(&c, "destroyed", n);
        runtime::bm_uninit(0);
        println!("rank-ok");
        return;
    }
    run_all_ok(
        "create_and_join_do_not_wait_for_later_members",
        "sequential",
        2,
        DEADLINE,
    );
}

/// SPEC 4: memory is pre-faulted at create, so the first copy into a fresh pool runs at
/// steady-state speed. Checked by what decides that speed, deterministically: the copying
/// thread takes (almost) no page faults on the fresh window (without pre-faulting, a 256 MiB
/// window costs one fault per page: 65,536 for 4 KiB pages). The speeds are printed.
#[test]
fn first_copy_runs_at_steady_state_speed() {
    if let Some(r) = role() {
        runtime::bm_init(&r.url, 1, 0, &config(0, 30)).expect("init");
        let len = 256 * M;
        let h = runtime::bm_create(0, 1, 1, len, 0, 0).expect("create");
        let base = runtime::bm_join(h, 0).expect("join");
        let src = vec![0xa5u8; len as usize];
        let mut secs = [0f64; 2];
        let mut faults = [0u64; 2];
        for (s, f) in secs.iter_mut().zip(&mut faults) {
            let before = thread_faults();
            let t = Instant::now();
            write(h, base, &src, H2G).expect("copy");
            *s = t.elapsed().as_secs_f64();
            *f = thread_faults() - before;
        }
        let gbps = |s: f64| len as f64 / s / 1e9;
        println!(
            "first={:.2}GB/s second={:.2}GB/s faults first={} second={}",
            gbps(secs[0]),
            gbps(secs[1]),
            faults[0],
            faults[1]
        );
        let pages = len / 4096;
        assert!(
            faults[0] < pages / 100,
            "first copy into a fresh window took {} page faults for {pages} pages: not pre-faulted",
            faults[0]
        );
        runtime::bm_uninit(0);
        println!("rank-ok");
        return;
    }
    let url = free_url();
    let out = spawn(
        "first_copy_runs_at_steady_state_speed",
        "speed",
        &url,
        1,
        &[0],
    )
    .wait(DEADLINE);
    assert!(out.values().all(|o| o.contains("rank-ok")), "{out:?}");
    let line = out[&0].lines().find(|l| l.contains("first=")).unwrap_or("");
    println!("{line}");
}

/// Page faults (minor + major) taken so far by the calling thread, from
/// `/proc/thread-self/stat` (fields 10 and 12).
fn thread_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("read thread stat");
    // The command name (field 2) may contain spaces; fields after it follow the last ')'.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): minflt is field 10, majflt field 12.
    f[7].parse::<u64>().expect("minflt") + f[9].parse::<u64>().expect("majflt")
}

/// A remote rank (another host, reached over TCP) killed with SIGKILL while rank 0 streams
/// 64 MiB copies into its window: the copy in progress fails within the control timeout, no
/// copy after the kill reports success, and rank 0 keeps working.
#[test]
fn remote_rank_killed_mid_copy() {
    const TIMEOUT_S: u64 = 8;
    if let Some(r) = role() {
        let (rank, n) = (r.rank, r.world);
        runtime::bm_init(&r.url, n, 0, &config(rank, TIMEOUT_S)).expect("init");
        let c = client(&r.url);
        let h = runtime::bm_create(8, n, SDMA_TCP, 64 * M, 0, 0).expect("create");
        runtime::bm_join(h, 0).expect("join");
        barrier(&c, "joined", n);
        if rank == 1 {
            // Wait until rank 0 is copying, then die without any cleanup.
            c.wait_get(b"test/copying", Duration::from_secs(30))
                .expect("rank 0 copies");
            std::thread::sleep(Duration::from_millis(50));
            // A forked child outlives this rank for a while: it must not keep the rank's
            // transport sockets open (they are detached in forked children), or rank 0 would
            // only notice the death after its timeout.
            // SAFETY: the child only sleeps and leaves with `_exit` (async-signal-safe calls).
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: plain libc calls in the forked child.
                unsafe {
                    libc::sleep(6);
                    libc::_exit(0);
                }
            }
            println!("rank 1 dies");
            // SAFETY: kills this process (no memory is touched).
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            unreachable!("SIGKILL");
        }
        let target = runtime::bm_ptr(h, 1).expect("ptr");
        let data = vec![0x3c_u8; 64 * M as usize];
        write(h, target, &data, H2G).expect("first copy, before the kill");
        c.set(b"test/copying", b"1").expect("flag");
        let deadline = Instant::now() + Duration::from_secs(30);
        let (err, took) = loop {
            let t = Instant::now();
            match write(h, target, &data, H2G) {
                Ok(()) => assert!(Instant::now() < deadline, "copies never failed"),
                Err(e) => break (e, t.elapsed()),
            }
        };
        assert!(
            matches!(
                err.code(),
                ErrorCode::IoError | ErrorCode::Timeout | ErrorCode::ObjectNotExists
            ),
            "{err}"
        );
        assert!(
            took < Duration::from_secs(TIMEOUT_S / 2),
            "the failing copy took {took:?}: the dead rank's sockets stayed open (in its fork?)"
        );
        // Once the store saw the link go down, the window is dropped: clean refusal.
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            match write(h, target, &data[..4096], H2G) {
                Err(e) if e.code() == ErrorCode::ObjectNotExists => break,
                Err(_) => {}
                Ok(()) => panic!("a copy to the dead rank reported success"),
            }
            assert!(Instant::now() < until, "dead rank's window never dropped");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The own window still works.
        let own = runtime::bm_ptr(h, 0).expect("ptr");
        write(h, own, b"alive", H2G).expect("own window");
        println!("error after kill: {err} (in {took:?})");
        runtime::bm_destroy(h).expect("destroy");
        runtime::bm_uninit(0);
        println!("rank-ok");
        return;
    }
    let url = free_url();
    let extra = [
        (0, smem_linux::mem::HOST_ID_ENV, "kill-a"),
        (1, smem_linux::mem::HOST_ID_ENV, "kill-b"),
    ];
    let out = spawn_with(
        "remote_rank_killed_mid_copy",
        "kill",
        &url,
        2,
        &[0, 1],
        &extra,
    )
    .wait_any(DEADLINE);
    let (status0, text0) = &out[&0];
    assert!(
        status0.success() && text0.contains("rank-ok"),
        "rank 0: {text0}"
    );
    let (status1, text1) = &out[&1];
    assert!(
        !status1.success() && text1.contains("rank 1 dies"),
        "rank 1: {text1}"
    );
    println!(
        "{}",
        text0
            .lines()
            .find(|l| l.contains("error after kill"))
            .unwrap_or("")
    );
}
