//! [`HostSegment`]: shareable host memory in a `memfd`, and its [`SegmentDescriptor`].

use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use smem_core::ErrorCode;

use crate::sys::fd;
use crate::{Error, Result};

/// What kind of memory a segment is (travels in the descriptor; a peer checks it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SegmentKind {
    /// Host memory (a DRAM part).
    Host = 0,
    /// Device memory of the `sim` backend (host memory handled as a device segment).
    SimDevice = 1,
}

impl SegmentKind {
    fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(Self::Host),
            1 => Some(Self::SimDevice),
            _ => None,
        }
    }
}

/// How a peer on the same host finds and checks a segment: the owner's pid and descriptor
/// number, and the inode and length the opened file must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SegmentDescriptor {
    /// The kind of memory.
    pub kind: SegmentKind,
    /// The owner's process id.
    pub pid: u32,
    /// The descriptor number in the owner.
    pub fd: i32,
    /// The memfd's inode number.
    pub inode: u64,
    /// The segment length in bytes.
    pub len: u64,
}

impl SegmentDescriptor {
    /// Encoded length: magic `"SMSD"`, version, kind, 2 reserved bytes, pid, fd, inode, len
    /// (little-endian).
    pub const ENCODED_LEN: usize = 32;
    const MAGIC: [u8; 4] = *b"SMSD";
    const VERSION: u8 = 1;

    /// The descriptor as bytes (it travels through the config store).
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut b = [0u8; Self::ENCODED_LEN];
        b[0..4].copy_from_slice(&Self::MAGIC);
        b[4] = Self::VERSION;
        b[5] = self.kind as u8;
        b[8..12].copy_from_slice(&self.pid.to_le_bytes());
        b[12..16].copy_from_slice(&self.fd.to_le_bytes());
        b[16..24].copy_from_slice(&self.inode.to_le_bytes());
        b[24..32].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// The descriptor encoded by [`SegmentDescriptor::encode`].
    ///
    /// # Errors
    /// `SM_PROTOCOL_ERROR` for a wrong length, magic, version, kind or reserved bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = |what: &str| {
            Error::new(
                ErrorCode::ProtocolError,
                format!(
                    "segment descriptor rejected: {what} (got {} bytes); the peer may run another smem version",
                    bytes.len()
                ),
            )
        };
        let b: &[u8; Self::ENCODED_LEN] = bytes.try_into().map_err(|_| bad("wrong length"))?;
        if b[0..4] != Self::MAGIC {
            return Err(bad("bad magic"));
        }
        if b[4] != Self::VERSION || b[6] != 0 || b[7] != 0 {
            return Err(bad("unknown version"));
        }
        let kind = SegmentKind::from_raw(b[5]).ok_or_else(|| bad("unknown segment kind"))?;
        let word = |r: std::ops::Range<usize>| -> [u8; 4] { b[r].try_into().unwrap_or([0; 4]) };
        let dword = |r: std::ops::Range<usize>| -> [u8; 8] { b[r].try_into().unwrap_or([0; 8]) };
        Ok(Self {
            kind,
            pid: u32::from_le_bytes(word(8..12)),
            fd: i32::from_le_bytes(word(12..16)),
            inode: u64::from_le_bytes(dword(16..24)),
            len: u64::from_le_bytes(dword(24..32)),
        })
    }
}

impl fmt::Display for SegmentDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} segment of pid {} fd {} (inode {}, {:#x} bytes)",
            self.kind, self.pid, self.fd, self.inode, self.len
        )
    }
}

/// `len` bytes of host memory in a `memfd`, pages allocated at creation (see the module docs of
/// [`crate::mem`]). Not mapped by itself: map it into a [`crate::mem::Reservation`].
#[derive(Debug)]
pub struct HostSegment {
    fd: OwnedFd,
    kind: SegmentKind,
    len: u64,
    inode: u64,
}

