//! The process-wide state behind the C API: BM pools (here) and SHM objects ([`shm`]).
//!
//! `capi` calls only these functions; it knows nothing of the store protocol or of memory.
//!
//! # Life cycle
//! `bm_init` connects to the config store (hosting it in-process first when this process is
//! rank 0, or with `autoRanking` the process that can bind the URL's address), registers the
//! rank (`smem/bm/rank/<r>` = host identity and pid) and waits until every rank of the world
//! registered (unless `dynamicWorldSize`), naming the missing ranks on timeout: a constant
//! number of store operations per rank (`runtime/rendezvous.rs`). When the store
//! link goes down during that wait (the store host gave up at its own deadline, or died), the
//! rank does not fail with `SM_IO_ERROR`: it connects again to the store URL until its own init
//! deadline, registers again when the store is back and keeps waiting; at the deadline it
//! returns `SM_TIMEOUT` naming the ranks it never saw registered and when the store went away
//! (`survive_store_loss`, shared with `smem_shm_init`). So every surviving rank gets
//! `SM_TIMEOUT` naming the missing ranks, whichever gives up first. A second
//! `bm_init` with identical arguments returns 0; with different ones `SM_REPEAT_CALL`.
//! Objects: see the module docs of `runtime/object.rs` for the GVA agreement, the membership log
//! and the store key schedule.
//! Windows of peers on other hosts stay reserved; objects created with `HOST_TCP` or `ROCE`
//! reach them through the network transport ([`crate::transport`]), others get
//! `SM_NOT_SUPPORTED` for them. `unifiedAddressSpace = false` is refused with
//! `SM_INVALID_PARAM` (every member maps the pool at the same GVA); reserved `flags` (config,
//! create, join, leave) must be 0; `dataOpType` does not change the same-host route (memory
//! copy / device copy engine). The route is chosen per window at join (its atomic state): the copy path reads it
//! once, with no lookup beyond the object's table slot.
//!
//! # Locks
//! Every lock is taken through [`crate::sync`], so no log record reaches the external logger
//! while its thread holds one (SPEC 2.1). `STATE` (init/uninit), `OBJECTS` (the handle table) and each slot's `RwLock` are only held
//! for short, non-blocking sections, in that order. The copy path takes one slot's read lock
//! (per object, never global) for the whole copy, validates with `smem_core::bm`, checks the
//! window's state and copies; it allocates nothing unless it fails. Unmapping a window waits for
//! the copies in flight by taking the slot's write lock once (`wait_for_copies`); no thread
//! holding a slot lock waits for anything else, so this cannot deadlock.
//!
//! # Fork
//! A `pthread_atfork` prepare handler takes `STATE`, `OBJECTS` and every slot lock, so no lock
//! is held by another thread across `fork`; the parent releases them; the child forgets every
//! object, store link and server of the parent (their threads do not exist in the child; their
//! memory is not freed, the child's mappings keep sharing the parent's pages) and starts
//! uninitialised, so it can call `bm_init` again. No-clobber reservations keep its new objects
//! off the ranges it still has reserved. The store sockets of the parent (client links, the listener and
//! links of a hosted store) are not inherited as such: [`crate::sys::fork::DetachOnFork`]
//! replaces them in the child with unconnected placeholders, so the store sees this process's
//! link close when it dies even while a forked child lives, and a hosted store's port is freed.
#![allow(unsafe_code)] // the copy path (`copy`, `batch`, `async_engine`) has `unsafe fn`s (caller
// pointers) that forward that contract to the device copy and the transport.

mod async_engine;
mod batch;
mod copy;
mod object;
mod regions;
mod rendezvous;
pub mod shm;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Once, RwLock, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use smem_core::ErrorCode;
use smem_core::gva::Gva;
use smem_core::limits::{BM_OBJECTS_MAX, WORLD_SIZE_MAX};
use smem_core::table::{Handle, Table};

pub use self::async_engine::bm_wait;
pub use self::batch::{BATCH_MAX, BatchEntry, bm_copy_batch};
pub use self::copy::{bm_copy, bm_copy_2d};
use self::object::{BmObject, CreateArgs, rank_list};
pub use self::regions::{bm_rank_by_gva, bm_register_user_mem, bm_unregister_user_mem};
use crate::device::{self, Device};
use crate::store::{ClientOptions, ServerConfig, StoreClient, StoreServer, StoreTarget};
use crate::sync::{Held, lock, once, read, write};
use crate::transport::Node;
use crate::{Error, Result};

