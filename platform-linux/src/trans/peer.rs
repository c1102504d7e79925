//! Other engines as this one sees them: looked up in the store by unique id, checked for
//! liveness, and (on the same host) reached through their control segment, mapped
//! `smem_trans_malloc` segments and `process_vm_readv`/`writev`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, Once};

use log::info;
use smem_core::ErrorCode;
use smem_core::wire::trans::{EngineRecord, Region, RegionKind, RegionsView};

use super::local::{
    CTRL_GEN_AT, CTRL_LEN, CTRL_MAGIC, CTRL_MAGIC_AT, CTRL_STATE_AT, Mapped, STATE_CLOSED, find,
};
use super::{Engine, lock, regions_key};
use crate::mem::{SegmentDescriptor, SegmentKind};
use crate::sys::copy::RawRange;
use crate::sys::peer::{self, Span, VmDirection};
use crate::{Error, Result};

/// Env var: set to `1` to keep same-host registered memory off `process_vm_readv`/`writev`
/// (it then goes through the transport on loopback).
pub const NO_VM_ENV: &str = "SMEM_TRANS_NO_VM";

static VM_NOTE: Once = Once::new();

/// A peer engine.
#[derive(Debug)]
pub(crate) struct Peer {
    /// Its unique id.
    pub(crate) uid: String,
    /// Its process id.
    pub(crate) pid: u32,
    /// Its incarnation (transport requests carry it).
    pub(crate) token: u64,
    /// Its transport endpoint.
    pub(crate) endpoint: SocketAddr,
    /// Its data operations.
    pub(crate) data_ops: u32,
    /// Set when it shares this host (and both engines allow same-host copies).
    pub(crate) near: Option<Near>,
    /// Its region table as last fetched from the store (peers reached through the transport:
    /// a batch is checked against it before any byte moves; the owner checks again).
    far: Mutex<Vec<Region>>,
}

/// How a same-host peer is reached.
#[derive(Debug)]
pub(crate) struct Near {
    pidfd: OwnedFd,
    ctrl: Mapped,
    /// Whether `process_vm_readv`/`writev` reach its memory.
    pub(crate) vm: bool,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    /// Generation of `regions` (0 = never fetched).
    generation: u64,
    regions: Vec<Region>,
    /// Its `smem_trans_malloc` segments mapped here, by inode.
    maps: HashMap<u64, Arc<Mapped>>,
}

/// Where one entry's remote bytes are.
#[derive(Debug)]
pub(crate) enum Route {
    /// Mapped here.
    Mapped {
        /// The peer's segment, mapped while the route is used.
        seg: Arc<Mapped>,
        /// Offset of the remote address in the segment.
        offset: u64,
    },
    /// In the peer's registered user memory, reachable with `process_vm_*`.
    Vm,
    /// Through the transport.
    Net,
}

impl Peer {
    /// Looks `uid` up in `engine`'s store group: at once when it is there, else waiting up to
    /// the engine's `initTimeout` for it to appear.
    ///
    /// # Errors
    /// `SM_OBJECT_NOT_EXISTS` when it did not appear; `SM_IO_ERROR` when its record names a
    /// same-host process that is gone; `SM_PROTOCOL_ERROR` for a record that does not parse.
    pub(crate) fn lookup(engine: &Engine, uid: &str) -> Result<Self> {
        let key = super::engine_key(uid);
        let bytes = match engine.store.get(&key)? {
            Some(b) => b,
            None => engine
                .store
                .wait_get(&key, engine.config.init_timeout)
                .map_err(|e| {
                    if e.code() == ErrorCode::Timeout {
                        Error::new(
                            ErrorCode::ObjectNotExists,
                            format!(
                                "no engine named '{uid}' in the store group at {} (waited {} s, initTimeout); create it first or check the id",
                                engine.url,
                                engine.config.init_timeout.as_secs()
                            ),
                        )
                    } else {
                        e.context(format!("looking up engine '{uid}'"))
                    }
                })?,
        };
        let rec = EngineRecord::parse(&bytes).map_err(|e| {
            Error::new(
                ErrorCode::ProtocolError,
                format!("the store record of engine '{uid}' is invalid ({e}); the peer may run another smem version"),
            )
        })?;
        let near = if rec.host_id == engine.host_id.as_bytes()
            && engine.config.data_ops & super::DATA_OP_SDMA != 0
            && rec.data_ops & super::DATA_OP_SDMA != 0
        {
            Some(Near::open(uid, &rec)?)
        } else {
            None
        };
        Ok(Self {
            uid: uid.to_owned(),
            pid: rec.pid,
            token: rec.token,
            endpoint: rec.endpoint,
            data_ops: rec.data_ops,
            near,
            far: Mutex::new(Vec::new()),
        })
    }