impl HostSegment {
    /// A new segment of `len` bytes (a non-zero multiple of the page size) named `name` (shown
    /// in `/proc/<pid>/maps` as `/memfd:<name>`), with every page allocated now, so that a lack
    /// of memory fails here, never as a `SIGBUS` later.
    ///
    /// # Errors
    /// `SM_INVALID_PARAM` for a bad length; `SM_MALLOC_FAILED` when the memory is not there
    /// (refused up front by [`super::admit()`], before any descriptor exists, or by `fallocate`);
    /// `SM_IO_ERROR` for other OS errors.
    pub fn create(name: &str, kind: SegmentKind, len: u64) -> Result<Self> {
        let page = super::page_size();
        if len == 0 || len % page != 0 {
            return Err(Error::invalid(format!(
                "segment length {len:#x} must be a non-zero multiple of the page size {page:#x}"
            )));
        }
        super::admit(&format!("segment {name}"), len)?;
        let cname = CString::new(name.replace('\0', "?")).unwrap_or_default();
        let fd = fd::memfd_create(&cname)
            .map_err(|e| Error::io(format_args!("memfd_create({name})"), &e))?;
        fd::ftruncate(fd.as_fd(), len).map_err(|e| {
            let code = match e.raw_os_error() {
                Some(libc::EFBIG | libc::EINVAL) => ErrorCode::MallocFailed,
                _ => ErrorCode::IoError,
            };
            Error::new(
                code,
                format!("sizing segment {name} to {len:#x} bytes: {e}; ask for less"),
            )
        })?;
        if let Err(e) = fd::fallocate(fd.as_fd(), len) {
            let code = match e.raw_os_error() {
                Some(libc::ENOSPC | libc::ENOMEM | libc::EFBIG) => ErrorCode::MallocFailed,
                _ => ErrorCode::IoError,
            };
            return Err(Error::new(
                code,
                format!(
                    "allocating {len:#x} bytes ({}) of shared memory for {name}: {e}; free memory or lower the pool size (shmem limits: /dev/shm size, memory cgroup)",
                    super::human(len)
                ),
            ));
        }
        let st = fd::fstat(fd.as_fd()).map_err(|e| Error::io("fstat of a new memfd", &e))?;
        Ok(Self {
            fd,
            kind,
            len,
            inode: st.ino,
        })
    }

    /// Opens a peer's segment of the same host from its descriptor, checking the kind, inode
    /// and length.
    ///
    /// # Errors
    /// `SM_OBJECT_NOT_EXISTS` when the peer process or descriptor is gone or is another file;
    /// `SM_NOT_SUPPORTED` when `/proc` access is denied (other user or PID namespace);
    /// `SM_IO_ERROR` otherwise.
    pub fn open(desc: &SegmentDescriptor) -> Result<Self> {
        let file = fd::open_proc_fd(desc.pid, desc.fd).map_err(|e| {
            let code = match e.raw_os_error() {
                Some(libc::ENOENT | libc::ESRCH) => ErrorCode::ObjectNotExists,
                Some(libc::EACCES | libc::EPERM) => ErrorCode::NotSupported,
                _ => ErrorCode::IoError,
            };
            Error::new(
                code,
                format!(
                    "opening /proc/{}/fd/{} for the {desc}: {e}; the peer must be alive, run as the same user, and share this PID namespace",
                    desc.pid, desc.fd
                ),
            )
        })?;
        let st = fd::fstat(file.as_fd())
            .map_err(|e| Error::io(format_args!("fstat of the {desc}"), &e))?;
        if st.ino != desc.inode || st.size != desc.len {
            return Err(Error::new(
                ErrorCode::ObjectNotExists,
                format!(
                    "/proc/{}/fd/{} is not the {desc}: found inode {} of {:#x} bytes; the peer closed or replaced it",
                    desc.pid, desc.fd, st.ino, st.size
                ),
            ));
        }
        Ok(Self {
            fd: file,
            kind: desc.kind,
            len: desc.len,
            inode: st.ino,
        })
    }

    /// The length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always `false`: segments are never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The kind of memory.
    pub fn kind(&self) -> SegmentKind {
        self.kind
    }

