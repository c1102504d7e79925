//! The config store server (SPEC 5): one event-loop thread owning every link and the store.
//!
//! The loop does the I/O: accept, the handshake and TLS, reading frames within the input
//! budget, link write buffers, timers (parked-GET deadlines, handshake deadlines, heartbeat
//! expiry). What a request means is [`smem_core::store::Store`]'s business (over
//! `MapStorage`); its replies land in the links' write buffers through `Replies`.
//!
//! Invariants: only the loop thread touches the store; every request either gets a reply, is
//! one of the ops the protocol leaves unanswered (WATCH on an absent key, WATCH_RANK_STATE,
//! HEARTBEAT, UNWATCH), or its link is closed with a logged reason. Every wire length is
//! checked against the bytes present and the configured [`Limits`] before anything is
//! allocated for it. Deadlines use saturating arithmetic.
//!
//! Load at 1024 ranks (issue 11; numbers from `tests/store_bench.rs` and
//! `tests/store_storm.rs` on the 2-core dev machine, loaded):
//! - Connection storm: see `server/accept.rs` (backlog 4096, accept until the queue is
//!   empty, descriptor limit raised, deadlines that read pending input first); 1024 links
//!   connecting at once are handshaken in about 0.1 s, none reset.
//! - Heartbeats: a link holding a rank sends one 42-byte HEARTBEAT per
//!   `client::HEARTBEAT_INTERVAL` (2 s): 1024 ranks are 512 frames/s. Each costs the loop
//!   one wake-up, a read and a timestamp, about 20 us when it arrives alone (3 us in a
//!   burst), so at most about 1 % of one core; the expiry scan every
//!   `heartbeat_check_interval` walks the links (O(links), 0.005 % of a core at 1024). The
//!   bound grows linearly: `links / interval * 20 us` per second.
//! - Watch fan-out: a wake-up's frame is encoded once and copied into each watcher's write
//!   buffer with that watcher's seqNo written over the header (`Output::packed_to_each`:
//!   the same bytes, one WATCH frame per watcher and wake-up); a link is flushed once per
//!   loop turn however many frames it got (one `send` per link and turn). About 0.3-0.5 us
//!   of this thread per delivered event at 1024 watchers.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use smem_core::ErrorCode;
use smem_core::store::{Storage as _, Store};
use smem_core::wire::handshake::{self, Handshake};
use smem_core::wire::{FRAME_HEADER_LEN, FrameHeader, HANDSHAKE_LEN, status};

use super::storage::{IdMap, LinkId, MapStorage};

mod accept;
mod config;
mod replies;
mod tls;

use crate::sys::fork::Detached;
use crate::sys::net::{EPOLL_HUP_ERR, EPOLL_IN, EPOLL_OUT, Epoll, EventFd, NoSigPipe, Ready};
use crate::tls::ServerTlsSession;
use crate::{Error, Result};
pub use config::{Limits, ServerConfig, heartbeat_timeout_from_env};
use replies::{Replies, append_text};
use tls::{LinkTls, not_client_hello};

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
        accept::raise_descriptor_limit(&config.limits);
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

struct Link {
    /// Kept out of forked children while it lives.
    stream: Detached<TcpStream>,
    peer: SocketAddr,
    handshaken: bool,
    /// Accepted past `max_links`: its handshake is answered `-1` (as the reference does).
    over_limit: bool,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    want_write: bool,
    /// Close once the write buffer is flushed (after a refusing reply).
    close_after_flush: Option<String>,
    last_heartbeat: Option<Instant>,
    /// Bytes of `max_input_bytes` reserved for the large body at the head of `rbuf`.
    reserved: usize,
    /// Not read (no EPOLLIN) until a reservation fits.
    paused: bool,
    /// TLS state once the clear-text header arrived on a TLS server.
    tls: Option<LinkTls>,
    /// In `EventLoop::dirty` through `Replies` since its last flush (one entry per link and
    /// turn, however many frames it is sent).
    queued: bool,
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

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Parked(u64),
    Handshake(LinkId),
    /// A TLS link must have sent the first byte of its ClientHello by now.
    TlsHello(LinkId),
    HeartbeatScan,
    /// Put the listener back after an accept failure paused it.
    ResumeAccept,
}

