//! BM copy benchmark: same-host `H2G` and `G2H` bandwidth through `smem_bm_copy` into / out of
//! the DRAM window of a peer rank (a second process, see `tests/pool/mod.rs`), next to plain
//! `memcpy` (`ptr::copy_nonoverlapping`) between exactly the same buffers (the same host buffer
//! and the same mapped window pages), measured in the same run, interleaved; and the latency of
//! a 64 B copy.
//!
//! Run: `cargo bench -p smem-capi --bench bm`. `SMEM_BENCH_SECONDS` sets the time per
//! (size, direction) cell (default 1.5); `SMEM_BENCH_MAX_MIB` the largest size (default 256; 0
//! skips the bandwidth table); `SMEM_BENCH_LATENCY_SAMPLES` the 64 B samples (default 200,000).
//!
//! Method: for each size, samples alternate between `smem_bm_copy` and `memcpy`; a sample is a
//! batch of copies of about 1 MiB in total (at least one copy), timed with one `Instant` pair.
//! GB/s is the median over samples; ratio = the median of smem / memcpy over adjacent sample
//! pairs (other load on the machine then moves both sides of a pair alike). Latency: one 64 B copy per sample,
//! `SMEM_BENCH_LATENCY_SAMPLES` per method, median and p99 (timer overhead included in both).

#[path = "../tests/pool/mod.rs"]
mod pool;

use std::ffi::c_void;
use std::hint::black_box;
use std::time::{Duration, Instant};

use smem::{
    SMEMB_COPY_G2H, SMEMB_COPY_H2G, smem_batch_copy_params, smem_bm_copy, smem_bm_copy_batch,
    smem_bm_t,
};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

#[derive(Clone, Copy)]
enum Dir {
    H2g,
    G2h,
}

/// One copy of `len` bytes between the host buffer `host` and window address `win`.
#[inline(always)]
fn smem(h: smem_bm_t, dir: Dir, host: *mut u8, win: *mut u8, len: u64) {
    let (src, dst, t) = match dir {
        Dir::H2g => (host.cast_const(), win, SMEMB_COPY_H2G),
        Dir::G2h => (win.cast_const(), host, SMEMB_COPY_G2H),
    };
    // SAFETY: `host` is a live buffer of at least `len` bytes; the window side is validated.
    let rc = unsafe { smem_bm_copy(h, src.cast::<c_void>(), dst.cast::<c_void>(), len, t, 0) };
    debug_assert_eq!(rc, 0);
    black_box(rc);
}

