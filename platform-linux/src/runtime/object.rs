//! One BM object in this process: its GVA reservation, local segments, window states, the
//! membership log watcher, and the copy path.
//!
//! # Store keys of object `<id>` (prefix `smem/bm/o<id>/`)
//! | key | value | written by |
//! |---|---|---|
//! | `gva` | `v<n> <nonce> <base> <span> <stride> <hbm> <dram>` (hex) | CAS by the first creator (BM), by the rank proposing candidate `n` (SHM) |
//! | `gva/v<nonce>.<n>` | ADD counter: ranks holding candidate `n` (+ [`SUPERSEDED`], + [`ABORT`]) | every member |
//! | `gva/r<r>` | `<nonce>.<n>` last candidate rank `r` reserved (for the timeout message) | rank `r` |
//! | `abort` | why SHM create was aborted (sizes differ) | the rank that found it |
//! | `log` | membership log: `cr;` create, `+r;` join, `-r;` leave, `xr;` destroy, `dP;` every holder applied the log up to offset `P` (APPEND) | the rank itself (`dP;`: the holder that completed `seen/P`) |
//! | `win/<r>` | window record: host identity, HBM and DRAM segment descriptors, and with the network transport its data endpoint and window generation token | rank `r` at join |
//! | `ack/<m>` | the offset up to which member `m` applied the log (its high-water mark) | member `m` |
//! | `seen/<P>` | ADD counter: holders whose applied piece of the log ended at `P` | every holder |
//! | `err/<X>/<m>` | why member `m` could not map the window of the join entry ending at `X` | member `m` |
//! | `gva/d<nonce>.<n>` | `ok`, `superseded` or `abort`: the outcome of candidate `n` (SHM) | the rank that decided it |
//!
//! # Create (never waits for the other members)
//! SPEC 2.2 makes create a local step (allocate) and join the collective one, with members that
//! create and join later becoming visible without further calls; a size mismatch is an error at
//! join. So BM create ([`adopt_gva`]) settles the object's range at once: the first creator
//! reserves a random 2 MiB aligned spot of `mem::gva::CANDIDATE_REGION` (a region processes
//! rarely map, so the range is almost surely free in every peer) and proposes it with a CAS on
//! the absent `gva` key; every later creator reserves exactly that range with no-clobber
//! semantics. A creator whose sizes differ gets a handle whose join fails with a message naming
//! both sizes. A later creator where the range is taken fails with `SM_RESOURCE_IN_USE` naming
//! it: earlier members may already use the range, so it cannot move. Then the creator appends
//! `c<rank>;` to the membership log (a holder from then on) and waits until its watcher applied
//! the log up to that entry, so every window joined before is mapped when create returns.
//!
//! # GVA agreement (SHM: create is collective over the `rankSize` ranks)
//! The first rank to find `gva` absent reserves a 2 MiB aligned span at a random spot of the
//! candidate region and proposes it (CAS on an absent key). Every rank tries to reserve exactly that span with
//! no-clobber semantics; on success it adds 1 to `gva/v<nonce>.<n>`. A rank where the span is taken
//! reserves a fresh random span of its own and proposes it as `n+1` with a CAS on the exact previous
//! value (one proposal wins per round), then adds [`SUPERSEDED`] to `gva/v<nonce>.<n>` so every waiter
//! wakes and moves. Create returns when `gva/v<nonce>.<n>` reaches `member_size`: no rank can propose
//! afterwards, because every rank holds the span. All waiting is on WATCHes, bounded by
//! `createTimeout`. Random candidates matter: kernel-chosen ones (`mmap(NULL)`, the hole at
//! the top of each process's own map) let two ranks propose each other's taken ranges forever.
//!
//! # Membership
//! Every member watches `log` from create on: the watch delivers the whole log, then each
//! appended entry, in one order for everybody (snapshot + deltas). The watcher thread takes
//! everything delivered so far as one piece, reads the window records of the piece's joiners
//! (one GET for one joiner, one PREFIX get of `win/` for more), maps the windows of joining
//! peers on the same host (`MAP_SHARED` at `base + r*stride`; pre-faulted only for objects of
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
//! Cost of a join in a world of `n` members (`tests/scale.rs`, `benches/scale.rs`): the
//! joiner sends SET `win/<r>` + APPEND + one PREFIX get of `err/<X>/`; every holder sends
//! SET + ADD (+ a GET or PREFIX get of the records) per piece it applies, however many
//! entries the piece holds (a burst of joins applies in a few pieces), and one holder one
//! APPEND per settled offset. Store ops per rank are constant (about 10-30 for create + join
//! at 64-1024 ranks, against `3n` before); bytes per rank grow with `n`: each holder reads
//! every joiner's record once (about 150 bytes each) and receives every log entry as a watch
//! event (about 30 bytes each), so O(n) per rank, O(n^2) at the store, in a handful of large
//! replies rather than `n^2` round trips.
//!
//! # Same-host windows in one segment
//! The DRAM windows of a DRAM-only object (no HBM part) live in one memfd per host and object,
//! `member_size * stride` bytes with rank `r`'s window at `r * stride`, each rank allocating
//! (`fallocate`) only its own part: the first creator on a host creates it (sparse) and
//! publishes its descriptor in `hs/<host>` (CAS on what it read), later creators open it once
//! through `/proc/<pid>/fd` (`runtime/object/shared.rs`). A window record then names that
//! segment and the part's offset (`doff=`); a holder maps the windows of the same-host joiners
//! of a piece of the log from the descriptor it already holds, one `mmap` per run of
//! consecutive ranks, and unmaps each on its own at leave. Per process that is one `open`
//! instead of one per peer (1023 at 1024 ranks, about a million per job on one host), and a
//! handful of `mmap`s per piece instead of one per peer. Windows not joined (and those of other
//! hosts) stay reserved `PROT_NONE`, as before. A rank that finds the published segment gone
//! and loses the CAS to another unopenable one keeps its own (unpublished) segment; peers then
//! open and map its window through its record like a per-rank segment. Destroy frees the
//! rank's part (`PUNCH_HOLE`). Objects with an HBM part keep one DRAM segment per rank.
//!
//! # Copy path
//! No allocation and two atomic read-modify-writes: a copy holds its object's slot read lock
//! (per object, see `runtime/mod.rs`) for its whole duration and checks that the window's atomic
//! state is `MAPPED`. An unmapper sets the state to `CLOSING`, then takes that slot's write lock
//! once (`super::wait_for_copies`): that waits for every copy in flight in the object, and
//! every later copy sees `CLOSING` (the lock orders it after the store) and fails cleanly. The
//! lock prefers writers, so a stream of copies cannot starve an unmapper. (An earlier version
//! counted in-flight copies per window on top of the slot lock: four atomic RMWs per copy,
//! measurably slower for copies under 64 KiB.)
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{Level, debug, info, warn};
use smem_core::ErrorCode;
use smem_core::bm::{Part, WindowLayout, part_lens};
use smem_core::gva::Gva;
use smem_core::limits::WINDOW_ALIGN;

