//! Transfer engine records (SPEC 6.2): what one engine publishes in the config store for its
//! peers.
//!
//! Two values per engine, both written only by the engine itself:
//! - the [`EngineRecord`] (key `smem/trans/engine/<uniqueId>`): who it is (unique id, host
//!   identity, pid), how to reach it (transport endpoint and generation token) and how a
//!   same-host peer checks it (its control segment: descriptor number, inode, address);
//! - the region table (key `smem/trans/regions/<uniqueId>`, [`RegionsView`]): every range it
//!   serves, sorted by address and disjoint, with the generation that numbers each change.
//!
//! Layout (little-endian, no padding):
//! ```text
//! EngineRecord: "SMTE" | u8 version | u8 role | u8 idLen | u8 hostLen | u32 dataOps | u32 pid
//!               | u64 token | i32 ctrlFd | u64 ctrlInode | u64 ctrlAddr
//!               | u8 family (4|6) | [u8; 16] ip | u16 port | id | host
//! Regions:      "SMTR" | u8 version | 3 zero | u64 generation | u32 count | u32 zero
//!               | count x (u64 addr | u64 len | u8 kind | 3 zero | i32 fd | u64 inode)
//! ```
//! Parsing never panics and never allocates, whatever the bytes; every value is checked (ids
//! printable and bounded, ranges non-empty, non-wrapping, sorted and disjoint), so a peer can
//! binary-search a parsed table ([`RegionsView::find`]).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Reader, Result, WireError, Writer};

/// The only version of both records.
pub const VERSION: u8 = 1;
/// Longest engine unique id (SPEC 6.2: 1..=127 printable bytes).
pub const UNIQUE_ID_MAX: usize = 127;
/// Longest host identity.
pub const HOST_ID_MAX: usize = 255;
/// Most regions one engine serves.
pub const REGIONS_MAX: usize = 65_536;
/// Fixed part of an [`EngineRecord`].
pub const ENGINE_FIXED_LEN: usize = 63;
/// Header of a region table.
pub const REGIONS_HEADER_LEN: usize = 24;
/// One region of a table.
pub const REGION_LEN: usize = 32;

const ENGINE_MAGIC: [u8; 4] = *b"SMTE";
const REGIONS_MAGIC: [u8; 4] = *b"SMTR";

/// Whether `id` is a valid engine unique id: 1..=127 printable ASCII bytes (space included).
pub fn valid_unique_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= UNIQUE_ID_MAX && id.iter().all(|b| (0x20..0x7f).contains(b))
}

/// What an engine publishes about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineRecord<'a> {
    /// The engine's unique id.
    pub unique_id: &'a [u8],
    /// The host identity of its process (same value = memory shareable through `/proc`).
    pub host_id: &'a [u8],
    /// `smem_trans_role_t` value.
    pub role: u8,
    /// `smem_bm_data_op_type` bits the engine was created with.
    pub data_ops: u32,
    /// The engine's process id.
    pub pid: u32,
    /// Generation token of this incarnation (transport requests carry it).
    pub token: u64,
    /// Descriptor number of its control segment in its process.
    pub ctrl_fd: i32,
    /// Inode of the control segment (checked by a peer that opens it).
    pub ctrl_inode: u64,
    /// Address of the control segment in its process.
    pub ctrl_addr: u64,
    /// Transport endpoint (cross-host peers, and same-host peers without a faster path).
    pub endpoint: SocketAddr,
}

impl<'a> EngineRecord<'a> {
    /// Encoded length.
    pub const fn len(&self) -> usize {
        ENGINE_FIXED_LEN + self.unique_id.len() + self.host_id.len()
    }

