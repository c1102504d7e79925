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

/// Why `fallocate` of `len` bytes for `what` failed.
fn alloc_failed(e: &std::io::Error, len: u64, what: &str) -> Error {
    let code = match e.raw_os_error() {
        Some(libc::ENOSPC | libc::ENOMEM | libc::EFBIG) => ErrorCode::MallocFailed,
        _ => ErrorCode::IoError,
    };
    Error::new(
        code,
        format!(
            "allocating {len:#x} bytes ({}) of shared memory for {what}: {e}; free memory or lower the pool size (shmem limits: /dev/shm size, memory cgroup)",
            super::human(len)
        ),
    )
}

/// `SM_INVALID_PARAM` unless `len` is a non-zero multiple of the page size.
fn check_len(len: u64) -> Result<()> {
    let page = super::page_size();
    if len == 0 || len % page != 0 {
        return Err(Error::invalid(format!(
            "segment length {len:#x} must be a non-zero multiple of the page size {page:#x}"
        )));
    }
    Ok(())
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
        check_len(len)?;
        super::admit(&format!("segment {name}"), len)?;
        let seg = Self::sized(name, kind, len)?;
        fd::fallocate(seg.fd.as_fd(), len).map_err(|e| alloc_failed(&e, len, name))?;
        Ok(seg)
    }

    /// A memfd of `len` bytes (no page allocated yet).
    fn sized(name: &str, kind: SegmentKind, len: u64) -> Result<Self> {
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

/// Segments shared by the ranks of one host: one file holding a window per rank at the
/// window's offset, so a process maps the windows of many same-host peers with one descriptor
/// and few `mmap` calls (`runtime/object.rs`, "Same-host windows in one segment").
impl HostSegment {
    /// A new segment of `len` bytes with no page allocated: each rank allocates its own part
    /// with [`HostSegment::allocate`].
    ///
    /// # Errors
    /// As [`HostSegment::create`] (no memory is asked for here).
    pub fn create_sparse(name: &str, kind: SegmentKind, len: u64) -> Result<Self> {
        check_len(len)?;
        Self::sized(name, kind, len)
    }

    /// Allocates the pages of `offset..offset+len` now (zeroed: whatever an earlier user of
    /// that part left is dropped first), so that a lack of memory fails here, never as a
    /// `SIGBUS` later.
    ///
    /// # Errors
    /// `SM_INVALID_PARAM` for a part outside the segment; `SM_MALLOC_FAILED` when the memory is
    /// not there; `SM_IO_ERROR` for other OS errors.
    pub fn allocate(&self, offset: u64, len: u64) -> Result<()> {
        self.prepare(offset, len)?;
        self.fallocate(offset, len)
    }

    /// Claims the part `offset..offset+len` before its pages are allocated through a mapping
    /// ([`crate::mem::Reservation::populate`]; `fallocate` takes the file's lock, and a
    /// thousand ranks of one host allocating their parts at once queue on it for seconds): checks
    /// it against the segment and the memory budget and frees what an earlier user of the
    /// part left (it reads as zeros).
    ///
    /// # Errors
    /// As [`HostSegment::allocate`].
    pub fn prepare(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(Error::invalid(format!(
                "part {offset:#x}+{len:#x} lies outside the segment of {:#x} bytes",
                self.len
            )));
        }
        super::admit(&format!("window at {offset:#x} of a shared segment"), len)?;
        // Stale pages of an earlier owner of the part are freed first (it reads as zeros);
        // a part that is a hole (the usual case) is left alone: a punch walks the mappings of
        // every process that maps the segment (1024 at 1024 ranks on one host).
        if fd::has_data(self.fd.as_fd(), offset, len).unwrap_or(true) {
            self.release(offset, len)?;
        }
        Ok(())
    }

    /// Allocates the pages of `offset..offset+len` with `fallocate` (see
    /// [`HostSegment::allocate`]).
    ///
    /// # Errors
    /// As [`HostSegment::allocate`].
    pub fn fallocate(&self, offset: u64, len: u64) -> Result<()> {
        fd::fallocate_range(self.fd.as_fd(), offset, len)
            .map_err(|e| alloc_failed(&e, len, &format!("the window at {offset:#x}")))
    }

    /// Frees the pages of `offset..offset+len` (they read as zeros afterwards).
    ///
    /// # Errors
    /// `SM_IO_ERROR` from the kernel.
    pub fn release(&self, offset: u64, len: u64) -> Result<()> {
        fd::punch_hole(self.fd.as_fd(), offset, len).map_err(|e| {
            Error::io(
                format_args!("freeing {offset:#x}+{len:#x} of a segment"),
                &e,
            )
        })
    }

    /// The inode number (segments of one host are the same file when their inodes are equal).
    pub fn inode(&self) -> u64 {
        self.inode
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

    /// Windows of several ranks in one sparse segment: each part allocated on its own, three
    /// mapped with one call, the middle one unmapped alone, a part freed and allocated again
    /// reads zeros.
    #[test]
    fn shared_segment_parts_map_in_runs_and_unmap_alone() {
        let seg = HostSegment::create_sparse("runs", SegmentKind::Host, 4 * LEN).expect("seg");
        assert!(seg.allocate(3 * LEN, 2 * LEN).is_err(), "past the end");
        for r in 0..4 {
            seg.allocate(r * LEN, LEN).expect("allocate part");
        }
        let res = Reservation::reserve_anywhere(4 * LEN, LEN).expect("reserve");
        res.map_file_part(LEN, seg.fd(), LEN, 3 * LEN, false)
            .expect("map a run");
        for r in 1..4 {
            res.write(r * LEN, &[r as u8]).expect("write");
        }
        res.unmap(2 * LEN, LEN).expect("unmap the middle window");
        assert!(res.is_mapped(LEN, LEN) && res.is_mapped(3 * LEN, LEN));
        assert!(!res.is_mapped(2 * LEN, 1) && !res.is_mapped(0, 1));
        assert!(res.unmap(2 * LEN, LEN).is_err(), "unmapped already");
        res.map_file_part(2 * LEN, seg.fd(), 2 * LEN, LEN, true)
            .expect("map it again");
        let mut b = [0u8; 1];
        res.read(2 * LEN, &mut b).expect("read");
        assert_eq!(b, [2], "the data stays in the segment");
        seg.allocate(2 * LEN, LEN).expect("allocate again");
        res.read(2 * LEN, &mut b).expect("read");
        assert_eq!(b, [0], "a part allocated again is zeroed");
        res.read(3 * LEN, &mut b).expect("read");
        assert_eq!(b, [3], "the neighbour keeps its data");
    }

    /// A host segment backing a whole reservation: windows opened and closed with one call per
    /// run (also across windows already in that state), closed ones refuse accessors, data
    /// stays in the segment; a part mapped on its own leaves the backing.
    #[test]
    fn backed_segment_opens_and_closes_runs() {
        let seg = HostSegment::create_sparse("backed", SegmentKind::Host, 4 * LEN).expect("seg");
        for r in 0..4 {
            seg.allocate(r * LEN, LEN).expect("allocate part");
        }
        let res = Reservation::reserve_anywhere(4 * LEN, LEN).expect("reserve");
        res.back_file(0, seg.fd(), 0, 4 * LEN).expect("back");
        assert!(!res.is_mapped(0, 1), "a backing is inaccessible");
        res.open(LEN, LEN, true).expect("open one");
        res.open(3 * LEN, LEN, false).expect("open another");
        res.open(LEN, 3 * LEN, false)
            .expect("open a run over open windows");
        assert!(res.is_mapped(LEN, 3 * LEN), "one mapped part");
        for r in 1..4 {
            res.write(r * LEN, &[r as u8]).expect("write");
        }
        res.close(2 * LEN, LEN).expect("close the middle");
        assert!(res.is_mapped(LEN, LEN) && res.is_mapped(3 * LEN, LEN));
        let mut b = [0u8; 1];
        assert!(res.read(2 * LEN, &mut b).is_err(), "closed");
        res.close(0, 3 * LEN)
            .expect("close a run over closed windows");
        assert!(!res.is_mapped(LEN, 1) && res.is_mapped(3 * LEN, LEN));
        res.open(2 * LEN, LEN, false).expect("open again");
        res.read(2 * LEN, &mut b).expect("read");
        assert_eq!(b, [2], "the data stays in the segment");
        res.close(2 * LEN, LEN).expect("close");
        let own = HostSegment::create("own", SegmentKind::Host, LEN).expect("own segment");
        res.map_file_part(2 * LEN, own.fd(), 0, LEN, false)
            .expect("map another segment over the backing");
        res.unmap(2 * LEN, LEN).expect("unmap it");
        assert!(
            res.open(LEN, 2 * LEN, false).is_err(),
            "no longer backed there"
        );
        assert!(res.open(4 * LEN, LEN, false).is_err(), "outside");
        res.open(0, LEN, false).expect("the rest stays backed");
    }
}
