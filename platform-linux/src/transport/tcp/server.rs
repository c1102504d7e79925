//! The server side: a listener, its accept thread and one thread per connection, serving the
//! windows registered with [`Server::serve`] (each request validated before any byte moves).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, warn};
use smem_core::ErrorCode;
use smem_core::wire::transport::{
    FLAG_TLS, HELLO_LEN, Hello, MAX_MESSAGE_LEN, Op, REQUEST_LEN, Reply, Request, VERSION,
};

use super::link::{Link, Rows, TlsWire, discard, recv_rows, send_rows, set_timeouts};
use super::{CONN_STACK, IDLE_CLOSE, MAX_CONNECTIONS};
use crate::device::{Device, RawRange};
use crate::sync::lock;
use crate::sys;
use crate::sys::fork::Detached;
use crate::sys::net::NoSigPipe;
use crate::tls::LoadedTls;
use crate::{Error, Result};

/// A range of a served window, pinned while one request moves its bytes.
pub(crate) struct Pinned<'a> {
    /// The pinned bytes in this process (the whole span of the request).
    pub(crate) range: RawRange<'a>,
    /// Set when the range is device memory: bytes move through this device's copy engine.
    pub(crate) device: Option<&'a dyn Device>,
}

/// A window this process serves (the BM object and the transfer engine implement it).
pub(crate) trait Served: Send + Sync {
    /// Pins `span` bytes at `offset` from the start of the window whose current generation is
    /// `token` and runs `io` on them; they stay valid (mapped, registered) until `io` returns.
    ///
    /// # Errors
    /// `SM_OBJECT_NOT_EXISTS` when the window is not served (left, destroyed, other generation),
    /// `SM_INVALID_PARAM` when the range does not lie in one part of the window; `io` did not
    /// run then.
    fn pinned(&self, token: u64, offset: u64, span: u64, io: PinnedIo<'_>) -> Result<()>;
}

/// What a request does with its pinned range ([`Served::pinned`]).
pub(crate) type PinnedIo<'f> = &'f mut dyn FnMut(Pinned<'_>);

/// What the server threads share.
pub(super) struct ServerShared {
    served: Mutex<HashMap<u32, Weak<dyn Served>>>,
    /// Clones of the open connections, to shut them down (each kept out of forked children).
    pub(super) conns: Mutex<HashMap<u64, Detached<TcpStream>>>,
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
    pub(super) shared: Arc<ServerShared>,
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
        // Forked children must not keep the port open after we die.
        let listener = Detached::new(listener);
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
        for (_, c) in lock(&self.shared.conns).drain() {
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
    for incoming in listener.incoming() {
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        // Forked children must not keep connections open after we die.
        let stream = match incoming {
            Ok(s) => Detached::new(s),
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
                    conns.insert(id, Detached::new(c));
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
                if let Err(why) = serve_conn(&stream, &sh2) {
                    if !sh2.stop.load(Ordering::SeqCst) {
                        warn!("transport: closing the connection from {peer}: {why}");
                    }
                }
                let _ = stream.shutdown(Shutdown::Both);
                lock(&sh2.conns).remove(&id);
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
    s.send(&reply.to_bytes(), more || !msg.is_empty())?;
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

/// The window rows request `req` names inside the range `p` pinned for it.
fn window_rows<'a>(req: &Request, p: &Pinned<'a>) -> Rows<'a> {
    Rows {
        range: p.range,
        pitch: req.pitch,
        width: req.width,
        rows: req.rows(),
        device: p.device,
    }
}

/// Serves one connection until it closes. `Err` = a reason to log.
fn serve_conn(s: &TcpStream, sh: &ServerShared) -> Result<()> {
    set_timeouts(s, sh.timeout).map_err(|e| Error::io("configuring the socket", &e))?;
    let mut hb = [0u8; HELLO_LEN];
    sys::net::recv_slice(s.as_fd(), &mut hb).map_err(|e| Error::io("reading the hello", &e))?;
    let hello =
        Hello::parse(&hb).map_err(|why| Error::new(ErrorCode::ProtocolError, why.to_string()))?;
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
    sys::net::send_slice(s.as_fd(), &answer.to_bytes(), false)
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
        let req = Request::parse(&hdr)
            .map_err(|why| Error::new(ErrorCode::ProtocolError, why.to_string()))?;
        let obj = sh.lookup(req.object);
        let ok = Reply {
            op: req.op,
            seq: req.seq,
            status: 0,
            msg_len: 0,
            len: if req.op == Op::Read { req.len } else { 0 },
        };
        // The data moved while the range is pinned (a WRITE is acknowledged after).
        let mut moved = Ok(());
        let mut io_on = |p: Pinned<'_>| {
            let rows = window_rows(&req, &p);
            moved = match req.op {
                Op::Write => recv_rows(s, &rows, &mut scratch).map_err(io("receiving WRITE data")),
                Op::Read => send_reply(s, &ok, &[], true)
                    .map_err(io("answering a READ"))
                    .and_then(|()| {
                        send_rows(s, &rows, &mut scratch, false).map_err(io("sending READ data"))
                    }),
            };
        };
        let pinned = match &obj {
            Some(o) => o.pinned(req.token, req.offset, req.span(), &mut io_on),
            None => Err(Error::new(
                ErrorCode::ObjectNotExists,
                format!(
                    "BM object {} is not served by this rank (never joined here, left or destroyed)",
                    req.object
                ),
            )),
        };
        match (req.op, pinned) {
            (Op::Write, Ok(())) => {
                moved?;
                send_reply(s, &ok, &[], false).map_err(io("acknowledging a WRITE"))?;
            }
            (Op::Write, Err(e)) => {
                discard(s, req.len, &mut scratch).map_err(io("discarding refused WRITE data"))?;
                debug!("transport: refused a WRITE: {e}");
                error_reply(s, &req, &e).map_err(io("refusing a WRITE"))?;
            }
            (Op::Read, Ok(())) => moved?,
            (Op::Read, Err(e)) => {
                debug!("transport: refused a READ: {e}");
                error_reply(s, &req, &e).map_err(io("refusing a READ"))?;
            }
        }
    }
}
