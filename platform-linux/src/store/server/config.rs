//! The store server's configuration: limits, listen address, heartbeat and handshake
//! deadlines, TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use log::warn;
use smem_core::store::StoreLimits;

use crate::store::HEARTBEAT_ENV;
use crate::tls::LoadedTls;

/// Configurable limits. Over a limit a request gets `-400` with a reason (or, for links, the
/// handshake gets `-1`); the server keeps serving the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Links open at once (handshaken or not). Reference: 2048.
    pub max_links: usize,
    /// Largest frame body accepted (at most 64 MiB).
    pub max_body_len: u32,
    /// Most keys (and most values) in one message (at most 1024).
    pub max_keys: usize,
    /// Longest key (at most 2048).
    pub max_key_len: usize,
    /// Largest stored value, after APPEND/WRITE growth too.
    pub max_value_len: usize,
    /// Total bytes of keys and values stored.
    pub max_total_bytes: u64,
    /// Bytes of replies queued for one link that does not read; over it the link is closed.
    pub max_write_queue: usize,
    /// Parked GETs plus watches per link.
    pub max_waiters_per_link: usize,
    /// Bytes reserved, over all links, for request bodies larger than 64 KiB that are still
    /// arriving. A link whose next body does not fit waits (it is not read) until others
    /// complete; small requests are never held back. A body larger than this is refused.
    pub max_input_bytes: u64,
}

impl Limits {
    /// The limits the store's op semantics enforce.
    pub(super) fn store(&self) -> StoreLimits {
        StoreLimits {
            max_body_len: self.max_body_len,
            max_keys: self.max_keys,
            max_key_len: self.max_key_len,
            max_value_len: self.max_value_len,
            max_total_bytes: self.max_total_bytes,
            max_waiters_per_link: self.max_waiters_per_link,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_links: 2048,
            max_body_len: smem_core::wire::MAX_BODY_LEN,
            max_keys: 1024,
            max_key_len: 2048,
            max_value_len: 64 << 20,
            max_total_bytes: 4 << 30,
            max_write_queue: 256 << 20,
            max_waiters_per_link: 65_536,
            max_input_bytes: 1 << 30,
        }
    }
}

/// Server configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on (port 0 = any free port; read it back with
    /// [`super::StoreServer::local_addr`]).
    pub listen: SocketAddr,
    /// Limits.
    pub limits: Limits,
    /// A link that sent one HEARTBEAT and then none for this long is closed; `None` = off.
    pub heartbeat_timeout: Option<Duration>,
    /// How often heartbeats are checked (the reference: 2 s). Capped at half the timeout.
    pub heartbeat_check_interval: Duration,
    /// A connection must complete its 16-byte handshake (and, with TLS, the TLS handshake)
    /// within this.
    pub handshake_timeout: Duration,
    /// Mutual TLS (SPEC 2.1): the 16-byte header in clear, then TLS 1.3 with a client
    /// certificate required; the `i16` reply and every frame inside TLS (the reference's
    /// order, see [`crate::tls`]). `None`: plain TCP. [`ServerConfig::new`] takes the
    /// process-wide setting ([`crate::tls::set_global`], i.e. `smem_set_ssl_option`), so a
    /// store created after TLS was enabled cannot come up in clear by omission.
    pub tls: Option<Arc<LoadedTls>>,
}

impl ServerConfig {
    /// Defaults for `listen`: heartbeat timeout from `MF_CONFIG_STORE_HEARTBEAT_TIMEOUT_S`
    /// (default 60 s, 0 = off), 10 s handshake timeout, default limits, the process-wide TLS
    /// setting ([`crate::tls::global`]).
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            limits: Limits::default(),
            heartbeat_timeout: heartbeat_timeout_from_env(),
            heartbeat_check_interval: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(10),
            tls: crate::tls::global(),
        }
    }
}

impl Default for ServerConfig {
    /// [`ServerConfig::new`] on `127.0.0.1:0`.
    fn default() -> Self {
        Self::new(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

/// The heartbeat timeout of `MF_CONFIG_STORE_HEARTBEAT_TIMEOUT_S` (default 60 s; 0 = off). An
/// unparseable value is logged and the default is used.
pub fn heartbeat_timeout_from_env() -> Option<Duration> {
    match std::env::var(HEARTBEAT_ENV) {
        Err(_) => Some(Duration::from_secs(60)),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(0) => None,
            Ok(s) => Some(Duration::from_secs(s)),
            Err(_) => {
                warn!("{HEARTBEAT_ENV}={v:?} is not a number of seconds; using 60");
                Some(Duration::from_secs(60))
            }
        },
    }
}
