//! Barrier and allgather over the config store, as sans-I/O state machines.
//!
//! A collective call of an SHM object is one *generation* `g` (0, 1, 2, ... in call order; all
//! ranks make the same calls in the same order). Its store keys are
//!
//! | key          | op                 | meaning                                           |
//! |--------------|--------------------|---------------------------------------------------|
//! | `{p}{g}v`    | WRITE at `r*len`   | allgather only: rank r's bytes                    |
//! | `{p}{g}c`    | ADD 1              | arrival counter; the rank that reads `n` is last  |
//! | `{p}{g}d`    | SET / parked GET   | "done": set by the last arriver, waited on by all |
//!
//! The last arriver of generation `g` sets `{p}{g}d` (releasing the others at once), then
//! removes the three keys of `g - 1`: every rank has entered `g`, so every rank has finished
//! `g - 1` (it returned from its GET of `{p}{g-1}d` and, for an allgather, its GET of
//! `{p}{g-1}v`), and no rank can reach `g + 1`'s cleanup of `g` before this rank entered
//! `g + 1`. So an object holds at most eight keys whatever the number of calls (`g - 1` until
//! cleaned, `g`, and the slot and counter of `g + 1` from ranks that already ran on; `g + 2`
//! needs this rank), and the store does not grow. Cleaning up after the release keeps the removals off the
//! critical path: the others run on while the last arriver cleans.
//!
//! The machines own no I/O: [`Collective::poll`] says which store operation to run next,
//! [`Collective::complete`] takes its outcome. Any reply is accepted in any state without
//! panicking; a reply that does not fit (a counter beyond the rank count, a gathered value of
//! the wrong length) ends the machine with a [`CollectiveError`].

use core::fmt::{self, Write as _};

use heapless::String;

/// Longest key prefix accepted, in bytes.
pub const PREFIX_MAX: usize = 64;
/// Capacity of a generated key: the prefix, a `u64` in decimal and a one-letter suffix.
const KEY_CAP: usize = PREFIX_MAX + 24;

/// Largest allgather contribution of one rank (SPEC 2.3).
pub const ALLGATHER_SEND_MAX: u32 = 65536;

/// A store key built by a machine.
pub type Key = String<KEY_CAP>;

/// The key of the gathered bytes of `generation` (`{prefix}{generation}v`): with members on
/// several hosts, every member WRITEs its bytes there at `rank * sendSize` and GETs the whole
/// value once the hosts' barrier of that generation released it (the cleanup of the next
/// generation removes it, as for [`Collective::allgather`]).
///
/// # Errors
/// [`CollectiveError::PrefixTooLong`].
pub fn gathered_key(prefix: &str, generation: u64) -> Result<Key, CollectiveError> {
    if prefix.len() > PREFIX_MAX {
        return Err(CollectiveError::PrefixTooLong);
    }
    let mut key = Key::new();
    // INVARIANT: KEY_CAP holds PREFIX_MAX bytes + 20 digits + 1 suffix.
    write!(key, "{prefix}{generation}v").map_err(|_| CollectiveError::PrefixTooLong)?;
    Ok(key)
}

/// The store operation the caller must run next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreOp<'a> {
    /// `WRITE key, offset ‖ <this rank's send bytes>`; reply [`Reply::Done`].
    WriteSendBytes {
        /// The key.
        key: &'a str,
        /// Byte offset of this rank's slot.
        offset: u32,
    },
    /// `ADD key, delta`; reply [`Reply::Added`].
    Add {
        /// The key.
        key: &'a str,
        /// The increment.
        delta: i64,
    },
    /// `SET key, value`; reply [`Reply::Done`].
    Set {
        /// The key.
        key: &'a str,
        /// The value.
        value: &'a [u8],
    },
    /// A parked GET of `key`, bounded by the caller's deadline; reply [`Reply::Value`].
    WaitGet {
        /// The key.
        key: &'a str,
    },
    /// `GET key` (it exists); reply [`Reply::Value`]: the caller keeps the bytes, the machine
    /// checks their length.
    GetGathered {
        /// The key.
        key: &'a str,
    },
    /// `REMOVE key`; reply [`Reply::Done`] whether or not it existed.
    Remove {
        /// The key.
        key: &'a str,
    },
}

