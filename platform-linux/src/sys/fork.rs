//! `pthread_atfork`: handlers that keep a forked child usable, and [`DetachOnFork`], which keeps
//! socket descriptors (store links, listeners) out of forked children; [`Detached`] owns a
//! socket together with its guard.

use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

/// Registers fork handlers: `prepare` runs in the parent before `fork`, `parent` in the parent
/// after it, `child` in the child after it (on the forking thread only; the child has no other
/// threads). Handlers must not take locks that other threads may hold across `fork`.
///
/// # Errors
/// `ENOMEM` from `pthread_atfork`.
pub fn register_atfork(
    prepare: Option<unsafe extern "C" fn()>,
    parent: Option<unsafe extern "C" fn()>,
    child: Option<unsafe extern "C" fn()>,
) -> io::Result<()> {
    // SAFETY: the handlers are `extern "C" fn()` items (the caller passes functions without preconditions) with 'static lifetime.
    let rc = unsafe { libc::pthread_atfork(prepare, parent, child) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Capacity of the detach-on-fork registry (store links: 3 descriptors per client link, one
/// per server link, plus listeners). A descriptor registered when it is full is inherited as
/// before (logged once).
pub const DETACH_MAX: usize = 4096;

static DETACH: [AtomicI32; DETACH_MAX] = [const { AtomicI32::new(-1) }; DETACH_MAX];
static DETACH_HINT: AtomicUsize = AtomicUsize::new(0);
static PLACEHOLDER: AtomicI32 = AtomicI32::new(-1);
static DETACH_SETUP: Once = Once::new();
static FULL_LOGGED: AtomicBool = AtomicBool::new(false);

/// Keeps a socket descriptor out of forked children: while this guard lives, a child forked by
/// any thread gets, at the same descriptor number, an unconnected `AF_UNIX` socket instead
/// (`dup3` onto the number in a `pthread_atfork` child handler). The child's copy thus no
/// longer holds the parent's connection or listening socket open, so when the parent dies its
/// peers see the close at once (a live child would otherwise keep the link up), and a listening
/// port is released with the parent. Nothing is shut down (`shutdown(2)` would end the
/// parent's link too). In the child the descriptor number stays occupied, so an owner that
/// survives in the child (and later closes it) never closes an unrelated descriptor; reads and
/// writes on it fail with `ENOTCONN`.
///
/// Drop the guard *before* closing the descriptor (declare it before the owner of the
/// descriptor in a struct, or as a later local): otherwise a fork racing the close could
/// replace a new, unrelated descriptor of the same number in the child.
#[derive(Debug)]
pub struct DetachOnFork {
    slot: Option<(usize, RawFd)>,
}

impl DetachOnFork {
    /// Registers `fd` (see the type docs).
    pub fn new(fd: BorrowedFd<'_>) -> Self {
        Self::from_raw(fd.as_raw_fd())
    }

    /// Registers the descriptor number `fd`, which the caller keeps open for as long as the
    /// guard lives (for descriptors owned inside a type that lends no `BorrowedFd`, e.g. the
    /// halves of a TLS stream).
    pub fn from_raw(fd: RawFd) -> Self {
        setup_detach();
        let start = DETACH_HINT.load(Ordering::Relaxed);
        for i in 0..DETACH_MAX {
            let at = (start + i) % DETACH_MAX;
            if DETACH[at].load(Ordering::Relaxed) == -1
                && DETACH[at]
                    .compare_exchange(-1, fd, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                DETACH_HINT.store((at + 1) % DETACH_MAX, Ordering::Relaxed);
                return Self {
                    slot: Some((at, fd)),
                };
            }
        }
        if !FULL_LOGGED.swap(true, Ordering::Relaxed) {
            log::warn!(
                "detach-on-fork registry full ({DETACH_MAX} descriptors): forked children inherit further store sockets"
            );
        }
        Self { slot: None }
    }
}

impl Drop for DetachOnFork {
    fn drop(&mut self) {
        if let Some((at, fd)) = self.slot {
            // Only our own entry: the child handler may have cleared it, and the slot may hold
            // another registration since (never of the same number: ours is still open).
            let _ = DETACH[at].compare_exchange(fd, -1, Ordering::SeqCst, Ordering::Relaxed);
        }
    }
}

/// A socket (or a stream over one) kept out of forked children for as long as it lives: owns
/// the socket and the [`DetachOnFork`] guard of its descriptor, and drops the guard first, so
/// the descriptor is unregistered before the socket closes it.
#[derive(Debug)]
pub struct Detached<S> {
    // Declared first: dropped first (see `DetachOnFork`).
    _guard: DetachOnFork,
    sock: S,
}

impl<S: AsFd> Detached<S> {
    /// Registers `sock`'s descriptor and takes ownership of it.
    pub fn new(sock: S) -> Self {
        Self {
            _guard: DetachOnFork::new(sock.as_fd()),
            sock,
        }
    }
}

impl<S> Detached<S> {
    /// Takes `sock`, which keeps the descriptor number `fd` open for as long as it lives (for
    /// streams that lend no `BorrowedFd`, e.g. a TLS stream over a socket).
    pub fn with_raw_fd(fd: RawFd, sock: S) -> Self {
        Self {
            _guard: DetachOnFork::from_raw(fd),
            sock,
        }
    }
}

impl<S: io::Read> io::Read for Detached<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.read(buf)
    }
}

impl<S> Deref for Detached<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.sock
    }
}

