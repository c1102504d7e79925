//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `_fuzzing-hooks`). Each target
//! is a one-liner calling one of these; they assert round trips and invariants, and panic
//! (which the fuzzer reports) only when an invariant of ours is broken.

pub mod interleave;
pub mod mem;
pub mod record;
pub mod store;
pub mod trans;
pub mod transport;

pub use interleave::collective_interleaved;

/// Members of one host's control segment stepped in the order the bytes give (first byte: the
/// member count and round count): nobody leaves a round early or reads another round's slot,
/// and the schedule completes once the bytes run out (round-robin from there).
pub fn ctl_segment(data: &[u8]) {
    let [head, rest @ ..] = data else { return };
    let members = u32::from(head % 8) + 1;
    let rounds = u64::from(head >> 3) + 1;
    let mut i = 0usize;
    crate::ctl_segment::run_model(members, rounds, rest.len() as u64, || {
        i += 1;
        rest.get(i - 1).map_or(i as u32, |&b| u32::from(b))
    });
}

use crate::collective::{Collective, Reply, Step};

/// Drives a barrier or allgather machine with arbitrary replies: it must never panic, and once
/// it reports an error it must stay finished.
pub fn collective(data: &[u8]) {
    let [kind, rank, size, len_lo, rest @ ..] = data else {
        return;
    };
    let (rank, size) = (u32::from(*rank), u32::from(*size));
    let machine = if kind & 1 == 0 {
        Collective::barrier("fuzz/", u64::from(*kind), rank, size)
    } else {
        Collective::allgather("fuzz/", u64::from(*kind), rank, size, u32::from(*len_lo))
    };
    let Ok(mut m) = machine else { return };
    let mut failed = false;
    for chunk in rest.chunks(3) {
        let step_finished = matches!(m.poll(), Step::Finished);
        let reply = match chunk {
            [0, ..] => Reply::Done,
            [1, v, ..] => Reply::Added(i64::from(*v as i8)),
            [_, a, b] => Reply::Value(usize::from(*a) << 8 | usize::from(*b)),
            _ => Reply::Value(0),
        };
        let result = m.complete(reply);
        if failed || step_finished {
            assert!(result.is_err(), "a finished machine accepted a reply");
        }
        failed |= result.is_err();
    }
}
