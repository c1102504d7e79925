//! `smem-store`: the standalone config store server.
//!
//! ```text
//! smem-store --listen tcp://127.0.0.1:5124 [--heartbeat-timeout S] [--handshake-timeout S]
//!            [--max-links N] [--max-body-bytes N] [--max-value-bytes N] [--max-total-bytes N]
//!            [--max-keys N] [--max-input-bytes N] [--log-level debug|info|warn|error]
//!            [--tls-ca FILE --tls-cert FILE --tls-key FILE [--tls-crl FILE]
//!             [--tls-key-password-file FILE]]
//! ```
//! The key password is read from a file or from `SMEM_TLS_KEY_PASSWORD`, never from the
//! command line (which other users can read in `/proc`).
//! Prints `listening on tcp://ADDR` once ready; stops cleanly on SIGINT/SIGTERM.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use std::path::PathBuf;
use std::sync::Arc;

use smem_core::url::StoreUrl;
use smem_linux::store::server::{ServerConfig, StoreServer};
use smem_linux::sys::net::{install_shutdown_signals, shutdown_requested};
use smem_linux::tls::TlsOptions;
use zeroize::Zeroizing;

const HELP: &str = "\
smem-store: the smem config store server (SPEC 5)

USAGE:
    smem-store --listen tcp://IP:PORT [OPTIONS]

OPTIONS:
    --listen URL              tcp://IPv4:port or tcp://[IPv6]:port (port 0 = any free port)
    --heartbeat-timeout S     close a link silent for S seconds after its first heartbeat
                              (0 = off; default: $MF_CONFIG_STORE_HEARTBEAT_TIMEOUT_S or 60)
    --handshake-timeout S     a connection must send its handshake within S seconds (default 10)
    --max-links N             links open at once (default 2048)
    --max-body-bytes N        largest request frame body (default 67108864)
    --max-value-bytes N       largest stored value (default 67108864)
    --max-total-bytes N       bytes of keys+values stored in total (default 4294967296)
    --max-keys N              keys or values per message (default 1024)
    --max-input-bytes N       bytes of large request bodies buffered at once, over all links
                              (default 1073741824)
    --log-level LEVEL         debug, info, warn or error (default info; env SMEM_LOG_LEVEL)
    -h, --help                this text

MUTUAL TLS (TLS 1.3; every client must present a certificate signed by the CA):
    --tls-ca FILE             PEM bundle of trusted CAs
    --tls-cert FILE           PEM certificate chain of this server
    --tls-key FILE            PEM private key: PKCS#8 (plain or encrypted), PKCS#1 or SEC1
    --tls-crl FILE            PEM CRL(s); revoked client certificates are refused
    --tls-key-password-file FILE
                              password of an encrypted PKCS#8 key (first line of FILE);
                              or set SMEM_TLS_KEY_PASSWORD. Never on the command line.
";

/// Env var with the password of an encrypted TLS key.
const KEY_PASSWORD_ENV: &str = "SMEM_TLS_KEY_PASSWORD";

fn parse_level(s: &str) -> Option<log::LevelFilter> {
    match s.to_ascii_lowercase().as_str() {
        "debug" | "0" => Some(log::LevelFilter::Debug),
        "info" | "1" => Some(log::LevelFilter::Info),
        "warn" | "2" => Some(log::LevelFilter::Warn),
        "error" | "3" => Some(log::LevelFilter::Error),
        _ => None,
    }
}

fn num<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T, String> {
    let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
    v.parse()
        .map_err(|_| format!("{flag}: {v:?} is not a valid number"))
}

