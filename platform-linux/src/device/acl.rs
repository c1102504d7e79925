//! The `acl` backend: Ascend HBM through the dlopen'ed ACL runtime (`libascendcl.so`).
//!
//! # Loading
//! The library is looked for at `$ASCEND_HOME_PATH/lib64/libascendcl.so`, then
//! `$ASCEND_HOME_PATH/runtime/lib64/libascendcl.so`, then as `libascendcl.so` on the loader path.
//! A file that exists under `ASCEND_HOME_PATH` but fails to load (or lacks a symbol) is an
//! error, never skipped for another copy. Every symbol is resolved at load (`sys::acl`). Then
//! `aclInit(NULL)` (an application that initialised ACL itself is fine), `aclrtSetDevice(id)`,
//! and the device context is remembered.
//!
//! # Contexts
//! ACL contexts are per thread, and the threads calling in here are the application's (copy
//! callers, whoever drops an object) or ours (the BM watcher). Every ACL call of this backend
//! runs inside a `ContextGuard`: it reads the thread's current context, switches to the
//! device's when it differs, and switches back afterwards, so the application's own choice of
//! device on its threads is never changed by smem (opening the device restores it too). The
//! common case (the thread already uses this device) costs one `aclrtGetCurrentContext`.
//!
//! # Device memory and the GVA
//! Device memory cannot be mapped into host address space, so an `acl` segment is never mapped
//! into the GVA: the HBM part of each window stays reserved (`PROT_NONE`) and keeps its GVA
//! only as a name. The BM runtime keeps, per window, the device address of that window's HBM
//! part (its own `aclrtMalloc` address, or the address `aclrtIpcMemImportByKey` gave for a
//! same-host peer) and translates `GVA -> device address` after validating the copy, then
//! copies with `aclrtMemcpy` / `aclrtMemcpy2d` and the right `aclrtMemcpyKind`.
//!
//! # Sharing between processes of one host
//! At allocation the owner exports an IPC key (`aclrtIpcMemGetExportKey`, pid allow-list on);
//! the key and length travel in the window record ([`DeviceDescriptor::AclIpc`]). At join the
//! owner allows the same-host members' processes (their `aclrtDeviceGetBareTgid`, published at
//! `smem_bm_init`) with `aclrtIpcMemSetImportPid`; each peer imports the key with
//! `aclrtIpcMemImportByKey` (peer access between the devices enabled by the import flag) and
//! closes it with `aclrtIpcMemClose` when the window goes (leave, destroy, death). The owner
//! closes its key and frees the memory when the object is destroyed; leave waits for every peer
//! to drop the window first, as the API requires (importers close before the exporter).
//!
//! # Errors
//! A failed ACL call becomes an `SM_ERROR` (`SM_MALLOC_FAILED` for `aclrtMalloc`) whose message
//! names the call and its ACL error code.

use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::sync::Arc;

use log::debug;
use smem_core::ErrorCode;

use super::{
    CopyDirection, Device, DeviceDescriptor, DeviceSegment, SegmentInner, Shape2d, copy_err,
};
use crate::sys::acl::{AclApi, AclCallError, Context, DeviceMem, MemcpyKind};
use crate::sys::copy::RawRange;
use crate::{Error, Result};

/// Env var naming the CANN installation (`.../ascend-toolkit/latest`).
pub const ASCEND_HOME_ENV: &str = "ASCEND_HOME_PATH";
/// The library name.
pub const LIBRARY: &str = "libascendcl.so";

/// Where the runtime is looked for, in order (module docs).
pub fn library_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(home) = std::env::var_os(ASCEND_HOME_ENV).filter(|h| !h.is_empty()) {
        let home = PathBuf::from(home);
        out.push(home.join("lib64").join(LIBRARY));
        out.push(home.join("runtime").join("lib64").join(LIBRARY));
    }
    out.push(PathBuf::from(LIBRARY));
    out
}

/// The Ascend device backend (module docs).
#[derive(Debug)]
pub struct AclDevice {
    shared: Arc<Shared>,
    device_id: u16,
}

/// What the device and its segments share: the API and the device context.
#[derive(Debug)]
pub(super) struct Shared {
    api: AclApi,
    ctx: Context,
    device_id: u16,
}

/// This device's context is current on the calling thread while it lives; the thread's
/// previous context (if it had one and it differs) is restored on drop.
pub(super) struct ContextGuard<'a> {
    shared: &'a Shared,
    restore: Option<Context>,
}

impl Drop for ContextGuard<'_> {
    fn drop(&mut self) {
        if let Some(prev) = self.restore {
            if let Err(e) = self.shared.api.set_context(prev) {
                log::warn!(
                    "acl: restoring the thread's device context: {}",
                    self.shared.fail(e)
                );
            }
        }
    }
}

