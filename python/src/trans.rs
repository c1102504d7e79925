//! `smem.TransferEngine` (SPEC 6.2 / 6.3): the reference's `TransferEngine` (`mf_adapter`,
//! `memfabric_hybrid`) over `smem_trans_*`.

use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::net::TcpListener;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::addr::{self, Address};
use crate::common::c_string;
use crate::error::{self, SM_INVALID_PARAM, SM_NOT_INITIALIZED, SM_NOT_SUPPORTED, SM_REPEAT_CALL};

/// `SMEMB_DATA_OP_HOST_TCP`: always enabled, the transport between processes and hosts.
const HOST_TCP: u32 = 1 << 2;

/// The `smem_trans_role_t` of a reference role name.
fn role_of(role: &str) -> Option<u32> {
    match role.to_ascii_lowercase().as_str() {
        "prefill" | "sender" => Some(smem::SMEM_TRANS_SENDER),
        "decode" | "receiver" => Some(smem::SMEM_TRANS_RECEIVER),
        "both" => Some(smem::SMEM_TRANS_BOTH),
        _ => None,
    }
}

/// A `usize` of an address (the C API takes `size_t` sizes and pointers).
fn usize_of(v: u64, what: &str) -> PyResult<usize> {
    usize::try_from(v)
        .map_err(|_| PyValueError::new_err(format!("{what} {v} does not fit a size_t")))
}

/// Read or write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Write,
    Read,
}

/// Point-to-point reads and writes between named engines' registered memory (KV-cache
/// blocks of disaggregated prefill/decode). Create one per process, initialize() it with the
/// store url and a unique session id, register memory, and move bytes with
/// transfer_sync_write / transfer_sync_read (or their batch and async forms).
#[pyclass(module = "smem", subclass)]
pub(crate) struct TransferEngine {
    /// The `smem_trans_t`; 0 before `initialize` / after `destroy`.
    handle: usize,
    /// This engine's session id.
    session: String,
    /// A port named by `get_rpc_port` before `initialize` picked one (0: none yet).
    rpc_port: u16,
    /// Objects whose buffers are registered, by address: kept alive while registered.
    owners: HashMap<u64, Py<PyAny>>,
    /// Objects whose buffers queued transfers use: kept alive until `wait`.
    pending: Vec<Py<PyAny>>,
}

impl TransferEngine {
    fn h(&self, py: Python<'_>, what: &str) -> Result<usize, i32> {
        if self.handle == 0 {
            error::set_binding_error(
                SM_NOT_INITIALIZED,
                &format!(
                    "TransferEngine.{what}: call initialize(store_url, session_id, role, device_id) first"
                ),
            );
            let _ = py;
            return Err(SM_NOT_INITIALIZED);
        }
        Ok(self.handle)
    }

    /// Runs one transfer (`submit`: queued) of `length` bytes; returns the C status.
    #[allow(clippy::too_many_arguments)]
    fn one(
        &mut self,
        py: Python<'_>,
        dir: Dir,
        dest_session: &str,
        buffer: &Bound<'_, PyAny>,
        peer_buffer: u64,
        length: u64,
        stream: Option<u64>,
        flags: u32,
    ) -> PyResult<i32> {
        let h = match self.h(py, "transfer") {
            Ok(h) => h,
            Err(rc) => return Ok(rc),
        };
        let local: Address = buffer.extract()?;
        let l = local.checked(length, dir == Dir::Read, "buffer")?;
        let peer = c_string(dest_session, "dest_session")?;
        let (l, r, n) = (
            usize_of(l, "buffer")?,
            usize_of(peer_buffer, "peer_buffer")?,
            usize_of(length, "length")?,
        );
        let s = stream.map(|s| usize_of(s, "stream")).transpose()?;
        let p = peer.as_ptr() as usize;
        // SAFETY: `p` is a NUL-terminated string alive for the call; the local range is memory
        // the caller named (a buffer argument was checked above and is held until we return,
        // or until `wait` for a queued transfer); the remote range is checked by its owner.
        let rc = py.allow_threads(|| unsafe {
            let th = h as smem::smem_trans_t;
            let peer = p as *const c_char;
            match (dir, s) {
                (Dir::Write, None) => {
                    smem::smem_trans_write(th, l as *const c_void, peer, r as *mut c_void, n, flags)
                }
                (Dir::Read, None) => {
                    smem::smem_trans_read(th, l as *mut c_void, peer, r as *const c_void, n, flags)
                }
                (Dir::Write, Some(s)) => smem::smem_trans_write_submit(
                    th,
                    l as *const c_void,
                    peer,
                    r as *mut c_void,
                    n,
                    s as *mut c_void,
                    flags,
                ),
                (Dir::Read, Some(s)) => smem::smem_trans_read_submit(
                    th,
                    l as *mut c_void,
                    peer,
                    r as *const c_void,
                    n,
                    s as *mut c_void,
                    flags,
                ),
            }
        });
        if rc == 0 && stream.is_some() && matches!(local, Address::Buf(_)) {
            self.pending.push(buffer.clone().unbind());
        }
        Ok(error::status(rc))
    }

