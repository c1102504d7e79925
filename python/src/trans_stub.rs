//! `smem.TransferEngine` (SPEC 6.2 through 6.3): not available until `smem_trans_*` lands in
//! the C API; every entry point says so with `SM_NOT_SUPPORTED`.

use pyo3::prelude::*;

use crate::error::{self, SM_NOT_SUPPORTED};

/// Point-to-point reads and writes between named processes' registered memory.
#[pyclass(module = "smem", subclass)]
pub(crate) struct TransferEngine {}

#[pymethods]
impl TransferEngine {
    #[new]
    fn new() -> Self {
        Self {}
    }

    /// Not available in this build: raises smem.SmemError(SM_NOT_SUPPORTED).
    #[pyo3(signature = (*args, **kwargs))]
    fn initialize(
        &self,
        py: Python<'_>,
        args: &Bound<'_, pyo3::types::PyTuple>,
        kwargs: Option<&Bound<'_, pyo3::types::PyDict>>,
    ) -> PyResult<i32> {
        let _ = (args, kwargs);
        Err(error::binding_failure(
            py,
            SM_NOT_SUPPORTED,
            "TransferEngine: the transfer engine (smem_trans_*) is not in this build of libsmem",
        ))
    }
}

/// Registers `TransferEngine`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("HAS_TRANSFER_ENGINE", false)?;
    m.add_class::<TransferEngine>()
}
