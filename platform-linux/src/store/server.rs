//! The config store server (SPEC 5): one event-loop thread owning every link and all state.
//!
//! Invariants: only the loop thread touches the `State`; every request either gets a reply, is
//! one of the ops the protocol leaves unanswered (WATCH on an absent key, WATCH_RANK_STATE,
//! HEARTBEAT, UNWATCH), or its link is closed with a logged reason. Every wire length is
//! checked against the bytes present and the configured [`Limits`] before anything is
//! allocated for it. Deadlines use saturating arithmetic.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use smem_core::ErrorCode;
use smem_core::wire::handshake::{self, Handshake};
use smem_core::wire::message::{self, MessageHeader};
use smem_core::wire::{
    FRAME_HEADER_LEN, FrameHeader, HANDSHAKE_LEN, MessageType, MessageView, status,
};

use super::{AUTO_RANKING_PREFIX, HEARTBEAT_ENV, WATCH_RANK_DOWN_KEY};
use crate::sys::fork::DetachOnFork;
use crate::sys::net::{EPOLL_HUP_ERR, EPOLL_IN, EPOLL_OUT, Epoll, EventFd, NoSigPipe, Ready};
use crate::tls::{LoadedTls, ServerTlsSession};
use crate::{Error, Result};

/// Configurable limits. Over a limit a request gets `-400` with a reason (or, for links, the
/// handshake gets `-1`); the server keeps serving the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Links open at once (handshaken or not). Reference: 2048.
    pub max_links: usize,
    /// Largest frame body accepted (at most 64 MiB).
    pub max_body_len: u32,
    /// Most keys (and most values) in one message (at most 1024).
    pub max_keys: usize,
    /// Longest key (at most 2048).
    pub max_key_len: usize,
    /// Largest stored value, after APPEND/WRITE growth too.
    pub max_value_len: usize,
    /// Total bytes of keys and values stored.
    pub max_total_bytes: u64,
    /// Bytes of replies queued for one link that does not read; over it the link is closed.
    pub max_write_queue: usize,
    /// Parked GETs plus watches per link.
    pub max_waiters_per_link: usize,
    /// Bytes reserved, over all links, for request bodies larger than 64 KiB that are still
    /// arriving. A link whose next body does not fit waits (it is not read) until others
    /// complete; small requests are never held back. A body larger than this is refused.
    pub max_input_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_links: 2048,
            max_body_len: smem_core::wire::MAX_BODY_LEN,
            max_keys: 1024,
            max_key_len: 2048,
            max_value_len: 64 << 20,
            max_total_bytes: 4 << 30,
            max_write_queue: 256 << 20,
            max_waiters_per_link: 65_536,
            max_input_bytes: 1 << 30,
        }
    }
}

/// Server configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on (port 0 = any free port; read it back with
    /// [`StoreServer::local_addr`]).
    pub listen: SocketAddr,
    /// Limits.
    pub limits: Limits,
    /// A link that sent one HEARTBEAT and then none for this long is closed; `None` = off.
    pub heartbeat_timeout: Option<Duration>,
    /// How often heartbeats are checked (the reference: 2 s). Capped at half the timeout.
    pub heartbeat_check_interval: Duration,
    /// A connection must complete its 16-byte handshake (and, with TLS, the TLS handshake)
    /// within this.
    pub handshake_timeout: Duration,
    /// Mutual TLS (SPEC 2.1): the 16-byte header in clear, then TLS 1.3 with a client
    /// certificate required; the `i16` reply and every frame inside TLS (the reference's
    /// order, see [`crate::tls`]). `None`: plain TCP. [`ServerConfig::new`] takes the
    /// process-wide setting ([`crate::tls::set_global`], i.e. `smem_set_ssl_option`), so a
    /// store created after TLS was enabled cannot come up in clear by omission.
    pub tls: Option<Arc<LoadedTls>>,
}

impl ServerConfig {
    /// Defaults for `listen`: heartbeat timeout from `MF_CONFIG_STORE_HEARTBEAT_TIMEOUT_S`
    /// (default 60 s, 0 = off), 10 s handshake timeout, default limits, the process-wide TLS
    /// setting ([`crate::tls::global`]).
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            limits: Limits::default(),
            heartbeat_timeout: heartbeat_timeout_from_env(),
            heartbeat_check_interval: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(10),
            tls: crate::tls::global(),
        }
    }
}

