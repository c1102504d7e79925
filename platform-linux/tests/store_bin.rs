//! The `smem-store` binary: `--help`, argument errors, serving, clean shutdown on SIGTERM and
//! SIGINT.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smem_core::url::StoreUrl;
use smem_linux::store::{ClientOptions, StoreClient};

const BIN: &str = env!("CARGO_BIN_EXE_smem-store");

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        // Only the child this test started.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn help_and_bad_arguments() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--listen"));
    for args in [
        &["--listen", "127.0.0.1:5"][..],
        &[],
        &["--bogus"],
        &["--listen", "tcp://127.0.0.1:1", "--max-links", "x"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
}

fn serve_then_signal(signal: &str) {
    let child = Command::new(BIN)
        .args([
            "--listen",
            "tcp://127.0.0.1:0",
            "--heartbeat-timeout",
            "0",
            "--max-links",
            "100",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Kill(child);
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line:?}"));
    let addr = StoreUrl::parse(url).unwrap().addr;
    let c = StoreClient::connect(addr, ClientOptions::default()).unwrap();
    c.set(b"k", b"v").unwrap();
    assert_eq!(c.get(b"k").unwrap().unwrap(), b"v");
    let st = Command::new("kill")
        .args([signal, &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let st = wait_exit(&mut child.0, Duration::from_secs(3)).expect("exits after the signal");
    assert!(st.success(), "{st:?}");
    let end = Instant::now() + Duration::from_secs(1);
    while c.is_connected() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!c.is_connected());
}

#[test]
fn serves_and_stops_on_sigterm() {
    serve_then_signal("-TERM");
}

#[test]
fn serves_and_stops_on_sigint() {
    serve_then_signal("-INT");
}

#[test]
fn heartbeat_timeout_from_env() {
    use std::io::{Read, Write};
    let child = Command::new(BIN)
        .args(["--listen", "tcp://127.0.0.1:0"])
        .env("MF_CONFIG_STORE_HEARTBEAT_TIMEOUT_S", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Kill(child);
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = StoreUrl::parse(line.trim().trim_start_matches("listening on "))
        .unwrap()
        .addr;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
    let mut hs = [0u8; 16];
    smem_core::wire::Handshake::new(None, Some(0), false)
        .emit(&mut hs)
        .unwrap();
    s.write_all(&hs).unwrap();
    let mut rep = [0u8; 2];
    s.read_exact(&mut rep).unwrap();
    assert_eq!(rep, [0, 0]);
    // One HEARTBEAT (mt 11, no keys/values, seqNo 0), then silence.
    let mut body = [0u8; 42];
    let h = smem_core::wire::MessageHeader {
        user_def: 0,
        request_id: 0,
        msg_type: smem_core::wire::MessageType::Heartbeat,
    };
    smem_core::wire::message::emit(&h, [], [], &mut body).unwrap();
    let mut fh = [0u8; 16];
    smem_core::wire::FrameHeader::new(0, 42, 0)
        .emit(&mut fh)
        .unwrap();
    s.write_all(&fh).unwrap();
    s.write_all(&body).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let outcome = loop {
        match s.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other.map_err(|e| e.kind()),
        }
    };
    let took = start.elapsed();
    let closed = matches!(
        outcome,
        Ok(0) | Err(std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
    );
    assert!(
        closed,
        "link still open or read failed otherwise: {outcome:?} after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3500),
        "closed after {took:?} ({outcome:?}); the server must wait for the 1 s heartbeat timeout"
    );
}

/// Issue 12 item 4: one standalone store serves successive jobs of different world sizes. A
/// job of 2 ranks ends (its links close, the store wipes its keys); a job of 3 ranks then
/// registers against the same store.
#[test]
fn serves_successive_jobs_of_different_world_sizes() {
    let child = Command::new(BIN)
        .args(["--listen", "tcp://127.0.0.1:0", "--heartbeat-timeout", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Kill(child);
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = StoreUrl::parse(line.trim().trim_start_matches("listening on "))
        .unwrap()
        .addr;
    let opts = |world: u32, rank: u32| ClientOptions {
        world_size: Some(world),
        rank: Some(rank),
        connect_timeout: Duration::from_secs(5),
        op_timeout: Duration::from_secs(5),
        reconnect: false,
        ..ClientOptions::default()
    };
    // An unranked observer, there through both jobs, sees the first job's keys go.
    let observer = StoreClient::connect(addr, ClientOptions::default()).unwrap();
    for world in [2u32, 3] {
        let ranks: Vec<StoreClient> = (0..world)
            .map(|r| {
                StoreClient::connect(addr, opts(world, r))
                    .unwrap_or_else(|e| panic!("job of {world} ranks, rank {r}: {e}"))
            })
            .collect();
        for (r, c) in ranks.iter().enumerate() {
            c.set(format!("job{world}/rank{r}").as_bytes(), b"up")
                .unwrap();
        }
        assert_eq!(observer.get(b"job2/rank1").unwrap().is_some(), world == 2);
        drop(ranks);
        // The job ended: its keys are wiped once the store saw every rank's link close.
        let key = format!("job{world}/rank0");
        let end = Instant::now() + Duration::from_secs(10);
        while observer.get(key.as_bytes()).unwrap().is_some() {
            assert!(Instant::now() < end, "the store kept job {world}'s keys");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