    /// Never empty.
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// Parses a whole record (no trailing bytes).
    ///
    /// # Errors
    /// [`WireError`] naming the field that is truncated or invalid.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        if r.array::<4>("engine record magic")? != ENGINE_MAGIC {
            return Err(WireError::Invalid("engine record magic"));
        }
        let [version, role, id_len, host_len] = r.array::<4>("engine record header")?;
        if version != VERSION {
            return Err(WireError::Invalid("engine record version"));
        }
        let data_ops = r.u32("engine data ops")?;
        let pid = r.u32("engine pid")?;
        let token = r.u64("engine token")?;
        let ctrl_fd = i32::from_le_bytes(r.array::<4>("engine control fd")?);
        let ctrl_inode = r.u64("engine control inode")?;
        let ctrl_addr = r.u64("engine control address")?;
        let [family] = r.array::<1>("endpoint family")?;
        let ip = r.array::<16>("endpoint address")?;
        let port = u16::from_le_bytes(r.array::<2>("endpoint port")?);
        let ip = match family {
            4 => {
                let (v4, zero) = ip.split_at(4);
                if zero.iter().any(|b| *b != 0) {
                    return Err(WireError::Invalid("IPv4 endpoint padding"));
                }
                let v4: [u8; 4] = v4.try_into().map_err(|_| WireError::Truncated("IPv4"))?;
                IpAddr::V4(Ipv4Addr::from(v4))
            }
            6 => IpAddr::V6(Ipv6Addr::from(ip)),
            _ => return Err(WireError::Invalid("endpoint family")),
        };
        let unique_id = r.take(usize::from(id_len), "engine unique id")?;
        if !valid_unique_id(unique_id) {
            return Err(WireError::Invalid("engine unique id"));
        }
        let host_id = r.take(usize::from(host_len), "engine host id")?;
        if host_id.is_empty() {
            return Err(WireError::Invalid("engine host id"));
        }
        if r.remaining() != 0 {
            return Err(WireError::SizeMismatch("engine record"));
        }
        Ok(Self {
            unique_id,
            host_id,
            role,
            data_ops,
            pid,
            token,
            ctrl_fd,
            ctrl_inode,
            ctrl_addr,
            endpoint: SocketAddr::new(ip, port),
        })
    }

    /// Writes the record into `buf`; returns the bytes written ([`EngineRecord::len`]).
    ///
    /// # Errors
    /// [`WireError::Invalid`] for an invalid unique id or an empty / too long host id;
    /// [`WireError::BufferTooSmall`].
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        if !valid_unique_id(self.unique_id) {
            return Err(WireError::Invalid("engine unique id"));
        }
        if self.host_id.is_empty() || self.host_id.len() > HOST_ID_MAX {
            return Err(WireError::Invalid("engine host id"));
        }
        let mut w = Writer::new(buf);
        w.put(&ENGINE_MAGIC)?;
        // Both lengths were checked to fit in a byte above.
        let id_len = self.unique_id.len() as u8;
        let host_len = self.host_id.len() as u8;
        w.put(&[VERSION, self.role, id_len, host_len])?;
        w.put(&self.data_ops.to_le_bytes())?;
        w.put(&self.pid.to_le_bytes())?;
        w.put(&self.token.to_le_bytes())?;
        w.put(&self.ctrl_fd.to_le_bytes())?;
        w.put(&self.ctrl_inode.to_le_bytes())?;
        w.put(&self.ctrl_addr.to_le_bytes())?;
        let mut ip = [0u8; 16];
        let family = match self.endpoint.ip() {
            IpAddr::V4(v4) => {
                ip[..4].copy_from_slice(&v4.octets());
                4
            }
            IpAddr::V6(v6) => {
                ip = v6.octets();
                6
            }
        };
        w.put(&[family])?;
        w.put(&ip)?;
        w.put(&self.endpoint.port().to_le_bytes())?;
        w.put(self.unique_id)?;
        w.put(self.host_id)?;
        Ok(w.written())
    }
}

/// What kind of memory a region is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegionKind {
    /// Memory of the engine's process registered with `smem_trans_register_mem`.
    User,
    /// `smem_trans_malloc` memory: a memfd same-host peers map (`fd`, `inode` in the region).
    Pool,
}

