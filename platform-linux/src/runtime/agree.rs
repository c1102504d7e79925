//! The GVA agreement of an object's members (BM create: [`adopt_gva`]; SHM create:
//! [`agree_gva`]), on the object's keys in the config store.
//!
//! # Store keys (under the object's prefix, e.g. `smem/bm/o<id>/`)
//! | key | value | written by |
//! |---|---|---|
//! | `gva` | the [`Proposal`] (`v<n> <nonce> <base> <span> <stride> <hbm> <dram>`, hex) | CAS by the first creator (BM), by the rank proposing candidate `n` (SHM) |
//! | `gva/v<nonce>.<n>` | ADD counter: ranks holding candidate `n` (+ [`SUPERSEDED`], + [`ABORT`]) | every member |
//! | `gva/r<r>` | `<nonce>.<n>` last candidate rank `r` reserved (for the timeout message) | rank `r` |
//! | `gva/d<nonce>.<n>` | `ok`, `superseded` or `abort`: the outcome of candidate `n` (SHM) | the rank that decided it |
//! | `abort` | why SHM create was aborted (sizes differ) | the rank that found it |
//!
//! # Agreement (SHM: create is collective over the `rankSize` ranks)
//! The first rank to find `gva` absent reserves a 2 MiB aligned span at a random spot of the
//! candidate region and proposes it (CAS on an absent key; BM's [`adopt_gva`] proposes with
//! that CAS at once, which also reads what is there). Every rank tries to reserve exactly that span with
//! no-clobber semantics; on success it adds 1 to `gva/v<nonce>.<n>`. A rank where the span is taken
//! reserves a fresh random span of its own and proposes it as `n+1` with a CAS on the exact previous
//! value (one proposal wins per round), then adds [`SUPERSEDED`] to `gva/v<nonce>.<n>` so every waiter
//! wakes and moves. Create returns when `gva/v<nonce>.<n>` reaches `member_size`: no rank can propose
//! afterwards, because every rank holds the span. All waiting is on WATCHes, bounded by
//! `createTimeout`. Random candidates matter: kernel-chosen ones (`mmap(NULL)`, the hole at
//! the top of each process's own map) let two ranks propose each other's taken ranges forever.

use std::time::{Duration, Instant};

use log::debug;
use smem_core::ErrorCode;
use smem_core::gva::Gva;
use smem_core::limits::WINDOW_ALIGN;
pub(crate) use smem_core::wire::record::Proposal;

use super::life::remaining;
use super::object::records::proposal_bytes;
use super::rank_list;
use crate::mem::Reservation;
use crate::store::{CasResult, StoreClient};
use crate::{Error, Result};

/// Added to a candidate's counter when a newer candidate replaced it.
pub(crate) const SUPERSEDED: i64 = 1 << 40;
/// Added to a candidate's counter when create was aborted (sizes differ).
pub(crate) const ABORT: i64 = 1 << 50;

/// A random `u64` (std's randomly seeded hasher; no extra dependency).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

fn counter_key(ns: &AgreeNs, tag: &str) -> Vec<u8> {
    ns.key(&format!("gva/v{tag}"))
}

/// Where a GVA agreement keeps its keys and how its messages name the object (shared by the
/// BM and SHM runtimes).
#[derive(Clone, Debug)]
pub(crate) struct AgreeNs {
    /// Key prefix of the object, e.g. `smem/bm/o3/`.
    pub(crate) prefix: String,
    /// The object in messages, e.g. `BM object 3`.
    pub(crate) object: String,
    /// The creating call in messages, e.g. `smem_bm_create 3`.
    pub(crate) call: String,
}

impl AgreeNs {
    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}{rest}", self.prefix).into_bytes()
    }
}

