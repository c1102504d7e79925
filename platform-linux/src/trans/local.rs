//! This engine's own memory: the regions it serves (registered user memory and
//! `smem_trans_malloc` segments), their table in the store, and the control segment that tells
//! same-host peers when the table changed.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use smem_core::ErrorCode;
use smem_core::wire::trans::{Region, RegionKind, emit_regions, regions_len};

use super::{lock, read, write};
use crate::mem::{HostSegment, Reservation, SegmentDescriptor, SegmentKind, page_size};
use crate::store::StoreClient;
use crate::sys::copy::RawRange;
use crate::transport::{Pinned, PinnedIo, Served};
use crate::{Error, Result};

/// Length of the control segment.
pub(crate) const CTRL_LEN: u64 = 4096;
/// Offset of the magic word in the control segment.
pub(crate) const CTRL_MAGIC_AT: u64 = 0;
/// Offset of the region table generation.
pub(crate) const CTRL_GEN_AT: u64 = 8;
/// Offset of the state word ([`STATE_SERVING`] / [`STATE_CLOSED`]).
pub(crate) const CTRL_STATE_AT: u64 = 16;
/// The control segment's magic word.
pub(crate) const CTRL_MAGIC: u64 = 0x534d_5445_4354_524c;
/// State word: the engine serves its regions.
pub(crate) const STATE_SERVING: u64 = 1;
/// State word: the engine was destroyed.
pub(crate) const STATE_CLOSED: u64 = 2;

/// A memfd segment mapped in this process.
#[derive(Debug)]
pub(crate) struct Mapped {
    seg: HostSegment,
    map: Reservation,
}

impl Mapped {
    /// Creates (`desc` = `None`) or opens a peer's segment (`desc`) and maps it.
    pub(crate) fn new(name: &str, len: u64, desc: Option<&SegmentDescriptor>) -> Result<Self> {
        let seg = match desc {
            Some(d) => HostSegment::open(d)?,
            None => HostSegment::create(name, SegmentKind::Host, len)?,
        };
        let map = Reservation::reserve_anywhere(seg.len(), page_size())?;
        map.map_segment(0, seg.fd(), seg.len())?;
        Ok(Self { seg, map })
    }

    /// Address of the first byte in this process.
    pub(crate) fn addr(&self) -> u64 {
        self.map.base().raw()
    }

    /// The segment.
    pub(crate) fn segment(&self) -> &HostSegment {
        &self.seg
    }

    /// `len` bytes at `offset` of the segment, for a copy; `None` outside it.
    pub(crate) fn range(&self, offset: u64, len: u64) -> Option<RawRange<'_>> {
        self.map.mapped_range(offset, len)
    }

    /// Loads the word at `offset` (8-aligned, inside the segment; 0 otherwise). Every access
    /// to control words, in every process, is atomic.
    pub(crate) fn load(&self, offset: u64) -> u64 {
        self.map.load_u64(offset).unwrap_or(0)
    }

    /// Stores `v` at `offset` (8-aligned, inside the segment; ignored otherwise).
    pub(crate) fn store(&self, offset: u64, v: u64) {
        let stored = self.map.store_u64(offset, v);
        debug_assert!(stored, "control word {offset:#x} outside the segment");
    }
}

/// The regions this engine serves.
#[derive(Debug)]
pub(crate) struct Local {
    uid: String,
    token: u64,
    store: StoreClient,
    regions_key: Vec<u8>,
    /// Sorted by address, disjoint. Transport requests hold a read guard while they move bytes.
    regions: RwLock<Vec<Region>>,
    /// `smem_trans_malloc` segments by address (read while a transport request uses one).
    pools: RwLock<HashMap<u64, Mapped>>,
    /// Registered user memory by address, as the C caller vouched for it (valid until its
    /// deregister returned).
    users: RwLock<HashMap<u64, RawRange<'static>>>,
    /// The table's generation; held while a change is published (one change at a time).
    generation: Mutex<u64>,
    ctrl: Mapped,
}

impl Local {
    /// An empty table, published under `regions_key`, with a fresh control segment.
    pub(crate) fn new(
        uid: &str,
        token: u64,
        store: StoreClient,
        regions_key: Vec<u8>,
    ) -> Result<Self> {
        let ctrl = Mapped::new(&format!("smem-trans-ctrl-{uid}"), CTRL_LEN, None)?;
        ctrl.store(CTRL_MAGIC_AT, CTRL_MAGIC);
        ctrl.store(CTRL_STATE_AT, STATE_SERVING);
        let local = Self {
            uid: uid.to_owned(),
            token,
            store,
            regions_key,
            regions: RwLock::new(Vec::new()),
            pools: RwLock::new(HashMap::new()),
            users: RwLock::new(HashMap::new()),
            generation: Mutex::new(0),
            ctrl,
        };
        local.publish(&mut lock(&local.generation), &[])?;
        Ok(local)
    }

