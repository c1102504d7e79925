//! One link of [`super::TcpClient`]: connecting (with retries), the handshake (in clear, then
//! TLS when configured), the writer, and the reader thread that matches replies to pending
//! requests by seqNo and feeds watch receivers.

use std::collections::HashMap;
use std::io::{self, BufRead as _, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{debug, warn};
use smem_core::ErrorCode;
use smem_core::wire::handshake::{self, Handshake};
use smem_core::wire::{FRAME_HEADER_LEN, FrameHeader, HANDSHAKE_LEN, MessageView, status};

use super::{ClientOptions, Reply, T_EVENTS, T_OPS, T_RECEIVED, T_SENT, count, show, spawn, text};
use crate::sync::lock;
use crate::sys::fork::Detached;
use crate::sys::net::NoSigPipe;
use crate::tls::TlsStream;
use crate::{Error, Result};

/// One TCP connection to the store and what is registered on it.
pub(super) struct Link {
    /// The socket, or the writing half of its TLS stream (each descriptor of the link is kept
    /// out of forked children while it lives).
    pub(super) writer: Mutex<Detached<Box<dyn Write + Send>>>,
    /// A second handle, so taking the link down never waits for a writer blocked in the kernel.
    pub(super) shutdown_handle: Detached<TcpStream>,
    pub(super) pending: Mutex<HashMap<u32, SyncSender<Reply>>>,
    pub(super) watches: Mutex<Watches>,
    pub(super) up: AtomicBool,
}

#[derive(Default)]
pub(super) struct Watches {
    pub(super) by_seq: HashMap<u32, (Vec<u8>, Sender<Vec<u8>>)>,
    pub(super) by_key: HashMap<Vec<u8>, u32>,
    pub(super) rank_down: Option<(u32, Sender<u32>)>,
}

impl Link {
    /// Take the link down: fail every pending op (dropping its sender) and disconnect every
    /// watcher.
    pub(super) fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        let _ = self.shutdown_handle.shutdown(Shutdown::Both);
        lock(&self.pending).clear();
        let mut w = lock(&self.watches);
        w.by_seq.clear();
        w.by_key.clear();
        w.rank_down = None;
    }

    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    pub(super) fn write(&self, addr: SocketAddr, frame: &[u8]) -> Result<()> {
        if !self.is_up() {
            return Err(Error::new(
                ErrorCode::IoError,
                format!("link to the config store at {addr} is down"),
            ));
        }
        count(T_OPS, 1);
        count(T_SENT, frame.len() as u64);
        let mut w = lock(&self.writer);
        if let Err(e) = w.write_all(frame) {
            drop(w);
            self.down();
            return Err(Error::io(
                format!("sending to the config store at {addr}"),
                &e,
            ));
        }
        Ok(())
    }

    /// Reader thread body: read frames until the link dies, then take it down.
    fn read_loop(self: Arc<Self>, stream: Detached<Box<dyn Read + Send>>, addr: SocketAddr) {
        // Buffered: a burst of replies and watch events costs one read per 64 KiB, not two
        // per frame.
        let mut stream = io::BufReader::with_capacity(64 * 1024, stream);
        let mut hdr = [0u8; FRAME_HEADER_LEN];
        // One buffer for every watch event's body: an event costs one allocation (its value,
        // handed to the watcher); a reply takes the buffer with it to its caller.
        let mut body = Vec::new();
        let why = loop {
            if let Err(e) = stream.read_exact(&mut hdr) {
                break format!("read: {e}");
            }
            let Ok(h) = FrameHeader::parse(&hdr) else {
                break "bad header".into();
            };
            if h.body_len > smem_core::wire::MAX_BODY_LEN {
                break format!("reply bodyLen {} over 64 MiB", h.body_len);
            }
            let len = h.body_len as usize;
            body.clear();
            let read = if len <= stream.buffer().len() {
                // The usual case: the whole body is in the buffer already (a burst of watch
                // events arrives in one read): copied out, no read call, no allocation.
                body.extend_from_slice(&stream.buffer()[..len]);
                stream.consume(len);
                Ok(len)
            } else if len <= DIRECT_BODY {
                // E.g. a PREFIX reply of every window record: read in place (a read bigger
                // than the buffer goes straight into `body`), no growth, no copies.
                body.resize(len, 0);
                match stream.read_exact(&mut body) {
                    Ok(()) => Ok(len),
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                    Err(e) => Err(e),
                }
            } else {
                // Grows with the bytes that actually arrive, not with the declared length.
                body.reserve(DIRECT_BODY);
                (&mut stream)
                    .take(u64::from(h.body_len))
                    .read_to_end(&mut body)
            };
            match read {
                Ok(n) if n == len => {}
                Ok(_) => break "link closed inside a reply".into(),
                Err(e) => break format!("read: {e}"),
            }
            count(T_RECEIVED, (FRAME_HEADER_LEN + len) as u64);
            self.dispatch(h.seq_no, h.result, &mut body);
            if body.capacity() > DIRECT_BODY {
                body = Vec::new();
            }
        };
        if self.is_up() {
            debug!("store client for {addr}: link down ({why})");
        }
        self.down();
    }

    /// Hand frame `body` to its waiter (taking the buffer) or to its watcher (a copy of the
    /// value).
    fn dispatch(&self, seq: u32, st: i16, body: &mut Vec<u8>) {
        if seq == 0 {
            debug!("store client: ignoring server push (status {st})");
            return;
        }
        let waiter = lock(&self.pending).remove(&seq);
        if let Some(tx) = waiter {
            let body = std::mem::take(body);
            let _ = tx.try_send(Reply { status: st, body });
            return;
        }
        let body = &body[..];
        count(T_EVENTS, 1);
        let mut w = lock(&self.watches);
        if let Some((key, tx)) = w.by_seq.get(&seq) {
            let ok = st == status::OK
                && MessageView::parse(body)
                    .is_ok_and(|m| m.values.get(0).is_some_and(|v| tx.send(v.to_vec()).is_ok()));
            if !ok {
                if st != status::OK {
                    warn!(
                        "store watch of key {} ended: status {st} {:?}",
                        show(key),
                        text(body)
                    );
                }
                let key = key.clone();
                w.by_seq.remove(&seq);
                if w.by_key.get(&key) == Some(&seq) {
                    w.by_key.remove(&key);
                }
            }
            return;
        }
        if let Some((rseq, tx)) = &w.rank_down {
            if *rseq == seq {
                let rank = MessageView::parse(body).ok().and_then(|m| {
                    m.values
                        .get(0)
                        .and_then(|v| v.try_into().ok())
                        .map(u32::from_le_bytes)
                });
                let alive = st == status::OK && rank.is_some_and(|r| tx.send(r).is_ok());
                if !alive {
                    w.rank_down = None;
                }
                return;
            }
        }
        debug!("store client: reply for unknown seqNo {seq} (late after a timeout?)");
    }
}

