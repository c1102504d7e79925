//! Drives `tests/c/shm_multirank.c`: WORLD ranks as real processes through the whole SHM
//! lifecycle via the C API (init / create / context / loads and stores through the windows /
//! barrier ordering / allgather 64 B and 64 KiB / reach / error cases / destroy / uninit).
//! Each rank has a deadline; when one fails or the deadline passes, all are killed and the test
//! fails with every rank's output.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{Lang, Link};

const WORLD: u32 = 4;
const DEADLINE: Duration = Duration::from_secs(120);

/// A TCP port that was free a moment ago (the store of rank 0 binds it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