    /// The control segment (its descriptor and address go into the engine record).
    pub(crate) fn ctrl(&self) -> &Mapped {
        &self.ctrl
    }

    /// Marks the engine closed for same-host peers (their next transfer fails).
    pub(crate) fn close(&self) {
        self.ctrl.store(CTRL_STATE_AT, STATE_CLOSED);
        write(&self.regions).clear();
    }

    /// Registers `ranges` of this process (memory the C caller vouched for until their
    /// deregister) as user memory, all or none.
    ///
    /// # Errors
    /// `SM_INVALID_PARAM` naming the entry for an empty, wrapping or overlapping range (a range
    /// inside one `smem_trans_malloc` segment is already registered and accepted as is);
    /// `SM_LIMIT_EXCEEDED` over the table's capacity; store errors.
    pub(crate) fn register(&self, ranges: &[RawRange<'static>]) -> Result<()> {
        let mut g = lock(&self.generation);
        let mut next = read(&self.regions).clone();
        let mut added = Vec::new();
        for (i, r) in ranges.iter().enumerate() {
            let (addr, len) = (r.addr(), r.len());
            let at = || {
                if ranges.len() > 1 {
                    format!(" (entry {i})")
                } else {
                    String::new()
                }
            };
            if len == 0 || addr == 0 || addr.checked_add(len).is_none() {
                return Err(Error::invalid(format!(
                    "cannot register [{addr:#x}, +{len:#x}){}: the range is empty, NULL or wraps",
                    at()
                )));
            }
            if let Some(r) = find(&next, addr, len) {
                if r.kind == RegionKind::Pool {
                    continue;
                }
            }
            let pos = next.partition_point(|r| r.end() <= addr);
            if let Some(r) = next.get(pos).filter(|r| r.addr < addr + len) {
                return Err(Error::invalid(format!(
                    "cannot register [{addr:#x}, +{len:#x}){}: it overlaps the registered range [{:#x}, +{:#x}); deregister that first",
                    at(),
                    r.addr,
                    r.len
                )));
            }
            next.insert(pos, Region::user(addr, len));
            added.push(*r);
        }
        // Known before peers can see the new table.
        write(&self.users).extend(added.iter().map(|r| (r.addr(), *r)));
        let r = self.change(&mut g, next);
        if r.is_err() {
            let mut users = write(&self.users);
            for a in &added {
                users.remove(&a.addr());
            }
        }
        r
    }

    /// Withdraws the user range starting at `addr`: from the return on, requests into it are
    /// refused (a transport request in flight finishes first).
    ///
    /// # Errors
    /// `SM_OBJECT_NOT_EXISTS` when no registered range starts there; `SM_INVALID_PARAM` for
    /// `smem_trans_malloc` memory (free it instead).
    pub(crate) fn deregister(&self, addr: u64) -> Result<()> {
        let mut g = lock(&self.generation);
        self.remove(&mut g, addr, RegionKind::User)?;
        // After `change`, which waited for the transport requests in flight.
        write(&self.users).remove(&addr);
        Ok(())
    }

    /// `smem_trans_malloc`: a new shared segment of at least `capacity` bytes, registered.
    ///
    /// # Errors
    /// `SM_INVALID_PARAM` for 0; `SM_MALLOC_FAILED` when the memory is not there.
    pub(crate) fn malloc(&self, capacity: u64) -> Result<u64> {
        if capacity == 0 {
            return Err(Error::invalid("smem_trans_malloc: capacity is 0"));
        }
        let page = page_size();
        let len = capacity.checked_next_multiple_of(page).ok_or_else(|| {
            Error::invalid(format!(
                "smem_trans_malloc: capacity {capacity:#x} is too large"
            ))
        })?;
        let m = Mapped::new(&format!("smem-trans-{}", self.uid), len, None)?;
        let addr = m.addr();
        let d = m.segment().descriptor();
        let mut g = lock(&self.generation);
        let mut next = read(&self.regions).clone();
        let pos = next.partition_point(|r| r.end() <= addr);
        next.insert(
            pos,
            Region {
                addr,
                len,
                kind: RegionKind::Pool,
                fd: d.fd,
                inode: d.inode,
            },
        );
        write(&self.pools).insert(addr, m);
        if let Err(e) = self.change(&mut g, next) {
            write(&self.pools).remove(&addr);
            return Err(e);
        }
        Ok(addr)
    }

    /// `smem_trans_free`.
    ///
    /// # Errors
    /// `SM_OBJECT_NOT_EXISTS` when `addr` was not returned by [`Local::malloc`].
    pub(crate) fn free(&self, addr: u64) -> Result<()> {
        let mut g = lock(&self.generation);
        self.remove(&mut g, addr, RegionKind::Pool)?;
        write(&self.pools).remove(&addr);
        Ok(())
    }

    fn remove(&self, g: &mut u64, addr: u64, kind: RegionKind) -> Result<()> {
        let mut next = read(&self.regions).clone();
        let Some(pos) = next.iter().position(|r| r.addr == addr) else {
            return Err(Error::new(
                ErrorCode::ObjectNotExists,
                format!(
                    "no {} starts at {addr:#x} in engine '{}'",
                    if kind == RegionKind::Pool {
                        "smem_trans_malloc memory"
                    } else {
                        "registered range"
                    },
                    self.uid
                ),
            ));
        };
        if next[pos].kind != kind {
            return Err(Error::invalid(if kind == RegionKind::User {
                format!(
                    "{addr:#x} was allocated by smem_trans_malloc; release it with smem_trans_free"
                )
            } else {
                format!(
                    "{addr:#x} is registered user memory, not smem_trans_malloc memory; use smem_trans_deregister_mem"
                )
            }));
        }
        next.remove(pos);
        self.change(g, next)
    }

    /// Installs `next` (waiting for transport requests in flight), publishes it, then tells
    /// same-host peers through the control segment. Undone when the store refuses.
    fn change(&self, g: &mut u64, next: Vec<Region>) -> Result<()> {
        let before = std::mem::replace(&mut *write(&self.regions), next.clone());
        if let Err(e) = self.publish(g, &next) {
            *write(&self.regions) = before;
            return Err(e);
        }
        Ok(())
    }

    fn publish(&self, g: &mut u64, regions: &[Region]) -> Result<()> {
        let next_gen = *g + 1;
        let mut buf = vec![0u8; regions_len(regions.len())];
        emit_regions(next_gen, regions, &mut buf).map_err(|e| {
            Error::new(
                ErrorCode::LimitExceeded,
                format!(
                    "engine '{}': region table of {} ranges: {e}",
                    self.uid,
                    regions.len()
                ),
            )
        })?;
        self.store.set(&self.regions_key, &buf).map_err(|e| {
            e.context(format!(
                "engine '{}': publishing its registered ranges",
                self.uid
            ))
        })?;
        *g = next_gen;
        self.ctrl.store(CTRL_GEN_AT, next_gen);
        Ok(())
    }
}

/// The region of `regions` (sorted, disjoint) holding `[addr, addr + len)`.
pub(crate) fn find(regions: &[Region], addr: u64, len: u64) -> Option<Region> {
    let pos = regions.partition_point(|r| r.end() <= addr);
    regions.get(pos).filter(|r| r.holds(addr, len)).copied()
}

impl Served for Local {
    fn pinned(&self, token: u64, offset: u64, span: u64, io: PinnedIo<'_>) -> Result<()> {
        if token != self.token {
            return Err(Error::new(
                ErrorCode::ObjectNotExists,
                format!(
                    "engine '{}' was restarted since the requester looked it up; look it up again",
                    self.uid
                ),
            ));
        }
        // Held while the bytes move: a deregister or free waits for the request.
        let g = read(&self.regions);
        let unregistered = || {
            Error::invalid(format!(
                "engine '{}' has no registered range holding [{offset:#x}, +{span:#x})",
                self.uid
            ))
        };
        let r = find(&g, offset, span).ok_or_else(unregistered)?;
        let (pools, users) = (read(&self.pools), read(&self.users));
        let range = match r.kind {
            RegionKind::Pool => pools
                .get(&r.addr)
                .and_then(|m| m.range(offset - r.addr, span)),
            RegionKind::User => users
                .get(&r.addr)
                .and_then(|u| u.sub(offset - r.addr, span)),
        };
        io(Pinned {
            range: range.ok_or_else(unregistered)?,
            device: None,
        });
        Ok(())
    }
}
