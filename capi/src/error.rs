//! The per-thread last error (`smem_get_last_err_msg`, `smem_get_and_clear_last_err_msg`) and
//! the outcome handling of the panic boundary.
//!
//! Every failing call stores its error's `Display` form (`"<message> [SM_CODE]"`, see
//! [`smem_linux::Error`]) in a thread-local slot and logs it at warn level with the function
//! name. A successful call leaves the slot alone (errno-like), so a returned pointer stays valid
//! until the next *failing* smem call or clear on this thread: longer than the documented
//! "until the next smem call".

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};

use smem_core::ErrorCode;
use smem_linux::Error;

use crate::ffi::ffi_value;

/// The string returned when there is no error.
const EMPTY: &CStr = c"";

#[derive(Default)]
struct LastError {
    /// The message of the last failure, if not cleared.
    current: Option<CString>,
    /// The message handed out by the last `..._and_clear_...`; kept alive until the next one.
    taken: Option<CString>,
}

thread_local! {
    static LAST: RefCell<LastError> = RefCell::new(LastError::default());
}

/// Records `err` as this thread's last error.
pub(crate) fn set_last_error(err: &Error) {
    let text = err.to_string().replace('\0', "\\0");
    // `text` has no NUL any more, so `CString::new` cannot fail.
    let c = CString::new(text).unwrap_or_default();
    let _ = LAST.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            l.current = Some(c);
        }
    });
}

/// A pointer to this thread's last error message, or to `""`.
fn last_error_ptr() -> *const c_char {
    LAST.try_with(|l| {
        l.try_borrow()
            .ok()
            .and_then(|l| l.current.as_ref().map(|c| c.as_ptr()))
    })
    .ok()
    .flatten()
    .unwrap_or(EMPTY.as_ptr())
}

/// Moves the last error to the "taken" slot and returns a pointer to it (or to `""`).
fn take_last_error_ptr() -> *const c_char {
    LAST.try_with(|l| {
        l.try_borrow_mut().ok().and_then(|mut l| {
            l.taken = l.current.take();
            l.taken.as_ref().map(|c| c.as_ptr())
        })
    })
    .ok()
    .flatten()
    .unwrap_or(EMPTY.as_ptr())
}

/// The message of a caught panic's payload.
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(non-string panic payload)"
    }
}

/// Ends an exported call: passes a success through; for an error or a caught panic records the
/// last error, logs it, and returns `fail(&error)`.
pub(crate) fn settle<T>(
    name: &str,
    outcome: std::thread::Result<smem_linux::Result<T>>,
    fail: impl FnOnce(&Error) -> T,
) -> T {
    let err = match outcome {
        Ok(Ok(value)) => return value,
        Ok(Err(err)) => err,
        Err(payload) => Error::new(
            ErrorCode::Error,
            format!(
                "internal error in {name}: {} (please report this bug)",
                panic_message(payload.as_ref())
            ),
        ),
    };
    log::warn!(target: "smem::capi", "{name} failed: {err}");
    set_last_error(&err);
    fail(&err)
}

/// The message of the calling thread's last failure, `""` if none.
///
/// The pointer stays valid until the next smem call on this thread that fails or clears the
/// error. It is never NULL.
///
/// # Safety
/// Always safe to call; `unsafe` only for uniformity with the other exports. The caller must not
/// write through or free the returned pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_get_last_err_msg() -> *const c_char {
    ffi_value!("smem_get_last_err_msg", EMPTY.as_ptr(), {
        Ok(last_error_ptr())
    })
}

/// As [`smem_get_last_err_msg`], and clears the last error.
///
/// The pointer stays valid until the next `smem_get_and_clear_last_err_msg` on this thread
/// (so in particular until the next smem call). It is never NULL.
///
/// # Safety
/// Always safe to call; the caller must not write through or free the returned pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_get_and_clear_last_err_msg() -> *const c_char {
    ffi_value!("smem_get_and_clear_last_err_msg", EMPTY.as_ptr(), {
        Ok(take_last_error_ptr())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::undocumented_unsafe_blocks)]

    use super::*;

    fn last() -> String {
        unsafe { CStr::from_ptr(smem_get_last_err_msg()) }
            .to_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn settle_records_errors_and_panics() {
        smem_linux::logging::set_level(3).unwrap();
        let r: i32 = settle("f", Ok(Ok(5)), |_| -1);
        assert_eq!(r, 5);
        let r: i32 = settle("f", Ok(Err(Error::invalid("bad x"))), |e| e.code().code());
        assert_eq!(r, -2000);
        assert_eq!(last(), "bad x [SM_INVALID_PARAM]");
        let payload = std::panic::catch_unwind(|| panic!("boom")).unwrap_err();
        let r: i32 = settle("smem_x", Err(payload), |e| e.code().code());
        assert_eq!(r, -1);
        assert!(
            last().contains("internal error in smem_x: boom"),
            "{}",
            last()
        );
        let cleared = unsafe { CStr::from_ptr(smem_get_and_clear_last_err_msg()) };
        assert!(cleared.to_str().unwrap().contains("boom"));
        assert_eq!(last(), "");
    }

    #[test]
    fn interior_nul_is_escaped() {
        smem_linux::logging::set_level(3).unwrap();
        set_last_error(&Error::invalid("a\0b"));
        assert_eq!(last(), "a\\0b [SM_INVALID_PARAM]");
        let _ = take_last_error_ptr();
    }
}