#[inline(always)]
fn memcpy(dir: Dir, host: *mut u8, win: *mut u8, len: u64) {
    let (src, dst) = match dir {
        Dir::H2g => (host.cast_const(), win),
        Dir::G2h => (win.cast_const(), host),
    };
    // SAFETY: both ranges are `len` bytes of live memory (the host buffer and a part of the
    // peer's window mapped in this process), disjoint.
    unsafe { std::ptr::copy_nonoverlapping(black_box(src), black_box(dst), len as usize) };
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

/// Median GB/s of smem and memcpy for one size and direction, and the median of the ratios of
/// adjacent (smem, memcpy) sample pairs (robust against load changes of the machine during
/// the cell, which move both samples of a pair alike).
fn cell(
    h: smem_bm_t,
    dir: Dir,
    host: *mut u8,
    win: *mut u8,
    len: u64,
    secs: f64,
) -> (f64, f64, f64) {
    let batch = (MIB / len).max(1);
    // Warm-up (and check that the copy works at all).
    smem(h, dir, host, win, len);
    memcpy(dir, host, win, len);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while (Instant::now() < end || a.len() < 5) && a.len() < 100_000 {
        let t = Instant::now();
        for _ in 0..batch {
            smem(h, dir, host, win, len);
        }
        a.push((batch * len) as f64 / t.elapsed().as_secs_f64() / 1e9);
        let t = Instant::now();
        for _ in 0..batch {
            memcpy(dir, host, win, len);
        }
        b.push((batch * len) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    let mut ratios: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x / y).collect();
    (median(&mut a), median(&mut b), median(&mut ratios))
}

/// Entries of the batch cell and their size (SPEC 6.1's example: 1024 x 16 KiB).
const BATCH_N: usize = 1024;
const BATCH_LEN: u64 = 16 * KIB;

/// `smem_bm_copy_batch` of [`BATCH_N`] x [`BATCH_LEN`] (entry `i` at `host + i*len` and
/// `win + i*len`) vs a `memcpy` loop over the same entries: median GB/s of each and the median
/// ratio of adjacent sample pairs, as [`cell`].
fn batch_cell(h: smem_bm_t, dir: Dir, host: *mut u8, win: *mut u8, secs: f64) -> (f64, f64, f64) {
    let at = |base: *mut u8, i: usize| base.wrapping_add(i * BATCH_LEN as usize).cast::<c_void>();
    let (mut src, mut dst): (Vec<*mut c_void>, Vec<*mut c_void>) = (0..BATCH_N)
        .map(|i| match dir {
            Dir::H2g => (at(host, i), at(win, i)),
            Dir::G2h => (at(win, i), at(host, i)),
        })
        .unzip();
    let sizes = vec![BATCH_LEN; BATCH_N];
    let t = match dir {
        Dir::H2g => SMEMB_COPY_H2G,
        Dir::G2h => SMEMB_COPY_G2H,
    };
    let mut params = smem_batch_copy_params {
        sources: src.as_mut_ptr(),
        destinations: dst.as_mut_ptr(),
        dataSizes: sizes.as_ptr(),
        batchSize: BATCH_N as u32,
    };
    let mut batch = || {
        // SAFETY: every entry is BATCH_LEN bytes of the live host buffer or of the window.
        let rc = unsafe { smem_bm_copy_batch(h, &mut params, t, 0) };
        assert_eq!(rc, 0, "smem_bm_copy_batch");
    };
    let total = BATCH_N as f64 * BATCH_LEN as f64;
    let looped = || {
        for i in 0..BATCH_N {
            memcpy(dir, at(host, i).cast(), at(win, i).cast(), BATCH_LEN);
        }
    };
    batch();
    looped();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while (Instant::now() < end || a.len() < 5) && a.len() < 100_000 {
        let t0 = Instant::now();
        batch();
        a.push(total / t0.elapsed().as_secs_f64() / 1e9);
        let t0 = Instant::now();
        looped();
        b.push(total / t0.elapsed().as_secs_f64() / 1e9);
    }
    let mut ratios: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x / y).collect();
    (median(&mut a), median(&mut b), median(&mut ratios))
}

fn size_name(len: u64) -> String {
    if len >= MIB {
        format!("{} MiB", len / MIB)
    } else {
        format!("{} KiB", len / KIB)
    }
}

fn main() {
    pool::run_peer_if_child();
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let secs: f64 = std::env::var("SMEM_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.5);
    let max: u64 = std::env::var("SMEM_BENCH_MAX_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
        * MIB;
    let samples: usize = std::env::var("SMEM_BENCH_LATENCY_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let p = pool::TwoRanks::start(&[], max.max(2 * MIB), 2 * MIB);
    let win = (p.window(1) + p.dram_off) as *mut u8;
    let mut host = vec![0x5au8; max.max(4 * KIB) as usize];
    host.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
    let hp = host.as_mut_ptr();

    println!(
        "smem_bm_copy vs memcpy, same host buffer <-> the DRAM window of peer rank 1 (another process), median of batches, {secs} s per cell"
    );
    println!(
        "{:>9} | {:>10} {:>10} {:>6} | {:>10} {:>10} {:>6}",
        "size", "H2G GB/s", "memcpy", "ratio", "G2H GB/s", "memcpy", "ratio"
    );
    let mut len = 4 * KIB;
    let mut worst: Option<(f64, u64)> = None;
    while len <= max {
        let (h2g, m1, r1) = cell(p.h, Dir::H2g, hp, win, len, secs);
        let (g2h, m2, r2) = cell(p.h, Dir::G2h, hp, win, len, secs);
        println!(
            "{:>9} | {h2g:>10.2} {m1:>10.2} {:>5.1}% | {g2h:>10.2} {m2:>10.2} {:>5.1}%",
            size_name(len),
            r1 * 100.0,
            r2 * 100.0
        );
        if len >= 64 * KIB {
            let r = r1.min(r2);
            if worst.is_none_or(|(w, _)| r < w) {
                worst = Some((r, len));
            }
        }
        len *= 4;
    }
    if let Some((r, at)) = worst {
        println!(
            "lowest ratio from 64 KiB up: {:.1}% at {} (target >= 95%)",
            r * 100.0,
            size_name(at)
        );
    }

    if max >= BATCH_N as u64 * BATCH_LEN {
        println!(
            "smem_bm_copy_batch of {BATCH_N} x {} vs a memcpy loop over the same entries (one host, peer's DRAM window), median of samples, {secs} s per cell",
            size_name(BATCH_LEN)
        );
        for (name, dir) in [("H2G", Dir::H2g), ("G2H", Dir::G2h)] {
            let (smem, mc, r) = batch_cell(p.h, dir, hp, win, secs);
            println!(
                "batch {name}: smem_bm_copy_batch {smem:.2} GB/s | memcpy loop {mc:.2} GB/s | ratio {:.1}% (target >= 80%)",
                r * 100.0
            );
        }
    }

    // 64 B latency, one timed copy per sample; the timer alone is measured the same way.
    let n = samples.max(1);
    let mut empty = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        empty.push(black_box(t).elapsed().as_nanos() as f64);
    }
    println!(
        "timer alone (Instant::now + elapsed): median {:.0} ns, p99 {:.0} ns",
        median(&mut empty),
        pct(&mut empty, 0.99)
    );
    for (name, dir) in [("H2G", Dir::H2g), ("G2H", Dir::G2h)] {
        let (mut a, mut b) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..1000 {
            smem(p.h, dir, hp, win, 64);
        }
        for _ in 0..n {
            let t = Instant::now();
            smem(p.h, dir, hp, win, 64);
            a.push(t.elapsed().as_nanos() as f64);
            let t = Instant::now();
            memcpy(dir, hp, win, 64);
            b.push(t.elapsed().as_nanos() as f64);
        }
        println!(
            "64 B {name} latency: smem_bm_copy median {:.0} ns, p99 {:.0} ns | memcpy median {:.0} ns, p99 {:.0} ns (timer included)",
            median(&mut a),
            pct(&mut a, 0.99),
            median(&mut b),
            pct(&mut b, 0.99)
        );
    }
    drop(p);
}
