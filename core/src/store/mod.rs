//! The config store's semantics (SPEC 5.1, 5.4, 5.6) as a state machine without I/O.
//!
//! [`Store`] takes one parsed request (or a handshake, a link closing, a parked GET's deadline)
//! and answers through an [`Output`]: replies addressed to links, parked-GET deadlines to arm,
//! heartbeats to record, log lines. The key-value map, the parked GETs, the watches and the
//! rank table live behind [`Storage`], which the platform implements with its own collections,
//! so this module allocates nothing. The event loop that owns sockets, TLS, input budgets and
//! timers drives it (`platform-linux/src/store/server.rs`).
//!
//! Byte accounting: every stored entry counts `key.len() + value.len()` towards
//! [`StoreLimits::max_total_bytes`]; each op that changes an entry's size goes through one
//! check ([`Store`]'s `resize`), which also bounds the value by
//! [`StoreLimits::max_value_len`].

use core::fmt::{self, Write as _};
use core::iter::once;

use crate::wire::handshake::Handshake;
use crate::wire::message::{self, MessageType, MessageView};
use crate::wire::status;

mod number;

pub use number::{Increment, parse_increment, parse_stored_i64};

/// The key of WATCH_RANK_STATE / UNWATCH for rank-down events.
pub const WATCH_RANK_DOWN_KEY: &[u8] = b"WATCH_RANK_DOWN_KEY";
/// Prefix of GET keys that ask for an automatically assigned rank.
pub const AUTO_RANKING_PREFIX: &[u8] = b"AutoRanking#";

/// Largest value a WRITE may produce, whatever the limits (the reference's bound).
const WRITE_MAX_END: u64 = 1 << 30;
const BAD: i16 = status::INVALID_REQUEST;
/// Reference texts for wrong key/value counts.
const ONE_KEY_NO_VALUES: &str = "invalid request: key should be one and no values.";
const KEY_AND_VALUE_ONE: &str = "invalid request: key & value should be one.";
const TOO_MANY_WAITERS: &str = "invalid request: too many parked GETs and watches on this link";
const WIPED: &str = "store wiped: no ranked link left";

/// The limits the op semantics enforce (the link-level ones stay with the driver). Over a
/// limit a request gets `-400` with a reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreLimits {
    /// Largest reply body (a PREFIX reply over it is refused).
    pub max_body_len: u32,
    /// Most keys (and most values) in one message.
    pub max_keys: usize,
    /// Longest key.
    pub max_key_len: usize,
    /// Largest stored value, after APPEND/WRITE growth too.
    pub max_value_len: usize,
    /// Total bytes of keys and values stored.
    pub max_total_bytes: u64,
    /// Parked GETs plus watches per link.
    pub max_waiters_per_link: usize,
}

/// Where the store keeps its state: the key-value map, the rank table and the waiters (parked
/// GETs, watches, rank-down watches). The platform implements it with its collections; every
/// method is a plain collection operation, the semantics stay in [`Store`].
pub trait Storage {
    /// Names a link.
    type Link: Copy + Eq + fmt::Display;
    /// The stored pairs under a prefix; iterated twice (length, then bytes) without a change
    /// in between, so it must yield the same pairs each time.
    type Pairs<'a>: Iterator<Item = (&'a [u8], &'a [u8])> + Clone
    where
        Self: 'a;

    /// The value of `key`.
    fn value(&self, key: &[u8]) -> Option<&[u8]>;
    /// How many keys are stored.
    fn key_count(&self) -> usize;
    /// Store `value` under `key`, replacing any value.
    fn set(&mut self, key: &[u8], value: &[u8]);
    /// Append `tail` to the value of `key` (created empty if absent).
    fn append(&mut self, key: &[u8], tail: &[u8]);
    /// Write `data` at `offset` into the value of `key` (created if absent), zero-filling any
    /// gap up to `offset`.
    fn write_at(&mut self, key: &[u8], offset: usize, data: &[u8]);
    /// Remove `key`; the removed value's length.
    fn remove(&mut self, key: &[u8]) -> Option<usize>;
    /// The pairs whose key starts with `prefix`.
    fn with_prefix<'a>(&'a self, prefix: &'a [u8]) -> Self::Pairs<'a>;
    /// Remove every key.
    fn clear(&mut self);

