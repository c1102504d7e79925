//! `smem-store`: the standalone config store server.
//!
//! ```text
//! smem-store --listen tcp://127.0.0.1:5124 [--heartbeat-timeout S] [--handshake-timeout S]
//!            [--max-links N] [--max-body-bytes N] [--max-value-bytes N] [--max-total-bytes N]
//!            [--max-keys N] [--max-input-bytes N] [--log-level debug|info|warn|error]
//! ```
//! Prints `listening on tcp://ADDR` once ready; stops cleanly on SIGINT/SIGTERM.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use smem_core::url::StoreUrl;
use smem_linux::store::server::{ServerConfig, StoreServer};
use smem_linux::sys::net::{install_shutdown_signals, shutdown_requested};

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
";

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let _ = writeln!(
                std::io::stderr(),
                "[{}.{:03}] {:5} {}",
                t.as_secs(),
                t.subsec_millis(),
                r.level(),
                r.args()
            );
        }
    }

    fn flush(&self) {}
}

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
            other => return Err(format!("unknown argument {other:?}; see --help")),
        }
    }
    cfg.listen = listen.ok_or("--listen tcp://IP:PORT is required; see --help")?;
    Ok(Some((cfg, level)))
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
    static LOGGER: StderrLogger = StderrLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
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