    /// Runs one batch (`submit`: queued); returns the C status.
    #[allow(clippy::too_many_arguments)]
    fn batch(
        &mut self,
        py: Python<'_>,
        dir: Dir,
        dest_session: &str,
        buffers: &Bound<'_, PyAny>,
        peer_buffers: Vec<u64>,
        lengths: Vec<u64>,
        stream: Option<u64>,
        flags: u32,
    ) -> PyResult<i32> {
        let h = match self.h(py, "batch transfer") {
            Ok(h) => h,
            Err(rc) => return Ok(rc),
        };
        let objs: Vec<Bound<'_, PyAny>> = buffers.extract()?;
        let locals: Vec<Address> = objs.iter().map(|o| o.extract()).collect::<PyResult<_>>()?;
        if peer_buffers.len() != locals.len() {
            return Err(PyValueError::new_err(format!(
                "{} buffers but {} peer_buffers",
                locals.len(),
                peer_buffers.len()
            )));
        }
        let l = addr::checked_all(&locals, &lengths, dir == Dir::Read, "buffers")?;
        let Ok(count) = u32::try_from(l.len()) else {
            error::set_binding_error(
                SM_INVALID_PARAM,
                &format!("a batch of {} entries is too large", l.len()),
            );
            return Ok(SM_INVALID_PARAM);
        };
        let to_usize = |v: &[u64], what: &str| -> PyResult<Vec<usize>> {
            v.iter().map(|&x| usize_of(x, what)).collect()
        };
        let (l, mut r, mut n) = (
            to_usize(&l, "buffers")?,
            to_usize(&peer_buffers, "peer_buffers")?,
            to_usize(&lengths, "lengths")?,
        );
        let s = stream.map(|s| usize_of(s, "stream")).transpose()?;
        let peer = c_string(dest_session, "dest_session")?;
        let (p, la, ra, na) = (
            peer.as_ptr() as usize,
            l.as_ptr() as usize,
            r.as_mut_ptr() as usize,
            n.as_mut_ptr() as usize,
        );
        // SAFETY: `la`, `ra`, `na` point to `count` pointer-sized entries each (`usize` has the
        // layout of a pointer), alive for the call; `p` is a NUL-terminated string; the local
        // ranges are memory the caller named (buffers checked above and held until we return,
        // or until `wait` when queued); remote ranges are checked by their owner.
        let rc = py.allow_threads(|| unsafe {
            let th = h as smem::smem_trans_t;
            let peer = p as *const c_char;
            let sizes = na as *mut usize;
            match (dir, s) {
                (Dir::Write, None) => smem::smem_trans_batch_write(
                    th,
                    la as *const *const c_void,
                    peer,
                    ra as *mut *mut c_void,
                    sizes,
                    count,
                    flags,
                ),
                (Dir::Read, None) => smem::smem_trans_batch_read(
                    th,
                    la as *mut *mut c_void,
                    peer,
                    ra as *const *const c_void,
                    sizes,
                    count,
                    flags,
                ),
                (Dir::Write, Some(s)) => smem::smem_trans_batch_write_submit(
                    th,
                    la as *const *const c_void,
                    peer,
                    ra as *mut *mut c_void,
                    sizes,
                    count,
                    s as *mut c_void,
                    flags,
                ),
                (Dir::Read, Some(s)) => smem::smem_trans_batch_read_submit(
                    th,
                    la as *mut *mut c_void,
                    peer,
                    ra as *const *const c_void,
                    sizes,
                    count,
                    s as *mut c_void,
                    flags,
                ),
            }
        });
        if rc == 0 && stream.is_some() {
            for (o, a) in objs.iter().zip(&locals) {
                if matches!(a, Address::Buf(_)) {
                    self.pending.push(o.clone().unbind());
                }
            }
        }
        Ok(error::status(rc))
    }