    /// The link holding `rank`.
    fn rank_holder(&self, rank: u32) -> Option<Self::Link>;
    /// The rank `link` holds.
    fn rank_of(&self, link: Self::Link) -> Option<u32>;
    /// `link` holds `rank` from now on.
    fn bind_rank(&mut self, rank: u32, link: Self::Link);
    /// `link` holds no rank any more (nor is it the holder of one); the rank it held.
    fn unbind_rank(&mut self, link: Self::Link) -> Option<u32>;
    /// Whether any link holds a rank.
    fn any_rank(&self) -> bool;

    /// Parked GETs plus watched keys of `link`.
    fn waiters(&self, link: Self::Link) -> usize;
    /// Park a GET of `key` (reply with `seq`); an id for its deadline.
    fn park(&mut self, link: Self::Link, seq: u32, key: &[u8]) -> u64;
    /// Take the parked GET `id` out, if still parked.
    fn unpark(&mut self, id: u64) -> Option<(Self::Link, u32)>;
    /// Take every GET parked on `key` out, in parking order.
    fn unpark_key(&mut self, key: &[u8], each: &mut dyn FnMut(Self::Link, u32));
    /// The seqNo of `link`'s watch of `key`.
    fn watch_seq(&self, link: Self::Link, key: &[u8]) -> Option<u32>;
    /// `link` watches `key`, replies carrying `seq`.
    fn add_watch(&mut self, link: Self::Link, key: &[u8], seq: u32);
    /// `link` stops watching `key`.
    fn remove_watch(&mut self, link: Self::Link, key: &[u8]);
    /// Every watch of `key`: (link, seq).
    fn watchers(&self, key: &[u8], each: &mut dyn FnMut(Self::Link, u32));
    /// The seqNo of `link`'s rank-down watch.
    fn rank_watch(&self, link: Self::Link) -> Option<u32>;
    /// Set (`Some`) or clear `link`'s rank-down watch.
    fn set_rank_watch(&mut self, link: Self::Link, seq: Option<u32>);
    /// Every rank-down watch: (link, seq).
    fn rank_watchers(&self, each: &mut dyn FnMut(Self::Link, u32));
    /// Drop every parked GET, watch and rank-down watch of `link` (it closed).
    fn drop_link(&mut self, link: Self::Link);
    /// Take every parked GET, then every watch, out: (link, seq). Rank-down watches stay.
    fn take_waiters(&mut self, each: &mut dyn FnMut(Self::Link, u32));
}

/// The sink [`Output::packed_to_each`] hands its targets to: one (link, seq) per request.
pub type Sink<'a, L> = &'a mut dyn FnMut(L, u32);

