//! The transfer engine (SPEC 6.2, `smem_trans.h`): point-to-point reads and writes between
//! named processes' registered memory, without a pool object or a world size.
//!
//! # Engines and the store group
//! An engine is named by its `uniqueId` in the group of engines sharing one config store.
//! `create` publishes two values there (codecs in [`smem_core::wire::trans`]): the engine
//! record under `smem/trans/engine/<id>` (host identity, pid, transport endpoint, generation
//! token, control segment) and its region table under `smem/trans/regions/<id>`. The record is
//! claimed with a compare-and-swap: an existing record whose engine is alive (same host: its
//! process holds the published control segment; other host: its endpoint accepts a connection
//! within 1 s) makes `create` fail with `SM_DUPLICATED_OBJECT`; a dead one is replaced.
//! `destroy` removes both values. Engines come and go at any time.
//!
//! # Memory
//! - `smem_trans_malloc`: a page-aligned memfd segment (pages allocated up front), mapped
//!   here and registered; same-host peers open it through `/proc/<pid>/fd` and copy with
//!   `memcpy`.
//! - `register_mem`: any memory of the caller. Same-host peers reach it with
//!   `process_vm_writev`/`readv` when the kernel permits (checked once per peer against its
//!   control segment, the first answer logged; `SMEM_TRANS_NO_VM=1` turns it off), otherwise
//!   through the transport on loopback.
//! - Peers on other hosts go through the transport ([`crate::transport`], TLS when
//!   `smem_set_ssl_option` enabled it), which pipelines a batch's requests on one connection
//!   after coalescing entries that are contiguous on both sides.
//!
//! The owner checks every transport request against its table (unregistered ranges are
//! refused, a deregister waits for requests in flight). Same-host peers check their cached copy
//! of the table, refreshed whenever the generation word of the owner's control segment moved
//! (the owner bumps it after the store holds the new table, before `register`/`deregister`
//! return), so a range is never written by a peer after its deregister returned, except by a
//! transfer that was already running (the caller's race).
//!
//! # Failure
//! A same-host peer's liveness is its pidfd, checked before and after every transfer (and its
//! control segment's state word, set at destroy), so a transfer into a dead peer's mapped
//! memory fails with `SM_IO_ERROR` naming it rather than "succeeding" into orphaned pages.
//! Transport peers fail as transport copies do (a dead process's sockets reset at once). A
//! peer that failed that way is forgotten, so the next call looks its id up again (a restarted
//! engine is found under the same id).
//!
//! # Asynchronous transfers
//! `*_submit` (with a NULL stream) queues the transfer on the engine's workers (two threads,
//! started at the first submit; a bounded queue); `smem_trans_wait` returns when every
//! transfer the calling thread submitted on that engine is done, with the first error.
//!
//! # Config
//! `role` must be `SENDER`, `RECEIVER` or `BOTH` (recorded in the store record; every engine
//! can both serve and start transfers, as the reference's pull-mode decoders need);
//! `initTimeout` bounds the store connection, each store operation, the wait for an unknown
//! peer to appear and each transport socket operation; `dataOpType` must contain
//! `HOST_TCP` or `ROCE` for peers on other hosts (else `SM_NOT_SUPPORTED`) and `SDMA` for the
//! same-host fast paths (without it same-host peers go through the transport); `deviceId`
//! is recorded (no device memory is used: a non-NULL stream is `SM_NOT_SUPPORTED`); `flags`
//! must be 0; `startConfigServer` makes `create` host the store at `storeUrl` in this process.

mod copy;
mod local;
mod peer;
mod queue;

use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use log::{info, warn};
use smem_core::ErrorCode;
use smem_core::wire::trans::{EngineRecord, valid_unique_id};

pub use self::copy::{Direction, Entry};
use self::local::Local;
pub use self::peer::NO_VM_ENV;
use self::peer::Peer;
use self::queue::Queue;
use crate::store::{CasResult, ClientOptions, ServerConfig, StoreClient, StoreServer};
pub(crate) use crate::sync::{lock, read, write};
use crate::sys::copy::RawRange;
use crate::transport::{DATA_OP_HOST_TCP, Node};
use crate::{Error, Result};

