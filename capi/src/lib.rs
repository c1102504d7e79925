//! libsmem: the C API of smem (`smem.h`, `smem_bm.h`, `smem_shm.h`). TODO(skeleton).
#![allow(non_camel_case_types)]
#![deny(clippy::undocumented_unsafe_blocks)]
