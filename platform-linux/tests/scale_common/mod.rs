//! Many ranks as processes, as a user program runs them: the parent forks `world` children,
//! each child runs one rank through init, create, join (BM) or the first barrier (SHM), a copy
//! into the next rank's window, a barrier through the parent (a pipe, no store traffic), a check
//! of what the previous rank wrote into its own window, and teardown. Each child reports the
//! time and the store traffic (`smem_linux::store::traffic`) of every phase on a shared pipe.
//! Used by `tests/scale.rs` (256 ranks in CI) and `benches/scale.rs` (64 / 256 / 1024).
#![allow(dead_code, unreachable_pub, unsafe_code)]

#[path = "../common/copy.rs"]
mod copy;
use copy::raw_copy;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use smem_linux::runtime::shm::{self, ShmConfig};
use smem_linux::runtime::{self, BmConfig};
use smem_linux::store::{Traffic, traffic};

/// Which API the ranks use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `smem_bm_*`: init, create (2 MiB DRAM), join, copy into the next rank (H2G + G2H).
    Bm,
    /// `smem_shm_*`: init, create (2 MiB symmetric), first barrier, store into the next rank.
    Shm,
}

/// How the ranks are laid out.
#[derive(Clone, Debug)]
pub struct Shape {
    pub api: Api,
    pub world: u32,
    /// `Some(k)`: simulated hosts of `k` ranks each (`SMEM_HOST_ID=h<rank/k>`; BM objects use
    /// `SMEMB_DATA_OP_HOST_TCP`); `None`: every rank on this host.
    pub per_host: Option<u32>,
    /// Bounds every call of every rank, and the whole run.
    pub deadline: Duration,
    /// `None`: rank 0 hosts a `tcp://` store on a free loopback port; `Some(url)`: an external
    /// store (e.g. `etcd://...`), `startConfigStore` false on every rank.
    pub store: Option<String>,
}

/// The phases a rank reports, in order.
pub const PHASES: [&str; 5] = ["init", "create", "join", "copy", "teardown"];

/// One phase of one rank.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub micros: u64,
    pub traffic: Traffic,
}

/// Every rank's samples, by phase name.
#[derive(Debug, Default)]
pub struct Report {
    pub phases: BTreeMap<String, Vec<Sample>>,
    /// Microseconds from the fork of the first rank until the last rank finished `join`
    /// (BM) or the first barrier (SHM).
    pub ready_micros: u64,
    /// Microseconds until every rank exited.
    pub total_micros: u64,
}

const DRAM: u64 = 2 << 20;
const PATTERN_LEN: usize = 4096;

fn pattern(rank: u32) -> Vec<u8> {
    (0..PATTERN_LEN)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(rank * 7) as u8)
        .collect()
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid out array of two descriptors.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn write_all(fd: RawFd, mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: `b` is a live buffer of `b.len()` bytes.
        let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
        if n <= 0 {
            return;
        }
        b = &b[n as usize..];
    }
}

/// What a child needs after the fork.
struct Child {
    rank: u32,
    url: String,
    shape: Shape,
    report: RawFd,
    /// Read ends of the release pipes of barriers 1, 2 and 3.
    go: [RawFd; 3],
    started: Instant,
}

impl Child {
    fn run(&self) -> Result<String, String> {
        let mut line = format!("r {}", self.rank);
        let mut t = Instant::now();
        let mut tr = traffic();
        let mut mark = |line: &mut String, name: &str| {
            let now = Instant::now();
            let tn = traffic();
            let d = tn.since(&tr);
            line.push_str(&format!(
                " {name}:{}:{}:{}:{}:{}",
                now.duration_since(t).as_micros(),
                d.ops,
                d.bytes_sent,
                d.bytes_received,
                d.events
            ));
            line.push_str(&format!(
                " at_{name}:{}",
                now.duration_since(self.started).as_micros()
            ));
            t = now;
            tr = tn;
        };
        match self.shape.api {
            Api::Bm => self.bm(&mut line, &mut mark)?,
            Api::Shm => self.shm(&mut line, &mut mark)?,
        }
        Ok(line)
    }

    /// Waits until the parent saw every rank reach barrier `k` (1, 2 or 3).
    fn barrier(&self, k: u32) {
        write_all(
            self.report,
            format!("r {} barrier {k}\n", self.rank).as_bytes(),
        );
        let mut b = [0u8; 1];
        // SAFETY: reads one byte into a live one-byte buffer.
        let _ = unsafe { libc::read(self.go[k as usize - 1], b.as_mut_ptr().cast(), 1) };
    }

