//! The demo binary (`smem-demo`) end to end, and what a killed rank leaves behind.
//!
//! Each run is bounded by a deadline; on failure the launcher (and through it every rank) is
//! killed by its pid.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEMO: &str = env!("CARGO_BIN_EXE_smem-demo");

/// Kills (SIGKILL) and reaps the launcher when dropped.
struct Launcher(Child);

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "smem-demo did not finish within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run_demo(args: &[&str], limit: Duration) -> (std::process::ExitStatus, String, String) {
    let mut l = Launcher(
        Command::new(DEMO)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start smem-demo"),
    );
    let (out, err) = (l.0.stdout.take(), l.0.stderr.take());
    let read = |p: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = p {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let out = read(out.map(|o| Box::new(o) as _));
    let err = read(err.map(|e| Box::new(e) as _));
    let status = wait(&mut l.0, limit);
    (
        status,
        out.join().expect("stdout reader"),
        err.join().expect("stderr reader"),
    )
}

/// 2 ranks, small sizes: every phase runs, every byte is verified, exit code 0.
#[test]
#[cfg_attr(miri, ignore)]
fn demo_two_ranks() {
    let (status, out, err) = run_demo(
        &[
            "--ranks",
            "2",
            "--dram-mib",
            "2",
            "--hbm-mib",
            "2",
            "--iters",
            "2",
            "--timeout-s",
            "60",
        ],
        Duration::from_secs(90),
    );
    assert!(status.success(), "{status}\nstdout:\n{out}\nstderr:\n{err}");
    for phase in ["H2G", "G2H", "L2G", "G2L", "copy_2d"] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(phase)),
            "no {phase} line:\n{out}"
        );
    }
    assert!(
        out.contains("demo OK: 2 ranks, 2 pairs,"),
        "no summary:\n{out}\n{err}"
    );
}

/// Bad flags: usage and exit code 2, no rank started.
#[test]
#[cfg_attr(miri, ignore)]
fn demo_rejects_bad_flags() {
    for args in [
        &["--ranks", "1"][..],
        &["--ranks", "x"],
        &["--bogus", "1"],
        &["--ranks", "4", "--dram-mib", "0"],
        &["--ranks", "64", "--dram-mib", "1", "--hbm-mib", "1"],
    ] {
        let (status, _, err) = run_demo(args, Duration::from_secs(20));
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("usage"), "{args:?}: {err}");
    }
}

/// Process ids whose parent is `ppid` (from `/proc/*/stat`).
fn children_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so parse after the last ')'.
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        if after.split_whitespace().nth(1) == Some(ppid.to_string().as_str()) {
            out.push(pid);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s[s.rfind(')').map_or(0, |i| i + 1)..]
            .trim_start()
            .starts_with('Z')
    })
}

fn dev_shm() -> BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// SPEC 4 / issue 3: a rank killed with SIGKILL in the middle of a job (rank 0, which hosts the
/// store, and another one) takes the job down promptly, leaves no process and no `/dev/shm`
/// entry behind, and a fresh job on the same store port starts cleanly right afterwards.
#[test]
#[cfg_attr(miri, ignore)]
fn killed_rank_leaves_nothing_behind() {
    for victim in [1u32, 0] {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
            .to_string();
        let shm_before = dev_shm();
        let mut l = Launcher(
            Command::new(DEMO)
                .args([
                    "--ranks",
                    "3",
                    "--dram-mib",
                    "24",
                    "--hbm-mib",
                    "6",
                    "--iters",
                    "100000",
                    "--timeout-s",
                    "60",
                    "--port",
                    &port,
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start smem-demo"),
        );
        // Mid-job: the pool exists and the first (very long) phase runs.
        let (tx, rx) = mpsc::channel();
        let stdout = l.0.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.trim_start().starts_with("pool") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the demo built its pool");
        std::thread::sleep(Duration::from_millis(300));
        let ranks = children_of(l.0.id());
        assert_eq!(ranks.len(), 3, "ranks of the launcher: {ranks:?}");
        // Rank r is the r-th child started; find the victim by its command line.
        let pid = *ranks
            .iter()
            .find(|p| {
                std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                    let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                    args.windows(2)
                        .any(|w| w[0] == b"--rank" && w[1] == victim.to_string().as_bytes())
                })
            })
            .expect("the victim rank");
        // SAFETY: plain syscall; `pid` is a child of our launcher, alive a moment ago.
        let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        assert_eq!(rc, 0);
        let t = Instant::now();
        let status = wait(&mut l.0, Duration::from_secs(30));
        assert!(!status.success(), "the job must fail when a rank is killed");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "job ended {:?} after the kill",
            t.elapsed()
        );
        for p in &ranks {
            assert!(!alive(*p), "rank pid {p} still runs after the job ended");
        }
        let new: Vec<String> = dev_shm()
            .difference(&shm_before)
            .filter(|n| n.contains("smem"))
            .cloned()
            .collect();
        assert!(new.is_empty(), "/dev/shm entries left behind: {new:?}");
        // A fresh job on the same store port.
        let (status, out, err) = run_demo(
            &[
                "--ranks",
                "2",
                "--dram-mib",
                "2",
                "--hbm-mib",
                "2",
                "--iters",
                "1",
                "--timeout-s",
                "60",
                "--port",
                &port,
            ],
            Duration::from_secs(90),
        );
        assert!(
            status.success() && out.contains("demo OK"),
            "fresh job after killing rank {victim}: {status}\n{out}\n{err}"
        );
    }
}
