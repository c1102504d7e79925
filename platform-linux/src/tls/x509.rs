//! Just enough X.509 to name a peer in logs and to find the IP address SANs of a server
//! certificate: a bounds-checked DER walker over an already parsed (by webpki) certificate.
//!
//! Every function returns `None` on anything unexpected; nothing here panics or allocates
//! more than the names it returns. Validity of the certificate is webpki's job, not ours.

use std::net::IpAddr;

/// What we read from a certificate for logs and name checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CertSummary {
    /// Subject common name (2.5.4.3), if any and if it is a string type.
    pub(crate) common_name: Option<String>,
    /// `iPAddress` entries of the subject alternative name extension.
    pub(crate) ip_sans: Vec<IpAddr>,
    /// `dNSName` entries of the subject alternative name extension.
    pub(crate) dns_sans: Vec<String>,
    /// Serial number bytes as encoded (big-endian, maybe a leading zero).
    pub(crate) serial: Vec<u8>,
}

impl CertSummary {
    /// A short human name for logs: `CN=…`, else the first SAN, else the serial.
    pub(crate) fn display_name(&self) -> String {
        if let Some(cn) = &self.common_name {
            return format!("CN={cn}");
        }
        if let Some(dns) = self.dns_sans.first() {
            return format!("DNS={dns}");
        }
        if let Some(ip) = self.ip_sans.first() {
            return format!("IP={ip}");
        }
        let hex: String = self.serial.iter().map(|b| format!("{b:02x}")).collect();
        format!("serial=0x{hex}")
    }
}

/// Reads subject CN, SANs and serial from a DER certificate.
pub(crate) fn summarize(cert_der: &[u8]) -> Option<CertSummary> {
    let mut input = cert_der;
    let cert = read_tlv(&mut input, tag::SEQUENCE)?;
    let mut cert_body = cert;
    let mut tbs = read_tlv(&mut cert_body, tag::SEQUENCE)?;

    if peek_tag(tbs) == Some(tag::VERSION) {
        read_tlv(&mut tbs, tag::VERSION)?;
    }
    let serial = read_tlv(&mut tbs, tag::INTEGER)?;
    read_tlv(&mut tbs, tag::SEQUENCE)?; // signature algorithm
    read_tlv(&mut tbs, tag::SEQUENCE)?; // issuer
    read_tlv(&mut tbs, tag::SEQUENCE)?; // validity
    let subject = read_tlv(&mut tbs, tag::SEQUENCE)?;
    read_tlv(&mut tbs, tag::SEQUENCE)?; // subject public key info

    let mut summary = CertSummary {
        common_name: common_name(subject),
        serial: serial.to_vec(),
        ..CertSummary::default()
    };

    // issuerUniqueID [1], subjectUniqueID [2] (primitive or constructed), extensions [3].
    while let Some((t, value)) = read_any(&mut tbs) {
        if t != tag::EXTENSIONS {
            continue;
        }
        let mut exts_outer = value;
        let mut exts = read_tlv(&mut exts_outer, tag::SEQUENCE)?;
        while !exts.is_empty() {
            let mut ext = read_tlv(&mut exts, tag::SEQUENCE)?;
            let oid = read_tlv(&mut ext, tag::OID)?;
            if peek_tag(ext) == Some(tag::BOOLEAN) {
                read_tlv(&mut ext, tag::BOOLEAN)?;
            }
            let octets = read_tlv(&mut ext, tag::OCTET_STRING)?;
            if oid == OID_SUBJECT_ALT_NAME {
                subject_alt_names(octets, &mut summary)?;
            }
        }
    }
    Some(summary)
}

