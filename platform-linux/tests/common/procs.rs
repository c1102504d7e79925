//! Process helpers shared by the multi-process BM and SHM tests (included by `bm_common` and
//! `shm_common`): the child-rank env vars, free ports, a rank-less store client, and forking a
//! child that runs one closure.
#![allow(dead_code, unreachable_pub)]

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use smem_linux::store::{ClientOptions, StoreClient};

/// The names of the env vars that make this test binary a child rank.
pub struct Vars {
    pub role: &'static str,
    pub rank: &'static str,
    pub url: &'static str,
    pub world: &'static str,
}

impl Vars {
    /// The BM tests' `SMEM_BM_TEST_*`.
    pub const BM: Self = Self {
        role: "SMEM_BM_TEST_ROLE",
        rank: "SMEM_BM_TEST_RANK",
        url: "SMEM_BM_TEST_URL",
        world: "SMEM_BM_TEST_WORLD",
    };
    /// The SHM tests' `SMEM_SHM_TEST_*`.
    pub const SHM: Self = Self {
        role: "SMEM_SHM_TEST_ROLE",
        rank: "SMEM_SHM_TEST_RANK",
        url: "SMEM_SHM_TEST_URL",
        world: "SMEM_SHM_TEST_WORLD",
    };
}

/// The settings of a child rank, when this process is one.
#[derive(Clone, Debug)]
pub struct Role {
    pub role: String,
    pub rank: u32,
    pub url: String,
    pub world: u32,
}

/// The settings read from `vars`, when all are set.
pub fn role_from(vars: &Vars) -> Option<Role> {
    Some(Role {
        role: std::env::var(vars.role).ok()?,
        rank: std::env::var(vars.rank).ok()?.parse().ok()?,
        url: std::env::var(vars.url).ok()?,
        world: std::env::var(vars.world).ok()?.parse().ok()?,
    })
}

/// Makes `cmd` run test `name` (its full name in this binary) alone as rank `rank` of `world`
/// in `role`.
pub fn as_rank(
    cmd: &mut Command,
    vars: &Vars,
    name: &str,
    role: &str,
    rank: u32,
    url: &str,
    world: u32,
) {
    cmd.args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(vars.role, role)
        .env(vars.rank, rank.to_string())
        .env(vars.url, url)
        .env(vars.world, world.to_string());
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound and released).
pub fn free_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("tcp://127.0.0.1:{}", l.local_addr().expect("addr").port())
}

pub fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("tcp://")
        .parse()
        .expect("socket address")
}

/// A rank-less store client (for test barriers and checks of the store's contents).
pub fn client(url: &str) -> StoreClient {
    let opts = ClientOptions {
        connect_timeout: Duration::from_secs(20),
        op_timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    };
    let target = smem_linux::store::StoreTarget::parse(url).expect("store URL");
    StoreClient::connect_to(target, opts).expect("test store client")
}

/// Forks a child that runs `body` and leaves with `_exit` (status 1 when `body` panicked), and
/// waits for it, polling every `poll`: panics with `hung` (after killing it) when it runs past
/// `within`, or with `"{what} failed: <status>"` when it did not exit 0.
///
/// `body` may only run smem calls (whose fork handlers reset the child's state) and
/// async-signal-safe ones: the child never returns into the test harness.
pub fn fork_and_wait(
    within: Duration,
    poll: Duration,
    what: &str,
    hung: &str,
    body: impl FnOnce() + std::panic::UnwindSafe,
) {
    // SAFETY: the child only runs `body` (see above) and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let ok = std::panic::catch_unwind(body).is_ok();
        // SAFETY: ends the forked child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let deadline = Instant::now() + within;
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if got == pid {
            break;
        }
        if Instant::now() > deadline {
            // SAFETY: kills and reaps our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("{hung}");
        }
        std::thread::sleep(poll);
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{what} failed: {status:#x}"
    );
}
