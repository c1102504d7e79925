//! Shared helpers of the smem integration tests and benchmarks: locating built binaries,
//! spawning servers and ranks as real processes with deadlines, and killing them (by PID, only
//! what we started) on drop, also when a test fails.

pub mod compat;
pub mod servers;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, ChildStdout};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// The workspace root (the folder holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The cargo profile folder this test binary was built into (`target/debug` or
/// `target/release`), found from the running executable.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary> or target/<profile>/<bin>
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a binary of the workspace built in the same profile as this test.
///
/// `cargo test --workspace` (what `scripts/test.sh` runs) builds every binary of the workspace
/// with the same feature resolution as the tests. Tests never run cargo themselves: a nested
/// `cargo build` resolves features differently and would rewrite the libraries under the
/// running suite. A missing binary fails the test with the command to run; one older than this
/// test executable gets a warning.
pub fn workspace_bin(package: &str, name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(bin_time) = modified(&path) else {
        panic!(
            "{} is missing: run `cargo test --workspace` (or `cargo build -p {package} --bin              {name}` in this profile) first",
            path.display()
        );
    };
    let exe = std::env::current_exe().ok();
    if exe
        .as_deref()
        .and_then(modified)
        .is_some_and(|exe_time| bin_time < exe_time)
    {
        eprintln!(
            "warning: {} is older than this test; run `cargo build -p {package} --bin {name}` if              you changed it",
            path.display()
        );
    }
    path
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

/// A child process killed (SIGKILL, by its PID) and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
}

impl ChildGuard {
    /// Guards `child`, named `name` in messages.
    pub fn new(child: Child, name: impl Into<String>) -> Self {
        Self {
            child: Some(child),
            name: name.into(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The child's stdout pipe, if it was piped and not taken yet.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    /// Waits up to `timeout` for the child to exit; kills it and panics past the deadline.
    pub fn wait_timeout(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        let child = self.child.as_mut().expect("child present");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} (pid {}) did not exit within {timeout:?}; killed",
                    self.name,
                    child.id()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the child now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads `stdout` line by line on a helper thread until a line satisfies `pick` (returning its
/// result) or `timeout` passes (returning `None`). Later lines are drained and discarded.
pub fn wait_for_line<T: Send + 'static>(
    stdout: ChildStdout,
    timeout: Duration,
    pick: impl Fn(&str) -> Option<T> + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(v) = pick(&line) {
                    let _ = tx.send(v);
                    sent = true;
                }
            }
        }
    });
    rx.recv_timeout(timeout).ok()
}

/// Parses `tcp://IP:PORT` or `tcp://[IP]:PORT` out of a line.
pub fn parse_tcp_url(line: &str) -> Option<SocketAddr> {
    let at = line.find("tcp://")?;
    let rest = line[at + 6..].split_whitespace().next()?;
    rest.parse().ok()
}
