//! One BM object in this process: its GVA reservation, local segments, window states, the
//! membership log watcher, and the copy path.
//!
//! # Store keys of object `<id>` (prefix `smem/bm/o<id>/`; the `gva` keys: [`super::agree`])
//! | key | value | written by |
//! |---|---|---|
//! | `log` | membership log: `cr;` create, `wr:<len>:<record>;+r;` join with its window record (host identity, HBM and DRAM segment descriptors, and with the network transport its data endpoint and window generation token), `-r;` leave, `xr;` destroy, `dP;` every holder applied the log up to offset `P` (APPEND) | the rank itself (`dP;`: the holder that completed `seen/P`) |
//! | `hs/<host>` | descriptor of the DRAM segment of the ranks on `<host>` (DRAM-only objects, "Same-host windows in one segment") | CAS by the first creator on the host (every creator tries) |
//! | `ack/<m>` | the offset up to which member `m` applied the log (its high-water mark) | member `m` |
//! | `seen/<P>` | ADD counter: holders whose applied piece of the log ended at `P` | every holder |
//! | `err/<X>/<m>` | why member `m` could not map the window of the join entry ending at `X` | member `m` |
//!
//! # Create (never waits for the other members)
//! SPEC 2.2 makes create a local step (allocate) and join the collective one, with members that
//! create and join later becoming visible without further calls; a size mismatch is an error at
//! join. So BM create ([`adopt_gva`]) settles the object's range at once: every creator
//! reserves a random 2 MiB aligned spot of `mem::gva::CANDIDATE_REGION` (a region processes
//! rarely map, so the range is almost surely free in every peer) and proposes it with a CAS
//! that creates the absent `gva` key (one round trip, also when creators start together); the
//! first proposal wins, and every other creator drops its spot and reserves exactly that range
//! with no-clobber semantics. A creator whose sizes differ gets a handle whose join fails with a message naming
//! both sizes. A later creator where the range is taken fails with `SM_RESOURCE_IN_USE` naming
//! it: earlier members may already use the range, so it cannot move. Then the creator appends
//! `c<rank>;` to the membership log (a holder from then on) and waits until its watcher applied
//! the log up to that entry, so every window joined before is mapped when create returns.
//!
//! # GVA agreement
//! Of the range every member maps the object at: [`super::agree`] (its `gva` keys too).
//!
//! # Membership
//! Every member watches `log` from create on: the watch delivers the whole log, then each
//! appended entry, in one order for everybody (snapshot + deltas). The watcher thread takes
//! everything delivered so far as one piece, takes the window records of the piece's joiners
//! from the piece itself (a join appends its record and its entry in one APPEND, so the log
//! carries every record once, to every holder, and nobody reads records from other keys),
//! maps the windows of joining peers on the same host (at `base + r*stride`; pre-faulted only for objects of
//! at most [`PREFAULT_MEMBERS_MAX`] members), unmaps leaving ones, and then acknowledges the
//! whole piece once: `err/<X>/<m>` for a join it could not map, `ack/<m>` = `P` (the end of the
//! piece's last membership entry) and ADD 1 to `seen/<P>`. The holder whose ADD makes
//! `seen/<P>` equal to the number of holders the log names at `P` appends `dP;`: every holder
//! applied everything up to `P`. Join / leave append their entry (end `X`) and wait until
//! their watcher applied a `dP;` with `P >= X`; joins that arrive together settle together,
//! at the marker of the last of them. When no marker comes (a member died, or the log never
//! quiesced at one offset) the waiter reads every member's `ack/` with one PREFIX get after
//! 1 s, then at doubling intervals up to 8 s, and stops waiting for members that acknowledged
//! `X`, were reported down, or (at most 8 per check) the store says hold no link. A join then
//! fails with the `err/<X>/` reasons. So when join returns every earlier member reaches the
//! new window, and when leave returns nobody maps the leaver's window any more.
//!
//! Cost of a join in a world of `n` members (measured with `benches/scale.rs`, which also
//! counts heartbeats): the joiner sends one APPEND (its record and entry, about 150-250
//! bytes) + one PREFIX get of `err/<X>/` (empty unless a holder failed); every holder sends
//! SET `ack/` + ADD `seen/` per piece of the log it applies, however many entries the piece
//! holds (a burst of joins applies in a few pieces), and one holder one APPEND per settled
//! offset; only the ADD waits for its answer (the SET and the APPEND are posted, in order on
//! the holder's link: one round trip per piece). Store ops per rank are flat in `n`: create took 5-6 ops per rank and join 6-26
//! (two per piece a holder applies) at 64, 256 and 1024 ranks (create: a CAS of the GVA
//! proposal, a CAS of `hs/<host>`, the WATCH, the APPEND of its entry, its acknowledgement).
//! Bytes per rank are linear in `n` with a small constant, the information itself: every
//! join entry (with its record) reaches every holder once, as a watch event or in the
//! snapshot a later creator's watch starts with, about 80-280 bytes a join with the frame.
//! Measured per rank for create + join (median of three runs, 17:50 on the dev VM): 20 KB at
//! 64 ranks, 62 KB at 256, 254 KB at 1024 on one host (`n^2 * 250` bytes at the store in
//! all, no request that grows with `n`); with 128 hosts of 8 (records carry the transport
//! endpoint) 258 KB at 1024. Watch events per rank are one per append after the rank's watch
//! began: about 60 at 64 ranks, 260 at 256 and 1400 at 1024 (`2n` + markers at most: every
//! create and join entry is an append).
//!
//! # Same-host windows in one segment
//! The DRAM windows of a DRAM-only object (no HBM part) live in one memfd per host and object,
//! `member_size * stride` bytes with rank `r`'s window at `r * stride`, each rank allocating
//! only its own part: the first creator on a host creates it (sparse) and publishes its
//! descriptor in `hs/<host>` (one CAS that creates the absent key), later creators open it
//! once through `/proc/<pid>/fd` (`object/shared.rs`). A rank allocates its part by faulting
//! it in through its own mapping (`MADV_POPULATE_WRITE`: a lack of memory fails create, no
//! `SIGBUS` later), not with `fallocate`, which takes the file's lock: 1024 ranks of a host
//! allocating at once queued on it for up to 3 s. A part is punched (stale pages of an earlier
//! owner freed) only when `SEEK_DATA` finds pages in it: a punch walks the mappings of every
//! process that maps the segment. A window record names that segment; its
//! length (the span, not the part) says the window sits at its own offset in it. At create a
//! rank maps the whole segment over the object's range at once, inaccessible (`PROT_NONE`),
//! and opens its own window in it; a holder then opens the windows of the same-host joiners
//! of a piece of the log (`mprotect` read/write) and closes those of leavers (`PROT_NONE`
//! again), one call per run of ranks, a run also spanning ranks already in the state it sets
//! (so a piece costs a few calls however many windows are open). That holds for objects of at
//! most [`PROTECT_MEMBERS_MAX`] members; larger ones map the whole segment read/write at
//! create and only the windows' states change at join and leave: every `mprotect` of a
//! shared file mapping updates the file's mapping tree under one lock for all processes of
//! the host (at 1024 ranks on one host about a million updates, 20% of the job's CPU time).
//! The copy path checks the window's state either way; what such an object gives up is that a
//! raw load or store through `smem_bm_ptr` into a window not joined faults. Per process that is one
//! `open` instead of one per peer (1023 at 1024 ranks, about a million per job on one host),
//! one `mmap`, and a few `mprotect`s per piece instead of an `mmap` per peer at join and at
//! leave (at 512 ranks on one host: 15k `mprotect` + 8k `mmap` calls per job against 273k
//! `mmap`s, 1.3 s in those calls against 3.4 s). Windows not joined (and those of other
//! hosts) stay inaccessible, as before. A rank that finds
//! the published segment gone and loses the CAS to another unopenable one keeps its own
//! (unpublished) segment; peers then open and map its window through its record like a
//! per-rank segment. Destroy frees the rank's part (`PUNCH_HOLE`). Objects with an HBM part
//! keep one DRAM segment per rank.
//!
//! # Copy path
//! No allocation and two atomic read-modify-writes: a copy holds its object's slot read lock
//! (per object, see `runtime/mod.rs`) for its whole duration and checks that the window's atomic
//! state is `MAPPED`. An unmapper sets the state to `CLOSING`, then takes that slot's write lock
//! once ([`super::wait_for_copies`]): that waits for every copy in flight in the object, and
//! every later copy sees `CLOSING` (the lock orders it after the store) and fails cleanly. The
//! lock prefers writers, so a stream of copies cannot starve an unmapper.
//!
//! Windows of other hosts reached through the network transport ([`crate::transport`]) have
//! the state `NET`: the copy path then hands the copy to the transport, under the same slot
//! read lock. Peers' transport requests into this rank's own window hold the object's `served`
//! gate (an atomic state and in-flight count, taken by the server threads, which hold no slot
//! lock); leave and destroy close the gate and wait for it to drain before the window goes.
//!
//! # Device memory that cannot be mapped (`acl`)
//! When the device backend's segments are device-resident ([`DeviceSegment::device_addr`]),
//! the HBM part of every window stays reserved in the GVA. Each window then carries the device
//! address of its HBM part in this process (`Window::dev`: the own `aclrtMalloc` address, or
//! the address of a same-host peer's segment imported at its join), stored before the window
//! becomes `MAPPED` and cleared after it was drained; the copy path translates a validated GVA
//! range of an HBM part to `dev + offset`. The imported segments are kept in `Ctl::imported`
//! and released (IPC key closed) when the window is dropped. At join the owner allows the
//! processes of the same-host members to import its HBM segment ([`crate::device::Device::share`], with the
//! ids they published in their rank records at init).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{info, warn};
use smem_core::ErrorCode;
use smem_core::bm::{WindowLayout, part_lens};
use smem_core::gva::Gva;
use smem_core::limits::WINDOW_ALIGN;
use smem_core::wire::record::LogEntry;

