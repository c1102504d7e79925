//! The Ascend runtime (`libascendcl.so`) as a table of typed function pointers, resolved once.
//!
//! [`AclApi::open`] opens the library (`RTLD_NOW | RTLD_LOCAL`, see [`super::dl`]) and resolves
//! every symbol of [`SYMBOLS`] at once; a missing one fails the load with its name and the
//! library path. The pointers are private fields of the same struct that owns the [`Library`]
//! and are never handed out, so no pointer can outlive the `dlclose` in the library's `Drop`
//! (the role libloading's `Symbol<'lib, T>` borrow plays; a struct cannot borrow its own field).
//!
//! Each method calls exactly one ACL function and returns its `aclError` as an [`AclCallError`]
//! naming the call. Signatures follow the CANN 8.5 / 9.0 runtime API reference
//! (`aclrtIpcMemGetExportKey` and `aclrtIpcMemImportByKey` with their `flags` argument, which
//! older CANN lacks; such a runtime is refused at load through the missing
//! `aclrtDeviceGetBareTgid`, which arrived with the same API).

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::fmt;
use std::ptr::NonNull;

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::copy::{Checked, RawRange, Shape2d};
use super::dl::Library;

/// `aclError`: 0 = success.
type AclError = c_int;
/// `aclrtContext`.
type AclContext = *mut c_void;

/// `aclrtMemcpyKind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum MemcpyKind {
    /// `ACL_MEMCPY_HOST_TO_HOST`.
    HostToHost = 0,
    /// `ACL_MEMCPY_HOST_TO_DEVICE`.
    HostToDevice = 1,
    /// `ACL_MEMCPY_DEVICE_TO_HOST`.
    DeviceToHost = 2,
    /// `ACL_MEMCPY_DEVICE_TO_DEVICE`.
    DeviceToDevice = 3,
}

/// `ACL_MEM_MALLOC_HUGE_FIRST`: huge pages first, normal pages when none are left.
pub const MALLOC_HUGE_FIRST: c_int = 0;
/// `ACL_ERROR_REPEAT_INITIALIZE`: `aclInit` was already called in this process.
pub const ERROR_REPEAT_INITIALIZE: c_int = 100_002;
/// Length of an IPC memory key buffer (the API reference fixes it at 65).
pub const IPC_KEY_LEN: usize = 65;
/// `ACL_RT_IPC_MEM_EXPORT_FLAG_DEFAULT`: importers must be on the pid allow-list.
pub const IPC_EXPORT_FLAG_DEFAULT: u64 = 0;
/// `ACL_RT_IPC_MEM_IMPORT_FLAG_ENABLE_PEER_ACCESS`: the import also enables access between the
/// two devices (ranks of one host normally use different devices).
pub const IPC_IMPORT_FLAG_ENABLE_PEER_ACCESS: u64 = 1;

/// A failed ACL call: which function and the `aclError` it returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclCallError {
    /// The ACL function.
    pub call: &'static str,
    /// Its return code.
    pub code: i32,
}

impl fmt::Display for AclCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed with ACL error {}", self.call, self.code)
    }
}

/// Every symbol smem resolves, in the order of [`AclApi`]'s fields.
pub const SYMBOLS: [&str; 14] = [
    "aclInit",
    "aclrtSetDevice",
    "aclrtGetCurrentContext",
    "aclrtSetCurrentContext",
    "aclrtMalloc",
    "aclrtFree",
    "aclrtMemcpy",
    "aclrtMemcpy2d",
    "aclrtIpcMemGetExportKey",
    "aclrtIpcMemSetImportPid",
    "aclrtIpcMemImportByKey",
    "aclrtIpcMemClose",
    "aclrtDeviceGetBareTgid",
    "aclrtResetDevice",
];

type InitFn = unsafe extern "C" fn(*const c_char) -> AclError;
type SetDeviceFn = unsafe extern "C" fn(i32) -> AclError;
type GetContextFn = unsafe extern "C" fn(*mut AclContext) -> AclError;
type SetContextFn = unsafe extern "C" fn(AclContext) -> AclError;
type MallocFn = unsafe extern "C" fn(*mut *mut c_void, usize, c_int) -> AclError;
type FreeFn = unsafe extern "C" fn(*mut c_void) -> AclError;
type MemcpyFn = unsafe extern "C" fn(*mut c_void, usize, *const c_void, usize, c_int) -> AclError;
type Memcpy2dFn =
    unsafe extern "C" fn(*mut c_void, usize, *const c_void, usize, usize, usize, c_int) -> AclError;
