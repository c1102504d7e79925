//! Fuzz entry points for the wire codec and URL parsing: parse, and when that succeeds, emit,
//! re-parse and require the same value.

use core::fmt::Write;

use crate::url::AnyStoreUrl;
use crate::wire::{FRAME_HEADER_LEN, FrameHeader, HANDSHAKE_LEN, Handshake, MessageView};

/// A frame: header, then the body as a message (round trip both).
pub fn wire_frame(data: &[u8]) {
    let Ok(header) = FrameHeader::parse(data) else {
        return;
    };
    let mut hbuf = [0u8; FRAME_HEADER_LEN];
    assert_eq!(header.emit(&mut hbuf), Ok(FRAME_HEADER_LEN));
    assert_eq!(FrameHeader::parse(&hbuf), Ok(header));
    let body = &data[FRAME_HEADER_LEN..];
    let Ok(msg) = MessageView::parse(body) else {
        return;
    };
    let mut out = [0u8; 4096];
    let len = msg.encoded_len();
    if len > out.len() {
        assert!(msg.emit(&mut out).is_err());
        return;
    }
    assert_eq!(msg.emit(&mut out), Ok(len));
    assert_eq!(MessageView::parse(&out[..len]), Ok(msg));
    assert_eq!(out[..len], body[..len]);
}

/// A handshake.
pub fn wire_handshake(data: &[u8]) {
    let Ok(h) = Handshake::parse(data) else {
        assert!(data.len() < HANDSHAKE_LEN);
        return;
    };
    let mut buf = [0u8; HANDSHAKE_LEN];
    assert_eq!(h.emit(&mut buf), Ok(HANDSHAKE_LEN));
    assert_eq!(Handshake::parse(&buf), Ok(h));
}

struct Buf<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Write for Buf<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(core::fmt::Error)?;
        self.bytes
            .get_mut(self.len..end)
            .ok_or(core::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// A store URL (`tcp://` or `etcd://`): what parses prints and parses back the same.
pub fn url_parse(data: &[u8]) {
    let Ok(url) = AnyStoreUrl::parse_bytes(data) else {
        return;
    };
    let mut b = Buf {
        bytes: [0; 8192],
        len: 0,
    };
    assert!(write!(b, "{url}").is_ok());
    assert_eq!(AnyStoreUrl::parse_bytes(&b.bytes[..b.len]), Ok(url));
    if let AnyStoreUrl::Etcd(e) = url {
        // Every endpoint the parser accepted is handed out, none with port 0.
        let listed = e.endpoints().inspect(|ep| assert_ne!(ep.port, 0)).count();
        assert!((1..=crate::url::ETCD_MAX_ENDPOINTS).contains(&listed));
        assert!(e.prefix().starts_with('/'));
    }
}