/// What the store asks of its driver.
pub trait Output<L> {
    /// Reply to `link`'s request `seq` with a text body.
    fn text(&mut self, link: L, seq: u32, status: i16, text: fmt::Arguments<'_>);
    /// Reply (status OK) with a packed message of these keys and values.
    fn packed<'v, K, V>(&mut self, link: L, seq: u32, mt: MessageType, keys: K, values: V)
    where
        K: Iterator<Item = &'v [u8]> + Clone,
        V: Iterator<Item = &'v [u8]> + Clone;
    /// Call [`Store::expire`] for parked GET `id` in `after_ms` milliseconds.
    fn arm_deadline(&mut self, id: u64, after_ms: u64);
    /// `link` sent a heartbeat now.
    fn heartbeat(&mut self, link: L);
    /// A line for the log (`info` when `important`, else `debug`).
    fn log(&mut self, important: bool, line: fmt::Arguments<'_>);
    /// The same reply (status OK, a packed message of type `mt` with no keys and the one
    /// value `value`) to every request that `targets` hands to its sink as (link, seq): the
    /// wake-up of a key's parked GETs and watchers. Byte for byte what [`Output::packed`]
    /// would send to each; a driver may encode the message once for all of them.
    fn packed_to_each(
        &mut self,
        mt: MessageType,
        value: &[u8],
        targets: &mut dyn FnMut(Sink<'_, L>),
    ) {
        targets(&mut |l, s| self.packed(l, s, mt, none(), once(value)));
    }
}

/// Why a handshake is refused; its status code and text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal<L> {
    /// Magic or version not supported.
    Unsupported {
        /// The peer's magic.
        magic: i16,
        /// The peer's version.
        version: i16,
    },
    /// The world size differs from the fixed one.
    WorldSize {
        /// Asked for.
        asked: u32,
        /// Fixed by an earlier link.
        fixed: u32,
    },
    /// The rank is held by a live link.
    RankHeld {
        /// The rank.
        rank: u32,
        /// Its holder.
        holder: L,
    },
}

impl<L> Refusal<L> {
    /// The handshake reply code.
    pub const fn code(&self) -> i16 {
        match self {
            Self::WorldSize { .. } => status::WORLD_SIZE_MISMATCH,
            Self::Unsupported { .. } | Self::RankHeld { .. } => status::ERROR,
        }
    }
}

impl<L: fmt::Display> fmt::Display for Refusal<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported { magic, version } => {
                write!(
                    f,
                    "handshake magic {magic} / version {version} not supported"
                )
            }
            Self::WorldSize { asked, fixed } => {
                write!(f, "world size {asked} differs from the fixed {fixed}")
            }
            Self::RankHeld { rank, holder } => {
                write!(f, "rank {rank} is already held by live link {holder}")
            }
        }
    }
}

/// A request refused (`-400`) before it changed anything, with the reason.
enum Refused {
    Text(&'static str),
    TooManyItems(usize),
    KeyTooLong(usize),
    ValueTooLong(usize),
    ValueTooLarge(usize),
    Full { stored: u64, max: u64 },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(t) => f.write_str(t),
            Self::TooManyItems(max) => {
                write!(f, "invalid request: more than {max} keys or values")
            }
            Self::KeyTooLong(max) => write!(f, "invalid request: key longer than {max} bytes"),
            Self::ValueTooLong(max) => {
                write!(f, "invalid request: value larger than {max} bytes")
            }
            Self::ValueTooLarge(max) => {
                write!(f, "invalid request: value would exceed {max} bytes")
            }
            Self::Full { stored, max } => write!(
                f,
                "store full: {stored} of {max} bytes stored (max_total_bytes); remove keys first"
            ),
        }
    }
}

/// The config store state machine.
#[derive(Debug)]
pub struct Store<S> {
    storage: S,
    limits: StoreLimits,
    stored_bytes: u64,
    world_size: Option<u32>,
    cursor: u32,
}

impl<S: Storage> Store<S> {
    /// An empty store over `storage` (which must be empty).
    pub const fn new(storage: S, limits: StoreLimits) -> Self {
        Self {
            storage,
            limits,
            stored_bytes: 0,
            world_size: None,
            cursor: 0,
        }
    }

    /// The storage (for the driver's bookkeeping: counts, timer compaction).
    pub const fn storage(&self) -> &S {
        &self.storage
    }

    /// Bytes of keys and values stored.
    pub const fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    /// The world size fixed by the first link that gave one since the last wipe.
    pub const fn world_size(&self) -> Option<u32> {
        self.world_size
    }

