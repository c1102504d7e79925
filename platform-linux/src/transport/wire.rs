//! The transport's wire format: fixed-size little-endian headers, no padding, parsed from
//! exactly-sized byte arrays (no slicing by peer-controlled lengths, so parsing never panics).
//!
//! ```text
//! Hello (both ways, 16 B)   u32 magic "SMNT" | u16 version | u16 flags | i32 status | u32 0
//! Request (56 B)            u8 0xB7 | u8 op | u16 flags=0 | u32 seq | u32 object | u32 0
//!                           | u64 token | u64 offset | u64 len | u64 width | u64 pitch
//!   WRITE: followed by `len` data bytes: `len / width` rows of `width` bytes.
//! Reply (24 B)              u8 0xB8 | u8 op | u16 0 | u32 seq | i32 status | u32 msg_len | u64 len
//!   followed by `msg_len` bytes of UTF-8 reason (status != 0), or by `len` data bytes (READ, 0).
//! ```
//! A request names rows of window `object` (generation `token`) of the serving rank: row `i`
//! is the `width` bytes at window offset `offset + i * pitch`. One-dimensional requests have one
//! row (`width == len`). [`Request::parse`] checks every field that sizes a later read
//! (`0 < width <= len <= MAX_REQUEST_LEN`, `len % width == 0`, `pitch >= width`, zeroed
//! reserved fields); the range itself is checked by the serving window.

use smem_core::bm::span_2d;

/// `"SMNT"` as a little-endian `u32`.
pub(crate) const HELLO_MAGIC: u32 = 0x544E_4D53;
/// Protocol version spoken by this build.
pub(crate) const VERSION: u16 = 1;
/// Hello flag: the sender wants TLS on this connection (not in this build: refused).
pub(crate) const FLAG_TLS: u16 = 0x0001;
/// Length of a hello.
pub(crate) const HELLO_LEN: usize = 16;
/// Length of a request header.
pub(crate) const REQUEST_LEN: usize = 56;
/// Length of a reply header.
pub(crate) const REPLY_LEN: usize = 24;
/// First byte of every request.
pub(crate) const REQUEST_MAGIC: u8 = 0xB7;
/// First byte of every reply.
pub(crate) const REPLY_MAGIC: u8 = 0xB8;
/// The largest data payload of one request (clients chunk below it).
pub(crate) const MAX_REQUEST_LEN: u64 = 16 * 1024 * 1024;
/// The longest error text of a reply.
pub(crate) const MAX_MESSAGE_LEN: u32 = 4096;

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Data travels with the request into the serving window.
    Write,
    /// Data travels with the reply out of the serving window.
    Read,
}

impl Op {
    const fn to_u8(self) -> u8 {
        match self {
            Self::Write => 1,
            Self::Read => 2,
        }
    }

    const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Write),
            2 => Some(Self::Read),
            _ => None,
        }
    }
}

fn u16_at<const N: usize>(b: &[u8; N], at: usize) -> u16 {
    let mut v = [0u8; 2];
    v.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(v)
}

fn u32_at<const N: usize>(b: &[u8; N], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u64_at<const N: usize>(b: &[u8; N], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// The opening message of each side of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) version: u16,
    pub(crate) flags: u16,
    pub(crate) status: i32,
}

impl Hello {
    pub(crate) fn emit(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(&HELLO_MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.status.to_le_bytes());
        b
    }

    /// # Errors
    /// A reason when the bytes are not a hello of ours.
    pub(crate) fn parse(b: &[u8; HELLO_LEN]) -> Result<Self, &'static str> {
        if u32_at(b, 0) != HELLO_MAGIC {
            return Err("bad hello magic (not an smem transport peer)");
        }
        if u32_at(b, 12) != 0 {
            return Err("non-zero reserved hello field");
        }
        Ok(Self {
            version: u16_at(b, 4),
            flags: u16_at(b, 6),
            status: u32_at(b, 8) as i32,
        })
    }
}

/// A request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) op: Op,
    pub(crate) seq: u32,
    pub(crate) object: u32,
    pub(crate) token: u64,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) width: u64,
    pub(crate) pitch: u64,
}