    /// The memfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// How a peer of this host opens this segment (valid while `self` lives).
    pub fn descriptor(&self) -> SegmentDescriptor {
        SegmentDescriptor {
            kind: self.kind,
            pid: fd::getpid(),
            fd: self.fd.as_raw_fd(),
            inode: self.inode,
            len: self.len,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::mem::Reservation;
    use crate::mem::test_child::{child_bytes, run_child_with_bytes};
    use smem_core::gva::Gva;

    const LEN: u64 = 2 * 1024 * 1024;

    #[test]
    fn descriptor_round_trip_and_rejects() {
        let d = SegmentDescriptor {
            kind: SegmentKind::SimDevice,
            pid: 42,
            fd: 7,
            inode: 0x1234_5678_9abc,
            len: LEN,
        };
        let b = d.encode();
        assert_eq!(SegmentDescriptor::decode(&b), Ok(d));
        assert!(SegmentDescriptor::decode(&b[..31]).is_err());
        let mut bad = b;
        bad[0] = b'X';
        assert!(SegmentDescriptor::decode(&bad).is_err());
        let mut bad = b;
        bad[5] = 9;
        assert!(SegmentDescriptor::decode(&bad).is_err());
        let mut bad = b;
        bad[4] = 2;
        assert_eq!(
            SegmentDescriptor::decode(&bad).map_err(|e| e.code()),
            Err(ErrorCode::ProtocolError)
        );
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn create_rejects_bad_length() {
        assert_eq!(
            HostSegment::create("t", SegmentKind::Host, 0)
                .map_err(|e| e.code())
                .err(),
            Some(ErrorCode::InvalidParam)
        );
        assert!(HostSegment::create("t", SegmentKind::Host, 100).is_err());
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn open_detects_wrong_inode_and_dead_fd() {
        let seg = HostSegment::create("inode-check", SegmentKind::Host, LEN).expect("segment");
        let mut d = seg.descriptor();
        assert!(HostSegment::open(&d).is_ok());
        d.inode += 1;
        assert_eq!(
            HostSegment::open(&d).map_err(|e| e.code()).err(),
            Some(ErrorCode::ObjectNotExists)
        );
        let d = SegmentDescriptor {
            fd: 100_000,
            ..seg.descriptor()
        };
        assert_eq!(
            HostSegment::open(&d).map_err(|e| e.code()).err(),
            Some(ErrorCode::ObjectNotExists)
        );
    }

    /// A child process opens the parent's segment through `/proc`, checks the parent's bytes,
    /// writes its own; the parent sees them through its own mapping.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn shared_with_another_process() {
        const NAME: &str = "mem::host::tests::shared_with_another_process";
        if let Some(bytes) = child_bytes() {
            let desc = SegmentDescriptor::decode(&bytes).expect("descriptor");
            let seg = HostSegment::open(&desc).expect("open parent's segment");
            let res = Reservation::reserve_anywhere(LEN, LEN).expect("reserve");
            res.map_segment(0, seg.fd(), LEN).expect("map");
            let mut buf = [0u8; 5];
            res.read(LEN - 5, &mut buf).expect("read");
            assert_eq!(&buf, b"hello");
            res.write(0, b"from child").expect("write");
            println!("child-ok");
            return;
        }
        let seg = HostSegment::create("xproc", SegmentKind::Host, LEN).expect("segment");
        let res = Reservation::reserve_anywhere(LEN, LEN).expect("reserve");
        res.map_segment(0, seg.fd(), LEN).expect("map");
        res.write(LEN - 5, b"hello").expect("write last bytes");
        let out = run_child_with_bytes(NAME, &seg.descriptor().encode(), Duration::from_secs(20));
        assert!(out.contains("child-ok"), "{out}");
        let mut buf = [0u8; 10];
        res.read(0, &mut buf).expect("read");
        assert_eq!(&buf, b"from child");
        let _ = Gva(res.base().raw());
    }
}
