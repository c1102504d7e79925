//! The config store client: one link, requests pipelined from any thread, replies matched by
//! seqNo on a reader thread.
//!
//! Locks: the writer lock is held only for the socket write of one frame (bounded by a write
//! timeout); no lock is held while waiting for a reply. Watch receivers are fed with `send` on
//! unbounded channels, so the reader never blocks on a slow consumer.
//!
//! This file: the operations and the reconnect logic; `client/link.rs`: one link (connect with
//! retries, handshake, writer, reader thread).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use log::debug;
use smem_core::ErrorCode;
use smem_core::wire::message::{self, MessageHeader};
use smem_core::wire::{FRAME_HEADER_LEN, FrameHeader, MessageType, MessageView, status};

use super::{AUTO_RANKING_PREFIX, WATCH_RANK_DOWN_KEY};
use crate::sync::{lock, wait_timeout};
use crate::tls::LoadedTls;
use crate::{Error, Result};

mod link;

pub use link::connect_error_is_transient;
use link::{Link, open_link};

/// Interval of the client's HEARTBEAT frames while it holds a rank.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// Store traffic of every client of this process since it started (see [`traffic`]).
static TRAFFIC: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
const T_OPS: usize = 0;
const T_SENT: usize = 1;
const T_RECEIVED: usize = 2;
const T_EVENTS: usize = 3;

/// Drops the waiters of `seqs` on `link` (their replies, if they come, are discarded).
fn forget(link: &Link, seqs: &[u32]) {
    let mut pending = lock(&link.pending);
    for seq in seqs {
        pending.remove(seq);
    }
}

fn count(what: usize, n: u64) {
    TRAFFIC[what].fetch_add(n, Ordering::Relaxed);
}

/// Store traffic of this process, every client together (for benchmarks and scale checks).
/// Heartbeats count as ops (one small frame per [`HEARTBEAT_INTERVAL`] per link holding a rank).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Frames sent: every op (parked GETs, WATCH and UNWATCH included) and heartbeat.
    pub ops: u64,
    /// Bytes of the requests sent (frame headers included).
    pub bytes_sent: u64,
    /// Bytes of replies and watch events received (frame headers included).
    pub bytes_received: u64,
    /// Watch and rank-down events received (frames the store pushed without a request).
    pub events: u64,
}

impl Traffic {
    /// The traffic between `earlier` and `self`.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            ops: self.ops.saturating_sub(earlier.ops),
            bytes_sent: self.bytes_sent.saturating_sub(earlier.bytes_sent),
            bytes_received: self.bytes_received.saturating_sub(earlier.bytes_received),
            events: self.events.saturating_sub(earlier.events),
        }
    }
}

/// The store traffic of this process so far (see [`Traffic`]).
pub fn traffic() -> Traffic {
    let t = |i: usize| TRAFFIC[i].load(Ordering::Relaxed);
    Traffic {
        ops: t(T_OPS),
        bytes_sent: t(T_SENT),
        bytes_received: t(T_RECEIVED),
        events: t(T_EVENTS),
    }
}

/// Connection options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// World size sent in the handshake (`None` = unknown).
    pub world_size: Option<u32>,
    /// Rank sent in the handshake (`None` = unknown).
    pub rank: Option<u32>,
    /// How long [`TcpClient::connect`] retries refused connections.
    pub connect_timeout: Duration,
    /// Bound on each operation.
    pub op_timeout: Duration,
    /// After a link loss, the next operation connects again (handshake reconnect flag set,
    /// same world size, the rank held before) instead of failing. Pending operations at the
    /// time of the loss still fail, and watch receivers disconnect.
    pub reconnect: bool,
    /// Mutual TLS: the 16-byte header goes in clear, then TLS 1.3 (this process' certificate
    /// presented, the store's verified against the CA, CRLs and the URL's IP), then the
    /// reply and every frame inside TLS. `None`: plain TCP. The default is the process-wide
    /// setting ([`crate::tls::set_global`], i.e. `smem_set_ssl_option`).
    pub tls: Option<Arc<LoadedTls>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            world_size: None,
            rank: None,
            connect_timeout: Duration::from_secs(10),
            op_timeout: Duration::from_secs(10),
            reconnect: false,
            tls: crate::tls::global(),
        }
    }
}

