//! The BM network transport's headers (SPEC 2.7): the hello both sides send first, then
//! request and reply headers.
//!
//! Layout (little-endian, no padding):
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
//! (`0 < width <= len <= MAX_REQUEST_LEN`, `len % width == 0`, `pitch >= width`, the strided
//! span does not overflow, zeroed reserved fields); the range itself is checked by the serving
//! window. Parsing reads the first `*_LEN` bytes of its input, never panics and never
//! allocates; whatever it accepts emits back to the same bytes.

use super::{Reader, Result, WireError, Writer};
use crate::bm::span_2d;

/// `"SMNT"` as a little-endian `u32`.
pub const HELLO_MAGIC: u32 = 0x544E_4D53;
/// Protocol version spoken by this build.
pub const VERSION: u16 = 1;
/// Hello flag: the sender runs TLS on this connection.
pub const FLAG_TLS: u16 = 0x0001;
/// Length of a hello.
pub const HELLO_LEN: usize = 16;
/// Length of a request header.
pub const REQUEST_LEN: usize = 56;
/// Length of a reply header.
pub const REPLY_LEN: usize = 24;
/// First byte of every request.
pub const REQUEST_MAGIC: u8 = 0xB7;
/// First byte of every reply.
pub const REPLY_MAGIC: u8 = 0xB8;
/// The largest data payload of one request (clients chunk below it).
pub const MAX_REQUEST_LEN: u64 = 16 * 1024 * 1024;
/// The longest error text of a reply.
pub const MAX_MESSAGE_LEN: u32 = 4096;

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Data travels with the request into the serving window.
    Write,
    /// Data travels with the reply out of the serving window.
    Read,
}

impl Op {
    /// The wire byte.
    pub const fn to_u8(self) -> u8 {
        match self {
            Self::Write => 1,
            Self::Read => 2,
        }
    }

    /// The op of a wire byte, `None` for an unknown one.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Write),
            2 => Some(Self::Read),
            _ => None,
        }
    }
}

fn op(r: &mut Reader<'_>, what: &'static str) -> Result<Op> {
    let [b] = r.array::<1>(what)?;
    Op::from_u8(b).ok_or(WireError::Invalid(what))
}

fn zero<const N: usize>(r: &mut Reader<'_>, what: &'static str) -> Result<()> {
    if r.array::<N>(what)? == [0u8; N] {
        Ok(())
    } else {
        Err(WireError::Invalid(what))
    }
}

/// Emits into a fixed array of exactly the encoded length (which cannot be too small).
fn to_array<const N: usize>(emit: impl FnOnce(&mut [u8]) -> Result<usize>) -> [u8; N] {
    let mut b = [0u8; N];
    // Cannot fail: every encoder writes exactly `N` bytes (unit-tested below).
    let _ = emit(&mut b);
    b
}

/// The opening message of each side of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender's protocol version ([`VERSION`]).
    pub version: u16,
    /// [`FLAG_TLS`] or 0; other bits are refused by the receiver.
    pub flags: u16,
    /// 0, or the `SM_*` code of the server's refusal.
    pub status: i32,
}

impl Hello {
    /// Parses the first [`HELLO_LEN`] bytes of `bytes`.
    ///
    /// # Errors
    /// [`WireError::Truncated`] for fewer bytes; [`WireError::Invalid`] for another magic
    /// (not an smem transport peer) or a non-zero reserved field.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        if r.u32("hello magic")? != HELLO_MAGIC {
            return Err(WireError::Invalid(
                "hello magic (not an smem transport peer)",
            ));
        }
        let version = r.u16("hello version")?;
        let flags = r.u16("hello flags")?;
        let status = r.i32("hello status")?;
        zero::<4>(&mut r, "hello reserved field")?;
        Ok(Self {
            version,
            flags,
            status,
        })
    }

    /// Writes the [`HELLO_LEN`] bytes into `buf`; returns [`HELLO_LEN`].
    ///
    /// # Errors
    /// [`WireError::BufferTooSmall`] when `buf` is shorter.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let mut w = Writer::new(buf);
        w.put(&HELLO_MAGIC.to_le_bytes())?;
        w.put(&self.version.to_le_bytes())?;
        w.put(&self.flags.to_le_bytes())?;
        w.put(&self.status.to_le_bytes())?;
        w.put(&[0u8; 4])?;
        Ok(w.written())
    }

    /// The encoded hello.
    pub fn to_bytes(&self) -> [u8; HELLO_LEN] {
        to_array(|b| self.emit(b))
    }
}

