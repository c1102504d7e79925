//! Loopback tests of the TCP engine: copies, refusals, TLS, dead peers, request splitting.

use std::io::Write;
use std::time::Instant;

use std::io::Read;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Weak};
use std::time::Duration;

use smem_core::ErrorCode;
use smem_core::wire::transport::{FLAG_TLS, HELLO_LEN, Hello, Op, REQUEST_LEN, VERSION};

use super::client::pieces;
use super::*;
use crate::mem::{HostSegment, Reservation, SegmentKind, page_size};
use crate::sync::lock;
use crate::sys::copy::RawRange;
use crate::tls::LoadedTls;
use crate::{Error, Result};

/// A served window over a mapped memfd segment.
struct Fake {
    map: Reservation,
    _seg: HostSegment,
    token: u64,
}

impl Fake {
    fn new(len: u64, token: u64) -> Arc<Self> {
        let seg = HostSegment::create("transport-fake", SegmentKind::Host, len).expect("segment");
        let map = Reservation::reserve_anywhere(seg.len(), page_size()).expect("reserve");
        map.map_segment(0, seg.fd(), seg.len()).expect("map");
        Arc::new(Self {
            map,
            _seg: seg,
            token,
        })
    }

    fn bytes(&self, at: u64, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        self.map.read(at, &mut out).expect("read");
        out
    }
}

impl Served for Fake {
    fn pinned(&self, token: u64, offset: u64, span: u64, io: PinnedIo<'_>) -> Result<()> {
        if token != self.token {
            return Err(Error::new(ErrorCode::ObjectNotExists, "other generation"));
        }
        let range = self
            .map
            .mapped_range(offset, span)
            .ok_or_else(|| Error::invalid("outside the window"))?;
        io(Pinned {
            range,
            device: None,
        });
        Ok(())
    }
}

const T: Duration = Duration::from_secs(5);

fn xfer(peer: SocketAddr, op: Op, off: u64, local: &mut [u8], token: u64) -> Transfer<'_> {
    Transfer {
        peer,
        rank: 1,
        object: 7,
        token,
        op,
        remote_offset: off,
        remote_pitch: local.len() as u64,
        local_pitch: local.len() as u64,
        width: local.len() as u64,
        local: RawRange::from_mut(local),
        height: 1,
        local_device: None,
    }
}

/// Pipelined 1D write and read of 5 MiB + 3 (several chunks), a 2D write of 3 rows of 10 bytes
/// (remote pitch 100, local pitch 16: gathered), then a write with a stale generation token
/// (refused, the window untouched). Byte values start at `seed`.
fn copies_then_stale_token(pool: &Pool, peer: SocketAddr, fake: &Fake, seed: u8) {
    let mut data: Vec<u8> = (0..(5 << 20) + 3)
        .map(|i| ((i % 251) as u8).wrapping_add(seed))
        .collect();
    pool.transfer(&xfer(peer, Op::Write, 1000, &mut data, 5), T)
        .expect("write");
    assert!(fake.bytes(1000, data.len()) == data);
    let mut back = vec![0u8; data.len()];
    pool.transfer(&xfer(peer, Op::Read, 1000, &mut back, 5), T)
        .expect("read");
    assert!(back == data);
    let mut rows = [0u8; 42];
    for (i, b) in rows.iter_mut().enumerate() {
        *b = (i as u8).wrapping_add(seed);
    }
    let mut t = xfer(peer, Op::Write, 50, &mut rows, 5);
    (t.width, t.height, t.remote_pitch, t.local_pitch) = (10, 3, 100, 16);
    pool.transfer(&t, T).expect("2d");
    assert_eq!(fake.bytes(50, 10), rows[..10]);
    assert_eq!(fake.bytes(150, 10), rows[16..26]);
    assert_eq!(fake.bytes(250, 10), rows[32..42]);
    let mut one = [9u8; 16];
    let e = pool
        .transfer(&xfer(peer, Op::Write, 0, &mut one, 6), T)
        .expect_err("stale token");
    assert_eq!(e.code(), ErrorCode::ObjectNotExists, "{e}");
    assert_eq!(
        fake.bytes(0, 16),
        [0u8; 16],
        "a refused write touched the window"
    );
}

