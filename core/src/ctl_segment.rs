//! The same-host control segment of an SHM object: its layout and the round arithmetic of
//! barrier and allgather among the members that share a host (SPEC 6.5).
//!
//! The members of one host map one shared segment. A collective call is one *round* `k`
//! (0, 1, 2, ... in call order; every member makes the same calls in the same order):
//!
//! 1. an allgather writes its bytes (and their length) into its slot of parity `k % 2`;
//! 2. the member adds 1 to the `arrived` counter, which only ever grows: it held
//!    `members * k` when round `k` began, so the member that reads `members * (k + 1) - 1`
//!    before its add is the last arriver of the round ([`Round::arrival`]);
//! 3. the last arriver (after the exchange with the other hosts, when there are any) stores
//!    [`Round::release_word`] in the `release` word and wakes the sleepers (a futex on that
//!    word); the others wait until `release` holds that value.
//!
//! Nothing is ever reset, so no member can see the wrong round's state: a member of round
//! `k + 1` cannot finish before every member arrived in `k + 1`, which each does only after
//! leaving round `k`. Slots alternate between two parities for the same reason: a member
//! writes the slots of round `k + 2` only after every member arrived in `k + 1`, that is after
//! every member finished reading round `k`'s slots.
//!
//! A member that gives up (a dead peer, a timeout, an error) records why in the `failed` word
//! ([`Failure`]; the first cause wins) and wakes everyone, so every member of the host fails
//! with the same cause. Nothing here does I/O; the platform maps the bytes and runs the
//! atomics and futex calls at the offsets given here.

use core::fmt;

use crate::collective::ALLGATHER_SEND_MAX;
use crate::limits::WORLD_SIZE_MAX;

/// `"SMCS"`: the first word of a control segment.
pub const MAGIC: u32 = 0x5343_4d53;
/// Layout version (the second word).
pub const VERSION: u32 = 1;

/// One cache line: every shared word has its own, so unrelated words never share a line.
const LINE: usize = 64;

/// Byte offsets of the shared words (every one naturally aligned, on its own cache line).
pub mod field {
    /// `u32` [`super::MAGIC`].
    pub const MAGIC: usize = 0;
    /// `u32` [`super::VERSION`].
    pub const VERSION: usize = 4;
    /// `u32` member count.
    pub const MEMBERS: usize = 8;
    /// `u32` bytes of data per slot.
    pub const SLOT_DATA: usize = 12;
    /// `u64` arrivals since the segment was created.
    pub const ARRIVED: usize = 64;
    /// `u32` futex word: the release word of the last released round.
    pub const RELEASE: usize = 128;
    /// `u32` members asleep (or about to sleep) on [`RELEASE`].
    pub const WAITERS: usize = 192;
    /// `u64` [`super::Failure`] encoded, 0 while none.
    pub const FAILED: usize = 256;
    /// Start of the slots.
    pub const SLOTS: usize = 320;
}

/// Bytes of data a slot holds: the largest allgather contribution.
pub const SLOT_DATA: usize = ALLGATHER_SEND_MAX as usize;
/// A slot: a `u32` length on its own line, then the data.
pub const SLOT_STRIDE: usize = LINE + SLOT_DATA;

/// Why a control segment cannot be laid out or used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SegmentError {
    /// A member count outside `1..=WORLD_SIZE_MAX`.
    Members(u32),
    /// The header does not describe a segment of this layout.
    Header(&'static str),
    /// The arrival counter holds a value outside the current round: members called
    /// collectives in different orders, or a member's process wrote the segment wrongly.
    OutOfRound {
        /// The counter before this member's add.
        before: u64,
        /// The round.
        round: u64,
        /// Members of the host.
        members: u32,
    },
}

impl fmt::Display for SegmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Members(n) => {
                write!(f, "{n} members on one host is outside 1..={WORLD_SIZE_MAX}")
            }
            Self::Header(what) => write!(f, "control segment header rejected: {what}"),
            Self::OutOfRound {
                before,
                round,
                members,
            } => write!(
                f,
                "arrival counter {before} is outside round {round} of {members} members: the \
                 members of this host called barrier/allgather in different orders"
            ),
        }
    }
}

impl core::error::Error for SegmentError {}

/// Where one slot lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Offset of the `u32` length.
    pub len: usize,
    /// Offset of the data ([`SLOT_DATA`] bytes).
    pub data: usize,
}

/// The layout of the segment of `members` members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    members: u32,
}

impl Layout {
    /// The layout for `members` members of one host.
    ///
    /// # Errors
    /// [`SegmentError::Members`] outside `1..=WORLD_SIZE_MAX`.
    pub fn new(members: u32) -> Result<Self, SegmentError> {
        if members == 0 || members as usize > WORLD_SIZE_MAX {
            return Err(SegmentError::Members(members));
        }
        Ok(Self { members })
    }