mod membership;
mod ranks;
pub(crate) mod records;
mod settle;
pub(crate) mod shared;
mod window;

use self::ranks::RankSet;
use self::records::{WindowRecord, entry_bytes};
use self::window::{Gate, Window, drain};
use super::agree::{Adopted, AgreeNs, Proposal, adopt_gva, random_u64};
use super::life::remaining;
use super::{Ctx, wait_for_copies};
use crate::device::DeviceSegment;
use crate::mem::{HostSegment, Reservation, SegmentKind};
use crate::sync::{lock, wait_timeout};
use crate::transport::{self, Node, Served};
use crate::{Error, Result};

/// Window states.
pub(crate) const ABSENT: u8 = 0;
pub(crate) const MAPPED: u8 = 1;
pub(crate) const REMOTE: u8 = 2;
pub(crate) const CLOSING: u8 = 3;
/// Another host's window, reached through the network transport.
pub(crate) const NET: u8 = 4;

fn key(id: u32, rest: &str) -> Vec<u8> {
    format!("smem/bm/o{id}/{rest}").into_bytes()
}

/// The GVA agreement namespace of BM object `id`.
fn bm_ns(id: u32) -> AgreeNs {
    AgreeNs {
        prefix: format!("smem/bm/o{id}/"),
        object: format!("BM object {id}"),
        call: format!("smem_bm_create {id}"),
    }
}