#[test]
#[cfg_attr(miri, ignore)]
fn write_read_refuse_over_loopback() {
    let server = Server::start("127.0.0.1".parse().expect("ip"), T, None).expect("server");
    let fake = Fake::new(8 << 20, 5);
    let weak: Weak<dyn Served> = Arc::downgrade(&fake) as Weak<dyn Served>;
    server.serve(7, weak);
    let pool = Pool::default();
    let peer = server.addr();
    copies_then_stale_token(&pool, peer, &fake, 1);
    let mut one = [9u8; 16];
    let e = pool
        .transfer(&xfer(peer, Op::Read, (8 << 20) - 8, &mut one, 5), T)
        .expect_err("past the end");
    assert_eq!(e.code(), ErrorCode::InvalidParam, "{e}");
    let mut t = xfer(peer, Op::Write, 0, &mut one, 5);
    t.object = 8;
    let e = pool.transfer(&t, T).expect_err("unknown object");
    assert_eq!(e.code(), ErrorCode::ObjectNotExists, "{e}");
    assert_eq!(
        fake.bytes(0, 16),
        [0u8; 16],
        "refused writes touched the window"
    );
    pool.transfer(&xfer(peer, Op::Write, 0, &mut one, 5), T)
        .expect("after refusals");
    assert_eq!(fake.bytes(0, 16), [9u8; 16]);
    server.shutdown();
    pool.clear();
}

/// A cached connection the server closed meanwhile (idle close, restart) is replaced
/// transparently: the next copy succeeds.
#[test]
#[cfg_attr(miri, ignore)]
fn closed_cached_connection_is_replaced() {
    cached_connection_closed_by_the_server(None, None);
}

/// The same over TLS (the server closes without `close_notify`).
#[test]
#[cfg_attr(miri, ignore)]
fn closed_cached_tls_connection_is_replaced() {
    let pki = pki::Pki::new("transport-cached");
    cached_connection_closed_by_the_server(
        Some(load(&pki.ca_file, &pki.server_cert, &pki.server_key)),
        Some(load(&pki.ca_file, &pki.client_cert, &pki.client_key)),
    );
}

fn cached_connection_closed_by_the_server(
    server_tls: Option<Arc<LoadedTls>>,
    client_tls: Option<Arc<LoadedTls>>,
) {
    let server = Server::start("127.0.0.1".parse().expect("ip"), T, server_tls).expect("server");
    let fake = Fake::new(1 << 20, 5);
    server.serve(7, Arc::downgrade(&fake) as Weak<dyn Served>);
    let pool = Pool::new(client_tls);
    let mut one = [4u8; 64];
    pool.transfer(&xfer(server.addr(), Op::Write, 0, &mut one, 5), T)
        .expect("first");
    for c in lock(&server.shared.conns).values() {
        let _ = c.shutdown(Shutdown::Both);
    }
    std::thread::sleep(Duration::from_millis(50));
    let mut two = [5u8; 64];
    pool.transfer(&xfer(server.addr(), Op::Write, 64, &mut two, 5), T)
        .expect("after the server closed the cached connection");
    assert_eq!(fake.bytes(64, 64), [5u8; 64]);
    server.shutdown();
}

/// Garbage gets the connection closed (the reason is logged); the server keeps serving.
#[test]
#[cfg_attr(miri, ignore)]
fn garbage_closes_the_connection() {
    let server = Server::start("127.0.0.1".parse().expect("ip"), T, None).expect("server");
    let fake = Fake::new(1 << 20, 5);
    server.serve(7, Arc::downgrade(&fake) as Weak<dyn Served>);
    let closed = |s: &mut TcpStream| {
        s.set_read_timeout(Some(T)).expect("timeout");
        let mut b = [0u8; 64];
        let start = Instant::now();
        loop {
            match s.read(&mut b) {
                Ok(0) | Err(_) => return true,
                Ok(_) if start.elapsed() < T => {}
                Ok(_) => return false,
            }
        }
    };
    // Not a hello.
    let mut s = TcpStream::connect(server.addr()).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    assert!(closed(&mut s));
    // A hello, then a header with an unknown op.
    let mut s = TcpStream::connect(server.addr()).expect("connect");
    let hello = Hello {
        version: VERSION,
        flags: 0,
        status: 0,
    };
    s.write_all(&hello.to_bytes()).expect("hello");
    let mut hb = [0u8; HELLO_LEN];
    s.read_exact(&mut hb).expect("hello answer");
    assert_eq!(Hello::parse(&hb).expect("hello").status, 0);
    let mut bad = [0u8; REQUEST_LEN];
    bad[0] = smem_core::wire::transport::REQUEST_MAGIC;
    bad[1] = 77;
    s.write_all(&bad).expect("garbage");
    assert!(closed(&mut s));
    // A hello asking for TLS is refused.
    let mut s = TcpStream::connect(server.addr()).expect("connect");
    let tls = Hello {
        flags: FLAG_TLS,
        ..hello
    };
    s.write_all(&tls.to_bytes()).expect("hello");
    s.read_exact(&mut hb).expect("hello answer");
    assert_eq!(
        Hello::parse(&hb).expect("hello").status,
        ErrorCode::NotSupported.code()
    );
    assert!(closed(&mut s));
    // Still serving.
    let pool = Pool::default();
    let mut one = [3u8; 8];
    pool.transfer(&xfer(server.addr(), Op::Write, 8, &mut one, 5), T)
        .expect("ok");
    server.shutdown();
}

