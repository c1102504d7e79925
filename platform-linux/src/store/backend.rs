//! The store-client seam: [`StoreClient`] is one type over the TCP client ([`TcpClient`],
//! SPEC 5) and the etcd backend ([`EtcdClient`], SPEC 6.4), chosen by the URL's scheme
//! ([`StoreTarget`]); the runtime calls the same methods on either.

use std::fmt;
use std::net::SocketAddr;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use smem_core::url::{AnyStoreUrl, UrlError};

use super::client::{CasResult, ClientOptions, Posted, TcpClient};
use super::etcd::EtcdClient;
use crate::Result;

/// Where the config store is: a store URL, parsed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StoreTarget {
    /// `tcp://`: a rank-hosted store or `smem-store`.
    Tcp(SocketAddr),
    /// `etcd://`: an etcd v3 cluster.
    Etcd(EtcdTarget),
}

/// The endpoints and key prefix of an `etcd://` URL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EtcdTarget {
    /// `host:port` (`[v6]:port`) of each member, in URL order.
    pub endpoints: Vec<String>,
    /// The key prefix, with its leading `/` (`/smem/` by default).
    pub prefix: String,
}

impl EtcdTarget {
    /// The prefix as key bytes, ending with `/`.
    pub fn key_prefix(&self) -> Vec<u8> {
        let mut p = self.prefix.clone().into_bytes();
        if !p.ends_with(b"/") {
            p.push(b'/');
        }
        p
    }
}

impl fmt::Display for EtcdTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "etcd://{}{}", self.endpoints.join(","), self.prefix)
    }
}

impl StoreTarget {
    /// Parses a store URL of either scheme (see [`smem_core::url`]).
    ///
    /// # Errors
    /// The [`UrlError`] saying which part is wrong.
    pub fn parse(url: &str) -> std::result::Result<Self, UrlError> {
        Ok(match AnyStoreUrl::parse(url)? {
            AnyStoreUrl::Tcp(u) => Self::Tcp(u.addr),
            AnyStoreUrl::Etcd(u) => Self::Etcd(EtcdTarget {
                endpoints: u.endpoints().map(|e| e.to_string()).collect(),
                prefix: u.prefix().to_owned(),
            }),
        })
    }

    /// The address of a `tcp://` store (`None` for etcd).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(a) => Some(*a),
            Self::Etcd(_) => None,
        }
    }
}

impl From<SocketAddr> for StoreTarget {
    fn from(a: SocketAddr) -> Self {
        Self::Tcp(a)
    }
}

impl From<EtcdTarget> for StoreTarget {
    fn from(t: EtcdTarget) -> Self {
        Self::Etcd(t)
    }
}

impl fmt::Display for StoreTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "tcp://{a}"),
            Self::Etcd(t) => t.fmt(f),
        }
    }
}

/// A config store client over either backend. Cheap to clone, `Send + Sync`; see
/// [`TcpClient`] and [`EtcdClient`] for what each does underneath.
#[derive(Clone)]
pub struct StoreClient(Backend);

#[derive(Clone)]
enum Backend {
    Tcp(TcpClient),
    Etcd(EtcdClient),
}

impl fmt::Debug for StoreClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Backend::Tcp(c) => c.fmt(f),
            Backend::Etcd(c) => f
                .debug_struct("StoreClient")
                .field("etcd", &c.target().to_string())
                .field("connected", &c.is_connected())
                .finish(),
        }
    }
}

/// Calls the method of whichever backend.
macro_rules! both {
    ($self:ident, $c:ident => $e:expr) => {
        match &$self.0 {
            Backend::Tcp($c) => $e,
            Backend::Etcd($c) => $e,
        }
    };
}

impl StoreClient {
    /// Connects to the `tcp://` store at `addr` (as [`TcpClient::connect`]).
    ///
    /// # Errors
    /// As [`TcpClient::connect`].
    pub fn connect(addr: SocketAddr, opts: ClientOptions) -> Result<Self> {
        TcpClient::connect(addr, opts).map(|c| Self(Backend::Tcp(c)))
    }

    /// Connects to the store at `target` (a `tcp://` address or an `etcd://` cluster).
    ///
    /// # Errors
    /// As [`TcpClient::connect`] / [`EtcdClient::connect`].
    pub fn connect_to(target: StoreTarget, opts: ClientOptions) -> Result<Self> {
        Ok(Self(match target {
            StoreTarget::Tcp(a) => Backend::Tcp(TcpClient::connect(a, opts)?),
            StoreTarget::Etcd(t) => Backend::Etcd(EtcdClient::connect(t, opts)?),
        }))
    }

    /// The TCP client underneath, if this is one.
    pub fn as_tcp(&self) -> Option<&TcpClient> {
        match &self.0 {
            Backend::Tcp(c) => Some(c),
            Backend::Etcd(_) => None,
        }
    }

    /// Whether this is the etcd backend.
    pub fn is_etcd(&self) -> bool {
        matches!(self.0, Backend::Etcd(_))
    }

