//! The C API called from Rust, as C would: argument checks (NULL for every pointer argument is
//! `SM_INVALID_PARAM` with a message naming it, never a crash), the per-thread last error and
//! its clear semantics, config defaults, TLS option validation.
//!
//! Only boundary behaviour is asserted here, so these tests stay true when the runtime lands.
#![allow(clippy::undocumented_unsafe_blocks)]

use std::ffi::{CStr, c_char, c_void};
use std::ptr;

use smem::*;

const SM_OK: i32 = 0;
const SM_INVALID_PARAM: i32 = -2000;
const SM_TLS_ERROR: i32 = -2101;
const MIB2: u64 = 2 << 20;

fn last_err() -> String {
    let p = unsafe { smem_get_last_err_msg() };
    assert!(!p.is_null());
    unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_owned()
}

fn take_err() -> String {
    let p = unsafe { smem_get_and_clear_last_err_msg() };
    assert!(!p.is_null());
    unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_owned()
}

/// Asserts `rc` is SM_INVALID_PARAM and the last error mentions `needle`; clears it.
#[track_caller]
fn assert_invalid(rc: i32, needle: &str) {
    assert_eq!(rc, SM_INVALID_PARAM, "last error: {}", last_err());
    let msg = take_err();
    assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
    assert!(msg.ends_with("[SM_INVALID_PARAM]"), "{msg:?}");
}

/// Asserts a non-status call failed with an invalid-param last error mentioning `needle`.
#[track_caller]
fn assert_invalid_msg(needle: &str) {
    let msg = take_err();
    assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
    assert!(msg.ends_with("[SM_INVALID_PARAM]"), "{msg:?}");
}

/// Keeps the expected failures of these tests off stderr (error level; the failures are warnings).
fn quiet() {
    assert_eq!(unsafe { smem_set_log_level(3) }, SM_OK);
}

fn bm_config() -> smem_bm_config_t {
    let mut c = std::mem::MaybeUninit::<smem_bm_config_t>::uninit();
    assert_eq!(unsafe { smem_bm_config_init(c.as_mut_ptr()) }, SM_OK);
    unsafe { c.assume_init() }
}

/// A handle value that was never handed out (never dereferenced by the library).
fn bogus_handle() -> *mut c_void {
    ptr::without_provenance_mut(0xdead_0000)
}

#[test]
fn init_flags_and_repeat() {
    quiet();
    assert_eq!(unsafe { smem_init(0) }, SM_OK);
    assert_eq!(unsafe { smem_init(0) }, SM_OK);
    assert_invalid(unsafe { smem_init(1) }, "flags must be 0");
}

#[test]
fn last_error_is_per_thread_and_clearable() {
    quiet();
    std::thread::spawn(|| {
        assert_eq!(last_err(), "");
        assert_eq!(take_err(), "");
        assert_eq!(unsafe { smem_init(7) }, SM_INVALID_PARAM);
        let msg = last_err();
        assert!(msg.contains("0x7"), "{msg}");
        // Another thread does not see it.
        std::thread::spawn(|| assert_eq!(last_err(), ""))
            .join()
            .unwrap();
        // A success leaves it in place (errno-like).
        assert_eq!(unsafe { smem_init(0) }, SM_OK);
        assert_eq!(last_err(), msg);
        // The pointer returned by get stays valid across successful calls.
        let p = unsafe { smem_get_last_err_msg() };
        assert_eq!(unsafe { smem_set_log_level(3) }, SM_OK);
        assert_eq!(unsafe { CStr::from_ptr(p) }.to_str().unwrap(), msg);
        // get_and_clear returns it once, and the pointer outlives the clear.
        let p = unsafe { smem_get_and_clear_last_err_msg() };
        assert_eq!(last_err(), "");
        assert_eq!(unsafe { CStr::from_ptr(p) }.to_str().unwrap(), msg);
        assert_eq!(take_err(), "");
        // A newer failure replaces an older one.
        assert_eq!(unsafe { smem_init(1) }, SM_INVALID_PARAM);
        assert_eq!(
            unsafe { smem_bm_config_init(ptr::null_mut()) },
            SM_INVALID_PARAM
        );
        assert!(take_err().starts_with("config is NULL"));
    })
    .join()
    .unwrap();
}

