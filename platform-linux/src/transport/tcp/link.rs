//! Bytes on one connection: [`Link`] carries them on the plain socket (straight between the
//! socket and memory) or inside TLS (staged through a buffer, small writes coalesced), and
//! moves the rows of a request between the link and memory (host or device).

use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::Duration;

use super::SMALL_ROW;
use crate::Error;
use crate::device::{CopyDirection, Device, RawRange, Shape2d};
use crate::sys;
use crate::sys::fork::Detached;

/// Rows of memory in this process: `rows` rows of `width` bytes, `pitch` apart, from the
/// start of `range`.
pub(super) struct Rows<'a> {
    pub(super) range: RawRange<'a>,
    pub(super) pitch: u64,
    pub(super) width: u64,
    pub(super) rows: u64,
    pub(super) device: Option<&'a dyn Device>,
}

impl Rows<'_> {
    /// `(width, pitch, rows)` as `usize`, after checking every row lies in the range.
    fn dims(&self) -> io::Result<(usize, usize, usize)> {
        if !self.range.holds_rows(self.pitch, self.width, self.rows) {
            return Err(outside());
        }
        let width = usize_of(self.width)?;
        let n = usize_of(self.rows)?;
        // The gathered length fits too (it is at most a request's 16 MiB).
        width
            .checked_mul(n)
            .ok_or_else(|| io::Error::other("length exceeds the address space"))?;
        Ok((width, usize_of(self.pitch)?, n))
    }

    fn gathered(&self) -> bool {
        self.device.is_some() || (self.rows > 1 && self.width < SMALL_ROW)
    }
}

#[cold]
fn outside() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "the rows of the request leave their memory range",
    )
}

fn dev_err(e: Error) -> io::Error {
    io::Error::other(format!("device copy: {e}"))
}

fn usize_of(v: u64) -> io::Result<usize> {
    usize::try_from(v).map_err(|_| io::Error::other("length exceeds the address space"))
}

/// Both ways of carrying the transport's bytes on one connection: the plain socket (data moves
/// straight between the socket and memory) or a TLS stream (data is staged through a buffer and
/// encrypted; writes are coalesced until a message is complete).
pub(super) enum Link<'a> {
    Plain(&'a TcpStream),
    Tls(&'a mut TlsWire),
}

/// Bytes gathered before the TLS stream is written, so a header and its payload share records.
const TLS_OUT_MAX: usize = 256 * 1024;

/// A TLS connection of the transport (client or server side).
pub(super) struct TlsWire {
    /// The TLS stream, its descriptor kept out of forked children.
    io: Detached<Box<dyn TlsIo>>,
    /// Plaintext waiting to be written (see [`Link::send`]).
    out: Vec<u8>,
    /// Plaintext staging for reads into raw memory.
    buf: Vec<u8>,
}

pub(super) trait TlsIo: Read + io::Write + Send {}
impl<T: Read + io::Write + Send> TlsIo for T {}

impl TlsWire {
    pub(super) fn new(fd: std::os::fd::RawFd, io: Box<dyn TlsIo>) -> Self {
        Self {
            io: Detached::with_raw_fd(fd, io),
            out: Vec::new(),
            buf: Vec::new(),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let r = self.io.write_all(&self.out).and_then(|()| self.io.flush());
            self.out.clear();
            r.map_err(tls_timeout)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for TlsWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsWire").finish_non_exhaustive()
    }
}

/// A TLS stream reports a socket timeout as `WouldBlock`; the transport reports `TimedOut`.
fn tls_timeout(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "no progress within the socket timeout",
        )
    } else {
        e
    }
}

