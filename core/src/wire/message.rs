//! The message body (SPEC 5.3), parsed as a zero-copy view and emitted into caller buffers.
//!
//! ```text
//! u64 totalSize | i64 userDef | u64 requestId | i16 mt
//! u64 nKeys   | nKeys   x { u64 len | bytes }
//! u64 nValues | nValues x { u64 len | bytes }
//! ```
//! `totalSize` counts the whole message (42 bytes of fixed fields plus the items); bytes of the
//! frame body after `totalSize` are ignored. [`MessageView::parse`] checks every count and
//! length against the bytes present, so its item iterators never fail or panic.

use super::{Reader, Result, WireError, Writer};

/// Fixed part of a message: sizes, userDef, requestId, mt, nKeys, nValues.
pub const MESSAGE_BASE_LEN: usize = 42;
/// Most keys in one message.
pub const MAX_KEYS: u64 = 1024;
/// Longest key.
pub const MAX_KEY_LEN: u64 = 2048;
/// Most values in one message.
pub const MAX_VALUES: u64 = 1024;
/// Longest value (64 MiB).
pub const MAX_VALUE_LEN: u64 = 64 * 1024 * 1024;
/// Largest `mt` the reference accepts (`INVALID_MSG`).
pub const MAX_MESSAGE_TYPE: i16 = 14;

/// The operation of a message (`mt`). Total: unknown values are kept in [`Self::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageType {
    /// 0: store a value.
    Set,
    /// 1: read a value, optionally waiting (userDef = timeout ms).
    Get,
    /// 2: every key starting with a prefix.
    Prefix,
    /// 3: multi-shot watch of a key.
    Watch,
    /// 4: add to a decimal integer value.
    Add,
    /// 5: delete a key.
    Remove,
    /// 6: append bytes to a value.
    Append,
    /// 7: compare and swap.
    Cas,
    /// 8: write bytes at an offset.
    Write,
    /// 9: whether a rank is held by a live link.
    QueryAlive,
    /// 10: be told when a ranked link goes down.
    WatchRankState,
    /// 11: keep-alive, never answered.
    Heartbeat,
    /// 12: drop a watch.
    Unwatch,
    /// 13: group membership control.
    Control,
    /// 14: `INVALID_MSG`, always refused.
    InvalidMsg,
    /// Any other value.
    Unknown(i16),
}

impl From<i16> for MessageType {
    fn from(raw: i16) -> Self {
        match raw {
            0 => Self::Set,
            1 => Self::Get,
            2 => Self::Prefix,
            3 => Self::Watch,
            4 => Self::Add,
            5 => Self::Remove,
            6 => Self::Append,
            7 => Self::Cas,
            8 => Self::Write,
            9 => Self::QueryAlive,
            10 => Self::WatchRankState,
            11 => Self::Heartbeat,
            12 => Self::Unwatch,
            13 => Self::Control,
            14 => Self::InvalidMsg,
            other => Self::Unknown(other),
        }
    }
}

impl From<MessageType> for i16 {
    fn from(mt: MessageType) -> Self {
        match mt {
            MessageType::Set => 0,
            MessageType::Get => 1,
            MessageType::Prefix => 2,
            MessageType::Watch => 3,
            MessageType::Add => 4,
            MessageType::Remove => 5,
            MessageType::Append => 6,
            MessageType::Cas => 7,
            MessageType::Write => 8,
            MessageType::QueryAlive => 9,
            MessageType::WatchRankState => 10,
            MessageType::Heartbeat => 11,
            MessageType::Unwatch => 12,
            MessageType::Control => 13,
            MessageType::InvalidMsg => 14,
            MessageType::Unknown(raw) => raw,
        }
    }
}

/// The scalar fields of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageHeader {
    /// Op-specific: GET timeout in ms, CONTROL rank; `-1` in packed replies.
    pub user_def: i64,
    /// Request correlation id (never echoed by the server; 0 in replies).
    pub request_id: u64,
    /// The operation.
    pub msg_type: MessageType,
}

impl MessageHeader {
    /// The header of a packed reply: userDef -1, requestId 0.
    pub const fn reply(msg_type: MessageType) -> Self {
        Self {
            user_def: -1,
            request_id: 0,
            msg_type,
        }
    }
}