#[test]
fn log_level_range() {
    quiet();
    assert_invalid(unsafe { smem_set_log_level(4) }, "log level");
    assert_invalid(unsafe { smem_set_log_level(-1) }, "log level");
    assert_eq!(unsafe { smem_set_log_level(3) }, SM_OK);
}

#[test]
fn config_defaults() {
    quiet();
    let c = bm_config();
    assert_eq!(
        c,
        smem_bm_config_t {
            initTimeout: 120,
            createTimeout: 120,
            controlOperationTimeout: 120,
            startConfigStore: 1,
            startConfigStoreOnly: 0,
            dynamicWorldSize: 0,
            unifiedAddressSpace: 1,
            autoRanking: 0,
            rankId: 65535,
            flags: 0,
        }
    );
    let mut s = std::mem::MaybeUninit::<smem_shm_config_t>::uninit();
    assert_eq!(unsafe { smem_shm_config_init(s.as_mut_ptr()) }, SM_OK);
    assert_eq!(
        unsafe { s.assume_init() },
        smem_shm_config_t {
            shmInitTimeout: 120,
            shmCreateTimeout: 120,
            controlOperationTimeout: 120,
            startConfigStore: 1,
            flags: 0,
        }
    );
    assert_invalid(
        unsafe { smem_bm_config_init(ptr::null_mut()) },
        "config is NULL",
    );
    assert_invalid(
        unsafe { smem_shm_config_init(ptr::null_mut()) },
        "config is NULL",
    );
}

#[test]
fn ssl_option_checks() {
    quiet();
    assert_invalid(
        unsafe { smem_set_ssl_option(ptr::null()) },
        "tlsOption is NULL",
    );
    let off = smem_tls_option {
        enableTls: 0,
        caFile: ptr::null(),
        crlFile: ptr::null(),
        certFile: ptr::null(),
        keyFile: ptr::null(),
        keyPassword: ptr::null(),
    };
    assert_eq!(unsafe { smem_set_ssl_option(&off) }, SM_OK);
    let mut on = off;
    on.enableTls = 1;
    assert_invalid(unsafe { smem_set_ssl_option(&on) }, "caFile");
    on.caFile = c"ca.pem".as_ptr();
    assert_invalid(unsafe { smem_set_ssl_option(&on) }, "certFile");
    on.certFile = c"".as_ptr();
    assert_invalid(
        unsafe { smem_set_ssl_option(&on) },
        "certFile (required when enableTls) is empty",
    );
    on.certFile = c"cert.pem".as_ptr();
    assert_invalid(unsafe { smem_set_ssl_option(&on) }, "keyFile");
    on.keyFile = c"key.pem".as_ptr();
    on.crlFile = c"\xff".as_ptr();
    assert_invalid(
        unsafe { smem_set_ssl_option(&on) },
        "crlFile is not valid UTF-8",
    );
    on.crlFile = ptr::null();
    on.keyPassword = c"secret".as_ptr();
    // The files are read at once: a missing one is named.
    assert_eq!(unsafe { smem_set_ssl_option(&on) }, SM_TLS_ERROR);
    let msg = take_err();
    assert!(msg.contains("CA file ca.pem: cannot read"), "{msg}");
    assert!(!msg.contains("secret"), "{msg}");
}

#[test]
fn bm_init_checks() {
    quiet();
    let url = c"tcp://127.0.0.1:1".as_ptr();
    let mut c = bm_config();
    c.rankId = 0;
    assert_invalid(
        unsafe { smem_bm_init(ptr::null(), 1, 0, &c) },
        "storeURL is NULL",
    );
    assert_invalid(
        unsafe { smem_bm_init(c"tcp://\xc3(".as_ptr(), 1, 0, &c) },
        "storeURL is not valid UTF-8",
    );
    assert_invalid(
        unsafe { smem_bm_init(url, 1, 0, ptr::null()) },
        "config is NULL",
    );
    assert_invalid(unsafe { smem_bm_init(url, 0, 0, &c) }, "worldSize 0");
    assert_invalid(unsafe { smem_bm_init(url, 1025, 0, &c) }, "worldSize 1025");
    c.rankId = 4;
    assert_invalid(unsafe { smem_bm_init(url, 4, 0, &c) }, "rankId 4");
    let mut d = bm_config();
    assert_invalid(unsafe { smem_bm_init(url, 4, 0, &d) }, "rankId 65535");
    d.autoRanking = 1;
    d.initTimeout = 0;
    assert_invalid(unsafe { smem_bm_init(url, 4, 0, &d) }, "initTimeout");
    d.initTimeout = 1;
    d.createTimeout = 0;
    assert_invalid(unsafe { smem_bm_init(url, 4, 0, &d) }, "createTimeout");
    d.createTimeout = 1;
    d.controlOperationTimeout = 0;
    assert_invalid(
        unsafe { smem_bm_init(url, 4, 0, &d) },
        "controlOperationTimeout",
    );
    // A config full of stray bytes (no smem_bm_config_init) is not UB: bools read as non-zero.
    let garbage: [u8; 24] = [0xff; 24];
    let g = garbage.as_ptr().cast::<smem_bm_config_t>();
    assert_invalid(unsafe { smem_bm_init(url, 0, 0, g) }, "worldSize 0");
}

