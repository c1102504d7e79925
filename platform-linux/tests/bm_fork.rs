//! Fork and the store's view of links (SPEC 4): a forked child does not keep its parent's store
//! sockets (client links, the listener) open, so a parent that dies is seen down at once even
//! while its child lives; and children forked while the in-process store serves 64 clients all
//! initialise and work within their deadline.
//!
//! Each scenario runs in a child process (this binary again, see `bm_common`); processes are
//! killed by pid when a test fails.
#![allow(clippy::undocumented_unsafe_blocks)] // fork/kill/waitpid in test code, commented below

mod bm_common;

#[path = "common/copy.rs"]
mod copy;
use copy::raw_copy;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use bm_common::{
    Role, VARS, addr_of, as_rank, client, config, fork_and_wait, free_url, role, spawn,
};
use smem_core::ErrorCode;
use smem_linux::runtime;
use smem_linux::store::{ClientOptions, ServerConfig, StoreClient, StoreServer};

const M: u64 = 1 << 20;

/// Kills (SIGKILL) by pid on drop: the forked grandchild of a scenario.
struct KillPid(i32);

impl Drop for KillPid {
    fn drop(&mut self) {
        if self.0 > 0 {
            // SAFETY: plain syscall; the pid is a process this test started (indirectly).
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s[s.rfind(')').map_or(0, |i| i + 1)..]
            .trim_start()
            .starts_with('Z')
    })
}

/// Starts this binary as scenario `role` of test `name`; returns it and the pid of the child it
/// forked (printed as `forked <pid>`).
fn start_forker(name: &str, role: &str, url: &str, rank: u32) -> (Guard, KillPid) {
    let mut cmd = Command::new(std::env::current_exe().expect("exe"));
    as_rank(&mut cmd, &VARS, name, role, rank, url, 2);
    let mut c = Guard(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the forking process"),
    );
    let (tx, rx) = mpsc::channel();
    let out = c.0.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(p) = line.split("forked ").nth(1) {
                let _ = tx.send(p.trim().parse::<i32>().unwrap_or(0));
            }
        }
    });
    let pid = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the process initialised and forked");
    assert!(pid > 0 && alive(pid), "forked child {pid} runs");
    (c, KillPid(pid))
}

/// The scenario side: init (as `r.rank`), fork a child that only sleeps, report, sleep.
fn init_fork_and_sleep(r: &Role, host_store: bool) {
    let mut cfg = config(r.rank, 20);
    cfg.dynamic_world_size = true;
    cfg.start_config_store = host_store;
    let world = if host_store { 1 } else { r.world };
    runtime::bm_init(&r.url, world, 0, &cfg).expect("init");
    // SAFETY: the child only sleeps and leaves with `_exit` (async-signal-safe calls).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        for _ in 0..60 {
            // SAFETY: plain libc call.
            unsafe { libc::sleep(1) };
        }
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    println!("forked {pid}");
    std::thread::sleep(Duration::from_secs(60));
}

/// The store runs here; rank 1 inits in another process, forks a child that sleeps, and is
/// killed (SIGKILL): the store reports rank 1 down at once although the child still runs.
#[test]
fn dead_parent_is_reported_down_while_its_fork_lives() {
    if let Some(r) = role() {
        return init_fork_and_sleep(&r, false);
    }
    let server =
        StoreServer::start(ServerConfig::new("127.0.0.1:0".parse().expect("addr"))).expect("store");
    let url = format!("tcp://{}", server.local_addr());
    let watcher = client(&url);
    let down = watcher.watch_rank_down().expect("watch rank down");
    let (mut p, child) = start_forker(
        "dead_parent_is_reported_down_while_its_fork_lives",
        "fork-sleep",
        &url,
        1,
    );
    assert!(watcher.query_alive(1).expect("query"), "rank 1 registered");
    p.0.kill().expect("kill the parent");
    let killed = Instant::now();
    let rank = down
        .recv_timeout(Duration::from_secs(10))
        .expect("rank 1 reported down (its forked child must not keep the link open)");
    let took = killed.elapsed();
    assert_eq!(rank, 1);
    assert!(alive(child.0), "the forked child still runs");
    assert!(took < Duration::from_secs(5), "rank down after {took:?}");
    assert!(!watcher.query_alive(1).expect("query"));
    drop(child);
    server.shutdown();
}

