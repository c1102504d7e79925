//! Device backends: where a BM object's HBM part lives and how bytes move to and from it.
//!
//! - `sim` (default): no accelerator. "HBM" is host memory in a shareable segment, allocated,
//!   shared, mapped and copied exactly like a device segment through the same [`Device`] trait,
//!   so every code path above it is the one a real device takes.
//! - `acl` (Ascend, `dlopen("libascendcl.so")`): not in this build yet; selecting it is
//!   `SM_NOT_SUPPORTED` with a message saying so.
//!
//! The backend is chosen by the env var `SMEM_DEVICE` (`sim` or `acl`; unset or empty means
//! `sim`), read once per [`select`] call.
// The trait's copy methods take raw caller pointers and are `unsafe fn`; declaring them needs
// this allow. The only `unsafe` blocks are the forwarding calls in `sim.rs` into `sys::copy`.
#![allow(unsafe_code)]

mod sim;

use std::fmt;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use smem_core::ErrorCode;

pub use sim::SimDevice;

use crate::mem::{HostSegment, SegmentDescriptor};
use crate::{Error, Result};

/// Env var that selects the backend.
pub const DEVICE_ENV: &str = "SMEM_DEVICE";

/// Which memories a copy moves between.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CopyDirection {
    /// Host memory to device memory.
    HostToDevice,
    /// Device memory to host memory.
    DeviceToHost,
    /// Device memory to device memory (e.g. local HBM to a peer's HBM window).
    DeviceToDevice,
    /// Host memory to host memory (through the device's copy engine when it has one).
    HostToHost,
}

/// A segment of device memory, shareable with processes of the same host through its
/// [`SegmentDescriptor`], and mappable into a GVA reservation.
#[derive(Debug)]
pub struct DeviceSegment {
    inner: HostSegment,
}

impl DeviceSegment {
    /// The length in bytes.
    pub fn len(&self) -> u64 {
        self.inner.len()
    }

    /// Always `false`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// How a peer of this host opens the segment.
    pub fn descriptor(&self) -> SegmentDescriptor {
        self.inner.descriptor()
    }

    /// The file to map into the GVA reservation.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inner.fd()
    }
}

/// A device backend (see the module docs).
pub trait Device: Send + Sync + fmt::Debug {
    /// The backend name (`"sim"`, `"acl"`).
    fn name(&self) -> &'static str;

    /// The device this process uses.
    fn device_id(&self) -> u16;

    /// Allocates `len` bytes (a multiple of 2 MiB) of device memory, pre-faulted.
    ///
    /// # Errors
    /// `SM_MALLOC_FAILED` when the device has no room; `SM_INVALID_PARAM` for a bad length.
    fn alloc(&self, name: &str, len: u64) -> Result<DeviceSegment>;

    /// Opens a peer's device segment of the same host.
    ///
    /// # Errors
    /// As [`HostSegment::open`], plus `SM_INVALID_PARAM` for a descriptor of another kind.
    fn open_peer(&self, desc: &SegmentDescriptor) -> Result<DeviceSegment>;

    /// Copies `len` bytes from `src` to `dst`; complete when the call returns.
    ///
    /// # Safety
    /// `src` must be readable and `dst` writable for `len` bytes, in the memories `dir` names,
    /// for the whole call, and the ranges must not overlap.
    ///
    /// # Errors
    /// The device's copy error.
    unsafe fn copy(
        &self,
        src: *const u8,
        dst: *mut u8,
        len: usize,
        dir: CopyDirection,
    ) -> Result<()>;

    /// Copies `height` rows of `width` bytes, row `i` from `src + i*spitch` to `dst + i*dpitch`.
    ///
    /// # Safety
    /// As [`Device::copy`], for every row.
    ///
    /// # Errors
    /// The device's copy error.
    #[allow(clippy::too_many_arguments)]
    unsafe fn copy_2d(
        &self,
        src: *const u8,
        spitch: usize,
        dst: *mut u8,
        dpitch: usize,
        width: usize,
        height: usize,
        dir: CopyDirection,
    ) -> Result<()>;
}

/// The backend named by `SMEM_DEVICE` (default `sim`) for device `device_id`.
///
/// # Errors
/// `SM_NOT_SUPPORTED` for `acl` (not in this build yet); `SM_INVALID_PARAM` for another name.
pub fn select(device_id: u16) -> Result<Arc<dyn Device>> {
    let choice = std::env::var(DEVICE_ENV).unwrap_or_default();
    select_named(choice.trim(), device_id)
}

