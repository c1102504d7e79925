//! `smem_shm.h`: SHM objects.
//!
//! Arguments are checked here exactly as documented in the header; everything else is
//! [`smem_linux::runtime::shm`]'s.
//!
//! Handles: a `smem_shm_t` is the [`ShmHandle`] value (never 0) cast to a pointer; it is never
//! dereferenced here, so a stale or forged handle is a clean `SM_OBJECT_NOT_EXISTS` /
//! `SM_INVALID_PARAM` from the runtime's generation-checked table.

use std::ffi::{c_char, c_void};
use std::ptr;

use smem_core::ErrorCode;
use smem_core::data_op::ShmDataOps;
use smem_core::limits::{SHM_OBJECTS_MAX, WINDOW_ALIGN, WORLD_SIZE_MAX};
use smem_linux::runtime::shm::{self as rt, ShmConfig, ShmHandle};
use smem_linux::{Error, Result};
use static_assertions::{assert_eq_align, assert_eq_size, const_assert_eq};

use crate::ffi::{self, ffi_status, ffi_value, ffi_with, gva_ptr, timeout};

/// `smem_shm_t`: an opaque SHM object handle.
pub type smem_shm_t = *mut c_void;

/// `SMEMS_DATA_OP_MTE`: loads / stores (same host).
pub const SMEMS_DATA_OP_MTE: u32 = ShmDataOps::MTE.bits();
/// `SMEMS_DATA_OP_SDMA`: device copy engine (same host).
pub const SMEMS_DATA_OP_SDMA: u32 = ShmDataOps::SDMA.bits();
/// `SMEMS_DATA_OP_ROCE`: network engine.
pub const SMEMS_DATA_OP_ROCE: u32 = ShmDataOps::ROCE.bits();

/// `SMEM_SHM_EXTRA_CONTEXT_MAX`: largest extra context in bytes.
pub const SMEM_SHM_EXTRA_CONTEXT_MAX: u32 = 65_536;
/// `SMEM_SHM_ALLGATHER_MAX`: largest allgather `sendSize` in bytes.
pub const SMEM_SHM_ALLGATHER_MAX: u32 = 65_536;

/// Default of every SHM timeout, in seconds.
const DEFAULT_TIMEOUT_S: u32 = 120;

/// `smem_shm_config_t` (SPEC 2.3), the C layout exactly; C `bool` mirrored as `u8`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_snake_case)]
pub struct smem_shm_config_t {
    /// Seconds; bounds `smem_shm_init`; default 120.
    pub shmInitTimeout: u32,
    /// Seconds; bounds `smem_shm_create`; default 120.
    pub shmCreateTimeout: u32,
    /// Seconds; bounds barrier / allgather / can_reach; default 120.
    pub controlOperationTimeout: u32,
    /// Rank 0 hosts the store; default true.
    pub startConfigStore: u8,
    /// Default 0.
    pub flags: u32,
}

assert_eq_size!(smem_shm_config_t, [u8; 20]);
assert_eq_align!(smem_shm_config_t, u32);
const_assert_eq!(
    std::mem::offset_of!(smem_shm_config_t, startConfigStore),
    12
);
const_assert_eq!(std::mem::offset_of!(smem_shm_config_t, flags), 16);

impl Default for smem_shm_config_t {
    fn default() -> Self {
        Self {
            shmInitTimeout: DEFAULT_TIMEOUT_S,
            shmCreateTimeout: DEFAULT_TIMEOUT_S,
            controlOperationTimeout: DEFAULT_TIMEOUT_S,
            startConfigStore: 1,
            flags: 0,
        }
    }
}

impl smem_shm_config_t {
    /// The checked Rust form of these settings.
    ///
    /// # Errors
    /// `SM_INVALID_PARAM` for a zero timeout.
    pub fn to_settings(&self) -> Result<ShmConfig> {
        Ok(ShmConfig {
            init_timeout: timeout(self.shmInitTimeout, "shmInitTimeout")?,
            create_timeout: timeout(self.shmCreateTimeout, "shmCreateTimeout")?,
            control_timeout: timeout(self.controlOperationTimeout, "controlOperationTimeout")?,
            start_config_store: self.startConfigStore != 0,
            flags: self.flags,
        })
    }
}

/// The handle behind a `smem_shm_t`.
fn check_handle(h: smem_shm_t) -> Result<ShmHandle> {
    ffi::handle_arg(h).map(ShmHandle)
}

/// The `smem_shm_t` of a runtime handle.
fn to_c_handle(h: ShmHandle) -> Result<smem_shm_t> {
    ffi::c_handle(h.0)
}

/// `smem_shm_config_init`: fills `*config` with the defaults.
///
/// # Safety
/// `config` is NULL or valid for writing a `smem_shm_config_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_shm_config_init(config: *mut smem_shm_config_t) -> i32 {
    ffi_status!("smem_shm_config_init", {
        // SAFETY: forwarded contract of this function.
        let out = unsafe { ffi::out_arg(config, "config") }?;
        out.write(smem_shm_config_t::default());
        Ok(())
    })
}