/// Objects of at most this many members pre-fault the page tables of every peer window they
/// map (the first copy into it runs at full speed); larger ones map peers' windows without
/// (the first touch of each page faults): pre-faulting `n` windows in each of `n` processes
/// costs `n^2` times the window's page count, minutes and gigabytes of page tables at 1024.
pub(crate) const PREFAULT_MEMBERS_MAX: u32 = 16;

/// Whether peers' windows of an object of `members` members are pre-faulted.
pub(crate) fn prefault(members: u32) -> bool {
    members <= PREFAULT_MEMBERS_MAX
}

/// Objects of at most this many members keep the windows of their host segment that are not
/// joined inaccessible (`PROT_NONE`; opened and closed with `mprotect` as ranks join and
/// leave); larger ones map the whole segment read/write once, at create (module docs, "Same-host
/// windows in one segment"). Every `mprotect` of a shared file mapping updates the file's
/// mapping tree under one lock for all processes of the host: at 1024 ranks on one host the
/// joins cost about a million such updates, 20% of the job's CPU time and 2.5 s of its 7.
pub(crate) const PROTECT_MEMBERS_MAX: u32 = 128;

/// Whether the windows of an object of `members` members in a host segment are opened and
/// closed one by one (else the whole segment is accessible from create on). The limit is
/// [`PROTECT_MEMBERS_MAX`] unless `SMEM_BM_PROTECT_MEMBERS_MAX` says otherwise (read once per
/// process; e.g. `0` makes every object take the path of large ones).
pub(crate) fn protect_windows(members: u32) -> bool {
    static MAX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let max = *crate::sync::get_or_init(&MAX, || {
        std::env::var("SMEM_BM_PROTECT_MEMBERS_MAX")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(PROTECT_MEMBERS_MAX)
    });
    members <= max
}