/// The backend `name` (`""`/`"sim"`/`"acl"`) for device `device_id`.
///
/// # Errors
/// As [`select`].
pub fn select_named(name: &str, device_id: u16) -> Result<Arc<dyn Device>> {
    match name {
        "" | "sim" => Ok(Arc::new(SimDevice::new(device_id))),
        "acl" => Err(Error::new(
            ErrorCode::NotSupported,
            "SMEM_DEVICE=acl: the Ascend (acl) device backend is not available in this build yet; unset SMEM_DEVICE or set it to sim",
        )),
        other => Err(Error::invalid(format!(
            "SMEM_DEVICE={other:?} is not a device backend; use sim or acl"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection() {
        assert_eq!(select_named("", 3).expect("default").name(), "sim");
        assert_eq!(select_named("sim", 0).expect("sim").device_id(), 0);
        let e = select_named("acl", 0).expect_err("acl not yet");
        assert_eq!(e.code(), ErrorCode::NotSupported);
        assert!(e.message().contains("acl"));
        assert_eq!(
            select_named("cuda", 0).map(|_| ()).map_err(|e| e.code()),
            Err(ErrorCode::InvalidParam)
        );
    }
}

#[cfg(test)]
mod xproc_tests {
    use std::time::Duration;

    use super::*;
    use crate::mem::Reservation;
    use crate::mem::test_child::{child_arg, run_child};

    const M2: u64 = 2 * 1024 * 1024;

    /// The parent allocates a sim device segment and maps it; a child opens it as a peer,
    /// copies host -> device (1D and 2D) into its own mapping; the parent copies device -> host
    /// and sees the bytes.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn sim_segment_shared_and_copied() {
        const NAME: &str = "device::xproc_tests::sim_segment_shared_and_copied";
        let dev = select_named("sim", 0).expect("sim");
        if let Some(arg) = child_arg() {
            let bytes: Vec<u8> = (0..arg.len() / 2)
                .map(|i| u8::from_str_radix(&arg[2 * i..2 * i + 2], 16).expect("hex"))
                .collect();
            let desc = SegmentDescriptor::decode(&bytes).expect("descriptor");
            let seg = dev.open_peer(&desc).expect("open peer");
            let res = Reservation::reserve_anywhere(M2, M2).expect("reserve");
            res.map_segment(0, seg.fd(), M2).expect("map");
            let at = res.mapped_addr(M2 - 4, 4).expect("mapped");
            let src = *b"tail";
            // SAFETY: `at` is mapped for 4 bytes for the life of `res`; `src` is a local array.
            unsafe { dev.copy(src.as_ptr(), at as *mut u8, 4, CopyDirection::HostToDevice) }
                .expect("copy");
            let rows = *b"ab..cd..";
            let at = res.mapped_addr(0, 6).expect("mapped");
            // SAFETY: 2 rows of 2 bytes, pitch 4 in `rows` (8 bytes) and 4 at `at` (6 bytes span).
            unsafe {
                dev.copy_2d(
                    rows.as_ptr(),
                    4,
                    at as *mut u8,
                    4,
                    2,
                    2,
                    CopyDirection::HostToDevice,
                )
            }
            .expect("2d");
            println!("child-ok");
            return;
        }
        let seg = dev.alloc("sim-xproc", M2).expect("alloc");
        let res = Reservation::reserve_anywhere(M2, M2).expect("reserve");
        res.map_segment(0, seg.fd(), M2).expect("map");
        let hex: String = seg
            .descriptor()
            .encode()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let out = run_child(NAME, &hex, Duration::from_secs(20));
        assert!(out.contains("child-ok"), "{out}");
        let mut tail = [0u8; 4];
        let at = res.mapped_addr(M2 - 4, 4).expect("mapped");
        // SAFETY: `at` is mapped for 4 bytes; `tail` is a local array.
        unsafe {
            dev.copy(
                at as *const u8,
                tail.as_mut_ptr(),
                4,
                CopyDirection::DeviceToHost,
            )
        }
        .expect("copy");
        assert_eq!(&tail, b"tail");
        let mut head = [0u8; 6];
        res.read(0, &mut head).expect("read");
        assert_eq!(&head, b"ab\0\0cd");
        // A host segment is refused by the device.
        let host =
            HostSegment::create("not-device", crate::mem::SegmentKind::Host, M2).expect("host");
        assert_eq!(
            dev.open_peer(&host.descriptor())
                .map(|_| ())
                .map_err(|e| e.code()),
            Err(ErrorCode::InvalidParam)
        );
    }
}