#[test]
fn bm_create_checks() {
    quiet();
    let tcp = SMEMB_DATA_OP_HOST_TCP;
    assert!(unsafe { smem_bm_create(64, 1, tcp, MIB2, 0, 0) }.is_null());
    assert_invalid_msg("id 64");
    assert!(unsafe { smem_bm_create(0, 0, tcp, MIB2, 0, 0) }.is_null());
    assert_invalid_msg("memberSize 0");
    assert!(unsafe { smem_bm_create(0, 1025, tcp, MIB2, 0, 0) }.is_null());
    assert_invalid_msg("memberSize 1025");
    assert!(unsafe { smem_bm_create(0, 1, 0, MIB2, 0, 0) }.is_null());
    assert_invalid_msg("dataOpType");
    assert!(unsafe { smem_bm_create(0, 1, 8, MIB2, 0, 0) }.is_null());
    assert_invalid_msg("dataOpType");
    assert!(unsafe { smem_bm_create(0, 1, tcp, 0, 0, 0) }.is_null());
    assert_invalid_msg("both 0");
    assert!(unsafe { smem_bm_create(0, 1, tcp, u64::MAX, 0, 0) }.is_null());
    assert_invalid_msg("localDRAMSize");
    assert!(unsafe { smem_bm_create(0, 1, tcp, 0, u64::MAX - 5, 0) }.is_null());
    assert_invalid_msg("localHBMSize");
}

#[test]
fn bm_null_handles_and_pointers() {
    quiet();
    let mut gva: *mut c_void = ptr::null_mut();
    let mut buf = [0u8; 64];
    let src = buf.as_ptr().cast::<c_void>();
    let dst = buf.as_mut_ptr().cast::<c_void>();
    unsafe { smem_bm_destroy(ptr::null_mut()) };
    assert_invalid_msg("handle is NULL (ignored)");
    assert_invalid(
        unsafe { smem_bm_join(ptr::null_mut(), 0, &mut gva) },
        "handle is NULL",
    );
    assert_invalid(
        unsafe { smem_bm_join(bogus_handle(), 0, ptr::null_mut()) },
        "localGvaAddress",
    );
    assert!(gva.is_null(), "out-param written on failure");
    assert_invalid(
        unsafe { smem_bm_leave(ptr::null_mut(), 0) },
        "handle is NULL",
    );
    assert_eq!(unsafe { smem_bm_get_local_mem_size(ptr::null_mut()) }, 0);
    assert_invalid_msg("handle is NULL");
    assert!(unsafe { smem_bm_ptr(ptr::null_mut(), 0) }.is_null());
    assert_invalid_msg("handle is NULL");

    let h = bogus_handle();
    let copy = |h, s, d, n, t| unsafe { smem_bm_copy(h, s, d, n, t, 0) };
    assert_invalid(
        copy(ptr::null_mut(), src, dst, 8, SMEMB_COPY_H2G),
        "handle is NULL",
    );
    assert_invalid(copy(h, ptr::null(), dst, 8, SMEMB_COPY_H2G), "src is NULL");
    assert_invalid(
        copy(h, src, ptr::null_mut(), 8, SMEMB_COPY_G2H),
        "dest is NULL",
    );
    assert_invalid(copy(h, src, dst, 0, SMEMB_COPY_G2H), "size is 0");
    assert_invalid(copy(h, src, dst, 8, SMEMB_COPY_BUTT), "unknown copy type 4");
    assert_invalid(copy(h, src, dst, 8, u32::MAX), "unknown copy type");
    assert_invalid(copy(h, src, dst, u64::MAX, SMEMB_COPY_G2H), "overflows");

    let c2 = |s, sp, d, dp, w, ht, t| unsafe { smem_bm_copy_2d(h, s, sp, d, dp, w, ht, t, 0) };
    let g2h = SMEMB_COPY_G2H;
    assert_invalid(
        unsafe { smem_bm_copy_2d(ptr::null_mut(), src, 8, dst, 8, 8, 2, g2h, 0) },
        "handle is NULL",
    );
    assert_invalid(c2(ptr::null(), 8, dst, 8, 8, 2, g2h), "src is NULL");
    assert_invalid(c2(src, 8, ptr::null_mut(), 8, 8, 2, g2h), "dest is NULL");
    assert_invalid(c2(src, 8, dst, 8, 0, 2, g2h), "empty");
    assert_invalid(c2(src, 8, dst, 8, 8, 0, g2h), "empty");
    assert_invalid(
        c2(src, 4, dst, 8, 8, 2, g2h),
        "spitch 4 is smaller than width 8",
    );
    assert_invalid(
        c2(src, 8, dst, 4, 8, 2, g2h),
        "dpitch 4 is smaller than width 8",
    );
    assert_invalid(c2(src, u64::MAX, dst, 8, 8, 3, g2h), "overflows");
    assert_invalid(c2(src, 8, dst, 8, 8, 2, 9), "unknown copy type 9");
}

