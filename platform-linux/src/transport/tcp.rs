//! The TCP engine: a listener per process serving its windows, and a cache of client
//! connections per peer endpoint. Wire format in [`super::wire`].
//!
//! # Server
//! One accept thread and one thread per connection (at most [`MAX_CONNECTIONS`]). Each request
//! is validated before any byte moves: protocol fields by [`Request::parse`] (a violation logs
//! the reason and closes the connection), then the range by the served window ([`Served::pin`]:
//! object id, window generation token, bounds inside one part, window still served). A WRITE
//! that fails validation has its payload read and discarded (bounded by the 16 MiB request
//! limit) and gets an error reply. Data moves straight between the socket and the window's
//! mapping (`recv`/`send` on the mapped bytes; device memory and many small rows go through a
//! bounce buffer). A WRITE is acknowledged only after all its bytes are in place.
//!
//! # Client
//! A copy is split into requests of at most [`CHUNK`] bytes (whole rows where rows are smaller),
//! written back to back on one connection with up to [`WRITE_WINDOW`] acknowledgements
//! outstanding (writes) or [`READ_WINDOW`] requests in flight (reads), so large copies stream
//! at the connection's rate and a small copy is one round trip. Connections are cached per
//! peer and reused (`TCP_NODELAY`); each socket operation is bounded by the control timeout.
//! A copy returns `Ok` only when every request was acknowledged; a peer that dies mid-copy
//! gives an error (its socket resets at once; a silent peer after the timeout).
//!
//! # TLS
//! With TLS (server and pool built with the loaded settings), the hello carries [`FLAG_TLS`]
//! both ways; a hello whose flag differs from ours is refused (the answer carries our flag, so
//! the client says which side lacks TLS). Right after the hello the client starts the TLS 1.3
//! handshake over the same socket (blocking rustls streams, one thread per connection on the
//! server as for plain connections), and [`Link`] carries every later byte inside TLS: data is
//! staged through a buffer and small writes are coalesced until a message is complete. The
//! plaintext path is unchanged (zero-copy `recv`/`send` on the mapped bytes).
// The copy paths take raw addresses of mapped windows and of the caller's memory; the `unsafe`
// blocks here forward those contracts to `sys::net` and the device copy, each with a SAFETY note.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, warn};
use smem_core::ErrorCode;

use super::wire::{
    FLAG_TLS, HELLO_LEN, Hello, MAX_MESSAGE_LEN, Op, REPLY_LEN, REQUEST_LEN, Reply, Request,
    VERSION,
};
use crate::device::{CopyDirection, Device};
use crate::sync::lock;
use crate::sys;
use crate::sys::fork::DetachOnFork;
use crate::sys::net::NoSigPipe;
use crate::tls::LoadedTls;
use crate::{Error, Result};

/// Bytes per request of a large copy.
pub(crate) const CHUNK: u64 = 2 * 1024 * 1024;
/// Write requests sent before the client waits for the oldest acknowledgement.
pub(crate) const WRITE_WINDOW: usize = 8;
/// Read requests in flight on one connection.
pub(crate) const READ_WINDOW: usize = 4;
/// Connections one server accepts at a time (each has a thread).
pub(crate) const MAX_CONNECTIONS: usize = 4096;
/// A server connection idle this long is closed (clients reconnect transparently).
const IDLE_CLOSE: Duration = Duration::from_secs(300);
/// Stack of a connection thread (it only moves bytes).
const CONN_STACK: usize = 256 * 1024;
/// Idle connections kept per peer.
const MAX_IDLE_PER_PEER: usize = 8;
/// Rows narrower than this are gathered into one buffer rather than sent one by one.
const SMALL_ROW: u64 = 16 * 1024;

/// Keeps a served range valid while it is borrowed (e.g. a window's in-flight count).
pub(crate) trait Hold {}
impl<T> Hold for T {}

/// A range of a served window, pinned for the duration of one request.
pub(crate) struct Pinned<'a> {
    /// Address of the first byte of the range in this process.
    pub(crate) addr: u64,
    /// Set when the range is device memory: bytes move through this device's copy engine.
    pub(crate) device: Option<&'a dyn Device>,
    /// Released when the request is done.
    pub(crate) _hold: Box<dyn Hold + 'a>,
}

/// A window this process serves (the BM object implements it).
pub(crate) trait Served: Send + Sync {
    /// Pins `span` bytes at `offset` from the start of the window whose current generation is
    /// `token`.
    ///
    /// # Errors
    /// `SM_OBJECT_NOT_EXISTS` when the window is not served (left, destroyed, other generation),
    /// `SM_INVALID_PARAM` when the range does not lie in one part of the window.
    fn pin(&self, token: u64, offset: u64, span: u64) -> Result<Pinned<'_>>;
}

/// Rows of memory in this process: `rows` rows of `width` bytes, `pitch` apart.
struct Rows<'a> {
    addr: u64,
    pitch: u64,
    width: u64,
    rows: u64,
    device: Option<&'a dyn Device>,
}

impl Rows<'_> {
    fn len(&self) -> u64 {
        self.width * self.rows
    }

    fn gathered(&self) -> bool {
        self.device.is_some() || (self.rows > 1 && self.width < SMALL_ROW)
    }
}

fn dev_err(e: Error) -> io::Error {
    io::Error::other(format!("device copy: {e}"))
}

