//! Words shared between processes: [`SharedMap`] (a whole file mapped `MAP_SHARED`, read and
//! written through atomics and byte copies), futex waits and wakes on its `u32` words, and
//! process-exit watching through pidfds.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

/// A file of `len` bytes mapped shared and read/write at a kernel-chosen address, from
/// creation to `Drop`. Pages are not populated up front: a control segment of many members is
/// large (two 64 KiB slots per member) and most of it is touched only by big allgathers.
#[derive(Debug)]
pub struct SharedMap {
    /// Start address; the map hands out references only through `&self` accessors.
    addr: usize,
    len: usize,
}

impl SharedMap {
    /// Maps the first `len` bytes (a non-zero multiple of the page size) of `fd`.
    ///
    /// # Errors
    /// `EINVAL` for a bad length, the OS error of `mmap`.
    pub fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        if len == 0 || len % super::page_size() != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a new shared mapping at a kernel-chosen address (no MAP_FIXED): it replaces
        // nothing; `fd` is open for the duration of the call.
        let ret = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ret == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            addr: ret as usize,
            len,
        })
    }

    /// The mapped length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn addr_of(&self, offset: usize, size: usize) -> Option<usize> {
        let end = offset.checked_add(size)?;
        (offset % size.max(1) == 0 && end <= self.len).then(|| self.addr + offset)
    }

    fn range(&self, offset: usize, len: usize) -> io::Result<usize> {
        offset
            .checked_add(len)
            .filter(|&end| end <= self.len)
            .map(|_| self.addr + offset)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))
    }

    /// The `u32` at `offset` as an atomic (`None` when unaligned or out of range).
    pub fn u32_at(&self, offset: usize) -> Option<&AtomicU32> {
        let at = self.addr_of(offset, 4)?;
        // SAFETY: `at` is 4-aligned and inside the mapping, which stays mapped (read/write)
        // while `self` lives, so the reference cannot outlive it; `AtomicU32` has the layout of
        // `u32`, and every process sharing the file touches these words only atomically.
        Some(unsafe { &*(at as *const AtomicU32) })
    }

    /// The `u64` at `offset` as an atomic (`None` when unaligned or out of range).
    pub fn u64_at(&self, offset: usize) -> Option<&AtomicU64> {
        let at = self.addr_of(offset, 8)?;
        // SAFETY: as in `u32_at`, with 8-byte alignment and `AtomicU64`'s layout of `u64`.
        Some(unsafe { &*(at as *const AtomicU64) })
    }

    /// Copies bytes out of the mapping from `offset`.
    ///
    /// # Errors
    /// `EFAULT` when the range is outside the mapping.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        let at = self.range(offset, buf.len())?;
        // SAFETY: the range is inside the live read/write mapping; `buf` is a distinct Rust
        // buffer. Peers write these bytes only before publishing them through an atomic
        // (release/acquire), so no write is in flight while they are read.
        unsafe { std::ptr::copy_nonoverlapping(at as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `data` into the mapping at `offset`.
    ///
    /// # Errors
    /// `EFAULT` when the range is outside the mapping.
    pub fn write(&self, offset: usize, data: &[u8]) -> io::Result<()> {
        let at = self.range(offset, data.len())?;
        // SAFETY: the range is inside the live read/write mapping, which is not Rust memory;
        // `data` is a distinct buffer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), at as *mut u8, data.len()) };
        Ok(())
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: the map owns `addr..addr+len`; references into it borrow `self`, so none
        // outlives this point.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// Sleeps while `word` holds `expected`, at most `timeout` (`FUTEX_WAIT` on a shared mapping,
/// so wakes from other processes reach it). Returns on a wake, a changed value, a signal or
/// the timeout alike: the caller reads the word again.
///
/// # Errors
/// The OS error other than `EAGAIN`, `EINTR` and `ETIMEDOUT`.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call (the kernel only reads
    // it); `ts` lives on this stack frame; the unused arguments are null/0 as FUTEX_WAIT wants.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &raw const ts,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if r == -1 {
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR | libc::ETIMEDOUT) => {}
            _ => return Err(e),
        }
    }
    Ok(())
}

/// Wakes every process sleeping in [`futex_wait`] on `word`.
///
/// # Errors
/// The OS error.
pub fn futex_wake_all(word: &AtomicU32) -> io::Result<()> {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE only uses its address as a key.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `pidfd_open(pid, 0)` (Linux 5.3): a descriptor that becomes readable when `pid` exits
/// (also while it is a zombie), immune to pid reuse.
///
/// # Errors
/// `ESRCH` when no such process exists, `ENOSYS` on older kernels, `EMFILE`.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(r).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: pidfd_open returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The index of the first of `fds` (pidfds) whose process exited, without waiting.
///
/// # Errors
/// The OS error of `poll`.
pub fn first_exited(fds: &[BorrowedFd<'_>]) -> io::Result<Option<usize>> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let n = libc::nfds_t::try_from(polls.len()).unwrap_or(libc::nfds_t::MAX);
    // SAFETY: `polls` is a valid array of `n` pollfd structs for the duration of the call.
    let r = unsafe { libc::poll(polls.as_mut_ptr(), n, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(polls.iter().position(|p| p.revents != 0))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    use super::*;
    use crate::sys::fd;

    #[test]
    #[cfg_attr(miri, ignore)]
    fn shared_words_wake_across_mappings() {
        let f = fd::memfd_create(c"futex-test").unwrap();
        fd::ftruncate(std::os::fd::AsFd::as_fd(&f), 4096).unwrap();
        let a = SharedMap::map(std::os::fd::AsFd::as_fd(&f), 4096).unwrap();
        let b = SharedMap::map(std::os::fd::AsFd::as_fd(&f), 4096).unwrap();
        assert!(a.u32_at(2).is_none() && a.u64_at(4096).is_none());
        let (wa, wb) = (a.u32_at(64).unwrap(), b.u32_at(64).unwrap());
        wa.store(5, Ordering::SeqCst);
        assert_eq!(wb.load(Ordering::SeqCst), 5);
        // A wait on a changed value returns at once; a timed-out one after the timeout.
        let t = Instant::now();
        futex_wait(wb, 4, Duration::from_secs(5)).unwrap();
        futex_wait(wb, 5, Duration::from_millis(20)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(4));
        std::thread::scope(|s| {
            s.spawn(|| {
                while wb.load(Ordering::SeqCst) == 5 {
                    futex_wait(wb, 5, Duration::from_secs(10)).unwrap();
                }
            });
            std::thread::sleep(Duration::from_millis(20));
            wa.store(6, Ordering::SeqCst);
            futex_wake_all(wa).unwrap();
        });
        a.write(100, b"abc").unwrap();
        let mut buf = [0u8; 3];
        b.read(100, &mut buf).unwrap();
        assert_eq!(&buf, b"abc");
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn pidfds_see_an_exit() {
        let me = pidfd_open(std::process::id()).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let theirs = pidfd_open(child.id()).unwrap();
        let fds = [
            std::os::fd::AsFd::as_fd(&me),
            std::os::fd::AsFd::as_fd(&theirs),
        ];
        let t = Instant::now();
        while first_exited(&fds).unwrap().is_none() {
            assert!(t.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(first_exited(&fds).unwrap(), Some(1));
        child.wait().unwrap();
    }
}
