//! No `SIGPIPE` from the config store in a host that leaves `SIGPIPE` at its default
//! disposition (a C program does; a Rust binary ignores it before `main`).
//!
//! Each test re-runs this test binary as a child that resets `SIGPIPE` to `SIG_DFL` before
//! anything else and hosts a store (TLS or plain). Peers then ask for large replies and reset
//! their connections (`SO_LINGER` 0) without reading, at several points (mid-handshake, right
//! after the requests, a moment later), so the store writes into reset sockets. The child must
//! keep serving a well-behaved client and exit normally, not by a signal.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smem_core::wire::FrameHeader;
use smem_core::wire::handshake::Handshake;
use smem_core::wire::message::{self, MessageHeader};
use smem_core::wire::{MessageType, handshake};
use smem_linux::store::{ClientOptions, ServerConfig, StoreClient, StoreServer};
use smem_linux::tls::{LoadedTls, TlsOptions, TlsStream};

#[path = "support/pki.rs"]
mod pki;

use pki::Pki;

/// Set in the child: `tls` or `plain`.
const ROLE_ENV: &str = "SMEM_SIGPIPE_TEST_ROLE";
/// The child's CA, certificate and key files (TLS only).
const CA_ENV: &str = "SMEM_SIGPIPE_TEST_CA";
const CERT_ENV: &str = "SMEM_SIGPIPE_TEST_CERT";
const KEY_ENV: &str = "SMEM_SIGPIPE_TEST_KEY";

const GET: i16 = 1;
/// Size of the value every abusive peer asks for, several times over.
const BIG: usize = 2 << 20;
const GETS_PER_PEER: u32 = 6;
const PEERS: usize = 24;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The child: hosts the store with `SIGPIPE` at `SIG_DFL` until its stdin closes.
#[test]
fn child_store_host() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return; // not a child: nothing to do
    };
    // SAFETY: setting a signal's disposition to SIG_DFL has no memory-safety preconditions;
    // no other thread of this process (test harness, one test) handles SIGPIPE.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    assert_ne!(previous, libc::SIG_ERR, "signal(SIGPIPE, SIG_DFL)");
    let tls = (role == "tls").then(|| {
        let var = |name| PathBuf::from(std::env::var(name).expect("PKI path"));
        Arc::new(
            TlsOptions::new(var(CA_ENV), var(CERT_ENV), var(KEY_ENV))
                .load()
                .expect("load TLS"),
        )
    });
    let server = StoreServer::start(ServerConfig {
        heartbeat_timeout: None,
        tls,
        ..ServerConfig::default()
    })
    .expect("start store");
    println!("ADDR {}", server.local_addr());
    std::io::stdout().flush().expect("flush");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    server.shutdown();
}

/// A child hosting a store, stopped (and checked) by [`Host::finish`].
struct Host {
    child: Child,
    out: BufReader<ChildStdout>,
    addr: SocketAddr,
}

impl Host {
    fn start(pki: Option<&Pki>) -> Self {
        let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
        cmd.args([
            "--exact",
            "child_store_host",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_ENV, if pki.is_some() { "tls" } else { "plain" })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        if let Some(pki) = pki {
            cmd.env(CA_ENV, &pki.ca_file)
                .env(CERT_ENV, &pki.server_cert)
                .env(KEY_ENV, &pki.server_key);
        }
        let mut child = cmd.spawn().expect("spawn the host child");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let addr = loop {
            line.clear();
            if out.read_line(&mut line).expect("read the child's stdout") == 0 {
                let status = child.wait().expect("wait");
                panic!("the host child exited before serving: {status:?}");
            }
            // The harness may print `test child_store_host ... ` on the same line first.
            if let Some((_, a)) = line.trim().split_once("ADDR ") {
                break a.parse().expect("address");
            }
        };
        Self { child, out, addr }
    }

    /// Closes the child's stdin (it stops its store and exits) and asserts a normal exit.
    fn finish(mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + IO_TIMEOUT;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the host child did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = self.out.read_to_end(&mut Vec::new());
        assert_eq!(
            status.signal(),
            None,
            "host child killed by a signal: {status:?}"
        );
        assert!(status.success(), "host child failed: {status:?}");
    }

    /// Asserts the child is still alive (not killed by a signal meanwhile).
    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!(
                "the host child died: {status:?} (signal {:?})",
                status.signal()
            );
        }
    }
}

fn client_opts(tls: Option<Arc<LoadedTls>>) -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(5),
        op_timeout: Duration::from_secs(5),
        tls,
        ..ClientOptions::default()
    }
}

fn client_tls(pki: &Pki) -> Arc<LoadedTls> {
    Arc::new(
        TlsOptions::new(&pki.ca_file, &pki.client_cert, &pki.client_key)
            .load()
            .expect("load client TLS"),
    )
}

/// Closing the socket sends a reset instead of a FIN (and drops unsent data).
fn set_linger_zero(s: &TcpStream) {
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `lg` is a live `linger` and its exact size is passed; the fd is open.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const lg).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
}

