//! The text records the BM and SHM runtimes keep in the config store for each other: the GVA
//! proposal, the membership log entries, window records and rank records.
//!
//! Formats (ASCII; `<x>` lower-case hex without leading zeros, `<d>` decimal):
//! ```text
//! Proposal:     v<d version> <x nonce> <x base> <x span> <x stride> <x hbm> <x dram>
//! Tag:          <x nonce>.<d version>                      (names a proposal in counter keys)
//! Log entry:    c<d rank>;  +<d rank>;  -<d rank>;  x<d rank>;  d<d offset>;
//!               (create, join, leave, destroy, settled up to offset)
//!               w<d rank>:<d len>:<window record, len bytes>;  (the record of the join that
//!               follows it in the same append; its bytes may hold `;`)
//! Window:       host=<host>;hbm=<hex bytes | ->;dram=<hex bytes | ->[;ep=<ip:port>;tok=<x>][;wrank=<d>]
//! Rank:         <host> <d pid>[ <d sharing pid>]
//! ```
//! Parsing never panics and never allocates, whatever the bytes; numbers are plain digits
//! (no sign, no spaces) checked for overflow. A window record's fields may come in any order,
//! the last of a repeated field counts, and fields of unknown names are skipped (a newer
//! writer may add some). Encoders write into a caller buffer and return
//! [`WireError::BufferTooSmall`] instead of writing out of bounds.

use core::fmt::{self, Write as _};
use core::net::SocketAddr;

use super::{Result, WireError, Writer};

/// Longest segment descriptor a window record carries (binary bytes, before hex).
pub const DESCRIPTOR_MAX: usize = 128;
/// Longest host identity in a window or rank record.
pub const HOST_MAX: usize = 255;
/// Longest encoded [`Proposal`].
pub const PROPOSAL_MAX_LEN: usize = "v18446744073709551615".len() + 6 * " ffffffffffffffff".len();
/// Longest encoded [`LogEntry`].
pub const LOG_ENTRY_MAX_LEN: usize = "d18446744073709551615;".len();
/// Longest encoded [`WindowRecord`]: the host, two descriptors in hex, an IPv6 endpoint with
/// scope, a token and a world rank.
pub const WINDOW_RECORD_MAX_LEN: usize = "host=".len()
    + HOST_MAX
    + ";hbm=;dram=".len()
    + 4 * DESCRIPTOR_MAX
    + ";ep=[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535".len()
    + ";tok=ffffffffffffffff".len()
    + ";wrank=4294967295".len();
/// Longest record entry of the membership log ([`emit_log_record`]).
pub const LOG_RECORD_MAX_LEN: usize =
    "w4294967295:".len() + "65535:".len() + WINDOW_RECORD_MAX_LEN + 1;
/// Longest encoded [`RankRecord`].
pub const RANK_RECORD_MAX_LEN: usize = HOST_MAX + " 4294967295 -2147483648".len();
/// Scratch space [`WindowRecord::parse`] decodes the two descriptors into.
pub type DescriptorScratch = [u8; 2 * DESCRIPTOR_MAX];

/// A GVA proposal: the `gva` key of an object (candidate `version` of agreement `nonce`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Candidate number within the agreement (0 for the first proposal).
    pub version: u64,
    /// Random per agreement: names its counters, so counters of an aborted or timed-out
    /// earlier agreement for the same object are never reused.
    pub nonce: u64,
    /// Base address of the proposed range.
    pub base: u64,
    /// Length of the range (every member's window).
    pub span: u64,
    /// Distance between two members' windows.
    pub stride: u64,
    /// HBM bytes per window.
    pub hbm: u64,
    /// DRAM bytes per window.
    pub dram: u64,
}

