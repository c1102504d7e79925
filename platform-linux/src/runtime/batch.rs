//! `smem_bm_copy_batch` (SPEC 6.1): many independent copies of one type in one call.
//!
//! 1. **Validate all, then move.** The object's slot read lock is taken once for the whole
//!    batch; every entry is planned ([`super::copy`]: flags, type, ranges, window states) before
//!    any byte moves. One bad entry fails the call with `SM_INVALID_PARAM` (or the window's
//!    error) naming its index, and nothing is copied.
//! 2. **Same host first.** Entries whose two sides are addressable in this process run as
//!    memory / device copies, in order, with no further lookup.
//! 3. **Coalesced per peer.** Entries with one side in a window of another host are grouped by
//!    (peer rank, direction, local memory kind); each group is one pipelined transfer
//!    ([`crate::transport::batch`]): one connection, requests back to back, so 1024 entries of
//!    16 KiB cost about one 16 MiB copy. Groups of different peers run side by side.
//! 4. **Window to window across hosts** (`G2G`, both windows remote): staged through a buffer
//!    of this process in rounds of at most [`BOUNCE`] bytes: every source range of the round is
//!    read (grouped per source peer), then written (grouped per destination peer).
//!
//! A failure after validation (a peer died mid-batch, a window left) fails the call with the
//! first error; entries may then have been copied partly (SPEC: each entry is an independent
//! copy). Every transfer is bounded by `controlOperationTimeout`, so the call never hangs.

use std::collections::BTreeMap;

use smem_core::ErrorCode;

use super::copy::{self, BOUNCE, Entered, Plan, Side};
use super::object::BmObject;
use super::{BmHandle, async_engine};
use crate::sys::copy::RawRange;
use crate::transport::Op;
use crate::transport::batch::Span;
use crate::{Error, Result};

/// Most entries of one batch (SPEC 6.1).
pub const BATCH_MAX: usize = 65_536;

/// One entry of a batch: `len` bytes from `src` to `dest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchEntry {
    /// Source address.
    pub src: u64,
    /// Destination address.
    pub dest: u64,
    /// Byte count.
    pub len: u64,
    /// The caller's memory of the local side, as for [`super::bm_copy`].
    pub local: Option<RawRange<'static>>,
}

/// A group of network entries to one peer: (rank, op, local memory is device memory).
type GroupKey = (u32, u8, bool);

fn op_key(op: Op) -> u8 {
    match op {
        Op::Write => 0,
        Op::Read => 1,
    }
}

fn key_op(k: u8) -> Op {
    if k == 0 { Op::Write } else { Op::Read }
}

/// `smem_bm_copy_batch`. Each entry carries the caller's memory of its local side (its `src`
/// for L2G/H2G, its `dest` for G2L/G2H; none for G2G), as for [`super::bm_copy`];
/// destinations written by different entries should not overlap (their order is unspecified).
///
/// # Errors
/// As SPEC 6.1 `smem_bm_copy_batch`.
pub fn bm_copy_batch(
    handle: BmHandle,
    entries: Vec<BatchEntry>,
    copy_type: u32,
    flags: u32,
) -> Result<()> {
    let what = "smem_bm_copy_batch";
    let is_async = copy::async_flag(flags, what)?;
    if entries.is_empty() || entries.len() > BATCH_MAX {
        return Err(Error::invalid(format!(
            "{what}: batchSize {} is not in 1..={BATCH_MAX}",
            entries.len()
        )));
    }
    let held = Entered::enter(handle, what)?;
    let obj = held.obj();
    let plans = plan_all(obj, &entries, copy_type).map_err(|e| e.context(what))?;
    if is_async {
        drop(held);
        return async_engine::submit(handle, async_engine::Job::Batch { entries, copy_type });
    }
    // `held` keeps every planned window entered.
    run_all(obj, &plans).map_err(|e| e.context(what))
}

/// Plans every entry; the first bad one fails naming its index.
fn plan_all(obj: &BmObject, entries: &[BatchEntry], copy_type: u32) -> Result<Vec<Plan>> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            copy::plan_1d(obj, e.src, e.dest, e.len, copy_type, e.local).map_err(|err| {
                err.context(format_args!(
                    "entry {i} ({:#x} -> {:#x}, {} bytes)",
                    e.src, e.dest, e.len
                ))
            })
        })
        .collect()
}

/// Network groups of a batch: per (peer, direction, local kind), the ranges to move.
#[derive(Default)]
struct Groups<'a>(BTreeMap<GroupKey, (smem_core::bm::Location, Vec<Span<'a>>)>);

