//! `smem-demo`: a BM pool of N ranks (real processes) on this host, driven through the C API.
//!
//! ```text
//! cargo run --release --bin smem-demo -- --ranks 4 [--dram-mib 64] [--hbm-mib 32] [--iters 3]
//! ```
//!
//! The launcher picks a free loopback port and runs itself once per rank (hidden flags
//! `--rank R --port P`). Rank 0 hosts the config store in-process; the device is `sim` unless
//! `SMEM_DEVICE` says otherwise. Every rank calls `smem_init`, `smem_bm_init`, creates and joins
//! one pool (DRAM + HBM per rank), then, phase by phase, between barriers:
//!
//! 1. `H2G`: writes a slice of every peer's DRAM part from host memory;
//! 2. `G2H`: reads back every slice written by every rank into every peer's DRAM and verifies it;
//! 3. `L2G`: writes a slice of every peer's HBM part from its own HBM (local device memory);
//! 4. `G2L`: reads every HBM slice written into every peer into its own HBM, then verifies it;
//! 5. `copy_2d`: writes a strided tile into every peer's DRAM slice (`H2G` 2D), reads it back
//!    (`G2H` 2D), and every rank checks every tile and the untouched gaps between its rows.
//!
//! Rank 0 prints each phase with the bytes moved and the bandwidth (aggregate over all ranks and
//! per rank), a progress line for phases that run longer than a second, and a final summary;
//! the launcher's exit code is 0 only when every rank exited 0. Every rank has a deadline
//! (`--timeout-s`, default 120) and dies with its launcher; when one rank fails the launcher
//! kills the others. Barriers and the per-rank statistics go through the config store with a
//! plain (rank-less) client; every byte of data moves through `smem_bm_copy` /
//! `smem_bm_copy_2d`.
#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::{CStr, CString, c_void};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use smem::{
    SMEMB_COPY_G2H, SMEMB_COPY_G2L, SMEMB_COPY_H2G, SMEMB_COPY_L2G, SMEMB_DATA_OP_SDMA,
    smem_bm_config_init, smem_bm_config_t, smem_bm_copy, smem_bm_copy_2d, smem_bm_create,
    smem_bm_destroy, smem_bm_get_local_mem_size, smem_bm_init, smem_bm_join, smem_bm_leave,
    smem_bm_ptr, smem_bm_t, smem_bm_uninit, smem_get_last_err_msg, smem_init, smem_uninit,
};
use smem_linux::store::{ClientOptions, StoreClient};

const MIB: u64 = 1 << 20;
/// Parts are rounded up to this (SPEC 2.2).
const PART_ALIGN: u64 = 2 * MIB;
/// Largest single copy; a slice is moved in chunks of this size (progress granularity).
const CHUNK: u64 = 8 * MIB;
/// Rows of the 2D tile.
const ROWS_2D: u64 = 64;
/// The id of the demo's BM object.
const OBJECT_ID: u32 = 7;

const USAGE: &str =
    "usage: smem-demo [--ranks N] [--dram-mib M] [--hbm-mib M] [--iters K] [--timeout-s S]
  --ranks N      ranks (processes) in the pool, 2..=64 (default 4)
  --dram-mib M   DRAM contributed by each rank, MiB (default 64)
  --hbm-mib M    HBM (sim device) contributed by each rank, MiB (default 32)
  --iters K      repetitions of each write phase (default 3)
  --timeout-s S  deadline of each rank, seconds (default 120)
  --port P       loopback port of the config store (default: a free one)";

