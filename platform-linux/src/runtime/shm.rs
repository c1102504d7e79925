//! The SHM runtime: symmetric memory objects and their control operations (SPEC 2.3).
//!
//! # Life cycle
//! `shm_init` connects to the config store (rank 0 hosts it in-process when
//! `startConfigStore`), registers the rank (`smem/shm/rank/<r>` = host identity and pid) and
//! waits until every rank of the world registered and holds a live store link (a key left by a
//! process that died without uninit does not count), naming the missing ranks when
//! `shmInitTimeout` passes (a lost store link is survived as in `smem_bm_init`, see the
//! module docs of [`crate::runtime`]). A second `shm_init` with identical arguments returns 0, with other
//! arguments `SM_REPEAT_CALL`.
//!
//! # Sharing the store with BM
//! SHM has its own store link (its own reader thread, so a long barrier never delays BM traffic
//! and the two runtimes can be torn down independently). When the BM runtime of this process is
//! already initialised on the same store URL, SHM does not start a second server and its link
//! does not claim the rank in the handshake (the store allows one live link per rank; BM's link
//! holds it), and the SHM rank must equal the BM rank. Initialising BM *after* SHM on the same
//! store in one process is not supported (BM would try to host the store and claim the rank
//! again): init BM first, or give SHM its own store.
//!
//! # Store keys (`smem/shm/`)
//! | key | value | written by |
//! |---|---|---|
//! | `rank/<r>`, `registered`, `ready` | `<host identity> <pid>`; the init rendezvous (`runtime/rendezvous.rs`) | world rank `r` at init |
//! | `epoch` | ADD counter: the last object instance number handed out | rank 0 of each object |
//! | `open/<id>` | instance number `e` of the newest object `id` | rank 0 of the object |
//! | `<id>.<e>/gva`, `gva/...`, `abort` | GVA agreement (see `runtime/object.rs`) | every member |
//! | `<id>.<e>/hs/<len>/<host>` | descriptor of the segment (`len` bytes, hex) the members on host `host` share | first member of the host there |
//! | `<id>.<e>/hosts` | the host table: per host, 16-byte runs (first object rank, count, first world rank, host leader) | APPEND by each host's leader |
//! | `<id>.<e>/hostsn`, `hostsn/all` | ADD counter of the members in `hosts`; set when it reaches `rankSize` | host leaders; the last one |
//! | `<id>.<e>/ctx` | the extra context | `set_extra_context` |
//! | `<id>.<e>/ctl/<r>` | descriptor of the control segment of the host whose lowest rank is `r` | that rank |
//! | `<id>.<e>/c/<g>{c,d,v}` | control operation `g` between hosts (`smem_core::collective`) | last arriver of each host |
//! | `<id>.<e>/fin` | ADD counter of members that destroyed the object | every member |
//!
//! Every object *instance* has its own key prefix `smem/shm/<id>.<e>/`, so an object created
//! again under the same id never reads a stale key of an earlier one. Rank 0 of the object
//! takes `e` from `epoch` and publishes it in `open/<id>`; the other members wait (watch) until
//! `open/<id>` holds an instance newer than any they used before for that id (and newer than
//! `epoch` was when this process called `shm_init`, so keys of an earlier session are never
//! taken either). The member whose destroy brings `fin` to the rank count removes every key of
//! the instance; `open/<id>` stays (one key per id, overwritten by the next create).
//!
//! # Create
//! Collective over `rankSize` ranks, bounded by `shmCreateTimeout`:
//! 1. open (or create and publish in `hs/<len>/<host>`) the memfd the members of this host
//!    share (`runtime/object/shared.rs`, as BM objects do): a *directory* of 16 bytes per rank
//!    (2 MiB rounded) then the span of `rankSize * symmetricSize` bytes; claim this rank's
//!    window in it at `rank * symmetricSize` (stale pages of an earlier owner freed) and enter
//!    this rank's pid and world rank in its directory slot. A published segment that cannot
//!    be opened fails create (`SM_IO_ERROR`);
//! 2. agree on one GVA range of the span through the store with no-clobber reservations (the
//!    agreement of the BM runtime), which also makes sure every member entered its directory;
//!    map the own window and allocate its pages by faulting them in (`MADV_POPULATE_WRITE`:
//!    a lack of memory fails create, no `SIGBUS` later; `fallocate` takes the file's lock, on
//!    which the ranks of a host queued: SHM 1024 on one host took 5-8 s instead of 2.2);
//! 3. the host's *leader* (its lowest rank in the directory) appends the host's runs of ranks
//!    to the host table `hosts` and adds their number to `hostsn`; every member waits until
//!    the table names all `rankSize` ranks and reads it with one GET: where every rank is and
//!    its world rank, in 16 bytes per run of consecutive ranks per host;
//! 4. map the windows of this host's other members `MAP_SHARED` at `base + r*symmetricSize`,
//!    one `mmap` per run of consecutive ranks from the one descriptor (windows of other hosts
//!    stay reserved); join the host's control segment; one barrier: when create returns on any
//!    member, every member has mapped every same-host window.
//!
//! Store cost per member: a constant number of ops (about 15) and of bytes, except the host
//! table (16 bytes per run of ranks per host: 16 bytes with every member on one host, 2 KiB
//! for 128 hosts of 8); no key per rank is written or read. A window's pages live until every
//! process of the host unmapped the object (as with a memfd per window, which the peers'
//! mappings kept alive).
//!
//! # Control operations
//! Barrier and allgather go through the control segment the members of each host share
//! ([`crate::collective`], created at the end of create, before its barrier): with every member
//! on one host they touch no store key at all. With members on several hosts, the last arriver
//! of each host runs the sans-I/O machine of `smem_core::collective` with one participant per
//! host (generation `g` = the call's number; generation 0 is the barrier ending create, run by
//! every member), so the store holds at most eight control keys per object whatever the number
//! of calls; allgather bytes go to the generation's value key (each member WRITEs its slice, all
//! GET it after the release). The removals of the previous generation's keys (asked of the last
//! arriver) go to the `smem-shm-gc` thread, off the critical path; its queue is bounded, and
//! when it is full they run inline, so at most 17 more keys wait per process. Each call is
//! bounded by `controlOperationTimeout`; a member that dies makes the others fail within about
//! 100 ms (pidfds on the host, the store's rank-down reports across hosts) with `SM_IO_ERROR`
//! naming it. After a failed control operation every later one is refused until the object is
//! destroyed.
//!
//! # Reach
//! `topology_can_reach`: a member on this host (same host identity, see
//! [`crate::mem::host_identity`]) is reached by loads/stores and the copy engine
//! (`MTE | SDMA`); a member on another host by nothing (SHM has no network engine, so `ROCE`
//! is never reported).
//!
//! # Fork
//! A `pthread_atfork` prepare handler takes the SHM state lock; the child forgets every object,
//! link and server of the parent (their threads do not exist there) and starts uninitialised.
//!
//! # Code
//! This file: the life cycle, the store keys and the handle API; `create.rs`: the object and
//! its collective create and destroy; `hosts.rs`: the directory and the host table of create;
//! `collective.rs`: barrier and allgather.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use smem_core::ErrorCode;
use smem_core::limits::{SHM_OBJECTS_MAX, WORLD_SIZE_MAX};
use smem_core::table::{Handle, Table};

