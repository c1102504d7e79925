//! BM window layout and copy validation (SPEC 2.2).
//!
//! An object of `member_size` ranks owns the GVA span `base..base + member_size * stride`.
//! Rank `r`'s window is `[base + r*stride, base + (r+1)*stride)`; inside it the HBM part comes
//! first (at the window start), then the DRAM part, each rounded up to 2 MiB
//! ([`WINDOW_ALIGN`]); the rest of the window, if `stride` is larger than the two parts, is
//! padding that no copy may touch.
//!
//! Copy rules (decided here, documented for the C API):
//! - The copy type names the local side: `L2G`/`G2L` move between *device* memory of this
//!   process and the global space, `H2G`/`G2H` between *host* memory and the global space.
//!   `L2G`/`H2G` write the global side (`dest`), `G2L`/`G2H` read it (`src`).
//! - The global side may lie in either part of any window; it must lie entirely inside one part
//!   of one window. The copy type does not restrict the part: the route (device copy engine or
//!   memory copy) is chosen from the part and the local side.
//! - Size 0 (or a 2D width or height of 0), an unknown type, a NULL local pointer, an address
//!   range that wraps past `u64::MAX`, a pitch smaller than the width, and a local range that
//!   overlaps the global range are errors. Every check is overflow-safe and the last byte of a
//!   part is usable.
//! - 2D copies are checked by their whole strided span (`(height-1)*pitch + width` bytes), on
//!   both sides; the local/global overlap check uses the spans too (conservative).
//!
//! Nothing here allocates, logs or touches memory; errors carry the numbers so the platform can
//! write a precise message (their `Display` already does).

use core::fmt;

use crate::gva::{Gva, GvaRange, checked_round_up};
use crate::limits::{WINDOW_ALIGN, WORLD_SIZE_MAX};

mod copy;
mod g2g;

pub use self::copy::{
    Copy2d, Copy2dPlan, CopyError, CopyPlan, CopyType, LocalMemory, check_copy, check_copy_2d,
};
pub use self::g2g::{
    ASYNC_COPY_FLAG, COPY_G2G, G2g2dPlan, G2gPlan, check_copy_2d_g2g, check_copy_flags,
    check_copy_g2g,
};

/// One of the two parts of a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    /// Device memory, at the window start.
    Hbm,
    /// Host memory, after the HBM part.
    Dram,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hbm => "HBM",
            Self::Dram => "DRAM",
        })
    }
}

/// Why a window layout cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayoutError {
    /// Both sizes are 0.
    NoMemory,
    /// `member_size` is 0 or above [`WORLD_SIZE_MAX`].
    BadMemberSize {
        /// The value given.
        member_size: u32,
    },
    /// A size rounded up to 2 MiB, or their sum, does not fit in a `u64`.
    SizeOverflow,
    /// The stride is not a multiple of 2 MiB or is smaller than the two parts.
    BadStride {
        /// The stride given.
        stride: u64,
        /// The smallest valid stride.
        min: u64,
    },
    /// The base is not 2 MiB aligned.
    UnalignedBase {
        /// The base given.
        base: u64,
    },
    /// `base + member_size * stride` does not fit in the address space.
    SpanOverflow,
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoMemory => {
                f.write_str("both the DRAM and the HBM size are 0; give at least one")
            }
            Self::BadMemberSize { member_size } => write!(
                f,
                "member size {member_size} is outside 1..={WORLD_SIZE_MAX}"
            ),
            Self::SizeOverflow => {
                f.write_str("window part sizes overflow 64 bits when rounded up to 2 MiB")
            }
            Self::BadStride { stride, min } => write!(
                f,
                "window stride {stride:#x} must be a multiple of 2 MiB and at least {min:#x}"
            ),
            Self::UnalignedBase { base } => write!(f, "object base {base:#x} is not 2 MiB aligned"),
            Self::SpanOverflow => f.write_str("object span overflows the 64-bit address space"),
        }
    }
}

impl core::error::Error for LayoutError {}

/// The GVA layout of one BM object, the same in every member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WindowLayout {
    base: Gva,
    stride: u64,
    member_size: u32,
    hbm_len: u64,
    dram_len: u64,
    span: GvaRange,
}

/// Both part sizes rounded up to 2 MiB and their sum (the smallest stride).
///
/// # Errors
/// [`LayoutError::NoMemory`] when both are 0, [`LayoutError::SizeOverflow`].
pub fn part_lens(hbm_size: u64, dram_size: u64) -> Result<(u64, u64, u64), LayoutError> {
    if hbm_size == 0 && dram_size == 0 {
        return Err(LayoutError::NoMemory);
    }
    let hbm = checked_round_up(hbm_size, WINDOW_ALIGN).ok_or(LayoutError::SizeOverflow)?;
    let dram = checked_round_up(dram_size, WINDOW_ALIGN).ok_or(LayoutError::SizeOverflow)?;
    let sum = hbm.checked_add(dram).ok_or(LayoutError::SizeOverflow)?;
    Ok((hbm, dram, sum))
}

