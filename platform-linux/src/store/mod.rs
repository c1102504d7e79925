//! The config store: server and client over TCP (SPEC 5), and a client on etcd (SPEC 6.4).
//!
//! - [`backend`]: the client seam: [`StoreClient`] over [`TcpClient`] or [`etcd::EtcdClient`],
//!   chosen by the store URL's scheme ([`StoreTarget`]).
//! - [`etcd`]: the store's operations on an etcd v3 cluster (no rank hosts anything).
//! - [`server`]: one event-loop thread (epoll over non-blocking sockets) that owns all state,
//!   so no locks; per-link read buffer and bounded write queue; a timer heap for parked GETs,
//!   handshake deadlines and heartbeat expiry. What each op means is
//!   [`smem_core::store::Store`], a state machine without I/O, over `storage::MapStorage`
//!   (the key-value map, ranks and waiters in hash maps).
//! - [`client`]: a `Clone + Send + Sync` handle pipelining requests on one link, replies matched
//!   by seqNo on a reader thread; every operation bounded by a deadline.
//!
//! Decisions where the SPEC leaves room (also see the module docs of each):
//! - The store is wiped (SPEC 5.6) when the *last ranked* link closes; a rank-less link closing
//!   while no rank is held wipes nothing.
//! - A frame whose `bodyLen` exceeds the configured maximum is answered `-400` and the link is
//!   closed (the bytes after it cannot be trusted to be a header).
//! - CONTROL is answered `-400 "unsupported control op"` (`"invalid control op"` when `key[0]` is
//!   not a decimal op); no QUERY_LINK_STATE push on reconnect.
//! - Where the reference stays silent (unparseable ADD increment, WRITE offset too large,
//!   `bodyLen` 0, a body under 42 bytes, UNWATCH with wrong counts) the server answers `-400`
//!   with a reason. Texts of the answers the reference does give are the reference's
//!   (probed against memfabric-hybrid 1.3.0).
//! - A parked GET whose deadline cannot be represented (`now + userDef` overflows) waits
//!   without limit; timers fire within a few ms of their deadline.
//! - When the store is wiped, parked GETs and watchers get `-602 "store wiped: ..."`.
//! - Limits ([`server::Limits`]) are configurable; large request bodies (> 64 KiB) reserve
//!   bytes from a shared input budget and wait for it instead of growing memory without bound.
//! - Mutual TLS ([`crate::tls`], `ServerConfig::tls` / `ClientOptions::tls`, by default the
//!   process-wide [`crate::tls::set_global`]): the 16-byte header in clear, then TLS 1.3, then
//!   the `i16` reply and every frame inside TLS, as the reference does (checked both ways
//!   against the wheel). Refusals after the TLS handshake are sent inside TLS; a TLS peer that
//!   fails (no/bad/expired/revoked certificate, not TLS) is logged and closed; a link that
//!   sends no ClientHello within the handshake timeout gets a clear `-1` (a plaintext client).
//!
//! `tests/store_compat.rs` runs the client against any store given in
//! `SMEM_COMPAT_STORE_URL`, e.g. the reference server.

pub mod backend;
pub mod client;
pub mod etcd;
pub mod server;
mod storage;

pub use backend::{EtcdTarget, StoreClient, StoreTarget};
pub use client::{CasResult, ClientOptions, Posted, TcpClient, Traffic, traffic};
pub use server::{Limits, ServerConfig, StoreServer};

pub use smem_core::store::{AUTO_RANKING_PREFIX, WATCH_RANK_DOWN_KEY};
/// Env var with the heartbeat timeout in seconds (0 = off).
pub const HEARTBEAT_ENV: &str = "MF_CONFIG_STORE_HEARTBEAT_TIMEOUT_S";
