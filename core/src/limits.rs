//! Compile-time capacities (SPEC 2.5). Raising one is a one-line change here.

/// Largest world size (`SMEM_WORLD_SIZE_MAX`).
pub const WORLD_SIZE_MAX: usize = 1024;
/// BM objects per process (ids `0..BM_OBJECTS_MAX`).
pub const BM_OBJECTS_MAX: usize = 64;
/// SHM objects per process.
pub const SHM_OBJECTS_MAX: usize = 64;
/// Alignment and rounding unit of windows and window parts: 2 MiB.
pub const WINDOW_ALIGN: u64 = 2 * 1024 * 1024;