use crate::tls::tests::pki;

fn load(ca: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) -> Arc<LoadedTls> {
    Arc::new(
        crate::tls::TlsOptions::new(ca, cert, key)
            .load()
            .expect("TLS settings"),
    )
}

/// Over mutual TLS: pipelined writes and reads, 2D, refusals inside TLS; a plaintext client,
/// a client with a certificate of another CA or expired, and a server whose certificate
/// names another IP are refused with an error (never a hang); the server keeps serving.
#[test]
#[cfg_attr(miri, ignore)]
fn tls_copies_and_refusals() {
    let pki = pki::Pki::new("transport");
    let server_tls = load(&pki.ca_file, &pki.server_cert, &pki.server_key);
    let client_tls = load(&pki.ca_file, &pki.client_cert, &pki.client_key);
    let server =
        Server::start("127.0.0.1".parse().expect("ip"), T, Some(server_tls)).expect("server");
    let fake = Fake::new(8 << 20, 5);
    server.serve(7, Arc::downgrade(&fake) as Weak<dyn Served>);
    let peer = server.addr();
    let pool = Pool::new(Some(Arc::clone(&client_tls)));
    // The copies and a refusal inside TLS.
    copies_then_stale_token(&pool, peer, &fake, 100);

    let refused = |pool: &Pool, peer: SocketAddr| {
        let mut one = [7u8; 16];
        let start = Instant::now();
        let e = pool
            .transfer(&xfer(peer, Op::Write, 0, &mut one, 5), T)
            .expect_err("refused");
        assert!(start.elapsed() < T, "took {:?}", start.elapsed());
        e
    };
    // A plaintext client.
    let e = refused(&Pool::default(), peer);
    assert_eq!(e.code(), ErrorCode::TlsError, "{e}");
    assert!(e.message().contains("requires TLS"), "{e}");
    // A client whose certificate is from another CA, or expired.
    let other = pki::Ca::new("other CA");
    let intruder = other.issue(&pki::LeafSpec::loopback("intruder", 66));
    let cert = pki.dir.write("intruder.pem", intruder.cert_pem());
    let key = pki.dir.write("intruder.key", intruder.key_pem());
    let e = refused(&Pool::new(Some(load(&pki.ca_file, &cert, &key))), peer);
    assert!(
        matches!(e.code(), ErrorCode::TlsError | ErrorCode::IoError),
        "{e}"
    );
    let mut old = pki::LeafSpec::loopback("old", 67);
    old.expired = true;
    let (cert, key) = pki.leaf_files("old", &old);
    let e = refused(&Pool::new(Some(load(&pki.ca_file, &cert, &key))), peer);
    assert!(
        matches!(e.code(), ErrorCode::TlsError | ErrorCode::IoError),
        "{e}"
    );
    // A TLS hello followed by plaintext: the handshake fails and the connection closes.
    let mut s = TcpStream::connect(peer).expect("connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    let hello = Hello {
        version: VERSION,
        flags: FLAG_TLS,
        status: 0,
    };
    s.write_all(&hello.to_bytes()).expect("hello");
    let mut hb = [0u8; HELLO_LEN];
    s.read_exact(&mut hb).expect("hello answer");
    let answer = Hello::parse(&hb).expect("hello");
    assert_eq!((answer.status, answer.flags), (0, FLAG_TLS));
    s.write_all(&[0u8; REQUEST_LEN]).expect("plaintext");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.len() < 64, "{rest:?}");
    assert_eq!(
        fake.bytes(0, 16),
        [0u8; 16],
        "refused peers touched the window"
    );
    // Still serving the good client (on a fresh connection too).
    pool.clear();
    let mut ok = [3u8; 16];
    pool.transfer(&xfer(peer, Op::Write, 0, &mut ok, 5), T)
        .expect("still serving");
    assert_eq!(fake.bytes(0, 16), [3u8; 16]);

    // A TLS client and a plaintext server.
    let plain = Server::start("127.0.0.1".parse().expect("ip"), T, None).expect("server");
    plain.serve(7, Arc::downgrade(&fake) as Weak<dyn Served>);
    let e = refused(&pool, plain.addr());
    assert_eq!(e.code(), ErrorCode::TlsError, "{e}");
    assert!(e.message().contains("does not use TLS"), "{e}");
    plain.shutdown();
    // A server whose certificate names another IP than the endpoint's.
    let spec = pki::LeafSpec {
        ips: vec!["10.9.9.9".parse().expect("ip")],
        dns: vec![],
        ..pki::LeafSpec::loopback("elsewhere", 68)
    };
    let (cert, key) = pki.leaf_files("elsewhere", &spec);
    let wrong = Server::start(
        "127.0.0.1".parse().expect("ip"),
        T,
        Some(load(&pki.ca_file, &cert, &key)),
    )
    .expect("server");
    wrong.serve(7, Arc::downgrade(&fake) as Weak<dyn Served>);
    let e = refused(&pool, wrong.addr());
    assert_eq!(e.code(), ErrorCode::TlsError, "{e}");
    assert!(e.message().contains("10.9.9.9"), "{e}");
    wrong.shutdown();
    server.shutdown();
    pool.clear();
}