    /// Checks every `(remote address, length)` against the peer's region table (fetched again
    /// from the store when one misses), so a batch with a bad entry moves no byte.
    ///
    /// # Errors
    /// `SM_INVALID_PARAM` naming the peer, the address and the entry; store errors.
    pub(crate) fn check_far(
        &self,
        engine: &Engine,
        remote: impl Iterator<Item = (u64, u64)> + Clone,
    ) -> Result<()> {
        let mut t = lock(&self.far);
        let missing = |t: &[Region]| {
            remote
                .clone()
                .enumerate()
                .find(|(_, (a, l))| find(t, *a, *l).is_none())
        };
        if missing(&t).is_some() {
            *t = fetch_regions(engine, self)?.0;
        }
        match missing(&t) {
            None => Ok(()),
            Some((i, (addr, len))) => Err(self.unregistered(addr, len, i, remote.count())),
        }
    }

    fn unregistered(&self, addr: u64, len: u64, i: usize, n: usize) -> Error {
        Error::invalid(format!(
            "peer engine '{}' has no registered range holding [{addr:#x}, +{len:#x}){}; register it there first",
            self.uid,
            if n > 1 {
                format!(" (entry {i})")
            } else {
                String::new()
            }
        ))
    }

    /// The error for a peer that died or was destroyed.
    pub(crate) fn gone(&self, how: &str) -> Error {
        Error::new(
            ErrorCode::IoError,
            format!(
                "peer engine '{}' (pid {}, {}) {how}",
                self.uid, self.pid, self.endpoint
            ),
        )
    }
}

/// The peer's region table and its generation, from the store.
fn fetch_regions(engine: &Engine, p: &Peer) -> Result<(Vec<Region>, u64)> {
    let bytes = engine
        .store
        .get(&regions_key(&p.uid))?
        .ok_or_else(|| p.gone("removed its registered ranges from the store (destroyed)"))?;
    let view = RegionsView::parse(&bytes).map_err(|e| {
        Error::new(
            ErrorCode::ProtocolError,
            format!("the region table of engine '{}' is invalid: {e}", p.uid),
        )
    })?;
    Ok((view.iter().collect(), view.generation))
}

/// Whether the same-host engine of `rec` is alive (its process exists and still holds its
/// control segment).
pub(crate) fn near_alive(rec: &EngineRecord<'_>) -> bool {
    let alive = peer::pidfd_open(rec.pid).is_ok_and(|fd| !peer::pidfd_exited(fd.as_fd()));
    alive && crate::mem::HostSegment::open(&ctrl_desc(rec)).is_ok()
}

fn ctrl_desc(rec: &EngineRecord<'_>) -> SegmentDescriptor {
    SegmentDescriptor {
        kind: SegmentKind::Host,
        pid: rec.pid,
        fd: rec.ctrl_fd,
        inode: rec.ctrl_inode,
        len: CTRL_LEN,
    }
}