/// `GETS_PER_PEER` pipelined get requests for the big value.
fn get_frames() -> Vec<u8> {
    let keys: [&[u8]; 1] = [b"big"];
    let mut body = vec![0u8; message::encoded_len(keys.iter().copied(), std::iter::empty())];
    let h = MessageHeader {
        user_def: 0,
        request_id: 1,
        msg_type: MessageType::from(GET),
    };
    message::emit(&h, keys.iter().copied(), std::iter::empty(), &mut body).expect("emit");
    let mut out = Vec::new();
    for seq in 1..=GETS_PER_PEER {
        let mut fh = [0u8; 16];
        FrameHeader::new(0, body.len() as u32, seq)
            .emit(&mut fh)
            .expect("frame header");
        out.extend_from_slice(&fh);
        out.extend_from_slice(&body);
    }
    out
}

/// When an abusive peer resets its connection.
#[derive(Clone, Copy, Debug)]
enum ResetAt {
    /// Right after the store hello (and, with TLS, the ClientHello).
    Hello,
    /// Right after sending its requests.
    Requests,
    /// A moment after its requests, when the store is blocked writing the replies.
    Later,
}

fn hello_bytes() -> [u8; 16] {
    let mut hs = [0u8; 16];
    Handshake::new(None, None, false)
        .emit(&mut hs)
        .expect("hello");
    hs
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// An abusive plaintext peer. Errors end it early: a dead host is reported by the caller.
fn abuse_plain(addr: SocketAddr, at: ResetAt) -> std::io::Result<()> {
    let mut s = connect(addr)?;
    s.write_all(&hello_bytes())?;
    if let ResetAt::Hello = at {
        set_linger_zero(&s);
        return Ok(());
    }
    let mut r = [0u8; handshake::HANDSHAKE_REPLY_LEN];
    s.read_exact(&mut r)?;
    s.write_all(&get_frames())?;
    if let ResetAt::Later = at {
        std::thread::sleep(Duration::from_millis(30));
    }
    set_linger_zero(&s);
    Ok(())
}

/// An abusive TLS peer; as [`abuse_plain`].
fn abuse_tls(addr: SocketAddr, tls: &LoadedTls, at: ResetAt) -> std::io::Result<()> {
    let mut s = connect(addr)?;
    s.write_all(&hello_bytes())?;
    if let ResetAt::Hello = at {
        // The ClientHello goes out; the store's first flight meets a reset socket.
        let raw = s.try_clone()?;
        let _ = TlsStream::connect(s, tls, addr.ip(), Instant::now() + Duration::from_millis(1));
        set_linger_zero(&raw);
        return Ok(());
    }
    let mut t = TlsStream::connect(s, tls, addr.ip(), Instant::now() + IO_TIMEOUT)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut r = [0u8; handshake::HANDSHAKE_REPLY_LEN];
    t.read_exact(&mut r)?;
    t.write_all(&get_frames())?;
    t.flush()?;
    if let ResetAt::Later = at {
        std::thread::sleep(Duration::from_millis(30));
    }
    set_linger_zero(t.tcp());
    Ok(())
}

/// Fills the store, lets `PEERS` abusive peers (a few at a time) reset their links under
/// pending replies, and checks the host still serves a good client.
fn run(host: &mut Host, tls: Option<Arc<LoadedTls>>) {
    let good = StoreClient::connect(host.addr, client_opts(tls.clone())).expect("good client");
    good.set(b"big", &vec![7u8; BIG]).expect("set big");
    let addr = host.addr;
    for round in 0..PEERS / 4 {
        let peers: Vec<_> = (0..4)
            .map(|i| {
                let tls = tls.clone();
                let at = [ResetAt::Hello, ResetAt::Requests, ResetAt::Later][(round + i) % 3];
                std::thread::spawn(move || match tls {
                    Some(tls) => abuse_tls(addr, &tls, at),
                    None => abuse_plain(addr, at),
                })
            })
            .collect();
        let errors: Vec<_> = peers
            .into_iter()
            .filter_map(|p| p.join().expect("abusive peer").err())
            .collect();
        host.assert_alive();
        // Only a dead host makes the peers fail.
        assert!(errors.is_empty(), "abusive peers failed: {errors:?}");
    }
    // Let the store notice the last resets and write into them.
    std::thread::sleep(Duration::from_millis(200));
    host.assert_alive();
    good.set(b"after", b"abuse").expect("set after the abuse");
    assert_eq!(
        good.get(b"big").expect("get big").map(|v| v.len()),
        Some(BIG)
    );
    good.close();
    let late = StoreClient::connect(host.addr, client_opts(tls)).expect("a new client");
    assert_eq!(
        late.get(b"after").expect("get").as_deref(),
        Some(&b"abuse"[..])
    );
    late.close();
}

#[test]
fn tls_store_survives_peers_resetting_with_sigpipe_default() {
    let pki = Pki::new("sigpipe-tls");
    let mut host = Host::start(Some(&pki));
    run(&mut host, Some(client_tls(&pki)));
    host.finish();
}

#[test]
fn plain_store_survives_peers_resetting_with_sigpipe_default() {
    let mut host = Host::start(None);
    run(&mut host, None);
    host.finish();
}