impl Proposal {
    /// Parses a whole proposal.
    ///
    /// # Errors
    /// [`WireError::Invalid`] naming the field that is missing or malformed,
    /// [`WireError::SizeMismatch`] for trailing fields.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut fields = bytes.split(|b| *b == b' ');
        let mut next = |what| fields.next().ok_or(WireError::Invalid(what));
        let version = next("proposal version")?
            .strip_prefix(b"v")
            .and_then(decimal)
            .ok_or(WireError::Invalid("proposal version"))?;
        let mut hex_field = |what| next(what).and_then(|f| hex(f).ok_or(WireError::Invalid(what)));
        let p = Self {
            version,
            nonce: hex_field("proposal nonce")?,
            base: hex_field("proposal base")?,
            span: hex_field("proposal span")?,
            stride: hex_field("proposal stride")?,
            hbm: hex_field("proposal HBM size")?,
            dram: hex_field("proposal DRAM size")?,
        };
        if fields.next().is_some() {
            return Err(WireError::SizeMismatch("proposal"));
        }
        Ok(p)
    }

    /// Writes the proposal into `buf` (at most [`PROPOSAL_MAX_LEN`] bytes); returns the bytes
    /// written.
    ///
    /// # Errors
    /// [`WireError::BufferTooSmall`].
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let mut w = Writer::new(buf);
        write!(
            w,
            "v{} {:x} {:x} {:x} {:x} {:x} {:x}",
            self.version, self.nonce, self.base, self.span, self.stride, self.hbm, self.dram
        )
        .map_err(|_| WireError::BufferTooSmall)?;
        Ok(w.written())
    }

    /// The proposal's name in counter keys: `<nonce>.<version>` (see [`Tag`]).
    pub const fn tag(&self) -> Tag {
        Tag {
            nonce: self.nonce,
            version: self.version,
        }
    }

    /// Whether `other` asks for the same sizes (span, stride, HBM and DRAM): the check every
    /// member makes against the proposal it adopts.
    pub const fn same_sizes(&self, other: &Self) -> bool {
        self.span == other.span
            && self.stride == other.stride
            && self.hbm == other.hbm
            && self.dram == other.dram
    }
}

/// Names a [`Proposal`] in the agreement's counter keys; displays as `<nonce hex>.<version>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    /// The agreement's nonce.
    pub nonce: u64,
    /// The candidate number.
    pub version: u64,
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}.{}", self.nonce, self.version)
    }
}

/// One entry of an object's membership log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogEntry {
    /// `c<r>;`: rank `r` created its handle (a holder from then on).
    Create(u32),
    /// `+<r>;`: rank `r` joined.
    Join(u32),
    /// `-<r>;`: rank `r` left.
    Leave(u32),
    /// `x<r>;`: rank `r` destroyed its handle.
    Destroy(u32),
    /// `d<P>;`: every holder applied the log up to offset `P`.
    Settled(u64),
}

impl LogEntry {
    /// Parses one entry without its terminating `;`.
    ///
    /// # Errors
    /// [`WireError::Invalid`] for an unknown kind or a malformed number.
    pub fn parse(entry: &[u8]) -> Result<Self> {
        let bad = WireError::Invalid("membership log entry");
        let (kind, num) = entry.split_first().ok_or(bad)?;
        if *kind == b'd' {
            return decimal(num).map(Self::Settled).ok_or(bad);
        }
        let r = decimal(num)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(bad)?;
        match kind {
            b'c' => Ok(Self::Create(r)),
            b'+' => Ok(Self::Join(r)),
            b'-' => Ok(Self::Leave(r)),
            b'x' => Ok(Self::Destroy(r)),
            _ => Err(bad),
        }
    }

    /// Writes the entry with its `;` into `buf` (at most [`LOG_ENTRY_MAX_LEN`] bytes); returns
    /// the bytes written.
    ///
    /// # Errors
    /// [`WireError::BufferTooSmall`].
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let mut w = Writer::new(buf);
        let r = match *self {
            Self::Create(r) => write!(w, "c{r};"),
            Self::Join(r) => write!(w, "+{r};"),
            Self::Leave(r) => write!(w, "-{r};"),
            Self::Destroy(r) => write!(w, "x{r};"),
            Self::Settled(p) => write!(w, "d{p};"),
        };
        r.map_err(|_| WireError::BufferTooSmall)?;
        Ok(w.written())
    }

    /// The rank the entry is about (`None` for [`LogEntry::Settled`]).
    pub const fn rank(&self) -> Option<u32> {
        match *self {
            Self::Create(r) | Self::Join(r) | Self::Leave(r) | Self::Destroy(r) => Some(r),
            Self::Settled(_) => None,
        }
    }
}