/// Settings of `smem_bm_init` (the Rust form of `smem_bm_config_t`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BmConfig {
    /// Bounds `bm_init`.
    pub init_timeout: Duration,
    /// Bounds `bm_create` / `bm_join`.
    pub create_timeout: Duration,
    /// Bounds each store / control operation.
    pub control_timeout: Duration,
    /// Rank 0 (or the auto-ranking host) starts the store in-process.
    pub start_config_store: bool,
    /// This process only hosts the store and takes no rank.
    pub start_config_store_only: bool,
    /// Ranks may join after init.
    pub dynamic_world_size: bool,
    /// Same GVA in every process.
    pub unified_address_space: bool,
    /// The store assigns rank ids.
    pub auto_ranking: bool,
    /// Explicit rank id when `!auto_ranking`.
    pub rank_id: u16,
    /// Reserved flags.
    pub flags: u32,
}

impl Default for BmConfig {
    fn default() -> Self {
        Self {
            init_timeout: Duration::from_secs(120),
            create_timeout: Duration::from_secs(120),
            control_timeout: Duration::from_secs(120),
            start_config_store: true,
            start_config_store_only: false,
            dynamic_world_size: false,
            unified_address_space: true,
            auto_ranking: false,
            rank_id: u16::MAX,
            flags: 0,
        }
    }
}

/// An opaque, generation-checked BM object handle as handed to C (never 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BmHandle(pub u64);

/// What every object of an initialised process shares.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) world_size: u32,
    pub(crate) rank: u32,
    pub(crate) device: Arc<dyn Device>,
    pub(crate) store: StoreClient,
    pub(crate) host_id: String,
    pub(crate) config: BmConfig,
    /// The network transport, started by the first object that uses it.
    transport: Mutex<Option<Arc<Node>>>,
    /// The TLS setting (`smem_set_ssl_option`) as it was at init: every link of this
    /// initialisation uses it, a later change waits for the next init.
    tls: Option<Arc<crate::tls::LoadedTls>>,
}

impl Ctx {
    /// The network transport of this process, started on first use: its listener binds the
    /// local address of the config store link (the address the other hosts reach us by).
    pub(crate) fn transport(&self) -> Result<Arc<Node>> {
        let mut t = lock(&self.transport);
        if let Some(n) = &*t {
            return Ok(Arc::clone(n));
        }
        let local = self.store.local_addr().ok_or_else(|| {
            Error::new(
                ErrorCode::IoError,
                "the config store link is down; cannot tell which address to serve windows on",
            )
        })?;
        let node = Node::start(local.ip(), self.config.control_timeout, self.tls.clone())?;
        *t = Some(Arc::clone(&node));
        Ok(node)
    }
}

/// The arguments of a successful `bm_init`, to recognise an identical second call.
#[derive(Clone, Debug, PartialEq, Eq)]
struct InitArgs {
    url: String,
    world_size: u32,
    device_id: u16,
    config: BmConfig,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Uninit,
    /// `bm_init` or `bm_uninit` is running.
    Busy,
    /// `startConfigStoreOnly`: hosts the store, takes no rank.
    StoreOnly { args: InitArgs, server: StoreServer },
    Ready {
        args: InitArgs,
        ctx: Arc<Ctx>,
        server: Option<StoreServer>,
        rank_down: Option<JoinHandle<()>>,
    },
}

/// A published object with its handle generation (`None`: free slot).
type Published = Option<(u32, Arc<BmObject>)>;
type Slot = RwLock<Published>;

static STATE: Mutex<State> = Mutex::new(State::Uninit);
static OBJECTS: LazyLock<Mutex<Table<Arc<BmObject>, BM_OBJECTS_MAX>>> =
    LazyLock::new(|| Mutex::new(Table::new()));
static SLOTS: [Slot; BM_OBJECTS_MAX] = [const { RwLock::new(None) }; BM_OBJECTS_MAX];
static CREATING: [AtomicBool; BM_OBJECTS_MAX] = [const { AtomicBool::new(false) }; BM_OBJECTS_MAX];
static ATFORK: Once = Once::new();