impl Link<'_> {
    /// Fills `buf`.
    pub(super) fn recv(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match self {
            Link::Plain(s) => sys::net::recv_slice(s.as_fd(), buf),
            Link::Tls(t) => t.io.read_exact(buf).map_err(tls_timeout),
        }
    }

    /// Sends `data`; `more` = more of the same message follows at once.
    pub(super) fn send(&mut self, data: &[u8], more: bool) -> io::Result<()> {
        match self {
            Link::Plain(s) => sys::net::send_slice(s.as_fd(), data, more),
            Link::Tls(t) => {
                t.out.extend_from_slice(data);
                if !more || t.out.len() >= TLS_OUT_MAX {
                    t.flush()?;
                }
                Ok(())
            }
        }
    }

    /// Receives `dst.len()` bytes into `dst`.
    fn recv_raw(&mut self, dst: RawRange<'_>) -> io::Result<()> {
        match self {
            Link::Plain(s) => sys::net::recv_into(s.as_fd(), dst),
            Link::Tls(t) => {
                let len = dst.len();
                t.buf.resize(TLS_OUT_MAX.min(usize_of(len)?.max(1)), 0);
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(t.buf.len() as u64);
                    let piece = &mut t.buf[..n as usize];
                    t.io.read_exact(piece).map_err(tls_timeout)?;
                    let to = dst.skip(done).ok_or_else(outside)?;
                    sys::copy::copy(RawRange::from_mut(piece), to)?;
                    done += n;
                }
                Ok(())
            }
        }
    }

    /// Sends the bytes of `src`; `more` as [`Self::send`].
    fn send_raw(&mut self, src: RawRange<'_>, more: bool) -> io::Result<()> {
        match self {
            Link::Plain(s) => sys::net::send_from(s.as_fd(), src, more),
            Link::Tls(t) => {
                let len = src.len();
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(TLS_OUT_MAX as u64);
                    let at = t.out.len();
                    t.out.resize(at + n as usize, 0);
                    let from = src.sub(done, n).ok_or_else(outside)?;
                    sys::copy::copy(from, RawRange::from_mut(&mut t.out[at..]))?;
                    done += n;
                    if t.out.len() >= TLS_OUT_MAX {
                        t.flush()?;
                    }
                }
                if !more {
                    t.flush()?;
                }
                Ok(())
            }
        }
    }

    /// One read of at most `buf.len()` bytes (`Ok(0)`: the peer closed).
    pub(super) fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Plain(s) => (&**s).read(buf),
            Link::Tls(t) => t.io.read(buf),
        }
    }
}

/// Receives the bytes of `rows` from `link` into them.
pub(super) fn recv_rows(
    link: &mut Link<'_>,
    rows: &Rows<'_>,
    scratch: &mut Vec<u8>,
) -> io::Result<()> {
    let (width, pitch, n) = rows.dims()?;
    if rows.gathered() {
        scratch.resize(width * n, 0);
        link.recv(scratch)?;
        let src = RawRange::from_mut(scratch);
        let shape = Shape2d::new(width, pitch, width, n);
        match rows.device {
            Some(dev) => dev
                .copy_2d(src, rows.range, shape, CopyDirection::HostToDevice)
                .map_err(dev_err)?,
            None => sys::copy::copy_2d(src, rows.range, shape)?,
        }
        return Ok(());
    }
    for r in 0..n {
        let row = rows.range.sub((r * pitch) as u64, width as u64);
        link.recv_raw(row.ok_or_else(outside)?)?;
    }
    Ok(())
}

/// Sends the bytes of `rows` on `link`; `more` = more data follows at once.
pub(super) fn send_rows(
    link: &mut Link<'_>,
    rows: &Rows<'_>,
    scratch: &mut Vec<u8>,
    more: bool,
) -> io::Result<()> {
    let (width, pitch, n) = rows.dims()?;
    if rows.gathered() {
        scratch.resize(width * n, 0);
        let dst = RawRange::from_mut(scratch);
        let shape = Shape2d::new(pitch, width, width, n);
        match rows.device {
            Some(dev) => dev
                .copy_2d(rows.range, dst, shape, CopyDirection::DeviceToHost)
                .map_err(dev_err)?,
            None => sys::copy::copy_2d(rows.range, dst, shape)?,
        }
        return link.send(scratch, more);
    }
    for r in 0..n {
        let last = r + 1 == n;
        let row = rows.range.sub((r * pitch) as u64, width as u64);
        link.send_raw(row.ok_or_else(outside)?, more || !last)?;
    }
    Ok(())
}

/// Reads and throws away `len` bytes (the payload of a refused WRITE).
pub(super) fn discard(link: &mut Link<'_>, len: u64, scratch: &mut Vec<u8>) -> io::Result<()> {
    let mut left = len;
    scratch.resize(64 * 1024, 0);
    while left > 0 {
        let n = left.min(scratch.len() as u64) as usize;
        link.recv(&mut scratch[..n])?;
        left -= n as u64;
    }
    Ok(())
}

pub(super) fn set_timeouts(s: &TcpStream, timeout: Duration) -> io::Result<()> {
    let t = Some(timeout.max(Duration::from_millis(1)));
    s.set_read_timeout(t)?;
    s.set_write_timeout(t)?;
    s.set_nodelay(true)
}