/// The entries of a piece of the membership log, in order: each `;`-terminated entry with
/// the offset just past its `;` (relative to the piece start) and the entry, `None` when it
/// does not parse (skipped by readers). Record entries (`w…`, see [`log_records`]) are
/// stepped over, not yielded. Bytes after the last `;` are an incomplete entry and are not
/// yielded.
pub fn log_entries(piece: &[u8]) -> LogEntries<'_> {
    LogEntries { piece, pos: 0 }
}

/// The window records a piece of the membership log carries (`w<r>:<len>:<bytes>;`, appended
/// with rank `r`'s join entry), in order: rank and record bytes. A malformed record entry is
/// skipped like any malformed entry.
pub fn log_records(piece: &[u8]) -> LogRecords<'_> {
    LogRecords { piece, pos: 0 }
}

/// Writes rank `rank`'s window record entry (`record`: its encoded [`WindowRecord`]) into
/// `buf` (at most [`LOG_RECORD_MAX_LEN`] bytes); returns the bytes written.
///
/// # Errors
/// [`WireError::Invalid`] for a record longer than [`WINDOW_RECORD_MAX_LEN`],
/// [`WireError::BufferTooSmall`].
pub fn emit_log_record(rank: u32, record: &[u8], buf: &mut [u8]) -> Result<usize> {
    if record.len() > WINDOW_RECORD_MAX_LEN {
        return Err(WireError::Invalid("window record too long for the log"));
    }
    let mut w = Writer::new(buf);
    write!(w, "w{rank}:{}:", record.len()).map_err(|_| WireError::BufferTooSmall)?;
    let at = w.written();
    let end = at + record.len();
    let out = buf.get_mut(at..=end).ok_or(WireError::BufferTooSmall)?;
    out[..record.len()].copy_from_slice(record);
    out[record.len()] = b';';
    Ok(end + 1)
}

/// One step through a piece of the log.
enum Step<'a> {
    Entry(Option<LogEntry>),
    Record(Option<(u32, &'a [u8])>),
}

/// The step at `pos` of `piece` and the position after it (`None`: no complete entry left).
fn step(piece: &[u8], pos: usize) -> Option<(usize, Step<'_>)> {
    let rest = piece.get(pos..)?;
    if rest.first() != Some(&b'w') {
        let len = rest.iter().position(|b| *b == b';')?;
        let entry = LogEntry::parse(rest.get(..len)?).ok();
        return Some((pos + len + 1, Step::Entry(entry)));
    }
    // `w<r>:<len>:<bytes>;`: the bytes may hold `;`, and only the header is scanned (a holder
    // steps over every record of the log twice). Malformed: skipped up to the first `;`.
    let record = (|| {
        let mut head = rest.get(1..)?.splitn(3, |b| *b == b':');
        let r = u32::try_from(decimal(head.next()?)?).ok()?;
        let n = usize::try_from(decimal(head.next()?)?).ok()?;
        let body = head.next()?;
        (n <= WINDOW_RECORD_MAX_LEN && body.get(n) == Some(&b';')).then_some(())?;
        let at = rest.len() - body.len();
        Some((pos + at + n + 1, r, body.get(..n)?))
    })();
    if let Some((next, r, bytes)) = record {
        return Some((next, Step::Record(Some((r, bytes)))));
    }
    let len = rest.iter().position(|b| *b == b';')?;
    Some((pos + len + 1, Step::Record(None)))
}

/// Iterator of [`log_entries`].
#[derive(Clone, Debug)]
pub struct LogEntries<'a> {
    piece: &'a [u8],
    pos: usize,
}

impl Iterator for LogEntries<'_> {
    type Item = (usize, Option<LogEntry>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (next, s) = step(self.piece, self.pos)?;
            self.pos = next;
            if let Step::Entry(entry) = s {
                return Some((next, entry));
            }
        }
    }
}

/// Iterator of [`log_records`].
#[derive(Clone, Debug)]
pub struct LogRecords<'a> {
    piece: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for LogRecords<'a> {
    type Item = (u32, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (next, s) = step(self.piece, self.pos)?;
            self.pos = next;
            if let Step::Record(Some(rec)) = s {
                return Some(rec);
            }
        }
    }
}

/// What a member publishes at join (BM: in the membership log, with its join entry): where its window's memory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowRecord<'a> {
    /// The member's host identity (same value: memory shareable).
    pub host: &'a str,
    /// The HBM segment's descriptor bytes, if the window has an HBM part.
    pub hbm: Option<&'a [u8]>,
    /// The DRAM segment's descriptor bytes, if the window has a DRAM part.
    pub dram: Option<&'a [u8]>,
    /// The member's transport endpoint and window generation token (never 0), when it serves
    /// the window over the network.
    pub net: Option<(SocketAddr, u64)>,
    /// The member's world rank (SHM records only).
    pub world_rank: Option<u32>,
}