impl Default for ServerConfig {
    /// [`ServerConfig::new`] on `127.0.0.1:0`.
    fn default() -> Self {
        Self::new(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

/// The heartbeat timeout of `MF_CONFIG_STORE_HEARTBEAT_TIMEOUT_S` (default 60 s; 0 = off). An
/// unparseable value is logged and the default is used.
pub fn heartbeat_timeout_from_env() -> Option<Duration> {
    match std::env::var(HEARTBEAT_ENV) {
        Err(_) => Some(Duration::from_secs(60)),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(0) => None,
            Ok(s) => Some(Duration::from_secs(s)),
            Err(_) => {
                warn!("{HEARTBEAT_ENV}={v:?} is not a number of seconds; using 60");
                Some(Duration::from_secs(60))
            }
        },
    }
}

/// A running server; dropping it shuts it down.
#[derive(Debug)]
pub struct StoreServer {
    addr: SocketAddr,
    waker: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl StoreServer {
    /// Bind, then serve on a new thread.
    ///
    /// # Errors
    /// `SM_IO_ERROR` when the address cannot be bound or the event loop cannot be set up.
    pub fn start(config: ServerConfig) -> Result<Self> {
        let listener = TcpListener::bind(config.listen).map_err(|e| {
            Error::io(
                format!("config store cannot listen on {}", config.listen),
                &e,
            )
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("config store local address", &e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("config store listener", &e))?;
        crate::sys::net::set_listen_backlog(listener.as_fd(), crate::sys::net::LISTEN_BACKLOG)
            .map_err(|e| Error::io("config store listen backlog", &e))?;
        let epoll = Epoll::new().map_err(|e| Error::io("config store epoll", &e))?;
        let waker = Arc::new(EventFd::new().map_err(|e| Error::io("config store eventfd", &e))?);
        epoll
            .add(listener.as_raw_fd(), TOKEN_LISTENER, EPOLL_IN)
            .and_then(|()| epoll.add(waker.raw(), TOKEN_WAKER, EPOLL_IN))
            .map_err(|e| Error::io("config store epoll registration", &e))?;
        let mut ev = EventLoop::new(config, listener, epoll, Arc::clone(&waker));
        let thread = std::thread::Builder::new()
            .name("smem-store".into())
            .spawn(move || ev.run())
            .map_err(|e| {
                Error::new(
                    ErrorCode::IoError,
                    format!("cannot spawn store thread: {e}"),
                )
            })?;
        info!("config store listening on {addr}");
        Ok(Self {
            addr,
            waker,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop serving, close every link and join the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.waker.signal();
            if t.join().is_err() {
                warn!("config store thread panicked");
            }
        }
    }
}

impl Drop for StoreServer {
    fn drop(&mut self) {
        self.stop();
    }
}

const TOKEN_LISTENER: u64 = 0;
const TOKEN_WAKER: u64 = 1;
const FIRST_LINK: u64 = 2;
/// Links accepted past `max_links` only to answer their handshake with `-1`.
const OVER_LIMIT_GRACE: usize = 64;
const READ_CHUNK: usize = 64 * 1024;
/// Bodies up to this size are read without a reservation from `max_input_bytes`.
const SMALL_BODY: usize = 64 * 1024;
/// Bytes read from one link per wake-up before others get a turn.
const READ_BUDGET: usize = 4 << 20;
const WRITE_LIMIT_TOTAL: u64 = 1 << 30;
const ONE_GIB: u64 = 1 << 30;
/// Plaintext handed to a TLS session per step of `flush` (a few TLS records).
const TLS_WRITE_CHUNK: usize = 64 * 1024;
/// How long a TLS store waits for the first byte of the ClientHello after a link's clear
/// header (at most the handshake timeout). TLS clients (ours, the reference's) send it at
/// once; a plaintext client waits for the reply instead and gets a clear refusal this soon.
const TLS_HELLO_WAIT: Duration = Duration::from_secs(1);
/// The content type of a TLS handshake record: the first byte a TLS client sends.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
const NO_CLIENT_HELLO: &str =
    "peer sent no TLS ClientHello after its hello: a plaintext client talking to a TLS store?";
/// Reference texts for wrong key/value counts.
const ONE_KEY_NO_VALUES: &str = "invalid request: key should be one and no values.";
const KEY_AND_VALUE_ONE: &str = "invalid request: key & value should be one.";

type LinkId = u64;

struct Link {
    /// Keeps `stream` out of forked children; declared first, so it is dropped (unregistered)
    /// before the stream closes.
    _detach: DetachOnFork,
    stream: TcpStream,
    peer: SocketAddr,
    handshaken: bool,
    /// Accepted past `max_links`: its handshake is answered `-1` (as the reference does).
    over_limit: bool,
    rank: Option<u32>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    want_write: bool,
    /// Close once the write buffer is flushed (after a refusing reply).
    close_after_flush: Option<String>,
    last_heartbeat: Option<Instant>,
    /// Keys this link watches, with the registering seqNo.
    watches: HashMap<Vec<u8>, u32>,
    rank_watch: Option<u32>,
    parked: usize,
    /// Bytes of `max_input_bytes` reserved for the large body at the head of `rbuf`.
    reserved: usize,
    /// Not read (no EPOLLIN) until a reservation fits.
    paused: bool,
    /// TLS state once the clear-text header arrived on a TLS server.
    tls: Option<LinkTls>,
}

/// A link's TLS session and the store handshake waiting for the TLS handshake to finish.
struct LinkTls {
    session: ServerTlsSession,
    /// The clear-text header, processed once the peer's certificate is verified.
    pending: Option<Handshake>,
    /// TLS bytes read from the socket together with the header, not yet fed.
    prefix: Vec<u8>,
    /// Whether the first TLS byte arrived (and was a handshake record: else the link is
    /// refused as a plaintext client).
    seen_input: bool,
    /// `close_notify` queued after the last reply of a refused or closing link.
    closing: bool,
}

impl Link {
    fn interest(&self) -> u32 {
        let mut ev = EPOLL_HUP_ERR;
        if !self.paused {
            ev |= EPOLL_IN;
        }
        if self.want_write {
            ev |= EPOLL_OUT;
        }
        ev
    }

    /// Body length of an incomplete large frame at the head of the read buffer, else 0.
    fn head_need(&self) -> usize {
        if !self.handshaken {
            return 0;
        }
        match FrameHeader::parse(&self.rbuf) {
            Ok(h)
                if h.body_len as usize > SMALL_BODY
                    && self.rbuf.len() < FRAME_HEADER_LEN + h.body_len as usize =>
            {
                h.body_len as usize
            }
            _ => 0,
        }
    }
}

struct Parked {
    link: LinkId,
    seq: u32,
    key: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Parked(u64),
    Handshake(LinkId),
    /// A TLS link must have sent the first byte of its ClientHello by now.
    TlsHello(LinkId),
    HeartbeatScan,
}

struct State {
    data: HashMap<Vec<u8>, Vec<u8>>,
    stored_bytes: u64,
    parked: HashMap<u64, Parked>,
    parked_by_key: HashMap<Vec<u8>, Vec<u64>>,
    next_parked: u64,
    watchers: HashMap<Vec<u8>, HashMap<LinkId, u32>>,
    ranks: HashMap<u32, LinkId>,
    world_size: Option<u32>,
    cursor: u32,
}

struct EventLoop {
    config: ServerConfig,
    /// Keeps `listener` out of forked children (a child must not hold the port); declared
    /// before it, so it is unregistered before the listener closes.
    _detach_listener: DetachOnFork,
    listener: TcpListener,
    epoll: Epoll,
    waker: Arc<EventFd>,
    links: HashMap<LinkId, Link>,
    next_link: LinkId,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    st: State,
    /// Links with queued output to flush at the end of this turn.
    dirty: Vec<LinkId>,
    /// Links to close at the end of this turn, with the reason.
    doomed: Vec<(LinkId, String)>,
    /// Sum of `Link::reserved`.
    input_reserved: usize,
    /// Links waiting for a reservation, first come first served.
    paused: std::collections::VecDeque<LinkId>,
    /// Every read lands here first and only the bytes received are appended to the link's
    /// buffer, so a link holds no spare (zero-filled, hence resident) read capacity: 64 KiB
    /// per idle link would pin 128 MiB at 2048 links, outside every limit.
    scratch: Vec<u8>,
}

/// What one request produced: nothing, or a reply.
enum Outcome {
    None,
    Text(i16, &'static str),
    Owned(i16, String),
    Packed(MessageType, Vec<Vec<u8>>),
    PackedKv(MessageType, Vec<Vec<u8>>, Vec<Vec<u8>>),
}

fn not_client_hello(first: u8) -> String {
    format!(
        "peer sent {first:#04x} after its hello, not a TLS ClientHello (0x16): a plaintext \
         client talking to a TLS store?"
    )
}

fn encode_frame(seq: u32, status: i16, body_len: usize, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    let body_len32 = u32::try_from(body_len).unwrap_or(u32::MAX);
    out.resize(start + FRAME_HEADER_LEN, 0);
    // The slice is exactly FRAME_HEADER_LEN long.
    let _ = FrameHeader::new(status, body_len32, seq).emit(&mut out[start..]);
    start
}

fn append_packed(
    out: &mut Vec<u8>,
    seq: u32,
    st: i16,
    mt: MessageType,
    keys: &[&[u8]],
    values: &[&[u8]],
) {
    let len = message::encoded_len(keys.iter().copied(), values.iter().copied());
    encode_frame(seq, st, len, out);
    let at = out.len();
    out.resize(at + len, 0);
    // Sized with encoded_len just above, so it fits.
    let _ = message::emit(
        &MessageHeader::reply(mt),
        keys.iter().copied(),
        values.iter().copied(),
        &mut out[at..],
    );
}

fn append_text(out: &mut Vec<u8>, seq: u32, st: i16, text: &[u8]) {
    encode_frame(seq, st, text.len(), out);
    out.extend_from_slice(text);
}

/// `strtoll`-like parse used for the stored value of ADD: leading whitespace, sign, digits, stops
/// at the first non-digit; no digits, overflow, or a 0 not spelled "0" are refused (SPEC 5.4).
fn parse_stored_i64(b: &[u8]) -> Option<i64> {
    let (v, digits) = parse_lenient(b)?;
    if digits == 0 || (v == 0 && b != b"0") {
        return None;
    }
    Some(v)
}

/// Leading whitespace, optional sign, digits until the first non-digit: (value, digit count).
/// `None` on overflow.
fn parse_lenient(b: &[u8]) -> Option<(i64, usize)> {
    let mut i = b
        .iter()
        .take_while(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
        .count();
    let neg = match b.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let mut v: i64 = 0;
    let mut n = 0;
    while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
        let d = i64::from(d - b'0');
        v = v.checked_mul(10)?;
        v = if neg {
            v.checked_sub(d)?
        } else {
            v.checked_add(d)?
        };
        i += 1;
        n += 1;
    }
    Some((v, n))
}

/// The ADD increment: must parse entirely, and be canonical.
enum Increment {
    Ok(i64),
    NonCanonical,
    Unparseable,
}

fn parse_increment(b: &[u8]) -> Increment {
    match parse_lenient(b) {
        Some((v, n)) if n > 0 => {
            let canon = v.to_string();
            if canon.as_bytes() == b {
                Increment::Ok(v)
            } else {
                // Does the whole text parse (whitespace/sign/digits only)?
                let ws = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
                let rest = &b[ws..];
                let rest = rest
                    .strip_prefix(b"+")
                    .or_else(|| rest.strip_prefix(b"-"))
                    .unwrap_or(rest);
                if !rest.is_empty() && rest.iter().all(u8::is_ascii_digit) {
                    Increment::NonCanonical
                } else {
                    Increment::Unparseable
                }
            }
        }
        _ => Increment::Unparseable,
    }
}

impl EventLoop {
    fn new(config: ServerConfig, listener: TcpListener, epoll: Epoll, waker: Arc<EventFd>) -> Self {
        let mut timers = BinaryHeap::new();
        if let Some(iv) = Self::heartbeat_interval(&config) {
            if let Some(at) = Instant::now().checked_add(iv) {
                timers.push(Reverse((at, Timer::HeartbeatScan)));
            }
        }
        Self {
            config,
            _detach_listener: DetachOnFork::new(listener.as_fd()),
            listener,
            epoll,
            waker,
            links: HashMap::new(),
            next_link: FIRST_LINK,
            timers,
            st: State {
                data: HashMap::new(),
                stored_bytes: 0,
                parked: HashMap::new(),
                parked_by_key: HashMap::new(),
                next_parked: 0,
                watchers: HashMap::new(),
                ranks: HashMap::new(),
                world_size: None,
                cursor: 0,
            },
            dirty: Vec::new(),
            doomed: Vec::new(),
            input_reserved: 0,
            paused: std::collections::VecDeque::new(),
            scratch: vec![0; READ_CHUNK],
        }
    }

    fn heartbeat_interval(config: &ServerConfig) -> Option<Duration> {
        let t = config.heartbeat_timeout?;
        let iv = config
            .heartbeat_check_interval
            .min(t / 2)
            .max(Duration::from_millis(5));
        Some(iv)
    }

    fn run(&mut self) {
        let mut ready = [Ready::default(); 256];
        loop {
            let timeout = self
                .timers
                .peek()
                .map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()));
            let n = match self.epoll.wait(&mut ready, timeout) {
                Ok(n) => n,
                Err(e) => {
                    warn!("config store epoll_wait failed, stopping: {e}");
                    break;
                }
            };
            let mut stop = false;
            for r in &ready[..n] {
                match r.token {
                    TOKEN_LISTENER => self.accept(),
                    TOKEN_WAKER => stop = true,
                    id => self.link_event(id, r.events),
                }
            }
            if stop {
                self.waker.drain();
                break;
            }
            self.fire_timers();
            self.finish_turn();
        }
        info!(
            "config store on {} shutting down, closing {} links",
            self.config.listen,
            self.links.len()
        );
        // Dropping the links closes every socket.
        self.links.clear();
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    let open = self.links.len();
                    let over = open >= self.config.limits.max_links;
                    if over
                        && open
                            >= self
                                .config
                                .limits
                                .max_links
                                .saturating_add(OVER_LIMIT_GRACE)
                    {
                        warn!("config store: dropping {peer}: {open} links open (max_links)");
                        continue;
                    }
                    if let Err(e) = self.add_link(stream, peer, over) {
                        warn!("config store: cannot register link from {peer}: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // E.g. EMFILE: log and retry on the next wake-up, never spin hot forever.
                    warn!("config store accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn add_link(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        over_limit: bool,
    ) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let _ = stream.set_nodelay(true);
        let id = self.next_link;
        self.next_link += 1;
        self.epoll
            .add(stream.as_raw_fd(), id, EPOLL_IN | EPOLL_HUP_ERR)?;
        debug!("config store: link {id} from {peer}");
        self.links.insert(
            id,
            Link {
                _detach: DetachOnFork::new(stream.as_fd()),
                stream,
                peer,
                handshaken: false,
                over_limit,
                rank: None,
                rbuf: Vec::new(),
                wbuf: Vec::new(),
                wpos: 0,
                want_write: false,
                close_after_flush: None,
                last_heartbeat: None,
                watches: HashMap::new(),
                rank_watch: None,
                parked: 0,
                reserved: 0,
                paused: false,
                tls: None,
            },
        );
        let at = Instant::now().checked_add(self.config.handshake_timeout);
        if let Some(at) = at {
            self.timers.push(Reverse((at, Timer::Handshake(id))));
        }
        Ok(())
    }

    fn link_event(&mut self, id: LinkId, events: u32) {
        if events & EPOLL_OUT != 0 {
            self.dirty.push(id);
        }
        if events & (EPOLL_IN | EPOLL_HUP_ERR) == 0 {
            return;
        }
        let mut eof = None;
        let mut got = 0usize;
        let mut full = false;
        let mut tls_failed = None;
        let mut plaintext = None;
        let is_tls = self.links.get(&id).is_some_and(|l| l.tls.is_some());
        {
            let scratch = &mut self.scratch[..];
            let Some(link) = self.links.get_mut(&id) else {
                return;
            };
            if link.paused {
                // Only hang-up/error bits arrive while paused.
                self.doomed.push((
                    id,
                    "peer closed the connection (while waiting for input budget)".into(),
                ));
                return;
            }
            if link.close_after_flush.is_some() {
                // Refused link: discard input until the reply is out.
                let mut sink = [0u8; 4096];
                match link.stream.read(&mut sink) {
                    Ok(0) => eof = Some("peer closed".to_string()),
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                        eof = Some(format!("read error: {e}"))
                    }
                    _ => {}
                }
            } else {
                // The head frame (within its reservation, or small) plus one chunk.
                let cap =
                    FRAME_HEADER_LEN + HANDSHAKE_LEN + link.reserved.max(SMALL_BODY) + READ_CHUNK;
                if let Some(tls) = link.tls.as_mut() {
                    if !tls.seen_input {
                        // The first byte after the clear header tells a TLS client (a
                        // handshake record) from a plaintext one, which gets a clear answer.
                        let mut first = [0u8; 1];
                        if let Ok(1) = link.stream.peek(&mut first) {
                            if first[0] == TLS_HANDSHAKE_RECORD {
                                tls.seen_input = true;
                            } else {
                                plaintext = Some(first[0]);
                            }
                        }
                    }
                    // One call decrypts at most `tls::READ_BUDGET` more than `cap`.
                    if link.rbuf.len() >= cap {
                        full = true;
                    } else if plaintext.is_none() {
                        match tls.session.on_readable(&mut link.stream, &mut link.rbuf) {
                            Ok(outcome) => {
                                got = outcome.appended;
                                if outcome.eof {
                                    // Answer the peer's close_notify (OpenSSL peers wait for it
                                    // in SSL_shutdown), best effort: the link closes this turn.
                                    tls.session.send_close_notify();
                                    let _ = tls.session.flush_to(&link.stream);
                                    eof = Some("peer closed the connection".to_string());
                                }
                            }
                            Err(e) => tls_failed = Some(e),
                        }
                    }
                }
                while !is_tls && got < READ_BUDGET {
                    let len = link.rbuf.len();
                    let room = READ_CHUNK.min(cap.saturating_sub(len));
                    if room == 0 {
                        full = true;
                        break;
                    }
                    match link.stream.read(&mut scratch[..room]) {
                        Ok(0) => {
                            eof = Some("peer closed the connection".to_string());
                            break;
                        }
                        Ok(n) => {
                            link.rbuf.extend_from_slice(&scratch[..n]);
                            got += n;
                            if n < room {
                                break;
                            }
                        }
                        Err(e) => {
                            if e.kind() == io::ErrorKind::Interrupted {
                                continue;
                            }
                            if e.kind() != io::ErrorKind::WouldBlock {
                                eof = Some(format!("read error: {e}"));
                            }
                            break;
                        }
                    }
                }
            }
        }
        if let Some(first) = plaintext {
            return self.refuse_plaintext(id, &not_client_hello(first));
        }
        if let Some(e) = tls_failed {
            return self.refuse_tls(id, &e);
        }
        if is_tls {
            self.after_tls_input(id, full);
        } else if got > 0 || full {
            self.process_input(id);
            // The clear header of a TLS link may have arrived with the start of the TLS bytes.
            if self.links.get(&id).is_some_and(|l| l.tls.is_some()) {
                self.start_tls(id);
            }
        }
        if let Some(reason) = eof {
            self.doomed.push((id, reason));
        }
    }

    /// Feeds the TLS bytes that came with the clear header to the new session.
    fn start_tls(&mut self, id: LinkId) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let Some(tls) = link.tls.as_mut() else {
            return;
        };
        let prefix = std::mem::take(&mut tls.prefix);
        let Some(&first) = prefix.first() else {
            return;
        };
        if first != TLS_HANDSHAKE_RECORD {
            return self.refuse_plaintext(id, &not_client_hello(first));
        }
        tls.seen_input = true;
        match tls.session.feed(&prefix, &mut link.rbuf) {
            Ok(_) => self.after_tls_input(id, false),
            Err(e) => self.refuse_tls(id, &e),
        }
    }

    /// After TLS input: once the TLS handshake is done (the client certificate verified), run
    /// the store handshake, then the frames that arrived. TLS output (handshake messages) is
    /// flushed at the end of the turn.
    fn after_tls_input(&mut self, id: LinkId, full: bool) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let Some(tls) = link.tls.as_mut() else {
            return;
        };
        if tls.session.handshake_done() {
            if let Some(hs) = tls.pending.take() {
                info!(
                    "config store: link {id} from {}: TLS peer {}",
                    link.peer,
                    tls.session.peer_identity().unwrap_or("?")
                );
                self.handshake(id, hs);
            }
        }
        if self
            .links
            .get(&id)
            .is_some_and(|l| l.handshaken && (full || !l.rbuf.is_empty()))
        {
            self.process_input(id);
        }
        self.dirty.push(id);
    }

    /// The peer failed TLS (no or bad certificate, not TLS at all...): log the reason, send
    /// the alert rustls queued (best effort), close.
    fn refuse_tls(&mut self, id: LinkId, err: &Error) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        warn!(
            "config store: refusing TLS link {id} from {}: {}",
            link.peer,
            err.message()
        );
        if let Some(tls) = link.tls.as_mut() {
            let _ = tls.session.flush_to(&link.stream);
        }
        self.doomed.push((id, format!("TLS: {}", err.message())));
    }

    /// The peer of a TLS link sent its clear header but no TLS (a plaintext client): answer
    /// [`status::TLS_REQUIRED`] in clear, as a plaintext client expects, log why, close.
    fn refuse_plaintext(&mut self, id: LinkId, why: &str) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        warn!("config store: refusing link {id} from {}: {why}", link.peer);
        // No TLS on this link any more: the answer and nothing else goes out in clear.
        link.tls = None;
        link.rbuf.clear();
        // Discard what the peer already sent (bounded), so that closing with unread input
        // does not reset the link before the answer is read.
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            if !matches!(link.stream.read(&mut sink), Ok(n) if n > 0) {
                break;
            }
        }
        link.wbuf
            .extend_from_slice(&status::TLS_REQUIRED.to_le_bytes());
        self.close_later(id, format!("TLS: {why}"));
    }

    /// Consume whole handshakes/frames from the link's read buffer.
    fn process_input(&mut self, id: LinkId) {
        // Taken out while requests are handled (they borrow it), put back after.
        let Some(mut rbuf) = self.links.get_mut(&id).map(|l| std::mem::take(&mut l.rbuf)) else {
            return;
        };
        let mut consumed = 0usize;
        loop {
            let Some(link) = self.links.get_mut(&id) else {
                return;
            };
            if link.close_after_flush.is_some() {
                break;
            }
            if link.wbuf.len() - link.wpos > self.config.limits.max_write_queue {
                // Backlog over the limit: try to write; a link still over it is closed by
                // `flush`, and its remaining input is not processed.
                self.flush(id);
                let over = self
                    .links
                    .get(&id)
                    .is_none_or(|l| l.wbuf.len() - l.wpos > self.config.limits.max_write_queue);
                if over {
                    break;
                }
                continue;
            }
            let buf = &rbuf[consumed..];
            if !link.handshaken {
                if link.tls.is_some() || buf.len() < HANDSHAKE_LEN {
                    // TLS links: the header was taken; the TLS handshake is in progress.
                    break;
                }
                // 16 bytes are present, so parse cannot fail.
                let Ok(hs) = Handshake::parse(buf) else { break };
                consumed += HANDSHAKE_LEN;
                if let Some(config) = &self.config.tls {
                    let session = match ServerTlsSession::new(config) {
                        Ok(s) => s,
                        Err(e) => {
                            self.doomed.push((id, e.to_string()));
                            break;
                        }
                    };
                    // Everything after the header is TLS (the reference client pipelines its
                    // ClientHello); `start_tls` feeds it once the buffer is back in the link.
                    link.tls = Some(LinkTls {
                        session,
                        pending: Some(hs),
                        prefix: rbuf[consumed..].to_vec(),
                        seen_input: false,
                        closing: false,
                    });
                    let wait = TLS_HELLO_WAIT.min(self.config.handshake_timeout);
                    if let Some(at) = Instant::now().checked_add(wait) {
                        self.timers.push(Reverse((at, Timer::TlsHello(id))));
                    }
                    consumed = rbuf.len();
                    break;
                }
                self.handshake(id, hs);
                continue;
            }
            let Ok(hdr) = FrameHeader::parse(buf) else {
                break;
            };
            let limit = u64::from(self.config.limits.max_body_len)
                .min(self.config.limits.max_input_bytes.max(SMALL_BODY as u64));
            if u64::from(hdr.body_len) > limit {
                let msg = format!(
                    "invalid request: frame body of {} bytes exceeds the limit of {limit}",
                    hdr.body_len
                );
                self.queue_text(id, hdr.seq_no, status::INVALID_REQUEST, msg.as_bytes());
                self.close_later(id, format!("bodyLen {} over the limit", hdr.body_len));
                break;
            }
            let need = FRAME_HEADER_LEN + hdr.body_len as usize;
            if buf.len() < need {
                break;
            }
            let body = &buf[FRAME_HEADER_LEN..need];
            consumed += need;
            if hdr.frame_type != 0 {
                debug!(
                    "config store: link {id}: dropping frame of type {}",
                    hdr.frame_type
                );
                continue;
            }
            self.request(id, hdr.seq_no, body);
        }
        if let Some(link) = self.links.get_mut(&id) {
            rbuf.drain(..consumed.min(rbuf.len()));
            if rbuf.is_empty() && rbuf.capacity() > SMALL_BODY {
                rbuf = Vec::new();
            } else if rbuf.capacity() > 1 << 20 && rbuf.len() < 1 << 16 {
                rbuf.shrink_to(1 << 16);
            }
            link.rbuf = rbuf;
        }
        self.update_reservation(id);
    }

    /// Match the link's reservation to the large body (if any) now at the head of its read
    /// buffer: reserve it, or pause the link until it fits.
    fn update_reservation(&mut self, id: LinkId) {
        let max = usize::try_from(self.config.limits.max_input_bytes).unwrap_or(usize::MAX);
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        if link.paused || link.close_after_flush.is_some() {
            return;
        }
        let need = link.head_need();
        if need == link.reserved {
            return;
        }
        let released = link.reserved > 0;
        self.input_reserved -= link.reserved;
        link.reserved = 0;
        if need > 0 {
            if self.paused.is_empty() && self.input_reserved + need <= max {
                link.reserved = need;
                self.input_reserved += need;
            } else {
                debug!("config store: link {id} waits for {need} bytes of input budget");
                link.paused = true;
                self.paused.push_back(id);
                let ev = link.interest();
                if let Err(e) = self.epoll.modify(link.stream.as_raw_fd(), id, ev) {
                    self.doomed.push((id, format!("epoll modify: {e}")));
                }
            }
        }
        if released {
            self.resume_paused();
        }
    }

    /// Give reservations to waiting links, in order, while they fit.
    fn resume_paused(&mut self) {
        let max = usize::try_from(self.config.limits.max_input_bytes).unwrap_or(usize::MAX);
        while let Some(&id) = self.paused.front() {
            let Some(link) = self.links.get_mut(&id) else {
                self.paused.pop_front();
                continue;
            };
            let need = link.head_need();
            if need > 0 && self.input_reserved + need > max {
                break;
            }
            self.paused.pop_front();
            link.paused = false;
            link.reserved = need;
            self.input_reserved += need;
            let ev = link.interest();
            if let Err(e) = self.epoll.modify(link.stream.as_raw_fd(), id, ev) {
                self.doomed.push((id, format!("epoll modify: {e}")));
            }
        }
    }

    fn handshake(&mut self, id: LinkId, hs: Handshake) {
        let reply = |code: i16| code.to_le_bytes();
        let refuse = |this: &mut Self, code: i16, why: String| {
            if let Some(link) = this.links.get_mut(&id) {
                link.wbuf.extend_from_slice(&reply(code));
            }
            this.dirty.push(id);
            this.close_later(id, why);
        };
        if self.links.get(&id).is_some_and(|l| l.over_limit) {
            let why = format!(
                "too many links open (max_links {})",
                self.config.limits.max_links
            );
            return refuse(self, status::ERROR, why);
        }
        if !hs.is_supported() {
            return refuse(
                self,
                status::ERROR,
                format!(
                    "handshake magic {} / version {} not supported",
                    hs.magic, hs.version
                ),
            );
        }
        if let Some(w) = hs.world_size {
            match self.st.world_size {
                Some(fixed) if fixed != w => {
                    return refuse(
                        self,
                        status::WORLD_SIZE_MISMATCH,
                        format!("world size {w} differs from the fixed {fixed}"),
                    );
                }
                Some(_) => {}
                None => {
                    info!("config store: world size fixed to {w}");
                    self.st.world_size = Some(w);
                }
            }
        }
        if let Some(r) = hs.rank {
            if let Some(holder) = self.st.ranks.get(&r) {
                return refuse(
                    self,
                    status::ERROR,
                    format!("rank {r} is already held by live link {holder}"),
                );
            }
            self.st.ranks.insert(r, id);
        }
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        link.handshaken = true;
        link.rank = hs.rank;
        let mut b = [0u8; handshake::HANDSHAKE_REPLY_LEN];
        let _ = handshake::emit_reply(status::OK, &mut b);
        link.wbuf.extend_from_slice(&b);
        debug!(
            "config store: link {id} ({}) handshaken, rank {:?}",
            link.peer, hs.rank
        );
        self.dirty.push(id);
    }

    fn close_later(&mut self, id: LinkId, why: String) {
        if let Some(link) = self.links.get_mut(&id) {
            if link.close_after_flush.is_none() {
                link.close_after_flush = Some(why);
            }
            self.dirty.push(id);
        }
    }

    fn queue_text(&mut self, id: LinkId, seq: u32, st: i16, text: &[u8]) {
        if let Some(link) = self.links.get_mut(&id) {
            append_text(&mut link.wbuf, seq, st, text);
            self.dirty.push(id);
        }
    }

    fn queue_packed(
        &mut self,
        id: LinkId,
        seq: u32,
        st: i16,
        mt: MessageType,
        keys: &[&[u8]],
        values: &[&[u8]],
    ) {
        if let Some(link) = self.links.get_mut(&id) {
            append_packed(&mut link.wbuf, seq, st, mt, keys, values);
            self.dirty.push(id);
        }
    }

    fn request(&mut self, id: LinkId, seq: u32, body: &[u8]) {
        let outcome = match MessageView::parse(body) {
            Err(e) => {
                debug!("config store: link {id}: invalid request: {e}");
                if body.is_empty() {
                    Outcome::Text(status::INVALID_REQUEST, "invalid request: empty body")
                } else {
                    Outcome::Text(status::INVALID_REQUEST, "invalid request")
                }
            }
            Ok(m) => self.dispatch(id, seq, &m),
        };
        match outcome {
            Outcome::None => {}
            Outcome::Text(st, t) => self.queue_text(id, seq, st, t.as_bytes()),
            Outcome::Owned(st, t) => self.queue_text(id, seq, st, t.as_bytes()),
            Outcome::Packed(mt, values) => {
                let v: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
                self.queue_packed(id, seq, status::OK, mt, &[], &v);
            }
            Outcome::PackedKv(mt, keys, values) => {
                let k: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                let v: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
                let len = message::encoded_len(k.iter().copied(), v.iter().copied());
                if len > self.config.limits.max_body_len as usize {
                    let t = format!(
                        "invalid request: reply of {len} bytes exceeds the frame limit; use a longer prefix"
                    );
                    self.queue_text(id, seq, status::INVALID_REQUEST, t.as_bytes());
                } else {
                    self.queue_packed(id, seq, status::OK, mt, &k, &v);
                }
            }
        }
    }

    fn check_limits(&self, m: &MessageView<'_>) -> Option<String> {
        let l = &self.config.limits;
        if m.keys.len() > l.max_keys || m.values.len() > l.max_keys {
            return Some(format!(
                "invalid request: more than {} keys or values",
                l.max_keys
            ));
        }
        if m.keys.iter().any(|k| k.len() > l.max_key_len) {
            return Some(format!(
                "invalid request: key longer than {} bytes",
                l.max_key_len
            ));
        }
        if m.values.iter().any(|v| v.len() > l.max_value_len) {
            return Some(format!(
                "invalid request: value larger than {} bytes",
                l.max_value_len
            ));
        }
        None
    }

    fn room_for(&self, add: u64) -> bool {
        self.st.stored_bytes.saturating_add(add) <= self.config.limits.max_total_bytes
    }

    fn full_msg(&self) -> Outcome {
        Outcome::Owned(
            status::INVALID_REQUEST,
            format!(
                "store full: {} of {} bytes stored (max_total_bytes); remove keys first",
                self.st.stored_bytes, self.config.limits.max_total_bytes
            ),
        )
    }

    fn dispatch(&mut self, id: LinkId, seq: u32, m: &MessageView<'_>) -> Outcome {
        use MessageType as M;
        const BAD: i16 = status::INVALID_REQUEST;
        if let Some(why) = self.check_limits(m) {
            return Outcome::Owned(BAD, why);
        }
        let (nk, nv) = (m.keys.len(), m.values.len());
        let key = m.keys.get(0).unwrap_or_default();
        let val = m.values.get(0).unwrap_or_default();
        match m.header.msg_type {
            M::Set => {
                if nk != 1 || nv != 1 {
                    return Outcome::Text(BAD, "invalid request: key value should be one");
                }
                let old_len = self.st.data.get(key).map(|v| v.len() + key.len());
                let changed = self.st.data.get(key).is_none_or(|v| v != val);
                let add = (key.len() + val.len()) as u64;
                if !self.room_for(add.saturating_sub(old_len.unwrap_or(0) as u64)) {
                    return self.full_msg();
                }
                self.set_value(key, val.to_vec());
                if changed {
                    self.wake(key, val);
                }
                Outcome::Text(status::OK, "success")
            }
            M::Get => {
                if nk != 1 || nv != 0 {
                    return Outcome::Text(BAD, ONE_KEY_NO_VALUES);
                }
                if key.starts_with(AUTO_RANKING_PREFIX) {
                    return self.auto_rank(id);
                }
                if let Some(v) = self.st.data.get(key) {
                    // Encoded straight from the stored value (no copy of it).
                    if let Some(link) = self.links.get_mut(&id) {
                        append_packed(&mut link.wbuf, seq, status::OK, M::Get, &[], &[v]);
                        self.dirty.push(id);
                    }
                    return Outcome::None;
                }
                let ms = m.header.user_def;
                if ms == 0 {
                    return Outcome::Text(status::NOT_EXIST, "<not exist>");
                }
                self.park(id, seq, key, ms)
            }
            M::Prefix => {
                if nk != 1 || nv != 0 {
                    return Outcome::Text(BAD, ONE_KEY_NO_VALUES);
                }
                let (mut ks, mut vs) = (Vec::new(), Vec::new());
                for (k, v) in &self.st.data {
                    if k.starts_with(key) {
                        ks.push(k.clone());
                        vs.push(v.clone());
                    }
                }
                Outcome::PackedKv(M::Prefix, ks, vs)
            }
            M::Watch => {
                if nk != 1 {
                    return Outcome::Text(
                        BAD,
                        "invalid request: key should be one and has values.",
                    );
                }
                let Some(link) = self.links.get_mut(&id) else {
                    return Outcome::None;
                };
                let seq = match link.watches.get(key) {
                    Some(first) => *first,
                    None => {
                        if link.parked + link.watches.len()
                            >= self.config.limits.max_waiters_per_link
                        {
                            return Outcome::Text(
                                BAD,
                                "invalid request: too many parked GETs and watches on this link",
                            );
                        }
                        link.watches.insert(key.to_vec(), seq);
                        self.st
                            .watchers
                            .entry(key.to_vec())
                            .or_default()
                            .insert(id, seq);
                        seq
                    }
                };
                if let Some(v) = self.st.data.get(key) {
                    let v = v.clone();
                    self.queue_packed(id, seq, status::OK, M::Watch, &[], &[&v]);
                }
                Outcome::None
            }
            M::Add => self.add(key, val, nk, nv),
            M::Remove => {
                if nk != 1 || nv != 0 {
                    return Outcome::Text(BAD, ONE_KEY_NO_VALUES);
                }
                match self.st.data.remove(key) {
                    Some(v) => {
                        self.st.stored_bytes = self
                            .st
                            .stored_bytes
                            .saturating_sub((key.len() + v.len()) as u64);
                        Outcome::Text(status::OK, "success")
                    }
                    None => Outcome::Text(status::NOT_EXIST, "not exist"),
                }
            }
            M::Append => {
                if nk != 1 || nv != 1 {
                    return Outcome::Text(BAD, KEY_AND_VALUE_ONE);
                }
                let cur = self.st.data.get(key).map_or(0, Vec::len);
                let new_len = cur.saturating_add(val.len());
                if new_len > self.config.limits.max_value_len {
                    return Outcome::Owned(
                        BAD,
                        format!(
                            "invalid request: value would exceed {} bytes",
                            self.config.limits.max_value_len
                        ),
                    );
                }
                let add = val.len() as u64
                    + if cur == 0 && !self.st.data.contains_key(key) {
                        key.len() as u64
                    } else {
                        0
                    };
                if !self.room_for(add) {
                    return self.full_msg();
                }
                match self.st.data.get_mut(key) {
                    Some(v) => v.extend_from_slice(val),
                    None => {
                        self.st.data.insert(key.to_vec(), val.to_vec());
                    }
                }
                self.st.stored_bytes += add;
                self.wake(key, val);
                Outcome::Owned(status::OK, new_len.to_string())
            }
            M::Cas => {
                if nk != 1 || nv != 2 {
                    return Outcome::Text(BAD, "invalid request: count(key)=1 & count(value)=2");
                }
                let new = m.values.get(1).unwrap_or_default();
                match self.st.data.get(key) {
                    Some(cur) if cur != val => {
                        Outcome::Packed(M::Cas, vec![cur.clone(), cur.clone()])
                    }
                    cur => {
                        let old = cur.map_or(0, |c| c.len() + key.len()) as u64;
                        if !self.room_for(((key.len() + new.len()) as u64).saturating_sub(old)) {
                            return self.full_msg();
                        }
                        self.set_value(key, new.to_vec());
                        self.wake(key, new);
                        Outcome::Packed(M::Cas, vec![new.to_vec()])
                    }
                }
            }
            M::Write => {
                if nk != 1 || nv != 1 {
                    return Outcome::Text(BAD, KEY_AND_VALUE_ONE);
                }
                let Some((off, data)) = val.split_first_chunk::<4>() else {
                    return Outcome::Text(BAD, "value size too small.");
                };
                let off = u32::from_le_bytes(*off) as u64;
                let end = off + data.len() as u64;
                if end > ONE_GIB {
                    return Outcome::Text(BAD, "write total size exceeds limit.");
                }
                if off > 65_535 * data.len() as u64 {
                    return Outcome::Text(
                        BAD,
                        "invalid request: write offset larger than 65535 times the data length",
                    );
                }
                let cur = self.st.data.get(key).map(Vec::len);
                let new_len = (end as usize).max(cur.unwrap_or(0));
                if new_len > self.config.limits.max_value_len {
                    return Outcome::Owned(
                        BAD,
                        format!(
                            "invalid request: value would exceed {} bytes",
                            self.config.limits.max_value_len
                        ),
                    );
                }
                let add = (new_len - cur.unwrap_or(0)) as u64
                    + if cur.is_none() { key.len() as u64 } else { 0 };
                if !self.room_for(add) {
                    return self.full_msg();
                }
                let v = self.st.data.entry(key.to_vec()).or_default();
                if v.len() < new_len {
                    v.resize(new_len, 0);
                }
                v[off as usize..end as usize].copy_from_slice(data);
                self.st.stored_bytes += add;
                Outcome::Text(status::OK, "success")
            }
            M::QueryAlive => {
                let rank = std::str::from_utf8(key)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok());
                if nk != 1 || nv != 0 {
                    return Outcome::Text(BAD, ONE_KEY_NO_VALUES);
                }
                match (nk, rank) {
                    (1, Some(r)) => {
                        let alive = self.st.ranks.contains_key(&r);
                        Outcome::Packed(M::QueryAlive, if alive { vec![vec![1]] } else { vec![] })
                    }
                    _ => Outcome::Text(BAD, "invalid input"),
                }
            }
            M::WatchRankState => {
                if nk != 1 || key != WATCH_RANK_DOWN_KEY {
                    return Outcome::Text(BAD, "invalid request: key should be");
                }
                if let Some(link) = self.links.get_mut(&id) {
                    link.rank_watch.get_or_insert(seq);
                }
                Outcome::None
            }
            M::Heartbeat => {
                if let Some(link) = self.links.get_mut(&id) {
                    link.last_heartbeat = Some(Instant::now());
                }
                Outcome::None
            }
            M::Unwatch => {
                if nk != 1 {
                    return Outcome::Text(BAD, ONE_KEY_NO_VALUES);
                }
                if let Some(link) = self.links.get_mut(&id) {
                    if key == WATCH_RANK_DOWN_KEY {
                        link.rank_watch = None;
                    }
                    if link.watches.remove(key).is_some() {
                        if let Some(w) = self.st.watchers.get_mut(key) {
                            w.remove(&id);
                            if w.is_empty() {
                                self.st.watchers.remove(key);
                            }
                        }
                    }
                }
                Outcome::None
            }
            M::Control => {
                // key[0] = ControlOp (decimal, 0..=12); group membership is not implemented.
                let op = std::str::from_utf8(key)
                    .ok()
                    .and_then(|s| s.parse::<u8>().ok());
                if nk == 0 || op.is_none() {
                    Outcome::Text(BAD, "invalid control op")
                } else {
                    Outcome::Text(BAD, "unsupported control op")
                }
            }
            _ => Outcome::Text(BAD, "invalid request message type"),
        }
    }