type ExportKeyFn = unsafe extern "C" fn(*mut c_void, usize, *mut c_char, usize, u64) -> AclError;
type SetImportPidFn = unsafe extern "C" fn(*const c_char, *mut i32, usize) -> AclError;
type ImportByKeyFn = unsafe extern "C" fn(*mut *mut c_void, *const c_char, u64) -> AclError;
type IpcCloseFn = unsafe extern "C" fn(*const c_char) -> AclError;
type BareTgidFn = unsafe extern "C" fn(*mut i32) -> AclError;
type ResetDeviceFn = unsafe extern "C" fn(i32) -> AclError;

/// The loaded runtime (module docs).
pub struct AclApi {
    path: String,
    init: InitFn,
    set_device: SetDeviceFn,
    get_context: GetContextFn,
    set_context: SetContextFn,
    malloc: MallocFn,
    free: FreeFn,
    memcpy: MemcpyFn,
    memcpy_2d: Memcpy2dFn,
    export_key: ExportKeyFn,
    set_import_pid: SetImportPidFn,
    import_by_key: ImportByKeyFn,
    ipc_close: IpcCloseFn,
    bare_tgid: BareTgidFn,
    reset_device: ResetDeviceFn,
    /// Device memory of this process now live (allocated or imported, not released):
    /// address -> length; what [`AclApi::device_range`] hands out ranges of.
    live: Mutex<BTreeMap<u64, u64>>,
    // Declared last: dropped (dlclose) after nothing can call through the pointers above.
    _lib: Library,
}

/// Device memory of this process: allocated and exported here ([`AclApi::alloc_exported`]) or
/// imported from another process by its IPC key ([`AclApi::import`]). Ended with
/// [`AclApi::release`] (no `Drop`: the device context must be current to release it).
#[derive(Debug)]
pub struct DeviceMem {
    addr: u64,
    len: u64,
    key: CString,
    owned: bool,
}

impl DeviceMem {
    /// The device address.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// The length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the memory is empty (never: allocations have a length).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The IPC key naming it for processes of this host.
    pub fn key(&self) -> &CStr {
        &self.key
    }

    /// Allocated here (else imported).
    pub fn owned(&self) -> bool {
        self.owned
    }
}

impl fmt::Debug for AclApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AclApi").field("path", &self.path).finish()
    }
}

/// An opaque `aclrtContext` (a device context of this process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context(usize);

impl AclApi {
    /// Loads the Ascend runtime from `path` (a file, or a bare name searched on the loader
    /// path): what the user asked for (`SMEM_DEVICE=acl`, `ASCEND_HOME_PATH`, or the default
    /// probe). Like any program linking it, this process trusts that library to implement the
    /// ACL runtime API it exports (a C library cannot be checked).
    ///
    /// # Errors
    /// The loader's message for the library, or the first missing symbol with the path.
    pub fn open(path: &str) -> Result<Self, String> {
        // SAFETY: the library named is the ACL runtime (or a stand-in implementing its API,
        // e.g. the tests' stub), trusted as described above.
        unsafe { Self::load(path) }
    }

