//! `smem.shm`: SHM objects (SPEC 2.3) with the reference's `memfabric_hybrid.shm` surface.

use std::ffi::c_void;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::common::c_string;
use crate::error::{self, SM_INVALID_PARAM};

/// The defaults of `smem_shm_config_init`, as `ShmConfig` field names.
#[pyfunction]
fn config_defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let mut c = std::mem::MaybeUninit::<smem::smem_shm_config_t>::zeroed();
    let at = c.as_mut_ptr() as usize;
    // SAFETY: `at` points to writable memory of the size of `smem_shm_config_t`.
    let rc = py.allow_threads(|| unsafe {
        smem::smem_shm_config_init(at as *mut smem::smem_shm_config_t)
    });
    if rc != 0 {
        return Err(error::from_c_failure(py, "smem_shm_config_init"));
    }
    // SAFETY: `smem_shm_config_init` returned 0, so it filled every field.
    let c = unsafe { c.assume_init() };
    let d = PyDict::new(py);
    d.set_item("init_timeout", c.shmInitTimeout)?;
    d.set_item("create_timeout", c.shmCreateTimeout)?;
    d.set_item("operation_timeout", c.controlOperationTimeout)?;
    d.set_item("start_store", c.startConfigStore != 0)?;
    d.set_item("flags", c.flags)?;
    Ok(d)
}

/// Reads a `ShmConfig` (any object with its attributes) into the C struct.
fn c_config(config: &Bound<'_, PyAny>) -> PyResult<smem::smem_shm_config_t> {
    Ok(smem::smem_shm_config_t {
        shmInitTimeout: config.getattr("init_timeout")?.extract()?,
        shmCreateTimeout: config.getattr("create_timeout")?.extract()?,
        controlOperationTimeout: config.getattr("operation_timeout")?.extract()?,
        startConfigStore: u8::from(config.getattr("start_store")?.extract::<bool>()?),
        flags: config.getattr("flags")?.extract()?,
    })
}

/// Initialize the smem shm library (`smem_shm_init`); rank 0 hosts the store when
/// config.start_store.
///
/// Arguments:
///     store_url (str): tcp://ip:port or tcp://[ip]:port
///     world_size (int), rank_id (int), device_id (int)
///     config (ShmConfig): settings
/// Returns:
///     0 if successful, else a negative SM_* code.
#[pyfunction]
fn initialize(
    py: Python<'_>,
    store_url: &str,
    world_size: u32,
    rank_id: u32,
    device_id: u16,
    config: &Bound<'_, PyAny>,
) -> PyResult<i32> {
    let url = c_string(store_url, "store_url")?;
    let mut cfg = c_config(config)?;
    let (u, c) = (url.as_ptr() as usize, &raw mut cfg as usize);
    // SAFETY: `u` is a NUL-terminated string and `c` a valid config, both alive for the call.
    let rc = py.allow_threads(|| unsafe {
        smem::smem_shm_init(
            u as *const _,
            world_size,
            rank_id,
            device_id,
            c as *mut smem::smem_shm_config_t,
        )
    });
    Ok(error::status(rc))
}

/// Un-initialize the smem shm library (`smem_shm_uninit`).
#[pyfunction]
#[pyo3(signature = (flags = 0))]
fn uninitialize(py: Python<'_>, flags: u32) {
    // SAFETY: plain integer argument.
    py.allow_threads(|| unsafe { smem::smem_shm_uninit(flags) });
}

