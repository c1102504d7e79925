//! SHM control operation latency: barrier and allgather (64 B, 64 KiB) with 2, 4, 8 and 16
//! ranks, each rank a process (this binary run again with `SMEM_SHM_BENCH_*` env vars), the
//! config store hosted by rank 0 (the default). Prints the median and p99 latency seen by
//! rank 0 over `SMEM_SHM_BENCH_ITERS` calls per operation (default 1000; 64 KiB allgather: a
//! fifth of it).
//!
//! `cargo bench -p smem-linux --bench shm_collectives [-- 2 4]` (rank counts; default 2 4 8 16).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smem_linux::runtime::shm::{self, DATA_OP_MTE, ShmConfig};

const RANK: &str = "SMEM_SHM_BENCH_RANK";
const WORLD: &str = "SMEM_SHM_BENCH_WORLD";
const URL: &str = "SMEM_SHM_BENCH_URL";
const ITERS: &str = "SMEM_SHM_BENCH_ITERS";

fn main() {
    if let (Ok(rank), Ok(world), Ok(url)) = (
        std::env::var(RANK),
        std::env::var(WORLD),
        std::env::var(URL),
    ) {
        let (rank, world) = (rank.parse().expect("rank"), world.parse().expect("world"));
        rank_main(rank, world, &url);
        return;
    }
    let mut sizes: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if sizes.is_empty() {
        sizes = vec![2, 4, 8, 16];
    }
    println!(
        "SHM control operations, ranks as processes on {} CPU(s); latency seen by rank 0",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "{:>5}  {:>22}  {:>22}  {:>22}",
        "ranks", "barrier med/p99 us", "allgather 64B med/p99", "allgather 64KiB med/p99"
    );
    for n in sizes {
        run_world(n);
    }
}

fn run_world(n: u32) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let exe = std::env::current_exe().expect("bench binary");
    let mut children: Vec<Child> = (0..n)
        .map(|r| {
            Command::new(&exe)
                .env(RANK, r.to_string())
                .env(WORLD, n.to_string())
                .env(URL, &url)
                .stdin(Stdio::null())
                .stdout(if r == 0 {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .spawn()
                .expect("spawn rank")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut failed = false;
    for c in children.iter_mut().skip(1) {
        loop {
            match c.try_wait().expect("try_wait") {
                Some(s) => {
                    failed |= !s.success();
                    break;
                }
                None if Instant::now() > deadline => {
                    failed = true;
                    break;
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    let first = children.remove(0);
    if failed {
        for mut c in children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    let out = first.wait_with_output().expect("rank 0 output");
    assert!(
        !failed && out.status.success(),
        "a rank of the {n}-rank run failed"
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let p99 = ((v.len() * 99).div_ceil(100)).saturating_sub(1);
    (us(v[v.len() / 2]), us(v[p99.min(v.len() - 1)]))
}

fn rank_main(rank: u32, world: u32, url: &str) {
    let iters: usize = std::env::var(ITERS)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let cfg = ShmConfig {
        init_timeout: Duration::from_secs(60),
        create_timeout: Duration::from_secs(60),
        control_timeout: Duration::from_secs(60),
        ..ShmConfig::default()
    };
    shm::shm_init(url, world, rank, 0, &cfg).expect("init");
    let (h, _) = shm::shm_create(0, world, rank, 2 << 20, DATA_OP_MTE, 0).expect("create");
    let mut row = format!("{world:>5}");
    // Warm up.
    for _ in 0..50 {
        shm::shm_control_barrier(h).expect("barrier");
    }
    let mut lat = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        shm::shm_control_barrier(h).expect("barrier");
        lat.push(t.elapsed());
    }
    let (m, p) = percentiles(lat);
    row.push_str(&format!("  {:>22}", format!("{m:.0} / {p:.0}")));
    for (len, n) in [(64usize, iters), (65_536, (iters / 5).max(10))] {
        let send = vec![rank as u8; len];
        let mut recv = vec![0u8; len * world as usize];
        shm::shm_control_barrier(h).expect("barrier");
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            shm::shm_control_allgather(h, &send, &mut recv).expect("allgather");
            lat.push(t.elapsed());
        }
        assert!(
            (0..world as usize).all(|r| recv[r * len] == r as u8),
            "allgather bytes"
        );
        let (m, p) = percentiles(lat);
        row.push_str(&format!("  {:>22}", format!("{m:.0} / {p:.0}")));
    }
    shm::shm_control_barrier(h).expect("barrier");
    if rank == 0 {
        println!("{row}");
        // Let the others finish their destroy / uninit before the store goes away.
        std::thread::sleep(Duration::from_millis(200));
    }
    shm::shm_destroy(h, 0).expect("destroy");
    shm::shm_uninit(0);
}
