//! Validation of `smem_bm_copy` / `smem_bm_copy_2d` between this process' memory and the
//! object's windows (the copy rules of the module docs of [`super`]).

use core::fmt;

use super::{ASYNC_COPY_FLAG, Location, Part, WindowLayout, span_2d};
use crate::gva::{Gva, GvaRange};

/// The four copy directions of `smem_bm_copy` (`smem_bm_copy_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum CopyType {
    /// `SMEMB_COPY_L2G`: local device memory to global.
    L2G = 0,
    /// `SMEMB_COPY_G2L`: global to local device memory.
    G2L = 1,
    /// `SMEMB_COPY_G2H`: global to host memory.
    G2H = 2,
    /// `SMEMB_COPY_H2G`: host memory to global.
    H2G = 3,
}

/// Which memory the local side of a copy is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LocalMemory {
    /// Device memory of this process (`L2G`, `G2L`).
    Device,
    /// Host memory of this process (`H2G`, `G2H`).
    Host,
}

impl CopyType {
    /// The copy type of a C value; `None` for `SMEMB_COPY_BUTT` and beyond.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::L2G),
            1 => Some(Self::G2L),
            2 => Some(Self::G2H),
            3 => Some(Self::H2G),
            _ => None,
        }
    }

    /// Whether the global side is the destination (`L2G`, `H2G`).
    pub const fn writes_global(self) -> bool {
        matches!(self, Self::L2G | Self::H2G)
    }

    /// The kind of the local side.
    pub const fn local_memory(self) -> LocalMemory {
        match self {
            Self::L2G | Self::G2L => LocalMemory::Device,
            Self::G2H | Self::H2G => LocalMemory::Host,
        }
    }

    /// The C enumerator name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::L2G => "SMEMB_COPY_L2G",
            Self::G2L => "SMEMB_COPY_G2L",
            Self::G2H => "SMEMB_COPY_G2H",
            Self::H2G => "SMEMB_COPY_H2G",
        }
    }
}

/// Why a copy was refused. Every variant carries the numbers that explain it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CopyError {
    /// The copy type is not one of L2G, G2L, G2H, H2G.
    UnknownType(u32),
    /// Size 0 (or 2D width or height 0).
    ZeroSize,
    /// The local pointer is NULL.
    NullLocal,
    /// The local range wraps past `u64::MAX`.
    LocalOverflow {
        /// Local address.
        addr: u64,
        /// Byte count.
        len: u64,
    },
    /// The global range wraps past `u64::MAX`.
    GlobalOverflow {
        /// Global address.
        addr: u64,
        /// Byte count.
        len: u64,
    },
    /// A 2D pitch is smaller than the row width.
    PitchTooSmall {
        /// The pitch.
        pitch: u64,
        /// The row width.
        width: u64,
    },
    /// `(height - 1) * pitch + width` overflows.
    SpanOverflow {
        /// The pitch.
        pitch: u64,
        /// The row width.
        width: u64,
        /// The row count.
        height: u64,
    },
    /// The global range does not start inside the object.
    OutsideObject {
        /// Global address.
        addr: u64,
        /// Byte count.
        len: u64,
        /// Object base.
        base: u64,
        /// Object span length.
        span_len: u64,
    },
    /// The global address lies in the padding after a window's parts.
    NotInPart {
        /// The window's rank.
        rank: u32,
        /// Global address.
        addr: u64,
        /// Window stride.
        stride: u64,
    },
    /// The global range starts in a part but runs past its last byte.
    CrossesPart {
        /// The window's rank.
        rank: u32,
        /// The part it starts in.
        part: Part,
        /// Global address.
        addr: u64,
        /// Byte count.
        len: u64,
        /// The part's last byte.
        part_last: u64,
        /// Window stride.
        stride: u64,
    },
    /// Copy flags other than `SMEM_ASYNC_COPY_FLAG` (SPEC 6.1).
    BadFlags(u32),
    /// The two window ranges of a `G2G` copy overlap.
    RangesOverlap {
        /// Source address.
        src: u64,
        /// Destination address.
        dest: u64,
        /// Byte count of the larger span.
        len: u64,
    },
    /// The local range overlaps the global range.
    LocalOverlapsGlobal {
        /// Local address.
        local: u64,
        /// Global address.
        global: u64,
        /// Byte count of the larger span.
        len: u64,
    },
}