/// Reserves a random candidate and proposes it as the object's first range (CAS on the absent
/// `gva` key): `Ok` with the reservation and proposal when it won, `Err` with the proposal of
/// the rank that got there first.
fn propose_first(
    store: &StoreClient,
    gva_key: &[u8],
    want: Proposal,
) -> Result<std::result::Result<(Reservation, Proposal), Vec<u8>>> {
    let cand = Reservation::reserve_candidate(want.span, WINDOW_ALIGN, random_u64)?;
    let p = Proposal {
        version: 0,
        nonce: random_u64(),
        base: cand.base().raw(),
        ..want
    };
    Ok(match store.cas(gva_key, b"", &proposal_bytes(&p))? {
        CasResult::Swapped => Ok((cand, p)),
        CasResult::Mismatch(v) => Err(v),
    })
}

/// The proposal stored in `gva`.
fn parse_proposal(cur: &[u8], what: &str) -> Result<Proposal> {
    Proposal::parse(cur).map_err(|e| {
        Error::new(
            ErrorCode::ProtocolError,
            format!("{what}: malformed GVA proposal in the config store ({e})"),
        )
    })
}

/// What [`adopt_gva`] settled on.
pub(crate) enum Adopted {
    /// The object's range, reserved here, and its base.
    Range(Reservation, u64),
    /// This rank's sizes differ from the object's: why (for join to report).
    Mismatch(String),
}

/// BM create's side of the GVA rules (module docs, "Create"): adopts the range the object's
/// first creator proposed, or proposes one (a random spot of the candidate region, see
/// [`Reservation::reserve_candidate`]) when this rank is the first. Never waits for other
/// members. A range taken in this process fails with `SM_RESOURCE_IN_USE`: members that created
/// earlier may already use it, so it cannot move.
pub(crate) fn adopt_gva(
    store: &StoreClient,
    ns: &AgreeNs,
    rank: u32,
    want: Proposal,
) -> Result<Adopted> {
    let gva_key = ns.key("gva");
    let what = format!("{} (rank {rank})", ns.call);
    // Every creator proposes (one CAS, which creates the absent key): it loses only to another
    // creator's proposal, which it then adopts. Asking first would cost a second round trip
    // whenever creators start together, and they usually do.
    let cur = match propose_first(store, &gva_key, want)? {
        Ok((cand, p)) => return Ok(Adopted::Range(cand, p.base)),
        Err(v) => v,
    };
    let p = parse_proposal(&cur, &what)?;
    if !p.same_sizes(&want) {
        return Ok(Adopted::Mismatch(format!(
            "{} was created by another member with HBM {:#x} + DRAM {:#x} per window (span {:#x}), this rank asked for HBM {:#x} + DRAM {:#x} (span {:#x}); every member must pass the same sizes and memberSize",
            ns.object, p.hbm, p.dram, p.span, want.hbm, want.dram, want.span
        )));
    }
    match Reservation::try_reserve_at(Gva(p.base), p.span) {
        Ok(res) => Ok(Adopted::Range(res, p.base)),
        Err(e) if e.code() == ErrorCode::ResourceInUse => Err(Error::new(
            ErrorCode::ResourceInUse,
            format!(
                "{what}: the object's GVA range {:#x}+{:#x}, chosen by its first creator, is taken in this process by another mapping; the members that created it may already use it, so it cannot move: unmap that range here, or destroy the object on every member and create it again",
                p.base, p.span
            ),
        )),
        Err(e) => Err(e.context(&what)),
    }
}

/// How often a waiting GVA agreement asks its [`Departed`] whether a member died.
const AGREE_SLICE: Duration = Duration::from_millis(250);

/// Members (sorted) whose processes are gone for good, asked while a collective create waits:
/// such a member can never count in, so waiting out the timeout would only delay the error.
pub(crate) type Departed<'a> = &'a dyn Fn() -> Vec<u32>;

/// Runs the GVA agreement (module docs) and returns the reservation and the agreed base. On
/// failure the candidate this rank counted for is uncounted, so a later attempt cannot complete
/// with a count that includes a rank that gave up. A member reported by `departed` that does
/// not hold the current candidate fails the agreement at once with `SM_IO_ERROR` naming it.
pub(crate) fn agree_gva(a: &Agreement<'_>) -> Result<(Reservation, u64)> {
    let mut held: Option<(String, Reservation)> = None;
    let r = agree_inner(a, &mut held);
    if r.is_err() {
        if let Some((tag, _)) = held.take() {
            let _ = a.store.add(&counter_key(a.ns, &tag), -1);
        }
    }
    r
}

