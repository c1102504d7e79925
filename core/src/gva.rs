//! Global virtual addresses (GVA): typed addresses and inclusive ranges.
//!
//! Invariants:
//! - [`Gva`] has no arithmetic operators; every step is `checked_*` and returns `None` on
//!   overflow, so an address computation never wraps silently.
//! - A [`GvaRange`] is never empty and its inclusive `last` byte is always `>= start`, so a range
//!   ending at `u64::MAX` is representable. Its only constructors reject `len == 0` and overflow.
//!
//! Nothing here touches memory: the platform layer reserves the ranges (`mem::gva` of
//! `smem-linux`).

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
}
