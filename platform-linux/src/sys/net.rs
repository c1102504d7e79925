//! epoll, eventfd and signal-flag wrappers for the config store's event loop and binary, the
//! raw-pointer socket I/O of the network transport (bytes straight into / out of mappings), and
//! [`NoSigPipe`], the `Write` every socket write of the library goes through.
//!
//! # No `SIGPIPE`, ever
//! A write to a socket whose peer is gone raises `SIGPIPE` unless it is a `send`/`sendmsg`
//! with `MSG_NOSIGNAL`. A Rust binary ignores `SIGPIPE`, but a C program hosting this library
//! keeps the default disposition (terminate), and a library must not change the process's
//! signal dispositions. std's `TcpStream::write` sends with `MSG_NOSIGNAL`, but its
//! `write_vectored` is a plain `writev` (rustls' `write_tls` uses it). So every write to a
//! socket, ours or rustls', goes through [`NoSigPipe`], [`send_from`] or [`send_slice`].

use super::copy::RawRange;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Readable interest (level-triggered).
pub const EPOLL_IN: u32 = libc::EPOLLIN as u32;
/// Writable interest.
pub const EPOLL_OUT: u32 = libc::EPOLLOUT as u32;
/// Hang-up / error bits reported by the kernel.
pub const EPOLL_HUP_ERR: u32 = (libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32;

/// One ready event: the token it was registered with and the ready bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// Registration token.
    pub token: u64,
    /// `EPOLL_*` bits.
    pub events: u32,
}

/// An epoll instance.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    /// Create a close-on-exec epoll instance.
    ///
    /// # Errors
    /// The OS error of `epoll_create1`.
    pub fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new fd we own.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call; fds are plain ints.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) })?;
        Ok(())
    }

    /// Register `fd` with `token` for `events`.
    ///
    /// # Errors
    /// The OS error of `epoll_ctl`.
    pub fn add(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, events)
    }

    /// Change the interest of `fd`.
    ///
    /// # Errors
    /// The OS error of `epoll_ctl`.
    pub fn modify(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, events)
    }

    /// Remove `fd`.
    ///
    /// # Errors
    /// The OS error of `epoll_ctl`.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Wait up to `timeout` (None = forever; rounded up to whole ms) and fill `out`; returns how
    /// many entries are valid. EINTR is reported as 0 events.
    ///
    /// # Errors
    /// The OS error of `epoll_wait`.
    pub fn wait(&self, out: &mut [Ready], timeout: Option<Duration>) -> io::Result<usize> {
        const MAX: usize = 256;
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; MAX];
        let n_max = out.len().min(MAX);
        let ms: libc::c_int = match timeout {
            None => -1,
            Some(d) => {
                let ms = d.as_nanos().div_ceil(1_000_000);
                libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
            }
        };
        // SAFETY: `evs` has room for `n_max` (<= MAX) events, which is what we pass.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                evs.as_mut_ptr(),
                n_max as libc::c_int,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let n = n as usize;
        for (o, e) in out.iter_mut().zip(evs.iter()).take(n) {
            *o = Ready {
                token: e.u64,
                events: e.events,
            };
        }
        Ok(n)
    }
}

/// A non-blocking eventfd used to wake an event loop.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// Create a non-blocking, close-on-exec eventfd.
    ///
    /// # Errors
    /// The OS error of `eventfd`.
    pub fn new() -> io::Result<Self> {
        // SAFETY: no pointers; a non-negative result is a new fd we own.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Make the fd readable.
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64; failure (counter full) still leaves it readable.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Reset the counter.
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut v).cast(), 8) };
    }

    /// The raw fd, for registering with [`Epoll`].
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

static SHUTDOWN_FLAG: AtomicBool = AtomicBool::new(false);

extern "C" fn on_shutdown_signal(_sig: libc::c_int) {
    SHUTDOWN_FLAG.store(true, Ordering::SeqCst);
}

/// Install handlers for SIGINT and SIGTERM that set a process-wide flag read by
/// [`shutdown_requested`]. Meant for the `smem-store` binary, not for library users.
///
/// # Errors
/// The OS error of `sigaction`.
pub fn install_shutdown_signals() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; we set a handler that only stores an atomic
        // (async-signal-safe) and pass valid pointers to sigaction.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_shutdown_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            cvt(libc::sigaction(sig, &sa, std::ptr::null_mut()))?;
        }
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived since [`install_shutdown_signals`].
pub fn shutdown_requested() -> bool {
    SHUTDOWN_FLAG.load(Ordering::SeqCst)
}

fn would_block_to_timeout(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "no progress within the socket timeout",
        )
    } else {
        e
    }
}

/// Receives exactly `dst.len()` bytes into `dst` from a blocking stream socket (EINTR
/// retried). The bytes may be shared memory that other processes read concurrently; they see a
/// mix of old and new bytes until the call returns.
///
/// # Errors
/// `UnexpectedEof` when the peer closes first, `TimedOut` when the socket's receive timeout
/// (`SO_RCVTIMEO`) passes without progress, or the OS error.
pub fn recv_into(fd: BorrowedFd<'_>, dst: RawRange<'_>) -> io::Result<()> {
    let len = range_len(dst)?;
    let buf = dst.ptr();
    let mut done = 0usize;
    while done < len {
        // SAFETY: `buf + done .. buf + len` lies in `dst`, valid for writes while it lives.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.wrapping_add(done).cast(),
                len - done,
                libc::MSG_WAITALL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(would_block_to_timeout(e));
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection",
            ));
        }
        done += n as usize;
    }
    Ok(())
}

