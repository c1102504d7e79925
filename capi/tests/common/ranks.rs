//! Running a C multirank program as WORLD real processes (the BM and SHM drivers): each rank
//! has a deadline; when one fails or the deadline passes, all are killed and the test fails
//! with every rank's output.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A TCP port that was free a moment ago (the store of rank 0 binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `world` copies of `exe` (rank, world, port arguments, plus `env` and `per_rank(rank)`),
/// each through the command prefix `prefix(rank)` (e.g. `ip netns exec NAME`) and bounded by
/// `limit`; kills all and panics with every rank's output when one fails, and checks that each
/// printed `rank <r> ok` otherwise.
pub fn run_ranks(
    exe: &Path,
    dir: &Path,
    world: u32,
    limit: Duration,
    env: &[(&str, &str)],
    per_rank: &dyn Fn(u32) -> Vec<(String, String)>,
    prefix: &dyn Fn(u32) -> Vec<String>,
) {
    let port = free_port().to_string();
    let mut ranks: Vec<(Child, PathBuf, PathBuf)> = (0..world)
        .map(|r| {
            let pre = prefix(r);
            let mut cmd = match pre.split_first() {
                Some((first, rest)) => {
                    let mut c = Command::new(first);
                    c.args(rest).arg(exe);
                    c
                }
                None => Command::new(exe),
            };
            cmd.arg(r.to_string()).arg(world.to_string()).arg(&port);
            for (k, v) in env {
                cmd.env(k, v);
            }
            for (k, v) in per_rank(r) {
                cmd.env(k, v);
            }
            super::spawn_captured(&mut cmd, dir, &format!("rank{r}"))
        })
        .collect();
    let deadline = Instant::now() + limit;
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
            break Some(format!("deadline of {limit:?} passed; finished: {done:?}"));
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
