//! Store URLs: `tcp://IPv4:port` and `tcp://[IPv6]:port` (SPEC 2.2), and
//! `etcd://host:port[,host:port...][/prefix]` (SPEC 6.4, [`EtcdUrl`]).
//!
//! Host names of `tcp://` are not resolved (no DNS in `core`); the host must be a literal
//! address. Port 0 is refused by [`StoreUrl::parse`] (nobody can connect to it) and accepted by
//! [`StoreUrl::parse_listen`] (bind to any free port). [`AnyStoreUrl::parse`] takes either
//! scheme.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::str::FromStr;

/// The scheme of a rank-hosted (or `smem-store`) config store.
pub const SCHEME: &str = "tcp://";
/// The scheme of a config store on an etcd v3 cluster.
pub const ETCD_SCHEME: &str = "etcd://";
/// The key prefix of an `etcd://` URL without one.
pub const ETCD_DEFAULT_PREFIX: &str = "/smem/";
/// Most endpoints in one `etcd://` URL.
pub const ETCD_MAX_ENDPOINTS: usize = 16;

/// Why a URL was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UrlError {
    /// The URL does not start with `tcp://`.
    MissingScheme,
    /// Nothing between `tcp://` and `:port`.
    MissingHost,
    /// The host is not a literal IPv4 address or a bracketed IPv6 address.
    BadHost,
    /// No `:port` after the host.
    MissingPort,
    /// The port is not a decimal number in `1..=65535` (or `0..=65535` for listening).
    BadPort,
    /// Port 0 where a connectable address is needed.
    PortZero,
    /// The bytes are not UTF-8.
    NotUtf8,
    /// An `etcd://` URL lists more than [`ETCD_MAX_ENDPOINTS`] endpoints, or an empty one.
    BadEndpointList,
    /// The `/prefix` of an `etcd://` URL has a byte outside printable ASCII.
    BadPrefix,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MissingScheme => {
                "store URL must start with tcp:// or etcd:// (e.g. tcp://127.0.0.1:5124 or etcd://10.0.0.1:2379,10.0.0.2:2379/job1/)"
            }
            Self::MissingHost => {
                "store URL has no host (expected tcp://IPv4:port or tcp://[IPv6]:port)"
            }
            Self::BadHost => {
                "store URL host must be a literal IPv4 address or a bracketed IPv6 address"
            }
            Self::MissingPort => "store URL has no :port after the host",
            Self::BadPort => {
                "store URL port must be a decimal number 1..65535 with nothing after it"
            }
            Self::PortZero => "store URL port 0 cannot be connected to; give the real port",
            Self::NotUtf8 => "store URL is not valid UTF-8",
            Self::BadEndpointList => {
                "etcd store URL needs 1..=16 comma-separated host:port endpoints, none empty"
            }
            Self::BadPrefix => {
                "etcd store URL prefix (after the first '/') must be printable ASCII without spaces"
            }
        })
    }
}

impl core::error::Error for UrlError {}

/// A parsed store URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StoreUrl {
    /// The socket address.
    pub addr: SocketAddr,
}

