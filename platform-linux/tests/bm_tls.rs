//! BM over a TLS config store: two rank processes enable mutual TLS the way
//! `smem_set_ssl_option` does (`tls::set_global`), then init, create, join and copy into each
//! other's windows; the store rank 0 hosts speaks TLS only (a plaintext peer is refused).

mod bm_common;

#[path = "common/copy.rs"]
mod copy;
use copy::{raw_copy, raw_copy_2d};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use bm_common::{barrier, barrier_last, client, config, free_url, pattern, role, spawn_with};
use smem_core::bm::Copy2d;
use smem_linux::runtime;
use smem_linux::tls::{self, TlsOptions};

#[path = "support/pki.rs"]
mod pki;

const M: u64 = 1 << 20;
const L2G: u32 = 0;
const G2L: u32 = 1;
const G2H: u32 = 2;
const H2G: u32 = 3;
/// `SMEMB_DATA_OP_SDMA | SMEMB_DATA_OP_HOST_TCP`.
const SDMA_TCP: u32 = 1 | 4;
const TLS_DIR: &str = "SMEM_BM_TEST_TLS_DIR";

#[test]
fn two_ranks_over_a_tls_store() {
    if let Some(r) = role() {
        return tls_rank(r.rank, r.world, &r.url);
    }
    let pki = pki::Pki::new("bm");
    let dir = pki.dir.path().display().to_string();
    let url = free_url();
    let extra: Vec<(u32, &str, &str)> = (0..2).map(|r| (r, TLS_DIR, dir.as_str())).collect();
    let out = spawn_with(
        "two_ranks_over_a_tls_store",
        "tls",
        &url,
        2,
        &[0, 1],
        &extra,
    )
    .wait(Duration::from_secs(90));
    assert!(out.values().all(|o| o.contains("rank-ok")), "{out:?}");
}

/// Enables TLS the way `smem_set_ssl_option` does, with the files of the parent's PKI.
fn enable_tls(rank: u32) {
    let dir = std::env::var(TLS_DIR).expect("TLS dir");
    let dir = Path::new(&dir);
    // Rank 0 hosts the store with the server certificate; both carry serverAuth+clientAuth.
    let (cert, key) = if rank == 0 {
        ("server.pem", "server.key")
    } else {
        ("client.pem", "client.key")
    };
    tls::set_global(Some(TlsOptions::new(
        dir.join("ca.pem"),
        dir.join(cert),
        dir.join(key),
    )))
    .expect("enable TLS");
}

