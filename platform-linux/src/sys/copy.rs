//! Raw memory ranges of this process and the copies between them.
//!
//! A [`RawRange`] is `len` bytes at `addr` that copies may read and write: memory a C caller
//! handed in (made by the C boundary, whose contract is the promise), a mapped window or
//! segment (made by its owner while it keeps the mapping), or a Rust buffer
//! ([`RawRange::from_mut`]). Everything that moves bytes through raw addresses (these copies,
//! `sys::net`'s socket I/O, `sys::peer`'s `process_vm_*`, the device copies) takes ranges and
//! checks every access against them, so the only `unsafe` step is making a range.
//!
//! Bytes of shared mappings may change under a copy (another process writing); the copy then
//! sees some mix of old and new bytes, the documented behaviour of unsynchronised shared memory.
//! Copies use `memmove` semantics, so overlapping ranges are allowed.

use std::io;
use std::marker::PhantomData;

/// `len` bytes at `addr` in this process that copies may read and write for `'a` (see the
/// module docs). Cheap to copy; carving a smaller range ([`RawRange::sub`]) is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawRange<'a> {
    addr: u64,
    len: u64,
    _mem: PhantomData<&'a mut [u8]>,
}

impl<'a> RawRange<'a> {
    /// No bytes.
    pub const EMPTY: Self = Self {
        addr: 0,
        len: 0,
        _mem: PhantomData,
    };

    /// The `len` bytes at `addr`; `None` when they wrap around the address space.
    ///
    /// # Safety
    /// For `'a` (in practice: until every copy handed this range or one carved from it has
    /// returned), the bytes must stay valid for the reads and writes those copies make, in the
    /// memory they name it as (host memory, or device memory for a device side of a device
    /// copy), and no Rust reference may point into them while a copy writes them.
    #[inline]
    pub const unsafe fn new(addr: u64, len: u64) -> Option<Self> {
        if addr.checked_add(len).is_none() {
            return None;
        }
        Some(Self {
            addr,
            len,
            _mem: PhantomData,
        })
    }

    /// The bytes of `buf`, exclusively borrowed for `'a`.
    #[inline]
    pub fn from_mut(buf: &'a mut [u8]) -> Self {
        Self {
            addr: buf.as_mut_ptr().expose_provenance() as u64,
            len: buf.len() as u64,
            _mem: PhantomData,
        }
    }

    /// The first byte's address.
    #[inline]
    pub const fn addr(self) -> u64 {
        self.addr
    }

    /// The length in bytes.
    #[inline]
    pub const fn len(self) -> u64 {
        self.len
    }

    /// Whether the range is empty.
    #[inline]
    pub const fn is_empty(self) -> bool {
        self.len == 0
    }

    /// The `len` bytes at `offset` of this range; `None` when they leave it.
    #[inline]
    pub const fn sub(self, offset: u64, len: u64) -> Option<Self> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Some(Self {
                addr: self.addr + offset,
                len,
                _mem: PhantomData,
            }),
            _ => None,
        }
    }

    /// This range followed by `next` as one range, when `next` starts where this one ends.
    #[inline]
    pub fn join(self, next: Self) -> Option<Self> {
        (self.addr.checked_add(self.len) == Some(next.addr)).then_some(Self {
            addr: self.addr,
            len: self.len + next.len,
            _mem: PhantomData,
        })
    }

    /// The bytes from `offset` to the end; `None` past the end.
    #[inline]
    pub const fn skip(self, offset: u64) -> Option<Self> {
        if offset > self.len {
            return None;
        }
        self.sub(offset, self.len - offset)
    }

    /// Whether `rows` rows of `width` bytes `pitch` apart, from the start, lie in the range.
    #[inline]
    pub fn holds_rows(self, pitch: u64, width: u64, rows: u64) -> bool {
        rows == 0
            || (rows - 1)
                .checked_mul(pitch)
                .and_then(|v| v.checked_add(width))
                .is_some_and(|end| end <= self.len)
    }

    /// The first byte as a pointer (exposed provenance: the range was made from an address).
    #[inline]
    pub(crate) fn ptr(self) -> *mut u8 {
        std::ptr::with_exposed_provenance_mut(self.addr as usize)
    }
}

/// The local side of a BM copy of type `copy_type` as a range: `src` (address, span) for
/// `L2G`/`H2G`, `dest` for `G2L`/`G2H`; `None` for `G2G` and unknown types (no local side). The
/// C boundary (and tests standing in for it) vouch for the caller's memory with it.
///
/// # Safety
/// As [`RawRange::new`] for the chosen side: the promise a caller of `smem_bm_copy` makes.
pub unsafe fn bm_local(
    copy_type: u32,
    src: (u64, u64),
    dest: (u64, u64),
) -> Option<RawRange<'static>> {
    let ty = smem_core::bm::CopyType::from_raw(copy_type)?;
    let (addr, len) = if ty.writes_global() { src } else { dest };
    // SAFETY: forwarded contract.
    unsafe { RawRange::new(addr, len) }
}

/// The shape of a strided copy: `height` rows of `width` bytes, source rows `spitch` bytes
/// apart, destination rows `dpitch` bytes apart (a 1D copy is one row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape2d {
    /// Distance between source rows.
    pub spitch: usize,
    /// Distance between destination rows.
    pub dpitch: usize,
    /// Bytes per row.
    pub width: usize,
    /// Number of rows.
    pub height: usize,
}

