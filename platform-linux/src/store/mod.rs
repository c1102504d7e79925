//! The config store: server and client over TCP (SPEC 5).
//!
//! - [`server`]: one event-loop thread (epoll over non-blocking sockets) that owns all state,
//!   so no locks; per-link read buffer and bounded write queue; a timer heap for parked GETs,
//!   handshake deadlines and heartbeat expiry.
//! - [`client`]: a `Clone + Send + Sync` handle pipelining requests on one link, replies matched
//!   by seqNo on a reader thread; every operation bounded by a deadline.
//!
//! Decisions where the SPEC leaves room (also see the module docs of each):
//! - The store is wiped (SPEC 5.6) when the *last ranked* link closes; a rank-less link closing
//!   while no rank is held wipes nothing.
//! - A frame whose `bodyLen` exceeds the configured maximum is answered `-400` and the link is
//!   closed (the bytes after it cannot be trusted to be a header).
//! - CONTROL is answered `-400 "unsupported control op"`; no QUERY_LINK_STATE push on reconnect.

pub mod client;
pub mod server;

pub use client::{CasResult, ClientOptions, StoreClient};
pub use server::{Limits, ServerConfig, StoreServer};

/// The key of WATCH_RANK_STATE / UNWATCH for rank-down events.
pub const WATCH_RANK_DOWN_KEY: &[u8] = b"WATCH_RANK_DOWN_KEY";
/// Prefix of GET keys that ask for an automatically assigned rank.
pub const AUTO_RANKING_PREFIX: &[u8] = b"AutoRanking#";
/// Env var with the heartbeat timeout in seconds (0 = off).
pub const HEARTBEAT_ENV: &str = "MF_CONFIG_STORE_HEARTBEAT_TIMEOUT_S";
