//! The client side: [`Pool`] keeps connections per peer and runs a [`Transfer`] as pipelined
//! requests of at most [`CHUNK`] bytes, on one connection or several side by side.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::debug;
use smem_core::ErrorCode;
use smem_core::wire::transport::{
    FLAG_TLS, HELLO_LEN, Hello, Op, REPLY_LEN, Reply, Request, VERSION,
};

use super::link::{Link, Rows, TlsWire, recv_rows, send_rows, set_timeouts};
use super::{CHUNK, MAX_IDLE_PER_PEER, READ_WINDOW, WRITE_WINDOW};
use crate::device::{Device, RawRange};
use crate::sync::lock;
use crate::sys;
use crate::sys::fork::Detached;
use crate::tls::LoadedTls;
use crate::{Error, Result};

/// [`Transfer::rank`] of a peer that is not a rank (a transfer engine): messages say "the
/// peer" and the caller adds the peer's name.
pub(crate) const NO_RANK: u32 = u32::MAX;

/// How messages name the peer of rank `rank`.
fn peer_label(rank: u32) -> String {
    if rank == NO_RANK {
        "the peer".to_owned()
    } else {
        format!("rank {rank}")
    }
}

/// One copy between this process and a peer's window.
pub(crate) struct Transfer<'a> {
    /// The peer's data endpoint.
    pub(crate) peer: SocketAddr,
    /// The peer's rank (for messages).
    pub(crate) rank: u32,
    /// BM object id.
    pub(crate) object: u32,
    /// Generation of the peer's window.
    pub(crate) token: u64,
    /// `Write`: local memory into the window; `Read`: the window into local memory.
    pub(crate) op: Op,
    /// Offset of the first row from the window start.
    pub(crate) remote_offset: u64,
    /// Distance between remote rows.
    pub(crate) remote_pitch: u64,
    /// The local memory, from the first local row (holds every local row).
    pub(crate) local: RawRange<'a>,
    /// Distance between local rows.
    pub(crate) local_pitch: u64,
    /// Bytes per row.
    pub(crate) width: u64,
    /// Rows (1 for a 1D copy).
    pub(crate) height: u64,
    /// Set when the local memory is device memory.
    pub(crate) local_device: Option<&'a dyn Device>,
}

/// One request of a transfer: `rows` rows of `width` bytes from the window at `remote`, the
/// local rows from the start of `local`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece<'a> {
    pub(crate) remote: u64,
    pub(crate) local: RawRange<'a>,
    pub(crate) width: u64,
    pub(crate) rows: u64,
}

/// Splits a transfer into requests of at most [`CHUNK`] bytes.
///
/// # Errors
/// `SM_INVALID_PARAM` when the local rows leave `t.local`.
pub(super) fn pieces<'a>(t: &Transfer<'a>) -> Result<Vec<Piece<'a>>> {
    let local = |offset: u64, rows: u64, width: u64| {
        (rows - 1)
            .checked_mul(t.local_pitch)
            .and_then(|v| v.checked_add(width))
            .and_then(|span| t.local.sub(offset, span))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "transport: {rows} local rows of {width} bytes at offset {offset:#x} leave the copy's {}-byte local range",
                    t.local.len()
                ))
            })
    };
    let mut out = Vec::new();
    if t.width <= CHUNK {
        let per = (CHUNK / t.width).max(1);
        let mut r = 0;
        while r < t.height {
            let n = per.min(t.height - r);
            out.push(Piece {
                remote: t.remote_offset + r * t.remote_pitch,
                local: local(r * t.local_pitch, n, t.width)?,
                width: t.width,
                rows: n,
            });
            r += n;
        }
    } else {
        for r in 0..t.height {
            let mut k = 0;
            while k < t.width {
                let w = CHUNK.min(t.width - k);
                out.push(Piece {
                    remote: t.remote_offset + r * t.remote_pitch + k,
                    local: local(r * t.local_pitch + k, 1, w)?,
                    width: w,
                    rows: 1,
                });
                k += w;
            }
        }
    }
    Ok(out)
}

/// A client connection.
#[derive(Debug)]
struct Conn {
    /// The socket, kept out of forked children.
    stream: Detached<TcpStream>,
    /// The TLS stream (over a clone of `stream`) when the transport runs TLS.
    tls: Option<TlsWire>,
    next_seq: u32,
}

