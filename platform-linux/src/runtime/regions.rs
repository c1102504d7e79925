//! Registered user memory and GVA-to-rank lookup of BM objects (SPEC 6.1).
//!
//! `smem_bm_register_user_mem(h, addr, size)` declares `[addr, addr + size)` of this process
//! (memory the pool did not allocate, e.g. a runtime's KV-cache tensors) as a local side of
//! copies. The engines of this build (memory copy, device copy, TCP transport) reach any
//! memory of the process without registration, so a registration is bookkeeping that keeps the
//! API contract (and the place an RDMA engine will pin memory): ranges of one object must not
//! overlap each other nor the object's own GVA span (`SM_INVALID_PARAM`); unregistering an
//! address that does not start a registered range is `SM_OBJECT_NOT_EXISTS`. At most
//! [`REGIONS_MAX`] ranges per object (`SM_LIMIT_EXCEEDED`). Registrations belong to the handle:
//! they go with `smem_bm_destroy` (a later object in the same table slot starts empty).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use smem_core::ErrorCode;
use smem_core::gva::{Gva, GvaRange};
use smem_core::limits::BM_OBJECTS_MAX;

use super::copy::Entered;
use super::handles::{BmHandle, decode};
use crate::sync::{Held, lock};
use crate::{Error, Result};

/// Registered ranges per object at most.
pub(super) const REGIONS_MAX: usize = 65_536;

/// Per table slot: the handle generation the ranges belong to, and start -> length.
type Regions = (u32, BTreeMap<u64, u64>);

static REGIONS: [Mutex<Regions>; BM_OBJECTS_MAX] =
    [const { Mutex::new((0, BTreeMap::new())) }; BM_OBJECTS_MAX];

/// The registrations of `handle` (reset when the slot now holds another object).
fn regions(handle: BmHandle, what: &str) -> Result<Held<MutexGuard<'static, Regions>>> {
    let h = decode(handle, what)?;
    let mut r = lock(&REGIONS[h.index as usize]);
    if r.0 != h.generation {
        *r = (h.generation, BTreeMap::new());
    }
    Ok(r)
}

/// `smem_bm_register_user_mem`.
///
/// # Errors
/// `SM_INVALID_PARAM` for address 0, size 0, a wrapping range, a range overlapping a
/// registered one or the object's GVA span; `SM_LIMIT_EXCEEDED`; handle errors.
pub fn bm_register_user_mem(handle: BmHandle, addr: u64, size: u64) -> Result<()> {
    let what = "smem_bm_register_user_mem";
    let held = Entered::enter(handle, what)?;
    let span = held.obj().layout.span();
    let range = GvaRange::new(Gva(addr), size)
        .filter(|_| addr != 0)
        .ok_or_else(|| {
            Error::invalid(format!(
                "{what}: [{addr:#x}, +{size:#x}) is not a range (address 0, size 0 or wrapping)"
            ))
        })?;
    if range.overlaps(&span) {
        return Err(Error::invalid(format!(
            "{what}: [{addr:#x}, +{size:#x}) overlaps the object's own GVA range [{:#x}, {:#x}]; register memory the pool did not allocate",
            span.start().raw(),
            span.last().raw()
        )));
    }
    let mut r = regions(handle, what)?;
    let last = range.last().raw();
    if let Some((&s, &n)) = r.1.range(..=last).next_back() {
        if s.saturating_add(n) > addr {
            return Err(Error::invalid(format!(
                "{what}: [{addr:#x}, +{size:#x}) overlaps the registered range [{s:#x}, +{n:#x}); unregister it first"
            )));
        }
    }
    if r.1.len() >= REGIONS_MAX {
        return Err(Error::new(
            ErrorCode::LimitExceeded,
            format!("{what}: {REGIONS_MAX} ranges are registered on this object already"),
        ));
    }
    r.1.insert(addr, size);
    drop(held);
    Ok(())
}

/// `smem_bm_unregister_user_mem`.
///
/// # Errors
/// `SM_OBJECT_NOT_EXISTS` when no registered range starts at `addr`; handle errors.
pub fn bm_unregister_user_mem(handle: BmHandle, addr: u64) -> Result<()> {
    let what = "smem_bm_unregister_user_mem";
    let held = Entered::enter(handle, what)?;
    let mut r = regions(handle, what)?;
    if r.1.remove(&addr).is_none() {
        return Err(Error::new(
            ErrorCode::ObjectNotExists,
            format!("{what}: no registered range starts at {addr:#x}"),
        ));
    }
    drop(held);
    Ok(())
}

/// `smem_bm_get_rank_id_by_gva`: the member whose window (`[base + r*stride, +stride)`)
/// holds `gva`.
///
/// # Errors
/// `SM_INVALID_PARAM` when `gva` lies in no window of the object; handle errors.
pub fn bm_rank_by_gva(handle: BmHandle, gva: u64) -> Result<u32> {
    let what = "smem_bm_get_rank_id_by_gva";
    let held = Entered::enter(handle, what)?;
    let layout = &held.obj().layout;
    Gva(gva)
        .checked_offset_from(layout.base())
        .filter(|off| *off < layout.span_len())
        .and_then(|off| u32::try_from(off / layout.stride()).ok())
        .ok_or_else(|| {
            Error::invalid(format!(
                "{what}: {gva:#x} lies in no window of the object [{:#x}, +{:#x})",
                layout.base().raw(),
                layout.span_len()
            ))
        })
}