mod settle;
mod shared;

use super::Ctx;
use crate::device::{Device, DeviceDescriptor, DeviceSegment};
use crate::mem::{HostSegment, Reservation, SegmentDescriptor, SegmentKind};
use crate::store::{CasResult, StoreClient};
use crate::sync::{lock, wait_timeout};
use crate::transport::{self, Node, Pinned, Served};
use crate::{Error, Result};

/// Added to a candidate's counter when a newer candidate replaced it.
pub(crate) const SUPERSEDED: i64 = 1 << 40;
/// Added to a candidate's counter when create was aborted (sizes differ).
pub(crate) const ABORT: i64 = 1 << 50;

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

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
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

/// Log lines collected while the object's control lock is held, logged after it is released.
type Notes = Vec<(Level, String)>;

fn log_notes(notes: Notes) {
    for (level, msg) in notes {
        log::log!(level, "{msg}");
    }
}

/// What applying entries of the membership log needs and produces besides the control state.
struct Applied<'a> {
    /// Window records of the joiners in the piece, by rank.
    records: &'a HashMap<u32, Vec<u8>>,
    notes: &'a mut Notes,
    /// Join entries (end offset) whose window this rank could not map, with why.
    failed: &'a mut Vec<(u64, String)>,
}

/// One rank's window: its state (see the module docs, "Copy path").
#[derive(Debug, Default)]
pub(crate) struct Window {
    pub(crate) state: AtomicU8,
    /// Device address of the HBM part when it is device memory not mapped into the GVA
    /// (module docs); 0 when the part is mapped (or absent).
    pub(crate) dev: AtomicU64,
    /// `NET` windows: the owner's data endpoint and window generation token (read on the
    /// network path only).
    remote: Mutex<Option<(SocketAddr, u64)>>,
}

/// Proof that a window was `MAPPED` (or `NET`) when a copy entered it. The window stays so
/// while the copy holds its object's slot read lock, which the borrow ties this guard to.
pub(crate) struct WindowGuard<'a> {
    #[allow(dead_code)]
    window: &'a Window,
    /// The window is reached through the network transport (state `NET`), not mapped.
    pub(crate) net: bool,
}

/// The gate of peers' transport requests into this rank's own window.
#[derive(Debug, Default)]
struct Gate {
    state: AtomicU8,
    inflight: AtomicU32,
}

/// Holds the gate's in-flight count while a request uses the window.
struct GateGuard<'a>(&'a Gate);

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Control state of an object, behind its mutex (never taken by the copy path).
#[derive(Debug, Default)]
struct Ctl {
    /// Bytes of the log applied so far.
    processed: u64,
    /// Ranks joined according to the log.
    joined: BTreeSet<u32>,
    /// Ranks that hold the object: their create entry is in the log, minus destroyed or dead.
    holders: BTreeSet<u32>,
    /// Holders according to the log alone (create minus destroy; deaths are not logged): the
    /// ranks that acknowledge an offset (module docs, "Membership").
    logged: BTreeSet<u32>,
    /// The highest offset a `Settled` entry announced.
    settled: u64,
    /// Ranks whose parts are mapped here: rank -> (hbm mapped, dram mapped).
    mapped: HashMap<u32, (bool, bool)>,
    /// Joiners of the piece being applied whose window is in this host's segment: (rank, end
    /// of the join entry); mapped together, in runs, at the end of the piece.
    pending: BTreeMap<u32, u64>,
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

/// The parsed `gva` proposal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Proposal {
    pub(crate) version: u64,
    /// Random per agreement (chosen with candidate 0): names its counters, so counters of an
    /// aborted or timed-out earlier agreement for the same id are never reused.
    pub(crate) nonce: u64,
    pub(crate) base: u64,
    pub(crate) span: u64,
    pub(crate) stride: u64,
    pub(crate) hbm: u64,
    pub(crate) dram: u64,
}

impl Proposal {
    fn encode(&self) -> Vec<u8> {
        format!(
            "v{} {:x} {:x} {:x} {:x} {:x} {:x}",
            self.version, self.nonce, self.base, self.span, self.stride, self.hbm, self.dram
        )
        .into_bytes()
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(b).ok()?;
        let mut it = s.split(' ');
        let version = it.next()?.strip_prefix('v')?.parse().ok()?;
        let mut hex = || u64::from_str_radix(it.next()?, 16).ok();
        let p = Self {
            version,
            nonce: hex()?,
            base: hex()?,
            span: hex()?,
            stride: hex()?,
            hbm: hex()?,
            dram: hex()?,
        };
        Some(p)
    }

    /// Names this candidate in counter keys: `<nonce>.<version>`.
    fn tag(&self) -> String {
        format!("{:x}.{}", self.nonce, self.version)
    }
}

/// A random `u64` (std's randomly seeded hasher; no extra dependency).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

fn counter_key(ns: &AgreeNs, tag: &str) -> Vec<u8> {
    ns.key(&format!("gva/v{tag}"))
}

/// Where a GVA agreement keeps its keys and how its messages name the object (shared by the
/// BM and SHM runtimes).
#[derive(Clone, Debug)]
pub(crate) struct AgreeNs {
    /// Key prefix of the object, e.g. `smem/bm/o3/`.
    pub(crate) prefix: String,
    /// The object in messages, e.g. `BM object 3`.
    pub(crate) object: String,
    /// The creating call in messages, e.g. `smem_bm_create 3`.
    pub(crate) call: String,
}

impl AgreeNs {
    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}{rest}", self.prefix).into_bytes()
    }
}