/// Refuses a non-zero reserved `flags` value: no bit has a meaning yet, and a bit a future
/// version gives one must not be silently ignored by this one.
pub(crate) fn reserved_zero(what: &str, name: &str, flags: u32) -> Result<()> {
    if flags == 0 {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "{what}: {name} {flags:#x} are reserved and must be 0"
    )))
}

fn not_initialized(what: &str) -> Error {
    Error::new(
        ErrorCode::NotInitialized,
        format!("{what}: smem_bm_init has not been called (or smem_bm_uninit was)"),
    )
}

fn ready_ctx(what: &str) -> Result<Arc<Ctx>> {
    match &*lock(&STATE) {
        State::Ready { ctx, .. } => Ok(Arc::clone(ctx)),
        State::StoreOnly { .. } => Err(Error::new(
            ErrorCode::NotStarted,
            format!(
                "{what}: this process only hosts the config store (startConfigStoreOnly), no BM rank was started; init another process with a rank"
            ),
        )),
        _ => Err(not_initialized(what)),
    }
}

/// The store URL and rank of this process's BM runtime when it is initialised with a rank
/// (the SHM runtime then shares that store; see `runtime/shm.rs`).
pub(crate) fn bm_store_user() -> Option<(String, u32)> {
    match &*lock(&STATE) {
        State::Ready { args, ctx, .. } => Some((args.url.clone(), ctx.rank)),
        _ => None,
    }
}

/// `smem_init`: process-wide initialisation (idempotent).
pub fn init(flags: u32) -> Result<()> {
    if flags != 0 {
        return Err(Error::invalid(format!(
            "smem_init flags must be 0, got {flags:#x}"
        )));
    }
    register_atfork();
    Ok(())
}

/// `smem_uninit`: tears down everything this process created.
pub fn uninit() {
    shm::shm_uninit(0);
    bm_uninit(0);
}

/// How an init call finds its runtime's state (see [`guarded_init`]).
pub(crate) enum Found {
    Uninit,
    /// Initialised with the same arguments.
    Same,
    /// Another init or uninit runs.
    Busy,
    /// Initialised with other arguments.
    Other,
}

/// A registration at init: this rank's key and record, and how long it may wait.
pub(crate) struct InitWait<'a> {
    /// The init call, for messages (`smem_bm_init`).
    pub(crate) what: &'a str,
    /// The store URL's target.
    pub(crate) addr: StoreTarget,
    /// The options of a new link after a loss (connect timeout: what is left).
    pub(crate) opts: ClientOptions,
    /// When the init call began (messages say `+N ms` from here).
    pub(crate) started: Instant,
    /// The init deadline.
    pub(crate) deadline: Instant,
}

/// Runs `step` (register this rank, wait for the others) on `store`, surviving a config store
/// that goes away meanwhile: when the link goes down, this rank does not fail at once but
/// connects again to the store URL until the init deadline (the store may come back: a
/// restarted standalone store) and runs `step` again on the new link (registering again). At
/// the deadline it returns `gave_up(ranks seen registered, when the link first went down)`,
/// an `SM_TIMEOUT` naming the ranks it never saw. `seen` collects, across links, the ranks
/// `step` saw registered. Errors other than a lost link are returned as they are.
pub(crate) fn survive_store_loss(
    w: &InitWait<'_>,
    mut store: StoreClient,
    mut step: impl FnMut(&StoreClient, &mut BTreeSet<u32>) -> Result<()>,
    gave_up: impl FnOnce(&BTreeSet<u32>, Duration) -> Error,
) -> Result<StoreClient> {
    let mut seen = BTreeSet::new();
    let mut lost_at: Option<Duration> = None;
    // Bounded by the deadline: every round either succeeds, fails, or waits for a new link
    // (connect retries are bounded by the deadline, pauses are at least 50 ms).
    loop {
        let err = match step(&store, &mut seen) {
            Ok(()) => return Ok(store),
            Err(e) => e,
        };
        if err.code() != ErrorCode::IoError || store.is_connected() {
            return Err(err);
        }
        let at = *lost_at.get_or_insert_with(|| w.started.elapsed());
        warn!(
            "{}: the config store at {} went away (+{} ms: {err}); connecting again until the init deadline",
            w.what,
            w.addr,
            at.as_millis()
        );
        store.close();
        store = loop {
            let left = w.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(gave_up(&seen, at));
            }
            let opts = ClientOptions {
                connect_timeout: left,
                ..w.opts.clone()
            };
            match StoreClient::connect_to(w.addr.clone(), opts) {
                Ok(s) => {
                    info!(
                        "{}: the config store at {} is back (+{} ms); registering again",
                        w.what,
                        w.addr,
                        w.started.elapsed().as_millis()
                    );
                    break s;
                }
                // Nobody listens (connect timed out at the deadline), the link closed during
                // the handshake, or the store still sees our old link holding the rank.
                Err(e)
                    if matches!(
                        e.code(),
                        ErrorCode::Timeout | ErrorCode::IoError | ErrorCode::StoreRejected
                    ) =>
                {
                    debug!("{}: connecting again: {e}", w.what);
                    std::thread::sleep(
                        Duration::from_millis(50)
                            .min(w.deadline.saturating_duration_since(Instant::now())),
                    );
                }
                Err(e) => return Err(e.context(w.what)),
            }
        };
    }
}

