//! The C boundary's plumbing: the panic boundary, and the only place of this crate where raw
//! pointers from C are dereferenced.
//!
//! Every exported function is written as
//! `ffi_status!("name", { ...; Ok(()) })` (for `int32_t` results) or
//! `ffi_value!("name", failure_value, { ...; Ok(value) })` (for handles, ids, sizes), with a body
//! returning [`smem_linux::Result`]. The macros run the body under
//! [`std::panic::catch_unwind`] (rustls-ffi's `ffi_panic_boundary!`), turn an `Err` into the
//! function's failure value and record the error as the thread's last error
//! ([`crate::error`]); a panic becomes `SM_ERROR` with an "internal error" message. The success
//! path allocates nothing and takes no lock.
//!
//! Pointer arguments go through the helpers below ([`cstr_arg`], [`read_arg`], [`out_arg`],
//! [`slice_arg`], [`slice_mut_arg`]), each of which checks for NULL and names the argument in
//! its `SM_INVALID_PARAM` message, so a function body reads as straight-line code with `?`.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::time::Duration;

use smem_core::ErrorCode;
use smem_linux::{Error, Result};

/// Runs an exported function's body (a block evaluating to `Result<()>`) behind the panic
/// boundary and returns `SM_OK` or the error's negative code.
macro_rules! ffi_status {
    ($name:expr, $body:block) => {{
        let result = ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(
            || -> ::smem_linux::Result<()> {
                ::smem_linux::logging::init();
                $body
            },
        ));
        $crate::error::settle(
            $name,
            result.map(|r| r.map(|()| ::smem_core::error::SM_OK)),
            |e: &::smem_linux::Error| e.code().code(),
        )
    }};
}

/// Runs an exported function's body (a block evaluating to `Result<T>`) behind the panic
/// boundary; on failure returns `$fail` (NULL, `UINT32_MAX`, 0, `()`).
macro_rules! ffi_value {
    ($name:expr, $fail:expr, $body:block) => {{
        let result = ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(
            || -> ::smem_linux::Result<_> {
                ::smem_linux::logging::init();
                $body
            },
        ));
        $crate::error::settle($name, result, |_: &::smem_linux::Error| $fail)
    }};
}

/// Like [`ffi_value!`], with the failure value computed from the error by `$fail`
/// (a closure taking `&smem_linux::Error`).
macro_rules! ffi_with {
    ($name:expr, $fail:expr, $body:block) => {{
        let result = ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(
            || -> ::smem_linux::Result<_> {
                ::smem_linux::logging::init();
                $body
            },
        ));
        $crate::error::settle($name, result, $fail)
    }};
}

pub(crate) use {ffi_status, ffi_value, ffi_with};