/// What a member publishes at join: where its window's memory is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WindowRecord {
    pub(crate) host: String,
    pub(crate) hbm: Option<DeviceDescriptor>,
    pub(crate) dram: Option<SegmentDescriptor>,
    /// The member's transport endpoint and window generation token, when it serves the window
    /// over the network.
    pub(crate) net: Option<(SocketAddr, u64)>,
    /// Where the DRAM part starts in the `dram` segment when that segment holds the windows of
    /// several ranks of the host (`doff=`; module docs, "Same-host windows in one segment").
    pub(crate) dram_off: Option<u64>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

impl WindowRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let d = |x: Option<Vec<u8>>| x.map_or_else(|| "-".to_owned(), |b| hex(&b));
        let mut s = format!(
            "host={};hbm={};dram={}",
            self.host,
            d(self.hbm.as_ref().map(DeviceDescriptor::encode)),
            d(self.dram.map(|x| x.encode().to_vec()))
        );
        if let Some((ep, token)) = self.net {
            s.push_str(&format!(";ep={ep};tok={token:x}"));
        }
        if let Some(off) = self.dram_off {
            s.push_str(&format!(";doff={off:x}"));
        }
        s.into_bytes()
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self> {
        let bad = || {
            Error::new(
                ErrorCode::ProtocolError,
                "malformed window record in the config store",
            )
        };
        let s = std::str::from_utf8(b).map_err(|_| bad())?;
        let mut host = None;
        let mut hbm = None;
        let mut dram = None;
        let mut ep: Option<SocketAddr> = None;
        let mut tok: Option<u64> = None;
        let mut dram_off = None;
        for field in s.split(';') {
            let (k, v) = field.split_once('=').ok_or_else(bad)?;
            let desc = |v: &str| -> Result<Option<SegmentDescriptor>> {
                if v == "-" {
                    return Ok(None);
                }
                SegmentDescriptor::decode(&unhex(v).ok_or_else(bad)?).map(Some)
            };
            match k {
                "host" => host = Some(v.to_owned()),
                "hbm" if v != "-" => {
                    hbm = Some(DeviceDescriptor::decode(&unhex(v).ok_or_else(bad)?)?);
                }
                "hbm" => {}
                "dram" => dram = desc(v)?,
                "ep" => ep = Some(v.parse().map_err(|_| bad())?),
                "tok" => tok = Some(u64::from_str_radix(v, 16).map_err(|_| bad())?),
                "doff" => dram_off = Some(u64::from_str_radix(v, 16).map_err(|_| bad())?),
                _ => {}
            }
        }
        let net = match (ep, tok) {
            (Some(ep), Some(tok)) if tok != 0 => Some((ep, tok)),
            (None, None) => None,
            _ => return Err(bad()),
        };
        Ok(Self {
            host: host.ok_or_else(bad)?,
            hbm,
            dram,
            net,
            dram_off,
        })
    }
}

/// A log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Create(u32),
    Join(u32),
    Leave(u32),
    Destroy(u32),
    /// Every holder applied the log up to this offset (module docs, "Membership").
    Settled(u64),
}

impl Entry {
    fn encode(self) -> String {
        match self {
            Self::Create(r) => format!("c{r};"),
            Self::Join(r) => format!("+{r};"),
            Self::Leave(r) => format!("-{r};"),
            Self::Destroy(r) => format!("x{r};"),
            Self::Settled(p) => format!("d{p};"),
        }
    }
}

/// Splits log bytes into entries with their end offsets (relative to the piece start).
fn parse_entries(piece: &[u8]) -> Vec<(usize, Option<Entry>)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, b) in piece.iter().enumerate() {
        if *b != b';' {
            continue;
        }
        let e = &piece[start..i];
        let entry = e.split_first().and_then(|(kind, num)| {
            let num = std::str::from_utf8(num).ok()?;
            if *kind == b'd' {
                return Some(Entry::Settled(num.parse().ok()?));
            }
            let r: u32 = num.parse().ok()?;
            match kind {
                b'c' => Some(Entry::Create(r)),
                b'+' => Some(Entry::Join(r)),
                b'-' => Some(Entry::Leave(r)),
                b'x' => Some(Entry::Destroy(r)),
                _ => None,
            }
        });
        out.push((i + 1, entry));
        start = i + 1;
    }
    out
}