fn tls_rank(rank: u32, n: u32, url: &str) {
    enable_tls(rank);

    runtime::bm_init(url, n, 0, &config(rank, 30)).expect("init over TLS");
    let c = client(url); // default options: TLS too
    let h = runtime::bm_create(1, n, 1, 2 * M, 0, 0).expect("create");
    runtime::bm_join(h, 0).expect("join");
    barrier(&c, "joined", n);

    if rank == 1 {
        // The store speaks TLS only: a plaintext frame behind the clear header is refused
        // at once with a clear `TLS_REQUIRED` answer (-2101), then the link closes.
        let mut raw = TcpStream::connect(bm_common::addr_of(url)).expect("connect");
        raw.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut bytes = vec![0_u8; 16];
        bytes.extend_from_slice(&[0, 0, 0, 0, 42, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        raw.write_all(&bytes).expect("write");
        let mut back = Vec::new();
        let _ = raw.read_to_end(&mut back);
        assert_eq!(
            back,
            (-2101_i16).to_le_bytes(),
            "TLS_REQUIRED expected: {back:?}"
        );
    }

    for p in 0..n {
        let win = runtime::bm_ptr(h, p as u16).expect("ptr");
        let data = [pattern(rank, p, 0); 4096];
        let dst = win + u64::from(rank) * 4096;
        // SAFETY: `data` is a live slice of 4096 readable bytes.
        unsafe { raw_copy(h, data.as_ptr() as u64, dst, 4096, L2G) }.expect("L2G");
    }
    barrier(&c, "written", n);
    for p in 0..n {
        let win = runtime::bm_ptr(h, p as u16).expect("ptr");
        for from in 0..n {
            let mut buf = vec![0_u8; 4096];
            let src = win + u64::from(from) * 4096;
            // SAFETY: `buf` is 4096 writable bytes.
            unsafe { raw_copy(h, src, buf.as_mut_ptr() as u64, 4096, G2L) }.expect("G2L");
            assert!(
                buf.iter().all(|&b| b == pattern(from, p, 0)),
                "{p} from {from}"
            );
        }
    }
    barrier(&c, "checked", n);
    runtime::bm_leave(h, 0).expect("leave");
    barrier(&c, "left", n);
    runtime::bm_destroy(h).expect("destroy");
    barrier_last(&c, "destroyed", n);
    println!("rank-ok");
    runtime::bm_uninit(0);
}

/// Four ranks on four "hosts" (`SMEM_HOST_ID`) with TLS enabled: the store and the network
/// transport both run mutual TLS. Every rank copies into every other window (HBM and DRAM, 1D
/// and 2D) and reads every window back, every byte verified; then 32 MiB from each rank into
/// the next rank's window and back (pipelined on several TLS connections).
#[test]
fn four_ranks_copy_every_pair_over_the_tls_transport() {
    if let Some(r) = role() {
        return tls_net_rank(r.rank, r.world, &r.url);
    }
    let pki = pki::Pki::new("bm-net");
    let dir = pki.dir.path().display().to_string();
    let url = free_url();
    let ids = ["tls-host-a", "tls-host-b", "tls-host-c", "tls-host-d"];
    let mut extra: Vec<(u32, &str, &str)> = (0..4).map(|r| (r, TLS_DIR, dir.as_str())).collect();
    extra.extend((0..4).map(|r| (r, smem_linux::mem::HOST_ID_ENV, ids[r as usize])));
    let out = spawn_with(
        "four_ranks_copy_every_pair_over_the_tls_transport",
        "tls-net",
        &url,
        4,
        &[0, 1, 2, 3],
        &extra,
    )
    .wait(Duration::from_secs(120));
    assert!(out.values().all(|o| o.contains("rank-ok")), "{out:?}");
    for o in out.values() {
        println!("{}", o.lines().find(|l| l.contains("big:")).unwrap_or(""));
    }
}

fn copy(h: runtime::BmHandle, src: u64, dst: u64, len: usize, t: u32) {
    // SAFETY: the callers pass a live local buffer of `len` bytes as the local side.
    unsafe { raw_copy(h, src, dst, len as u64, t) }.expect("copy");
}

fn tls_net_rank(rank: u32, n: u32, url: &str) {
    enable_tls(rank);
    runtime::bm_init(url, n, 0, &config(rank, 30)).expect("init over TLS");
    let c = client(url);
    let h = runtime::bm_create(1, n, SDMA_TCP, 2 * M, 2 * M, 0).expect("create");
    runtime::bm_join(h, 0).expect("join");
    barrier(&c, "joined", n);
    let hbm = 2 * M;
    for p in 0..n {
        let win = runtime::bm_ptr(h, p as u16).expect("ptr");
        let off = u64::from(rank) * 4096;
        let a = [pattern(rank, p, 0); 4096];
        copy(h, a.as_ptr() as u64, win + off, 4096, L2G);
        let b = [pattern(rank, p, 1); 4096];
        copy(h, b.as_ptr() as u64, win + hbm + off, 4096, H2G);
        // 2D: 4 rows of 100 bytes, pitch 1000, in the DRAM part from 1 MiB.
        let rows: Vec<u8> = (0..400)
            .map(|i| pattern(rank, p, 3).wrapping_add((i / 100) as u8))
            .collect();
        let dst = win + hbm + M + u64::from(rank) * 4000;
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
            let mut buf = vec![0_u8; 4096];
            copy(h, win + off, buf.as_mut_ptr() as u64, 4096, G2L);
            assert!(
                buf.iter().all(|&b| b == pattern(from, p, 0)),
                "HBM of {p} from {from}"
            );
            copy(h, win + hbm + off, buf.as_mut_ptr() as u64, 4096, G2H);
            assert!(
                buf.iter().all(|&b| b == pattern(from, p, 1)),
                "DRAM of {p} from {from}"
            );
            let mut rows = vec![0_u8; 400];
            let src = win + hbm + M + u64::from(from) * 4000;
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
    barrier(&c, "checked", n);
    runtime::bm_leave(h, 0).expect("leave");
    barrier(&c, "left", n);
    runtime::bm_destroy(h).expect("destroy");

    // 32 MiB into the next rank's window and back: several pipelined TLS connections.
    let len = 32 * M;
    let h = runtime::bm_create(3, n, SDMA_TCP, len, 0, 0).expect("create 32 MiB");
    runtime::bm_join(h, 0).expect("join");
    barrier(&c, "big-joined", n);
    let fill = |from: u32, i: usize| {
        (from as u8).wrapping_mul(31).wrapping_add((i / 4093) as u8) ^ (i as u8)
    };
    let data: Vec<u8> = (0..len as usize).map(|i| fill(rank, i)).collect();
    let next = (rank + 1) % n;
    let next_win = runtime::bm_ptr(h, next as u16).expect("ptr");
    let t = std::time::Instant::now();
    copy(h, data.as_ptr() as u64, next_win, data.len(), H2G);
    let w = t.elapsed();
    barrier(&c, "big-written", n);
    let prev = (rank + n - 1) % n;
    let mut own = vec![0_u8; len as usize];
    let own_win = runtime::bm_ptr(h, rank as u16).expect("ptr");
    copy(h, own_win, own.as_mut_ptr() as u64, own.len(), G2H);
    assert!(
        own.iter().enumerate().all(|(i, &b)| b == fill(prev, i)),
        "32 MiB from {prev}"
    );
    let mut back = vec![0_u8; len as usize];
    let t = std::time::Instant::now();
    copy(h, next_win, back.as_mut_ptr() as u64, back.len(), G2H);
    let r = t.elapsed();
    assert!(back == data, "32 MiB read back from rank {next} differs");
    println!("big: 32 MiB over TLS: write {w:?} read {r:?}");
    barrier(&c, "big-checked", n);
    runtime::bm_destroy(h).expect("destroy");
    barrier_last(&c, "destroyed", n);
    println!("rank-ok");
    runtime::bm_uninit(0);
}