impl Conn {
    fn link(&mut self) -> Link<'_> {
        match &mut self.tls {
            Some(w) => Link::Tls(w),
            None => Link::Plain(&self.stream),
        }
    }
}

/// Cached connections per peer.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Conn>>>,
    /// Set when connections must run mutual TLS.
    tls: Option<Arc<LoadedTls>>,
}

/// Why a transfer attempt failed: worth one retry on a fresh connection or not.
enum Failure {
    /// The connection broke (a cached one may have been closed by the peer meanwhile).
    Link(Error),
    /// The peer answered with an error, or the failure is final.
    Final(Error),
}

impl Pool {
    /// An empty pool; with `tls`, every connection runs mutual TLS.
    pub(crate) fn new(tls: Option<Arc<LoadedTls>>) -> Self {
        Self {
            idle: Mutex::default(),
            tls,
        }
    }

    fn take(&self, peer: SocketAddr) -> Option<Conn> {
        lock(&self.idle).get_mut(&peer).and_then(Vec::pop)
    }

    fn put(&self, peer: SocketAddr, c: Conn) {
        let mut idle = lock(&self.idle);
        let v = idle.entry(peer).or_default();
        if v.len() < MAX_IDLE_PER_PEER {
            v.push(c);
        }
    }

    /// Closes every cached connection.
    pub(crate) fn clear(&self) {
        for (_, v) in lock(&self.idle).drain() {
            for c in v {
                let _ = c.stream.shutdown(Shutdown::Both);
            }
        }
    }

    fn connect(&self, peer: SocketAddr, rank: u32, timeout: Duration) -> Result<Conn> {
        let what = || format!("connecting to {}'s data endpoint {peer}", peer_label(rank));
        let stream = TcpStream::connect_timeout(&peer, timeout.max(Duration::from_millis(1)))
            .map_err(|e| Error::io(what(), &e))?;
        set_timeouts(&stream, timeout).map_err(|e| Error::io(what(), &e))?;
        let ours = if self.tls.is_some() { FLAG_TLS } else { 0 };
        let hello = Hello {
            version: VERSION,
            flags: ours,
            status: 0,
        };
        sys::net::send_slice(stream.as_fd(), &hello.to_bytes(), false)
            .map_err(|e| Error::io(what(), &e))?;
        let mut hb = [0u8; HELLO_LEN];
        sys::net::recv_slice(stream.as_fd(), &mut hb).map_err(|e| Error::io(what(), &e))?;
        let answer = Hello::parse(&hb)
            .map_err(|why| Error::new(ErrorCode::ProtocolError, format!("{}: {why}", what())))?;
        let theirs = answer.flags & FLAG_TLS;
        if answer.version == VERSION && theirs != ours {
            return Err(Error::new(
                ErrorCode::TlsError,
                format!(
                    "{}: {}",
                    what(),
                    if ours == 0 {
                        "the peer's transport requires TLS, and TLS is not enabled in this process (smem_set_ssl_option)"
                    } else {
                        "TLS is enabled in this process, and the peer's transport does not use TLS"
                    }
                ),
            ));
        }
        if answer.status != 0 || answer.version != VERSION {
            return Err(Error::new(
                ErrorCode::NotSupported,
                format!(
                    "{}: the peer refused the connection (status {}, version {})",
                    what(),
                    answer.status,
                    answer.version
                ),
            ));
        }
        let tls = match &self.tls {
            Some(tls) => {
                let sock = stream.try_clone().map_err(|e| Error::io(what(), &e))?;
                let fd = sock.as_raw_fd();
                // Server identity: its certificate's IP SANs against the endpoint's IP, as
                // the store client checks them.
                let s = crate::tls::TlsStream::connect(
                    sock,
                    tls,
                    peer.ip(),
                    std::time::Instant::now() + timeout.max(Duration::from_millis(1)),
                )
                .map_err(|e| e.context(what()))?;
                Some(TlsWire::new(fd, Box::new(s)))
            }
            None => None,
        };
        Ok(Conn {
            stream: Detached::new(stream),
            tls,
            next_seq: 0,
        })
    }