/// A request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// What the request does.
    pub op: Op,
    /// Sequence number, echoed by the reply.
    pub seq: u32,
    /// BM object id of the window.
    pub object: u32,
    /// Generation token of the window.
    pub token: u64,
    /// Window offset of the first row.
    pub offset: u64,
    /// Data bytes (`rows * width`).
    pub len: u64,
    /// Bytes per row.
    pub width: u64,
    /// Distance between rows in the window.
    pub pitch: u64,
}

impl Request {
    /// Parses and checks the first [`REQUEST_LEN`] bytes of `bytes`.
    ///
    /// # Errors
    /// [`WireError::Truncated`] for fewer bytes; [`WireError::Invalid`] (magic, op, reserved
    /// fields, zero length, length not a whole number of rows, pitch below the width, a span
    /// that overflows) or [`WireError::TooLarge`] (over [`MAX_REQUEST_LEN`]) when the header
    /// violates the protocol: the connection is then closed, since its byte stream can no
    /// longer be trusted.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        if r.array::<1>("request magic")? != [REQUEST_MAGIC] {
            return Err(WireError::Invalid("request magic"));
        }
        let op = op(&mut r, "request op")?;
        zero::<2>(&mut r, "request flags")?;
        let seq = r.u32("request seq")?;
        let object = r.u32("request object")?;
        zero::<4>(&mut r, "request reserved field")?;
        let req = Self {
            op,
            seq,
            object,
            token: r.u64("request token")?,
            offset: r.u64("request offset")?,
            len: r.u64("request length")?,
            width: r.u64("request width")?,
            pitch: r.u64("request pitch")?,
        };
        req.check()?;
        Ok(req)
    }

    fn check(&self) -> Result<()> {
        if self.len == 0 || self.width == 0 {
            return Err(WireError::Invalid("request length (zero)"));
        }
        if self.len > MAX_REQUEST_LEN {
            return Err(WireError::TooLarge("request length (16 MiB limit)"));
        }
        if self.width > self.len || self.len % self.width != 0 {
            return Err(WireError::Invalid(
                "request length (not a whole number of rows)",
            ));
        }
        if self.pitch < self.width {
            return Err(WireError::Invalid(
                "request pitch (smaller than the row width)",
            ));
        }
        span_2d(self.pitch, self.width, self.rows())
            .map_err(|_| WireError::Invalid("request span (overflows)"))?;
        Ok(())
    }

    /// Writes the [`REQUEST_LEN`] bytes into `buf` (fields as they are; [`Request::parse`]
    /// checks them at the receiver); returns [`REQUEST_LEN`].
    ///
    /// # Errors
    /// [`WireError::BufferTooSmall`] when `buf` is shorter.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let mut w = Writer::new(buf);
        w.put(&[REQUEST_MAGIC, self.op.to_u8(), 0, 0])?;
        w.put(&self.seq.to_le_bytes())?;
        w.put(&self.object.to_le_bytes())?;
        w.put(&[0u8; 4])?;
        for v in [self.token, self.offset, self.len, self.width, self.pitch] {
            w.put(&v.to_le_bytes())?;
        }
        Ok(w.written())
    }

    /// The encoded header.
    pub fn to_bytes(&self) -> [u8; REQUEST_LEN] {
        to_array(|b| self.emit(b))
    }

    /// Number of rows (`len / width`; `width > 0` after [`Request::parse`]).
    pub fn rows(&self) -> u64 {
        self.len / self.width.max(1)
    }

    /// Bytes from the first byte of the first row to the last byte of the last row
    /// (`u64::MAX` for a request [`Request::parse`] refuses).
    pub fn span(&self) -> u64 {
        span_2d(self.pitch, self.width, self.rows()).unwrap_or(u64::MAX)
    }
}