    fn bm(&self, line: &mut String, mark: &mut dyn FnMut(&mut String, &str)) -> Result<(), String> {
        let (rank, world) = (self.rank, self.shape.world);
        let d = self.shape.deadline;
        let cfg = BmConfig {
            init_timeout: d,
            create_timeout: d,
            control_timeout: d,
            rank_id: u16::try_from(rank).map_err(|_| "rank over u16")?,
            start_config_store: self.shape.store.is_none(),
            ..BmConfig::default()
        };
        runtime::bm_init(&self.url, world, 0, &cfg).map_err(|e| format!("init: {e}"))?;
        mark(line, "init");
        let data_op = if self.shape.per_host.is_some() {
            smem_linux::transport::DATA_OP_HOST_TCP
        } else {
            1
        };
        let h = runtime::bm_create(1, world, data_op, DRAM, 0, 0)
            .map_err(|e| format!("create: {e}"))?;
        mark(line, "create");
        runtime::bm_join(h, 0).map_err(|e| format!("join: {e}"))?;
        mark(line, "join");
        line.push_str(&format!(" ready:{}", self.started.elapsed().as_micros()));
        self.barrier(1);
        let next = (rank + 1) % world;
        let dst = runtime::bm_ptr(h, u16::try_from(next).map_err(|_| "rank")?)
            .map_err(|e| format!("ptr: {e}"))?;
        let data = pattern(rank);
        // SAFETY: `data` is a live buffer of PATTERN_LEN readable bytes.
        unsafe { raw_copy(h, data.as_ptr() as u64, dst, PATTERN_LEN as u64, 3) }
            .map_err(|e| format!("copy into rank {next}: {e}"))?;
        let mut back = vec![0u8; PATTERN_LEN];
        // SAFETY: `back` is a live buffer of PATTERN_LEN writable bytes.
        unsafe { raw_copy(h, dst, back.as_mut_ptr() as u64, PATTERN_LEN as u64, 2) }
            .map_err(|e| format!("copy back from rank {next}: {e}"))?;
        if back != data {
            return Err(format!(
                "rank {next}'s window does not hold what was written"
            ));
        }
        mark(line, "copy");
        self.barrier(2);
        let t = Instant::now();
        let tr = traffic();
        let own = runtime::bm_ptr(h, u16::try_from(rank).map_err(|_| "rank")?)
            .map_err(|e| format!("ptr: {e}"))?;
        let mut got = vec![0u8; PATTERN_LEN];
        // SAFETY: `got` is a live buffer of PATTERN_LEN writable bytes.
        unsafe { raw_copy(h, own, got.as_mut_ptr() as u64, PATTERN_LEN as u64, 2) }
            .map_err(|e| format!("read own window: {e}"))?;
        let prev = (rank + world - 1) % world;
        if got != pattern(prev) {
            return Err(format!("own window does not hold rank {prev}'s data"));
        }
        runtime::bm_destroy(h).map_err(|e| format!("destroy: {e}"))?;
        // Rank 0 hosts the store: nobody uninitialises before every rank destroyed.
        self.barrier(3);
        runtime::bm_uninit(0);
        let d = traffic().since(&tr);
        line.push_str(&format!(
            " teardown:{}:{}:{}:{}:{}",
            t.elapsed().as_micros(),
            d.ops,
            d.bytes_sent,
            d.bytes_received,
            d.events
        ));
        Ok(())
    }