struct EventLoop {
    config: ServerConfig,
    /// Kept out of forked children (a child must not hold the port).
    listener: Detached<TcpListener>,
    epoll: Epoll,
    waker: Arc<EventFd>,
    links: IdMap<LinkId, Link>,
    next_link: LinkId,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    store: Store<MapStorage>,
    /// Links with queued output to flush at the end of this turn.
    dirty: Vec<LinkId>,
    /// The previous turn's `dirty`, empty: its capacity is reused.
    dirty_spare: Vec<LinkId>,
    /// A reply encoded once for many links (`Replies::packed_to_each`).
    fan_out: Vec<u8>,
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
    /// The listener is out of the epoll set until [`Timer::ResumeAccept`].
    accept_paused: bool,
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
            store: Store::new(MapStorage::default(), config.limits.store()),
            config,
            listener: Detached::new(listener),
            epoll,
            waker,
            links: IdMap::default(),
            next_link: FIRST_LINK,
            timers,
            dirty: Vec::new(),
            dirty_spare: Vec::new(),
            fan_out: Vec::new(),
            doomed: Vec::new(),
            input_reserved: 0,
            paused: std::collections::VecDeque::new(),
            scratch: vec![0; READ_CHUNK],
            accept_paused: false,
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
                self.queue_text(
                    id,
                    hdr.seq_no,
                    status::INVALID_REQUEST,
                    format_args!("{msg}"),
                );
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
            self.with_store(|store, out| store.request(id, hdr.seq_no, body, out));
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
        let admitted = self.with_store(|store, out| store.handshake(id, &hs, out));
        if let Err(r) = admitted {
            return refuse(self, r.code(), r.to_string());
        }
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        link.handshaken = true;
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

    fn queue_text(&mut self, id: LinkId, seq: u32, st: i16, text: std::fmt::Arguments<'_>) {
        if let Some(link) = self.links.get_mut(&id) {
            append_text(&mut link.wbuf, seq, st, text);
            self.dirty.push(id);
        }
    }

    /// Run `f` on the store, its replies going to the links.
    fn with_store<R>(
        &mut self,
        f: impl FnOnce(&mut Store<MapStorage>, &mut Replies<'_>) -> R,
    ) -> R {
        let mut out = Replies {
            links: &mut self.links,
            dirty: &mut self.dirty,
            fan_out: &mut self.fan_out,
            timers: &mut self.timers,
        };
        f(&mut self.store, &mut out)
    }

    /// Drop timer entries of GETs that were answered before their deadline once they
    /// outnumber the live ones, so the heap does not grow with the request rate.
    fn compact_timers(&mut self) {
        let live = self.store.storage().parked_count() + self.links.len() + 1;
        if self.timers.len() <= 2 * live + 1024 {
            return;
        }
        let (storage, links) = (self.store.storage(), &self.links);
        self.timers.retain(|Reverse((_, t))| match t {
            Timer::Parked(pid) => storage.is_parked(*pid),
            Timer::Handshake(id) | Timer::TlsHello(id) => {
                links.get(id).is_some_and(|l| !l.handshaken)
            }
            Timer::HeartbeatScan | Timer::ResumeAccept => true,
        });
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, t))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match t {
                Timer::Parked(pid) => self.with_store(|store, out| store.expire(pid, out)),
                Timer::Handshake(id) => {
                    if self.links.get(&id).is_some_and(|l| l.tls.is_none()) {
                        self.catch_up(id);
                    }
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
                Timer::ResumeAccept => self.resume_accept(),
                Timer::HeartbeatScan => {
                    let Some(limit) = self.config.heartbeat_timeout else {
                        continue;
                    };
                    let late = |l: &Link| {
                        l.last_heartbeat
                            .is_some_and(|t| Instant::now().saturating_duration_since(t) > limit)
                    };
                    let suspects: Vec<LinkId> = (self.links.iter())
                        .filter(|(_, l)| late(l))
                        .map(|(id, _)| *id)
                        .collect();
                    for id in suspects {
                        // A heartbeat may be waiting unread behind a busy turn.
                        self.catch_up(id);
                        if self.links.get(&id).is_some_and(late) {
                            let why = format!("no heartbeat for {} ms", limit.as_millis());
                            self.doomed.push((id, why));
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
        // Twice: closing can queue rank-down events to other links.
        for _ in 0..2 {
            let spare = std::mem::take(&mut self.dirty_spare);
            let mut dirty = std::mem::replace(&mut self.dirty, spare);
            for id in dirty.drain(..) {
                self.flush(id);
            }
            self.dirty_spare = dirty;
            let doomed = std::mem::take(&mut self.doomed);
            for (id, why) in doomed {
                self.close(id, &why);
            }
        }
        self.compact_timers();
    }

    fn flush(&mut self, id: LinkId) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        link.queued = false;
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
            match NoSigPipe::new(&*link.stream).write(&link.wbuf[link.wpos..]) {
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
                link.peer,
                self.store.storage().rank_of(id)
            );
        } else {
            debug!(
                "config store: closing link {id} ({}) before handshake: {why}",
                link.peer
            );
        }
        self.with_store(|store, out| store.link_closed(id, out));
    }
}