impl<'a> Groups<'a> {
    /// Adds the bytes between the window range `loc` and `local` (of the same length).
    fn add(
        &mut self,
        loc: smem_core::bm::Location,
        op: Op,
        local: RawRange<'a>,
        device: bool,
        obj: &BmObject,
    ) {
        let remote = obj.layout.part_offset(loc.part) + loc.offset;
        self.0
            .entry((loc.rank, op_key(op), device))
            .or_insert_with(|| (loc, Vec::new()))
            .1
            .push(Span { remote, local });
    }

    /// Runs every group, groups of different peers side by side; the first error wins.
    fn run(self, obj: &BmObject) -> Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let node = copy::node(obj)?;
        let one = |(k, (loc, spans)): (GroupKey, (smem_core::bm::Location, Vec<Span<'_>>))| {
            let (_, op, device) = k;
            // The remote offsets of `spans` are absolute (the transfer's own offset is unused).
            let t = copy::transfer(obj, loc, 0, key_op(op), device)?;
            node.pool().transfer_spans(&t, &spans, node.timeout())
        };
        let mut groups = self.0.into_iter();
        let Some(first) = groups.next() else {
            return Ok(());
        };
        let rest: Vec<_> = groups.collect();
        if rest.is_empty() {
            return one(first);
        }
        let one = &one;
        std::thread::scope(|scope| {
            let others: Vec<_> = rest
                .into_iter()
                .map(|g| scope.spawn(move || one(g)))
                .collect();
            let mut result = one(first);
            for h in others {
                let r = h.join().unwrap_or_else(|_| {
                    Err(Error::new(
                        ErrorCode::Error,
                        "a batch transfer thread panicked",
                    ))
                });
                if result.is_ok() {
                    result = r;
                }
            }
            result
        })
    }
}

/// Runs every planned entry (see the module docs for the order); the caller holds the
/// object's slot read lock since planning.
fn run_all(obj: &BmObject, plans: &[Plan]) -> Result<()> {
    let mut net = Groups::default();
    let mut both_remote = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        match (p.src, p.dst) {
            (Side::Window(_, true), Side::Window(_, true)) => both_remote.push(i),
            (local, Side::Window(loc, true)) => {
                let (range, device) = copy::side_range(obj, local, 0, loc.len, 1)?;
                net.add(loc, Op::Write, range, device, obj);
            }
            (Side::Window(loc, true), local) => {
                let (range, device) = copy::side_range(obj, local, 0, loc.len, 1)?;
                net.add(loc, Op::Read, range, device, obj);
            }
            _ => {
                // Both sides are addressable here.
                copy::run(obj, p, "memory copy")
                    .map_err(|e| e.context(format_args!("entry {i}")))?;
            }
        }
    }
    net.run(obj)?;
    bounce_all(obj, plans, &both_remote)
}

/// The `G2G` entries whose two windows are on other hosts, in rounds of at most [`BOUNCE`]
/// staged bytes (entries larger than that are split).
fn bounce_all(obj: &BmObject, plans: &[Plan], which: &[usize]) -> Result<()> {
    if which.is_empty() {
        return Ok(());
    }
    // (src location, dest location) pieces of at most BOUNCE bytes.
    let mut pieces = Vec::new();
    for &i in which {
        let (Side::Window(s, _), Side::Window(d, _)) = (plans[i].src, plans[i].dst) else {
            continue;
        };
        let mut k = 0;
        while k < s.len {
            let n = BOUNCE.min(s.len - k);
            let at = |l: smem_core::bm::Location| smem_core::bm::Location {
                offset: l.offset + k,
                len: n,
                ..l
            };
            pieces.push((at(s), at(d)));
            k += n;
        }
    }
    let mut buf = vec![0u8; BOUNCE as usize];
    let staging = RawRange::from_mut(&mut buf);
    let mut start = 0;
    while start < pieces.len() {
        let (mut end, mut used) = (start, 0u64);
        while end < pieces.len() && used + pieces[end].0.len <= BOUNCE {
            used += pieces[end].0.len;
            end += 1;
        }
        let (mut reads, mut writes) = (Groups::default(), Groups::default());
        let mut at = 0;
        for (s, d) in &pieces[start..end] {
            // `used <= BOUNCE`: inside the staging buffer.
            let Some(local) = staging.sub(at, s.len) else {
                return Err(Error::new(
                    ErrorCode::Error,
                    "bounce round exceeds its buffer",
                ));
            };
            reads.add(*s, Op::Read, local, false, obj);
            writes.add(*d, Op::Write, local, false, obj);
            at += s.len;
        }
        reads.run(obj)?;
        writes.run(obj)?;
        start = end;
    }
    drop(buf);
    Ok(())
}
