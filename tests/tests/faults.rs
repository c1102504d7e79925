//! Faults with real processes (issue 8, item 3): ranks and the store host are killed with
//! SIGKILL during `bm_init`, around `bm_create`, during `bm_join` and a large copy loop. Every
//! survivor must return an error (or, for copies, a clean result) within its deadline and never
//! hang; afterwards no child process is left, no shared-memory name leaked, and a fresh job on
//! the same URL starts cleanly.
//!
//! Each rank is this test binary run again with `SMEM_FAULT_ROLE` (and rank, URL, world) in its
//! environment; it reports on stdout with `FAULT <event> ...` lines that the parent parses. All
//! waits are bounded; children are killed by PID when a test fails.

#[path = "../../platform-linux/tests/common/copy.rs"]
mod copy;
use copy::raw_copy;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use smem_core::ErrorCode;
use smem_linux::runtime::{self, BmConfig, BmHandle};
use smem_linux::store::{ClientOptions, StoreClient};

const ROLE: &str = "SMEM_FAULT_ROLE";
const RANK: &str = "SMEM_FAULT_RANK";
const URL: &str = "SMEM_FAULT_URL";
const WORLD: &str = "SMEM_FAULT_WORLD";
/// initTimeout / createTimeout / controlOperationTimeout of every rank, seconds.
const TIMEOUT_S: u64 = 3;
/// What a survivor may take beyond its own deadline (process start, a loaded machine).
const SLACK: Duration = Duration::from_secs(4);
const DRAM: u64 = 8 << 20;
const CHUNK: usize = 4 << 20;
/// SMEMB_COPY_H2G: host memory into a window.
const H2G: u32 = 3;
const HOST_TCP: u32 = 1 << 2;

// ---------------------------------------------------------------------------------------------
// Child side.

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "FAULT {line}");
    let _ = out.flush();
}

fn code_of(e: &smem_linux::Error) -> i32 {
    e.code() as i32
}

fn report(event: &str, t0: Instant, r: &Result<(), smem_linux::Error>) {
    match r {
        Ok(()) => say(&format!("{event} ok ms={}", t0.elapsed().as_millis())),
        Err(e) => say(&format!(
            "{event} err code={} ms={} msg={}",
            code_of(e),
            t0.elapsed().as_millis(),
            e.to_string().replace('\n', " ")
        )),
    }
}

fn child_config(rank: u32) -> BmConfig {
    BmConfig {
        init_timeout: Duration::from_secs(TIMEOUT_S),
        create_timeout: Duration::from_secs(TIMEOUT_S),
        control_timeout: Duration::from_secs(TIMEOUT_S),
        rank_id: u16::try_from(rank).expect("rank fits"),
        ..BmConfig::default()
    }
}

