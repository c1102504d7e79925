//! Reading the PEM files of [`super::TlsOptions`]: CA bundle, certificate chain, CRLs and the
//! private key (plain or encrypted PKCS#8, PKCS#1, SEC1). Every error names the file.

use std::fs;
use std::path::Path;

use pkcs8::{EncryptedPrivateKeyInfo, PrivateKeyInfo};
use rustls::RootCertStore;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs1KeyDer,
    PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};
use zeroize::Zeroizing;

use super::{file_error, x509};
use crate::Result;

/// A key in PEM (decrypted), as the gRPC TLS configuration of the etcd client takes it.
pub(super) fn pem_of_key(key: &PrivateKeyDer<'_>) -> String {
    let tag = match key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    pem::encode(&pem::Pem::new(tag, key.secret_der().to_vec()))
}

pub(super) fn read_file(kind: &str, path: &Path) -> Result<Zeroizing<Vec<u8>>> {
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

/// The contents of every `tag` section of the PEM file `path` (a `kind` file).
///
/// # Errors
/// The file is unreadable, not PEM, or has no `tag` section (the message names the tags found).
fn sections_tagged(kind: &str, path: &Path, tag: &str) -> Result<Vec<Vec<u8>>> {
    let bytes = read_file(kind, path)?;
    let sections = parse_pem(kind, path, &bytes)?;
    let tagged: Vec<Vec<u8>> = sections
        .iter()
        .filter(|s| s.tag() == tag)
        .map(|s| s.contents().to_vec())
        .collect();
    if tagged.is_empty() {
        return Err(file_error(
            kind,
            path,
            format!("no {tag} in the PEM (found: {})", found_tags(&sections)),
        ));
    }
    Ok(tagged)
}

pub(super) fn load_roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in sections_tagged("CA", path, "CERTIFICATE")?
        .into_iter()
        .enumerate()
    {
        roots.add(CertificateDer::from(cert)).map_err(|e| {
            file_error(
                "CA",
                path,
                format!("certificate #{} is not a usable CA: {e}", i + 1),
            )
        })?;
    }
    Ok(roots)
}

pub(super) fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let chain = sections_tagged("cert", path, "CERTIFICATE")?;
    Ok(chain.into_iter().map(CertificateDer::from).collect())
}

pub(super) fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let crls: Vec<CertificateRevocationListDer<'static>> =
        sections_tagged("CRL", path, "X509 CRL")?
            .into_iter()
            .map(CertificateRevocationListDer::from)
            .collect();
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

pub(super) fn load_key(path: &Path, password: Option<&str>) -> Result<PrivateKeyDer<'static>> {
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
