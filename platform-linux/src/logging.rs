//! Process-wide logger behind the [`log`] facade.
//!
//! Every crate of smem logs through `log::{debug, info, warn, error}!`; this module installs the
//! one logger that decides where those records go:
//!
//! - **Level filter.** Four levels with the C API's numbering: [`DEBUG`] (0), [`INFO`] (1),
//!   [`WARN`] (2), [`ERROR`] (3); `log`'s `Trace` counts as debug. A record is emitted when its
//!   level is at or above the current level. The initial level comes from the environment
//!   variable `SMEM_LOG_LEVEL` (a number `0..=3` or a name: `debug`, `info`, `warn`/`warning`,
//!   `error`, case-insensitive; `trace` means debug); unset or unparsable means [`INFO`] (an
//!   unparsable value is reported once with a warning). [`set_level`] changes it at any time.
//! - **Default sink: stderr**, one line per record:
//!   `2026-11-25T09:20:23.123Z WARN  [main/1] smem_linux::store: message`
//!   (UTC timestamp with milliseconds, level, thread name or `-` / the thread's numeric id,
//!   target, message). The line is written with a single `write_all` on a duplicate of fd 2
//!   (not through the lock of `std::io::stderr()`, see below), so lines of concurrent threads
//!   do not interleave.
//! - **External sink** ([`set_sink`]): a `fn(level, msg)` that replaces stderr; the level filter
//!   applies to it too. It receives `"<target>: <message>"` (no timestamp: the host application
//!   adds its own). `None` restores stderr.
//!
//! # Locks, re-entrancy, fork
//! The external sink is never called while the logging thread holds a lock of smem (SPEC 2.1):
//! every lock is taken through [`crate::sync`], which counts the locks each thread holds; a
//! record logged while the count is above zero is queued on that thread (at most
//! [`DEFERRED_MAX`] records; beyond that they are counted and reported as dropped) and handed to
//! the sink, in order, as soon as the thread's last lock is released. Records for stderr are
//! written at once. The log path itself takes no lock at all (stderr is written on a duplicated descriptor, not
//! through `std::io::stderr()` and its lock): the sink's function pointer lives in a write-once slot
//! (`OnceLock`, lock-free to read) chosen by an atomic index, so it is copied out with two
//! atomic loads and then called. A sink is therefore never called while a lock of this module
//! is held, may call back into smem (including [`set_sink`]), and a child forked while other
//! threads were logging cannot find a lock held by a thread that no longer exists. Up to
//! [`SINK_SLOTS`] distinct sinks can be installed over the life of the process (re-installing
//! one reuses its slot). If a sink logs through smem on the same thread while it is running,
//! that nested record goes to stderr instead of recursing.
//!
//! # Other loggers
//! [`init`] installs this logger with `log::set_logger` once; if the host process already
//! installed another `log` logger (e.g. a Rust application linking `smem-linux` directly),
//! that one stays in charge and this module only keeps its level.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

use smem_core::ErrorCode;

use crate::{Error, Result};

/// Level 0: debug (and trace) records and above.
pub const DEBUG: i32 = 0;
/// Level 1: info and above (the default).
pub const INFO: i32 = 1;
/// Level 2: warnings and errors.
pub const WARN: i32 = 2;
/// Level 3: errors only.
pub const ERROR: i32 = 3;

/// The environment variable read by [`init`] for the initial level.
pub const LEVEL_ENV: &str = "SMEM_LOG_LEVEL";

/// An external log sink: receives the record's level (`0..=3`) and `"<target>: <message>"`.
pub type Sink = fn(level: i32, msg: &str);

static LEVEL: AtomicI32 = AtomicI32::new(INFO);
/// How many distinct external sinks a process can install over its life.
pub const SINK_SLOTS: usize = 8;
/// Write-once slots holding every sink ever installed.
static SINKS: [OnceLock<Sink>; SINK_SLOTS] = [const { OnceLock::new() }; SINK_SLOTS];
/// 1 + the slot of the active sink; 0: none (stderr).
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
static INIT: Once = Once::new();
/// Whether `log::set_logger` installed our logger (then we also drive `log::max_level`).
static OURS: AtomicBool = AtomicBool::new(false);
static LOGGER: SmemLogger = SmemLogger;