/// The outcome of the last [`StoreOp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// The operation succeeded without a value.
    Done,
    /// ADD answered with the new value.
    Added(i64),
    /// GET answered with a value of this many bytes.
    Value(usize),
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step<'a> {
    /// Run this store operation and pass its outcome to [`Collective::complete`].
    Run(StoreOp<'a>),
    /// The collective call completed.
    Finished,
}

/// Why a collective call cannot go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CollectiveError {
    /// `rank >= size`, `size == 0`, or an allgather length out of `1..=65536`.
    InvalidArgument(&'static str),
    /// The key prefix is longer than [`PREFIX_MAX`].
    PrefixTooLong,
    /// The arrival counter went past the rank count: ranks disagree on the call sequence
    /// (one called barrier where another called allgather) or a stale object shares the prefix.
    CounterOutOfRange {
        /// The counter value read.
        value: i64,
        /// The number of ranks.
        size: u32,
    },
    /// The gathered value has the wrong length: ranks passed different `sendSize`s.
    GatheredLength {
        /// Bytes received.
        got: usize,
        /// Bytes expected (`size * send_len`).
        expected: u64,
    },
    /// A reply of the wrong kind for the operation asked for.
    UnexpectedReply,
    /// [`Collective::complete`] was called after the machine finished or failed.
    AlreadyFinished,
}

impl fmt::Display for CollectiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidArgument(what) => write!(f, "invalid collective argument: {what}"),
            Self::PrefixTooLong => write!(f, "store key prefix longer than {PREFIX_MAX} bytes"),
            Self::CounterOutOfRange { value, size } => write!(
                f,
                "arrival counter reached {value} with {size} ranks: ranks called collectives in \
                 different orders, or a stale object uses the same keys"
            ),
            Self::GatheredLength { got, expected } => write!(
                f,
                "allgather collected {got} bytes, expected {expected}: ranks passed different \
                 sendSize values"
            ),
            Self::UnexpectedReply => write!(f, "store reply does not match the operation"),
            Self::AlreadyFinished => write!(f, "collective already finished"),
        }
    }
}

impl core::error::Error for CollectiveError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    WriteSlot,
    Arrive,
    CleanupCounter,
    CleanupDone,
    CleanupValue,
    SetDone,
    WaitDone,
    Gather,
    Finished,
    Failed,
}

/// One barrier or allgather call of one rank.
#[derive(Clone, Debug)]
pub struct Collective {
    prefix: String<PREFIX_MAX>,
    generation: u64,
    rank: u32,
    size: u32,
    /// `Some(len)` for an allgather of `len` bytes per rank.
    send_len: Option<u32>,
    phase: Phase,
    key: Key,
}

impl Collective {
    /// A barrier: generation `generation` of the object whose keys start with `prefix`.
    ///
    /// # Errors
    /// [`CollectiveError::InvalidArgument`] or [`CollectiveError::PrefixTooLong`].
    pub fn barrier(
        prefix: &str,
        generation: u64,
        rank: u32,
        size: u32,
    ) -> Result<Self, CollectiveError> {
        Self::new(prefix, generation, rank, size, None)
    }

    /// An allgather of `send_len` bytes per rank.
    ///
    /// # Errors
    /// As [`Collective::barrier`]; also `send_len` outside `1..=65536`.
    pub fn allgather(
        prefix: &str,
        generation: u64,
        rank: u32,
        size: u32,
        send_len: u32,
    ) -> Result<Self, CollectiveError> {
        if send_len == 0 || send_len > ALLGATHER_SEND_MAX {
            return Err(CollectiveError::InvalidArgument(
                "sendSize must be in 1..=65536",
            ));
        }
        Self::new(prefix, generation, rank, size, Some(send_len))
    }

