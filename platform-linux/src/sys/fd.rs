//! File-descriptor calls: `memfd_create`, `ftruncate`, `fallocate`, `fstat`, opening another
//! process's descriptor through `/proc/<pid>/fd/<n>`.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::cvt;

/// What `fstat` says about a descriptor (the fields we use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStat {
    /// Device of the file system holding the inode.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
}

/// `memfd_create(name, MFD_CLOEXEC)`: an anonymous, shareable, initially empty file.
///
/// # Errors
/// The OS error (e.g. `EMFILE`, `ENOMEM`).
pub fn memfd_create(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let fd = cvt(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn off(len: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))
}

/// `ftruncate(fd, len)`.
///
/// # Errors
/// The OS error, or `EFBIG` when `len` does not fit `off_t`.
pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = off(len)?;
    // SAFETY: plain syscall on a borrowed, open descriptor.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len) })?;
    Ok(())
}

/// `fallocate(fd, 0, 0, len)`: allocates the backing pages now, so that running out of memory
/// is an error here instead of a `SIGBUS` on first touch.
///
/// # Errors
/// The OS error (`ENOSPC`/`ENOMEM` when the memory is not there, `EOPNOTSUPP`).
pub fn fallocate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = off(len)?;
    // SAFETY: plain syscall on a borrowed, open descriptor.
    cvt(unsafe { libc::fallocate(fd.as_raw_fd(), 0, 0, len) })?;
    Ok(())
}

/// `fallocate(fd, 0, offset, len)`: allocates the backing pages of one part of the file now
/// (a window in a segment shared by the ranks of a host).
///
/// # Errors
/// The OS error (`ENOSPC`/`ENOMEM` when the memory is not there, `EOPNOTSUPP`).
pub fn fallocate_range(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let (o, l) = (off(offset)?, off(len)?);
    // SAFETY: plain syscall on a borrowed, open descriptor.
    cvt(unsafe { libc::fallocate(fd.as_raw_fd(), 0, o, l) })?;
    Ok(())
}

/// `fallocate(fd, PUNCH_HOLE | KEEP_SIZE, offset, len)`: frees the pages of one part of the
/// file (they read as zeros afterwards); the size stays.
///
/// # Errors
/// The OS error.
pub fn punch_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let (o, l) = (off(offset)?, off(len)?);
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: plain syscall on a borrowed, open descriptor.
    cvt(unsafe { libc::fallocate(fd.as_raw_fd(), mode, o, l) })?;
    Ok(())
}

/// Whether any page of `offset..offset+len` of the file is allocated (`lseek(SEEK_DATA)`):
/// freeing a part that holds none (a punch of a file many processes map walks all their
/// mappings) can then be skipped.
///
/// # Errors
/// The OS error; a file system without `SEEK_DATA` reports the whole file as data (`true`).
pub fn has_data(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<bool> {
    let o = off(offset)?;
    // SAFETY: plain syscall on a borrowed, open descriptor; it moves only the file position
    // of this open file description, which nothing here uses (reads and writes go through
    // mappings).
    let r = unsafe { libc::lseek(fd.as_raw_fd(), o, libc::SEEK_DATA) };
    if r < 0 {
        let e = io::Error::last_os_error();
        // ENXIO: no data at or after `offset`.
        return if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok((r as u64) < offset.saturating_add(len))
}

/// `fstat(fd)`.
///
/// # Errors
/// The OS error.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<FileStat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is writable memory of the right size; fstat fills it on success.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat returned 0, so the struct is initialised.
    let st = unsafe { st.assume_init() };
    Ok(FileStat {
        dev: st.st_dev,
        ino: st.st_ino,
        size: u64::try_from(st.st_size).unwrap_or(0),
    })
}

/// Opens descriptor `fd` of process `pid` read/write through `/proc/<pid>/fd/<fd>` (a new open
/// file description of the same file; `O_CLOEXEC`).
///
/// The caller needs ptrace read access to `pid` (same user and a dumpable process) and must see
/// it in its own PID namespace.
///
/// # Errors
/// The OS error (`ENOENT` when the process or descriptor is gone, `EACCES`/`EPERM` without access).
pub fn open_proc_fd(pid: u32, fd: i32) -> io::Result<OwnedFd> {
    let path = format!("/proc/{pid}/fd/{fd}");
    // std opens with O_CLOEXEC.
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    Ok(OwnedFd::from(file))
}

/// The calling process's id.
pub fn getpid() -> u32 {
    std::process::id()
}

/// Raises the soft limit on open descriptors (`RLIMIT_NOFILE`) to `want`, or to the hard limit
/// when that is lower; never lowers it. Returns the (soft, hard) limits in force afterwards.
///
/// # Errors
/// The OS error of `getrlimit` / `setrlimit`.
pub fn raise_nofile_limit(want: u64) -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    let target = want.min(lim.rlim_max);
    if target > lim.rlim_cur {
        let new = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `new` is a valid rlimit read by the call; raising the soft limit up to the
        // hard one needs no privilege.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) })?;
        lim.rlim_cur = target;
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}
