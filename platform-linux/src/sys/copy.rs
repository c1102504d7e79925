//! Raw memory copies between a caller's pointer and mapped windows.

/// Copies `len` bytes from `src` to `dst`.
///
/// # Safety
/// `src` must be valid for `len` bytes of reads and `dst` for `len` bytes of writes for the
/// whole call, and the two ranges must not overlap. Bytes of shared mappings may change under
/// the copy (another process writing); the copy then sees some mix of old and new bytes, which
/// is the documented behaviour of unsynchronised shared memory.
#[inline]
pub unsafe fn copy_bytes(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: the caller guarantees both ranges are valid and disjoint.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) }
}

/// The shape of a strided copy: `height` rows of `width` bytes, source rows `spitch` bytes
/// apart, destination rows `dpitch` bytes apart (a 1D copy is one row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape2d {
    /// Distance between source rows.
    pub spitch: usize,
    /// Distance between destination rows.
    pub dpitch: usize,
    /// Bytes per row.
    pub width: usize,
    /// Number of rows.
    pub height: usize,
}

impl Shape2d {
    /// `height` rows of `width` bytes, `spitch` apart in the source and `dpitch` in the
    /// destination.
    pub const fn new(spitch: usize, dpitch: usize, width: usize, height: usize) -> Self {
        Self {
            spitch,
            dpitch,
            width,
            height,
        }
    }

    /// One row of `len` bytes (a 1D copy).
    pub const fn row(len: usize) -> Self {
        Self::new(len, len, len, 1)
    }
}

/// Copies the rows of `shape`: row `i` from `src + i*spitch` to `dst + i*dpitch`.
///
/// # Safety
/// For every row `i < height`, `src + i*spitch` must be valid for `width` bytes of reads and
/// `dst + i*dpitch` for `width` bytes of writes, and no source row may overlap a destination
/// row; the caller has checked that these offsets do not overflow.
#[inline]
pub unsafe fn copy_2d(src: *const u8, dst: *mut u8, shape: Shape2d) {
    let mut s = src;
    let mut d = dst;
    for row in 0..shape.height {
        // SAFETY: the caller guarantees row `row` of both sides is valid and disjoint.
        unsafe { std::ptr::copy_nonoverlapping(s, d, shape.width) };
        if row + 1 < shape.height {
            // `wrapping_add` keeps the pointer arithmetic defined; the next row is in bounds by
            // the caller's contract.
            s = s.wrapping_add(shape.spitch);
            d = d.wrapping_add(shape.dpitch);
        }
    }
}
