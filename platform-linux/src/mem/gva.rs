//! [`Reservation`]: an owned GVA range, `PROT_NONE` until segments are mapped into it.

use std::os::fd::BorrowedFd;

use smem_core::ErrorCode;
use smem_core::gva::{Gva, GvaRange};

use crate::sys::copy::RawRange;
use crate::sys::mman::Region;
use crate::{Error, Result};

/// An owned range of this process's address space at a fixed GVA (see [`crate::mem`]).
///
/// Parts are mapped with [`Reservation::map_segment`] and returned to `PROT_NONE` with
/// [`Reservation::unmap`]; `Drop` releases the whole range. Offsets and lengths of parts are
/// multiples of the page size.
#[derive(Debug)]
pub struct Reservation {
    region: Region,
    range: GvaRange,
}

/// Where [`Reservation::reserve_candidate`] places candidate bases: `[16 TiB, 80 TiB)` of the
/// 128 TiB user address space of x86-64 and arm64 (48-bit): ASan's shadow ends near 16 TiB, PIE
/// binaries and their heaps load near 85 TiB, shared libraries and `mmap(NULL)` sit near the top.
pub(crate) const CANDIDATE_REGION: (u64, u64) = (0x1000_0000_0000, 0x5000_0000_0000);

fn to_usize(v: u64, what: &str) -> Result<usize> {
    usize::try_from(v)
        .map_err(|_| Error::invalid(format!("{what} {v:#x} does not fit this address space")))
}