    /// A link's handshake (SPEC 5.1): fixes the world size, registers the rank.
    ///
    /// # Errors
    /// The [`Refusal`] to answer (with [`Refusal::code`]) before closing the link.
    pub fn handshake<O: Output<S::Link>>(
        &mut self,
        link: S::Link,
        hs: &Handshake,
        out: &mut O,
    ) -> Result<(), Refusal<S::Link>> {
        if !hs.is_supported() {
            return Err(Refusal::Unsupported {
                magic: hs.magic,
                version: hs.version,
            });
        }
        if let Some(asked) = hs.world_size {
            match self.world_size {
                Some(fixed) if fixed != asked => return Err(Refusal::WorldSize { asked, fixed }),
                Some(_) => {}
                None => {
                    out.log(true, format_args!("world size fixed to {asked}"));
                    self.world_size = Some(asked);
                }
            }
        }
        if let Some(rank) = hs.rank {
            if let Some(holder) = self.storage.rank_holder(rank) {
                return Err(Refusal::RankHeld { rank, holder });
            }
            self.storage.bind_rank(rank, link);
        }
        Ok(())
    }

    /// One request frame's body from `link`, seqNo `seq`.
    pub fn request<O: Output<S::Link>>(
        &mut self,
        link: S::Link,
        seq: u32,
        body: &[u8],
        out: &mut O,
    ) {
        match MessageView::parse(body) {
            Err(e) => {
                out.log(false, format_args!("link {link}: invalid request: {e}"));
                let text = if body.is_empty() {
                    "invalid request: empty body"
                } else {
                    "invalid request"
                };
                out.text(link, seq, BAD, format_args!("{text}"));
            }
            Ok(m) => {
                if let Err(r) = self.dispatch(link, seq, &m, out) {
                    out.text(link, seq, BAD, format_args!("{r}"));
                }
            }
        }
    }

    /// Parked GET `id` reached its deadline: answer it `-601`.
    pub fn expire<O: Output<S::Link>>(&mut self, id: u64, out: &mut O) {
        if let Some((link, seq)) = self.storage.unpark(id) {
            out.text(link, seq, status::TIMEOUT, format_args!("<timeout>"));
        }
    }

    /// `link` closed (SPEC 5.6): its waiters go, its rank is released and reported to the
    /// rank-down watchers; with no rank held any more, the store is wiped.
    pub fn link_closed<O: Output<S::Link>>(&mut self, link: S::Link, out: &mut O) {
        self.storage.drop_link(link);
        let Some(rank) = self.storage.unbind_rank(link) else {
            return;
        };
        let down = rank.to_le_bytes();
        self.storage.rank_watchers(&mut |l, s| {
            out.packed(l, s, MessageType::WatchRankState, none(), once(&down[..]));
        });
        if !self.storage.any_rank() {
            self.wipe(out);
        }
    }

    /// SPEC 5.6: the last ranked link went away; drop data, parked GETs, watchers, cursor,
    /// and release the world size, so the next job may register another one. Parked GETs and
    /// watchers are answered `-602`.
    fn wipe<O: Output<S::Link>>(&mut self, out: &mut O) {
        out.log(
            true,
            format_args!(
                "no ranked link left; wiping {} keys; world size {:?} released",
                self.storage.key_count(),
                self.world_size
            ),
        );
        self.storage.take_waiters(&mut |l, s| {
            out.text(l, s, status::WIPED, format_args!("{WIPED}"));
        });
        self.storage.clear();
        self.stored_bytes = 0;
        self.cursor = 0;
        self.world_size = None;
    }

    /// Message-size limits.
    fn check_limits(&self, m: &MessageView<'_>) -> Result<(), Refused> {
        let l = &self.limits;
        if m.keys.len() > l.max_keys || m.values.len() > l.max_keys {
            Err(Refused::TooManyItems(l.max_keys))
        } else if m.keys.iter().any(|k| k.len() > l.max_key_len) {
            Err(Refused::KeyTooLong(l.max_key_len))
        } else if m.values.iter().any(|v| v.len() > l.max_value_len) {
            Err(Refused::ValueTooLong(l.max_value_len))
        } else {
            Ok(())
        }
    }

