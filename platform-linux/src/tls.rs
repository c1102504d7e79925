//! Mutual TLS 1.3 for the config store (and later the data transport), with rustls + ring.
//!
//! # What is enforced
//! - TLS 1.3 only, ring crypto provider, no OpenSSL.
//! - Both sides present a certificate chaining to a CA of [`TlsOptions::ca_file`]; the server
//!   *requires* a client certificate (a client without one is refused during the handshake).
//! - When [`TlsOptions::crl_file`] is given, every certificate of the peer's chain (except the
//!   trust anchor) must have a known revocation status: the file must hold a CRL of each
//!   issuing CA, else the peer is refused (`UnknownRevocationStatus`). An expired CRL is still
//!   used (rustls' default): distribute fresh CRLs, smem does not fetch them.
//! - Server identity: the store is addressed by IP (`tcp://IP:port`), so the client checks the
//!   server certificate's IP address SANs. If the certificate carries any IP SAN, one of them
//!   must equal the store URL's IP; if it carries none (certificates issued per host name, as
//!   many existing deployments have), the CA signature, validity and CRL are the identity and
//!   the name is not checked. Issue server certificates with IP SANs to get the strict check.
//!
//! # Files
//! All files are PEM. CA bundle: one or more `CERTIFICATE`. Certificate: the chain of this
//! process, end-entity first. Key: `PRIVATE KEY` (PKCS#8), `ENCRYPTED PRIVATE KEY` (PKCS#8
//! with PBES2: PBKDF2-HMAC-SHA256/384/512 or scrypt, AES-CBC; decrypted with
//! [`TlsOptions::key_password`]), `RSA PRIVATE KEY` (PKCS#1) or `EC PRIVATE KEY` (SEC1).
//! Key types: RSA, ECDSA P-256/P-384, Ed25519. CRL: one or more `X509 CRL`.
//! Every problem is reported as `SM_TLS_ERROR` naming the file and what is wrong with it.
//!
//! - No session resumption (no tickets, no session cache): every connection verifies the full
//!   chain against the CRLs loaded at that time.
//! - Extended key usage, when a certificate has one, must allow `serverAuth` for a server and
//!   `clientAuth` for a client: a rank that both hosts the store and connects needs both.
//!
//! # Store wire order
//! As the reference (memfabric-hybrid 1.3.0: `AccTcpServerDefault::Handshake` on the client,
//! `AccTcpListener::ProcessNewConnection` on the server, read from the wheel's
//! `libmf_smem.so`): the client sends the 16-byte connect header **in clear**, then starts
//! TLS at once (without waiting for a reply); the server reads the 16 bytes, runs the TLS
//! handshake, and sends its `i16` reply **inside TLS**, followed by all frames. A reference
//! client pipelines its ClientHello behind the header, so a server that read past the 16
//! bytes must hand the extra bytes to the session first ([`ServerTlsSession::feed`]).
//! Checked against the reference wheel both ways (`tests/interop/ref_tls.py`). Refusals
//! after the TLS handshake (rank held, world size) are answered inside TLS too, then
//! `close_notify` (the reference writes them in clear, which its own TLS client cannot read).
//!
//! # Driving a connection
//! - Blocking client: [`TlsStream::connect`] runs the handshake with a deadline over a
//!   connected [`TcpStream`] and then is a plain `Read + Write` stream. In TLS 1.3 the server
//!   checks the client certificate after the client considers the handshake done, so a
//!   refused client sees the server's alert on its first read (an `SM_TLS_ERROR` or
//!   `SM_IO_ERROR`, never a hang).
//! - Non-blocking server (epoll): [`ServerTlsSession`] wraps a sans-I/O
//!   [`rustls::ServerConnection`]. On `EPOLLIN` call [`ServerTlsSession::on_readable`] with the
//!   socket: it reads TLS records (`read_tls`), decrypts them (`process_new_packets`) and appends
//!   the plaintext to your buffer. Queue replies with [`ServerTlsSession::queue_plaintext`] and
//!   call [`ServerTlsSession::flush_to`] whenever [`ServerTlsSession::wants_write`] (handshake
//!   messages and alerts are produced by reads too): it returns `Ok(false)` on `WouldBlock`, so
//!   keep `EPOLLOUT` armed until it returns `Ok(true)`. On an `Err` from `on_readable`
//!   (bad certificate, not TLS...), call `flush_to` once to send the alert, log the error and
//!   close the socket.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use std::{fmt, fs, io};

