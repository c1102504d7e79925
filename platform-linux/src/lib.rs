//! smem-linux: the Linux platform layer of smem.
//!
//! Sockets, threads, shared memory, `mmap`, device runtimes: everything that touches the OS.
//! `unsafe` is denied here except in the `sys` leaf modules, where each block carries a
//! `// SAFETY:` comment and is wrapped once in a safe function.
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
compile_error!("smem-linux needs 64-bit Linux");

pub mod collective;
pub mod device;
pub mod error;
pub mod logging;
pub mod mem;
pub mod runtime;
pub mod store;
pub mod sync;
#[allow(unsafe_code)]
pub mod sys;
pub mod tls;
pub mod trans;
pub mod transport;
pub use error::{Error, Result};