    fn new(
        prefix: &str,
        generation: u64,
        rank: u32,
        size: u32,
        send_len: Option<u32>,
    ) -> Result<Self, CollectiveError> {
        if size == 0 || rank >= size {
            return Err(CollectiveError::InvalidArgument(
                "rank must be < rank count",
            ));
        }
        let mut p = String::new();
        p.push_str(prefix)
            .map_err(|()| CollectiveError::PrefixTooLong)?;
        Ok(Self {
            prefix: p,
            generation,
            rank,
            size,
            send_len,
            phase: if send_len.is_some() {
                Phase::WriteSlot
            } else {
                Phase::Arrive
            },
            key: String::new(),
        })
    }

    /// Bytes the gathered value has once complete (`size * send_len`), or 0 for a barrier.
    pub fn gathered_len(&self) -> u64 {
        u64::from(self.size) * u64::from(self.send_len.unwrap_or(0))
    }

    /// The key of `suffix` in `generation`.
    fn set_key(&mut self, generation: u64, suffix: char) {
        self.key.clear();
        // INVARIANT: KEY_CAP holds PREFIX_MAX bytes + 20 digits + 1 suffix, so this cannot fail;
        // a failure would only truncate the key, never panic.
        let _ = write!(self.key, "{}{}{}", self.prefix, generation, suffix);
    }

