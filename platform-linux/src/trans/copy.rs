//! Running one transfer (sync or from the queue): validate every entry, route each one
//! (mapped segment, `process_vm_*`, transport), move the bytes, check the peer is still alive.

use smem_core::ErrorCode;

use super::Engine;
use super::peer::{Peer, Route};
use crate::sys::copy::RawRange;
use crate::sys::peer::{self as sys_peer, IOV_MAX, Span, VmDirection};
use crate::transport::{self, NO_RANK, Op, Transfer};
use crate::{Error, Result};

/// Which way bytes move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Local memory into the peer's registered memory.
    Write,
    /// The peer's registered memory into local memory.
    Read,
}

/// One entry: the bytes of `local` (this process: memory the C caller vouched for, valid for
/// the transfer) to or from `remote` (the peer's address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The local memory.
    pub local: RawRange<'static>,
    /// Address in the peer's process.
    pub remote: u64,
}

impl Entry {
    /// Bytes.
    pub const fn len(&self) -> u64 {
        self.local.len()
    }

    /// Whether the entry moves no bytes.
    pub const fn is_empty(&self) -> bool {
        self.local.is_empty()
    }
}

/// Runs a transfer with peer `uid`.
pub(crate) fn run(engine: &Engine, dir: Direction, uid: &str, entries: &[Entry]) -> Result<()> {
    let what = match dir {
        Direction::Write => "write to",
        Direction::Read => "read from",
    };
    for (i, e) in entries.iter().enumerate() {
        if !e.is_empty() && e.remote.checked_add(e.len()).is_none() {
            return Err(Error::invalid(format!(
                "entry {i}: [{:#x}, +{:#x}) wraps around the address space",
                e.remote,
                e.len()
            )));
        }
    }
    let peer = engine.peer(uid)?;
    let r = run_with(engine, &peer, dir, entries);
    if let Err(e) = &r {
        if matches!(
            e.code(),
            ErrorCode::IoError | ErrorCode::ObjectNotExists | ErrorCode::Timeout
        ) {
            engine.forget(&peer);
        }
    }
    r.map_err(|e| {
        if e.message().contains(&format!("'{uid}'")) {
            e
        } else {
            e.context(format!("{what} peer engine '{uid}' ({})", peer.endpoint))
        }
    })
}

fn run_with(engine: &Engine, peer: &Peer, dir: Direction, entries: &[Entry]) -> Result<()> {
    let Some(near) = &peer.near else {
        let tcp = transport::DATA_OP_HOST_TCP | transport::DATA_OP_ROCE;
        if engine.config.data_ops & tcp == 0 || peer.data_ops & tcp == 0 {
            return Err(Error::new(
                ErrorCode::NotSupported,
                format!(
                    "peer engine '{}' is on another host (or has same-host copies off) and {} was created without SMEMB_DATA_OP_HOST_TCP / ROCE",
                    peer.uid,
                    if engine.config.data_ops & tcp == 0 {
                        "this engine"
                    } else {
                        "it"
                    }
                ),
            ));
        }
        peer.check_far(engine, entries.iter().map(|e| (e.remote, e.len())))?;
        let spans: Vec<_> = entries.iter().map(net_span).collect();
        return net(engine, peer, dir, &spans);
    };
    if !near.alive() {
        return Err(peer.gone("is dead or destroyed its engine"));
    }
    let routes = near.routes(engine, peer, entries.iter().map(|e| (e.remote, e.len())))?;
    let mut vm: Vec<(RawRange<'static>, Span)> = Vec::new();
    let mut over_net: Vec<transport::Span<'static>> = Vec::new();
    for (e, route) in entries.iter().zip(&routes) {
        if e.is_empty() {
            continue;
        }
        match route {
            Route::Mapped { seg, offset } => {
                // The peer's segment stays mapped while `routes` holds it (after the copy).
                let at = seg.range(*offset, e.len()).ok_or_else(|| {
                    Error::invalid(format!(
                        "peer engine '{}': {} bytes at {:#x} leave its segment",
                        peer.uid,
                        e.len(),
                        e.remote
                    ))
                })?;
                let (src, dst) = match dir {
                    Direction::Write => (e.local, at),
                    Direction::Read => (at, e.local),
                };
                crate::sys::copy::copy(src, dst).map_err(|err| Error::io("copying", &err))?;
            }
            Route::Vm => vm.push((
                e.local,
                Span {
                    addr: e.remote,
                    len: e.len(),
                },
            )),
            Route::Net => over_net.push(net_span(e)),
        }
    }
    vm_copy(peer, dir, &vm)?;
    if !over_net.is_empty() {
        net(engine, peer, dir, &over_net)?;
    }
    drop(routes);
    if !near.alive() {
        return Err(peer.gone(
            "died or destroyed its engine during the transfer; the bytes may not have arrived",
        ));
    }
    Ok(())
}

fn net_span(e: &Entry) -> transport::Span<'static> {
    transport::Span {
        remote: e.remote,
        local: e.local,
    }
}