/// Borrows a NUL-terminated UTF-8 string argument.
///
/// # Errors
/// `SM_INVALID_PARAM` naming `what` when `p` is NULL or the bytes are not UTF-8.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid and unchanged for `'a`.
pub(crate) unsafe fn cstr_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str> {
    if p.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    // SAFETY: `p` is non-NULL and, by this function's contract, a valid NUL-terminated string
    // living for `'a`.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map_err(|e| {
        Error::invalid(format!(
            "{what} is not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })
}

/// Like [`cstr_arg`], but NULL is allowed and gives `None`.
///
/// # Errors
/// `SM_INVALID_PARAM` when the bytes are not UTF-8.
///
/// # Safety
/// As [`cstr_arg`].
pub(crate) unsafe fn opt_cstr_arg<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded contract of this function.
    unsafe { cstr_arg(p, what) }.map(Some)
}

/// Copies a struct argument out of caller memory (alignment is not assumed).
///
/// # Errors
/// `SM_INVALID_PARAM` naming `what` when `p` is NULL.
///
/// # Safety
/// `p` is NULL or points to a readable, initialised `T`. `T` must be valid for every bit
/// pattern the C side may write (our mirrors use `u8` for C `bool` for this reason).
pub(crate) unsafe fn read_arg<T: Copy>(p: *const T, what: &str) -> Result<T> {
    if p.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    // SAFETY: `p` is non-NULL and points to a readable `T` (contract); `read_unaligned` makes
    // no alignment assumption.
    Ok(unsafe { ptr::read_unaligned(p) })
}

/// Copies an array argument of `len` elements out of caller memory (alignment is not assumed).
///
/// # Errors
/// `SM_INVALID_PARAM` naming `what` when `p` is NULL.
///
/// # Safety
/// `p` is NULL or points to `len` readable, initialised `T`s. `T` must be valid for every bit
/// pattern (pointers, integers).
pub(crate) unsafe fn read_array<T: Copy>(p: *const T, len: usize, what: &str) -> Result<Vec<T>> {
    if p.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    Ok((0..len)
        // SAFETY: element `i < len` of a readable array (contract); `wrapping_add` stays in it.
        .map(|i| unsafe { ptr::read_unaligned(p.wrapping_add(i)) })
        .collect())
}

/// A checked, writable out-parameter; written only on success ([`Out::write`]).
#[derive(Debug)]
pub(crate) struct Out<T>(NonNull<T>);

impl<T> Out<T> {
    /// Writes the result (the old contents, possibly uninitialised, are not read or dropped).
    pub(crate) fn write(self, value: T) {
        // SAFETY: `out_arg`'s contract made `self.0` valid for one write of a `T`; unaligned
        // writes are tolerated.
        unsafe { ptr::write_unaligned(self.0.as_ptr(), value) }
    }
}

/// Checks an out-parameter.
///
/// # Errors
/// `SM_INVALID_PARAM` naming `what` when `p` is NULL.
///
/// # Safety
/// `p` is NULL or valid for writing a `T` until the returned [`Out`] is written or dropped.
pub(crate) unsafe fn out_arg<T>(p: *mut T, what: &str) -> Result<Out<T>> {
    NonNull::new(p)
        .map(Out)
        .ok_or_else(|| Error::invalid(format!("{what} is NULL")))
}

/// Borrows `len` bytes of caller memory (NULL is accepted only with `len == 0`).
///
/// # Errors
/// `SM_INVALID_PARAM` naming `what` when `p` is NULL and `len > 0`.
///
/// # Safety
/// `p` is NULL or valid for reading `len` bytes, not mutated during `'a`.
pub(crate) unsafe fn slice_arg<'a>(p: *const c_void, len: usize, what: &str) -> Result<&'a [u8]> {
    if p.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(Error::invalid(format!("{what} is NULL")))
        };
    }
    // SAFETY: non-NULL and readable for `len` bytes during `'a` (contract); u8 has align 1.
    Ok(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) })
}

/// Borrows `len` writable bytes of caller memory (NULL is accepted only with `len == 0`).
///
/// # Errors
/// `SM_INVALID_PARAM` naming `what` when `p` is NULL and `len > 0`.
///
/// # Safety
/// `p` is NULL or valid for writing `len` bytes, not accessed otherwise during `'a`.
pub(crate) unsafe fn slice_mut_arg<'a>(
    p: *mut c_void,
    len: usize,
    what: &str,
) -> Result<&'a mut [u8]> {
    if p.is_null() {
        return if len == 0 {
            Ok(&mut [])
        } else {
            Err(Error::invalid(format!("{what} is NULL")))
        };
    }
    // SAFETY: non-NULL, writable for `len` bytes and unaliased during `'a` (contract).
    Ok(unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) })
}

/// Borrows an array argument of `len` elements (NULL is accepted only with `len == 0`).
///
/// # Errors
/// `SM_INVALID_PARAM` naming `what` when `p` is NULL and `len > 0`, or misaligned.
///
/// # Safety
/// `p` is NULL or valid for reading `len` initialised `T`s, not mutated during `'a`.
pub(crate) unsafe fn array_arg<'a, T>(p: *const T, len: usize, what: &str) -> Result<&'a [T]> {
    if p.is_null() || len == 0 {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(Error::invalid(format!("{what} is NULL")))
        };
    }
    if !p.is_aligned() {
        return Err(Error::invalid(format!(
            "{what} is not aligned for its element type"
        )));
    }
    // SAFETY: non-NULL, aligned and readable for `len` elements during `'a` (contract).
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// The C logger callback type: `void (*)(int level, const char *msg)`.
pub(crate) type CLogFn = unsafe extern "C" fn(level: c_int, msg: *const c_char);

