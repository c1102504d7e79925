//! Global virtual addresses (GVA): typed addresses, inclusive ranges and a fixed-capacity range
//! allocator.
//!
//! Invariants:
//! - [`Gva`] has no arithmetic operators; every step is `checked_*` and returns `None` on
//!   overflow, so an address computation never wraps silently.
//! - A [`GvaRange`] is never empty and its inclusive `last` byte is always `>= start`, so a range
//!   ending at `u64::MAX` is representable. Its only constructors reject `len == 0` and overflow.
//! - A [`RangeAllocator`] keeps its allocated ranges sorted by start and pairwise disjoint, all
//!   inside its search area; this is re-checked (`debug_assert!`) after every mutation.
//!
//! The allocator never touches memory: it only decides which candidate ranges of a search area
//! are in use. The platform layer turns a chosen range into a reservation.

use core::fmt;

/// A global virtual address: the same value names the same byte in every member process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Gva(pub u64);

impl Gva {
    /// The raw address.
    #[inline]
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// `self + offset`, or `None` on overflow.
    #[inline]
    pub const fn checked_add(self, offset: u64) -> Option<Self> {
        match self.0.checked_add(offset) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// `self - offset`, or `None` on underflow.
    #[inline]
    pub const fn checked_sub(self, offset: u64) -> Option<Self> {
        match self.0.checked_sub(offset) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// The distance from `base` up to `self`, or `None` when `self < base`.
    #[inline]
    pub const fn checked_offset_from(self, base: Self) -> Option<u64> {
        self.0.checked_sub(base.0)
    }

    /// The smallest address `>= self` that is a multiple of `align`, or `None` on overflow or
    /// when `align` is not a power of two.
    #[inline]
    pub const fn checked_align_up(self, align: u64) -> Option<Self> {
        if !align.is_power_of_two() {
            return None;
        }
        let mask = align - 1;
        match self.0.checked_add(mask) {
            Some(v) => Some(Self(v & !mask)),
            None => None,
        }
    }

    /// Whether `self` is a multiple of `align` (`false` when `align` is not a power of two).
    #[inline]
    pub const fn is_aligned(self, align: u64) -> bool {
        align.is_power_of_two() && self.0 & (align - 1) == 0
    }
}

impl fmt::Display for Gva {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// `len` rounded up to a multiple of `align` (a power of two), or `None` on overflow or a bad
/// `align`.
#[inline]
pub const fn checked_round_up(len: u64, align: u64) -> Option<u64> {
    match Gva(len).checked_align_up(align) {
        Some(g) => Some(g.0),
        None => None,
    }
}

/// A non-empty range of global addresses with an inclusive last byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GvaRange {
    start: Gva,
    last: Gva,
}

impl GvaRange {
    /// The range of `len` bytes from `start`; `None` when `len == 0` or the last byte would lie
    /// beyond `u64::MAX`.
    #[inline]
    pub const fn new(start: Gva, len: u64) -> Option<Self> {
        if len == 0 {
            return None;
        }
        match start.0.checked_add(len - 1) {
            Some(last) => Some(Self {
                start,
                last: Gva(last),
            }),
            None => None,
        }
    }

    /// The range `start..=last`; `None` when `last < start`.
    #[inline]
    pub const fn from_inclusive(start: Gva, last: Gva) -> Option<Self> {
        if last.0 < start.0 {
            None
        } else {
            Some(Self { start, last })
        }
    }

    /// The first byte.
    #[inline]
    pub const fn start(&self) -> Gva {
        self.start
    }

    /// The last byte (inclusive).
    #[inline]
    pub const fn last(&self) -> Gva {
        self.last
    }

    /// Always `false`: a range holds at least one byte (for the `len`/`is_empty` convention).
    #[inline]
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// The number of bytes, or `None` for the one range that has 2^64 bytes
    /// (`0..=u64::MAX`), which [`GvaRange::new`] cannot build but
    /// [`GvaRange::from_inclusive`] can.
    #[inline]
    pub const fn len(&self) -> Option<u64> {
        (self.last.0 - self.start.0).checked_add(1)
    }

    /// The first byte after the range, or `None` when the range ends at `u64::MAX`.
    #[inline]
    pub const fn end(&self) -> Option<Gva> {
        self.last.checked_add(1)
    }

    /// Whether `addr` lies in the range.
    #[inline]
    pub const fn contains(&self, addr: Gva) -> bool {
        self.start.0 <= addr.0 && addr.0 <= self.last.0
    }

    /// Whether `other` lies entirely in the range.
    #[inline]
    pub const fn contains_range(&self, other: &Self) -> bool {
        self.start.0 <= other.start.0 && other.last.0 <= self.last.0
    }

    /// Whether the two ranges share at least one byte.
    #[inline]
    pub const fn overlaps(&self, other: &Self) -> bool {
        self.start.0 <= other.last.0 && other.start.0 <= self.last.0
    }
}

impl fmt::Display for GvaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}..={:#x}]", self.start.0, self.last.0)
    }
}

