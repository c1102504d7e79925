//! Barrier and allgather among the members of an SHM object at shared-memory speed (SPEC 6.5).
//!
//! The members of an object that share a host map one *control segment* (a `memfd` created by
//! the host's lowest object rank, the *host leader*, and opened by the others through
//! `/proc/<pid>/fd/<n>` like every window; its descriptor travels in the store key
//! `<object prefix>ctl/<leader rank>`). Counters and slots live in it, with the layout and the
//! round arithmetic of [`smem_core::ctl_segment`]: a member arrives with one atomic add, the
//! last arriver releases the round by storing the release word and waking the sleepers, the
//! others spin briefly ([`SPIN`]) and then sleep on the release word (a futex on the shared
//! mapping). With every member on one host no store traffic happens at all.
//!
//! With members on several hosts each host combines its members first; the *last arriver* of
//! each host (whichever member that is) then runs the barrier among hosts through the store
//! ([`Exchange::exchange`]: the `smem_core::collective` machine with one participant per host),
//! and releases its host. An allgather's bytes go to the store directly (each member WRITEs its
//! slice of the generation's value before arriving, [`Exchange::publish`]) and every member
//! reads the whole value after the release ([`Exchange::fetch`]).
//!
//! # Failures
//! A waiting member checks, every [`SLICE`] of sleep: the segment's `failed` word, the pidfds
//! of the other members of its host (readable once their process exited, even as a zombie),
//! and the store's rank-down reports ([`Exchange::departed`]), so a member that dies inside a
//! collective fails every other member's call within about [`SLICE`] with `SM_IO_ERROR` naming
//! it (the first member to notice records the cause in the segment and wakes the host).
//! `controlOperationTimeout` bounds every wait. After a failed collective the members may
//! disagree on the call sequence: every later collective of the object is refused with the
//! first error until the object is destroyed. pidfds are kept for hosts of at most
//! [`PIDFDS_MAX`] members (a descriptor per peer); bigger hosts rely on the store's reports.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use log::debug;
use smem_core::ErrorCode;
use smem_core::ctl_segment::{Arrival, Failure, Hosts, Layout, Round, SLOT_DATA, field};

use crate::mem::{HostSegment, SegmentDescriptor, SegmentKind};
use crate::store::StoreClient;
use crate::sync::lock;
use crate::sys::futex::{self, SharedMap};
use crate::{Error, Result};

/// Polls of the release word before sleeping on it (a few microseconds), so a round that ends
/// at once costs no syscall while a long one does not burn a core. Only where the machine has
/// more CPUs than the host has members: otherwise a spinning member takes the CPU that a
/// member still on its way needs (measured on 2 CPUs with 4 members: the barrier takes 1.2x a
/// pthread barrier without spinning, 2.5x with 200 polls, 19x with 2000).
pub const SPIN: u32 = 200;
/// Longest sleep on the release word before checking the members' health.
pub const SLICE: Duration = Duration::from_millis(100);
/// Hosts with more members watch deaths through the store's reports only.
pub const PIDFDS_MAX: usize = 64;

/// The store side of a collective with members on several hosts (the SHM runtime implements it
/// over the config store).
pub trait Exchange {
    /// Before arriving: makes this member's allgather bytes reachable by the other hosts.
    ///
    /// # Errors
    /// Store errors.
    fn publish(&mut self, send: &[u8]) -> Result<()>;
    /// Run by the last arriver of the host: the barrier among the hosts.
    ///
    /// # Errors
    /// Store errors, a dead member, the timeout.
    fn exchange(&mut self) -> Result<()>;
    /// After the release: every member's bytes into `recv` (rank r's at `r * len`).
    ///
    /// # Errors
    /// Store errors, a gathered value of the wrong length.
    fn fetch(&mut self, recv: &mut [u8]) -> Result<()>;
    /// A member (object rank) whose process the store reported gone, if any.
    fn departed(&self) -> Option<u32>;
}

