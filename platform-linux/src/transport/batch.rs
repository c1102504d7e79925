//! Batched transfers: many independent ranges between this process and one peer's window,
//! pipelined as the requests of one transfer (one connection, or several side by side for
//! large totals), so a batch of small copies costs about what one copy of their total costs
//! (SPEC 6.1 `smem_bm_copy_batch`). The wire protocol is unchanged: each range is one or more
//! one-row requests of at most [`CHUNK`] bytes, each acknowledged by the owner.

use std::time::Duration;

use super::tcp::{CHUNK, Piece, Pool, Transfer};
use crate::Result;
use crate::sys::copy::RawRange;

/// One range of a batched transfer: the bytes of `local` to or from the peer's window at
/// `remote`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span<'a> {
    /// Offset of the range from the peer's window start.
    pub(crate) remote: u64,
    /// The local range (non-empty).
    pub(crate) local: RawRange<'a>,
}

/// The requests of `spans`: one per range, ranges over [`CHUNK`] bytes split.
fn pieces<'a>(spans: &[Span<'a>]) -> (Vec<Piece<'a>>, u64) {
    let mut out = Vec::with_capacity(spans.len());
    let mut total = 0u64;
    for s in spans {
        let len = s.local.len();
        let mut k = 0;
        while k < len {
            let w = CHUNK.min(len - k);
            // `k + w <= len`: always inside the span.
            if let Some(local) = s.local.sub(k, w) {
                out.push(Piece {
                    remote: s.remote + k,
                    local,
                    width: w,
                    rows: 1,
                });
            }
            k += w;
        }
        total = total.saturating_add(len);
    }
    (out, total)
}

impl Pool {
    /// Runs every range of `spans` as one pipelined transfer to `t`'s peer window (`t` gives
    /// peer, object, token, operation and local memory kind; its row fields are ignored):
    /// `Ok` only when every byte was acknowledged in place. The local ranges are read
    /// (`Write`) or written (`Read`) in the memory `t.local_device` names.
    pub(crate) fn transfer_spans(
        &self,
        t: &Transfer<'_>,
        spans: &[Span<'_>],
        timeout: Duration,
    ) -> Result<()> {
        let (pieces, total) = pieces(spans);
        self.run_pieces(t, &pieces, total, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_split_at_chunks_and_cover_every_byte() {
        let mut a = vec![0u8; 10];
        let mut b = vec![0u8; 2 * CHUNK as usize + 3];
        let b_at = b.as_ptr() as u64;
        let spans = [
            Span {
                remote: 0,
                local: RawRange::from_mut(&mut a),
            },
            Span {
                remote: 100,
                local: RawRange::from_mut(&mut b),
            },
        ];
        let (p, total) = pieces(&spans);
        assert_eq!(total, 2 * CHUNK + 13);
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].width, 10);
        assert_eq!(
            (p[1].remote, p[1].local.addr(), p[1].width),
            (100, b_at, CHUNK)
        );
        assert_eq!(p[3].local.addr(), b_at + 2 * CHUNK);
        assert_eq!((p[3].remote, p[3].width), (100 + 2 * CHUNK, 3));
        assert!(p.iter().all(|x| x.rows == 1));
    }
}