/// Why a [`RangeAllocator`] operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AllocError {
    /// All `N` slots hold a range; free one first.
    TableFull,
    /// No gap of the search area fits the length at the alignment.
    NoSpace,
    /// The range is not exactly one allocated range.
    NotAllocated,
    /// The requested range overlaps an allocated one.
    Overlaps,
    /// The requested range is not inside the search area.
    OutOfArea,
    /// Length 0, or an alignment that is not a power of two.
    BadRequest,
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TableFull => "range table full",
            Self::NoSpace => "no free gap of the search area fits the request",
            Self::NotAllocated => "range is not allocated",
            Self::Overlaps => "range overlaps an allocated range",
            Self::OutOfArea => "range lies outside the search area",
            Self::BadRequest => "zero length or alignment not a power of two",
        })
    }
}

impl core::error::Error for AllocError {}

/// Hands out disjoint ranges of a search area, first fit, with at most `N` ranges in use.
#[derive(Clone, Debug)]
pub struct RangeAllocator<const N: usize> {
    area: GvaRange,
    ranges: heapless::Vec<GvaRange, N>,
}

impl<const N: usize> RangeAllocator<N> {
    /// An allocator over `area` with nothing allocated.
    pub const fn new(area: GvaRange) -> Self {
        Self {
            area,
            ranges: heapless::Vec::new(),
        }
    }

    /// The search area.
    pub const fn area(&self) -> GvaRange {
        self.area
    }

    /// The allocated ranges, sorted by start.
    pub fn ranges(&self) -> &[GvaRange] {
        &self.ranges
    }

    /// The first (lowest) range of `len` bytes starting at a multiple of `align` that overlaps
    /// nothing allocated, or an error. Nothing is recorded.
    ///
    /// # Errors
    /// [`AllocError::BadRequest`] for `len == 0` or a bad `align`; [`AllocError::NoSpace`].
    pub fn find(&self, len: u64, align: u64) -> Result<GvaRange, AllocError> {
        self.find_from(self.area.start(), len, align)
    }

    /// As [`RangeAllocator::find`], considering only ranges starting at or after `from`.
    ///
    /// # Errors
    /// As [`RangeAllocator::find`].
    pub fn find_from(&self, from: Gva, len: u64, align: u64) -> Result<GvaRange, AllocError> {
        if len == 0 || !align.is_power_of_two() {
            return Err(AllocError::BadRequest);
        }
        let mut cursor = if from > self.area.start() {
            from
        } else {
            self.area.start()
        };
        for taken in self.ranges.iter() {
            if let Some(candidate) = self.fit_before(cursor, len, align, taken.start()) {
                return Ok(candidate);
            }
            match taken.end() {
                Some(next) if next > cursor => cursor = next,
                Some(_) => {}
                None => return Err(AllocError::NoSpace),
            }
        }
        let candidate = self.fit_at(cursor, len, align).ok_or(AllocError::NoSpace)?;
        Ok(candidate)
    }

    /// A candidate at `cursor` (aligned up) that ends before `limit` (exclusive).
    fn fit_before(&self, cursor: Gva, len: u64, align: u64, limit: Gva) -> Option<GvaRange> {
        let candidate = self.fit_at(cursor, len, align)?;
        (candidate.last() < limit).then_some(candidate)
    }

