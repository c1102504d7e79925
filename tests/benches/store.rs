//! Config store benchmark: ops/s and p50/p99 latency of SET / GET / ADD for 1, 16 and 64
//! concurrent clients, against our `smem-store` and the reference server (memfabric-hybrid
//! wheel), measured in the same run with the same client (ours), each server in its own process.
//!
//! Run: `cargo build --release --bins && cargo bench -p smem-tests --bench store` (set `SMEM_REF_PYTHON` to a Python with the
//! wheel, or run `tests/interop/setup-venv.sh` first; without it only our server is measured).
//! `SMEM_BENCH_SECONDS` sets the time per (server, op, clients) cell (default 1.5).
//! `SMEM_BENCH_BASELINE_STORE=/path/to/smem-store` also measures that binary (e.g. a build of
//! the previous commit) in the same run, each cell right after ours, and prints ours/baseline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use smem_linux::store::{ClientOptions, StoreClient};
use smem_tests::servers::{RefServer, SmemStoreProcess};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Set,
    Get,
    Add,
}

struct Cell {
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

fn run_cell(addr: SocketAddr, op: Op, clients: usize, secs: f64) -> Cell {
    let start = Arc::new(Barrier::new(clients + 1));
    let value = vec![0x5a_u8; 64];
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let start = Arc::clone(&start);
            let value = value.clone();
            thread::spawn(move || {
                let client = StoreClient::connect(
                    addr,
                    ClientOptions {
                        op_timeout: Duration::from_secs(10),
                        ..Default::default()
                    },
                )
                .expect("bench client connects");
                let keys: Vec<Vec<u8>> = (0..64)
                    .map(|i| format!("bench/{c}/{i}").into_bytes())
                    .collect();
                for k in &keys {
                    client.set(k, &value).expect("prefill");
                }
                start.wait();
                let deadline = Instant::now() + Duration::from_secs_f64(secs);
                let mut lat = Vec::with_capacity(1 << 16);
                let mut i = 0usize;
                while Instant::now() < deadline && lat.len() < 5_000_000 {
                    let k = &keys[i % keys.len()];
                    let t = Instant::now();
                    match op {
                        Op::Set => client.set(k, &value).map(|_| ()),
                        Op::Get => client.get(k).map(|_| ()),
                        Op::Add => client
                            .add(format!("bench/{c}/ctr").as_bytes(), 1)
                            .map(|_| ()),
                    }
                    .expect("bench op");
                    lat.push(t.elapsed().as_nanos() as u64);
                    i += 1;
                }
                client.close();
                lat
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    let mut all: Vec<u64> = Vec::new();
    for h in handles {
        all.extend(h.join().expect("bench thread"));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    Cell {
        ops_per_s: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

fn main() {
    let secs: f64 = std::env::var("SMEM_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.5);
    let ours = SmemStoreProcess::start().expect("start smem-store");
    let reference = match RefServer::start() {
        Ok(r) => Some(r),
        Err(e) => {
            println!("reference server unavailable ({e}); measuring ours only");
            None
        }
    };
    let baseline = std::env::var_os("SMEM_BENCH_BASELINE_STORE").map(|bin| {
        SmemStoreProcess::start_bin(bin.as_ref(), &[]).expect("start the baseline smem-store")
    });
    println!(
        "{:<4} {:>7} | {:>12} {:>9} {:>9} | {:>12} {:>9} {:>9} | {:>8} {:>8}",
        "op",
        "clients",
        "ours ops/s",
        "p50 us",
        "p99 us",
        "ref ops/s",
        "p50 us",
        "p99 us",
        "x ops/s",
        "p99 ref/ours"
    );
    for op in [Op::Set, Op::Get, Op::Add] {
        for clients in [1usize, 16, 64] {
            let a = run_cell(ours.addr(), op, clients, secs);
            let base = baseline
                .as_ref()
                .map(|s| run_cell(s.addr(), op, clients, secs));
            let b = reference
                .as_ref()
                .map(|r| run_cell(r.addr(), op, clients, secs));
            if let Some(base) = base {
                println!(
                    "{:<4} {:>7} | baseline {:>12.0} {:>9.1} {:>9.1} | ours/baseline ops/s {:.2}, p99 {:.2}",
                    format!("{op:?}").to_lowercase(),
                    clients,
                    base.ops_per_s,
                    base.p50_us,
                    base.p99_us,
                    a.ops_per_s / base.ops_per_s,
                    a.p99_us / base.p99_us
                );
            }
            match b {
                Some(b) => println!(
                    "{:<4} {:>7} | {:>12.0} {:>9.1} {:>9.1} | {:>12.0} {:>9.1} {:>9.1} | {:>8.2} {:>8.2}",
                    format!("{op:?}").to_lowercase(),
                    clients,
                    a.ops_per_s,
                    a.p50_us,
                    a.p99_us,
                    b.ops_per_s,
                    b.p50_us,
                    b.p99_us,
                    a.ops_per_s / b.ops_per_s,
                    b.p99_us / a.p99_us
                ),
                None => println!(
                    "{:<4} {:>7} | {:>12.0} {:>9.1} {:>9.1} |",
                    format!("{op:?}").to_lowercase(),
                    clients,
                    a.ops_per_s,
                    a.p50_us,
                    a.p99_us
                ),
            }
        }
    }
}
