//! Store URLs: `tcp://IPv4:port` and `tcp://[IPv6]:port` (SPEC 2.2).
//!
//! Host names are not resolved (no DNS in `core`); the host must be a literal address. Port 0
//! is refused by [`StoreUrl::parse`] (nobody can connect to it) and accepted by
//! [`StoreUrl::parse_listen`] (bind to any free port).

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::str::FromStr;

/// The only scheme.
pub const SCHEME: &str = "tcp://";

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
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MissingScheme => "store URL must start with tcp:// (e.g. tcp://127.0.0.1:5124)",
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
}
