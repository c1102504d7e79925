//! Who is where, at a store cost that does not grow with the rank count (see the module docs
//! of [`super`], "Create"): the *directory* at the head of the segment the members of a host
//! share (a slot per object rank: present, pid, world rank), and the *host table* in the store
//! (`<prefix>hosts`: runs of object ranks per host, appended by each host's leader), read
//! once by every member.

use std::sync::atomic::Ordering;
use std::time::Instant;

use smem_core::ErrorCode;
use smem_core::limits::WINDOW_ALIGN;

use super::{ShmCtx, WAIT_SLICE, remaining};
use crate::mem::HostSegment;
use crate::runtime::rank_list;
use crate::sys::futex::SharedMap;
use crate::{Error, Result};

/// Bytes of a directory slot: present flag, pid, world rank, reserved.
const SLOT: usize = 16;
/// Bytes of a host table entry: first object rank, run length, first world rank, leader.
const RUN: usize = 16;

/// Bytes before the first window in a host's segment: the directory, rounded up to the window
/// alignment so every window starts 2 MiB aligned in the file as in the address space.
pub(super) fn dir_len(members: u32) -> u64 {
    (members as u64 * SLOT as u64).div_ceil(WINDOW_ALIGN) * WINDOW_ALIGN
}

/// A member of this host, as its directory slot says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Local {
    /// Object rank.
    pub(super) rank: u32,
    /// Process id.
    pub(super) pid: u32,
    /// World rank.
    pub(super) world_rank: u32,
}

/// The directory of a host's segment of an object, mapped in this process.
#[derive(Debug)]
pub(super) struct Directory {
    map: SharedMap,
    members: u32,
}

impl Directory {
    /// Maps the directory of `seg` (an object of `members` ranks).
    ///
    /// # Errors
    /// `SM_IO_ERROR` from the kernel.
    pub(super) fn map(seg: &HostSegment, members: u32, what: &str) -> Result<Self> {
        let page = crate::mem::page_size();
        let len = (u64::from(members) * SLOT as u64).div_ceil(page) * page;
        let map = SharedMap::map(seg.fd(), len as usize)
            .map_err(|e| Error::io(format_args!("{what}: mapping the host's directory"), &e))?;
        Ok(Self { map, members })
    }

    fn word(&self, rank: u32, i: usize) -> Result<&std::sync::atomic::AtomicU32> {
        (rank < self.members)
            .then(|| self.map.u32_at(rank as usize * SLOT + 4 * i))
            .flatten()
            .ok_or_else(|| Error::invalid(format!("rank {rank} has no directory slot")))
    }

    /// Fills this member's slot (the flag last, so a reader that sees it sees the rest).
    pub(super) fn enter(&self, me: Local) -> Result<()> {
        self.word(me.rank, 1)?.store(me.pid, Ordering::Relaxed);
        self.word(me.rank, 2)?
            .store(me.world_rank, Ordering::Relaxed);
        self.word(me.rank, 0)?.store(1, Ordering::Release);
        Ok(())
    }

    /// The members that entered, ascending by object rank.
    pub(super) fn members(&self) -> Result<Vec<Local>> {
        let mut out = Vec::new();
        for rank in 0..self.members {
            if self.word(rank, 0)?.load(Ordering::Acquire) == 1 {
                out.push(Local {
                    rank,
                    pid: self.word(rank, 1)?.load(Ordering::Relaxed),
                    world_rank: self.word(rank, 2)?.load(Ordering::Relaxed),
                });
            }
        }
        Ok(out)
    }
}

