//! Raw pieces: the buffer protocol, C strings of the C API, and the logger trampoline.

use std::ffi::{CStr, c_char, c_int};
use std::mem::MaybeUninit;
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::{PyErr, ffi as pyffi};

/// A contiguous buffer exported by a Python object (bytearray, memoryview, numpy array ...),
/// held until dropped so that the exporter cannot move or resize it meanwhile.
pub(crate) struct BufView {
    /// Boxed: the exporter may keep a pointer to the struct until it is released.
    view: Box<pyffi::Py_buffer>,
}

impl BufView {
    /// Gets a C- or Fortran-contiguous view of `obj` (read-only exporters accepted).
    pub(crate) fn get(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut view: Box<MaybeUninit<pyffi::Py_buffer>> = Box::new(MaybeUninit::zeroed());
        // SAFETY: `obj` is a live object (we hold a reference and the GIL); `view` points to
        // writable memory of the size of `Py_buffer`, which the call fills in on success.
        let rc = unsafe {
            pyffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), pyffi::PyBUF_ANY_CONTIGUOUS)
        };
        if rc != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        // SAFETY: `PyObject_GetBuffer` returned 0, so it initialised the whole struct.
        let view = unsafe { Box::from_raw(Box::into_raw(view).cast::<pyffi::Py_buffer>()) };
        Ok(Self { view })
    }

    /// Address of the first byte.
    pub(crate) fn addr(&self) -> u64 {
        self.view.buf as u64
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> u64 {
        u64::try_from(self.view.len).unwrap_or(0)
    }

    /// Whether the exporter forbids writes.
    pub(crate) fn readonly(&self) -> bool {
        self.view.readonly != 0
    }
}

impl Drop for BufView {
    fn drop(&mut self) {
        Python::with_gil(|_| {
            // SAFETY: `view` was filled by a successful `PyObject_GetBuffer` and is released
            // exactly once, here, with the GIL held.
            unsafe { pyffi::PyBuffer_Release(&mut *self.view) }
        });
    }
}

/// Whether `obj` exports the buffer protocol.
pub(crate) fn has_buffer(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: `obj` is a live object and we hold the GIL.
    unsafe { pyffi::PyObject_CheckBuffer(obj.as_ptr()) != 0 }
}

/// Copies a C string returned by the C API (NULL reads as empty).
fn owned(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the C API returns NUL-terminated strings valid until the next smem call of this
    // thread; we copy it at once.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// `smem_get_last_err_msg`, copied.
pub(crate) fn last_c_error() -> String {
    // SAFETY: takes no arguments; returns a thread-local string or "".
    owned(unsafe { smem::smem_get_last_err_msg() })
}

/// `smem_get_and_clear_last_err_msg`, copied.
pub(crate) fn last_c_error_and_clear() -> String {
    // SAFETY: takes no arguments; returns a thread-local string or "".
    owned(unsafe { smem::smem_get_and_clear_last_err_msg() })
}

/// The Python logger, called by [`log_trampoline`].
static LOGGER: Mutex<Option<Py<PyAny>>> = Mutex::new(None);

/// Installs (`Some`) or removes (`None`) the Python logger; returns the C status.
pub(crate) fn set_logger(py: Python<'_>, func: Option<Py<PyAny>>) -> i32 {
    let install = func.is_some();
    let old = std::mem::replace(
        &mut *LOGGER
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        func,
    );
    // Dropped after the lock is released: a `__del__` it runs may log.
    drop(old);
    let c_func: Option<unsafe extern "C" fn(c_int, *const c_char)> =
        if install { Some(log_trampoline) } else { None };
    // SAFETY: `log_trampoline` has the C logger signature, never unwinds and stays valid for
    // the life of the process; NULL restores the stderr sink.
    py.allow_threads(|| unsafe { smem::smem_set_extern_logger(c_func) })
}

/// The C logger: forwards `(level, msg)` to the Python callable. Called from any thread; an
/// exception in the callable is reported through `sys.unraisablehook`, never propagated.
extern "C" fn log_trampoline(level: c_int, msg: *const c_char) {
    let text = owned(msg);
    let _ = std::panic::catch_unwind(move || {
        // SAFETY: a query of the interpreter state, valid from any thread.
        if unsafe { pyffi::Py_IsInitialized() } == 0 {
            return;
        }
        Python::with_gil(|py| {
            let func = LOGGER
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
                .map(|f| f.clone_ref(py));
            if let Some(func) = func {
                if let Err(err) = func.call1(py, (level, text)) {
                    err.write_unraisable(py, Some(func.bind(py)));
                }
            }
        });
    });
}