impl fmt::Display for CopyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::UnknownType(t) => {
                write!(
                    f,
                    "unknown copy type {t}; use L2G=0, G2L=1, G2H=2, H2G=3 or G2G=8"
                )
            }
            Self::ZeroSize => f.write_str("copy size is 0; nothing to copy"),
            Self::NullLocal => f.write_str("the local pointer of the copy is NULL"),
            Self::LocalOverflow { addr, len } => {
                write!(
                    f,
                    "local range {addr:#x}+{len} wraps past the end of the address space"
                )
            }
            Self::GlobalOverflow { addr, len } => {
                write!(
                    f,
                    "global range {addr:#x}+{len} wraps past the end of the address space"
                )
            }
            Self::PitchTooSmall { pitch, width } => {
                write!(f, "2D pitch {pitch} is smaller than the row width {width}")
            }
            Self::SpanOverflow {
                pitch,
                width,
                height,
            } => {
                write!(
                    f,
                    "2D span of {height} rows of {width} bytes, pitch {pitch}, overflows 64 bits"
                )
            }
            Self::OutsideObject {
                addr,
                len,
                base,
                span_len,
            } => write!(
                f,
                "global range {addr:#x}+{len} is not inside this object's windows [{base:#x}, +{span_len:#x})"
            ),
            Self::NotInPart { rank, addr, stride } => write!(
                f,
                "global address {addr:#x} lies in the unused end of rank {rank}'s window (stride {stride:#x}), after its HBM and DRAM parts"
            ),
            Self::CrossesPart {
                rank,
                part,
                addr,
                len,
                part_last,
                stride,
            } => write!(
                f,
                "copy range {addr:#x}+{len} crosses the end of rank {rank}'s {part} part (last byte {part_last:#x}, stride {stride:#x}); split the copy"
            ),
            Self::BadFlags(flags) => write!(
                f,
                "copy flags {flags:#x} have unknown bits {:#x}; pass 0 or SMEM_ASYNC_COPY_FLAG (1)",
                flags & !ASYNC_COPY_FLAG
            ),
            Self::RangesOverlap { src, dest, len } => write!(
                f,
                "G2G source range {src:#x} and destination range {dest:#x} overlap (span {len} bytes)"
            ),
            Self::LocalOverlapsGlobal { local, global, len } => write!(
                f,
                "local range {local:#x} and global range {global:#x} overlap (span {len} bytes)"
            ),
        }
    }
}

impl core::error::Error for CopyError {}

/// A validated 1D copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyPlan {
    /// The direction.
    pub kind: CopyType,
    /// Where the global side lies.
    pub global: Location,
    /// The local side's address (source for L2G/H2G, destination otherwise).
    pub local: u64,
}

/// The ranges of `smem_bm_copy_2d(src, spitch, dest, dpitch, width, height, ..)`, as given:
/// `height` rows of `width` bytes, `spitch` apart from `src` and `dpitch` apart from `dest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copy2d {
    /// Source address.
    pub src: u64,
    /// Source pitch.
    pub spitch: u64,
    /// Destination address.
    pub dest: u64,
    /// Destination pitch.
    pub dpitch: u64,
    /// Row width in bytes.
    pub width: u64,
    /// Row count.
    pub height: u64,
}

impl Copy2d {
    /// The arguments in the order of `smem_bm_copy_2d`.
    pub const fn new(
        src: u64,
        spitch: u64,
        dest: u64,
        dpitch: u64,
        width: u64,
        height: u64,
    ) -> Self {
        Self {
            src,
            spitch,
            dest,
            dpitch,
            width,
            height,
        }
    }
}

/// A validated 2D copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copy2dPlan {
    /// The direction.
    pub kind: CopyType,
    /// Where the global side's strided span lies.
    pub global: Location,
    /// The global side's pitch.
    pub global_pitch: u64,
    /// The local side's address.
    pub local: u64,
    /// The local side's pitch.
    pub local_pitch: u64,
    /// Row width in bytes.
    pub width: u64,
    /// Row count.
    pub height: u64,
}

fn check_local(local: u64, len: u64) -> Result<(), CopyError> {
    if local == 0 {
        return Err(CopyError::NullLocal);
    }
    GvaRange::new(Gva(local), len).ok_or(CopyError::LocalOverflow { addr: local, len })?;
    Ok(())
}

/// `Ok` when `[a, a + a_len)` and `[b, b + b_len)` are disjoint, else `overlap(longer len)`.
///
/// # Errors
/// `overlap(..)`; [`CopyError::ZeroSize`] when a range is empty or wraps (callers check both
/// ranges before, so this is a safety net).
pub(super) fn disjoint(
    a: u64,
    a_len: u64,
    b: u64,
    b_len: u64,
    overlap: impl FnOnce(u64) -> CopyError,
) -> Result<(), CopyError> {
    match (GvaRange::new(Gva(a), a_len), GvaRange::new(Gva(b), b_len)) {
        (Some(x), Some(y)) if x.overlaps(&y) => Err(overlap(a_len.max(b_len))),
        (Some(_), Some(_)) => Ok(()),
        _ => Err(CopyError::ZeroSize),
    }
}

/// The local range must not overlap the global one.
fn check_overlap(
    local: u64,
    local_len: u64,
    global: u64,
    global_len: u64,
) -> Result<(), CopyError> {
    disjoint(local, local_len, global, global_len, |len| {
        CopyError::LocalOverlapsGlobal { local, global, len }
    })
}