use super::life::{self, Hosting, InitArgs, InitWait, Session, remaining};
use super::object::records::rank_record;
use crate::store::{StoreClient, StoreTarget};
use crate::sync::{Held, lock};
use crate::{Error, Result};
use smem_core::data_op::ShmDataOps;

mod collective;
mod create;
mod hosts;

use create::ShmObject;
pub use create::shm_create;

/// `SMEMS_DATA_OP_MTE` ([`ShmDataOps::MTE`]).
pub const DATA_OP_MTE: u32 = ShmDataOps::MTE.bits();
/// `SMEMS_DATA_OP_SDMA` ([`ShmDataOps::SDMA`]).
pub const DATA_OP_SDMA: u32 = ShmDataOps::SDMA.bits();
/// `SMEMS_DATA_OP_ROCE` ([`ShmDataOps::ROCE`]).
pub const DATA_OP_ROCE: u32 = ShmDataOps::ROCE.bits();
/// Every `smem_shm_data_op_type` bit.
pub const DATA_OP_ALL: u32 = ShmDataOps::all().bits();

/// Largest extra context, in bytes.
pub const EXTRA_CONTEXT_MAX: usize = 65_536;

/// Keys of finished control operations waiting for removal, at most (per process).
const GC_QUEUE: usize = 16;