use pkcs8::{EncryptedPrivateKeyInfo, PrivateKeyInfo};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore,
    ServerConfig, ServerConnection, SignatureScheme, StreamOwned,
};
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs1KeyDer,
    PrivatePkcs8KeyDer, PrivateSec1KeyDer, ServerName, UnixTime,
};
use smem_core::ErrorCode;
use zeroize::Zeroizing;

use crate::sync::{lock, read, write};
use crate::sys::net::NoSigPipe;
use crate::{Error, Result};

mod x509;

/// Where the TLS material of this process lives (owned copies of the `smem_tls_option` strings).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsOptions {
    /// PEM bundle of trusted CAs; peers must chain to one of them.
    pub ca_file: PathBuf,
    /// PEM CRL(s) of the CAs, or `None` for no revocation checking.
    pub crl_file: Option<PathBuf>,
    /// PEM certificate chain of this process, end-entity first.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`'s end-entity certificate.
    pub key_file: PathBuf,
    /// Password of an encrypted PKCS#8 key; wiped from memory when dropped, never printed.
    /// (The key file's bytes are wiped too once parsed; the parsed key itself lives in ring's
    /// structures, which do not wipe themselves.)
    pub key_password: Option<Zeroizing<String>>,
}

impl TlsOptions {
    /// Options with a CA bundle, this process' certificate chain and key; no CRL, no password.
    pub fn new(
        ca_file: impl Into<PathBuf>,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        Self {
            ca_file: ca_file.into(),
            crl_file: None,
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            key_password: None,
        }
    }

    /// The same options with a CRL file.
    #[must_use]
    pub fn with_crl_file(mut self, crl_file: impl Into<PathBuf>) -> Self {
        self.crl_file = Some(crl_file.into());
        self
    }

    /// The same options with the password of an encrypted PKCS#8 key.
    #[must_use]
    pub fn with_key_password(mut self, password: impl Into<String>) -> Self {
        self.key_password = Some(Zeroizing::new(password.into()));
        self
    }

    /// Reads and checks every file, and builds the rustls configurations.
    ///
    /// # Errors
    /// `SM_TLS_ERROR` naming the file and the problem: unreadable or missing file, no
    /// certificate / key / CRL in the PEM, unsupported key type, wrong password or corrupt
    /// encrypted PKCS#8, key not matching the certificate, invalid CA certificate or CRL.
    pub fn load(&self) -> Result<LoadedTls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());

        let roots = Arc::new(load_roots(&self.ca_file)?);
        let crls = match &self.crl_file {
            Some(path) => load_crls(path)?,
            None => Vec::new(),
        };
        let chain = load_chain(&self.cert_file)?;
        let key = load_key(
            &self.key_file,
            self.key_password.as_deref().map(String::as_str),
        )?;

        let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
            file_error(
                "key",
                &self.key_file,
                format!(
                    "key type unsupported or key corrupt ({e}); supported: RSA, ECDSA P-256/P-384, \
                     Ed25519"
                ),
            )
        })?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(tls_error(format!(
                    "key file {} does not belong to the certificate in cert file {}",
                    self.key_file.display(),
                    self.cert_file.display()
                )));
            }
            Err(e) => {
                return Err(file_error(
                    "cert",
                    &self.cert_file,
                    format!(
                        "unusable end-entity certificate ({e}); an X.509 v3 certificate is required"
                    ),
                ));
            }
        }
        let identity = certified
            .end_entity_cert()
            .ok()
            .and_then(|c| x509::summarize(c))
            .map_or_else(|| "unnamed certificate".to_owned(), |s| s.display_name());
        let certified = Arc::new(certified);

        let crl_error = |e: rustls::server::VerifierBuilderError| match &self.crl_file {
            Some(path) => file_error("CRL", path, format!("cannot be used: {e}")),
            None => file_error("CA", &self.ca_file, format!("cannot be used: {e}")),
        };
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .with_crls(crls.iter().cloned())
                .build()
                .map_err(crl_error)?;
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .with_crls(crls)
                .build()
                .map_err(crl_error)?;

        let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error(format!("TLS 1.3 server configuration: {e}")))?
            .with_client_cert_verifier(client_verifier)
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(Arc::clone(&certified))));
        // No resumption: every connection verifies the full chain against the current CRLs.
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;

        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error(format!("TLS 1.3 client configuration: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(IpSanVerifier {
                inner: server_verifier,
            }))
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        // The store URL is an IP: no SNI is sent for IPs anyway; make it explicit.
        client.enable_sni = false;
        client.resumption = rustls::client::Resumption::disabled();

        Ok(LoadedTls {
            server: Arc::new(server),
            client: Arc::new(client),
            identity,
        })
    }
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca_file", &self.ca_file)
            .field("crl_file", &self.crl_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field(
                "key_password",
                &self.key_password.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Checked TLS material, ready to make connections: cheap to clone and share between threads.
#[derive(Clone)]
pub struct LoadedTls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    identity: String,
}

impl LoadedTls {
    /// This process' own certificate, named for logs (`CN=…`, a SAN or the serial).
    pub fn identity(&self) -> &str {
        &self.identity
    }
}

/// Two `LoadedTls` are equal when they are (clones of) the same [`TlsOptions::load`] result.
impl PartialEq for LoadedTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.server, &other.server) && Arc::ptr_eq(&self.client, &other.client)
    }
}

