//! `smem.bm`: BM pools (SPEC 2.2, 6.1) with the reference's `memfabric_hybrid.bm` surface.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::ThreadId;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::addr::{self, Address};
use crate::common::c_string;
use crate::error::{self, SM_INVALID_PARAM, SM_NOT_INITIALIZED, SM_NOT_SUPPORTED};

/// Window parts are rounded up to this (SPEC 2.2).
const PART_ALIGN: u64 = 2 << 20;
/// `BmMemType`: the HBM part of a window, the DRAM part, and their reference aliases.
const MEM_LOCAL_DEVICE: u32 = 0;
const MEM_LOCAL_HOST: u32 = 1;
const MEM_DEVICE: u32 = 2;
const MEM_HOST: u32 = 3;
/// `SMEM_ASYNC_COPY_FLAG`.
const ASYNC_COPY_FLAG: u32 = smem::SMEM_ASYNC_COPY_FLAG;

/// `world_size` of the last successful `bm.initialize`: `create` makes a pool over all ranks.
static WORLD_SIZE: AtomicU32 = AtomicU32::new(0);

fn round_part(n: u64) -> u64 {
    n.div_ceil(PART_ALIGN).saturating_mul(PART_ALIGN)
}

/// The defaults of `smem_bm_config_init`, as `BmConfig` field names.
#[pyfunction]
fn config_defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let mut c = std::mem::MaybeUninit::<smem::smem_bm_config_t>::zeroed();
    let at = c.as_mut_ptr() as usize;
    // SAFETY: `at` points to writable memory of the size of `smem_bm_config_t`.
    let rc = py
        .allow_threads(|| unsafe { smem::smem_bm_config_init(at as *mut smem::smem_bm_config_t) });
    if rc != 0 {
        return Err(error::from_c_failure(py, "smem_bm_config_init"));
    }
    // SAFETY: `smem_bm_config_init` returned 0, so it filled every field.
    let c = unsafe { c.assume_init() };
    let d = PyDict::new(py);
    d.set_item("init_timeout", c.initTimeout)?;
    d.set_item("create_timeout", c.createTimeout)?;
    d.set_item("operation_timeout", c.controlOperationTimeout)?;
    d.set_item("start_store", c.startConfigStore != 0)?;
    d.set_item("start_store_only", c.startConfigStoreOnly != 0)?;
    d.set_item("dynamic_world_size", c.dynamicWorldSize != 0)?;
    d.set_item("unified_address_space", c.unifiedAddressSpace != 0)?;
    d.set_item("auto_ranking", c.autoRanking != 0)?;
    d.set_item("rank_id", c.rankId)?;
    d.set_item("flags", c.flags)?;
    Ok(d)
}

/// Reads a `BmConfig` (any object with its attributes) into the C struct.
fn c_config(config: &Bound<'_, PyAny>) -> PyResult<smem::smem_bm_config_t> {
    let flag =
        |name: &str| -> PyResult<u8> { Ok(u8::from(config.getattr(name)?.extract::<bool>()?)) };
    Ok(smem::smem_bm_config_t {
        initTimeout: config.getattr("init_timeout")?.extract()?,
        createTimeout: config.getattr("create_timeout")?.extract()?,
        controlOperationTimeout: config.getattr("operation_timeout")?.extract()?,
        startConfigStore: flag("start_store")?,
        startConfigStoreOnly: flag("start_store_only")?,
        dynamicWorldSize: flag("dynamic_world_size")?,
        unifiedAddressSpace: flag("unified_address_space")?,
        autoRanking: flag("auto_ranking")?,
        rankId: config.getattr("rank_id")?.extract()?,
        flags: config.getattr("flags")?.extract()?,
    })
}

/// Initialize the smem big memory library (`smem_bm_init`): waits until all world_size ranks
/// registered (bounded by config.init_timeout).
///
/// Arguments:
///     store_url (str): config store url, tcp://ip:port or tcp://[ip]:port
///     world_size (int): number of ranks taking part
///     device_id (int): device id
///     config (BmConfig): settings
/// Returns:
///     0 if successful, else a negative SM_* code (see smem.get_last_err_msg()).
#[pyfunction]
fn initialize(
    py: Python<'_>,
    store_url: &str,
    world_size: u32,
    device_id: u16,
    config: &Bound<'_, PyAny>,
) -> PyResult<i32> {
    let url = c_string(store_url, "store_url")?;
    let cfg = c_config(config)?;
    let (u, c) = (url.as_ptr() as usize, &raw const cfg as usize);
    // SAFETY: `u` is a NUL-terminated string and `c` a valid config, both alive for the call.
    let rc = py.allow_threads(|| unsafe {
        smem::smem_bm_init(
            u as *const _,
            world_size,
            device_id,
            c as *const smem::smem_bm_config_t,
        )
    });
    if rc == 0 {
        WORLD_SIZE.store(world_size, Ordering::Relaxed);
    }
    Ok(error::status(rc))
}