/// Longest single wait on the store before checking whether a member died.
const WAIT_SLICE: Duration = Duration::from_millis(250);

/// Settings of `smem_shm_init` (the Rust form of `smem_shm_config_t`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShmConfig {
    /// Bounds `shm_init`.
    pub init_timeout: Duration,
    /// Bounds `shm_create`.
    pub create_timeout: Duration,
    /// Bounds each control operation (barrier, allgather) and each store operation.
    pub control_timeout: Duration,
    /// Rank 0 hosts the config store in-process.
    pub start_config_store: bool,
    /// Reserved flags.
    pub flags: u32,
}

impl Default for ShmConfig {
    /// The defaults `smem_shm_config_init` shares with `smem_bm_config_init`.
    fn default() -> Self {
        let bm = super::bm::BmConfig::default();
        Self {
            init_timeout: bm.init_timeout,
            create_timeout: bm.create_timeout,
            control_timeout: bm.control_timeout,
            start_config_store: bm.start_config_store,
            flags: bm.flags,
        }
    }
}

/// An opaque, generation-checked SHM object handle as handed to C (never 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShmHandle(pub u64);

/// What every SHM object of an initialised process shares.
#[derive(Debug)]
struct ShmCtx {
    rank: u32,
    world_size: u32,
    store: StoreClient,
    host_id: String,
    config: ShmConfig,
    /// The device `deviceId` opened at init (held for the life of the runtime).
    _device: Arc<dyn crate::device::Device>,
    /// World rank -> number of the store's latest report of its link down (reports of every
    /// rank numbered 1, 2, ... in arrival order): grows with each report of that rank, and the
    /// smallest among ranks reported since some point went down first.
    downs: Mutex<HashMap<u32, u64>>,
    /// Keys of finished control operations, removed by the `smem-shm-gc` thread off the
    /// critical path (`None`: that thread could not start; removals run inline).
    gc: Option<SyncSender<Vec<u8>>>,
}

impl ShmCtx {
    fn downs_of(&self, world_rank: u32) -> u64 {
        lock(&self.downs).get(&world_rank).copied().unwrap_or(0)
    }

    /// Members of a `rank_size` object being created whose processes are gone: when the object
    /// spans the whole world (`rank_size == worldSize`), every world rank is a member, so a world
    /// rank the store reported down (at any time since init) that no live link holds now can
    /// never take part. Smaller objects cannot tell which world ranks are members: empty.
    fn departed_members(&self, rank_size: u32) -> Vec<u32> {
        if rank_size != self.world_size {
            return Vec::new();
        }
        let mut gone: Vec<u32> = lock(&self.downs)
            .keys()
            .copied()
            .filter(|&r| r != self.rank && r < rank_size)
            .collect();
        gone.sort_unstable();
        gone.retain(|&r| !matches!(self.store.query_alive(r), Ok(true)));
        gone
    }
}

#[derive(Debug)]
struct Ready {
    args: InitArgs<ShmConfig>,
    ctx: Arc<ShmCtx>,
    hosting: Hosting,
    objects: Table<Arc<ShmObject>, SHM_OBJECTS_MAX>,
    creating: [bool; SHM_OBJECTS_MAX],
    /// Per id: the newest instance this process created (0: none).
    last_epoch: [u64; SHM_OBJECTS_MAX],
    /// `smem/shm/epoch` when this process registered: older instances belong to earlier sessions.
    epoch_at_init: u64,
}