    /// Registers one range; keeps a buffer's owner alive while registered.
    fn register_one(
        &mut self,
        py: Python<'_>,
        h: usize,
        obj: &Bound<'_, PyAny>,
        capacity: u64,
    ) -> PyResult<i32> {
        let a: Address = obj.extract()?;
        let at = a.checked(capacity, false, "buffer_addr")?;
        let (p, n) = (
            usize_of(at, "buffer_addr")?,
            usize_of(capacity, "capacity")?,
        );
        // SAFETY: registration records the range; the caller keeps the memory valid while it is
        // registered (a buffer's owner is kept alive below).
        let rc = py.allow_threads(|| unsafe {
            smem::smem_trans_register_mem(h as smem::smem_trans_t, p as *mut c_void, n, 0)
        });
        if rc == 0 && matches!(a, Address::Buf(_)) {
            self.owners.insert(at, obj.clone().unbind());
        }
        Ok(error::status(rc))
    }
}

#[pymethods]
impl TransferEngine {
    #[new]
    fn new() -> Self {
        Self {
            handle: 0,
            session: String::new(),
            rpc_port: 0,
            owners: HashMap::new(),
            pending: Vec::new(),
        }
    }

    /// Create the engine (smem_trans_init + smem_trans_create) and join the group of engines
    /// sharing the config store at store_url (started by create_config_store or smem-store).
    ///
    /// Arguments:
    ///     store_url (str): tcp://ip:port of the config store
    ///     session_id (str): this engine's unique name in the group, typically "ip:port"
    ///     role (str): "Prefill" (sender), "Decode" (receiver) or "Both"
    ///     device_id (int): device id (recorded)
    ///     data_op_type (TransDataOpType): data engines, default SDMA (same-host paths); the TCP
    ///         transport is always enabled too
    ///     store_server_role (str), nic (str): accepted for compatibility, not used
    /// Returns:
    ///     0 if successful, else a negative SM_* code.
    #[pyo3(signature = (store_url, session_id, role, device_id, data_op_type = 1, store_server_role = "Decode", nic = ""))]
    #[allow(clippy::too_many_arguments)]
    fn initialize(
        &mut self,
        py: Python<'_>,
        store_url: &str,
        session_id: &str,
        role: &str,
        device_id: u32,
        data_op_type: u32,
        store_server_role: &str,
        nic: &str,
    ) -> PyResult<i32> {
        let _ = (store_server_role, nic);
        if self.handle != 0 {
            error::set_binding_error(
                SM_REPEAT_CALL,
                &format!(
                    "TransferEngine.initialize: already initialized as {:?}",
                    self.session
                ),
            );
            return Ok(SM_REPEAT_CALL);
        }
        let Some(role_value) = role_of(role) else {
            error::set_binding_error(
                SM_INVALID_PARAM,
                &format!(
                    "TransferEngine.initialize: role {role:?} is not \"Prefill\", \"Decode\" or \"Both\""
                ),
            );
            return Ok(SM_INVALID_PARAM);
        };
        let (url, id) = (
            c_string(store_url, "store_url")?,
            c_string(session_id, "session_id")?,
        );
        let mut cfg = std::mem::MaybeUninit::<smem::smem_trans_config_t>::zeroed();
        let at = cfg.as_mut_ptr() as usize;
        // SAFETY: `at` points to writable memory of the size of `smem_trans_config_t`.
        let rc = py.allow_threads(|| unsafe {
            smem::smem_trans_config_init(at as *mut smem::smem_trans_config_t)
        });
        if rc != 0 {
            return Ok(error::status(rc));
        }
        // SAFETY: `smem_trans_config_init` returned 0, so it filled every field.
        let mut cfg = unsafe { cfg.assume_init() };
        cfg.role = role_value;
        cfg.deviceId = device_id;
        cfg.dataOpType = data_op_type | HOST_TCP;
        let c = &raw const cfg as usize;
        // SAFETY: `c` points to a valid config alive for the call.
        let rc = py.allow_threads(|| unsafe {
            smem::smem_trans_init(c as *const smem::smem_trans_config_t)
        });
        // Process-wide: a second engine of this process may have other settings.
        if rc != 0 && rc != SM_REPEAT_CALL {
            return Ok(error::status(rc));
        }
        let (u, i) = (url.as_ptr() as usize, id.as_ptr() as usize);
        // SAFETY: `u` and `i` are NUL-terminated strings and `c` a valid config, all alive for
        // the call.
        let h = py.allow_threads(|| unsafe {
            smem::smem_trans_create(
                u as *const c_char,
                i as *const c_char,
                c as *const smem::smem_trans_config_t,
            ) as usize
        });
        if h == 0 {
            error::clear_binding_error();
            return Ok(error::code_of_message(&crate::ffi::last_c_error()));
        }
        self.handle = h;
        self.session = session_id.to_owned();
        Ok(0)
    }