impl StoreUrl {
    /// Parse a URL that clients connect to (port 0 refused).
    ///
    /// # Errors
    /// A [`UrlError`] saying which part is wrong.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let u = Self::parse_listen(url)?;
        if u.addr.port() == 0 {
            Err(UrlError::PortZero)
        } else {
            Ok(u)
        }
    }

    /// Parse a URL to listen on (port 0 = any free port).
    ///
    /// # Errors
    /// A [`UrlError`] saying which part is wrong.
    pub fn parse_listen(url: &str) -> Result<Self, UrlError> {
        let rest = url.strip_prefix(SCHEME).ok_or(UrlError::MissingScheme)?;
        let (ip, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or(UrlError::BadHost)?;
            if host.is_empty() {
                return Err(UrlError::MissingHost);
            }
            let ip = Ipv6Addr::from_str(host).map_err(|_| UrlError::BadHost)?;
            let port = after.strip_prefix(':').ok_or(UrlError::MissingPort)?;
            (IpAddr::V6(ip), port)
        } else {
            let (host, port) = match rest.rsplit_once(':') {
                Some(hp) => hp,
                None if rest.is_empty() => return Err(UrlError::MissingHost),
                None => return Err(UrlError::MissingPort),
            };
            if host.is_empty() {
                return Err(UrlError::MissingHost);
            }
            let ip = Ipv4Addr::from_str(host).map_err(|_| UrlError::BadHost)?;
            (IpAddr::V4(ip), port)
        };
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(UrlError::BadPort);
        }
        let port = u16::from_str(port).map_err(|_| UrlError::BadPort)?;
        Ok(Self {
            addr: SocketAddr::new(ip, port),
        })
    }

    /// Parse bytes (e.g. from C) as a connect URL.
    ///
    /// # Errors
    /// [`UrlError::NotUtf8`] or any error of [`StoreUrl::parse`].
    pub fn parse_bytes(url: &[u8]) -> Result<Self, UrlError> {
        Self::parse(core::str::from_utf8(url).map_err(|_| UrlError::NotUtf8)?)
    }
}

impl FromStr for StoreUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, UrlError> {
        Self::parse(s)
    }
}

impl fmt::Display for StoreUrl {
    /// `tcp://1.2.3.4:5` or `tcp://[::1]:5` (IPv6 scope ids are not part of the URL).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr.ip() {
            IpAddr::V4(ip) => write!(f, "{SCHEME}{ip}:{}", self.addr.port()),
            IpAddr::V6(ip) => write!(f, "{SCHEME}[{ip}]:{}", self.addr.port()),
        }
    }
}

/// One `host:port` of an `etcd://` URL. The host is a literal IPv4 address, a bracketed IPv6
/// address or a DNS name (resolved by the platform, not here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EtcdEndpoint<'a> {
    /// The host as written (IPv6 without its brackets).
    pub host: &'a str,
    /// The port, never 0.
    pub port: u16,
    /// Whether the host is a bracketed IPv6 literal.
    pub v6: bool,
}

impl fmt::Display for EtcdEndpoint<'_> {
    /// `host:port` or `[v6]:port`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.v6 {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A parsed `etcd://host:port[,host:port...][/prefix]` URL, borrowing the text it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EtcdUrl<'a> {
    /// The comma-separated endpoint list, checked.
    list: &'a str,
    /// The prefix including its leading `/` ([`ETCD_DEFAULT_PREFIX`] when the URL has none).
    prefix: &'a str,
}

impl<'a> EtcdUrl<'a> {
    /// Parse an `etcd://` URL: 1..=[`ETCD_MAX_ENDPOINTS`] endpoints, each a literal IPv4
    /// address, a bracketed IPv6 address or a DNS name, with a port 1..=65535; then an optional
    /// key prefix starting at the first `/` (printable ASCII, no spaces).
    ///
    /// # Errors
    /// A [`UrlError`] saying which part is wrong.
    pub fn parse(url: &'a str) -> Result<Self, UrlError> {
        let rest = url
            .strip_prefix(ETCD_SCHEME)
            .ok_or(UrlError::MissingScheme)?;
        let (list, prefix) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ETCD_DEFAULT_PREFIX),
        };
        if !prefix.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(UrlError::BadPrefix);
        }
        if list.is_empty() {
            return Err(UrlError::MissingHost);
        }
        let mut n = 0;
        for one in list.split(',') {
            n += 1;
            if n > ETCD_MAX_ENDPOINTS || one.is_empty() {
                return Err(UrlError::BadEndpointList);
            }
            parse_endpoint(one)?;
        }
        Ok(Self { list, prefix })
    }

    /// Parse bytes (e.g. from C).
    ///
    /// # Errors
    /// [`UrlError::NotUtf8`] or any error of [`EtcdUrl::parse`].
    pub fn parse_bytes(url: &'a [u8]) -> Result<Self, UrlError> {
        Self::parse(core::str::from_utf8(url).map_err(|_| UrlError::NotUtf8)?)
    }

    /// The endpoints, in URL order.
    pub fn endpoints(&self) -> impl Iterator<Item = EtcdEndpoint<'a>> + 'a {
        // Checked by `parse`.
        self.list.split(',').filter_map(|e| parse_endpoint(e).ok())
    }

    /// The key prefix, with its leading `/`, as written (or [`ETCD_DEFAULT_PREFIX`]).
    pub fn prefix(&self) -> &'a str {
        self.prefix
    }
}

