//! Issue 12 item 3 / SPEC 6.1: the `flags` of `smem_bm_copy` and `smem_bm_copy_2d` are 0 or
//! `SMEM_ASYNC_COPY_FLAG` (1); any other bit is `SM_INVALID_PARAM` and moves no byte. Checked
//! with the seed API only, into the window of a real second rank (a child process), so the test
//! runs against any build (it failed before the fix: every value was accepted and copied).

#[path = "pool/mod.rs"]
mod pool;

use std::ffi::c_void;

use smem::{SMEMB_COPY_G2H, SMEMB_COPY_H2G, smem_bm_copy, smem_bm_copy_2d, smem_bm_t};

const MIB: u64 = 1 << 20;
const SM_INVALID_PARAM: i32 = -2000;

fn copy(h: smem_bm_t, src: u64, dst: u64, len: u64, t: u32, flags: u32) -> i32 {
    // SAFETY: the local side is a live buffer of at least `len` bytes; the window side is
    // validated.
    unsafe { smem_bm_copy(h, src as *const c_void, dst as *mut c_void, len, t, flags) }
}

fn copy_2d(h: smem_bm_t, src: u64, dst: u64, flags: u32) -> i32 {
    // SAFETY: 4 rows of 64 bytes, pitch 64, lie in the live local buffer (256 bytes) or inside
    // a window (validated).
    unsafe {
        smem_bm_copy_2d(
            h,
            src as *const c_void,
            64,
            dst as *mut c_void,
            64,
            64,
            4,
            SMEMB_COPY_H2G,
            flags,
        )
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn unknown_copy_flags_are_refused_and_move_nothing() {
    pool::run_peer_if_child();
    let p = pool::TwoRanks::start(
        &[
            "--exact",
            "unknown_copy_flags_are_refused_and_move_nothing",
            "--nocapture",
        ],
        4 * MIB,
        0,
    );
    let (h, target) = (p.h, p.window(1) + p.dram_off);
    let zeros = vec![0u8; 256];
    let ones = vec![0xffu8; 256];
    let mut back = vec![0x11u8; 256];
    let (z, o, b) = (
        zeros.as_ptr() as u64,
        ones.as_ptr() as u64,
        back.as_mut_ptr() as u64,
    );
    assert_eq!(copy(h, z, target, 256, SMEMB_COPY_H2G, 0), 0);
    for flags in [2u32, 4, 0x100, 0x8000_0000, 3, u32::MAX] {
        assert_eq!(
            copy(h, o, target, 256, SMEMB_COPY_H2G, flags),
            SM_INVALID_PARAM,
            "smem_bm_copy flags {flags:#x}"
        );
        assert_eq!(
            copy_2d(h, o, target, flags),
            SM_INVALID_PARAM,
            "smem_bm_copy_2d flags {flags:#x}"
        );
        assert_eq!(
            copy(h, target, b, 256, SMEMB_COPY_G2H, flags),
            SM_INVALID_PARAM,
            "smem_bm_copy G2H flags {flags:#x}"
        );
    }
    assert_eq!(back, vec![0x11u8; 256], "a refused G2H wrote local memory");
    assert_eq!(copy(h, target, b, 256, SMEMB_COPY_G2H, 0), 0);
    assert_eq!(back, zeros, "a refused H2G moved bytes into the window");
    drop(p);
}