/// Who takes part, as seen by one member at create.
#[derive(Debug)]
pub struct Members<'a> {
    /// This member's object rank.
    pub rank: u32,
    /// World rank of every object rank.
    pub world_ranks: &'a [u32],
    /// `(object rank, pid)` of every member on this host, this one included, ascending.
    pub local: &'a [(u32, u32)],
    /// The hosts of the object.
    pub hosts: Hosts,
}

/// This process's view of its host's control segment of one object.
#[derive(Debug)]
pub struct HostGroup {
    map: SharedMap,
    /// Keeps the memfd open: the leader's is the one the others open.
    _segment: HostSegment,
    layout: Layout,
    /// This member's index among the host's members.
    index: u32,
    rank: u32,
    /// Object ranks of the host's members, ascending.
    local: Vec<u32>,
    world_ranks: Vec<u32>,
    hosts: Hosts,
    /// `(object rank, pidfd)` of the other members of this host.
    pidfds: Vec<(u32, OwnedFd)>,
    /// The first failed collective's error: later ones are refused with it.
    broken: Mutex<Option<Error>>,
    /// Polls before sleeping ([`SPIN`] or 0).
    spin: u32,
}

fn ctl_key(prefix: &str, leader: u32) -> Vec<u8> {
    format!("{prefix}ctl/{leader}").into_bytes()
}

fn ctl_error(what: impl fmt::Display, e: impl fmt::Display) -> Error {
    Error::new(
        ErrorCode::ProtocolError,
        format!("{what}: control segment: {e}"),
    )
}

impl HostGroup {
    /// Creates (host leader) or opens (the others) the host's control segment of the object
    /// whose store keys start with `prefix`. Collective over the host's members, bounded by
    /// `deadline`; the caller's barrier after it makes sure every member opened it before the
    /// leader may go.
    ///
    /// # Errors
    /// Memory, store and `/proc` errors; `SM_PROTOCOL_ERROR` for a segment of another layout.
    pub fn join(
        store: &StoreClient,
        prefix: &str,
        members: &Members<'_>,
        deadline: Instant,
        what: &str,
    ) -> Result<Self> {
        let count = u32::try_from(members.local.len()).unwrap_or(u32::MAX);
        let layout = Layout::new(count).map_err(|e| ctl_error(what, e))?;
        let index = members
            .local
            .iter()
            .position(|&(r, _)| r == members.rank)
            .ok_or_else(|| ctl_error(what, "this member is not among its host's members"))?;
        let leader = members.local[0].0;
        let page = crate::mem::page_size();
        let len = (layout.len() as u64).div_ceil(page) * page;
        let key = ctl_key(prefix, leader);
        let (segment, map) = if index == 0 {
            let seg = HostSegment::create("smem-shm-ctl", SegmentKind::Host, len)
                .map_err(|e| e.context(format!("{what}: control segment")))?;
            let map = map_segment(&seg, what)?;
            for (i, w) in layout.header().into_iter().enumerate() {
                word(&map, field::MAGIC + 4 * i)?.store(w, Ordering::Release);
            }
            store
                .set(&key, &seg.descriptor().encode())
                .map_err(|e| e.context(what))?;
            (seg, map)
        } else {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let raw = store.wait_get(&key, left).map_err(|e| {
                e.context(format!(
                    "{what}: waiting for rank {leader} (this host's first member) to create the control segment"
                ))
            })?;
            let desc = SegmentDescriptor::decode(&raw).map_err(|e| e.context(what))?;
            if desc.len != len {
                return Err(ctl_error(
                    what,
                    format_args!("rank {leader}'s segment has {} bytes, not {len}", desc.len),
                ));
            }
            let seg = HostSegment::open(&desc).map_err(|e| {
                e.context(format!("{what}: opening rank {leader}'s control segment"))
            })?;
            let map = map_segment(&seg, what)?;
            let mut words = [0u32; 4];
            for (i, w) in words.iter_mut().enumerate() {
                *w = word(&map, field::MAGIC + 4 * i)?.load(Ordering::Acquire);
            }
            layout.check_header(words).map_err(|e| ctl_error(what, e))?;
            (seg, map)
        };
        let mut pidfds = Vec::new();
        if members.local.len() <= PIDFDS_MAX {
            for &(r, pid) in members.local.iter().filter(|m| m.0 != members.rank) {
                match futex::pidfd_open(pid) {
                    Ok(fd) => pidfds.push((r, fd)),
                    Err(e) => debug!(
                        "{what}: no pidfd for rank {r} (pid {pid}): {e}; its death is noticed through the store"
                    ),
                }
            }
        }
        Ok(Self {
            map,
            _segment: segment,
            layout,
            index: index as u32,
            rank: members.rank,
            local: members.local.iter().map(|m| m.0).collect(),
            world_ranks: members.world_ranks.to_vec(),
            hosts: members.hosts,
            pidfds,
            broken: Mutex::new(None),
            spin: if std::thread::available_parallelism().map_or(1, usize::from)
                > members.local.len()
            {
                SPIN
            } else {
                0
            },
        })
    }