/// `SMEMB_DATA_OP_SDMA` (`smem_bm_data_op_type`): same-host copies.
pub const DATA_OP_SDMA: u32 = 1 << 0;

/// `smem_trans_role_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// `SMEM_TRANS_SENDER` (the reference's "Prefill").
    Sender,
    /// `SMEM_TRANS_RECEIVER` (the reference's "Decode").
    Receiver,
    /// `SMEM_TRANS_BOTH`.
    Both,
}

impl Role {
    /// The role of C value `raw` (`SMEM_TRANS_SENDER` 1, `RECEIVER` 2, `BOTH` 3).
    ///
    /// # Errors
    /// `SM_INVALID_PARAM` for `NONE`, `BUTT` and other values.
    pub fn from_raw(raw: u32) -> Result<Self> {
        match raw {
            1 => Ok(Self::Sender),
            2 => Ok(Self::Receiver),
            3 => Ok(Self::Both),
            _ => Err(Error::invalid(format!(
                "config->role {raw} is not SMEM_TRANS_SENDER (1), SMEM_TRANS_RECEIVER (2) or SMEM_TRANS_BOTH (3)"
            ))),
        }
    }

    /// The C value.
    pub fn raw(self) -> u32 {
        match self {
            Self::Sender => 1,
            Self::Receiver => 2,
            Self::Both => 3,
        }
    }
}

/// Settings of an engine (`smem_trans_config_t`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransConfig {
    /// The engine's role.
    pub role: Role,
    /// Bounds the store connection and operations, unknown-peer lookups and socket operations.
    pub init_timeout: Duration,
    /// Device id (recorded; no device memory is used).
    pub device_id: u32,
    /// Reserved, 0.
    pub flags: u32,
    /// `smem_bm_data_op_type` bits.
    pub data_ops: u32,
    /// `create` hosts the store at its URL.
    pub start_config_server: bool,
}

impl Default for TransConfig {
    /// The defaults of `smem_trans_config_init`.
    fn default() -> Self {
        Self {
            role: Role::Both,
            init_timeout: Duration::from_secs(120),
            device_id: 0,
            flags: 0,
            data_ops: DATA_OP_HOST_TCP | DATA_OP_SDMA,
            start_config_server: false,
        }
    }
}

impl TransConfig {
    fn check(&self, what: &str) -> Result<()> {
        if self.flags != 0 {
            return Err(Error::invalid(format!(
                "{what}: config->flags {:#x} must be 0 (reserved)",
                self.flags
            )));
        }
        smem_core::data_op::BmDataOps::from_c(self.data_ops)
            .map_err(|e| Error::invalid(format!("{what}: config->{e}")))?;
        if self.init_timeout.is_zero() {
            return Err(Error::invalid(format!("{what}: config->initTimeout is 0")));
        }
        Ok(())
    }
}

/// A transfer engine handle (`smem_trans_t`), never 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TransHandle(pub u64);

/// One engine.
#[derive(Debug)]
pub(crate) struct Engine {
    uid: String,
    url: String,
    config: TransConfig,
    host_id: String,
    store: StoreClient,
    node: Arc<Node>,
    local: Arc<Local>,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    queue: Queue,
    /// The store this engine hosts (`startConfigServer`), declared last: it outlives the client.
    server: Mutex<Option<StoreServer>>,
}

struct Global {
    config: Option<TransConfig>,
    engines: Option<HashMap<u64, Arc<Engine>>>,
}

static GLOBAL: RwLock<Global> = RwLock::new(Global {
    config: None,
    engines: None,
});
static NEXT_HANDLE: AtomicU64 = AtomicU64::new(1);

pub(crate) fn engine_key(uid: &str) -> Vec<u8> {
    format!("smem/trans/engine/{uid}").into_bytes()
}

