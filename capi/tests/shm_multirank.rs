//! Drives `tests/c/shm_multirank.c`: WORLD ranks as real processes through the whole SHM
//! lifecycle via the C API (init / create / context / loads and stores through the windows /
//! barrier ordering / allgather 64 B and 64 KiB / reach / error cases / destroy / uninit).
//! Each rank has a deadline; when one fails or the deadline passes, all are killed and the test
//! fails with every rank's output.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Lang, Link};

const WORLD: u32 = 4;
const DEADLINE: Duration = Duration::from_secs(120);

fn build(dir: &Path) -> PathBuf {
    let exe = dir.join("shm_multirank");
    common::build_c(
        &["shm_multirank.c"],
        &exe,
        Lang::C,
        Link::Shared,
        &common::lib_dir(),
    );
    exe
}

/// Runs WORLD copies of `exe` (rank, world, port arguments, plus `env`), each bounded by
/// [`DEADLINE`]; kills all and panics with every rank's output when one fails.
fn run_ranks(exe: &Path, dir: &Path, env: &[(&str, &str)]) {
    common::ranks::run_ranks(exe, dir, WORLD, DEADLINE, env, &|_| Vec::new(), &|_| {
        Vec::new()
    });
}

#[test]
#[cfg_attr(miri, ignore)]
fn shm_four_ranks_as_processes() {
    let dir = common::scratch("shm-multirank");
    let exe = build(&dir);
    let out = common::run(
        Command::new(&exe).args(["5", "4", "1"]),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    run_ranks(&exe, &dir, &[("SMEM_LOG_LEVEL", "info")]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// SPEC 2.1: the whole SHM job at debug level with an external logger that calls smem functions
/// taking the runtime's locks on every record (`tests/c/logger_calls_back.h`); the repeated
/// identical `smem_shm_init` logs while deciding under the init lock.
#[test]
#[cfg_attr(miri, ignore)]
fn shm_four_ranks_with_a_logger_that_calls_back() {
    let dir = common::scratch("shm-multirank-logger");
    let exe = build(&dir);
    run_ranks(
        &exe,
        &dir,
        &[
            ("SMEM_LOG_LEVEL", "debug"),
            ("SMEM_TEST_LOGGER_CALLS_BACK", "1"),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
}