    /// Runs `t` to completion: `Ok` only when every byte was acknowledged in place. The
    /// local rows (`i * local_pitch` into `t.local`, `width` bytes, `i < height`) are read
    /// (`Write`) or written (`Read`) in the memory `local_device` names.
    pub(crate) fn transfer(&self, t: &Transfer<'_>, timeout: Duration) -> Result<()> {
        let pieces = pieces(t)?;
        let total = t.width.saturating_mul(t.height);
        self.run_pieces(t, &pieces, total, timeout)
    }

    /// Runs `pieces` (of `total` bytes) of `t`: on one connection, or spread over several
    /// side by side when `total` is at least [`PARALLEL_MIN`].
    pub(crate) fn run_pieces(
        &self,
        t: &Transfer<'_>,
        pieces: &[Piece<'_>],
        total: u64,
        timeout: Duration,
    ) -> Result<()> {
        let streams = if total >= PARALLEL_MIN {
            streams().min(pieces.len())
        } else {
            1
        };
        if streams <= 1 {
            return self.run_on_one(t, pieces, timeout);
        }
        // Contiguous groups of requests, one connection each, run side by side.
        let per = pieces.len().div_ceil(streams);
        let results: Vec<Result<()>> = std::thread::scope(|scope| {
            let mut groups = pieces.chunks(per);
            let first = groups.next().unwrap_or(&[]);
            let others: Vec<_> = groups
                .map(|g| scope.spawn(move || self.run_on_one(t, g, timeout)))
                .collect();
            let mut out = vec![self.run_on_one(t, first, timeout)];
            for h in others {
                out.push(h.join().unwrap_or_else(|_| {
                    Err(Error::new(
                        ErrorCode::Error,
                        "transport: a copy stream panicked",
                    ))
                }));
            }
            out
        });
        results.into_iter().collect()
    }

    /// Runs `pieces` of `t` on one connection (cached or new).
    fn run_on_one(&self, t: &Transfer<'_>, pieces: &[Piece<'_>], timeout: Duration) -> Result<()> {
        let mut attempt = 0;
        loop {
            let (conn, cached) = match self.take(t.peer) {
                Some(c) => (c, true),
                None => (self.connect(t.peer, t.rank, timeout)?, false),
            };
            let mut conn = conn;
            let r = run(&mut conn, t, pieces);
            match r {
                Ok(()) => {
                    self.put(t.peer, conn);
                    return Ok(());
                }
                // A cached connection may have been closed by the peer while idle (e.g. it
                // restarted its server); requests are idempotent, so retry once on a new one.
                // Not after a timeout: a stalled peer must fail within one timeout.
                Err(Failure::Link(e))
                    if cached && attempt == 0 && e.code() != ErrorCode::Timeout =>
                {
                    debug!(
                        "transport: cached connection to {} failed ({e}); reconnecting",
                        t.peer
                    );
                    attempt += 1;
                }
                Err(Failure::Link(e) | Failure::Final(e)) => return Err(e),
            }
        }
    }
}

/// Copies of at least this many bytes are spread over several connections.
pub(crate) const PARALLEL_MIN: u64 = 16 * 1024 * 1024;
/// Connections per large copy unless [`crate::transport::STREAMS_ENV`] says otherwise.
pub(crate) const DEFAULT_STREAMS: usize = 4;

