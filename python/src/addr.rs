//! Address arguments: an `int`, or an object with the buffer protocol (its first byte).

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyString};

use crate::ffi::{self, BufView};

/// An address argument as given by the caller.
pub(crate) enum Address {
    /// A plain integer address.
    Int(u64),
    /// The first byte of an exported buffer, held while the call runs.
    Buf(BufView),
}

impl<'py> FromPyObject<'py> for Address {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        if ob.is_instance_of::<PyInt>() {
            return Ok(Self::Int(ob.extract()?));
        }
        let buffer = ffi::has_buffer(ob);
        // A numpy integer scalar (`base + np.int64(i)`) exports a buffer too, but is an index.
        let scalar = ob.hasattr("__index__")?
            && (!buffer || ob.getattr("ndim").and_then(|n| n.extract::<u32>()).ok() == Some(0));
        if scalar {
            return Ok(Self::Int(ob.extract()?));
        }
        if buffer && !ob.is_instance_of::<PyString>() {
            return Ok(Self::Buf(BufView::get(ob)?));
        }
        Err(PyTypeError::new_err(format!(
            "an address must be an int or an object with the buffer protocol (bytearray, \
             memoryview, numpy array ...), not {}",
            ob.get_type().name()?
        )))
    }
}

impl Address {
    /// The address value.
    pub(crate) fn value(&self) -> u64 {
        match self {
            Self::Int(v) => *v,
            Self::Buf(b) => b.addr(),
        }
    }

    /// The address, after checking that a buffer argument holds `len` bytes (and is writable
    /// when `write` is set); `what` names the argument in the error.
    pub(crate) fn checked(&self, len: u64, write: bool, what: &str) -> PyResult<u64> {
        if let Self::Buf(b) = self {
            if len > b.len() {
                return Err(PyValueError::new_err(format!(
                    "{what}: the buffer holds {} bytes, fewer than the {len} requested",
                    b.len()
                )));
            }
            if write && b.readonly() {
                return Err(PyTypeError::new_err(format!(
                    "{what}: the buffer is read-only but this call writes into it"
                )));
            }
        }
        Ok(self.value())
    }
}

/// Checks every entry of a batch (`addrs[i]` holds `lens[i]` bytes, writable when `write`) and
/// returns the plain addresses.
pub(crate) fn checked_all(
    addrs: &[Address],
    lens: &[u64],
    write: bool,
    what: &str,
) -> PyResult<Vec<u64>> {
    if addrs.len() != lens.len() {
        return Err(PyValueError::new_err(format!(
            "{what}: {} addresses but {} sizes",
            addrs.len(),
            lens.len()
        )));
    }
    addrs
        .iter()
        .zip(lens)
        .enumerate()
        .map(|(i, (a, &n))| a.checked(n, write, &format!("{what}[{i}]")))
        .collect()
}
