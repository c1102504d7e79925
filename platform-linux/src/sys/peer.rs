//! Reaching another process of this host: pidfds (liveness), `process_vm_readv`/`writev`
//! (copies into and out of its address space).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::copy::RawRange;

/// Most iovecs one `process_vm_*` call takes (`IOV_MAX`).
pub const IOV_MAX: usize = 1024;

/// A pidfd of `pid` (`pidfd_open`, Linux 5.3+): readable once the process has exited.
///
/// # Errors
/// `ESRCH` when no such process exists; `ENOSYS` on older kernels.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags by value; no memory is passed.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(ret).map_err(|_| io::Error::other("pidfd_open: bad descriptor"))?;
    // SAFETY: the kernel just returned `fd` as a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the process of `pidfd` has exited (a `poll` that does not wait).
pub fn pidfd_exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&raw mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
}

/// One range of memory: `len` bytes at `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
}

fn iovecs(spans: &[Span]) -> io::Result<Vec<libc::iovec>> {
    if spans.len() > IOV_MAX {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    spans
        .iter()
        .map(|s| {
            Ok(libc::iovec {
                iov_base: std::ptr::with_exposed_provenance_mut(
                    usize::try_from(s.addr)
                        .map_err(|_| io::Error::from_raw_os_error(libc::EFAULT))?,
                ),
                iov_len: usize::try_from(s.len)
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
            })
        })
        .collect()
}

fn local_iovecs(ranges: &[RawRange<'_>]) -> io::Result<Vec<libc::iovec>> {
    if ranges.len() > IOV_MAX {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    ranges
        .iter()
        .map(|r| {
            Ok(libc::iovec {
                iov_base: r.ptr().cast(),
                iov_len: usize::try_from(r.len())
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
            })
        })
        .collect()
}

/// Which way [`process_vm`] moves bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmDirection {
    /// `process_vm_writev`: `local` into the other process's `remote`.
    Write,
    /// `process_vm_readv`: the other process's `remote` into `local`.
    Read,
}

/// Moves bytes between `local` (in order) and `remote` (in order) of process `pid`
/// (`process_vm_writev` / `readv`); returns the bytes moved (less than asked only when the
/// kernel stopped at a fault). What a write does in `pid` is the caller's business (the peer
/// registered those ranges).
///
/// # Errors
/// `EPERM` without ptrace access to `pid`, `ESRCH` when it is gone, `EFAULT` for unmapped
/// ranges, `EINVAL` for more than [`IOV_MAX`] spans on a side.
pub fn process_vm(
    dir: VmDirection,
    pid: u32,
    local: &[RawRange<'_>],
    remote: &[Span],
) -> io::Result<usize> {
    let l = local_iovecs(local)?;
    let r = iovecs(remote)?;
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    let (lp, ln, rp, rn) = (l.as_ptr(), l.len() as _, r.as_ptr(), r.len() as _);
    // SAFETY: both iovec arrays are valid for the call; the local iovecs lie in ranges valid
    // for reads and writes while they live (`RawRange`), so the kernel's writes there (read
    // direction) are allowed; remote addresses are checked by the kernel (EFAULT).
    let n = unsafe {
        match dir {
            VmDirection::Write => libc::process_vm_writev(pid, lp, ln, rp, rn, 0),
            VmDirection::Read => libc::process_vm_readv(pid, lp, ln, rp, rn, 0),
        }
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore)]
    fn own_process_and_pidfd() {
        let mut src = *b"hello vm";
        let mut dst = [0u8; 8];
        let s = |p: *const u8| Span {
            addr: p as u64,
            len: 8,
        };
        let remote = s(dst.as_ptr());
        let n = process_vm(
            VmDirection::Write,
            std::process::id(),
            &[RawRange::from_mut(&mut src)],
            &[remote],
        )
        .expect("writev self");
        assert_eq!(n, 8);
        assert_eq!(&dst, b"hello vm");
        let back = *b"01234567";
        let n = process_vm(
            VmDirection::Read,
            std::process::id(),
            &[RawRange::from_mut(&mut dst)],
            &[s(back.as_ptr())],
        )
        .expect("readv");
        assert_eq!(n, 8);
        assert_eq!(&dst, b"01234567");
        let me = pidfd_open(std::process::id()).expect("pidfd");
        assert!(!pidfd_exited(std::os::fd::AsFd::as_fd(&me)));
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let fd = pidfd_open(child.id()).expect("pidfd child");
        let _ = child.wait();
        assert!(pidfd_exited(std::os::fd::AsFd::as_fd(&fd)));
    }
}