fn range_len(r: RawRange<'_>) -> io::Result<usize> {
    usize::try_from(r.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length exceeds usize"))
}

/// Sends all bytes of `src` on a blocking stream socket, without `SIGPIPE` (`MSG_NOSIGNAL`);
/// with `more`, the kernel may hold them back for the next send (`MSG_MORE`), so a header and
/// its payload leave in one segment.
///
/// # Errors
/// `TimedOut` when the socket's send timeout passes without progress, or the OS error
/// (`EPIPE`/`ECONNRESET` when the peer is gone).
pub fn send_from(fd: BorrowedFd<'_>, src: RawRange<'_>, more: bool) -> io::Result<()> {
    // SAFETY: `src` is valid for reads of its length while it lives.
    unsafe { send_all(fd, src.ptr().cast_const(), range_len(src)?, more) }
}

/// Sends the `len` bytes at `buf` (as [`send_from`]).
///
/// # Safety
/// `buf` must be valid for reads of `len` bytes for the whole call.
unsafe fn send_all(fd: BorrowedFd<'_>, buf: *const u8, len: usize, more: bool) -> io::Result<()> {
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    let mut done = 0usize;
    while done < len {
        // SAFETY: `buf + done .. buf + len` is inside the caller's readable range.
        let n = unsafe { libc::send(fd.as_raw_fd(), buf.add(done).cast(), len - done, flags) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(would_block_to_timeout(e));
        }
        done += n as usize;
    }
    Ok(())
}

/// A stream socket (or a reference to one) whose `Write` never raises `SIGPIPE`: `write` is a
/// `send` and `write_vectored` a `sendmsg`, both with `MSG_NOSIGNAL`, so a vanished peer is an
/// `EPIPE`/`ECONNRESET` error. Reads go to the wrapped stream. Errors and partial writes are
/// as std's `TcpStream` reports them (`WouldBlock` on a non-blocking socket or past
/// `SO_SNDTIMEO`, `Interrupted` on EINTR), so it drops in where a `TcpStream` was written to.
#[derive(Debug)]
pub struct NoSigPipe<S>(S);

impl<S> NoSigPipe<S> {
    /// Wraps `sock`.
    pub const fn new(sock: S) -> Self {
        Self(sock)
    }

    /// The wrapped socket.
    pub const fn get_ref(&self) -> &S {
        &self.0
    }
}

impl<S: Read> Read for NoSigPipe<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        self.0.read_vectored(bufs)
    }
}

impl<S: AsFd> Write for NoSigPipe<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is a live slice, readable for its length during the call.
        let n = unsafe {
            libc::send(
                self.0.as_fd().as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // As std's `writev`: at most IOV_MAX slices per call, the caller loops for the rest.
        let bufs = &bufs[..bufs.len().min(IOV_MAX)];
        // SAFETY: an all-zero msghdr is valid (no name, no control data, no iovecs).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        // `IoSlice` is ABI-compatible with `iovec` on Unix (std guarantees it); sendmsg only
        // reads through `msg_iov`, so the cast to `*mut` does not allow a write.
        msg.msg_iov = bufs.as_ptr().cast_mut().cast();
        msg.msg_iovlen = bufs.len() as _;
        // SAFETY: `msg` points at `bufs.len()` iovecs describing live, readable slices for the
        // duration of the call; no name or control buffer is passed.
        let n = unsafe { libc::sendmsg(self.0.as_fd().as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Slices one `sendmsg` takes at most (Linux' `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// [`send_from`] of a slice.
///
/// # Errors
/// As [`send_from`].
pub fn send_slice(fd: BorrowedFd<'_>, data: &[u8], more: bool) -> io::Result<()> {
    // SAFETY: `data` is a live slice, readable for its length during the call.
    unsafe { send_all(fd, data.as_ptr(), data.len(), more) }
}

/// [`recv_into`] a slice.
///
/// # Errors
/// As [`recv_into`].
pub fn recv_slice(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<()> {
    recv_into(fd, RawRange::from_mut(buf))
}

/// The listen backlog of the config store: a connection storm of [`smem_core::limits::WORLD_SIZE_MAX`]
/// ranks (times two: BM and SHM links) fits in the accept queue, where std's 128 made the kernel
/// drop SYNs (the client's retransmission then costs 1 s, 3 s, ...). The kernel caps it at
/// `net.core.somaxconn` (4096 by default since Linux 5.4).
pub const LISTEN_BACKLOG: i32 = 4096;

/// Sets the accept queue length of the listening socket `fd` to `backlog` (`listen` again on
/// a listening socket only changes its backlog).
///
/// # Errors
/// The OS error of `listen`.
pub fn set_listen_backlog(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: `listen` on a descriptor we borrow; no memory is passed.
    let rc = unsafe { libc::listen(fd.as_raw_fd(), backlog) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
