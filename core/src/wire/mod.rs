//! Config store wire protocol (SPEC 5): handshake, frame header, message body.
//!
//! Everything is little-endian without padding. Parsing works on borrowed byte slices, never
//! allocates and never panics, whatever the bytes: every length read from the wire is checked
//! against the bytes actually present before it is used to slice. Encoders write into a caller
//! buffer sized with the matching `*_len()` function and return [`WireError::BufferTooSmall`]
//! instead of writing out of bounds.
//!
//! Layers:
//! - [`handshake`]: the 16-byte hello of a link and the 2-byte answer (SPEC 5.1).
//! - [`frame`]: the 16-byte header before every body (SPEC 5.2).
//! - [`message`]: the packed body with keys and values (SPEC 5.3), as a zero-copy view.
//! - [`trans`]: the transfer engine's records in the store (SPEC 6.2).
//! - [`record`]: the BM / SHM runtimes' text records in the store (proposal, membership log,
//!   window and rank records).
//! - [`transport`]: the BM network transport's hello, request and reply headers (SPEC 2.7).

use core::fmt;

pub mod frame;
pub mod handshake;
pub mod message;
pub mod record;
pub mod trans;
pub mod transport;

pub use frame::{FRAME_HEADER_LEN, FrameHeader, MAX_BODY_LEN};
pub use handshake::{HANDSHAKE_LEN, HANDSHAKE_REPLY_LEN, Handshake};
pub use message::{Items, MESSAGE_BASE_LEN, MessageHeader, MessageType, MessageView};

/// Why bytes could not be parsed or emitted.
///
/// Small and `Copy`; the payload is a static description of the field concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// Fewer bytes than the field needs.
    Truncated(&'static str),
    /// A length or count is larger than the protocol allows.
    TooLarge(&'static str),
    /// A field holds a value the protocol does not allow.
    Invalid(&'static str),
    /// A declared size does not match the bytes the fields use.
    SizeMismatch(&'static str),
    /// The output buffer is smaller than the encoded length.
    BufferTooSmall,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated(what) => write!(f, "truncated {what}"),
            Self::TooLarge(what) => write!(f, "{what} too large"),
            Self::Invalid(what) => write!(f, "invalid {what}"),
            Self::SizeMismatch(what) => write!(f, "{what} does not match the fields"),
            Self::BufferTooSmall => f.write_str("output buffer too small"),
        }
    }
}

impl core::error::Error for WireError {}

/// Result of the wire codec.
pub type Result<T> = core::result::Result<T, WireError>;

/// Reply status codes (the `result` field of a reply frame, and the handshake answer).
pub mod status {
    /// Success.
    pub const OK: i16 = 0;
    /// Generic failure: handshake refused (magic/version, rank held, too many links), or
    /// AutoRanking with every rank taken.
    pub const ERROR: i16 = -1;
    /// Malformed request, wrong arguments for the op, or unsupported op.
    pub const INVALID_REQUEST: i16 = -400;
    /// The key does not exist.
    pub const NOT_EXIST: i16 = -404;
    /// A parked GET reached its deadline.
    pub const TIMEOUT: i16 = -601;
    /// The store was wiped (no ranked link left) while a GET was parked or a watch was set
    /// (smem only; the reference never answers).
    pub const WIPED: i16 = -602;
    /// Handshake: the world size differs from the one fixed by the first link.
    pub const WORLD_SIZE_MISMATCH: i16 = -2000;
    /// Handshake, in clear (smem only): the store requires TLS and the peer sent no TLS
    /// ClientHello after its header (a plaintext client). The value of `SM_TLS_ERROR`; a
    /// reference client sees a refusal like `ERROR`.
    pub const TLS_REQUIRED: i16 = -2101;
}

/// A little-endian cursor over borrowed bytes (rustls' `Reader`): every take is checked.
#[derive(Clone, Debug)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) const fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    pub(crate) const fn remaining(&self) -> usize {
        self.rest.len()
    }

    pub(crate) fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8]> {
        let (head, tail) = self
            .rest
            .split_at_checked(len)
            .ok_or(WireError::Truncated(what))?;
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(WireError::Truncated(what))?;
        self.rest = tail;
        Ok(*head)
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64> {
        self.array::<8>(what).map(u64::from_le_bytes)
    }

    pub(crate) fn i64(&mut self, what: &'static str) -> Result<i64> {
        self.array::<8>(what).map(i64::from_le_bytes)
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32> {
        self.array::<4>(what).map(u32::from_le_bytes)
    }

    pub(crate) fn i16(&mut self, what: &'static str) -> Result<i16> {
        self.array::<2>(what).map(i16::from_le_bytes)
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32> {
        self.array::<4>(what).map(i32::from_le_bytes)
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16> {
        self.array::<2>(what).map(u16::from_le_bytes)
    }
}

/// A little-endian writer into a caller buffer: every put is checked.
#[derive(Debug)]
pub(crate) struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) const fn written(&self) -> usize {
        self.pos
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) -> Result<()> {
        let end = self
            .pos
            .checked_add(bytes.len())
            .ok_or(WireError::BufferTooSmall)?;
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(WireError::BufferTooSmall)?;
        dst.copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }
}
