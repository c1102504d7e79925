//! `smem._native`: the PyO3 extension behind the Python package `smem` (SPEC 6.3).
//!
//! A thin layer over the C ABI of `libsmem` (the `extern "C"` functions of `smem-capi`, linked
//! in statically and called directly), shaped like the reference's Python package
//! `memfabric_hybrid` so that code written for it runs with `import smem as mf`:
//! - calls that return an `int` in the reference return 0 or the negative `SM_*` code here and
//!   leave the message in `get_last_err_msg()`;
//! - calls that return an object raise `smem.SmemError` (a `RuntimeError` with `.code`);
//! - wrong Python argument types raise `TypeError`;
//! - addresses are `int`s, or any object with the buffer protocol (its first byte);
//! - the GIL is released around every C call that may wait or copy.
//!
//! `unsafe` appears at the C calls (their pointer arguments) and in [`ffi`] (the buffer
//! protocol, C strings, the logger trampoline); every block carries a `// SAFETY:` comment.
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod addr;
mod bm;
mod common;
mod error;
mod ffi;
mod shm;
mod trans;

use pyo3::prelude::*;

/// The module `smem._native`; the pure-Python package `smem` re-exports it.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    common::register(m)?;
    bm::register(m)?;
    shm::register(m)?;
    trans::register(m)?;
    Ok(())
}
