//! Replies into link write buffers: frame encoding, and the [`Output`] the store answers
//! through.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use log::{debug, info};
use smem_core::store::{Output, Sink};
use smem_core::wire::message::{self, MessageHeader};
use smem_core::wire::{FRAME_HEADER_LEN, FrameHeader, MessageType, status};

use super::{IdMap, Link, LinkId, Timer};

fn encode_frame(seq: u32, status: i16, body_len: usize, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.resize(start + FRAME_HEADER_LEN, 0);
    encode_frame_at(seq, status, body_len, &mut out[start..]);
    start
}

fn encode_frame_at(seq: u32, status: i16, body_len: usize, header: &mut [u8]) {
    let body_len32 = u32::try_from(body_len).unwrap_or(u32::MAX);
    // The slice is FRAME_HEADER_LEN long.
    let _ = FrameHeader::new(status, body_len32, seq).emit(header);
}

pub(super) fn append_packed<'v, K, V>(
    out: &mut Vec<u8>,
    seq: u32,
    st: i16,
    mt: MessageType,
    keys: K,
    values: V,
) where
    K: Iterator<Item = &'v [u8]> + Clone,
    V: Iterator<Item = &'v [u8]> + Clone,
{
    let len = message::encoded_len(keys.clone(), values.clone());
    encode_frame(seq, st, len, out);
    let at = out.len();
    out.resize(at + len, 0);
    // Sized with encoded_len just above, so it fits.
    let _ = message::emit(&MessageHeader::reply(mt), keys, values, &mut out[at..]);
}

pub(super) fn append_text(out: &mut Vec<u8>, seq: u32, st: i16, text: std::fmt::Arguments<'_>) {
    let start = encode_frame(seq, st, 0, out);
    match text.as_str() {
        Some(t) => out.extend_from_slice(t.as_bytes()),
        // Writing into a Vec cannot fail.
        None => {
            let _ = out.write_fmt(text);
        }
    }
    let len = out.len() - start - FRAME_HEADER_LEN;
    encode_frame_at(seq, st, len, &mut out[start..start + FRAME_HEADER_LEN]);
}

/// Replies of the store, into the links' write buffers; deadlines into the timer heap.
pub(super) struct Replies<'a> {
    pub(super) links: &'a mut IdMap<LinkId, Link>,
    pub(super) dirty: &'a mut Vec<LinkId>,
    pub(super) timers: &'a mut BinaryHeap<Reverse<(Instant, Timer)>>,
    /// Scratch for a reply encoded once for many links.
    pub(super) fan_out: &'a mut Vec<u8>,
}

/// The write buffer of link `id`, the link marked for this turn's flush (once).
fn out_buf<'l>(
    links: &'l mut IdMap<LinkId, Link>,
    dirty: &mut Vec<LinkId>,
    id: LinkId,
) -> Option<&'l mut Vec<u8>> {
    let link = links.get_mut(&id)?;
    if !link.queued {
        link.queued = true;
        dirty.push(id);
    }
    Some(&mut link.wbuf)
}

impl Replies<'_> {
    fn buf(&mut self, id: LinkId) -> Option<&mut Vec<u8>> {
        out_buf(self.links, self.dirty, id)
    }
}

impl Output<LinkId> for Replies<'_> {
    fn text(&mut self, link: LinkId, seq: u32, status: i16, text: std::fmt::Arguments<'_>) {
        if let Some(buf) = self.buf(link) {
            append_text(buf, seq, status, text);
        }
    }

    fn packed<'v, K, V>(&mut self, link: LinkId, seq: u32, mt: MessageType, keys: K, values: V)
    where
        K: Iterator<Item = &'v [u8]> + Clone,
        V: Iterator<Item = &'v [u8]> + Clone,
    {
        if let Some(buf) = self.buf(link) {
            append_packed(buf, seq, status::OK, mt, keys, values);
        }
    }

    /// Encodes the frame once (seqNo 0), then copies it into each link's buffer with the
    /// link's own seqNo written over the header: the same bytes `packed` would queue.
    fn packed_to_each(
        &mut self,
        mt: MessageType,
        value: &[u8],
        targets: &mut dyn FnMut(Sink<'_, LinkId>),
    ) {
        let frame = &mut *self.fan_out;
        frame.clear();
        let one = std::iter::once(value);
        append_packed(frame, 0, status::OK, mt, std::iter::empty(), one);
        let body_len = frame.len() - FRAME_HEADER_LEN;
        let (links, dirty) = (&mut *self.links, &mut *self.dirty);
        targets(&mut |id, seq| {
            if let Some(buf) = out_buf(links, dirty, id) {
                let at = buf.len();
                buf.extend_from_slice(frame);
                encode_frame_at(
                    seq,
                    status::OK,
                    body_len,
                    &mut buf[at..at + FRAME_HEADER_LEN],
                );
            }
        });
        if frame.capacity() > 1 << 20 {
            *frame = Vec::new();
        }
    }

    fn arm_deadline(&mut self, id: u64, after_ms: u64) {
        // Saturating: a deadline past what Instant can hold never fires (waits forever).
        if let Some(at) = Instant::now().checked_add(Duration::from_millis(after_ms)) {
            self.timers.push(Reverse((at, Timer::Parked(id))));
        }
    }

    fn heartbeat(&mut self, link: LinkId) {
        if let Some(l) = self.links.get_mut(&link) {
            l.last_heartbeat = Some(Instant::now());
        }
    }

    fn log(&mut self, important: bool, line: std::fmt::Arguments<'_>) {
        if important {
            info!("config store: {line}");
        } else {
            debug!("config store: {line}");
        }
    }
}
