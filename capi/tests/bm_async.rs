//! SPEC 6.1 asynchronous copies through the C API, into the window of a real second rank (a
//! child process): four threads each queue 800 asynchronous copies (3200 in all, more than the
//! engine's bounded queue holds, so submitters wait for room), then each waits for its own;
//! every byte is verified. `smem_bm_wait` of a thread that issued nothing returns at once, and
//! after `smem_bm_destroy` a wait with nothing outstanding is `SM_OBJECT_NOT_EXISTS`.

#[path = "pool/mod.rs"]
mod pool;

use std::ffi::c_void;

use smem::{
    SMEM_ASYNC_COPY_FLAG, SMEMB_COPY_G2H, SMEMB_COPY_H2G, smem_bm_copy, smem_bm_destroy, smem_bm_t,
    smem_bm_wait,
};

const MIB: u64 = 1 << 20;
const LEN: u64 = 1024;
const PER_THREAD: u64 = 800;
const THREADS: u64 = 4;

/// A `smem_bm_t` that may cross threads (the C API is callable from any thread).
#[derive(Clone, Copy)]
struct H(smem_bm_t);
// SAFETY: a handle is an opaque number; the library synchronises every use of it.
unsafe impl Send for H {}

#[test]
#[cfg_attr(miri, ignore)]
fn async_copies_from_many_threads_complete_at_their_waits() {
    pool::run_peer_if_child();
    let mut p = pool::TwoRanks::start(
        &[
            "--exact",
            "async_copies_from_many_threads_complete_at_their_waits",
            "--nocapture",
        ],
        8 * MIB,
        0,
    );
    let h = H(p.h);
    let win = p.window(1) + p.dram_off;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let h = h;
                let region = win + t * PER_THREAD * LEN;
                let src: Vec<u8> = (0..PER_THREAD * LEN)
                    .map(|i| (i * 7 + t * 31 + (i >> 10)) as u8)
                    .collect();
                for i in 0..PER_THREAD {
                    // SAFETY: `src` lives until the wait below; the window side is validated.
                    let rc = unsafe {
                        smem_bm_copy(
                            h.0,
                            src.as_ptr().add((i * LEN) as usize).cast::<c_void>(),
                            (region + i * LEN) as *mut c_void,
                            LEN,
                            SMEMB_COPY_H2G,
                            SMEM_ASYNC_COPY_FLAG,
                        )
                    };
                    assert_eq!(rc, 0, "thread {t}: copy {i}");
                }
                // SAFETY: live handle.
                assert_eq!(unsafe { smem_bm_wait(h.0) }, 0, "thread {t}: wait");
                let mut back = vec![0u8; (PER_THREAD * LEN) as usize];
                // SAFETY: `back` is writable for its length; the window side is validated.
                let rc = unsafe {
                    smem_bm_copy(
                        h.0,
                        region as *const c_void,
                        back.as_mut_ptr().cast::<c_void>(),
                        PER_THREAD * LEN,
                        SMEMB_COPY_G2H,
                        0,
                    )
                };
                assert_eq!(rc, 0);
                assert!(
                    back == src,
                    "thread {t}: the window differs from what it queued"
                );
            })
        })
        .collect();
    // This thread issued nothing on the handle: its wait returns at once.
    // SAFETY: live handle.
    assert_eq!(unsafe { smem_bm_wait(h.0) }, 0);
    for t in threads {
        t.join().expect("copy thread");
    }
    // SAFETY: live handle, not used for copies afterwards.
    unsafe { smem_bm_destroy(h.0) };
    // SAFETY: a destroyed handle is checked, never dereferenced.
    assert_eq!(unsafe { smem_bm_wait(h.0) }, -2007);
    p.h = std::ptr::null_mut();
    drop(p);
}