impl Session for Box<Ready> {
    type Args = InitArgs<ShmConfig>;
    fn args(&self) -> &Self::Args {
        &self.args
    }
}

type State = life::State<Box<Ready>>;

static STATE: Mutex<State> = Mutex::new(State::Uninit);
static ATFORK: Once = Once::new();

const EPOCH_KEY: &[u8] = b"smem/shm/epoch";

fn open_key(id: u32) -> Vec<u8> {
    format!("smem/shm/open/{id}").into_bytes()
}

fn not_initialized(what: &str) -> Error {
    life::not_initialized(what, "smem_shm")
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// `smem_shm_init`.
///
/// # Errors
/// `SM_INVALID_PARAM` for bad arguments, `SM_REPEAT_CALL` when already initialised with other
/// arguments, `SM_TIMEOUT` naming the missing ranks, store errors.
pub fn shm_init(
    url: &str,
    world_size: u32,
    rank_id: u32,
    device_id: u16,
    config: &ShmConfig,
) -> Result<()> {
    let what = "smem_shm_init";
    if world_size == 0 || world_size as usize > WORLD_SIZE_MAX {
        return Err(Error::invalid(format!(
            "{what}: worldSize {world_size} is outside 1..={WORLD_SIZE_MAX}"
        )));
    }
    if rank_id >= world_size {
        return Err(Error::invalid(format!(
            "{what}: rankId {rank_id} is not below worldSize {world_size}"
        )));
    }
    for (t, name) in [
        (config.init_timeout, "shmInitTimeout"),
        (config.create_timeout, "shmCreateTimeout"),
        (config.control_timeout, "controlOperationTimeout"),
    ] {
        if t.is_zero() {
            return Err(Error::invalid(format!("{what}: {name} is 0")));
        }
    }
    life::reserved_zero(what, "config flags", config.flags)?;
    let parsed = life::parse_store_url(what, url)?;
    let args = InitArgs {
        url: url.to_owned(),
        world_size,
        rank: Some(rank_id),
        device_id,
        config: config.clone(),
    };
    life::guarded_init(&STATE, "smem_shm", args, |args| {
        register_atfork();
        start(parsed, args, rank_id).map(Box::new)
    })
}

fn start(addr: StoreTarget, args: InitArgs<ShmConfig>, rank: u32) -> Result<Ready> {
    let what = "smem_shm_init";
    let config = &args.config;
    let started = Instant::now();
    let deadline = started + config.init_timeout;
    let host_id = crate::mem::host_identity()?;
    // `deviceId` opens that device through the backend, as BM init does (acl: the device must
    // exist; this process then uses it); the windows themselves are host memory.
    let device = crate::device::select(args.device_id).map_err(|e| e.context(what))?;
    // The BM runtime of this process on the same store holds the rank and maybe the server.
    let bm = super::bm_store_user().filter(|(url, _)| *url == args.url);
    if let Some((_, bm_rank)) = &bm {
        if *bm_rank != rank {
            return Err(Error::invalid(format!(
                "{what}: this process is BM rank {bm_rank} on the same config store {}; SHM must use the same rank, not {rank}",
                args.url
            )));
        }
        info!(
            "{what}: sharing the config store {} with the BM runtime of this process",
            args.url
        );
    }
    let hosted = if config.start_config_store && rank == 0 && bm.is_none() {
        life::hosted_addr(what, &addr)
    } else {
        None
    };
    let server = hosted
        .map(|host| life::host_store(what, host))
        .transpose()?;
    let opts = life::init_options(
        args.world_size,
        if bm.is_some() { None } else { Some(rank) },
        config.init_timeout,
        config.control_timeout,
    );
    let store = life::connect(what, &addr, opts.clone())?;
    let me = rank_record(&host_id, None).map_err(|e| e.context(what))?;
    let world_size = args.world_size;
    let w = InitWait {
        what,
        addr: addr.clone(),
        opts,
        started,
        deadline,
        world_size,
        timeout: (config.init_timeout, "shmInitTimeout"),
    };
    let mut epoch_at_init = 0;
    // Watched before the wait for the others, on every link the wait uses: a rank that dies
    // after the wait saw it alive is then reported, however early (a create's wait for a dead
    // member relies on it).
    let mut rank_down_rx = None;
    let store = life::survive_store_loss(&w, store, |store, seen| {
        rank_down_rx = store.watch_rank_down().map_err(|e| {
            warn!(
                "{what}: cannot watch for ranks going down ({e}); a dead member is noticed only by the operation timeouts"
            );
        }).ok();
        // Read before registering: no rank can create an object of this session before
        // every rank registered, so every instance of this session is newer.
        epoch_at_init = store
            .get(EPOCH_KEY)
            .map_err(|e| e.context(what))?
            .and_then(|v| parse_u64(&v))
            .unwrap_or(0);
        let rv = shm_rendezvous(world_size);
        let r = rv.register_and_wait(store, rank, &me, deadline, config.init_timeout, seen);
        if r.is_err() {
            rv.unregister(store, rank);
        }
        r
    })?;
    let ctx = Arc::new(ShmCtx {
        rank,
        world_size: args.world_size,
        store: store.clone(),
        host_id,
        config: config.clone(),
        _device: device,
        downs: Mutex::new(HashMap::new()),
        gc: start_gc(&store),
    });
    let rank_down = rank_down_rx.and_then(|rx| {
        let c = Arc::clone(&ctx);
        life::spawn_rank_down("smem-shm-rankdown", rx, move |r| {
            debug!("SHM: the store reports rank {r} down");
            let mut downs = lock(&c.downs);
            let n = downs.values().max().map_or(1, |m| m + 1);
            downs.insert(r, n);
        })
    });
    life::log_ready(what, rank, args.world_size, &addr, server.is_some());
    Ok(Ready {
        args,
        ctx,
        hosting: Hosting { server, rank_down },
        objects: Table::new(),
        creating: [false; SHM_OBJECTS_MAX],
        last_epoch: [0; SHM_OBJECTS_MAX],
        epoch_at_init,
    })
}

/// Starts the thread removing keys of finished control operations. Its queue holds at most
/// [`GC_QUEUE`] keys; when it is full, removals run inline (backpressure), so the store holds at
/// most that many extra keys per process whatever the number of calls. The thread ends when the
/// context (its sender) is dropped; removals failing because the link closed are ignored.
fn start_gc(store: &StoreClient) -> Option<SyncSender<Vec<u8>>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(GC_QUEUE);
    let store = store.clone();
    std::thread::Builder::new()
        .name("smem-shm-gc".into())
        .spawn(move || {
            while let Ok(k) = rx.recv() {
                if let Err(e) = store.remove(&k) {
                    debug!("SHM: removing a finished control operation's key: {e}");
                }
            }
        })
        .map_err(|e| warn!("SHM: cannot start the key removal thread ({e}); removing inline"))
        .ok()?;
    Some(tx)
}