/// Frame bodies up to this size are read into a buffer of their declared length at once;
/// larger ones grow with the bytes that arrive (a corrupt length costs no memory up front).
const DIRECT_BODY: usize = 4 << 20;

/// Whether a failed TCP connect may succeed later: nobody listens yet (refused, reset), the
/// route or the host is not there yet (host/network unreachable, e.g. an interface or a
/// neighbour coming up), the attempt timed out, or a signal interrupted it. Other errors (bad
/// address, address family not supported, permission) will not change by waiting.
pub fn connect_error_is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::ECONNRESET
                | libc::ECONNABORTED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::ENETDOWN
                | libc::ETIMEDOUT
                | libc::EINTR
                | libc::EAGAIN
        )
    ) || matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::TimedOut
            | io::ErrorKind::Interrupted
    )
}

/// First and last pause between connect attempts (doubling in between).
const CONNECT_BACKOFF: [Duration; 2] = [Duration::from_millis(20), Duration::from_millis(200)];

/// A TCP connection to `addr`, retrying transient failures
/// ([`connect_error_is_transient`]) with backoff until `deadline`.
///
/// # Errors
/// `SM_TIMEOUT` naming the address, the timeout and the last OS error, at the deadline or at
/// once for an error that waiting will not fix.
fn connect_until(addr: SocketAddr, deadline: Instant, timeout: Duration) -> Result<TcpStream> {
    let mut pause = CONNECT_BACKOFF[0];
    let mut attempts = 0u32;
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        attempts += 1;
        let err = match TcpStream::connect_timeout(&addr, left) {
            // A TCP self-connection: with nobody listening on a port of the ephemeral range,
            // the kernel may pick that very port as our source port and "connect" the socket
            // to itself (simultaneous open). It is not the store: drop it and retry as if
            // refused, or our own handshake would come back to us.
            Ok(s) if s.local_addr().ok() == Some(addr) => {
                drop(s);
                io::Error::from_raw_os_error(libc::ECONNREFUSED)
            }
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        let transient = connect_error_is_transient(&err);
        if !transient || Instant::now() >= deadline {
            return Err(Error::new(
                ErrorCode::Timeout,
                format!(
                    "cannot connect to the config store at {addr} within {} ms ({attempts} attempt(s){}): last error: {err}; is it running and reachable from here?",
                    timeout.as_millis(),
                    if transient { "" } else { ", not retried" }
                ),
            ));
        }
        debug!("store client: connecting to {addr}: {err}; retrying in {pause:?}");
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(CONNECT_BACKOFF[1]);
    }
}