impl Eq for LoadedTls {}

impl fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedTls")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// The server configuration: TLS 1.3, client certificate required and verified against the
/// CA bundle and CRLs.
pub fn server_config(tls: &LoadedTls) -> Arc<ServerConfig> {
    Arc::clone(&tls.server)
}

/// The client configuration: TLS 1.3, presents this process' certificate, verifies the server
/// against the CA bundle and CRLs, and its IP SANs against the address it connects to (see
/// the module docs).
pub fn client_config(tls: &LoadedTls) -> Arc<ClientConfig> {
    Arc::clone(&tls.client)
}

/// Sets (or with `None` clears) the process-wide TLS setting used by the store server and
/// client that the runtime creates afterwards (`smem_set_ssl_option`). The files are loaded
/// and checked now, so a bad setting fails here; the options are copied.
///
/// # Errors
/// As [`TlsOptions::load`]; on error the previous setting is kept.
pub fn set_global(options: Option<TlsOptions>) -> Result<()> {
    let loaded = match options {
        Some(options) => Some(Arc::new(options.load()?)),
        None => None,
    };
    // The lock is held for a pointer swap only (the old value is dropped after): a fork in
    // another thread can hardly catch it held, and readers never wait for file I/O.
    let old = std::mem::replace(&mut *write(&GLOBAL), loaded);
    drop(old);
    Ok(())
}

/// The process-wide TLS setting, if [`set_global`] enabled one.
pub fn global() -> Option<Arc<LoadedTls>> {
    read(&GLOBAL).clone()
}

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
    /// configuration from [`TlsOptions::load`]).
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

/// Checks the server's IP SANs only when it has some (see the module docs); chain, validity
/// and CRLs are always checked by the wrapped webpki verifier.
#[derive(Debug)]
struct IpSanVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for IpSanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // webpki checks the name last, after chain, validity and revocation passed.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if x509::summarize(end_entity).is_some_and(|s| s.ip_sans.is_empty()) => {
                log::debug!(
                    "server certificate has no IP SAN: accepted on CA signature for {server_name:?}"
                );
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn tls_error(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::TlsError, message)
}

fn file_error(kind: &str, path: &Path, what: impl fmt::Display) -> Error {
    tls_error(format!("{kind} file {}: {what}", path.display()))
}

/// A TLS stream error: a rustls error inside an `io::Error` becomes `SM_TLS_ERROR` with a
/// readable reason, a timeout `SM_TIMEOUT`, anything else `SM_IO_ERROR`.
pub(crate) fn stream_error(context: &str, err: &io::Error) -> Error {
    if let Some(tls) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return tls_error(format!("{context}: {}", describe_peer_error(tls)));
    }
    if err.kind() == io::ErrorKind::WouldBlock {
        return Error::new(ErrorCode::Timeout, format!("{context}: timed out"));
    }
    Error::io(context, err)
}

