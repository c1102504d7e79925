//! SPEC 6.1 additions of `smem_bm.h` / `smem.h`: batch and asynchronous copies, window-to-window
//! copies, registered user memory and GVA-to-rank lookup. Argument checks here; everything
//! else is [`smem_linux::runtime`]'s (`runtime/batch.rs`, `async_engine.rs`, `regions.rs`).

use std::ffi::c_void;

use smem_linux::runtime::{self, BATCH_MAX, BatchEntry};
use smem_linux::sys::copy::bm_local;
use smem_linux::{Error, Result};
use static_assertions::{assert_eq_size, const_assert_eq};

use crate::bm::{addr_of, check_copy_type, handle, smem_bm_t};
use crate::ffi::{self, ffi_status, ffi_value};

/// `SMEM_ASYNC_COPY_FLAG` (`smem.h`): flag of `smem_bm_copy`, `_copy_2d`, `_copy_batch`; the
/// copy is queued and completed by `smem_bm_wait`.
pub const SMEM_ASYNC_COPY_FLAG: u32 = 1 << 0;
/// `SMEMB_COPY_G2G`: window to window.
pub const SMEMB_COPY_G2G: u32 = 8;

const_assert_eq!(SMEM_ASYNC_COPY_FLAG, smem_core::bm::ASYNC_COPY_FLAG);
const_assert_eq!(SMEMB_COPY_G2G, smem_core::bm::COPY_G2G);

/// `smem_batch_copy_params` (SPEC 6.1), the C layout exactly.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_snake_case)]
pub struct smem_batch_copy_params {
    /// `batchSize` source addresses.
    pub sources: *mut *mut c_void,
    /// `batchSize` destination addresses.
    pub destinations: *mut *mut c_void,
    /// `batchSize` byte counts.
    pub dataSizes: *const u64,
    /// Entries, `1..=65536`.
    pub batchSize: u32,
}

assert_eq_size!(smem_batch_copy_params, [u64; 4]);

/// `smem_bm_copy_batch`: `batchSize` independent copies of type `t`, all validated before any
/// byte moves (a bad entry: `SM_INVALID_PARAM` naming its index, nothing copied); entries to
/// one peer are pipelined together.
///
/// # Safety
/// `params` is NULL or points to a readable `smem_batch_copy_params` whose three arrays hold
/// `batchSize` readable elements; each entry's local side is valid as for `smem_bm_copy` (until
/// `smem_bm_wait` with `SMEM_ASYNC_COPY_FLAG`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_bm_copy_batch(
    handle: smem_bm_t,
    params: *mut smem_batch_copy_params,
    t: u32,
    flags: u32,
) -> i32 {
    ffi_status!("smem_bm_copy_batch", {
        let h = self::handle(handle)?;
        // SAFETY: forwarded contract of this function.
        let p = unsafe { ffi::read_arg(params.cast_const(), "params") }?;
        check_copy_type(t)?;
        let n = p.batchSize as usize;
        if n == 0 || n > BATCH_MAX {
            return Err(Error::invalid(format!(
                "params->batchSize {n} is not in 1..={BATCH_MAX}"
            )));
        }
        // SAFETY: the arrays hold `batchSize` readable elements (contract).
        let (srcs, dsts, sizes) = unsafe {
            (
                ffi::read_array(p.sources.cast_const(), n, "params->sources")?,
                ffi::read_array(p.destinations.cast_const(), n, "params->destinations")?,
                ffi::read_array(p.dataSizes, n, "params->dataSizes")?,
            )
        };
        let entries = srcs
            .iter()
            .zip(&dsts)
            .zip(&sizes)
            .enumerate()
            .map(|(i, ((s, d), &len))| {
                let (src, dest) = (addr_of(s.cast_const()), addr_of(d.cast_const()));
                let entry = BatchEntry {
                    src,
                    dest,
                    len,
                    // SAFETY: every local side is valid (this function's contract); the runtime
                    // validates the window sides.
                    local: unsafe { bm_local(t, (src, len), (dest, len)) },
                };
                check_entry(i, &entry)?;
                Ok(entry)
            })
            .collect::<Result<Vec<_>>>()?;
        runtime::bm_copy_batch(h, entries, t, flags)
    })
}

/// The checks of `smem_bm_copy` for one batch entry (NULL, size 0, wrapping ranges).
fn check_entry(i: usize, e: &BatchEntry) -> Result<()> {
    let bad = |why: &str| {
        Error::invalid(format!(
            "entry {i} ({:#x} -> {:#x}, {} bytes): {why}",
            e.src, e.dest, e.len
        ))
    };
    if e.src == 0 {
        return Err(bad("the source is NULL"));
    }
    if e.dest == 0 {
        return Err(bad("the destination is NULL"));
    }
    if e.len == 0 {
        return Err(bad("the size is 0"));
    }
    if e.src.checked_add(e.len).is_none() || e.dest.checked_add(e.len).is_none() {
        return Err(bad("a range wraps past the end of the address space"));
    }
    Ok(())
}

/// `smem_bm_wait`: waits until every asynchronous copy this thread issued on `handle` is
/// complete; returns the first error among them (or `SM_OK`).
///
/// # Safety
/// Always safe to call; `unsafe` only for uniformity with the other exports.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_bm_wait(handle: smem_bm_t) -> i32 {
    ffi_status!("smem_bm_wait", { runtime::bm_wait(self::handle(handle)?) })
}

/// `smem_bm_register_user_mem`: declares `[addr, addr + size)` of this process as a local side
/// of copies; overlapping ranges are `SM_INVALID_PARAM`.
///
/// # Safety
/// Always safe to call (the range is not touched); `unsafe` only for uniformity.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_bm_register_user_mem(handle: smem_bm_t, addr: u64, size: u64) -> i32 {
    ffi_status!("smem_bm_register_user_mem", {
        runtime::bm_register_user_mem(self::handle(handle)?, addr, size)
    })
}

/// `smem_bm_unregister_user_mem`: withdraws the registered range starting at `addr`
/// (`SM_OBJECT_NOT_EXISTS` when there is none).
///
/// # Safety
/// Always safe to call; `unsafe` only for uniformity.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_bm_unregister_user_mem(handle: smem_bm_t, addr: u64) -> i32 {
    ffi_status!("smem_bm_unregister_user_mem", {
        runtime::bm_unregister_user_mem(self::handle(handle)?, addr)
    })
}

/// `smem_bm_get_rank_id_by_gva`: the member whose window holds `gva`; `UINT32_MAX` (last error
/// set) otherwise.
///
/// # Safety
/// Always safe to call (`gva` is not dereferenced); `unsafe` only for uniformity.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_bm_get_rank_id_by_gva(handle: smem_bm_t, gva: *mut c_void) -> u32 {
    ffi_value!("smem_bm_get_rank_id_by_gva", u32::MAX, {
        runtime::bm_rank_by_gva(self::handle(handle)?, addr_of(gva.cast_const()))
    })
}