/// Copies `CHUNK`-byte pieces into `peer`'s window: first until one succeeds (the peer may not
/// have joined yet), then until one fails or `limit` passes; reports each phase.
fn copy_loop(h: BmHandle, peer: u16, limit: Duration) {
    let src = vec![0x5au8; CHUNK];
    let dst = runtime::bm_ptr(h, peer).expect("bm_ptr");
    let copy = |n: u64| {
        let off = (n % (DRAM / CHUNK as u64)) * CHUNK as u64;
        // SAFETY: `src` is a live local buffer of CHUNK bytes; the runtime validates the
        // global side.
        unsafe { raw_copy(h, src.as_ptr() as u64, dst + off, CHUNK as u64, H2G) }
    };
    let wait_end = Instant::now() + Duration::from_secs(2 * TIMEOUT_S);
    while copy(0).is_err() {
        if Instant::now() > wait_end {
            say(&format!("copy_never_started peer={peer}"));
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    say(&format!("copying peer={peer}"));
    let start = Instant::now();
    let mut n = 1u64;
    let mut last_ok = Instant::now();
    while start.elapsed() < limit {
        match copy(n) {
            Ok(()) => {
                n += 1;
                last_ok = Instant::now();
            }
            Err(e) => {
                say(&format!(
                    "copy_failed peer={peer} code={} copies={n} ms_after_last_ok={} msg={}",
                    code_of(&e),
                    last_ok.elapsed().as_millis(),
                    e
                ));
                return;
            }
        }
    }
    say(&format!("copy_never_failed peer={peer} copies={n}"));
}

/// Waits (bounded) for a line on stdin: the parent's go-ahead.
fn wait_stdin(limit: Duration) {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut l = String::new();
        let _ = std::io::stdin().read_line(&mut l);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(limit);
}

#[test]
fn fault_child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let rank: u32 = std::env::var(RANK).expect("rank").parse().expect("rank");
    let url = std::env::var(URL).expect("url");
    let world: u32 = std::env::var(WORLD).expect("world").parse().expect("world");
    let cfg = child_config(rank);
    smem_linux::logging::init();
    let t0 = Instant::now();
    say(&format!("init_enter rank={rank}"));
    let r = runtime::bm_init(&url, world, 0, &cfg);
    report("init", t0, &r);
    if r.is_err() || role == "init" {
        finish();
    }
    // After init: roles that stop here wait for the parent (which may kill them).
    if role == "idle" {
        wait_stdin(Duration::from_secs(30));
        finish();
    }
    // Enters bm_create only when the parent says so.
    if role == "create_late" {
        wait_stdin(Duration::from_secs(30));
    }
    let t0 = Instant::now();
    let h = runtime::bm_create(0, world, HOST_TCP, DRAM, 0, 0);
    report("create", t0, &h.as_ref().map(|_| ()).map_err(Clone::clone));
    let Ok(h) = h else { finish() };
    if role == "create" || role == "create_late" {
        finish_with(h);
    }
    let t0 = Instant::now();
    let j = runtime::bm_join(h, 0);
    report("join", t0, &j.as_ref().map(|_| ()).map_err(Clone::clone));
    if role == "join" {
        // Stay (the store host keeps the store up) until the parent has seen every join.
        wait_stdin(Duration::from_secs(30));
    }
    if j.is_err() || role == "join" {
        finish_with(h);
    }
    match role.as_str() {
        // A healthy job: everybody joined, a copy into the next rank's window, then destroy
        // and uninit only after everybody destroyed (the store host goes last).
        "healthy" => {
            let c = test_client(&url);
            barrier(&c, "joined", world);
            let peer = u16::try_from((rank + 1) % world).expect("peer");
            let src = vec![7u8; 4096];
            let dst = runtime::bm_ptr(h, peer).expect("ptr");
            // SAFETY: 4096 local bytes; the global side is validated.
            let r = unsafe { raw_copy(h, src.as_ptr() as u64, dst, 4096, H2G) };
            report("copy", Instant::now(), &r);
            barrier(&c, "copied", world);
            let t0 = Instant::now();
            report("destroy", t0, &runtime::bm_destroy(h));
            barrier(&c, "destroyed", world);
            finish();
        }
        // Copy into `peer`'s window until the copies fail (that rank died) or time runs out.
        "copy" => {
            let peer: u16 = std::env::var("SMEM_FAULT_PEER")
                .expect("peer")
                .parse()
                .expect("peer");
            copy_loop(h, peer, Duration::from_secs(TIMEOUT_S + 2));
            // A window of a live rank still works after the dead one was dropped.
            if let Ok(other) = std::env::var("SMEM_FAULT_ALIVE_PEER") {
                let other: u16 = other.parse().expect("peer");
                let src = vec![1u8; 4096];
                let dst = runtime::bm_ptr(h, other).expect("ptr");
                // SAFETY: 4096 local bytes; the global side is validated.
                let r = unsafe { raw_copy(h, src.as_ptr() as u64, dst, 4096, H2G) };
                report("copy_alive", Instant::now(), &r);
                // The other survivor may still be copying into this rank's window: destroy
                // (after `create_after`) only once the parent saw every `copy_alive`.
                wait_stdin(Duration::from_secs(2 * TIMEOUT_S));
            }
            // A control operation after the fault returns within its deadline.
            let t0 = Instant::now();
            let r = runtime::bm_create(1, world, HOST_TCP, DRAM, 0, 0);
            report(
                "create_after",
                t0,
                &r.map(|h2| {
                    let _ = runtime::bm_destroy(h2);
                }),
            );
        }
        _ => wait_stdin(Duration::from_secs(30)),
    }
    finish_with(h);
}

/// A rank-less store client for the healthy job's barriers.
fn test_client(url: &str) -> StoreClient {
    let addr = url.trim_start_matches("tcp://").parse().expect("address");
    let opts = ClientOptions {
        connect_timeout: Duration::from_secs(TIMEOUT_S),
        op_timeout: Duration::from_secs(TIMEOUT_S),
        ..ClientOptions::default()
    };
    StoreClient::connect(addr, opts).expect("test store client")
}

/// Returns when `n` ranks arrived. A link loss while waiting means the store host passed it
/// (it only does once everybody arrived) and shut the store down.
fn barrier(c: &StoreClient, name: &str, n: u32) {
    let k = format!("test/barrier/{name}");
    let v = c.add(k.as_bytes(), 1).expect("barrier add");
    let go = format!("{k}/go");
    if v == i64::from(n) {
        c.set(go.as_bytes(), b"1").expect("barrier go");
    }
    match c.wait_get(go.as_bytes(), Duration::from_secs(2 * TIMEOUT_S)) {
        Ok(_) => {}
        Err(e) if e.code() == ErrorCode::IoError => {}
        Err(e) => panic!("barrier {name}: {e}"),
    }
}

fn finish_with(h: BmHandle) -> ! {
    let t0 = Instant::now();
    let r = runtime::bm_destroy(h);
    report("destroy", t0, &r);
    finish()
}

fn finish() -> ! {
    let t0 = Instant::now();
    runtime::bm_uninit(0);
    say(&format!("uninit ms={}", t0.elapsed().as_millis()));
    say("exit");
    std::process::exit(0);
}

// ---------------------------------------------------------------------------------------------
// Parent side.

/// One rank process, its stdout lines arriving on a channel; killed (SIGKILL) on drop.
struct Rank {
    rank: u32,
    child: Option<Child>,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Rank {
    fn spawn(role: &str, rank: u32, url: &str, world: u32, extra: &[(&str, String)]) -> Self {
        let exe = std::env::current_exe().expect("test binary");
        let mut cmd = Command::new(exe);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd
            .args(["--exact", "fault_child", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env(RANK, rank.to_string())
            .env(URL, url)
            .env(WORLD, world.to_string())
            .env(
                "SMEM_LOG_LEVEL",
                std::env::var("SMEM_FAULT_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("SMEM_FAULT_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("spawn rank");
        SPAWNED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(child.id());
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                // libtest may print "test fault_child ... " before our first line.
                if let Some(at) = line.find("FAULT ") {
                    if tx.send(line[at + 6..].to_string()).is_err() {
                        break;
                    }
                }
            }
        });
        Self {
            rank,
            child: Some(child),
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// The first line starting with `prefix` within `limit`.
    fn expect(&mut self, prefix: &str, limit: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.starts_with(prefix)) {
            return l.clone();
        }
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "rank {}: no `{prefix}` line within {limit:?}; saw {:?}",
                    self.rank, self.seen
                ),
            }
        }
    }

    /// Lets a `create_late` rank go on.
    fn go(&mut self) {
        if let Some(stdin) = self.child.as_mut().and_then(|c| c.stdin.as_mut()) {
            let _ = stdin.write_all(b"go\n");
            let _ = stdin.flush();
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for a clean exit within `limit`.
    fn exits(&mut self, limit: Duration) {
        let c = self.child.as_mut().expect("alive");
        let end = Instant::now() + limit;
        loop {
            if let Some(st) = c.try_wait().expect("try_wait") {
                assert!(st.success(), "rank {} exited with {st}", self.rank);
                self.child = None;
                return;
            }
            assert!(
                Instant::now() < end,
                "rank {} did not exit within {limit:?} (hang); saw {:?}",
                self.rank,
                self.seen
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Rank {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn free_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("tcp://127.0.0.1:{}", l.local_addr().expect("addr").port())
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

fn ms(line: &str) -> Duration {
    Duration::from_millis(
        field(line, "ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX),
    )
}

fn deadline() -> Duration {
    Duration::from_secs(TIMEOUT_S) + SLACK
}

/// A survivor's `event` line is an error, within the deadline; returns it.
fn expect_err(r: &mut Rank, event: &str) -> String {
    let l = r.expect(&format!("{event} "), deadline() + SLACK);
    println!("rank {}: {l}", r.rank);
    assert!(
        l.starts_with(&format!("{event} err")),
        "rank {}: {event} should fail: {l}",
        r.rank
    );
    assert!(
        ms(&l) <= deadline(),
        "rank {}: {event} took too long: {l}",
        r.rank
    );
    l
}

/// No process whose parent is this test process is left.
fn assert_no_children() {
    let me = std::process::id().to_string();
    let mut left = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(s) = std::fs::read_to_string(e.path().join("status")) else {
                continue;
            };
            let ppid = s
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .map(str::trim);
            let state = s
                .lines()
                .find_map(|l| l.strip_prefix("State:"))
                .unwrap_or("");
            if ppid == Some(me.as_str()) {
                left.push(format!("{:?} {state}", e.file_name()));
            }
        }
    }
    assert!(left.is_empty(), "child processes left: {left:?}");
}

/// PIDs of every rank this test process spawned (to attribute shared-memory names).
static SPAWNED: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// `/dev/shm` names that mention smem. (The runtime shares memory through memfds, which have
/// no names; this guards against that changing.) Other jobs on the machine may create names
/// too, so a new name counts as ours only when it carries one of our ranks' PIDs or our port.
fn smem_shm_names() -> BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("smem"))
                .collect()
        })
        .unwrap_or_default()
}

/// A healthy 2-rank job on `url` runs init, create, join and a copy, and exits cleanly.
fn fresh_job(url: &str) {
    let mut r0 = Rank::spawn("healthy", 0, url, 2, &[]);
    let mut r1 = Rank::spawn("healthy", 1, url, 2, &[]);
    for r in [&mut r0, &mut r1] {
        for ev in [
            "init ok",
            "create ok",
            "join ok",
            "copy ok",
            "destroy ok",
            "exit",
        ] {
            r.expect(ev, deadline() + SLACK);
        }
    }
    r0.exits(deadline());
    r1.exits(deadline());
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn is_child() -> bool {
    std::env::var(ROLE).is_ok()
}

/// Common ending: nothing left behind, and a fresh job on the same URL works.
fn after(url: &str, shm_before: &BTreeSet<String>) {
    assert_no_children();
    let port = url.rsplit(':').next().unwrap_or("").to_string();
    let pids: Vec<String> = SPAWNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(u32::to_string)
        .collect();
    let leaked: Vec<_> = smem_shm_names()
        .difference(shm_before)
        .filter(|n| n.contains(&port) || pids.iter().any(|p| n.contains(p.as_str())))
        .cloned()
        .collect();
    assert!(leaked.is_empty(), "shared-memory names leaked: {leaked:?}");
    fresh_job(url);
    assert_no_children();
}

#[test]
fn healthy_job_baseline() {
    if is_child() {
        return;
    }
    let _s = serial();
    let shm = smem_shm_names();
    let url = free_url();
    fresh_job(&url);
    after(&url, &shm);
}

#[test]
fn rank_killed_during_init() {
    if is_child() {
        return;
    }
    let _s = serial();
    let shm = smem_shm_names();
    let url = free_url();
    // Rank 2 enters init first (the store is not up, so it is inside smem_bm_init retrying
    // its connection) and is killed there, before it could register.
    let mut r2 = Rank::spawn("init", 2, &url, 3, &[]);
    r2.expect("init_enter", deadline());
    thread::sleep(Duration::from_millis(300));
    assert!(
        !r2.seen.iter().any(|l| l.starts_with("init ")),
        "rank 2 left init early: {:?}",
        r2.seen
    );
    r2.kill9();
    // Rank 1 starts first so that its deadline passes before the store host (rank 0) gives up
    // and takes the store down with it.
    let mut r1 = Rank::spawn("init", 1, &url, 3, &[]);
    r1.expect("init_enter", deadline());
    thread::sleep(Duration::from_millis(300));
    let mut r0 = Rank::spawn("init", 0, &url, 3, &[]);
    let l1 = expect_err(&mut r1, "init");
    let l0 = expect_err(&mut r0, "init");
    println!("rank 1: {l1}\nrank 0: {l0}");
    let timeout = (ErrorCode::Timeout as i32).to_string();
    for l in [&l1, &l0] {
        // A rank whose store link goes down while it waits at init (the host gave up at the
        // same moment) connects again until its own deadline, then still times out naming the
        // ranks it never saw; so every survivor returns SM_TIMEOUT naming rank 2.
        assert_eq!(field(l, "code"), Some(&*timeout), "{l}");
        // The store host gives up at the same moment and takes the store down with it, so a
        // client rank may no longer list who registered: it then names the first missing one.
        assert!(
            l.contains("missing rank(s) 2;") || l.contains("rank 2 (at least)"),
            "names the dead rank: {l}"
        );
        assert!(
            ms(l) >= Duration::from_secs(TIMEOUT_S) - Duration::from_millis(100),
            "{l}"
        );
    }
    r0.exits(deadline());
    r1.exits(deadline());
    after(&url, &shm);
}

#[test]
fn rank_killed_during_create() {
    if is_child() {
        return;
    }
    let _s = serial();
    let shm = smem_shm_names();
    let url = free_url();
    // Rank 2 initialises, then is killed while ranks 0 and 1 create and join. Create never
    // waits for the other members and join waits only for ranks that created the object, so
    // the survivors must not notice rank 2 at all: both succeed, well within createTimeout.
    let mut r2 = Rank::spawn("idle", 2, &url, 3, &[]);
    let mut r0 = Rank::spawn("join", 0, &url, 3, &[]);
    let mut r1 = Rank::spawn("join", 1, &url, 3, &[]);
    for r in [&mut r0, &mut r1, &mut r2] {
        r.expect("init ok", deadline());
    }
    r2.kill9();
    for r in [&mut r0, &mut r1] {
        let l = r.expect("create ", deadline() + SLACK);
        println!("rank {}: {l}", r.rank);
        assert!(l.starts_with("create ok"), "{l}");
        let j = r.expect("join ", deadline() + SLACK);
        println!("rank {}: {j}", r.rank);
        // Rank 1 may see the store go away when rank 0 (the store host) finished first.
        assert!(
            j.starts_with("join ok") || (r.rank == 1 && j.contains("config store")),
            "{j}"
        );
        assert!(
            ms(&j) < Duration::from_secs(TIMEOUT_S),
            "join waited for the dead rank: {j}"
        );
    }
    for r in [&mut r1, &mut r0] {
        r.go();
        r.expect("destroy ", deadline());
        r.exits(deadline());
    }
    after(&url, &shm);
}

#[test]
fn rank_killed_inside_its_own_create() {
    if is_child() {
        return;
    }
    let _s = serial();
    let shm = smem_shm_names();
    let url = free_url();
    // Ranks 1 and 2 enter bm_create; the GVA agreement cannot finish without rank 0, which is
    // held back. Rank 2 is killed inside bm_create (waiting for rank 0), then rank 0 enters it.
    let mut r0 = Rank::spawn("create_late", 0, &url, 3, &[]);
    let mut r1 = Rank::spawn("create", 1, &url, 3, &[]);
    let mut r2 = Rank::spawn("create", 2, &url, 3, &[]);
    for r in [&mut r0, &mut r1, &mut r2] {
        r.expect("init ok", deadline());
    }
    thread::sleep(Duration::from_millis(300));
    assert!(
        !r2.seen.iter().any(|l| l.starts_with("create ")),
        "rank 2 left bm_create before rank 0 entered it: {:?}",
        r2.seen
    );
    r2.kill9();
    r0.go();
    for r in [&mut r1, &mut r0] {
        // Rank 2 already took its part in the GVA agreement before it died, so the survivors
        // may agree without it (its window is then simply never joined) or fail; either way
        // within createTimeout, and the object (if any) is destroyed cleanly.
        let l = r.expect("create ", deadline() + SLACK);
        println!("rank {}: {l}", r.rank);
        assert!(ms(&l) <= deadline(), "create took too long: {l}");
        if l.starts_with("create ok") {
            let d = r.expect("destroy ", deadline());
            assert!(d.starts_with("destroy ok"), "{d}");
        }
        r.exits(deadline());
    }
    after(&url, &shm);
}

#[test]
fn rank_killed_during_join() {
    if is_child() {
        return;
    }
    let _s = serial();
    let shm = smem_shm_names();
    let url = free_url();
    let mut r0 = Rank::spawn("join", 0, &url, 3, &[]);
    let mut r1 = Rank::spawn("join", 1, &url, 3, &[]);
    let mut r2 = Rank::spawn("join", 2, &url, 3, &[]);
    // Kill rank 2 as soon as it created the object: it is then entering (or inside) bm_join.
    r2.expect("create ok", deadline() + SLACK);
    r2.kill9();
    for r in [&mut r0, &mut r1] {
        // Join succeeds (a dead holder's ack is not waited for) or fails; either way it
        // returns within createTimeout and the rank shuts down cleanly.
        let l = r.expect("join ", deadline() + SLACK);
        println!("rank {}: {l}", r.rank);
        assert!(ms(&l) <= deadline(), "join took too long: {l}");
    }
    for r in [&mut r1, &mut r0] {
        r.go();
        r.expect("destroy ", deadline());
        r.exits(deadline());
    }
    after(&url, &shm);
}

#[test]
fn rank_killed_during_large_copies() {
    if is_child() {
        return;
    }
    let _s = serial();
    let shm = smem_shm_names();
    let url = free_url();
    // Ranks 0 and 1 copy 4 MiB pieces into rank 2's window; rank 2 copies into rank 0's.
    let peer = |p: u16, alive: u16| {
        vec![
            ("SMEM_FAULT_PEER", p.to_string()),
            ("SMEM_FAULT_ALIVE_PEER", alive.to_string()),
        ]
    };
    let mut r0 = Rank::spawn("copy", 0, &url, 3, &peer(2, 1));
    let mut r1 = Rank::spawn("copy", 1, &url, 3, &peer(2, 0));
    let mut r2 = Rank::spawn("copy", 2, &url, 3, &peer(0, 1));
    for r in [&mut r0, &mut r1, &mut r2] {
        r.expect("copying", deadline() + SLACK);
    }
    r2.kill9();
    for r in [&mut r0, &mut r1] {
        let l = r.expect("copy_", deadline() + SLACK);
        println!("rank {}: {l}", r.rank);
        assert!(
            l.starts_with("copy_failed"),
            "copies into a dead rank's window must fail once the store saw it down: {l}"
        );
        let code = field(&l, "code").unwrap_or("");
        assert!(
            [
                ErrorCode::ObjectNotExists as i32,
                ErrorCode::InvalidParam as i32
            ]
            .iter()
            .any(|c| c.to_string() == code),
            "clean error code: {l}"
        );
        let ok = r.expect("copy_alive ", deadline());
        assert!(
            ok.starts_with("copy_alive ok"),
            "live window still works: {ok}"
        );
    }
    // Each survivor copied into the other's window; now they may destroy theirs.
    for r in [&mut r0, &mut r1] {
        r.go();
    }
    for r in [&mut r0, &mut r1] {
        let c = r.expect("create_after ", deadline() + SLACK);
        assert!(
            ms(&c) <= deadline(),
            "create after the fault took too long: {c}"
        );
        r.expect("destroy ", deadline());
        r.exits(deadline());
    }
    after(&url, &shm);
}

#[test]
fn store_host_killed_during_init() {
    if is_child() {
        return;
    }
    let _s = serial();
    let shm = smem_shm_names();
    let url = free_url();
    // World of 3, rank 2 never comes: ranks 0 (store host) and 1 wait in init; rank 0 dies.
    let mut r0 = Rank::spawn("init", 0, &url, 3, &[]);
    let mut r1 = Rank::spawn("init", 1, &url, 3, &[]);
    r0.expect("init_enter", deadline());
    r1.expect("init_enter", deadline());
    thread::sleep(Duration::from_millis(800));
    r0.kill9();
    // Rank 1 connects again until its own deadline (the store may come back), then times out
    // naming the rank it never saw and saying that the store went away.
    let l = expect_err(&mut r1, "init");
    assert_eq!(
        field(&l, "code"),
        Some(&*(ErrorCode::Timeout as i32).to_string()),
        "{l}"
    );
    assert!(
        l.contains("missing rank(s) 2;") && l.contains("went away at +"),
        "{l}"
    );
    assert!(
        ms(&l) >= Duration::from_secs(TIMEOUT_S) - Duration::from_millis(100),
        "rank 1 waited until its own deadline: {l}"
    );
    r1.exits(deadline());
    after(&url, &shm);
}

#[test]
fn store_host_killed_during_create() {
    if is_child() {
        return;
    }
    let _s = serial();
    let shm = smem_shm_names();
    let url = free_url();
    let mut r0 = Rank::spawn("idle", 0, &url, 3, &[]);
    let mut r1 = Rank::spawn("create", 1, &url, 3, &[]);
    let mut r2 = Rank::spawn("create", 2, &url, 3, &[]);
    for r in [&mut r0, &mut r1, &mut r2] {
        r.expect("init ok", deadline());
    }
    // Rank 0, the store host, dies while ranks 1 and 2 create the object (create does not
    // wait for rank 0, so it may finish before the kill or fail on the lost store link).
    r0.kill9();
    for r in [&mut r1, &mut r2] {
        let l = r.expect("create ", deadline() + SLACK);
        println!("rank {}: {l}", r.rank);
        assert!(ms(&l) <= deadline(), "create took too long: {l}");
        if l.starts_with("create ok") {
            // Destroy needs the store: an error (or ok), never a hang.
            let d = r.expect("destroy ", deadline() + SLACK);
            assert!(ms(&d) <= deadline(), "destroy took too long: {d}");
        } else {
            assert!(l.contains("config store"), "{l}");
        }
        r.exits(deadline());
    }
    after(&url, &shm);
}

#[test]
fn store_host_killed_during_copies() {
    if is_child() {
        return;
    }
    let _s = serial();
    let shm = smem_shm_names();
    let url = free_url();
    let peer = |p: u16| vec![("SMEM_FAULT_PEER", p.to_string())];
    let mut r0 = Rank::spawn("copy", 0, &url, 3, &peer(1));
    let mut r1 = Rank::spawn("copy", 1, &url, 3, &peer(0));
    let mut r2 = Rank::spawn("copy", 2, &url, 3, &peer(0));
    for r in [&mut r0, &mut r1, &mut r2] {
        r.expect("copying", deadline() + SLACK);
    }
    r0.kill9();
    for r in [&mut r1, &mut r2] {
        // The store is gone, so nobody reports rank 0 down: copies into its (still mapped)
        // window may go on succeeding until the loop's limit, or fail cleanly. Either way no
        // crash and no hang, and the next control operation fails within its deadline.
        let l = r.expect("copy_", Duration::from_secs(TIMEOUT_S + 2) + SLACK);
        println!("rank {}: {l}", r.rank);
        assert!(
            l.starts_with("copy_failed") || l.starts_with("copy_never_failed"),
            "{l}"
        );
        let c = expect_err(r, "create_after");
        assert!(ms(&c) <= deadline(), "{c}");
        r.expect("destroy ", deadline());
        r.exits(deadline());
    }
    after(&url, &shm);
}
