//! Helpers of the multi-process SHM tests and benchmark: each rank is the test binary run
//! again with `SMEM_SHM_TEST_*` env vars; output goes to files (no pipe can fill up); every
//! child is killed when the parent fails, times out or drops the [`Ranks`].
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use smem_linux::runtime::shm::ShmConfig;

#[path = "../common/procs.rs"]
mod procs;

#[allow(unused_imports)] // each test binary uses some
pub use procs::{Role, addr_of, as_rank, client, fork_and_wait, free_url};

/// The env vars of a child rank: `SMEM_SHM_TEST_{ROLE,RANK,URL,WORLD}`.
pub const VARS: procs::Vars = procs::Vars::SHM;

pub fn role() -> Option<Role> {
    procs::role_from(&VARS)
}

/// Short timeouts for tests.
pub fn config(secs: u64) -> ShmConfig {
    ShmConfig {
        init_timeout: Duration::from_secs(secs),
        create_timeout: Duration::from_secs(secs),
        control_timeout: Duration::from_secs(secs),
        ..ShmConfig::default()
    }
}

/// One finished rank.
#[derive(Debug)]
pub struct Finished {
    pub rank: u32,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Children that are killed unless they all finished.
pub struct Ranks {
    children: Vec<(u32, Child, PathBuf, PathBuf)>,
    dir: PathBuf,
}

impl Drop for Ranks {
    fn drop(&mut self) {
        for (_, c, _, _) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `ranks` of test `name` (its full name in this binary) as `role`, with extra env vars
/// `(rank, name, value)` for single ranks (`u32::MAX`: every rank).
pub fn spawn(
    name: &str,
    role: &str,
    url: &str,
    world: u32,
    ranks: &[u32],
    extra: &[(u32, &str, &str)],
) -> Ranks {
    let exe = std::env::current_exe().expect("test binary");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "shm-{role}-{}-{}",
        std::process::id(),
        url.rsplit(':').next().unwrap_or("0")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let mut out = Ranks {
        children: Vec::new(),
        dir: dir.clone(),
    };
    for &r in ranks {
        let mut cmd = Command::new(&exe);
        for (_, k, v) in extra.iter().filter(|e| e.0 == r || e.0 == u32::MAX) {
            cmd.env(k, v);
        }
        let (o, e) = (dir.join(format!("{r}.out")), dir.join(format!("{r}.err")));
        as_rank(&mut cmd, &VARS, name, role, r, url, world);
        let c = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&o).expect("stdout file"))
            .stderr(std::fs::File::create(&e).expect("stderr file"))
            .spawn()
            .expect("spawn rank");
        out.children.push((r, c, o, e));
    }
    out
}

impl Ranks {
    /// Waits for every child until `deadline`, then returns how each ended. Kills every child
    /// still running when the deadline passes and panics with every output.
    pub fn finish(mut self, deadline: Duration) -> Vec<Finished> {
        let start = Instant::now();
        let mut status: Vec<Option<ExitStatus>> = vec![None; self.children.len()];
        loop {
            for (i, (_, c, _, _)) in self.children.iter_mut().enumerate() {
                if status[i].is_none() {
                    status[i] = c.try_wait().expect("try_wait");
                }
            }
            if status.iter().all(Option::is_some) {
                break;
            }
            if start.elapsed() > deadline {
                let report = self.report();
                panic!("ranks did not finish within {deadline:?}: {status:?}\n{report}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.children
            .iter()
            .zip(status)
            .map(|((r, _, o, e), s)| Finished {
                rank: *r,
                status: s.expect("finished"),
                stdout: std::fs::read_to_string(o).unwrap_or_default(),
                stderr: std::fs::read_to_string(e).unwrap_or_default(),
            })
            .collect()
    }

    /// Like [`Ranks::finish`], and every rank must have succeeded and printed `rank <r> ok`;
    /// panics (after killing the rest) as soon as one fails.
    pub fn wait_ok(mut self, deadline: Duration) -> Vec<Finished> {
        let start = Instant::now();
        loop {
            let mut all = true;
            for (r, c, _, _) in &mut self.children {
                match c.try_wait().expect("try_wait") {
                    Some(s) if !s.success() => {
                        let r = *r;
                        let report = self.report();
                        panic!("rank {r} failed ({s})\n{report}");
                    }
                    Some(_) => {}
                    None => all = false,
                }
            }
            if all {
                break;
            }
            if start.elapsed() > deadline {
                let report = self.report();
                panic!("ranks did not finish within {deadline:?}\n{report}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let done = self.finish(Duration::from_secs(5));
        for f in &done {
            assert!(
                f.stdout.contains(&format!("rank {} ok", f.rank)),
                "rank {} did not report ok:\n{}\n{}",
                f.rank,
                f.stdout,
                f.stderr
            );
        }
        done
    }

    fn report(&mut self) -> String {
        let mut s = String::new();
        for (r, c, o, e) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
            s.push_str(&format!(
                "--- rank {r} stdout:\n{}--- rank {r} stderr:\n{}",
                std::fs::read_to_string(o).unwrap_or_default(),
                std::fs::read_to_string(e).unwrap_or_default()
            ));
        }
        s
    }
}
