//! Drives `tests/c/bm_multirank.c`: WORLD ranks as real processes through the BM API
//! (init / create / join / H2G / G2H / L2G / G2L / copy_2d / leave / destroy / uninit, every
//! byte verified, plus the error cases). Each rank has a deadline; when one fails or the
//! deadline passes, all are killed and the test fails with every rank's output.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{Lang, Link};

const WORLD: u32 = 4;
const DEADLINE: Duration = Duration::from_secs(180);

/// A TCP port that was free a moment ago (the store of rank 0 binds it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn build(dir: &Path) -> PathBuf {
    let exe = dir.join("bm_multirank");
    common::build_c(
        &["bm_multirank.c"],
        &exe,
        Lang::C,
        Link::Shared,
        &common::lib_dir(),
    );
    exe
}

/// The program stays compilable (C99, -Werror -pedantic) while its run waits for the runtime.
#[test]
#[cfg_attr(miri, ignore)]
fn bm_multirank_program_builds_and_checks_its_arguments() {
    let dir = common::scratch("bm-multirank-build");
    let exe = build(&dir);
    let out = common::run(
        Command::new(&exe).args(["5", "4", "1"]),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs WORLD copies of `exe` (rank, world, port arguments, plus `env`), each bounded by
/// [`DEADLINE`]; kills all and panics with every rank's output when one fails.
fn run_ranks(exe: &Path, dir: &Path, env: &[(&str, &str)]) {
    let port = free_port().to_string();
    let mut ranks: Vec<(Child, PathBuf, PathBuf)> = (0..WORLD)
        .map(|r| {
            let mut cmd = Command::new(exe);
            cmd.arg(r.to_string()).arg(WORLD.to_string()).arg(&port);
            for (k, v) in env {
                cmd.env(k, v);
            }
            common::spawn_captured(&mut cmd, dir, &format!("rank{r}"))
        })
        .collect();
    let deadline = Instant::now() + DEADLINE;
    let mut done = vec![None; ranks.len()];
    let failure = loop {
        for (i, (child, _, _)) in ranks.iter_mut().enumerate() {
            if done[i].is_none() {
                done[i] = child.try_wait().expect("try_wait");
            }
        }
        if let Some(i) = done.iter().position(|s| s.is_some_and(|s| !s.success())) {
            break Some(format!("rank {i} failed: {:?}", done[i]));
        }
        if done.iter().all(Option::is_some) {
            break None;
        }
        if Instant::now() > deadline {
            break Some(format!(
                "deadline of {DEADLINE:?} passed; finished: {done:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut report = String::new();
    for (r, (child, out, err)) in ranks.iter_mut().enumerate() {
        let _ = child.kill();
        let _ = child.wait();
        let out = std::fs::read_to_string(out).unwrap_or_default();
        let err = std::fs::read_to_string(err).unwrap_or_default();
        if failure.is_none() {
            assert!(
                out.contains(&format!("rank {r} ok")),
                "rank {r}: {out}\n{err}"
            );
        }
        report.push_str(&format!(
            "--- rank {r} stdout:\n{out}--- rank {r} stderr:\n{err}"
        ));
    }
    if let Some(why) = failure {
        panic!("{why}\n{report}");
    }
}

/// The test program's own protocol (flags, retries, teardown handshake), run against
/// `tests/c/mock_bm.c`, a shared-file stand-in for the BM runtime: keeps the program honest
/// until the real runtime can run it.
#[test]
#[cfg_attr(miri, ignore)]
fn bm_multirank_protocol_against_a_mock_runtime() {
    let dir = common::scratch("bm-multirank-mock");
    let mock = dir.join("libsmem_mock.so");
    common::run_ok(
        Command::new("cc")
            .args([
                "-std=gnu99",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-shared",
                "-fPIC",
                "-I",
            ])
            .arg(common::include_dir())
            .arg(common::c_dir().join("mock_bm.c"))
            .arg("-o")
            .arg(&mock),
        Duration::from_secs(60),
    );
    let exe = dir.join("bm_multirank_mock");
    let mut cc = Command::new("cc");
    cc.args(common::C_FLAGS)
        .arg("-I")
        .arg(common::include_dir())
        .arg(common::c_dir().join("bm_multirank.c"))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", dir.display()))
        .arg(format!("-Wl,-rpath,{}", dir.display()))
        .arg("-lsmem_mock");
    common::run_ok(&mut cc, Duration::from_secs(60));
    let file = dir.join("mock-shared-file");
    run_ranks(&exe, &dir, &[("SMEM_MOCK_FILE", file.to_str().unwrap())]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[cfg_attr(miri, ignore)]
fn bm_four_ranks_as_processes() {
    let dir = common::scratch("bm-multirank");
    let exe = build(&dir);
    run_ranks(
        &exe,
        &dir,
        &[("SMEM_DEVICE", "sim"), ("SMEM_LOG_LEVEL", "info")],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same program through the `acl` device backend, over the stub `libascendcl.so`
/// (`platform-linux/tests/acl_stub/acl_stub.c`): HBM parts are stub device memory shared by IPC
/// keys, L2G/G2L/H2G/G2H and 2D copies on them go through `aclrtMemcpy` / `aclrtMemcpy2d`. The
/// stub's call trace proves the ACL path was taken.
#[test]
#[cfg_attr(miri, ignore)]
fn bm_four_ranks_as_processes_acl() {
    let dir = common::scratch("bm-multirank-acl");
    let exe = build(&dir);
    let lib64 = dir.join("lib64");
    std::fs::create_dir_all(&lib64).expect("mkdir lib64");
    let stub = common::capi_dir().join("../platform-linux/tests/acl_stub/acl_stub.c");
    common::run_ok(
        Command::new("cc")
            .args([
                "-std=gnu99",
                "-O1",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-shared",
                "-fPIC",
            ])
            .arg(&stub)
            .arg("-o")
            .arg(lib64.join("libascendcl.so")),
        Duration::from_secs(60),
    );
    let trace = dir.join("acl-trace");
    run_ranks(
        &exe,
        &dir,
        &[
            ("SMEM_DEVICE", "acl"),
            ("ASCEND_HOME_PATH", dir.to_str().unwrap()),
            ("ACL_STUB_TRACE", trace.to_str().unwrap()),
            ("SMEM_LOG_LEVEL", "info"),
        ],
    );
    let calls = std::fs::read_to_string(&trace).expect("stub trace");
    for call in [
        "aclrtMalloc",
        "aclrtIpcMemGetExportKey",
        "aclrtIpcMemSetImportPid",
        "aclrtIpcMemImportByKey",
        "aclrtMemcpy",
        "aclrtMemcpy2d",
        "aclrtIpcMemClose",
        "aclrtFree",
    ] {
        assert!(
            calls.lines().any(|l| l.split(' ').next() == Some(call)),
            "{call} was never called through the acl backend"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
