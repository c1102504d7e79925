//! The external logger through the C API: records reach it, the level filter applies to it,
//! it may call back into smem (no lock is held), a record logged from inside it does not
//! recurse, records from other threads reach it, and NULL restores stderr.
//!
//! One test in its own binary: the logger and the level are process-wide.
#![allow(clippy::undocumented_unsafe_blocks)]
#![allow(clippy::disallowed_methods)] // The test's own record lock, not a lock of smem.

use std::ffi::{CStr, c_char, c_int};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use smem::*;

static RECORDS: Mutex<Vec<(i32, String)>> = Mutex::new(Vec::new());
static REENTER: AtomicBool = AtomicBool::new(false);
static CALLS: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn on_log(level: c_int, msg: *const c_char) {
    CALLS.fetch_add(1, Ordering::SeqCst);
    let msg = unsafe { CStr::from_ptr(msg) }
        .to_string_lossy()
        .into_owned();
    if REENTER.load(Ordering::SeqCst) {
        // Calls back into smem from the callback: must neither deadlock nor recurse (this
        // failure is logged, and that nested record goes to stderr).
        assert_eq!(unsafe { smem_init(0xbad) }, -2000);
        let _ = unsafe { smem_get_and_clear_last_err_msg() };
        assert_eq!(unsafe { smem_set_log_level(0) }, 0);
    }
    RECORDS.lock().unwrap().push((level, msg));
}

fn take() -> Vec<(i32, String)> {
    std::mem::take(&mut *RECORDS.lock().unwrap())
}

/// A failing call: logs one warning naming smem_init.
fn warn_once() {
    assert_eq!(unsafe { smem_init(1) }, -2000);
}

/// A successful call that logs one info record.
fn info_once() {
    let off = smem_tls_option {
        enableTls: 0,
        caFile: std::ptr::null(),
        crlFile: std::ptr::null(),
        certFile: std::ptr::null(),
        keyFile: std::ptr::null(),
        keyPassword: std::ptr::null(),
    };
    assert_eq!(unsafe { smem_set_ssl_option(&off) }, 0);
}

#[test]
fn extern_logger_levels_threads_and_reentrancy() {
    assert_eq!(unsafe { smem_set_extern_logger(Some(on_log)) }, 0);
    assert_eq!(unsafe { smem_set_log_level(0) }, 0);
    take();

    warn_once();
    info_once();
    let got = take();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].0, 2);
    assert!(
        got[0].1.starts_with("smem::capi: smem_init failed: "),
        "{got:?}"
    );
    assert!(got[0].1.ends_with("[SM_INVALID_PARAM]"), "{got:?}");
    assert_eq!(got[1].0, 1);
    assert!(got[1].1.contains("TLS disabled"), "{got:?}");

    // The filter applies to the external logger.
    assert_eq!(unsafe { smem_set_log_level(2) }, 0);
    info_once();
    assert!(take().is_empty());
    warn_once();
    assert_eq!(take().len(), 1);
    assert_eq!(unsafe { smem_set_log_level(3) }, 0);
    warn_once();
    assert!(take().is_empty());
    // An invalid level changes nothing.
    assert_eq!(unsafe { smem_set_log_level(9) }, -2000);
    warn_once();
    assert!(take().is_empty());
    assert_eq!(unsafe { smem_set_log_level(1) }, 0);

    // Records of other threads reach it.
    std::thread::Builder::new()
        .name("worker".into())
        .spawn(warn_once)
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(take().len(), 1);

    // Re-entrancy: the callback calls smem, which fails and logs; no deadlock, no recursion.
    REENTER.store(true, Ordering::SeqCst);
    CALLS.store(0, Ordering::SeqCst);
    warn_once();
    REENTER.store(false, Ordering::SeqCst);
    assert_eq!(
        CALLS.load(Ordering::SeqCst),
        1,
        "the nested record must not recurse"
    );
    assert_eq!(take().len(), 1);

    // Many threads at once, while the logger is being swapped.
    let swapper = std::thread::spawn(|| {
        for _ in 0..200 {
            assert_eq!(unsafe { smem_set_extern_logger(Some(on_log)) }, 0);
        }
    });
    let workers: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| (0..50).for_each(|_| warn_once())))
        .collect();
    swapper.join().unwrap();
    workers.into_iter().for_each(|w| w.join().unwrap());
    assert_eq!(take().len(), 200);

    // NULL restores stderr: the callback is not called any more.
    assert_eq!(unsafe { smem_set_extern_logger(None) }, 0);
    CALLS.store(0, Ordering::SeqCst);
    warn_once();
    assert_eq!(CALLS.load(Ordering::SeqCst), 0);
    assert!(take().is_empty());
}
