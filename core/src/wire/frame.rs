//! The 16-byte frame header before every body (SPEC 5.2).
//!
//! ```text
//! i16 type | i16 result | u32 bodyLen | u32 seqNo | u32 crc
//! ```
//! Requests use type 0; replies are type 0 with `result` = status, the request's `seqNo`, crc 0.

use super::{Reader, Result, Writer};

/// Length of the frame header.
pub const FRAME_HEADER_LEN: usize = 16;
/// Largest body the reference accepts (64 MiB); a larger `bodyLen` is not a request.
pub const MAX_BODY_LEN: u32 = 64 * 1024 * 1024;
/// The frame type of requests and replies.
pub const TYPE_DATA: i16 = 0;

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FrameHeader {
    /// Frame type; 0 for requests and replies, anything else is dropped by the server.
    pub frame_type: i16,
    /// Reply status (ignored in requests).
    pub result: i16,
    /// Length of the body that follows.
    pub body_len: u32,
    /// Sequence number; replies carry the request's.
    pub seq_no: u32,
    /// Checksum field (unused: 0 in replies, ignored in requests).
    pub crc: u32,
}

impl FrameHeader {
    /// A data frame header (type 0, crc 0).
    pub const fn new(result: i16, body_len: u32, seq_no: u32) -> Self {
        Self {
            frame_type: TYPE_DATA,
            result,
            body_len,
            seq_no,
            crc: 0,
        }
    }

    /// Parse the first [`FRAME_HEADER_LEN`] bytes of `bytes`.
    ///
    /// # Errors
    /// [`super::WireError::Truncated`] with fewer than 16 bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        Ok(Self {
            frame_type: r.i16("frame type")?,
            result: r.i16("frame result")?,
            body_len: r.u32("frame bodyLen")?,
            seq_no: r.u32("frame seqNo")?,
            crc: r.u32("frame crc")?,
        })
    }

    /// Write the header into `buf`; returns [`FRAME_HEADER_LEN`].
    ///
    /// # Errors
    /// [`super::WireError::BufferTooSmall`] when `buf` is shorter than 16 bytes.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let mut w = Writer::new(buf);
        w.put(&self.frame_type.to_le_bytes())?;
        w.put(&self.result.to_le_bytes())?;
        w.put(&self.body_len.to_le_bytes())?;
        w.put(&self.seq_no.to_le_bytes())?;
        w.put(&self.crc.to_le_bytes())?;
        Ok(w.written())
    }

    /// Whether the body length is one the reference would read (`<= 64 MiB`).
    pub const fn body_len_allowed(&self) -> bool {
        self.body_len <= MAX_BODY_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::super::WireError;
    use super::*;

    /// A data frame header, field by field.
    #[rustfmt::skip]
    static HDR: [u8; 16] = [
        0x00, 0x00,             // frameType: data
        0x70, 0xFE,             // result: -400
        0x2A, 0x00, 0x00, 0x00, // bodyLen: 42
        0x07, 0x00, 0x00, 0x00, // seqNo: 7
        0x00, 0x00, 0x00, 0x00, // crc: 0
    ];

    #[test]
    fn test_parse() {
        let h = FrameHeader::parse(&HDR).unwrap();
        assert_eq!(h, FrameHeader::new(-400, 42, 7));
        assert!(h.body_len_allowed());
    }

    #[test]
    fn test_emit() {
        let mut buf = [0xFF; 20];
        assert_eq!(FrameHeader::new(-400, 42, 7).emit(&mut buf), Ok(16));
        assert_eq!(buf[..16], HDR);
        assert_eq!(
            FrameHeader::default().emit(&mut buf[..15]),
            Err(WireError::BufferTooSmall)
        );
    }

    #[test]
    fn test_impossible_len() {
        assert!(FrameHeader::parse(&HDR[..15]).is_err());
        let mut big = HDR;
        big[4..8].copy_from_slice(&(MAX_BODY_LEN + 1).to_le_bytes());
        assert!(!FrameHeader::parse(&big).unwrap().body_len_allowed());
    }
}