#[derive(Clone, Debug)]
struct Args {
    ranks: u32,
    dram_mib: u64,
    hbm_mib: u64,
    iters: u32,
    timeout_s: u64,
    /// Hidden: this process is rank R of the demo.
    rank: Option<u32>,
    /// The store's loopback port (0: the launcher picks a free one).
    port: u16,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        ranks: 4,
        dram_mib: 64,
        hbm_mib: 32,
        iters: 3,
        timeout_s: 120,
        rank: None,
        port: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| -> Result<u64, String> {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--ranks" => a.ranks = u32::try_from(num(&value)?).map_err(|_| "--ranks too big")?,
            "--dram-mib" => a.dram_mib = num(&value)?,
            "--hbm-mib" => a.hbm_mib = num(&value)?,
            "--iters" => a.iters = u32::try_from(num(&value)?).map_err(|_| "--iters too big")?,
            "--timeout-s" => a.timeout_s = num(&value)?,
            "--rank" => a.rank = Some(u32::try_from(num(&value)?).map_err(|_| "bad --rank")?),
            "--port" => a.port = u16::try_from(num(&value)?).map_err(|_| "bad --port")?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if !(2..=64).contains(&a.ranks) {
        return Err(format!("--ranks {} must be in 2..=64", a.ranks));
    }
    if a.iters == 0 || a.timeout_s == 0 {
        return Err("--iters and --timeout-s must be at least 1".into());
    }
    if a.dram_mib == 0 || a.hbm_mib == 0 || a.dram_mib > 1 << 20 || a.hbm_mib > 1 << 20 {
        return Err("--dram-mib and --hbm-mib must be in 1..=1048576".into());
    }
    // Every rank writes one slice of every window part: a slice must hold a 2D tile.
    let slice = a.dram_mib.min(a.hbm_mib) * MIB / u64::from(a.ranks);
    if slice < 64 * 1024 {
        return Err(format!(
            "slices of {slice} bytes are too small: give each rank at least {} MiB of DRAM and HBM for {} ranks",
            (64 * 1024 * u64::from(a.ranks)).div_ceil(MIB),
            a.ranks
        ));
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("smem-demo: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match args.rank {
        None => launch(&args),
        Some(r) => {
            watchdog(r, Duration::from_secs(args.timeout_s));
            match run_rank(&args, r) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("[rank {r}] FAILED: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Launcher

/// A loopback port that was free a moment ago (rank 0's store binds it).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Kills (SIGKILL, by pid) and reaps every child still running.
fn kill_all(children: &mut [(u32, Child, Option<std::process::ExitStatus>)]) {
    for (_, c, status) in children.iter_mut() {
        if status.is_none() {
            let _ = c.kill();
            *status = c.wait().ok();
        }
    }
}

fn launch(args: &Args) -> ExitCode {
    let port = match if args.port != 0 {
        Ok(args.port)
    } else {
        free_port()
    } {
        Ok(p) => p,
        Err(e) => {
            eprintln!("smem-demo: no free loopback port: {e}");
            return ExitCode::FAILURE;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("smem-demo: cannot find my own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "smem-demo: {} ranks as processes, store tcp://127.0.0.1:{port} (in rank 0), device {}, {} MiB DRAM + {} MiB HBM per rank, {} iteration(s)",
        args.ranks,
        std::env::var("SMEM_DEVICE")
            .ok()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "sim".into()),
        args.dram_mib,
        args.hbm_mib,
        args.iters
    );
    let _ = std::io::stdout().flush();
    let mut children = Vec::new();
    for r in 0..args.ranks {
        let mut cmd = Command::new(&exe);
        cmd.args([
            "--rank",
            &r.to_string(),
            "--port",
            &port.to_string(),
            "--ranks",
            &args.ranks.to_string(),
            "--dram-mib",
            &args.dram_mib.to_string(),
            "--hbm-mib",
            &args.hbm_mib.to_string(),
            "--iters",
            &args.iters.to_string(),
            "--timeout-s",
            &args.timeout_s.to_string(),
        ]);
        if std::env::var_os("SMEM_LOG_LEVEL").is_none() {
            cmd.env("SMEM_LOG_LEVEL", "2");
        }
        match cmd.spawn() {
            Ok(c) => children.push((r, c, None)),
            Err(e) => {
                eprintln!("smem-demo: cannot start rank {r}: {e}");
                kill_all(&mut children);
                return ExitCode::FAILURE;
            }
        }
    }
    // The ranks enforce their own deadline; this one is the backstop.
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s + 15);
    loop {
        let mut failed = None;
        for (r, c, status) in &mut children {
            if status.is_none() {
                match c.try_wait() {
                    Ok(Some(s)) => {
                        *status = Some(s);
                        if !s.success() {
                            failed = Some(format!("rank {r} exited with {s}"));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => failed = Some(format!("waiting for rank {r}: {e}")),
                }
            }
        }
        if failed.is_none() && Instant::now() > deadline {
            failed = Some(format!(
                "the ranks did not finish within {} s",
                args.timeout_s + 15
            ));
        }
        if let Some(why) = failed {
            kill_all(&mut children);
            eprintln!("demo FAILED: {why}; every other rank was stopped");
            return ExitCode::FAILURE;
        }
        if children.iter().all(|c| c.2.is_some()) {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ends this rank (exit code 124) when it runs past its deadline, and when its launcher dies.
fn watchdog(rank: u32, timeout: Duration) {
    let parent = std::os::unix::process::parent_id();
    let start = Instant::now();
    let spawned = std::thread::Builder::new()
        .name("demo-watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(100));
                if start.elapsed() > timeout {
                    eprintln!(
                        "[rank {rank}] FAILED: deadline of {} s passed",
                        timeout.as_secs()
                    );
                    std::process::exit(124);
                }
                if std::os::unix::process::parent_id() != parent {
                    eprintln!("[rank {rank}] FAILED: the launcher died");
                    std::process::exit(125);
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("[rank {rank}] cannot start the watchdog: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// One rank

type Res<T> = Result<T, String>;

/// The last error of the C API, after a failed call.
fn last_error() -> String {
    // SAFETY: smem_get_last_err_msg returns a valid NUL-terminated string (never NULL) that
    // stays valid until the next smem call on this thread; it is copied at once.
    unsafe { CStr::from_ptr(smem_get_last_err_msg()) }
        .to_string_lossy()
        .into_owned()
}

fn check(rc: i32, what: &str) -> Res<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("{what} returned {rc}: {}", last_error()))
    }
}

/// A pool of this rank: the handle and the window arithmetic.
struct Pool {
    h: smem_bm_t,
    /// Offset of the DRAM part in a window (the HBM part comes first).
    dram_off: u64,
    /// Bytes of one rank's slice of a DRAM / HBM part.
    dram_slice: u64,
    hbm_slice: u64,
}

impl Pool {
    fn window(&self, peer: u32) -> Res<u64> {
        let p = u16::try_from(peer).map_err(|_| format!("rank {peer} too big"))?;
        // SAFETY: `h` is a live handle of this process (or any value: the call checks it).
        let w = unsafe { smem_bm_ptr(self.h, p) };
        if w.is_null() {
            return Err(format!("smem_bm_ptr({peer}) is NULL: {}", last_error()));
        }
        Ok(w as u64)
    }

    /// GVA of slice `slot` of the DRAM part of `peer`'s window.
    fn dram(&self, peer: u32, slot: u32) -> Res<u64> {
        Ok(self.window(peer)? + self.dram_off + u64::from(slot) * self.dram_slice)
    }

    /// GVA of slice `slot` of the HBM part of `peer`'s window.
    fn hbm(&self, peer: u32, slot: u32) -> Res<u64> {
        Ok(self.window(peer)? + u64::from(slot) * self.hbm_slice)
    }

    /// One `smem_bm_copy` of `len` bytes between `local` and `global`.
    fn copy(&self, local: u64, global: u64, len: u64, t: u32) -> Res<()> {
        let (src, dst) = if t == SMEMB_COPY_H2G || t == SMEMB_COPY_L2G {
            (local, global)
        } else {
            (global, local)
        };
        // SAFETY: the local side is a live buffer of this process (or a part of this rank's own
        // joined window) of at least `len` bytes; the global side is validated by the call.
        let rc =
            unsafe { smem_bm_copy(self.h, src as *const c_void, dst as *mut c_void, len, t, 0) };
        check(rc, &format!("smem_bm_copy(type {t}, {len} bytes)"))
    }
}

/// Host buffer of `len` bytes (u64-aligned).
fn host_buf(len: u64) -> Vec<u64> {
    vec![0u64; usize::try_from(len / 8).unwrap_or(0)]
}

fn addr(buf: &[u64]) -> u64 {
    buf.as_ptr() as u64
}

fn addr_mut(buf: &mut [u64]) -> u64 {
    buf.as_mut_ptr() as u64
}

/// The pattern word `i` of the data that `writer` put into `target`'s part `part` in `iter`.
fn word(writer: u32, target: u32, part: u32, iter: u32, i: u64) -> u64 {
    // splitmix64 of the position and the tag: any misplaced or stale word shows.
    let tag = (u64::from(writer) << 48) ^ (u64::from(target) << 32) ^ (u64::from(part) << 24);
    let mut z = (tag ^ u64::from(iter) << 8 ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fill(buf: &mut [u64], first: u64, f: impl Fn(u64) -> u64) {
    for (i, w) in buf.iter_mut().enumerate() {
        *w = f(first + i as u64);
    }
}

/// Checks `buf` against `f`; the error names the first wrong byte offset.
fn verify(buf: &[u64], first: u64, f: impl Fn(u64) -> u64, what: &str) -> Res<u64> {
    match buf
        .iter()
        .enumerate()
        .find(|(i, w)| **w != f(first + *i as u64))
    {
        None => Ok(buf.len() as u64 * 8),
        Some((i, w)) => Err(format!(
            "{what}: byte {} is wrong: {w:#018x}, expected {:#018x}",
            (first + i as u64) * 8,
            f(first + i as u64)
        )),
    }
}

/// Per-phase measurement of this rank.
struct Phase {
    name: &'static str,
    bytes: u64,
    busy: Duration,
    total: u64,
    shown: Instant,
    started: Instant,
    show_progress: bool,
}

impl Phase {
    fn new(name: &'static str, total: u64, rank: u32) -> Self {
        Self {
            name,
            bytes: 0,
            busy: Duration::ZERO,
            total,
            shown: Instant::now(),
            started: Instant::now(),
            show_progress: rank == 0,
        }
    }

    /// Runs one timed copy and accounts its bytes.
    fn timed(&mut self, len: u64, f: impl FnOnce() -> Res<()>) -> Res<()> {
        let t = Instant::now();
        f()?;
        self.busy += t.elapsed();
        self.bytes += len;
        if self.show_progress
            && self.started.elapsed() > Duration::from_secs(1)
            && self.shown.elapsed() > Duration::from_millis(500)
        {
            self.shown = Instant::now();
            println!(
                "    ... {}: rank 0 at {:.0}% ({} MiB, {:.2} GB/s)",
                self.name,
                100.0 * self.bytes as f64 / self.total.max(1) as f64,
                self.bytes / MIB,
                gbps(self.bytes, self.busy)
            );
        }
        Ok(())
    }
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e9
}

/// Barriers and statistics through the config store (a rank-less client).
struct Ctl {
    c: StoreClient,
    ranks: u32,
    rank: u32,
    timeout: Duration,
}

impl Ctl {
    fn barrier(&self, name: &str) -> Res<()> {
        let k = format!("demo/barrier/{name}");
        let n = self
            .c
            .add(k.as_bytes(), 1)
            .map_err(|e| format!("barrier {name}: {e}"))?;
        let go = format!("{k}/go");
        if n == i64::from(self.ranks) {
            self.c
                .set(go.as_bytes(), b"1")
                .map_err(|e| format!("barrier {name}: {e}"))?;
        }
        self.c
            .wait_get(go.as_bytes(), self.timeout)
            .map_err(|e| format!("barrier {name} (rank {}): {e}", self.rank))?;
        Ok(())
    }

    /// Publishes this rank's numbers of `p`; rank 0 then prints the phase (after a barrier).
    fn report(&self, p: &Phase, detail: &str) -> Res<()> {
        let k = format!("demo/stat/{}/{}", p.name, self.rank);
        let v = format!("{} {}", p.bytes, p.busy.as_nanos());
        self.c
            .set(k.as_bytes(), v.as_bytes())
            .map_err(|e| format!("stats: {e}"))?;
        self.barrier(&format!("stat/{}", p.name))?;
        if self.rank != 0 {
            return Ok(());
        }
        let (mut bytes, mut rates) = (0u64, Vec::new());
        for r in 0..self.ranks {
            let k = format!("demo/stat/{}/{r}", p.name);
            let v = self
                .c
                .get(k.as_bytes())
                .map_err(|e| format!("stats: {e}"))?
                .ok_or_else(|| format!("stats of rank {r} missing"))?;
            let s = String::from_utf8_lossy(&v).into_owned();
            let mut it = s.split(' ').map(|x| x.parse::<u64>().unwrap_or(0));
            let (b, ns) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
            let d = Duration::from_nanos(ns);
            bytes += b;
            rates.push(gbps(b, d));
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "  {:<8} {detail:<44} {:>6} MiB in {:>5.0} ms   per rank {:>5.2} GB/s (min {:.2}, max {:.2})",
            p.name,
            bytes / MIB,
            p.started.elapsed().as_secs_f64() * 1e3,
            rates.iter().sum::<f64>() / rates.len().max(1) as f64,
            rates.first().copied().unwrap_or(0.0),
            rates.last().copied().unwrap_or(0.0),
        );
        let _ = std::io::stdout().flush();
        Ok(())
    }
}

fn run_rank(args: &Args, rank: u32) -> Res<()> {
    let n = args.ranks;
    let url = format!("tcp://127.0.0.1:{}", args.port);
    let timeout = Duration::from_secs(args.timeout_s);
    let secs = u32::try_from(args.timeout_s).unwrap_or(u32::MAX);
    // SAFETY: no pointer arguments.
    check(unsafe { smem_init(0) }, "smem_init")?;
    let mut cfg = std::mem::MaybeUninit::<smem_bm_config_t>::uninit();
    // SAFETY: `cfg` is writable memory for one config; smem_bm_config_init fills all of it.
    let rc = unsafe { smem_bm_config_init(cfg.as_mut_ptr()) };
    check(rc, "smem_bm_config_init")?;
    // SAFETY: smem_bm_config_init returned 0, so every field is written.
    let mut cfg = unsafe { cfg.assume_init() };
    cfg.rankId = u16::try_from(rank).map_err(|_| "rank too big")?;
    cfg.initTimeout = secs;
    cfg.createTimeout = secs;
    cfg.controlOperationTimeout = secs;
    let c_url = CString::new(url.clone()).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    // SAFETY: `c_url` is a NUL-terminated string and `cfg` a valid config, both live.
    let rc = unsafe { smem_bm_init(c_url.as_ptr(), n, 0, &cfg) };
    check(rc, "smem_bm_init")?;
    let store: SocketAddr = format!("127.0.0.1:{}", args.port)
        .parse()
        .map_err(|e| format!("{e}"))?;
    let ctl = Ctl {
        c: StoreClient::connect(
            store,
            ClientOptions {
                connect_timeout: timeout,
                op_timeout: timeout,
                ..ClientOptions::default()
            },
        )
        .map_err(|e| format!("barrier client: {e}"))?,
        ranks: n,
        rank,
        timeout,
    };
    let say = |s: String| {
        if rank == 0 {
            println!("{s}");
            let _ = std::io::stdout().flush();
        }
    };
    say(format!(
        "  init     {n} ranks registered with the store in {:.0} ms",
        t0.elapsed().as_secs_f64() * 1e3
    ));

    let (dram, hbm) = (args.dram_mib * MIB, args.hbm_mib * MIB);
    let t0 = Instant::now();
    // SAFETY: scalar arguments only.
    let h = unsafe { smem_bm_create(OBJECT_ID, n, SMEMB_DATA_OP_SDMA, dram, hbm, 0) };
    if h.is_null() {
        return Err(format!("smem_bm_create: {}", last_error()));
    }
    let mut local: *mut c_void = std::ptr::null_mut();
    // SAFETY: `h` is the live handle; `local` is a writable pointer slot.
    check(unsafe { smem_bm_join(h, 0, &mut local) }, "smem_bm_join")?;
    let pool = Pool {
        h,
        dram_off: hbm.div_ceil(PART_ALIGN) * PART_ALIGN,
        dram_slice: dram / u64::from(n) / 64 * 64,
        hbm_slice: hbm / u64::from(n) / 64 * 64,
    };
    if local as u64 != pool.window(rank)? {
        return Err(format!(
            "smem_bm_join gave {local:p}, smem_bm_ptr({rank}) {:#x}",
            pool.window(rank)?
        ));
    }
    // SAFETY: `h` is the live handle.
    let size = unsafe { smem_bm_get_local_mem_size(h) };
    ctl.barrier("joined")?;
    say(format!(
        "  pool     object {OBJECT_ID}: {n} windows of {} MiB (HBM {} MiB at +0, DRAM {} MiB at +{} MiB), base {:#x}, created and joined in {:.0} ms",
        size / MIB,
        args.hbm_mib,
        args.dram_mib,
        pool.dram_off / MIB,
        pool.window(0)?,
        t0.elapsed().as_secs_f64() * 1e3
    ));
    say("  (per rank GB/s = bytes / time inside smem_bm_copy*, mean over ranks; ms = the phase on rank 0, fill and verify included)".into());
    let mut verified = 0u64;
    let peers: Vec<u32> = (0..n).filter(|&p| p != rank).collect();
    let last = args.iters - 1;
    let pairs = n * (n - 1);

    // 1. H2G: host -> slice `rank` of every peer's DRAM part.
    let ds = pool.dram_slice;
    let mut buf = host_buf(ds);
    let mut ph = Phase::new("H2G", u64::from(args.iters) * peers.len() as u64 * ds, rank);
    for iter in 0..args.iters {
        for &p in &peers {
            fill(&mut buf, 0, |i| word(rank, p, 0, iter, i));
            let dst = pool.dram(p, rank)?;
            for off in (0..ds).step_by(CHUNK as usize) {
                let len = CHUNK.min(ds - off);
                ph.timed(len, || {
                    pool.copy(addr(&buf) + off, dst + off, len, SMEMB_COPY_H2G)
                })?;
            }
        }
    }
    ctl.report(
        &ph,
        &format!("host -> peer DRAM, {pairs} pairs x {} iter", args.iters),
    )?;

    // 2. G2H: every slice written into every peer's DRAM, read back and verified by everyone.
    let mut ph = Phase::new("G2H", peers.len() as u64 * u64::from(n - 1) * ds, rank);
    for &p in &peers {
        for q in (0..n).filter(|&q| q != p) {
            let src = pool.dram(p, q)?;
            let a = addr_mut(&mut buf);
            for off in (0..ds).step_by(CHUNK as usize) {
                let len = CHUNK.min(ds - off);
                ph.timed(len, || pool.copy(a + off, src + off, len, SMEMB_COPY_G2H))?;
            }
            verified += verify(
                &buf,
                0,
                |i| word(q, p, 0, last, i),
                &format!("DRAM of rank {p} written by rank {q}"),
            )?;
        }
    }
    ctl.report(&ph, "peer DRAM -> host, all slices, verified")?;

    // 3. L2G: own HBM slice `rank` (local device memory) -> slice `rank` of every peer's HBM.
    let hs = pool.hbm_slice;
    let mut hbuf = host_buf(hs);
    let own = pool.hbm(rank, rank)?;
    let mut ph = Phase::new("L2G", u64::from(args.iters) * peers.len() as u64 * hs, rank);
    for iter in 0..args.iters {
        for &p in &peers {
            // Stage the data in this rank's own HBM (not timed), then device -> peer device.
            fill(&mut hbuf, 0, |i| word(rank, p, 1, iter, i));
            pool.copy(addr(&hbuf), own, hs, SMEMB_COPY_H2G)?;
            let dst = pool.hbm(p, rank)?;
            for off in (0..hs).step_by(CHUNK as usize) {
                let len = CHUNK.min(hs - off);
                ph.timed(len, || pool.copy(own + off, dst + off, len, SMEMB_COPY_L2G))?;
            }
        }
    }
    ctl.report(
        &ph,
        &format!("own HBM -> peer HBM, {pairs} pairs x {} iter", args.iters),
    )?;

    // 4. G2L: every HBM slice of every peer -> own HBM, then verified through the host.
    let mut ph = Phase::new("G2L", peers.len() as u64 * u64::from(n - 1) * hs, rank);
    for &p in &peers {
        for q in (0..n).filter(|&q| q != p) {
            let src = pool.hbm(p, q)?;
            for off in (0..hs).step_by(CHUNK as usize) {
                let len = CHUNK.min(hs - off);
                ph.timed(len, || pool.copy(own + off, src + off, len, SMEMB_COPY_G2L))?;
            }
            pool.copy(addr_mut(&mut hbuf), own, hs, SMEMB_COPY_G2H)?;
            verified += verify(
                &hbuf,
                0,
                |i| word(q, p, 1, last, i),
                &format!("HBM of rank {p} written by rank {q}"),
            )?;
        }
    }
    ctl.report(&ph, "peer HBM -> own HBM, all slices, verified")?;

    // 5. copy_2d: a tile of ROWS_2D rows of `w` bytes at pitch 2w into slice `rank` of every
    // peer's DRAM (H2G), read back (G2H); then everybody checks every tile and the gaps.
    let w = ds / (2 * ROWS_2D) / 64 * 64;
    let tile = w * ROWS_2D;
    let mut tbuf = host_buf(tile);
    let mut back = host_buf(tile);
    back.fill(1); // touched once, so the timed copies see no first-touch page faults
    let mut ph = Phase::new("copy_2d", 2 * peers.len() as u64 * tile, rank);
    for &p in &peers {
        fill(&mut tbuf, 0, |i| word(rank, p, 2, 0, i));
        let dst = pool.dram(p, rank)?;
        let src = addr(&tbuf);
        ph.timed(tile, || {
            // SAFETY: `tbuf` holds ROWS_2D rows of `w` bytes at pitch `w`; the destination
            // rows lie in slice `rank` of `p`'s DRAM part (validated by the call).
            let rc = unsafe {
                smem_bm_copy_2d(
                    h,
                    src as *const c_void,
                    w,
                    dst as *mut c_void,
                    2 * w,
                    w,
                    ROWS_2D,
                    SMEMB_COPY_H2G,
                    0,
                )
            };
            check(rc, "smem_bm_copy_2d H2G")
        })?;
        let b = addr_mut(&mut back);
        ph.timed(tile, || {
            // SAFETY: `back` holds ROWS_2D rows of `w` writable bytes at pitch `w`.
            let rc = unsafe {
                smem_bm_copy_2d(
                    h,
                    dst as *const c_void,
                    2 * w,
                    b as *mut c_void,
                    w,
                    w,
                    ROWS_2D,
                    SMEMB_COPY_G2H,
                    0,
                )
            };
            check(rc, "smem_bm_copy_2d G2H")
        })?;
        verified += verify(
            &back,
            0,
            |i| word(rank, p, 2, 0, i),
            &format!("2D tile read back from rank {p}"),
        )?;
    }
    ctl.barrier("tiles")?;
    let words = (w / 8) as usize;
    for &p in &peers {
        for q in (0..n).filter(|&q| q != p) {
            let src = pool.dram(p, q)?;
            pool.copy(addr_mut(&mut buf), src, ds, SMEMB_COPY_G2H)?;
            for row in 0..ROWS_2D as usize {
                let at = row * 2 * words;
                let tile_first = (row * words) as u64;
                verified += verify(
                    &buf[at..at + words],
                    tile_first,
                    |i| word(q, p, 2, 0, i),
                    &format!("2D row {row} in rank {p}'s DRAM from rank {q}"),
                )?;
                verified += verify(
                    &buf[at + words..at + 2 * words],
                    (at + words) as u64,
                    |i| word(q, p, 0, last, i),
                    &format!("gap after 2D row {row} in rank {p}'s DRAM from rank {q}"),
                )?;
            }
        }
    }
    ctl.report(
        &ph,
        &format!("{ROWS_2D} rows x {w} B, pitch {}, H2G + G2H", 2 * w),
    )?;

    // Tear down: leave + destroy everywhere, then the others uninit, then rank 0 (the store).
    ctl.c
        .add(
            b"demo/verified",
            i64::try_from(verified).unwrap_or(i64::MAX),
        )
        .map_err(|e| format!("stats: {e}"))?;
    ctl.barrier("counted")?;
    // SAFETY: `h` is the live handle.
    check(unsafe { smem_bm_leave(h, 0) }, "smem_bm_leave")?;
    // SAFETY: `h` is the live handle; it is not used afterwards.
    unsafe { smem_bm_destroy(h) };
    ctl.barrier("destroyed")?;
    if rank != 0 {
        // SAFETY: no pointer arguments.
        unsafe {
            smem_bm_uninit(0);
        }
        // SAFETY: no pointer arguments.
        unsafe { smem_uninit() };
        ctl.c
            .add(b"demo/gone", 1)
            .map_err(|e| format!("leaving: {e}"))?;
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    loop {
        let gone = ctl
            .c
            .get(b"demo/gone")
            .map_err(|e| format!("waiting for the others: {e}"))?
            .and_then(|v| String::from_utf8_lossy(&v).parse::<u32>().ok())
            .unwrap_or(0);
        if gone == n - 1 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {gone} of {} ranks finished", n - 1));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let total = ctl
        .c
        .get(b"demo/verified")
        .map_err(|e| format!("stats: {e}"))?
        .and_then(|v| String::from_utf8_lossy(&v).parse::<u64>().ok())
        .unwrap_or(0);
    ctl.c.close();
    // SAFETY: no pointer arguments.
    unsafe { smem_bm_uninit(0) };
    // SAFETY: no pointer arguments.
    unsafe { smem_uninit() };
    println!(
        "demo OK: {n} ranks, {pairs} pairs, {} MiB verified",
        total / MIB
    );
    Ok(())
}