    fn set_value(&mut self, key: &[u8], val: Vec<u8>) {
        let add = (key.len() + val.len()) as u64;
        if let Some(old) = self.st.data.insert(key.to_vec(), val) {
            self.st.stored_bytes = self
                .st
                .stored_bytes
                .saturating_sub((key.len() + old.len()) as u64);
        }
        self.st.stored_bytes = self.st.stored_bytes.saturating_add(add);
    }

    fn add(&mut self, key: &[u8], val: &[u8], nk: usize, nv: usize) -> Outcome {
        const BAD: i16 = status::INVALID_REQUEST;
        if nk != 1 || nv != 1 {
            return Outcome::Text(BAD, "invalid request: key value should be one.");
        }
        let inc = match parse_increment(val) {
            Increment::Ok(v) => v,
            Increment::NonCanonical => {
                return Outcome::Text(BAD, "invalid request: value should be a number.");
            }
            Increment::Unparseable => {
                return Outcome::Text(
                    BAD,
                    "invalid request: value should be a decimal i64 number.",
                );
            }
        };
        let new = match self.st.data.get(key) {
            None => inc,
            Some(cur) => {
                let Some(old) = parse_stored_i64(cur) else {
                    return Outcome::Text(BAD, "oldValueStr should be a number.");
                };
                let Some(n) = old.checked_add(inc) else {
                    return Outcome::Text(BAD, "add result overflow.");
                };
                n
            }
        };
        let text = new.to_string();
        let old = self.st.data.get(key).map_or(0, |c| c.len() + key.len()) as u64;
        if !self.room_for(((key.len() + text.len()) as u64).saturating_sub(old)) {
            return self.full_msg();
        }
        self.set_value(key, text.clone().into_bytes());
        self.wake(key, text.as_bytes());
        Outcome::Owned(status::OK, text)
    }