/// The init rendezvous of the SHM runtime (`smem/shm/`, see [`super::rendezvous`]):
/// registered ranks must also hold a live store link.
fn shm_rendezvous(world_size: u32) -> super::rendezvous::Rendezvous<'static> {
    super::rendezvous::Rendezvous {
        ns: "smem/shm/",
        what: "smem_shm_init",
        world_size,
        alive: true,
        knob: "shmInitTimeout",
    }
}

/// `smem_shm_uninit`: destroys every SHM object of this process and leaves the domain.
pub fn shm_uninit(flags: u32) {
    let _ = flags;
    let Some(mut ready) = life::take_for_uninit(&STATE) else {
        return;
    };
    let handles: Vec<Handle> = ready.objects.iter().map(|(h, _)| h).collect();
    for h in handles {
        if let Ok(obj) = ready.objects.remove(h) {
            obj.destroy();
        }
    }
    shm_rendezvous(ready.ctx.world_size).unregister(&ready.ctx.store, ready.ctx.rank);
    let Ready { ctx, hosting, .. } = *ready;
    hosting.end(&ctx.store);
    life::finish_uninit(&STATE, "smem_shm");
}

/// `smem_shm_query_support_data_operation`: the engines this process can use: loads/stores and
/// the copy engine for windows of this host; no network engine exists in this build.
pub fn shm_query_support_data_operation() -> u32 {
    DATA_OP_MTE | DATA_OP_SDMA
}

