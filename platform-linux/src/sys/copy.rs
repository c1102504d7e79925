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

/// Copies `height` rows of `width` bytes; row `i` from `src + i*spitch` to `dst + i*dpitch`.
///
/// # Safety
/// For every row `i < height`, `src + i*spitch` must be valid for `width` bytes of reads and
/// `dst + i*dpitch` for `width` bytes of writes, and no source row may overlap a destination
/// row; the caller has checked that these offsets do not overflow.
#[inline]
pub unsafe fn copy_2d(
    src: *const u8,
    spitch: usize,
    dst: *mut u8,
    dpitch: usize,
    width: usize,
    height: usize,
) {
    let mut s = src;
    let mut d = dst;
    for row in 0..height {
        // SAFETY: the caller guarantees row `row` of both sides is valid and disjoint.
        unsafe { std::ptr::copy_nonoverlapping(s, d, width) };
        if row + 1 < height {
            // `wrapping_add` keeps the pointer arithmetic defined; the next row is in bounds by
            // the caller's contract.
            s = s.wrapping_add(spitch);
            d = d.wrapping_add(dpitch);
        }
    }
}
