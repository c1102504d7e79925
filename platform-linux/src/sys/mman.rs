//! Address-space reservations and shared mappings: `mmap`, `munmap`, `madvise`.
//!
//! [`Region`] owns a range of this process's address space from creation to `Drop`. It starts
//! as an inaccessible reservation (`PROT_NONE`, `MAP_NORESERVE`: no memory, no swap accounting)
//! and parts of it can be replaced by shared file mappings and turned back into reservation.
//! The region tracks which parts are mapped, so its safe byte accessors never touch a
//! `PROT_NONE` page.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use super::copy::RawRange;
use super::page_size;

/// `MAP_FIXED_NOREPLACE` (Linux 4.17). Older kernels ignore it and treat the address as a hint,
/// which [`Region::reserve`] detects by comparing the returned address.
const MAP_FIXED_NOREPLACE: libc::c_int = libc::MAP_FIXED_NOREPLACE;

/// An owned range of address space (see the module docs). `Drop` unmaps all of it.
#[derive(Debug)]
pub struct Region {
    /// Start address (page aligned). Stored as an integer: the region hands out no references.
    addr: usize,
    /// Length in bytes (a multiple of the page size).
    len: usize,
    /// Mapped parts as sorted, disjoint `(offset, len)` pairs.
    mapped: RwLock<Vec<(usize, usize)>>,
    /// Parts backed by a shared file mapping that is inaccessible where not mapped
    /// ([`Region::back_shared`]), as sorted, disjoint `(offset, len)` pairs. Taken after
    /// `mapped` when both are held.
    backed: Mutex<Vec<(usize, usize)>>,
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

fn mmap_ret(ret: *mut libc::c_void) -> io::Result<usize> {
    if ret == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// `mmap(at, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | extra, fd, fd_off)`.
///
/// # Safety
/// `at..at+len` must be address space the caller owns with no reference into it in use: the
/// mapping replaces whatever is there.
unsafe fn map_fd_fixed(
    at: usize,
    len: usize,
    fd: BorrowedFd<'_>,
    fd_off: libc::off_t,
    extra: libc::c_int,
) -> io::Result<usize> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_SHARED | libc::MAP_FIXED | extra;
    // SAFETY: forwarded to the caller; `fd` is a live descriptor for the call.
    mmap_ret(unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            len,
            prot,
            flags,
            fd.as_raw_fd(),
            fd_off,
        )
    })
}

/// Whether `offset..end` lies inside one part of `parts` (sorted, disjoint `(offset, len)`).
fn inside(parts: &[(usize, usize)], offset: usize, end: usize) -> bool {
    // The last part starting at or before `offset` is the only candidate.
    let i = parts.partition_point(|&(o, _)| o <= offset);
    i > 0 && end <= parts[i - 1].0 + parts[i - 1].1
}

/// Adds `offset..end` to `parts`, merging it with the parts it overlaps or touches.
fn add_part(parts: &mut Vec<(usize, usize)>, offset: usize, end: usize) {
    let (mut lo, mut hi) = (offset, end);
    parts.retain(|&(o, l)| {
        let keep = o + l < lo || hi < o;
        if !keep {
            lo = lo.min(o);
            hi = hi.max(o + l);
        }
        keep
    });
    let pos = parts
        .iter()
        .position(|&(o, _)| o > lo)
        .unwrap_or(parts.len());
    parts.insert(pos, (lo, hi - lo));
}

/// Removes `offset..end` from `parts` (what remains of a part on either side stays).
fn remove_part(parts: &mut Vec<(usize, usize)>, offset: usize, end: usize) {
    let mut out = Vec::with_capacity(parts.len() + 1);
    for &(o, l) in parts.iter() {
        if o + l <= offset || end <= o {
            out.push((o, l));
            continue;
        }
        if o < offset {
            out.push((o, offset - o));
        }
        if end < o + l {
            out.push((end, o + l - end));
        }
    }
    *parts = out;
}

