//! smem-core: the allocation-free heart of smem.
//!
//! Everything here is `#![no_std]`, names no `alloc`, and contains no `unsafe`: the config store
//! wire codec, URL parsing, GVA ranges, fixed-capacity handle tables, and copy-range
//! validation. Parsing never panics, whatever the bytes. Capacities are compile-time constants
//! ([`limits`]).
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

#[cfg(test)]
extern crate std;

pub mod bm;
pub mod collective;
pub mod ctl_segment;
pub mod data_op;
pub mod error;
pub mod gva;
pub mod limits;
pub mod store;
pub mod table;
pub mod url;
pub mod wire;

#[cfg(feature = "_fuzzing-hooks")]
#[doc(hidden)]
pub mod __fuzz;

pub use error::ErrorCode;