/// A list of length-prefixed items inside a parsed message, already validated.
#[derive(Clone, Copy, Debug)]
pub struct Items<'a> {
    count: usize,
    bytes: &'a [u8],
}

impl<'a> Items<'a> {
    /// Number of items.
    pub const fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no items.
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Iterate over the items, each borrowing the message buffer.
    pub fn iter(&self) -> ItemIter<'a> {
        ItemIter {
            left: self.count,
            reader: Reader::new(self.bytes),
        }
    }

    /// The item at `index`, if any.
    pub fn get(&self, index: usize) -> Option<&'a [u8]> {
        self.iter().nth(index)
    }

    /// Walk `count` items at the front of `r`, checking each length against `max_len` and the
    /// bytes present; returns the view over exactly those bytes.
    fn read(r: &mut Reader<'a>, count: u64, max_len: u64, what: &'static str) -> Result<Self> {
        let start = r.clone();
        let before = r.remaining();
        for _ in 0..count {
            let len = r.u64(what)?;
            if len > max_len {
                return Err(WireError::TooLarge(what));
            }
            let len = usize::try_from(len).map_err(|_| WireError::TooLarge(what))?;
            r.take(len, what)?;
        }
        let used = before - r.remaining();
        let mut s = start;
        let bytes = s.take(used, what)?;
        let count = usize::try_from(count).map_err(|_| WireError::TooLarge(what))?;
        Ok(Self { count, bytes })
    }
}

impl PartialEq for Items<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.count == other.count && self.iter().eq(other.iter())
    }
}

impl Eq for Items<'_> {}

impl<'a> IntoIterator for Items<'a> {
    type Item = &'a [u8];
    type IntoIter = ItemIter<'a>;
    fn into_iter(self) -> ItemIter<'a> {
        self.iter()
    }
}

/// Iterator over [`Items`].
#[derive(Clone, Debug)]
pub struct ItemIter<'a> {
    left: usize,
    reader: Reader<'a>,
}

impl<'a> Iterator for ItemIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Validated by `Items::read`; a failure here would only end the iteration early.
        let len = self.reader.u64("item length").ok()?;
        let len = usize::try_from(len).ok()?;
        self.reader.take(len, "item").ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for ItemIter<'_> {}

/// A parsed message borrowing its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageView<'a> {
    /// userDef, requestId, mt.
    pub header: MessageHeader,
    /// The keys.
    pub keys: Items<'a>,
    /// The values.
    pub values: Items<'a>,
}

impl<'a> MessageView<'a> {
    /// Parse a frame body.
    ///
    /// Checks (SPEC 5.3): body at least 42 bytes, `totalSize <= body.len()`, `mt` in `0..=14`,
    /// at most 1024 keys of at most 2048 bytes, at most 1024 values of at most 64 MiB, every
    /// length within the bytes present, and the fields using exactly `totalSize` bytes. Bytes
    /// after `totalSize` are ignored. `mt` 14 parses; the server refuses it.
    ///
    /// # Errors
    /// A [`WireError`] naming the first field that is wrong.
    pub fn parse(body: &'a [u8]) -> Result<Self> {
        if body.len() < MESSAGE_BASE_LEN {
            return Err(WireError::Truncated("message"));
        }
        let mut r = Reader::new(body);
        let total = r.u64("totalSize")?;
        let total = usize::try_from(total)
            .ok()
            .filter(|t| *t <= body.len())
            .ok_or(WireError::SizeMismatch("totalSize"))?;
        let mut r = Reader::new(
            body.get(..total)
                .ok_or(WireError::SizeMismatch("totalSize"))?,
        );
        r.u64("totalSize")?;
        let user_def = r.i64("userDef")?;
        let request_id = r.u64("requestId")?;
        let raw_mt = r.i16("mt")?;
        if !(0..=MAX_MESSAGE_TYPE).contains(&raw_mt) {
            return Err(WireError::Invalid("message type"));
        }
        let n_keys = r.u64("nKeys")?;
        if n_keys > MAX_KEYS {
            return Err(WireError::TooLarge("nKeys"));
        }
        let keys = Items::read(&mut r, n_keys, MAX_KEY_LEN, "key")?;
        let n_values = r.u64("nValues")?;
        if n_values > MAX_VALUES {
            return Err(WireError::TooLarge("nValues"));
        }
        let values = Items::read(&mut r, n_values, MAX_VALUE_LEN, "value")?;
        if r.remaining() != 0 {
            return Err(WireError::SizeMismatch("totalSize"));
        }
        let header = MessageHeader {
            user_def,
            request_id,
            msg_type: MessageType::from(raw_mt),
        };
        Ok(Self {
            header,
            keys,
            values,
        })
    }