/// The key that settles candidate `tag`: `ok` (every member holds it), `superseded` or
/// `abort`, set by the rank that decided it; the others wait for it with a parked GET (one
/// op per wait slice, where watching the counter delivered every member's ADD to every member).
fn outcome_key(ns: &AgreeNs, tag: &str) -> Vec<u8> {
    ns.key(&format!("gva/d{tag}"))
}

/// Counts this rank as holding candidate `p` (one of `members`); the rank that completes the
/// count settles the candidate.
fn count_in(
    store: &StoreClient,
    ns: &AgreeNs,
    rank: u32,
    members: u32,
    p: &Proposal,
) -> Result<()> {
    let tag = p.tag().to_string();
    store.set(&ns.key(&format!("gva/r{rank}")), tag.as_bytes())?;
    let n = store.add(&counter_key(ns, &tag), 1)?;
    if n >= i64::from(members) && n < SUPERSEDED {
        store.set(&outcome_key(ns, &tag), b"ok")?;
    }
    Ok(())
}

/// The arguments of one [`agree_gva`] call.
#[derive(Clone, Copy)]
pub(crate) struct Agreement<'a> {
    pub(crate) store: &'a StoreClient,
    pub(crate) ns: &'a AgreeNs,
    /// This member's rank in the object.
    pub(crate) rank: u32,
    /// How many members must hold the range.
    pub(crate) members: u32,
    /// This member's sizes (the proposal it would make).
    pub(crate) want: Proposal,
    pub(crate) deadline: Instant,
    pub(crate) departed: Departed<'a>,
}

