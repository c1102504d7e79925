//! Transfer engine benchmark (SPEC 6.2): `smem_trans_batch_write` of 1024 x 16 KiB from a
//! bench engine into a server engine's `smem_trans_malloc` memory and registered user memory,
//! on one host (mapped memory / `process_vm_writev`) next to a `memcpy` loop over the same
//! entries, and across two simulated hosts (`SMEM_HOST_ID`, the TCP transport) next to a raw
//! loopback TCP stream of the same 16 MiB between the same two processes (acknowledged by one
//! byte when all arrived), interleaved round by round; plus 4 KiB write latency.
//!
//! Run: `cargo bench -p smem-capi --bench trans`. Both engines are processes running
//! `capi/tests/c/trans.c` (`benchserver` and `bench` modes); medians of 15 rounds, paths
//! interleaved within each round. Entries are contiguous (coalesced into few requests) and
//! scattered (reverse order: one request per entry).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Lang, Link};

/// Runs a benchserver + bench pair; returns the bench's `bench NAME VALUE` lines.
fn run_pair(
    exe: &Path,
    tag: &str,
    server_env: &[(&str, &str)],
    bench_env: &[(&str, &str)],
) -> Vec<(String, f64)> {
    let dir = common::scratch(tag);
    let d = dir.to_str().expect("utf-8");
    let url = format!("tcp://127.0.0.1:{}", common::ranks::free_port());
    let mut s = Command::new(exe);
    s.args(["benchserver", &url, "bench-srv", d])
        .env("SMEM_LOG_LEVEL", "warn");
    for (k, v) in server_env {
        s.env(k, v);
    }
    let (mut server, so, se) = common::spawn_captured(&mut s, &dir, "server");
    let mut b = Command::new(exe);
    b.args(["bench", &url, "bench-cli", "bench-srv", d])
        .env("SMEM_LOG_LEVEL", "warn");
    for (k, v) in bench_env {
        b.env(k, v);
    }
    let out = common::run(&mut b, Duration::from_secs(300));
    let status = common::wait_until(&mut server, Instant::now() + Duration::from_secs(30));
    assert!(
        out.status.success() && status.is_some_and(|s| s.success()),
        "{tag}: bench {:?} server {status:?}\n{}\n{}\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr,
        std::fs::read_to_string(so).unwrap_or_default(),
        std::fs::read_to_string(se).unwrap_or_default()
    );
    let _ = std::fs::remove_dir_all(&dir);
    out.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("bench "))
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn get(v: &[(String, f64)], k: &str) -> f64 {
    v.iter().find(|(n, _)| n == k).map_or(f64::NAN, |(_, x)| *x)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("trans: bench");
        return;
    }
    let dir = common::scratch("trans-bench-build");
    let exe = dir.join("trans");
    common::build_c(
        &["trans.c"],
        &exe,
        Lang::C,
        Link::Shared,
        &common::lib_dir(),
    );
    let one = run_pair(&exe, "trans-bench-one", &[], &[]);
    let two = run_pair(
        &exe,
        "trans-bench-two",
        &[("SMEM_HOST_ID", "bench-host-a")],
        &[("SMEM_HOST_ID", "bench-host-b")],
    );
    let mc = get(&one, "memcpy");
    let raw = get(&two, "raw_tcp");
    println!("transfer engine, smem_trans_batch_write of 1024 x 16 KiB (medians of 15; GB/s)");
    println!("| path | contiguous | ratio | scattered | ratio | baseline |");
    println!("|---|---|---|---|---|---|");
    for (name, v, base, bname) in [
        ("one host, pool memory (mapped)", &one, mc, "memcpy"),
        (
            "one host, user memory (process_vm_writev)",
            &one,
            mc,
            "memcpy",
        ),
        ("two hosts, pool memory (TCP)", &two, raw, "raw TCP"),
        ("two hosts, user memory (TCP)", &two, raw, "raw TCP"),
    ] {
        let key = if name.contains("pool") {
            "pool"
        } else {
            "user"
        };
        let c = get(v, key);
        let s = get(v, &format!("{key}_scattered"));
        println!(
            "| {name} | {c:.2} | {:.2}x | {s:.2} | {:.2}x | {bname} {base:.2} |",
            c / base,
            s / base
        );
    }
    println!(
        "4 KiB write latency (median of 401): one host pool {:.1} us, user {:.1} us; two hosts pool {:.1} us, user {:.1} us",
        get(&one, "lat4k_pool_us"),
        get(&one, "lat4k_user_us"),
        get(&two, "lat4k_pool_us"),
        get(&two, "lat4k_user_us")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