impl WindowLayout {
    /// The layout of an object at `base` with `member_size` windows of `stride` bytes, whose
    /// parts hold `hbm_size` and `dram_size` bytes (each rounded up to 2 MiB here).
    ///
    /// # Errors
    /// Any [`LayoutError`].
    pub fn new(
        base: Gva,
        stride: u64,
        member_size: u32,
        hbm_size: u64,
        dram_size: u64,
    ) -> Result<Self, LayoutError> {
        if member_size == 0 || member_size as usize > WORLD_SIZE_MAX {
            return Err(LayoutError::BadMemberSize { member_size });
        }
        let (hbm_len, dram_len, min) = part_lens(hbm_size, dram_size)?;
        if stride < min || !Gva(stride).is_aligned(WINDOW_ALIGN) {
            return Err(LayoutError::BadStride { stride, min });
        }
        if !base.is_aligned(WINDOW_ALIGN) {
            return Err(LayoutError::UnalignedBase { base: base.0 });
        }
        let span = stride
            .checked_mul(u64::from(member_size))
            .ok_or(LayoutError::SpanOverflow)?;
        let span = GvaRange::new(base, span).ok_or(LayoutError::SpanOverflow)?;
        Ok(Self {
            base,
            stride,
            member_size,
            hbm_len,
            dram_len,
            span,
        })
    }

    /// The same layout moved to another base (e.g. the next GVA candidate).
    ///
    /// # Errors
    /// As [`WindowLayout::new`].
    pub fn with_base(&self, base: Gva) -> Result<Self, LayoutError> {
        Self::new(
            base,
            self.stride,
            self.member_size,
            self.hbm_len,
            self.dram_len,
        )
    }

    /// Rank 0's window start.
    pub const fn base(&self) -> Gva {
        self.base
    }

    /// The distance between two windows.
    pub const fn stride(&self) -> u64 {
        self.stride
    }

    /// The number of windows.
    pub const fn member_size(&self) -> u32 {
        self.member_size
    }

    /// The HBM part length (a multiple of 2 MiB, maybe 0).
    pub const fn hbm_len(&self) -> u64 {
        self.hbm_len
    }

    /// The DRAM part length (a multiple of 2 MiB, maybe 0).
    pub const fn dram_len(&self) -> u64 {
        self.dram_len
    }

    /// What one member contributes: `hbm_len + dram_len` (checked in [`WindowLayout::new`]).
    pub const fn local_mem_size(&self) -> u64 {
        self.hbm_len + self.dram_len
    }

    /// The byte count of the whole object (`member_size * stride`, checked at construction).
    pub const fn span_len(&self) -> u64 {
        self.stride * self.member_size as u64
    }

    /// The whole object's GVA range.
    pub const fn span(&self) -> GvaRange {
        self.span
    }

    /// Rank `rank`'s window start, or `None` when `rank >= member_size`.
    pub fn window_base(&self, rank: u32) -> Option<Gva> {
        if rank >= self.member_size {
            return None;
        }
        self.base
            .checked_add(u64::from(rank).checked_mul(self.stride)?)
    }

    /// Rank `rank`'s window, or `None` when `rank >= member_size`.
    pub fn window(&self, rank: u32) -> Option<GvaRange> {
        GvaRange::new(self.window_base(rank)?, self.stride)
    }

    /// The offset of `part` from its window start.
    pub const fn part_offset(&self, part: Part) -> u64 {
        match part {
            Part::Hbm => 0,
            Part::Dram => self.hbm_len,
        }
    }

    /// The length of `part`.
    pub const fn part_len(&self, part: Part) -> u64 {
        match part {
            Part::Hbm => self.hbm_len,
            Part::Dram => self.dram_len,
        }
    }

    /// Rank `rank`'s `part`, or `None` when the rank is out of range or the part is empty.
    pub fn part(&self, rank: u32, part: Part) -> Option<GvaRange> {
        let start = self
            .window_base(rank)?
            .checked_add(self.part_offset(part))?;
        GvaRange::new(start, self.part_len(part))
    }

