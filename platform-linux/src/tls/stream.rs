//! The client side of a TLS connection over a blocking socket: [`TlsStream`], and its split
//! halves [`TlsReader`] / [`TlsWriter`] for one reader thread and any number of writers.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustls::{ClientConnection, StreamOwned};
use rustls_pki_types::ServerName;
use smem_core::ErrorCode;

use super::{LoadedTls, client_config, peer_name, stream_error, tls_error};
use crate::sync::lock;
use crate::sys::net::NoSigPipe;
use crate::{Error, Result};

/// Raw bytes a [`TlsReader`] reads per system call (a full TLS record and then some).
const SPLIT_READ_CHUNK: usize = 32 * 1024;
/// Plaintext a [`TlsWriter`] encrypts per socket write, bounding the ciphertext buffer.
const SPLIT_WRITE_CHUNK: usize = 256 * 1024;

/// A client's TLS connection over a blocking [`TcpStream`]: `Read + Write` once connected.
pub struct TlsStream {
    inner: StreamOwned<ClientConnection, NoSigPipe<TcpStream>>,
    peer: String,
}

impl TlsStream {
    /// Runs the TLS handshake as a client over `sock`, which is connected to `server_ip`
    /// (the store URL's IP, checked against the server certificate's IP SANs), and must
    /// finish by `deadline`. The socket's read/write timeouts are bounded by the deadline
    /// during the handshake and restored afterwards.
    ///
    /// # Errors
    /// `SM_TLS_ERROR` if the server is refused (untrusted, expired, revoked, wrong IP) or does
    /// not speak TLS; `SM_TIMEOUT` past the deadline; `SM_IO_ERROR` on socket errors.
    pub fn connect(
        sock: TcpStream,
        tls: &LoadedTls,
        server_ip: IpAddr,
        deadline: Instant,
    ) -> Result<Self> {
        let mut conn = ClientConnection::new(client_config(tls), ServerName::from(server_ip))
            .map_err(|e| tls_error(format!("TLS client for {server_ip}: {e}")))?;
        // Every write, the handshake's included, is a `send` without SIGPIPE.
        let mut sock = NoSigPipe::new(sock);
        let saved = (
            sock.get_ref().read_timeout(),
            sock.get_ref().write_timeout(),
        );
        let done = Self::handshake(&mut conn, &mut sock, server_ip, deadline);
        if let (Ok(read), Ok(write)) = saved {
            let _ = sock.get_ref().set_read_timeout(read);
            let _ = sock.get_ref().set_write_timeout(write);
        }
        done?;
        let peer = peer_name(conn.peer_certificates());
        Ok(Self {
            inner: StreamOwned::new(conn, sock),
            peer,
        })
    }

    fn handshake(
        conn: &mut ClientConnection,
        sock: &mut NoSigPipe<TcpStream>,
        server_ip: IpAddr,
        deadline: Instant,
    ) -> Result<()> {
        while conn.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::new(
                    ErrorCode::Timeout,
                    format!("TLS handshake with {server_ip} did not finish in time"),
                ));
            }
            let tcp = sock.get_ref();
            tcp.set_read_timeout(Some(left))
                .and_then(|()| tcp.set_write_timeout(Some(left)))
                .map_err(|e| Error::io(format!("TLS handshake with {server_ip}"), &e))?;
            match conn.complete_io(sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(stream_error(&format!("TLS handshake with {server_ip}"), &e)),
            }
        }
        Ok(())
    }

    /// The verified server certificate, named for logs.
    pub fn peer_identity(&self) -> &str {
        &self.peer
    }

    /// The underlying socket (for timeouts, `peer_addr`, `shutdown`).
    pub fn tcp(&self) -> &TcpStream {
        self.inner.get_ref().get_ref()
    }

    /// Sends TLS `close_notify` (best effort) so the server sees a clean end of stream.
    pub fn close(&mut self) {
        self.inner.conn.send_close_notify();
        let _ = self.inner.flush();
    }

    /// Splits the stream for a client with one reader thread and any number of writers.
    ///
    /// The reader reads the socket without holding a lock and takes the TLS state only to
    /// decrypt; writers serialize on the socket, encrypt under the TLS state lock, release it,
    /// then write, so a writer blocked by a full socket never stalls the reader. Lock order:
    /// socket, then TLS state.
    ///
    /// # Errors
    /// The socket cannot be cloned (`SM_IO_ERROR`).
    pub fn into_split(self) -> Result<(TlsReader, TlsWriter)> {
        let StreamOwned { mut conn, sock } = self.inner;
        // Whole frames are queued at once; the writer drains after every call.
        conn.set_buffer_limit(None);
        let read_sock = sock
            .get_ref()
            .try_clone()
            .map_err(|e| Error::io("TLS stream split", &e))?;
        let shared = Arc::new(SplitShared {
            conn: Mutex::new(conn),
            sock: Mutex::new(SplitSocket {
                sock,
                broken: false,
            }),
        });
        Ok((
            TlsReader {
                sock: read_sock,
                shared: Arc::clone(&shared),
                raw: vec![0; SPLIT_READ_CHUNK].into_boxed_slice(),
                start: 0,
                end: 0,
            },
            TlsWriter { shared },
        ))
    }
}