impl RegionKind {
    const fn raw(self) -> u8 {
        match self {
            Self::User => 0,
            Self::Pool => 1,
        }
    }
}

/// One served range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Region {
    /// First byte, an address in the owner's process.
    pub addr: u64,
    /// Length in bytes (non-zero).
    pub len: u64,
    /// The kind of memory.
    pub kind: RegionKind,
    /// Descriptor number of the memfd in the owner ([`RegionKind::Pool`]; -1 otherwise).
    pub fd: i32,
    /// Inode of the memfd ([`RegionKind::Pool`]; 0 otherwise).
    pub inode: u64,
}

impl Region {
    /// A region of user memory (`smem_trans_register_mem`): no memfd, no inode.
    pub const fn user(addr: u64, len: u64) -> Self {
        Self {
            addr,
            len,
            kind: RegionKind::User,
            fd: -1,
            inode: 0,
        }
    }

    /// One past the last byte (never wraps in a parsed table).
    pub const fn end(&self) -> u64 {
        self.addr.saturating_add(self.len)
    }

    /// Whether `[addr, addr + len)` lies inside this region (`len` may be 0).
    pub const fn holds(&self, addr: u64, len: u64) -> bool {
        match addr.checked_add(len) {
            Some(end) => addr >= self.addr && end <= self.end(),
            None => false,
        }
    }

    fn parse(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        let addr = r.u64("region address")?;
        let len = r.u64("region length")?;
        let [kind, z0, z1, z2] = r.array::<4>("region kind")?;
        let fd = i32::from_le_bytes(r.array::<4>("region fd")?);
        let inode = r.u64("region inode")?;
        let kind = match kind {
            0 => RegionKind::User,
            1 => RegionKind::Pool,
            _ => return Err(WireError::Invalid("region kind")),
        };
        if z0 | z1 | z2 != 0 {
            return Err(WireError::Invalid("region reserved bytes"));
        }
        if len == 0 || addr.checked_add(len).is_none() {
            return Err(WireError::Invalid("region range"));
        }
        Ok(Self {
            addr,
            len,
            kind,
            fd,
            inode,
        })
    }

    fn emit(&self, w: &mut Writer<'_>) -> Result<()> {
        w.put(&self.addr.to_le_bytes())?;
        w.put(&self.len.to_le_bytes())?;
        w.put(&[self.kind.raw(), 0, 0, 0])?;
        w.put(&self.fd.to_le_bytes())?;
        w.put(&self.inode.to_le_bytes())
    }
}

/// Encoded length of a region table of `count` regions.
pub const fn regions_len(count: usize) -> usize {
    REGIONS_HEADER_LEN + count * REGION_LEN
}

/// Writes a region table: `regions` must be sorted by address and disjoint (the parser
/// refuses anything else). Returns the bytes written ([`regions_len`]).
///
/// # Errors
/// [`WireError::TooLarge`] over [`REGIONS_MAX`], [`WireError::Invalid`] for unsorted,
/// overlapping or empty ranges; [`WireError::BufferTooSmall`].
pub fn emit_regions(generation: u64, regions: &[Region], buf: &mut [u8]) -> Result<usize> {
    if regions.len() > REGIONS_MAX {
        return Err(WireError::TooLarge("region count"));
    }
    let mut w = Writer::new(buf);
    w.put(&REGIONS_MAGIC)?;
    w.put(&[VERSION, 0, 0, 0])?;
    w.put(&generation.to_le_bytes())?;
    // Bounded by REGIONS_MAX above.
    w.put(&(regions.len() as u32).to_le_bytes())?;
    w.put(&0u32.to_le_bytes())?;
    let mut prev_end = 0;
    for (i, r) in regions.iter().enumerate() {
        if r.len == 0 || r.addr.checked_add(r.len).is_none() || (i > 0 && r.addr < prev_end) {
            return Err(WireError::Invalid("region order or range"));
        }
        prev_end = r.end();
        r.emit(&mut w)?;
    }
    Ok(w.written())
}