    /// The port of this engine's session id ("ip:port"); before initialize, a free TCP port
    /// picked once, to build a session id from.
    fn get_rpc_port(&mut self) -> PyResult<u16> {
        if let Some(port) = self
            .session
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
        {
            return Ok(port);
        }
        if self.rpc_port == 0 {
            let l = TcpListener::bind(("0.0.0.0", 0))
                .map_err(|e| PyValueError::new_err(format!("get_rpc_port: {e}")))?;
            self.rpc_port = l
                .local_addr()
                .map_err(|e| PyValueError::new_err(format!("get_rpc_port: {e}")))?
                .port();
        }
        Ok(self.rpc_port)
    }

    /// Register [buffer_addr, buffer_addr + capacity) (an int, or a buffer-protocol object
    /// kept alive while registered) as a legal peer_buffer for other engines.
    ///
    /// Returns:
    ///     0 if successful, else a negative SM_* code.
    fn register_memory(
        &mut self,
        py: Python<'_>,
        buffer_addr: &Bound<'_, PyAny>,
        capacity: u64,
    ) -> PyResult<i32> {
        match self.h(py, "register_memory") {
            Ok(h) => self.register_one(py, h, buffer_addr, capacity),
            Err(rc) => Ok(rc),
        }
    }

    /// Register several ranges (see register_memory); stops at the first failure.
    ///
    /// Returns:
    ///     0 if successful, else a negative SM_* code.
    fn batch_register_memory(
        &mut self,
        py: Python<'_>,
        buffer_addrs: Vec<Bound<'_, PyAny>>,
        capacities: Vec<u64>,
    ) -> PyResult<i32> {
        let h = match self.h(py, "batch_register_memory") {
            Ok(h) => h,
            Err(rc) => return Ok(rc),
        };
        if buffer_addrs.len() != capacities.len() {
            return Err(PyValueError::new_err(format!(
                "{} buffer_addrs but {} capacities",
                buffer_addrs.len(),
                capacities.len()
            )));
        }
        for (obj, &cap) in buffer_addrs.iter().zip(&capacities) {
            let rc = self.register_one(py, h, obj, cap)?;
            if rc != 0 {
                return Ok(rc);
            }
        }
        Ok(0)
    }

    /// Withdraw a registration (later requests into it are refused by this engine).
    ///
    /// Returns:
    ///     0 if successful, else a negative SM_* code.
    fn unregister_memory(&mut self, py: Python<'_>, buffer_addr: Address) -> PyResult<i32> {
        let h = match self.h(py, "unregister_memory") {
            Ok(h) => h,
            Err(rc) => return Ok(rc),
        };
        let at = buffer_addr.value();
        let p = usize_of(at, "buffer_addr")?;
        // SAFETY: plain values; the C side looks the address up.
        let rc = py.allow_threads(|| unsafe {
            smem::smem_trans_deregister_mem(h as smem::smem_trans_t, p as *mut c_void)
        });
        if rc == 0 {
            self.owners.remove(&at);
        }
        Ok(error::status(rc))
    }

