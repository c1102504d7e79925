//! Running one transfer (sync or from the queue): validate every entry, route each one
//! (mapped segment, `process_vm_*`, transport), move the bytes, check the peer is still alive.
// The copy paths take raw addresses of the caller's memory and of mapped peer segments; the
// `unsafe` blocks forward those contracts to `sys` and the transport, each with a SAFETY note.
#![allow(unsafe_code)]

use smem_core::ErrorCode;

use super::Engine;
use super::peer::{Peer, Route};
use crate::sys::peer::{self as sys_peer, IOV_MAX, Span};
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

/// One entry: `len` bytes between `local` (this process) and `remote` (the peer's address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Address in this process.
    pub local: u64,
    /// Address in the peer's process.
    pub remote: u64,
    /// Bytes.
    pub len: u64,
}

/// Runs a transfer with peer `uid`.
///
/// # Safety
/// As [`super::transfer`].
pub(crate) unsafe fn run(
    engine: &Engine,
    dir: Direction,
    uid: &str,
    entries: &[Entry],
) -> Result<()> {
    let what = match dir {
        Direction::Write => "write to",
        Direction::Read => "read from",
    };
    for (i, e) in entries.iter().enumerate() {
        if e.len > 0
            && (e.local.checked_add(e.len).is_none() || e.remote.checked_add(e.len).is_none())
        {
            return Err(Error::invalid(format!(
                "entry {i}: [{:#x}, +{:#x}) wraps around the address space",
                e.remote, e.len
            )));
        }
    }
    let peer = engine.peer(uid)?;
    // SAFETY: forwarded contract.
    let r = unsafe { run_with(engine, &peer, dir, entries) };
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

unsafe fn run_with(engine: &Engine, peer: &Peer, dir: Direction, entries: &[Entry]) -> Result<()> {
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
        peer.check_far(engine, entries.iter().map(|e| (e.remote, e.len)))?;
        let spans: Vec<transport::Span> = entries.iter().map(net_span).collect();
        // SAFETY: forwarded contract.
        return unsafe { net(engine, peer, dir, &spans) };
    };
    if !near.alive() {
        return Err(peer.gone("is dead or destroyed its engine"));
    }
    let routes = near.routes(engine, peer, entries.iter().map(|e| (e.remote, e.len)))?;
    let mut vm: Vec<(Span, Span)> = Vec::new();
    let mut over_net: Vec<transport::Span> = Vec::new();
    for (e, route) in entries.iter().zip(&routes) {
        if e.len == 0 {
            continue;
        }
        let len = usize::try_from(e.len)
            .map_err(|_| Error::invalid("entry length exceeds the address space"))?;
        match route {
            Route::Mapped { at, .. } => {
                let (src, dst) = match dir {
                    Direction::Write => (e.local, *at),
                    Direction::Read => (*at, e.local),
                };
                // SAFETY: the local range is valid by the caller's contract; the remote range
                // lies in the peer's segment, mapped here and kept mapped by the route's `Arc`
                // until `routes` drops after the copy. A separate mapping never overlaps the
                // caller's memory.
                unsafe {
                    crate::sys::copy::copy_bytes(
                        std::ptr::with_exposed_provenance(src as usize),
                        std::ptr::with_exposed_provenance_mut(dst as usize),
                        len,
                    );
                }
            }
            Route::Vm => vm.push((
                Span {
                    addr: e.local,
                    len: e.len,
                },
                Span {
                    addr: e.remote,
                    len: e.len,
                },
            )),
            Route::Net => over_net.push(net_span(e)),
        }
    }
    // SAFETY: forwarded contract.
    unsafe { vm_copy(peer, dir, &vm)? };
    if !over_net.is_empty() {
        // SAFETY: forwarded contract.
        unsafe { net(engine, peer, dir, &over_net)? };
    }
    drop(routes);
    if !near.alive() {
        return Err(peer.gone(
            "died or destroyed its engine during the transfer; the bytes may not have arrived",
        ));
    }
    Ok(())
}

fn net_span(e: &Entry) -> transport::Span {
    transport::Span {
        remote: e.remote,
        local: e.local,
        len: e.len,
    }
}

/// The transport path.
///
/// # Safety
/// As [`run`].
unsafe fn net(
    engine: &Engine,
    peer: &Peer,
    dir: Direction,
    spans: &[transport::Span],
) -> Result<()> {
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
        local: 0,
        local_pitch: 0,
        width: 0,
        height: 0,
        local_device: None,
    };
    let spans = coalesce(spans);
    // SAFETY: forwarded contract (local ranges readable / writable and disjoint).
    unsafe {
        engine
            .node
            .pool()
            .transfer_spans(&t, &spans, engine.node.timeout())
    }
}

/// `spans` with each run of entries contiguous on both sides merged into one (a batch of KV
/// blocks laid out back to back becomes a few large requests).
fn coalesce(spans: &[transport::Span]) -> Vec<transport::Span> {
    let mut out: Vec<transport::Span> = Vec::with_capacity(spans.len());
    for s in spans.iter().filter(|s| s.len > 0) {
        match out.last_mut() {
            Some(l)
                if l.remote.checked_add(l.len) == Some(s.remote)
                    && l.local.checked_add(l.len) == Some(s.local) =>
            {
                l.len += s.len;
            }
            _ => out.push(*s),
        }
    }
    out
}

/// `process_vm_writev` / `readv` of `pairs` (local, remote), [`IOV_MAX`] at a time.
///
/// # Safety
/// As [`run`].
unsafe fn vm_copy(peer: &Peer, dir: Direction, pairs: &[(Span, Span)]) -> Result<()> {
    for group in pairs.chunks(IOV_MAX) {
        let mut local: Vec<Span> = group.iter().map(|p| p.0).collect();
        let mut remote: Vec<Span> = group.iter().map(|p| p.1).collect();
        let mut left: u64 = local.iter().map(|s| s.len).sum();
        while left > 0 {
            let r = match dir {
                Direction::Write => sys_peer::process_vm_write(peer.pid, &local, &remote),
                // SAFETY: the local spans are writable and disjoint (forwarded contract).
                Direction::Read => unsafe { sys_peer::process_vm_read(peer.pid, &local, &remote) },
            };
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
            advance(&mut local, n);
            advance(&mut remote, n);
        }
    }
    Ok(())
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

    fn span(remote: u64, local: u64, len: u64) -> transport::Span {
        transport::Span { remote, local, len }
    }

    #[test]
    fn coalesce_merges_runs_contiguous_on_both_sides() {
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
