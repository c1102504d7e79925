//! The link handshake (SPEC 5.1): 16 bytes from the client, a 2-byte `i16` answer.
//!
//! ```text
//! i16 magic (0) | i16 version (0) | i8 reconnect | 3 zero bytes | u64 rankInfo
//! rankInfo = worldSize << 32 | rankId, 0xFFFF_FFFF in either half = unknown
//! ```

use super::{Reader, Result, Writer};

/// Length of the client's handshake.
pub const HANDSHAKE_LEN: usize = 16;
/// Length of the server's answer (`i16 result`).
pub const HANDSHAKE_REPLY_LEN: usize = 2;
/// The only magic value.
pub const MAGIC: i16 = 0;
/// The only protocol version.
pub const VERSION: i16 = 0;
/// `rankInfo` half meaning "unknown".
pub const UNKNOWN: u32 = 0xFFFF_FFFF;

/// A parsed client handshake. Magic and version are kept as sent so the server can refuse a
/// mismatch with `-1` (see [`Handshake::is_supported`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// Magic, 0 for this protocol.
    pub magic: i16,
    /// Version, 0 for this protocol.
    pub version: i16,
    /// The reconnect byte: 0 first connect, 1 re-connect (other values kept as sent).
    pub reconnect: u8,
    /// World size, `None` when unknown.
    pub world_size: Option<u32>,
    /// Rank id, `None` when unknown.
    pub rank: Option<u32>,
}

const fn known(v: u32) -> Option<u32> {
    if v == UNKNOWN { None } else { Some(v) }
}

impl Handshake {
    /// A first-connect handshake of this protocol version.
    pub const fn new(world_size: Option<u32>, rank: Option<u32>, reconnect: bool) -> Self {
        Self {
            magic: MAGIC,
            version: VERSION,
            reconnect: reconnect as u8,
            world_size,
            rank,
        }
    }

    /// Parse the first [`HANDSHAKE_LEN`] bytes of `bytes` (later bytes are not looked at).
    ///
    /// # Errors
    /// [`super::WireError::Truncated`] with fewer than 16 bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let magic = r.i16("handshake magic")?;
        let version = r.i16("handshake version")?;
        let [reconnect, _, _, _] = r.array::<4>("handshake reconnect")?;
        let info = r.u64("handshake rankInfo")?;
        // Truncation to the halves is the point here.
        let world = (info >> 32) as u32;
        let rank = info as u32;
        Ok(Self {
            magic,
            version,
            reconnect,
            world_size: known(world),
            rank: known(rank),
        })
    }

    /// Whether magic and version are the ones this implementation speaks.
    pub const fn is_supported(&self) -> bool {
        self.magic == MAGIC && self.version == VERSION
    }

    /// Whether the client says it is re-connecting.
    pub const fn is_reconnect(&self) -> bool {
        self.reconnect != 0
    }

    /// The `rankInfo` word.
    pub const fn rank_info(&self) -> u64 {
        let world = match self.world_size {
            Some(w) => w,
            None => UNKNOWN,
        };
        let rank = match self.rank {
            Some(r) => r,
            None => UNKNOWN,
        };
        ((world as u64) << 32) | rank as u64
    }

    /// Write the 16 bytes into `buf`; returns [`HANDSHAKE_LEN`].
    ///
    /// # Errors
    /// [`super::WireError::BufferTooSmall`] when `buf` is shorter than 16 bytes.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let mut w = Writer::new(buf);
        w.put(&self.magic.to_le_bytes())?;
        w.put(&self.version.to_le_bytes())?;
        w.put(&[self.reconnect, 0, 0, 0])?;
        w.put(&self.rank_info().to_le_bytes())?;
        Ok(w.written())
    }
}

/// Parse the server's 2-byte answer.
///
/// # Errors
/// [`super::WireError::Truncated`] with fewer than 2 bytes.
pub fn parse_reply(bytes: &[u8]) -> Result<i16> {
    Reader::new(bytes).i16("handshake reply")
}

/// Write the server's 2-byte answer into `buf`.
///
/// # Errors
/// [`super::WireError::BufferTooSmall`] when `buf` is shorter than 2 bytes.
pub fn emit_reply(result: i16, buf: &mut [u8]) -> Result<usize> {
    let mut w = Writer::new(buf);
    w.put(&result.to_le_bytes())?;
    Ok(w.written())
}

#[cfg(test)]
mod tests {
    use super::super::WireError;
    use super::*;

    /// A reconnect of rank 3 of 8, field by field.
    #[rustfmt::skip]
    static HELLO: [u8; 16] = [
        0x00, 0x00,             // magic
        0x00, 0x00,             // version
        0x01, 0x00, 0x00, 0x00, // reconnect, 3 zero bytes
        0x03, 0x00, 0x00, 0x00, // rankInfo low half: rank 3
        0x08, 0x00, 0x00, 0x00, // rankInfo high half: world size 8
    ];

    #[test]
    fn test_parse() {
        let h = Handshake::parse(&HELLO).unwrap();
        assert!(h.is_supported());
        assert!(h.is_reconnect());
        assert_eq!(h.world_size, Some(8));
        assert_eq!(h.rank, Some(3));
    }

    #[test]
    fn test_emit() {
        let mut buf = [0xAA; 16];
        assert_eq!(
            Handshake::new(Some(8), Some(3), true).emit(&mut buf),
            Ok(16)
        );
        assert_eq!(buf, HELLO);
        let mut small = [0; 15];
        assert_eq!(
            Handshake::new(None, None, false).emit(&mut small),
            Err(WireError::BufferTooSmall)
        );
    }

    #[test]
    fn test_unknown_halves() {
        let mut buf = [0; 16];
        Handshake::new(None, None, false).emit(&mut buf).unwrap();
        assert_eq!(&buf[8..], &[0xFF; 8]);
        let h = Handshake::parse(&buf).unwrap();
        assert_eq!(
            (h.world_size, h.rank, h.is_reconnect()),
            (None, None, false)
        );
    }

    #[test]
    fn test_impossible_len() {
        for n in 0..16 {
            assert!(matches!(
                Handshake::parse(&HELLO[..n]),
                Err(WireError::Truncated(_))
            ));
        }
        assert_eq!(
            parse_reply(&[0xFF]),
            Err(WireError::Truncated("handshake reply"))
        );
    }

    #[test]
    fn test_bad_magic_parses_but_unsupported() {
        let mut b = HELLO;
        b[0] = 1;
        assert!(!Handshake::parse(&b).unwrap().is_supported());
    }

    #[test]
    fn test_reply() {
        let mut b = [0; 2];
        emit_reply(-2000, &mut b).unwrap();
        assert_eq!(b, [0x30, 0xF8]);
        assert_eq!(parse_reply(&b), Ok(-2000));
    }
}