    fn shm(
        &self,
        line: &mut String,
        mark: &mut dyn FnMut(&mut String, &str),
    ) -> Result<(), String> {
        let (rank, world) = (self.rank, self.shape.world);
        let d = self.shape.deadline;
        let cfg = ShmConfig {
            init_timeout: d,
            create_timeout: d,
            control_timeout: d,
            start_config_store: self.shape.store.is_none(),
            ..ShmConfig::default()
        };
        shm::shm_init(&self.url, world, rank, 0, &cfg).map_err(|e| format!("init: {e}"))?;
        mark(line, "init");
        let (h, base) = shm::shm_create(1, world, rank, DRAM, shm::DATA_OP_MTE, 0)
            .map_err(|e| format!("create: {e}"))?;
        mark(line, "create");
        shm::shm_control_barrier(h).map_err(|e| format!("barrier: {e}"))?;
        mark(line, "join");
        line.push_str(&format!(" ready:{}", self.started.elapsed().as_micros()));
        self.barrier(1);
        let next = (rank + 1) % world;
        let same_host = |a: u32, b: u32| self.shape.per_host.is_none_or(|k| a / k == b / k);
        if same_host(rank, next) {
            let at = base + u64::from(next) * DRAM;
            let data = pattern(rank);
            // SAFETY: every same-host window is mapped read/write when create returned.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), at as *mut u8, PATTERN_LEN) };
        }
        mark(line, "copy");
        self.barrier(2);
        let t = Instant::now();
        let tr = traffic();
        let prev = (rank + world - 1) % world;
        if same_host(prev, rank) {
            let own = base + u64::from(rank) * DRAM;
            // SAFETY: the own window is mapped read/write.
            let got = unsafe { std::slice::from_raw_parts(own as *const u8, PATTERN_LEN) };
            if got != pattern(prev).as_slice() {
                return Err(format!("own window does not hold rank {prev}'s data"));
            }
        }
        shm::shm_destroy(h, 0).map_err(|e| format!("destroy: {e}"))?;
        self.barrier(3);
        shm::shm_uninit(0);
        let d = traffic().since(&tr);
        line.push_str(&format!(
            " teardown:{}:{}:{}:{}:{}",
            t.elapsed().as_micros(),
            d.ops,
            d.bytes_sent,
            d.bytes_received,
            d.events
        ));
        Ok(())
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("tcp://127.0.0.1:{}", l.local_addr().expect("addr").port())
}

/// Runs `shape`: forks every rank, reads their reports, lets them past the copy barrier once
/// every rank copied, and waits for all. Kills every child still running when a rank fails or
/// the deadline passes, then returns the error.
pub fn run(shape: &Shape) -> Result<Report, String> {
    let url = shape.store.clone().unwrap_or_else(free_url);
    let (report_r, report_w) = pipe();
    let (go1_r, go1_w) = pipe();
    let (go2_r, go2_w) = pipe();
    let (go3_r, go3_w) = pipe();
    let started = Instant::now();
    let mut pids = Vec::with_capacity(shape.world as usize);
    let raw_report = std::os::fd::AsRawFd::as_raw_fd(&report_w);
    let raw_go = [
        std::os::fd::AsRawFd::as_raw_fd(&go1_r),
        std::os::fd::AsRawFd::as_raw_fd(&go2_r),
        std::os::fd::AsRawFd::as_raw_fd(&go3_r),
    ];
    let kill_all = |pids: &[i32]| {
        for &p in pids {
            // SAFETY: kills and reaps our own child.
            unsafe {
                libc::kill(p, libc::SIGKILL);
                libc::waitpid(p, std::ptr::null_mut(), 0);
            }
        }
    };
    // The report pipe is drained by a thread (children never block on a full pipe); it lets
    // the ranks past the copy barrier once every rank reported its copy.
    let world = shape.world;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let mut arrived = [0u32; 3];
        let go = [go1_w, go2_w, go3_w];
        for l in std::io::BufReader::new(std::fs::File::from(report_r)).lines() {
            let Ok(l) = l else { break };
            let k = match l.rsplit_once(" barrier ") {
                Some((_, k)) => k.parse::<usize>().unwrap_or(0),
                None => {
                    text.push_str(&l);
                    text.push('\n');
                    continue;
                }
            };
            if let (Some(n), Some(go)) = (
                arrived.get_mut(k.wrapping_sub(1)),
                go.get(k.wrapping_sub(1)),
            ) {
                *n += 1;
                if *n == world {
                    write_all(
                        std::os::fd::AsRawFd::as_raw_fd(go),
                        &vec![1u8; world as usize],
                    );
                }
            }
        }
        drop(go);
        text
    });
    for rank in 0..shape.world {
        let child = Child {
            rank,
            url: url.clone(),
            shape: shape.clone(),
            report: raw_report,
            go: raw_go,
            started,
        };
        // SAFETY: the child runs only smem calls (whose fork handlers reset their state),
        // writes to pipes and leaves with `_exit`; it never returns into the caller.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            let e = std::io::Error::last_os_error();
            kill_all(&pids);
            return Err(format!("fork of rank {rank}: {e}"));
        }
        if pid == 0 {
            if let Some(k) = shape.per_host {
                // SAFETY: the forked child has a single thread.
                unsafe { std::env::set_var("SMEM_HOST_ID", format!("h{}", rank / k)) };
            }
            let res = std::panic::catch_unwind(|| child.run());
            let (line, code) = match res {
                Ok(Ok(line)) => (format!("{line} end\n"), 0),
                Ok(Err(e)) => (format!("r {rank} fail {e}\n"), 1),
                Err(_) => (format!("r {rank} fail panicked\n"), 1),
            };
            write_all(raw_report, line.as_bytes());
            // SAFETY: ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        pids.push(pid);
    }
    drop(report_w);
    drop(go1_r);
    drop(go2_r);
    drop(go3_r);
    let result = wait_children(shape, &mut pids, started);
    if result.is_err() {
        kill_all(&pids);
    }
    let text = reader.join().map_err(|_| "report reader panicked")?;
    if let Some(path) = std::env::var_os("SMEM_SCALE_DUMP") {
        // Every rank's raw report line, for looking at the distribution behind the maxima.
        let _ = std::fs::write(path, &text);
    }
    result.map_err(|e| format!("{e}\n{}", failures(&text)))?;
    parse(&text, shape, started)
}