    /// Opens `path` and resolves every symbol of [`SYMBOLS`].
    ///
    /// # Safety
    /// As [`Library::open`]; moreover the library must implement the ACL runtime API with the
    /// signatures of the module docs for the symbols it exports (a C library cannot be checked).
    ///
    /// # Errors
    /// The loader's message for the library, or the first missing symbol with the path.
    unsafe fn load(path: &str) -> Result<Self, String> {
        let cpath = CString::new(path).map_err(|_| format!("{path:?} contains a NUL byte"))?;
        // SAFETY: forwarded to the caller.
        let lib = unsafe { Library::open(&cpath) }.map_err(|e| format!("dlopen({path}): {e}"))?;
        let sym = |name: &CStr| -> Result<NonNull<c_void>, String> {
            lib.symbol(name).map_err(|e| {
                format!(
                    "{path} has no symbol {} ({e}); smem needs the CANN 8.5+ runtime API",
                    name.to_string_lossy()
                )
            })
        };
        macro_rules! resolve {
            ($name:literal, $ty:ty) => {{
                let p = sym($name)?;
                // SAFETY: the caller guarantees the exported symbol is the ACL function with this
                // signature; a data pointer and a function pointer have the same size here.
                unsafe { std::mem::transmute::<*mut c_void, $ty>(p.as_ptr()) }
            }};
        }
        Ok(Self {
            path: path.to_owned(),
            init: resolve!(c"aclInit", InitFn),
            set_device: resolve!(c"aclrtSetDevice", SetDeviceFn),
            get_context: resolve!(c"aclrtGetCurrentContext", GetContextFn),
            set_context: resolve!(c"aclrtSetCurrentContext", SetContextFn),
            malloc: resolve!(c"aclrtMalloc", MallocFn),
            free: resolve!(c"aclrtFree", FreeFn),
            memcpy: resolve!(c"aclrtMemcpy", MemcpyFn),
            memcpy_2d: resolve!(c"aclrtMemcpy2d", Memcpy2dFn),
            export_key: resolve!(c"aclrtIpcMemGetExportKey", ExportKeyFn),
            set_import_pid: resolve!(c"aclrtIpcMemSetImportPid", SetImportPidFn),
            import_by_key: resolve!(c"aclrtIpcMemImportByKey", ImportByKeyFn),
            ipc_close: resolve!(c"aclrtIpcMemClose", IpcCloseFn),
            bare_tgid: resolve!(c"aclrtDeviceGetBareTgid", BareTgidFn),
            reset_device: resolve!(c"aclrtResetDevice", ResetDeviceFn),
            live: Mutex::new(BTreeMap::new()),
            _lib: lib,
        })
    }

    /// The path the library was loaded from.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `aclInit(NULL)`; `ACL_ERROR_REPEAT_INITIALIZE` (the application initialised ACL itself)
    /// counts as success.
    ///
    /// # Errors
    /// Any other code.
    pub fn init(&self) -> Result<(), AclCallError> {
        // SAFETY: aclInit accepts NULL (no configuration file).
        let rc = unsafe { (self.init)(std::ptr::null()) };
        if rc == ERROR_REPEAT_INITIALIZE {
            return Ok(());
        }
        check("aclInit", rc)
    }

    /// `aclrtSetDevice(id)`: makes `id` the current device of this thread (creating its
    /// default context).
    ///
    /// # Errors
    /// The ACL code.
    pub fn set_device(&self, id: i32) -> Result<(), AclCallError> {
        // SAFETY: scalar argument.
        check("aclrtSetDevice", unsafe { (self.set_device)(id) })
    }

    /// `aclrtResetDevice(id)`: releases this process's reference on the device.
    ///
    /// # Errors
    /// The ACL code.
    pub fn reset_device(&self, id: i32) -> Result<(), AclCallError> {
        // SAFETY: scalar argument.
        check("aclrtResetDevice", unsafe { (self.reset_device)(id) })
    }

    /// `aclrtGetCurrentContext`.
    ///
    /// # Errors
    /// The ACL code.
    pub fn current_context(&self) -> Result<Context, AclCallError> {
        let mut ctx: AclContext = std::ptr::null_mut();
        // SAFETY: `ctx` is a valid out-pointer for the call.
        check("aclrtGetCurrentContext", unsafe {
            (self.get_context)(&mut ctx)
        })?;
        Ok(Context(ctx as usize))
    }

    /// `aclrtSetCurrentContext(ctx)` for the calling thread.
    ///
    /// # Errors
    /// The ACL code.
    pub fn set_context(&self, ctx: Context) -> Result<(), AclCallError> {
        // SAFETY: `ctx` came from `current_context` of this library (an opaque handle).
        check("aclrtSetCurrentContext", unsafe {
            (self.set_context)(ctx.0 as AclContext)
        })
    }

    /// `aclrtMalloc(&p, len, ACL_MEM_MALLOC_HUGE_FIRST)`: device memory, as an address.
    ///
    /// # Errors
    /// The ACL code (also when it returned success with a NULL pointer: code 0).
    fn malloc(&self, len: usize) -> Result<u64, AclCallError> {
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: `p` is a valid out-pointer for the call.
        check("aclrtMalloc", unsafe {
            (self.malloc)(&mut p, len, MALLOC_HUGE_FIRST)
        })?;
        if p.is_null() {
            return Err(AclCallError {
                call: "aclrtMalloc",
                code: 0,
            });
        }
        Ok(p as u64)
    }