pub(crate) fn regions_key(uid: &str) -> Vec<u8> {
    format!("smem/trans/regions/{uid}").into_bytes()
}

/// `smem_trans_init`: checks and keeps the process-wide settings; engines can be created
/// from now on. Calling it again with the same settings succeeds.
///
/// # Errors
/// `SM_INVALID_PARAM` for bad settings; `SM_REPEAT_CALL` when initialised with others.
pub fn init(config: &TransConfig) -> Result<()> {
    config.check("smem_trans_init")?;
    let mut g = write(&GLOBAL);
    match &g.config {
        Some(c) if c == config => {
            info!("smem_trans_init: already initialised with the same settings");
            Ok(())
        }
        Some(_) => Err(Error::new(
            ErrorCode::RepeatCall,
            "smem_trans_init: already initialised with other settings; call smem_trans_uninit first",
        )),
        None => {
            g.config = Some(config.clone());
            Ok(())
        }
    }
}

/// `smem_trans_uninit`: destroys every engine still alive and forgets the settings.
pub fn uninit() {
    let engines: Vec<Arc<Engine>> = {
        let mut g = write(&GLOBAL);
        g.config = None;
        g.engines
            .take()
            .into_iter()
            .flatten()
            .map(|(_, e)| e)
            .collect()
    };
    for e in engines {
        e.shutdown();
    }
}

fn engine(h: TransHandle) -> Result<Arc<Engine>> {
    read(&GLOBAL).engines.as_ref().and_then(|m| m.get(&h.0)).cloned().ok_or_else(|| {
        Error::new(
            ErrorCode::ObjectNotExists,
            format!(
                "transfer engine handle {:#x} is not live (never created, destroyed, or smem_trans_uninit was called)",
                h.0
            ),
        )
    })
}

/// `smem_trans_create`.
///
/// # Errors
/// `SM_NOT_INITIALIZED` before [`init`]; `SM_INVALID_PARAM` for a bad URL, id or settings;
/// `SM_DUPLICATED_OBJECT` when a live engine has the id; store and transport errors.
pub fn create(url: &str, unique_id: &str, config: &TransConfig) -> Result<TransHandle> {
    let what = "smem_trans_create";
    if read(&GLOBAL).config.is_none() {
        return Err(Error::new(
            ErrorCode::NotInitialized,
            format!("{what}: call smem_trans_init first"),
        ));
    }
    config.check(what)?;
    if !valid_unique_id(unique_id.as_bytes()) {
        return Err(Error::invalid(format!(
            "{what}: uniqueId {unique_id:?} must be 1..=127 printable ASCII bytes"
        )));
    }
    let target = crate::runtime::parse_store_url(what, url)?;
    // On an etcd:// store nobody hosts anything (`hosted_addr` logs that the setting is ignored).
    let hosted = if config.start_config_server {
        crate::runtime::hosted_addr(what, &target)
    } else {
        None
    };
    let server = if let Some(addr) = hosted {
        let s = StoreServer::start(ServerConfig::new(addr)).map_err(|e| {
            e.context(format!(
                "{what}: hosting the config store at {url} (startConfigServer)"
            ))
        })?;
        info!("{what}: hosting the config store at {}", s.local_addr());
        Some(s)
    } else {
        None
    };
    let opts = ClientOptions {
        world_size: None,
        rank: None,
        connect_timeout: config.init_timeout,
        op_timeout: config.init_timeout,
        reconnect: false,
        tls: crate::tls::global(),
    };
    // The transport below uses the same TLS setting as the store link (captured once).
    let tls = opts.tls.clone();
    let store = StoreClient::connect_to(target, opts)
        .map_err(|e| e.context(format!("{what}: connecting to the config store at {url}")))?;
    let ip = store.local_addr().map(|a| a.ip()).ok_or_else(|| {
        Error::new(
            ErrorCode::IoError,
            format!("{what}: the store link has no local address"),
        )
    })?;
    let host_id = crate::mem::host_identity()?;
    let token = fresh_token();
    let node = Node::start(ip, config.init_timeout, tls).map_err(|e| e.context(what))?;
    let local = Arc::new(Local::new(
        unique_id,
        token,
        store.clone(),
        regions_key(unique_id),
    )?);
    node.serve(
        0,
        Arc::downgrade(&local) as std::sync::Weak<dyn crate::transport::Served>,
    );
    let ctrl = local.ctrl().segment().descriptor();
    let rec = EngineRecord {
        unique_id: unique_id.as_bytes(),
        host_id: host_id.as_bytes(),
        role: config.role.raw() as u8,
        data_ops: config.data_ops,
        pid: ctrl.pid,
        token,
        ctrl_fd: ctrl.fd,
        ctrl_inode: ctrl.inode,
        ctrl_addr: local.ctrl().addr(),
        endpoint: node.endpoint(),
    };
    let mut buf = vec![0u8; rec.len()];
    rec.emit(&mut buf)
        .map_err(|e| Error::invalid(format!("{what}: engine record: {e}")))?;
    let engine = Arc::new(Engine {
        uid: unique_id.to_owned(),
        url: url.to_owned(),
        config: config.clone(),
        host_id,
        store,
        node,
        local,
        peers: Mutex::new(HashMap::new()),
        queue: Queue::default(),
        server: Mutex::new(server),
    });
    if let Err(e) = claim(&engine, &buf) {
        engine.local.close();
        let _ = engine.store.remove(&regions_key(unique_id));
        engine.node.shutdown();
        return Err(e.context(what));
    }
    let endpoint = engine.node.endpoint();
    let h = NEXT_HANDLE.fetch_add(1, Ordering::Relaxed);
    write(&GLOBAL)
        .engines
        .get_or_insert_default()
        .insert(h, engine);
    info!("{what}: engine '{unique_id}' serves at {endpoint} (store {url})");
    Ok(TransHandle(h))
}

