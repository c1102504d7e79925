//! A two-rank BM pool for measurements: this process is rank 0 (hosting the config store
//! in-process), rank 1 is this same executable started again as a child process (role chosen by
//! the env var [`PEER_ENV`]), which creates and joins the pool and then only waits. Everything
//! goes through the C API (`smem_*` of the rlib). Shared by `tests/alloc.rs` and
//! `benches/bm.rs` (included with `#[path]`).
#![allow(dead_code, unreachable_pub)]

use std::ffi::{CString, c_void};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smem::{
    smem_bm_config_init, smem_bm_config_t, smem_bm_create, smem_bm_destroy, smem_bm_init,
    smem_bm_join, smem_bm_ptr, smem_bm_t, smem_bm_uninit, smem_get_last_err_msg, smem_init,
    smem_uninit,
};
use smem_linux::store::{ClientOptions, StoreClient};

/// Set in the child: `<port> <dram> <hbm>`.
pub const PEER_ENV: &str = "SMEM_TEST_POOL_PEER";
const OBJECT_ID: u32 = 3;
const MIB: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);
/// How long the peer waits for rank 0 to finish (the longest benchmark run).
const PEER_LIFETIME: Duration = Duration::from_secs(900);

fn last_error() -> String {
    // SAFETY: the returned string is valid and NUL-terminated until the next smem call.
    unsafe { std::ffi::CStr::from_ptr(smem_get_last_err_msg()) }
        .to_string_lossy()
        .into_owned()
}

fn ok(rc: i32, what: &str) {
    assert_eq!(rc, 0, "{what}: {}", last_error());
}

fn config(rank: u16) -> smem_bm_config_t {
    let mut cfg = std::mem::MaybeUninit::<smem_bm_config_t>::uninit();
    // SAFETY: `cfg` is writable memory for one config.
    ok(
        unsafe { smem_bm_config_init(cfg.as_mut_ptr()) },
        "config_init",
    );
    // SAFETY: config_init returned 0: every field is written.
    let mut cfg = unsafe { cfg.assume_init() };
    cfg.rankId = rank;
    cfg.initTimeout = TIMEOUT.as_secs() as u32;
    cfg.createTimeout = TIMEOUT.as_secs() as u32;
    cfg.controlOperationTimeout = TIMEOUT.as_secs() as u32;
    cfg
}

fn client(port: u16) -> StoreClient {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    StoreClient::connect(
        addr,
        ClientOptions {
            connect_timeout: TIMEOUT,
            op_timeout: TIMEOUT,
            ..ClientOptions::default()
        },
    )
    .expect("control client")
}

/// init + create + join as `rank` of 2.
fn join(rank: u16, port: u16, dram: u64, hbm: u64) -> smem_bm_t {
    let url = CString::new(format!("tcp://127.0.0.1:{port}")).expect("url");
    let cfg = config(rank);
    // SAFETY: no pointer arguments.
    ok(unsafe { smem_init(0) }, "smem_init");
    // SAFETY: `url` and `cfg` are live and valid.
    ok(
        unsafe { smem_bm_init(url.as_ptr(), 2, 0, &cfg) },
        "smem_bm_init",
    );
    // SAFETY: scalar arguments.
    let h = unsafe { smem_bm_create(OBJECT_ID, 2, 1, dram, hbm, 0) };
    assert!(!h.is_null(), "smem_bm_create: {}", last_error());
    let mut local: *mut c_void = std::ptr::null_mut();
    // SAFETY: live handle, writable out pointer.
    ok(unsafe { smem_bm_join(h, 0, &mut local) }, "smem_bm_join");
    h
}

/// When this process is the peer (the env var is set): runs rank 1 and exits the process.
pub fn run_peer_if_child() {
    let Ok(spec) = std::env::var(PEER_ENV) else {
        return;
    };
    let v: Vec<u64> = spec
        .split(' ')
        .map(|x| x.parse().expect("peer spec"))
        .collect();
    let (port, dram, hbm) = (v[0] as u16, v[1], v[2]);
    let parent = std::os::unix::process::parent_id();
    let h = join(1, port, dram, hbm);
    let c = client(port);
    c.set(b"pool/peer-joined", b"1").expect("announce");
    let deadline = Instant::now() + PEER_LIFETIME;
    // Wait for rank 0 (a 1 s poll also notices a dead parent).
    while c.wait_get(b"pool/done", Duration::from_secs(1)).is_err() {
        if Instant::now() > deadline || std::os::unix::process::parent_id() != parent {
            std::process::exit(3);
        }
    }
    // SAFETY: live handle, not used afterwards.
    unsafe { smem_bm_destroy(h) };
    c.set(b"pool/peer-gone", b"1").expect("announce");
    // SAFETY: no pointer arguments.
    unsafe { smem_bm_uninit(0) };
    // SAFETY: no pointer arguments.
    unsafe { smem_uninit() };
    std::process::exit(0);
}

/// Rank 0 of a two-rank pool whose rank 1 is a child process.
pub struct TwoRanks {
    /// The pool handle.
    pub h: smem_bm_t,
    /// Offset of the DRAM part in a window.
    pub dram_off: u64,
    peer: Option<Child>,
    ctl: Option<StoreClient>,
}

impl TwoRanks {
    /// Starts the pool: `dram` and `hbm` bytes per rank. `child_args` are the arguments that
    /// make this executable reach [`run_peer_if_child`] quickly (e.g. a test filter).
    pub fn start(child_args: &[&str], dram: u64, hbm: u64) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let peer = Command::new(std::env::current_exe().expect("exe"))
            .args(child_args)
            .env(PEER_ENV, format!("{port} {dram} {hbm}"))
            .env("SMEM_LOG_LEVEL", "2")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the peer rank");
        let mut me = Self {
            h: std::ptr::null_mut(),
            dram_off: hbm.div_ceil(2 * MIB) * 2 * MIB,
            peer: Some(peer),
            ctl: None,
        };
        me.h = join(0, port, dram, hbm);
        let c = client(port);
        c.wait_get(b"pool/peer-joined", TIMEOUT)
            .expect("the peer joined");
        me.ctl = Some(c);
        me
    }

    /// Base of `rank`'s window.
    pub fn window(&self, rank: u16) -> u64 {
        // SAFETY: live handle.
        let p = unsafe { smem_bm_ptr(self.h, rank) };
        assert!(!p.is_null(), "smem_bm_ptr: {}", last_error());
        p as u64
    }
}

impl Drop for TwoRanks {
    fn drop(&mut self) {
        if let Some(c) = &self.ctl {
            let _ = c.set(b"pool/done", b"1");
            let _ = c.wait_get(b"pool/peer-gone", Duration::from_secs(20));
        }
        if let Some(mut p) = self.peer.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while p.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = p.kill();
            let _ = p.wait();
        }
        if let Some(c) = self.ctl.take() {
            c.close();
        }
        if !self.h.is_null() {
            // SAFETY: live handle, not used afterwards.
            unsafe { smem_bm_destroy(self.h) };
        }
        // SAFETY: no pointer arguments.
        unsafe { smem_bm_uninit(0) };
        // SAFETY: no pointer arguments.
        unsafe { smem_uninit() };
    }
}
