//! Device backends: where a BM object's HBM part lives and how bytes move to and from it.
//!
//! - `sim`: no accelerator. "HBM" is host memory in a shareable segment, allocated, shared,
//!   mapped and copied exactly like a device segment through the same [`Device`] trait, so
//!   every code path above it is the one a real device takes. Its segments are mapped into the
//!   GVA ([`DeviceSegment::mapping_fd`]).
//! - `acl` (Ascend, `dlopen("libascendcl.so")`, see [`acl`]): HBM from `aclrtMalloc`, shared
//!   with same-host processes through ACL IPC keys. Its segments are not host-mappable: the
//!   GVA range of an HBM part stays reserved and the runtime translates GVA addresses to the
//!   device addresses of [`DeviceSegment::device_addr`] before copying.
//!
//! # Selection
//! The env var `SMEM_DEVICE` picks the backend: `sim`, `acl`, or unset/empty for the default:
//! `acl` when the Ascend runtime loads, else `sim`. `SMEM_DEVICE=acl` without a loadable runtime
//! is an error (`SM_NOT_SUPPORTED`) that says what was tried. The choice is logged at info level
//! once per process (and again only if it changes).

pub mod acl;
mod sim;

use std::fmt;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};

use log::info;
use smem_core::ErrorCode;

pub use acl::AclDevice;
pub use sim::SimDevice;

use self::acl::AclSegment;
use crate::mem::{HostSegment, SegmentDescriptor};
pub use crate::sys::copy::{RawRange, Shape2d};
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
/// [`DeviceDescriptor`]: either host-mappable (`sim`) or device-resident (`acl`).
#[derive(Debug)]
pub struct DeviceSegment {
    inner: SegmentInner,
}

#[derive(Debug)]
enum SegmentInner {
    Host(HostSegment),
    Acl(AclSegment),
}

impl DeviceSegment {
    /// The length in bytes.
    pub fn len(&self) -> u64 {
        match &self.inner {
            SegmentInner::Host(h) => h.len(),
            SegmentInner::Acl(a) => a.len(),
        }
    }

    /// Always `false`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// How a peer of this host opens the segment.
    pub fn descriptor(&self) -> DeviceDescriptor {
        match &self.inner {
            SegmentInner::Host(h) => DeviceDescriptor::Mapped(h.descriptor()),
            SegmentInner::Acl(a) => a.descriptor(),
        }
    }

    /// The file to map into the GVA reservation, for a host-mappable segment; `None` for
    /// device memory, which is reached through [`DeviceSegment::device_addr`].
    pub fn mapping_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.inner {
            SegmentInner::Host(h) => Some(h.fd()),
            SegmentInner::Acl(_) => None,
        }
    }

    /// The device address of the segment's first byte in this process, for device memory that
    /// is not mapped into the GVA; `None` for a host-mappable segment.
    pub fn device_addr(&self) -> Option<u64> {
        match &self.inner {
            SegmentInner::Host(_) => None,
            SegmentInner::Acl(a) => Some(a.addr()),
        }
    }
}

/// How a peer of the same host opens a device segment (travels in the window record).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeviceDescriptor {
    /// A host-mappable segment (`sim`): the owner's memfd.
    Mapped(SegmentDescriptor),
    /// ACL device memory exported under an IPC key.
    AclIpc {
        /// The segment length in bytes.
        len: u64,
        /// The key from `aclrtIpcMemGetExportKey` (printable ASCII, at most 64 bytes).
        key: String,
    },
}

impl DeviceDescriptor {
    const ACL_MAGIC: [u8; 4] = *b"SMAK";
    const ACL_VERSION: u8 = 1;
    /// Longest key accepted (the API's key buffer is 65 bytes with the NUL).
    pub const KEY_MAX: usize = 64;

    /// The segment length.
    pub fn len(&self) -> u64 {
        match self {
            Self::Mapped(d) => d.len,
            Self::AclIpc { len, .. } => *len,
        }
    }