/// Un-initialize the smem big memory library (`smem_bm_uninit`).
#[pyfunction]
#[pyo3(signature = (flags = 0))]
fn uninitialize(py: Python<'_>, flags: u32) {
    // SAFETY: plain integer argument.
    py.allow_threads(|| unsafe { smem::smem_bm_uninit(flags) });
    WORLD_SIZE.store(0, Ordering::Relaxed);
}

/// The rank id of this process, assigned during initialize; UINT32_MAX (4294967295) on error.
#[pyfunction]
fn bm_rank_id(py: Python<'_>) -> u32 {
    // SAFETY: no arguments.
    py.allow_threads(|| unsafe { smem::smem_bm_get_rank_id() })
}

/// Create a big memory object over all world_size ranks (`smem_bm_create`). Sizes are rounded
/// up to 2 MiB; every member must give the same sizes.
///
/// Arguments:
///     id (int): object id, 0..63, unique in this process
///     local_dram_size (int): bytes of host memory this rank contributes
///     local_hbm_size (int): bytes of device memory this rank contributes, default 0
///     data_op_type (BmDataOpType): data engines, default SDMA
///     flags (int): default 0
/// Returns:
///     a BigMemory; raises smem.SmemError on failure.
#[pyfunction]
#[pyo3(signature = (id, local_dram_size, local_hbm_size = 0, data_op_type = 1, flags = 0))]
fn create(
    py: Python<'_>,
    id: u32,
    local_dram_size: u64,
    local_hbm_size: u64,
    data_op_type: u32,
    flags: u32,
) -> PyResult<BigMemory> {
    let members = WORLD_SIZE.load(Ordering::Relaxed);
    if members == 0 {
        return Err(error::binding_failure(
            py,
            SM_NOT_INITIALIZED,
            "smem.bm.create: call smem.bm.initialize(store_url, world_size, device_id, config) first",
        ));
    }
    // SAFETY: plain integer arguments.
    let h = py.allow_threads(|| unsafe {
        smem::smem_bm_create(
            id,
            members,
            data_op_type,
            local_dram_size,
            local_hbm_size,
            flags,
        ) as usize
    });
    if h == 0 {
        return Err(error::from_c_failure(py, "smem_bm_create"));
    }
    Ok(BigMemory {
        handle: h,
        dram: round_part(local_dram_size),
        hbm: round_part(local_hbm_size),
        destroyed: false,
        owners: HashMap::new(),
        pending: HashMap::new(),
    })
}

/// A big memory object (a pool of windows, one per rank), from smem.bm.create().
#[pyclass(module = "smem.bm")]
pub(crate) struct BigMemory {
    /// The `smem_bm_t`.
    handle: usize,
    /// This rank's DRAM part, rounded.
    dram: u64,
    /// This rank's HBM part, rounded (the window starts with it).
    hbm: u64,
    /// Set by `destroy`.
    destroyed: bool,
    /// Objects whose buffers are registered (`register`), by address: kept alive meanwhile.
    owners: HashMap<u64, Py<PyAny>>,
    /// Objects whose buffers queued copies use, per issuing thread: kept alive until `wait`.
    pending: HashMap<ThreadId, Vec<Py<PyAny>>>,
}

impl BigMemory {
    /// Offset of a `BmMemType` part in the window, or `None` for an unknown type.
    fn part(&self, mem_type: u32) -> Option<(u64, u64)> {
        match mem_type {
            MEM_DEVICE | MEM_LOCAL_DEVICE => Some((0, self.hbm)),
            MEM_HOST | MEM_LOCAL_HOST => Some((self.hbm, self.dram)),
            _ => None,
        }
    }