    fn auto_rank(&mut self, id: LinkId) -> Outcome {
        if let Some(r) = self.links.get(&id).and_then(|l| l.rank) {
            return Outcome::Packed(MessageType::Get, vec![r.to_le_bytes().to_vec()]);
        }
        let Some(world) = self.st.world_size.filter(|w| *w > 0) else {
            return Outcome::Text(
                status::ERROR,
                "error: worldSize rankSize bigger than worldSize.",
            );
        };
        for i in 0..world {
            let r = (self.st.cursor.wrapping_add(i)) % world;
            if let std::collections::hash_map::Entry::Vacant(e) = self.st.ranks.entry(r) {
                e.insert(id);
                self.st.cursor = (r + 1) % world;
                if let Some(link) = self.links.get_mut(&id) {
                    link.rank = Some(r);
                }
                debug!("config store: link {id} auto-ranked {r}");
                return Outcome::Packed(MessageType::Get, vec![r.to_le_bytes().to_vec()]);
            }
        }
        Outcome::Text(
            status::ERROR,
            "error: worldSize rankSize bigger than worldSize.",
        )
    }

    fn park(&mut self, id: LinkId, seq: u32, key: &[u8], ms: i64) -> Outcome {
        let Some(link) = self.links.get_mut(&id) else {
            return Outcome::None;
        };
        if link.parked + link.watches.len() >= self.config.limits.max_waiters_per_link {
            return Outcome::Text(
                status::INVALID_REQUEST,
                "invalid request: too many parked GETs and watches on this link",
            );
        }
        link.parked += 1;
        let pid = self.st.next_parked;
        self.st.next_parked += 1;
        self.st.parked.insert(
            pid,
            Parked {
                link: id,
                seq,
                key: key.to_vec(),
            },
        );
        self.st
            .parked_by_key
            .entry(key.to_vec())
            .or_default()
            .push(pid);
        if ms > 0 {
            // Saturating: a deadline past what Instant can hold never fires (waits forever).
            if let Some(at) = Instant::now().checked_add(Duration::from_millis(ms.unsigned_abs())) {
                self.timers.push(Reverse((at, Timer::Parked(pid))));
            }
        }
        Outcome::None
    }