    /// The one byte-accounting check: `key`'s value goes from `old` bytes (`None`: absent) to
    /// `new` bytes. Refused over [`StoreLimits::max_value_len`] or when the growth does not fit
    /// [`StoreLimits::max_total_bytes`]; else the stored total is updated (the caller then
    /// changes the entry).
    fn resize(&mut self, key: &[u8], old: Option<usize>, new: usize) -> Result<(), Refused> {
        if new > self.limits.max_value_len {
            return Err(Refused::ValueTooLarge(self.limits.max_value_len));
        }
        let old = old.map_or(0, |v| (v + key.len()) as u64);
        let new = (new + key.len()) as u64;
        let grown = self.stored_bytes.saturating_add(new.saturating_sub(old));
        if grown > self.limits.max_total_bytes {
            return Err(Refused::Full {
                stored: self.stored_bytes,
                max: self.limits.max_total_bytes,
            });
        }
        self.stored_bytes = self.stored_bytes.saturating_add(new).saturating_sub(old);
        Ok(())
    }

    /// Answer every GET parked on `key` and every watcher of `key` with `value`.
    fn wake<O: Output<S::Link>>(&mut self, key: &[u8], value: &[u8], out: &mut O) {
        let storage = &mut self.storage;
        out.packed_to_each(MessageType::Get, value, &mut |each| {
            storage.unpark_key(key, each);
        });
        out.packed_to_each(MessageType::Watch, value, &mut |each| {
            storage.watchers(key, each);
        });
    }