/// Create a shm object, collectively over rank_size ranks (`smem_shm_create`).
///
/// Arguments:
///     id (int): object id, unique in this process
///     rank_size (int), rank_id (int): the members and this rank's place among them
///     local_mem_size (int): each rank's window, a non-zero multiple of 2 MiB
///     data_op_type (ShmDataOpType): default MTE
///     flags (int): default 0
/// Returns:
///     a ShareMemory; raises smem.SmemError on failure.
#[pyfunction]
#[pyo3(signature = (id, rank_size, rank_id, local_mem_size, data_op_type = 1, flags = 0))]
fn create(
    py: Python<'_>,
    id: u32,
    rank_size: u32,
    rank_id: u32,
    local_mem_size: u64,
    data_op_type: u32,
    flags: u32,
) -> PyResult<ShareMemory> {
    let mut gva: usize = 0;
    let out = &raw mut gva as usize;
    // SAFETY: `out` points to a writable pointer-sized local alive for the call.
    let h = py.allow_threads(|| unsafe {
        smem::smem_shm_create(
            id,
            rank_size,
            rank_id,
            local_mem_size,
            data_op_type,
            flags,
            out as *mut *mut c_void,
        ) as usize
    });
    if h == 0 {
        return Err(error::from_c_failure(py, "smem_shm_create"));
    }
    Ok(ShareMemory {
        handle: h,
        gva: gva as u64,
        local_rank: rank_id,
        rank_size,
        destroyed: false,
    })
}

/// A shm object: rank r's window is gva + r * local_mem_size, mapped read/write in every
/// same-host member. From smem.shm.create().
#[pyclass(module = "smem.shm")]
pub(crate) struct ShareMemory {
    /// The `smem_shm_t`.
    handle: usize,
    /// Base of the object (rank 0's window).
    gva: u64,
    /// This rank's id in the object.
    local_rank: u32,
    /// Number of ranks of the object.
    rank_size: u32,
    /// Set by `destroy`.
    destroyed: bool,
}

impl ShareMemory {
    fn h(&self) -> usize {
        self.handle
    }
}

#[pymethods]
impl ShareMemory {
    /// Store context (1..=65536 bytes) with the object, readable by every member.
    /// Raises smem.SmemError on failure.
    fn set_context(&self, py: Python<'_>, context: &[u8]) -> PyResult<()> {
        let len = u32::try_from(context.len()).unwrap_or(u32::MAX);
        let (h, p) = (self.h(), context.as_ptr() as usize);
        // SAFETY: `p` points to `len` readable bytes of `context`, alive for the call.
        let rc = py.allow_threads(|| unsafe {
            smem::smem_shm_set_extra_context(h as smem::smem_shm_t, p as *const c_void, len)
        });
        if rc != 0 {
            return Err(error::from_c_failure(py, "smem_shm_set_extra_context"));
        }
        Ok(())
    }

