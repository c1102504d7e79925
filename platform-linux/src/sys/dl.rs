//! `dlopen` / `dlsym` / `dlerror`: loading a device runtime library at run time.
//!
//! [`Library`] owns a handle opened with `RTLD_NOW | RTLD_LOCAL` (every undefined symbol of the
//! library is bound at load, so a broken install fails here, not on a later call; its symbols do
//! not leak into the global namespace) and closes it on drop. [`Library::symbol`] returns an
//! address whose validity is tied to the library by the caller (see `sys::acl`, which keeps the
//! typed pointers in the same struct as the `Library`). `dlerror` is read only after a call
//! failed (libloading `os/unix` does the same), so a stale message of an earlier, unrelated
//! failure is never reported.

use std::ffi::{CStr, c_void};
use std::ptr::NonNull;

/// A loaded shared library; `dlclose`d on drop.
#[derive(Debug)]
pub struct Library {
    handle: NonNull<c_void>,
}

// SAFETY: a dlopen handle is a process-wide reference count; glibc's dlsym/dlclose are
// thread-safe and do not depend on the calling thread.
unsafe impl Send for Library {}
// SAFETY: as above; `&Library` only allows `dlsym`, which is thread-safe.
unsafe impl Sync for Library {}

impl Library {
    /// `dlopen(path, RTLD_NOW | RTLD_LOCAL)`. A `path` without `/` is searched on the loader
    /// path (`LD_LIBRARY_PATH`, the cache, the default directories).
    ///
    /// # Safety
    /// Loading runs the library's initialisers (and those of its dependencies) in this process:
    /// the caller must trust `path` to be a well-behaved shared library.
    ///
    /// # Errors
    /// The loader's message (`dlerror`), e.g. "cannot open shared object file" or an
    /// unresolved symbol of the library.
    pub unsafe fn open(path: &CStr) -> Result<Self, String> {
        // SAFETY: `path` is NUL-terminated and outlives the call; the caller accepted that the
        // library's initialisers run.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        match NonNull::new(handle) {
            Some(handle) => Ok(Self { handle }),
            None => Err(last_error()),
        }
    }

    /// The address of symbol `name`.
    ///
    /// # Errors
    /// The loader's message when the library has no such symbol (or it resolves to NULL).
    pub fn symbol(&self, name: &CStr) -> Result<NonNull<c_void>, String> {
        // Clear a pending message so that a NULL result can be told apart from an error.
        let _ = clear_error();
        // SAFETY: `self.handle` is a live handle (closed only in `Drop`); `name` is
        // NUL-terminated and outlives the call.
        let addr = unsafe { libc::dlsym(self.handle.as_ptr(), name.as_ptr()) };
        match NonNull::new(addr) {
            Some(addr) => Ok(addr),
            None => {
                let msg = last_error();
                if msg.is_empty() {
                    Err(format!("{} resolves to NULL", name.to_string_lossy()))
                } else {
                    Err(msg)
                }
            }
        }
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: the handle came from a successful dlopen and is closed exactly once; symbols
        // taken from it are not used after this (their holders own or borrow `self`).
        unsafe { libc::dlclose(self.handle.as_ptr()) };
    }
}

/// Reads and clears the loader's last error message (empty when there is none).
fn last_error() -> String {
    clear_error().unwrap_or_default()
}

fn clear_error() -> Option<String> {
    // SAFETY: dlerror has no preconditions; it returns NULL or a NUL-terminated string that
    // stays valid until the next dl* call of this thread, and we copy it out at once.
    let msg = unsafe { libc::dlerror() };
    if msg.is_null() {
        return None;
    }
    // SAFETY: non-NULL dlerror results are NUL-terminated strings (see above).
    Some(
        unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore)]
    fn opens_libc_and_names_missing_symbols() {
        // SAFETY: libc is already loaded in this process; opening it again runs nothing new.
        let lib = unsafe { Library::open(c"libc.so.6") }.expect("libc");
        assert!(lib.symbol(c"getpid").is_ok());
        let e = lib.symbol(c"no_such_symbol_smem").expect_err("missing");
        assert!(e.contains("no_such_symbol_smem"), "{e}");
        // SAFETY: the file does not exist; nothing is loaded.
        let e = unsafe { Library::open(c"/nonexistent/libnothing.so") }.expect_err("absent");
        assert!(e.contains("libnothing"), "{e}");
    }
}