    /// A candidate at `cursor` (aligned up) inside the area.
    fn fit_at(&self, cursor: Gva, len: u64, align: u64) -> Option<GvaRange> {
        let start = cursor.checked_align_up(align)?;
        let candidate = GvaRange::new(start, len)?;
        self.area.contains_range(&candidate).then_some(candidate)
    }

    /// Allocates the first fitting range (see [`RangeAllocator::find`]).
    ///
    /// # Errors
    /// [`AllocError::TableFull`] when `N` ranges are in use, else as [`RangeAllocator::find`].
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<GvaRange, AllocError> {
        if self.ranges.is_full() {
            return Err(AllocError::TableFull);
        }
        let range = self.find(len, align)?;
        self.insert(range)?;
        Ok(range)
    }

    /// Records exactly `range` as allocated (e.g. a base agreed elsewhere).
    ///
    /// # Errors
    /// [`AllocError::OutOfArea`], [`AllocError::Overlaps`], [`AllocError::TableFull`].
    pub fn alloc_at(&mut self, range: GvaRange) -> Result<(), AllocError> {
        if !self.area.contains_range(&range) {
            return Err(AllocError::OutOfArea);
        }
        if self.ranges.iter().any(|r| r.overlaps(&range)) {
            return Err(AllocError::Overlaps);
        }
        self.insert(range)
    }

    fn insert(&mut self, range: GvaRange) -> Result<(), AllocError> {
        let at = self
            .ranges
            .iter()
            .position(|r| r.start() > range.start())
            .unwrap_or(self.ranges.len());
        self.ranges
            .insert(at, range)
            .map_err(|_| AllocError::TableFull)?;
        debug_assert!(self.is_sorted_disjoint());
        Ok(())
    }

    /// Frees a range previously returned by [`RangeAllocator::alloc`] or recorded by
    /// [`RangeAllocator::alloc_at`]; it must match exactly.
    ///
    /// # Errors
    /// [`AllocError::NotAllocated`].
    pub fn free(&mut self, range: GvaRange) -> Result<(), AllocError> {
        let at = self
            .ranges
            .iter()
            .position(|r| *r == range)
            .ok_or(AllocError::NotAllocated)?;
        self.ranges.remove(at);
        debug_assert!(self.is_sorted_disjoint());
        Ok(())
    }

