//! Helpers of the multi-process BM tests: each rank is this test binary run again with
//! `SMEM_BM_TEST_*` env vars; children are killed when the parent fails or times out.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smem_linux::runtime::BmConfig;
use smem_linux::store::StoreClient;

#[path = "../common/procs.rs"]
mod procs;

#[allow(unused_imports)] // each test binary uses some
pub use procs::{Role, addr_of, as_rank, client, fork_and_wait, free_url};

/// The env vars of a child rank: `SMEM_BM_TEST_{ROLE,RANK,URL,WORLD}`.
pub const VARS: procs::Vars = procs::Vars::BM;

pub fn role() -> Option<Role> {
    procs::role_from(&VARS)
}

/// A config with short timeouts for tests.
pub fn config(rank: u32, secs: u64) -> BmConfig {
    BmConfig {
        init_timeout: Duration::from_secs(secs),
        create_timeout: Duration::from_secs(secs),
        control_timeout: Duration::from_secs(secs),
        rank_id: u16::try_from(rank).expect("rank fits u16"),
        ..BmConfig::default()
    }
}

/// Children that are killed unless they all finished.
pub struct Ranks {
    children: Vec<(u32, Child)>,
}

impl Drop for Ranks {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs ranks `0..world` of test `name` with `role` on a fresh URL and asserts that every rank
/// printed `rank-ok` within `deadline`.
pub fn run_all_ok(name: &str, role: &str, world: u32, deadline: Duration) {
    let url = free_url();
    let ranks: Vec<u32> = (0..world).collect();
    let out = spawn(name, role, &url, world, &ranks).wait(deadline);
    assert!(out.values().all(|o| o.contains("rank-ok")), "{out:?}");
}

/// Starts `ranks` of test `name` (its full name in this binary) with `role`.
pub fn spawn(name: &str, role: &str, url: &str, world: u32, ranks: &[u32]) -> Ranks {
    spawn_with(name, role, url, world, ranks, &[])
}

/// As [`spawn`], with extra env vars `(rank, name, value)` for single ranks.
pub fn spawn_with(
    name: &str,
    role: &str,
    url: &str,
    world: u32,
    ranks: &[u32],
    extra: &[(u32, &str, &str)],
) -> Ranks {
    spawn_in(name, role, url, world, ranks, extra, &|_| Vec::new())
}

/// As [`spawn_with`], each rank's command run through `prefix(rank)` (e.g. `ip netns exec NS`).
pub fn spawn_in(
    name: &str,
    role: &str,
    url: &str,
    world: u32,
    ranks: &[u32],
    extra: &[(u32, &str, &str)],
    prefix: &dyn Fn(u32) -> Vec<String>,
) -> Ranks {
    let exe = std::env::current_exe().expect("test binary");
    let children = ranks
        .iter()
        .map(|&r| {
            let pre = prefix(r);
            let mut cmd = match pre.split_first() {
                Some((first, rest)) => {
                    let mut c = Command::new(first);
                    c.args(rest).arg(&exe);
                    c
                }
                None => Command::new(&exe),
            };
            for (_, k, v) in extra.iter().filter(|e| e.0 == r) {
                cmd.env(k, v);
            }
            as_rank(&mut cmd, &VARS, name, role, r, url, world);
            let c = cmd
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn rank");
            (r, c)
        })
        .collect();
    Ranks { children }
}

impl Ranks {
    /// Waits for every child until `deadline`; returns each rank's stdout. Panics (after
    /// killing the rest) when one fails or the deadline passes.
    pub fn wait(mut self, deadline: Duration) -> BTreeMap<u32, String> {
        let start = Instant::now();
        let mut out = BTreeMap::new();
        while !self.children.is_empty() {
            let mut i = 0;
            while i < self.children.len() {
                let done = self.children[i].1.try_wait().expect("try_wait").is_some();
                if done {
                    let (r, c) = self.children.swap_remove(i);
                    let o = c.wait_with_output().expect("output");
                    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
                    assert!(
                        o.status.success(),
                        "rank {r} failed ({}):\nstdout: {stdout}\nstderr: {}",
                        o.status,
                        String::from_utf8_lossy(&o.stderr)
                    );
                    out.insert(r, stdout);
                } else {
                    i += 1;
                }
            }
            assert!(
                start.elapsed() < deadline,
                "ranks {:?} did not finish within {deadline:?}",
                self.children.iter().map(|c| c.0).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        out
    }
}

impl Ranks {
    /// Waits for every child until `deadline` without judging exit statuses; returns each
    /// rank's status and stdout + stderr. Panics (after killing the rest) on the deadline.
    pub fn wait_any(
        mut self,
        deadline: Duration,
    ) -> BTreeMap<u32, (std::process::ExitStatus, String)> {
        let start = Instant::now();
        let mut out = BTreeMap::new();
        while !self.children.is_empty() {
            let mut i = 0;
            while i < self.children.len() {
                if self.children[i].1.try_wait().expect("try_wait").is_some() {
                    let (r, c) = self.children.swap_remove(i);
                    let o = c.wait_with_output().expect("output");
                    let text = format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                    out.insert(r, (o.status, text));
                } else {
                    i += 1;
                }
            }
            assert!(
                start.elapsed() < deadline,
                "ranks {:?} did not finish within {deadline:?}",
                self.children.iter().map(|c| c.0).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        out
    }
}

/// Returns when `n` processes called `barrier` with `name`.
pub fn barrier(c: &StoreClient, name: &str, n: u32) {
    let k = format!("test/barrier/{name}");
    let v = c.add(k.as_bytes(), 1).expect("barrier add");
    let go = format!("{k}/go");
    if v == i64::from(n) {
        c.set(go.as_bytes(), b"1").expect("barrier go");
    }
    c.wait_get(go.as_bytes(), Duration::from_secs(30))
        .expect("barrier wait");
}

/// The pattern byte of a copy from rank `from` into window `to`.
pub fn pattern(from: u32, to: u32, part: u8) -> u8 {
    (from as u8)
        .wrapping_mul(31)
        .wrapping_add((to as u8).wrapping_mul(7))
        .wrapping_add(part)
        .wrapping_add(1)
}

/// The last barrier before `bm_uninit`: the rank hosting the store may shut it down as soon
/// as it passed, which only happens after everybody arrived, so a link loss while waiting
/// means the barrier completed.
pub fn barrier_last(c: &StoreClient, name: &str, n: u32) {
    let k = format!("test/barrier/{name}");
    let v = c.add(k.as_bytes(), 1).expect("barrier add");
    let go = format!("{k}/go");
    if v == i64::from(n) {
        c.set(go.as_bytes(), b"1").expect("barrier go");
    }
    match c.wait_get(go.as_bytes(), Duration::from_secs(30)) {
        Ok(_) => {}
        Err(e) if e.code() == smem_core::ErrorCode::IoError => {}
        Err(e) => panic!("last barrier: {e}"),
    }
}

/// Two network namespaces `smem-t-<pid>-<tag>a` / `-<tag>b` joined by a veth pair
/// (10.250.0.1/30 in a, 10.250.0.2/30 in b: addresses that exist only inside them), removed on
/// drop, also when the test fails. The veth pair is created inside `a` with its peer end moved
/// straight into `b`, so it never appears in the test runner's own namespace.
pub struct NetnsPair {
    pub a: String,
    pub b: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetnsPair {
    /// `Err(reason)` when namespaces cannot be made here (no `ip`, not permitted).
    pub fn create(tag: &str) -> Result<Self, String> {
        let pid = std::process::id();
        let (a, b) = (
            format!("smem-t-{pid}-{tag}a"),
            format!("smem-t-{pid}-{tag}b"),
        );
        ip(&["netns", "add", &a])?;
        let mut pair = Self {
            a: a.clone(),
            b: String::new(),
        };
        ip(&["netns", "add", &b])?;
        pair.b = b.clone();
        ip(&[
            "-n", &a, "link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b", "netns",
            &b,
        ])?;
        for (ns, dev, addr) in [
            (&a, "veth-a", "10.250.0.1/30"),
            (&b, "veth-b", "10.250.0.2/30"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            if !ns.is_empty() {
                if let Err(e) = ip(&["netns", "del", ns]) {
                    eprintln!("cleanup: {e}");
                }
            }
        }
    }
}
