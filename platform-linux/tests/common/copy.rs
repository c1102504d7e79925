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
