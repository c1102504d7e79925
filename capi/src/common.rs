//! `smem.h`: init / uninit, logging, TLS settings.

use std::ffi::{CString, c_char, c_int};

use smem_linux::tls::{self, TlsOptions};
use smem_linux::{Error, Result, logging, runtime};
use static_assertions::{assert_eq_align, assert_eq_size, const_assert_eq};

use crate::ffi::{self, CLogFn, ffi_status, ffi_value};

/// `smem_tls_option` (SPEC 2.1), the C layout exactly. C `bool` is mirrored as `u8` (non-zero =
/// true) so that no byte a C caller writes is an invalid Rust value.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_snake_case)]
pub struct smem_tls_option {
    /// Whether TLS is on; when off the file fields are ignored.
    pub enableTls: u8,
    /// PEM bundle of trusted CAs (required when enabled).
    pub caFile: *const c_char,
    /// PEM CRL(s), or NULL.
    pub crlFile: *const c_char,
    /// PEM certificate chain of this process.
    pub certFile: *const c_char,
    /// PEM private key: PKCS#8 (plain or encrypted), PKCS#1 or SEC1.
    pub keyFile: *const c_char,
    /// Password of an encrypted PKCS#8 key, or NULL.
    pub keyPassword: *const c_char,
}

assert_eq_size!(smem_tls_option, [u8; 48]);
assert_eq_align!(smem_tls_option, u64);
const_assert_eq!(std::mem::offset_of!(smem_tls_option, enableTls), 0);
const_assert_eq!(std::mem::offset_of!(smem_tls_option, caFile), 8);
const_assert_eq!(std::mem::offset_of!(smem_tls_option, crlFile), 16);
const_assert_eq!(std::mem::offset_of!(smem_tls_option, certFile), 24);
const_assert_eq!(std::mem::offset_of!(smem_tls_option, keyFile), 32);
const_assert_eq!(std::mem::offset_of!(smem_tls_option, keyPassword), 40);

/// The TLS settings copied out of a `smem_tls_option` (the caller may free theirs afterwards).
#[derive(Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM bundle of trusted CAs.
    pub ca_file: String,
    /// PEM CRL(s).
    pub crl_file: Option<String>,
    /// PEM certificate chain.
    pub cert_file: String,
    /// PEM private key.
    pub key_file: String,
    /// Password of an encrypted PKCS#8 key.
    pub key_password: Option<String>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("TlsSettings")
            .field("ca_file", &self.ca_file)
            .field("crl_file", &self.crl_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("key_password", &self.key_password.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Validates and copies a `smem_tls_option`: `None` when TLS is off.
///
/// # Errors
/// `SM_INVALID_PARAM` for a missing, empty or non-UTF-8 required path, or a non-UTF-8 optional
/// one.
///
/// # Safety
/// Every non-NULL string pointer of `opt` points to a NUL-terminated string.
unsafe fn tls_settings(opt: &smem_tls_option) -> Result<Option<TlsSettings>> {
    if opt.enableTls == 0 {
        return Ok(None);
    }
    let required = |p: *const c_char, what: &str| -> Result<String> {
        // SAFETY: `p` comes from `opt`, whose strings are valid by this function's contract.
        let s = unsafe { ffi::cstr_arg(p, what) }?;
        if s.is_empty() {
            return Err(Error::invalid(format!("{what} is empty")));
        }
        Ok(s.to_owned())
    };
    // SAFETY: a string of `opt`, valid by this function's contract.
    let crl_file = unsafe { ffi::opt_cstr_arg(opt.crlFile, "tlsOption->crlFile") }?;
    // SAFETY: as above.
    let key_password = unsafe { ffi::opt_cstr_arg(opt.keyPassword, "tlsOption->keyPassword") }?;
    Ok(Some(TlsSettings {
        ca_file: required(opt.caFile, "tlsOption->caFile (required when enableTls)")?,
        crl_file: crl_file.map(str::to_owned),
        cert_file: required(
            opt.certFile,
            "tlsOption->certFile (required when enableTls)",
        )?,
        key_file: required(opt.keyFile, "tlsOption->keyFile (required when enableTls)")?,
        key_password: key_password.map(str::to_owned),
    }))
}

/// `smem_init`: initialises the library (logger, process state). Idempotent.
///
/// Returns `SM_OK`, or `SM_INVALID_PARAM` when `flags != 0`.
///
/// # Safety
/// Always safe to call (no pointer arguments).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_init(flags: u32) -> i32 {
    ffi_status!("smem_init", {
        if flags != 0 {
            return Err(Error::invalid(format!(
                "smem_init flags must be 0, got {flags:#x}"
            )));
        }
        runtime::init(flags)
    })
}

/// `smem_uninit`: tears down everything this process created through smem. Safe to repeat.
///
/// # Safety
/// Always safe to call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_uninit() {
    ffi_value!("smem_uninit", (), {
        runtime::uninit();
        Ok(())
    })
}