    /// The number of bytes [`MessageView::emit`] writes for this view.
    pub fn encoded_len(&self) -> usize {
        encoded_len(self.keys, self.values)
    }

    /// Re-encode this view into `buf`.
    ///
    /// # Errors
    /// [`WireError::BufferTooSmall`] when `buf` is shorter than [`Self::encoded_len`].
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        emit(&self.header, self.keys, self.values, buf)
    }
}

/// Encoded length of a message with these keys and values (saturating; a saturated length can
/// never fit a buffer).
pub fn encoded_len<'k, 'v, K, V>(keys: K, values: V) -> usize
where
    K: IntoIterator<Item = &'k [u8]>,
    V: IntoIterator<Item = &'v [u8]>,
{
    let items = |n: usize, it: &[u8]| n.saturating_add(8).saturating_add(it.len());
    let k = keys.into_iter().fold(0usize, items);
    let v = values.into_iter().fold(0usize, items);
    MESSAGE_BASE_LEN.saturating_add(k).saturating_add(v)
}

/// Encode a message into `buf`; returns the bytes written (= [`encoded_len`]).
///
/// `keys` and `values` are iterated twice (length, then bytes), so they must be `Clone`
/// iterators yielding the same items each time.
///
/// # Errors
/// [`WireError::BufferTooSmall`] when `buf` is shorter than [`encoded_len`].
pub fn emit<'k, 'v, K, V>(
    header: &MessageHeader,
    keys: K,
    values: V,
    buf: &mut [u8],
) -> Result<usize>
where
    K: IntoIterator<Item = &'k [u8]>,
    K::IntoIter: Clone,
    V: IntoIterator<Item = &'v [u8]>,
    V::IntoIter: Clone,
{
    let keys = keys.into_iter();
    let values = values.into_iter();
    let total = encoded_len(keys.clone(), values.clone());
    if buf.len() < total {
        return Err(WireError::BufferTooSmall);
    }
    let mut w = Writer::new(buf);
    w.put(&(total as u64).to_le_bytes())?;
    w.put(&header.user_def.to_le_bytes())?;
    w.put(&header.request_id.to_le_bytes())?;
    w.put(&i16::from(header.msg_type).to_le_bytes())?;
    put_items(&mut w, keys)?;
    put_items(&mut w, values)?;
    Ok(w.written())
}