/// The failure lines of the reports.
fn failures(text: &str) -> String {
    text.lines()
        .filter(|l| l.contains(" fail "))
        .take(20)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A child that exited and is not reaped yet, without reaping it (`waitid(WNOWAIT)`).
fn exited_child() -> Option<i32> {
    // SAFETY: an all-zero siginfo_t is a valid value to pass for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid out pointer; WNOWAIT leaves the child to be reaped by pid.
    let r = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: waitid succeeded, so `info` holds a child's state (pid 0: none exited).
    let pid = unsafe { info.si_pid() };
    (r == 0 && pid != 0).then_some(pid)
}

/// Reaps the children until all exited; an error as soon as one failed or at the deadline.
/// Leaves the pids still running in `pids`. Children are found by `waitid` (any child that
/// exited) instead of polling each pid: polling 1024 pids every 20 ms took 5-10% of a CPU
/// from the ranks being measured.
fn wait_children(shape: &Shape, pids: &mut Vec<i32>, started: Instant) -> Result<(), String> {
    loop {
        let mut scan = false;
        while let Some(pid) = exited_child() {
            let Some(i) = pids.iter().position(|&p| p == pid) else {
                // Not a rank (e.g. an etcd member): fall back to polling each pid.
                scan = true;
                break;
            };
            let mut status = 0;
            // SAFETY: reaps our own child, which exited; `status` is a valid out pointer.
            if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
                pids.swap_remove(i);
                if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                    return Err(format!("a rank failed (status {status:#x})"));
                }
            }
        }
        let mut i = 0;
        while scan && i < pids.len() {
            let mut status = 0;
            // SAFETY: polls our own child; `status` is a valid out pointer.
            let got = unsafe { libc::waitpid(pids[i], &mut status, libc::WNOHANG) };
            if got == pids[i] {
                pids.swap_remove(i);
                if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                    return Err(format!("a rank failed (status {status:#x})"));
                }
            } else {
                i += 1;
            }
        }
        if pids.is_empty() {
            return Ok(());
        }
        if started.elapsed() > shape.deadline {
            return Err(format!(
                "{} rank(s) still running after {:?}",
                pids.len(),
                shape.deadline
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn parse(text: &str, shape: &Shape, started: Instant) -> Result<Report, String> {
    let mut rep = Report {
        total_micros: started.elapsed().as_micros() as u64,
        ..Report::default()
    };
    let mut ranks = 0;
    for l in text.lines().filter(|l| l.ends_with(" end")) {
        ranks += 1;
        for f in l.split(' ') {
            let mut it = f.split(':');
            let name = it.next().unwrap_or_default();
            let nums: Vec<u64> = it.filter_map(|x| x.parse().ok()).collect();
            match (name, nums.as_slice()) {
                ("ready", [us]) => rep.ready_micros = rep.ready_micros.max(*us),
                (_, [us, ops, sent, received, events]) => {
                    rep.phases.entry(name.to_owned()).or_default().push(Sample {
                        micros: *us,
                        traffic: Traffic {
                            ops: *ops,
                            bytes_sent: *sent,
                            bytes_received: *received,
                            events: *events,
                        },
                    });
                }
                _ => {}
            }
        }
    }
    if ranks != shape.world {
        return Err(format!(
            "{ranks} of {} ranks reported\n{}",
            shape.world,
            failures(text)
        ));
    }
    Ok(rep)
}

impl Report {
    /// The slowest rank's time of `phase`, in microseconds.
    pub fn max_micros(&self, phase: &str) -> u64 {
        self.phases
            .get(phase)
            .map_or(0, |s| s.iter().map(|x| x.micros).max().unwrap_or(0))
    }

    /// The mean traffic per rank of `phase`: (ops, bytes sent + received, events).
    pub fn per_rank(&self, phase: &str) -> (f64, f64, f64) {
        let Some(s) = self.phases.get(phase) else {
            return (0.0, 0.0, 0.0);
        };
        let n = s.len().max(1) as f64;
        let sum =
            |f: &dyn Fn(&Traffic) -> u64| s.iter().map(|x| f(&x.traffic)).sum::<u64>() as f64 / n;
        (
            sum(&|t| t.ops),
            sum(&|t| t.bytes_sent + t.bytes_received),
            sum(&|t| t.events),
        )
    }

    /// The most ops one rank sent in `phase`.
    pub fn max_ops(&self, phase: &str) -> u64 {
        self.phases
            .get(phase)
            .map_or(0, |s| s.iter().map(|x| x.traffic.ops).max().unwrap_or(0))
    }
}