/// The message part of a `gave_up` error of [`survive_store_loss`]: which of `world_size`
/// ranks were never seen, and when the store went away.
pub(crate) fn store_gone_detail(
    world_size: u32,
    seen: &BTreeSet<u32>,
    addr: &StoreTarget,
    lost_at: Duration,
) -> String {
    let missing: Vec<u32> = (0..world_size).filter(|r| !seen.contains(r)).collect();
    format!(
        "{} of {world_size} ranks were never seen registered: missing rank(s) {}; the config store at {addr} went away at +{} ms (its host gave up or died) and did not come back",
        missing.len(),
        rank_list(&missing),
        lost_at.as_millis()
    )
}

/// Parses the store URL of init call `what`.
pub(crate) fn parse_store_url(what: &str, url: &str) -> Result<StoreTarget> {
    StoreTarget::parse(url).map_err(|e| {
        Error::invalid(format!(
            "{what}: store URL {url:?}: {e}; expected tcp://IPv4:port, tcp://[IPv6]:port or etcd://host:port[,host:port...][/prefix]"
        ))
    })
}

/// The address a rank hosts a `tcp://` store on (`startConfigStore`); `None` on an `etcd://`
/// store, where nobody hosts anything: the setting is ignored with a log line.
pub(crate) fn hosted_addr(what: &str, target: &StoreTarget) -> Option<SocketAddr> {
    match target {
        StoreTarget::Tcp(a) => Some(*a),
        StoreTarget::Etcd(t) => {
            info!(
                "{what}: not hosting a config store (startConfigStore ignored): the store is the etcd cluster {t}"
            );
            None
        }
    }
}

/// The init guard shared by `smem_bm_init` and `smem_shm_init` (`api`: `smem_bm` / `smem_shm`):
/// claims `state` (as `busy`) when `found` says it is uninitialised, succeeds at once when it
/// was initialised with the same `args`, refuses otherwise; then runs `start` with `args` out of
/// the lock and stores its state, or `uninit` when it failed.
pub(crate) fn guarded_init<S, A>(
    state: &Mutex<S>,
    api: &str,
    args: A,
    found: impl FnOnce(&S, &A) -> Found,
    [busy, uninit]: [S; 2],
    start: impl FnOnce(A) -> Result<S>,
) -> Result<()> {
    let what = format!("{api}_init");
    {
        let mut st = lock(state);
        match found(&st, &args) {
            Found::Uninit => *st = busy,
            Found::Same => {
                info!("{what}: already initialised with the same arguments");
                return Ok(());
            }
            Found::Busy => {
                return Err(Error::new(
                    ErrorCode::RepeatCall,
                    format!("{what}: another {api}_init or {api}_uninit is running"),
                ));
            }
            Found::Other => {
                return Err(Error::new(
                    ErrorCode::RepeatCall,
                    format!(
                        "{what}: already initialised with other arguments; call {api}_uninit first"
                    ),
                ));
            }
        }
    }
    let result = start(args);
    let mut st = lock(state);
    match result {
        Ok(new) => {
            *st = new;
            Ok(())
        }
        Err(e) => {
            *st = uninit;
            Err(e)
        }
    }
}

