//! Test helper: runs one test of this binary again in a child process, with a deadline.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Env var that tells a re-run test it is the child.
pub(crate) const CHILD_ENV: &str = "SMEM_TEST_CHILD";

/// Whether this process is a child started by [`run_child`]; returns its argument.
pub(crate) fn child_arg() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// The bytes a parent passed with [`run_child_with_bytes`], when this process is its child.
///
/// # Panics
/// When the argument is not hex.
pub(crate) fn child_bytes() -> Option<Vec<u8>> {
    let arg = child_arg()?;
    Some(
        (0..arg.len() / 2)
            .map(|i| u8::from_str_radix(&arg[2 * i..2 * i + 2], 16).expect("hex"))
            .collect(),
    )
}

/// [`run_child`] with `bytes` (hex-encoded) as the argument; the child reads them with
/// [`child_bytes`].
pub(crate) fn run_child_with_bytes(name: &str, bytes: &[u8], deadline: Duration) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    run_child(name, &hex, deadline)
}

/// Runs test `name` (full path) of the current test binary as a child with `arg` in
/// [`CHILD_ENV`], waits at most `deadline`, kills it on timeout, and returns its stdout.
///
/// # Panics
/// When the child cannot start, times out, or fails.
pub(crate) fn run_child(name: &str, arg: &str, deadline: Duration) -> String {
    let exe = std::env::current_exe().expect("current test binary");
    let child = Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, arg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn test child");
    wait_with_deadline(child, deadline)
}

/// Waits for `child` until `deadline`, killing it on timeout; panics unless it exits 0.
pub(crate) fn wait_with_deadline(mut child: Child, deadline: Duration) -> String {
    let start = Instant::now();
    loop {
        match child.try_wait().expect("wait for child") {
            Some(_) => break,
            None if start.elapsed() > deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("reap killed child");
                panic!(
                    "child timed out after {deadline:?}\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let out = child.wait_with_output().expect("child output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