/// The reading half of a split [`TlsStream`]: blocking `Read` of the decrypted stream.
pub struct TlsReader {
    sock: TcpStream,
    shared: Arc<SplitShared>,
    /// Bytes read from the socket; `raw[start..end]` are not yet fed to rustls.
    raw: Box<[u8]>,
    start: usize,
    end: usize,
}

/// The writing half of a split [`TlsStream`]: each `write` encrypts and sends all of `buf`.
/// Clones share the connection; their writes are serialized. After a failed write the
/// stream is broken (a TLS record may be cut) and every later write fails.
#[derive(Clone)]
pub struct TlsWriter {
    shared: Arc<SplitShared>,
}

struct SplitShared {
    conn: Mutex<ClientConnection>,
    sock: Mutex<SplitSocket>,
}

struct SplitSocket {
    sock: NoSigPipe<TcpStream>,
    broken: bool,
}

impl TlsReader {
    /// The TCP socket this half reads from (for descriptor bookkeeping such as fork handling).
    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }
}

impl SplitShared {
    /// Encrypts `plain` (may be empty: pending alerts / handshake bytes only) and writes it.
    fn send(&self, plain: &[u8]) -> io::Result<()> {
        let mut out = lock(&self.sock);
        if out.broken {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS stream broken by an earlier failed write",
            ));
        }
        let mut chunks = plain.chunks(SPLIT_WRITE_CHUNK);
        let mut first = true;
        loop {
            let chunk = chunks.next();
            if chunk.is_none() && !first {
                break;
            }
            first = false;
            let mut records = Vec::new();
            {
                let mut conn = lock(&self.conn);
                if let Some(chunk) = chunk {
                    conn.writer().write_all(chunk)?;
                }
                while conn.wants_write() {
                    conn.write_tls(&mut records)?;
                }
            }
            if let Err(e) = out.sock.write_all(&records) {
                out.broken = true;
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut conn = lock(&self.shared.conn);
            match conn.reader().read(buf) {
                Ok(n) => return Ok(n), // 0: close_notify received
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e), // e.g. TCP end of stream without close_notify
            }
            // No plaintext buffered, so rustls accepts input: feed what the socket gave us.
            if self.start < self.end {
                let mut fresh = &self.raw[self.start..self.end];
                let n = conn.read_tls(&mut fresh)?;
                self.start += n;
                if let Err(e) = conn.process_new_packets() {
                    drop(conn);
                    let _ = self.shared.send(&[]); // the alert, best effort
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                continue;
            }
            let wants_write = conn.wants_write();
            drop(conn);
            if wants_write {
                // E.g. a KeyUpdate answer: send it before waiting for more data.
                self.shared.send(&[])?;
            }
            let n = loop {
                match self.sock.read(&mut self.raw) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    other => break other?,
                }
            };
            (self.start, self.end) = (0, n);
            if n == 0 {
                // Record the end of stream; the next `reader().read` reports how it ended.
                let mut conn = lock(&self.shared.conn);
                conn.read_tls(&mut io::empty())?;
                conn.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
        }
    }
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.shared.send(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsWriter {
    /// Sends TLS `close_notify` (best effort).
    pub fn close(&self) {
        lock(&self.shared.conn).send_close_notify();
        let _ = self.shared.send(&[]);
    }
}

impl fmt::Debug for TlsReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsReader")
            .field("tcp", &self.sock)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for TlsWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsWriter").finish_non_exhaustive()
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("peer", &self.peer)
            .field("tcp", self.tcp())
            .finish_non_exhaustive()
    }
}