impl Shared {
    /// Makes this device's context current on the calling thread (module docs).
    fn bind(&self) -> Result<ContextGuard<'_>> {
        // A thread without a context (an error here) gets ours and keeps it: there is nothing
        // to restore.
        let prev = self.api.current_context().ok();
        if prev == Some(self.ctx) {
            return Ok(ContextGuard {
                shared: self,
                restore: None,
            });
        }
        self.api.set_context(self.ctx).map_err(|e| self.fail(e))?;
        Ok(ContextGuard {
            shared: self,
            restore: prev,
        })
    }

    fn fail(&self, e: AclCallError) -> Error {
        let code = if e.call == "aclrtMalloc" {
            ErrorCode::MallocFailed
        } else {
            ErrorCode::Error
        };
        Error::new(
            code,
            format!(
                "Ascend device {} ({}): {e}",
                self.device_id,
                self.api.path()
            ),
        )
    }
}

impl AclDevice {
    /// Loads the runtime from the first of [`library_candidates`] and opens device
    /// `device_id`.
    ///
    /// # Errors
    /// `SM_NOT_SUPPORTED` when no runtime can be loaded (the message lists what was tried and
    /// why); `SM_ERROR` naming the ACL call that failed to initialise the device.
    pub fn open(device_id: u16) -> Result<Self> {
        let mut absent = Vec::new();
        for path in library_candidates() {
            if path.components().count() > 1 && !path.exists() {
                absent.push(path.display().to_string());
                continue;
            }
            return Self::open_path(&path.to_string_lossy(), device_id).map_err(|e| {
                if absent.is_empty() || e.code() != ErrorCode::NotSupported {
                    e
                } else {
                    e.context(format!("no {}", absent.join(" or ")))
                }
            });
        }
        // `library_candidates` always ends with the bare name, which returns above.
        Err(Error::new(
            ErrorCode::NotSupported,
            "cannot load the Ascend runtime: nowhere to look",
        ))
    }

    /// Loads the runtime from `path` (a file, or a bare name searched on the loader path) and
    /// opens device `device_id`.
    ///
    /// # Errors
    /// As [`AclDevice::open`].
    pub fn open_path(path: &str, device_id: u16) -> Result<Self> {
        let api = AclApi::open(path).map_err(|e| {
            Error::new(
                ErrorCode::NotSupported,
                format!("cannot load the Ascend runtime: {e}"),
            )
        })?;
        let init = |e: AclCallError| {
            Error::new(
                ErrorCode::Error,
                format!("Ascend device {device_id} ({path}): {e}"),
            )
        };
        api.init().map_err(init)?;
        // The caller's thread keeps its current context (module docs).
        let prev = api.current_context().ok();
        api.set_device(i32::from(device_id)).map_err(init)?;
        let ctx = match api.current_context() {
            Ok(c) => c,
            Err(e) => {
                let _ = api.reset_device(i32::from(device_id));
                return Err(init(e));
            }
        };
        if let Some(prev) = prev.filter(|&p| p != ctx) {
            if let Err(e) = api.set_context(prev) {
                let _ = api.reset_device(i32::from(device_id));
                return Err(init(e));
            }
        }
        let shared = Shared {
            api,
            ctx,
            device_id,
        };
        debug!("acl: device {device_id} opened through {path}");
        Ok(Self {
            shared: Arc::new(shared),
            device_id,
        })
    }

    /// The path the runtime was loaded from.
    pub fn library_path(&self) -> &str {
        self.shared.api.path()
    }

    fn copy_kind(dir: CopyDirection) -> MemcpyKind {
        match dir {
            CopyDirection::HostToHost => MemcpyKind::HostToHost,
            CopyDirection::HostToDevice => MemcpyKind::HostToDevice,
            CopyDirection::DeviceToHost => MemcpyKind::DeviceToHost,
            CopyDirection::DeviceToDevice => MemcpyKind::DeviceToDevice,
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Err(e) = self.api.reset_device(i32::from(self.device_id)) {
            debug!("acl: {e}");
        }
    }
}

/// An `acl` segment: device memory, owned (allocated and exported here) or imported.
#[derive(Debug)]
pub(super) struct AclSegment {
    shared: Arc<Shared>,
    /// Taken when dropped.
    mem: Option<DeviceMem>,
    addr: u64,
    len: u64,
}

impl AclSegment {
    fn new(shared: &Arc<Shared>, mem: DeviceMem) -> Self {
        Self {
            shared: Arc::clone(shared),
            addr: mem.addr(),
            len: mem.len(),
            mem: Some(mem),
        }
    }