/// Records one thread queues for the external sink while it holds locks; more are dropped
/// (and counted).
pub const DEFERRED_MAX: usize = 1024;

thread_local! {
    /// Set while this thread runs the external sink (re-entrancy guard).
    static IN_SINK: Cell<bool> = const { Cell::new(false) };
    /// Set while [`DEFERRED`] holds something (checked on every release of a thread's last lock).
    static PENDING: Cell<bool> = const { Cell::new(false) };
    /// Records for the external sink logged while this thread held a lock, and how many more
    /// were dropped over [`DEFERRED_MAX`].
    static DEFERRED: RefCell<(Vec<(i32, String)>, usize)> = const { RefCell::new((Vec::new(), 0)) };
}

/// Installs the logger (once per process) and reads `SMEM_LOG_LEVEL`. Idempotent and cheap
/// after the first call; every other function of this module calls it.
pub fn init() {
    crate::sync::once(&INIT, || {
        let env = std::env::var(LEVEL_ENV).ok();
        let bad = match env.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(v) => match parse_level(v) {
                Some(l) => {
                    LEVEL.store(l, Ordering::Relaxed);
                    None
                }
                None => Some(v.to_owned()),
            },
        };
        if log::set_logger(&LOGGER).is_ok() {
            OURS.store(true, Ordering::Relaxed);
            sync_max_level();
        }
        if let Some(v) = bad {
            log::warn!(
                target: "smem::logging",
                "{LEVEL_ENV}={v:?} is not a level (0..3 or debug/info/warn/error); using info"
            );
        }
    });
}

/// Parses a level: a number `0..=3` or a name (`trace`/`debug`, `info`, `warn`/`warning`,
/// `error`; case-insensitive, surrounding blanks ignored).
pub fn parse_level(s: &str) -> Option<i32> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return (DEBUG..=ERROR).contains(&n).then_some(n);
    }
    match s.to_ascii_lowercase().as_str() {
        "trace" | "debug" => Some(DEBUG),
        "info" => Some(INFO),
        "warn" | "warning" => Some(WARN),
        "error" => Some(ERROR),
        _ => None,
    }
}

/// Sets the level: 0 debug, 1 info, 2 warn, 3 error.
///
/// # Errors
/// `SM_INVALID_PARAM` when `level` is outside `0..=3`; the level is unchanged then.
pub fn set_level(level: i32) -> Result<()> {
    init();
    if !(DEBUG..=ERROR).contains(&level) {
        return Err(Error::invalid(format!(
            "log level must be 0 (debug), 1 (info), 2 (warn) or 3 (error), got {level}"
        )));
    }
    LEVEL.store(level, Ordering::Relaxed);
    sync_max_level();
    Ok(())
}

/// Lets the `log` macros skip disabled records without calling the logger.
fn sync_max_level() {
    if OURS.load(Ordering::Relaxed) {
        log::set_max_level(match LEVEL.load(Ordering::Relaxed) {
            DEBUG => LevelFilter::Trace,
            INFO => LevelFilter::Info,
            WARN => LevelFilter::Warn,
            _ => LevelFilter::Error,
        });
    }
}

/// The current level (`0..=3`).
pub fn level() -> i32 {
    init();
    LEVEL.load(Ordering::Relaxed)
}

