//! The config store on an etcd v3 cluster (SPEC 6.4): the operations of SPEC 5 on etcd KV,
//! Txn, Watch and Lease, behind the same methods as the TCP client.
//!
//! # Keys
//! Everything lives under the URL's prefix `P` (default `/smem/`; a `/` is added when the
//! prefix does not end with one):
//! - `P gen`: the job *generation* `N` (decimal). A job's keys live under `NS = P N/`, so the
//!   keys of an earlier job under the same prefix never mix with a new job's.
//! - `NS s/<lease>`: one *session* key per client, attached to its lease.
//! - `NS r/<rank>`: the rank held by a client (value: its lease, hex), attached to its lease.
//! - `NS ws`: the world size fixed by the first client that gave one; `NS ar`: the
//!   AutoRanking cursor.
//! - `NS d/<key>`: the data. The stored value is `u32 LE wake length ‖ bytes`: a watcher is
//!   sent the last `wake length` bytes (the whole value after SET/ADD/CAS, the appended piece
//!   after APPEND; `u32::MAX` = no wake, after WRITE), as SPEC 5.4 says of each op.
//! - `NS o/<lease>/<n>`: a marker put in the same transaction as a read-modify-write op
//!   (ADD, APPEND, CAS, WRITE), so a retry after a reply lost in a failover can tell whether
//!   the first attempt committed (nothing applied twice); removed after the op.
//!
//! # Lifetime (SPEC 5.6 on leases)
//! Every client holds a lease (TTL [`lease_ttl`], kept alive every third of it). A client
//! joins generation `N` when `NS s/` holds a live session (a transaction that checks `P gen`
//! did not move); when it holds none (every client of the earlier job is gone: closed, or
//! dead and its lease expired), the client starts generation `N+1` in one transaction that
//! checks `NS s/` is still empty and deletes `NS` (the "wipe"). Unlike the TCP store, a
//! client without a rank also keeps the job's data alive. A dead rank's lease expiry deletes
//! its `r/` key: that deletion is the rank-down notice ([`EtcdClient::watch_rank_down`]).
//!
//! # Failover
//! Requests go over one gRPC channel balanced over every endpoint of the URL. Each attempt
//! is bounded (at most [`ATTEMPT_TIMEOUT`]) and retried, on whichever endpoint answers, until
//! the operation's deadline when it failed for a transient reason (member down, no leader,
//! leader changed, timeout). Watches re-open from the last revision they delivered.

mod ops;
mod watch;

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use log::{debug, info, warn};
use smem_core::ErrorCode;
use tokio::runtime::Runtime;

use super::ClientOptions;
use super::backend::EtcdTarget;
use crate::sync::lock;
use crate::{Error, Result};

pub use ops::NO_WAKE;

/// Bound on one attempt of a request; a failed or slow attempt is retried until the
/// operation's deadline.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Env var with the lease TTL in seconds (default 5, at least 2).
pub const LEASE_TTL_ENV: &str = "SMEM_ETCD_LEASE_TTL_S";

/// The lease TTL: `SMEM_ETCD_LEASE_TTL_S` or 5 s.
pub fn lease_ttl() -> i64 {
    std::env::var(LEASE_TTL_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .map_or(5, |s| s.clamp(2, 3600))
}

/// A client of the config store on etcd. Cheap to clone; every clone shares one connection
/// (to all endpoints), one lease and one background runtime; closed when the last clone is
/// dropped or on [`EtcdClient::close`].
#[derive(Clone)]
pub struct EtcdClient {
    inner: Arc<Handle>,
}

struct Handle {
    s: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.s.close();
    }
}

/// State shared with the background tasks.
pub(crate) struct Shared {
    pub(crate) target: EtcdTarget,
    pub(crate) opts: ClientOptions,
    pub(crate) client: Client,
    /// `P N/` of this client's generation.
    pub(crate) ns: Vec<u8>,
    pub(crate) lease: i64,
    rt: Mutex<Option<Runtime>>,
    pub(crate) handle: tokio::runtime::Handle,
    closed: AtomicBool,
    /// Set when the lease expired (keep-alive answered TTL 0): this client's rank is gone.
    lost: AtomicBool,
    rank: Mutex<Option<u32>>,
    next_marker: AtomicU64,
    pub(crate) watches: Mutex<watch::Registry>,
}