    /// The member count.
    pub fn members(&self) -> u32 {
        self.members
    }

    /// Bytes the segment needs (header, words, two parities of slots); at most about 128 MiB
    /// for [`WORLD_SIZE_MAX`] members.
    pub fn len(&self) -> usize {
        // members <= 1024: 2 * 1024 * 65600 + 320 fits any usize of 32 bits or more.
        field::SLOTS + 2 * self.members as usize * SLOT_STRIDE
    }

    /// Always `false`: a segment has at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The slot of `member` in `round` (`None` when `member` is not below the member count).
    pub fn slot(&self, round: u64, member: u32) -> Option<Slot> {
        if member >= self.members {
            return None;
        }
        let parity = (round % 2) as usize;
        let index = parity * self.members as usize + member as usize;
        let len = field::SLOTS + index * SLOT_STRIDE;
        Some(Slot {
            len,
            data: len + LINE,
        })
    }

    /// The header words a creator writes: magic, version, members, slot data bytes.
    pub fn header(&self) -> [u32; 4] {
        [MAGIC, VERSION, self.members, SLOT_DATA as u32]
    }

    /// Checks the header words a member read from a segment it opened.
    ///
    /// # Errors
    /// [`SegmentError::Header`] naming the first word that does not match.
    pub fn check_header(&self, words: [u32; 4]) -> Result<(), SegmentError> {
        let [magic, version, members, slot] = words;
        if magic != MAGIC {
            return Err(SegmentError::Header("bad magic"));
        }
        if version != VERSION {
            return Err(SegmentError::Header("unknown version"));
        }
        if members != self.members {
            return Err(SegmentError::Header(
                "member count differs from this member's view of the host",
            ));
        }
        if slot as usize != SLOT_DATA {
            return Err(SegmentError::Header("slot size differs"));
        }
        Ok(())
    }
}

/// What a member's arrival means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Every member of the host arrived: run the exchange (if any) and release the round.
    Last,
    /// Others are missing: wait for the release word.
    Wait,
}

/// Round `k` of a segment of `members` members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Round {
    round: u64,
    members: u32,
}

impl Round {
    /// Round `round` of `layout`'s segment.
    pub fn new(layout: &Layout, round: u64) -> Self {
        Self {
            round,
            members: layout.members,
        }
    }

    /// The round number.
    pub fn number(&self) -> u64 {
        self.round
    }

    fn start(&self) -> u64 {
        self.round.wrapping_mul(u64::from(self.members))
    }

    /// Classifies this member's arrival from the counter value *before* its add.
    ///
    /// # Errors
    /// [`SegmentError::OutOfRound`] when `before` is not in this round.
    pub fn arrival(&self, before: u64) -> Result<Arrival, SegmentError> {
        let into = before.wrapping_sub(self.start());
        if into >= u64::from(self.members) {
            return Err(SegmentError::OutOfRound {
                before,
                round: self.round,
                members: self.members,
            });
        }
        Ok(if into + 1 == u64::from(self.members) {
            Arrival::Last
        } else {
            Arrival::Wait
        })
    }

    /// How many members arrived in this round, given the counter now (for a timeout message).
    pub fn arrived(&self, counter: u64) -> u64 {
        counter
            .wrapping_sub(self.start())
            .min(u64::from(self.members))
    }

    /// The value of the release word once this round is released. It differs from the value
    /// before (the previous round's) whatever the round, also where the low 32 bits wrap.
    pub fn release_word(&self) -> u32 {
        // Truncation on purpose: consecutive rounds differ in their low 32 bits.
        self.round.wrapping_add(1) as u32
    }
}

/// Why the members of a host gave up a collective, as stored in the `failed` word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// Member `rank` (object rank) died.
    Died {
        /// The dead member's object rank.
        rank: u32,
    },
    /// Member `rank` waited longer than `controlOperationTimeout`.
    TimedOut {
        /// The member that gave up.
        rank: u32,
    },
    /// Member `rank` failed otherwise (store error, exchange with other hosts).
    Failed {
        /// The member that gave up.
        rank: u32,
    },
}

impl Failure {
    /// The `failed` word (never 0).
    pub fn encode(self) -> u64 {
        let (kind, rank) = match self {
            Self::Died { rank } => (1u64, rank),
            Self::TimedOut { rank } => (2, rank),
            Self::Failed { rank } => (3, rank),
        };
        (kind << 32) | u64::from(rank)
    }

