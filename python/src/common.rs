//! Top level of `smem`: life cycle, logging, last error, TLS, `create_config_store`.

use std::ffi::CString;
use std::sync::Mutex;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use smem_core::url::StoreUrl;
use smem_linux::store::server::{ServerConfig, StoreServer};

use crate::error::{self, SM_INVALID_PARAM, SM_NOT_SUPPORTED};
use crate::ffi;

/// A Python string argument as a C string (`TypeError` is PyO3's; an inner NUL is a
/// `ValueError` naming the argument).
pub(crate) fn c_string(s: &str, what: &str) -> PyResult<CString> {
    CString::new(s).map_err(|_| PyValueError::new_err(format!("{what} contains a NUL character")))
}

/// Initialize the smem running environment (`smem_init`).
///
/// Arguments:
///     flags (int): reserved, must be 0
/// Returns:
///     0 if successful, else a negative SM_* code (see get_last_err_msg()).
#[pyfunction]
#[pyo3(signature = (flags = 0))]
fn initialize(py: Python<'_>, flags: u32) -> i32 {
    // SAFETY: plain integer argument.
    error::status(py.allow_threads(|| unsafe { smem::smem_init(flags) }))
}

/// Un-initialize the smem running environment (`smem_uninit`).
#[pyfunction]
fn uninitialize(py: Python<'_>) {
    // SAFETY: no arguments.
    py.allow_threads(|| unsafe { smem::smem_uninit() });
}

/// Set the log print level (`smem_set_log_level`); it filters the external logger too.
///
/// Arguments:
///     level (int): 0 debug, 1 info, 2 warn, 3 error
/// Returns:
///     0 if successful, else a negative SM_* code.
#[pyfunction]
fn set_log_level(py: Python<'_>, level: i32) -> i32 {
    // SAFETY: plain integer argument.
    error::status(py.allow_threads(|| unsafe { smem::smem_set_log_level(level) }))
}

/// Set an external logger (`smem_set_extern_logger`).
///
/// Arguments:
///     log_fn (callable or None): called as log_fn(level: int, message: str), from any
///         thread, for every record at or above the log level; None restores the default
///         stderr sink. An exception it raises goes to sys.unraisablehook.
/// Returns:
///     0 if successful.
#[pyfunction]
#[pyo3(signature = (log_fn))]
fn set_extern_logger(py: Python<'_>, log_fn: Option<Bound<'_, PyAny>>) -> PyResult<i32> {
    if let Some(f) = &log_fn {
        if !f.is_callable() {
            return Err(PyTypeError::new_err(
                "log_fn must be callable (level: int, message: str) or None",
            ));
        }
    }
    Ok(error::status(ffi::set_logger(
        py,
        log_fn.map(Bound::unbind),
    )))
}

/// Get the last error message of this thread (empty string if none).
#[pyfunction]
fn get_last_err_msg() -> String {
    error::last_error_message(false)
}

/// Get and clear the last error message of this thread (empty string if none).
#[pyfunction]
fn get_and_clear_last_err_msg() -> String {
    error::last_error_message(true)
}

