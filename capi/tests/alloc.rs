//! SPEC 4: the copy path allocates nothing. A counting `#[global_allocator]` (this test binary
//! only) counts the heap allocations made by the copying thread while it runs 10,000 rounds of
//! `smem_bm_copy` and `smem_bm_copy_2d`, every copy type (H2G, G2H into/from the peer's DRAM,
//! L2G, G2L into/from the peer's HBM, G2G between the two windows), into the window of a real second rank (a child process)
//! after a warm-up. Other threads (store client, heartbeats, the in-process store) are not
//! counted: the counter is per thread.

#[path = "pool/mod.rs"]
mod pool;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ffi::c_void;

use smem::{
    SMEMB_COPY_G2G, SMEMB_COPY_G2H, SMEMB_COPY_G2L, SMEMB_COPY_H2G, SMEMB_COPY_L2G, smem_bm_copy,
    smem_bm_copy_2d, smem_bm_t,
};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: thread-local storage may be gone while a thread exits.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: forwards every call to the system allocator unchanged; the bookkeeping touches only
// `const`-initialised thread-locals (no allocation, no lock).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap allocations made by this thread while `f` runs.
fn allocations(f: impl FnOnce()) -> u64 {
    COUNT.with(|c| c.set(0));
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    COUNT.with(Cell::get)
}

const MIB: u64 = 1 << 20;
const LEN: u64 = 4096;

fn copy(h: smem_bm_t, src: u64, dst: u64, t: u32) {
    // SAFETY: the local side is a live buffer of LEN bytes; the global side is validated.
    let rc = unsafe { smem_bm_copy(h, src as *const c_void, dst as *mut c_void, LEN, t, 0) };
    assert_eq!(rc, 0);
}

fn copy_2d(h: smem_bm_t, src: u64, sp: u64, dst: u64, dp: u64, t: u32) {
    // SAFETY: 8 rows of 256 bytes at the given pitches lie in live local buffers (pitch 256,
    // 2 KiB) or inside a window (validated).
    let rc = unsafe {
        smem_bm_copy_2d(
            h,
            src as *const c_void,
            sp,
            dst as *mut c_void,
            dp,
            256,
            8,
            t,
            0,
        )
    };
    assert_eq!(rc, 0);
}

#[test]
#[cfg_attr(miri, ignore)]
fn copy_path_allocates_nothing() {
    pool::run_peer_if_child();
    // The counter sees allocations at all.
    assert_eq!(allocations(|| drop(std::hint::black_box(vec![1u8; 10]))), 1);

    let p = pool::TwoRanks::start(
        &["--exact", "copy_path_allocates_nothing", "--nocapture"],
        4 * MIB,
        2 * MIB,
    );
    let (h, peer, mine) = (p.h, p.window(1), p.window(0));
    let (peer_dram, peer_hbm) = (peer + p.dram_off, peer);
    let own_hbm = mine; // this rank's HBM part: local device memory
    let src = vec![0x5au8; LEN as usize];
    let mut dst = vec![0u8; LEN as usize];
    let (s, d) = (src.as_ptr() as u64, dst.as_mut_ptr() as u64);
    let round = || {
        copy(h, s, peer_dram, SMEMB_COPY_H2G);
        copy(h, peer_dram, d, SMEMB_COPY_G2H);
        copy(h, own_hbm, peer_hbm + 8192, SMEMB_COPY_L2G);
        copy(h, peer_hbm + 8192, own_hbm + LEN, SMEMB_COPY_G2L);
        copy_2d(h, s, 256, peer_dram + MIB, 1024, SMEMB_COPY_H2G);
        copy_2d(h, peer_dram + MIB, 1024, d, 256, SMEMB_COPY_G2H);
        copy_2d(h, own_hbm, 256, peer_hbm + MIB, 1024, SMEMB_COPY_L2G);
        copy_2d(h, peer_hbm + MIB, 1024, own_hbm + MIB, 256, SMEMB_COPY_G2L);
        copy(h, own_hbm, peer_dram + 2 * MIB, SMEMB_COPY_G2G);
        copy_2d(h, peer_dram + MIB, 1024, own_hbm + MIB, 256, SMEMB_COPY_G2G);
    };
    for _ in 0..100 {
        round();
    }
    const ROUNDS: u64 = 10_000;
    let n = allocations(|| {
        for _ in 0..ROUNDS {
            round();
        }
    });
    assert_eq!(
        n,
        0,
        "{n} heap allocations in {} copies (1D and 2D, every type)",
        ROUNDS * 10
    );
    println!("copy path: 0 heap allocations in {} copies", ROUNDS * 10);
    assert_eq!(dst, src, "the data went round trip");
    drop(p);
}