    /// The next thing to do.
    pub fn poll(&mut self) -> Step<'_> {
        let g = self.generation;
        let op_of = |phase: Phase| -> Option<(u64, char)> {
            match phase {
                Phase::WriteSlot | Phase::Gather => Some((g, 'v')),
                Phase::Arrive => Some((g, 'c')),
                Phase::CleanupCounter => Some((g.wrapping_sub(1), 'c')),
                Phase::CleanupDone => Some((g.wrapping_sub(1), 'd')),
                Phase::CleanupValue => Some((g.wrapping_sub(1), 'v')),
                Phase::SetDone | Phase::WaitDone => Some((g, 'd')),
                Phase::Finished | Phase::Failed => None,
            }
        };
        let Some((generation, suffix)) = op_of(self.phase) else {
            return Step::Finished;
        };
        self.set_key(generation, suffix);
        let key = self.key.as_str();
        let op = match self.phase {
            Phase::WriteSlot => StoreOp::WriteSendBytes {
                key,
                // rank < size <= u32::MAX and send_len <= 65536; the product is < 2^48, but the
                // WRITE offset is a u32: ranks past 65535 x 65536 bytes saturate and are
                // rejected by the store's size limit rather than wrapping.
                offset: u32::try_from(u64::from(self.rank) * u64::from(self.send_len.unwrap_or(0)))
                    .unwrap_or(u32::MAX),
            },
            Phase::Arrive => StoreOp::Add { key, delta: 1 },
            Phase::CleanupCounter | Phase::CleanupDone | Phase::CleanupValue => {
                StoreOp::Remove { key }
            }
            Phase::SetDone => StoreOp::Set { key, value: b"1" },
            Phase::WaitDone => StoreOp::WaitGet { key },
            Phase::Gather => StoreOp::GetGathered { key },
            Phase::Finished | Phase::Failed => return Step::Finished,
        };
        Step::Run(op)
    }

    /// Feed the outcome of the operation [`Collective::poll`] returned.
    ///
    /// # Errors
    /// A [`CollectiveError`] ends the machine; later polls return [`Step::Finished`] and the
    /// caller must treat the call as failed.
    pub fn complete(&mut self, reply: Reply) -> Result<(), CollectiveError> {
        let next = match (self.phase, reply) {
            (Phase::WriteSlot, Reply::Done) => Ok(Phase::Arrive),
            (Phase::Arrive, Reply::Added(v)) => {
                if v < 1 || v > i64::from(self.size) {
                    Err(CollectiveError::CounterOutOfRange {
                        value: v,
                        size: self.size,
                    })
                } else if v == i64::from(self.size) {
                    Ok(Phase::SetDone)
                } else {
                    Ok(Phase::WaitDone)
                }
            }
            (Phase::SetDone, Reply::Done) => Ok(if self.generation == 0 {
                self.after_release()
            } else {
                Phase::CleanupCounter
            }),
            (Phase::CleanupCounter, Reply::Done) => Ok(Phase::CleanupDone),
            (Phase::CleanupDone, Reply::Done) => Ok(Phase::CleanupValue),
            (Phase::CleanupValue, Reply::Done) | (Phase::WaitDone, Reply::Value(_)) => {
                Ok(self.after_release())
            }
            (Phase::Gather, Reply::Value(got)) => {
                let expected = self.gathered_len();
                if u64::try_from(got).ok() == Some(expected) {
                    Ok(Phase::Finished)
                } else {
                    Err(CollectiveError::GatheredLength { got, expected })
                }
            }
            (Phase::Finished | Phase::Failed, _) => Err(CollectiveError::AlreadyFinished),
            _ => Err(CollectiveError::UnexpectedReply),
        };
        match next {
            Ok(phase) => {
                self.phase = phase;
                Ok(())
            }
            Err(e) => {
                self.phase = Phase::Failed;
                Err(e)
            }
        }
    }

    /// The phase after `{p}{g}d` was seen or set (and, for the last arriver, the cleanup).
    fn after_release(&self) -> Phase {
        if self.send_len.is_some() {
            Phase::Gather
        } else {
            Phase::Finished
        }
    }

    /// Whether the call completed successfully.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::string::{String as StdString, ToString};
    use std::vec;
    use std::vec::Vec;

    use super::*;

    /// A tiny in-memory store that runs machines step by step in a chosen interleaving.
    #[derive(Default)]
    struct Model {
        kv: HashMap<StdString, Vec<u8>>,
    }

    impl Model {
        /// Runs one step of `m` (rank `rank`, sending `send`); returns false if it must wait.
        fn step(&mut self, m: &mut Collective, send: &[u8], out: &mut Vec<u8>) -> bool {
            let reply = match m.poll() {
                Step::Finished => return false,
                Step::Run(StoreOp::WriteSendBytes { key, offset }) => {
                    let v = self.kv.entry(key.to_string()).or_default();
                    let end = offset as usize + send.len();
                    if v.len() < end {
                        v.resize(end, 0);
                    }
                    v[offset as usize..end].copy_from_slice(send);
                    Reply::Done
                }
                Step::Run(StoreOp::Add { key, delta }) => {
                    let v = self
                        .kv
                        .entry(key.to_string())
                        .or_insert_with(|| b"0".to_vec());
                    let n: i64 = core::str::from_utf8(v).unwrap().parse::<i64>().unwrap() + delta;
                    *v = n.to_string().into_bytes();
                    Reply::Added(n)
                }
                Step::Run(StoreOp::Set { key, value }) => {
                    self.kv.insert(key.to_string(), value.to_vec());
                    Reply::Done
                }
                Step::Run(StoreOp::WaitGet { key }) => match self.kv.get(key) {
                    Some(v) => Reply::Value(v.len()),
                    None => return false,
                },
                Step::Run(StoreOp::GetGathered { key }) => {
                    let v = self.kv.get(key).cloned().unwrap_or_default();
                    out.clone_from(&v);
                    Reply::Value(v.len())
                }
                Step::Run(StoreOp::Remove { key }) => {
                    self.kv.remove(key);
                    Reply::Done
                }
            };
            m.complete(reply).unwrap();
            true
        }
    }

    fn run_round(model: &mut Model, n: u32, generation: u64, gather: bool, order: &mut u64) {
        let mut ms: Vec<Collective> = (0..n)
            .map(|r| {
                if gather {
                    Collective::allgather("shm/7.1/", generation, r, n, 3).unwrap()
                } else {
                    Collective::barrier("shm/7.1/", generation, r, n).unwrap()
                }
            })
            .collect();
        let sends: Vec<Vec<u8>> = (0..n)
            .map(|r| vec![r as u8, generation as u8, 0xAB])
            .collect();
        let mut outs = vec![Vec::new(); n as usize];
        let mut guard = 0;
        while !ms.iter().all(Collective::is_finished) {
            // A pseudo-random interleaving.
            *order = order
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (*order >> 33) as usize % n as usize;
            model.step(&mut ms[r], &sends[r], &mut outs[r]);
            guard += 1;
            assert!(guard < 100_000, "no progress");
        }
        if gather {
            let all: Vec<u8> = sends.concat();
            for out in &outs {
                assert_eq!(out, &all);
            }
        }
    }

    #[test]
    fn many_rounds_keep_the_store_bounded() {
        let mut model = Model::default();
        let mut order = 42;
        // Miri interprets every step (minutes for 500 rounds); 30 still cycle every key slot.
        let rounds = if cfg!(miri) { 30 } else { 500 };
        for g in 0..rounds {
            run_round(&mut model, 5, g, g % 3 == 0, &mut order);
            assert!(
                model.kv.len() <= 6,
                "store grew to {} keys at {g}",
                model.kv.len()
            );
        }
    }

    #[test]
    fn a_barrier_does_not_finish_before_everyone_arrived() {
        let mut model = Model::default();
        let mut a = Collective::barrier("p/", 0, 0, 2).unwrap();
        let mut out = Vec::new();
        while model.step(&mut a, &[], &mut out) {}
        assert!(!a.is_finished());
        let mut b = Collective::barrier("p/", 0, 1, 2).unwrap();
        while model.step(&mut b, &[], &mut out) {}
        assert!(b.is_finished());
        while model.step(&mut a, &[], &mut out) {}
        assert!(a.is_finished());
    }

    #[test]
    fn bad_replies_end_the_machine_without_panicking() {
        let mut m = Collective::barrier("p/", 3, 0, 2).unwrap();
        assert_eq!(
            m.complete(Reply::Added(3)),
            Err(CollectiveError::CounterOutOfRange { value: 3, size: 2 })
        );
        assert_eq!(m.poll(), Step::Finished);
        assert_eq!(
            m.complete(Reply::Done),
            Err(CollectiveError::AlreadyFinished)
        );
        let mut m = Collective::allgather("p/", 0, 1, 2, 8).unwrap();
        assert_eq!(
            m.complete(Reply::Added(1)),
            Err(CollectiveError::UnexpectedReply)
        );
        assert!(Collective::barrier("p/", 0, 2, 2).is_err());
        assert!(Collective::allgather("p/", 0, 0, 2, 0).is_err());
        assert!(Collective::allgather("p/", 0, 0, 2, 65537).is_err());
        let long = "x".repeat(PREFIX_MAX + 1);
        assert_eq!(
            Collective::barrier(&long, 0, 0, 1).unwrap_err(),
            CollectiveError::PrefixTooLong
        );
    }

    #[test]
    fn gathered_key_matches_the_machines_value_key() {
        assert_eq!(
            gathered_key("shm/1.2/", 17).unwrap().as_str(),
            "shm/1.2/17v"
        );
        let long = "x".repeat(PREFIX_MAX + 1);
        assert_eq!(
            gathered_key(&long, 0).unwrap_err(),
            CollectiveError::PrefixTooLong
        );
    }

    #[test]
    fn keys_are_generation_scoped() {
        let mut m = Collective::allgather("shm/1.2/", 17, 2, 4, 16).unwrap();
        assert_eq!(
            m.poll(),
            Step::Run(StoreOp::WriteSendBytes {
                key: "shm/1.2/17v",
                offset: 32
            })
        );
        m.complete(Reply::Done).unwrap();
        assert_eq!(
            m.poll(),
            Step::Run(StoreOp::Add {
                key: "shm/1.2/17c",
                delta: 1
            })
        );
        m.complete(Reply::Added(4)).unwrap();
        assert_eq!(
            m.poll(),
            Step::Run(StoreOp::Set {
                key: "shm/1.2/17d",
                value: b"1"
            })
        );
        m.complete(Reply::Done).unwrap();
        assert_eq!(m.poll(), Step::Run(StoreOp::Remove { key: "shm/1.2/16c" }));
        m.complete(Reply::Done).unwrap();
        m.complete(Reply::Done).unwrap();
        m.complete(Reply::Done).unwrap();
        assert_eq!(
            m.poll(),
            Step::Run(StoreOp::GetGathered { key: "shm/1.2/17v" })
        );
    }
}
