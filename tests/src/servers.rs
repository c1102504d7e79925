//! Config store servers as separate processes: ours (`smem-store`) and the reference
//! (memfabric-hybrid's wheel, through `tests/interop/ref_server.py`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{ChildGuard, free_port, parse_tcp_url, wait_for_line, workspace_bin, workspace_root};

/// How long a server gets to print its ready line.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The Python interpreter that has the reference wheel installed: `$SMEM_REF_PYTHON`, else
/// `target/venv-mf/bin/python` (made by `tests/interop/setup-venv.sh`).
pub fn ref_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SMEM_REF_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let p = workspace_root().join("target/venv-mf/bin/python");
    p.exists().then_some(p)
}

/// Our `smem-store` binary running in its own process on a loopback port.
#[derive(Debug)]
pub struct SmemStoreProcess {
    child: ChildGuard,
    addr: SocketAddr,
}

impl SmemStoreProcess {
    /// Starts `smem-store --listen tcp://127.0.0.1:0 ARGS..` and waits for its ready line.
    pub fn start_with(args: &[&str]) -> Result<Self, String> {
        Self::start_bin(&workspace_bin("smem-linux", "smem-store"), args)
    }

    /// Starts the `smem-store` binary at `bin` (e.g. an older build, as a baseline) the same way.
    pub fn start_bin(bin: &std::path::Path, args: &[&str]) -> Result<Self, String> {
        let child = Command::new(bin)
            .args(["--listen", "tcp://127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let mut child = ChildGuard::new(child, "smem-store");
        let out = child.take_stdout().ok_or("no stdout")?;
        let addr = wait_for_line(out, START_TIMEOUT, |l| {
            l.contains("listening on")
                .then(|| parse_tcp_url(l))
                .flatten()
        })
        .ok_or("smem-store printed no 'listening on tcp://..' line in time")?;
        Ok(Self { child, addr })
    }

    /// Starts it with default settings.
    pub fn start() -> Result<Self, String> {
        Self::start_with(&[])
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Kills it (SIGKILL).
    pub fn kill(&mut self) {
        self.child.kill();
    }
}

/// The reference server running in a Python process.
#[derive(Debug)]
pub struct RefServer {
    child: ChildGuard,
    addr: SocketAddr,
}

impl RefServer {
    /// Starts the reference config store on a free loopback port. Fails (with the reason)
    /// when no Python with the wheel is available.
    pub fn start() -> Result<Self, String> {
        let python = ref_python().ok_or(
            "no Python with memfabric-hybrid: run tests/interop/setup-venv.sh or set \
             SMEM_REF_PYTHON",
        )?;
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let script = workspace_root().join("tests/interop/ref_server.py");
        let child = Command::new(&python)
            .arg(&script)
            .arg(&url)
            .args(["--max-seconds", "900"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", python.display()))?;
        let mut child = ChildGuard::new(child, "reference store");
        let out = child.take_stdout().ok_or("no stdout")?;
        wait_for_line(out, START_TIMEOUT, |l| (l.trim() == "READY").then_some(()))
            .ok_or("reference server did not print READY in time")?;
        let addr = format!("127.0.0.1:{port}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        Ok(Self { child, addr })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
}