/// The installed C logger (NULL: none), stored as a data pointer so it can be swapped
/// atomically without a lock.
static C_LOGGER: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());

/// Installs (`Some`) or removes (`None`) the C logger called by [`call_c_logger`].
pub(crate) fn store_c_logger(f: Option<CLogFn>) {
    let p = f.map_or(ptr::null_mut(), |f| f as *mut c_void);
    C_LOGGER.store(p, Ordering::Release);
}

/// Calls the installed C logger with `msg`; returns `false` when none is installed.
pub(crate) fn call_c_logger(level: i32, msg: &CStr) -> bool {
    let p = C_LOGGER.load(Ordering::Acquire);
    if p.is_null() {
        return false;
    }
    // SAFETY: every non-NULL value of `C_LOGGER` was produced by `store_c_logger` from a
    // `CLogFn`; function and data pointers have the same size and representation on the
    // 64-bit Linux targets this crate builds for.
    let f = unsafe { std::mem::transmute::<*mut c_void, CLogFn>(p) };
    // SAFETY: the caller of `smem_set_extern_logger` promised a callable function of this
    // signature; `msg` is a valid NUL-terminated string for the duration of the call.
    unsafe { f(level, msg.as_ptr()) };
    true
}

/// A config timeout of `secs` seconds (`what`: the config field); 0 is refused.
pub(crate) fn timeout(secs: u32, what: &str) -> Result<Duration> {
    if secs == 0 {
        return Err(Error::invalid(format!(
            "config->{what} is 0; it must be at least 1 second"
        )));
    }
    Ok(Duration::from_secs(u64::from(secs)))
}

/// The runtime handle behind a C handle (`smem_bm_t`, `smem_shm_t`).
pub(crate) fn handle_arg(h: *mut c_void) -> Result<u64> {
    if h.is_null() {
        return Err(Error::invalid("handle is NULL"));
    }
    Ok(h.addr() as u64)
}

/// The C handle of runtime handle `h`.
pub(crate) fn c_handle(h: u64) -> Result<*mut c_void> {
    let addr = usize::try_from(h).unwrap_or(0);
    if addr == 0 {
        return Err(Error::new(
            ErrorCode::Error,
            "internal error: the runtime returned handle 0",
        ));
    }
    Ok(ptr::without_provenance_mut(addr))
}

/// A GVA as a C pointer.
pub(crate) fn gva_ptr(addr: u64) -> *mut c_void {
    // GVAs are real addresses of this process (reserved or mapped); expose them as such.
    ptr::with_exposed_provenance_mut(usize::try_from(addr).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::undocumented_unsafe_blocks)]

    use super::*;

    #[test]
    fn null_and_utf8_checks() {
        let e = unsafe { cstr_arg(ptr::null(), "storeURL") }.unwrap_err();
        assert_eq!(e.message(), "storeURL is NULL");
        let bad = c"ab\xffcd";
        let e = unsafe { cstr_arg(bad.as_ptr(), "storeURL") }.unwrap_err();
        assert!(e.message().contains("not valid UTF-8"), "{}", e.message());
        assert_eq!(
            unsafe { cstr_arg(c"tcp://x:1".as_ptr(), "u") }.unwrap(),
            "tcp://x:1"
        );
        assert_eq!(unsafe { opt_cstr_arg(ptr::null(), "u") }.unwrap(), None);
        assert!(
            unsafe { slice_arg(ptr::null(), 0, "b") }
                .unwrap()
                .is_empty()
        );
        assert!(unsafe { slice_arg(ptr::null(), 1, "b") }.is_err());
        assert!(unsafe { slice_mut_arg(ptr::null_mut(), 1, "b") }.is_err());
        assert!(unsafe { out_arg::<u32>(ptr::null_mut(), "o") }.is_err());
        assert!(unsafe { read_arg::<u32>(ptr::null(), "o") }.is_err());
    }

    #[test]
    fn out_writes_unaligned() {
        let mut buf = [0u8; 9];
        let p = buf.as_mut_ptr().wrapping_add(1).cast::<u64>();
        unsafe { out_arg(p, "o") }
            .unwrap()
            .write(0x0102_0304_0506_0708);
        assert_eq!(&buf[1..], &0x0102_0304_0506_0708u64.to_ne_bytes());
    }
}