    /// Where the `len` bytes at `addr` lie: one part of one window, or an error.
    ///
    /// # Errors
    /// [`CopyError::ZeroSize`], [`CopyError::GlobalOverflow`], [`CopyError::OutsideObject`],
    /// [`CopyError::NotInPart`], [`CopyError::CrossesPart`].
    pub fn locate(&self, addr: Gva, len: u64) -> Result<Location, CopyError> {
        if len == 0 {
            return Err(CopyError::ZeroSize);
        }
        GvaRange::new(addr, len).ok_or(CopyError::GlobalOverflow { addr: addr.0, len })?;
        let outside = CopyError::OutsideObject {
            addr: addr.0,
            len,
            base: self.base.0,
            span_len: self.span_len(),
        };
        let off = addr.checked_offset_from(self.base).ok_or(outside)?;
        if off >= self.span_len() {
            return Err(outside);
        }
        // `stride > 0` (at least 2 MiB) and `off < member_size * stride`, so `rank < member_size`.
        let rank = u32::try_from(off / self.stride).map_err(|_| outside)?;
        let in_window = off % self.stride;
        let (part, offset) = if in_window < self.hbm_len {
            (Part::Hbm, in_window)
        } else if in_window - self.hbm_len < self.dram_len {
            (Part::Dram, in_window - self.hbm_len)
        } else {
            return Err(CopyError::NotInPart {
                rank,
                addr: addr.0,
                stride: self.stride,
            });
        };
        // `offset < part_len`, so `room >= 1`; the last byte `offset + len - 1` must stay below
        // `part_len`.
        let room = self.part_len(part) - offset;
        if len > room {
            let part_last = addr.0 + (room - 1);
            return Err(CopyError::CrossesPart {
                rank,
                part,
                addr: addr.0,
                len,
                part_last,
                stride: self.stride,
            });
        }
        Ok(Location {
            rank,
            part,
            offset,
            len,
        })
    }

    /// Where the strided span of `height` rows of `width` bytes, `pitch` apart, starting at
    /// `addr`, lies.
    ///
    /// # Errors
    /// As [`WindowLayout::locate`], plus [`CopyError::PitchTooSmall`] and
    /// [`CopyError::SpanOverflow`].
    pub fn locate_2d(
        &self,
        addr: Gva,
        pitch: u64,
        width: u64,
        height: u64,
    ) -> Result<Location, CopyError> {
        let len = span_2d(pitch, width, height)?;
        self.locate(addr, len)
    }
}

/// The byte count of a strided 2D span: `(height - 1) * pitch + width`.
///
/// # Errors
/// [`CopyError::ZeroSize`] for a zero width or height, [`CopyError::PitchTooSmall`],
/// [`CopyError::SpanOverflow`].
pub fn span_2d(pitch: u64, width: u64, height: u64) -> Result<u64, CopyError> {
    if width == 0 || height == 0 {
        return Err(CopyError::ZeroSize);
    }
    if pitch < width {
        return Err(CopyError::PitchTooSmall { pitch, width });
    }
    (height - 1)
        .checked_mul(pitch)
        .and_then(|v| v.checked_add(width))
        .ok_or(CopyError::SpanOverflow {
            pitch,
            width,
            height,
        })
}

/// A validated global range: `len` bytes at `offset` from the start of `part` of `rank`'s window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// The window's rank.
    pub rank: u32,
    /// The part the range lies in.
    pub part: Part,
    /// Offset of the first byte from the part start.
    pub offset: u64,
    /// Byte count (for 2D, of the whole strided span).
    pub len: u64,
}

/// The layout the unit tests of this module and its submodules use.
#[cfg(test)]
mod test_layout {
    use super::WindowLayout;
    use crate::gva::Gva;

    /// 2 MiB.
    pub(crate) const M2: u64 = crate::limits::WINDOW_ALIGN;
    /// The object's base address.
    pub(crate) const BASE: u64 = 0x7000_0000_0000;