fn put_items<'i, I>(w: &mut Writer<'_>, items: I) -> Result<()>
where
    I: Iterator<Item = &'i [u8]> + Clone,
{
    w.put(&(items.clone().count() as u64).to_le_bytes())?;
    for item in items {
        w.put(&(item.len() as u64).to_le_bytes())?;
        w.put(item)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SET key "k" value "vv", userDef 5, requestId 9.
    static SET_KV: [u8; 61] = [
        61, 0, 0, 0, 0, 0, 0, 0, // totalSize
        5, 0, 0, 0, 0, 0, 0, 0, // userDef
        9, 0, 0, 0, 0, 0, 0, 0, // requestId
        0, 0, // mt SET
        1, 0, 0, 0, 0, 0, 0, 0, // nKeys
        1, 0, 0, 0, 0, 0, 0, 0, b'k', // key
        1, 0, 0, 0, 0, 0, 0, 0, // nValues
        2, 0, 0, 0, 0, 0, 0, 0, b'v', b'v', // value
    ];

    #[test]
    fn test_deconstruct() {
        let m = MessageView::parse(&SET_KV).unwrap();
        assert_eq!(
            m.header,
            MessageHeader {
                user_def: 5,
                request_id: 9,
                msg_type: MessageType::Set
            }
        );
        assert_eq!(m.keys.len(), 1);
        assert_eq!(m.keys.get(0), Some(&b"k"[..]));
        assert_eq!(m.values.iter().collect::<std::vec::Vec<_>>(), [&b"vv"[..]]);
        assert_eq!(m.encoded_len(), SET_KV.len());
    }

    #[test]
    fn test_construct() {
        let mut buf = [0u8; 61];
        let h = MessageHeader {
            user_def: 5,
            request_id: 9,
            msg_type: MessageType::Set,
        };
        let keys: [&[u8]; 1] = [b"k"];
        let values: [&[u8]; 1] = [b"vv"];
        assert_eq!(encoded_len(keys, values), 61);
        assert_eq!(emit(&h, keys, values, &mut buf), Ok(61));
        assert_eq!(buf, SET_KV);
        assert_eq!(
            emit(&h, keys, values, &mut buf[..60]),
            Err(WireError::BufferTooSmall)
        );
    }

    #[test]
    fn test_parse_emit_round_trip() {
        let m = MessageView::parse(&SET_KV).unwrap();
        let mut buf = [0u8; 61];
        let n = emit(&m.header, m.keys, m.values, &mut buf).unwrap();
        assert_eq!(n, encoded_len(m.keys, m.values));
        assert_eq!(buf, SET_KV);
    }

    #[test]
    fn test_trailing_bytes_ignored() {
        let mut b = [0u8; 70];
        b[..61].copy_from_slice(&SET_KV);
        b[61..].fill(0xEE);
        assert!(MessageView::parse(&b).is_ok());
    }

    #[test]
    fn test_empty_message() {
        let mut buf = [0u8; 42];
        emit(
            &MessageHeader::reply(MessageType::Heartbeat),
            [],
            [],
            &mut buf,
        )
        .unwrap();
        let m = MessageView::parse(&buf).unwrap();
        assert!(m.keys.is_empty() && m.values.is_empty());
        assert_eq!(m.header.user_def, -1);
    }

    #[test]
    fn test_impossible_len() {
        assert_eq!(
            MessageView::parse(&SET_KV[..41]),
            Err(WireError::Truncated("message"))
        );
        // totalSize larger than the body.
        let mut b = SET_KV;
        b[0] = 62;
        assert_eq!(
            MessageView::parse(&b),
            Err(WireError::SizeMismatch("totalSize"))
        );
        // totalSize smaller than the fields.
        b[0] = 60;
        assert!(MessageView::parse(&b).is_err());
        // Key length overruns.
        let mut b = SET_KV;
        b[34] = 200;
        assert_eq!(MessageView::parse(&b), Err(WireError::Truncated("key")));
        // Key length 2^64-1.
        let mut b = SET_KV;
        b[34..42].fill(0xFF);
        assert_eq!(MessageView::parse(&b), Err(WireError::TooLarge("key")));
        // nKeys huge.
        let mut b = SET_KV;
        b[26..34].fill(0xFF);
        assert_eq!(MessageView::parse(&b), Err(WireError::TooLarge("nKeys")));
        // nKeys 1024 but no bytes.
        let mut b = SET_KV;
        b[26..34].copy_from_slice(&1024u64.to_le_bytes());
        assert!(MessageView::parse(&b).is_err());
        // totalSize 2^64-1.
        let mut b = SET_KV;
        b[..8].fill(0xFF);
        assert_eq!(
            MessageView::parse(&b),
            Err(WireError::SizeMismatch("totalSize"))
        );
    }

    #[test]
    fn test_message_types() {
        let mut b = SET_KV;
        b[24] = 14;
        assert_eq!(
            MessageView::parse(&b).unwrap().header.msg_type,
            MessageType::InvalidMsg
        );
        b[24] = 15;
        assert_eq!(
            MessageView::parse(&b),
            Err(WireError::Invalid("message type"))
        );
        b[24] = 0xFF;
        b[25] = 0xFF;
        assert!(MessageView::parse(&b).is_err());
        for raw in -3..20i16 {
            assert_eq!(i16::from(MessageType::from(raw)), raw);
        }
    }
}
