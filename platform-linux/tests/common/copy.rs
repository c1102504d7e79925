//! `runtime::bm_copy` for tests that stand in for the C boundary.

use smem_linux::runtime::{self, BmHandle};
use smem_linux::sys::copy::bm_local;

/// `runtime::bm_copy` with flags 0, vouching for the local side as `smem_bm_copy` does.
///
/// # Safety
/// The local side (`src` for L2G/H2G, `dest` for G2L/G2H) is valid for `size` bytes of reading
/// (resp. writing) for the call.
pub(crate) unsafe fn raw_copy(
    h: BmHandle,
    src: u64,
    dest: u64,
    size: u64,
    t: u32,
) -> smem_linux::Result<()> {
    // SAFETY: forwarded contract.
    let local = unsafe { bm_local(t, (src, size), (dest, size)) };
    runtime::bm_copy(h, src, dest, size, t, 0, local)
}

/// `runtime::bm_copy_2d` with flags 0, vouching for every row of the local side as
/// `smem_bm_copy_2d` does.
///
/// # Safety
/// The local side's rows (`height` rows of `width` bytes, its pitch apart) are valid for
/// reading (L2G/H2G) or writing (G2L/G2H) for the call.
#[allow(dead_code)] // only the tests with 2D copies use it
pub(crate) unsafe fn raw_copy_2d(
    h: BmHandle,
    copy: smem_core::bm::Copy2d,
    t: u32,
) -> smem_linux::Result<()> {
    let span = |pitch: u64| (copy.height.max(1) - 1) * pitch + copy.width;
    // SAFETY: forwarded contract.
    let local = unsafe {
        bm_local(
            t,
            (copy.src, span(copy.spitch)),
            (copy.dest, span(copy.dpitch)),
        )
    };
    runtime::bm_copy_2d(h, copy, t, 0, local)
}