    /// Always `false`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The descriptor as bytes: a [`SegmentDescriptor`]'s encoding, or `"SMAK"`, version, 3
    /// reserved bytes, the length (u64 LE) and the key bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Mapped(d) => d.encode().to_vec(),
            Self::AclIpc { len, key } => {
                let mut b = Vec::with_capacity(16 + key.len());
                b.extend_from_slice(&Self::ACL_MAGIC);
                b.extend_from_slice(&[Self::ACL_VERSION, 0, 0, 0]);
                b.extend_from_slice(&len.to_le_bytes());
                b.extend_from_slice(key.as_bytes());
                b
            }
        }
    }

    /// The descriptor encoded by [`DeviceDescriptor::encode`].
    ///
    /// # Errors
    /// `SM_PROTOCOL_ERROR` for bytes that are neither form.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let Some(rest) = bytes.strip_prefix(&Self::ACL_MAGIC) else {
            return SegmentDescriptor::decode(bytes).map(Self::Mapped);
        };
        let bad = |what: &str| {
            Error::new(
                ErrorCode::ProtocolError,
                format!(
                    "ACL segment descriptor rejected: {what}; the peer may run another smem version"
                ),
            )
        };
        let (head, key) = rest
            .split_first_chunk::<12>()
            .ok_or_else(|| bad("too short"))?;
        if head[..4] != [Self::ACL_VERSION, 0, 0, 0] {
            return Err(bad("unknown version"));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&head[4..]);
        if key.is_empty() || key.len() > Self::KEY_MAX || !key.iter().all(|c| c.is_ascii_graphic())
        {
            return Err(bad("bad IPC key"));
        }
        Ok(Self::AclIpc {
            len: u64::from_le_bytes(len),
            key: String::from_utf8_lossy(key).into_owned(),
        })
    }
}

impl fmt::Display for DeviceDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mapped(d) => d.fmt(f),
            Self::AclIpc { len, key } => write!(f, "ACL IPC segment {key:?} ({len:#x} bytes)"),
        }
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

    /// Allows the processes `pids` (as [`Device::sharing_pid`] reports them) to open `seg`.
    /// A no-op for backends without allow-lists.
    ///
    /// # Errors
    /// The device's error.
    fn share(&self, seg: &DeviceSegment, pids: &[i32]) -> Result<()> {
        let _ = (seg, pids);
        Ok(())
    }

    /// This process's id as the device's sharing allow-lists know it (its pid by default).
    ///
    /// # Errors
    /// The device's error.
    fn sharing_pid(&self) -> Result<i32> {
        i32::try_from(std::process::id()).map_err(|_| Error::invalid("pid does not fit i32"))
    }

    /// Opens a peer's device segment of the same host.
    ///
    /// # Errors
    /// As [`HostSegment::open`], plus `SM_INVALID_PARAM` for a descriptor of another kind.
    fn open_peer(&self, desc: &DeviceDescriptor) -> Result<DeviceSegment>;

    /// `len` bytes at device address `addr` of a live allocation or import of this device, as
    /// a range for device copies; `None` when no live segment holds them. The segment must
    /// outlive the copies through the range (the runtime's window protocol). Backends whose
    /// memory is mapped into the GVA (`sim`) have no device-resident memory.
    fn device_range(&self, addr: u64, len: u64) -> Option<RawRange<'_>> {
        let _ = (addr, len);
        None
    }

    /// Copies all of `src` to the start of `dst`, in the memories `dir` names; complete when
    /// the call returns.
    ///
    /// # Errors
    /// `SM_INVALID_PARAM` when `dst` is shorter than `src`; the device's copy error.
    fn copy(&self, src: RawRange<'_>, dst: RawRange<'_>, dir: CopyDirection) -> Result<()> {
        let len =
            usize::try_from(src.len()).map_err(|_| Error::invalid("copy length exceeds usize"))?;
        self.copy_2d(src, dst, Shape2d::row(len), dir)
    }

    /// Copies the rows of `shape`: row `i` from offset `i*spitch` of `src` to offset
    /// `i*dpitch` of `dst`, in the memories `dir` names (backends copy a single row as one
    /// contiguous range).
    ///
    /// # Errors
    /// `SM_INVALID_PARAM` when a row leaves its range (nothing is copied); the device's copy
    /// error.
    fn copy_2d(
        &self,
        src: RawRange<'_>,
        dst: RawRange<'_>,
        shape: Shape2d,
        dir: CopyDirection,
    ) -> Result<()>;
}

