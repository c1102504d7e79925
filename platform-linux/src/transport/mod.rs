//! The network transport: how a rank reaches the windows of ranks on other hosts (SPEC 2.7).
//!
//! # Who serves, who copies
//! A BM object created with `SMEMB_DATA_OP_HOST_TCP` or `SMEMB_DATA_OP_ROCE` uses the transport.
//! RDMA verbs are not in this build: `ROCE` is served by TCP (logged once per process, saying
//! whether an RDMA device exists). At create, the rank starts its process's `Node` (once per
//! `smem_bm_init`): a listener bound to the local address of its config store connection (the
//! address the other ranks reach this host by), port 0. At join, the window record it
//! publishes in the store carries that endpoint and a fresh random generation token; the
//! window is served from just before the join is announced until the leave or destroy starts.
//! A member that sees a peer of another host join (its window record names another host
//! identity, see [`crate::mem::host_identity`]) marks the window *network-reached* when both
//! sides use the transport, and remembers endpoint and token; otherwise the window stays
//! unreachable (`SM_NOT_SUPPORTED`, saying why).
//!
//! # Copies
//! `smem_bm_copy` / `copy_2d` read the window's state once (as for mapped windows): mapped =>
//! memory copy, network-reached => a one-sided WRITE (H2G/L2G) or READ (G2H/G2L) of window
//! rows through the `tcp` engine, acknowledged by the owner after the bytes are in place. The owner
//! validates every request against its own window (object id, generation token, bounds within
//! one part) before touching memory. Large copies are pipelined in chunks on a cached
//! connection per peer; small copies take one round trip. Local copies do not allocate; the
//! network path does (it is I/O).
//!
//! # Failure
//! Every socket operation is bounded by `controlOperationTimeout`; a dead peer's sockets reset
//! at once. A copy is reported complete only when every chunk was acknowledged: a copy cut
//! off mid-way is an error (`SM_IO_ERROR` / `SM_TIMEOUT`), never a success. A peer that sends
//! bytes violating the protocol has its connection closed with the reason logged.
//!
//! # TLS
//! When TLS is configured (`smem_set_ssl_option`, i.e. [`crate::tls::global`] when the `Node`
//! starts), every transport connection runs mutual TLS 1.3 with the store's certificates: the
//! hello (in clear) carries the TLS flag both ways, then the client starts the handshake and
//! every request, reply and data byte goes inside TLS. Both sides present certificates chaining
//! to the CA (CRLs honoured); the client checks the server certificate's IP SANs against the
//! endpoint's IP as the store client does. Data is staged through a buffer (no zero-copy on
//! this path). A TLS peer and a plaintext peer refuse each other at the hello with an error
//! saying so (`SM_TLS_ERROR` at the client), never a hang.
//!
//! # For SHM
//! [`engines_available`] tells which network data operations this process can serve;
//! `smem_shm_query_support_data_operation` / `smem_shm_topology_can_reach` map a non-zero
//! answer to `SMEMS_DATA_OP_ROCE` for peers on other hosts.

pub(crate) mod batch;
pub(crate) mod tcp;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Once, Weak};
use std::time::Duration;

use log::info;

pub(crate) use self::batch::Span;
pub(crate) use self::tcp::{NO_RANK, Pinned, PinnedIo, Served, Transfer};
use crate::Result;
use smem_core::data_op::BmDataOps;
pub(crate) use smem_core::wire::transport::Op;

/// Env var: connections one large copy (16 MiB and more) is spread over, `1..=16`; default 4.
pub const STREAMS_ENV: &str = "SMEM_TRANSPORT_STREAMS";

/// `SMEMB_DATA_OP_ROCE` ([`BmDataOps::ROCE`]).
pub const DATA_OP_ROCE: u32 = BmDataOps::ROCE.bits();
/// `SMEMB_DATA_OP_HOST_TCP` ([`BmDataOps::HOST_TCP`]).
pub const DATA_OP_HOST_TCP: u32 = BmDataOps::HOST_TCP.bits();

static ROCE_NOTE: Once = Once::new();

/// Whether a BM object created with `data_op_type` serves and reaches windows over the network.
pub fn uses_transport(data_op_type: u32) -> bool {
    BmDataOps::from_bits_truncate(data_op_type).uses_network()
}

/// The BM data operations (`smem_bm_data_op_type` bits) the network transport of this process
/// can serve: `HOST_TCP | ROCE` (ROCE is carried by TCP in this build, with TLS when enabled).
/// Cheap (no I/O); callable at any time, from
/// any thread. SHM maps a non-zero answer to `SMEMS_DATA_OP_ROCE` for peers on other hosts.
pub fn engines_available() -> u32 {
    (BmDataOps::HOST_TCP | BmDataOps::ROCE).bits()
}

/// Whether the process configured TLS (`smem_set_ssl_option` with `enableTls`): a transport
/// started now runs mutual TLS.
pub fn tls_enabled() -> bool {
    crate::tls::global().is_some()
}

/// Whether this machine has an RDMA device (`/sys/class/infiniband` lists one).
pub fn rdma_device_present() -> bool {
    std::fs::read_dir("/sys/class/infiniband").is_ok_and(|mut d| d.next().is_some())
}

/// Logs, once per process, that ROCE requests are carried by TCP.
pub(crate) fn note_roce_fallback() {
    crate::sync::once(&ROCE_NOTE, || {
        if rdma_device_present() {
            info!(
                "transport: SMEMB_DATA_OP_ROCE requested; RDMA verbs are not in this build, so cross-host copies use TCP"
            );
        } else {
            info!(
                "transport: SMEMB_DATA_OP_ROCE requested but no RDMA device exists; cross-host copies fall back to TCP"
            );
        }
    });
}

/// The transport of one initialised process: its server and its client connections.
#[derive(Debug)]
pub(crate) struct Node {
    server: tcp::Server,
    pool: tcp::Pool,
    timeout: Duration,
}

impl Node {
    /// Starts serving on `ip` (port 0), with mutual TLS when `tls` is set (the setting the
    /// runtime captured at init).
    ///
    /// # Errors
    /// The bind / thread error.
    pub(crate) fn start(
        ip: IpAddr,
        timeout: Duration,
        tls: Option<Arc<crate::tls::LoadedTls>>,
    ) -> Result<Arc<Self>> {
        let server = tcp::Server::start(ip, timeout, tls.clone())?;
        info!(
            "transport: serving windows at {}{}",
            server.addr(),
            if tls.is_some() { " (mutual TLS)" } else { "" }
        );
        Ok(Arc::new(Self {
            server,
            pool: tcp::Pool::new(tls),
            timeout,
        }))
    }

    /// The endpoint published with this process's windows.
    pub(crate) fn endpoint(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Serves `window` as object `object`.
    pub(crate) fn serve(&self, object: u32, window: Weak<dyn Served>) {
        self.server.serve(object, window);
    }

    /// Stops serving object `object`.
    pub(crate) fn unserve(&self, object: u32) {
        self.server.unserve(object);
    }

    /// The client side: cached connections per peer ([`tcp::Pool::transfer`] runs a copy).
    pub(crate) fn pool(&self) -> &tcp::Pool {
        &self.pool
    }

    /// The bound on each socket operation (`controlOperationTimeout`).
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Stops the server and closes every connection.
    pub(crate) fn shutdown(&self) {
        self.server.shutdown();
        self.pool.clear();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}