    /// 4 members, 1 byte of HBM (-> 2 MiB), 3 MiB of DRAM (-> 4 MiB), stride 8 MiB.
    pub(crate) fn layout() -> WindowLayout {
        WindowLayout::new(Gva(BASE), 4 * M2, 4, 1, 3 * 1024 * 1024).expect("valid layout")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_layout::{BASE, M2, layout};

    #[test]
    fn layout_rounding_and_windows() {
        let l = layout();
        assert_eq!(l.hbm_len(), M2);
        assert_eq!(l.dram_len(), 2 * M2);
        assert_eq!(l.local_mem_size(), 3 * M2);
        assert_eq!(l.span_len(), 16 * M2);
        assert_eq!(l.window_base(3), Some(Gva(BASE + 12 * M2)));
        assert_eq!(l.window(4), None);
        assert_eq!(
            l.part(1, Part::Dram),
            GvaRange::new(Gva(BASE + 4 * M2 + M2), 2 * M2)
        );
        assert_eq!(l.span().last(), Gva(BASE + 16 * M2 - 1));
        let no_hbm = WindowLayout::new(Gva(BASE), M2, 1, 0, 1).expect("dram only");
        assert_eq!(no_hbm.part(0, Part::Hbm), None);
    }

    #[test]
    fn layout_errors() {
        assert_eq!(
            WindowLayout::new(Gva(BASE), M2, 1, 0, 0),
            Err(LayoutError::NoMemory)
        );
        assert_eq!(
            WindowLayout::new(Gva(BASE), M2, 0, 1, 0),
            Err(LayoutError::BadMemberSize { member_size: 0 })
        );
        assert_eq!(
            WindowLayout::new(Gva(BASE), M2, 1025, 1, 0),
            Err(LayoutError::BadMemberSize { member_size: 1025 })
        );
        assert_eq!(
            WindowLayout::new(Gva(BASE), M2, 1, 1, 1),
            Err(LayoutError::BadStride {
                stride: M2,
                min: 2 * M2
            })
        );
        assert_eq!(
            WindowLayout::new(Gva(BASE), 3 * M2 + 1, 1, 1, 1),
            Err(LayoutError::BadStride {
                stride: 3 * M2 + 1,
                min: 2 * M2
            })
        );
        assert_eq!(
            WindowLayout::new(Gva(BASE + 1), M2, 1, 1, 0),
            Err(LayoutError::UnalignedBase { base: BASE + 1 })
        );
        assert_eq!(
            WindowLayout::new(Gva(u64::MAX - M2 + 1), 2 * M2, 1, 1, 0),
            Err(LayoutError::SpanOverflow)
        );
        assert_eq!(
            WindowLayout::new(Gva(0), M2, 1, u64::MAX, 0),
            Err(LayoutError::SizeOverflow)
        );
        assert_eq!(
            part_lens(u64::MAX - M2 + 1, M2),
            Err(LayoutError::SizeOverflow)
        );
        // The top window ends exactly at u64::MAX.
        let top = WindowLayout::new(Gva(u64::MAX - M2 + 1), M2, 1, 1, 0).expect("fits exactly");
        assert_eq!(top.span().last(), Gva(u64::MAX));
        assert!(top.locate(Gva(u64::MAX), 1).is_ok());
    }

    #[test]
    fn locate_edges() {
        let l = layout();
        let w1 = BASE + 4 * M2;
        // Last byte of the HBM part is usable; one more crosses into DRAM.
        assert_eq!(
            l.locate(Gva(w1 + M2 - 1), 1),
            Ok(Location {
                rank: 1,
                part: Part::Hbm,
                offset: M2 - 1,
                len: 1
            })
        );
        assert_eq!(
            l.locate(Gva(w1), M2),
            Ok(Location {
                rank: 1,
                part: Part::Hbm,
                offset: 0,
                len: M2
            })
        );
        assert!(matches!(
            l.locate(Gva(w1), M2 + 1),
            Err(CopyError::CrossesPart { rank: 1, part: Part::Hbm, part_last, .. }) if part_last == w1 + M2 - 1
        ));
        // Whole DRAM part; one more byte reaches the padding.
        assert_eq!(
            l.locate(Gva(w1 + M2), 2 * M2),
            Ok(Location {
                rank: 1,
                part: Part::Dram,
                offset: 0,
                len: 2 * M2
            })
        );
        assert!(matches!(
            l.locate(Gva(w1 + M2), 2 * M2 + 1),
            Err(CopyError::CrossesPart {
                part: Part::Dram,
                ..
            })
        ));
        assert!(matches!(
            l.locate(Gva(w1 + 3 * M2), 1),
            Err(CopyError::NotInPart { rank: 1, .. })
        ));
        assert!(matches!(
            l.locate(Gva(w1 + 4 * M2 - 1), 1),
            Err(CopyError::NotInPart { rank: 1, .. })
        ));
        // Outside the object, both ends.
        assert!(matches!(
            l.locate(Gva(BASE - 1), 2),
            Err(CopyError::OutsideObject { .. })
        ));
        assert!(matches!(
            l.locate(Gva(BASE + 16 * M2), 1),
            Err(CopyError::OutsideObject { .. })
        ));
        assert_eq!(l.locate(Gva(BASE), 0), Err(CopyError::ZeroSize));
        assert!(matches!(
            l.locate(Gva(w1), u64::MAX),
            Err(CopyError::GlobalOverflow { .. })
        ));
        assert!(matches!(
            l.locate(Gva(u64::MAX), 2),
            Err(CopyError::GlobalOverflow { .. })
        ));
    }
}