/// `smem_bm_init`.
pub fn bm_init(url: &str, world_size: u32, device_id: u16, config: &BmConfig) -> Result<()> {
    let what = "smem_bm_init";
    if world_size == 0 || world_size as usize > WORLD_SIZE_MAX {
        return Err(Error::invalid(format!(
            "{what}: worldSize {world_size} is outside 1..={WORLD_SIZE_MAX}"
        )));
    }
    if !config.unified_address_space {
        return Err(Error::invalid(format!(
            "{what}: unifiedAddressSpace = false is not supported: every member maps each pool at the same GVA; set it to true (the default)"
        )));
    }
    reserved_zero(what, "config flags", config.flags)?;
    let parsed = parse_store_url(what, url)?;
    let args = InitArgs {
        url: url.to_owned(),
        world_size,
        device_id,
        config: config.clone(),
    };
    guarded_init(
        &STATE,
        "smem_bm",
        args,
        |st, args| match st {
            State::Uninit => Found::Uninit,
            State::Ready { args: a, .. } | State::StoreOnly { args: a, .. } if a == args => {
                Found::Same
            }
            State::Busy => Found::Busy,
            _ => Found::Other,
        },
        [State::Busy, State::Uninit],
        |args| {
            register_atfork();
            start(parsed, args)
        },
    )
}

/// The store key of rank `rank`'s record: `"<host identity> <pid> <device sharing id>"`
/// (the last is what the device's IPC allow-lists know this process as, see
/// `Device::sharing_pid`).
pub(crate) fn rank_key(rank: u32) -> Vec<u8> {
    format!("smem/bm/rank/{rank}").into_bytes()
}

fn start(addr: StoreTarget, args: InitArgs) -> Result<State> {
    let what = "smem_bm_init";
    let config = &args.config;
    let started = Instant::now();
    let deadline = started + config.init_timeout;
    if config.start_config_store_only {
        let Some(host) = addr.tcp_addr() else {
            return Err(Error::invalid(format!(
                "{what}: startConfigStoreOnly with the etcd store {addr}: there is no store to host (the etcd cluster is the store); run ranks only"
            )));
        };
        let server = StoreServer::start(ServerConfig::new(host))
            .map_err(|e| e.context(format!("{what} (startConfigStoreOnly)")))?;
        info!(
            "{what}: hosting the config store at {} only (no rank)",
            server.local_addr()
        );
        return Ok(State::StoreOnly { args, server });
    }
    let explicit = if config.auto_ranking {
        None
    } else {
        let r = u32::from(config.rank_id);
        if r >= args.world_size {
            return Err(Error::invalid(format!(
                "{what}: rankId {r} is not below worldSize {}; set config.rankId or enable autoRanking",
                args.world_size
            )));
        }
        Some(r)
    };
    let device = device::select(args.device_id).map_err(|e| e.context(what))?;
    let host_id = crate::mem::host_identity()?;
    let mut server = None;
    let hosted = if config.start_config_store {
        hosted_addr(what, &addr)
    } else {
        None
    };
    if let Some(host) = hosted {
        match explicit {
            Some(0) => {
                server = Some(
                    StoreServer::start(ServerConfig::new(host))
                        .map_err(|e| e.context(format!("{what}: rank 0 hosts the config store")))?,
                )
            }
            Some(_) => {}
            None => {
                // No separate "can I bind?" probe: a probe listener would queue other ranks'
                // connections and reset them when dropped. Binding fails when the address is
                // not ours or the port is taken (another process hosts the store).
                match StoreServer::start(ServerConfig::new(host)) {
                    Ok(s) => server = Some(s),
                    Err(e) => debug!("{what}: another process hosts the store ({e})"),
                }
            }
        }
    }
    let opts = ClientOptions {
        world_size: Some(args.world_size),
        rank: explicit,
        connect_timeout: config.init_timeout,
        op_timeout: config.control_timeout,
        reconnect: false,
        // `smem_set_ssl_option` (the store server above took it from `ServerConfig::new`).
        tls: crate::tls::global(),
    };
    let tls = opts.tls.clone();
    let store = StoreClient::connect_to(addr.clone(), opts.clone())
        .map_err(|e| e.context(format!("{what}: connecting to the config store at {addr}")))?;
    let rank = match explicit {
        Some(r) => r,
        None => store.auto_rank(b"smem_bm").map_err(|e| e.context(what))?,
    };
    let share_pid = device.sharing_pid().map_err(|e| e.context(what))?;
    let me = format!("{host_id} {} {share_pid}", std::process::id());
    let w = InitWait {
        what,
        addr: addr.clone(),
        // A new link claims the rank this process got (also an auto-assigned one).
        opts: ClientOptions {
            rank: Some(rank),
            ..opts
        },
        started,
        deadline,
    };
    let world_size = args.world_size;
    let store = survive_store_loss(
        &w,
        store,
        |store, seen| {
            if config.dynamic_world_size {
                store
                    .set(&rank_key(rank), me.as_bytes())
                    .map_err(|e| e.context(what))?;
                seen.insert(rank);
                return Ok(());
            }
            bm_rendezvous(world_size).register_and_wait(
                store,
                rank,
                me.as_bytes(),
                deadline,
                config.init_timeout,
                seen,
            )
        },
        |seen, lost_at| {
            Error::new(
                ErrorCode::Timeout,
                format!(
                    "{what}: {}; waited {} s; start them (and the store) or raise initTimeout",
                    store_gone_detail(world_size, seen, &addr, lost_at),
                    config.init_timeout.as_secs_f32()
                ),
            )
        },
    )?;
    let ctx = Arc::new(Ctx {
        world_size: args.world_size,
        rank,
        device,
        store: store.clone(),
        host_id,
        config: config.clone(),
        transport: Mutex::new(None),
        tls,
    });
    let rank_down = match store.watch_rank_down() {
        Ok(rx) => std::thread::Builder::new()
            .name("smem-bm-rankdown".into())
            .spawn(move || {
                while let Ok(r) = rx.recv() {
                    let objs: Vec<Arc<BmObject>> =
                        lock(&OBJECTS).iter().map(|(_, o)| Arc::clone(o)).collect();
                    for o in objs {
                        o.peer_down(r);
                    }
                }
            })
            .ok(),
        Err(e) => {
            warn!(
                "{what}: cannot watch for ranks going down ({e}); dead peers are dropped only when they leave"
            );
            None
        }
    };
    info!(
        "{what}: rank {rank} of {} ready (store {addr}{})",
        args.world_size,
        if server.is_some() {
            ", hosted here"
        } else {
            ""
        }
    );
    Ok(State::Ready {
        args,
        ctx,
        server,
        rank_down,
    })
}