    /// The context stored with set_context (empty if none). Raises smem.SmemError on failure.
    fn get_context<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let h = self.h();
        let mut buf = vec![0u8; smem::SMEM_SHM_EXTRA_CONTEXT_MAX as usize];
        let (p, cap) = (buf.as_mut_ptr() as usize, smem::SMEM_SHM_EXTRA_CONTEXT_MAX);
        // SAFETY: `p` points to `cap` writable bytes of `buf`, alive for the call.
        let rc = py.allow_threads(|| unsafe {
            smem::smem_shm_get_extra_context(h as smem::smem_shm_t, p as *mut c_void, cap)
        });
        let Ok(n) = usize::try_from(rc) else {
            return Err(error::from_c_failure(py, "smem_shm_get_extra_context"));
        };
        Ok(PyBytes::new(py, &buf[..n.min(buf.len())]))
    }

    /// Destroy the object (`smem_shm_destroy`). A second call returns 0 and does nothing.
    ///
    /// Returns:
    ///     0 if successful, else a negative SM_* code.
    #[pyo3(signature = (flags = 0))]
    fn destroy(&mut self, py: Python<'_>, flags: u32) -> i32 {
        if std::mem::replace(&mut self.destroyed, true) {
            return 0;
        }
        let h = self.h();
        // SAFETY: a handle from `smem_shm_create`, destroyed once.
        error::status(
            py.allow_threads(|| unsafe { smem::smem_shm_destroy(h as smem::smem_shm_t, flags) }),
        )
    }

    /// Barrier over the object's ranks (`smem_shm_control_barrier`).
    ///
    /// Returns:
    ///     0 if successful, else a negative SM_* code.
    fn barrier(&self, py: Python<'_>) -> i32 {
        let h = self.h();
        // SAFETY: plain argument; a stale handle is a clean error.
        error::status(
            py.allow_threads(|| unsafe { smem::smem_shm_control_barrier(h as smem::smem_shm_t) }),
        )
    }

    /// All-gather (`smem_shm_control_allgather`): every rank gives the same number of bytes
    /// (1..=65536); returns rank_size * len(local_data) bytes, rank r's at r * len.
    /// Raises smem.SmemError on failure.
    fn all_gather<'py>(&self, py: Python<'py>, local_data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let send = u32::try_from(local_data.len()).unwrap_or(u32::MAX);
        let total = u64::from(send) * u64::from(self.rank_size);
        let Ok(recv) = u32::try_from(total) else {
            return Err(error::binding_failure(
                py,
                SM_INVALID_PARAM,
                &format!("all_gather: {total} bytes in all is too large"),
            ));
        };
        let mut out = vec![0u8; recv as usize];
        let (h, s, r) = (
            self.h(),
            local_data.as_ptr() as usize,
            out.as_mut_ptr() as usize,
        );
        // SAFETY: `s` points to `send` readable bytes and `r` to `recv` writable bytes, both
        // alive for the call.
        let rc = py.allow_threads(|| unsafe {
            smem::smem_shm_control_allgather(
                h as smem::smem_shm_t,
                s as *const _,
                send,
                r as *mut _,
                recv,
            )
        });
        if rc != 0 {
            return Err(error::from_c_failure(py, "smem_shm_control_allgather"));
        }
        Ok(PyBytes::new(py, &out))
    }

    /// How this rank reaches remote_rank (`smem_shm_topology_can_reach`).
    ///
    /// Arguments:
    ///     remote_rank (int): rank of the object
    ///     reach_info (int): ignored (the reference's signature has it; the answer is returned)
    /// Returns:
    ///     the ShmDataOpType bits (>= 0; same host: MTE|SDMA, 0: unreachable), or a negative
    ///     SM_* code.
    #[pyo3(signature = (remote_rank, reach_info = 0))]
    fn topology_can_reach(&self, py: Python<'_>, remote_rank: u32, reach_info: u64) -> i32 {
        let _ = reach_info;
        let h = self.h();
        let mut bits: u32 = 0;
        let out = &raw mut bits as usize;
        // SAFETY: `out` points to a writable u32 alive for the call.
        let rc = py.allow_threads(|| unsafe {
            smem::smem_shm_topology_can_reach(h as smem::smem_shm_t, remote_rank, out as *mut u32)
        });
        if rc != 0 {
            return error::status(rc);
        }
        i32::try_from(bits).unwrap_or(i32::MAX)
    }

    /// The data engines this process can use (`smem_shm_query_support_data_operation`).
    fn query_support_data_operation(&self, py: Python<'_>) -> u32 {
        // SAFETY: no arguments.
        py.allow_threads(|| unsafe { smem::smem_shm_query_support_data_operation() })
    }

    /// Global virtual address of the object (rank 0's window); rank r's window is at
    /// gva + r * local_mem_size.
    #[getter]
    fn gva(&self) -> u64 {
        self.gva
    }

    /// This rank's id in the object.
    #[getter]
    fn local_rank(&self) -> u32 {
        self.local_rank
    }

    /// Number of ranks of the object.
    #[getter]
    fn rank_size(&self) -> u32 {
        self.rank_size
    }

    fn __repr__(&self) -> String {
        format!(
            "<smem.shm.ShareMemory gva={:#x} rank {}/{}{}>",
            self.gva,
            self.local_rank,
            self.rank_size,
            if self.destroyed { " destroyed" } else { "" }
        )
    }
}

/// Registers `_native.shm`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let shm = PyModule::new(m.py(), "shm")?;
    shm.add_function(wrap_pyfunction!(config_defaults, &shm)?)?;
    shm.add_function(wrap_pyfunction!(initialize, &shm)?)?;
    shm.add_function(wrap_pyfunction!(uninitialize, &shm)?)?;
    shm.add_function(wrap_pyfunction!(create, &shm)?)?;
    shm.add_class::<ShareMemory>()?;
    m.add_submodule(&shm)
}