fn usize_of(v: u64) -> io::Result<usize> {
    usize::try_from(v).map_err(|_| io::Error::other("length exceeds the address space"))
}

/// Both ways of carrying the transport's bytes on one connection: the plain socket (data moves
/// straight between the socket and memory) or a TLS stream (data is staged through a buffer and
/// encrypted; writes are coalesced until a message is complete).
enum Link<'a> {
    Plain(&'a TcpStream),
    Tls(&'a mut TlsWire),
}

/// Bytes gathered before the TLS stream is written, so a header and its payload share records.
const TLS_OUT_MAX: usize = 256 * 1024;

/// A TLS connection of the transport (client or server side).
struct TlsWire {
    /// Keeps the stream's own descriptor out of forked children; declared first.
    _detach: DetachOnFork,
    io: Box<dyn TlsIo>,
    /// Plaintext waiting to be written (see [`Link::send`]).
    out: Vec<u8>,
    /// Plaintext staging for reads into raw memory.
    buf: Vec<u8>,
}

trait TlsIo: Read + io::Write + Send {}
impl<T: Read + io::Write + Send> TlsIo for T {}

impl TlsWire {
    fn new(fd: std::os::fd::RawFd, io: Box<dyn TlsIo>) -> Self {
        Self {
            _detach: DetachOnFork::from_raw(fd),
            io,
            out: Vec::new(),
            buf: Vec::new(),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let r = self.io.write_all(&self.out).and_then(|()| self.io.flush());
            self.out.clear();
            r.map_err(tls_timeout)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for TlsWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsWire").finish_non_exhaustive()
    }
}

/// A TLS stream reports a socket timeout as `WouldBlock`; the transport reports `TimedOut`.
fn tls_timeout(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "no progress within the socket timeout",
        )
    } else {
        e
    }
}

impl Link<'_> {
    /// Fills `buf`.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match self {
            Link::Plain(s) => sys::net::recv_slice(s.as_fd(), buf),
            Link::Tls(t) => t.io.read_exact(buf).map_err(tls_timeout),
        }
    }

    /// Sends `data`; `more` = more of the same message follows at once.
    fn send(&mut self, data: &[u8], more: bool) -> io::Result<()> {
        match self {
            Link::Plain(s) => sys::net::send_slice(s.as_fd(), data, more),
            Link::Tls(t) => {
                t.out.extend_from_slice(data);
                if !more || t.out.len() >= TLS_OUT_MAX {
                    t.flush()?;
                }
                Ok(())
            }
        }
    }

    /// Receives `len` bytes into `dst`.
    ///
    /// # Safety
    /// As [`sys::net::recv_exact`].
    unsafe fn recv_raw(&mut self, dst: *mut u8, len: usize) -> io::Result<()> {
        match self {
            // SAFETY: forwarded contract.
            Link::Plain(s) => unsafe { sys::net::recv_exact(s.as_fd(), dst, len) },
            Link::Tls(t) => {
                t.buf.resize(TLS_OUT_MAX.min(len.max(1)), 0);
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(t.buf.len());
                    t.io.read_exact(&mut t.buf[..n]).map_err(tls_timeout)?;
                    // SAFETY: `dst + done .. + n` is inside the caller's writable range; `buf`
                    // is our own buffer, disjoint from it.
                    unsafe { std::ptr::copy_nonoverlapping(t.buf.as_ptr(), dst.add(done), n) };
                    done += n;
                }
                Ok(())
            }
        }
    }

    /// Sends the `len` bytes at `src`; `more` as [`Self::send`].
    ///
    /// # Safety
    /// As [`sys::net::send_all`].
    unsafe fn send_raw(&mut self, src: *const u8, len: usize, more: bool) -> io::Result<()> {
        match self {
            // SAFETY: forwarded contract.
            Link::Plain(s) => unsafe { sys::net::send_all(s.as_fd(), src, len, more) },
            Link::Tls(t) => {
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(TLS_OUT_MAX);
                    let at = t.out.len();
                    t.out.reserve(n);
                    // SAFETY: `src + done .. + n` is readable by the caller's contract; `out`
                    // has room for `n` more bytes past `at` (reserved) and is our own buffer.
                    unsafe {
                        std::ptr::copy_nonoverlapping(src.add(done), t.out.as_mut_ptr().add(at), n);
                        t.out.set_len(at + n);
                    }
                    done += n;
                    if t.out.len() >= TLS_OUT_MAX {
                        t.flush()?;
                    }
                }
                if !more {
                    t.flush()?;
                }
                Ok(())
            }
        }
    }

    /// One read of at most `buf.len()` bytes (`Ok(0)`: the peer closed).
    fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Plain(s) => (&**s).read(buf),
            Link::Tls(t) => t.io.read(buf),
        }
    }
}