/// The init rendezvous of the BM runtime (`smem/bm/`, see [`rendezvous`]).
fn bm_rendezvous(world_size: u32) -> rendezvous::Rendezvous<'static> {
    rendezvous::Rendezvous {
        ns: "smem/bm/",
        what: "smem_bm_init",
        world_size,
        alive: false,
        knob: "initTimeout",
    }
}

/// `smem_bm_uninit`.
pub fn bm_uninit(flags: u32) {
    let _ = flags;
    let old = {
        let mut st = lock(&STATE);
        match &*st {
            State::Busy | State::Uninit => return,
            _ => std::mem::replace(&mut *st, State::Busy),
        }
    };
    let handles: Vec<Handle> = lock(&OBJECTS).iter().map(|(h, _)| h).collect();
    for h in handles {
        if let Err(e) = destroy_handle(h) {
            warn!("smem_bm_uninit: destroying BM object {}: {e}", h.index);
        }
    }
    match old {
        State::Ready {
            ctx,
            server,
            rank_down,
            ..
        } => {
            if let Some(node) = lock(&ctx.transport).take() {
                node.shutdown();
            }
            if ctx.config.dynamic_world_size {
                let _ = ctx.store.remove(&rank_key(ctx.rank));
            } else {
                bm_rendezvous(ctx.world_size).unregister(&ctx.store, ctx.rank);
            }
            ctx.store.close();
            if let Some(t) = rank_down {
                let _ = t.join();
            }
            if let Some(s) = server {
                s.shutdown();
            }
        }
        State::StoreOnly { server, .. } => server.shutdown(),
        _ => {}
    }
    *lock(&STATE) = State::Uninit;
    info!("smem_bm_uninit: done");
}

/// `smem_bm_get_rank_id`.
pub fn bm_rank_id() -> Result<u32> {
    Ok(ready_ctx("smem_bm_get_rank_id")?.rank)
}