fn decode(handle: ShmHandle, what: &str) -> Result<Handle> {
    Handle::decode(handle.0)
        .filter(|h| (h.index as usize) < SHM_OBJECTS_MAX)
        .ok_or_else(|| Error::invalid(format!("{what}: {:#x} is not an SHM handle", handle.0)))
}

fn lookup(handle: ShmHandle, what: &str) -> Result<Arc<ShmObject>> {
    match &*lock(&STATE) {
        State::Ready(ready) => ready
            .objects
            .get(decode(handle, what)?)
            .map(Arc::clone)
            .map_err(|_| {
                Error::new(
                    ErrorCode::ObjectNotExists,
                    format!("{what}: the SHM object was destroyed (stale handle)"),
                )
            }),
        _ => Err(not_initialized(what)),
    }
}

/// `smem_shm_destroy`: unmaps every window and releases the local memory.
///
/// # Errors
/// `SM_INVALID_PARAM` for a malformed handle, `SM_OBJECT_NOT_EXISTS` for a destroyed one.
pub fn shm_destroy(handle: ShmHandle, flags: u32) -> Result<()> {
    let what = "smem_shm_destroy";
    life::reserved_zero(what, "flags", flags)?;
    let obj = match &mut *lock(&STATE) {
        State::Ready(ready) => ready.objects.remove(decode(handle, what)?).map_err(|_| {
            Error::new(
                ErrorCode::ObjectNotExists,
                format!("{what}: the SHM object was already destroyed (stale handle)"),
            )
        })?,
        _ => return Err(not_initialized(what)),
    };
    obj.destroy();
    Ok(())
}

/// `smem_shm_set_extra_context`: stores `context` (1..=65536 bytes) with the object.
///
/// # Errors
/// `SM_INVALID_PARAM` for a bad size or handle, store errors.
pub fn shm_set_extra_context(handle: ShmHandle, context: &[u8]) -> Result<()> {
    let what = "smem_shm_set_extra_context";
    if context.is_empty() || context.len() > EXTRA_CONTEXT_MAX {
        return Err(Error::invalid(format!(
            "{what}: size {} is outside 1..={EXTRA_CONTEXT_MAX}",
            context.len()
        )));
    }
    let obj = lookup(handle, what)?;
    obj.ctx
        .store
        .set(format!("{}ctx", obj.prefix).as_bytes(), context)
        .map_err(|e| e.context(obj.what(what)))
}

/// `smem_shm_get_extra_context`: the stored extra context.
///
/// # Errors
/// `SM_OBJECT_NOT_EXISTS` when none was set; handle and store errors.
pub fn shm_get_extra_context(handle: ShmHandle) -> Result<Vec<u8>> {
    let what = "smem_shm_get_extra_context";
    let obj = lookup(handle, what)?;
    obj.ctx
        .store
        .get(format!("{}ctx", obj.prefix).as_bytes())
        .map_err(|e| e.context(obj.what(what)))?
        .ok_or_else(|| {
            Error::new(
                ErrorCode::ObjectNotExists,
                format!("{}: no extra context was set", obj.what(what)),
            )
        })
}

/// `smem_shm_get_global_rank`: this process's rank in the object.
///
/// # Errors
/// Handle errors.
pub fn shm_global_rank(handle: ShmHandle) -> Result<u32> {
    Ok(lookup(handle, "smem_shm_get_global_rank")?.rank)
}

/// `smem_shm_get_global_rank_size`: the object's rank count.
///
/// # Errors
/// Handle errors.
pub fn shm_global_rank_size(handle: ShmHandle) -> Result<u32> {
    Ok(lookup(handle, "smem_shm_get_global_rank_size")?.rank_size)
}