impl Near {
    fn open(uid: &str, rec: &EngineRecord<'_>) -> Result<Self> {
        let dead = |why: String| {
            Error::new(
                ErrorCode::IoError,
                format!("peer engine '{uid}' (pid {}) is gone: {why}", rec.pid),
            )
        };
        // The pidfd first, then the control segment through /proc: a recycled pid cannot hold
        // the published inode, so the pidfd is known to be the engine's process.
        let pidfd = peer::pidfd_open(rec.pid).map_err(|e| dead(format!("pidfd_open: {e}")))?;
        let ctrl = Mapped::new("", CTRL_LEN, Some(&ctrl_desc(rec))).map_err(|e| {
            if e.code() == ErrorCode::NotSupported {
                e.context(format!("peer engine '{uid}'"))
            } else {
                dead(e.message().to_owned())
            }
        })?;
        if ctrl.load(CTRL_MAGIC_AT) != CTRL_MAGIC {
            return Err(Error::new(
                ErrorCode::ProtocolError,
                format!("peer engine '{uid}': its control segment has no valid magic"),
            ));
        }
        let vm = std::env::var(NO_VM_ENV).map_or(true, |v| v != "1") && vm_works(rec);
        Ok(Self {
            pidfd,
            ctrl,
            vm,
            table: Mutex::new(Table::default()),
        })
    }

    /// Whether the peer's process is alive and its engine still serving.
    pub(crate) fn alive(&self) -> bool {
        !peer::pidfd_exited(self.pidfd.as_fd()) && self.ctrl.load(CTRL_STATE_AT) != STATE_CLOSED
    }

    /// The route of every `(remote address, length)`, all checked against the peer's current
    /// region table before any byte moves.
    ///
    /// # Errors
    /// `SM_INVALID_PARAM` naming the peer, the address and the entry for a range it did not
    /// register; store errors while fetching its table; mapping errors.
    pub(crate) fn routes(
        &self,
        engine: &Engine,
        p: &Peer,
        remote: impl ExactSizeIterator<Item = (u64, u64)>,
    ) -> Result<Vec<Route>> {
        let g = self.ctrl.load(CTRL_GEN_AT);
        let mut t = lock(&self.table);
        if t.generation != g {
            (t.regions, t.generation) = fetch_regions(engine, p)?;
            let live: Vec<u64> = t.regions.iter().map(|r| r.inode).collect();
            t.maps.retain(|inode, _| live.contains(inode));
        }
        let n = remote.len();
        let mut out = Vec::with_capacity(n);
        for (i, (addr, len)) in remote.enumerate() {
            let Some(r) = find(&t.regions, addr, len) else {
                return Err(p.unregistered(addr, len, i, n));
            };
            out.push(match r.kind {
                RegionKind::Pool => {
                    let m = match t.maps.get(&r.inode) {
                        Some(m) => Arc::clone(m),
                        None => {
                            let d = SegmentDescriptor {
                                kind: SegmentKind::Host,
                                pid: p.pid,
                                fd: r.fd,
                                inode: r.inode,
                                len: r.len,
                            };
                            let m = Arc::new(Mapped::new("", r.len, Some(&d)).map_err(|e| {
                                e.context(format!("mapping memory of peer engine '{}'", p.uid))
                            })?);
                            t.maps.insert(r.inode, Arc::clone(&m));
                            m
                        }
                    };
                    Route::Mapped {
                        seg: m,
                        offset: addr - r.addr,
                    }
                }
                RegionKind::User if self.vm => Route::Vm,
                RegionKind::User => Route::Net,
            });
        }
        Ok(out)
    }
}

/// Whether `process_vm_readv` reaches the peer's memory (its control segment's magic word);
/// the first answer in this process is logged.
fn vm_works(rec: &EngineRecord<'_>) -> bool {
    let mut word = [0u8; 8];
    let remote = Span {
        addr: rec.ctrl_addr + CTRL_MAGIC_AT,
        len: 8,
    };
    let local = RawRange::from_mut(&mut word);
    let r = peer::process_vm(VmDirection::Read, rec.pid, &[local], &[remote]);
    let ok = matches!(r, Ok(8)) && u64::from_ne_bytes(word) == CTRL_MAGIC;
    crate::sync::once(&VM_NOTE, || match &r {
        _ if ok => info!(
            "smem_trans: same-host registered memory moves with process_vm_writev/readv (checked against pid {})",
            rec.pid
        ),
        Err(e) => info!(
            "smem_trans: process_vm_readv into pid {} is not permitted ({e}); same-host registered memory goes through the transport on loopback",
            rec.pid
        ),
        Ok(_) => info!(
            "smem_trans: process_vm_readv of pid {} returned unexpected bytes; same-host registered memory goes through the transport on loopback",
            rec.pid
        ),
    });
    ok
}