fn agree_inner(
    a: &Agreement<'_>,
    held: &mut Option<(String, Reservation)>,
) -> Result<(Reservation, u64)> {
    let Agreement {
        store,
        ns,
        rank,
        members,
        want,
        deadline,
        departed,
    } = *a;
    let gva_key = ns.key("gva");
    let what = format!("{} (rank {rank})", ns.call);
    loop {
        if remaining(deadline).is_zero() {
            return Err(agree_timeout(
                store,
                ns,
                &what,
                held.as_ref().map(|h| h.0.clone()),
            ));
        }
        let cur = match store.get(&gva_key)? {
            Some(v) => v,
            None => match propose_first(store, &gva_key, want)? {
                Ok((cand, p)) => {
                    *held = Some((p.tag().to_string(), cand));
                    count_in(store, ns, rank, members, &p)?;
                    proposal_bytes(&p)
                }
                Err(v) => v,
            },
        };
        let p = parse_proposal(&cur, &what)?;
        let tag = p.tag().to_string();
        if !p.same_sizes(&want) {
            let msg = format!(
                "members of {} were created with different sizes: rank {rank} has HBM {:#x} + DRAM {:#x} x {members} members, another member HBM {:#x} + DRAM {:#x} (span {:#x}); every member must pass the same sizes and memberSize",
                ns.object, want.hbm, want.dram, p.hbm, p.dram, p.span
            );
            let _ = store.set(&ns.key("abort"), msg.as_bytes());
            let _ = store.add(&counter_key(ns, &tag), ABORT);
            let _ = store.set(&outcome_key(ns, &tag), b"abort");
            // The next attempt starts a fresh agreement (new nonce, new counters).
            let _ = store.remove(&gva_key);
            return Err(Error::invalid(format!("{what}: {msg}")));
        }
        if held.as_ref().map(|h| h.0.as_str()) != Some(tag.as_str()) {
            *held = None;
            match Reservation::try_reserve_at(Gva(p.base), p.span) {
                Ok(res) => {
                    *held = Some((tag.clone(), res));
                    count_in(store, ns, rank, members, &p)?;
                }
                Err(e) if e.code() == ErrorCode::ResourceInUse => {
                    debug!(
                        "{what}: candidate v{} at {:#x} is taken here; proposing another",
                        p.version, p.base
                    );
                    let cand = Reservation::reserve_candidate(want.span, WINDOW_ALIGN, random_u64)?;
                    let next = Proposal {
                        version: p.version + 1,
                        nonce: p.nonce,
                        base: cand.base().raw(),
                        ..want
                    };
                    if store.cas(&gva_key, &cur, &proposal_bytes(&next))? == CasResult::Swapped {
                        *held = Some((next.tag().to_string(), cand));
                        count_in(store, ns, rank, members, &next)?;
                        store.add(&counter_key(ns, &tag), SUPERSEDED)?;
                        store.set(&outcome_key(ns, &tag), b"superseded")?;
                    }
                    continue;
                }
                Err(e) => return Err(e.context(&what)),
            }
        }
        // Wait until every member holds this candidate, or it is superseded / aborted.
        let settle = outcome_key(ns, &tag);
        let outcome = loop {
            let left = remaining(deadline);
            if left.is_zero() {
                return Err(agree_timeout(store, ns, &what, Some(tag.clone())));
            }
            match store.wait_get(&settle, left.min(AGREE_SLICE)) {
                Ok(v) if v == b"ok" => break Ok(true),
                Ok(v) if v == b"superseded" => break Ok(false),
                Ok(_) => break Err(()),
                Err(e) if e.code() == ErrorCode::Timeout => {
                    let gone = departed();
                    if gone.is_empty() {
                        continue;
                    }
                    let holders = candidate_holders(store, ns, &tag);
                    let missing: Vec<u32> = gone
                        .into_iter()
                        .filter(|r| holders.binary_search(r).is_err())
                        .collect();
                    if !missing.is_empty() {
                        return Err(Error::new(
                            ErrorCode::IoError,
                            format!(
                                "{what}: member rank(s) [{}] died before taking part in the GVA agreement (their config store link went down); ranks holding the current candidate: [{}]; restart the job",
                                rank_list(&missing),
                                rank_list(&holders)
                            ),
                        ));
                    }
                }
                Err(e) if e.code() == ErrorCode::IoError => {
                    return Err(Error::new(
                        ErrorCode::IoError,
                        format!(
                            "{what}: the config store link went down during the GVA agreement ({e})"
                        ),
                    ));
                }
                Err(e) => return Err(e.context(&what)),
            }
        };
        match outcome {
            Ok(true) => {
                let (_, res) = held.take().ok_or_else(|| {
                    Error::new(ErrorCode::Error, "GVA agreement lost its reservation")
                })?;
                return Ok((res, p.base));
            }
            Ok(false) => {}
            Err(()) => {
                let msg = store
                    .get(&ns.key("abort"))
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                return Err(Error::invalid(format!(
                    "{what}: aborted by another member: {}",
                    String::from_utf8_lossy(&msg)
                )));
            }
        }
    }
}

/// The ranks that last reserved candidate `tag` (sorted), from the `gva/r<r>` records.
fn candidate_holders(store: &StoreClient, ns: &AgreeNs, tag: &str) -> Vec<u32> {
    let mut have = Vec::new();
    if let Ok(list) = store.prefix(&ns.key("gva/r")) {
        for (k, val) in list {
            let r = std::str::from_utf8(&k)
                .ok()
                .and_then(|s| s.rsplit_once("/r"))
                .and_then(|(_, r)| r.parse::<u32>().ok());
            if let Some(r) = r {
                if val == tag.as_bytes() {
                    have.push(r);
                }
            }
        }
    }
    have.sort_unstable();
    have
}

fn agree_timeout(store: &StoreClient, ns: &AgreeNs, what: &str, tag: Option<String>) -> Error {
    let have = tag
        .map(|t| candidate_holders(store, ns, &t))
        .unwrap_or_default();
    Error::new(
        ErrorCode::Timeout,
        format!(
            "{what}: the members did not agree on a GVA range within the create timeout; ranks holding the current candidate: [{}]; the others have not called {} yet or cannot reserve it",
            rank_list(&have),
            ns.call
        ),
    )
}