/// Whether an etcd error may go away on another attempt (another endpoint, a new leader).
fn transient(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => !matches!(
            s.code(),
            Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::ResourceExhausted
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::Unimplemented
                | Code::AlreadyExists
                | Code::NotFound
        ),
        etcd_client::Error::InvalidArgs(_)
        | etcd_client::Error::InvalidUri(_)
        | etcd_client::Error::Utf8Error(_)
        | etcd_client::Error::InvalidMetadataValue(_) => false,
        _ => true,
    }
}

/// `key` for messages.
pub(crate) fn show(key: &[u8]) -> String {
    let s = String::from_utf8_lossy(&key[..key.len().min(64)]).into_owned();
    if key.len() > 64 {
        format!("{s:?}...")
    } else {
        format!("{s:?}")
    }
}

fn cat(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(a.len() + b.len());
    v.extend_from_slice(a);
    v.extend_from_slice(b);
    v
}

fn parse_dec<T: std::str::FromStr>(v: &[u8]) -> Option<T> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

impl Shared {
    /// `NS` + `rest`.
    pub(crate) fn key(&self, rest: &[u8]) -> Vec<u8> {
        cat(&self.ns, rest)
    }

    /// The data key of user key `k`.
    pub(crate) fn data_key(&self, k: &[u8]) -> Vec<u8> {
        let mut v = self.key(b"d/");
        v.extend_from_slice(k);
        v
    }

    fn rank_key(&self, rank: u32) -> Vec<u8> {
        self.key(format!("r/{rank}").as_bytes())
    }

    fn lease_hex(&self) -> String {
        format!("{:x}", self.lease)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Runs `attempt` on the runtime until it succeeds, fails for good, or `deadline` passes
    /// (each try bounded by [`ATTEMPT_TIMEOUT`]). `what` names the operation in errors.
    pub(crate) fn run<T, F, Fut>(&self, what: &str, deadline: Instant, attempt: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        if self.is_closed() {
            return Err(self.closed_error(what));
        }
        if self.lost.load(Ordering::SeqCst) {
            return Err(self.lost_error(what));
        }
        self.handle
            .block_on(retry(&self.client, &self.target, what, deadline, attempt))
    }

    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.opts.op_timeout
    }

    fn closed_error(&self, what: &str) -> Error {
        Error::new(
            ErrorCode::IoError,
            format!(
                "{what}: the etcd store client for {} was closed",
                self.target
            ),
        )
    }

    fn lost_error(&self, what: &str) -> Error {
        Error::new(
            ErrorCode::IoError,
            format!(
                "{what}: this process' lease on the etcd store {} expired (it could not reach the cluster for the lease TTL); its rank is gone, start again",
                self.target
            ),
        )
    }

    pub(crate) fn marker(&self) -> Vec<u8> {
        let n = self.next_marker.fetch_add(1, Ordering::Relaxed);
        self.key(format!("o/{}/{n}", self.lease_hex()).as_bytes())
    }

    fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        watch::cancel_all(self);
        // Revoke the lease: the session and rank keys go now (others see this rank go down
        // at once instead of after the TTL). Bounded: a cluster that is gone is not waited for.
        let mut lease = self.client.lease_client();
        let id = self.lease;
        let revoked = self.handle.block_on(async move {
            tokio::time::timeout(Duration::from_secs(2), lease.revoke(id)).await
        });
        if !matches!(revoked, Ok(Ok(_))) {
            debug!(
                "etcd store {}: lease {id:x} not revoked at close (it expires by itself)",
                self.target
            );
        }
        let rt = lock(&self.rt).take();
        if let Some(rt) = rt {
            rt.shutdown_background();
        }
    }
}