    /// The failure in a `failed` word: `None` for 0 (none yet) and for unknown kinds (which
    /// the caller reports as a corrupt segment).
    pub fn decode(word: u64) -> Option<Self> {
        let rank = word as u32;
        match word >> 32 {
            1 => Some(Self::Died { rank }),
            2 => Some(Self::TimedOut { rank }),
            3 => Some(Self::Failed { rank }),
            _ => None,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Died { rank } => write!(f, "rank {rank} died"),
            Self::TimedOut { rank } => write!(
                f,
                "rank {rank} gave up after controlOperationTimeout (not every member arrived)"
            ),
            Self::Failed { rank } => write!(f, "rank {rank}'s call failed"),
        }
    }
}

/// The hosts of an object as seen by one member: how many there are and where this member's
/// host ranks among them (hosts ordered by their lowest object rank). The inter-host exchange
/// runs over `count` participants, this host being participant `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hosts {
    /// Number of distinct hosts.
    pub count: u32,
    /// This member's host among them.
    pub index: u32,
}

impl Hosts {
    /// The hosts of `rank_size` members where `same(a, b)` says whether members `a` and `b`
    /// share a host (an equivalence relation), seen from member `me`. Quadratic in the worst
    /// case but allocation-free; it runs once per create.
    pub fn of(rank_size: u32, me: u32, same: impl Fn(u32, u32) -> bool) -> Self {
        let first_of_host = |r: u32| (0..r).all(|q| !same(q, r));
        let mut count = 0;
        let mut index = 0;
        for r in 0..rank_size {
            if first_of_host(r) {
                if r <= me && same(r, me) {
                    index = count;
                }
                count += 1;
            }
        }
        Self { count, index }
    }
}

/// Members the model of [`run_model`] takes at most.
#[cfg(any(test, feature = "_fuzzing-hooks"))]
pub(crate) const MODEL_MEMBERS_MAX: usize = 8;