/// The error of a copy whose rows leave their ranges ([`Shape2d::check`]).
pub(crate) fn copy_err(e: std::io::Error) -> Error {
    Error::invalid(format!("copy: {e}"))
}

/// The backend named by `SMEM_DEVICE` (default: `acl` when it loads, else `sim`) for device
/// `device_id`.
///
/// # Errors
/// As [`select_named`].
pub fn select(device_id: u16) -> Result<Arc<dyn Device>> {
    let choice = std::env::var(DEVICE_ENV).unwrap_or_default();
    select_named(choice.trim(), device_id)
}

/// The backend `name` (`""` = default, `"sim"`, `"acl"`) for device `device_id`.
///
/// # Errors
/// `SM_NOT_SUPPORTED` for `acl` when the runtime cannot be loaded; the ACL error of opening the
/// device; `SM_INVALID_PARAM` for another name.
pub fn select_named(name: &str, device_id: u16) -> Result<Arc<dyn Device>> {
    let (dev, why): (Arc<dyn Device>, String) = match name {
        "sim" => (
            Arc::new(SimDevice::new(device_id)),
            "SMEM_DEVICE=sim".into(),
        ),
        "acl" => {
            let d = AclDevice::open(device_id).map_err(|e| {
                e.context("SMEM_DEVICE=acl")
                    .context("(set ASCEND_HOME_PATH to the CANN installation, or SMEM_DEVICE=sim)")
            })?;
            let why = format!("SMEM_DEVICE=acl, {}", d.library_path());
            (Arc::new(d), why)
        }
        "" => match AclDevice::open(device_id) {
            Ok(d) => {
                let why = format!("default, Ascend runtime {}", d.library_path());
                (Arc::new(d), why)
            }
            Err(e) if e.code() == ErrorCode::NotSupported => (
                Arc::new(SimDevice::new(device_id)),
                format!("default, no Ascend runtime: {}", e.message()),
            ),
            // The runtime loaded but the device did not open: an error, not a silent fallback to
            // host memory on a machine that has the Ascend runtime.
            Err(e) => {
                return Err(e.context(
                    "default device backend acl (the Ascend runtime loaded; set SMEM_DEVICE=sim to use host memory instead)",
                ));
            }
        },
        other => {
            return Err(Error::invalid(format!(
                "SMEM_DEVICE={other:?} is not a device backend; use sim or acl"
            )));
        }
    };
    log_choice(dev.name(), device_id, &why);
    Ok(dev)
}

