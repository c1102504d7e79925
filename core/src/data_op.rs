//! The data-operation sets of SPEC 2.2 and 2.3 as typed flags: which engines a BM object
//! (`smem_bm_data_op_type`) or an SHM object (`smem_shm_data_op_type`) may use. The two C enums
//! number their bits differently (ROCE is bit 1 for BM, bit 2 for SHM), so each has its type.

use core::fmt;

use bitflags::{Flags, bitflags};

bitflags! {
    /// `smem_bm_data_op_type`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct BmDataOps: u32 {
        /// `SMEMB_DATA_OP_SDMA`: device copy engine.
        const SDMA = 1 << 0;
        /// `SMEMB_DATA_OP_ROCE`: RDMA (carried by TCP where no RDMA engine exists).
        const ROCE = 1 << 1;
        /// `SMEMB_DATA_OP_HOST_TCP`: windows of other hosts over TCP.
        const HOST_TCP = 1 << 2;
    }
}

bitflags! {
    /// `smem_shm_data_op_type`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct ShmDataOps: u32 {
        /// `SMEMS_DATA_OP_MTE`: loads and stores (same host).
        const MTE = 1 << 0;
        /// `SMEMS_DATA_OP_SDMA`: device copy engine (same host).
        const SDMA = 1 << 1;
        /// `SMEMS_DATA_OP_ROCE`: network engine (other hosts).
        const ROCE = 1 << 2;
    }
}

/// A `dataOpType` that is empty or has bits of no engine: an object needs at least one
/// engine, and an unknown bit is a caller error (never ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataOpError {
    /// The bits given.
    pub bits: u32,
    /// Every known bit.
    pub all: u32,
    /// The C names' prefix (`SMEMB_DATA_OP_` or `SMEMS_DATA_OP_`).
    pub prefix: &'static str,
}

impl fmt::Display for DataOpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dataOpType {:#x} is not a non-empty set of {}* bits ({:#x})",
            self.bits, self.prefix, self.all
        )
    }
}

impl core::error::Error for DataOpError {}

fn from_c<F: Flags<Bits = u32>>(bits: u32, prefix: &'static str) -> Result<F, DataOpError> {
    match F::from_bits(bits) {
        Some(f) if !f.is_empty() => Ok(f),
        _ => Err(DataOpError {
            bits,
            all: F::all().bits(),
            prefix,
        }),
    }
}

impl BmDataOps {
    /// The set a C caller passed.
    ///
    /// # Errors
    /// [`DataOpError`] when `bits` is 0 or has an unknown bit.
    pub fn from_c(bits: u32) -> Result<Self, DataOpError> {
        from_c(bits, "SMEMB_DATA_OP_")
    }

    /// Whether an object with these engines serves and reaches windows over the network.
    pub const fn uses_network(self) -> bool {
        self.intersects(Self::ROCE.union(Self::HOST_TCP))
    }
}

impl ShmDataOps {
    /// The set a C caller passed.
    ///
    /// # Errors
    /// [`DataOpError`] when `bits` is 0 or has an unknown bit.
    pub fn from_c(bits: u32) -> Result<Self, DataOpError> {
        from_c(bits, "SMEMS_DATA_OP_")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_sets_are_non_empty_and_known() {
        assert_eq!(
            BmDataOps::from_c(0b101),
            Ok(BmDataOps::SDMA | BmDataOps::HOST_TCP)
        );
        assert_eq!(ShmDataOps::from_c(0b100), Ok(ShmDataOps::ROCE));
        for bad in [0, 0b1000, u32::MAX] {
            assert!(BmDataOps::from_c(bad).is_err(), "{bad:#x}");
            assert!(ShmDataOps::from_c(bad).is_err(), "{bad:#x}");
        }
        let e = BmDataOps::from_c(0).unwrap_err();
        let mut text = heapless::String::<96>::new();
        fmt::write(&mut text, format_args!("{e}")).unwrap();
        assert_eq!(
            text.as_str(),
            "dataOpType 0x0 is not a non-empty set of SMEMB_DATA_OP_* bits (0x7)"
        );
        assert!(BmDataOps::ROCE.uses_network());
        assert!(BmDataOps::HOST_TCP.uses_network());
        assert!(!BmDataOps::SDMA.uses_network());
    }
}