    fn unpark(&mut self, pid: u64) -> Option<Parked> {
        let p = self.st.parked.remove(&pid)?;
        if let Some(list) = self.st.parked_by_key.get_mut(&p.key) {
            list.retain(|x| *x != pid);
            if list.is_empty() {
                self.st.parked_by_key.remove(&p.key);
            }
        }
        if let Some(l) = self.links.get_mut(&p.link) {
            l.parked = l.parked.saturating_sub(1);
        }
        Some(p)
    }

    /// Drop timer entries of GETs that were answered before their deadline once they
    /// outnumber the live ones, so the heap does not grow with the request rate.
    fn compact_timers(&mut self) {
        let live = self.st.parked.len() + self.links.len() + 1;
        if self.timers.len() <= 2 * live + 1024 {
            return;
        }
        let (parked, links) = (&self.st.parked, &self.links);
        self.timers.retain(|Reverse((_, t))| match t {
            Timer::Parked(pid) => parked.contains_key(pid),
            Timer::Handshake(id) | Timer::TlsHello(id) => {
                links.get(id).is_some_and(|l| !l.handshaken)
            }
            Timer::HeartbeatScan => true,
        });
    }

    fn wake(&mut self, key: &[u8], val: &[u8]) {
        if let Some(pids) = self.st.parked_by_key.remove(key) {
            for pid in pids {
                if let Some(p) = self.st.parked.remove(&pid) {
                    if let Some(l) = self.links.get_mut(&p.link) {
                        l.parked = l.parked.saturating_sub(1);
                    }
                    self.queue_packed(p.link, p.seq, status::OK, MessageType::Get, &[], &[val]);
                }
            }
        }
        if let Some(w) = self.st.watchers.get(key) {
            for (l, s) in w {
                if let Some(link) = self.links.get_mut(l) {
                    append_packed(
                        &mut link.wbuf,
                        *s,
                        status::OK,
                        MessageType::Watch,
                        &[],
                        &[val],
                    );
                    self.dirty.push(*l);
                }
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, t))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match t {
                Timer::Parked(pid) => {
                    if let Some(p) = self.unpark(pid) {
                        self.queue_text(p.link, p.seq, status::TIMEOUT, b"<timeout>");
                    }
                }
                Timer::Handshake(id) => {
                    let Some(link) = self.links.get_mut(&id) else {
                        continue;
                    };
                    if link.handshaken || link.close_after_flush.is_some() {
                        continue;
                    }
                    let why = match &link.tls {
                        Some(tls) if !tls.seen_input => {
                            self.refuse_plaintext(id, NO_CLIENT_HELLO);
                            continue;
                        }
                        Some(_) => "TLS handshake not completed within the handshake timeout",
                        None => "no complete handshake within the handshake timeout",
                    };
                    if link.tls.is_some() {
                        warn!("config store: link {id} from {}: {why}", link.peer);
                    }
                    self.doomed.push((id, why.into()));
                }
                Timer::TlsHello(id) => {
                    let waiting = self.links.get(&id).is_some_and(|l| {
                        !l.handshaken
                            && l.close_after_flush.is_none()
                            && l.tls.as_ref().is_some_and(|t| !t.seen_input)
                    });
                    if waiting {
                        // A plaintext client waits for a clear reply that would never come.
                        self.refuse_plaintext(id, NO_CLIENT_HELLO);
                    }
                }
                Timer::HeartbeatScan => {
                    let Some(limit) = self.config.heartbeat_timeout else {
                        continue;
                    };
                    for (id, l) in &self.links {
                        if l.last_heartbeat
                            .is_some_and(|t| now.saturating_duration_since(t) > limit)
                        {
                            self.doomed
                                .push((*id, format!("no heartbeat for {} ms", limit.as_millis())));
                        }
                    }
                    if let Some(iv) = Self::heartbeat_interval(&self.config) {
                        if let Some(at) = now.checked_add(iv) {
                            self.timers.push(Reverse((at, Timer::HeartbeatScan)));
                        }
                    }
                }
            }
        }
    }

    fn finish_turn(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for id in dirty {
            self.flush(id);
        }
        let doomed = std::mem::take(&mut self.doomed);
        for (id, why) in doomed {
            self.close(id, &why);
        }
        // Closing can queue rank-down events to other links.
        let dirty = std::mem::take(&mut self.dirty);
        for id in dirty {
            self.flush(id);
        }
        let doomed = std::mem::take(&mut self.doomed);
        for (id, why) in doomed {
            self.close(id, &why);
        }
        self.compact_timers();
    }

    fn flush(&mut self, id: LinkId) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let mut failed = None;
        let mut tls_backlog = false;
        if let Some(tls) = link.tls.as_mut() {
            // Plaintext moves into the session one chunk at a time, only once the session's
            // own output is flushed: the backlog stays in `wbuf`, where the limits see it.
            loop {
                match tls.session.flush_to(&link.stream) {
                    Ok(true) => {}
                    Ok(false) => {
                        tls_backlog = true;
                        break;
                    }
                    Err(e) => {
                        failed = Some(format!("write error: {e}"));
                        break;
                    }
                }
                if link.wpos < link.wbuf.len() {
                    let end = link.wbuf.len().min(link.wpos + TLS_WRITE_CHUNK);
                    tls.session.queue_plaintext(&link.wbuf[link.wpos..end]);
                    link.wpos = end;
                } else if link.close_after_flush.is_some() && !tls.closing {
                    tls.closing = true;
                    tls.session.send_close_notify();
                } else {
                    break;
                }
            }
        }
        while link.tls.is_none() && link.wpos < link.wbuf.len() {
            match NoSigPipe::new(&link.stream).write(&link.wbuf[link.wpos..]) {
                Ok(0) => {
                    failed = Some("peer stopped accepting data".to_string());
                    break;
                }
                Ok(n) => link.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    failed = Some(format!("write error: {e}"));
                    break;
                }
            }
        }
        if link.wpos == link.wbuf.len() {
            link.wbuf.clear();
            link.wpos = 0;
            if link.wbuf.capacity() > 1 << 20 {
                link.wbuf.shrink_to(1 << 16);
            }
        } else if link.wpos > link.wbuf.len() / 2 {
            link.wbuf.drain(..link.wpos);
            link.wpos = 0;
        }
        let pending = link.wbuf.len() - link.wpos;
        if failed.is_none()
            && pending as u64 > (self.config.limits.max_write_queue as u64).min(WRITE_LIMIT_TOTAL)
        {
            failed = Some(format!(
                "{pending} bytes of replies queued: the client does not read (max_write_queue)"
            ));
        }
        if let Some(why) = failed {
            self.doomed.push((id, why));
            return;
        }
        if pending == 0 && !tls_backlog {
            if let Some(why) = link.close_after_flush.take() {
                self.doomed.push((id, why));
                return;
            }
        }
        let want = pending > 0 || tls_backlog;
        if want != link.want_write {
            link.want_write = want;
            let ev = link.interest();
            if let Err(e) = self.epoll.modify(link.stream.as_raw_fd(), id, ev) {
                self.doomed.push((id, format!("epoll modify: {e}")));
            }
        }
    }

    fn close(&mut self, id: LinkId, why: &str) {
        let Some(link) = self.links.remove(&id) else {
            return;
        };
        let _ = self.epoll.delete(link.stream.as_raw_fd());
        if link.reserved > 0 {
            self.input_reserved -= link.reserved;
            self.resume_paused();
        }
        if link.handshaken {
            info!(
                "config store: closing link {id} ({}, rank {:?}): {why}",
                link.peer, link.rank
            );
        } else {
            debug!(
                "config store: closing link {id} ({}) before handshake: {why}",
                link.peer
            );
        }
        for key in link.watches.keys() {
            if let Some(w) = self.st.watchers.get_mut(key) {
                w.remove(&id);
                if w.is_empty() {
                    self.st.watchers.remove(key);
                }
            }
        }
        if link.parked > 0 {
            let pids: Vec<u64> = self
                .st
                .parked
                .iter()
                .filter(|(_, p)| p.link == id)
                .map(|(k, _)| *k)
                .collect();
            for pid in pids {
                self.unpark(pid);
            }
        }
        let Some(rank) = link.rank else { return };
        if self.st.ranks.get(&rank) == Some(&id) {
            self.st.ranks.remove(&rank);
        }
        let watchers: Vec<(LinkId, u32)> = self
            .links
            .iter()
            .filter_map(|(l, k)| k.rank_watch.map(|s| (*l, s)))
            .collect();
        for (l, s) in watchers {
            self.queue_packed(
                l,
                s,
                status::OK,
                MessageType::WatchRankState,
                &[],
                &[&rank.to_le_bytes()],
            );
        }
        if self.st.ranks.is_empty() {
            self.wipe();
        }
    }

    /// SPEC 5.6: the last ranked link went away; drop data, parked GETs, watchers, cursor,
    /// and release the world size, so the next job may register another one.
    fn wipe(&mut self) {
        info!(
            "config store: no ranked link left; wiping {} keys, {} parked GETs, {} watched keys; \
             world size {:?} released",
            self.st.data.len(),
            self.st.parked.len(),
            self.st.watchers.len(),
            self.st.world_size
        );
        const WIPED: &[u8] = b"store wiped: no ranked link left";
        let parked: Vec<Parked> = self.st.parked.drain().map(|(_, p)| p).collect();
        for p in parked {
            if let Some(l) = self.links.get_mut(&p.link) {
                l.parked = 0;
            }
            self.queue_text(p.link, p.seq, status::WIPED, WIPED);
        }
        let watchers = std::mem::take(&mut self.st.watchers);
        for (key, links) in watchers {
            for (l, s) in links {
                if let Some(link) = self.links.get_mut(&l) {
                    link.watches.remove(&key);
                }
                self.queue_text(l, s, status::WIPED, WIPED);
            }
        }
        self.st.parked_by_key.clear();
        self.st.data.clear();
        self.st.stored_bytes = 0;
        self.st.cursor = 0;
        self.st.world_size = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_and_increment_parsing() {
        assert_eq!(parse_stored_i64(b"+7"), Some(7));
        assert_eq!(parse_stored_i64(b" 7"), Some(7));
        assert_eq!(parse_stored_i64(b"07"), Some(7));
        assert_eq!(parse_stored_i64(b"0"), Some(0));
        assert_eq!(parse_stored_i64(b"00"), None);
        assert_eq!(parse_stored_i64(b""), None);
        assert_eq!(parse_stored_i64(b"-5"), Some(-5));
        assert_eq!(parse_stored_i64(b"99999999999999999999"), None);
        assert!(matches!(parse_increment(b"1"), Increment::Ok(1)));
        assert!(matches!(parse_increment(b"-12"), Increment::Ok(-12)));
        for nc in [&b"+1"[..], b"01", b" 1", b"-0"] {
            assert!(
                matches!(parse_increment(nc), Increment::NonCanonical),
                "{nc:?}"
            );
        }
        for un in [&b""[..], b"abc", b"99999999999999999999", b"1x", b"-"] {
            assert!(
                matches!(parse_increment(un), Increment::Unparseable),
                "{un:?}"
            );
        }
    }
}
