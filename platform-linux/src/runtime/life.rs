//! The process life cycle shared by the BM and SHM runtimes: the init state and its guard,
//! the store link and hosted store of an initialised runtime, the rank-down watcher, uninit,
//! and fork handler registration.
//!
//! Each runtime keeps one `static STATE: Mutex<State<R>>`, where `R` (a [`Session`]) is what
//! an initialised runtime holds. [`guarded_init`] claims the state for one init at a time and
//! recognises a repeated call with identical arguments; [`take_for_uninit`] and
//! [`finish_uninit`] bracket uninit the same way.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use smem_core::ErrorCode;

use super::rank_list;
use crate::store::{ClientOptions, ServerConfig, StoreClient, StoreServer, StoreTarget};
use crate::sync::{lock, once};
use crate::{Error, Result};

/// The init state of one runtime (BM or SHM).
#[derive(Debug, Default)]
pub(crate) enum State<R> {
    /// Not initialised (also after uninit).
    #[default]
    Uninit,
    /// An init or uninit call is running.
    Busy,
    /// Initialised: what the runtime holds.
    Ready(R),
}

/// What an initialised runtime holds: it remembers the arguments of its init call.
pub(crate) trait Session {
    /// The init call's arguments ([`InitArgs`]).
    type Args: PartialEq;
    /// The arguments the runtime was initialised with.
    fn args(&self) -> &Self::Args;
}

/// The arguments of a successful init call, to recognise an identical second call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InitArgs<C> {
    pub(crate) url: String,
    pub(crate) world_size: u32,
    /// The rank given to the init call itself (SHM); `None` where the config carries it (BM).
    pub(crate) rank: Option<u32>,
    pub(crate) device_id: u16,
    pub(crate) config: C,
}

/// The store side of an initialised runtime: the store it hosts (if any) and the thread
/// that receives the store's rank-down reports.
#[derive(Debug, Default)]
pub(crate) struct Hosting {
    pub(crate) server: Option<StoreServer>,
    pub(crate) rank_down: Option<JoinHandle<()>>,
}

impl Hosting {
    /// Closes `store` (which ends the rank-down watcher), joins the watcher and stops the
    /// hosted store.
    pub(crate) fn end(self, store: &StoreClient) {
        store.close();
        if let Some(t) = self.rank_down {
            let _ = t.join();
        }
        if let Some(s) = self.server {
            s.shutdown();
        }
    }
}

/// The error of a call that needs `api`'s runtime initialised (`api`: `smem_bm` / `smem_shm`).
pub(crate) fn not_initialized(what: &str, api: &str) -> Error {
    Error::new(
        ErrorCode::NotInitialized,
        format!("{what}: {api}_init has not been called (or {api}_uninit was)"),
    )
}

/// Time left until `deadline` (zero once it passed).
pub(crate) fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// The init guard shared by `smem_bm_init` and `smem_shm_init` (`api`: `smem_bm` / `smem_shm`):
/// claims `state` (as `Busy`) when it is uninitialised, succeeds at once when it was
/// initialised with the same `args`, refuses otherwise; then runs `start` with `args` out of
/// the lock and stores its session, or `Uninit` when it failed.
pub(crate) fn guarded_init<R: Session>(
    state: &Mutex<State<R>>,
    api: &str,
    args: R::Args,
    start: impl FnOnce(R::Args) -> Result<R>,
) -> Result<()> {
    let what = format!("{api}_init");
    {
        let mut st = lock(state);
        match &*st {
            State::Uninit => *st = State::Busy,
            State::Ready(r) if *r.args() == args => {
                info!("{what}: already initialised with the same arguments");
                return Ok(());
            }
            State::Busy => {
                return Err(Error::new(
                    ErrorCode::RepeatCall,
                    format!("{what}: another {api}_init or {api}_uninit is running"),
                ));
            }
            State::Ready(_) => {
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
            *st = State::Ready(new);
            Ok(())
        }
        Err(e) => {
            *st = State::Uninit;
            Err(e)
        }
    }
}

/// Uninit, first step: takes the session out of `state`, leaving it `Busy` (`None`: not
/// initialised, or another init / uninit runs). Finish with [`finish_uninit`].
pub(crate) fn take_for_uninit<R>(state: &Mutex<State<R>>) -> Option<R> {
    let mut st = lock(state);
    match std::mem::replace(&mut *st, State::Busy) {
        State::Ready(r) => Some(r),
        other => {
            *st = other;
            None
        }
    }
}

/// Uninit, last step: `state` is uninitialised again.
pub(crate) fn finish_uninit<R>(state: &Mutex<State<R>>, api: &str) {
    *lock(state) = State::Uninit;
    info!("{api}_uninit: done");
}

/// The options of the first store link of an init call.
pub(crate) fn init_options(
    world_size: u32,
    rank: Option<u32>,
    init_timeout: Duration,
    control_timeout: Duration,
) -> ClientOptions {
    ClientOptions {
        world_size: Some(world_size),
        rank,
        connect_timeout: init_timeout,
        op_timeout: control_timeout,
        reconnect: false,
        // `smem_set_ssl_option` (a hosted store server takes it from `ServerConfig::new`).
        tls: crate::tls::global(),
    }
}

/// Connects init call `what` to the config store at `addr`.
pub(crate) fn connect(what: &str, addr: &StoreTarget, opts: ClientOptions) -> Result<StoreClient> {
    StoreClient::connect_to(addr.clone(), opts)
        .map_err(|e| e.context(format!("{what}: connecting to the config store at {addr}")))
}

/// Rank 0 of init call `what` starts the config store at `host`.
pub(crate) fn host_store(what: &str, host: SocketAddr) -> Result<StoreServer> {
    StoreServer::start(ServerConfig::new(host))
        .map_err(|e| e.context(format!("{what}: rank 0 hosts the config store")))
}

/// Starts thread `name`, which calls `on_down` with every rank the store reports down on
/// `rx` until the link closes (`None`: the thread could not start).
pub(crate) fn spawn_rank_down(
    name: &str,
    rx: std::sync::mpsc::Receiver<u32>,
    mut on_down: impl FnMut(u32) + Send + 'static,
) -> Option<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            while let Ok(r) = rx.recv() {
                on_down(r);
            }
        })
        .ok()
}