/// Connect (retrying transient failures until `connect_timeout`), handshake, start the reader.
pub(super) fn open_link(
    addr: SocketAddr,
    opts: &ClientOptions,
    rank: Option<u32>,
    reconnect: bool,
) -> Result<Arc<Link>> {
    // Saturating: an absurd timeout means "a very long time", never a panic.
    let now = Instant::now();
    let deadline = now
        .checked_add(opts.connect_timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
    let io = |e: io::Error| Error::io("configuring the store socket", &e);
    let mut pause = CONNECT_BACKOFF[0];
    let stream = loop {
        let mut stream = connect_until(addr, deadline, opts.connect_timeout)?;
        let _ = stream.set_nodelay(true);
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        stream.set_read_timeout(Some(left)).map_err(io)?;
        stream
            .set_write_timeout(Some(opts.op_timeout.max(Duration::from_millis(1))))
            .map_err(io)?;
        let header = send_header(&mut stream, opts.world_size, rank, reconnect);
        // In clear, the reply is read here; a link the store dropped before answering (reset
        // or closed: it was starved or out of descriptors, see `store/server/accept.rs`) is
        // connected again within the deadline, never reported. A refusal has a reply.
        let dropped = match header {
            Err(e) => Some(e),
            Ok(()) if opts.tls.is_none() => match read_reply_code(&mut stream) {
                Ok(code) => {
                    check_reply(code, opts, rank, addr)?;
                    break stream;
                }
                Err(e) => Some(e),
            },
            Ok(()) => None,
        };
        let Some(e) = dropped else { break stream };
        let left = deadline.saturating_duration_since(Instant::now());
        if !dropped_by_store(&e) || left <= pause {
            let what = if dropped_by_store(&e) {
                "closed the link during the handshake"
            } else {
                "did not complete the handshake"
            };
            return Err(Error::new(
                ErrorCode::IoError,
                format!(
                    "config store at {addr} {what} ({e}) within the connect timeout of {} ms; it refused us or is overloaded",
                    opts.connect_timeout.as_millis()
                ),
            ));
        }
        debug!(
            "store client: {addr} dropped the link during the handshake ({e}); connecting again in {pause:?}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(CONNECT_BACKOFF[1]);
    };
    let shutdown_handle = stream.try_clone().map_err(io)?;
    let check = |r: &mut dyn Read| read_reply(r, opts, rank, addr);
    let (reader, writer, reader_fd, writer_fd): (
        Box<dyn Read + Send>,
        Box<dyn Write + Send>,
        RawFd,
        RawFd,
    ) = match &opts.tls {
        Some(tls) => {
            // The reference's order: TLS right behind the clear header, the reply inside.
            let mut tls = TlsStream::connect(stream, tls, addr.ip(), deadline)
                .map_err(|e| e.context(format!("config store at {addr}")))?;
            check(&mut tls)?;
            tls.tcp().set_read_timeout(None).map_err(io)?;
            debug!(
                "store client: TLS link to {addr}, server {}",
                tls.peer_identity()
            );
            let writer_fd = tls.tcp().as_raw_fd();
            let (r, w) = tls.into_split()?;
            let reader_fd = r.socket().as_raw_fd();
            (Box::new(r), Box::new(w), reader_fd, writer_fd)
        }
        None => {
            stream.set_read_timeout(None).map_err(io)?;
            let reader = stream.try_clone().map_err(io)?;
            let (reader_fd, writer_fd) = (reader.as_raw_fd(), stream.as_raw_fd());
            // Writes as `send(MSG_NOSIGNAL)`: never SIGPIPE in a C host.
            let writer = NoSigPipe::new(stream);
            (Box::new(reader), Box::new(writer), reader_fd, writer_fd)
        }
    };
    // The descriptors stay open as long as `reader`, `writer` and `shutdown_handle` live.
    let reader = Detached::with_raw_fd(reader_fd, reader);
    let link = Arc::new(Link {
        writer: Mutex::new(Detached::with_raw_fd(writer_fd, writer)),
        shutdown_handle: Detached::new(shutdown_handle),
        pending: Mutex::new(HashMap::new()),
        watches: Mutex::new(Watches::default()),
        up: AtomicBool::new(true),
    });
    let l = Arc::clone(&link);
    if let Err(e) = spawn("smem-store-rx", move || l.read_loop(reader, addr)) {
        link.down();
        return Err(e);
    }
    Ok(link)
}

fn send_header(
    stream: &mut TcpStream,
    world: Option<u32>,
    rank: Option<u32>,
    reconnect: bool,
) -> io::Result<()> {
    let mut hs = [0u8; HANDSHAKE_LEN];
    let _ = Handshake::new(world, rank, reconnect).emit(&mut hs);
    NoSigPipe::new(&*stream).write_all(&hs)
}

/// Whether the store dropped a link before answering its handshake (reset, closed, broken
/// pipe), as opposed to a timeout or a local error.
fn dropped_by_store(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
    )
}

/// The `i16` handshake reply, read in clear.
fn read_reply_code(stream: &mut TcpStream) -> io::Result<i16> {
    let mut r = [0u8; handshake::HANDSHAKE_REPLY_LEN];
    stream.read_exact(&mut r)?;
    Ok(handshake::parse_reply(&r).unwrap_or(status::ERROR))
}

/// The handshake reply inside TLS, as a result.
fn read_reply(
    stream: &mut dyn Read,
    opts: &ClientOptions,
    rank: Option<u32>,
    addr: SocketAddr,
) -> Result<()> {
    let mut r = [0u8; handshake::HANDSHAKE_REPLY_LEN];
    stream.read_exact(&mut r).map_err(|e| {
        if opts.tls.is_some() {
            // E.g. the store refused our certificate: its alert arrives here.
            let e = crate::tls::stream_error(&format!("TLS link to the config store at {addr}"), &e);
            if e.code() == ErrorCode::TlsError {
                return e;
            }
        }
        Error::new(
            ErrorCode::IoError,
            format!("config store at {addr} closed the link during the handshake ({e}); it refused us or is overloaded"),
        )
    })?;
    check_reply(
        handshake::parse_reply(&r).unwrap_or(status::ERROR),
        opts,
        rank,
        addr,
    )
}

/// The handshake reply `code` as a result.
fn check_reply(code: i16, opts: &ClientOptions, rank: Option<u32>, addr: SocketAddr) -> Result<()> {
    let world = opts.world_size;
    match code {
        status::OK => Ok(()),
        status::WORLD_SIZE_MISMATCH => Err(Error::invalid(format!(
            "config store at {addr} refused world size {world:?}: another rank registered a different world size"
        ))),
        status::TLS_REQUIRED => Err(Error::new(
            ErrorCode::TlsError,
            format!(
                "config store at {addr} requires TLS and this client speaks plaintext: enable TLS with smem_set_ssl_option (Rust: tls::set_global or ClientOptions::tls) before connecting"
            ),
        )),
        code if opts.tls.is_none() => Err(Error::new(
            ErrorCode::StoreRejected,
            format!(
                "config store at {addr} refused the handshake ({code}): rank {rank:?} is already held by a live link, too many links are open, or the store requires TLS (enable it with smem_set_ssl_option)"
            ),
        )),
        code => Err(Error::new(
            ErrorCode::StoreRejected,
            format!(
                "config store at {addr} refused the handshake ({code}): rank {rank:?} is already held by a live link, too many links are open, or the protocol differs"
            ),
        )),
    }
}