/// Sends records to `sink` instead of stderr; `None` restores stderr.
///
/// # Errors
/// `SM_LIMIT_EXCEEDED` when [`SINK_SLOTS`] other sinks were already installed in this process
/// (the active sink is unchanged then).
#[allow(clippy::disallowed_methods)] // `get_or_init` here logs nothing (it stores `f`).
pub fn set_sink(sink: Option<Sink>) -> Result<()> {
    init();
    let Some(f) = sink else {
        ACTIVE.store(0, Ordering::Release);
        return Ok(());
    };
    for (i, slot) in SINKS.iter().enumerate() {
        if std::ptr::fn_addr_eq(*slot.get_or_init(|| f), f) {
            ACTIVE.store(i + 1, Ordering::Release);
            return Ok(());
        }
    }
    Err(Error::new(
        ErrorCode::LimitExceeded,
        format!("{SINK_SLOTS} different log sinks were already installed in this process"),
    ))
}

/// The current external sink, copied out (lock-free).
pub fn sink() -> Option<Sink> {
    match ACTIVE.load(Ordering::Acquire) {
        0 => None,
        i => SINKS.get(i - 1).and_then(OnceLock::get).copied(),
    }
}

/// The C numbering of a `log` level.
pub fn level_number(level: Level) -> i32 {
    match level {
        Level::Trace | Level::Debug => DEBUG,
        Level::Info => INFO,
        Level::Warn => WARN,
        Level::Error => ERROR,
    }
}

/// Whether a record of `level` passes the current filter.
pub fn enabled(level: Level) -> bool {
    level_number(level) >= LEVEL.load(Ordering::Relaxed)
}

struct SmemLogger;

impl Log for SmemLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        enabled(metadata.level())
    }

    fn log(&self, record: &Record<'_>) {
        if !enabled(record.level()) {
            return;
        }
        let level = level_number(record.level());
        if sink().is_some() {
            let msg = format!("{}: {}", record.target(), record.args());
            if crate::sync::held() > 0 {
                defer(level, msg);
            } else {
                emit(level, &msg);
            }
            return;
        }
        write_stderr(record);
    }

    fn flush(&self) {}
}

/// Queues a record of a thread that holds a lock (see the module docs).
fn defer(level: i32, msg: String) {
    let queued = DEFERRED.try_with(|d| {
        let mut d = d.borrow_mut();
        if d.0.len() < DEFERRED_MAX {
            d.0.push((level, msg));
        } else {
            d.1 += 1;
        }
    });
    if queued.is_ok() {
        let _ = PENDING.try_with(|p| p.set(true));
    }
}

/// Hands the records this thread queued while it held locks to the sink (stderr if the sink was
/// removed meanwhile). Called by [`crate::sync`] when the thread's last lock is released.
pub(crate) fn flush_deferred() {
    if !PENDING.try_with(|p| p.replace(false)).unwrap_or(false) {
        return;
    }
    let Ok((records, dropped)) = DEFERRED.try_with(|d| std::mem::take(&mut *d.borrow_mut())) else {
        return;
    };
    // The sink may take locks and log again: those records queue anew and flush when its last
    // lock is released, after the ones taken out here started.
    for (level, msg) in records {
        emit(level, &msg);
    }
    if dropped > 0 {
        emit(
            WARN,
            &format!(
                "smem::logging: {dropped} log records were dropped: more than {DEFERRED_MAX} were logged while one thread held locks"
            ),
        );
    }
}

/// Sends one record to the external sink, or to stderr when there is none or this thread is
/// already inside the sink (a record the sink logs through smem must not recurse).
fn emit(level: i32, msg: &str) {
    if let Some(sink) = sink() {
        // `sink()` returned a copy of the pointer; no lock is held.
        let entered = IN_SINK.try_with(|f| !f.replace(true)).unwrap_or(false);
        if entered {
            sink(level, msg);
            let _ = IN_SINK.try_with(|f| f.set(false));
            return;
        }
    }
    let name = match level {
        DEBUG => Level::Debug,
        INFO => Level::Info,
        WARN => Level::Warn,
        _ => Level::Error,
    };
    write_stderr_line(name, format_args!("{msg}"));
}

fn write_stderr(record: &Record<'_>) {
    write_stderr_line(
        record.level(),
        format_args!("{}: {}", record.target(), record.args()),
    );
}