    /// Whether the allocated ranges are sorted, pairwise disjoint and inside the area (the
    /// invariant every method keeps).
    pub fn is_sorted_disjoint(&self) -> bool {
        self.ranges.iter().all(|r| self.area.contains_range(r))
            && self.ranges.windows(2).all(|w| w[0].last() < w[1].start())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB2: u64 = 2 * 1024 * 1024;

    fn range(start: u64, len: u64) -> GvaRange {
        GvaRange::new(Gva(start), len).expect("valid test range")
    }

    #[test]
    fn gva_checked_arithmetic() {
        assert_eq!(Gva(u64::MAX).checked_add(1), None);
        assert_eq!(Gva(u64::MAX - 1).checked_add(1), Some(Gva(u64::MAX)));
        assert_eq!(Gva(0).checked_sub(1), None);
        assert_eq!(Gva(5).checked_offset_from(Gva(6)), None);
        assert_eq!(Gva(6).checked_offset_from(Gva(5)), Some(1));
        assert_eq!(Gva(1).checked_align_up(MIB2), Some(Gva(MIB2)));
        assert_eq!(Gva(MIB2).checked_align_up(MIB2), Some(Gva(MIB2)));
        assert_eq!(Gva(u64::MAX).checked_align_up(MIB2), None);
        assert_eq!(Gva(1).checked_align_up(3), None);
        assert!(Gva(4 * MIB2).is_aligned(MIB2));
        assert!(!Gva(4 * MIB2 + 1).is_aligned(MIB2));
        assert_eq!(checked_round_up(1, MIB2), Some(MIB2));
        assert_eq!(checked_round_up(0, MIB2), Some(0));
    }

    #[test]
    fn range_edges() {
        assert_eq!(GvaRange::new(Gva(1), 0), None);
        assert_eq!(GvaRange::new(Gva(u64::MAX), 2), None);
        let top = GvaRange::new(Gva(u64::MAX), 1).expect("last byte of the space");
        assert_eq!(top.len(), Some(1));
        assert_eq!(top.end(), None);
        let all = GvaRange::from_inclusive(Gva(0), Gva(u64::MAX)).expect("whole space");
        assert_eq!(all.len(), None);
        assert_eq!(GvaRange::from_inclusive(Gva(2), Gva(1)), None);
        let r = range(0x1000, 0x1000);
        assert_eq!(r.last(), Gva(0x1fff));
        assert!(r.contains(Gva(0x1fff)));
        assert!(!r.contains(Gva(0x2000)));
        assert!(r.overlaps(&range(0x1fff, 1)));
        assert!(!r.overlaps(&range(0x2000, 1)));
        assert!(r.contains_range(&range(0x1000, 0x1000)));
        assert!(!r.contains_range(&range(0x1000, 0x1001)));
    }

    #[test]
    fn first_fit_alloc_and_free() {
        let mut a: RangeAllocator<4> = RangeAllocator::new(range(MIB2, 8 * MIB2));
        let r1 = a.alloc(MIB2, MIB2).expect("first");
        assert_eq!(r1, range(MIB2, MIB2));
        let r2 = a.alloc(3 * MIB2, MIB2).expect("second");
        assert_eq!(r2, range(2 * MIB2, 3 * MIB2));
        a.free(r1).expect("free first");
        // The hole at the start is reused first.
        assert_eq!(a.alloc(MIB2, MIB2), Ok(r1));
        assert_eq!(a.alloc(5 * MIB2, MIB2), Err(AllocError::NoSpace));
        let r3 = a.alloc(4 * MIB2, MIB2).expect("fills the rest");
        assert_eq!(r3.last(), a.area().last());
        assert_eq!(a.free(range(MIB2, 2 * MIB2)), Err(AllocError::NotAllocated));
        assert!(a.is_sorted_disjoint());
    }

    #[test]
    fn alignment_and_table_full() {
        let mut a: RangeAllocator<2> = RangeAllocator::new(range(1, 100));
        assert_eq!(a.alloc(0, 1), Err(AllocError::BadRequest));
        assert_eq!(a.alloc(1, 6), Err(AllocError::BadRequest));
        assert_eq!(a.alloc(10, 16), Ok(range(16, 10)));
        assert_eq!(a.alloc(1, 1), Ok(range(1, 1)));
        assert_eq!(a.alloc(1, 1), Err(AllocError::TableFull));
    }

    #[test]
    fn alloc_at_and_area_end() {
        let area = GvaRange::from_inclusive(Gva(u64::MAX - 0xff), Gva(u64::MAX)).expect("area");
        let mut a: RangeAllocator<4> = RangeAllocator::new(area);
        assert_eq!(a.alloc_at(range(u64::MAX - 0xf, 0x10)), Ok(()));
        assert_eq!(
            a.alloc_at(range(u64::MAX - 0x10, 2)),
            Err(AllocError::Overlaps)
        );
        assert_eq!(a.alloc_at(range(0, 2)), Err(AllocError::OutOfArea));
        // The gap below the top range is found; nothing after the range ending at u64::MAX.
        assert_eq!(a.alloc(0xf0, 1), Ok(range(u64::MAX - 0xff, 0xf0)));
        assert_eq!(a.alloc(1, 1), Err(AllocError::NoSpace));
        assert_eq!(a.find_from(Gva(0), 1, 1), Err(AllocError::NoSpace));
    }

    #[test]
    fn find_from_skips_earlier_candidates() {
        let a: RangeAllocator<4> = RangeAllocator::new(range(0, 16 * MIB2));
        assert_eq!(
            a.find_from(Gva(5 * MIB2 + 1), MIB2, MIB2),
            Ok(range(6 * MIB2, MIB2))
        );
        assert_eq!(
            a.find_from(Gva(16 * MIB2), MIB2, MIB2),
            Err(AllocError::NoSpace)
        );
    }
}