impl Region {
    /// Reserves `len` bytes (`PROT_NONE`, `MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE`).
    ///
    /// With `Some(addr)` the reservation is exactly at `addr` or fails with `EEXIST` when any
    /// part of that range is already mapped (`MAP_FIXED_NOREPLACE`: nothing is ever clobbered).
    /// A kernel that ignores the flag places the mapping elsewhere; that is detected, undone,
    /// and also reported as `EEXIST`. With `None` the kernel picks the address.
    ///
    /// # Errors
    /// `EINVAL` for a zero or unaligned `len`/`addr`, `EEXIST`, `ENOMEM`.
    pub fn reserve(addr: Option<usize>, len: usize) -> io::Result<Self> {
        let page = page_size();
        if len == 0
            || len % page != 0
            || addr.is_some_and(|a| a % page != 0 || a.checked_add(len).is_none())
        {
            return Err(einval());
        }
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        if addr.is_some() {
            flags |= MAP_FIXED_NOREPLACE;
        }
        let hint = addr.unwrap_or(0) as *mut libc::c_void;
        // SAFETY: without MAP_FIXED the kernel never replaces an existing mapping
        // (MAP_FIXED_NOREPLACE fails instead), so no memory anyone uses is affected.
        let got = mmap_ret(unsafe { libc::mmap(hint, len, libc::PROT_NONE, flags, -1, 0) })?;
        if let Some(want) = addr {
            if got != want {
                // SAFETY: `got..got+len` is the mapping the kernel just created for us.
                unsafe { libc::munmap(got as *mut libc::c_void, len) };
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
        }
        Ok(Self {
            addr: got,
            len,
            mapped: RwLock::new(Vec::new()),
            backed: Mutex::new(Vec::new()),
        })
    }

    /// Reserves `len` bytes at a kernel-chosen address that is a multiple of `align` (a power of
    /// two, at least a page): over-reserves by `align` and trims both ends.
    ///
    /// # Errors
    /// As [`Region::reserve`].
    pub fn reserve_aligned(len: usize, align: usize) -> io::Result<Self> {
        if !align.is_power_of_two() || align < page_size() {
            return Err(einval());
        }
        let total = len.checked_add(align).ok_or_else(einval)?;
        let big = Self::reserve(None, total)?;
        let start = big.addr.checked_add(align - 1).ok_or_else(einval)? & !(align - 1);
        let head = start - big.addr;
        let tail = total - head - len;
        let end = start + len;
        // Forget `big` so its Drop does not unmap the part we keep.
        std::mem::forget(big);
        if head > 0 {
            // SAFETY: the head lies in the reservation made above, which we own and hand out to
            // no one.
            unsafe { libc::munmap((start - head) as *mut libc::c_void, head) };
        }
        if tail > 0 {
            // SAFETY: as above, for the tail.
            unsafe { libc::munmap(end as *mut libc::c_void, tail) };
        }
        Ok(Self {
            addr: start,
            len,
            mapped: RwLock::new(Vec::new()),
            backed: Mutex::new(Vec::new()),
        })
    }

    /// The start address.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a region is never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn check_part(&self, offset: usize, len: usize) -> io::Result<()> {
        let page = page_size();
        let end = offset.checked_add(len).ok_or_else(einval)?;
        if len == 0 || offset % page != 0 || len % page != 0 || end > self.len {
            return Err(einval());
        }
        Ok(())
    }

