//! Fuzz entry point for the BM network transport's headers: arbitrary bytes never panic the
//! parsers and what they accept emits back to the same bytes; headers built from the bytes
//! encode, decode to the same value or are refused by the same checks at the receiver.

use crate::wire::transport::{HELLO_LEN, Hello, Op, REPLY_LEN, REQUEST_LEN, Reply, Request};

fn word<const N: usize>(data: &[u8], at: usize) -> [u8; N] {
    let mut b = [0u8; N];
    for (i, v) in b.iter_mut().enumerate() {
        *v = data.get(at + i).copied().unwrap_or(0);
    }
    b
}

/// Decode arbitrary bytes as each header; encode headers made from the bytes and decode them.
pub fn transport_header(data: &[u8]) {
    if let Ok(h) = Hello::parse(data) {
        assert_eq!(h.to_bytes()[..], data[..HELLO_LEN]);
    }
    if let Ok(r) = Request::parse(data) {
        assert_eq!(r.to_bytes()[..], data[..REQUEST_LEN]);
        assert!(r.rows() >= 1 && r.span() >= r.len);
    }
    if let Ok(r) = Reply::parse(data) {
        assert_eq!(r.to_bytes()[..], data[..REPLY_LEN]);
    }
    let op = if word::<1>(data, 0)[0] & 1 == 0 {
        Op::Write
    } else {
        Op::Read
    };
    let u64_at = |at| u64::from_le_bytes(word(data, at));
    let req = Request {
        op,
        seq: u32::from_le_bytes(word(data, 1)),
        object: u32::from_le_bytes(word(data, 5)),
        token: u64_at(9),
        offset: u64_at(17),
        // Small values reach the deeper checks more often.
        len: u64_at(25) % (1 << 26),
        width: u64_at(33) % (1 << 26),
        pitch: u64_at(41) >> (word::<1>(data, 49)[0] % 64),
    };
    if let Ok(back) = Request::parse(&req.to_bytes()) {
        assert_eq!(back, req);
    }
    let reply = Reply {
        op,
        seq: req.seq,
        status: i32::from_le_bytes(word(data, 50)),
        msg_len: u32::from_le_bytes(word(data, 54)) % 8192,
        len: req.len,
    };
    if let Ok(back) = Reply::parse(&reply.to_bytes()) {
        assert_eq!(back, reply);
    }
    let hello = Hello {
        version: req.seq as u16,
        flags: (req.seq >> 16) as u16,
        status: reply.status,
    };
    assert_eq!(Hello::parse(&hello.to_bytes()), Ok(hello));
}

#[cfg(test)]
mod tests {
    /// The hook holds on pseudo-random inputs of every length up to two requests.
    #[test]
    fn hook_on_random_bytes() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut buf = [0u8; 2 * super::REQUEST_LEN];
        for round in 0..20_000usize {
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            if round % 3 == 0 {
                buf[0] = crate::wire::transport::REQUEST_MAGIC;
                buf[1] = 1;
                buf[2..4].fill(0);
                buf[12..16].fill(0);
            }
            super::transport_header(&buf[..round % buf.len()]);
        }
    }
}