impl Reservation {
    /// Reserves exactly `len` bytes at `base`, never clobbering anything: when any byte of the
    /// range is already mapped in this process the call fails with `SM_RESOURCE_IN_USE`, and the
    /// caller should agree on another base with its peers.
    ///
    /// # Errors
    /// `SM_INVALID_PARAM` for a zero, unaligned or overflowing range; `SM_RESOURCE_IN_USE` when
    /// the range is taken; `SM_MALLOC_FAILED` when the kernel has no room (`ENOMEM`).
    pub fn try_reserve_at(base: Gva, len: u64) -> Result<Self> {
        let range = GvaRange::new(base, len).ok_or_else(|| {
            Error::invalid(format!(
                "GVA range {base}+{len:#x} is empty or wraps the address space"
            ))
        })?;
        let region = Region::reserve(Some(to_usize(base.raw(), "GVA base")?), to_usize(len, "GVA length")?)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EEXIST) => Error::new(
                    ErrorCode::ResourceInUse,
                    format!("GVA range {range} is already mapped in this process; agree on another base"),
                ),
                Some(libc::ENOMEM) => Error::new(
                    ErrorCode::MallocFailed,
                    format!("reserving GVA range {range}: {e}; the address space or map count limit is exhausted"),
                ),
                Some(libc::EINVAL) => Error::invalid(format!("GVA range {range} is not page aligned or not usable: {e}")),
                _ => Error::io(format_args!("reserving GVA range {range}"), &e),
            })?;
        Ok(Self { region, range })
    }

    /// Reserves `len` bytes for a candidate base to propose to peers: a random multiple of
    /// `align` inside `CANDIDATE_REGION` (16-80 TiB), where processes rarely map anything (below the
    /// PIE binaries, heaps and the top-down `mmap` area, above sanitizer shadow memory), so a
    /// range free here is very likely free in every peer too. `entropy` picks the spot (a
    /// fresh random number per call). Falls back to a kernel-chosen base when 16 spots are
    /// taken or the range does not fit.
    ///
    /// Kernel-chosen bases alone are a poor choice: every process's `mmap(NULL)` hands out the
    /// hole at the top of its own map, which is where a peer keeps its own mappings, so two
    /// ranks can propose each other's taken ranges forever.
    ///
    /// # Errors
    /// As [`Reservation::reserve_anywhere`].
    pub fn reserve_candidate(
        len: u64,
        align: u64,
        mut entropy: impl FnMut() -> u64,
    ) -> Result<Self> {
        let (lo, hi) = CANDIDATE_REGION;
        if align.is_power_of_two() && len > 0 && len <= (hi - lo) / 2 {
            let slots = (hi - lo - len) / align;
            for _ in 0..16 {
                let base = lo + (entropy() % slots) * align;
                if let Ok(r) = Self::try_reserve_at(Gva(base), len) {
                    return Ok(r);
                }
            }
        }
        Self::reserve_anywhere(len, align)
    }

    /// Reserves `len` bytes at a kernel-chosen base that is a multiple of `align` (a power of
    /// two, at least a page).
    ///
    /// # Errors
    /// `SM_INVALID_PARAM` for a bad length or alignment; `SM_MALLOC_FAILED` when there is no room.
    pub fn reserve_anywhere(len: u64, align: u64) -> Result<Self> {
        let region =
            Region::reserve_aligned(to_usize(len, "GVA length")?, to_usize(align, "alignment")?)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::ENOMEM) => Error::new(
                        ErrorCode::MallocFailed,
                        format!("reserving {len:#x} bytes of address space: {e}"),
                    ),
                    _ => Error::invalid(format!(
                        "reserving {len:#x} bytes aligned to {align:#x}: {e}"
                    )),
                })?;
        let base = Gva(region.addr() as u64);
        let range = GvaRange::new(base, len)
            .ok_or_else(|| Error::invalid("kernel returned a wrapping range"))?;
        Ok(Self { region, range })
    }

    /// The first byte.
    pub fn base(&self) -> Gva {
        self.range.start()
    }

    /// The whole range.
    pub fn range(&self) -> GvaRange {
        self.range
    }

    /// The length in bytes.
    pub fn len(&self) -> u64 {
        self.region.len() as u64
    }

    /// Always `false`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Maps the first `len` bytes of the segment file `fd`, shared and read/write, at
    /// `base + offset`, pre-faulted (see [`Region::map_shared`]).
    ///
    /// # Errors
    /// `SM_INVALID_PARAM` for a part outside the range, unaligned, or already mapped;
    /// `SM_MALLOC_FAILED`/`SM_IO_ERROR` from the kernel.
    pub fn map_segment(&self, offset: u64, fd: BorrowedFd<'_>, len: u64) -> Result<()> {
        self.map_segment_with(offset, fd, len, true)
    }

    /// As [`Reservation::map_segment`], pre-faulting the page tables only when `populate`
    /// (else they fill on first access).
    ///
    /// # Errors
    /// As [`Reservation::map_segment`].
    pub fn map_segment_with(
        &self,
        offset: u64,
        fd: BorrowedFd<'_>,
        len: u64,
        populate: bool,
    ) -> Result<()> {
        self.map_file_part(offset, fd, 0, len, populate)
    }

    /// As [`Reservation::map_segment_with`] for the bytes `fd_offset..fd_offset+len` of the
    /// file (e.g. the windows of several ranks of one segment shared by a host, mapped at once).
    ///
    /// # Errors
    /// As [`Reservation::map_segment`].
    pub fn map_file_part(
        &self,
        offset: u64,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
        len: u64,
        populate: bool,
    ) -> Result<()> {
        let what = || {
            format!(
                "mapping {len:#x} bytes at {}+{offset:#x} (reservation {})",
                self.base(),
                self.range
            )
        };
        let o = to_usize(offset, "offset")?;
        let l = to_usize(len, "length")?;
        let r = self.region.map_shared(o, fd, fd_offset, l, populate);
        r.map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) => Error::invalid(format!(
                "{}: part outside the reservation or not page aligned",
                what()
            )),
            Some(libc::EBUSY) => {
                Error::invalid(format!("{}: part already mapped; unmap it first", what()))
            }
            Some(libc::ENOMEM) => Error::new(ErrorCode::MallocFailed, format!("{}: {e}", what())),
            _ => Error::io(what(), &e),
        })
    }

    /// Maps the bytes `fd_offset..fd_offset+len` of the segment file `fd` at `base + offset`,
    /// shared but inaccessible: a backing of which [`Reservation::open`] makes pieces
    /// accessible and [`Reservation::close`] inaccessible again, one `mprotect` each (see
    /// [`crate::sys::mman::Region::back_shared`]).
    ///
    /// # Errors
    /// As [`Reservation::map_segment`].
    pub fn back_file(
        &self,
        offset: u64,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
        len: u64,
    ) -> Result<()> {
        let o = to_usize(offset, "offset")?;
        let l = to_usize(len, "length")?;
        let r = self.region.back_shared(o, fd, fd_offset, l);
        r.map_err(|e| self.part_error(e, offset, len, "backing"))
    }

    /// Makes `offset..offset+len` of a [`Reservation::back_file`] backing accessible
    /// (pre-faulted when `populate`).
    ///
    /// # Errors
    /// `SM_INVALID_PARAM` when the range is not inside one backing; the kernel's error.
    pub fn open(&self, offset: u64, len: u64, populate: bool) -> Result<()> {
        let o = to_usize(offset, "offset")?;
        let l = to_usize(len, "length")?;
        let r = self.region.open(o, l, populate);
        r.map_err(|e| self.part_error(e, offset, len, "opening"))
    }

    /// Allocates the pages of `offset..offset+len`, inside one mapped part, by faulting them in
    /// through this mapping (see [`crate::sys::mman::Region::populate`]). `Ok(false)`: the
    /// kernel cannot (older than 5.14); the caller allocates another way.
    ///
    /// # Errors
    /// `SM_INVALID_PARAM` for a part not inside one mapped part; `SM_MALLOC_FAILED` when the
    /// memory is not there.
    pub fn populate(&self, offset: u64, len: u64) -> Result<bool> {
        if !self.is_mapped(offset, len) {
            return Err(self.part_error(
                std::io::Error::from_raw_os_error(libc::EINVAL),
                offset,
                len,
                "allocating",
            ));
        }
        let o = to_usize(offset, "offset")?;
        let l = to_usize(len, "length")?;
        match self.region.populate(o, l) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
            Err(e) => Err(Error::new(
                ErrorCode::MallocFailed,
                format!(
                    "allocating {len:#x} bytes of shared memory at {}+{offset:#x}: {e}; free memory or lower the pool size (shmem limits: /dev/shm size, memory cgroup)",
                    self.base()
                ),
            )),
        }
    }

    /// Makes `offset..offset+len` of a [`Reservation::back_file`] backing inaccessible again.
    ///
    /// # Errors
    /// As [`Reservation::open`].
    pub fn close(&self, offset: u64, len: u64) -> Result<()> {
        let o = to_usize(offset, "offset")?;
        let l = to_usize(len, "length")?;
        let r = self.region.close(o, l);
        r.map_err(|e| self.part_error(e, offset, len, "closing"))
    }

    fn part_error(&self, e: std::io::Error, offset: u64, len: u64, doing: &str) -> Error {
        let what = format!(
            "{doing} {len:#x} bytes at {}+{offset:#x} (reservation {})",
            self.base(),
            self.range
        );
        match e.raw_os_error() {
            Some(libc::EINVAL) => Error::invalid(format!(
                "{what}: part outside the reservation or its backing, or not page aligned"
            )),
            Some(libc::EBUSY) => Error::invalid(format!("{what}: part already mapped")),
            Some(libc::ENOMEM) => Error::new(ErrorCode::MallocFailed, format!("{what}: {e}")),
            _ => Error::io(what, &e),
        }
    }

    /// Returns `offset..offset+len` (inside one earlier mapping; the rest of it stays mapped)
    /// to `PROT_NONE`.
    ///
    /// # Errors
    /// `SM_INVALID_PARAM` when that range is not inside one mapped part; `SM_IO_ERROR` from the kernel.
    pub fn unmap(&self, offset: u64, len: u64) -> Result<()> {
        let o = to_usize(offset, "offset")?;
        let l = to_usize(len, "length")?;
        self.region.unmap(o, l).map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) => Error::invalid(format!(
                "{}+{offset:#x} ({len:#x} bytes) is not inside one mapped part",
                self.base()
            )),
            _ => Error::io(format_args!("unmapping {}+{offset:#x}", self.base()), &e),
        })
    }

    /// Whether `offset..offset+len` lies inside one mapped part.
    pub fn is_mapped(&self, offset: u64, len: u64) -> bool {
        match (usize::try_from(offset), usize::try_from(len)) {
            (Ok(o), Ok(l)) => self.region.is_mapped(o, l),
            _ => false,
        }
    }

    /// The address of `base + offset` when `offset..offset+len` lies inside one mapped part (for
    /// raw copies by the data path, which must keep the part mapped while it copies).
    pub fn mapped_addr(&self, offset: u64, len: u64) -> Option<u64> {
        let o = usize::try_from(offset).ok()?;
        let l = usize::try_from(len).ok()?;
        self.region.mapped_addr(o, l).map(|a| a as u64)
    }

    /// `offset..offset+len` as a range for raw copies when it lies inside one mapped part (see
    /// [`crate::sys::mman::Region::mapped_range`]: the data path keeps the part mapped while it
    /// copies).
    pub fn mapped_range(&self, offset: u64, len: u64) -> Option<RawRange<'_>> {
        let o = usize::try_from(offset).ok()?;
        let l = usize::try_from(len).ok()?;
        self.region.mapped_range(o, l)
    }

    /// `offset..offset+len` as a range for raw copies when it lies inside the reservation,
    /// mapped or not (see [`crate::sys::mman::Region::reserved_range`]: a bounds check only,
    /// for a data path whose protocol keeps the part mapped while it copies).
    #[inline]
    pub fn reserved_range(&self, offset: u64, len: u64) -> Option<RawRange<'_>> {
        let o = usize::try_from(offset).ok()?;
        let l = usize::try_from(len).ok()?;
        self.region.reserved_range(o, l)
    }

    /// Loads the atomic word at `offset` (see [`crate::sys::mman::Region::load_u64`]).
    pub fn load_u64(&self, offset: u64) -> Option<u64> {
        self.region.load_u64(usize::try_from(offset).ok()?)
    }

    /// Stores the atomic word at `offset` (see [`crate::sys::mman::Region::store_u64`]).
    pub fn store_u64(&self, offset: u64, v: u64) -> bool {
        usize::try_from(offset).is_ok_and(|o| self.region.store_u64(o, v))
    }

    /// Copies bytes out of a mapped part (control path and tests; copies of the data path go
    /// through [`crate::sys::copy`]).
    ///
    /// # Errors
    /// `SM_INVALID_PARAM` when the range is not mapped.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let o = to_usize(offset, "offset")?;
        self.region.read(o, buf).map_err(|_| {
            Error::invalid(format!(
                "{}+{offset:#x} ({} bytes) is not mapped",
                self.base(),
                buf.len()
            ))
        })
    }

    /// Copies bytes into a mapped part.
    ///
    /// # Errors
    /// `SM_INVALID_PARAM` when the range is not mapped.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let o = to_usize(offset, "offset")?;
        self.region.write(o, data).map_err(|_| {
            Error::invalid(format!(
                "{}+{offset:#x} ({} bytes) is not mapped",
                self.base(),
                data.len()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{HostSegment, SegmentKind};

    const M2: u64 = 2 * 1024 * 1024;

    #[test]
    #[cfg_attr(miri, ignore)]
    fn no_clobber_and_remap() {
        let a = Reservation::reserve_anywhere(4 * M2, M2).expect("reserve");
        assert!(a.base().is_aligned(M2));
        // The same range again is refused, not clobbered.
        let err = Reservation::try_reserve_at(a.base(), M2).expect_err("taken");
        assert_eq!(err.code(), ErrorCode::ResourceInUse);
        let err = Reservation::try_reserve_at(Gva(a.base().raw() + 3 * M2), 2 * M2)
            .expect_err("overlaps the end");
        assert_eq!(err.code(), ErrorCode::ResourceInUse);
        let base = a.base();
        drop(a);
        // Freed: now it can be reserved exactly there.
        let b = Reservation::try_reserve_at(base, 4 * M2).expect("free again");
        assert_eq!(b.base(), base);

        let seg = HostSegment::create("remap", SegmentKind::Host, M2).expect("segment");
        b.map_segment(M2, seg.fd(), M2).expect("map");
        assert!(b.is_mapped(M2, M2));
        assert!(!b.is_mapped(0, M2 + 1));
        assert_eq!(
            b.map_segment(M2, seg.fd(), M2).map_err(|e| e.code()).err(),
            Some(ErrorCode::InvalidParam)
        );
        b.write(2 * M2 - 1, &[7]).expect("last byte");
        assert!(b.write(2 * M2 - 1, &[7, 7]).is_err());
        b.unmap(M2, M2).expect("unmap");
        assert!(!b.is_mapped(M2, 1));
        assert!(b.read(M2, &mut [0u8; 1]).is_err());
        // Mapped again: the data is still in the segment.
        b.map_segment(3 * M2, seg.fd(), M2).expect("map elsewhere");
        let mut one = [0u8; 1];
        b.read(4 * M2 - 1, &mut one).expect("read");
        assert_eq!(one, [7]);
        assert!(b.unmap(0, M2).is_err());
        assert!(b.map_segment(4 * M2, seg.fd(), M2).is_err());
    }

    /// The resident size of the mapping starting at `addr`, from `/proc/self/smaps`, in KiB.
    fn rss_kib(addr: u64) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let head = format!("{addr:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head));
        lines.next().expect("mapping listed");
        let rss = lines.find(|l| l.starts_with("Rss:")).expect("Rss line");
        rss.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("Rss value")
    }

    /// Pre-faulting: right after mapping, every page of the segment is resident in this
    /// mapping's page tables, so the first copy takes no page fault (SPEC 4).
    #[test]
    #[cfg_attr(miri, ignore)]
    fn mapping_is_prefaulted() {
        let r = Reservation::reserve_anywhere(2 * M2, M2).expect("reserve");
        let seg = HostSegment::create("prefault", SegmentKind::Host, 2 * M2).expect("segment");
        r.map_segment(0, seg.fd(), 2 * M2).expect("map");
        assert_eq!(rss_kib(r.base().raw()), 2 * M2 / 1024);
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn rejects_bad_ranges() {
        assert!(Reservation::try_reserve_at(Gva(u64::MAX - 4095), 8192).is_err());
        assert!(Reservation::try_reserve_at(Gva(0x1000_0001), 4096).is_err());
        assert!(Reservation::try_reserve_at(Gva(0x1000_0000), 0).is_err());
    }
}
