//! The server side of a TLS connection, driven sans-I/O over a non-blocking socket by an
//! event loop (see the module docs of [`crate::tls`]).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;

use rustls::ServerConnection;

use super::{LoadedTls, describe_peer_error, peer_name, server_config, tls_error};
use crate::sys::net::NoSigPipe;
use crate::{Error, Result};

/// What one [`ServerTlsSession::on_readable`] call saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadOutcome {
    /// Plaintext bytes appended to the caller's buffer.
    pub appended: usize,
    /// The peer closed (TCP end of stream or TLS `close_notify`): flush, then close.
    pub eof: bool,
    /// The call stopped at its per-call budget ([`READ_BUDGET`]) with the socket maybe still
    /// readable: call again (edge-triggered epoll will not report it again).
    pub more: bool,
}

/// TLS bytes one [`ServerTlsSession::on_readable`] call reads at most, so that one busy peer
/// cannot starve the others of a single-threaded event loop.
pub const READ_BUDGET: usize = 256 * 1024;

/// The server side of one TLS connection, driven sans-I/O over a non-blocking socket.
pub struct ServerTlsSession {
    conn: ServerConnection,
    peer: Option<String>,
}

impl ServerTlsSession {
    /// A session that expects the peer's ClientHello next.
    ///
    /// # Errors
    /// `SM_TLS_ERROR` if rustls cannot create the connection (not expected with a
    /// configuration from [`TlsOptions::load`](super::TlsOptions::load)).
    pub fn new(tls: &LoadedTls) -> Result<Self> {
        let mut conn = ServerConnection::new(server_config(tls))
            .map_err(|e| tls_error(format!("TLS server session: {e}")))?;
        // Replies are queued whole; the caller bounds them (the store caps frame sizes).
        conn.set_buffer_limit(None);
        Ok(Self { conn, peer: None })
    }

    /// Reads what the socket has (until `WouldBlock`, end of stream or [`READ_BUDGET`]),
    /// processes it and appends the decrypted bytes to `plaintext`.
    ///
    /// # Errors
    /// `SM_TLS_ERROR` with the reason when the peer is refused or breaks the protocol (an alert
    /// is queued: call [`Self::flush_to`] once, then close); `SM_IO_ERROR` on socket errors.
    pub fn on_readable(
        &mut self,
        rd: &mut impl Read,
        plaintext: &mut Vec<u8>,
    ) -> Result<ReadOutcome> {
        self.ingest(rd, plaintext, true)
    }

    /// Processes TLS bytes already read from the socket (e.g. a ClientHello that arrived in
    /// the same read as the clear-text store header), appending the plaintext. Running out of
    /// `bytes` is not an end of stream.
    ///
    /// # Errors
    /// As [`Self::on_readable`].
    pub fn feed(&mut self, bytes: &[u8], plaintext: &mut Vec<u8>) -> Result<ReadOutcome> {
        let mut rest = bytes;
        self.ingest(&mut rest, plaintext, false)
    }

    fn ingest(
        &mut self,
        rd: &mut impl Read,
        plaintext: &mut Vec<u8>,
        budgeted: bool,
    ) -> Result<ReadOutcome> {
        let mut outcome = ReadOutcome::default();
        let mut read = 0_usize;
        loop {
            if budgeted && read >= READ_BUDGET {
                outcome.more = true;
                break;
            }
            match self.conn.read_tls(rd) {
                Ok(0) if !budgeted => break, // `feed`: the slice is used up
                Ok(0) => {
                    outcome.eof = true;
                }
                Ok(n) => read = read.saturating_add(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("TLS read", &e)),
            }
            let state = self
                .conn
                .process_new_packets()
                .map_err(|e| tls_error(describe_peer_error(&e)))?;
            if self.peer.is_none() && !self.conn.is_handshaking() {
                self.peer = Some(peer_name(self.conn.peer_certificates()));
            }
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let start = plaintext.len();
                plaintext.resize(start.saturating_add(n), 0);
                self.conn
                    .reader()
                    .read_exact(&mut plaintext[start..])
                    .map_err(|e| Error::io("TLS plaintext", &e))?;
                outcome.appended = outcome.appended.saturating_add(n);
            }
            if state.peer_has_closed() {
                outcome.eof = true;
            }
            if outcome.eof {
                break;
            }
        }
        Ok(outcome)
    }

    /// Queues plaintext to send (encrypted once the handshake is done); see [`Self::flush_to`].
    pub fn queue_plaintext(&mut self, data: &[u8]) {
        // The buffer limit is off (see `new`), so the writer takes everything.
        let _ = self.conn.writer().write_all(data);
    }

    /// Whether TLS bytes (handshake, alerts, records) wait to be written.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Writes pending TLS bytes to `sock` until done (`Ok(true)`) or `WouldBlock` (`Ok(false)`:
    /// wait for writability and call again). The writes never raise `SIGPIPE`.
    ///
    /// # Errors
    /// Socket errors other than `WouldBlock`/`Interrupted` (`EPIPE`/`ECONNRESET` when the peer
    /// is gone).
    pub fn flush_to(&mut self, sock: &TcpStream) -> io::Result<bool> {
        let mut wr = NoSigPipe::new(sock);
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut wr) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Whether the handshake finished (the client certificate was verified).
    pub fn handshake_done(&self) -> bool {
        !self.conn.is_handshaking()
    }

    /// The verified client certificate, named for logs; `None` before the handshake is done.
    pub fn peer_identity(&self) -> Option<&str> {
        self.peer.as_deref()
    }

    /// Queues TLS `close_notify`; flush it with [`Self::flush_to`].
    pub fn send_close_notify(&mut self) {
        self.conn.send_close_notify();
    }
}

impl fmt::Debug for ServerTlsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTlsSession")
            .field("handshake_done", &self.handshake_done())
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}