/// Writes `<timestamp> <level> [<thread>] <text>` to stderr.
fn write_stderr_line(level: Level, text: std::fmt::Arguments<'_>) {
    let mut line = String::with_capacity(128);
    push_timestamp(&mut line, SystemTime::now());
    let thread = std::thread::current();
    let _ = write!(
        line,
        " {:<5} [{}/{}] {}",
        level,
        thread.name().unwrap_or("-"),
        thread_number(thread.id()),
        text
    );
    line.push('\n');
    write_stderr_raw(&line);
}

/// Writes `text` to file descriptor 2 with plain `write` calls on a duplicate of it, bypassing
/// the lock of `std::io::stderr()`: a child forked while another thread of the parent held
/// that lock could never take it. Errors are ignored (there is nowhere to report them).
pub fn write_stderr_raw(text: &str) {
    if let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() {
        let _ = std::fs::File::from(fd).write_all(text.as_bytes());
    }
}

/// The number inside `ThreadId(N)` (`ThreadId::as_u64` is not stable).
fn thread_number(id: std::thread::ThreadId) -> String {
    let s = format!("{id:?}");
    s.trim_start_matches("ThreadId(")
        .trim_end_matches(')')
        .to_owned()
}

/// Appends `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC) for `t`.
fn push_timestamp(out: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    );
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn parses_levels() {
        assert_eq!(parse_level("0"), Some(DEBUG));
        assert_eq!(parse_level(" 3 "), Some(ERROR));
        assert_eq!(parse_level("4"), None);
        assert_eq!(parse_level("-1"), None);
        assert_eq!(parse_level("WARNING"), Some(WARN));
        assert_eq!(parse_level("Info"), Some(INFO));
        assert_eq!(parse_level("trace"), Some(DEBUG));
        assert_eq!(parse_level("loud"), None);
    }

    #[test]
    fn formats_utc_timestamps() {
        let mut s = String::new();
        push_timestamp(&mut s, UNIX_EPOCH);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
        s.clear();
        // 2024-02-29T23:59:59.999Z (leap day).
        push_timestamp(
            &mut s,
            UNIX_EPOCH + Duration::from_millis(1_709_251_199_999),
        );
        assert_eq!(s, "2024-02-29T23:59:59.999Z");
        s.clear();
        push_timestamp(&mut s, UNIX_EPOCH + Duration::from_secs(951_782_400)); // 2000-02-29
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn rejects_bad_level_and_keeps_old() {
        let before = level();
        assert!(set_level(4).is_err());
        assert!(set_level(-1).is_err());
        assert_eq!(level(), before);
    }

    // Distinct bodies: identical functions may be folded into one address in release builds.
    static HITS: AtomicUsize = AtomicUsize::new(0);
    fn sink_a(_: i32, _: &str) {
        HITS.fetch_add(1, Ordering::Relaxed);
    }
    fn sink_b(_: i32, msg: &str) {
        HITS.fetch_add(msg.len() + 2, Ordering::Relaxed);
    }

    #[test]
    fn sinks_reuse_their_slots() {
        set_sink(Some(sink_a)).unwrap();
        assert!(sink().is_some_and(|s| std::ptr::fn_addr_eq(s, sink_a as Sink)));
        set_sink(Some(sink_b)).unwrap();
        set_sink(Some(sink_a)).unwrap();
        set_sink(Some(sink_b)).unwrap();
        assert!(sink().is_some_and(|s| std::ptr::fn_addr_eq(s, sink_b as Sink)));
        let used = SINKS.iter().filter(|s| s.get().is_some()).count();
        assert_eq!(used, 2);
        set_sink(None).unwrap();
        assert!(sink().is_none());
    }

    #[test]
    fn thread_number_is_numeric() {
        let n = thread_number(std::thread::current().id());
        assert!(n.parse::<u64>().is_ok(), "{n}");
    }
}