impl fmt::Display for EtcdUrl<'_> {
    /// `etcd://` + the endpoints + the prefix (always written, so it parses back the same).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ETCD_SCHEME}{}{}", self.list, self.prefix)
    }
}

fn parse_endpoint(one: &str) -> Result<EtcdEndpoint<'_>, UrlError> {
    let (host, port, v6) = if let Some(v6) = one.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or(UrlError::BadHost)?;
        if host.is_empty() {
            return Err(UrlError::MissingHost);
        }
        Ipv6Addr::from_str(host).map_err(|_| UrlError::BadHost)?;
        (
            host,
            after.strip_prefix(':').ok_or(UrlError::MissingPort)?,
            true,
        )
    } else {
        let (host, port) = one.rsplit_once(':').ok_or(UrlError::MissingPort)?;
        if host.is_empty() {
            return Err(UrlError::MissingHost);
        }
        // A DNS name (RFC 1123 labels) or a dotted IPv4 literal.
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(UrlError::BadHost);
        }
        (host, port, false)
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UrlError::BadPort);
    }
    let port = u16::from_str(port).map_err(|_| UrlError::BadPort)?;
    if port == 0 {
        return Err(UrlError::PortZero);
    }
    Ok(EtcdEndpoint { host, port, v6 })
}

/// A store URL of either scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnyStoreUrl<'a> {
    /// `tcp://`: a rank-hosted store or `smem-store`.
    Tcp(StoreUrl),
    /// `etcd://`: an etcd v3 cluster.
    Etcd(EtcdUrl<'a>),
}

impl<'a> AnyStoreUrl<'a> {
    /// Parse a connect URL of either scheme.
    ///
    /// # Errors
    /// A [`UrlError`] saying which part is wrong.
    pub fn parse(url: &'a str) -> Result<Self, UrlError> {
        if url.starts_with(ETCD_SCHEME) {
            EtcdUrl::parse(url).map(Self::Etcd)
        } else {
            StoreUrl::parse(url).map(Self::Tcp)
        }
    }

    /// Parse bytes (e.g. from C) as a connect URL of either scheme.
    ///
    /// # Errors
    /// [`UrlError::NotUtf8`] or any error of [`AnyStoreUrl::parse`].
    pub fn parse_bytes(url: &'a [u8]) -> Result<Self, UrlError> {
        Self::parse(core::str::from_utf8(url).map_err(|_| UrlError::NotUtf8)?)
    }
}