/// Names a list of ranks compactly: `0-3,7`.
pub(crate) fn rank_list(ranks: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < ranks.len() {
        let mut j = i;
        while j + 1 < ranks.len() && ranks[j + 1] == ranks[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if j > i {
            out.push_str(&format!("{}-{}", ranks[i], ranks[j]));
        } else {
            out.push_str(&ranks[i].to_string());
        }
        i = j + 1;
    }
    out
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
                    seg.allocate(own, dram_len)
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
        if let Some(seg) = &dram {
            reservation.map_file_part(
                own + hbm_len,
                seg.fd(),
                dram_off.unwrap_or(0),
                dram_len,
                true,
            )?;
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
                    .append(&key(id, "log"), Entry::Destroy(rank).encode().as_bytes());
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
            Entry::Create(self.rank).encode().as_bytes(),
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

    /// The window offset of `rank` from the object base.
    fn window_offset(&self, rank: u32) -> u64 {
        u64::from(rank) * self.layout.stride()
    }

    /// Applies a piece of the membership log (watcher thread): maps and unmaps windows, then
    /// acknowledges the whole piece once (module docs, "Membership").
    fn apply(&self, piece: &[u8]) {
        let entries = parse_entries(piece);
        let records = self.fetch_records(&entries);
        // Logged after the lock is released.
        let mut notes = Notes::new();
        let mut failed = Vec::new();
        let ack = {
            let mut ctl = lock(&self.ctl);
            let base = ctl.processed;
            let mut last_real = None;
            for (end, entry) in entries {
                let off = base + end as u64;
                match entry {
                    None => notes.push((
                        Level::Warn,
                        format!(
                            "BM object {}: ignoring a malformed membership log entry",
                            self.id
                        ),
                    )),
                    Some(Entry::Settled(p)) => ctl.settled = ctl.settled.max(p),
                    Some(e) => {
                        last_real = Some(off);
                        let mut out = Applied {
                            records: &records,
                            notes: &mut notes,
                            failed: &mut failed,
                        };
                        self.apply_entry(&mut ctl, e, off, &mut out);
                    }
                }
                ctl.processed = off;
            }
            self.map_pending(&mut ctl, &mut notes, &mut failed);
            // Bytes after the last ';' (never written by us) are skipped.
            ctl.processed = base + piece.len() as u64;
            self.ctl_cv.notify_all();
            last_real
                .filter(|_| ctl.logged.contains(&self.rank))
                .map(|p| (p, ctl.logged.len()))
        };
        log_notes(notes);
        if let Some((p, holders)) = ack {
            self.acknowledge(p, holders, &failed);
        }
    }

    fn apply_entry(&self, ctl: &mut Ctl, entry: Entry, off: u64, out: &mut Applied<'_>) {
        let r = match entry {
            Entry::Create(r) | Entry::Join(r) | Entry::Leave(r) | Entry::Destroy(r) => r,
            Entry::Settled(_) => return,
        };
        if r >= self.layout.member_size() {
            out.notes.push((
                Level::Warn,
                format!(
                    "BM object {}: log names rank {r}, outside {} members",
                    self.id,
                    self.layout.member_size()
                ),
            ));
            return;
        }
        if let Entry::Create(_) = entry {
            // A holder from now on: it acks the later entries.
            ctl.holders.insert(r);
            ctl.logged.insert(r);
            return;
        }
        if matches!(entry, Entry::Destroy(_)) {
            ctl.logged.remove(&r);
        }
        if r == self.rank {
            match entry {
                Entry::Join(_) => {
                    ctl.joined.insert(r);
                }
                Entry::Leave(_) => {
                    ctl.joined.remove(&r);
                }
                Entry::Destroy(_) => {
                    ctl.joined.remove(&r);
                    ctl.holders.remove(&r);
                }
                Entry::Create(_) | Entry::Settled(_) => {}
            }
            let others: Vec<u32> = ctl
                .holders
                .iter()
                .copied()
                .filter(|&h| h != self.rank)
                .collect();
            ctl.own_entries.push((off, others));
            return;
        }
        match entry {
            Entry::Join(_) => {
                ctl.joined.insert(r);
                self.unmap_peer(ctl, r, out.notes);
                if let Err(e) = self.map_peer(ctl, r, off, out.records.get(&r), out.notes) {
                    out.notes.push((
                        Level::Warn,
                        format!("BM object {}: cannot map rank {r}'s window: {e}", self.id),
                    ));
                    out.failed.push((
                        off,
                        format!("rank {} could not map rank {r}'s window: {e}", self.rank),
                    ));
                }
            }
            Entry::Leave(_) | Entry::Destroy(_) => {
                ctl.joined.remove(&r);
                if matches!(entry, Entry::Destroy(_)) {
                    ctl.holders.remove(&r);
                }
                self.unmap_peer(ctl, r, out.notes);
            }
            Entry::Create(_) | Entry::Settled(_) => {}
        }
    }

    /// Maps rank `r`'s window from its record. `Ok(false)`: another host (left reserved).
    /// `rec`: its record as read from the store before the piece of the log was applied.
    fn map_peer(
        &self,
        ctl: &mut Ctl,
        r: u32,
        entry_end: u64,
        rec: Option<&Vec<u8>>,
        notes: &mut Notes,
    ) -> Result<bool> {
        let rec = rec.ok_or_else(|| {
            Error::new(
                ErrorCode::ObjectNotExists,
                format!("rank {r} joined but published no window record"),
            )
        })?;
        let rec = WindowRecord::decode(rec)?;
        let w = &self.windows[r as usize];
        let check = |got: u64, want: u64, part: Part| -> Result<()> {
            if got != want {
                return Err(Error::invalid(format!(
                    "rank {r}'s {part} part is {got:#x} bytes but this object's is {want:#x}; every member must create with the same sizes"
                )));
            }
            Ok(())
        };
        check(
            rec.hbm.as_ref().map_or(0, DeviceDescriptor::len),
            self.layout.hbm_len(),
            Part::Hbm,
        )?;
        let dram_len = match (rec.dram, rec.dram_off) {
            // A window in a segment of several: the part must lie inside it.
            (Some(d), Some(o))
                if o.checked_add(self.layout.dram_len())
                    .is_some_and(|e| e <= d.len) =>
            {
                self.layout.dram_len()
            }
            (Some(d), Some(o)) => {
                return Err(Error::invalid(format!(
                    "rank {r}'s DRAM part at {o:#x} does not fit its segment of {:#x} bytes",
                    d.len
                )));
            }
            (d, None) => d.map_or(0, |d| d.len),
            (None, Some(_)) => 0,
        };
        check(dram_len, self.layout.dram_len(), Part::Dram)?;
        if rec.host != self.ctx.host_id {
            match (&self.node, rec.net) {
                (Some(_), Some(net)) => {
                    *lock(&w.remote) = Some(net);
                    w.state.store(NET, Ordering::SeqCst);
                    notes.push((Level::Debug, format!(
                        "BM object {}: rank {r} is on host {}; its window is reached through the network transport at {}",
                        self.id, rec.host, net.0
                    )));
                }
                _ => {
                    w.state.store(REMOTE, Ordering::SeqCst);
                    notes.push((Level::Debug, format!(
                        "BM object {}: rank {r} is on host {} (not ours) and no network transport connects us; its window stays reserved",
                        self.id, rec.host
                    )));
                }
            }
            return Ok(false);
        }
        let off = self.window_offset(r);
        if rec.hbm.is_none() && self.in_own_segment(r, &rec) {
            // Mapped with the other joiners of the piece, at its end (`map_pending`).
            ctl.pending.insert(r, entry_end);
            return Ok(true);
        }
        let mut hbm_mapped = false;
        let mut imported = None;
        if let Some(d) = &rec.hbm {
            let seg = self.ctx.device.open_peer(d)?;
            match (seg.mapping_fd(), seg.device_addr()) {
                (Some(fd), _) => {
                    self.reservation.map_segment_with(
                        off,
                        fd,
                        d.len(),
                        prefault(self.layout.member_size()),
                    )?;
                    hbm_mapped = true;
                }
                (None, Some(addr)) => imported = Some((addr, seg)),
                (None, None) => {
                    return Err(Error::new(
                        ErrorCode::Error,
                        "device segment neither mappable nor addressable",
                    ));
                }
            }
        }
        if let Some(d) = &rec.dram {
            let res = (|| {
                if d.kind != SegmentKind::Host {
                    return Err(Error::invalid(format!(
                        "rank {r}'s DRAM descriptor is a {:?} segment",
                        d.kind
                    )));
                }
                let seg = HostSegment::open(d)?;
                self.reservation.map_file_part(
                    off + self.layout.hbm_len(),
                    seg.fd(),
                    rec.dram_off.unwrap_or(0),
                    dram_len,
                    prefault(self.layout.member_size()),
                )
            })();
            if let Err(e) = res {
                if hbm_mapped {
                    let _ = self.reservation.unmap(off, self.layout.hbm_len());
                }
                return Err(e);
            }
        }
        // The segments' descriptors close here; the mappings keep the memory.
        ctl.mapped.insert(r, (hbm_mapped, rec.dram.is_some()));
        if let Some((addr, seg)) = imported {
            w.dev.store(addr, Ordering::SeqCst);
            ctl.imported.push((r, seg));
        }
        w.state.store(MAPPED, Ordering::SeqCst);
        Ok(true)
    }

    /// Stops copies into rank `r`'s window and unmaps it (if mapped).
    fn unmap_peer(&self, ctl: &mut Ctl, r: u32, notes: &mut Notes) {
        let w = &self.windows[r as usize];
        ctl.pending.remove(&r);
        // Only a window copies can enter (`MAPPED`, `NET`) needs the copies in flight drained.
        if !matches!(w.state.swap(CLOSING, Ordering::SeqCst), ABSENT | REMOTE) {
            super::wait_for_copies(self.id);
        }
        if let Some((hbm, dram)) = ctl.mapped.remove(&r) {
            let off = self.window_offset(r);
            if hbm {
                if let Err(e) = self.reservation.unmap(off, self.layout.hbm_len()) {
                    notes.push((
                        Level::Warn,
                        format!("BM object {}: unmapping rank {r}'s HBM part: {e}", self.id),
                    ));
                }
            }
            if dram {
                if let Err(e) = self
                    .reservation
                    .unmap(off + self.layout.hbm_len(), self.layout.dram_len())
                {
                    notes.push((
                        Level::Warn,
                        format!("BM object {}: unmapping rank {r}'s DRAM part: {e}", self.id),
                    ));
                }
            }
        }
        if let Some(i) = ctl.imported.iter().position(|m| m.0 == r) {
            w.dev.store(0, Ordering::SeqCst);
            // Releases the imported device memory (no copy is in flight: drained above).
            drop(ctl.imported.swap_remove(i));
        }
        w.state.store(ABSENT, Ordering::SeqCst);
    }

    /// A rank's link went down: drop its window like a destroy.
    pub(crate) fn peer_down(&self, r: u32) {
        if r == self.rank || r >= self.layout.member_size() {
            return;
        }
        let mut notes = Notes::new();
        {
            let mut ctl = lock(&self.ctl);
            ctl.joined.remove(&r);
            ctl.holders.remove(&r);
            self.unmap_peer(&mut ctl, r, &mut notes);
        }
        log_notes(notes);
        info!(
            "BM object {}: rank {r} is down; its window was dropped",
            self.id
        );
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
            dram_off: self.dram_off,
        };
        if let Err(e) = self
            .ctx
            .store
            .set(&key(self.id, &format!("win/{}", self.rank)), &rec.encode())
        {
            self.stop_serving();
            return Err(e.context(&what));
        }
        if let Err(e) = self.announce(Entry::Join(self.rank), &what, deadline) {
            self.stop_serving();
            // Roll back so nobody keeps a half-joined window.
            let _ = self.announce(
                Entry::Leave(self.rank),
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

    /// The sharing ids (rank records, see `runtime::rank_key`) of the other members on this
    /// host; every member registered before create completed.
    fn same_host_sharing_pids(&self) -> Result<Vec<i32>> {
        let mut pids = Vec::new();
        for r in (0..self.layout.member_size()).filter(|&r| r != self.rank) {
            let Some(v) = self.ctx.store.get(&super::rank_key(r))? else {
                continue;
            };
            let v = String::from_utf8_lossy(&v);
            let mut fields = v.split(' ');
            let (Some(host), Some(_pid), Some(share)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if host == self.ctx.host_id {
                if let Ok(p) = share.parse::<i32>() {
                    pids.push(p);
                }
            }
        }
        Ok(pids)
    }

    /// The device address of rank `rank`'s HBM part when it is device memory not mapped into
    /// the GVA (call only while inside the window, see [`BmObject::enter`]).
    #[inline]
    pub(crate) fn device_base(&self, rank: u32) -> Option<u64> {
        let dev = self.windows.get(rank as usize)?.dev.load(Ordering::SeqCst);
        (dev != 0).then_some(dev)
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
        super::wait_for_copies(self.id);
        w.state.store(ABSENT, Ordering::SeqCst);
        self.stop_serving();
        lock(&self.ctl).joined_self = false;
        let deadline = Instant::now() + self.ctx.config.create_timeout;
        let r = self.announce(Entry::Leave(self.rank), &what, deadline);
        let _ = self
            .ctx
            .store
            .remove(&key(self.id, &format!("win/{}", self.rank)));
        r
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
            Entry::Destroy(self.rank).encode().as_bytes(),
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

    /// The data endpoint and window token of `rank`'s window (state `NET`).
    pub(crate) fn remote_of(&self, rank: u32) -> Result<(SocketAddr, u64)> {
        self.windows
            .get(rank as usize)
            .and_then(|w| *lock(&w.remote))
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::ObjectNotExists,
                    format!(
                        "rank {rank}'s window of BM object {} has no data endpoint",
                        self.id
                    ),
                )
            })
    }

    /// Marks every window absent and waits for in-flight copies (before freeing memory).
    pub(crate) fn quiesce(&self) {
        self.stop_serving();
        for w in self.windows.iter() {
            w.state.store(CLOSING, Ordering::SeqCst);
        }
        super::wait_for_copies(self.id);
        for w in self.windows.iter() {
            w.state.store(ABSENT, Ordering::SeqCst);
        }
    }

    /// Enters rank `rank`'s window for a copy, or says why it cannot be reached. The caller
    /// holds this object's slot read lock until the copy is done.
    #[inline]
    pub(crate) fn enter(&self, rank: u32) -> Result<WindowGuard<'_>> {
        let w = self
            .windows
            .get(rank as usize)
            .ok_or_else(|| Error::invalid(format!("rank {rank} has no window")))?;
        // Ordered after an unmapper's `CLOSING` store by the slot lock the caller holds.
        let state = w.state.load(Ordering::Acquire);
        if state == MAPPED || state == NET {
            return Ok(WindowGuard {
                window: w,
                net: state == NET,
            });
        }
        Err(self.unreachable(rank, state))
    }

    #[cold]
    fn unreachable(&self, rank: u32, state: u8) -> Error {
        match state {
            REMOTE if self.node.is_none() => Error::new(
                ErrorCode::NotSupported,
                format!(
                    "rank {rank}'s window of BM object {} is on another host; cross-host copies need the network transport: create the object with SMEMB_DATA_OP_HOST_TCP (or ROCE)",
                    self.id
                ),
            ),
            REMOTE => Error::new(
                ErrorCode::NotSupported,
                format!(
                    "rank {rank}'s window of BM object {} is on another host and rank {rank} does not serve it over the network (it created the object without SMEMB_DATA_OP_HOST_TCP / ROCE)",
                    self.id
                ),
            ),
            _ if rank == self.rank => Error::invalid(format!(
                "rank {rank}'s own window of BM object {} is not joined; call smem_bm_join first",
                self.id
            )),
            _ => Error::new(
                ErrorCode::ObjectNotExists,
                format!(
                    "rank {rank}'s window of BM object {} is not joined (never joined, left, or its process died)",
                    self.id
                ),
            ),
        }
    }
}

impl Served for BmObject {
    fn pin(&self, token: u64, offset: u64, span: u64) -> Result<Pinned<'_>> {
        let w = &self.served;
        w.inflight.fetch_add(1, Ordering::SeqCst);
        let hold = GateGuard(w);
        if w.state.load(Ordering::SeqCst) != MAPPED
            || token == 0
            || self.token.load(Ordering::SeqCst) != token
        {
            return Err(Error::new(
                ErrorCode::ObjectNotExists,
                format!(
                    "rank {}'s window of BM object {} is not served (not joined, left, destroyed, or joined again since)",
                    self.rank, self.id
                ),
            ));
        }
        let bad = |e: &dyn std::fmt::Display| {
            Error::invalid(format!(
                "{span} bytes at offset {offset:#x} of rank {}'s window of BM object {}: {e}",
                self.rank, self.id
            ))
        };
        let start = self
            .layout
            .window_base(self.rank)
            .and_then(|b| b.checked_add(offset))
            .ok_or_else(|| bad(&"offset overflows"))?;
        let loc = self.layout.locate(start, span).map_err(|e| bad(&e))?;
        if loc.rank != self.rank {
            return Err(bad(&"the range leaves the window"));
        }
        // A device-resident HBM part is addressed at its device address (module docs).
        let addr = match (loc.part, self.device_base(self.rank)) {
            (Part::Hbm, Some(dev)) => dev.wrapping_add(loc.offset),
            _ => start.raw(),
        };
        Ok(Pinned {
            addr,
            device: (loc.part == Part::Hbm).then_some(&*self.ctx.device as &dyn Device),
            _hold: Box::new(hold),
        })
    }
}

/// Waits until no request is in flight through the gate (each is one bounded chunk).
fn drain(w: &Gate) {
    let mut spins = 0u32;
    while w.inflight.load(Ordering::SeqCst) != 0 {
        spins += 1;
        if spins < 100 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// Reserves a random candidate and proposes it as the object's first range (CAS on the absent
/// `gva` key): `Ok` with the reservation and proposal when it won, `Err` with the proposal of
/// the rank that got there first.
fn propose_first(
    store: &StoreClient,
    gva_key: &[u8],
    want: Proposal,
) -> Result<std::result::Result<(Reservation, Proposal), Vec<u8>>> {
    let cand = Reservation::reserve_candidate(want.span, WINDOW_ALIGN, random_u64)?;
    let p = Proposal {
        version: 0,
        nonce: random_u64(),
        base: cand.base().raw(),
        ..want
    };
    Ok(match store.cas(gva_key, b"", &p.encode())? {
        CasResult::Swapped => Ok((cand, p)),
        CasResult::Mismatch(v) => Err(v),
    })
}

/// What [`adopt_gva`] settled on.
pub(crate) enum Adopted {
    /// The object's range, reserved here, and its base.
    Range(Reservation, u64),
    /// This rank's sizes differ from the object's: why (for join to report).
    Mismatch(String),
}

/// BM create's side of the GVA rules (module docs, "Create"): adopts the range the object's
/// first creator proposed, or proposes one (a random spot of the candidate region, see
/// [`Reservation::reserve_candidate`]) when this rank is the first. Never waits for other
/// members. A range taken in this process fails with `SM_RESOURCE_IN_USE`: members that created
/// earlier may already use it, so it cannot move.
pub(crate) fn adopt_gva(
    store: &StoreClient,
    ns: &AgreeNs,
    rank: u32,
    want: Proposal,
) -> Result<Adopted> {
    let gva_key = ns.key("gva");
    let what = format!("{} (rank {rank})", ns.call);
    // A CAS loses only to another creator's proposal, which is then adopted.
    let cur = match store.get(&gva_key)? {
        Some(v) => v,
        None => match propose_first(store, &gva_key, want)? {
            Ok((cand, p)) => return Ok(Adopted::Range(cand, p.base)),
            Err(v) => v,
        },
    };
    let p = Proposal::decode(&cur).ok_or_else(|| {
        Error::new(
            ErrorCode::ProtocolError,
            format!("{what}: malformed GVA proposal in the config store"),
        )
    })?;
    if (p.span, p.stride, p.hbm, p.dram) != (want.span, want.stride, want.hbm, want.dram) {
        return Ok(Adopted::Mismatch(format!(
            "{} was created by another member with HBM {:#x} + DRAM {:#x} per window (span {:#x}), this rank asked for HBM {:#x} + DRAM {:#x} (span {:#x}); every member must pass the same sizes and memberSize",
            ns.object, p.hbm, p.dram, p.span, want.hbm, want.dram, want.span
        )));
    }
    match Reservation::try_reserve_at(Gva(p.base), p.span) {
        Ok(res) => Ok(Adopted::Range(res, p.base)),
        Err(e) if e.code() == ErrorCode::ResourceInUse => Err(Error::new(
            ErrorCode::ResourceInUse,
            format!(
                "{what}: the object's GVA range {:#x}+{:#x}, chosen by its first creator, is taken in this process by another mapping; the members that created it may already use it, so it cannot move: unmap that range here, or destroy the object on every member and create it again",
                p.base, p.span
            ),
        )),
        Err(e) => Err(e.context(&what)),
    }
}

/// How often a waiting GVA agreement asks its [`Departed`] whether a member died.
const AGREE_SLICE: Duration = Duration::from_millis(250);

/// Members (sorted) whose processes are gone for good, asked while a collective create waits:
/// such a member can never count in, so waiting out the timeout would only delay the error.
pub(crate) type Departed<'a> = &'a dyn Fn() -> Vec<u32>;

/// Runs the GVA agreement (module docs) and returns the reservation and the agreed base. On
/// failure the candidate this rank counted for is uncounted, so a later attempt cannot complete
/// with a count that includes a rank that gave up. A member reported by `departed` that does
/// not hold the current candidate fails the agreement at once with `SM_IO_ERROR` naming it.
pub(crate) fn agree_gva(
    store: &StoreClient,
    ns: &AgreeNs,
    rank: u32,
    members: u32,
    want: Proposal,
    deadline: Instant,
    departed: Departed<'_>,
) -> Result<(Reservation, u64)> {
    let mut held: Option<(String, Reservation)> = None;
    let r = agree_inner(
        store, ns, rank, members, want, deadline, departed, &mut held,
    );
    if r.is_err() {
        if let Some((tag, _)) = held.take() {
            let _ = store.add(&counter_key(ns, &tag), -1);
        }
    }
    r
}

/// The key that settles candidate `tag`: `ok` (every member holds it), `superseded` or
/// `abort`, set by the rank that decided it; the others wait for it with a parked GET (one
/// op per wait slice, where watching the counter delivered every member's ADD to every member).
fn outcome_key(ns: &AgreeNs, tag: &str) -> Vec<u8> {
    ns.key(&format!("gva/d{tag}"))
}

/// Counts this rank as holding candidate `p` (one of `members`); the rank that completes the
/// count settles the candidate.
fn count_in(
    store: &StoreClient,
    ns: &AgreeNs,
    rank: u32,
    members: u32,
    p: &Proposal,
) -> Result<()> {
    store.set(&ns.key(&format!("gva/r{rank}")), p.tag().as_bytes())?;
    let n = store.add(&counter_key(ns, &p.tag()), 1)?;
    if n >= i64::from(members) && n < SUPERSEDED {
        store.set(&outcome_key(ns, &p.tag()), b"ok")?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn agree_inner(
    store: &StoreClient,
    ns: &AgreeNs,
    rank: u32,
    members: u32,
    want: Proposal,
    deadline: Instant,
    departed: Departed<'_>,
    held: &mut Option<(String, Reservation)>,
) -> Result<(Reservation, u64)> {
    let gva_key = ns.key("gva");
    let what = format!("{} (rank {rank})", ns.call);
    loop {
        if remaining(deadline).is_zero() {
            return Err(agree_timeout(
                store,
                ns,
                &what,
                held.as_ref().map(|h| h.0.clone()),
            ));
        }
        let cur = match store.get(&gva_key)? {
            Some(v) => v,
            None => match propose_first(store, &gva_key, want)? {
                Ok((cand, p)) => {
                    *held = Some((p.tag(), cand));
                    count_in(store, ns, rank, members, &p)?;
                    p.encode()
                }
                Err(v) => v,
            },
        };
        let p = Proposal::decode(&cur).ok_or_else(|| {
            Error::new(
                ErrorCode::ProtocolError,
                format!("{what}: malformed GVA proposal in the store"),
            )
        })?;
        if (p.span, p.stride, p.hbm, p.dram) != (want.span, want.stride, want.hbm, want.dram) {
            let msg = format!(
                "members of {} were created with different sizes: rank {rank} has HBM {:#x} + DRAM {:#x} x {members} members, another member HBM {:#x} + DRAM {:#x} (span {:#x}); every member must pass the same sizes and memberSize",
                ns.object, want.hbm, want.dram, p.hbm, p.dram, p.span
            );
            let _ = store.set(&ns.key("abort"), msg.as_bytes());
            let _ = store.add(&counter_key(ns, &p.tag()), ABORT);
            let _ = store.set(&outcome_key(ns, &p.tag()), b"abort");
            // The next attempt starts a fresh agreement (new nonce, new counters).
            let _ = store.remove(&gva_key);
            return Err(Error::invalid(format!("{what}: {msg}")));
        }
        if held.as_ref().map(|h| h.0.as_str()) != Some(p.tag().as_str()) {
            *held = None;
            match Reservation::try_reserve_at(Gva(p.base), p.span) {
                Ok(res) => {
                    *held = Some((p.tag(), res));
                    count_in(store, ns, rank, members, &p)?;
                }
                Err(e) if e.code() == ErrorCode::ResourceInUse => {
                    debug!(
                        "{what}: candidate v{} at {:#x} is taken here; proposing another",
                        p.version, p.base
                    );
                    let cand = Reservation::reserve_candidate(want.span, WINDOW_ALIGN, random_u64)?;
                    let next = Proposal {
                        version: p.version + 1,
                        nonce: p.nonce,
                        base: cand.base().raw(),
                        ..want
                    };
                    if store.cas(&gva_key, &cur, &next.encode())? == CasResult::Swapped {
                        *held = Some((next.tag(), cand));
                        count_in(store, ns, rank, members, &next)?;
                        store.add(&counter_key(ns, &p.tag()), SUPERSEDED)?;
                        store.set(&outcome_key(ns, &p.tag()), b"superseded")?;
                    }
                    continue;
                }
                Err(e) => return Err(e.context(&what)),
            }
        }
        // Wait until every member holds this candidate, or it is superseded / aborted.
        let settle = outcome_key(ns, &p.tag());
        let outcome = loop {
            let left = remaining(deadline);
            if left.is_zero() {
                return Err(agree_timeout(store, ns, &what, Some(p.tag())));
            }
            match store.wait_get(&settle, left.min(AGREE_SLICE)) {
                Ok(v) if v == b"ok" => break Ok(true),
                Ok(v) if v == b"superseded" => break Ok(false),
                Ok(_) => break Err(()),
                Err(e) if e.code() == ErrorCode::Timeout => {
                    let gone = departed();
                    if gone.is_empty() {
                        continue;
                    }
                    let holders = candidate_holders(store, ns, &p.tag());
                    let missing: Vec<u32> = gone
                        .into_iter()
                        .filter(|r| holders.binary_search(r).is_err())
                        .collect();
                    if !missing.is_empty() {
                        return Err(Error::new(
                            ErrorCode::IoError,
                            format!(
                                "{what}: member rank(s) [{}] died before taking part in the GVA agreement (their config store link went down); ranks holding the current candidate: [{}]; restart the job",
                                rank_list(&missing),
                                rank_list(&holders)
                            ),
                        ));
                    }
                }
                Err(e) if e.code() == ErrorCode::IoError => {
                    return Err(Error::new(
                        ErrorCode::IoError,
                        format!(
                            "{what}: the config store link went down during the GVA agreement ({e})"
                        ),
                    ));
                }
                Err(e) => return Err(e.context(&what)),
            }
        };
        match outcome {
            Ok(true) => {
                let (_, res) = held.take().ok_or_else(|| {
                    Error::new(ErrorCode::Error, "GVA agreement lost its reservation")
                })?;
                return Ok((res, p.base));
            }
            Ok(false) => {}
            Err(()) => {
                let msg = store
                    .get(&ns.key("abort"))
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                return Err(Error::invalid(format!(
                    "{what}: aborted by another member: {}",
                    String::from_utf8_lossy(&msg)
                )));
            }
        }
    }
}

/// The ranks that last reserved candidate `tag` (sorted), from the `gva/r<r>` records.
fn candidate_holders(store: &StoreClient, ns: &AgreeNs, tag: &str) -> Vec<u32> {
    let mut have = Vec::new();
    if let Ok(list) = store.prefix(&ns.key("gva/r")) {
        for (k, val) in list {
            let r = std::str::from_utf8(&k)
                .ok()
                .and_then(|s| s.rsplit_once("/r"))
                .and_then(|(_, r)| r.parse::<u32>().ok());
            if let Some(r) = r {
                if val == tag.as_bytes() {
                    have.push(r);
                }
            }
        }
    }
    have.sort_unstable();
    have
}

fn agree_timeout(store: &StoreClient, ns: &AgreeNs, what: &str, tag: Option<String>) -> Error {
    let have = tag
        .map(|t| candidate_holders(store, ns, &t))
        .unwrap_or_default();
    Error::new(
        ErrorCode::Timeout,
        format!(
            "{what}: the members did not agree on a GVA range within the create timeout; ranks holding the current candidate: [{}]; the others have not called {} yet or cannot reserve it",
            rank_list(&have),
            ns.call
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_entries_parse_with_offsets() {
        let e = parse_entries(b"+0;+12;-0;x3;?;");
        assert_eq!(e[0], (3, Some(Entry::Join(0))));
        assert_eq!(e[1], (7, Some(Entry::Join(12))));
        assert_eq!(e[2], (10, Some(Entry::Leave(0))));
        assert_eq!(e[3], (13, Some(Entry::Destroy(3))));
        assert_eq!(e[4], (15, None));
        assert_eq!(Entry::Join(5).encode(), "+5;");
    }

    #[test]
    fn records_round_trip() {
        let p = Proposal {
            version: 3,
            nonce: 0xabc,
            base: 0x7f00_0000_0000,
            span: 0x80_0000,
            stride: 0x40_0000,
            hbm: 0x20_0000,
            dram: 0x20_0000,
        };
        assert_eq!(Proposal::decode(&p.encode()), Some(p));
        assert_eq!(Proposal::decode(b"v1 zz"), None);
        let d = SegmentDescriptor {
            kind: SegmentKind::Host,
            pid: 1,
            fd: 3,
            inode: 9,
            len: 0x20_0000,
        };
        let r = WindowRecord {
            host: "boot/123".into(),
            hbm: None,
            dram: Some(d),
            net: None,
            dram_off: None,
        };
        assert_eq!(WindowRecord::decode(&r.encode()), Ok(r.clone()));
        let n = WindowRecord {
            net: Some(("10.250.0.2:4711".parse().expect("addr"), 0xfeed)),
            ..r.clone()
        };
        assert_eq!(WindowRecord::decode(&n.encode()), Ok(n));
        let shared = WindowRecord {
            dram_off: Some(0x60_0000),
            ..r
        };
        assert_eq!(WindowRecord::decode(&shared.encode()), Ok(shared));
        assert!(WindowRecord::decode(b"host=a;hbm=-;dram=-;ep=1.2.3.4:5").is_err());
        assert!(WindowRecord::decode(b"hbm=-").is_err());
        let r = WindowRecord {
            host: "boot/123".into(),
            hbm: Some(DeviceDescriptor::AclIpc {
                len: 0x40_0000,
                key: "stub-12-7-99".into(),
            }),
            dram: None,
            net: None,
            dram_off: None,
        };
        assert_eq!(WindowRecord::decode(&r.encode()), Ok(r));
        let sim = WindowRecord {
            host: "h".into(),
            hbm: Some(DeviceDescriptor::Mapped(SegmentDescriptor {
                kind: SegmentKind::SimDevice,
                ..d
            })),
            dram: Some(d),
            net: None,
            dram_off: None,
        };
        assert_eq!(WindowRecord::decode(&sim.encode()), Ok(sim));
        // An ACL descriptor with a bad key is refused.
        let bad = format!(
            "host=h;hbm={};dram=-",
            hex(b"SMAK\x01\0\0\0\0\0\x20\0\0\0\0\0a b")
        );
        assert!(WindowRecord::decode(bad.as_bytes()).is_err());
    }

    #[test]
    fn rank_lists_are_compact() {
        assert_eq!(rank_list(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9-10");
        assert_eq!(rank_list(&[]), "");
        assert_eq!(rank_list(&[5]), "5");
    }
}