/// A reply header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The op of the request answered.
    pub op: Op,
    /// The seq of the request answered.
    pub seq: u32,
    /// 0, or the `SM_*` code of the refusal.
    pub status: i32,
    /// Bytes of the reason that follow (0 when `status == 0`).
    pub msg_len: u32,
    /// Data bytes that follow (a successful READ).
    pub len: u64,
}

impl Reply {
    /// Parses and checks the first [`REPLY_LEN`] bytes of `bytes`.
    ///
    /// # Errors
    /// [`WireError::Truncated`] for fewer bytes; [`WireError::Invalid`] (magic, op, reserved
    /// field, a successful reply with a message) or [`WireError::TooLarge`] (message over
    /// [`MAX_MESSAGE_LEN`], data over [`MAX_REQUEST_LEN`]) when it violates the protocol.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        if r.array::<1>("reply magic")? != [REPLY_MAGIC] {
            return Err(WireError::Invalid("reply magic"));
        }
        let op = op(&mut r, "reply op")?;
        zero::<2>(&mut r, "reply reserved field")?;
        let reply = Self {
            op,
            seq: r.u32("reply seq")?,
            status: r.i32("reply status")?,
            msg_len: r.u32("reply message length")?,
            len: r.u64("reply length")?,
        };
        if reply.msg_len > MAX_MESSAGE_LEN {
            return Err(WireError::TooLarge("reply message (4096 bytes limit)"));
        }
        if reply.status == 0 && reply.msg_len != 0 {
            return Err(WireError::Invalid("reply (successful, with a message)"));
        }
        if reply.len > MAX_REQUEST_LEN {
            return Err(WireError::TooLarge("reply length (16 MiB limit)"));
        }
        Ok(reply)
    }

    /// Writes the [`REPLY_LEN`] bytes into `buf`; returns [`REPLY_LEN`].
    ///
    /// # Errors
    /// [`WireError::BufferTooSmall`] when `buf` is shorter.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let mut w = Writer::new(buf);
        w.put(&[REPLY_MAGIC, self.op.to_u8(), 0, 0])?;
        w.put(&self.seq.to_le_bytes())?;
        w.put(&self.status.to_le_bytes())?;
        w.put(&self.msg_len.to_le_bytes())?;
        w.put(&self.len.to_le_bytes())?;
        Ok(w.written())
    }

    /// The encoded header.
    pub fn to_bytes(&self) -> [u8; REPLY_LEN] {
        to_array(|b| self.emit(b))
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
        assert_eq!(request().to_bytes(), REQUEST_BYTES);
        let mut big = [0xAAu8; REQUEST_LEN + 4];
        assert_eq!(request().emit(&mut big), Ok(REQUEST_LEN));
        assert_eq!(big[..REQUEST_LEN], REQUEST_BYTES);
        assert_eq!(big[REQUEST_LEN..], [0xAA; 4], "wrote past the header");
        assert_eq!(
            request().emit(&mut [0u8; REQUEST_LEN - 1]),
            Err(WireError::BufferTooSmall)
        );
        // Trailing bytes are not looked at.
        let mut longer = [0u8; REQUEST_LEN + 8];
        longer[..REQUEST_LEN].copy_from_slice(&REQUEST_BYTES);
        assert_eq!(Request::parse(&longer), Ok(request()));
    }

    #[test]
    fn request_impossible_fields() {
        let bad = |f: &dyn Fn(&mut Request)| {
            let mut r = request();
            f(&mut r);
            Request::parse(&r.to_bytes()).expect_err("must be refused")
        };
        let zero = WireError::Invalid("request length (zero)");
        assert_eq!(bad(&|r| r.len = 0), zero);
        assert_eq!(bad(&|r| r.width = 0), zero);
        assert_eq!(
            bad(&|r| r.len = MAX_REQUEST_LEN + 0x100),
            WireError::TooLarge("request length (16 MiB limit)")
        );
        let rows = WireError::Invalid("request length (not a whole number of rows)");
        assert_eq!(bad(&|r| r.width = 0x180), rows);
        assert_eq!(bad(&|r| r.width = 0x400), rows);
        assert_eq!(
            bad(&|r| r.pitch = 0x80),
            WireError::Invalid("request pitch (smaller than the row width)")
        );
        assert_eq!(
            bad(&|r| r.pitch = u64::MAX),
            WireError::Invalid("request span (overflows)")
        );
        let patched = |at: usize, v: u8| {
            let mut b = REQUEST_BYTES;
            b[at] = v;
            Request::parse(&b)
        };
        assert_eq!(patched(0, 0), Err(WireError::Invalid("request magic")));
        assert_eq!(patched(1, 9), Err(WireError::Invalid("request op")));
        assert_eq!(patched(2, 1), Err(WireError::Invalid("request flags")));
        assert_eq!(
            patched(13, 1),
            Err(WireError::Invalid("request reserved field"))
        );
    }

    #[test]
    fn truncated_input_is_refused() {
        for n in 0..REQUEST_LEN {
            assert!(
                matches!(
                    Request::parse(&REQUEST_BYTES[..n]),
                    Err(WireError::Truncated(_))
                ),
                "{n} bytes"
            );
        }
        let reply = Reply {
            op: Op::Read,
            seq: 1,
            status: 0,
            msg_len: 0,
            len: 8,
        }
        .to_bytes();
        for n in 0..REPLY_LEN {
            assert!(matches!(
                Reply::parse(&reply[..n]),
                Err(WireError::Truncated(_))
            ));
        }
        let hello = Hello {
            version: VERSION,
            flags: 0,
            status: 0,
        }
        .to_bytes();
        for n in 0..HELLO_LEN {
            assert!(matches!(
                Hello::parse(&hello[..n]),
                Err(WireError::Truncated(_))
            ));
        }
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
        // Miri (CI) runs every core test interpreted: a sample there, the full count natively.
        let rounds = if cfg!(miri) { 500 } else { 50_000 };
        for i in 0..rounds {
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
                assert_eq!(r.to_bytes(), b);
                assert!(r.span() >= r.len && r.rows() >= 1);
            }
            if let Ok(r) = Reply::parse(&b) {
                assert_eq!(r.to_bytes()[..], b[..REPLY_LEN]);
            }
            if let Ok(h) = Hello::parse(&b) {
                assert_eq!(h.to_bytes()[..], b[..HELLO_LEN]);
            }
        }
        // Fewer than one in 5,000 random headers is valid: only the full native count checks that
        // the generator reaches the accepting paths.
        assert!(
            accepted > 0 || cfg!(miri),
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
        let b = r.to_bytes();
        assert_eq!(&b[..4], &[0xB8, 0x02, 0, 0]);
        assert_eq!(&b[8..12], &(-2007i32).to_le_bytes());
        assert_eq!(Reply::parse(&b), Ok(r));
        let mut big = r;
        big.msg_len = MAX_MESSAGE_LEN + 1;
        assert!(matches!(
            Reply::parse(&big.to_bytes()),
            Err(WireError::TooLarge(_))
        ));
        let long = Reply {
            status: 0,
            msg_len: 0,
            len: MAX_REQUEST_LEN + 1,
            ..r
        };
        assert!(matches!(
            Reply::parse(&long.to_bytes()),
            Err(WireError::TooLarge(_))
        ));
        let ok_with_msg = Reply { status: 0, ..r };
        assert!(Reply::parse(&ok_with_msg.to_bytes()).is_err());
        let mut other = b;
        other[0] = REQUEST_MAGIC;
        assert_eq!(Reply::parse(&other), Err(WireError::Invalid("reply magic")));
        other = b;
        other[3] = 1;
        assert_eq!(
            Reply::parse(&other),
            Err(WireError::Invalid("reply reserved field"))
        );

        let h = Hello {
            version: VERSION,
            flags: FLAG_TLS,
            status: -3,
        };
        let hb = h.to_bytes();
        assert_eq!(&hb[..4], b"SMNT");
        assert_eq!(&hb[4..8], &[1, 0, 1, 0]);
        assert_eq!(Hello::parse(&hb), Ok(h));
        assert!(Hello::parse(&[0u8; HELLO_LEN]).is_err());
        let mut reserved = hb;
        reserved[15] = 1;
        assert_eq!(
            Hello::parse(&reserved),
            Err(WireError::Invalid("hello reserved field"))
        );
        assert_eq!(h.emit(&mut [0u8; 4]), Err(WireError::BufferTooSmall));
    }
}