/// A request sent without waiting for its reply ([`TcpClient::post`]).
#[derive(Clone, Copy, Debug)]
pub enum Posted<'a> {
    /// SET key, value.
    Set(&'a [u8], &'a [u8]),
    /// APPEND key, value.
    Append(&'a [u8], &'a [u8]),
    /// REMOVE key.
    Remove(&'a [u8]),
}

/// Result of [`TcpClient::cas`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasResult {
    /// The value was `expected` (or absent) and now is `new`.
    Swapped,
    /// The value differed; this is the current value.
    Mismatch(Vec<u8>),
}

struct Reply {
    status: i16,
    body: Vec<u8>,
}

struct Inner {
    addr: SocketAddr,
    opts: ClientOptions,
    /// The current link; the lock is held only to read or replace the `Arc`.
    link: Mutex<Arc<Link>>,
    next_seq: AtomicU32,
    /// Rank held (u64::MAX = none): heartbeats are sent while one is held, and a reconnect
    /// claims it again.
    rank: AtomicU64,
    closed: Mutex<bool>,
    closed_cv: Condvar,
}

struct Handle {
    inner: Arc<Inner>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.close();
    }
}

/// A config store client. Cheap to clone; `Send + Sync`; every clone shares one link,
/// requests from many threads are pipelined on it and replies matched by seqNo. The link
/// closes when the last clone is dropped or on [`TcpClient::close`].
///
/// With [`ClientOptions::reconnect`], an operation that finds the link down connects again
/// (handshake with the reconnect flag and the rank held before); operations pending when the
/// link went down still fail, and watch receivers disconnect (watch again).
#[derive(Clone)]
pub struct TcpClient {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for TcpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpClient")
            .field("addr", &self.handle.inner.addr)
            .field("connected", &self.is_connected())
            .finish()
    }
}

fn show(key: &[u8]) -> String {
    let s = String::from_utf8_lossy(&key[..key.len().min(64)]).into_owned();
    if key.len() > 64 {
        format!("{s:?}...")
    } else {
        format!("{s:?}")
    }
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned()
}

fn rejected(op: &str, key: &[u8], r: &Reply) -> Error {
    Error::new(
        ErrorCode::StoreRejected,
        format!(
            "store {op} of key {} failed: status {} {:?}",
            show(key),
            r.status,
            text(&r.body)
        ),
    )
}

fn protocol(op: &str, key: &[u8], what: &str) -> Error {
    Error::new(
        ErrorCode::ProtocolError,
        format!("store {op} of key {}: malformed reply: {what}", show(key)),
    )
}

/// Values of a packed reply.
fn packed_values(op: &str, key: &[u8], body: &[u8]) -> Result<Vec<Vec<u8>>> {
    let m = MessageView::parse(body).map_err(|e| protocol(op, key, &e.to_string()))?;
    Ok(m.values.iter().map(<[u8]>::to_vec).collect())
}

fn encode(
    seq: u32,
    mt: MessageType,
    user_def: i64,
    keys: &[&[u8]],
    values: &[&[u8]],
) -> Result<Vec<u8>> {
    let len = message::encoded_len(keys.iter().copied(), values.iter().copied());
    let body_len = u32::try_from(len)
        .ok()
        .filter(|l| *l <= smem_core::wire::MAX_BODY_LEN)
        .ok_or_else(|| {
            Error::invalid(format!(
                "store request of {len} bytes exceeds the 64 MiB frame limit; use smaller values"
            ))
        })?;
    let mut buf = vec![0u8; FRAME_HEADER_LEN + len];
    let header = MessageHeader {
        user_def,
        request_id: 0,
        msg_type: mt,
    };
    FrameHeader::new(0, body_len, seq)
        .emit(&mut buf)
        .and_then(|_| {
            message::emit(
                &header,
                keys.iter().copied(),
                values.iter().copied(),
                &mut buf[FRAME_HEADER_LEN..],
            )
        })
        .map_err(|e| {
            Error::new(
                ErrorCode::ProtocolError,
                format!("encoding store request: {e}"),
            )
        })?;
    Ok(buf)
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(drop)
        .map_err(|e| {
            Error::new(
                ErrorCode::IoError,
                format!("cannot spawn the {name} thread: {e}"),
            )
        })
}

