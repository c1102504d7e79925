//! Admission of shared memory: creates larger than what the machine can back are refused
//! quickly with `SM_MALLOC_FAILED`, before anything is allocated (no memfd, no mapping left);
//! a normal create still works. Nothing here allocates more than a few MiB.

mod bm_common;

use std::time::{Duration, Instant};

use bm_common::{config, free_url};
use smem_core::ErrorCode;
use smem_linux::runtime::{self, shm};

const M2: u64 = 2 << 20;
/// `SMEMB_DATA_OP_SDMA` / `SMEMS_DATA_OP_MTE`.
const DATA_OP: u32 = 1;

/// Descriptors and mappings of smem memfds in this process.
fn smem_memfds() -> (usize, usize) {
    let fds = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.to_string_lossy().contains("memfd:smem-"))
        .count();
    let maps = std::fs::read_to_string("/proc/self/maps")
        .expect("/proc/self/maps")
        .lines()
        .filter(|l| l.contains("memfd:smem-"))
        .count();
    (fds, maps)
}

/// Twice what `/proc/meminfo` says can be backed (rounded to 2 MiB), at least 2 MiB.
fn twice_the_machine() -> u64 {
    let h = smem_linux::mem::headroom().expect("/proc/meminfo");
    (h.bytes.saturating_mul(2) / M2 + 1) * M2
}

fn refused_quickly(what: &str, r: smem_linux::Result<impl std::fmt::Debug>, t0: Instant) {
    let took = t0.elapsed();
    let e = r.expect_err(what);
    assert_eq!(e.code(), ErrorCode::MallocFailed, "{what}: {e:?}");
    assert!(
        e.message().contains("MemAvailable") && e.message().contains("shared memory"),
        "{what}: the message names the size and what is available: {e:?}"
    );
    assert!(took < Duration::from_secs(2), "{what} took {took:?}");
    assert_eq!(smem_memfds(), (0, 0), "{what} left a memfd or mapping");
}

/// BM: `localDRAMSize` 2^50 and twice the machine, then `localHBMSize` (sim backend, host
/// memory) twice the machine, are refused; a 2 MiB create works. SHM: the same for
/// `symmetricSize`, and an absurd size (2^64 - 2 MiB) is an invalid parameter.
#[test]
fn oversized_creates_are_refused_before_allocating() {
    let url = free_url();
    runtime::bm_init(&url, 1, 0, &config(0, 20)).expect("bm_init");
    let t0 = Instant::now();
    refused_quickly(
        "bm_create of 2^50 DRAM bytes",
        runtime::bm_create(0, 1, DATA_OP, 1 << 50, 0, 0),
        t0,
    );
    let big = twice_the_machine();
    let t0 = Instant::now();
    refused_quickly(
        "bm_create of twice the machine (DRAM)",
        runtime::bm_create(0, 1, DATA_OP, big, 0, 0),
        t0,
    );
    let t0 = Instant::now();
    refused_quickly(
        "bm_create of twice the machine (sim HBM)",
        runtime::bm_create(0, 1, DATA_OP, 0, big, 0),
        t0,
    );
    let h = runtime::bm_create(0, 1, DATA_OP, M2, M2, 0).expect("a normal create still works");
    runtime::bm_join(h, 0).expect("join");
    runtime::bm_leave(h, 0).expect("leave");
    runtime::bm_destroy(h).expect("destroy");
    runtime::bm_uninit(0);
    assert_eq!(smem_memfds(), (0, 0), "destroy left a memfd or mapping");

    let url = free_url();
    let sc = shm::ShmConfig {
        init_timeout: Duration::from_secs(20),
        create_timeout: Duration::from_secs(20),
        control_timeout: Duration::from_secs(20),
        ..shm::ShmConfig::default()
    };
    shm::shm_init(&url, 1, 0, 0, &sc).expect("shm_init");
    let t0 = Instant::now();
    refused_quickly(
        "shm_create of 2^50 bytes",
        shm::shm_create(0, 1, 0, 1 << 50, DATA_OP, 0),
        t0,
    );
    let t0 = Instant::now();
    refused_quickly(
        "shm_create of twice the machine",
        shm::shm_create(0, 1, 0, big, DATA_OP, 0),
        t0,
    );
    let absurd = u64::MAX - M2 + 1;
    let e = shm::shm_create(0, 1, 0, absurd, DATA_OP, 0).expect_err("absurd size");
    assert_eq!(e.code(), ErrorCode::InvalidParam, "{e:?}");
    assert!(e.message().contains("overflows"), "{e:?}");
    let e = shm::shm_create(0, 2, 0, 1 << 62, DATA_OP, 0).expect_err("overflowing span");
    assert_eq!(e.code(), ErrorCode::InvalidParam, "{e:?}");
    let (h, _) = shm::shm_create(0, 1, 0, M2, DATA_OP, 0).expect("a normal SHM create works");
    shm::shm_destroy(h, 0).expect("destroy");
    shm::shm_uninit(0);
    assert_eq!(smem_memfds(), (0, 0), "SHM destroy left a memfd or mapping");
}