    /// `aclrtFree(p)`.
    ///
    /// # Safety
    /// `p` came from [`AclApi::malloc`] of this library and is not used afterwards.
    ///
    /// # Errors
    /// The ACL code.
    unsafe fn free(&self, p: u64) -> Result<(), AclCallError> {
        // SAFETY: forwarded to the caller.
        check("aclrtFree", unsafe { (self.free)(p as *mut c_void) })
    }

    /// `aclrtMemcpy(dst, width, src, width, kind)` for each row of `c` (synchronous): any
    /// direction, one call per row.
    ///
    /// # Errors
    /// The first failed row and its ACL code.
    pub fn memcpy_rows(
        &self,
        c: &Checked<'_>,
        kind: MemcpyKind,
    ) -> Result<(), (usize, AclCallError)> {
        let width = c.shape().width;
        for row in 0..c.shape().height {
            let (s, d) = c.row(row);
            // SAFETY: `c` was checked: row `row` lies in ranges valid (in the memories `kind`
            // names, by the ranges' contract) for the call; destMax = count = width.
            check("aclrtMemcpy", unsafe {
                (self.memcpy)(d.cast(), width, s.cast(), width, kind as c_int)
            })
            .map_err(|e| (row, e))?;
        }
        Ok(())
    }

    /// `aclrtMemcpy2d(dst, dpitch, src, spitch, width, height, kind)` of `c` (synchronous; the
    /// API supports only host-to-device and device-to-host).
    ///
    /// # Errors
    /// The ACL code.
    pub fn memcpy_2d(&self, c: &Checked<'_>, kind: MemcpyKind) -> Result<(), AclCallError> {
        let Shape2d {
            spitch,
            dpitch,
            width,
            height,
        } = c.shape();
        // SAFETY: `c` was checked: every row lies in ranges valid (in the memories `kind`
        // names, by the ranges' contract) for the call.
        check("aclrtMemcpy2d", unsafe {
            (self.memcpy_2d)(
                c.dst().cast(),
                dpitch,
                c.src().cast(),
                spitch,
                width,
                height,
                kind as c_int,
            )
        })
    }

    /// `aclrtIpcMemGetExportKey(p, len, key, 65, ACL_RT_IPC_MEM_EXPORT_FLAG_DEFAULT)`: the key
    /// naming `len` bytes of device memory at `p` for other processes of this host.
    ///
    /// # Errors
    /// The ACL code (code 0: the key was not NUL-terminated).
    fn export_key(&self, p: u64, len: usize) -> Result<CString, AclCallError> {
        let mut key = [0 as c_char; IPC_KEY_LEN];
        // SAFETY: `key` is writable for IPC_KEY_LEN bytes; the runtime checks `p`/`len` against
        // its own allocations (an unknown range is an error code, not a memory access).
        check("aclrtIpcMemGetExportKey", unsafe {
            (self.export_key)(
                p as *mut c_void,
                len,
                key.as_mut_ptr(),
                IPC_KEY_LEN,
                IPC_EXPORT_FLAG_DEFAULT,
            )
        })?;
        let bytes: Vec<u8> = key.iter().map(|&c| c as u8).collect();
        CStr::from_bytes_until_nul(&bytes)
            .map(CStr::to_owned)
            .map_err(|_| AclCallError {
                call: "aclrtIpcMemGetExportKey",
                code: 0,
            })
    }

    /// `aclrtIpcMemSetImportPid(key, pids, n)`: allows these processes to import `key`.
    ///
    /// # Errors
    /// The ACL code.
    pub fn set_import_pids(&self, key: &CStr, pids: &[i32]) -> Result<(), AclCallError> {
        let mut pids = pids.to_vec();
        // SAFETY: `key` is NUL-terminated; `pids` is a live buffer of `pids.len()` ints (the
        // API takes a non-const pointer but only reads it).
        check("aclrtIpcMemSetImportPid", unsafe {
            (self.set_import_pid)(key.as_ptr(), pids.as_mut_ptr(), pids.len())
        })
    }

    /// `aclrtIpcMemImportByKey(&p, key, ENABLE_PEER_ACCESS)`: this process's address of the
    /// memory another process exported as `key`.
    ///
    /// # Errors
    /// The ACL code.
    fn import_by_key(&self, key: &CStr) -> Result<u64, AclCallError> {
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: `p` is a valid out-pointer; `key` is NUL-terminated.
        check("aclrtIpcMemImportByKey", unsafe {
            (self.import_by_key)(&mut p, key.as_ptr(), IPC_IMPORT_FLAG_ENABLE_PEER_ACCESS)
        })?;
        if p.is_null() {
            return Err(AclCallError {
                call: "aclrtIpcMemImportByKey",
                code: 0,
            });
        }
        Ok(p as u64)
    }