/// The retry loop of [`Shared::run`].
async fn retry<T, F, Fut>(
    client: &Client,
    target: &EtcdTarget,
    what: &str,
    deadline: Instant,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let started = Instant::now();
    let mut tries = 0u32;
    let mut last = String::from("no attempt finished");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() && tries > 0 {
            return Err(Error::new(
                ErrorCode::Timeout,
                format!(
                    "{what} on the etcd store {target} did not succeed within {} ms ({tries} attempts; last: {last}); is a majority of the cluster up?",
                    started.elapsed().as_millis()
                ),
            ));
        }
        tries += 1;
        match tokio::time::timeout(left.min(ATTEMPT_TIMEOUT), attempt(client.clone())).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if !transient(&e) => {
                return Err(Error::new(
                    ErrorCode::StoreRejected,
                    format!("{what} refused by the etcd store {target}: {e}"),
                ));
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("attempt timed out after {} ms", ATTEMPT_TIMEOUT.as_millis()),
        }
        if tries > 1 {
            debug!("{what} on {target}: attempt {tries} failed: {last}");
        }
        let pause = Duration::from_millis(if tries < 3 { 20 } else { 100 });
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

impl EtcdClient {
    /// Connects to the cluster of `target`: grants this client's lease, joins the job's
    /// generation (or starts a new one, see the module docs), fixes or checks the world size
    /// and claims `opts.rank`, all within `opts.connect_timeout`.
    ///
    /// # Errors
    /// `SM_TIMEOUT` when the cluster did not answer in time; `SM_INVALID_PARAM` for a world
    /// size other than the job's; `SM_STORE_REJECTED` when the rank is held by a live client.
    pub fn connect(target: EtcdTarget, opts: ClientOptions) -> Result<Self> {
        let deadline = Instant::now() + opts.connect_timeout;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("smem-etcd")
            .enable_all()
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorCode::IoError,
                    format!("cannot start the etcd client runtime: {e}"),
                )
            })?;
        let handle = rt.handle().clone();
        let mut copts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            // etcd answers pings more often than its `--grpc-keepalive-min-time` (5 s by
            // default) with GOAWAY `too_many_pings`, failing every call on that connection (seen
            // at 256 ranks in `benches/scale.rs`); a killed member is still seen at once (RST).
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_require_leader(true);
        if let Some(tls) = &opts.tls {
            copts = copts.with_tls(crate::tls::etcd_tls(tls)?);
        }
        let endpoints = target.endpoints.clone();
        let client = handle
            .block_on(Client::connect(endpoints, Some(copts)))
            .map_err(|e| {
                Error::invalid(format!(
                    "etcd store {target}: cannot set up the client: {e}"
                ))
            })?;
        let ttl = lease_ttl();
        let what = "granting this process' lease";
        let lease = handle.block_on(retry(
            &client,
            &target,
            what,
            deadline,
            |mut c| async move { c.lease_grant(ttl, None).await },
        ))?;
        let lease = lease.id();
        let prefix = target.key_prefix();
        let ns = handle.block_on(join_generation(&client, &target, &prefix, lease, deadline))?;
        let s = Arc::new(Shared {
            target,
            opts,
            client,
            ns,
            lease,
            rt: Mutex::new(Some(rt)),
            handle,
            closed: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            rank: Mutex::new(None),
            next_marker: AtomicU64::new(0),
            watches: Mutex::new(watch::Registry::default()),
        });
        let me = Self {
            inner: Arc::new(Handle { s: Arc::clone(&s) }),
        };
        s.handle.spawn(keep_alive(Arc::downgrade(&s), ttl));
        if let Some(ws) = s.opts.world_size {
            me.check_world_size(ws, deadline)?;
        }
        if let Some(rank) = s.opts.rank {
            me.claim_rank(rank, deadline)?;
        }
        debug!(
            "etcd store {}: connected (lease {:x}, namespace {})",
            s.target,
            s.lease,
            show(&s.ns)
        );
        Ok(me)
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.s
    }

    /// Fixes the job's world size (first client) or checks ours against it.
    fn check_world_size(&self, ws: u32, deadline: Instant) -> Result<()> {
        let s = self.shared();
        let key = s.key(b"ws");
        let val = ws.to_string();
        let k = key.clone();
        let resp = s.run("fixing the world size", deadline, |mut c| {
            let (k, val) = (k.clone(), val.clone());
            async move {
                c.txn(
                    Txn::new()
                        .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(k.clone(), val, None)])
                        .or_else([TxnOp::get(k, None)]),
                )
                .await
            }
        })?;
        if resp.succeeded() {
            return Ok(());
        }
        let theirs = first_value(&resp.op_responses());
        if theirs.as_deref() == Some(val.as_bytes()) {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "etcd store {}: worldSize {ws} differs from the job's ({}); give every rank the same worldSize",
            s.target,
            String::from_utf8_lossy(theirs.as_deref().unwrap_or_default())
        )))
    }

    /// Claims `rank` for this client's lease.
    fn claim_rank(&self, rank: u32, deadline: Instant) -> Result<()> {
        let s = self.shared();
        let key = s.rank_key(rank);
        let me = s.lease_hex();
        let lease = s.lease;
        let resp = s.run("claiming a rank", deadline, |mut c| {
            let (k, me) = (key.clone(), me.clone());
            async move {
                c.txn(
                    Txn::new()
                        .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(
                            k.clone(),
                            me,
                            Some(PutOptions::new().with_lease(lease)),
                        )])
                        .or_else([TxnOp::get(k, None)]),
                )
                .await
            }
        })?;
        // Our own earlier attempt (a reply lost in a failover) holds it: ours.
        if resp.succeeded() || first_value(&resp.op_responses()).as_deref() == Some(me.as_bytes()) {
            *lock(&s.rank) = Some(rank);
            return Ok(());
        }
        Err(Error::new(
            ErrorCode::StoreRejected,
            format!(
                "etcd store {}: rank {rank} is held by another live process (its lease has not expired); wait up to {} s for a dead one's lease to expire",
                s.target,
                lease_ttl()
            ),
        ))
    }

    /// A rank assigned by the store (AutoRanking, SPEC 5.6): the rank this client holds, else
    /// the first free one at/after a forward-only cursor (mod world size).
    ///
    /// # Errors
    /// `SM_LIMIT_EXCEEDED` when every rank is taken or no world size is known.
    pub fn auto_rank(&self, _key_suffix: &[u8]) -> Result<u32> {
        let s = self.shared();
        if let Some(r) = *lock(&s.rank) {
            return Ok(r);
        }
        let deadline = s.deadline();
        let ws_key = s.key(b"ws");
        let ar_key = s.key(b"ar");
        let r_prefix = s.key(b"r/");
        let me = s.lease_hex();
        let lease = s.lease;
        let rank = s.run("AutoRanking", deadline, |mut c| {
            let (ws_key, ar_key, r_prefix, me) =
                (ws_key.clone(), ar_key.clone(), r_prefix.clone(), me.clone());
            async move {
                loop {
                    let resp = c
                        .txn(Txn::new().and_then([
                            TxnOp::get(ws_key.clone(), None),
                            TxnOp::get(ar_key.clone(), None),
                            TxnOp::get(r_prefix.clone(), Some(GetOptions::new().with_prefix())),
                        ]))
                        .await?;
                    let ops = resp.op_responses();
                    let gets: Vec<&etcd_client::GetResponse> = ops
                        .iter()
                        .filter_map(|o| match o {
                            TxnOpResponse::Get(g) => Some(g),
                            _ => None,
                        })
                        .collect();
                    let [ws, ar, ranks] = gets[..] else {
                        return Err(etcd_client::Error::Internal("short txn reply".into()));
                    };
                    let Some(ws) = ws.kvs().first().and_then(|kv| parse_dec::<u32>(kv.value()))
                    else {
                        return Ok(None);
                    };
                    let mut taken = vec![false; ws as usize];
                    for kv in ranks.kvs() {
                        let Some(r) = parse_dec::<u32>(&kv.key()[r_prefix.len()..]) else {
                            continue;
                        };
                        if kv.value() == me.as_bytes() {
                            return Ok(Some(r));
                        }
                        if let Some(t) = taken.get_mut(r as usize) {
                            *t = true;
                        }
                    }
                    let (cursor, ar_rev) = ar.kvs().first().map_or((0, 0), |kv| {
                        (parse_dec::<u32>(kv.value()).unwrap_or(0), kv.mod_revision())
                    });
                    let Some(r) = (0..ws)
                        .map(|i| (cursor % ws + i) % ws)
                        .find(|&r| !taken[r as usize])
                    else {
                        return Ok(None);
                    };
                    let rk = cat(&r_prefix, r.to_string().as_bytes());
                    let won = c
                        .txn(
                            Txn::new()
                                .when([
                                    Compare::create_revision(rk.clone(), CompareOp::Equal, 0),
                                    Compare::mod_revision(ar_key.clone(), CompareOp::Equal, ar_rev),
                                ])
                                .and_then([
                                    TxnOp::put(
                                        rk,
                                        me.clone(),
                                        Some(PutOptions::new().with_lease(lease)),
                                    ),
                                    TxnOp::put(ar_key.clone(), ((r + 1) % ws).to_string(), None),
                                ]),
                        )
                        .await?;
                    if won.succeeded() {
                        return Ok(Some(r));
                    }
                }
            }
        })?;
        let rank = rank.ok_or_else(|| {
            Error::new(
                ErrorCode::LimitExceeded,
                format!(
                    "etcd store {}: cannot assign a rank: every rank of the world is taken or no world size was given",
                    s.target
                ),
            )
        })?;
        *lock(&s.rank) = Some(rank);
        Ok(rank)
    }

    /// Whether a live client holds `rank`.
    ///
    /// # Errors
    /// The cluster did not answer within the op timeout.
    pub fn query_alive(&self, rank: u32) -> Result<bool> {
        let s = self.shared();
        let k = s.rank_key(rank);
        let r = s.run("QUERY_ALIVE", s.deadline(), |mut c| {
            let k = k.clone();
            async move { c.get(k, Some(GetOptions::new().with_count_only())).await }
        })?;
        Ok(r.count() > 0)
    }

    /// Whether the client is usable: not closed, lease not expired.
    pub fn is_connected(&self) -> bool {
        let s = self.shared();
        !s.is_closed() && !s.lost.load(Ordering::SeqCst)
    }

    /// Close: revoke the lease (this client's rank goes down at once), end the watches (their
    /// receivers disconnect) and the background runtime.
    pub fn close(&self) {
        self.shared().close();
    }

    /// The per-operation timeout.
    pub fn op_timeout(&self) -> Duration {
        self.shared().opts.op_timeout
    }

    /// The URL's endpoints and prefix.
    pub fn target(&self) -> &EtcdTarget {
        &self.shared().target
    }

    /// The local address this process reaches the first reachable endpoint from (the network
    /// transport binds its listener there). `None` when no endpoint resolves.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared().target.endpoints.iter().find_map(|ep| {
            let peer = ep.to_socket_addrs().ok()?.next()?;
            let any: SocketAddr = if peer.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            // A connected UDP socket sends nothing; the kernel picks the route's source.
            let sock = UdpSocket::bind(any).ok()?;
            sock.connect(peer).ok()?;
            sock.local_addr().ok()
        })
    }
}