/// `smem_bm_create`.
pub fn bm_create(
    id: u32,
    member_size: u32,
    data_op_type: u32,
    local_dram_size: u64,
    local_hbm_size: u64,
    flags: u32,
) -> Result<BmHandle> {
    let what = format!("smem_bm_create {id}");
    reserved_zero(&what, "flags", flags)?;
    let ctx = ready_ctx(&what)?;
    let index = id as usize;
    if index >= BM_OBJECTS_MAX {
        return Err(Error::invalid(format!(
            "{what}: id must be below {BM_OBJECTS_MAX}"
        )));
    }
    if member_size == 0 || member_size > ctx.world_size {
        return Err(Error::invalid(format!(
            "{what}: memberSize {member_size} must be in 1..={} (worldSize)",
            ctx.world_size
        )));
    }
    if ctx.rank >= member_size {
        return Err(Error::invalid(format!(
            "{what}: rank {} is not a member of an object of memberSize {member_size}",
            ctx.rank
        )));
    }
    smem_core::data_op::BmDataOps::from_c(data_op_type)
        .map_err(|e| Error::invalid(format!("{what}: {e}")))?;
    if local_dram_size == 0 && local_hbm_size == 0 {
        return Err(Error::invalid(format!(
            "{what}: localDRAMSize and localHBMSize are both 0; give at least one"
        )));
    }
    {
        let objects = lock(&OBJECTS);
        if objects.handle_at(index).is_some() || CREATING[index].swap(true, Ordering::SeqCst) {
            return Err(Error::new(
                ErrorCode::DuplicatedObject,
                format!("{what}: an object with this id exists in this process; destroy it first"),
            ));
        }
    }
    let args = CreateArgs {
        id,
        member_size,
        dram: local_dram_size,
        hbm: local_hbm_size,
        data_op: data_op_type,
    };
    let created = BmObject::create(&ctx, ctx.rank, &args);
    let mut objects = lock(&OBJECTS);
    CREATING[index].store(false, Ordering::SeqCst);
    let obj = created?;
    let handle = objects
        .insert_at(index, Arc::clone(&obj))
        .map_err(|(e, _)| Error::new(ErrorCode::DuplicatedObject, format!("{what}: {e}")))?;
    *write(&SLOTS[index]) = Some((handle.generation, obj));
    Ok(BmHandle(handle.encode()))
}

fn decode(handle: BmHandle, what: &str) -> Result<Handle> {
    Handle::decode(handle.0)
        .filter(|h| (h.index as usize) < BM_OBJECTS_MAX)
        .ok_or_else(|| Error::invalid(format!("{what}: {:#x} is not a BM handle", handle.0)))
}

fn stale(what: &str) -> Error {
    Error::new(
        ErrorCode::ObjectNotExists,
        format!("{what}: the BM object was destroyed (stale handle)"),
    )
}

/// Waits until no copy is in flight in BM object `id` (each copy holds the slot's read lock;
/// the lock prefers writers, so this is not starved by new copies). The caller has already
/// marked what it unmaps `CLOSING`, so copies that start afterwards fail cleanly.
pub(crate) fn wait_for_copies(id: u32) {
    if let Some(slot) = SLOTS.get(id as usize) {
        drop(write(slot));
    }
}

/// The object behind `handle` (control path).
fn lookup(handle: BmHandle, what: &str) -> Result<Arc<BmObject>> {
    let h = decode(handle, what)?;
    match &*read(&SLOTS[h.index as usize]) {
        Some((generation, obj)) if *generation == h.generation => Ok(Arc::clone(obj)),
        _ => Err(stale(what)),
    }
}

fn destroy_handle(h: Handle) -> Result<()> {
    let what = "smem_bm_destroy";
    let obj = {
        let mut objects = lock(&OBJECTS);
        let obj = objects.remove(h).map_err(|_| stale(what))?;
        // Waits for copies of other threads that are inside the object.
        *write(&SLOTS[h.index as usize]) = None;
        obj
    };
    let r = obj.destroy();
    obj.quiesce();
    drop(obj);
    r
}

/// `smem_bm_destroy`.
pub fn bm_destroy(handle: BmHandle) -> Result<()> {
    destroy_handle(decode(handle, "smem_bm_destroy")?)
}

/// `smem_bm_join`: returns this rank's window base (GVA).
pub fn bm_join(handle: BmHandle, flags: u32) -> Result<u64> {
    reserved_zero("smem_bm_join", "flags", flags)?;
    lookup(handle, "smem_bm_join")?.join()
}

/// `smem_bm_leave`.
pub fn bm_leave(handle: BmHandle, flags: u32) -> Result<()> {
    reserved_zero("smem_bm_leave", "flags", flags)?;
    lookup(handle, "smem_bm_leave")?.leave()
}

