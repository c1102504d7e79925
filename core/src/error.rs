//! The `SM_*` result codes of the C API (SPEC 2.4) and their Rust form.
//!
//! Codes down to `-2009` are the reference implementation's; codes from `-2100` down are ours
//! and are documented here and in `smem.h`.

use core::fmt;

/// A failure code of the smem API, as returned across the C boundary.
///
/// The numeric values are part of the ABI and never change; retired values are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `SM_ERROR` (-1): an unspecified failure; the last error message says more.
    Error = -1,
    /// `SM_INVALID_PARAM` (-2000): an argument is out of range, NULL, or inconsistent.
    InvalidParam = -2000,
    /// `SM_MALLOC_FAILED` (-2001): memory (host, device or address space) could not be allocated.
    MallocFailed = -2001,
    /// `SM_NEW_OBJECT_FAILED` (-2002): an object could not be constructed.
    NewObjectFailed = -2002,
    /// `SM_NOT_STARTED` (-2003): the component this call needs has not been started.
    NotStarted = -2003,
    /// `SM_TIMEOUT` (-2004): a deadline passed before the operation completed.
    Timeout = -2004,
    /// `SM_REPEAT_CALL` (-2005): the call was already made (e.g. a second init).
    RepeatCall = -2005,
    /// `SM_DUPLICATED_OBJECT` (-2006): an object with this id already exists.
    DuplicatedObject = -2006,
    /// `SM_OBJECT_NOT_EXISTS` (-2007): the object, key, or peer window does not exist.
    ObjectNotExists = -2007,
    /// `SM_NOT_INITIALIZED` (-2008): the matching `*_init` has not been called.
    NotInitialized = -2008,
    /// `SM_RESOURCE_IN_USE` (-2009): the resource is held by someone else.
    ResourceInUse = -2009,
    /// `SM_IO_ERROR` (-2100): an operating-system or socket operation failed; the link to the
    /// store or a peer may be down.
    IoError = -2100,
    /// `SM_TLS_ERROR` (-2101): TLS configuration or handshake failed (certificate, key, CRL).
    TlsError = -2101,
    /// `SM_NOT_SUPPORTED` (-2102): this build or machine does not support the request.
    NotSupported = -2102,
    /// `SM_PROTOCOL_ERROR` (-2103): a peer sent bytes that violate the wire protocol.
    ProtocolError = -2103,
    /// `SM_STORE_REJECTED` (-2104): the config store answered with an error status.
    StoreRejected = -2104,
    /// `SM_LIMIT_EXCEEDED` (-2105): a configured capacity (table, links, bytes) is exhausted.
    LimitExceeded = -2105,
}

impl ErrorCode {
    /// Every code, in ABI order.
    pub const ALL: [Self; 17] = [
        Self::Error,
        Self::InvalidParam,
        Self::MallocFailed,
        Self::NewObjectFailed,
        Self::NotStarted,
        Self::Timeout,
        Self::RepeatCall,
        Self::DuplicatedObject,
        Self::ObjectNotExists,
        Self::NotInitialized,
        Self::ResourceInUse,
        Self::IoError,
        Self::TlsError,
        Self::NotSupported,
        Self::ProtocolError,
        Self::StoreRejected,
        Self::LimitExceeded,
    ];

    /// The C value of this code.
    #[inline]
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// The C macro name of this code, e.g. `"SM_TIMEOUT"`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Error => "SM_ERROR",
            Self::InvalidParam => "SM_INVALID_PARAM",
            Self::MallocFailed => "SM_MALLOC_FAILED",
            Self::NewObjectFailed => "SM_NEW_OBJECT_FAILED",
            Self::NotStarted => "SM_NOT_STARTED",
            Self::Timeout => "SM_TIMEOUT",
            Self::RepeatCall => "SM_REPEAT_CALL",
            Self::DuplicatedObject => "SM_DUPLICATED_OBJECT",
            Self::ObjectNotExists => "SM_OBJECT_NOT_EXISTS",
            Self::NotInitialized => "SM_NOT_INITIALIZED",
            Self::ResourceInUse => "SM_RESOURCE_IN_USE",
            Self::IoError => "SM_IO_ERROR",
            Self::TlsError => "SM_TLS_ERROR",
            Self::NotSupported => "SM_NOT_SUPPORTED",
            Self::ProtocolError => "SM_PROTOCOL_ERROR",
            Self::StoreRejected => "SM_STORE_REJECTED",
            Self::LimitExceeded => "SM_LIMIT_EXCEEDED",
        }
    }

    /// The code for a C value, if it is one of ours (0 is success, not an error).
    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.code() == code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

impl core::error::Error for ErrorCode {}

/// `SM_OK`: success.
pub const SM_OK: i32 = 0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        for (i, a) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(ErrorCode::from_code(a.code()), Some(*a));
            for b in &ErrorCode::ALL[i + 1..] {
                assert_ne!(a.code(), b.code());
            }
        }
        assert_eq!(ErrorCode::from_code(SM_OK), None);
        assert_eq!(ErrorCode::Timeout.code(), -2004);
        assert_eq!(ErrorCode::NotSupported.code(), -2102);
    }
}