/// The first value of the first GET in a transaction's responses.
fn first_value(ops: &[TxnOpResponse]) -> Option<Vec<u8>> {
    ops.iter().find_map(|o| match o {
        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
        _ => None,
    })
}

/// Joins the job generation under `prefix` or starts a new one (see the module docs);
/// returns the namespace `prefix N/`.
async fn join_generation(
    client: &Client,
    target: &EtcdTarget,
    prefix: &[u8],
    lease: i64,
    deadline: Instant,
) -> Result<Vec<u8>> {
    let gen_key = cat(prefix, b"gen");
    let session = |ns: &[u8]| cat(ns, format!("s/{lease:x}").as_bytes());
    let ns_of = |n: u64| cat(prefix, format!("{n}/").as_bytes());
    retry(client, target, "joining the job on the etcd store", deadline, |mut c| {
        let gen_key = gen_key.clone();
        async move {
            loop {
                let g = c.get(gen_key.clone(), None).await?;
                let (n, rev) = g.kvs().first().map_or((0, 0), |kv| {
                    (parse_dec::<u64>(kv.value()).unwrap_or(0), kv.mod_revision())
                });
                let ns = ns_of(n);
                let sessions = cat(&ns, b"s/");
                let put_session =
                    |ns: &[u8]| TxnOp::put(session(ns), "", Some(PutOptions::new().with_lease(lease)));
                if n > 0 {
                    // Join the live job: only while the generation did not move.
                    let live = c
                        .get(sessions.clone(), Some(GetOptions::new().with_prefix().with_count_only()))
                        .await?;
                    if live.count() > 0 {
                        let r = c
                            .txn(
                                Txn::new()
                                    .when([Compare::mod_revision(gen_key.clone(), CompareOp::Equal, rev)])
                                    .and_then([put_session(&ns)]),
                            )
                            .await?;
                        if r.succeeded() {
                            return Ok(ns);
                        }
                        continue;
                    }
                }
                // No live session: start generation n+1, wiping generation n.
                let next = ns_of(n + 1);
                let mut when = vec![Compare::mod_revision(gen_key.clone(), CompareOp::Equal, rev)];
                let mut then = vec![
                    TxnOp::put(gen_key.clone(), (n + 1).to_string(), None),
                    put_session(&next),
                ];
                if n > 0 {
                    when.push(Compare::create_revision(sessions, CompareOp::Equal, 0).with_prefix());
                    then.push(TxnOp::delete(ns.clone(), Some(etcd_client::DeleteOptions::new().with_prefix())));
                }
                let r = c.txn(Txn::new().when(when).and_then(then)).await?;
                if r.succeeded() {
                    if n > 0 {
                        info!(
                            "etcd store {target}: generation {n} had no live client left: starting generation {} (its keys wiped)",
                            n + 1
                        );
                    }
                    return Ok(next);
                }
            }
        }
    })
    .await
}