/// Connections per large copy (read once).
fn streams() -> usize {
    static STREAMS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *crate::sync::get_or_init(&STREAMS, || {
        std::env::var(super::super::STREAMS_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map_or(DEFAULT_STREAMS, |n| n.clamp(1, 16))
    })
}

fn link_err(t: &Transfer<'_>, what: &str, e: &io::Error) -> Failure {
    if e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
    {
        // Refused by TLS (e.g. our certificate): final, a reconnect would be refused too.
        return Failure::Final(crate::tls::stream_error(
            &format!("{}'s data endpoint {}: {what}", peer_label(t.rank), t.peer),
            e,
        ));
    }
    Failure::Link(Error::io(
        format_args!("{}'s data endpoint {}: {what}", peer_label(t.rank), t.peer),
        e,
    ))
}

/// Reads one reply header (and its message); checks it answers `seq`.
fn read_reply(
    c: &mut Conn,
    t: &Transfer<'_>,
    op: Op,
    seq: u32,
) -> std::result::Result<Reply, Failure> {
    let mut b = [0u8; REPLY_LEN];
    c.link()
        .recv(&mut b)
        .map_err(|e| link_err(t, "waiting for the acknowledgement", &e))?;
    let proto = |why: &dyn std::fmt::Display| {
        Failure::Final(Error::new(
            ErrorCode::ProtocolError,
            format!("{}'s data endpoint {}: {why}", peer_label(t.rank), t.peer),
        ))
    };
    let reply = Reply::parse(&b).map_err(|why| proto(&why))?;
    if reply.op != op || reply.seq != seq {
        return Err(proto(&"reply out of order"));
    }
    if reply.status != 0 {
        let mut msg = vec![0u8; reply.msg_len as usize];
        c.link()
            .recv(&mut msg)
            .map_err(|e| link_err(t, "reading an error reply", &e))?;
        let code = ErrorCode::from_code(reply.status).unwrap_or(ErrorCode::Error);
        return Err(Failure::Final(Error::new(
            code,
            format!(
                "{} refused the copy: {}",
                peer_label(t.rank),
                String::from_utf8_lossy(&msg)
            ),
        )));
    }
    Ok(reply)
}

/// The local rows of piece `p` of `t`.
fn local_rows<'a>(t: &Transfer<'a>, p: Piece<'a>) -> Rows<'a> {
    Rows {
        range: p.local,
        pitch: if p.rows > 1 { t.local_pitch } else { p.width },
        width: p.width,
        rows: p.rows,
        device: t.local_device,
    }
}

/// Runs the requests of `t` on `c`.
fn run(c: &mut Conn, t: &Transfer<'_>, pieces: &[Piece<'_>]) -> std::result::Result<(), Failure> {
    let mut scratch = Vec::new();
    let request = |c: &mut Conn, p: &Piece<'_>| {
        let seq = c.next_seq;
        c.next_seq = c.next_seq.wrapping_add(1);
        let req = Request {
            op: t.op,
            seq,
            object: t.object,
            token: t.token,
            offset: p.remote,
            len: p.width * p.rows,
            width: p.width,
            pitch: if p.rows > 1 { t.remote_pitch } else { p.width },
        };
        (seq, req.to_bytes())
    };

    let mut waiting = std::collections::VecDeque::new();
    match t.op {
        Op::Write => {
            for p in pieces {
                let (seq, hdr) = request(c, p);
                c.link()
                    .send(&hdr, true)
                    .map_err(|e| link_err(t, "sending a WRITE", &e))?;
                send_rows(&mut c.link(), &local_rows(t, *p), &mut scratch, false)
                    .map_err(|e| link_err(t, "sending WRITE data", &e))?;
                waiting.push_back(seq);
                if waiting.len() >= WRITE_WINDOW {
                    let s = waiting.pop_front().unwrap_or_default();
                    read_reply(c, t, Op::Write, s)?;
                }
            }
            while let Some(s) = waiting.pop_front() {
                read_reply(c, t, Op::Write, s)?;
            }
        }
        Op::Read => {
            let mut next = 0;
            let send_next =
                |c: &mut Conn, next: &mut usize, waiting: &mut std::collections::VecDeque<u32>| {
                    if let Some(p) = pieces.get(*next) {
                        let (seq, hdr) = request(c, p);
                        c.link()
                            .send(&hdr, false)
                            .map_err(|e| link_err(t, "sending a READ", &e))?;
                        waiting.push_back(seq);
                        *next += 1;
                    }
                    Ok(())
                };
            while next < pieces.len().min(READ_WINDOW) {
                send_next(c, &mut next, &mut waiting)?;
            }
            for p in pieces {
                let s = waiting.pop_front().unwrap_or_default();
                let reply = read_reply(c, t, Op::Read, s)?;
                if reply.len != p.width * p.rows {
                    return Err(Failure::Final(Error::new(
                        ErrorCode::ProtocolError,
                        format!(
                            "{}'s data endpoint {}: READ reply of {} bytes for {} requested",
                            peer_label(t.rank),
                            t.peer,
                            reply.len,
                            p.width * p.rows
                        ),
                    )));
                }
                send_next(c, &mut next, &mut waiting)?;
                recv_rows(&mut c.link(), &local_rows(t, *p), &mut scratch)
                    .map_err(|e| link_err(t, "receiving READ data", &e))?;
            }
        }
    }
    Ok(())
}
