//! The BM runtime's life cycle: `smem_bm_init` (store, rank registration and rendezvous, the
//! process context every object shares) and `smem_bm_uninit` (see the module docs of
//! [`super`], "Life cycle").

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use smem_core::ErrorCode;
use smem_core::limits::WORLD_SIZE_MAX;

use super::handles::{self, OBJECTS};
use super::life::{self, Hosting, InitArgs, InitWait, Session};
use super::object::BmObject;
use super::object::records::rank_record;
use super::rendezvous;
use crate::device::{self, Device};
use crate::store::{ClientOptions, ServerConfig, StoreClient, StoreServer, StoreTarget};
use crate::sync::lock;
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

/// The arguments of a successful `bm_init`.
type BmInitArgs = InitArgs<BmConfig>;

/// What an initialised BM runtime holds.
#[derive(Debug)]
pub(super) enum Bm {
    /// `startConfigStoreOnly`: hosts the store, takes no rank.
    StoreOnly {
        args: BmInitArgs,
        server: StoreServer,
    },
    /// A rank of the world.
    Ranked {
        args: BmInitArgs,
        ctx: Arc<Ctx>,
        hosting: Hosting,
    },
}

impl Session for Bm {
    type Args = BmInitArgs;
    fn args(&self) -> &BmInitArgs {
        match self {
            Self::StoreOnly { args, .. } | Self::Ranked { args, .. } => args,
        }
    }
}

pub(super) type State = life::State<Bm>;

pub(super) static STATE: Mutex<State> = Mutex::new(State::Uninit);

fn not_initialized(what: &str) -> Error {
    life::not_initialized(what, "smem_bm")
}

pub(super) fn ready_ctx(what: &str) -> Result<Arc<Ctx>> {
    match &*lock(&STATE) {
        State::Ready(Bm::Ranked { ctx, .. }) => Ok(Arc::clone(ctx)),
        State::Ready(Bm::StoreOnly { .. }) => Err(Error::new(
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
        State::Ready(Bm::Ranked { args, ctx, .. }) => Some((args.url.clone(), ctx.rank)),
        _ => None,
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
    life::reserved_zero(what, "config flags", config.flags)?;
    let parsed = life::parse_store_url(what, url)?;
    let args = InitArgs {
        url: url.to_owned(),
        world_size,
        rank: None,
        device_id,
        config: config.clone(),
    };
    life::guarded_init(&STATE, "smem_bm", args, |args| {
        handles::register_atfork();
        start(parsed, args)
    })
}

/// The store key of rank `rank`'s record: `"<host identity> <pid> <device sharing id>"`
/// (the last is what the device's IPC allow-lists know this process as, see
/// `Device::sharing_pid`).
pub(crate) fn rank_key(rank: u32) -> Vec<u8> {
    format!("smem/bm/rank/{rank}").into_bytes()
}

fn start(addr: StoreTarget, args: BmInitArgs) -> Result<Bm> {
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
        return Ok(Bm::StoreOnly { args, server });
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
        life::hosted_addr(what, &addr)
    } else {
        None
    };
    if let Some(host) = hosted {
        match explicit {
            Some(0) => server = Some(life::host_store(what, host)?),
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
    let opts = life::init_options(
        args.world_size,
        explicit,
        config.init_timeout,
        config.control_timeout,
    );
    let tls = opts.tls.clone();
    let store = life::connect(what, &addr, opts.clone())?;
    let rank = match explicit {
        Some(r) => r,
        None => store.auto_rank(b"smem_bm").map_err(|e| e.context(what))?,
    };
    let share_pid = device.sharing_pid().map_err(|e| e.context(what))?;
    let me = rank_record(&host_id, Some(share_pid)).map_err(|e| e.context(what))?;
    let world_size = args.world_size;
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
        world_size,
        timeout: (config.init_timeout, "initTimeout"),
    };
    let store = life::survive_store_loss(&w, store, |store, seen| {
        if config.dynamic_world_size {
            store
                .set(&rank_key(rank), &me)
                .map_err(|e| e.context(what))?;
            seen.insert(rank);
            return Ok(());
        }
        bm_rendezvous(world_size).register_and_wait(
            store,
            rank,
            &me,
            deadline,
            config.init_timeout,
            seen,
        )
    })?;
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
        Ok(rx) => life::spawn_rank_down("smem-bm-rankdown", rx, |r| {
            let objs: Vec<Arc<BmObject>> =
                lock(&OBJECTS).iter().map(|(_, o)| Arc::clone(o)).collect();
            for o in objs {
                o.peer_down(r);
            }
        }),
        Err(e) => {
            warn!(
                "{what}: cannot watch for ranks going down ({e}); dead peers are dropped only when they leave"
            );
            None
        }
    };
    life::log_ready(what, rank, args.world_size, &addr, server.is_some());
    Ok(Bm::Ranked {
        args,
        ctx,
        hosting: Hosting { server, rank_down },
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
    let Some(old) = life::take_for_uninit(&STATE) else {
        return;
    };
    handles::destroy_all();
    match old {
        Bm::Ranked { ctx, hosting, .. } => {
            if let Some(node) = lock(&ctx.transport).take() {
                node.shutdown();
            }
            if ctx.config.dynamic_world_size {
                let _ = ctx.store.remove(&rank_key(ctx.rank));
            } else {
                bm_rendezvous(ctx.world_size).unregister(&ctx.store, ctx.rank);
            }
            hosting.end(&ctx.store);
        }
        Bm::StoreOnly { server, .. } => server.shutdown(),
    }
    life::finish_uninit(&STATE, "smem_bm");
}

/// `smem_bm_get_rank_id`.
pub fn bm_rank_id() -> Result<u32> {
    Ok(ready_ctx("smem_bm_get_rank_id")?.rank)
}