    /// The hosts of the object.
    pub fn hosts(&self) -> Hosts {
        self.hosts
    }

    /// Barrier `round` (0, 1, ... in call order).
    ///
    /// # Errors
    /// `SM_IO_ERROR` naming a dead member, `SM_TIMEOUT` at `deadline`, the exchange's errors,
    /// the first error again once a collective of the object failed.
    pub fn barrier(
        &self,
        round: u64,
        deadline: Instant,
        ex: &mut dyn Exchange,
        what: &dyn fmt::Display,
    ) -> Result<()> {
        self.guarded(|| self.run(round, None, deadline, ex, what))
    }

    /// Allgather `round`: rank r's `send` lands at `recv[r * send.len()..]`. The caller checked
    /// `1 <= send.len() <= 65536` and `recv.len() == send.len() * rankSize`.
    ///
    /// # Errors
    /// As [`HostGroup::barrier`]; `SM_INVALID_PARAM` when members passed different sizes.
    pub fn allgather(
        &self,
        round: u64,
        send: &[u8],
        recv: &mut [u8],
        deadline: Instant,
        ex: &mut dyn Exchange,
        what: &dyn fmt::Display,
    ) -> Result<()> {
        self.guarded(|| self.run(round, Some((send, recv)), deadline, ex, what))
    }

    fn guarded(&self, f: impl FnOnce() -> Result<()>) -> Result<()> {
        if let Some(e) = &*lock(&self.broken) {
            return Err(Error::new(
                e.code(),
                format!(
                    "refused: an earlier control operation of this object failed ({}); destroy the object",
                    e.message()
                ),
            ));
        }
        // The caller serialises the calls of an object: nothing can break it meanwhile.
        let r = f();
        if let Err(e) = &r {
            *lock(&self.broken) = Some(e.clone());
        }
        r
    }

    fn run(
        &self,
        round: u64,
        gather: Option<(&[u8], &mut [u8])>,
        deadline: Instant,
        ex: &mut dyn Exchange,
        what: &dyn fmt::Display,
    ) -> Result<()> {
        let w = self.words()?;
        if let Some(f) = self.failure(w.failed) {
            return Err(self.failure_error(f, round, w.arrived, what));
        }
        let multi = self.hosts.count > 1;
        let round = Round::new(&self.layout, round);
        let (send, recv) = gather.unzip();
        if let Some(send) = send {
            let r = if multi {
                ex.publish(send)
            } else {
                self.write_slot(round, send, what)
            };
            r.inspect_err(|_| self.mark(Failure::Failed { rank: self.rank }))?;
        }
        let before = w.arrived.fetch_add(1, Ordering::AcqRel);
        match round.arrival(before) {
            Err(e) => {
                self.mark(Failure::Failed { rank: self.rank });
                return Err(ctl_error(what, e));
            }
            Ok(Arrival::Last) => {
                if multi {
                    ex.exchange().inspect_err(|_| {
                        self.mark(match ex.departed() {
                            Some(rank) => Failure::Died { rank },
                            None => Failure::Failed { rank: self.rank },
                        });
                    })?;
                }
                w.release.store(round.release_word(), Ordering::SeqCst);
                if w.waiters.load(Ordering::SeqCst) > 0 {
                    futex::futex_wake_all(w.release)
                        .map_err(|e| Error::io(format_args!("{what}: futex wake"), &e))?;
                }
            }
            Ok(Arrival::Wait) => self.wait(&w, round, deadline, ex, what)?,
        }
        match (send, recv) {
            (Some(_), Some(recv)) if multi => ex.fetch(recv),
            (Some(send), Some(recv)) => self.read_slots(round, send.len(), recv, what),
            _ => Ok(()),
        }
    }