/// `smem_shm_init`: joins the SHM domain as `rank_id`. `config` NULL means the defaults.
///
/// # Safety
/// `config_store_ip_port` is NULL or a NUL-terminated string; `config` is NULL or points to a
/// readable `smem_shm_config_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_shm_init(
    config_store_ip_port: *const c_char,
    world_size: u32,
    rank_id: u32,
    device_id: u16,
    config: *mut smem_shm_config_t,
) -> i32 {
    ffi_status!("smem_shm_init", {
        // SAFETY: forwarded contract of this function.
        let url = unsafe { ffi::cstr_arg(config_store_ip_port, "configStoreIpPort") }?;
        let c = if config.is_null() {
            smem_shm_config_t::default()
        } else {
            // SAFETY: forwarded contract of this function.
            unsafe { ffi::read_arg(config.cast_const(), "config") }?
        };
        if world_size == 0 || world_size as usize > WORLD_SIZE_MAX {
            return Err(Error::invalid(format!(
                "worldSize {world_size} is out of range 1..={WORLD_SIZE_MAX}"
            )));
        }
        if rank_id >= world_size {
            return Err(Error::invalid(format!(
                "rankId {rank_id} is not below worldSize {world_size}"
            )));
        }
        let settings = c.to_settings()?;
        rt::shm_init(url, world_size, rank_id, device_id, &settings)
    })
}

/// `smem_shm_uninit`: destroys every SHM object and leaves the domain. Safe when not
/// initialised.
///
/// # Safety
/// Always safe to call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_shm_uninit(flags: u32) {
    ffi_value!("smem_shm_uninit", (), {
        if flags != 0 {
            log::warn!(target: "smem::capi", "smem_shm_uninit: flags {flags:#x} are reserved and ignored");
        }
        rt::shm_uninit(flags);
        Ok(())
    })
}

/// `smem_shm_query_support_data_operation`: the engines this process can use; 0 on error.
///
/// # Safety
/// Always safe to call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_shm_query_support_data_operation() -> u32 {
    ffi_value!("smem_shm_query_support_data_operation", 0, {
        Ok(rt::shm_query_support_data_operation())
    })
}

/// `smem_shm_create`: collective creation of an SHM object; NULL on failure.
///
/// # Safety
/// `gva` is NULL or valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_shm_create(
    id: u32,
    rank_size: u32,
    rank_id: u32,
    symmetric_size: u64,
    data_op_type: u32,
    flags: u32,
    gva: *mut *mut c_void,
) -> smem_shm_t {
    ffi_value!("smem_shm_create", ptr::null_mut(), {
        // SAFETY: forwarded contract of this function.
        let out = unsafe { ffi::out_arg(gva, "gva") }?;
        if id as usize >= SHM_OBJECTS_MAX {
            return Err(Error::invalid(format!(
                "id {id} is out of range 0..{SHM_OBJECTS_MAX}"
            )));
        }
        if rank_size == 0 || rank_size as usize > WORLD_SIZE_MAX {
            return Err(Error::invalid(format!(
                "rankSize {rank_size} is out of range 1..={WORLD_SIZE_MAX}"
            )));
        }
        if rank_id >= rank_size {
            return Err(Error::invalid(format!(
                "rankId {rank_id} is not below rankSize {rank_size}"
            )));
        }
        if symmetric_size == 0 || symmetric_size % WINDOW_ALIGN != 0 {
            return Err(Error::invalid(format!(
                "symmetricSize {symmetric_size} is not a non-zero multiple of 2 MiB"
            )));
        }
        if symmetric_size.checked_mul(u64::from(rank_size)).is_none() {
            return Err(Error::invalid(format!(
                "symmetricSize {symmetric_size} x rankSize {rank_size} overflows"
            )));
        }
        ShmDataOps::from_c(data_op_type).map_err(|e| Error::invalid(e.to_string()))?;
        let (h, base) =
            rt::shm_create(id, rank_size, rank_id, symmetric_size, data_op_type, flags)?;
        let c = to_c_handle(h)?;
        out.write(gva_ptr(base));
        Ok(c)
    })
}

/// `smem_shm_destroy`: destroys the object.
///
/// # Safety
/// Always safe to call (the handle is never dereferenced).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_shm_destroy(handle: smem_shm_t, flags: u32) -> i32 {
    ffi_status!("smem_shm_destroy", {
        rt::shm_destroy(check_handle(handle)?, flags)
    })
}

/// `smem_shm_set_extra_context`: stores `size` bytes (1..=65536) with the object.
///
/// # Safety
/// `context` is NULL or valid for reading `size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_shm_set_extra_context(
    handle: smem_shm_t,
    context: *const c_void,
    size: u32,
) -> i32 {
    ffi_status!("smem_shm_set_extra_context", {
        let h = check_handle(handle)?;
        if context.is_null() {
            return Err(Error::invalid("context is NULL"));
        }
        if size == 0 || size > SMEM_SHM_EXTRA_CONTEXT_MAX {
            return Err(Error::invalid(format!(
                "context size {size} is out of range 1..={SMEM_SHM_EXTRA_CONTEXT_MAX}"
            )));
        }
        // SAFETY: forwarded contract of this function.
        let bytes = unsafe { ffi::slice_arg(context, size as usize, "context") }?;
        rt::shm_set_extra_context(h, bytes)
    })
}