    pub(super) fn addr(&self) -> u64 {
        self.addr
    }

    pub(super) fn len(&self) -> u64 {
        self.len
    }

    fn key(&self) -> &CStr {
        self.mem.as_ref().map_or(c"", DeviceMem::key)
    }

    pub(super) fn descriptor(&self) -> DeviceDescriptor {
        DeviceDescriptor::AclIpc {
            len: self.len,
            key: self.key().to_string_lossy().into_owned(),
        }
    }
}

impl Drop for AclSegment {
    fn drop(&mut self) {
        let Some(mem) = self.mem.take() else { return };
        let what = if mem.owned() { "exported" } else { "imported" };
        let _ctx = match self.shared.bind() {
            Ok(g) => g,
            Err(e) => {
                log::warn!("acl: cannot release {what} device memory: {e}");
                return;
            }
        };
        // The runtime stopped every copy through this memory (window drained) before dropping
        // the segment.
        let [close, free] = self.shared.api.release(mem);
        if let Some(e) = close {
            log::warn!("acl: closing the {what} IPC key: {}", self.shared.fail(e));
        }
        if let Some(e) = free {
            log::warn!("acl: {}", self.shared.fail(e));
        }
    }
}

impl Device for AclDevice {
    fn name(&self) -> &'static str {
        "acl"
    }

    fn device_range(&self, addr: u64, len: u64) -> Option<RawRange<'_>> {
        self.shared.api.device_range(addr, len)
    }

    fn device_id(&self) -> u16 {
        self.device_id
    }

    fn alloc(&self, name: &str, len: u64) -> Result<DeviceSegment> {
        let s = &self.shared;
        let n = usize::try_from(len)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| Error::invalid(format!("{name}: bad device segment length {len:#x}")))?;
        let _ctx = s.bind()?;
        let mem = s.api.alloc_exported(n).map_err(|e| {
            if e.call == "aclrtMalloc" {
                s.fail(e).context(format!("{name}: {len:#x} bytes"))
            } else {
                s.fail(e).context(name)
            }
        })?;
        Ok(DeviceSegment {
            inner: SegmentInner::Acl(AclSegment::new(s, mem)),
        })
    }

    fn share(&self, seg: &DeviceSegment, pids: &[i32]) -> Result<()> {
        let SegmentInner::Acl(a) = &seg.inner else {
            return Ok(());
        };
        if pids.is_empty() {
            return Ok(());
        }
        let _ctx = self.shared.bind()?;
        self.shared
            .api
            .set_import_pids(a.key(), pids)
            .map_err(|e| self.shared.fail(e))
    }

    fn sharing_pid(&self) -> Result<i32> {
        let _ctx = self.shared.bind()?;
        self.shared.api.bare_tgid().map_err(|e| self.shared.fail(e))
    }

    fn open_peer(&self, desc: &DeviceDescriptor) -> Result<DeviceSegment> {
        let DeviceDescriptor::AclIpc { len, key } = desc else {
            return Err(Error::invalid(format!(
                "the acl device cannot open a {desc}: the peer uses another device backend; use the same SMEM_DEVICE on every rank"
            )));
        };
        let ckey = CString::new(key.as_str())
            .map_err(|_| Error::invalid("IPC key with a NUL byte in a window record"))?;
        let s = &self.shared;
        let _ctx = s.bind()?;
        let mem = s.api.import(ckey, *len).map_err(|e| s.fail(e))?;
        Ok(DeviceSegment {
            inner: SegmentInner::Acl(AclSegment::new(s, mem)),
        })
    }

    fn copy_2d(
        &self,
        src: RawRange<'_>,
        dst: RawRange<'_>,
        shape: Shape2d,
        dir: CopyDirection,
    ) -> Result<()> {
        let c = shape.check(src, dst).map_err(copy_err)?;
        match dir {
            CopyDirection::HostToHost => {
                c.run();
                Ok(())
            }
            CopyDirection::HostToDevice | CopyDirection::DeviceToHost if shape.height > 1 => {
                let _ctx = self.shared.bind()?;
                self.shared
                    .api
                    .memcpy_2d(&c, Self::copy_kind(dir))
                    .map_err(|e| self.shared.fail(e))
            }
            // One row, or device to device (aclrtMemcpy2d supports host<->device only): one
            // aclrtMemcpy per row.
            _ => {
                let _ctx = self.shared.bind()?;
                self.shared
                    .api
                    .memcpy_rows(&c, Self::copy_kind(dir))
                    .map_err(|(row, e)| {
                        let e = self.shared.fail(e);
                        if shape.height > 1 {
                            e.context(format!("2D copy row {row}"))
                        } else {
                            e
                        }
                    })
            }
        }
    }
}