/// `smem_bm_get_local_mem_size`.
pub fn bm_local_mem_size(handle: BmHandle) -> Result<u64> {
    Ok(lookup(handle, "smem_bm_get_local_mem_size")?
        .layout
        .local_mem_size())
}

/// `smem_bm_ptr`: `base + peer * stride`.
pub fn bm_ptr(handle: BmHandle, peer: u16) -> Result<u64> {
    let obj = lookup(handle, "smem_bm_ptr")?;
    obj.layout
        .window_base(u32::from(peer))
        .map(Gva::raw)
        .ok_or_else(|| {
            Error::invalid(format!(
                "smem_bm_ptr: peer {peer} is not below memberSize {}",
                obj.layout.member_size()
            ))
        })
}

/// Locks held across `fork` by the thread that forks (see the module docs).
struct ForkGuards {
    state: Held<MutexGuard<'static, State>>,
    objects: Held<MutexGuard<'static, Table<Arc<BmObject>, BM_OBJECTS_MAX>>>,
    slots: Vec<Held<RwLockWriteGuard<'static, Published>>>,
}

thread_local! {
    static FORK_GUARDS: RefCell<Option<ForkGuards>> = const { RefCell::new(None) };
}

extern "C" fn fork_prepare() {
    let guards = ForkGuards {
        state: lock(&STATE),
        objects: lock(&OBJECTS),
        slots: SLOTS.iter().map(write).collect(),
    };
    FORK_GUARDS.with(|g| *g.borrow_mut() = Some(guards));
}

extern "C" fn fork_parent() {
    FORK_GUARDS.with(|g| drop(g.borrow_mut().take()));
}

extern "C" fn fork_child() {
    FORK_GUARDS.with(|g| {
        if let Some(mut guards) = g.borrow_mut().take() {
            // The parent's threads do not exist here: forget (never drop) what they served.
            std::mem::forget(std::mem::take(&mut *guards.state));
            std::mem::forget(std::mem::take(&mut *guards.objects));
            for s in guards.slots.iter_mut() {
                std::mem::forget(s.take());
            }
            for c in &CREATING {
                c.store(false, Ordering::SeqCst);
            }
        }
    });
}

fn register_atfork() {
    once(&ATFORK, || {
        if let Err(e) = crate::sys::fork::register_atfork(
            Some(fork_prepare),
            Some(fork_parent),
            Some(fork_child),
        ) {
            warn!("pthread_atfork failed ({e}); forking while smem is busy may deadlock the child");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing in this test binary calls `bm_init`, so every call sees an uninitialised process.
    #[test]
    fn calls_before_init_fail_cleanly() {
        assert_eq!(
            bm_rank_id().map_err(|e| e.code()),
            Err(ErrorCode::NotInitialized)
        );
        assert_eq!(
            bm_create(0, 1, 1, 1, 0, 0).map_err(|e| e.code()),
            Err(ErrorCode::NotInitialized)
        );
        let forged = BmHandle(
            Handle {
                index: 3,
                generation: 9,
            }
            .encode(),
        );
        assert_eq!(
            bm_join(forged, 0).map_err(|e| e.code()),
            Err(ErrorCode::ObjectNotExists)
        );
        assert_eq!(
            bm_destroy(BmHandle(0)).map_err(|e| e.code()),
            Err(ErrorCode::InvalidParam)
        );
        let beyond = BmHandle(
            Handle {
                index: 64,
                generation: 0,
            }
            .encode(),
        );
        assert_eq!(
            bm_ptr(beyond, 0).map_err(|e| e.code()),
            Err(ErrorCode::InvalidParam)
        );
        // SAFETY: the handle is invalid, so no pointer is touched.
        let r = unsafe { bm_copy(forged, 1, 2, 3, 0, 0) };
        assert_eq!(r.map_err(|e| e.code()), Err(ErrorCode::ObjectNotExists));
        let e = bm_init("http://x", 1, 0, &BmConfig::default()).expect_err("bad url");
        assert_eq!(e.code(), ErrorCode::InvalidParam);
        let e = bm_init("tcp://127.0.0.1:1", 0, 0, &BmConfig::default()).expect_err("world 0");
        assert_eq!(e.code(), ErrorCode::InvalidParam);
        bm_uninit(0);
    }
}
