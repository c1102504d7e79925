//! Copy flags and window-to-window (`G2G`) copies (SPEC 6.1).
//!
//! - `flags` of every copy is 0 or [`ASYNC_COPY_FLAG`]; any other bit is refused
//!   ([`CopyError::BadFlags`]) before anything else is looked at.
//! - A `G2G` copy has both ranges in the object's windows: each lies inside one part of one
//!   window (any two windows, also the same one), checked exactly like the global side of the
//!   other copy types; the two ranges must not overlap (2D: their strided spans).

use super::copy::disjoint;
use super::{Copy2d, CopyError, Location, WindowLayout};
use crate::gva::Gva;

/// `SMEM_ASYNC_COPY_FLAG` (`smem.h`): the copy is queued, completed by `smem_bm_wait`.
pub const ASYNC_COPY_FLAG: u32 = 1 << 0;

/// `SMEMB_COPY_G2G` (`smem_bm_copy_type`): window to window.
pub const COPY_G2G: u32 = 8;

/// Checks the `flags` of a copy; `Ok(true)` when it asks for an asynchronous copy.
///
/// # Errors
/// [`CopyError::BadFlags`] for any bit other than [`ASYNC_COPY_FLAG`].
#[inline]
pub const fn check_copy_flags(flags: u32) -> Result<bool, CopyError> {
    if flags & !ASYNC_COPY_FLAG != 0 {
        return Err(CopyError::BadFlags(flags));
    }
    Ok(flags & ASYNC_COPY_FLAG != 0)
}

/// A validated 1D `G2G` copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct G2gPlan {
    /// Where the source range lies.
    pub src: Location,
    /// Where the destination range lies.
    pub dest: Location,
}

/// A validated 2D `G2G` copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct G2g2dPlan {
    /// Where the source's strided span lies.
    pub src: Location,
    /// The source pitch.
    pub spitch: u64,
    /// Where the destination's strided span lies.
    pub dest: Location,
    /// The destination pitch.
    pub dpitch: u64,
    /// Row width in bytes.
    pub width: u64,
    /// Row count.
    pub height: u64,
}

/// Validates `smem_bm_copy(src, dest, size, SMEMB_COPY_G2G)` against `layout`.
///
/// # Errors
/// Any [`CopyError`] of [`WindowLayout::locate`] for either range, or
/// [`CopyError::RangesOverlap`]; on error nothing may be copied.
pub fn check_copy_g2g(
    layout: &WindowLayout,
    src: u64,
    dest: u64,
    size: u64,
) -> Result<G2gPlan, CopyError> {
    let s = layout.locate(Gva(src), size)?;
    let d = layout.locate(Gva(dest), size)?;
    check_disjoint(src, size, dest, size)?;
    Ok(G2gPlan { src: s, dest: d })
}

/// Validates `smem_bm_copy_2d(src, spitch, dest, dpitch, width, height, SMEMB_COPY_G2G)`.
///
/// # Errors
/// As [`check_copy_g2g`], plus [`CopyError::PitchTooSmall`] and [`CopyError::SpanOverflow`].
pub fn check_copy_2d_g2g(layout: &WindowLayout, copy: &Copy2d) -> Result<G2g2dPlan, CopyError> {
    let c = copy;
    let s = layout.locate_2d(Gva(c.src), c.spitch, c.width, c.height)?;
    let d = layout.locate_2d(Gva(c.dest), c.dpitch, c.width, c.height)?;
    check_disjoint(c.src, s.len, c.dest, d.len)?;
    Ok(G2g2dPlan {
        src: s,
        spitch: c.spitch,
        dest: d,
        dpitch: c.dpitch,
        width: c.width,
        height: c.height,
    })
}

/// The two ranges of a `G2G` copy must not overlap.
fn check_disjoint(src: u64, src_len: u64, dest: u64, dest_len: u64) -> Result<(), CopyError> {
    disjoint(src, src_len, dest, dest_len, |len| {
        CopyError::RangesOverlap { src, dest, len }
    })
}

#[cfg(test)]
mod tests {
    use super::super::Part;
    use super::*;

    use super::super::test_layout::{BASE, M2, layout};

    #[test]
    fn flags() {
        assert_eq!(check_copy_flags(0), Ok(false));
        assert_eq!(check_copy_flags(ASYNC_COPY_FLAG), Ok(true));
        assert_eq!(check_copy_flags(2), Err(CopyError::BadFlags(2)));
        assert_eq!(
            check_copy_flags(u32::MAX),
            Err(CopyError::BadFlags(u32::MAX))
        );
    }

    #[test]
    fn g2g_ranges() {
        let l = layout();
        let (w1, w3) = (BASE + 4 * M2, BASE + 12 * M2);
        let p = check_copy_g2g(&l, w1 + M2, w3, 4096).expect("valid");
        assert_eq!((p.src.rank, p.src.part), (1, Part::Dram));
        assert_eq!((p.dest.rank, p.dest.part, p.dest.offset), (3, Part::Hbm, 0));
        // The last byte of a part is usable; one more crosses it.
        assert!(check_copy_g2g(&l, w1 + M2 - 1, w3, 1).is_ok());
        assert!(matches!(
            check_copy_g2g(&l, w1 + M2 - 1, w3, 2),
            Err(CopyError::CrossesPart { .. })
        ));
        // Same window, disjoint: fine; overlapping: refused.
        assert!(check_copy_g2g(&l, w1 + M2, w1 + M2 + 4096, 4096).is_ok());
        assert!(matches!(
            check_copy_g2g(&l, w1 + M2, w1 + M2 + 4095, 4096),
            Err(CopyError::RangesOverlap { .. })
        ));
        assert!(matches!(
            check_copy_g2g(&l, 0x1000, w3, 16),
            Err(CopyError::OutsideObject { .. })
        ));
        assert_eq!(check_copy_g2g(&l, w1, w3, 0), Err(CopyError::ZeroSize));
    }

    #[test]
    fn g2g_2d_spans() {
        let l = layout();
        let (w0, w2) = (BASE, BASE + 8 * M2);
        let p = check_copy_2d_g2g(&l, &Copy2d::new(w0 + M2, 300, w2 + M2, 200, 100, 10))
            .expect("valid");
        assert_eq!(p.src.len, 9 * 300 + 100);
        assert_eq!(p.dest.len, 9 * 200 + 100);
        assert!(matches!(
            check_copy_2d_g2g(&l, &Copy2d::new(w0 + M2, 50, w2 + M2, 200, 100, 10)),
            Err(CopyError::PitchTooSmall { .. })
        ));
        assert!(matches!(
            check_copy_2d_g2g(&l, &Copy2d::new(w0 + M2, 300, w0 + M2 + 1000, 300, 100, 10)),
            Err(CopyError::RangesOverlap { .. })
        ));
    }
}