impl Shape2d {
    /// `height` rows of `width` bytes, `spitch` apart in the source and `dpitch` in the
    /// destination.
    pub const fn new(spitch: usize, dpitch: usize, width: usize, height: usize) -> Self {
        Self {
            spitch,
            dpitch,
            width,
            height,
        }
    }

    /// One row of `len` bytes (a 1D copy).
    pub const fn row(len: usize) -> Self {
        Self::new(len, len, len, 1)
    }

    /// Checks that every row of the shape lies in `src` (source rows) and `dst` (destination
    /// rows): the copy, ready to run.
    ///
    /// # Errors
    /// `InvalidInput` naming the side whose rows leave its range.
    #[inline]
    pub fn check<'a>(self, src: RawRange<'a>, dst: RawRange<'a>) -> io::Result<Checked<'a>> {
        let (w, h) = (self.width as u64, self.height as u64);
        if !src.holds_rows(self.spitch as u64, w, h) {
            return Err(out_of_range("source", self, src));
        }
        if !dst.holds_rows(self.dpitch as u64, w, h) {
            return Err(out_of_range("destination", self, dst));
        }
        Ok(Checked {
            src,
            dst,
            shape: self,
        })
    }
}

/// A strided copy whose rows were checked to lie in their ranges ([`Shape2d::check`]): what
/// the raw copies (host here, device in `sys::acl`) run.
#[derive(Clone, Copy, Debug)]
pub struct Checked<'a> {
    src: RawRange<'a>,
    dst: RawRange<'a>,
    shape: Shape2d,
}

impl Checked<'_> {
    /// The shape.
    #[inline]
    pub const fn shape(&self) -> Shape2d {
        self.shape
    }

    /// The first source byte.
    #[inline]
    pub(crate) fn src(&self) -> *const u8 {
        self.src.ptr().cast_const()
    }

    /// The first destination byte.
    #[inline]
    pub(crate) fn dst(&self) -> *mut u8 {
        self.dst.ptr()
    }

    /// Row `row`'s (source, destination) start; `row < height`, so inside the ranges.
    #[inline]
    pub(crate) fn row(&self, row: usize) -> (*const u8, *mut u8) {
        // In bounds by `check`; `wrapping_add` keeps the arithmetic defined regardless.
        (
            self.src().wrapping_add(row.wrapping_mul(self.shape.spitch)),
            self.dst().wrapping_add(row.wrapping_mul(self.shape.dpitch)),
        )
    }

    /// Runs the copy in host memory.
    #[inline]
    pub fn run(&self) {
        for row in 0..self.shape.height {
            let (s, d) = self.row(row);
            // SAFETY: `check` proved row `row` of both sides inside its range, and a range's
            // bytes are valid for reads and writes while it lives (`RawRange::new`'s contract,
            // or a borrowed buffer). `ptr::copy` allows the rows to overlap.
            unsafe { std::ptr::copy(s, d, self.shape.width) };
        }
    }
}

#[cold]
fn out_of_range(side: &str, s: Shape2d, r: RawRange<'_>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "copy of {} rows of {} bytes: the {side} rows leave their {}-byte range",
            s.height,
            s.width,
            r.len()
        ),
    )
}

/// Copies the rows of `shape`: row `i` from offset `i*spitch` of `src` to offset `i*dpitch` of
/// `dst`.
///
/// # Errors
/// As [`Shape2d::check`]; nothing is copied then.
#[inline]
pub fn copy_2d(src: RawRange<'_>, dst: RawRange<'_>, shape: Shape2d) -> io::Result<()> {
    shape.check(src, dst)?.run();
    Ok(())
}

/// Copies all of `src` to the start of `dst`.
///
/// # Errors
/// `InvalidInput` when `dst` is shorter than `src`.
#[inline]
pub fn copy(src: RawRange<'_>, dst: RawRange<'_>) -> io::Result<()> {
    let len = usize::try_from(src.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length exceeds usize"))?;
    copy_2d(src, dst, Shape2d::row(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_ranges_stay_inside() {
        let mut buf = [0u8; 16];
        let r = RawRange::from_mut(&mut buf);
        assert_eq!(r.sub(4, 12).map(RawRange::len), Some(12));
        assert!(r.sub(4, 13).is_none());
        assert!(r.sub(u64::MAX, 2).is_none());
        assert_eq!(r.skip(16).map(RawRange::len), Some(0));
        assert!(r.skip(17).is_none());
        assert!(r.holds_rows(5, 6, 3));
        assert!(!r.holds_rows(5, 7, 3));
        assert!(r.holds_rows(u64::MAX, 1, 0));
        assert!(!r.holds_rows(u64::MAX, 1, 2));
        // SAFETY: never used for a copy.
        assert!(unsafe { RawRange::new(u64::MAX, 1) }.is_none());
    }

    #[test]
    fn copies_rows_and_refuses_rows_outside() {
        let mut src: Vec<u8> = (0..12).collect();
        let mut dst = [0u8; 9];
        let s = RawRange::from_mut(&mut src);
        let d = RawRange::from_mut(&mut dst);
        copy_2d(s, d, Shape2d::new(4, 3, 3, 3)).expect("fits");
        let e = copy_2d(s, d, Shape2d::new(4, 3, 3, 4)).expect_err("leaves");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("source"), "{e}");
        assert!(copy(s, d).is_err());
        assert_eq!(&dst[..], &[0, 1, 2, 4, 5, 6, 8, 9, 10]);
    }
}