/// Why a peer was refused, in words an operator can act on.
fn describe_peer_error(err: &rustls::Error) -> String {
    use rustls::Error as E;
    match err {
        E::NoCertificatesPresented => "peer presented no certificate".to_owned(),
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                "peer certificate is not signed by a trusted CA".to_owned()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "peer certificate expired".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "peer certificate not valid yet".to_owned()
            }
            CertificateError::Revoked => "peer certificate is revoked (CRL)".to_owned(),
            CertificateError::UnknownRevocationStatus => {
                "peer certificate's revocation status is unknown (no CRL of its issuer)".to_owned()
            }
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => format!(
                "peer certificate is not valid for the address connected to, {}; it names {}",
                expected.to_str(),
                presented.join(", ")
            ),
            CertificateError::NotValidForName => {
                "peer certificate is not valid for the address connected to".to_owned()
            }
            other => format!("peer certificate invalid: {other:?}"),
        },
        E::InvalidMessage(_) => {
            format!("peer does not speak TLS (plaintext client or wrong port?): {err}")
        }
        E::AlertReceived(alert) => format!("peer refused us with TLS alert {alert:?}"),
        E::PeerIncompatible(_) => format!("peer incompatible (TLS 1.3 required): {err}"),
        other => other.to_string(),
    }
}

fn peer_name(certs: Option<&[CertificateDer<'static>]>) -> String {
    certs
        .and_then(|c| c.first())
        .and_then(|c| x509::summarize(c))
        .map_or_else(|| "unnamed peer".to_owned(), |s| s.display_name())
}

fn read_file(kind: &str, path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| file_error(kind, path, format!("cannot read: {e}")))
}

fn parse_pem(kind: &str, path: &Path, bytes: &[u8]) -> Result<Vec<pem::Pem>> {
    let sections =
        pem::parse_many(bytes).map_err(|e| file_error(kind, path, format!("bad PEM: {e}")))?;
    if sections.is_empty() {
        return Err(file_error(
            kind,
            path,
            "no PEM section found (DER files must be converted to PEM)",
        ));
    }
    Ok(sections)
}

fn found_tags(sections: &[pem::Pem]) -> String {
    let tags: Vec<&str> = sections.iter().map(pem::Pem::tag).collect();
    tags.join(", ")
}

fn load_roots(path: &Path) -> Result<RootCertStore> {
    let bytes = read_file("CA", path)?;
    let sections = parse_pem("CA", path, &bytes)?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in sections
        .iter()
        .filter(|s| s.tag() == "CERTIFICATE")
        .enumerate()
    {
        roots
            .add(CertificateDer::from(cert.contents().to_vec()))
            .map_err(|e| {
                file_error(
                    "CA",
                    path,
                    format!("certificate #{} is not a usable CA: {e}", i + 1),
                )
            })?;
    }
    if roots.is_empty() {
        return Err(file_error(
            "CA",
            path,
            format!(
                "no CERTIFICATE in the PEM (found: {})",
                found_tags(&sections)
            ),
        ));
    }
    Ok(roots)
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = read_file("cert", path)?;
    let sections = parse_pem("cert", path, &bytes)?;
    let chain: Vec<CertificateDer<'static>> = sections
        .iter()
        .filter(|s| s.tag() == "CERTIFICATE")
        .map(|s| CertificateDer::from(s.contents().to_vec()))
        .collect();
    if chain.is_empty() {
        return Err(file_error(
            "cert",
            path,
            format!(
                "no CERTIFICATE in the PEM (found: {})",
                found_tags(&sections)
            ),
        ));
    }
    Ok(chain)
}

fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let bytes = read_file("CRL", path)?;
    let sections = parse_pem("CRL", path, &bytes)?;
    let crls: Vec<CertificateRevocationListDer<'static>> = sections
        .iter()
        .filter(|s| s.tag() == "X509 CRL")
        .map(|s| CertificateRevocationListDer::from(s.contents().to_vec()))
        .collect();
    if crls.is_empty() {
        return Err(file_error(
            "CRL",
            path,
            format!("no X509 CRL in the PEM (found: {})", found_tags(&sections)),
        ));
    }
    for (i, crl) in crls.iter().enumerate() {
        let Some(shape) = x509::crl_shape(crl) else {
            continue; // not shaped like a CRL: webpki reports the parse error
        };
        if let Some(why) = unsupported_crl(&shape) {
            let issuer = crl_issuer_label(shape.issuer_cn);
            return Err(file_error(
                "CRL",
                path,
                format!(
                    "CRL {} of {} ({issuer}) {why}, which is not supported: only X.509 v2 CRLs \
                     with extensions are (rustls-webpki). Regenerate it as a v2 CRL: `openssl \
                     ca -gencrl -crlexts crl_ext -out crl.pem` with a `crlnumber` file (`echo \
                     01 > crlnumber`, `crlnumber = crlnumber` in the CA section) and `[crl_ext] \
                     authorityKeyIdentifier = keyid:always` in the openssl config; `openssl crl` \
                     cannot convert an existing CRL",
                    i + 1,
                    crls.len()
                ),
            ));
        }
    }
    Ok(crls)
}