/// Receives `rows.len()` bytes from `link` into `rows`.
///
/// # Safety
/// Every row of `rows` must be writable (in the memory `rows.device` names) for the call.
unsafe fn recv_rows(link: &mut Link<'_>, rows: &Rows<'_>, scratch: &mut Vec<u8>) -> io::Result<()> {
    let (width, pitch, n) = (
        usize_of(rows.width)?,
        usize_of(rows.pitch)?,
        usize_of(rows.rows)?,
    );
    if rows.gathered() {
        scratch.resize(usize_of(rows.len())?, 0);
        link.recv(scratch)?;
        let dst = rows.addr as *mut u8;
        match rows.device {
            // SAFETY: `scratch` holds `n` rows of `width` bytes; the rows at `dst` are writable
            // device memory by this function's contract; host and device ranges are disjoint.
            Some(dev) => unsafe {
                dev.copy_2d(
                    scratch.as_ptr(),
                    width,
                    dst,
                    pitch,
                    width,
                    n,
                    CopyDirection::HostToDevice,
                )
            }
            .map_err(dev_err)?,
            // SAFETY: as above, host memory; `scratch` is our own buffer, disjoint from `dst`.
            None => unsafe { sys::copy::copy_2d(scratch.as_ptr(), width, dst, pitch, width, n) },
        }
        return Ok(());
    }
    for r in 0..n {
        // SAFETY: row `r` lies at `addr + r * pitch` and is writable for `width` bytes by this
        // function's contract (the row span was checked for overflow by the caller).
        unsafe { link.recv_raw((rows.addr as *mut u8).add(r * pitch), width)? };
    }
    Ok(())
}

/// Sends the bytes of `rows` on `link`; `more` = more data follows at once.
///
/// # Safety
/// Every row of `rows` must be readable (in the memory `rows.device` names) for the call.
unsafe fn send_rows(
    link: &mut Link<'_>,
    rows: &Rows<'_>,
    scratch: &mut Vec<u8>,
    more: bool,
) -> io::Result<()> {
    let (width, pitch, n) = (
        usize_of(rows.width)?,
        usize_of(rows.pitch)?,
        usize_of(rows.rows)?,
    );
    if rows.gathered() {
        scratch.resize(usize_of(rows.len())?, 0);
        let src = rows.addr as *const u8;
        match rows.device {
            // SAFETY: the rows at `src` are readable device memory by this function's contract;
            // `scratch` has room for `n` rows of `width` bytes and is disjoint from them.
            Some(dev) => unsafe {
                dev.copy_2d(
                    src,
                    pitch,
                    scratch.as_mut_ptr(),
                    width,
                    width,
                    n,
                    CopyDirection::DeviceToHost,
                )
            }
            .map_err(dev_err)?,
            // SAFETY: as above, host memory.
            None => unsafe {
                sys::copy::copy_2d(src, pitch, scratch.as_mut_ptr(), width, width, n)
            },
        }
        return link.send(scratch, more);
    }
    for r in 0..n {
        let last = r + 1 == n;
        // SAFETY: row `r` is readable for `width` bytes by this function's contract.
        unsafe {
            link.send_raw(
                (rows.addr as *const u8).add(r * pitch),
                width,
                more || !last,
            )?
        };
    }
    Ok(())
}

/// Reads and throws away `len` bytes (the payload of a refused WRITE).
fn discard(link: &mut Link<'_>, len: u64, scratch: &mut Vec<u8>) -> io::Result<()> {
    let mut left = len;
    scratch.resize(64 * 1024, 0);
    while left > 0 {
        let n = left.min(scratch.len() as u64) as usize;
        link.recv(&mut scratch[..n])?;
        left -= n as u64;
    }
    Ok(())
}

fn set_timeouts(s: &TcpStream, timeout: Duration) -> io::Result<()> {
    let t = Some(timeout.max(Duration::from_millis(1)));
    s.set_read_timeout(t)?;
    s.set_write_timeout(t)?;
    s.set_nodelay(true)
}

/// What the server threads share.
struct ServerShared {
    served: Mutex<HashMap<u32, Weak<dyn Served>>>,
    /// Clones of the open connections, to shut them down (each kept out of forked children).
    conns: Mutex<HashMap<u64, (DetachOnFork, TcpStream)>>,
    next_conn: AtomicU64,
    stop: AtomicBool,
    timeout: Duration,
    /// Set when connections must run mutual TLS.
    tls: Option<Arc<LoadedTls>>,
}

impl ServerShared {
    fn lookup(&self, object: u32) -> Option<Arc<dyn Served>> {
        lock(&self.served).get(&object).and_then(Weak::upgrade)
    }
}

/// The listener of this process and its connection threads.
pub(crate) struct Server {
    addr: SocketAddr,
    shared: Arc<ServerShared>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

impl Server {
    /// Binds `ip:0` and starts accepting; with `tls`, every connection runs mutual TLS.
    pub(crate) fn start(
        ip: IpAddr,
        timeout: Duration,
        tls: Option<Arc<LoadedTls>>,
    ) -> Result<Self> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).map_err(|e| {
            Error::io(
                format_args!("transport: binding a data listener on {ip}"),
                &e,
            )
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("transport: listener address", &e))?;
        let shared = Arc::new(ServerShared {
            served: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            timeout,
            tls,
        });
        let sh = Arc::clone(&shared);
        let t = std::thread::Builder::new()
            .name("smem-net-accept".into())
            .spawn(move || accept_loop(&listener, &sh))
            .map_err(|e| {
                Error::new(
                    ErrorCode::NewObjectFailed,
                    format!("transport: cannot start the accept thread: {e}"),
                )
            })?;
        Ok(Self {
            addr,
            shared,
            accept: Mutex::new(Some(t)),
        })
    }

    /// The address peers connect to.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `window` as object `object` (replacing an earlier registration).
    pub(crate) fn serve(&self, object: u32, window: Weak<dyn Served>) {
        lock(&self.shared.served).insert(object, window);
    }

    /// Stops serving object `object` (requests for it are refused from now on).
    pub(crate) fn unserve(&self, object: u32) {
        lock(&self.shared.served).remove(&object);
    }