impl<S> DerefMut for Detached<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.sock
    }
}

fn setup_detach() {
    crate::sync::once(&DETACH_SETUP, || {
        // SAFETY: plain syscall without pointer arguments.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            log::warn!(
                "cannot create the fork placeholder socket ({}); forked children inherit store sockets",
                io::Error::last_os_error()
            );
            return;
        }
        PLACEHOLDER.store(fd, Ordering::SeqCst);
        if let Err(e) = register_atfork(None, None, Some(detach_in_child)) {
            log::warn!("pthread_atfork failed ({e}); forked children inherit store sockets");
        }
    });
}

/// The child handler: only `dup3` and atomics (async-signal-safe).
extern "C" fn detach_in_child() {
    let placeholder = PLACEHOLDER.load(Ordering::SeqCst);
    if placeholder < 0 {
        return;
    }
    for slot in &DETACH {
        let fd = slot.swap(-1, Ordering::SeqCst);
        if fd >= 0 && fd != placeholder {
            // SAFETY: plain syscall; `fd` is open (registered descriptors are unregistered
            // before they are closed), and replacing it is the point (type docs).
            unsafe { libc::dup3(placeholder, fd, libc::O_CLOEXEC) };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsFd, AsRawFd, RawFd};

    use super::{DetachOnFork, Detached};

    /// The address family of socket `fd` (`getsockname`), or -1.
    fn family(fd: RawFd) -> i32 {
        // SAFETY: all-zero bytes are a valid `sockaddr_storage`.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `ss` and `len` are valid out pointers of the stated size.
        let rc = unsafe { libc::getsockname(fd, (&raw mut ss).cast(), &mut len) };
        if rc == 0 { i32::from(ss.ss_family) } else { -1 }
    }

    /// In a forked child a registered descriptor is an unconnected `AF_UNIX` placeholder and an
    /// unregistered one is untouched; the parent's descriptors are untouched either way.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn child_gets_placeholders_for_registered_sockets() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let b = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let c = Detached::new(TcpStream::connect(l.local_addr().expect("addr")).expect("connect"));
        let guard = DetachOnFork::new(a.as_fd());
        let (fa, fb, fc) = (a.as_raw_fd(), b.as_raw_fd(), c.as_raw_fd());
        // SAFETY: the child only calls getsockname and _exit (async-signal-safe).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = family(fa) == libc::AF_UNIX
                && family(fb) == libc::AF_INET
                && family(fc) == libc::AF_UNIX;
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child saw the wrong descriptors: {status:#x}"
        );
        assert_eq!(family(fa), libc::AF_INET);
        assert!(a.peer_addr().is_ok(), "the parent's link is intact");
        assert!(c.peer_addr().is_ok(), "the parent's link is intact");
        drop(guard);
        drop(c);
    }
}