/// Control state of an object, behind its mutex (never taken by the copy path).
#[derive(Debug, Default)]
struct Ctl {
    /// Bytes of the log applied so far.
    processed: u64,
    /// Ranks joined according to the log.
    joined: RankSet,
    /// Ranks that hold the object: their create entry is in the log, minus destroyed or dead.
    holders: RankSet,
    /// Holders according to the log alone (create minus destroy; deaths are not logged): the
    /// ranks that acknowledge an offset (module docs, "Membership").
    logged: RankSet,
    /// The highest offset a `Settled` entry announced.
    settled: u64,
    /// Ranks whose parts are mapped here: rank -> (hbm mapped, dram mapped).
    mapped: HashMap<u32, (bool, bool)>,
    /// Joiners of the piece being applied whose window is in this host's segment: rank ->
    /// end of its join entry; opened together, in runs, at the end of the piece.
    /// (One entry per rank: a repeated join unmaps, and so drops, the earlier one first.)
    pending: Vec<(u32, u64)>,
    /// Peers whose window in this host's segment is open (accessible) here.
    open: RankSet,
    /// Peers whose window in this host's segment was dropped while applying the piece: closed
    /// (made inaccessible) together, in runs, at its end.
    closing: BTreeSet<u32>,
    /// Peers whose window was mapped here from a segment of their own: their part of the
    /// reservation no longer lies in the host segment's backing.
    foreign: RankSet,
    /// Device segments of same-host peers imported (not mapped) here, by rank.
    imported: Vec<(u32, DeviceSegment)>,
    /// For this rank's own entries: end offset -> other holders at that point.
    own_entries: Vec<(u64, Vec<u32>)>,
    /// This rank joined (its own join completed).
    joined_self: bool,
    /// The watcher stopped (link down or unwatched).
    watcher_gone: bool,
}

/// A BM object of this process.
#[derive(Debug)]
pub(crate) struct BmObject {
    pub(crate) id: u32,
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) layout: WindowLayout,
    rank: u32,
    /// Why join must fail: this rank's sizes differ from the object's (SPEC 2.2: a size
    /// mismatch is an error at join). Such a handle never enters the membership log.
    mismatch: Option<String>,
    reservation: Reservation,
    hbm: Option<DeviceSegment>,
    dram: Option<HostSegment>,
    /// `Some(offset of the own DRAM part)` when `dram` is the segment of this host's ranks
    /// (module docs, "Same-host windows in one segment").
    dram_off: Option<u64>,
    pub(crate) windows: Box<[Window]>,
    /// The network transport, when the object was created with HOST_TCP or ROCE.
    pub(crate) node: Option<Arc<Node>>,
    /// Gate of peers' transport requests into this rank's own window (`MAPPED` while served).
    served: Gate,
    /// Generation token of this rank's window while it is served (0: not served).
    token: AtomicU64,
    ctl: Mutex<Ctl>,
    ctl_cv: Condvar,
    /// Serialises join / leave / destroy of this object.
    op: Mutex<()>,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

