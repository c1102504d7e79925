//! SHM control operation latency: barrier and allgather (64 B, 64 KiB) with 2, 4, 8 and 16
//! ranks on one host and 8 ranks as 2 simulated hosts (`SMEM_HOST_ID`), each rank a process
//! (this binary run again with `SMEM_SHM_BENCH_*` env vars), the config store hosted by rank 0
//! (the default). Next to them, in the same processes and interleaved in blocks with the smem
//! barrier, a process-shared `pthread_barrier_t` in shared memory: the baseline. Prints the
//! median and p99 latency seen by rank 0 over `SMEM_SHM_BENCH_ITERS` calls per operation
//! (default 1000; 64 KiB allgather: a fifth of it), and the ratios of the medians to the
//! pthread barrier's.
//!
//! `cargo bench -p smem-linux --bench shm_collectives [-- 2 4 8x2]` (rank counts, `NxH` for N
//! ranks on H simulated hosts; default 2 4 8 16 8x2).

use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smem_linux::runtime::shm::{self, DATA_OP_MTE, ShmConfig};
use smem_linux::sys::fd;
use smem_linux::sys::futex::SharedMap;

const RANK: &str = "SMEM_SHM_BENCH_RANK";
const WORLD: &str = "SMEM_SHM_BENCH_WORLD";
const URL: &str = "SMEM_SHM_BENCH_URL";
const ITERS: &str = "SMEM_SHM_BENCH_ITERS";
/// `<pid>/<fd>` of the memfd holding the pthread barrier (opened through `/proc`).
const PTHREAD: &str = "SMEM_SHM_BENCH_PTHREAD";
const HOSTS: &str = "SMEM_SHM_BENCH_HOSTS";
const HOST_ID: &str = "SMEM_HOST_ID";
/// Blocks the pthread and smem barrier measurements alternate in (so both see the same load).
const BLOCKS: usize = 10;

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
    let mut runs: Vec<(u32, u32)> = std::env::args()
        .skip(1)
        .filter_map(|a| match a.split_once('x') {
            Some((n, h)) => Some((n.parse().ok()?, h.parse().ok()?)),
            None => Some((a.parse().ok()?, 1)),
        })
        .filter(|&(n, h)| n > 0 && (1..=n).contains(&h))
        .collect();
    if runs.is_empty() {
        runs = vec![(2, 1), (4, 1), (8, 1), (16, 1), (8, 2)];
    }
    println!(
        "SHM control operations, ranks as processes on {} CPU(s); latency seen by rank 0 in us (median / p99); x = median / pthread barrier median",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "{:>5} {:>5}  {:>14}  {:>14} {:>6}  {:>14} {:>6}  {:>16}",
        "ranks",
        "hosts",
        "pthread bar",
        "smem barrier",
        "x",
        "allgather 64B",
        "x",
        "allgather 64KiB"
    );
    for (n, hosts) in runs {
        run_world(n, hosts);
    }
}

