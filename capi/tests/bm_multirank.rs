//! Drives `tests/c/bm_multirank.c`: WORLD ranks as real processes through the BM API
//! (init / create / join / H2G / G2H / L2G / G2L / copy_2d / leave / destroy / uninit, every
//! byte verified, plus the error cases). Each rank has a deadline; when one fails or the
//! deadline passes, all are killed and the test fails with every rank's output.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Lang, Link};

const WORLD: u32 = 4;
const DEADLINE: Duration = Duration::from_secs(180);

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
    run_ranks_with(exe, dir, env, &|_| Vec::new(), &|_| Vec::new());
}

/// As [`run_ranks`], with extra env vars per rank and a command prefix per rank (e.g.
/// `ip netns exec NAME`).
fn run_ranks_with(
    exe: &Path,
    dir: &Path,
    env: &[(&str, &str)],
    per_rank: &dyn Fn(u32) -> Vec<(String, String)>,
    prefix: &dyn Fn(u32) -> Vec<String>,
) {
    common::ranks::run_ranks(exe, dir, WORLD, DEADLINE, env, per_rank, prefix);
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

/// SPEC 2.1: the whole job at debug level with an external logger that calls smem functions
/// taking the runtime's locks on every record (`tests/c/logger_calls_back.h`), from every
/// thread that logs; the repeated identical `smem_bm_init` logs "already initialised" while
/// deciding under the init lock. A record handed to the logger under a lock deadlocks a rank.
#[test]
#[cfg_attr(miri, ignore)]
fn bm_four_ranks_with_a_logger_that_calls_back() {
    let dir = common::scratch("bm-multirank-logger");
    let exe = build(&dir);
    run_ranks(
        &exe,
        &dir,
        &[
            ("SMEM_DEVICE", "sim"),
            ("SMEM_LOG_LEVEL", "debug"),
            ("SMEM_TEST_LOGGER_CALLS_BACK", "1"),
        ],
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
    run_acl(false);
}

/// The `acl` program with every rank on its own "host": HBM windows of other ranks are reached
/// through the TCP transport, whose server moves the bytes into and out of its stub device
/// memory with `aclrtMemcpy2d` (and the client stages local device memory the same way).
#[test]
#[cfg_attr(miri, ignore)]
fn bm_four_ranks_acl_on_separate_hosts_over_tcp() {
    run_acl(true);
}

fn run_acl(separate_hosts: bool) {
    let dir = common::scratch(if separate_hosts {
        "bm-multirank-acl-tcp"
    } else {
        "bm-multirank-acl"
    });
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
    run_ranks_with(
        &exe,
        &dir,
        &[
            ("SMEM_DEVICE", "acl"),
            ("ASCEND_HOME_PATH", dir.to_str().unwrap()),
            ("ACL_STUB_TRACE", trace.to_str().unwrap()),
            ("SMEM_LOG_LEVEL", "info"),
        ],
        &|r| {
            if separate_hosts {
                vec![("SMEM_HOST_ID".to_owned(), format!("acl-host-{r}"))]
            } else {
                Vec::new()
            }
        },
        &|_| Vec::new(),
    );
    let calls = std::fs::read_to_string(&trace).expect("stub trace");
    let same_host_only = [
        "aclrtIpcMemGetExportKey",
        "aclrtIpcMemSetImportPid",
        "aclrtIpcMemImportByKey",
        "aclrtIpcMemClose",
    ];
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
        if separate_hosts && same_host_only.contains(&call) {
            continue;
        }
        assert!(
            calls.lines().any(|l| l.split(' ').next() == Some(call)),
            "{call} was never called through the acl backend"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same C program with every rank on its own "host" (`SMEM_HOST_ID` differs per rank): every
/// window of another rank is reached through the TCP transport on loopback (the program creates
/// its object with `SMEMB_DATA_OP_SDMA | SMEMB_DATA_OP_HOST_TCP`), every byte verified.
#[test]
#[cfg_attr(miri, ignore)]
fn bm_four_ranks_on_separate_hosts_over_tcp() {
    let dir = common::scratch("bm-multirank-tcp");
    let exe = build(&dir);
    run_ranks_with(
        &exe,
        &dir,
        &[("SMEM_DEVICE", "sim"), ("SMEM_LOG_LEVEL", "info")],
        &|r| vec![("SMEM_HOST_ID".to_owned(), format!("c-host-{r}"))],
        &|_| Vec::new(),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two network namespaces `smem-t-<pid>-a` / `-b` joined by a veth pair (10.250.0.1/30 and
/// 10.250.0.2/30, addresses that exist only inside them), removed on drop, also when the test
/// fails.
struct NetnsPair {
    a: String,
    b: String,
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
    fn create() -> Result<Self, String> {
        let pid = std::process::id();
        let (a, b) = (format!("smem-t-{pid}-a"), format!("smem-t-{pid}-b"));
        ip(&["netns", "add", &a])?;
        let mut pair = Self {
            a: a.clone(),
            b: String::new(),
        };
        ip(&["netns", "add", &b])?;
        pair.b = b.clone();
        // The veth pair is created inside `a` with its peer end moved straight into `b`: it
        // never appears in the test runner's own namespace.
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

/// The C program across two "hosts": ranks 0 and 1 in namespace a (rank 0 hosts the store at
/// 10.250.0.1), ranks 2 and 3 in namespace b; each namespace is one host (`SMEM_HOST_ID`, since
/// the namespaces share this machine's PID namespace and could otherwise share memory
/// directly), so ranks of one host use shared memory and copies between the hosts cross the
/// veth link through the TCP transport. Skips with a printed reason where `ip netns` is not
/// permitted.
#[test]
#[cfg_attr(miri, ignore)]
fn bm_four_ranks_across_network_namespaces() {
    let pair = match NetnsPair::create() {
        Ok(p) => p,
        Err(why) => {
            println!(
                "SKIPPED bm_four_ranks_across_network_namespaces: cannot create network namespaces here ({why}); needs root (CAP_NET_ADMIN) and iproute2"
            );
            return;
        }
    };
    let dir = common::scratch("bm-multirank-netns");
    let exe = build(&dir);
    let ns = |r: u32| {
        if r < 2 {
            pair.a.clone()
        } else {
            pair.b.clone()
        }
    };
    run_ranks_with(
        &exe,
        &dir,
        &[
            ("SMEM_DEVICE", "sim"),
            ("SMEM_LOG_LEVEL", "info"),
            ("SMEM_TEST_STORE_HOST", "10.250.0.1"),
        ],
        &|r| vec![("SMEM_HOST_ID".to_owned(), format!("netns-{}", ns(r)))],
        &|r| {
            vec![
                "ip".to_owned(),
                "netns".to_owned(),
                "exec".to_owned(),
                ns(r),
            ]
        },
    );
    drop(pair);
    let _ = std::fs::remove_dir_all(&dir);
}