/// Sizes of a new object, validated.
pub(crate) struct CreateArgs {
    pub(crate) id: u32,
    pub(crate) member_size: u32,
    pub(crate) dram: u64,
    pub(crate) hbm: u64,
    pub(crate) data_op: u32,
}

impl BmObject {
    /// Allocates local memory, adopts (or, first, proposes) the object's GVA range, maps the
    /// local window, starts watching the membership log and registers this rank as a holder.
    /// Never waits for other members (module docs, "Create").
    pub(crate) fn create(ctx: &Arc<Ctx>, rank: u32, args: &CreateArgs) -> Result<Arc<Self>> {
        let deadline = Instant::now() + ctx.config.create_timeout;
        let (hbm_len, dram_len, stride) = part_lens(args.hbm, args.dram)
            .map_err(|e| Error::invalid(format!("smem_bm_create: {e}")))?;
        let span = stride
            .checked_mul(u64::from(args.member_size))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "smem_bm_create: {} windows of {stride:#x} bytes overflow the address space",
                    args.member_size
                ))
            })?;
        let id = args.id;
        let node = if transport::uses_transport(args.data_op) {
            if args.data_op & smem_core::data_op::BmDataOps::ROCE.bits() != 0 {
                transport::note_roce_fallback();
            }
            Some(
                ctx.transport()
                    .map_err(|e| e.context(format!("smem_bm_create {id}: network transport")))?,
            )
        } else {
            None
        };
        let hbm = if hbm_len > 0 {
            Some(
                ctx.device
                    .alloc(&format!("smem-bm{id}-hbm"), hbm_len)
                    .map_err(|e| e.context(format!("smem_bm_create {id}: HBM part")))?,
            )
        } else {
            None
        };
        // DRAM-only objects keep the windows of a host in one segment (module docs).
        let shared_dram = hbm_len == 0 && dram_len > 0;
        if shared_dram {
            // Refused before any address space is reserved, as a segment of its own would be.
            crate::mem::admit(&format!("smem_bm_create {id}: DRAM part"), dram_len)?;
        }
        let dram = if dram_len > 0 && !shared_dram {
            Some(
                HostSegment::create(&format!("smem-bm{id}-dram"), SegmentKind::Host, dram_len)
                    .map_err(|e| e.context(format!("smem_bm_create {id}: DRAM part")))?,
            )
        } else {
            None
        };
        let want = Proposal {
            version: 0,
            nonce: 0,
            base: 0,
            span,
            stride,
            hbm: hbm_len,
            dram: dram_len,
        };
        let (reservation, base, mismatch) = match adopt_gva(&ctx.store, &bm_ns(id), rank, want)? {
            Adopted::Range(res, base) => (res, base, None),
            Adopted::Mismatch(msg) => {
                // Join will fail with `msg`; until then the handle works like any other (its
                // own range, so `smem_bm_ptr` and the size getters answer).
                let res = Reservation::reserve_candidate(span, WINDOW_ALIGN, random_u64)?;
                let base = res.base().raw();
                (res, base, Some(msg))
            }
        };
        let layout = WindowLayout::new(Gva(base), stride, args.member_size, hbm_len, dram_len)
            .map_err(|e| {
                Error::new(
                    ErrorCode::ProtocolError,
                    format!("smem_bm_create {id}: agreed layout invalid: {e}"),
                )
            })?;
        let own = layout
            .window_base(rank)
            .and_then(|w| w.checked_offset_from(layout.base()))
            .ok_or_else(|| Error::invalid("rank outside the object"))?;
        let windows: Box<[Window]> = (0..args.member_size).map(|_| Window::default()).collect();
        if let Some(seg) = &hbm {
            match (seg.mapping_fd(), seg.device_addr()) {
                (Some(fd), _) => reservation.map_segment(own, fd, hbm_len)?,
                (None, Some(addr)) => windows[rank as usize].dev.store(addr, Ordering::SeqCst),
                (None, None) => {
                    return Err(Error::new(
                        ErrorCode::Error,
                        "device segment neither mappable nor addressable",
                    ));
                }
            }
        }
        let (dram, dram_off) = match dram {
            Some(seg) => (Some(seg), None),
            None if shared_dram => {
                let (seg, off) = if mismatch.is_none() {
                    let seg = shared::host_segment(ctx, id, span)?;
                    // Its pages are allocated through the mapping below.
                    seg.prepare(own, dram_len)
                        .map_err(|e| e.context(format!("smem_bm_create {id}: DRAM part")))?;
                    (seg, Some(own))
                } else {
                    let seg = HostSegment::create(
                        &format!("smem-bm{id}-dram"),
                        SegmentKind::Host,
                        dram_len,
                    )
                    .map_err(|e| e.context(format!("smem_bm_create {id}: DRAM part")))?;
                    (seg, None)
                };
                (Some(seg), off)
            }
            None => (None, None),
        };
        match (&dram, dram_off) {
            // The whole host segment backs the object's range (inaccessible); windows are
            // opened in it as their ranks join, the own one now.
            (Some(seg), Some(off)) => {
                reservation.back_file(0, seg.fd(), 0, span)?;
                if protect_windows(args.member_size) {
                    reservation.open(off, dram_len, false)?;
                } else {
                    reservation.open(0, span, false)?;
                }
                // The own window's pages are allocated by faulting them in here (no lock of
                // the segment file is taken; `fallocate` on an older kernel, which cannot
                // pre-fault either).
                let part = |e: Error| e.context(format!("smem_bm_create {id}: DRAM part"));
                if !reservation.populate(off, dram_len).map_err(part)? {
                    seg.fallocate(off, dram_len).map_err(part)?;
                }
            }
            (Some(seg), None) => {
                reservation.map_file_part(own + hbm_len, seg.fd(), 0, dram_len, true)?
            }
            (None, _) => {}
        }
        let ctl = Ctl::default();
        let obj = Arc::new(Self {
            id,
            ctx: Arc::clone(ctx),
            layout,
            rank,
            mismatch,
            reservation,
            hbm,
            dram,
            dram_off,
            windows,
            node,
            served: Gate::default(),
            token: AtomicU64::new(0),
            ctl: Mutex::new(ctl),
            ctl_cv: Condvar::new(),
            op: Mutex::new(()),
            watcher: Mutex::new(None),
        });
        if obj.mismatch.is_none() {
            obj.start_watcher()?;
            if let Err(e) = obj.register(deadline) {
                // Others must not count this rank as a holder that will ack their changes.
                let _ = ctx
                    .store
                    .append(&key(id, "log"), &entry_bytes(LogEntry::Destroy(rank)));
                obj.stop_watcher();
                return Err(e.context(format!("smem_bm_create {id}")));
            }
        }
        info!(
            "smem_bm_create {id}: rank {rank} of {} at GVA {base:#x}, stride {stride:#x}",
            args.member_size
        );
        Ok(obj)
    }

    /// Appends this rank's create entry and waits until the watcher applied the log up to it,
    /// so every window joined before is mapped here when create returns.
    fn register(&self, deadline: Instant) -> Result<()> {
        let len = self.ctx.store.append(
            &key(self.id, "log"),
            &entry_bytes(LogEntry::Create(self.rank)),
        )?;
        let mut ctl = lock(&self.ctl);
        while ctl.processed < len {
            if ctl.watcher_gone {
                return Err(Error::new(
                    ErrorCode::IoError,
                    "the membership watch stopped (config store link down?)",
                ));
            }
            let left = remaining(deadline);
            if left.is_zero() {
                return Err(Error::new(
                    ErrorCode::Timeout,
                    "the membership log was not delivered within the create timeout",
                ));
            }
            ctl = wait_timeout(&self.ctl_cv, ctl, left);
        }
        Ok(())
    }

    fn start_watcher(self: &Arc<Self>) -> Result<()> {
        let rx = self.ctx.store.watch(&key(self.id, "log")).map_err(|e| {
            e.context(format!(
                "smem_bm_create {}: watching the membership log",
                self.id
            ))
        })?;
        let me = Arc::clone(self);
        let t = std::thread::Builder::new()
            .name(format!("smem-bm{}-watch", self.id))
            .spawn(move || {
                while let Ok(mut piece) = rx.recv() {
                    // Everything delivered so far is applied (and acknowledged) at once.
                    while let Ok(more) = rx.try_recv() {
                        piece.extend_from_slice(&more);
                    }
                    me.apply(&piece);
                }
                let mut ctl = lock(&me.ctl);
                ctl.watcher_gone = true;
                me.ctl_cv.notify_all();
            })
            .map_err(|e| {
                Error::new(
                    ErrorCode::NewObjectFailed,
                    format!("cannot start the BM watcher thread: {e}"),
                )
            })?;
        *lock(&self.watcher) = Some(t);
        Ok(())
    }

    /// `smem_bm_join`: publishes the window and waits for every other holder to map it.
    pub(crate) fn join(self: &Arc<Self>) -> Result<u64> {
        let _op = lock(&self.op);
        let what = format!(
            "smem_bm_join of BM object {} by rank {}",
            self.id, self.rank
        );
        if let Some(msg) = &self.mismatch {
            return Err(Error::invalid(format!("{what}: {msg}")));
        }
        if lock(&self.ctl).joined_self {
            return Err(Error::new(
                ErrorCode::RepeatCall,
                format!("{what}: already joined"),
            ));
        }
        let deadline = Instant::now() + self.ctx.config.create_timeout;
        if let Some(seg) = &self.hbm {
            let pids = self
                .same_host_sharing_pids()
                .map_err(|e| e.context(&what))?;
            self.ctx
                .device
                .share(seg, &pids)
                .map_err(|e| e.context(format!("{what}: sharing the HBM part")))?;
        }
        let net = self.node.as_ref().map(|node| {
            let token = random_u64().max(1);
            self.token.store(token, Ordering::SeqCst);
            self.served.state.store(MAPPED, Ordering::SeqCst);
            let me: Weak<dyn Served> = Arc::downgrade(self) as Weak<dyn Served>;
            node.serve(self.id, me);
            (node.endpoint(), token)
        });
        let rec = WindowRecord {
            host: self.ctx.host_id.clone(),
            hbm: self.hbm.as_ref().map(DeviceSegment::descriptor),
            dram: self.dram.as_ref().map(HostSegment::descriptor),
            net,
        };
        let record = match rec.encode() {
            Ok(b) => b,
            Err(e) => {
                self.stop_serving();
                return Err(e.context(&what));
            }
        };
        if let Err(e) = self.announce(LogEntry::Join(self.rank), Some(&record), &what, deadline) {
            self.stop_serving();
            // Roll back so nobody keeps a half-joined window.
            let _ = self.announce(
                LogEntry::Leave(self.rank),
                None,
                &what,
                Instant::now() + Duration::from_secs(5),
            );
            return Err(e);
        }
        lock(&self.ctl).joined_self = true;
        self.windows[self.rank as usize]
            .state
            .store(MAPPED, Ordering::SeqCst);
        let base = self.layout.window_base(self.rank).map_or(0, Gva::raw);
        info!("{what}: window at {base:#x}");
        Ok(base)
    }

    /// `smem_bm_leave`: peers drop the window before this returns.
    pub(crate) fn leave(&self) -> Result<()> {
        let _op = lock(&self.op);
        self.leave_locked()
    }

    fn leave_locked(&self) -> Result<()> {
        let what = format!(
            "smem_bm_leave of BM object {} by rank {}",
            self.id, self.rank
        );
        if !lock(&self.ctl).joined_self {
            return Err(Error::new(
                ErrorCode::ObjectNotExists,
                format!("{what}: this rank has not joined the object (or already left it)"),
            ));
        }
        let w = &self.windows[self.rank as usize];
        w.state.store(CLOSING, Ordering::SeqCst);
        wait_for_copies(self.id);
        w.state.store(ABSENT, Ordering::SeqCst);
        self.stop_serving();
        lock(&self.ctl).joined_self = false;
        let deadline = Instant::now() + self.ctx.config.create_timeout;
        self.announce(LogEntry::Leave(self.rank), None, &what, deadline)
    }

    /// `smem_bm_destroy` (store side): leaves if joined, tells the others, stops the watcher and
    /// removes the object's keys when this was the last holder. Local memory is freed when the
    /// last reference to the object drops.
    pub(crate) fn destroy(&self) -> Result<()> {
        let op = lock(&self.op);
        if self.mismatch.is_some() {
            // Never entered the membership log.
            return Ok(());
        }
        let mut result = Ok(());
        if lock(&self.ctl).joined_self {
            result = self.leave_locked();
        }
        let what = format!(
            "smem_bm_destroy of BM object {} by rank {}",
            self.id, self.rank
        );
        let deadline = Instant::now()
            + self
                .ctx
                .config
                .control_timeout
                .min(self.ctx.config.create_timeout);
        // Nobody waits for acks of a destroy; holders drop us when they read it.
        let store = &self.ctx.store;
        match store.append(
            &key(self.id, "log"),
            &entry_bytes(LogEntry::Destroy(self.rank)),
        ) {
            Ok(len) => {
                let last = {
                    let mut ctl = lock(&self.ctl);
                    loop {
                        if let Some(i) = ctl.own_entries.iter().position(|e| e.0 == len) {
                            break Some(ctl.own_entries.swap_remove(i).1.is_empty());
                        }
                        let left = remaining(deadline);
                        if ctl.watcher_gone || left.is_zero() {
                            break None;
                        }
                        ctl = wait_timeout(&self.ctl_cv, ctl, left);
                    }
                };
                if last == Some(true) {
                    if let Ok(keys) = store.prefix(&key(self.id, "")) {
                        for (k, _) in keys {
                            let _ = store.remove(&k);
                        }
                    }
                }
            }
            Err(e) => warn!("{what}: cannot announce the destroy: {e}"),
        }
        drop(op);
        self.stop_watcher();
        self.release_own();
        result
    }

    fn stop_watcher(&self) {
        let _ = self.ctx.store.unwatch(&key(self.id, "log"));
        // Not joined under the lock: never wait for another thread while holding one.
        let watcher = lock(&self.watcher).take();
        if let Some(t) = watcher {
            if std::thread::current().id() != t.thread().id() {
                let _ = t.join();
            }
        }
    }

    /// Stops serving this rank's window to the network and waits for requests in flight.
    fn stop_serving(&self) {
        if let Some(node) = &self.node {
            node.unserve(self.id);
        }
        self.served.state.store(CLOSING, Ordering::SeqCst);
        drain(&self.served);
        self.served.state.store(ABSENT, Ordering::SeqCst);
        self.token.store(0, Ordering::SeqCst);
    }

    /// Marks every window absent and waits for in-flight copies (before freeing memory).
    pub(crate) fn quiesce(&self) {
        self.stop_serving();
        for w in self.windows.iter() {
            w.state.store(CLOSING, Ordering::SeqCst);
        }
        wait_for_copies(self.id);
        for w in self.windows.iter() {
            w.state.store(ABSENT, Ordering::SeqCst);
        }
    }
}
