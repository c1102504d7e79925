//! A throw-away PKI for TLS tests: CAs, server/client certificates (good, expired, revoked,
//! from another CA), CRLs and encrypted PKCS#8 keys, generated with rcgen into a temporary
//! directory that is removed on drop. No private key is ever committed.
//!
//! Shared by the unit tests of `tls.rs` (`#[path]`) and the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};

/// A directory under the system temp dir, removed (with its files) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "smem-tls-{tag}-{}-{n}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` in the directory; returns the path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A certificate authority: its certificate and key.
pub struct Ca {
    pub cert: Certificate,
    pub key: KeyPair,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(SerialNumber::from(1_u64));
        let cert = params.self_signed(&key).expect("CA cert");
        Self { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Issues a leaf certificate.
    pub fn issue(&self, spec: &LeafSpec) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, spec.cn);
        params.subject_alt_names = spec
            .ips
            .iter()
            .map(|ip| SanType::IpAddress(*ip))
            .chain(
                spec.dns
                    .iter()
                    .map(|d| SanType::DnsName((*d).try_into().expect("dns name"))),
            )
            .collect();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(SerialNumber::from(spec.serial));
        if spec.expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf cert");
        Leaf { cert, key }
    }

    /// A CRL of this CA revoking `serials`.
    pub fn crl_pem(&self, serials: &[u64]) -> String {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2020, 1, 1),
            next_update: date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(1_u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: date_time_ymd(2020, 1, 2),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.cert, &self.key)
            .expect("CRL")
            .pem()
            .expect("CRL PEM")
    }
}

/// What to put in a leaf certificate.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub cn: &'static str,
    pub serial: u64,
    pub ips: Vec<IpAddr>,
    pub dns: Vec<&'static str>,
    pub expired: bool,
}

impl LeafSpec {
    /// A certificate valid for 127.0.0.1 (and `localhost`), both client and server use.
    pub fn loopback(cn: &'static str, serial: u64) -> Self {
        Self {
            cn,
            serial,
            ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            dns: vec!["localhost"],
            expired: false,
        }
    }
}

/// A leaf certificate and its key.
pub struct Leaf {
    pub cert: Certificate,
    pub key: KeyPair,
}

impl Leaf {
    /// The key as plain PKCS#8 DER.
    pub fn pkcs8_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }

    /// The key as plain PKCS#8 PEM (`PRIVATE KEY`).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The key as encrypted PKCS#8 PEM (PBES2, PBKDF2-HMAC-SHA256, AES-256-CBC).
    pub fn encrypted_key_pem(&self, password: &str) -> String {
        let der = self.pkcs8_der();
        let info = pkcs8::PrivateKeyInfo::try_from(der.as_slice()).expect("pkcs8");
        let params = pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(
            2048,
            b"smem-test-salt-16",
            &[7_u8; 16],
        )
        .expect("pbes2 params");
        let enc = info
            .encrypt_with_params(params, password.as_bytes())
            .expect("encrypt");
        pem::encode(&pem::Pem::new("ENCRYPTED PRIVATE KEY", enc.as_bytes()))
    }

    /// The EC key as SEC1 PEM (`EC PRIVATE KEY`): the inner key of the PKCS#8 structure.
    pub fn sec1_key_pem(&self) -> String {
        let der = self.pkcs8_der();
        let info = pkcs8::PrivateKeyInfo::try_from(der.as_slice()).expect("pkcs8");
        pem::encode(&pem::Pem::new("EC PRIVATE KEY", info.private_key))
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }
}

/// A CA with a server and a client certificate written to a temp dir.
pub struct Pki {
    pub dir: TempDir,
    pub ca: Ca,
    pub ca_file: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let ca = Ca::new("smem test CA");
        let server = ca.issue(&LeafSpec::loopback("store-server", 10));
        let client = ca.issue(&LeafSpec::loopback("rank-client", 20));
        let ca_file = dir.write("ca.pem", ca.pem());
        let server_cert = dir.write("server.pem", server.cert_pem());
        let server_key = dir.write("server.key", server.key_pem());
        let client_cert = dir.write("client.pem", client.cert_pem());
        let client_key = dir.write("client.key", client.key_pem());
        Self {
            dir,
            ca,
            ca_file,
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }

    /// Issues a leaf from this PKI's CA and writes `NAME.pem`/`NAME.key`.
    pub fn leaf_files(&self, name: &str, spec: &LeafSpec) -> (PathBuf, PathBuf) {
        let leaf = self.ca.issue(spec);
        (
            self.dir.write(&format!("{name}.pem"), leaf.cert_pem()),
            self.dir.write(&format!("{name}.key"), leaf.key_pem()),
        )
    }
}
