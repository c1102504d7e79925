//! Errors: `smem.SmemError` (defined in Python, `smem/_error.py`), the C last error, and the
//! binding's own last error (for failures found before any C call, e.g. a missing capability).

use std::cell::RefCell;

use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::PyType;
use smem_core::ErrorCode;

use crate::ffi;

/// `SM_ERROR`: the code of a failure whose message names no code.
pub(crate) const SM_ERROR: i32 = ErrorCode::Error.code();
/// `SM_INVALID_PARAM`.
pub(crate) const SM_INVALID_PARAM: i32 = ErrorCode::InvalidParam.code();
/// `SM_REPEAT_CALL`.
pub(crate) const SM_REPEAT_CALL: i32 = ErrorCode::RepeatCall.code();
/// `SM_NOT_INITIALIZED`.
pub(crate) const SM_NOT_INITIALIZED: i32 = ErrorCode::NotInitialized.code();
/// `SM_NOT_SUPPORTED`.
pub(crate) const SM_NOT_SUPPORTED: i32 = ErrorCode::NotSupported.code();

thread_local! {
    /// A failure the binding found itself; newer than the C last error while set.
    static BINDING_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records a failure found by the binding as this thread's last error.
pub(crate) fn set_binding_error(code: i32, msg: &str) {
    let text = format!("{msg} [{}]", code_name(code));
    BINDING_ERROR.with(|e| *e.borrow_mut() = Some(text));
}

/// Forgets the binding's own error (a newer C failure is the last error now).
pub(crate) fn clear_binding_error() {
    BINDING_ERROR.with(|e| *e.borrow_mut() = None);
}

/// The last error of this thread: the binding's own if newer, else the C library's.
pub(crate) fn last_error_message(clear: bool) -> String {
    let own = BINDING_ERROR.with(|e| {
        if clear {
            e.borrow_mut().take()
        } else {
            e.borrow().clone()
        }
    });
    let c = if clear {
        ffi::last_c_error_and_clear()
    } else {
        ffi::last_c_error()
    };
    own.unwrap_or(c)
}

/// The `SM_*` name of `code` (or `"SM_ERROR"` for a value that is not ours).
pub(crate) fn code_name(code: i32) -> &'static str {
    ErrorCode::from_code(code).map_or("SM_ERROR", ErrorCode::name)
}

/// The code named at the end of a C error message (`"... [SM_TIMEOUT]"`), or `SM_ERROR`.
pub(crate) fn code_of_message(msg: &str) -> i32 {
    let Some(name) = msg
        .trim_end()
        .strip_suffix(']')
        .and_then(|m| m.rsplit_once('['))
        .map(|(_, n)| n)
    else {
        return SM_ERROR;
    };
    ErrorCode::ALL
        .iter()
        .find(|c| c.name() == name)
        .map_or(SM_ERROR, |c| c.code())
}

/// A C call returned a status: passes it through, keeping the C message as the last error.
pub(crate) fn status(rc: i32) -> i32 {
    if rc != 0 {
        clear_binding_error();
    }
    rc
}

/// `smem.SmemError`, imported once from `smem._error`.
fn smem_error_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static TYPE: GILOnceCell<Py<PyType>> = GILOnceCell::new();
    TYPE.import(py, "smem._error", "SmemError")
}

/// A `smem.SmemError(code, message)`.
pub(crate) fn smem_error(py: Python<'_>, code: i32, msg: String) -> PyErr {
    match smem_error_type(py).and_then(|t| t.call1((code, msg.clone()))) {
        Ok(value) => PyErr::from_value(value),
        Err(e) => e,
    }
}

/// The `SmemError` for a C call that returned NULL / an invalid id: code and message of the C
/// last error of this thread.
pub(crate) fn from_c_failure(py: Python<'_>, what: &str) -> PyErr {
    clear_binding_error();
    let msg = ffi::last_c_error();
    let msg = if msg.is_empty() {
        format!("{what} failed (no message) [SM_ERROR]")
    } else {
        msg
    };
    smem_error(py, code_of_message(&msg), msg)
}

/// Records and raises a failure the binding found itself.
pub(crate) fn binding_failure(py: Python<'_>, code: i32, msg: &str) -> PyErr {
    set_binding_error(code, msg);
    smem_error(py, code, format!("{msg} [{}]", code_name(code)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_code_at_the_end_of_a_message() {
        assert_eq!(code_of_message("init timed out [SM_TIMEOUT]"), -2004);
        assert_eq!(code_of_message("bad [x] thing [SM_INVALID_PARAM]\n"), -2000);
        assert_eq!(code_of_message("no code"), SM_ERROR);
        assert_eq!(code_of_message("[SM_NOPE]"), SM_ERROR);
        assert_eq!(code_name(-2102), "SM_NOT_SUPPORTED");
    }
}