/// `smem_set_log_level`: 0 debug, 1 info, 2 warn, 3 error.
///
/// Returns `SM_OK` or `SM_INVALID_PARAM` (level unchanged).
///
/// # Safety
/// Always safe to call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_set_log_level(level: c_int) -> i32 {
    ffi_status!("smem_set_log_level", { logging::set_level(level) })
}

/// The `logging::Sink` that forwards records to the C logger.
fn c_log_sink(level: i32, msg: &str) {
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    if !ffi::call_c_logger(level, &c) {
        // The logger was removed between the sink lookup and this call: do not drop the record.
        logging::write_stderr_raw(&format!("{msg}\n"));
    }
}

/// `smem_set_extern_logger`: sends log records to `func` (`NULL` restores stderr).
///
/// Returns `SM_OK`.
///
/// # Safety
/// `func` is NULL or a function of the C signature `void (*)(int, const char *)` that stays
/// callable (from any thread) until it is replaced. It must not unwind.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_set_extern_logger(func: Option<CLogFn>) -> i32 {
    ffi_status!("smem_set_extern_logger", {
        match func {
            Some(f) => {
                ffi::store_c_logger(Some(f));
                logging::set_sink(Some(c_log_sink))
            }
            None => {
                logging::set_sink(None)?;
                ffi::store_c_logger(None);
                Ok(())
            }
        }
    })
}

/// `smem_set_ssl_option`: validates and copies the TLS settings.
///
/// The files are loaded and checked at once ([`smem_linux::tls::set_global`]); config stores
/// and store clients created afterwards use TLS 1.3 with mutual authentication.
///
/// Returns `SM_OK`, `SM_INVALID_PARAM` (NULL option, bad path fields when enabled), or
/// `SM_TLS_ERROR` naming the file and what is wrong with it (missing, no certificate, wrong key
/// password, unsupported key, bad CRL...); on error the previous setting stays.
///
/// # Safety
/// `tls_option` is NULL or points to a readable `smem_tls_option` whose non-NULL strings are
/// NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_set_ssl_option(tls_option: *const smem_tls_option) -> i32 {
    ffi_status!("smem_set_ssl_option", {
        // SAFETY: forwarded contract of this function.
        let opt = unsafe { ffi::read_arg(tls_option, "tlsOption") }?;
        // SAFETY: forwarded contract of this function.
        match unsafe { tls_settings(&opt) }? {
            None => {
                tls::set_global(None)?;
                log::info!(target: "smem::capi", "TLS disabled by smem_set_ssl_option");
                Ok(())
            }
            Some(settings) => {
                log::debug!(target: "smem::capi", "TLS requested: {settings:?}");
                let mut options =
                    TlsOptions::new(settings.ca_file, settings.cert_file, settings.key_file);
                if let Some(crl) = settings.crl_file {
                    options = options.with_crl_file(crl);
                }
                if let Some(password) = settings.key_password {
                    options = options.with_key_password(password);
                }
                // Loads and checks the files now; stores and clients created later use it.
                tls::set_global(Some(options))?;
                log::info!(target: "smem::capi", "TLS 1.3 with mutual authentication enabled");
                Ok(())
            }
        }
    })
}