#[test]
fn bm_uninit_and_rank_without_init() {
    quiet();
    unsafe { smem_bm_uninit(0) };
    unsafe { smem_bm_uninit(3) };
    let _ = take_err();
    // Not initialised in this process (no test calls a successful smem_bm_init).
    assert_eq!(unsafe { smem_bm_get_rank_id() }, u32::MAX);
    assert!(!take_err().is_empty());
}

#[test]
fn shm_checks() {
    quiet();
    let url = c"tcp://127.0.0.1:1".as_ptr();
    let mut c = std::mem::MaybeUninit::<smem_shm_config_t>::uninit();
    assert_eq!(unsafe { smem_shm_config_init(c.as_mut_ptr()) }, SM_OK);
    let mut c = unsafe { c.assume_init() };
    assert_invalid(
        unsafe { smem_shm_init(ptr::null(), 2, 0, 0, &mut c) },
        "configStoreIpPort",
    );
    assert_invalid(
        unsafe { smem_shm_init(url, 0, 0, 0, &mut c) },
        "worldSize 0",
    );
    assert_invalid(
        unsafe { smem_shm_init(url, 1025, 0, 0, &mut c) },
        "worldSize 1025",
    );
    assert_invalid(unsafe { smem_shm_init(url, 2, 2, 0, &mut c) }, "rankId 2");
    c.shmCreateTimeout = 0;
    assert_invalid(
        unsafe { smem_shm_init(url, 2, 0, 0, &mut c) },
        "shmCreateTimeout",
    );
    // NULL config means the defaults: not an error by itself (the world size is checked next).
    assert_invalid(
        unsafe { smem_shm_init(url, 0, 0, 0, ptr::null_mut()) },
        "worldSize 0",
    );

    let mut gva: *mut c_void = ptr::null_mut();
    let mte = SMEMS_DATA_OP_MTE;
    let create = |id, n, r, size, op, gva| unsafe { smem_shm_create(id, n, r, size, op, 0, gva) };
    assert!(create(0, 2, 0, MIB2, mte, ptr::null_mut()).is_null());
    assert_invalid_msg("gva is NULL");
    assert!(create(64, 2, 0, MIB2, mte, &mut gva).is_null());
    assert_invalid_msg("id 64");
    assert!(create(0, 0, 0, MIB2, mte, &mut gva).is_null());
    assert_invalid_msg("rankSize 0");
    assert!(create(0, 2, 2, MIB2, mte, &mut gva).is_null());
    assert_invalid_msg("rankId 2");
    assert!(create(0, 2, 0, 0, mte, &mut gva).is_null());
    assert_invalid_msg("symmetricSize 0");
    assert!(create(0, 2, 0, MIB2 + 4096, mte, &mut gva).is_null());
    assert_invalid_msg("multiple of 2 MiB");
    assert!(create(0, 1024, 0, u64::MAX - (MIB2 - 1), mte, &mut gva).is_null());
    assert_invalid_msg("overflows");
    assert!(create(0, 2, 0, MIB2, 0, &mut gva).is_null());
    assert_invalid_msg("dataOpType");
    assert!(create(0, 2, 0, MIB2, 16, &mut gva).is_null());
    assert_invalid_msg("dataOpType");
    assert!(gva.is_null());

    let h = bogus_handle();
    let ctx = [7u8; 16];
    let mut out = [0u8; 16];
    assert_invalid(
        unsafe { smem_shm_destroy(ptr::null_mut(), 0) },
        "handle is NULL",
    );
    let set = |h, p: *const u8, n| unsafe { smem_shm_set_extra_context(h, p.cast(), n) };
    assert_invalid(set(ptr::null_mut(), ctx.as_ptr(), 16), "handle is NULL");
    assert_invalid(set(h, ptr::null(), 16), "context is NULL");
    assert_invalid(set(h, ctx.as_ptr(), 0), "context size 0");
    assert_invalid(set(h, ctx.as_ptr(), 65_537), "context size 65537");
    let get = |h, p: *mut u8, n| unsafe { smem_shm_get_extra_context(h, p.cast(), n) };
    assert_invalid(get(ptr::null_mut(), out.as_mut_ptr(), 16), "handle is NULL");
    assert_invalid(get(h, ptr::null_mut(), 16), "context is NULL");
    // NULL with size 0 is the length query: not an argument error.
    assert_ne!(get(h, ptr::null_mut(), 0), SM_INVALID_PARAM);
    let _ = take_err();
    assert_eq!(
        unsafe { smem_shm_get_global_rank(ptr::null_mut()) },
        u32::MAX
    );
    assert_invalid_msg("handle is NULL");
    assert_eq!(
        unsafe { smem_shm_get_global_rank_size(ptr::null_mut()) },
        u32::MAX
    );
    assert_invalid_msg("handle is NULL");
    assert_invalid(
        unsafe { smem_shm_control_barrier(ptr::null_mut()) },
        "handle is NULL",
    );

    let send = [1u8; 8];
    let mut recv = [0u8; 32];
    let ag = |h, s: *const u8, ss, r: *mut u8, rs| unsafe {
        smem_shm_control_allgather(h, s.cast::<c_char>(), ss, r.cast::<c_char>(), rs)
    };
    assert_invalid(
        ag(ptr::null_mut(), send.as_ptr(), 8, recv.as_mut_ptr(), 32),
        "handle",
    );
    assert_invalid(
        ag(h, ptr::null(), 8, recv.as_mut_ptr(), 32),
        "sendBuf is NULL",
    );
    assert_invalid(
        ag(h, send.as_ptr(), 8, ptr::null_mut(), 32),
        "recvBuf is NULL",
    );
    assert_invalid(ag(h, send.as_ptr(), 0, recv.as_mut_ptr(), 32), "sendSize 0");
    assert_invalid(
        ag(h, send.as_ptr(), 65_537, recv.as_mut_ptr(), 32),
        "sendSize 65537",
    );
    assert_invalid(
        ag(h, send.as_ptr(), 8, recv.as_mut_ptr(), 30),
        "recvSize 30",
    );
    assert_invalid(ag(h, send.as_ptr(), 8, recv.as_mut_ptr(), 4), "recvSize 4");
    assert!(recv.iter().all(|&b| b == 0));

    let mut reach = 0u32;
    let can = |h, r, p| unsafe { smem_shm_topology_can_reach(h, r, p) };
    assert_invalid(can(ptr::null_mut(), 0, &mut reach), "handle is NULL");
    assert_invalid(can(h, 0, ptr::null_mut()), "reachInfo is NULL");
    assert_invalid(can(h, 1024, &mut reach), "remoteRank 1024");
    unsafe { smem_shm_uninit(0) };
}

#[test]
fn uninit_is_repeatable() {
    quiet();
    unsafe { smem_uninit() };
    unsafe { smem_uninit() };
    assert_eq!(unsafe { smem_init(0) }, SM_OK);
}
