//! `smem_bm.h`: BM pools. Cheap argument checks happen here; everything else is
//! [`smem_linux::runtime`]'s.
//!
//! Handles: a `smem_bm_t` is the [`BmHandle`] value (never 0) cast to a pointer; it is never
//! dereferenced here, so a stale or forged handle is a clean `SM_OBJECT_NOT_EXISTS` /
//! `SM_INVALID_PARAM` from the runtime's generation-checked table.
//!
//! Hot path: `smem_bm_copy` / `smem_bm_copy_2d` check their arguments without allocating or
//! locking (an error message is only built on failure).

use std::ffi::{c_char, c_void};
use std::ptr;
use std::time::Duration;

use smem_core::ErrorCode;
use smem_core::bm::Copy2d;
use smem_core::data_op::BmDataOps;
use smem_core::limits::{BM_OBJECTS_MAX, WINDOW_ALIGN, WORLD_SIZE_MAX};
use smem_linux::runtime::{self, BmConfig, BmHandle};
use smem_linux::sys::copy::bm_local;
use smem_linux::{Error, Result};
use static_assertions::{assert_eq_align, assert_eq_size, const_assert_eq};

use crate::ffi::{self, ffi_status, ffi_value, gva_ptr, timeout};

/// `smem_bm_t`: an opaque BM object handle.
pub type smem_bm_t = *mut c_void;

/// `SMEMB_DATA_OP_SDMA`: device copy engine.
pub const SMEMB_DATA_OP_SDMA: u32 = BmDataOps::SDMA.bits();
/// `SMEMB_DATA_OP_ROCE`: RDMA (HOST_TCP where no RDMA device exists).
pub const SMEMB_DATA_OP_ROCE: u32 = BmDataOps::ROCE.bits();
/// `SMEMB_DATA_OP_HOST_TCP`: windows of other hosts over TCP.
pub const SMEMB_DATA_OP_HOST_TCP: u32 = BmDataOps::HOST_TCP.bits();

/// `SMEMB_COPY_L2G`: local device memory to a window.
pub const SMEMB_COPY_L2G: u32 = 0;
/// `SMEMB_COPY_G2L`: a window to local device memory.
pub const SMEMB_COPY_G2L: u32 = 1;
/// `SMEMB_COPY_G2H`: a window to local host memory.
pub const SMEMB_COPY_G2H: u32 = 2;
/// `SMEMB_COPY_H2G`: local host memory to a window.
pub const SMEMB_COPY_H2G: u32 = 3;
/// `SMEMB_COPY_BUTT`: the first invalid copy type.
pub const SMEMB_COPY_BUTT: u32 = 4;

/// `smem_bm_config_t` (SPEC 2.2), the C layout exactly. C `bool` fields are mirrored as `u8`
/// (non-zero = true) so that a stray byte from C is not an invalid Rust value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_snake_case)]
pub struct smem_bm_config_t {
    /// Seconds; bounds `smem_bm_init`; default 120.
    pub initTimeout: u32,
    /// Seconds; bounds `smem_bm_create` / join; default 120.
    pub createTimeout: u32,
    /// Seconds; bounds each store / control operation; default 120.
    pub controlOperationTimeout: u32,
    /// Rank 0 hosts the store; default true.
    pub startConfigStore: u8,
    /// This process only hosts the store; default false.
    pub startConfigStoreOnly: u8,
    /// Ranks may join after init; default false.
    pub dynamicWorldSize: u8,
    /// Same GVA in every process; default true.
    pub unifiedAddressSpace: u8,
    /// The store assigns rank ids; default false.
    pub autoRanking: u8,
    /// Explicit rank id when `!autoRanking`; default 65535.
    pub rankId: u16,
    /// Default 0.
    pub flags: u32,
}

assert_eq_size!(smem_bm_config_t, [u8; 24]);
assert_eq_align!(smem_bm_config_t, u32);
const_assert_eq!(
    std::mem::offset_of!(smem_bm_config_t, controlOperationTimeout),
    8
);
const_assert_eq!(std::mem::offset_of!(smem_bm_config_t, startConfigStore), 12);
const_assert_eq!(std::mem::offset_of!(smem_bm_config_t, autoRanking), 16);
const_assert_eq!(std::mem::offset_of!(smem_bm_config_t, rankId), 18);
const_assert_eq!(std::mem::offset_of!(smem_bm_config_t, flags), 20);