/// Set the TLS options of config stores and their clients (`smem_set_ssl_option`); call it
/// before a store is created. Mutual TLS 1.3: both ends present certificates signed by ca_file.
///
/// Arguments:
///     enable_tls (bool): turn TLS on or off (when off, the files are ignored)
///     ca_file (str): PEM bundle of trusted CAs (required when enabled)
///     cert_file (str): PEM certificate chain of this process (required when enabled)
///     key_file (str): PEM private key (required when enabled)
///     crl_file (str or None): PEM CRL(s)
///     key_password (str or None): password of an encrypted PKCS#8 key
/// Returns:
///     0 if successful, else a negative SM_* code (SM_TLS_ERROR names the bad file).
#[pyfunction]
#[pyo3(signature = (enable_tls, ca_file = None, cert_file = None, key_file = None, crl_file = None, key_password = None))]
fn set_ssl_option(
    py: Python<'_>,
    enable_tls: bool,
    ca_file: Option<&str>,
    cert_file: Option<&str>,
    key_file: Option<&str>,
    crl_file: Option<&str>,
    key_password: Option<&str>,
) -> PyResult<i32> {
    let opt = |s: Option<&str>, what: &str| s.map(|s| c_string(s, what)).transpose();
    let ca = opt(ca_file, "ca_file")?;
    let cert = opt(cert_file, "cert_file")?;
    let key = opt(key_file, "key_file")?;
    let crl = opt(crl_file, "crl_file")?;
    let pw = opt(key_password, "key_password")?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    let option = smem::smem_tls_option {
        enableTls: u8::from(enable_tls),
        caFile: ptr(&ca),
        crlFile: ptr(&crl),
        certFile: ptr(&cert),
        keyFile: ptr(&key),
        keyPassword: ptr(&pw),
    };
    // The pointers are plain addresses while the GIL is released; the strings outlive the call.
    let at = &raw const option as usize;
    // SAFETY: `at` points to a valid `smem_tls_option` whose strings (`ca` ...) are alive and
    // NUL-terminated for the whole call; the C function copies what it keeps.
    let rc = py
        .allow_threads(|| unsafe { smem::smem_set_ssl_option(at as *const smem::smem_tls_option) });
    Ok(error::status(rc))
}

/// The reference's TLS switch: `set_conf_store_tls(False, "")` turns TLS off; turning it on
/// through the reference's `tls_info` string is not supported: use set_ssl_option(...).
///
/// Returns:
///     0 if successful, SM_NOT_SUPPORTED for enable=True.
#[pyfunction]
fn set_conf_store_tls(py: Python<'_>, enable: bool, tls_info: &str) -> PyResult<i32> {
    if enable {
        let _ = tls_info;
        error::set_binding_error(
            SM_NOT_SUPPORTED,
            "set_conf_store_tls(True, tls_info): the reference's tls_info string is not \
             supported; call smem.set_ssl_option(True, ca_file=..., cert_file=..., key_file=...)",
        );
        return Ok(SM_NOT_SUPPORTED);
    }
    set_ssl_option(py, false, None, None, None, None, None)
}

/// Stores hosted by this process (`create_config_store`), alive until the process exits.
static STORES: Mutex<Vec<StoreServer>> = Mutex::new(Vec::new());

/// Host a config store in this process, listening on store_url (tcp://ip:port or
/// tcp://[ipv6]:port); it serves until the process exits. Uses the TLS options set before.
///
/// Returns:
///     0 if successful, else a negative SM_* code (e.g. SM_IO_ERROR when the port is taken).
#[pyfunction]
fn create_config_store(py: Python<'_>, store_url: &str) -> i32 {
    let url = match StoreUrl::parse(store_url) {
        Ok(u) => u,
        Err(e) => {
            error::set_binding_error(
                SM_INVALID_PARAM,
                &format!(
                    "create_config_store: bad store_url {store_url:?}: {e} (expected tcp://ip:port)"
                ),
            );
            return SM_INVALID_PARAM;
        }
    };
    match py.allow_threads(|| StoreServer::start(ServerConfig::new(url.addr))) {
        Ok(server) => {
            log::info!(target: "smem::python", "create_config_store: serving at {}", server.local_addr());
            STORES
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(server);
            0
        }
        Err(e) => {
            let code = e.code().code();
            error::set_binding_error(
                code,
                &format!("create_config_store({store_url}): {}", e.message()),
            );
            code
        }
    }
}

/// Registers the top-level functions.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(initialize, m)?)?;
    m.add_function(wrap_pyfunction!(uninitialize, m)?)?;
    m.add_function(wrap_pyfunction!(set_log_level, m)?)?;
    m.add_function(wrap_pyfunction!(set_extern_logger, m)?)?;
    m.add_function(wrap_pyfunction!(get_last_err_msg, m)?)?;
    m.add_function(wrap_pyfunction!(get_and_clear_last_err_msg, m)?)?;
    m.add_function(wrap_pyfunction!(set_ssl_option, m)?)?;
    m.add_function(wrap_pyfunction!(set_conf_store_tls, m)?)?;
    m.add_function(wrap_pyfunction!(create_config_store, m)?)?;
    Ok(())
}