/// Why webpki would refuse a CRL of this shape with a bare "ParseError"; `None` if it is a v2
/// CRL with extensions (webpki checks the rest and reports it).
fn unsupported_crl(shape: &x509::CrlShape) -> Option<String> {
    match (shape.version, shape.has_extensions) {
        (None, _) => Some("is a version 1 CRL (no version field, no extensions)".to_owned()),
        (Some(1), false) => {
            Some("is a version 2 CRL without extensions (no CRL number)".to_owned())
        }
        (Some(1), true) => None,
        (Some(v), _) => Some(format!(
            "has version field {v} (version {})",
            u16::from(v) + 1
        )),
    }
}

fn crl_issuer_label(cn: Option<String>) -> String {
    cn.map_or_else(
        || "issuer without a CN".to_owned(),
        |cn| format!("issuer CN={cn}"),
    )
}

fn load_key(path: &Path, password: Option<&str>) -> Result<PrivateKeyDer<'static>> {
    let bytes = read_file("key", path)?;
    let sections = parse_pem("key", path, &bytes)?;
    for section in &sections {
        let contents = section.contents().to_vec();
        let legacy_encrypted = section
            .headers()
            .get("Proc-Type")
            .is_some_and(|v| v.contains("ENCRYPTED"));
        let key = match section.tag() {
            "PRIVATE KEY" => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(contents)),
            "RSA PRIVATE KEY" | "EC PRIVATE KEY" if legacy_encrypted => {
                return Err(file_error(
                    "key",
                    path,
                    "legacy OpenSSL-encrypted PEM (Proc-Type header) is not supported; convert \
                     it to encrypted PKCS#8: openssl pkcs8 -topk8 -v2 aes-256-cbc",
                ));
            }
            "RSA PRIVATE KEY" => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(contents)),
            "EC PRIVATE KEY" => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(contents)),
            "ENCRYPTED PRIVATE KEY" => decrypt_pkcs8(path, &contents, password)?,
            _ => continue,
        };
        return Ok(key);
    }
    Err(file_error(
        "key",
        path,
        format!(
            "no private key in the PEM (expected PRIVATE KEY, ENCRYPTED PRIVATE KEY, RSA PRIVATE \
             KEY or EC PRIVATE KEY; found: {})",
            found_tags(&sections)
        ),
    ))
}

fn decrypt_pkcs8(
    path: &Path,
    der: &[u8],
    password: Option<&str>,
) -> Result<PrivateKeyDer<'static>> {
    let Some(password) = password else {
        return Err(file_error(
            "key",
            path,
            "the key is an encrypted PKCS#8 key but no key password was given",
        ));
    };
    let encrypted = EncryptedPrivateKeyInfo::try_from(der)
        .map_err(|e| file_error("key", path, format!("corrupt encrypted PKCS#8: {e}")))?;
    let plain = encrypted
        .decrypt(password.as_bytes())
        .map_err(|e| match e {
            pkcs8::Error::EncryptedPrivateKey(pkcs8::pkcs5::Error::UnsupportedAlgorithm {
                oid,
            }) => file_error(
                "key",
                path,
                format!(
                    "encrypted PKCS#8 uses an unsupported algorithm ({oid}); use PBES2 with \
                     PBKDF2-HMAC-SHA256 or scrypt and AES-CBC"
                ),
            ),
            _ => file_error("key", path, "wrong password or corrupt encrypted PKCS#8"),
        })?;
    // AES-CBC padding passes by chance for ~1/256 wrong passwords: the payload must parse.
    PrivateKeyInfo::try_from(plain.as_bytes())
        .map_err(|_| file_error("key", path, "wrong password or corrupt encrypted PKCS#8"))?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        plain.as_bytes().to_vec(),
    )))
}

/// Raw bytes a [`TlsReader`] reads per system call (a full TLS record and then some).
const SPLIT_READ_CHUNK: usize = 32 * 1024;
/// Plaintext a [`TlsWriter`] encrypts per socket write, bounding the ciphertext buffer.
const SPLIT_WRITE_CHUNK: usize = 256 * 1024;

static GLOBAL: RwLock<Option<Arc<LoadedTls>>> = RwLock::new(None);

#[cfg(test)]
pub(crate) mod tests;