fn run_world(n: u32, hosts: u32) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let exe = std::env::current_exe().expect("bench binary");
    // The baseline: a process-shared pthread barrier of n in a memfd the ranks open via /proc.
    let mem = fd::memfd_create(c"smem-bench-pthread").expect("memfd");
    fd::ftruncate(mem.as_fd(), 4096).expect("ftruncate");
    let map = SharedMap::map(mem.as_fd(), 4096).expect("map");
    let barrier = pthread_barrier(&map);
    // SAFETY: `barrier` points to 32 zeroed, 8-aligned bytes of a live shared mapping; the
    // attribute object is initialised before use and destroyed after.
    unsafe {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_barrierattr_t>::uninit();
        assert_eq!(libc::pthread_barrierattr_init(attr.as_mut_ptr()), 0);
        assert_eq!(
            libc::pthread_barrierattr_setpshared(attr.as_mut_ptr(), libc::PTHREAD_PROCESS_SHARED),
            0
        );
        assert_eq!(libc::pthread_barrier_init(barrier, attr.as_ptr(), n), 0);
        libc::pthread_barrierattr_destroy(attr.as_mut_ptr());
    }
    let pthread = format!("{}/{}", std::process::id(), mem.as_raw_fd());
    let mut children: Vec<Child> = (0..n)
        .map(|r| {
            let mut cmd = Command::new(&exe);
            if hosts > 1 {
                cmd.env(HOST_ID, format!("bench-host-{}", r * hosts / n));
            } else {
                cmd.env_remove(HOST_ID);
            }
            cmd.env(RANK, r.to_string())
                .env(HOSTS, hosts.to_string())
                .env(WORLD, n.to_string())
                .env(URL, &url)
                .env(PTHREAD, &pthread)
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
    let deadline = Instant::now() + Duration::from_secs(600);
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
    let mut first = children.remove(0);
    if failed {
        let _ = first.kill();
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

fn pthread_barrier(map: &SharedMap) -> *mut libc::pthread_barrier_t {
    const _: () = assert!(size_of::<libc::pthread_barrier_t>() <= 4096);
    map.u64_at(0).expect("word 0").as_ptr().cast()
}

fn median_p99(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let p99 = ((v.len() * 99).div_ceil(100)).saturating_sub(1);
    (us(v[v.len() / 2]), us(v[p99.min(v.len() - 1)]))
}

fn cell((m, p): (f64, f64)) -> String {
    format!("{m:.1} / {p:.0}")
}

fn rank_main(rank: u32, world: u32, url: &str) {
    let iters: usize = std::env::var(ITERS)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
        .max(BLOCKS);
    let (ppid, pfd) = std::env::var(PTHREAD)
        .ok()
        .and_then(|v| {
            let (p, f) = v.split_once('/')?;
            Some((p.parse().ok()?, f.parse().ok()?))
        })
        .expect("pthread barrier memfd");
    let mem = fd::open_proc_fd(ppid, pfd).expect("open the pthread barrier memfd");
    let map = SharedMap::map(mem.as_fd(), 4096).expect("map");
    let pbar = pthread_barrier(&map);
    let pthread_wait = || {
        // SAFETY: the parent initialised the process-shared barrier before starting the ranks
        // and destroys it only after they all exited; the mapping lives as long as `map`.
        let r = unsafe { libc::pthread_barrier_wait(pbar) };
        assert!(
            r == 0 || r == libc::PTHREAD_BARRIER_SERIAL_THREAD,
            "pthread barrier: {r}"
        );
    };
    let cfg = ShmConfig {
        init_timeout: Duration::from_secs(120),
        create_timeout: Duration::from_secs(120),
        control_timeout: Duration::from_secs(120),
        ..ShmConfig::default()
    };
    shm::shm_init(url, world, rank, 0, &cfg).expect("init");
    let (h, _) = shm::shm_create(0, world, rank, 2 << 20, DATA_OP_MTE, 0).expect("create");
    let hosts: u32 = std::env::var(HOSTS)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // Warm up both.
    for _ in 0..50 {
        shm::shm_control_barrier(h).expect("barrier");
        pthread_wait();
    }
    let block = iters / BLOCKS;
    let (mut base, mut bar) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
    for _ in 0..BLOCKS {
        shm::shm_control_barrier(h).expect("barrier");
        for _ in 0..block {
            let t = Instant::now();
            pthread_wait();
            base.push(t.elapsed());
        }
        pthread_wait();
        for _ in 0..block {
            let t = Instant::now();
            shm::shm_control_barrier(h).expect("barrier");
            bar.push(t.elapsed());
        }
    }
    let base = median_p99(base);
    let bar = median_p99(bar);
    let mut gathers = Vec::new();
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
            (0..world as usize)
                .all(|r| recv[r * len] == r as u8 && recv[r * len + len - 1] == r as u8),
            "allgather bytes"
        );
        gathers.push(median_p99(lat));
    }
    shm::shm_control_barrier(h).expect("barrier");
    if rank == 0 {
        println!(
            "{world:>5} {hosts:>5}  {:>14}  {:>14} {:>6.2}  {:>14} {:>6.2}  {:>16}",
            cell(base),
            cell(bar),
            bar.0 / base.0,
            cell(gathers[0]),
            gathers[0].0 / base.0,
            cell(gathers[1]),
        );
        // Let the others finish their destroy / uninit before the store goes away.
        std::thread::sleep(Duration::from_millis(200));
    }
    shm::shm_destroy(h, 0).expect("destroy");
    shm::shm_uninit(0);
}