fn secs_u32(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

impl From<&BmConfig> for smem_bm_config_t {
    fn from(c: &BmConfig) -> Self {
        Self {
            initTimeout: secs_u32(c.init_timeout),
            createTimeout: secs_u32(c.create_timeout),
            controlOperationTimeout: secs_u32(c.control_timeout),
            startConfigStore: u8::from(c.start_config_store),
            startConfigStoreOnly: u8::from(c.start_config_store_only),
            dynamicWorldSize: u8::from(c.dynamic_world_size),
            unifiedAddressSpace: u8::from(c.unified_address_space),
            autoRanking: u8::from(c.auto_ranking),
            rankId: c.rank_id,
            flags: c.flags,
        }
    }
}

impl smem_bm_config_t {
    /// The checked Rust form of these settings.
    ///
    /// # Errors
    /// `SM_INVALID_PARAM` for a zero timeout.
    pub fn to_config(&self) -> Result<BmConfig> {
        Ok(BmConfig {
            init_timeout: timeout(self.initTimeout, "initTimeout")?,
            create_timeout: timeout(self.createTimeout, "createTimeout")?,
            control_timeout: timeout(self.controlOperationTimeout, "controlOperationTimeout")?,
            start_config_store: self.startConfigStore != 0,
            start_config_store_only: self.startConfigStoreOnly != 0,
            dynamic_world_size: self.dynamicWorldSize != 0,
            unified_address_space: self.unifiedAddressSpace != 0,
            auto_ranking: self.autoRanking != 0,
            rank_id: self.rankId,
            flags: self.flags,
        })
    }
}

/// The handle behind a `smem_bm_t`.
pub(crate) fn handle(h: smem_bm_t) -> Result<BmHandle> {
    ffi::handle_arg(h).map(BmHandle)
}

/// The `smem_bm_t` of a runtime handle.
fn to_c_handle(h: BmHandle) -> Result<smem_bm_t> {
    ffi::c_handle(h.0)
}

/// A caller pointer as the runtime's address (provenance exposed so the runtime may use it).
pub(crate) fn addr_of(p: *const c_void) -> u64 {
    p.expose_provenance() as u64
}

pub(crate) fn check_copy_type(t: u32) -> Result<()> {
    if t >= SMEMB_COPY_BUTT && t != crate::bm_ext::SMEMB_COPY_G2G {
        return Err(Error::invalid(format!(
            "unknown copy type {t} (L2G=0, G2L=1, G2H=2, H2G=3, G2G=8)"
        )));
    }
    Ok(())
}

/// `smem_bm_config_init`: fills `*config` with the defaults.
///
/// Returns `SM_OK` or `SM_INVALID_PARAM` (NULL).
///
/// # Safety
/// `config` is NULL or valid for writing a `smem_bm_config_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_bm_config_init(config: *mut smem_bm_config_t) -> i32 {
    ffi_status!("smem_bm_config_init", {
        // SAFETY: forwarded contract of this function.
        let out = unsafe { ffi::out_arg(config, "config") }?;
        out.write(smem_bm_config_t::from(&BmConfig::default()));
        Ok(())
    })
}

/// `smem_bm_init`: joins the BM domain (see `smem_bm.h` for the checks and the repeat rule).
///
/// # Safety
/// `store_url` is NULL or a NUL-terminated string; `config` is NULL or points to a readable
/// `smem_bm_config_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_bm_init(
    store_url: *const c_char,
    world_size: u32,
    device_id: u16,
    config: *const smem_bm_config_t,
) -> i32 {
    ffi_status!("smem_bm_init", {
        // SAFETY: forwarded contract of this function.
        let url = unsafe { ffi::cstr_arg(store_url, "storeURL") }?;
        // SAFETY: forwarded contract of this function.
        let c = unsafe { ffi::read_arg(config, "config") }.map_err(|_| {
            Error::invalid(
                "config is NULL (fill one with smem_bm_config_init, then set rankId or autoRanking)",
            )
        })?;
        if world_size == 0 || world_size as usize > WORLD_SIZE_MAX {
            return Err(Error::invalid(format!(
                "worldSize {world_size} is out of range 1..={WORLD_SIZE_MAX}"
            )));
        }
        let cfg = c.to_config()?;
        if !cfg.auto_ranking && !cfg.start_config_store_only && u32::from(cfg.rank_id) >= world_size
        {
            return Err(Error::invalid(format!(
                "config->rankId {} is not below worldSize {world_size} (set rankId, or autoRanking)",
                cfg.rank_id
            )));
        }
        runtime::bm_init(url, world_size, device_id, &cfg)
    })
}