/// The transport path.
fn net(engine: &Engine, peer: &Peer, dir: Direction, spans: &[transport::Span<'_>]) -> Result<()> {
    let t = Transfer {
        peer: peer.endpoint,
        rank: NO_RANK,
        object: 0,
        token: peer.token,
        op: match dir {
            Direction::Write => Op::Write,
            Direction::Read => Op::Read,
        },
        remote_offset: 0,
        remote_pitch: 0,
        local: RawRange::EMPTY,
        local_pitch: 0,
        width: 0,
        height: 0,
        local_device: None,
    };
    let spans = coalesce(spans);
    engine
        .node
        .pool()
        .transfer_spans(&t, &spans, engine.node.timeout())
}

/// `spans` with each run of entries contiguous on both sides merged into one (a batch of KV
/// blocks laid out back to back becomes a few large requests).
fn coalesce<'a>(spans: &[transport::Span<'a>]) -> Vec<transport::Span<'a>> {
    let mut out: Vec<transport::Span<'a>> = Vec::with_capacity(spans.len());
    for s in spans.iter().filter(|s| !s.local.is_empty()) {
        let merged = out.last().and_then(|l| {
            (l.remote.checked_add(l.local.len()) == Some(s.remote))
                .then(|| l.local.join(s.local))
                .flatten()
        });
        match (merged, out.last_mut()) {
            (Some(local), Some(l)) => l.local = local,
            _ => out.push(*s),
        }
    }
    out
}

/// `process_vm_writev` / `readv` of `pairs` (local, remote), [`IOV_MAX`] at a time.
fn vm_copy(peer: &Peer, dir: Direction, pairs: &[(RawRange<'_>, Span)]) -> Result<()> {
    let vm_dir = match dir {
        Direction::Write => VmDirection::Write,
        Direction::Read => VmDirection::Read,
    };
    for group in pairs.chunks(IOV_MAX) {
        let mut local: Vec<RawRange<'_>> = group.iter().map(|p| p.0).collect();
        let mut remote: Vec<Span> = group.iter().map(|p| p.1).collect();
        let mut left: u64 = local.iter().map(|s| s.len()).sum();
        while left > 0 {
            let r = sys_peer::process_vm(vm_dir, peer.pid, &local, &remote);
            let n = match r {
                Ok(0) | Err(_) => {
                    let e = r
                        .err()
                        .unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EFAULT));
                    return Err(match e.raw_os_error() {
                        Some(libc::ESRCH) => peer.gone("died during the transfer"),
                        Some(libc::EFAULT) => Error::invalid(format!(
                            "peer engine '{}': a local or remote range of the transfer is not mapped ({e})",
                            peer.uid
                        )),
                        _ => Error::io(
                            format_args!(
                                "process_vm_{}v into peer engine '{}'",
                                if dir == Direction::Write {
                                    "write"
                                } else {
                                    "read"
                                },
                                peer.uid
                            ),
                            &e,
                        ),
                    });
                }
                Ok(n) => n as u64,
            };
            left -= n.min(left);
            advance_ranges(&mut local, n);
            advance(&mut remote, n);
        }
    }
    Ok(())
}

/// Drops the first `n` bytes of `ranges`.
fn advance_ranges(ranges: &mut Vec<RawRange<'_>>, mut n: u64) {
    let mut skip = 0;
    for r in ranges.iter_mut() {
        if n == 0 {
            break;
        }
        let k = n.min(r.len());
        *r = r.skip(k).unwrap_or(RawRange::EMPTY);
        n -= k;
        if r.is_empty() {
            skip += 1;
        }
    }
    ranges.drain(..skip);
}

/// Drops the first `n` bytes of `spans`.
fn advance(spans: &mut Vec<Span>, mut n: u64) {
    let mut skip = 0;
    for s in spans.iter_mut() {
        if n == 0 {
            break;
        }
        let k = n.min(s.len);
        s.addr += k;
        s.len -= k;
        n -= k;
        if s.len == 0 {
            skip += 1;
        }
    }
    spans.drain(..skip);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesce_merges_runs_contiguous_on_both_sides() {
        let mut buf = vec![0u8; 300];
        let base = buf.as_ptr() as u64;
        let all = RawRange::from_mut(&mut buf);
        let span = |remote: u64, local: u64, len: u64| transport::Span {
            remote,
            local: all.sub(local, len).expect("inside"),
        };
        let got = coalesce(&[
            span(0, 100, 10),
            span(10, 110, 10),
            span(20, 200, 10),
            span(30, 210, 0),
            span(30, 210, 5),
            span(100, 215, 1),
        ]);
        assert_eq!(
            got,
            vec![span(0, 100, 20), span(20, 200, 15), span(100, 215, 1)]
        );
        assert_eq!(got[0].local.addr(), base + 100);
    }

    #[test]
    fn advance_skips_finished_spans() {
        let mut v = vec![Span { addr: 0, len: 4 }, Span { addr: 10, len: 4 }];
        advance(&mut v, 5);
        assert_eq!(v, vec![Span { addr: 11, len: 3 }]);
        advance(&mut v, 3);
        assert!(v.is_empty());
    }
}