/// A peer that dies mid-WRITE: the copy is an error, never a success.
#[test]
#[cfg_attr(miri, ignore)]
fn peer_dying_mid_copy_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let peer = listener.local_addr().expect("addr");
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut hb = [0u8; HELLO_LEN];
        s.read_exact(&mut hb).expect("hello");
        let ok = Hello {
            version: VERSION,
            flags: 0,
            status: 0,
        };
        s.write_all(&ok.to_bytes()).expect("answer");
        // Take 1 MiB of the copy, then die.
        let mut sink = vec![0u8; 1 << 20];
        s.read_exact(&mut sink).expect("some data");
    });
    let pool = Pool::default();
    let mut data = vec![1u8; 16 << 20];
    let start = Instant::now();
    let e = pool
        .transfer(&xfer(peer, Op::Write, 0, &mut data, 5), T)
        .expect_err("a cut-off copy is not a success");
    assert!(
        matches!(e.code(), ErrorCode::IoError | ErrorCode::Timeout),
        "{e}"
    );
    assert!(start.elapsed() < T, "took {:?}", start.elapsed());
    t.join().expect("fake peer");
}

fn transfer(local: &mut [u8], width: u64, height: u64, rp: u64, lp: u64) -> Transfer<'_> {
    Transfer {
        peer: "127.0.0.1:1".parse().expect("addr"),
        rank: 1,
        object: 0,
        token: 1,
        op: Op::Write,
        remote_offset: 100,
        remote_pitch: rp,
        local: RawRange::from_mut(local),
        local_pitch: lp,
        width,
        height,
        local_device: None,
    }
}

#[test]
fn pieces_cover_every_byte_once() {
    let mut buf = vec![0u8; (4 * CHUNK + 1) as usize];
    let base = buf.as_ptr() as u64;
    let p = pieces(&transfer(&mut buf, 5 * CHUNK / 2, 1, 0, 0)).expect("pieces");
    assert_eq!(
        p.iter().map(|x| (x.remote, x.width)).collect::<Vec<_>>(),
        [
            (100, CHUNK),
            (100 + CHUNK, CHUNK),
            (100 + 2 * CHUNK, CHUNK / 2)
        ]
    );
    let t = transfer(&mut buf, 4096, 1, 4096, 4096);
    let p = pieces(&t).expect("pieces");
    assert_eq!(
        p,
        [Piece {
            remote: 100,
            local: t.local.sub(0, 4096).expect("inside"),
            width: 4096,
            rows: 1
        }]
    );
    // Rows grouped up to CHUNK bytes per request.
    let rows = 3 * CHUNK / 1000;
    let p = pieces(&transfer(&mut buf, 1000, rows, 3000, 1200)).expect("pieces");
    assert_eq!(p.iter().map(|x| x.rows).sum::<u64>(), rows);
    assert!(p.iter().all(|x| x.rows * x.width <= CHUNK));
    assert_eq!(p[1].remote, 100 + p[0].rows * 3000);
    assert_eq!(p[1].local.addr(), base + p[0].rows * 1200);
    // Rows wider than a chunk are split per row.
    let p = pieces(&transfer(&mut buf, CHUNK + 1, 2, 2 * CHUNK, 3 * CHUNK)).expect("pieces");
    assert_eq!(p.len(), 4);
    assert_eq!(p[2].remote, 100 + 2 * CHUNK);
    assert_eq!(p[3].local.addr(), base + 3 * CHUNK + CHUNK);
    assert_eq!(p[3].width, 1);
    // Local rows beyond the local range are refused.
    let e = pieces(&transfer(&mut buf[..100], 10, 11, 10, 10)).expect_err("outside");
    assert_eq!(e.code(), ErrorCode::InvalidParam);
}
