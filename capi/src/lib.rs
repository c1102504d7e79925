//! libsmem: the C API of smem (`capi/include/smem.h`, `smem_bm.h`, `smem_shm.h`,
//! `smem_trans.h`), built as `libsmem.so` (cdylib) and `libsmem.a` (staticlib), plus an rlib so
//! Rust tests can call the exports directly.
//!
//! A thin boundary over [`smem_linux::runtime`] (FFI playbook of STYLE.md section 5, after
//! rustls-ffi):
//! - every export is `#[unsafe(no_mangle)] pub unsafe extern "C" fn` whose body runs behind a
//!   panic boundary (`ffi_status!` / `ffi_value!` in `ffi.rs`): no panic crosses into C;
//! - every pointer is checked for NULL before use, strings must be UTF-8, and raw pointers are
//!   dereferenced only in the helpers of `ffi.rs`;
//! - every failure sets the calling thread's last error ([`error`]) and is logged;
//! - the `#[repr(C)]` mirrors of the C structs have their size, alignment and offsets pinned by
//!   `static_assertions` (and checked against the C compiler by `tests/c_headers.rs`);
//! - no protocol or memory logic lives here.
//!
//! The headers are written by hand and kept in sync by the drift test `tests/abi.rs` (every
//! declared function is exported by `libsmem.so` and vice versa). `gen-pc.sh PREFIX` writes the
//! pkg-config file `smem.pc` from `smem.pc.in`.
#![allow(non_camel_case_types)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

mod ffi;

pub mod bm;
pub mod bm_ext;
pub mod common;
pub mod error;
pub mod shm;
pub mod trans;

pub use bm::*;
pub use bm_ext::*;
pub use common::*;
pub use error::{smem_get_and_clear_last_err_msg, smem_get_last_err_msg};
pub use shm::*;
pub use trans::*;