    /// Stops accepting, closes every connection and joins the accept thread.
    pub(crate) fn shutdown(&self) {
        if self.shared.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the accept thread; it sees `stop` and returns.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for (_, (_, c)) in lock(&self.shared.conns).drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
        // Not joined under the lock: never wait for another thread while holding one.
        let accept = lock(&self.accept).take();
        if let Some(t) = accept {
            let _ = t.join();
        }
        lock(&self.shared.served).clear();
    }
}

fn accept_loop(listener: &TcpListener, sh: &Arc<ServerShared>) {
    // Forked children must not keep the port (or, below, connections) open after we die.
    let _detach = DetachOnFork::new(listener.as_fd());
    for incoming in listener.incoming() {
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match incoming {
            Ok(s) => s,
            Err(e) => {
                warn!("transport: accept failed ({e}); retrying");
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        let id = sh.next_conn.fetch_add(1, Ordering::Relaxed);
        {
            let mut conns = lock(&sh.conns);
            if conns.len() >= MAX_CONNECTIONS {
                warn!(
                    "transport: refusing the connection from {peer}: {MAX_CONNECTIONS} connections are open"
                );
                continue;
            }
            match stream.try_clone() {
                Ok(c) => {
                    conns.insert(id, (DetachOnFork::new(c.as_fd()), c));
                }
                Err(e) => {
                    warn!("transport: refusing the connection from {peer}: {e}");
                    continue;
                }
            }
        }
        let sh2 = Arc::clone(sh);
        let spawned = std::thread::Builder::new()
            .name("smem-net-conn".into())
            .stack_size(CONN_STACK)
            .spawn(move || {
                let detach = DetachOnFork::new(stream.as_fd());
                if let Err(why) = serve_conn(&stream, &sh2) {
                    if !sh2.stop.load(Ordering::SeqCst) {
                        warn!("transport: closing the connection from {peer}: {why}");
                    }
                }
                let _ = stream.shutdown(Shutdown::Both);
                lock(&sh2.conns).remove(&id);
                // Unregistered before `stream` closes with the closure.
                drop(detach);
            });
        if let Err(e) = spawned {
            warn!("transport: cannot start a connection thread: {e}");
            lock(&sh.conns).remove(&id);
        }
    }
}

/// Waits for the next request header; `Ok(false)` when the peer closed between requests, the
/// server stops, or the connection was idle for [`IDLE_CLOSE`] (the client's pool reconnects).
fn read_header(s: &mut Link<'_>, sh: &ServerShared, hdr: &mut [u8; REQUEST_LEN]) -> Result<bool> {
    let idle_since = std::time::Instant::now();
    let got = loop {
        match s.read_some(hdr) {
            Ok(0) => return Ok(false),
            Ok(n) => break n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                if sh.stop.load(Ordering::SeqCst) || idle_since.elapsed() >= IDLE_CLOSE {
                    return Ok(false);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
                ) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(Error::io("reading a request", &e)),
        }
    };
    if got < REQUEST_LEN {
        s.recv(&mut hdr[got..])
            .map_err(|e| Error::io("reading the rest of a request header", &e))?;
    }
    Ok(true)
}

fn send_reply(s: &mut Link<'_>, reply: &Reply, msg: &[u8], more: bool) -> io::Result<()> {
    s.send(&reply.emit(), more || !msg.is_empty())?;
    if !msg.is_empty() {
        s.send(msg, more)?;
    }
    Ok(())
}

fn error_reply(s: &mut Link<'_>, req: &Request, e: &Error) -> io::Result<()> {
    let mut msg = e.message().as_bytes();
    msg = &msg[..msg.len().min(MAX_MESSAGE_LEN as usize)];
    let reply = Reply {
        op: req.op,
        seq: req.seq,
        status: e.code().code(),
        msg_len: msg.len() as u32,
        len: 0,
    };
    send_reply(s, &reply, msg, false)
}

/// Runs the server side of the TLS handshake on `s` (bounded by its socket timeouts): the
/// client must present a certificate chaining to the CA (CRLs honoured).
fn server_handshake(s: &TcpStream, tls: &LoadedTls) -> Result<TlsWire> {
    let mut conn = rustls::ServerConnection::new(crate::tls::server_config(tls))
        .map_err(|e| Error::new(ErrorCode::TlsError, format!("TLS server session: {e}")))?;
    // Every TLS write (rustls' are vectored) is a `send` without SIGPIPE.
    let mut sock = NoSigPipe::new(
        s.try_clone()
            .map_err(|e| Error::io("TLS handshake: cloning the socket", &e))?,
    );
    while conn.is_handshaking() {
        match conn.complete_io(&mut sock) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(crate::tls::stream_error("TLS handshake", &e)),
        }
    }
    let fd = sock.get_ref().as_raw_fd();
    Ok(TlsWire::new(
        fd,
        Box::new(rustls::StreamOwned::new(conn, sock)),
    ))
}

/// Serves one connection until it closes. `Err` = a reason to log.
fn serve_conn(s: &TcpStream, sh: &ServerShared) -> Result<()> {
    set_timeouts(s, sh.timeout).map_err(|e| Error::io("configuring the socket", &e))?;
    let mut hb = [0u8; HELLO_LEN];
    sys::net::recv_slice(s.as_fd(), &mut hb).map_err(|e| Error::io("reading the hello", &e))?;
    let hello = Hello::parse(&hb).map_err(|why| Error::new(ErrorCode::ProtocolError, why))?;
    let ours = if sh.tls.is_some() { FLAG_TLS } else { 0 };
    let refuse = if hello.version != VERSION {
        Some(format!(
            "protocol version {} (ours is {VERSION})",
            hello.version
        ))
    } else if hello.flags & !FLAG_TLS != 0 {
        Some(format!("unknown hello flags {:#x}", hello.flags))
    } else if hello.flags & FLAG_TLS != 0 && ours == 0 {
        Some(
            "the peer asks for TLS, but TLS is not enabled in this process (smem_set_ssl_option)"
                .to_owned(),
        )
    } else if hello.flags & FLAG_TLS == 0 && ours != 0 {
        Some("the peer does not use TLS, and this process requires it (TLS is enabled)".to_owned())
    } else {
        None
    };
    let answer = Hello {
        version: VERSION,
        flags: ours,
        status: if refuse.is_some() {
            ErrorCode::NotSupported.code()
        } else {
            0
        },
    };
    sys::net::send_slice(s.as_fd(), &answer.emit(), false)
        .map_err(|e| Error::io("sending the hello", &e))?;
    if let Some(why) = refuse {
        return Err(Error::new(ErrorCode::NotSupported, why));
    }
    let mut wire = match &sh.tls {
        Some(tls) => Some(server_handshake(s, tls)?),
        None => None,
    };
    let mut link = match &mut wire {
        Some(w) => Link::Tls(w),
        None => Link::Plain(s),
    };
    let s = &mut link;
    let mut scratch = Vec::new();
    let mut hdr = [0u8; REQUEST_LEN];
    let io = |what: &'static str| move |e: io::Error| Error::io(what, &e);
    loop {
        if !read_header(s, sh, &mut hdr)? {
            return Ok(());
        }
        let req = Request::parse(&hdr).map_err(|why| Error::new(ErrorCode::ProtocolError, why))?;
        let obj = sh.lookup(req.object);
        let pinned = match &obj {
            Some(o) => o.pin(req.token, req.offset, req.span()),
            None => Err(Error::new(
                ErrorCode::ObjectNotExists,
                format!(
                    "BM object {} is not served by this rank (never joined here, left or destroyed)",
                    req.object
                ),
            )),
        };
        match (req.op, pinned) {
            (Op::Write, Ok(p)) => {
                let rows = Rows {
                    addr: p.addr,
                    pitch: req.pitch,
                    width: req.width,
                    rows: req.rows(),
                    device: p.device,
                };
                // SAFETY: `pin` validated the strided span inside one part of the window and
                // keeps it mapped (and writable) until `p` drops, after the receive.
                unsafe { recv_rows(s, &rows, &mut scratch) }.map_err(io("receiving WRITE data"))?;
                drop(p);
                let ok = Reply {
                    op: Op::Write,
                    seq: req.seq,
                    status: 0,
                    msg_len: 0,
                    len: 0,
                };
                send_reply(s, &ok, &[], false).map_err(io("acknowledging a WRITE"))?;
            }
            (Op::Write, Err(e)) => {
                discard(s, req.len, &mut scratch).map_err(io("discarding refused WRITE data"))?;
                debug!("transport: refused a WRITE: {e}");
                error_reply(s, &req, &e).map_err(io("refusing a WRITE"))?;
            }
            (Op::Read, Ok(p)) => {
                let rows = Rows {
                    addr: p.addr,
                    pitch: req.pitch,
                    width: req.width,
                    rows: req.rows(),
                    device: p.device,
                };
                let ok = Reply {
                    op: Op::Read,
                    seq: req.seq,
                    status: 0,
                    msg_len: 0,
                    len: req.len,
                };
                send_reply(s, &ok, &[], true).map_err(io("answering a READ"))?;
                // SAFETY: as for WRITE; the rows are readable while `p` is held.
                unsafe { send_rows(s, &rows, &mut scratch, false) }
                    .map_err(io("sending READ data"))?;
                drop(p);
            }
            (Op::Read, Err(e)) => {
                debug!("transport: refused a READ: {e}");
                error_reply(s, &req, &e).map_err(io("refusing a READ"))?;
            }
        }
    }
}

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
    /// Address of the first local row.
    pub(crate) local: u64,
    /// Distance between local rows.
    pub(crate) local_pitch: u64,
    /// Bytes per row.
    pub(crate) width: u64,
    /// Rows (1 for a 1D copy).
    pub(crate) height: u64,
    /// Set when the local memory is device memory.
    pub(crate) local_device: Option<&'a dyn Device>,
}