/// `smem_bm_uninit`: destroys every BM object and leaves the domain. Safe when not initialised.
///
/// # Safety
/// Always safe to call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_bm_uninit(flags: u32) {
    ffi_value!("smem_bm_uninit", (), {
        if flags != 0 {
            log::warn!(target: "smem::capi", "smem_bm_uninit: flags {flags:#x} are reserved and ignored");
        }
        runtime::bm_uninit(flags);
        Ok(())
    })
}

/// `smem_bm_get_rank_id`: this process's rank, `UINT32_MAX` when not initialised.
///
/// # Safety
/// Always safe to call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_bm_get_rank_id() -> u32 {
    ffi_value!("smem_bm_get_rank_id", u32::MAX, { runtime::bm_rank_id() })
}

/// `smem_bm_create`: creates a BM object; NULL on failure.
///
/// # Safety
/// Always safe to call (no pointer arguments).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_bm_create(
    id: u32,
    member_size: u32,
    data_op_type: u32,
    local_dram_size: u64,
    local_hbm_size: u64,
    flags: u32,
) -> smem_bm_t {
    ffi_value!("smem_bm_create", ptr::null_mut(), {
        if id as usize >= BM_OBJECTS_MAX {
            return Err(Error::invalid(format!(
                "id {id} is out of range 0..{BM_OBJECTS_MAX}"
            )));
        }
        if member_size == 0 || member_size as usize > WORLD_SIZE_MAX {
            return Err(Error::invalid(format!(
                "memberSize {member_size} is out of range 1..={WORLD_SIZE_MAX}"
            )));
        }
        BmDataOps::from_c(data_op_type).map_err(|e| Error::invalid(e.to_string()))?;
        if local_dram_size == 0 && local_hbm_size == 0 {
            return Err(Error::invalid("localDRAMSize and localHBMSize are both 0"));
        }
        for (size, what) in [
            (local_dram_size, "localDRAMSize"),
            (local_hbm_size, "localHBMSize"),
        ] {
            if size.checked_next_multiple_of(WINDOW_ALIGN).is_none() {
                return Err(Error::invalid(format!(
                    "{what} {size} overflows when rounded up to 2 MiB"
                )));
            }
        }
        let h = runtime::bm_create(
            id,
            member_size,
            data_op_type,
            local_dram_size,
            local_hbm_size,
            flags,
        )?;
        to_c_handle(h)
    })
}

/// `smem_bm_destroy`: leaves if joined and frees the object. NULL or a destroyed handle is
/// ignored (logged, last error set).
///
/// # Safety
/// Always safe to call (the handle is never dereferenced).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_bm_destroy(handle: smem_bm_t) {
    ffi_value!("smem_bm_destroy", (), {
        let h = self::handle(handle).map_err(|_| Error::invalid("handle is NULL (ignored)"))?;
        runtime::bm_destroy(h)
    })
}

/// `smem_bm_join`: joins the object; writes this rank's window base to `*local_gva_address`.
///
/// # Safety
/// `local_gva_address` is NULL or valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_bm_join(
    handle: smem_bm_t,
    flags: u32,
    local_gva_address: *mut *mut c_void,
) -> i32 {
    ffi_status!("smem_bm_join", {
        let h = self::handle(handle)?;
        // SAFETY: forwarded contract of this function.
        let out = unsafe { ffi::out_arg(local_gva_address, "localGvaAddress") }?;
        let base = runtime::bm_join(h, flags)?;
        out.write(gva_ptr(base));
        Ok(())
    })
}

/// `smem_bm_leave`: withdraws this rank's window.
///
/// # Safety
/// Always safe to call (the handle is never dereferenced).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_bm_leave(handle: smem_bm_t, flags: u32) -> i32 {
    ffi_status!("smem_bm_leave", {
        runtime::bm_leave(self::handle(handle)?, flags)
    })
}

/// `smem_bm_get_local_mem_size`: bytes this rank contributes; 0 on error.
///
/// # Safety
/// Always safe to call (the handle is never dereferenced).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_bm_get_local_mem_size(handle: smem_bm_t) -> u64 {
    ffi_value!("smem_bm_get_local_mem_size", 0, {
        runtime::bm_local_mem_size(self::handle(handle)?)
    })
}