/// `smem_shm_get_extra_context`: copies up to `size` bytes of the stored context into
/// `context` and returns the stored length (which may exceed `size`: truncated); negative code
/// on failure. `context` may be NULL only with `size == 0` (length query).
///
/// # Safety
/// `context` is NULL or valid for writing `size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_shm_get_extra_context(
    handle: smem_shm_t,
    context: *mut c_void,
    size: u32,
) -> i32 {
    ffi_with!("smem_shm_get_extra_context", |e: &Error| e.code().code(), {
        let h = check_handle(handle)?;
        // SAFETY: forwarded contract of this function.
        let buf = unsafe { ffi::slice_mut_arg(context, size as usize, "context") }?;
        let stored = rt::shm_get_extra_context(h)?;
        let n = buf.len().min(stored.len());
        buf[..n].copy_from_slice(&stored[..n]);
        i32::try_from(stored.len()).map_err(|_| {
            Error::new(
                ErrorCode::Error,
                "internal error: stored context longer than i32::MAX",
            )
        })
    })
}

/// `smem_shm_get_global_rank`: this process's rank in the object; `UINT32_MAX` on error.
///
/// # Safety
/// Always safe to call (the handle is never dereferenced).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_shm_get_global_rank(handle: smem_shm_t) -> u32 {
    ffi_value!("smem_shm_get_global_rank", u32::MAX, {
        rt::shm_global_rank(check_handle(handle)?)
    })
}

/// `smem_shm_get_global_rank_size`: the object's rank count; `UINT32_MAX` on error.
///
/// # Safety
/// Always safe to call (the handle is never dereferenced).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_shm_get_global_rank_size(handle: smem_shm_t) -> u32 {
    ffi_value!("smem_shm_get_global_rank_size", u32::MAX, {
        rt::shm_global_rank_size(check_handle(handle)?)
    })
}

/// `smem_shm_control_barrier`: returns when all ranks entered it.
///
/// # Safety
/// Always safe to call (the handle is never dereferenced).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_shm_control_barrier(handle: smem_shm_t) -> i32 {
    ffi_status!("smem_shm_control_barrier", {
        rt::shm_control_barrier(check_handle(handle)?)
    })
}

/// `smem_shm_control_allgather`: gathers `send_size` bytes from every rank into `recv_buf`.
///
/// # Safety
/// `send_buf` is NULL or valid for reading `send_size` bytes; `recv_buf` is NULL or valid for
/// writing `recv_size` bytes; the two do not overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_shm_control_allgather(
    handle: smem_shm_t,
    send_buf: *const c_char,
    send_size: u32,
    recv_buf: *mut c_char,
    recv_size: u32,
) -> i32 {
    ffi_status!("smem_shm_control_allgather", {
        let h = check_handle(handle)?;
        if send_buf.is_null() {
            return Err(Error::invalid("sendBuf is NULL"));
        }
        if recv_buf.is_null() {
            return Err(Error::invalid("recvBuf is NULL"));
        }
        if send_size == 0 || send_size > SMEM_SHM_ALLGATHER_MAX {
            return Err(Error::invalid(format!(
                "sendSize {send_size} is out of range 1..={SMEM_SHM_ALLGATHER_MAX}"
            )));
        }
        // The exact check (recvSize == sendSize * rankSize) needs the object's rankSize.
        let ranks = recv_size / send_size;
        if recv_size % send_size != 0 || ranks == 0 || ranks as usize > WORLD_SIZE_MAX {
            return Err(Error::invalid(format!(
                "recvSize {recv_size} is not sendSize {send_size} x rankSize"
            )));
        }
        // SAFETY: forwarded contract of this function.
        let send = unsafe { ffi::slice_arg(send_buf.cast(), send_size as usize, "sendBuf") }?;
        // SAFETY: forwarded contract of this function.
        let recv = unsafe { ffi::slice_mut_arg(recv_buf.cast(), recv_size as usize, "recvBuf") }?;
        rt::shm_control_allgather(h, send, recv)
    })
}

/// `smem_shm_topology_can_reach`: writes the engines reaching `remote_rank` to `*reach_info`.
///
/// # Safety
/// `reach_info` is NULL or valid for writing a `u32`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smem_shm_topology_can_reach(
    handle: smem_shm_t,
    remote_rank: u32,
    reach_info: *mut u32,
) -> i32 {
    ffi_status!("smem_shm_topology_can_reach", {
        let h = check_handle(handle)?;
        // SAFETY: forwarded contract of this function.
        let out = unsafe { ffi::out_arg(reach_info, "reachInfo") }?;
        if remote_rank as usize >= WORLD_SIZE_MAX {
            return Err(Error::invalid(format!(
                "remoteRank {remote_rank} is out of range 0..{WORLD_SIZE_MAX}"
            )));
        }
        out.write(rt::shm_topology_can_reach(h, remote_rank)?);
        Ok(())
    })
}