impl<'a> WindowRecord<'a> {
    /// Parses a whole record; the descriptors are decoded into `scratch`, which the parsed
    /// record borrows.
    ///
    /// # Errors
    /// [`WireError::Invalid`] naming the field that is malformed or missing (the host; an
    /// endpoint without a token or the other way round; a zero token).
    pub fn parse(bytes: &'a [u8], scratch: &'a mut DescriptorScratch) -> Result<Self> {
        let text = core::str::from_utf8(bytes).map_err(|_| WireError::Invalid("window record"))?;
        let (hbm_buf, dram_buf) = scratch.split_at_mut(DESCRIPTOR_MAX);
        let mut host = None;
        let mut hbm = None;
        let mut dram = None;
        let mut ep = None;
        let mut tok = None;
        let mut world_rank = None;
        for field in text.split(';') {
            let (k, v) = field
                .split_once('=')
                .ok_or(WireError::Invalid("window record field"))?;
            match k {
                "host" => host = Some(v),
                "hbm" => hbm = descriptor(v, "window HBM descriptor")?,
                "dram" => dram = descriptor(v, "window DRAM descriptor")?,
                "ep" => {
                    let a: SocketAddr = v
                        .parse()
                        .map_err(|_| WireError::Invalid("window endpoint"))?;
                    ep = Some(a);
                }
                "tok" => tok = Some(hex(v.as_bytes()).ok_or(WireError::Invalid("window token"))?),
                "wrank" => {
                    let r = decimal(v.as_bytes()).and_then(|n| u32::try_from(n).ok());
                    world_rank = Some(r.ok_or(WireError::Invalid("window world rank"))?);
                }
                _ => {}
            }
        }
        let net = match (ep, tok) {
            (Some(ep), Some(tok)) if tok != 0 => Some((ep, tok)),
            (None, None) => None,
            _ => return Err(WireError::Invalid("window endpoint and token")),
        };
        let host = host.ok_or(WireError::Invalid("window host"))?;
        if host.len() > HOST_MAX {
            return Err(WireError::TooLarge("window host"));
        }
        Ok(Self {
            host,
            hbm: hbm.map(|h| unhex_into(h, hbm_buf)),
            dram: dram.map(|d| unhex_into(d, dram_buf)),
            net,
            world_rank,
        })
    }

    /// Writes the record into `buf` (at most [`WINDOW_RECORD_MAX_LEN`] bytes); returns the
    /// bytes written.
    ///
    /// # Errors
    /// [`WireError::Invalid`] for a host with `;` or a zero token, [`WireError::TooLarge`]
    /// for a host or descriptor over its maximum, [`WireError::BufferTooSmall`].
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        if self.host.contains(';') {
            return Err(WireError::Invalid("window host"));
        }
        if self.host.len() > HOST_MAX {
            return Err(WireError::TooLarge("window host"));
        }
        if self
            .hbm
            .into_iter()
            .chain(self.dram)
            .any(|d| d.len() > DESCRIPTOR_MAX)
        {
            return Err(WireError::TooLarge("window descriptor"));
        }
        let mut w = Writer::new(buf);
        let full = |_| WireError::BufferTooSmall;
        write!(w, "host={};hbm=", self.host).map_err(full)?;
        put_descriptor(&mut w, self.hbm)?;
        w.put(b";dram=")?;
        put_descriptor(&mut w, self.dram)?;
        if let Some((ep, tok)) = self.net {
            if tok == 0 {
                return Err(WireError::Invalid("window token"));
            }
            write!(w, ";ep={ep};tok={tok:x}").map_err(full)?;
        }
        if let Some(r) = self.world_rank {
            write!(w, ";wrank={r}").map_err(full)?;
        }
        Ok(w.written())
    }
}

/// What a rank registers at init (`rank/<r>`): its host identity, process id and, for BM, the
/// id the device's IPC allow-lists know the process by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RankRecord<'a> {
    /// The rank's host identity.
    pub host: &'a str,
    /// Its process id.
    pub pid: u32,
    /// Its device sharing id (BM records only).
    pub sharing_pid: Option<i32>,
}