    fn lock(&self) -> crate::sync::Held<std::sync::RwLockWriteGuard<'_, Vec<(usize, usize)>>> {
        crate::sync::write(&self.mapped)
    }

    /// Maps `len` bytes of `fd` from `fd_offset`, shared and read/write, over the part
    /// `offset..offset+len` of the region (which must be reserved, not mapped). With
    /// `populate`, then asks for transparent huge pages (ignored where not allowed) and
    /// pre-faults the page tables, so the first access runs at full speed; without, the page
    /// tables fill on first access (for processes that map many peers' windows and touch few of
    /// them).
    ///
    /// # Errors
    /// `EINVAL` for a bad or unaligned part, `EBUSY` when part of it is mapped, the OS error of
    /// `mmap`. On error the part is reserved again.
    pub fn map_shared(
        &self,
        offset: usize,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
        len: usize,
        populate: bool,
    ) -> io::Result<()> {
        self.check_part(offset, len)?;
        let fd_off = libc::off_t::try_from(fd_offset).map_err(|_| einval())?;
        let mut mapped = self.lock();
        if mapped
            .iter()
            .any(|&(o, l)| o < offset + len && offset < o + l)
        {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        let at = self.addr + offset;
        // SAFETY: `at..at+len` lies inside this region, which owns that address range and has
        // handed out no references into it; it is reserved (checked above), so replacing it
        // affects no memory in use.
        let r = unsafe { map_fd_fixed(at, len, fd, fd_off, 0) };
        if let Err(e) = r {
            drop(mapped);
            let _ = self.reserve_again(offset, len);
            return Err(e);
        }
        let pos = mapped
            .iter()
            .position(|&(o, _)| o > offset)
            .unwrap_or(mapped.len());
        mapped.insert(pos, (offset, len));
        remove_part(&mut crate::sync::lock(&self.backed), offset, offset + len);
        drop(mapped);
        if !populate {
            return Ok(());
        }
        // SAFETY: madvise on a range we just mapped; MADV_HUGEPAGE only changes page-size policy.
        let _ = unsafe { libc::madvise(at as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
        // SAFETY: MADV_POPULATE_WRITE faults the pages in as if written, without changing data.
        let pop = unsafe { libc::madvise(at as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) };
        if pop != 0 {
            // Kernels before 5.14: map again with MAP_POPULATE (same file range, same place).
            // SAFETY: replaces our own mapping of the same file range with an identical,
            // populated one; the bytes live in the file, so nothing is lost.
            let r = unsafe { map_fd_fixed(at, len, fd, fd_off, libc::MAP_POPULATE) };
            if let Err(e) = r {
                let _ = self.unmap(offset, len);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Turns `offset..offset+len`, which lies inside one mapped part (one earlier
    /// `map_shared`, e.g. the windows of several peers mapped at once), back into reservation
    /// (`PROT_NONE`): any later access faults instead of reaching the old memory. What remains
    /// of the part on either side stays mapped.
    ///
    /// # Errors
    /// `EINVAL` when the range is empty or not inside one mapped part; the OS error.
    pub fn unmap(&self, offset: usize, len: usize) -> io::Result<()> {
        let end = offset
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or_else(einval)?;
        let mut mapped = self.lock();
        let pos = mapped
            .iter()
            .position(|&(o, l)| o <= offset && end <= o + l)
            .ok_or_else(einval)?;
        let (o, l) = mapped.remove(pos);
        let mut at = pos;
        if o < offset {
            mapped.insert(at, (o, offset - o));
            at += 1;
        }
        if end < o + l {
            mapped.insert(at, (end, o + l - end));
        }
        drop(mapped);
        self.reserve_again(offset, len)
    }

    fn reserve_again(&self, offset: usize, len: usize) -> io::Result<()> {
        self.check_part(offset, len)?;
        let at = self.addr + offset;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED;
        // SAFETY: the part lies inside this region, which owns it; the caller has removed it from
        // the mapped set, so no accessor of ours uses it any more.
        mmap_ret(unsafe {
            libc::mmap(at as *mut libc::c_void, len, libc::PROT_NONE, flags, -1, 0)
        })?;
        remove_part(&mut crate::sync::lock(&self.backed), offset, offset + len);
        Ok(())
    }

    /// Maps `len` bytes of `fd` from `fd_offset`, shared but inaccessible (`PROT_NONE`), over
    /// the reserved part `offset..offset+len`: a backing of which [`Region::open`] makes pieces
    /// accessible and [`Region::close`] inaccessible again, one `mprotect` each, without
    /// mapping anything anew (e.g. the windows of a host's ranks in one segment, mapped once).
    /// Unmapped parts of it stay inaccessible like a reservation.
    ///
    /// # Errors
    /// `EINVAL` for a bad or unaligned part, `EBUSY` when part of it is mapped, the OS error of
    /// `mmap`. On error the part is reserved again.
    pub fn back_shared(
        &self,
        offset: usize,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
        len: usize,
    ) -> io::Result<()> {
        self.check_part(offset, len)?;
        let fd_off = libc::off_t::try_from(fd_offset).map_err(|_| einval())?;
        let mapped = self.lock();
        if mapped
            .iter()
            .any(|&(o, l)| o < offset + len && offset < o + l)
        {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        let at = self.addr + offset;
        let flags = libc::MAP_SHARED | libc::MAP_FIXED;
        // SAFETY: `at..at+len` lies inside this region, which owns it and has handed out no
        // references into it; it is not mapped (checked above, under the lock), so replacing
        // it affects no memory in use; the new mapping is inaccessible.
        let r = mmap_ret(unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                len,
                libc::PROT_NONE,
                flags,
                fd.as_raw_fd(),
                fd_off,
            )
        });
        if let Err(e) = r {
            drop(mapped);
            let _ = self.reserve_again(offset, len);
            return Err(e);
        }
        add_part(&mut crate::sync::lock(&self.backed), offset, offset + len);
        Ok(())
    }

    /// Makes `offset..offset+len`, inside one part of a [`Region::back_shared`] backing,
    /// accessible (read/write): mapped from then on, merged with the mapped parts it touches.
    /// With `populate`, pre-faults its page tables (best effort).
    ///
    /// # Errors
    /// `EINVAL` for a bad or unaligned part or one not inside one backing; the OS error of
    /// `mprotect`.
    pub fn open(&self, offset: usize, len: usize, populate: bool) -> io::Result<()> {
        self.protect(offset, len, true)?;
        if populate {
            let at = self.addr + offset;
            // SAFETY: MADV_POPULATE_WRITE faults in pages of a range we just made read/write,
            // as if written, without changing data; an older kernel refuses it (ignored: the
            // page tables then fill on first access).
            let _ =
                unsafe { libc::madvise(at as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) };
        }
        Ok(())
    }

    /// Faults in the pages of `offset..offset+len`, inside one mapped part, as if written
    /// (`MADV_POPULATE_WRITE`): for a shared file mapping this allocates the file's pages, and
    /// a lack of memory is an error here instead of a `SIGBUS` at a later access.
    ///
    /// # Errors
    /// `EINVAL` for a part not inside one mapped part, or from a kernel older than 5.14 (no
    /// `MADV_POPULATE_WRITE`); `ENOMEM` / `EFAULT` when the pages cannot be allocated.
    pub fn populate(&self, offset: usize, len: usize) -> io::Result<()> {
        self.check_part(offset, len)?;
        let mapped = self.lock();
        if !inside(&mapped, offset, offset + len) {
            return Err(einval());
        }
        let at = self.addr + offset;
        // SAFETY: the range lies in a mapped, read/write part of this region (checked above,
        // under the lock, which keeps it mapped for the call); faulting its pages in as if
        // written changes no data.
        let r = unsafe { libc::madvise(at as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes `offset..offset+len`, inside one part of a [`Region::back_shared`] backing,
    /// inaccessible again (`PROT_NONE`): not mapped from then on; any later access faults.
    ///
    /// # Errors
    /// As [`Region::open`].
    pub fn close(&self, offset: usize, len: usize) -> io::Result<()> {
        self.protect(offset, len, false)
    }

    fn protect(&self, offset: usize, len: usize, accessible: bool) -> io::Result<()> {
        self.check_part(offset, len)?;
        let end = offset + len;
        let mut mapped = self.lock();
        if !inside(&crate::sync::lock(&self.backed), offset, end) {
            return Err(einval());
        }
        let prot = if accessible {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            remove_part(&mut mapped, offset, end);
            libc::PROT_NONE
        };
        // SAFETY: the range lies in this region's shared file backing (checked above), which
        // the region owns; changing its protection frees nothing. Closing: removed from the
        // mapped set first (under the lock), so no accessor of ours uses it any more.
        let r = unsafe { libc::mprotect((self.addr + offset) as *mut libc::c_void, len, prot) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        if accessible {
            add_part(&mut mapped, offset, end);
        }
        Ok(())
    }

    /// Whether `offset..offset+len` lies inside one mapped part.
    pub fn is_mapped(&self, offset: usize, len: usize) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| inside(&crate::sync::read(&self.mapped), offset, end))
    }

    /// The address of byte `offset`, if `offset..offset+len` lies inside one mapped part.
    pub fn mapped_addr(&self, offset: usize, len: usize) -> Option<usize> {
        self.is_mapped(offset, len).then(|| self.addr + offset)
    }

    /// The bytes `offset..offset+len` as a range for raw copies, if they lie inside one mapped
    /// part. The range borrows the region, so the mapping outlives it unless the part is
    /// unmapped meanwhile: the owner's protocol must keep the part mapped while copies use the
    /// range (a copy after an unmap faults on the reservation; it never reaches memory outside
    /// the region).
    pub fn mapped_range(&self, offset: usize, len: usize) -> Option<RawRange<'_>> {
        let at = self.mapped_addr(offset, len)?;
        // SAFETY: the bytes lie in a mapped, read/write part of this region, which owns the
        // address range until it drops (the range borrows it); the region hands out no Rust
        // references into it.
        unsafe { RawRange::new(at as u64, len as u64) }
    }

    /// The bytes `offset..offset+len` as a range for raw copies, if they lie inside the region,
    /// mapped or not: a bounds check only, without the mapped-parts lock of
    /// [`Region::mapped_range`] (whose answer holds only at the time of the call anyway). For a
    /// data path whose own protocol already guarantees the part is mapped for as long as its
    /// copies run (a BM window entered under its object's slot lock): it must not hand out a
    /// range of a part it has not mapped.
    #[inline]
    pub fn reserved_range(&self, offset: usize, len: usize) -> Option<RawRange<'_>> {
        if offset.checked_add(len)? > self.len {
            return None;
        }
        // SAFETY: the bytes lie in this region, which owns the whole address range until it
        // drops (the range borrows it) and never gives any of it away: a part that is not mapped
        // is inaccessible reservation (`PROT_NONE`), so a copy through the range reaches this
        // region's own mapping or faults, never memory outside the region. The region hands out
        // no Rust references into it. That the part is mapped for the copies is the caller's
        // protocol, as for `mapped_range`.
        unsafe { RawRange::new((self.addr + offset) as u64, len as u64) }
    }

    /// Runs `f` with the address of `offset` while `offset..offset+len` is inside one mapped
    /// part, holding the lock (so `unmap`, which takes it, cannot remove the part meanwhile).
    fn with_mapped<R>(
        &self,
        offset: usize,
        len: usize,
        f: impl FnOnce(usize) -> R,
    ) -> io::Result<R> {
        let mapped = crate::sync::read(&self.mapped);
        let end = offset.checked_add(len).ok_or_else(einval)?;
        if !inside(&mapped, offset, end) {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        let r = f(self.addr + offset);
        drop(mapped);
        Ok(r)
    }

    /// Loads the `u64` at `offset` with acquire ordering; `None` unless it is 8-aligned and
    /// mapped. The word must only ever be accessed atomically, in every process mapping it.
    pub fn load_u64(&self, offset: usize) -> Option<u64> {
        if offset % 8 != 0 {
            return None;
        }
        self.with_mapped(offset, 8, |at| {
            let p = std::ptr::with_exposed_provenance_mut::<u64>(at);
            // SAFETY: aligned (region and offset are), mapped read/write while `with_mapped`
            // holds the lock, and only accessed atomically (documented contract of the word).
            unsafe { AtomicU64::from_ptr(p) }.load(Ordering::Acquire)
        })
        .ok()
    }

    /// Stores `v` at `offset` with release ordering; `false` unless it is 8-aligned and mapped.
    /// As [`Region::load_u64`].
    pub fn store_u64(&self, offset: usize, v: u64) -> bool {
        if offset % 8 != 0 {
            return false;
        }
        self.with_mapped(offset, 8, |at| {
            let p = std::ptr::with_exposed_provenance_mut::<u64>(at);
            // SAFETY: as in `load_u64`.
            unsafe { AtomicU64::from_ptr(p) }.store(v, Ordering::Release);
        })
        .is_ok()
    }

    /// Copies `buf.len()` bytes out of the region from `offset` (which must be mapped).
    ///
    /// # Errors
    /// `EFAULT` when the range is not inside one mapped part.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        self.with_mapped(offset, buf.len(), |at| {
            // SAFETY: the range is mapped read/write and stays mapped while `with_mapped` holds
            // the lock; `buf` is a distinct Rust buffer.
            unsafe { std::ptr::copy_nonoverlapping(at as *const u8, buf.as_mut_ptr(), buf.len()) }
        })
    }

    /// Copies `data` into the region at `offset` (which must be mapped).
    ///
    /// # Errors
    /// `EFAULT` when the range is not inside one mapped part.
    pub fn write(&self, offset: usize, data: &[u8]) -> io::Result<()> {
        self.with_mapped(offset, data.len(), |at| {
            // SAFETY: as in `read`; the destination is mapped writable and is not Rust memory.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), at as *mut u8, data.len()) }
        })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the region owns `addr..addr+len` and hands out no references; after Drop
        // nothing of ours refers to it.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}