    /// `aclrtIpcMemClose(key)`: ends this process's sharing (exporter) or use (importer) of
    /// `key`.
    ///
    /// # Safety
    /// In an importer, nothing may use the imported address afterwards.
    ///
    /// # Errors
    /// The ACL code.
    unsafe fn ipc_close(&self, key: &CStr) -> Result<(), AclCallError> {
        // SAFETY: `key` is NUL-terminated; the caller stopped using the imported memory.
        check("aclrtIpcMemClose", unsafe {
            (self.ipc_close)(key.as_ptr())
        })
    }

    /// `len` bytes of new device memory (`aclrtMalloc`), exported under a fresh IPC key; freed
    /// again when the export fails.
    ///
    /// # Errors
    /// The ACL code of the failed call.
    pub fn alloc_exported(&self, len: usize) -> Result<DeviceMem, AclCallError> {
        let addr = self.malloc(len)?;
        let key = match self.export_key(addr, len) {
            Ok(k) => k,
            Err(e) => {
                // SAFETY: just allocated, never shared or handed out.
                let _ = unsafe { self.free(addr) };
                return Err(e);
            }
        };
        let m = DeviceMem {
            addr,
            len: len as u64,
            key,
            owned: true,
        };
        crate::sync::lock(&self.live).insert(m.addr, m.len);
        Ok(m)
    }

    /// The `len` bytes another process of this host exported as `key`.
    ///
    /// # Errors
    /// The ACL code.
    pub fn import(&self, key: CString, len: u64) -> Result<DeviceMem, AclCallError> {
        let addr = self.import_by_key(&key)?;
        let m = DeviceMem {
            addr,
            len,
            key,
            owned: false,
        };
        crate::sync::lock(&self.live).insert(m.addr, m.len);
        Ok(m)
    }

    /// Ends `m`: closes its IPC key (`aclrtIpcMemClose`) and frees it when owned
    /// (`aclrtFree`). Ranges of it ([`AclApi::device_range`]) are no longer handed out; the
    /// caller's protocol ended the copies through earlier ones (e.g. a window drained). Returns
    /// the errors of the close and the free.
    pub fn release(&self, m: DeviceMem) -> [Option<AclCallError>; 2] {
        crate::sync::lock(&self.live).remove(&m.addr);
        // SAFETY: `m` is consumed: nothing of ours hands out its address any more (removed
        // from `live` above); copies through earlier ranges ended (the caller's protocol).
        let close = unsafe { self.ipc_close(&m.key) }.err();
        // SAFETY: `addr` came from `malloc` of this library (owned) and is not used after.
        let free = m
            .owned
            .then(|| unsafe { self.free(m.addr) }.err())
            .flatten();
        [close, free]
    }

    /// `len` bytes at device address `addr` inside live device memory of this process, as a
    /// range for device copies; `None` when no live allocation or import holds them.
    pub fn device_range(&self, addr: u64, len: u64) -> Option<RawRange<'_>> {
        let live = crate::sync::lock(&self.live);
        let (&start, &n) = live.range(..=addr).next_back()?;
        if addr.checked_add(len)? > start.checked_add(n)? {
            return None;
        }
        // SAFETY: the bytes lie in live device memory of this process (allocated or imported,
        // not released); the range borrows this API, and a release ends only after the copies
        // through the memory ended (the owner's protocol, see `release`). Device copies name
        // the range as device memory.
        unsafe { RawRange::new(addr, len) }
    }

    /// `aclrtDeviceGetBareTgid`: this process's id as the runtime's pid allow-lists see it
    /// (differs from `getpid` in containers and VMs).
    ///
    /// # Errors
    /// The ACL code.
    pub fn bare_tgid(&self) -> Result<i32, AclCallError> {
        let mut pid = 0i32;
        // SAFETY: `pid` is a valid out-pointer.
        check("aclrtDeviceGetBareTgid", unsafe {
            (self.bare_tgid)(&mut pid)
        })?;
        Ok(pid)
    }
}

fn check(call: &'static str, rc: AclError) -> Result<(), AclCallError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(AclCallError { call, code: rc })
    }
}