/// `smem_shm_control_barrier`.
///
/// # Errors
/// `SM_TIMEOUT` after `controlOperationTimeout`, `SM_IO_ERROR` when a member died or the store
/// link went down, handle errors.
pub fn shm_control_barrier(handle: ShmHandle) -> Result<()> {
    lookup(handle, "smem_shm_control_barrier")?.barrier()
}

/// `smem_shm_control_allgather`: rank r's `send` lands at `recv[r*len..]`.
///
/// # Errors
/// `SM_INVALID_PARAM` for bad sizes (`recv` untouched), otherwise as
/// [`shm_control_barrier`].
pub fn shm_control_allgather(handle: ShmHandle, send: &[u8], recv: &mut [u8]) -> Result<()> {
    lookup(handle, "smem_shm_control_allgather")?.allgather(send, recv)
}

/// `smem_shm_topology_can_reach`: the `SMEMS_DATA_OP_*` bits reaching `remote_rank`.
///
/// # Errors
/// `SM_INVALID_PARAM` when `remote_rank >= rankSize`; handle errors.
pub fn shm_topology_can_reach(handle: ShmHandle, remote_rank: u32) -> Result<u32> {
    lookup(handle, "smem_shm_topology_can_reach")?.reach(remote_rank)
}

/// The window size of the object (`symmetricSize`).
///
/// # Errors
/// Handle errors.
pub fn shm_symmetric_size(handle: ShmHandle) -> Result<u64> {
    Ok(lookup(handle, "smem_shm_symmetric_size")?.symmetric_size)
}

thread_local! {
    static FORK_GUARD: RefCell<Option<Held<MutexGuard<'static, State>>>> = const { RefCell::new(None) };
}

extern "C" fn fork_prepare() {
    let g = lock(&STATE);
    FORK_GUARD.with(|s| *s.borrow_mut() = Some(g));
}

extern "C" fn fork_parent() {
    FORK_GUARD.with(|s| drop(s.borrow_mut().take()));
}

extern "C" fn fork_child() {
    FORK_GUARD.with(|s| {
        if let Some(mut g) = s.borrow_mut().take() {
            // The parent's threads do not exist here: forget (never drop) what they served.
            std::mem::forget(std::mem::take(&mut *g));
        }
    });
}

fn register_atfork() {
    life::register_atfork(
        &ATFORK,
        [fork_prepare, fork_parent, fork_child],
        "SHM is busy",
    );
}

#[cfg(test)]
mod tests {
    use smem_core::limits::WINDOW_ALIGN;

    use super::*;

    /// Nothing in this test binary calls `shm_init`.
    #[test]
    fn calls_before_init_fail_cleanly() {
        let forged = ShmHandle(
            Handle {
                index: 3,
                generation: 1,
            }
            .encode(),
        );
        let code = |r: Result<()>| r.map_err(|e| e.code());
        assert_eq!(
            shm_create(0, 1, 0, WINDOW_ALIGN, DATA_OP_MTE, 0).map_err(|e| e.code()),
            Err(ErrorCode::NotInitialized)
        );
        assert_eq!(
            code(shm_control_barrier(forged)),
            Err(ErrorCode::NotInitialized)
        );
        assert_eq!(
            code(shm_destroy(ShmHandle(0), 0)),
            Err(ErrorCode::NotInitialized)
        );
        assert_eq!(
            shm_create(64, 1, 0, WINDOW_ALIGN, DATA_OP_MTE, 0).map_err(|e| e.code()),
            Err(ErrorCode::InvalidParam)
        );
        assert_eq!(
            shm_create(0, 1, 0, WINDOW_ALIGN + 4096, DATA_OP_MTE, 0).map_err(|e| e.code()),
            Err(ErrorCode::InvalidParam)
        );
        let e = shm_init("tcp://127.0.0.1:1", 2, 2, 0, &ShmConfig::default()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidParam);
        assert_eq!(
            shm_query_support_data_operation(),
            DATA_OP_MTE | DATA_OP_SDMA
        );
        shm_uninit(0);
    }
}
