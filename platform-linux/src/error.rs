//! The error type of the platform layer: an `SM_*` code plus a message that says what was wrong
//! and what to do about it.

use std::fmt;
use std::io;

use smem_core::ErrorCode;

/// A failed smem operation: the C code it maps to and a human-readable explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    code: ErrorCode,
    message: String,
}

/// Result of the platform layer.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A new error with `code` and a message (say what was wrong and what to do).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `SM_INVALID_PARAM` with a message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidParam, message)
    }

    /// `SM_IO_ERROR` for an OS error, with what was being done.
    pub fn io(context: impl fmt::Display, err: &io::Error) -> Self {
        let code = if err.kind() == io::ErrorKind::TimedOut {
            ErrorCode::Timeout
        } else {
            ErrorCode::IoError
        };
        Self::new(code, format!("{context}: {err}"))
    }

    /// The `SM_*` code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message, without the code.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error with `context: ` put before the message.
    #[must_use]
    pub fn context(self, context: impl fmt::Display) -> Self {
        Self {
            code: self.code,
            message: format!("{context}: {}", self.message),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.message, self.code.name())
    }
}

impl std::error::Error for Error {}

impl From<ErrorCode> for Error {
    fn from(code: ErrorCode) -> Self {
        Self::new(code, code.name())
    }
}