/// Claims the engine key: free, or held by a dead engine.
fn claim(engine: &Engine, rec: &[u8]) -> Result<()> {
    let key = engine_key(&engine.uid);
    let mut expected: Vec<u8> = b"\0none".to_vec();
    for _ in 0..8 {
        match engine.store.cas(&key, &expected, rec)? {
            CasResult::Swapped => return Ok(()),
            CasResult::Mismatch(cur) => {
                if let Some(who) = live_holder(engine, &cur) {
                    return Err(Error::new(
                        ErrorCode::DuplicatedObject,
                        format!(
                            "an engine named '{}' is already live in the store group at {} ({who}); pick another uniqueId or destroy it",
                            engine.uid, engine.url
                        ),
                    ));
                }
                warn!(
                    "smem_trans_create: replacing the record of a dead engine named '{}'",
                    engine.uid
                );
                expected = cur;
            }
        }
    }
    Err(Error::new(
        ErrorCode::ResourceInUse,
        format!(
            "the record of engine '{}' keeps changing under us; retry",
            engine.uid
        ),
    ))
}

/// Who holds the record `cur`, when that engine is alive.
fn live_holder(engine: &Engine, cur: &[u8]) -> Option<String> {
    let rec = EngineRecord::parse(cur).ok()?;
    if rec.host_id == engine.host_id.as_bytes() {
        peer::near_alive(&rec).then(|| format!("pid {} on this host", rec.pid))
    } else {
        TcpStream::connect_timeout(&rec.endpoint, Duration::from_secs(1))
            .is_ok()
            .then(|| format!("pid {} at {}", rec.pid, rec.endpoint))
    }
}

fn fresh_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() | 1
}

/// `smem_trans_destroy`: withdraws the engine from the group; transfers into it fail from now
/// on. Unknown handles are ignored (logged).
pub fn destroy(h: TransHandle) {
    let e = write(&GLOBAL).engines.as_mut().and_then(|m| m.remove(&h.0));
    match e {
        Some(e) => e.shutdown(),
        None => warn!("smem_trans_destroy: handle {:#x} is not live; ignored", h.0),
    }
}