fn common_name(mut name: &[u8]) -> Option<String> {
    while !name.is_empty() {
        let mut rdn = read_tlv(&mut name, tag::SET)?;
        while !rdn.is_empty() {
            let mut atv = read_tlv(&mut rdn, tag::SEQUENCE)?;
            let oid = read_tlv(&mut atv, tag::OID)?;
            let (t, value) = read_any(&mut atv)?;
            if oid == OID_COMMON_NAME && tag::is_string(t) {
                return Some(String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    None
}

fn subject_alt_names(mut octets: &[u8], summary: &mut CertSummary) -> Option<()> {
    let mut names = read_tlv(&mut octets, tag::SEQUENCE)?;
    while let Some((t, value)) = read_any(&mut names) {
        match t {
            tag::SAN_DNS => summary
                .dns_sans
                .push(String::from_utf8_lossy(value).into_owned()),
            tag::SAN_IP => {
                if let Ok(v4) = <[u8; 4]>::try_from(value) {
                    summary.ip_sans.push(IpAddr::from(v4));
                } else if let Ok(v6) = <[u8; 16]>::try_from(value) {
                    summary.ip_sans.push(IpAddr::from(v6));
                }
            }
            _ => {}
        }
    }
    Some(())
}

fn peek_tag(input: &[u8]) -> Option<u8> {
    input.first().copied()
}

/// Reads one TLV whose tag must be `expected`; returns its value and advances `input`.
fn read_tlv<'a>(input: &mut &'a [u8], expected: u8) -> Option<&'a [u8]> {
    match read_any(input)? {
        (t, value) if t == expected => Some(value),
        _ => None,
    }
}

/// Reads one TLV of any (low-number) tag.
fn read_any<'a>(input: &mut &'a [u8]) -> Option<(u8, &'a [u8])> {
    let (&t, rest) = input.split_first()?;
    if t & 0x1f == 0x1f {
        return None; // high tag numbers never occur in the structures we walk
    }
    let (&len0, mut rest) = rest.split_first()?;
    let len = if len0 < 0x80 {
        usize::from(len0)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 {
            return None; // indefinite length is not DER; > 4 GiB is not a certificate
        }
        let (bytes, after) = rest.split_at_checked(n)?;
        rest = after;
        bytes
            .iter()
            .fold(0_usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    let (value, after) = rest.split_at_checked(len)?;
    *input = after;
    Some((t, value))
}

/// What decides whether webpki can use a DER CRL (`CertificateList`), read before it is handed
/// to webpki so that a well-formed but unsupported CRL gets a precise error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CrlShape {
    /// The `version` field: `None` when absent (a version 1 CRL), `Some(1)` for version 2.
    pub(crate) version: Option<u8>,
    /// Whether `crlExtensions [0]` is present (webpki requires it: CRL number, AKI).
    pub(crate) has_extensions: bool,
    /// Issuer common name, for the message.
    pub(crate) issuer_cn: Option<String>,
}

/// Reads the version, issuer CN and presence of extensions of a DER CRL; `None` when the DER
/// is not shaped like a `CertificateList` (webpki then reports the parse error).
pub(crate) fn crl_shape(crl_der: &[u8]) -> Option<CrlShape> {
    let mut input = crl_der;
    let mut list = read_tlv(&mut input, tag::SEQUENCE)?;
    let mut tbs = read_tlv(&mut list, tag::SEQUENCE)?;
    let version = if peek_tag(tbs) == Some(tag::INTEGER) {
        match read_tlv(&mut tbs, tag::INTEGER)? {
            [v] => Some(*v),
            _ => return None,
        }
    } else {
        None
    };
    read_tlv(&mut tbs, tag::SEQUENCE)?; // signature algorithm
    let issuer = read_tlv(&mut tbs, tag::SEQUENCE)?;
    read_any(&mut tbs)?; // thisUpdate
    let mut has_extensions = false;
    // nextUpdate, revokedCertificates (both optional), crlExtensions [0].
    while !tbs.is_empty() {
        let (t, _) = read_any(&mut tbs)?;
        has_extensions |= t == tag::CRL_EXTENSIONS;
    }
    Some(CrlShape {
        version,
        has_extensions,
        issuer_cn: common_name(issuer),
    })
}

/// 2.5.4.3 (id-at-commonName), content octets.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// 2.5.29.17 (id-ce-subjectAltName), content octets.
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

mod tag {
    pub(super) const BOOLEAN: u8 = 0x01;
    pub(super) const INTEGER: u8 = 0x02;
    pub(super) const OCTET_STRING: u8 = 0x04;
    pub(super) const OID: u8 = 0x06;
    pub(super) const SEQUENCE: u8 = 0x30;
    pub(super) const SET: u8 = 0x31;
    /// `[0] EXPLICIT Version` of TBSCertificate.
    pub(super) const VERSION: u8 = 0xa0;
    /// `[0] EXPLICIT Extensions` of TBSCertList (crlExtensions).
    pub(super) const CRL_EXTENSIONS: u8 = 0xa0;
    /// `[3] EXPLICIT Extensions` of TBSCertificate.
    pub(super) const EXTENSIONS: u8 = 0xa3;
    /// `dNSName [2] IA5String` in GeneralName.
    pub(super) const SAN_DNS: u8 = 0x82;
    /// `iPAddress [7] OCTET STRING` in GeneralName.
    pub(super) const SAN_IP: u8 = 0x87;

    /// UTF8String, PrintableString, T61String, IA5String, BMPString (lossy), UniversalString.
    pub(super) fn is_string(t: u8) -> bool {
        matches!(t, 0x0c | 0x13 | 0x14 | 0x16 | 0x1c | 0x1e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_garbage_inputs_give_none() {
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[0x30]), None);
        assert_eq!(summarize(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(summarize(&[0x30, 0x80, 0x00, 0x00]), None);
        assert_eq!(summarize(&[0x1f, 0x01, 0x00]), None);
        assert_eq!(summarize(&[0x30, 0x02, 0x30, 0x00]), None);
    }

    /// A version 1 CRL as `openssl ca -gencrl` writes it without CRL extensions (the
    /// signature bytes are dummies: only the shape is read).
    const V1_CRL: &[u8] = &[
        0x30, 0x4b, // CertificateList
        0x30, 0x3b, // TBSCertList, no version
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03,
        0x02, // ecdsa-sha256
        0x30, 0x0f, 0x31, 0x0d, 0x30, 0x0b, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x04, b'T', b'e',
        b's', b't', // issuer CN=Test
        0x17, 0x0d, b'2', b'5', b'0', b'1', b'0', b'1', b'0', b'0', b'0', b'0', b'0', b'0',
        b'Z', // thisUpdate
        0x17, 0x0d, b'3', b'5', b'0', b'1', b'0', b'1', b'0', b'0', b'0', b'0', b'0', b'0',
        b'Z', // nextUpdate
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02, // algorithm
        0x03, 0x00, // signature (dummy, empty)
    ];

    #[test]
    fn crl_versions_and_extensions_are_told_apart() {
        assert_eq!(
            crl_shape(V1_CRL),
            Some(CrlShape {
                version: None,
                has_extensions: false,
                issuer_cn: Some("Test".into()),
            })
        );
        // The same with `version v2` and crlExtensions [0] { } (empty: shape only).
        let mut tbs = vec![0x02, 0x01, 0x01];
        tbs.extend_from_slice(&V1_CRL[4..4 + 0x3b]);
        tbs.extend_from_slice(&[0xa0, 0x02, 0x30, 0x00]);
        let mut der = vec![0x30, 0x00, 0x30, tbs.len() as u8];
        der.extend_from_slice(&tbs);
        der.extend_from_slice(&V1_CRL[4 + 0x3b..]);
        der[1] = (der.len() - 2) as u8;
        let shape = crl_shape(&der).expect("v2 shape");
        assert_eq!((shape.version, shape.has_extensions), (Some(1), true));
        assert_eq!(crl_shape(&V1_CRL[..20]), None);
        assert_eq!(crl_shape(&[]), None);
    }

    #[test]
    fn long_form_lengths_are_read() {
        let mut input: &[u8] = &[0x04, 0x81, 0x02, 0xaa, 0xbb, 0xcc];
        assert_eq!(read_any(&mut input), Some((0x04, &[0xaa, 0xbb][..])));
        assert_eq!(input, &[0xcc]);
    }
}
