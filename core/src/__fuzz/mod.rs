//! Entry points for the cargo-fuzz targets in `fuzz/` (feature `_fuzzing-hooks`). Each target
//! is a one-liner calling one of these; they assert round trips and invariants, and panic
//! (which the fuzzer reports) only when an invariant of ours is broken.

pub mod mem;
pub mod store;
