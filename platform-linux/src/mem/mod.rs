//! Shareable host segments, GVA reservations and peer mappings.
//!
//! - [`HostSegment`]: `len` bytes of host memory in an anonymous `memfd`, with its pages
//!   allocated up front, that other processes of the same host open through a
//!   [`SegmentDescriptor`].
//! - [`Reservation`]: an owned, inaccessible GVA range at an exact address, into which segments
//!   (ours and our peers') are mapped and unmapped.
//!
//! # Sharing without names
//! Segments have no name in any file system: no `shm_open`, no files under `/dev/shm`. A peer
//! opens the owner's descriptor through `/proc/<pid>/fd/<fd>` and checks that the inode and the
//! length are the ones the owner published (so a recycled pid or fd number is detected, never
//! mapped by mistake). The memory lives exactly as long as some process holds the descriptor or
//! a mapping: when every process of a pool exits, for whatever reason (crash, `SIGKILL`),
//! nothing is left behind to clean up.
//!
//! Limits of this choice: the peer must see the owner's pid in its own PID namespace and have
//! ptrace read access to it (same user, owner dumpable; Yama's `ptrace_scope` does not restrict
//! this read access). Processes in different PID namespaces (e.g. separate containers) cannot
//! share this way: their host identities differ ([`host_identity`]), so the runtime treats the
//! peer like one on another host (reached over the network transport, or refused where none
//! serves it). Descriptors are not passed over Unix sockets (`SCM_RIGHTS`).
//!
//! # Admission
//! A segment the machine cannot back is refused with `SM_MALLOC_FAILED` before anything is
//! allocated ([`admit()`], against [`headroom`]: `MemAvailable + SwapFree` and the memory cgroup
//! limits), never left to the OOM killer.

mod admit;
mod gva;
mod host;

pub use admit::{Headroom, admit, headroom, human};
pub use gva::Reservation;
pub use host::{HostSegment, SegmentDescriptor, SegmentKind};

use crate::sys;

/// Env var that overrides [`host_identity`].
pub const HOST_ID_ENV: &str = "SMEM_HOST_ID";

/// The page size the kernel uses for our mappings.
pub fn page_size() -> u64 {
    sys::page_size() as u64
}

/// An identity of this host and PID namespace, equal in two processes exactly when they can
/// share segments through `/proc` (same boot of the same kernel, same PID namespace).
///
/// It is `boot_id` (from `/proc/sys/kernel/random/boot_id`) and the inode of the PID namespace
/// (`/proc/self/ns/pid`), joined with `/`. The env var [`HOST_ID_ENV`] (`SMEM_HOST_ID`), when
/// set and not empty, replaces it: processes with different values treat each other as being on
/// different hosts (for tests, or to keep processes apart on purpose).
///
/// # Errors
/// `SM_IO_ERROR` when `/proc` cannot be read.
pub fn host_identity() -> crate::Result<String> {
    use std::os::unix::fs::MetadataExt;
    if let Some(forced) = std::env::var(HOST_ID_ENV).ok().filter(|v| !v.is_empty()) {
        let clean: String = forced
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() && c != ';' && c != '=' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        return Ok(format!("forced:{clean}"));
    }
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map_err(|e| {
        crate::Error::io(
            "reading /proc/sys/kernel/random/boot_id (is /proc mounted?)",
            &e,
        )
    })?;
    let ns = std::fs::metadata("/proc/self/ns/pid")
        .map_err(|e| crate::Error::io("reading /proc/self/ns/pid (is /proc mounted?)", &e))?;
    Ok(format!("{}/{}", boot.trim(), ns.ino()))
}

#[cfg(test)]
pub(crate) mod test_child;