impl<'a> RankRecord<'a> {
    /// Parses a whole record.
    ///
    /// # Errors
    /// [`WireError::Invalid`] naming the field that is missing or malformed,
    /// [`WireError::SizeMismatch`] for trailing fields.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let text = core::str::from_utf8(bytes).map_err(|_| WireError::Invalid("rank record"))?;
        let mut fields = text.split(' ');
        let host = fields
            .next()
            .filter(|h| !h.is_empty() && h.len() <= HOST_MAX)
            .ok_or(WireError::Invalid("rank record host"))?;
        let pid = fields
            .next()
            .and_then(|p| decimal(p.as_bytes()))
            .and_then(|p| u32::try_from(p).ok())
            .ok_or(WireError::Invalid("rank record pid"))?;
        let sharing_pid = match fields.next() {
            None => None,
            Some(s) => {
                Some(signed(s.as_bytes()).ok_or(WireError::Invalid("rank record sharing pid"))?)
            }
        };
        if fields.next().is_some() {
            return Err(WireError::SizeMismatch("rank record"));
        }
        Ok(Self {
            host,
            pid,
            sharing_pid,
        })
    }

    /// Writes the record into `buf` (at most [`RANK_RECORD_MAX_LEN`] bytes); returns the bytes
    /// written.
    ///
    /// # Errors
    /// [`WireError::Invalid`] for an empty host or one with a space, [`WireError::TooLarge`]
    /// for a host over [`HOST_MAX`], [`WireError::BufferTooSmall`].
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        if self.host.is_empty() || self.host.contains(' ') {
            return Err(WireError::Invalid("rank record host"));
        }
        if self.host.len() > HOST_MAX {
            return Err(WireError::TooLarge("rank record host"));
        }
        let mut w = Writer::new(buf);
        let full = |_| WireError::BufferTooSmall;
        write!(w, "{} {}", self.host, self.pid).map_err(full)?;
        if let Some(s) = self.sharing_pid {
            write!(w, " {s}").map_err(full)?;
        }
        Ok(w.written())
    }
}

impl fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.put(s.as_bytes()).map_err(|_| fmt::Error)
    }
}

/// A descriptor field's value: `-` (none) or hex of at most [`DESCRIPTOR_MAX`] bytes.
fn descriptor<'t>(v: &'t str, what: &'static str) -> Result<Option<&'t [u8]>> {
    if v == "-" {
        return Ok(None);
    }
    let b = v.as_bytes();
    if b.len() % 2 != 0 || !b.iter().all(u8::is_ascii_hexdigit) {
        return Err(WireError::Invalid(what));
    }
    if b.len() > 2 * DESCRIPTOR_MAX {
        return Err(WireError::TooLarge(what));
    }
    Ok(Some(b))
}

/// Decodes checked hex digits (see [`descriptor`]) into `out`; returns the decoded part.
fn unhex_into<'o>(digits: &[u8], out: &'o mut [u8]) -> &'o [u8] {
    let n = (digits.len() / 2).min(out.len());
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *o = (nibble(pair[0]) << 4) | nibble(pair[1]);
    }
    &out[..n]
}

fn put_descriptor(w: &mut Writer<'_>, d: Option<&[u8]>) -> Result<()> {
    let Some(d) = d else {
        return w.put(b"-");
    };
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in d {
        w.put(&[DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]])?;
    }
    Ok(())
}

/// The value of one hex digit (0 for anything else; callers check the digits first).
const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

/// Plain decimal digits (at least one, no sign) as a `u64`; `None` on overflow.
fn decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, c| {
        let d = (*c as char).to_digit(10)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// Plain hex digits (at least one, no sign) as a `u64`; `None` on overflow.
fn hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, c| {
        let d = (*c as char).to_digit(16)?;
        n.checked_mul(16)?.checked_add(u64::from(d))
    })
}

/// Decimal digits with an optional leading `-` as an `i32`.
fn signed(s: &[u8]) -> Option<i32> {
    match s.strip_prefix(b"-") {
        Some(m) => i32::try_from(-i64::try_from(decimal(m)?).ok()?).ok(),
        None => i32::try_from(decimal(s)?).ok(),
    }
}

#[cfg(test)]
mod tests;