impl fmt::Display for AnyStoreUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(u) => u.fmt(f),
            Self::Etcd(u) => u.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::string::ToString;

    use super::*;

    #[test]
    fn parses_v4_and_v6() {
        let u = StoreUrl::parse("tcp://127.0.0.1:5124").unwrap();
        assert_eq!(u.addr, SocketAddr::from(([127, 0, 0, 1], 5124)));
        assert_eq!(u.to_string(), "tcp://127.0.0.1:5124");
        let u = StoreUrl::parse("tcp://[::1]:80").unwrap();
        assert_eq!(u.addr, SocketAddr::from((Ipv6Addr::LOCALHOST, 80)));
        assert_eq!(u.to_string(), "tcp://[::1]:80");
        assert_eq!(
            StoreUrl::parse_listen("tcp://0.0.0.0:0")
                .unwrap()
                .addr
                .port(),
            0
        );
    }

    #[test]
    fn refuses_bad_urls() {
        use UrlError::*;
        let cases: &[(&str, UrlError)] = &[
            ("127.0.0.1:1", MissingScheme),
            ("http://127.0.0.1:1", MissingScheme),
            ("tcp://", MissingHost),
            ("tcp://:5", MissingHost),
            ("tcp://[]:5", MissingHost),
            ("tcp://127.0.0.1", MissingPort),
            ("tcp://[::1]", MissingPort),
            ("tcp://localhost:5", BadHost),
            ("tcp://::1:5", BadHost),
            ("tcp://[::1:5", BadHost),
            ("tcp://1.2.3.4:", BadPort),
            ("tcp://1.2.3.4:65536", BadPort),
            ("tcp://1.2.3.4:+5", BadPort),
            ("tcp://1.2.3.4:5/", BadPort),
            ("tcp://1.2.3.4:5 ", BadPort),
            ("tcp://[::1]:5x", BadPort),
            ("tcp://1.2.3.4:0", PortZero),
        ];
        for (url, err) in cases {
            assert_eq!(StoreUrl::parse(url), Err(*err), "{url}");
        }
        assert_eq!(StoreUrl::parse_bytes(b"tcp://\xff:1"), Err(NotUtf8));
    }

    #[test]
    fn parses_etcd_urls() {
        let u = EtcdUrl::parse("etcd://127.0.0.1:2379").unwrap();
        assert_eq!(u.prefix(), ETCD_DEFAULT_PREFIX);
        let eps: std::vec::Vec<_> = u.endpoints().collect();
        assert_eq!(
            eps,
            [EtcdEndpoint {
                host: "127.0.0.1",
                port: 2379,
                v6: false
            }]
        );
        assert_eq!(u.to_string(), "etcd://127.0.0.1:2379/smem/");
        let u = EtcdUrl::parse("etcd://a.example:1,[::1]:2,10.0.0.3:3/jobs/7/").unwrap();
        let eps: std::vec::Vec<_> = u.endpoints().map(|e| e.to_string()).collect();
        assert_eq!(eps, ["a.example:1", "[::1]:2", "10.0.0.3:3"]);
        assert_eq!(u.prefix(), "/jobs/7/");
        assert_eq!(EtcdUrl::parse(&u.to_string()), Ok(u));
        assert_eq!(
            AnyStoreUrl::parse("etcd://h:1/p"),
            Ok(AnyStoreUrl::Etcd(EtcdUrl::parse("etcd://h:1/p").unwrap()))
        );
        assert!(matches!(
            AnyStoreUrl::parse("tcp://1.2.3.4:5"),
            Ok(AnyStoreUrl::Tcp(_))
        ));
    }

    #[test]
    fn refuses_bad_etcd_urls() {
        use UrlError::*;
        let cases: &[(&str, UrlError)] = &[
            ("etcd://", MissingHost),
            ("etcd:///p", MissingHost),
            ("etcd://h", MissingPort),
            ("etcd://:1", MissingHost),
            ("etcd://h:0", PortZero),
            ("etcd://h:65536", BadPort),
            ("etcd://h:1,", BadEndpointList),
            ("etcd://h:1,,h:2", BadEndpointList),
            ("etcd://-h:1", BadHost),
            ("etcd://h_x:1", BadHost),
            ("etcd://[::1:1", BadHost),
            ("etcd://[]:1", MissingHost),
            ("etcd://[::1]1", MissingPort),
            ("etcd://h:1/a b", BadPrefix),
            ("etcd://h:1/\u{e9}", BadPrefix),
        ];
        for (url, err) in cases {
            assert_eq!(AnyStoreUrl::parse(url), Err(*err), "{url}");
        }
        let many = "etcd://h:1,h:1,h:1,h:1,h:1,h:1,h:1,h:1,h:1,h:1,h:1,h:1,h:1,h:1,h:1,h:1,h:1";
        assert_eq!(EtcdUrl::parse(many), Err(BadEndpointList));
        assert_eq!(EtcdUrl::parse_bytes(b"etcd://h:1/\xff"), Err(NotUtf8));
    }
}