/// Rank 0 hosts the store in another process, forks a child that sleeps, and is killed: the
/// clients' links close at once and the port can be bound again, although the child still runs.
#[test]
fn dead_store_host_releases_links_and_port_while_its_fork_lives() {
    if let Some(r) = role() {
        return init_fork_and_sleep(&r, true);
    }
    let url = free_url();
    let (mut p, child) = start_forker(
        "dead_store_host_releases_links_and_port_while_its_fork_lives",
        "fork-host",
        &url,
        0,
    );
    let c = client(&url);
    c.set(b"k", b"v").expect("the store serves");
    p.0.kill().expect("kill the store host");
    let killed = Instant::now();
    let e = c
        .wait_get(b"never", Duration::from_secs(10))
        .expect_err("the store is gone");
    let took = killed.elapsed();
    assert_eq!(e.code(), ErrorCode::IoError, "{e}");
    assert!(took < Duration::from_secs(5), "link closed after {took:?}");
    assert!(alive(child.0), "the forked child still runs");
    // The kernel closes a killed process's descriptors one by one: reap it first, so the
    // listener is certainly closed (the client above may see its link close before that).
    let _ = p.0.wait();
    // The forked child holds no copy of the listener: no listening socket on the port is one
    // of the child's descriptors. Not "nobody listens on the port": once it is released, a
    // test running in parallel (e.g. a store or transport of `fork_under_load_of_64_clients`
    // binding port 0) may be handed the same port, which failed this test now and then.
    let port = addr_of(&url).port();
    let held: Vec<u64> = listening_inodes(port)
        .into_iter()
        .filter(|i| socket_inodes(child.0).contains(i))
        .collect();
    assert!(
        held.is_empty(),
        "the forked child still holds the dead store host's listener on port {port} (socket inodes {held:?})"
    );
}

/// SPEC 4: while the in-process store serves 64 busy clients (and copies run), children forked
/// one after another each initialise their own pool and talk to the busy store within their
/// deadline; the parent's clients see no error.
#[test]
fn fork_under_load_of_64_clients() {
    if let Some(r) = role() {
        return fork_under_load(&r);
    }
    let url = free_url();
    let out = spawn("fork_under_load_of_64_clients", "fork-load", &url, 1, &[0])
        .wait(Duration::from_secs(120));
    assert!(out.values().all(|o| o.contains("rank-ok")), "{out:?}");
}

fn fork_under_load(r: &Role) {
    const CLIENTS: usize = 64;
    const FORKS: usize = 6;
    runtime::bm_init(&r.url, 1, 0, &config(0, 30)).expect("init");
    let h = runtime::bm_create(0, 1, 1, 2 * M, 0, 0).expect("create");
    let base = runtime::bm_join(h, 0).expect("join");
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let addr = addr_of(&r.url);
    let busy: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (stop, ops) = (Arc::clone(&stop), Arc::clone(&ops));
            std::thread::spawn(move || {
                let c = StoreClient::connect(
                    addr,
                    ClientOptions {
                        connect_timeout: Duration::from_secs(20),
                        op_timeout: Duration::from_secs(20),
                        ..ClientOptions::default()
                    },
                )
                .expect("busy client");
                let k = format!("busy/{i}");
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    c.set(k.as_bytes(), n.to_string().as_bytes())
                        .expect("busy set");
                    assert!(c.get(k.as_bytes()).expect("busy get").is_some());
                    if i == 0 {
                        let data = [n as u8; 4096];
                        // SAFETY: `data` is a live buffer of 4096 bytes.
                        unsafe { raw_copy(h, data.as_ptr() as u64, base, 4096, 3) }
                            .expect("busy copy");
                    }
                    n += 1;
                    ops.fetch_add(2, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Wait until every client runs.
    let t = Instant::now();
    while ops.load(Ordering::Relaxed) < 4 * CLIENTS as u64 && t.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    for f in 0..FORKS {
        let child_url = free_url();
        let parent_url = r.url.clone();
        let before = ops.load(Ordering::Relaxed);
        fork_and_wait(
            Duration::from_secs(25),
            Duration::from_millis(5),
            &format!("forked child {f}"),
            &format!("forked child {f} did not finish within its deadline"),
            || {
                // SAFETY: plain libc call: a hang past 20 s ends the child (SIGALRM).
                unsafe { libc::alarm(20) };
                runtime::bm_init(&child_url, 1, 0, &config(0, 10)).expect("child init");
                let h = runtime::bm_create(0, 1, 1, 2 * M, 0, 0).expect("child create");
                let b = runtime::bm_join(h, 0).expect("child join");
                let msg = format!("child {f}");
                // SAFETY: `msg` is live for the copy.
                unsafe { raw_copy(h, msg.as_ptr() as u64, b, msg.len() as u64, 3) }
                    .expect("child copy");
                let c = client(&parent_url);
                c.set(format!("child/{f}").as_bytes(), b"1")
                    .expect("child set on the busy store");
                runtime::bm_uninit(0);
            },
        );
        assert!(
            ops.load(Ordering::Relaxed) > before,
            "the store kept serving"
        );
    }
    let c = client(&r.url);
    for f in 0..FORKS {
        assert!(
            c.get(format!("child/{f}").as_bytes())
                .expect("get")
                .is_some()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in busy {
        t.join().expect("a busy client failed");
    }
    runtime::bm_uninit(0);
    println!("rank-ok");
}

/// Whether any socket of this network namespace listens on TCP `port` (`/proc/net/tcp{,6}`,
/// state 0A = LISTEN).
/// Inodes of the sockets listening on `port` (IPv4 and IPv6), from `/proc/net/tcp*`.
fn listening_inodes(port: u16) -> Vec<u64> {
    let hex_port = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|path| {
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    (f.len() > 9 && f[1].ends_with(&hex_port) && f[3] == "0A")
                        .then(|| f[9].parse().ok())
                        .flatten()
                })
                .collect::<Vec<u64>>()
        })
        .collect()
}

/// Inodes of the sockets among the open descriptors of process `pid`.
fn socket_inodes(pid: i32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default()
}
