//! `smem_bm_uninit` / `smem_uninit` tear the in-process runtime down completely: after each
//! init → create/join → uninit cycle in one process, the config store this process hosted no
//! longer listens (`/proc/net/tcp`, state `0A`), and the process is back to its baseline number
//! of threads (`/proc/self/task`) and descriptors (`/proc/self/fd`) — no store server, store
//! client, transport or rank-down thread is left behind to hold memory (the question the
//! `capi_calls` fuzz target's LeakSanitizer reports raised, see `fuzz/README.md`).
//!
//! One test in this binary, so no other test's threads or descriptors are counted.

#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

use std::ffi::c_void;
use std::time::{Duration, Instant};

use smem::{
    smem_bm_config_init, smem_bm_config_t, smem_bm_create, smem_bm_destroy, smem_bm_init,
    smem_bm_join, smem_bm_uninit, smem_get_last_err_msg, smem_init, smem_set_log_level,
    smem_uninit,
};

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).expect(dir).count()
}

/// Whether something in this network namespace listens on 127.0.0.1:`port` (state `0A`).
fn listens(port: u16) -> bool {
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!("0100007F:{port:04X}");
    tcp.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .any(|f| f.len() > 3 && f[1] == local && f[3] == "0A")
}

/// The names of this process's threads, sorted.
fn thread_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
        .map(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .collect();
    v.sort();
    v
}

/// What each of this process's descriptors refers to, sorted.
fn fd_targets() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
        .map(|e| {
            std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default()
        })
        .collect();
    v.sort();
    v
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn last_err() -> String {
    let p = unsafe { smem_get_last_err_msg() };
    if p.is_null() {
        return String::new();
    }
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}

fn config() -> smem_bm_config_t {
    let mut cfg = std::mem::MaybeUninit::<smem_bm_config_t>::uninit();
    assert_eq!(unsafe { smem_bm_config_init(cfg.as_mut_ptr()) }, 0);
    let mut cfg = unsafe { cfg.assume_init() };
    cfg.initTimeout = 5;
    cfg.createTimeout = 2;
    cfg.controlOperationTimeout = 2;
    cfg.rankId = 0;
    cfg
}

/// init → create → join → (destroy) → uninit on `port`; returns the thread count seen while
/// the runtime was up.
fn cycle(port: u16, destroy: bool, full_uninit: bool) -> usize {
    let url = format!("tcp://127.0.0.1:{port}\0");
    let cfg = config();
    let rc = unsafe { smem_bm_init(url.as_ptr().cast(), 1, 0, &raw const cfg) };
    assert_eq!(rc, 0, "smem_bm_init on port {port}: {}", last_err());
    assert!(listens(port), "the hosted store does not listen on {port}");
    let h = unsafe { smem_bm_create(0, 1, 1 << 2, 2 << 20, 0, 0) };
    assert!(!h.is_null(), "smem_bm_create: {}", last_err());
    let mut gva: *mut c_void = std::ptr::null_mut();
    let rc = unsafe { smem_bm_join(h, 0, &raw mut gva) };
    assert_eq!(rc, 0, "smem_bm_join: {}", last_err());
    assert!(!gva.is_null());
    let up = count("/proc/self/task");
    if destroy {
        unsafe { smem_bm_destroy(h) };
    }
    if full_uninit {
        unsafe { smem_uninit() };
    } else {
        unsafe { smem_bm_uninit(0) };
    }
    up
}

#[test]
fn uninit_stops_and_joins_everything_each_cycle() {
    unsafe {
        assert_eq!(smem_init(0), 0);
        smem_set_log_level(3);
    }
    // A first cycle sets up what lives as long as the process by design: the detach-on-fork
    // placeholder socket (`sys/fork.rs`, one `AF_UNIX` descriptor) and the atfork handlers.
    let warm = free_port();
    cycle(warm, true, false);
    assert!(!listens(warm));
    // The warm cycle's store client threads are detached and end on their own a moment after
    // uninit (as below): the baseline is taken once they are gone, bounded.
    let until = Instant::now() + Duration::from_secs(5);
    while thread_names()
        .iter()
        .any(|n| n.starts_with("smem-store") || n.starts_with("smem-bm"))
        && Instant::now() < until
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let base_threads = count("/proc/self/task");
    let base_fds = count("/proc/self/fd");
    let base_names = thread_names();
    // Fresh ports, then the same port twice (a re-init binding the port it had just left).
    let same = free_port();
    let ports = [free_port(), free_port(), same, same, free_port()];
    let mut seen = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let up = cycle(port, i % 2 == 0, i % 3 == 1);
        // Right after the call returns: the threads uninit joins (the store server,
        // `smem-store`; the rank-down watcher, `smem-bm-rankdown`) are gone and the hosted
        // store's port no longer listens. "Right after" allows 250 ms: `pthread_join` returns
        // once the kernel cleared the thread's tid, a moment before its `/proc/self/task` entry
        // is released (seen once on a loaded 2-core machine).
        let until = Instant::now() + Duration::from_millis(250);
        let mut now = thread_names();
        while ["smem-store", "smem-bm-rankdown"]
            .iter()
            .any(|j| now.iter().any(|n| n == j))
            && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(5));
            now = thread_names();
        }
        for joined in ["smem-store", "smem-bm-rankdown"] {
            assert!(
                !now.iter().any(|n| n == joined),
                "cycle {i}: thread {joined} still runs after uninit: {now:?}"
            );
        }
        assert!(
            !listens(port),
            "cycle {i}: the store on port {port} still listens after uninit"
        );
        // The store client's reader and heartbeat threads are detached and end on their own
        // once uninit closed the client: allow them a bounded moment. A thread or descriptor
        // left behind for good fails here.
        let until = Instant::now() + Duration::from_secs(5);
        while (count("/proc/self/task") != base_threads || count("/proc/self/fd") != base_fds)
            && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let threads = count("/proc/self/task");
        let fds = count("/proc/self/fd");
        seen.push((port, up, now.len(), threads, fds));
        assert!(up > base_threads, "cycle {i}: the runtime ran no thread?");
        assert_eq!(
            threads,
            base_threads,
            "cycle {i}: {threads} threads after uninit, {base_threads} before the first init \
             ({up} while up): {:?}, before: {base_names:?}",
            thread_names()
        );
        assert_eq!(
            fds,
            base_fds,
            "cycle {i}: {fds} descriptors after uninit, {base_fds} before the first init: {:?}",
            fd_targets()
        );
    }
    // And nothing comes back later.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(count("/proc/self/task"), base_threads);
    assert_eq!(count("/proc/self/fd"), base_fds);
    println!(
        "baseline {base_threads} threads, {base_fds} fds; (port, threads up, right after uninit, settled, fds): {seen:?}"
    );
}