impl Inner {
    fn is_closed(&self) -> bool {
        *lock(&self.closed)
    }

    fn close(&self) {
        *lock(&self.closed) = true;
        self.closed_cv.notify_all();
        let link = Arc::clone(&lock(&self.link));
        if link.is_up() {
            debug!("store client for {}: closed", self.addr);
        }
        link.down();
    }

    fn next_seq(&self) -> u32 {
        loop {
            let s = self.next_seq.fetch_add(1, Ordering::Relaxed);
            if s != 0 {
                return s;
            }
        }
    }

    fn held_rank(&self) -> Option<u32> {
        u32::try_from(self.rank.load(Ordering::SeqCst)).ok()
    }

    /// The current link; when it is down and `reconnect` is set, a new one (connected without
    /// holding any lock; if two threads race, one link wins and the other is dropped).
    fn link(&self) -> Result<Arc<Link>> {
        let cur = Arc::clone(&lock(&self.link));
        if cur.is_up() {
            return Ok(cur);
        }
        if self.is_closed() {
            return Err(Error::new(
                ErrorCode::IoError,
                format!("store client for {} was closed", self.addr),
            ));
        }
        if !self.opts.reconnect {
            return Err(Error::new(
                ErrorCode::IoError,
                format!(
                    "link to the config store at {} is down; connect again (or set ClientOptions::reconnect)",
                    self.addr
                ),
            ));
        }
        let new = open_link(self.addr, &self.opts, self.held_rank(), true)?;
        let mut g = lock(&self.link);
        if g.is_up() || self.is_closed() {
            new.down();
            return if g.is_up() {
                Ok(Arc::clone(&g))
            } else {
                Err(Error::new(
                    ErrorCode::IoError,
                    format!("store client for {} was closed", self.addr),
                ))
            };
        }
        debug!("store client for {}: reconnected", self.addr);
        *g = Arc::clone(&new);
        Ok(new)
    }

    /// Registers a waiter for each of `seqs` and sends `frames` (their requests, in that
    /// order) with one write; returns the waiters' receivers.
    fn send(&self, seqs: &[u32], frames: &[u8]) -> Result<(Arc<Link>, Vec<Receiver<Reply>>)> {
        let link = self.link()?;
        let rxs = {
            let mut pending = lock(&link.pending);
            seqs.iter()
                .map(|&seq| {
                    let (tx, rx) = mpsc::sync_channel(1);
                    pending.insert(seq, tx);
                    rx
                })
                .collect()
        };
        // If the link went down between `link()` and the insert, `down` may have cleared the
        // map before our entries landed: check again so no op waits for nothing.
        if !link.is_up() {
            forget(&link, seqs);
        }
        if let Err(e) = link.write(self.addr, frames) {
            forget(&link, seqs);
            return Err(e);
        }
        count(T_OPS, seqs.len().saturating_sub(1) as u64);
        Ok((link, rxs))
    }

    /// Sends one request without waiting for its reply (dropped when it comes; the link's
    /// later requests are processed after it).
    fn post(&self, mt: MessageType, keys: &[&[u8]], values: &[&[u8]]) -> Result<()> {
        let seq = self.next_seq();
        let frame = encode(seq, mt, 0, keys, values)?;
        // A waiter nobody waits on: the reader consumes the reply like any other.
        self.send(&[seq], &frame).map(drop)
    }

    /// The error of a request of `op` on `key` whose reply did not come.
    fn no_reply(&self, op: &str, key: &[u8], wait: Duration, e: RecvTimeoutError) -> Error {
        match e {
            RecvTimeoutError::Timeout => Error::new(
                ErrorCode::Timeout,
                format!(
                    "store {op} of key {} got no reply within {} ms; is the store at {} alive?",
                    show(key),
                    wait.as_millis(),
                    self.addr
                ),
            ),
            RecvTimeoutError::Disconnected => Error::new(
                ErrorCode::IoError,
                format!(
                    "store {op} of key {}: link to the config store at {} went down",
                    show(key),
                    self.addr
                ),
            ),
        }
    }