    fn dispatch<O: Output<S::Link>>(
        &mut self,
        link: S::Link,
        seq: u32,
        m: &MessageView<'_>,
        out: &mut O,
    ) -> Result<(), Refused> {
        use MessageType as M;
        self.check_limits(m)?;
        let (nk, nv) = (m.keys.len(), m.values.len());
        let key = m.keys.get(0).unwrap_or_default();
        let val = m.values.get(0).unwrap_or_default();
        let ok = |out: &mut O| out.text(link, seq, status::OK, format_args!("success"));
        let counts = |k: usize, v: Option<usize>, text: &'static str| {
            if nk == k && v.is_none_or(|v| nv == v) {
                Ok(())
            } else {
                Err(Refused::Text(text))
            }
        };
        match m.header.msg_type {
            M::Set => {
                counts(1, Some(1), "invalid request: key value should be one")?;
                let old = self.storage.value(key);
                let changed = old != Some(val);
                self.resize(key, old.map(<[u8]>::len), val.len())?;
                self.storage.set(key, val);
                if changed {
                    self.wake(key, val, out);
                }
                ok(out);
            }
            M::Get => {
                counts(1, Some(0), ONE_KEY_NO_VALUES)?;
                if key.starts_with(AUTO_RANKING_PREFIX) {
                    return self.auto_rank(link, seq, out);
                }
                if let Some(v) = self.storage.value(key) {
                    out.packed(link, seq, M::Get, none(), once(v));
                } else if m.header.user_def == 0 {
                    out.text(link, seq, status::NOT_EXIST, format_args!("<not exist>"));
                } else {
                    self.park(link, seq, key, m.header.user_def, out)?;
                }
            }
            M::Prefix => {
                counts(1, Some(0), ONE_KEY_NO_VALUES)?;
                let pairs = self.storage.with_prefix(key);
                let keys = pairs.clone().map(|(k, _)| k);
                let values = pairs.map(|(_, v)| v);
                let len = message::encoded_len(keys.clone(), values.clone());
                if len > self.limits.max_body_len as usize {
                    out.text(
                        link,
                        seq,
                        BAD,
                        format_args!(
                            "invalid request: reply of {len} bytes exceeds the frame limit; \
                             use a longer prefix"
                        ),
                    );
                } else {
                    out.packed(link, seq, M::Prefix, keys, values);
                }
            }
            M::Watch => {
                counts(
                    1,
                    None,
                    "invalid request: key should be one and has values.",
                )?;
                let seq = match self.storage.watch_seq(link, key) {
                    Some(first) => first,
                    None => {
                        if self.storage.waiters(link) >= self.limits.max_waiters_per_link {
                            return Err(Refused::Text(TOO_MANY_WAITERS));
                        }
                        self.storage.add_watch(link, key, seq);
                        seq
                    }
                };
                if let Some(v) = self.storage.value(key) {
                    out.packed(link, seq, M::Watch, none(), once(v));
                }
            }
            M::Add => self.add(link, seq, key, val, (nk, nv), out)?,
            M::Remove => {
                counts(1, Some(0), ONE_KEY_NO_VALUES)?;
                match self.storage.remove(key) {
                    Some(len) => {
                        self.stored_bytes =
                            self.stored_bytes.saturating_sub((key.len() + len) as u64);
                        ok(out);
                    }
                    None => out.text(link, seq, status::NOT_EXIST, format_args!("not exist")),
                }
            }
            M::Append => {
                counts(1, Some(1), KEY_AND_VALUE_ONE)?;
                let old = self.storage.value(key).map(<[u8]>::len);
                let new_len = old.unwrap_or(0).saturating_add(val.len());
                self.resize(key, old, new_len)?;
                self.storage.append(key, val);
                self.wake(key, val, out);
                out.text(link, seq, status::OK, format_args!("{new_len}"));
            }
            M::Cas => {
                counts(1, Some(2), "invalid request: count(key)=1 & count(value)=2")?;
                let new = m.values.get(1).unwrap_or_default();
                match self.storage.value(key) {
                    Some(cur) if cur != val => {
                        out.packed(link, seq, M::Cas, none(), [cur, cur].into_iter())
                    }
                    cur => {
                        self.resize(key, cur.map(<[u8]>::len), new.len())?;
                        self.storage.set(key, new);
                        self.wake(key, new, out);
                        out.packed(link, seq, M::Cas, none(), once(new));
                    }
                }
            }
            M::Write => {
                counts(1, Some(1), KEY_AND_VALUE_ONE)?;
                let Some((off, data)) = val.split_first_chunk::<4>() else {
                    return Err(Refused::Text("value size too small."));
                };
                let off = u64::from(u32::from_le_bytes(*off));
                let end = off + data.len() as u64;
                if end > WRITE_MAX_END {
                    return Err(Refused::Text("write total size exceeds limit."));
                }
                if off > 65_535 * data.len() as u64 {
                    return Err(Refused::Text(
                        "invalid request: write offset larger than 65535 times the data length",
                    ));
                }
                let old = self.storage.value(key).map(<[u8]>::len);
                // `end` is at most 1 GiB.
                let new_len = (end as usize).max(old.unwrap_or(0));
                self.resize(key, old, new_len)?;
                self.storage.write_at(key, off as usize, data);
                ok(out);
            }
            M::QueryAlive => {
                counts(1, Some(0), ONE_KEY_NO_VALUES)?;
                let rank = core::str::from_utf8(key)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok());
                let Some(rank) = rank else {
                    return Err(Refused::Text("invalid input"));
                };
                let alive: &[&[u8]] = if self.storage.rank_holder(rank).is_some() {
                    &[&[1]]
                } else {
                    &[]
                };
                out.packed(link, seq, M::QueryAlive, none(), alive.iter().copied());
            }
            M::WatchRankState => {
                if nk != 1 || key != WATCH_RANK_DOWN_KEY {
                    return Err(Refused::Text("invalid request: key should be"));
                }
                if self.storage.rank_watch(link).is_none() {
                    self.storage.set_rank_watch(link, Some(seq));
                }
            }
            M::Heartbeat => out.heartbeat(link),
            M::Unwatch => {
                counts(1, None, ONE_KEY_NO_VALUES)?;
                if key == WATCH_RANK_DOWN_KEY {
                    self.storage.set_rank_watch(link, None);
                }
                self.storage.remove_watch(link, key);
            }
            M::Control => {
                // key[0] = ControlOp (decimal, 0..=12); group membership is not implemented.
                let op = core::str::from_utf8(key)
                    .ok()
                    .and_then(|s| s.parse::<u8>().ok());
                if nk == 0 || op.is_none() {
                    return Err(Refused::Text("invalid control op"));
                }
                return Err(Refused::Text("unsupported control op"));
            }
            _ => return Err(Refused::Text("invalid request message type")),
        }
        Ok(())
    }

    fn park<O: Output<S::Link>>(
        &mut self,
        link: S::Link,
        seq: u32,
        key: &[u8],
        ms: i64,
        out: &mut O,
    ) -> Result<(), Refused> {
        if self.storage.waiters(link) >= self.limits.max_waiters_per_link {
            return Err(Refused::Text(TOO_MANY_WAITERS));
        }
        let id = self.storage.park(link, seq, key);
        // A negative userDef waits without limit.
        if ms > 0 {
            out.arm_deadline(id, ms.unsigned_abs());
        }
        Ok(())
    }

    fn add<O: Output<S::Link>>(
        &mut self,
        link: S::Link,
        seq: u32,
        key: &[u8],
        val: &[u8],
        (nk, nv): (usize, usize),
        out: &mut O,
    ) -> Result<(), Refused> {
        if nk != 1 || nv != 1 {
            return Err(Refused::Text("invalid request: key value should be one."));
        }
        let inc = match parse_increment(val) {
            Increment::Ok(v) => v,
            Increment::NonCanonical => {
                return Err(Refused::Text("invalid request: value should be a number."));
            }
            Increment::Unparseable => {
                return Err(Refused::Text(
                    "invalid request: value should be a decimal i64 number.",
                ));
            }
        };
        let cur = self.storage.value(key);
        let new = match cur {
            None => inc,
            Some(cur) => {
                let Some(old) = parse_stored_i64(cur) else {
                    return Err(Refused::Text("oldValueStr should be a number."));
                };
                old.checked_add(inc)
                    .ok_or(Refused::Text("add result overflow."))?
            }
        };
        let mut text = heapless::String::<20>::new();
        // An i64 has at most 20 characters.
        let _ = write!(text, "{new}");
        self.resize(key, cur.map(<[u8]>::len), text.len())?;
        self.storage.set(key, text.as_bytes());
        self.wake(key, text.as_bytes(), out);
        out.text(link, seq, status::OK, format_args!("{text}"));
        Ok(())
    }

    fn auto_rank<O: Output<S::Link>>(
        &mut self,
        link: S::Link,
        seq: u32,
        out: &mut O,
    ) -> Result<(), Refused> {
        const ALL_TAKEN: &str = "error: worldSize rankSize bigger than worldSize.";
        let held = self.storage.rank_of(link);
        // A link holding a rank gets it again; else the first free rank from the cursor.
        let rank = held.or_else(|| {
            let world = self.world_size.filter(|w| *w > 0).unwrap_or(0);
            let r = (0..world)
                .map(|i| self.cursor.wrapping_add(i) % world)
                .find(|r| self.storage.rank_holder(*r).is_none())?;
            self.storage.bind_rank(r, link);
            self.cursor = (r + 1) % world;
            out.log(false, format_args!("link {link} auto-ranked {r}"));
            Some(r)
        });
        match rank {
            Some(r) => out.packed(
                link,
                seq,
                MessageType::Get,
                none(),
                once(&r.to_le_bytes()[..]),
            ),
            None => out.text(link, seq, status::ERROR, format_args!("{ALL_TAKEN}")),
        }
        Ok(())
    }
}

/// No keys (or values) in a packed reply.
fn none<'a>() -> core::iter::Empty<&'a [u8]> {
    core::iter::empty()
}
