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
//! With `etcd`, every shape runs twice in the same run: on `tcp://` (rank 0 hosting) and on the
//! `etcd://` URL of a 3-member etcd cluster on loopback (`tests/etcd_common`; no rank hosts),
//! and a third row gives the ratio etcd / tcp of each phase's slowest rank.
//!
//! `cargo bench -p smem-linux --bench scale [-- 64 256 1024] [bm|shm] [one|hosts] [etcd]`.
#![allow(unsafe_code)]

#[path = "../tests/scale_common/mod.rs"]
mod scale_common;

#[path = "../tests/etcd_common/mod.rs"]
mod etcd_common;

use std::time::Duration;

use scale_common::{Api, PHASES, Report, Shape};

/// Prints one run's phases; `None` when it failed (printed).
fn row(name: &str, api: Api, res: Result<Report, String>) -> Option<Report> {
    let rep = match res {
        Ok(rep) => rep,
        Err(e) => {
            println!("{name}: FAILED: {e}");
            return None;
        }
    };
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
    Some(rep)
}

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
    let etcd = if args.iter().any(|s| s == "etcd") {
        match etcd_common::Cluster::start(3, "scale") {
            Some(c) => Some(c),
            None => std::process::exit(1),
        }
    } else {
        None
    };
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
                let mut shape = Shape {
                    api,
                    world,
                    per_host,
                    deadline: Duration::from_secs(secs),
                    store: None,
                };
                let name = format!(
                    "{} {world} ranks, {}",
                    if api == Api::Bm { "BM " } else { "SHM" },
                    per_host.map_or("one host".to_owned(), |k| format!(
                        "{} hosts of {k}",
                        world / k
                    ))
                );
                let tcp = row(&format!("{name}, tcp"), api, scale_common::run(&shape));
                failed |= tcp.is_none();
                let Some(cluster) = &etcd else { continue };
                shape.store = Some(cluster.url(&format!("/scale-{name}/").replace([' ', ','], "")));
                let on_etcd = row(&format!("{name}, etcd"), api, scale_common::run(&shape));
                failed |= on_etcd.is_none();
                if let (Some(t), Some(e)) = (tcp, on_etcd) {
                    let ratios: Vec<String> = PHASES
                        .iter()
                        .map(|p| {
                            let r = e.max_micros(p) as f64 / t.max_micros(p).max(1) as f64;
                            format!("{p} {r:.2}")
                        })
                        .collect();
                    println!("    etcd / tcp (slowest rank): {}", ratios.join(", "));
                }
            }
        }
    }
    // Stops the etcd members (by PID) before a failure exits without running destructors.
    drop(etcd);
    if failed {
        std::process::exit(1);
    }
}
