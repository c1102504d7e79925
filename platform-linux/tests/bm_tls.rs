//! BM over a TLS config store: two rank processes enable mutual TLS the way
//! `smem_set_ssl_option` does (`tls::set_global`), then init, create, join and copy into each
//! other's windows; the store rank 0 hosts speaks TLS only (a plaintext peer is refused).

mod bm_common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use bm_common::{barrier, barrier_last, client, config, free_url, pattern, role, spawn_with};
use smem_linux::runtime;
use smem_linux::tls::{self, TlsOptions};

#[path = "support/pki.rs"]
mod pki;

const M: u64 = 1 << 20;
const L2G: u32 = 0;
const G2L: u32 = 1;
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

fn tls_rank(rank: u32, n: u32, url: &str) {
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

    runtime::bm_init(url, n, 0, &config(rank, 30)).expect("init over TLS");
    let c = client(url); // default options: TLS too
    let h = runtime::bm_create(1, n, 1, 2 * M, 0, 0).expect("create");
    runtime::bm_join(h, 0).expect("join");
    barrier(&c, "joined", n);

    if rank == 1 {
        // The store speaks TLS only: a plaintext frame behind the clear header is refused
        // at once with a TLS alert record (0x15), then the link closes.
        let mut raw = TcpStream::connect(bm_common::addr_of(url)).expect("connect");
        raw.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut bytes = vec![0_u8; 16];
        bytes.extend_from_slice(&[0, 0, 0, 0, 42, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        raw.write_all(&bytes).expect("write");
        let mut back = Vec::new();
        let _ = raw.read_to_end(&mut back);
        assert_eq!(back.first(), Some(&0x15), "TLS alert expected: {back:?}");
    }

    for p in 0..n {
        let win = runtime::bm_ptr(h, p as u16).expect("ptr");
        let data = [pattern(rank, p, 0); 4096];
        let dst = win + u64::from(rank) * 4096;
        // SAFETY: `data` is a live slice of 4096 readable bytes.
        unsafe { runtime::bm_copy(h, data.as_ptr() as u64, dst, 4096, L2G, 0) }.expect("L2G");
    }
    barrier(&c, "written", n);
    for p in 0..n {
        let win = runtime::bm_ptr(h, p as u16).expect("ptr");
        for from in 0..n {
            let mut buf = vec![0_u8; 4096];
            let src = win + u64::from(from) * 4096;
            // SAFETY: `buf` is 4096 writable bytes.
            unsafe { runtime::bm_copy(h, src, buf.as_mut_ptr() as u64, 4096, G2L, 0) }
                .expect("G2L");
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