/// `smem_bm_ptr`: the start of `peer_rank_id`'s window; NULL on error.
///
/// # Safety
/// Always safe to call (the handle is never dereferenced).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_bm_ptr(handle: smem_bm_t, peer_rank_id: u16) -> *mut c_void {
    ffi_value!("smem_bm_ptr", ptr::null_mut(), {
        let addr = runtime::bm_ptr(self::handle(handle)?, peer_rank_id)?;
        if addr == 0 {
            return Err(Error::new(
                ErrorCode::Error,
                "internal error: the runtime returned GVA 0",
            ));
        }
        Ok(gva_ptr(addr))
    })
}

/// Checks that `[p, p + len)` does not wrap around the address space.
fn check_span(p: u64, len: u64, what: &str) -> Result<()> {
    if p.checked_add(len).is_none() {
        return Err(Error::invalid(format!(
            "{what} range {p:#x} + {len:#x} overflows"
        )));
    }
    Ok(())
}

/// `smem_bm_copy`: copies `size` bytes between local memory and a joined window.
///
/// # Safety
/// The local side (`src` for L2G/H2G, `dest` for G2L/G2H) is valid for `size` bytes of reading
/// (resp. writing) during the call. The global side is validated against the windows.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_bm_copy(
    handle: smem_bm_t,
    src: *const c_void,
    dest: *mut c_void,
    size: u64,
    t: u32,
    flags: u32,
) -> i32 {
    ffi_status!("smem_bm_copy", {
        let h = self::handle(handle)?;
        if src.is_null() {
            return Err(Error::invalid("src is NULL"));
        }
        if dest.is_null() {
            return Err(Error::invalid("dest is NULL"));
        }
        if size == 0 {
            return Err(Error::invalid("size is 0"));
        }
        check_copy_type(t)?;
        let (s, d) = (addr_of(src), addr_of(dest.cast_const()));
        check_span(s, size, "src")?;
        check_span(d, size, "dest")?;
        // SAFETY: the local side is valid for `size` bytes (this function's contract); the
        // runtime validates the global side.
        let local = unsafe { bm_local(t, (s, size), (d, size)) };
        runtime::bm_copy(h, s, d, size, t, flags, local)
    })
}

/// The bytes covered by `height` rows of `width` bytes `pitch` apart.
fn span_2d(pitch: u64, width: u64, height: u64, what: &str) -> Result<u64> {
    if pitch < width {
        return Err(Error::invalid(format!(
            "{what} {pitch} is smaller than width {width}"
        )));
    }
    (height - 1)
        .checked_mul(pitch)
        .and_then(|v| v.checked_add(width))
        .ok_or_else(|| Error::invalid(format!("{what} {pitch} x height {height} overflows")))
}

/// `smem_bm_copy_2d`: copies `height` rows of `width` bytes.
///
/// # Safety
/// Every row of the local side (`src + i*spitch` or `dest + i*dpitch`, `width` bytes) is valid
/// for reading (resp. writing) during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_bm_copy_2d(
    handle: smem_bm_t,
    src: *const c_void,
    spitch: u64,
    dest: *mut c_void,
    dpitch: u64,
    width: u64,
    height: u64,
    t: u32,
    flags: u32,
) -> i32 {
    ffi_status!("smem_bm_copy_2d", {
        let h = self::handle(handle)?;
        if src.is_null() {
            return Err(Error::invalid("src is NULL"));
        }
        if dest.is_null() {
            return Err(Error::invalid("dest is NULL"));
        }
        if width == 0 || height == 0 {
            return Err(Error::invalid(format!(
                "width {width} x height {height} is empty"
            )));
        }
        check_copy_type(t)?;
        let (s, d) = (addr_of(src), addr_of(dest.cast_const()));
        let (s_span, d_span) = (
            span_2d(spitch, width, height, "spitch")?,
            span_2d(dpitch, width, height, "dpitch")?,
        );
        check_span(s, s_span, "src")?;
        check_span(d, d_span, "dest")?;
        // SAFETY: every local row is valid (this function's contract), so the span holding
        // them is; the runtime validates the global side.
        let local = unsafe { bm_local(t, (s, s_span), (d, d_span)) };
        runtime::bm_copy_2d(
            h,
            Copy2d::new(s, spitch, d, dpitch, width, height),
            t,
            flags,
            local,
        )
    })
}