/// Logs that init call `what` is done.
pub(crate) fn log_ready(what: &str, rank: u32, world_size: u32, addr: &StoreTarget, hosted: bool) {
    info!(
        "{what}: rank {rank} of {world_size} ready (store {addr}{})",
        if hosted { ", hosted here" } else { "" }
    );
}

/// Registers the fork handlers `[prepare, parent, child]` once per process (`once`); when that
/// fails, logs that forking while `busy` may deadlock the child.
pub(crate) fn register_atfork(
    once_: &Once,
    [prepare, parent, child]: [extern "C" fn(); 3],
    busy: &str,
) {
    once(once_, || {
        if let Err(e) = crate::sys::fork::register_atfork(Some(prepare), Some(parent), Some(child))
        {
            warn!("pthread_atfork failed ({e}); forking while {busy} may deadlock the child");
        }
    });
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
    /// The world size (the error at the deadline names the ranks never seen).
    pub(crate) world_size: u32,
    /// The init timeout as configured, and the knob that sets it, for that error.
    pub(crate) timeout: (Duration, &'a str),
}

/// Runs `step` (register this rank, wait for the others) on `store`, surviving a config store
/// that goes away meanwhile: when the link goes down, this rank does not fail at once but
/// connects again to the store URL until the init deadline (the store may come back: a
/// restarted standalone store) and runs `step` again on the new link (registering again). At
/// the deadline it returns an `SM_TIMEOUT` naming the ranks it never saw registered and when
/// the link first went down. `step` collects, across links, the ranks it saw registered.
/// Errors other than a lost link are returned as they are.
pub(crate) fn survive_store_loss(
    w: &InitWait<'_>,
    mut store: StoreClient,
    mut step: impl FnMut(&StoreClient, &mut BTreeSet<u32>) -> Result<()>,
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
            let left = remaining(w.deadline);
            if left.is_zero() {
                return Err(store_gone(w, &seen, at));
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
                    std::thread::sleep(Duration::from_millis(50).min(remaining(w.deadline)));
                }
                Err(e) => return Err(e.context(w.what)),
            }
        };
    }
}

/// The `SM_TIMEOUT` of [`survive_store_loss`] at the deadline: which ranks were never seen,
/// and when the store went away.
fn store_gone(w: &InitWait<'_>, seen: &BTreeSet<u32>, lost_at: Duration) -> Error {
    let world_size = w.world_size;
    let missing: Vec<u32> = (0..world_size).filter(|r| !seen.contains(r)).collect();
    let (timeout, knob) = w.timeout;
    Error::new(
        ErrorCode::Timeout,
        format!(
            "{}: {} of {world_size} ranks were never seen registered: missing rank(s) {}; the config store at {} went away at +{} ms (its host gave up or died) and did not come back; waited {} s; start them (and the store) or raise {knob}",
            w.what,
            missing.len(),
            rank_list(&missing),
            w.addr,
            lost_at.as_millis(),
            timeout.as_secs_f32()
        ),
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