impl Engine {
    fn shutdown(&self) {
        self.queue.stop();
        self.local.close();
        let _ = self.store.remove(&engine_key(&self.uid));
        let _ = self.store.remove(&regions_key(&self.uid));
        self.node.shutdown();
        self.store.close();
        if let Some(s) = lock(&self.server).take() {
            s.shutdown();
        }
        info!("smem_trans: engine '{}' destroyed", self.uid);
    }

    /// The peer named `uid` (cached, or looked up).
    fn peer(&self, uid: &str) -> Result<Arc<Peer>> {
        if let Some(p) = lock(&self.peers).get(uid) {
            return Ok(Arc::clone(p));
        }
        let p = Arc::new(Peer::lookup(self, uid)?);
        lock(&self.peers).insert(uid.to_owned(), Arc::clone(&p));
        Ok(p)
    }

    /// Forgets `p` (it failed), so the next transfer looks its id up again.
    fn forget(&self, p: &Arc<Peer>) {
        let mut peers = lock(&self.peers);
        if peers.get(&p.uid).is_some_and(|q| Arc::ptr_eq(q, p)) {
            peers.remove(&p.uid);
        }
    }
}

/// `smem_trans_malloc`: page-aligned shared memory of at least `capacity` bytes, registered.
///
/// # Errors
/// Unknown handle; `SM_INVALID_PARAM` for 0; `SM_MALLOC_FAILED`.
pub fn malloc(h: TransHandle, capacity: u64) -> Result<u64> {
    engine(h)?.local.malloc(capacity)
}

/// `smem_trans_free`.
///
/// # Errors
/// Unknown handle; `SM_OBJECT_NOT_EXISTS` for an address `malloc` did not return.
pub fn free(h: TransHandle, addr: u64) -> Result<()> {
    engine(h)?.local.free(addr)
}

/// `smem_trans_register_mem` / `_batch_register_mem`: memory the C caller vouched for until
/// its deregister, all or none.
///
/// # Errors
/// Unknown handle; `SM_INVALID_PARAM` naming the bad entry.
pub fn register(h: TransHandle, ranges: &[RawRange<'static>]) -> Result<()> {
    engine(h)?.local.register(ranges)
}

/// `smem_trans_deregister_mem`.
///
/// # Errors
/// Unknown handle; `SM_OBJECT_NOT_EXISTS` when no registered range starts at `addr`.
pub fn deregister(h: TransHandle, addr: u64) -> Result<()> {
    engine(h)?.local.deregister(addr)
}

/// `smem_trans_write` / `_read` and their batch forms: complete on return.
///
/// # Errors
/// Unknown handle or peer; `SM_INVALID_PARAM` naming the peer and address of a range it did
/// not register; `SM_IO_ERROR` naming a peer that died.
///
/// The entries' local memory is read (`Write`) or written (`Read`) during the call.
pub fn transfer(h: TransHandle, dir: Direction, peer: &str, entries: &[Entry]) -> Result<()> {
    let e = engine(h)?;
    copy::run(&e, dir, peer, entries)
}

/// The `*_submit` forms: queues the transfer; [`wait`] completes it.
///
/// # Errors
/// Unknown handle or peer (looked up before queueing).
///
/// The entries' local memory must stay valid until the calling thread's [`wait`] on `h`
/// returned (the C caller's promise, made with the entries' ranges).
pub fn submit(h: TransHandle, dir: Direction, peer: &str, entries: Vec<Entry>) -> Result<()> {
    let e = engine(h)?;
    e.peer(peer)?;
    e.queue.submit(&e, dir, peer, entries)
}

/// `smem_trans_wait`: every transfer this thread submitted on `h` is done; the first error.
///
/// # Errors
/// Unknown handle; the first error of those transfers.
pub fn wait(h: TransHandle) -> Result<()> {
    let e = engine(h)?;
    e.queue
        .wait(e.config.init_timeout + Duration::from_secs(60))
}
