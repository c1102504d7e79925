//! The TCP engine: a listener per process serving its windows, and a cache of client
//! connections per peer endpoint. Wire format in [`smem_core::wire::transport`].
//!
//! # Server
//! One accept thread and one thread per connection (at most [`MAX_CONNECTIONS`]). Each request
//! is validated before any byte moves: protocol fields by [`Request::parse`](smem_core::wire::transport::Request::parse) (a violation logs
//! the reason and closes the connection), then the range by the served window ([`Served::pin`]:
//! object id, window generation token, bounds inside one part, window still served). A WRITE
//! that fails validation has its payload read and discarded (bounded by the 16 MiB request
//! limit) and gets an error reply. Data moves straight between the socket and the window's
//! mapping (`recv`/`send` on the mapped bytes; device memory and many small rows go through a
//! bounce buffer). A WRITE is acknowledged only after all its bytes are in place.
//!
//! # Client
//! A copy is split into requests of at most [`CHUNK`] bytes (whole rows where rows are smaller),
//! written back to back on one connection with up to [`WRITE_WINDOW`] acknowledgements
//! outstanding (writes) or [`READ_WINDOW`] requests in flight (reads), so large copies stream
//! at the connection's rate and a small copy is one round trip. Connections are cached per
//! peer and reused (`TCP_NODELAY`); each socket operation is bounded by the control timeout.
//! A copy returns `Ok` only when every request was acknowledged; a peer that dies mid-copy
//! gives an error (its socket resets at once; a silent peer after the timeout).
//!
//! # TLS
//! With TLS (server and pool built with the loaded settings), the hello carries [`FLAG_TLS`](smem_core::wire::transport::FLAG_TLS)
//! both ways; a hello whose flag differs from ours is refused (the answer carries our flag, so
//! the client says which side lacks TLS). Right after the hello the client starts the TLS 1.3
//! handshake over the same socket (blocking rustls streams, one thread per connection on the
//! server as for plain connections), and [`link::Link`] carries every later byte inside TLS: data is
//! staged through a buffer and small writes are coalesced until a message is complete. The
//! plaintext path is unchanged (zero-copy `recv`/`send` on the mapped bytes).
//!
//! # Modules
//! [`link`] moves bytes on one connection (plain or TLS) between the socket and memory rows;
//! [`server`] accepts connections and serves requests; [`client`] splits copies into requests
//! and runs them on cached connections.

mod client;
mod link;
mod server;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub(crate) use self::client::{NO_RANK, Piece, Pool, Transfer};
pub(crate) use self::server::{Pinned, PinnedIo, Served, Server};

/// Bytes per request of a large copy.
pub(crate) const CHUNK: u64 = 2 * 1024 * 1024;
/// Write requests sent before the client waits for the oldest acknowledgement.
pub(crate) const WRITE_WINDOW: usize = 8;
/// Read requests in flight on one connection.
pub(crate) const READ_WINDOW: usize = 4;
/// Connections one server accepts at a time (each has a thread).
pub(crate) const MAX_CONNECTIONS: usize = 4096;
/// A server connection idle this long is closed (clients reconnect transparently).
const IDLE_CLOSE: Duration = Duration::from_secs(300);
/// Stack of a connection thread (it only moves bytes).
const CONN_STACK: usize = 256 * 1024;
/// Idle connections kept per peer.
const MAX_IDLE_PER_PEER: usize = 8;
/// Rows narrower than this are gathered into one buffer rather than sent one by one.
const SMALL_ROW: u64 = 16 * 1024;