/// The host table entries of one host's members (ascending): one per run of consecutive object
/// ranks with consecutive world ranks, all naming the host's leader (its lowest object rank).
pub(super) fn encode_runs(local: &[Local]) -> Vec<u8> {
    let leader = local.first().map_or(0, |l| l.rank);
    let mut out = Vec::new();
    for run in local.chunk_by(|a, b| b.rank == a.rank + 1 && b.world_rank == a.world_rank + 1) {
        for w in [run[0].rank, run.len() as u32, run[0].world_rank, leader] {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    out
}

/// Where every member is, from the host table: `(leader of its host, world rank)` by object
/// rank.
///
/// # Errors
/// `SM_PROTOCOL_ERROR` when the table does not name every member exactly once.
pub(super) fn decode_runs(table: &[u8], members: u32) -> Result<Vec<(u32, u32)>> {
    let bad = |why: String| {
        Error::new(
            ErrorCode::ProtocolError,
            format!("the object's host table is malformed: {why}"),
        )
    };
    if table.len() % RUN != 0 {
        return Err(bad(format!("{} bytes", table.len())));
    }
    let mut out = vec![None; members as usize];
    for e in table.chunks_exact(RUN) {
        let w = |i: usize| u32::from_le_bytes([e[4 * i], e[4 * i + 1], e[4 * i + 2], e[4 * i + 3]]);
        let (first, len, world, leader) = (w(0), w(1), w(2), w(3));
        for k in 0..len {
            let slot = first
                .checked_add(k)
                .and_then(|r| out.get_mut(r as usize))
                .ok_or_else(|| bad(format!("rank {first}+{k} is not below {members}")))?;
            if slot.replace((leader, world.wrapping_add(k))).is_some() {
                return Err(bad(format!("rank {} is listed twice", first + k)));
            }
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(r, e)| e.ok_or_else(|| bad(format!("rank {r} is missing"))))
        .collect()
}

/// Adds `by` to the counter `<prefix><name>` (nothing when 0); the member whose add brings it
/// to `total` sets `<prefix><name>/all`; then waits for that key (parked GETs in slices,
/// failing early when a member of the object died): one round of a constant number of ops per
/// member, where a GET per member cost `n`.
pub(super) fn count_in(
    ctx: &ShmCtx,
    prefix: &str,
    name: &str,
    (by, total): (i64, u32),
    members: u32,
    deadline: Instant,
    what: &str,
) -> Result<()> {
    let store = &ctx.store;
    let all = format!("{prefix}{name}/all").into_bytes();
    if by != 0 {
        let n = store
            .add(format!("{prefix}{name}").as_bytes(), by)
            .map_err(|e| e.context(what))?;
        if n >= i64::from(total) {
            store.set(&all, b"1").map_err(|e| e.context(what))?;
        }
    }
    loop {
        let left = remaining(deadline);
        if left.is_zero() {
            return Err(Error::new(
                ErrorCode::Timeout,
                format!("{what}: not every host published its members in time"),
            ));
        }
        match store.wait_get(&all, left.min(WAIT_SLICE)) {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == ErrorCode::Timeout => {
                let gone = ctx.departed_members(members);
                if !gone.is_empty() {
                    return Err(Error::new(
                        ErrorCode::IoError,
                        format!(
                            "{what}: member rank(s) {} died before their hosts were published (their config store link went down)",
                            rank_list(&gone)
                        ),
                    ));
                }
            }
            Err(e) => return Err(e.context(format!("{what}: waiting for the host table"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(rank: u32, world_rank: u32) -> Local {
        Local {
            rank,
            pid: 1,
            world_rank,
        }
    }

    #[test]
    fn runs_round_trip_and_must_cover_every_rank_once() {
        // Host A: ranks 0-2 (world 10-12) and 5 (world 4); host B: ranks 3-4 (world 0-1).
        let a = encode_runs(&[local(0, 10), local(1, 11), local(2, 12), local(5, 4)]);
        let b = encode_runs(&[local(3, 0), local(4, 1)]);
        assert_eq!(a.len(), 2 * RUN);
        assert_eq!(b.len(), RUN);
        let table = [b.clone(), a.clone()].concat();
        assert_eq!(
            decode_runs(&table, 6),
            Ok(vec![(0, 10), (0, 11), (0, 12), (3, 0), (3, 1), (0, 4)])
        );
        let code = |t: &[u8], n| decode_runs(t, n).map_err(|e| e.code());
        assert_eq!(
            code(&a, 6),
            Err(ErrorCode::ProtocolError),
            "ranks 3, 4 missing"
        );
        assert_eq!(
            code(&[a.clone(), b.clone(), b].concat(), 6),
            Err(ErrorCode::ProtocolError),
            "listed twice"
        );
        assert_eq!(
            code(&table, 5),
            Err(ErrorCode::ProtocolError),
            "rank 5 too big"
        );
        assert_eq!(code(&table[1..], 6), Err(ErrorCode::ProtocolError));
    }

    #[test]
    fn directory_lists_the_members_that_entered() {
        let seg =
            HostSegment::create_sparse("dir-test", crate::mem::SegmentKind::Host, dir_len(300))
                .expect("segment");
        let dir = Directory::map(&seg, 300, "test").expect("map");
        let other = Directory::map(&seg, 300, "test").expect("map");
        assert_eq!(dir.members(), Ok(vec![]));
        dir.enter(local(299, 7)).expect("enter");
        other.enter(local(3, 8)).expect("enter");
        assert_eq!(dir.members(), Ok(vec![local(3, 8), local(299, 7)]));
        assert!(
            dir.enter(local(300, 0)).is_err(),
            "no slot past the members"
        );
        assert_eq!(dir_len(1), WINDOW_ALIGN);
        assert_eq!(dir_len(WINDOW_ALIGN as u32 / 16 + 1), 2 * WINDOW_ALIGN);
    }
}
