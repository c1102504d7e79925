//! Every field of the configs and every reserved argument is honoured or refused, never ignored
//! (README "C API decisions"): `unifiedAddressSpace = false` and non-zero reserved `flags`
//! (config, create, join, leave, SHM create / destroy) are `SM_INVALID_PARAM` naming the field;
//! an SHM object asking for `SMEMS_DATA_OP_ROCE` (no SHM network engine) is `SM_NOT_SUPPORTED`.
//! A refused call changes nothing: the same call with the field fixed then succeeds.
//! `startConfigStoreOnly` is honoured: rank calls in such a process are `SM_NOT_STARTED`.
//!
//! One test in its own binary: it initialises the process-wide runtimes (a world of one rank,
//! the store in process on a free loopback port).
#![allow(clippy::undocumented_unsafe_blocks)]

use std::ffi::{CStr, CString, c_void};
use std::ptr;

use smem::*;

const SM_OK: i32 = 0;
const SM_INVALID_PARAM: i32 = -2000;
const SM_NOT_SUPPORTED: i32 = -2102;
const SM_NOT_STARTED: i32 = -2003;
const MIB2: u64 = 2 << 20;

fn take_err() -> String {
    let p = unsafe { smem_get_and_clear_last_err_msg() };
    unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_owned()
}

/// Asserts `rc` is `want` and the last error names `needle`; clears it.
#[track_caller]
fn assert_refused(rc: i32, want: i32, needle: &str) {
    let msg = take_err();
    assert_eq!(rc, want, "{msg}");
    assert!(msg.contains(needle), "{msg:?} does not name {needle:?}");
}

fn url() -> CString {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    CString::new(format!("tcp://127.0.0.1:{port}")).unwrap()
}

#[test]
fn every_field_is_honoured_or_refused() {
    assert_eq!(unsafe { smem_set_log_level(3) }, SM_OK); // expected failures stay off stderr
    let mut c = std::mem::MaybeUninit::<smem_bm_config_t>::uninit();
    assert_eq!(unsafe { smem_bm_config_init(c.as_mut_ptr()) }, SM_OK);
    let mut c = unsafe { c.assume_init() };
    c.rankId = 0;
    c.initTimeout = 20;
    c.createTimeout = 20;
    c.controlOperationTimeout = 20;
    let url = url();

    // BM init: the reference refuses unifiedAddressSpace = false too.
    let mut d = c;
    d.unifiedAddressSpace = 0;
    assert_refused(
        unsafe { smem_bm_init(url.as_ptr(), 1, 0, &d) },
        SM_INVALID_PARAM,
        "unifiedAddressSpace",
    );
    let mut d = c;
    d.flags = 1;
    assert_refused(
        unsafe { smem_bm_init(url.as_ptr(), 1, 0, &d) },
        SM_INVALID_PARAM,
        "flags",
    );
    assert_eq!(
        unsafe { smem_bm_get_rank_id() },
        u32::MAX,
        "nothing started"
    );
    assert_eq!(unsafe { smem_bm_init(url.as_ptr(), 1, 0, &c) }, SM_OK);

    // BM create / join / leave: reserved flags.
    let sdma = SMEMB_DATA_OP_SDMA;
    let h = unsafe { smem_bm_create(0, 1, sdma, MIB2, 0, 4) };
    assert!(h.is_null());
    assert_refused(SM_INVALID_PARAM, SM_INVALID_PARAM, "flags");
    let h = unsafe { smem_bm_create(0, 1, sdma, MIB2, 0, 0) };
    assert!(!h.is_null(), "{}", take_err());
    let mut local: *mut c_void = ptr::null_mut();
    assert_refused(
        unsafe { smem_bm_join(h, 2, &mut local) },
        SM_INVALID_PARAM,
        "flags",
    );
    assert!(local.is_null());
    assert_eq!(unsafe { smem_bm_join(h, 0, &mut local) }, SM_OK);
    assert!(!local.is_null());
    assert_refused(
        unsafe { smem_bm_leave(h, 1 << 31) },
        SM_INVALID_PARAM,
        "flags",
    );
    assert_eq!(unsafe { smem_bm_leave(h, 0) }, SM_OK);
    unsafe { smem_bm_destroy(h) };

    // SHM on the same store (shares the BM runtime's rank and link).
    let mut s = std::mem::MaybeUninit::<smem_shm_config_t>::uninit();
    assert_eq!(unsafe { smem_shm_config_init(s.as_mut_ptr()) }, SM_OK);
    let mut s = unsafe { s.assume_init() };
    s.shmInitTimeout = 20;
    s.shmCreateTimeout = 20;
    s.controlOperationTimeout = 20;
    let mut t = s;
    t.flags = 8;
    assert_refused(
        unsafe { smem_shm_init(url.as_ptr(), 1, 0, 0, &mut t) },
        SM_INVALID_PARAM,
        "flags",
    );
    assert_eq!(
        unsafe { smem_shm_init(url.as_ptr(), 1, 0, 0, &mut s) },
        SM_OK
    );
    let mut gva: *mut c_void = ptr::null_mut();
    let mte = SMEMS_DATA_OP_MTE;
    let h = unsafe { smem_shm_create(0, 1, 0, MIB2, mte, 1, &mut gva) };
    assert!(h.is_null() && gva.is_null());
    assert_refused(SM_INVALID_PARAM, SM_INVALID_PARAM, "flags");
    for op in [SMEMS_DATA_OP_ROCE, SMEMS_DATA_OP_ROCE | mte] {
        let h = unsafe { smem_shm_create(0, 1, 0, MIB2, op, 0, &mut gva) };
        assert!(h.is_null() && gva.is_null());
        assert_refused(SM_NOT_SUPPORTED, SM_NOT_SUPPORTED, "ROCE");
    }
    assert_eq!(
        unsafe { smem_shm_query_support_data_operation() },
        SMEMS_DATA_OP_MTE | SMEMS_DATA_OP_SDMA
    );
    let h = unsafe { smem_shm_create(0, 1, 0, MIB2, mte | SMEMS_DATA_OP_SDMA, 0, &mut gva) };
    assert!(!h.is_null(), "{}", take_err());
    assert_refused(unsafe { smem_shm_destroy(h, 2) }, SM_INVALID_PARAM, "flags");
    assert_eq!(
        unsafe { smem_shm_get_global_rank_size(h) },
        1,
        "still alive"
    );
    assert_eq!(unsafe { smem_shm_destroy(h, 0) }, SM_OK);
    unsafe { smem_shm_uninit(0) };
    unsafe { smem_bm_uninit(0) };

    // startConfigStoreOnly: the process hosts the store and starts no rank, so calls that need
    // one are SM_NOT_STARTED (the component they need was not started).
    let mut d = c;
    d.startConfigStoreOnly = 1;
    let other = self::url();
    assert_eq!(unsafe { smem_bm_init(other.as_ptr(), 2, 0, &d) }, SM_OK);
    assert_eq!(unsafe { smem_bm_get_rank_id() }, u32::MAX);
    assert_refused(SM_NOT_STARTED, SM_NOT_STARTED, "startConfigStoreOnly");
    let h = unsafe { smem_bm_create(0, 1, sdma, MIB2, 0, 0) };
    assert!(h.is_null());
    assert_refused(SM_NOT_STARTED, SM_NOT_STARTED, "startConfigStoreOnly");
    unsafe { smem_bm_uninit(0) };
}
