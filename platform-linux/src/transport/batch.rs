//! Batched transfers: many independent ranges between this process and one peer's window,
//! pipelined as the requests of one transfer (one connection, or several side by side for
//! large totals), so a batch of small copies costs about what one copy of their total costs
//! (SPEC 6.1 `smem_bm_copy_batch`). The wire protocol is unchanged: each range is one or more
//! one-row requests of at most [`CHUNK`] bytes, each acknowledged by the owner.
// Forwards the caller's contract on its local ranges to `tcp` (one `unsafe` block).
#![allow(unsafe_code)]

use std::time::Duration;

use super::tcp::{CHUNK, Piece, Pool, Transfer};
use crate::Result;

/// One range of a batched transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    /// Offset of the range from the peer's window start.
    pub(crate) remote: u64,
    /// Address of the local range.
    pub(crate) local: u64,
    /// Byte count (non-zero).
    pub(crate) len: u64,
}

/// The requests of `spans`: one per range, ranges over [`CHUNK`] bytes split.
fn pieces(spans: &[Span]) -> (Vec<Piece>, u64) {
    let mut out = Vec::with_capacity(spans.len());
    let mut total = 0u64;
    for s in spans {
        let mut k = 0;
        while k < s.len {
            let w = CHUNK.min(s.len - k);
            out.push(Piece {
                remote: s.remote + k,
                local: s.local.wrapping_add(k),
                width: w,
                rows: 1,
            });
            k += w;
        }
        total = total.saturating_add(s.len);
    }
    (out, total)
}

impl Pool {
    /// Runs every range of `spans` as one pipelined transfer to `t`'s peer window (`t` gives
    /// peer, object, token, operation and local memory kind; its row fields are ignored):
    /// `Ok` only when every byte was acknowledged in place.
    ///
    /// # Safety
    /// Every local range of `spans` must be readable (`Write`) or writable (`Read`) in the
    /// memory `t.local_device` names, for the call; local ranges written by a `Read` must not
    /// overlap.
    pub(crate) unsafe fn transfer_spans(
        &self,
        t: &Transfer<'_>,
        spans: &[Span],
        timeout: Duration,
    ) -> Result<()> {
        let (pieces, total) = pieces(spans);
        // SAFETY: forwarded contract; every piece is a one-row part of one span.
        unsafe { self.run_pieces(t, &pieces, total, timeout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_split_at_chunks_and_cover_every_byte() {
        let spans = [
            Span {
                remote: 0,
                local: 0x1000,
                len: 10,
            },
            Span {
                remote: 100,
                local: 0x9000,
                len: 2 * CHUNK + 3,
            },
        ];
        let (p, total) = pieces(&spans);
        assert_eq!(total, 2 * CHUNK + 13);
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].width, 10);
        assert_eq!((p[1].remote, p[1].local, p[1].width), (100, 0x9000, CHUNK));
        assert_eq!((p[3].remote, p[3].width), (100 + 2 * CHUNK, 3));
        assert!(p.iter().all(|x| x.rows == 1));
    }
}