    /// Store `value` under `key`.
    ///
    /// # Errors
    /// Link, timeout, or store refusal (e.g. over a limit).
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        both!(self, c => c.set(key, value))
    }

    /// Sends `op` without waiting for the store's answer where the backend can (TCP: its
    /// effect is in place before that of any later request of this client; a refusal goes
    /// unseen); etcd runs it to completion.
    ///
    /// # Errors
    /// Link errors (TCP); any error of the op (etcd).
    pub fn post(&self, op: Posted<'_>) -> Result<()> {
        match &self.0 {
            Backend::Tcp(c) => c.post(op),
            Backend::Etcd(c) => match op {
                Posted::Set(k, v) => c.set(k, v),
                Posted::Append(k, v) => c.append(k, v).map(drop),
                Posted::Remove(k) => c.remove(k).map(drop),
            },
        }
    }

    /// The value of `key`, `None` if absent.
    ///
    /// # Errors
    /// Link, timeout, or store refusal.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        both!(self, c => c.get(key))
    }

    /// Wait until `key` exists (parked GET), up to `timeout`.
    ///
    /// # Errors
    /// `SM_TIMEOUT` naming the key when it did not appear in time; link errors.
    pub fn wait_get(&self, key: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        both!(self, c => c.wait_get(key, timeout))
    }

    /// Add `delta` to the decimal integer at `key` (absent = 0); returns the new value.
    ///
    /// # Errors
    /// `SM_STORE_REJECTED` when the stored value is not a number or the sum overflows.
    pub fn add(&self, key: &[u8], delta: i64) -> Result<i64> {
        both!(self, c => c.add(key, delta))
    }

    /// Delete `key`; `false` if it did not exist.
    ///
    /// # Errors
    /// Link, timeout, or store refusal.
    pub fn remove(&self, key: &[u8]) -> Result<bool> {
        both!(self, c => c.remove(key))
    }

    /// Append `value` to `key` (created if absent); returns the new length.
    ///
    /// # Errors
    /// Link, timeout, or store refusal.
    pub fn append(&self, key: &[u8], value: &[u8]) -> Result<u64> {
        both!(self, c => c.append(key, value))
    }

    /// Compare and swap: set `new` if `key` is absent or holds `expected`.
    ///
    /// # Errors
    /// Link, timeout, or store refusal.
    pub fn cas(&self, key: &[u8], expected: &[u8], new: &[u8]) -> Result<CasResult> {
        both!(self, c => c.cas(key, expected, new))
    }

    /// Write `data` at `offset` of `key` (created / extended with zeros).
    ///
    /// # Errors
    /// Link, timeout, or store refusal.
    pub fn write(&self, key: &[u8], offset: u32, data: &[u8]) -> Result<()> {
        both!(self, c => c.write(key, offset, data))
    }

    /// Every `(key, value)` whose key starts with `prefix` (unordered).
    ///
    /// # Errors
    /// Link, timeout, or store refusal.
    pub fn prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        both!(self, c => c.prefix(prefix))
    }

    /// Whether a live link (etcd: a live lease) holds `rank`.
    ///
    /// # Errors
    /// Link, timeout, or store refusal.
    pub fn query_alive(&self, rank: u32) -> Result<bool> {
        both!(self, c => c.query_alive(rank))
    }

    /// For each of `ranks`, whether a live link holds it (TCP: the requests sent at once,
    /// one round trip; etcd: one lookup each).
    ///
    /// # Errors
    /// Link, timeout, or store refusal.
    pub fn query_alive_each(&self, ranks: &[u32]) -> Result<Vec<bool>> {
        match &self.0 {
            Backend::Tcp(c) => c.query_alive_each(ranks),
            Backend::Etcd(c) => ranks.iter().map(|&r| c.query_alive(r)).collect(),
        }
    }

    /// A rank assigned by the store (AutoRanking); this client then holds it.
    ///
    /// # Errors
    /// `SM_LIMIT_EXCEEDED` when every rank is taken (or no world size is known).
    pub fn auto_rank(&self, key_suffix: &[u8]) -> Result<u32> {
        both!(self, c => c.auto_rank(key_suffix))
    }

    /// Watch `key`: the receiver gets the current value (if any) and what every later wake
    /// carries (the appended piece after APPEND).
    ///
    /// # Errors
    /// Link errors.
    pub fn watch(&self, key: &[u8]) -> Result<Receiver<Vec<u8>>> {
        both!(self, c => c.watch(key))
    }

    /// Stop watching `key` (its receiver disconnects).
    ///
    /// # Errors
    /// Link errors.
    pub fn unwatch(&self, key: &[u8]) -> Result<()> {
        both!(self, c => c.unwatch(key))
    }

    /// Be told the rank of every ranked client that goes down.
    ///
    /// # Errors
    /// Link errors.
    pub fn watch_rank_down(&self) -> Result<Receiver<u32>> {
        both!(self, c => c.watch_rank_down())
    }

    /// Whether the client is usable (TCP: the link is up; etcd: not closed, lease alive).
    pub fn is_connected(&self) -> bool {
        both!(self, c => c.is_connected())
    }

    /// Close; pending operations fail with `SM_IO_ERROR`, watch receivers disconnect.
    pub fn close(&self) {
        both!(self, c => c.close())
    }

    /// The per-operation timeout.
    pub fn op_timeout(&self) -> Duration {
        both!(self, c => c.op_timeout())
    }

    /// The address this process reaches the store from (the network transport binds its
    /// listener there). `None` when the link is down.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        both!(self, c => c.local_addr())
    }

    /// Where the store is.
    pub fn target(&self) -> StoreTarget {
        match &self.0 {
            Backend::Tcp(c) => StoreTarget::Tcp(c.addr()),
            Backend::Etcd(c) => StoreTarget::Etcd(c.target().clone()),
        }
    }
}