impl Request {
    pub(crate) fn emit(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0] = REQUEST_MAGIC;
        b[1] = self.op.to_u8();
        b[4..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..12].copy_from_slice(&self.object.to_le_bytes());
        b[16..24].copy_from_slice(&self.token.to_le_bytes());
        b[24..32].copy_from_slice(&self.offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.len.to_le_bytes());
        b[40..48].copy_from_slice(&self.width.to_le_bytes());
        b[48..56].copy_from_slice(&self.pitch.to_le_bytes());
        b
    }

    /// Parses and checks a request header.
    ///
    /// # Errors
    /// A reason (for the log) when the header violates the protocol; the connection is then
    /// closed, since its byte stream can no longer be trusted.
    pub(crate) fn parse(b: &[u8; REQUEST_LEN]) -> Result<Self, &'static str> {
        if b[0] != REQUEST_MAGIC {
            return Err("bad request magic");
        }
        let op = Op::from_u8(b[1]).ok_or("unknown request op")?;
        if u16_at(b, 2) != 0 || u32_at(b, 12) != 0 {
            return Err("non-zero reserved request field");
        }
        let r = Self {
            op,
            seq: u32_at(b, 4),
            object: u32_at(b, 8),
            token: u64_at(b, 16),
            offset: u64_at(b, 24),
            len: u64_at(b, 32),
            width: u64_at(b, 40),
            pitch: u64_at(b, 48),
        };
        if r.len == 0 || r.width == 0 {
            return Err("zero-length request");
        }
        if r.len > MAX_REQUEST_LEN {
            return Err("request longer than the 16 MiB limit");
        }
        if r.width > r.len || r.len % r.width != 0 {
            return Err("request length is not a whole number of rows");
        }
        if r.pitch < r.width {
            return Err("request pitch smaller than its row width");
        }
        span_2d(r.pitch, r.width, r.rows()).map_err(|_| "request span overflows")?;
        Ok(r)
    }

    /// Number of rows (`len / width`; `width > 0` after [`Request::parse`]).
    pub(crate) fn rows(&self) -> u64 {
        self.len / self.width.max(1)
    }

    /// Bytes from the first byte of the first row to the last byte of the last row.
    pub(crate) fn span(&self) -> u64 {
        span_2d(self.pitch, self.width, self.rows()).unwrap_or(u64::MAX)
    }
}

/// A reply header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) op: Op,
    pub(crate) seq: u32,
    pub(crate) status: i32,
    pub(crate) msg_len: u32,
    pub(crate) len: u64,
}