    /// One request of type `mt` per key, sent at once (one write) and answered in order;
    /// waits for every reply, all within `wait`.
    fn call_each(
        &self,
        op: &str,
        mt: MessageType,
        keys: &[Vec<u8>],
        wait: Duration,
    ) -> Result<Vec<Reply>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut frames = Vec::new();
        let mut seqs = Vec::with_capacity(keys.len());
        for k in keys {
            let seq = self.next_seq();
            frames.extend_from_slice(&encode(seq, mt, 0, &[k], &[])?);
            seqs.push(seq);
        }
        let (link, rxs) = self.send(&seqs, &frames)?;
        let deadline = Instant::now() + wait;
        let mut out = Vec::with_capacity(rxs.len());
        for (i, rx) in rxs.iter().enumerate() {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(r) => out.push(r),
                Err(e) => {
                    forget(&link, &seqs[i..]);
                    return Err(self.no_reply(op, &keys[i], wait, e));
                }
            }
        }
        Ok(out)
    }

    fn call(
        &self,
        op: &str,
        mt: MessageType,
        user_def: i64,
        keys: &[&[u8]],
        values: &[&[u8]],
        wait: Duration,
    ) -> Result<Reply> {
        let seq = self.next_seq();
        let frame = encode(seq, mt, user_def, keys, values)?;
        let (link, rxs) = self.send(&[seq], &frame)?;
        let key = keys.first().copied().unwrap_or_default();
        rxs[0].recv_timeout(wait).map_err(|e| {
            if e == RecvTimeoutError::Timeout {
                forget(&link, &[seq]);
            }
            self.no_reply(op, key, wait, e)
        })
    }

    fn heartbeat_loop(self: Arc<Self>) {
        let mut closed = lock(&self.closed);
        loop {
            closed = wait_timeout(&self.closed_cv, closed, HEARTBEAT_INTERVAL);
            if *closed {
                return;
            }
            if self.held_rank().is_some() {
                drop(closed);
                // Only on a live link: heartbeats never trigger a reconnect.
                let link = Arc::clone(&lock(&self.link));
                if let Ok(frame) = encode(0, MessageType::Heartbeat, 0, &[], &[]) {
                    let _ = link.write(self.addr, &frame);
                }
                closed = lock(&self.closed);
            }
        }
    }
}

impl TcpClient {
    /// Connect and handshake, retrying refused and unreachable connections (see
    /// [`connect_error_is_transient`]) with backoff until `connect_timeout`.
    ///
    /// # Errors
    /// `SM_TIMEOUT` when no connection could be made in time; `SM_INVALID_PARAM` for a world
    /// size mismatch; `SM_STORE_REJECTED` for other refusals; `SM_IO_ERROR` otherwise.
    pub fn connect(addr: SocketAddr, opts: ClientOptions) -> Result<Self> {
        let link = open_link(addr, &opts, opts.rank, opts.reconnect)?;
        let inner = Arc::new(Inner {
            addr,
            rank: AtomicU64::new(opts.rank.map_or(u64::MAX, u64::from)),
            opts,
            link: Mutex::new(link),
            next_seq: AtomicU32::new(1),
            closed: Mutex::new(false),
            closed_cv: Condvar::new(),
        });
        let h = Arc::clone(&inner);
        if let Err(e) = spawn("smem-store-hb", move || h.heartbeat_loop()) {
            inner.close();
            return Err(e);
        }
        Ok(Self {
            handle: Arc::new(Handle { inner }),
        })
    }

    fn inner(&self) -> &Inner {
        &self.handle.inner
    }

    /// One request bounded by the op timeout.
    fn call(&self, op: &str, mt: MessageType, keys: &[&[u8]], values: &[&[u8]]) -> Result<Reply> {
        let inner = self.inner();
        inner.call(op, mt, 0, keys, values, inner.opts.op_timeout)
    }

