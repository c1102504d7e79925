//! Drives `tests/c/bm_batch.c` (SPEC 6.1: batch, asynchronous and window-to-window copies,
//! registered memory, GVA lookup, copy flags) as real processes: three ranks on one host (an
//! object without the network transport), three
//! ranks on two simulated hosts (`SMEM_HOST_ID`; the other host's windows through the TCP
//! transport, so G2G runs local-to-remote, remote-to-local and remote-to-remote), and a peer
//! killed mid-batch. Each rank has a deadline; on failure every rank is killed and its output
//! shown.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Lang, Link};

const WORLD: u32 = 3;
const DEADLINE: Duration = Duration::from_secs(180);

fn build(dir: &Path) -> PathBuf {
    let exe = dir.join("bm_batch");
    common::build_c(
        &["bm_batch.c"],
        &exe,
        Lang::C,
        Link::Shared,
        &common::lib_dir(),
    );
    exe
}

#[test]
#[cfg_attr(miri, ignore)]
fn batch_async_g2g_three_ranks_one_host() {
    let dir = common::scratch("bm-batch");
    let exe = build(&dir);
    common::ranks::run_ranks(
        &exe,
        &dir,
        WORLD,
        DEADLINE,
        &[
            ("SMEM_DEVICE", "sim"),
            ("SMEM_LOG_LEVEL", "warn"),
            ("SMEM_TEST_SDMA_ONLY", "1"),
        ],
        &|_| Vec::new(),
        &|_| Vec::new(),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rank 0 on host a, ranks 1 and 2 on host b.
#[test]
#[cfg_attr(miri, ignore)]
fn batch_async_g2g_two_simulated_hosts() {
    let dir = common::scratch("bm-batch-hosts");
    let exe = build(&dir);
    common::ranks::run_ranks(
        &exe,
        &dir,
        WORLD,
        DEADLINE,
        &[("SMEM_DEVICE", "sim"), ("SMEM_LOG_LEVEL", "warn")],
        &|r| {
            let host = if r == 0 {
                "batch-host-a"
            } else {
                "batch-host-b"
            };
            vec![("SMEM_HOST_ID".to_owned(), host.to_owned())]
        },
        &|_| Vec::new(),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two ranks on two simulated hosts; rank 1 SIGKILLs itself once rank 0 copies batches into
/// its window. Rank 0's synchronous and asynchronous batches must fail with an error (the
/// program checks the codes), never hang (deadline) or crash.
#[test]
#[cfg_attr(miri, ignore)]
fn peer_killed_mid_batch_fails_the_batch() {
    let dir = common::scratch("bm-batch-kill");
    let exe = build(&dir);
    let port = common::ranks::free_port().to_string();
    let mut ranks: Vec<_> = (0..2u32)
        .map(|r| {
            let mut cmd = Command::new(&exe);
            cmd.arg(r.to_string())
                .arg("2")
                .arg(&port)
                .arg("kill")
                .env("SMEM_DEVICE", "sim")
                .env("SMEM_LOG_LEVEL", "warn")
                .env("SMEM_HOST_ID", format!("kill-host-{r}"));
            common::spawn_captured(&mut cmd, &dir, &format!("rank{r}"))
        })
        .collect();
    let deadline = Instant::now() + DEADLINE;
    let status: Vec<_> = ranks
        .iter_mut()
        .map(|(c, _, _)| common::wait_until(c, deadline))
        .collect();
    let report: String = ranks
        .iter()
        .enumerate()
        .map(|(r, (_, o, e))| {
            format!(
                "--- rank {r} stdout:\n{}--- rank {r} stderr:\n{}",
                std::fs::read_to_string(o).unwrap_or_default(),
                std::fs::read_to_string(e).unwrap_or_default()
            )
        })
        .collect();
    assert!(
        status[0].is_some_and(|s| s.success()),
        "rank 0: {:?}\n{report}",
        status[0]
    );
    assert!(report.contains("rank 0 ok"), "{report}");
    println!("{report}");
    assert_eq!(
        status[1].and_then(|s| s.signal()),
        Some(9),
        "rank 1 should have killed itself\n{report}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
