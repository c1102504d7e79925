//! Thin safe wrappers over libc calls: the only place in this crate with `unsafe` blocks.
//!
//! Each libc call is wrapped once, in a function that returns `io::Result` (errno mapped with
//! [`std::io::Error::last_os_error`]) and hands file descriptors out as [`OwnedFd`] /
//! takes them as [`BorrowedFd`] (rustix style). Every `unsafe` block states why it is sound in a
//! `// SAFETY:` comment. Raw memory is only reachable through a [`copy::RawRange`]: made
//! `unsafe`ly by the C boundary for the caller's memory, or safely by the owner of a mapping
//! ([`mman::Region::mapped_range`], [`acl::AclApi::device_range`]) or from a `&mut [u8]`; every
//! copy, socket transfer, `process_vm_*` call and device copy checks its rows against ranges.
//!
//! [`OwnedFd`]: std::os::fd::OwnedFd
//! [`BorrowedFd`]: std::os::fd::BorrowedFd

pub mod acl;
pub mod copy;
pub mod dl;
pub mod fd;
pub mod fork;
pub mod futex;
pub mod mman;
pub mod net;
pub mod peer;

use std::io;

/// Maps a libc `int` return value (`-1` = error in errno) to `io::Result`.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The system page size (4096 on the machines we target; read once from `sysconf`).
pub fn page_size() -> usize {
    use std::sync::OnceLock;
    static PAGE: OnceLock<usize> = OnceLock::new();
    *crate::sync::get_or_init(&PAGE, || {
        // SAFETY: sysconf has no memory-safety preconditions.
        let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(v)
            .ok()
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096)
    })
}