fn parse_args(
    args: impl Iterator<Item = String>,
) -> Result<Option<(ServerConfig, log::LevelFilter)>, String> {
    let mut args = args;
    let mut listen = None;
    let mut cfg = ServerConfig::default();
    let mut tls = TlsArgs::default();
    let mut level = std::env::var("SMEM_LOG_LEVEL")
        .ok()
        .and_then(|v| parse_level(&v))
        .unwrap_or(log::LevelFilter::Info);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => {
                let v = args.next().ok_or("--listen needs a URL")?;
                listen = Some(
                    StoreUrl::parse_listen(&v)
                        .map_err(|e| format!("--listen {v:?}: {e}"))?
                        .addr,
                );
            }
            "--heartbeat-timeout" => {
                let s: u64 = num(&a, args.next())?;
                cfg.heartbeat_timeout = (s > 0).then(|| Duration::from_secs(s));
            }
            "--handshake-timeout" => {
                let s: u64 = num(&a, args.next())?;
                if s == 0 {
                    return Err("--handshake-timeout must be at least 1 second".into());
                }
                cfg.handshake_timeout = Duration::from_secs(s);
            }
            "--max-links" => cfg.limits.max_links = num(&a, args.next())?,
            "--max-body-bytes" => {
                let n: u32 = num(&a, args.next())?;
                cfg.limits.max_body_len = n.min(smem_core::wire::MAX_BODY_LEN);
            }
            "--max-value-bytes" => cfg.limits.max_value_len = num(&a, args.next())?,
            "--max-total-bytes" => cfg.limits.max_total_bytes = num(&a, args.next())?,
            "--max-input-bytes" => cfg.limits.max_input_bytes = num(&a, args.next())?,
            "--max-keys" => {
                let n: usize = num(&a, args.next())?;
                cfg.limits.max_keys = n.min(1024);
            }
            "--log-level" => {
                let v = args.next().ok_or("--log-level needs a value")?;
                level = parse_level(&v).ok_or_else(|| {
                    format!("--log-level: {v:?} is not debug, info, warn or error")
                })?;
            }
            "--tls-ca" => tls.ca = Some(path(&a, args.next())?),
            "--tls-cert" => tls.cert = Some(path(&a, args.next())?),
            "--tls-key" => tls.key = Some(path(&a, args.next())?),
            "--tls-crl" => tls.crl = Some(path(&a, args.next())?),
            "--tls-key-password-file" => tls.password_file = Some(path(&a, args.next())?),
            "--tls-key-password" | "--tls-password" => {
                return Err(format!(
                    "{a}: a password on the command line is visible to every user; use \
                     --tls-key-password-file FILE or {KEY_PASSWORD_ENV}"
                ));
            }
            other => return Err(format!("unknown argument {other:?}; see --help")),
        }
    }
    cfg.listen = listen.ok_or("--listen tcp://IP:PORT is required; see --help")?;
    cfg.tls = tls.load()?;
    Ok(Some((cfg, level)))
}

fn path(flag: &str, v: Option<String>) -> Result<PathBuf, String> {
    v.filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| format!("{flag} needs a file"))
}

#[derive(Default)]
struct TlsArgs {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    crl: Option<PathBuf>,
    password_file: Option<PathBuf>,
}

impl TlsArgs {
    /// The loaded TLS setting, `None` without any `--tls-*` flag.
    fn load(self) -> Result<Option<Arc<smem_linux::tls::LoadedTls>>, String> {
        let env_password = std::env::var(KEY_PASSWORD_ENV).ok().map(Zeroizing::new);
        let (ca, cert, key) = match (self.ca, self.cert, self.key) {
            (None, None, None) if self.crl.is_none() && self.password_file.is_none() => {
                return Ok(None);
            }
            (Some(ca), Some(cert), Some(key)) => (ca, cert, key),
            (ca, cert, key) => {
                let missing: Vec<&str> = [
                    (ca.is_none(), "--tls-ca"),
                    (cert.is_none(), "--tls-cert"),
                    (key.is_none(), "--tls-key"),
                ]
                .iter()
                .filter(|(m, _)| *m)
                .map(|(_, f)| *f)
                .collect();
                return Err(format!("TLS needs {} as well", missing.join(", ")));
            }
        };
        let mut options = TlsOptions::new(ca, cert, key);
        if let Some(crl) = self.crl {
            options = options.with_crl_file(crl);
        }
        let password = match (self.password_file, env_password) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "the key password is given both by --tls-key-password-file and \
                     {KEY_PASSWORD_ENV}; keep one"
                ));
            }
            (Some(file), None) => {
                let text = Zeroizing::new(
                    std::fs::read_to_string(&file)
                        .map_err(|e| format!("--tls-key-password-file {}: {e}", file.display()))?,
                );
                Some(Zeroizing::new(
                    text.lines().next().unwrap_or_default().to_owned(),
                ))
            }
            (None, env) => env,
        };
        options.key_password = password;
        options
            .load()
            .map(|t| Some(Arc::new(t)))
            .map_err(|e| e.to_string())
    }
}

fn main() -> ExitCode {
    let (cfg, level) = match parse_args(std::env::args().skip(1)) {
        Ok(Some(c)) => c,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("smem-store: {e}");
            return ExitCode::from(2);
        }
    };
    smem_linux::logging::init();
    let number = match level {
        log::LevelFilter::Off | log::LevelFilter::Error => 3,
        log::LevelFilter::Warn => 2,
        log::LevelFilter::Info => 1,
        log::LevelFilter::Debug | log::LevelFilter::Trace => 0,
    };
    if let Err(e) = smem_linux::logging::set_level(number) {
        eprintln!("smem-store: {e}");
    }
    if let Err(e) = install_shutdown_signals() {
        eprintln!("smem-store: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    let server = match StoreServer::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("smem-store: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "listening on {}",
        StoreUrl {
            addr: server.local_addr()
        }
    );
    let _ = std::io::stdout().flush();
    while !shutdown_requested() {
        std::thread::sleep(Duration::from_millis(50));
    }
    log::info!("signal received, shutting down");
    server.shutdown();
    ExitCode::SUCCESS
}