    /// Keeps the buffer objects of a queued copy alive until this thread's `wait`.
    fn keep(&mut self, flags: u32, objs: &[(&Bound<'_, PyAny>, &Address)]) {
        if flags & ASYNC_COPY_FLAG == 0 {
            return;
        }
        let held = self.pending.entry(std::thread::current().id()).or_default();
        for (o, a) in objs {
            if matches!(a, Address::Buf(_)) {
                held.push((*o).clone().unbind());
            }
        }
    }
}

/// A device stream is an acl-backend feature: `SM_NOT_SUPPORTED` otherwise.
fn no_stream(stream: u64, what: &str) -> Option<i32> {
    if stream == 0 {
        return None;
    }
    error::set_binding_error(
        SM_NOT_SUPPORTED,
        &format!("{what}: a device stream needs the acl backend; pass stream=0"),
    );
    Some(SM_NOT_SUPPORTED)
}

#[pymethods]
impl BigMemory {
    /// Join the pool (`smem_bm_join`): makes this rank's window visible to the other members
    /// and maps theirs (bounded by config.create_timeout).
    ///
    /// Returns:
    ///     0 if successful, else a negative SM_* code.
    #[pyo3(signature = (flags = 0))]
    fn join(&self, py: Python<'_>, flags: u32) -> i32 {
        let h = self.handle;
        let mut gva: usize = 0;
        let out = &raw mut gva as usize;
        // SAFETY: `out` points to a writable pointer-sized local alive for the call.
        let rc = py.allow_threads(|| unsafe {
            smem::smem_bm_join(h as smem::smem_bm_t, flags, out as *mut *mut c_void)
        });
        error::status(rc)
    }

    /// Leave the pool (`smem_bm_leave`): no other member touches this window afterwards.
    ///
    /// Returns:
    ///     0 if successful, else a negative SM_* code.
    #[pyo3(signature = (flags = 0))]
    fn leave(&self, py: Python<'_>, flags: u32) -> i32 {
        let h = self.handle;
        // SAFETY: plain arguments; a stale handle is a clean error.
        error::status(
            py.allow_threads(|| unsafe { smem::smem_bm_leave(h as smem::smem_bm_t, flags) }),
        )
    }

    /// Bytes of the given part this rank contributes (after rounding to 2 MiB).
    ///
    /// Arguments:
    ///     mem_type (BmMemType): DEVICE (the HBM part, default) or HOST (the DRAM part)
    #[pyo3(signature = (mem_type = MEM_DEVICE))]
    fn local_mem_size(&self, mem_type: u32) -> PyResult<u64> {
        let (_, len) = self
            .part(mem_type)
            .ok_or_else(|| PyValueError::new_err(format!("unknown BmMemType {mem_type}")))?;
        Ok(len)
    }

    /// The GVA of a member's part (`smem_bm_ptr`): its window start for DEVICE (the HBM part
    /// comes first), plus the HBM part's size for HOST; 0 when peer_rank is not a member.
    ///
    /// Arguments:
    ///     peer_rank (int): rank id of the member
    ///     mem_type (BmMemType): DEVICE (default) or HOST
    #[pyo3(signature = (peer_rank, mem_type = MEM_DEVICE))]
    fn peer_rank_ptr(&self, py: Python<'_>, peer_rank: u16, mem_type: u32) -> PyResult<u64> {
        let (off, _) = self
            .part(mem_type)
            .ok_or_else(|| PyValueError::new_err(format!("unknown BmMemType {mem_type}")))?;
        let h = self.handle;
        // SAFETY: plain arguments; a stale handle is a clean error (NULL).
        let p = py.allow_threads(|| unsafe {
            smem::smem_bm_ptr(h as smem::smem_bm_t, peer_rank) as usize
        }) as u64;
        if p == 0 {
            error::clear_binding_error();
            return Ok(0);
        }
        Ok(p + off)
    }

    /// Copy size bytes (`smem_bm_copy`). Addresses are ints or buffer-protocol objects (their
    /// first byte); without SMEM_ASYNC_COPY_FLAG the copy is complete and visible to the peers
    /// on return, with it wait() completes it (buffers are kept alive until then).
    ///
    /// Arguments:
    ///     src_ptr, dst_ptr: source and destination (a GVA or local memory, by type)
    ///     size (int): bytes
    ///     type (BmCopyType): L2G, G2L, G2H, H2G or G2G
    ///     flags (int): 0 or SMEM_ASYNC_COPY_FLAG
    ///     stream (int): device stream; only 0 here
    /// Returns:
    ///     0 if successful (queued with the flag), else a negative SM_* code.
    #[pyo3(signature = (src_ptr, dst_ptr, size, r#type, flags = 0, stream = 0))]
    #[allow(clippy::too_many_arguments)]
    fn copy_data(
        &mut self,
        py: Python<'_>,
        src_ptr: &Bound<'_, PyAny>,
        dst_ptr: &Bound<'_, PyAny>,
        size: u64,
        r#type: u32,
        flags: u32,
        stream: u64,
    ) -> PyResult<i32> {
        if let Some(rc) = no_stream(stream, "copy_data") {
            return Ok(rc);
        }
        let (sa, da): (Address, Address) = (src_ptr.extract()?, dst_ptr.extract()?);
        let src = sa.checked(size, false, "src_ptr")?;
        let dst = da.checked(size, true, "dst_ptr")?;
        let h = self.handle;
        // SAFETY: the C call checks the window side of the range; the local side is memory the
        // caller named (a buffer argument was checked above and is held until we return, or
        // until `wait` for a queued copy).
        let rc = py.allow_threads(|| unsafe {
            smem::smem_bm_copy(
                h as smem::smem_bm_t,
                src as *const c_void,
                dst as *mut c_void,
                size,
                r#type,
                flags,
            )
        });
        if rc == 0 {
            self.keep(flags, &[(src_ptr, &sa), (dst_ptr, &da)]);
        }
        Ok(error::status(rc))
    }

    /// Copy count independent ranges of one type (`smem_bm_copy_batch`): src_addrs[i] ->
    /// dst_addrs[i], sizes[i] bytes. Every entry is checked before any byte moves; entries to
    /// one peer travel together (coalesced, pipelined).
    ///
    /// Returns:
    ///     0 if successful (queued with SMEM_ASYNC_COPY_FLAG), else a negative SM_* code.
    #[pyo3(signature = (src_addrs, dst_addrs, sizes, count, r#type, flags = 0, stream = 0))]
    #[allow(clippy::too_many_arguments)]
    fn copy_data_batch(
        &mut self,
        py: Python<'_>,
        src_addrs: Vec<Bound<'_, PyAny>>,
        dst_addrs: Vec<Bound<'_, PyAny>>,
        sizes: Vec<u64>,
        count: usize,
        r#type: u32,
        flags: u32,
        stream: u64,
    ) -> PyResult<i32> {
        if let Some(rc) = no_stream(stream, "copy_data_batch") {
            return Ok(rc);
        }
        let lens = (src_addrs.len(), dst_addrs.len(), sizes.len());
        let Some(batch) = u32::try_from(count)
            .ok()
            .filter(|_| count >= 1 && count <= lens.0.min(lens.1).min(lens.2))
        else {
            error::set_binding_error(
                SM_INVALID_PARAM,
                &format!("copy_data_batch: count {count} must be 1..= the list lengths {lens:?}"),
            );
            return Ok(SM_INVALID_PARAM);
        };
        let (src_objs, dst_objs, sizes) =
            (&src_addrs[..count], &dst_addrs[..count], &sizes[..count]);
        let sa: Vec<Address> = src_objs
            .iter()
            .map(|o| o.extract())
            .collect::<PyResult<_>>()?;
        let da: Vec<Address> = dst_objs
            .iter()
            .map(|o| o.extract())
            .collect::<PyResult<_>>()?;
        let mut src = addr::checked_all(&sa, sizes, false, "src_addrs")?;
        let mut dst = addr::checked_all(&da, sizes, true, "dst_addrs")?;
        let params = smem::smem_batch_copy_params {
            sources: src.as_mut_ptr().cast(),
            destinations: dst.as_mut_ptr().cast(),
            dataSizes: sizes.as_ptr(),
            batchSize: batch,
        };
        let (h, at) = (self.handle, &raw const params as usize);
        // SAFETY: `at` points to params whose three arrays hold `batch` u64 entries each (a u64
        // has the layout of a pointer on the 64-bit targets we build for), alive for the call;
        // local sides are memory the caller named (buffers checked above and held until we
        // return, or until `wait` for queued copies).
        let rc = py.allow_threads(|| unsafe {
            smem::smem_bm_copy_batch(
                h as smem::smem_bm_t,
                at as *mut smem::smem_batch_copy_params,
                r#type,
                flags,
            )
        });
        if rc == 0 {
            let objs: Vec<_> = src_objs
                .iter()
                .zip(&sa)
                .chain(dst_objs.iter().zip(&da))
                .collect();
            self.keep(flags, &objs);
        }
        Ok(error::status(rc))
    }

    /// The rank whose window holds gva (`smem_bm_get_rank_id_by_gva`); UINT32_MAX
    /// (4294967295) otherwise.
    fn get_rank_id_by_gva(&self, py: Python<'_>, gva: Address) -> u32 {
        let (h, g) = (self.handle, gva.value());
        // SAFETY: plain values; the address is only compared, never dereferenced.
        py.allow_threads(|| unsafe {
            smem::smem_bm_get_rank_id_by_gva(h as smem::smem_bm_t, g as *mut c_void)
        })
    }

    /// Register [addr, addr+size) of this process (`smem_bm_register_user_mem`) as a local
    /// side of copies; a buffer-protocol object is kept alive while registered.
    ///
    /// Returns:
    ///     0 if successful, else a negative SM_* code.
    fn register(&mut self, py: Python<'_>, addr: &Bound<'_, PyAny>, size: u64) -> PyResult<i32> {
        let a: Address = addr.extract()?;
        let (h, at) = (self.handle, a.checked(size, false, "addr")?);
        // SAFETY: plain values; registration records the range.
        let rc = py.allow_threads(|| unsafe {
            smem::smem_bm_register_user_mem(h as smem::smem_bm_t, at, size)
        });
        if rc == 0 && matches!(a, Address::Buf(_)) {
            self.owners.insert(at, addr.clone().unbind());
        }
        Ok(error::status(rc))
    }

    /// Withdraw a registration made by register() (`smem_bm_unregister_user_mem`).
    ///
    /// Returns:
    ///     0 if successful, else a negative SM_* code.
    fn unregister(&mut self, py: Python<'_>, addr: Address) -> i32 {
        let (h, at) = (self.handle, addr.value());
        // SAFETY: plain values.
        let rc = py.allow_threads(|| unsafe {
            smem::smem_bm_unregister_user_mem(h as smem::smem_bm_t, at)
        });
        if rc == 0 {
            self.owners.remove(&at);
        }
        error::status(rc)
    }

    /// Wait until every copy this thread queued on this object (SMEM_ASYNC_COPY_FLAG) is
    /// complete (`smem_bm_wait`).
    ///
    /// Returns:
    ///     0, or the first error among them.
    fn wait(&mut self, py: Python<'_>) -> i32 {
        let h = self.handle;
        // SAFETY: plain handle; a stale one is a clean error.
        let rc = py.allow_threads(|| unsafe { smem::smem_bm_wait(h as smem::smem_bm_t) });
        self.pending.remove(&std::thread::current().id());
        error::status(rc)
    }

    /// Destroy the object (`smem_bm_destroy`): leaves if joined and frees the local memory.
    /// A second call does nothing.
    fn destroy(&mut self, py: Python<'_>) {
        if std::mem::replace(&mut self.destroyed, true) {
            return;
        }
        let h = self.handle;
        // SAFETY: a handle from `smem_bm_create`, destroyed once.
        py.allow_threads(|| unsafe { smem::smem_bm_destroy(h as smem::smem_bm_t) });
        self.owners.clear();
        self.pending.clear();
    }

    fn __repr__(&self) -> String {
        format!(
            "<smem.bm.BigMemory handle={:#x} hbm={} dram={}{}>",
            self.handle,
            self.hbm,
            self.dram,
            if self.destroyed { " destroyed" } else { "" }
        )
    }
}

/// Registers `_native.bm`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let bm = PyModule::new(m.py(), "bm")?;
    bm.add_function(wrap_pyfunction!(config_defaults, &bm)?)?;
    bm.add_function(wrap_pyfunction!(initialize, &bm)?)?;
    bm.add_function(wrap_pyfunction!(uninitialize, &bm)?)?;
    bm.add_function(wrap_pyfunction!(bm_rank_id, &bm)?)?;
    bm.add_function(wrap_pyfunction!(create, &bm)?)?;
    bm.add_class::<BigMemory>()?;
    m.add_submodule(&bm)
}