/// Keeps the lease alive every third of its TTL; re-opens the keep-alive stream after an
/// error; marks the client lost when the cluster says the lease expired.
async fn keep_alive(s: std::sync::Weak<Shared>, ttl: i64) {
    let every = Duration::from_millis(u64::try_from(ttl).unwrap_or(5) * 1000 / 3);
    'reopen: loop {
        let Some(sh) = s.upgrade() else { return };
        if sh.is_closed() {
            return;
        }
        let mut lc = sh.client.lease_client();
        let id = sh.lease;
        let target = sh.target.to_string();
        drop(sh);
        let (mut keeper, mut stream) = match lc.keep_alive(id).await {
            Ok(p) => p,
            Err(e) => {
                debug!("etcd store {target}: lease keep-alive: {e}; again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let sent = tokio::time::timeout(ATTEMPT_TIMEOUT, async {
                keeper.keep_alive().await?;
                stream.message().await
            })
            .await;
            match sent {
                Ok(Ok(Some(r))) if r.ttl() <= 0 => {
                    if let Some(sh) = s.upgrade() {
                        if !sh.is_closed() {
                            warn!(
                                "etcd store {target}: lease {id:x} expired: this process' rank and session are gone"
                            );
                            sh.lost.store(true, Ordering::SeqCst);
                            watch::cancel_all(&sh);
                        }
                    }
                    return;
                }
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                    debug!("etcd store {target}: lease keep-alive stream broke; re-opening");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'reopen;
                }
            }
            tokio::time::sleep(every).await;
            match s.upgrade() {
                Some(sh) if !sh.is_closed() => {}
                _ => return,
            }
        }
    }
}
