//! The process-wide state behind the C API: BM pools (and later SHM objects).
//!
//! `capi` calls only these functions; it knows nothing of the store protocol or of memory.
//! SKELETON: the signatures are the contract between `capi` and the runtime; bodies answer
//! `SM_NOT_SUPPORTED` until the BM runtime lands.
#![allow(unsafe_code)] // only `bm_copy`/`bm_copy_2d` are `unsafe fn`: they take caller pointers.

use std::time::Duration;

use smem_core::ErrorCode;

use crate::{Error, Result};

/// Settings of `smem_bm_init` (the Rust form of `smem_bm_config_t`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BmConfig {
    /// Bounds `bm_init`.
    pub init_timeout: Duration,
    /// Bounds `bm_create` / `bm_join`.
    pub create_timeout: Duration,
    /// Bounds each store / control operation.
    pub control_timeout: Duration,
    /// Rank 0 (or the auto-ranking host) starts the store in-process.
    pub start_config_store: bool,
    /// This process only hosts the store and takes no rank.
    pub start_config_store_only: bool,
    /// Ranks may join after init.
    pub dynamic_world_size: bool,
    /// Same GVA in every process.
    pub unified_address_space: bool,
    /// The store assigns rank ids.
    pub auto_ranking: bool,
    /// Explicit rank id when `!auto_ranking`.
    pub rank_id: u16,
    /// Reserved flags.
    pub flags: u32,
}

impl Default for BmConfig {
    fn default() -> Self {
        Self {
            init_timeout: Duration::from_secs(120),
            create_timeout: Duration::from_secs(120),
            control_timeout: Duration::from_secs(120),
            start_config_store: true,
            start_config_store_only: false,
            dynamic_world_size: false,
            unified_address_space: true,
            auto_ranking: false,
            rank_id: u16::MAX,
            flags: 0,
        }
    }
}

/// An opaque, generation-checked BM object handle as handed to C (never 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BmHandle(pub u64);

fn not_yet(what: &str) -> Error {
    Error::new(
        ErrorCode::NotSupported,
        format!("{what} is not implemented yet in this build"),
    )
}

/// `smem_init`: process-wide initialisation (idempotent).
pub fn init(flags: u32) -> Result<()> {
    if flags != 0 {
        return Err(Error::invalid(format!(
            "smem_init flags must be 0, got {flags:#x}"
        )));
    }
    Ok(())
}

/// `smem_uninit`: tears down everything this process created.
pub fn uninit() {}

/// `smem_bm_init`.
pub fn bm_init(url: &str, world_size: u32, device_id: u16, config: &BmConfig) -> Result<()> {
    let _ = (url, world_size, device_id, config);
    Err(not_yet("smem_bm_init"))
}

/// `smem_bm_uninit`.
pub fn bm_uninit(flags: u32) {
    let _ = flags;
}

/// `smem_bm_get_rank_id`.
pub fn bm_rank_id() -> Result<u32> {
    Err(not_yet("smem_bm_get_rank_id"))
}

/// `smem_bm_create`.
pub fn bm_create(
    id: u32,
    member_size: u32,
    data_op_type: u32,
    local_dram_size: u64,
    local_hbm_size: u64,
    flags: u32,
) -> Result<BmHandle> {
    let _ = (
        id,
        member_size,
        data_op_type,
        local_dram_size,
        local_hbm_size,
        flags,
    );
    Err(not_yet("smem_bm_create"))
}

/// `smem_bm_destroy`.
pub fn bm_destroy(handle: BmHandle) -> Result<()> {
    let _ = handle;
    Err(not_yet("smem_bm_destroy"))
}

/// `smem_bm_join`: returns this rank's window base (GVA).
pub fn bm_join(handle: BmHandle, flags: u32) -> Result<u64> {
    let _ = (handle, flags);
    Err(not_yet("smem_bm_join"))
}

/// `smem_bm_leave`.
pub fn bm_leave(handle: BmHandle, flags: u32) -> Result<()> {
    let _ = (handle, flags);
    Err(not_yet("smem_bm_leave"))
}

/// `smem_bm_get_local_mem_size`.
pub fn bm_local_mem_size(handle: BmHandle) -> Result<u64> {
    let _ = handle;
    Err(not_yet("smem_bm_get_local_mem_size"))
}

/// `smem_bm_ptr`: `base + peer * stride`.
pub fn bm_ptr(handle: BmHandle, peer: u16) -> Result<u64> {
    let _ = (handle, peer);
    Err(not_yet("smem_bm_ptr"))
}

/// `smem_bm_copy`.
///
/// # Safety
/// The local side of the copy (`src` for L2G/H2G, `dest` for G2L/G2H) must be valid for
/// `size` bytes of reading (resp. writing) for the duration of the call; the global side is
/// validated against the object's windows.
pub unsafe fn bm_copy(
    handle: BmHandle,
    src: u64,
    dest: u64,
    size: u64,
    copy_type: u32,
    flags: u32,
) -> Result<()> {
    let _ = (handle, src, dest, size, copy_type, flags);
    Err(not_yet("smem_bm_copy"))
}

/// `smem_bm_copy_2d`.
///
/// # Safety
/// As [`bm_copy`], for every row of the local side.
#[allow(clippy::too_many_arguments)]
pub unsafe fn bm_copy_2d(
    handle: BmHandle,
    src: u64,
    spitch: u64,
    dest: u64,
    dpitch: u64,
    width: u64,
    height: u64,
    copy_type: u32,
    flags: u32,
) -> Result<()> {
    let _ = (
        handle, src, spitch, dest, dpitch, width, height, copy_type, flags,
    );
    Err(not_yet("smem_bm_copy_2d"))
}