/// Validates `smem_bm_copy(src, dest, size, copy_type)` against `layout`.
///
/// # Errors
/// Any [`CopyError`]; on error nothing may be copied.
pub fn check_copy(
    layout: &WindowLayout,
    copy_type: u32,
    src: u64,
    dest: u64,
    size: u64,
) -> Result<CopyPlan, CopyError> {
    let kind = CopyType::from_raw(copy_type).ok_or(CopyError::UnknownType(copy_type))?;
    if size == 0 {
        return Err(CopyError::ZeroSize);
    }
    let (global, local) = if kind.writes_global() {
        (dest, src)
    } else {
        (src, dest)
    };
    check_local(local, size)?;
    let location = layout.locate(Gva(global), size)?;
    check_overlap(local, size, global, size)?;
    Ok(CopyPlan {
        kind,
        global: location,
        local,
    })
}

/// Validates `smem_bm_copy_2d(src, spitch, dest, dpitch, width, height, copy_type)`.
///
/// # Errors
/// Any [`CopyError`]; on error nothing may be copied.
pub fn check_copy_2d(
    layout: &WindowLayout,
    copy_type: u32,
    copy: &Copy2d,
) -> Result<Copy2dPlan, CopyError> {
    let kind = CopyType::from_raw(copy_type).ok_or(CopyError::UnknownType(copy_type))?;
    let c = copy;
    let (global, global_pitch, local, local_pitch) = if kind.writes_global() {
        (c.dest, c.dpitch, c.src, c.spitch)
    } else {
        (c.src, c.spitch, c.dest, c.dpitch)
    };
    let local_len = span_2d(local_pitch, c.width, c.height)?;
    check_local(local, local_len)?;
    let location = layout.locate_2d(Gva(global), global_pitch, c.width, c.height)?;
    check_overlap(local, local_len, global, location.len)?;
    Ok(Copy2dPlan {
        kind,
        global: location,
        global_pitch,
        local,
        local_pitch,
        width: c.width,
        height: c.height,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_layout::{BASE, M2, layout};
    use super::*;

    #[test]
    fn copy_checks() {
        let l = layout();
        let g = BASE + 4 * M2 + M2; // rank 1 DRAM
        let h = 0x1000;
        let plan = check_copy(&l, 3, h, g, 4096).expect("H2G");
        assert_eq!(plan.kind, CopyType::H2G);
        assert_eq!(plan.local, h);
        assert_eq!(plan.global.part, Part::Dram);
        let plan = check_copy(&l, 1, g, h, 4096).expect("G2L");
        assert_eq!(plan.kind.local_memory(), LocalMemory::Device);
        assert!(!plan.kind.writes_global());
        assert_eq!(check_copy(&l, 4, h, g, 1), Err(CopyError::UnknownType(4)));
        assert_eq!(check_copy(&l, 0, h, g, 0), Err(CopyError::ZeroSize));
        assert_eq!(check_copy(&l, 0, 0, g, 1), Err(CopyError::NullLocal));
        assert!(matches!(
            check_copy(&l, 2, g, u64::MAX, 2),
            Err(CopyError::LocalOverflow { .. })
        ));
        assert!(matches!(
            check_copy(&l, 0, g - 8, g, 16),
            Err(CopyError::LocalOverlapsGlobal { .. })
        ));
        assert!(matches!(
            check_copy(&l, 0, h, g - 1, 2),
            Err(CopyError::CrossesPart {
                part: Part::Hbm,
                ..
            })
        ));
    }

    #[test]
    fn copy_2d_checks() {
        let l = layout();
        let g = BASE + M2; // rank 0 DRAM, 4 MiB long
        let h = 0x10_0000;
        // 4 rows of 1 KiB, global pitch 1 MiB: span 3 MiB + 1 KiB fits.
        let plan = check_copy_2d(&l, 3, &Copy2d::new(h, 1024, g, 1 << 20, 1024, 4)).expect("fits");
        assert_eq!(plan.global.len, 3 * (1 << 20) + 1024);
        // The last row's last byte is the part's last byte: fits; one more row does not.
        let p = 1 << 20;
        let w = 1 << 20;
        assert!(check_copy_2d(&l, 3, &Copy2d::new(h, w, g, p, w, 4)).is_ok());
        assert!(matches!(
            check_copy_2d(&l, 3, &Copy2d::new(h, w, g, p, w, 5)),
            Err(CopyError::CrossesPart { .. })
        ));
        assert_eq!(
            check_copy_2d(&l, 3, &Copy2d::new(h, 1024, g, 512, 1024, 2)),
            Err(CopyError::PitchTooSmall {
                pitch: 512,
                width: 1024
            })
        );
        assert_eq!(
            check_copy_2d(&l, 3, &Copy2d::new(h, 1024, g, 1024, 1024, 0)),
            Err(CopyError::ZeroSize)
        );
        assert!(matches!(
            check_copy_2d(&l, 3, &Copy2d::new(h, u64::MAX, g, 1024, 1024, 3)),
            Err(CopyError::SpanOverflow { .. })
        ));
        assert!(matches!(
            check_copy_2d(&l, 2, &Copy2d::new(g, 1024, u64::MAX - 4096, 4096, 1024, 2)),
            Err(CopyError::LocalOverflow { .. })
        ));
    }
}
