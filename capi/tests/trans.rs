//! Drives `tests/c/trans.c` (SPEC 6.2, the transfer engine) as real processes: a server engine
//! and a client engine exercising every call and refusal on one host (mapped pool memory,
//! `process_vm_writev` for user memory, and the loopback transport with `SMEM_TRANS_NO_VM=1`)
//! and across two simulated hosts (`SMEM_HOST_ID`); a peer killed mid-batch on each path.
//! Every process has a deadline; on failure all are killed and their output shown.

mod common;

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Lang, Link};
use smem::smem_trans_config_t;

const DEADLINE: Duration = Duration::from_secs(120);

/// The program, built once per test binary (C99, shared library).
#[allow(clippy::disallowed_methods)] // Test-only cell; no smem lock or logger involved.
fn exe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let dir = common::scratch("trans-build");
        let exe = dir.join("trans");
        common::build_c(
            &["trans.c"],
            &exe,
            Lang::C,
            Link::Shared,
            &common::lib_dir(),
        );
        exe
    })
}

struct Proc {
    tag: String,
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, tag: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(exe());
        cmd.args(args).env("SMEM_DEVICE", "sim");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (child, out, err) = common::spawn_captured(&mut cmd, dir, tag);
        Self {
            tag: tag.to_owned(),
            child,
            out,
            err,
        }
    }

    fn output(&self) -> String {
        format!(
            "--- {} stdout:\n{}\n--- {} stderr:\n{}",
            self.tag,
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            self.tag,
            std::fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for every process (until the deadline); panics with all outputs unless each exited 0.
fn wait_all(procs: &mut [Proc]) {
    let deadline = Instant::now() + DEADLINE;
    let mut failed = None;
    for p in procs.iter_mut() {
        match common::wait_until(&mut p.child, deadline) {
            Some(s) if s.success() => {}
            other => {
                failed = Some(format!("{} ended with {other:?}", p.tag));
                break;
            }
        }
    }
    if let Some(why) = failed {
        let all: Vec<String> = procs.iter().map(Proc::output).collect();
        panic!("{why}\n{}", all.join("\n"));
    }
}

fn url() -> String {
    format!("tcp://127.0.0.1:{}", common::ranks::free_port())
}

/// A server engine (hosting the store) and a client engine running every call and refusal.
fn server_and_client(name: &str, server_env: &[(&str, &str)], client_env: &[(&str, &str)]) {
    let dir = common::scratch(name);
    let d = dir.to_str().expect("utf-8 dir");
    let url = url();
    let server = Proc::spawn(
        &dir,
        "server",
        &["server", &url, "srv:1", d, "1"],
        server_env,
    );
    let client = Proc::spawn(
        &dir,
        "client",
        &["client", &url, "cli:2", "srv:1", d],
        client_env,
    );
    let mut procs = [client, server];
    wait_all(&mut procs);
    assert!(
        procs[0].stdout().contains("client ok"),
        "{}",
        procs[0].output()
    );
    assert!(
        procs[1].stdout().contains("server ok"),
        "{}",
        procs[1].output()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[cfg_attr(miri, ignore)]
fn header_layout_matches_in_c_and_cxx() {
    let mut want = BTreeMap::new();
    macro_rules! off {
        ($($f:ident),*) => {
            want.insert("smem_trans_config_t.size".to_owned(), size_of::<smem_trans_config_t>());
            $( want.insert(format!("smem_trans_config_t.{}", stringify!($f)), offset_of!(smem_trans_config_t, $f)); )*
        };
    }
    off!(
        role,
        initTimeout,
        deviceId,
        flags,
        dataOpType,
        startConfigServer
    );
    want.insert("smem_trans_role_t.size".to_owned(), 4);
    let dir = common::scratch("trans-layout");
    let libs = common::lib_dir();
    for (lang, link) in [(Lang::C, Link::Static), (Lang::Cxx, Link::Shared)] {
        let exe = dir.join(format!("trans-{lang:?}"));
        common::build_c(&["trans.c"], &exe, lang, link, &libs);
        let out = common::run_ok(Command::new(&exe).arg("layout"), Duration::from_secs(30));
        let got: BTreeMap<String, usize> = out
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("layout "))
            .map(|l| {
                let (k, v) = l.split_once(' ').expect("layout line");
                (k.to_owned(), v.parse().expect("number"))
            })
            .collect();
        assert_eq!(got, want, "{lang:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One host: pool memory is mapped, user memory goes through `process_vm_writev`/`readv`.
#[test]
#[cfg_attr(miri, ignore)]
fn one_host_every_call_and_refusal() {
    server_and_client("trans-one-host", &[], &[]);
}

/// One host with `process_vm_*` off: user memory goes through the transport on loopback.
#[test]
#[cfg_attr(miri, ignore)]
fn one_host_without_process_vm() {
    server_and_client("trans-no-vm", &[], &[("SMEM_TRANS_NO_VM", "1")]);
}

/// Two simulated hosts: everything goes through the transport.
#[test]
#[cfg_attr(miri, ignore)]
fn two_hosts_every_call_and_refusal() {
    server_and_client(
        "trans-two-hosts",
        &[("SMEM_HOST_ID", "trans-host-a")],
        &[("SMEM_HOST_ID", "trans-host-b")],
    );
}

/// A victim engine is killed while a killer engine batch-writes into it in a loop: the
/// killer's next call fails with `SM_IO_ERROR` naming the victim, promptly. Then an engine
/// restarted under the victim's id replaces its record and is found and written by the killer.
fn killed_mid_batch(
    name: &str,
    target: &str,
    victim_env: &[(&str, &str)],
    killer_env: &[(&str, &str)],
) {
    let dir = common::scratch(name);
    let d = dir.to_str().expect("utf-8 dir");
    let dir2 = dir.join("restarted");
    std::fs::create_dir_all(&dir2).expect("dir2");
    let d2 = dir2.to_str().expect("utf-8 dir");
    let url = url();
    let killer = Proc::spawn(
        &dir,
        "killer",
        &["killer", &url, "killer", "victim", d, target, d2],
        killer_env,
    );
    let mut victim = Proc::spawn(&dir, "victim", &["victim", &url, "victim", d], victim_env);
    let mut procs = vec![killer];
    let deadline = Instant::now() + DEADLINE;
    while !procs[0].stdout().contains("looping") {
        if Instant::now() >= deadline || procs[0].child.try_wait().ok().flatten().is_some() {
            panic!(
                "the killer never looped\n{}\n{}",
                procs[0].output(),
                victim.output()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = victim.child.kill();
    let killed = Instant::now();
    let _ = victim.child.wait();
    while !procs[0].stdout().contains("failed rc=") {
        if killed.elapsed() >= Duration::from_secs(30) {
            panic!(
                "the killer did not fail\n{}\n{}",
                procs[0].output(),
                victim.output()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = killed.elapsed();
    let again = Proc::spawn(
        &dir2,
        "restarted",
        &["server", &url, "victim", d2, "0"],
        victim_env,
    );
    procs.push(again);
    let status = common::wait_until(&mut procs[0].child, Instant::now() + DEADLINE);
    assert!(
        status.is_some_and(|s| s.success()),
        "killer: {status:?}\n{}\n{}",
        procs[0].output(),
        victim.output()
    );
    let restarted = common::wait_until(&mut procs[1].child, Instant::now() + DEADLINE);
    assert!(
        restarted.is_some_and(|s| s.success()) && procs[1].stdout().contains("server ok"),
        "restarted victim: {restarted:?}\n{}",
        procs[1].output()
    );
    let line = procs[0].stdout();
    assert!(line.contains("restarted peer written"), "{line}");
    let ms: f64 = line
        .split("ms=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no failing call reported: {line}"));
    assert!(ms < 1000.0, "the failing call took {ms} ms: {line}");
    // The whole reaction (the kill, the call in flight, the report) on a loaded machine.
    assert!(
        took < Duration::from_secs(10),
        "killer reacted after {took:?}: {line}"
    );
    procs.push(victim);
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[cfg_attr(miri, ignore)]
fn peer_killed_mid_batch_mapped_pool_memory() {
    killed_mid_batch("trans-kill-pool", "pool", &[], &[]);
}

#[test]
#[cfg_attr(miri, ignore)]
fn peer_killed_mid_batch_process_vm() {
    killed_mid_batch("trans-kill-vm", "user", &[], &[]);
}

#[test]
#[cfg_attr(miri, ignore)]
fn peer_killed_mid_batch_other_host() {
    killed_mid_batch(
        "trans-kill-net",
        "user",
        &[("SMEM_HOST_ID", "trans-host-a")],
        &[("SMEM_HOST_ID", "trans-host-b")],
    );
}
