//! The `sim` backend: "HBM" is host memory in a `memfd`, handled exactly like a device segment.

use super::{
    CopyDirection, Device, DeviceDescriptor, DeviceSegment, RawRange, SegmentInner, Shape2d,
    copy_err,
};
use crate::mem::{HostSegment, SegmentKind};
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

    fn copy_2d(
        &self,
        src: RawRange<'_>,
        dst: RawRange<'_>,
        shape: Shape2d,
        dir: CopyDirection,
    ) -> Result<()> {
        let _ = dir;
        shape.check(src, dst).map_err(copy_err)?.run();
        Ok(())
    }
}
