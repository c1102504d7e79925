//! Thin safe wrappers over libc calls. The only place in this crate with `unsafe`. TODO(skeleton).

pub mod net;
