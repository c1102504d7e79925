//! Mutual TLS 1.3 for the config store and the TCP data transport, with rustls + ring.
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
//!   connected [`TcpStream`](std::net::TcpStream) and then is a plain `Read + Write` stream.
//!   In TLS 1.3 the server checks the client certificate after the client considers the
//!   handshake done, so a refused client sees the server's alert on its first read (an
//!   `SM_TLS_ERROR` or `SM_IO_ERROR`, never a hang).
//! - Non-blocking server (epoll): [`ServerTlsSession`] wraps a sans-I/O
//!   [`rustls::ServerConnection`]. On `EPOLLIN` call [`ServerTlsSession::on_readable`] with the
//!   socket: it reads TLS records (`read_tls`), decrypts them (`process_new_packets`) and appends
//!   the plaintext to your buffer. Queue replies with [`ServerTlsSession::queue_plaintext`] and
//!   call [`ServerTlsSession::flush_to`] whenever [`ServerTlsSession::wants_write`] (handshake
//!   messages and alerts are produced by reads too): it returns `Ok(false)` on `WouldBlock`, so
//!   keep `EPOLLOUT` armed until it returns `Ok(true)`. On an `Err` from `on_readable`
//!   (bad certificate, not TLS...), call `flush_to` once to send the alert, log the error and
//!   close the socket.
//!
//! # Code
//! This file: [`TlsOptions`], the loaded configurations and the process-wide setting, error
//! texts; `files.rs`: reading the PEM files; `stream.rs`: the client stream and its split
//! halves; `session.rs`: the server session; `verify.rs`: the server certificate check;
//! `x509.rs`: names and IP SANs from certificates.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::{fmt, io};

use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{CertificateError, ClientConfig, ServerConfig};
use rustls_pki_types::CertificateDer;
use smem_core::ErrorCode;
use zeroize::Zeroizing;

use crate::sync::{read, write};
use crate::{Error, Result};

mod files;
mod session;
mod stream;
mod verify;
mod x509;

use files::{load_chain, load_crls, load_key, load_roots, pem_of_key, read_file};
pub use session::{READ_BUDGET, ReadOutcome, ServerTlsSession};
pub use stream::{TlsReader, TlsStream, TlsWriter};
use verify::IpSanVerifier;

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

        let etcd = Arc::new(EtcdPem {
            ca: read_file("CA", &self.ca_file)?.to_vec(),
            cert: read_file("cert", &self.cert_file)?.to_vec(),
            key: Zeroizing::new(pem_of_key(&key).into_bytes()),
        });
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
            etcd,
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
    etcd: Arc<EtcdPem>,
}

/// The same material as PEM for the etcd client's gRPC channel (tonic takes PEM): the CA
/// file, the certificate file, and the key decrypted.
struct EtcdPem {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
}

/// The mutual TLS settings of `tls` for the etcd store client (SPEC 6.4): the CA bundle
/// verifies the members (their certificates must name the host of the URL's endpoint, as a
/// DNS or IP SAN), this process presents its certificate. CRLs are not applied to etcd
/// connections (the gRPC TLS layer takes none); revoke etcd client certificates on the etcd
/// side (`--client-crl-file`).
///
/// # Errors
/// None today; kept fallible for settings the gRPC layer may refuse.
pub fn etcd_tls(tls: &LoadedTls) -> Result<etcd_client::TlsOptions> {
    let e = &tls.etcd;
    Ok(etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(&e.ca))
        .identity(etcd_client::Identity::from_pem(&e.cert, e.key.as_slice())))
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

static GLOBAL: RwLock<Option<Arc<LoadedTls>>> = RwLock::new(None);

#[cfg(test)]
pub(crate) mod tests;