/// A parsed region table (zero-copy: regions are decoded on access).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionsView<'a> {
    /// Generation of this table (the owner increments it with every change).
    pub generation: u64,
    entries: &'a [u8],
}

impl<'a> RegionsView<'a> {
    /// Parses and checks a whole table (no trailing bytes): every region valid, sorted by
    /// address and disjoint.
    ///
    /// # Errors
    /// [`WireError`] naming the field that is wrong.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        if r.array::<4>("regions magic")? != REGIONS_MAGIC {
            return Err(WireError::Invalid("regions magic"));
        }
        if r.array::<4>("regions version")? != [VERSION, 0, 0, 0] {
            return Err(WireError::Invalid("regions version"));
        }
        let generation = r.u64("regions generation")?;
        let count = r.u32("regions count")? as usize;
        if r.u32("regions reserved")? != 0 {
            return Err(WireError::Invalid("regions reserved"));
        }
        if count > REGIONS_MAX {
            return Err(WireError::TooLarge("region count"));
        }
        let entries = r.take(count * REGION_LEN, "regions")?;
        if r.remaining() != 0 {
            return Err(WireError::SizeMismatch("regions"));
        }
        let mut prev_end = 0;
        for (i, chunk) in entries.chunks_exact(REGION_LEN).enumerate() {
            let region = Region::parse(chunk)?;
            if i > 0 && region.addr < prev_end {
                return Err(WireError::Invalid("region order (unsorted or overlapping)"));
            }
            prev_end = region.end();
        }
        Ok(Self {
            generation,
            entries,
        })
    }

    /// Number of regions.
    pub const fn len(&self) -> usize {
        self.entries.len() / REGION_LEN
    }

    /// Whether the table is empty.
    pub const fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Region `i` (`None` past the end).
    pub fn get(&self, i: usize) -> Option<Region> {
        let start = i.checked_mul(REGION_LEN)?;
        let bytes = self.entries.get(start..start.checked_add(REGION_LEN)?)?;
        // Checked by `parse`.
        Region::parse(bytes).ok()
    }

    /// The regions in address order.
    pub fn iter(&self) -> impl Iterator<Item = Region> + 'a {
        let entries = self.entries;
        entries
            .chunks_exact(REGION_LEN)
            .filter_map(|c| Region::parse(c).ok())
    }

    /// The region holding all of `[addr, addr + len)` (binary search), if any.
    pub fn find(&self, addr: u64, len: u64) -> Option<Region> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let r = self.get(mid)?;
            if addr < r.addr {
                hi = mid;
            } else if addr >= r.end() {
                lo = mid + 1;
            } else {
                return r.holds(addr, len).then_some(r);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> EngineRecord<'static> {
        EngineRecord {
            unique_id: b"10.0.0.1:7000",
            host_id: b"boot/123",
            role: 3,
            data_ops: 5,
            pid: 4242,
            token: 0x0123_4567_89ab_cdef,
            ctrl_fd: 9,
            ctrl_inode: 77,
            ctrl_addr: 0x7f00_0000_0000,
            endpoint: SocketAddr::from(([127, 0, 0, 1], 5000)),
        }
    }

    #[test]
    fn engine_record_round_trip_and_rejects() {
        let rec = record();
        let mut buf = [0u8; 256];
        let n = rec.emit(&mut buf).expect("emit");
        assert_eq!(n, rec.len());
        assert_eq!(EngineRecord::parse(&buf[..n]), Ok(rec));
        assert_eq!(&buf[..4], b"SMTE");
        // Truncated, trailing, bad magic / version / family / id.
        assert!(EngineRecord::parse(&buf[..n - 1]).is_err());
        assert_eq!(
            EngineRecord::parse(&buf[..=n]),
            Err(WireError::SizeMismatch("engine record"))
        );
        let mut bad = buf;
        bad[4] = 2;
        assert!(EngineRecord::parse(&bad[..n]).is_err());
        let mut bad = buf;
        bad[44] = 5;
        assert_eq!(
            EngineRecord::parse(&bad[..n]),
            Err(WireError::Invalid("endpoint family"))
        );
        let mut bad = buf;
        bad[ENGINE_FIXED_LEN] = 0x07;
        assert_eq!(
            EngineRecord::parse(&bad[..n]),
            Err(WireError::Invalid("engine unique id"))
        );
        let v6 = EngineRecord {
            endpoint: SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 1),
            ..rec
        };
        let n = v6.emit(&mut buf).expect("emit v6");
        assert_eq!(EngineRecord::parse(&buf[..n]), Ok(v6));
        assert_eq!(
            EngineRecord {
                unique_id: b"",
                ..rec
            }
            .emit(&mut buf),
            Err(WireError::Invalid("engine unique id"))
        );
        assert_eq!(rec.emit(&mut buf[..10]), Err(WireError::BufferTooSmall));
    }

    #[test]
    fn unique_ids() {
        assert!(valid_unique_id(b"a"));
        assert!(valid_unique_id(&[b'x'; 127]));
        assert!(!valid_unique_id(&[b'x'; 128]));
        assert!(!valid_unique_id(b"tab\there"));
        assert!(!valid_unique_id(b""));
    }

    fn region(addr: u64, len: u64) -> Region {
        Region::user(addr, len)
    }

    #[test]
    fn regions_round_trip_find_and_rejects() {
        let regs = [
            region(0x1000, 0x1000),
            Region {
                kind: RegionKind::Pool,
                fd: 5,
                inode: 9,
                ..region(0x3000, 0x2000)
            },
        ];
        let mut buf = [0u8; regions_len(2)];
        assert_eq!(emit_regions(7, &regs, &mut buf), Ok(buf.len()));
        let v = RegionsView::parse(&buf).expect("parse");
        assert_eq!(v.generation, 7);
        assert_eq!(v.len(), 2);
        assert_eq!(v.iter().collect::<std::vec::Vec<_>>(), regs);
        assert_eq!(v.find(0x1000, 0x1000), Some(regs[0]));
        assert_eq!(v.find(0x1fff, 2), None);
        assert_eq!(v.find(0x2000, 1), None);
        assert_eq!(v.find(0x4fff, 1), Some(regs[1]));
        assert_eq!(v.find(0x5000, 0), None);
        assert_eq!(v.find(u64::MAX, 2), None);
        // Overlapping or unsorted tables are refused both ways.
        let bad = [region(0x1000, 0x2000), region(0x2000, 0x10)];
        assert!(emit_regions(1, &bad, &mut buf).is_err());
        let mut raw = buf;
        raw[REGIONS_HEADER_LEN + REGION_LEN..REGIONS_HEADER_LEN + REGION_LEN + 8]
            .copy_from_slice(&0x1800u64.to_le_bytes());
        assert!(RegionsView::parse(&raw).is_err());
        let mut raw = buf;
        raw[REGIONS_HEADER_LEN + 16] = 9;
        assert_eq!(
            RegionsView::parse(&raw),
            Err(WireError::Invalid("region kind"))
        );
        assert!(RegionsView::parse(&buf[..buf.len() - 1]).is_err());
        let mut raw = buf;
        raw[16] = 3;
        assert!(RegionsView::parse(&raw).is_err());
        let mut empty = [0u8; REGIONS_HEADER_LEN];
        assert_eq!(emit_regions(0, &[], &mut empty), Ok(REGIONS_HEADER_LEN));
        assert!(RegionsView::parse(&empty).expect("empty").is_empty());
    }
}
