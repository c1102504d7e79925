//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `_fuzzing-hooks`). Each target
//! is a one-liner calling one of these; they assert round trips and invariants, and panic
//! (which the fuzzer reports) only when an invariant of ours is broken.

pub mod interleave;
pub mod mem;
pub mod store;
pub mod trans;

pub use interleave::collective_interleaved;

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