/// One request of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Piece {
    pub(super) remote: u64,
    pub(super) local: u64,
    pub(super) width: u64,
    pub(super) rows: u64,
}

/// Splits a transfer into requests of at most [`CHUNK`] bytes.
fn pieces(t: &Transfer<'_>) -> Vec<Piece> {
    let mut out = Vec::new();
    if t.width <= CHUNK {
        let per = (CHUNK / t.width).max(1);
        let mut r = 0;
        while r < t.height {
            let n = per.min(t.height - r);
            out.push(Piece {
                remote: t.remote_offset + r * t.remote_pitch,
                local: t.local.wrapping_add(r * t.local_pitch),
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
                    local: t.local.wrapping_add(r * t.local_pitch + k),
                    width: w,
                    rows: 1,
                });
                k += w;
            }
        }
    }
    out
}

/// A client connection.
#[derive(Debug)]
struct Conn {
    /// Keeps the socket out of forked children; declared first, so it is unregistered before
    /// the stream closes.
    _detach: DetachOnFork,
    stream: TcpStream,
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
        sys::net::send_slice(stream.as_fd(), &hello.emit(), false)
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
            _detach: DetachOnFork::new(stream.as_fd()),
            stream,
            tls,
            next_seq: 0,
        })
    }

    /// Runs `t` to completion: `Ok` only when every byte was acknowledged in place.
    ///
    /// # Safety
    /// Every local row of `t` (`local + i * local_pitch`, `width` bytes, `i < height`) must be
    /// readable (`Write`) or writable (`Read`) in the memory `local_device` names, for the call.
    pub(crate) unsafe fn transfer(&self, t: &Transfer<'_>, timeout: Duration) -> Result<()> {
        let pieces = pieces(t);
        let total = t.width.saturating_mul(t.height);
        // SAFETY: forwarded contract of this function.
        unsafe { self.run_pieces(t, &pieces, total, timeout) }
    }

    /// Runs `pieces` (of `total` bytes) of `t`: on one connection, or spread over several
    /// side by side when `total` is at least [`PARALLEL_MIN`].
    ///
    /// # Safety
    /// As [`Pool::transfer`], for the local rows of `pieces`.
    pub(super) unsafe fn run_pieces(
        &self,
        t: &Transfer<'_>,
        pieces: &[Piece],
        total: u64,
        timeout: Duration,
    ) -> Result<()> {
        let streams = if total >= PARALLEL_MIN {
            streams().min(pieces.len())
        } else {
            1
        };
        if streams <= 1 {
            // SAFETY: forwarded contract of this function.
            return unsafe { self.run_on_one(t, pieces, timeout) };
        }
        // Contiguous groups of requests, one connection each, run side by side.
        let per = pieces.len().div_ceil(streams);
        let results: Vec<Result<()>> = std::thread::scope(|scope| {
            let mut groups = pieces.chunks(per);
            let first = groups.next().unwrap_or(&[]);
            let others: Vec<_> = groups
                .map(|g| {
                    scope.spawn(move || {
                        // SAFETY: forwarded contract; the groups' local rows are disjoint.
                        unsafe { self.run_on_one(t, g, timeout) }
                    })
                })
                .collect();
            // SAFETY: as above.
            let mut out = vec![unsafe { self.run_on_one(t, first, timeout) }];
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
    ///
    /// # Safety
    /// As [`Pool::transfer`], for the local rows of `pieces`.
    unsafe fn run_on_one(
        &self,
        t: &Transfer<'_>,
        pieces: &[Piece],
        timeout: Duration,
    ) -> Result<()> {
        let mut attempt = 0;
        loop {
            let (conn, cached) = match self.take(t.peer) {
                Some(c) => (c, true),
                None => (self.connect(t.peer, t.rank, timeout)?, false),
            };
            let mut conn = conn;
            // SAFETY: forwarded contract of this function.
            let r = unsafe { run(&mut conn, t, pieces) };
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
/// Connections per large copy unless [`super::STREAMS_ENV`] says otherwise.
pub(crate) const DEFAULT_STREAMS: usize = 4;

/// Connections per large copy (read once).
fn streams() -> usize {
    static STREAMS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *crate::sync::get_or_init(&STREAMS, || {
        std::env::var(super::STREAMS_ENV)
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
    let proto = |why: &str| {
        Failure::Final(Error::new(
            ErrorCode::ProtocolError,
            format!("{}'s data endpoint {}: {why}", peer_label(t.rank), t.peer),
        ))
    };
    let reply = Reply::parse(&b).map_err(proto)?;
    if reply.op != op || reply.seq != seq {
        return Err(proto("reply out of order"));
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

/// Runs the requests of `t` on `c`.
///
/// # Safety
/// As [`Pool::transfer`].
unsafe fn run(
    c: &mut Conn,
    t: &Transfer<'_>,
    pieces: &[Piece],
) -> std::result::Result<(), Failure> {
    let mut scratch = Vec::new();
    let request = |c: &mut Conn, p: &Piece| {
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
        (seq, req.emit())
    };
    let local = |p: &Piece| Rows {
        addr: p.local,
        pitch: if p.rows > 1 { t.local_pitch } else { p.width },
        width: p.width,
        rows: p.rows,
        device: t.local_device,
    };
    let mut waiting = std::collections::VecDeque::new();
    match t.op {
        Op::Write => {
            for p in pieces {
                let (seq, hdr) = request(c, p);
                c.link()
                    .send(&hdr, true)
                    .map_err(|e| link_err(t, "sending a WRITE", &e))?;
                // SAFETY: the local rows are readable by the caller's contract.
                unsafe { send_rows(&mut c.link(), &local(p), &mut scratch, false) }
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
                // SAFETY: the local rows are writable by the caller's contract.
                unsafe { recv_rows(&mut c.link(), &local(p), &mut scratch) }
                    .map_err(|e| link_err(t, "receiving READ data", &e))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Instant;

    use super::*;

    /// A served window over a plain buffer.
    struct Fake {
        buf: Mutex<Vec<u8>>,
        addr: u64,
        len: u64,
        token: u64,
    }

    impl Fake {
        fn new(len: usize, token: u64) -> Arc<Self> {
            let mut v = vec![0u8; len];
            let addr = v.as_mut_ptr() as u64;
            Arc::new(Self {
                buf: Mutex::new(v),
                addr,
                len: len as u64,
                token,
            })
        }

        fn bytes(&self, at: usize, n: usize) -> Vec<u8> {
            lock(&self.buf)[at..at + n].to_vec()
        }
    }

    impl Served for Fake {
        fn pin(&self, token: u64, offset: u64, span: u64) -> Result<Pinned<'_>> {
            if token != self.token {
                return Err(Error::new(ErrorCode::ObjectNotExists, "other generation"));
            }
            if offset.checked_add(span).is_none_or(|e| e > self.len) {
                return Err(Error::invalid("outside the window"));
            }
            Ok(Pinned {
                addr: self.addr + offset,
                device: None,
                _hold: Box::new(()),
            })
        }
    }

    const T: Duration = Duration::from_secs(5);

    fn xfer(peer: SocketAddr, op: Op, off: u64, local: &mut [u8], token: u64) -> Transfer<'static> {
        Transfer {
            peer,
            rank: 1,
            object: 7,
            token,
            op,
            remote_offset: off,
            remote_pitch: local.len() as u64,
            local: local.as_mut_ptr() as u64,
            local_pitch: local.len() as u64,
            width: local.len() as u64,
            height: 1,
            local_device: None,
        }
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
        // 5 MiB + 3: several chunks, pipelined.
        let mut data: Vec<u8> = (0..(5 << 20) + 3).map(|i| (i % 251) as u8).collect();
        // SAFETY: `data` is a live buffer for the whole call.
        unsafe { pool.transfer(&xfer(peer, Op::Write, 1000, &mut data, 5), T) }.expect("write");
        assert!(fake.bytes(1000, data.len()) == data);
        let mut back = vec![0u8; data.len()];
        // SAFETY: as above.
        unsafe { pool.transfer(&xfer(peer, Op::Read, 1000, &mut back, 5), T) }.expect("read");
        assert!(back == data);
        // 2D: 3 rows of 10 bytes, remote pitch 100, local pitch 16.
        let mut rows = [0u8; 42];
        for (i, b) in rows.iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        let mut t = xfer(peer, Op::Write, 50, &mut rows, 5);
        (t.width, t.height, t.remote_pitch, t.local_pitch) = (10, 3, 100, 16);
        // SAFETY: 3 rows of 10 bytes at pitch 16 lie inside `rows` (42 bytes).
        unsafe { pool.transfer(&t, T) }.expect("2d");
        assert_eq!(fake.bytes(150, 10), rows[16..26]);
        assert_eq!(fake.bytes(250, 10), rows[32..42]);
        // Refusals: wrong generation, out of range, unknown object; the link stays usable.
        let mut one = [9u8; 16];
        // SAFETY: `one` is live.
        let e = unsafe { pool.transfer(&xfer(peer, Op::Write, 0, &mut one, 6), T) }
            .expect_err("stale token");
        assert_eq!(e.code(), ErrorCode::ObjectNotExists, "{e}");
        // SAFETY: `one` is live.
        let e = unsafe { pool.transfer(&xfer(peer, Op::Read, (8 << 20) - 8, &mut one, 5), T) }
            .expect_err("past the end");
        assert_eq!(e.code(), ErrorCode::InvalidParam, "{e}");
        let mut t = xfer(peer, Op::Write, 0, &mut one, 5);
        t.object = 8;
        // SAFETY: `one` is live.
        let e = unsafe { pool.transfer(&t, T) }.expect_err("unknown object");
        assert_eq!(e.code(), ErrorCode::ObjectNotExists, "{e}");
        assert_eq!(
            fake.bytes(0, 16),
            [0u8; 16],
            "refused writes touched the window"
        );
        // SAFETY: `one` is live.
        unsafe { pool.transfer(&xfer(peer, Op::Write, 0, &mut one, 5), T) }
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
        let server =
            Server::start("127.0.0.1".parse().expect("ip"), T, server_tls).expect("server");
        let fake = Fake::new(1 << 20, 5);
        server.serve(7, Arc::downgrade(&fake) as Weak<dyn Served>);
        let pool = Pool::new(client_tls);
        let mut one = [4u8; 64];
        // SAFETY: `one` is live.
        unsafe { pool.transfer(&xfer(server.addr(), Op::Write, 0, &mut one, 5), T) }
            .expect("first");
        for (_, (_, c)) in lock(&server.shared.conns).iter() {
            let _ = c.shutdown(Shutdown::Both);
        }
        std::thread::sleep(Duration::from_millis(50));
        let mut two = [5u8; 64];
        // SAFETY: `two` is live.
        unsafe { pool.transfer(&xfer(server.addr(), Op::Write, 64, &mut two, 5), T) }
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
        s.write_all(&hello.emit()).expect("hello");
        let mut hb = [0u8; HELLO_LEN];
        s.read_exact(&mut hb).expect("hello answer");
        assert_eq!(Hello::parse(&hb).expect("hello").status, 0);
        let mut bad = [0u8; REQUEST_LEN];
        bad[0] = super::super::wire::REQUEST_MAGIC;
        bad[1] = 77;
        s.write_all(&bad).expect("garbage");
        assert!(closed(&mut s));
        // A hello asking for TLS is refused.
        let mut s = TcpStream::connect(server.addr()).expect("connect");
        let tls = Hello {
            flags: FLAG_TLS,
            ..hello
        };
        s.write_all(&tls.emit()).expect("hello");
        s.read_exact(&mut hb).expect("hello answer");
        assert_eq!(
            Hello::parse(&hb).expect("hello").status,
            ErrorCode::NotSupported.code()
        );
        assert!(closed(&mut s));
        // Still serving.
        let pool = Pool::default();
        let mut one = [3u8; 8];
        // SAFETY: `one` is live.
        unsafe { pool.transfer(&xfer(server.addr(), Op::Write, 8, &mut one, 5), T) }.expect("ok");
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
        let mut data: Vec<u8> = (0..(5 << 20) + 3).map(|i| (i % 253) as u8).collect();
        // SAFETY: `data` is a live buffer for the whole call.
        unsafe { pool.transfer(&xfer(peer, Op::Write, 1000, &mut data, 5), T) }.expect("write");
        assert!(fake.bytes(1000, data.len()) == data);
        let mut back = vec![0u8; data.len()];
        // SAFETY: as above.
        unsafe { pool.transfer(&xfer(peer, Op::Read, 1000, &mut back, 5), T) }.expect("read");
        assert!(back == data);
        // 2D with small rows (gathered) and a refusal on the same TLS connection.
        let mut rows = [0u8; 42];
        for (i, b) in rows.iter_mut().enumerate() {
            *b = i as u8 + 100;
        }
        let mut t = xfer(peer, Op::Write, 50, &mut rows, 5);
        (t.width, t.height, t.remote_pitch, t.local_pitch) = (10, 3, 100, 16);
        // SAFETY: 3 rows of 10 bytes at pitch 16 lie inside `rows` (42 bytes).
        unsafe { pool.transfer(&t, T) }.expect("2d");
        assert_eq!(fake.bytes(250, 10), rows[32..42]);
        let mut one = [9u8; 16];
        // SAFETY: `one` is live.
        let e = unsafe { pool.transfer(&xfer(peer, Op::Write, 0, &mut one, 6), T) }
            .expect_err("stale token");
        assert_eq!(e.code(), ErrorCode::ObjectNotExists, "{e}");

        let refused = |pool: &Pool, peer: SocketAddr| {
            let mut one = [7u8; 16];
            let start = Instant::now();
            // SAFETY: `one` is live.
            let e = unsafe { pool.transfer(&xfer(peer, Op::Write, 0, &mut one, 5), T) }
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
        s.write_all(&hello.emit()).expect("hello");
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
        // SAFETY: `ok` is live.
        unsafe { pool.transfer(&xfer(peer, Op::Write, 0, &mut ok, 5), T) }.expect("still serving");
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
            s.write_all(&ok.emit()).expect("answer");
            // Take 1 MiB of the copy, then die.
            let mut sink = vec![0u8; 1 << 20];
            s.read_exact(&mut sink).expect("some data");
        });
        let pool = Pool::default();
        let mut data = vec![1u8; 16 << 20];
        let start = Instant::now();
        // SAFETY: `data` is live.
        let e = unsafe { pool.transfer(&xfer(peer, Op::Write, 0, &mut data, 5), T) }
            .expect_err("a cut-off copy is not a success");
        assert!(
            matches!(e.code(), ErrorCode::IoError | ErrorCode::Timeout),
            "{e}"
        );
        assert!(start.elapsed() < T, "took {:?}", start.elapsed());
        t.join().expect("fake peer");
    }

    fn transfer(width: u64, height: u64, rp: u64, lp: u64) -> Transfer<'static> {
        Transfer {
            peer: "127.0.0.1:1".parse().expect("addr"),
            rank: 1,
            object: 0,
            token: 1,
            op: Op::Write,
            remote_offset: 100,
            remote_pitch: rp,
            local: 1000,
            local_pitch: lp,
            width,
            height,
            local_device: None,
        }
    }

    #[test]
    fn pieces_cover_every_byte_once() {
        let p = pieces(&transfer(5 * CHUNK / 2, 1, 0, 0));
        assert_eq!(
            p.iter().map(|x| (x.remote, x.width)).collect::<Vec<_>>(),
            [
                (100, CHUNK),
                (100 + CHUNK, CHUNK),
                (100 + 2 * CHUNK, CHUNK / 2)
            ]
        );
        let p = pieces(&transfer(4096, 1, 4096, 4096));
        assert_eq!(
            p,
            [Piece {
                remote: 100,
                local: 1000,
                width: 4096,
                rows: 1
            }]
        );
        // Rows grouped up to CHUNK bytes per request.
        let rows = 3 * CHUNK / 1000;
        let p = pieces(&transfer(1000, rows, 3000, 1200));
        assert_eq!(p.iter().map(|x| x.rows).sum::<u64>(), rows);
        assert!(p.iter().all(|x| x.rows * x.width <= CHUNK));
        assert_eq!(p[1].remote, 100 + p[0].rows * 3000);
        assert_eq!(p[1].local, 1000 + p[0].rows * 1200);
        // Rows wider than a chunk are split per row.
        let p = pieces(&transfer(CHUNK + 1, 2, 2 * CHUNK, 3 * CHUNK));
        assert_eq!(p.len(), 4);
        assert_eq!(p[2].remote, 100 + 2 * CHUNK);
        assert_eq!(p[3].local, 1000 + 3 * CHUNK + CHUNK);
        assert_eq!(p[3].width, 1);
    }
}
