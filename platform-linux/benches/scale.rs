//! The control plane at scale: 64 / 256 / 1024 ranks as processes (forked by this binary, as
//! a user program would), BM and SHM, every rank on one host or simulated hosts of 8 ranks
//! (`SMEM_HOST_ID` per group; BM objects with `SMEMB_DATA_OP_HOST_TCP`). Rank 0 hosts the
//! config store (the default). Prints, per phase, the slowest rank's time and the mean store
//! ops, bytes and watch events per rank (`smem_linux::store::traffic`, heartbeats included),
//! and when the last rank finished join (BM) or the first barrier (SHM), counted from the
//! fork of the first rank.
//!
//! Phases: `init` (`*_init`), `create` (2 MiB DRAM / symmetric), `join` (BM `smem_bm_join`;
//! SHM the first `smem_shm_control_barrier`), `copy` (4 KiB into the next rank's window and
//! back), `teardown` (destroy + uninit).
//!
//! `cargo bench -p smem-linux --bench scale [-- 64 256 1024] [bm|shm] [one|hosts]`.
#![allow(unsafe_code)]

#[path = "../tests/scale_common/mod.rs"]
mod scale_common;

use std::time::Duration;

use scale_common::{Api, PHASES, Shape};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut sizes: Vec<u32> = args.iter().filter_map(|a| a.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![64, 256, 1024];
    }
    let pick = |a: &str, b: &str| {
        let (x, y) = (args.iter().any(|s| s == a), args.iter().any(|s| s == b));
        (x || !y, y || !x)
    };
    let (bm, shm) = pick("bm", "shm");
    let (one, hosts) = pick("one", "hosts");
    let secs = std::env::var("SMEM_SCALE_DEADLINE_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    println!(
        "control plane at scale: ranks as forked processes on {} CPU(s); slowest rank per phase, mean store traffic per rank",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let mut failed = false;
    for api in [Api::Bm, Api::Shm] {
        if (api == Api::Bm && !bm) || (api == Api::Shm && !shm) {
            continue;
        }
        for per_host in [None, Some(8)] {
            if (per_host.is_none() && !one) || (per_host.is_some() && !hosts) {
                continue;
            }
            for &world in &sizes {
                let shape = Shape {
                    api,
                    world,
                    per_host,
                    deadline: Duration::from_secs(secs),
                };
                let name = format!(
                    "{} {world} ranks, {}",
                    if api == Api::Bm { "BM " } else { "SHM" },
                    per_host.map_or("one host".to_owned(), |k| format!(
                        "{} hosts of {k}",
                        world / k
                    ))
                );
                match scale_common::run(shape) {
                    Ok(rep) => {
                        println!(
                            "{name}: ready (last {}) {:.2} s after the first fork, all exited {:.2} s",
                            if api == Api::Bm { "join" } else { "barrier" },
                            rep.ready_micros as f64 / 1e6,
                            rep.total_micros as f64 / 1e6
                        );
                        for p in PHASES {
                            let (ops, bytes, events) = rep.per_rank(p);
                            println!(
                                "    {p:<9} slowest {:>9.1} ms   ops/rank {ops:>7.1} (max {:>5})   bytes/rank {bytes:>10.0}   events/rank {events:>7.1}",
                                rep.max_micros(p) as f64 / 1e3,
                                rep.max_ops(p)
                            );
                        }
                    }
                    Err(e) => {
                        failed = true;
                        println!("{name}: FAILED: {e}");
                    }
                }
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