    /// Write length bytes from buffer (local: an int or a buffer-protocol object) to
    /// peer_buffer of the engine dest_session; returns once the bytes are in place there.
    ///
    /// Returns:
    ///     0 if successful, else a negative SM_* code.
    #[pyo3(signature = (dest_session, buffer, peer_buffer, length, flags = 0))]
    fn transfer_sync_write(
        &mut self,
        py: Python<'_>,
        dest_session: &str,
        buffer: &Bound<'_, PyAny>,
        peer_buffer: u64,
        length: u64,
        flags: u32,
    ) -> PyResult<i32> {
        self.one(
            py,
            Dir::Write,
            dest_session,
            buffer,
            peer_buffer,
            length,
            None,
            flags,
        )
    }

    /// Read length bytes from peer_buffer of the engine dest_session into buffer.
    ///
    /// Returns:
    ///     0 if successful, else a negative SM_* code.
    #[pyo3(signature = (dest_session, buffer, peer_buffer, length, flags = 0))]
    fn transfer_sync_read(
        &mut self,
        py: Python<'_>,
        dest_session: &str,
        buffer: &Bound<'_, PyAny>,
        peer_buffer: u64,
        length: u64,
        flags: u32,
    ) -> PyResult<i32> {
        self.one(
            py,
            Dir::Read,
            dest_session,
            buffer,
            peer_buffer,
            length,
            None,
            flags,
        )
    }

    /// Write many ranges to one engine: buffers[i] -> peer_buffers[i], lengths[i] bytes; all
    /// checked first, then coalesced and pipelined.
    ///
    /// Returns:
    ///     0 if successful, else a negative SM_* code.
    #[pyo3(signature = (dest_session, buffers, peer_buffers, lengths, flags = 0))]
    fn batch_transfer_sync_write(
        &mut self,
        py: Python<'_>,
        dest_session: &str,
        buffers: &Bound<'_, PyAny>,
        peer_buffers: Vec<u64>,
        lengths: Vec<u64>,
        flags: u32,
    ) -> PyResult<i32> {
        self.batch(
            py,
            Dir::Write,
            dest_session,
            buffers,
            peer_buffers,
            lengths,
            None,
            flags,
        )
    }

    /// Read many ranges from one engine: peer_buffers[i] -> buffers[i], lengths[i] bytes.
    ///
    /// Returns:
    ///     0 if successful, else a negative SM_* code.
    #[pyo3(signature = (dest_session, buffers, peer_buffers, lengths, flags = 0))]
    fn batch_transfer_sync_read(
        &mut self,
        py: Python<'_>,
        dest_session: &str,
        buffers: &Bound<'_, PyAny>,
        peer_buffers: Vec<u64>,
        lengths: Vec<u64>,
        flags: u32,
    ) -> PyResult<i32> {
        self.batch(
            py,
            Dir::Read,
            dest_session,
            buffers,
            peer_buffers,
            lengths,
            None,
            flags,
        )
    }

    /// Queue a write (stream 0: on the engine; a device stream needs the acl backend); wait()
    /// completes it. The buffer must stay valid until then.
    ///
    /// Returns:
    ///     0 if queued, else a negative SM_* code.
    #[pyo3(signature = (dest_session, buffer, peer_buffer, length, stream = 0, flags = 0))]
    #[allow(clippy::too_many_arguments)]
    fn transfer_async_write_submit(
        &mut self,
        py: Python<'_>,
        dest_session: &str,
        buffer: &Bound<'_, PyAny>,
        peer_buffer: u64,
        length: u64,
        stream: u64,
        flags: u32,
    ) -> PyResult<i32> {
        self.one(
            py,
            Dir::Write,
            dest_session,
            buffer,
            peer_buffer,
            length,
            Some(stream),
            flags,
        )
    }

    /// Queue a read; wait() completes it (see transfer_async_write_submit).
    ///
    /// Returns:
    ///     0 if queued, else a negative SM_* code.
    #[pyo3(signature = (dest_session, buffer, peer_buffer, length, stream = 0, flags = 0))]
    #[allow(clippy::too_many_arguments)]
    fn transfer_async_read_submit(
        &mut self,
        py: Python<'_>,
        dest_session: &str,
        buffer: &Bound<'_, PyAny>,
        peer_buffer: u64,
        length: u64,
        stream: u64,
        flags: u32,
    ) -> PyResult<i32> {
        self.one(
            py,
            Dir::Read,
            dest_session,
            buffer,
            peer_buffer,
            length,
            Some(stream),
            flags,
        )
    }