/// Logs the backend choice once per process, and again only when it changes.
fn log_choice(name: &'static str, device_id: u16, why: &str) {
    static LAST: Mutex<Option<(&'static str, u16)>> = Mutex::new(None);
    let mut last = crate::sync::lock(&LAST);
    if *last != Some((name, device_id)) {
        *last = Some((name, device_id));
        drop(last);
        info!("device backend: {name}, device {device_id} ({why})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection() {
        assert_eq!(select_named("sim", 0).expect("sim").device_id(), 0);
        assert_eq!(
            select_named("cuda", 0).map(|_| ()).map_err(|e| e.code()),
            Err(ErrorCode::InvalidParam)
        );
    }
}

#[cfg(test)]
mod descriptor_tests {
    use super::*;
    use crate::mem::SegmentKind;

    #[test]
    fn round_trips_and_rejects() {
        let acl = DeviceDescriptor::AclIpc {
            len: 0x20_0000,
            key: "stub-1-2-3".into(),
        };
        let b = acl.encode();
        assert_eq!(&b[..4], b"SMAK");
        assert_eq!(DeviceDescriptor::decode(&b), Ok(acl.clone()));
        assert_eq!(acl.len(), 0x20_0000);
        let sim = DeviceDescriptor::Mapped(SegmentDescriptor {
            kind: SegmentKind::SimDevice,
            pid: 7,
            fd: 9,
            inode: 11,
            len: 0x40_0000,
        });
        assert_eq!(DeviceDescriptor::decode(&sim.encode()), Ok(sim));
        let bad = |b: &[u8]| DeviceDescriptor::decode(b).map_err(|e| e.code());
        assert_eq!(bad(&b[..15]), Err(ErrorCode::ProtocolError));
        assert_eq!(bad(&b[..16]), Err(ErrorCode::ProtocolError)); // empty key
        let mut v2 = b.clone();
        v2[4] = 2;
        assert_eq!(bad(&v2), Err(ErrorCode::ProtocolError));
        let mut space = b.clone();
        space.push(b' ');
        assert_eq!(bad(&space), Err(ErrorCode::ProtocolError));
        let mut long = b[..16].to_vec();
        long.extend(std::iter::repeat_n(b'k', DeviceDescriptor::KEY_MAX + 1));
        assert_eq!(bad(&long), Err(ErrorCode::ProtocolError));
    }
}

#[cfg(test)]
mod xproc_tests {
    use std::time::Duration;

    use super::*;
    use crate::mem::Reservation;
    use crate::mem::test_child::{child_bytes, run_child_with_bytes};

    const M2: u64 = 2 * 1024 * 1024;

    /// The parent allocates a sim device segment and maps it; a child opens it as a peer,
    /// copies host -> device (1D and 2D) into its own mapping; the parent copies device -> host
    /// and sees the bytes.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn sim_segment_shared_and_copied() {
        const NAME: &str = "device::xproc_tests::sim_segment_shared_and_copied";
        let dev = select_named("sim", 0).expect("sim");
        if let Some(bytes) = child_bytes() {
            let desc = DeviceDescriptor::decode(&bytes).expect("descriptor");
            let seg = dev.open_peer(&desc).expect("open peer");
            let res = Reservation::reserve_anywhere(M2, M2).expect("reserve");
            res.map_segment(0, seg.mapping_fd().expect("sim maps"), M2)
                .expect("map");
            let at = res.mapped_range(M2 - 4, 4).expect("mapped");
            let mut src = *b"tail";
            dev.copy(
                RawRange::from_mut(&mut src),
                at,
                CopyDirection::HostToDevice,
            )
            .expect("copy");
            let mut rows = *b"ab..cd..";
            let at = res.mapped_range(0, 6).expect("mapped");
            let shape = Shape2d::new(4, 4, 2, 2);
            dev.copy_2d(
                RawRange::from_mut(&mut rows),
                at,
                shape,
                CopyDirection::HostToDevice,
            )
            .expect("2d");
            let e = dev
                .copy_2d(
                    RawRange::from_mut(&mut rows),
                    at,
                    Shape2d::new(4, 4, 3, 2),
                    CopyDirection::HostToDevice,
                )
                .expect_err("rows leave the destination");
            assert_eq!(e.code(), ErrorCode::InvalidParam);
            println!("child-ok");
            return;
        }
        let seg = dev.alloc("sim-xproc", M2).expect("alloc");
        let res = Reservation::reserve_anywhere(M2, M2).expect("reserve");
        res.map_segment(0, seg.mapping_fd().expect("sim maps"), M2)
            .expect("map");
        let out = run_child_with_bytes(NAME, &seg.descriptor().encode(), Duration::from_secs(20));
        assert!(out.contains("child-ok"), "{out}");
        let mut tail = [0u8; 4];
        let at = res.mapped_range(M2 - 4, 4).expect("mapped");
        dev.copy(
            at,
            RawRange::from_mut(&mut tail),
            CopyDirection::DeviceToHost,
        )
        .expect("copy");
        assert_eq!(&tail, b"tail");
        let mut head = [0u8; 6];
        res.read(0, &mut head).expect("read");
        assert_eq!(&head, b"ab\0\0cd");
        // A host segment is refused by the device.
        let host =
            HostSegment::create("not-device", crate::mem::SegmentKind::Host, M2).expect("host");
        assert_eq!(
            dev.open_peer(&DeviceDescriptor::Mapped(host.descriptor()))
                .map(|_| ())
                .map_err(|e| e.code()),
            Err(ErrorCode::InvalidParam)
        );
    }
}
