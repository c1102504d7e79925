//! The `sim` backend: "HBM" is host memory in a `memfd`, handled exactly like a device segment.
#![allow(unsafe_code)] // forwarding the trait's copy contract to `sys::copy`, see below

use super::{CopyDirection, Device, DeviceDescriptor, DeviceSegment, SegmentInner, Shape2d};
use crate::mem::{HostSegment, SegmentKind};
use crate::sys::copy;
use crate::{Error, Result};

/// The simulated device (see the module docs).
#[derive(Debug)]
pub struct SimDevice {
    device_id: u16,
}

impl SimDevice {
    /// The simulated device `device_id` (any id is accepted: there is no hardware to check).
    pub fn new(device_id: u16) -> Self {
        Self { device_id }
    }
}

impl Device for SimDevice {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn device_id(&self) -> u16 {
        self.device_id
    }

    fn alloc(&self, name: &str, len: u64) -> Result<DeviceSegment> {
        let inner = HostSegment::create(name, SegmentKind::SimDevice, len)?;
        Ok(DeviceSegment {
            inner: SegmentInner::Host(inner),
        })
    }

    fn open_peer(&self, desc: &DeviceDescriptor) -> Result<DeviceSegment> {
        let DeviceDescriptor::Mapped(d) = desc else {
            return Err(Error::invalid(format!(
                "the sim device cannot open a {desc}: the peer uses another device backend; use the same SMEM_DEVICE on every rank"
            )));
        };
        if d.kind != SegmentKind::SimDevice {
            return Err(Error::invalid(format!(
                "the sim device cannot open a {desc}: the peer uses another device backend; use the same SMEM_DEVICE on every rank"
            )));
        }
        Ok(DeviceSegment {
            inner: SegmentInner::Host(HostSegment::open(d)?),
        })
    }

    unsafe fn copy_2d(
        &self,
        src: *const u8,
        dst: *mut u8,
        shape: Shape2d,
        dir: CopyDirection,
    ) -> Result<()> {
        let _ = dir;
        // SAFETY: the caller upholds `Device::copy_2d`'s contract, which is `copy_2d`'s contract.
        unsafe { copy::copy_2d(src, dst, shape) };
        Ok(())
    }
}