impl Reply {
    pub(crate) fn emit(&self) -> [u8; REPLY_LEN] {
        let mut b = [0u8; REPLY_LEN];
        b[0] = REPLY_MAGIC;
        b[1] = self.op.to_u8();
        b[4..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..12].copy_from_slice(&self.status.to_le_bytes());
        b[12..16].copy_from_slice(&self.msg_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// # Errors
    /// A reason when the header violates the protocol.
    pub(crate) fn parse(b: &[u8; REPLY_LEN]) -> Result<Self, &'static str> {
        if b[0] != REPLY_MAGIC {
            return Err("bad reply magic");
        }
        let op = Op::from_u8(b[1]).ok_or("unknown reply op")?;
        if u16_at(b, 2) != 0 {
            return Err("non-zero reserved reply field");
        }
        let r = Self {
            op,
            seq: u32_at(b, 4),
            status: u32_at(b, 8) as i32,
            msg_len: u32_at(b, 12),
            len: u64_at(b, 16),
        };
        if r.msg_len > MAX_MESSAGE_LEN {
            return Err("reply message longer than 4096 bytes");
        }
        if r.status == 0 && r.msg_len != 0 {
            return Err("successful reply with a message");
        }
        if r.len > MAX_REQUEST_LEN {
            return Err("reply longer than the 16 MiB limit");
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static REQUEST_BYTES: [u8; REQUEST_LEN] = [
        0xB7, 0x01, 0x00, 0x00, // magic, WRITE, flags
        0x07, 0x00, 0x00, 0x00, // seq 7
        0x03, 0x00, 0x00, 0x00, // object 3
        0x00, 0x00, 0x00, 0x00, // reserved
        0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // token
        0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // offset 0x1000
        0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // len 0x200
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // width 0x100
        0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // pitch 0x400
    ];

    fn request() -> Request {
        Request {
            op: Op::Write,
            seq: 7,
            object: 3,
            token: 0x1122_3344_5566_7788,
            offset: 0x1000,
            len: 0x200,
            width: 0x100,
            pitch: 0x400,
        }
    }

    #[test]
    fn request_parse_and_emit() {
        let r = Request::parse(&REQUEST_BYTES).expect("valid");
        assert_eq!(r, request());
        assert_eq!(r.rows(), 2);
        assert_eq!(r.span(), 0x500);
        assert_eq!(request().emit(), REQUEST_BYTES);
    }

    #[test]
    fn request_impossible_fields() {
        let bad = |f: &dyn Fn(&mut Request)| {
            let mut r = request();
            f(&mut r);
            Request::parse(&r.emit()).expect_err("must be refused")
        };
        assert_eq!(bad(&|r| r.len = 0), "zero-length request");
        assert_eq!(bad(&|r| r.width = 0), "zero-length request");
        assert_eq!(
            bad(&|r| r.len = MAX_REQUEST_LEN + 0x100),
            "request longer than the 16 MiB limit"
        );
        assert_eq!(
            bad(&|r| r.width = 0x180),
            "request length is not a whole number of rows"
        );
        assert_eq!(
            bad(&|r| r.width = 0x400),
            "request length is not a whole number of rows"
        );
        assert_eq!(
            bad(&|r| r.pitch = 0x80),
            "request pitch smaller than its row width"
        );
        assert_eq!(bad(&|r| r.pitch = u64::MAX), "request span overflows");
        let mut b = REQUEST_BYTES;
        b[0] = 0;
        assert_eq!(Request::parse(&b), Err("bad request magic"));
        let mut b = REQUEST_BYTES;
        b[1] = 9;
        assert_eq!(Request::parse(&b), Err("unknown request op"));
        let mut b = REQUEST_BYTES;
        b[13] = 1;
        assert_eq!(Request::parse(&b), Err("non-zero reserved request field"));
    }

    /// Arbitrary bytes never panic the parsers; whatever they accept re-emits identically.
    #[test]
    fn random_headers_parse_safely() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut accepted = 0;
        for i in 0..50_000 {
            let mut b = [0u8; REQUEST_LEN];
            for chunk in b.chunks_mut(8) {
                let v = next().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
            if i % 2 == 0 {
                // Mostly-valid headers reach the deeper checks.
                b[0] = REQUEST_MAGIC;
                b[1] = 1 + (b[1] & 1);
                b[2..4].fill(0);
                b[12..16].fill(0);
                b[34..40].fill(0);
                b[42..48].fill(0);
                b[50..56].fill(0);
            }
            if let Ok(r) = Request::parse(&b) {
                accepted += 1;
                assert_eq!(r.emit(), b);
                assert!(r.span() >= r.len && r.rows() >= 1);
            }
            let mut rb = [0u8; REPLY_LEN];
            rb.copy_from_slice(&b[..REPLY_LEN]);
            if let Ok(r) = Reply::parse(&rb) {
                assert_eq!(r.emit(), rb);
            }
            let mut hb = [0u8; HELLO_LEN];
            hb.copy_from_slice(&b[..HELLO_LEN]);
            let _ = Hello::parse(&hb);
        }
        assert!(
            accepted > 0,
            "no random header was valid; the generator is too narrow"
        );
    }

    #[test]
    fn reply_and_hello_round_trip() {
        let r = Reply {
            op: Op::Read,
            seq: 9,
            status: -2007,
            msg_len: 12,
            len: 0,
        };
        let b = r.emit();
        assert_eq!(&b[..4], &[0xB8, 0x02, 0, 0]);
        assert_eq!(Reply::parse(&b), Ok(r));
        let mut big = r;
        big.msg_len = MAX_MESSAGE_LEN + 1;
        assert!(Reply::parse(&big.emit()).is_err());
        let ok_with_msg = Reply { status: 0, ..r };
        assert!(Reply::parse(&ok_with_msg.emit()).is_err());
        let h = Hello {
            version: VERSION,
            flags: FLAG_TLS,
            status: 0,
        };
        let hb = h.emit();
        assert_eq!(&hb[..4], b"SMNT");
        assert_eq!(Hello::parse(&hb), Ok(h));
        assert!(Hello::parse(&[0u8; HELLO_LEN]).is_err());
    }
}
