//! `pthread_atfork`: handlers that keep a forked child usable.

use std::io;

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