    /// Sends `op` without waiting for its reply: its effect is in place before that of any
    /// later request of this client (one link, processed in order), but a refusal by the
    /// store goes unseen.
    ///
    /// # Errors
    /// The link is down and cannot be re-established; the request is malformed.
    pub fn post(&self, op: Posted<'_>) -> Result<()> {
        let inner = self.inner();
        match op {
            Posted::Set(k, v) => inner.post(MessageType::Set, &[k], &[v]),
            Posted::Append(k, v) => inner.post(MessageType::Append, &[k], &[v]),
            Posted::Remove(k) => inner.post(MessageType::Remove, &[k], &[]),
        }
    }

    /// Store `value` under `key`.
    ///
    /// # Errors
    /// Link, timeout, or store refusal (e.g. over a limit).
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let r = self.call("SET", MessageType::Set, &[key], &[value])?;
        if r.status == status::OK {
            Ok(())
        } else {
            Err(rejected("SET", key, &r))
        }
    }

    /// The value of `key`, `None` if absent.
    ///
    /// # Errors
    /// Link, timeout, or store refusal.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let r = self.call("GET", MessageType::Get, &[key], &[])?;
        match r.status {
            status::OK => Ok(Some(
                packed_values("GET", key, &r.body)?
                    .into_iter()
                    .next()
                    .unwrap_or_default(),
            )),
            status::NOT_EXIST => Ok(None),
            _ => Err(rejected("GET", key, &r)),
        }
    }

    /// Wait until `key` exists (parked GET), up to `timeout`.
    ///
    /// # Errors
    /// `SM_TIMEOUT` naming the key when it did not appear in time; `SM_OBJECT_NOT_EXISTS`
    /// when the store was wiped while waiting; link errors.
    pub fn wait_get(&self, key: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let ms = i64::try_from(timeout.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let wait = timeout.saturating_add(self.inner().opts.op_timeout);
        let r = self
            .inner()
            .call("wait GET", MessageType::Get, ms, &[key], &[], wait)?;
        match r.status {
            status::OK => Ok(packed_values("GET", key, &r.body)?
                .into_iter()
                .next()
                .unwrap_or_default()),
            status::TIMEOUT | status::NOT_EXIST => Err(Error::new(
                ErrorCode::Timeout,
                format!(
                    "key {} did not appear in the config store within {} ms",
                    show(key),
                    timeout.as_millis()
                ),
            )),
            status::WIPED => Err(Error::new(
                ErrorCode::ObjectNotExists,
                format!(
                    "config store was wiped (no ranked link left) while waiting for key {}",
                    show(key)
                ),
            )),
            _ => Err(rejected("wait GET", key, &r)),
        }
    }

    /// Add `delta` to the decimal integer at `key` (absent = 0); returns the new value.
    ///
    /// # Errors
    /// `SM_STORE_REJECTED` when the stored value is not a number or the sum overflows.
    pub fn add(&self, key: &[u8], delta: i64) -> Result<i64> {
        let d = delta.to_string();
        let r = self.call("ADD", MessageType::Add, &[key], &[d.as_bytes()])?;
        if r.status != status::OK {
            return Err(rejected("ADD", key, &r));
        }
        std::str::from_utf8(&r.body)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| protocol("ADD", key, "not a number"))
    }

    /// Delete `key`; `false` if it did not exist.
    ///
    /// # Errors
    /// Link, timeout, or store refusal.
    pub fn remove(&self, key: &[u8]) -> Result<bool> {
        let r = self.call("REMOVE", MessageType::Remove, &[key], &[])?;
        match r.status {
            status::OK => Ok(true),
            status::NOT_EXIST => Ok(false),
            _ => Err(rejected("REMOVE", key, &r)),
        }
    }

    /// Append `value` to `key` (created if absent); returns the new length.
    ///
    /// # Errors
    /// Link, timeout, or store refusal.
    pub fn append(&self, key: &[u8], value: &[u8]) -> Result<u64> {
        let r = self.call("APPEND", MessageType::Append, &[key], &[value])?;
        if r.status != status::OK {
            return Err(rejected("APPEND", key, &r));
        }
        std::str::from_utf8(&r.body)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| protocol("APPEND", key, "not a length"))
    }

    /// Compare and swap: set `new` if `key` is absent or holds `expected`.
    ///
    /// # Errors
    /// Link, timeout, or store refusal.
    pub fn cas(&self, key: &[u8], expected: &[u8], new: &[u8]) -> Result<CasResult> {
        let r = self.call("CAS", MessageType::Cas, &[key], &[expected, new])?;
        if r.status != status::OK {
            return Err(rejected("CAS", key, &r));
        }
        let mut v = packed_values("CAS", key, &r.body)?;
        match v.len() {
            1 => Ok(CasResult::Swapped),
            2 => Ok(CasResult::Mismatch(v.swap_remove(0))),
            n => Err(protocol("CAS", key, &format!("{n} values"))),
        }
    }

    /// Write `data` at `offset` of `key` (created / extended with zeros).
    ///
    /// # Errors
    /// Link, timeout, or store refusal (offset + length over 1 GiB or the value limit).
    pub fn write(&self, key: &[u8], offset: u32, data: &[u8]) -> Result<()> {
        let mut v = Vec::with_capacity(4 + data.len());
        v.extend_from_slice(&offset.to_le_bytes());
        v.extend_from_slice(data);
        let r = self.call("WRITE", MessageType::Write, &[key], &[&v])?;
        if r.status == status::OK {
            Ok(())
        } else {
            Err(rejected("WRITE", key, &r))
        }
    }

    /// Every `(key, value)` whose key starts with `prefix` (unordered).
    ///
    /// # Errors
    /// Link, timeout, or store refusal (reply too large).
    pub fn prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let r = self.call("PREFIX", MessageType::Prefix, &[prefix], &[])?;
        if r.status != status::OK {
            return Err(rejected("PREFIX", prefix, &r));
        }
        let m =
            MessageView::parse(&r.body).map_err(|e| protocol("PREFIX", prefix, &e.to_string()))?;
        if m.keys.len() != m.values.len() {
            return Err(protocol("PREFIX", prefix, "key and value counts differ"));
        }
        Ok(m.keys
            .iter()
            .zip(m.values.iter())
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect())
    }

    /// Whether a live link holds `rank`.
    ///
    /// # Errors
    /// Link, timeout, or store refusal.
    pub fn query_alive(&self, rank: u32) -> Result<bool> {
        let k = rank.to_string();
        let r = self.call("QUERY_ALIVE", MessageType::QueryAlive, &[k.as_bytes()], &[])?;
        if r.status != status::OK {
            return Err(rejected("QUERY_ALIVE", k.as_bytes(), &r));
        }
        Ok(!packed_values("QUERY_ALIVE", k.as_bytes(), &r.body)?.is_empty())
    }

    /// For each of `ranks`, whether a live link holds it: the QUERY_ALIVE requests are sent
    /// at once and answered in order (one round trip, not one per rank).
    ///
    /// # Errors
    /// Link, timeout, or store refusal.
    pub fn query_alive_each(&self, ranks: &[u32]) -> Result<Vec<bool>> {
        let keys: Vec<Vec<u8>> = ranks.iter().map(|r| r.to_string().into_bytes()).collect();
        let inner = self.inner();
        let replies = inner.call_each(
            "QUERY_ALIVE",
            MessageType::QueryAlive,
            &keys,
            inner.opts.op_timeout,
        )?;
        keys.iter()
            .zip(replies)
            .map(|(k, r)| {
                if r.status != status::OK {
                    return Err(rejected("QUERY_ALIVE", k, &r));
                }
                Ok(!packed_values("QUERY_ALIVE", k, &r.body)?.is_empty())
            })
            .collect()
    }

    /// A rank assigned by the store (GET `AutoRanking#`+suffix); this link then holds it.
    ///
    /// # Errors
    /// `SM_LIMIT_EXCEEDED` when every rank is taken (or no world size is known).
    pub fn auto_rank(&self, key_suffix: &[u8]) -> Result<u32> {
        let mut key = AUTO_RANKING_PREFIX.to_vec();
        key.extend_from_slice(key_suffix);
        let r = self.call("AutoRanking GET", MessageType::Get, &[&key], &[])?;
        if r.status != status::OK {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!(
                    "config store cannot assign a rank: {} ({:?}); every rank of the world is taken or no world size was given",
                    r.status,
                    text(&r.body)
                ),
            ));
        }
        let v = packed_values("AutoRanking GET", &key, &r.body)?;
        let rank = v
            .first()
            .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
            .map(u32::from_le_bytes);
        let rank = rank.ok_or_else(|| protocol("AutoRanking GET", &key, "rank is not 4 bytes"))?;
        self.inner().rank.store(u64::from(rank), Ordering::SeqCst);
        Ok(rank)
    }

    /// Watch `key`: the receiver gets the current value (if any) and the value of every later
    /// wake. It disconnects on [`TcpClient::unwatch`], when the link dies or the store is
    /// wiped. A second watch of the same key replaces the first receiver.
    ///
    /// # Errors
    /// Link errors.
    pub fn watch(&self, key: &[u8]) -> Result<Receiver<Vec<u8>>> {
        let (tx, rx) = mpsc::channel();
        let inner = self.inner();
        let link = inner.link()?;
        let seq = {
            let mut w = lock(&link.watches);
            if let Some(&old) = w.by_key.get(key) {
                // The server keeps the first seqNo of a repeated watch.
                w.by_seq.insert(old, (key.to_vec(), tx));
                old
            } else {
                let seq = inner.next_seq();
                w.by_seq.insert(seq, (key.to_vec(), tx));
                w.by_key.insert(key.to_vec(), seq);
                seq
            }
        };
        let sent = encode(seq, MessageType::Watch, 0, &[key], &[])
            .and_then(|f| link.write(inner.addr, &f));
        if let Err(e) = sent {
            let mut w = lock(&link.watches);
            w.by_seq.remove(&seq);
            w.by_key.remove(key);
            return Err(e);
        }
        if !link.is_up() {
            // Went down while registering: make sure the receiver disconnects.
            link.down();
        }
        Ok(rx)
    }

    /// Stop watching `key` (its receiver disconnects).
    ///
    /// # Errors
    /// Link errors.
    pub fn unwatch(&self, key: &[u8]) -> Result<()> {
        let inner = self.inner();
        let link = Arc::clone(&lock(&inner.link));
        {
            let mut w = lock(&link.watches);
            if let Some(seq) = w.by_key.remove(key) {
                w.by_seq.remove(&seq);
            }
        }
        let frame = encode(inner.next_seq(), MessageType::Unwatch, 0, &[key], &[])?;
        link.write(inner.addr, &frame)
    }

    /// Be told the rank of every ranked link that goes down. The receiver disconnects when
    /// the link dies.
    ///
    /// # Errors
    /// Link errors.
    pub fn watch_rank_down(&self) -> Result<Receiver<u32>> {
        let (tx, rx) = mpsc::channel();
        let inner = self.inner();
        let link = inner.link()?;
        let seq = {
            let mut w = lock(&link.watches);
            let seq = w
                .rank_down
                .as_ref()
                .map_or_else(|| inner.next_seq(), |(s, _)| *s);
            w.rank_down = Some((seq, tx));
            seq
        };
        let frame = encode(
            seq,
            MessageType::WatchRankState,
            0,
            &[WATCH_RANK_DOWN_KEY],
            &[],
        )?;
        link.write(inner.addr, &frame)?;
        if !link.is_up() {
            link.down();
        }
        Ok(rx)
    }

    /// Whether the link is up.
    pub fn is_connected(&self) -> bool {
        !self.inner().is_closed() && lock(&self.inner().link).is_up()
    }

    /// Close the link; pending operations fail at once with `SM_IO_ERROR`.
    pub fn close(&self) {
        self.inner().close();
    }

    /// The per-operation timeout.
    pub fn op_timeout(&self) -> Duration {
        self.inner().opts.op_timeout
    }

    /// The store's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner().addr
    }

    /// The local address of the current link: the address this process reaches the store
    /// from (the network transport binds its listener there). `None` when the link is down.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        let link = Arc::clone(&lock(&self.inner().link));
        if !link.is_up() {
            return None;
        }
        link.shutdown_handle.local_addr().ok()
    }
}