    fn words(&self) -> Result<Words<'_>> {
        Ok(Words {
            arrived: dword(&self.map, field::ARRIVED)?,
            release: word(&self.map, field::RELEASE)?,
            waiters: word(&self.map, field::WAITERS)?,
            failed: dword(&self.map, field::FAILED)?,
        })
    }

    fn write_slot(&self, round: Round, send: &[u8], what: &dyn fmt::Display) -> Result<()> {
        let slot = self
            .layout
            .slot(round.number(), self.index)
            .ok_or_else(|| ctl_error(what, "no slot for this member"))?;
        let len = u32::try_from(send.len())
            .ok()
            .filter(|&l| l as usize <= SLOT_DATA)
            .ok_or_else(|| Error::invalid(format!("{what}: sendSize above {SLOT_DATA}")))?;
        self.map
            .write(slot.data, send)
            .map_err(|e| Error::io(format_args!("{what}: writing the slot"), &e))?;
        // Published by the arrival's release ordering.
        word(&self.map, slot.len)?.store(len, Ordering::Relaxed);
        Ok(())
    }

    /// Copies every member's slot of `round` into `recv` (one-host objects: member i is rank i).
    fn read_slots(
        &self,
        round: Round,
        len: usize,
        recv: &mut [u8],
        what: &dyn fmt::Display,
    ) -> Result<()> {
        for (i, &r) in self.local.iter().enumerate() {
            let slot = self
                .layout
                .slot(round.number(), i as u32)
                .ok_or_else(|| ctl_error(what, "no slot for a member"))?;
            let got = word(&self.map, slot.len)?.load(Ordering::Relaxed) as usize;
            if got != len {
                return Err(Error::invalid(format!(
                    "{what}: rank {r} passed sendSize {got}, this rank {len}; every member must pass the same sendSize"
                )));
            }
            let at = r as usize * len;
            let out = recv
                .get_mut(at..at + len)
                .ok_or_else(|| ctl_error(what, "receive buffer too small for the members"))?;
            self.map
                .read(slot.data, out)
                .map_err(|e| Error::io(format_args!("{what}: reading a slot"), &e))?;
        }
        Ok(())
    }

    fn wait(
        &self,
        w: &Words<'_>,
        round: Round,
        deadline: Instant,
        ex: &mut dyn Exchange,
        what: &dyn fmt::Display,
    ) -> Result<()> {
        let want = round.release_word();
        for _ in 0..self.spin {
            if w.release.load(Ordering::Acquire) == want {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        loop {
            if let Some(f) = self.failure(w.failed) {
                return Err(self.failure_error(f, round.number(), w.arrived, what));
            }
            let now = Instant::now();
            if now >= deadline {
                self.mark(Failure::TimedOut { rank: self.rank });
                return Err(self.failure_error(
                    Failure::TimedOut { rank: self.rank },
                    round.number(),
                    w.arrived,
                    what,
                ));
            }
            w.waiters.fetch_add(1, Ordering::SeqCst);
            let cur = w.release.load(Ordering::SeqCst);
            if cur != want && w.failed.load(Ordering::SeqCst) == 0 {
                let slice = (deadline - now).min(SLICE);
                if let Err(e) = futex::futex_wait(w.release, cur, slice) {
                    w.waiters.fetch_sub(1, Ordering::SeqCst);
                    return Err(Error::io(format_args!("{what}: futex wait"), &e));
                }
            }
            w.waiters.fetch_sub(1, Ordering::SeqCst);
            if w.release.load(Ordering::Acquire) == want {
                return Ok(());
            }
            if let Some(rank) = self.exited_peer().or_else(|| ex.departed()) {
                self.mark(Failure::Died { rank });
            }
        }
    }

    /// A member of this host whose process exited, by its pidfd.
    fn exited_peer(&self) -> Option<u32> {
        let fds: Vec<BorrowedFd<'_>> = self.pidfds.iter().map(|(_, fd)| fd.as_fd()).collect();
        match futex::first_exited(&fds) {
            Ok(i) => i.map(|i| self.pidfds[i].0),
            Err(e) => {
                debug!("polling the members' pidfds: {e}");
                None
            }
        }
    }

    /// The failure another member of this host recorded in the segment, as this member's error.
    pub fn recorded_failure(&self, what: &dyn fmt::Display) -> Option<Error> {
        let w = self.words().ok()?;
        let f = self.failure(w.failed)?;
        let other = match f {
            Failure::Died { .. } => true,
            Failure::TimedOut { rank } | Failure::Failed { rank } => rank != self.rank,
            _ => true,
        };
        other.then(|| self.failure_error(f, 0, w.arrived, what))
    }

    fn failure(&self, failed: &AtomicU64) -> Option<Failure> {
        let v = failed.load(Ordering::Acquire);
        (v != 0).then(|| Failure::decode(v).unwrap_or(Failure::Failed { rank: u32::MAX }))
    }

    /// Records `f` (unless a cause is recorded already) and wakes every member of the host.
    fn mark(&self, f: Failure) {
        let Ok(w) = self.words() else { return };
        let _ = w
            .failed
            .compare_exchange(0, f.encode(), Ordering::SeqCst, Ordering::SeqCst);
        let _ = futex::futex_wake_all(w.release);
    }

    fn failure_error(
        &self,
        f: Failure,
        round: u64,
        arrived: &AtomicU64,
        what: &dyn fmt::Display,
    ) -> Error {
        let world = |r: u32| {
            self.world_ranks
                .get(r as usize)
                .map_or(String::new(), |w| format!(" (world rank {w})"))
        };
        match f {
            Failure::Died { rank } => Error::new(
                ErrorCode::IoError,
                format!(
                    "{what}: rank {rank}{} died during the control operation (its process exited or its config store link went down); destroy the object",
                    world(rank)
                ),
            ),
            Failure::TimedOut { rank } if rank == self.rank => {
                let n = Round::new(&self.layout, round).arrived(arrived.load(Ordering::Acquire));
                Error::new(
                    ErrorCode::Timeout,
                    format!(
                        "{what}: not every member arrived within controlOperationTimeout: {n} of {} members{} arrived",
                        self.layout.members(),
                        if self.hosts.count > 1 {
                            format!(" of this host (one of {} hosts)", self.hosts.count)
                        } else {
                            String::new()
                        }
                    ),
                )
            }
            Failure::TimedOut { rank } => Error::new(
                ErrorCode::Timeout,
                format!(
                    "{what}: rank {rank}{} gave up waiting after controlOperationTimeout; destroy the object",
                    world(rank)
                ),
            ),
            Failure::Failed { rank } => Error::new(
                ErrorCode::IoError,
                format!(
                    "{what}: the control operation failed on rank {rank}{} (see its error); destroy the object",
                    world(rank)
                ),
            ),
            _ => Error::new(ErrorCode::IoError, format!("{what}: {f}")),
        }
    }
}

/// The shared words of a segment.
struct Words<'a> {
    arrived: &'a AtomicU64,
    release: &'a AtomicU32,
    waiters: &'a AtomicU32,
    failed: &'a AtomicU64,
}

fn map_segment(seg: &HostSegment, what: &str) -> Result<SharedMap> {
    let len = usize::try_from(seg.len()).unwrap_or(usize::MAX);
    SharedMap::map(seg.fd(), len)
        .map_err(|e| Error::io(format_args!("{what}: mapping the control segment"), &e))
}

fn word(map: &SharedMap, offset: usize) -> Result<&AtomicU32> {
    map.u32_at(offset)
        .ok_or_else(|| ctl_error("control segment", "word outside the mapping"))
}

fn dword(map: &SharedMap, offset: usize) -> Result<&AtomicU64> {
    map.u64_at(offset)
        .ok_or_else(|| ctl_error("control segment", "word outside the mapping"))
}