    /// Queue a batch of writes; wait() completes it.
    ///
    /// Returns:
    ///     0 if queued, else a negative SM_* code.
    #[pyo3(signature = (dest_session, buffers, peer_buffers, lengths, stream = 0, flags = 0))]
    #[allow(clippy::too_many_arguments)]
    fn batch_transfer_async_write_submit(
        &mut self,
        py: Python<'_>,
        dest_session: &str,
        buffers: &Bound<'_, PyAny>,
        peer_buffers: Vec<u64>,
        lengths: Vec<u64>,
        stream: u64,
        flags: u32,
    ) -> PyResult<i32> {
        self.batch(
            py,
            Dir::Write,
            dest_session,
            buffers,
            peer_buffers,
            lengths,
            Some(stream),
            flags,
        )
    }

    /// Queue a batch of reads; wait() completes it.
    ///
    /// Returns:
    ///     0 if queued, else a negative SM_* code.
    #[pyo3(signature = (dest_session, buffers, peer_buffers, lengths, stream = 0, flags = 0))]
    #[allow(clippy::too_many_arguments)]
    fn batch_transfer_async_read_submit(
        &mut self,
        py: Python<'_>,
        dest_session: &str,
        buffers: &Bound<'_, PyAny>,
        peer_buffers: Vec<u64>,
        lengths: Vec<u64>,
        stream: u64,
        flags: u32,
    ) -> PyResult<i32> {
        self.batch(
            py,
            Dir::Read,
            dest_session,
            buffers,
            peer_buffers,
            lengths,
            Some(stream),
            flags,
        )
    }

    /// Wait until every transfer this thread queued on this engine is done (smem_trans_wait).
    ///
    /// Returns:
    ///     0, or the first error among them.
    fn wait(&mut self, py: Python<'_>) -> i32 {
        let h = match self.h(py, "wait") {
            Ok(h) => h,
            Err(rc) => return rc,
        };
        // SAFETY: plain handle; a stale one is a clean error.
        let rc = py.allow_threads(|| unsafe { smem::smem_trans_wait(h as smem::smem_trans_t) });
        self.pending.clear();
        error::status(rc)
    }

    /// Quantised batch writes are a device feature of the reference: SM_NOT_SUPPORTED here.
    #[pyo3(signature = (*args, **kwargs))]
    fn batch_transfer_write_with_quant(
        &self,
        args: &Bound<'_, pyo3::types::PyTuple>,
        kwargs: Option<&Bound<'_, pyo3::types::PyDict>>,
    ) -> i32 {
        let _ = (args, kwargs);
        error::set_binding_error(
            SM_NOT_SUPPORTED,
            "batch_transfer_write_with_quant: quantised device transfers are not supported",
        );
        SM_NOT_SUPPORTED
    }

    /// Destroy the engine (smem_trans_destroy): withdraws it from its group. Idempotent.
    fn destroy(&mut self, py: Python<'_>) {
        let h = std::mem::take(&mut self.handle);
        if h != 0 {
            // SAFETY: a handle from `smem_trans_create`, destroyed once.
            py.allow_threads(|| unsafe { smem::smem_trans_destroy(h as smem::smem_trans_t, 0) });
        }
        self.owners.clear();
        self.pending.clear();
    }

    /// Same as destroy() (the reference's name).
    #[pyo3(name = "unInitialize")]
    fn un_initialize(&mut self, py: Python<'_>) {
        self.destroy(py);
    }

    fn __repr__(&self) -> String {
        if self.handle == 0 {
            "<smem.TransferEngine (not initialized)>".to_owned()
        } else {
            format!("<smem.TransferEngine {:?}>", self.session)
        }
    }
}

impl Drop for TransferEngine {
    fn drop(&mut self) {
        let h = std::mem::take(&mut self.handle);
        if h != 0 {
            // Without the GIL: the engine's threads may be waiting for it to log.
            Python::with_gil(|py| {
                // SAFETY: a handle from `smem_trans_create`, destroyed once.
                py.allow_threads(|| unsafe {
                    smem::smem_trans_destroy(h as smem::smem_trans_t, 0)
                });
            });
        }
    }
}

/// Registers `TransferEngine`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("HAS_TRANSFER_ENGINE", true)?;
    m.add_class::<TransferEngine>()
}