/// Runs `rounds` rounds (barrier and allgather alike) of `members` members over a model of the
/// segment's shared words, stepping the member `pick() % members` each time (a member waiting
/// for the release just polls). The first `unfair` picks may be anything; a fair schedule from
/// there must finish. Panics when a member leaves a round before every member arrived in it,
/// reads a slot of another round or member, or the schedule stops making progress.
#[cfg(any(test, feature = "_fuzzing-hooks"))]
pub(crate) fn run_model(members: u32, rounds: u64, unfair: u64, mut pick: impl FnMut() -> u32) {
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum At {
        Write,
        Arrive,
        Wait,
        Read,
    }
    let n = members.clamp(1, MODEL_MEMBERS_MAX as u32);
    // INVARIANT: 1 <= n <= 8 is a valid member count.
    let Ok(l) = Layout::new(n) else { return };
    let mut arrived = 0u64;
    let mut release = 0u32;
    // Slot contents by slot index: (round written, member).
    let mut slots = [(u64::MAX, 0u32); 2 * MODEL_MEMBERS_MAX];
    let mut state = [(0u64, At::Write); MODEL_MEMBERS_MAX];
    let slot_index = |k: u64, member: u32| {
        l.slot(k, member)
            .map_or(usize::MAX, |s| (s.len - field::SLOTS) / SLOT_STRIDE)
    };
    let mut steps = 0u64;
    while state[..n as usize].iter().any(|s| s.0 < rounds) {
        steps += 1;
        // Each member needs at most 4 steps a round, plus polls: a fair schedule ends well
        // within this; a stuck one (a member never released) does not.
        assert!(
            steps < unfair + 64 * (rounds + 1) * u64::from(n) * u64::from(n),
            "no progress"
        );
        let m = pick() % n;
        let (k, at) = state[m as usize];
        if k >= rounds {
            continue;
        }
        let r = Round::new(&l, k);
        state[m as usize].1 = match at {
            At::Write => {
                slots[slot_index(k, m)] = (k, m);
                At::Arrive
            }
            At::Arrive => {
                let before = arrived;
                arrived += 1;
                match r.arrival(before) {
                    Ok(Arrival::Last) => {
                        release = r.release_word();
                        At::Read
                    }
                    Ok(Arrival::Wait) => At::Wait,
                    Err(e) => panic!("{e}"),
                }
            }
            At::Wait if release == r.release_word() => At::Read,
            At::Wait => At::Wait,
            At::Read => {
                assert!(
                    arrived >= u64::from(n) * (k + 1),
                    "member {m} left round {k} before every member arrived"
                );
                for q in 0..n {
                    assert_eq!(
                        slots[slot_index(k, q)],
                        (k, q),
                        "round {k} read a stale slot"
                    );
                }
                state[m as usize] = (k + 1, At::Write);
                continue;
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use std::vec;
    use std::vec::Vec;

    use super::*;

    #[test]
    fn layout_keeps_words_on_their_own_lines_and_slots_apart() {
        let l = Layout::new(3).unwrap();
        let words = [
            field::ARRIVED,
            field::RELEASE,
            field::WAITERS,
            field::FAILED,
            field::SLOTS,
        ];
        for w in words.windows(2) {
            assert!(w[1] - w[0] >= LINE);
        }
        assert_eq!(field::ARRIVED % 8, 0);
        assert_eq!(field::FAILED % 8, 0);
        let a = l.slot(0, 0).unwrap();
        let b = l.slot(0, 2).unwrap();
        let c = l.slot(1, 0).unwrap();
        let d = l.slot(2, 2).unwrap();
        assert_eq!(a.len, field::SLOTS);
        assert_eq!(a.data, field::SLOTS + LINE);
        assert_eq!(b.len, field::SLOTS + 2 * SLOT_STRIDE);
        assert_eq!(c.len, field::SLOTS + 3 * SLOT_STRIDE);
        assert_eq!(d, b, "round 2 reuses round 0's slots");
        let last = l.slot(1, 2).unwrap();
        assert_eq!(last.data + SLOT_DATA, l.len());
        assert_eq!(l.slot(0, 3), None);
        assert_eq!(Layout::new(0), Err(SegmentError::Members(0)));
        assert!(Layout::new(WORLD_SIZE_MAX as u32 + 1).is_err());
        let big = Layout::new(WORLD_SIZE_MAX as u32).unwrap();
        assert!(big.len() < 130 << 20);
    }

    #[test]
    fn header_round_trips_and_rejects_mismatches() {
        let l = Layout::new(4).unwrap();
        assert_eq!(l.check_header(l.header()), Ok(()));
        let mut h = l.header();
        h[0] ^= 1;
        assert!(l.check_header(h).is_err());
        let other = Layout::new(5).unwrap();
        assert!(l.check_header(other.header()).is_err());
        let mut v = l.header();
        v[1] = 2;
        assert_eq!(
            l.check_header(v),
            Err(SegmentError::Header("unknown version"))
        );
    }

    #[test]
    fn arrivals_name_the_last_and_reject_other_rounds() {
        let l = Layout::new(3).unwrap();
        let r = Round::new(&l, 5);
        assert_eq!(r.arrival(15), Ok(Arrival::Wait));
        assert_eq!(r.arrival(16), Ok(Arrival::Wait));
        assert_eq!(r.arrival(17), Ok(Arrival::Last));
        assert!(r.arrival(14).is_err());
        assert!(r.arrival(18).is_err());
        assert_eq!(r.arrived(16), 1);
        assert_eq!(r.arrived(99), 3);
        assert_eq!(r.release_word(), 6);
        let one = Round::new(&Layout::new(1).unwrap(), 0);
        assert_eq!(one.arrival(0), Ok(Arrival::Last));
        // The low 32 bits wrap: the release word still changes from round to round.
        let a = Round::new(&l, u64::from(u32::MAX) - 1).release_word();
        let b = Round::new(&l, u64::from(u32::MAX)).release_word();
        assert_ne!(a, b);
    }

    #[test]
    fn failures_round_trip() {
        for f in [
            Failure::Died { rank: 0 },
            Failure::TimedOut { rank: 1023 },
            Failure::Failed { rank: 7 },
        ] {
            assert_ne!(f.encode(), 0);
            assert_eq!(Failure::decode(f.encode()), Some(f));
        }
        assert_eq!(Failure::decode(0), None);
        assert_eq!(Failure::decode(9 << 32), None);
    }

    #[test]
    fn hosts_are_ordered_by_their_lowest_rank() {
        let host = [1u8, 0, 1, 2, 0, 2, 2];
        let same = |a: u32, b: u32| host[a as usize] == host[b as usize];
        let seen: Vec<Hosts> = (0..7).map(|me| Hosts::of(7, me, same)).collect();
        let idx: Vec<u32> = seen.iter().map(|h| h.index).collect();
        assert!(seen.iter().all(|h| h.count == 3));
        assert_eq!(idx, vec![0, 1, 0, 2, 1, 2, 2]);
        assert_eq!(Hosts::of(4, 2, |_, _| true), Hosts { count: 1, index: 0 });
        assert_eq!(Hosts::of(3, 2, |a, b| a == b), Hosts { count: 3, index: 2 });
    }

    /// The model of the segment run by 1..=8 members in pseudo-random interleavings.
    #[test]
    fn interleaved_members_never_leave_early_or_read_another_round() {
        let rounds = if cfg!(miri) { 20 } else { 300 };
        for n in 1..=MODEL_MEMBERS_MAX as u32 {
            let mut seed = 7u64 + u64::from(n);
            run_model(n, rounds, 0, || {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as u32
            });
        }
    }
}
