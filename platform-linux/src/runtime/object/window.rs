//! A BM object's windows as the copy path and the transport see them: each window's state
//! (module docs of [`super`], "Copy path"), entering a window for a copy, and the gate of
//! peers' transport requests into this rank's own window.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use smem_core::ErrorCode;
use smem_core::bm::Part;

use super::{BmObject, MAPPED, NET, REMOTE};
use crate::device::{Device, RawRange};
use crate::sync::lock;
use crate::transport::{Pinned, PinnedIo, Served};
use crate::{Error, Result};

/// One rank's window: its state (see the module docs, "Copy path").
#[derive(Debug, Default)]
pub(crate) struct Window {
    pub(crate) state: AtomicU8,
    /// Device address of the HBM part when it is device memory not mapped into the GVA
    /// (module docs); 0 when the part is mapped (or absent).
    pub(crate) dev: AtomicU64,
    /// `NET` windows: the owner's data endpoint and window generation token (read on the
    /// network path only).
    pub(super) remote: Mutex<Option<(SocketAddr, u64)>>,
}

/// Proof that a window was `MAPPED` (or `NET`) when a copy entered it. The window stays so
/// while the copy holds its object's slot read lock, which the borrow ties this guard to.
pub(crate) struct WindowGuard<'a> {
    #[allow(dead_code)]
    window: &'a Window,
    /// The window is reached through the network transport (state `NET`), not mapped.
    pub(crate) net: bool,
}

/// The gate of peers' transport requests into this rank's own window.
#[derive(Debug, Default)]
pub(super) struct Gate {
    pub(super) state: AtomicU8,
    pub(super) inflight: AtomicU32,
}

/// Holds the gate's in-flight count while a request uses the window.
struct GateGuard<'a>(&'a Gate);

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl BmObject {
    /// The device address of rank `rank`'s HBM part when it is device memory not mapped into
    /// the GVA (call only while inside the window, see [`BmObject::enter`]).
    #[inline]
    pub(crate) fn device_base(&self, rank: u32) -> Option<u64> {
        let dev = self.windows.get(rank as usize)?.dev.load(Ordering::SeqCst);
        (dev != 0).then_some(dev)
    }

    /// The data endpoint and window token of `rank`'s window (state `NET`).
    pub(crate) fn remote_of(&self, rank: u32) -> Result<(SocketAddr, u64)> {
        self.windows
            .get(rank as usize)
            .and_then(|w| *lock(&w.remote))
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::ObjectNotExists,
                    format!(
                        "rank {rank}'s window of BM object {} has no data endpoint",
                        self.id
                    ),
                )
            })
    }

    #[inline]
    pub(crate) fn enter(&self, rank: u32) -> Result<WindowGuard<'_>> {
        let w = self
            .windows
            .get(rank as usize)
            .ok_or_else(|| Error::invalid(format!("rank {rank} has no window")))?;
        // Ordered after an unmapper's `CLOSING` store by the slot lock the caller holds.
        let state = w.state.load(Ordering::Acquire);
        if state == MAPPED || state == NET {
            return Ok(WindowGuard {
                window: w,
                net: state == NET,
            });
        }
        Err(self.unreachable(rank, state))
    }

    #[cold]
    fn unreachable(&self, rank: u32, state: u8) -> Error {
        match state {
            REMOTE if self.node.is_none() => Error::new(
                ErrorCode::NotSupported,
                format!(
                    "rank {rank}'s window of BM object {} is on another host; cross-host copies need the network transport: create the object with SMEMB_DATA_OP_HOST_TCP (or ROCE)",
                    self.id
                ),
            ),
            REMOTE => Error::new(
                ErrorCode::NotSupported,
                format!(
                    "rank {rank}'s window of BM object {} is on another host and rank {rank} does not serve it over the network (it created the object without SMEMB_DATA_OP_HOST_TCP / ROCE)",
                    self.id
                ),
            ),
            _ if rank == self.rank => Error::invalid(format!(
                "rank {rank}'s own window of BM object {} is not joined; call smem_bm_join first",
                self.id
            )),
            _ => Error::new(
                ErrorCode::ObjectNotExists,
                format!(
                    "rank {rank}'s window of BM object {} is not joined (never joined, left, or its process died)",
                    self.id
                ),
            ),
        }
    }
}

impl BmObject {
    /// The `len` bytes at `offset` of rank `rank`'s `part` in this process, for a copy: in the
    /// GVA when the part is mapped, else (device memory not mapped into the GVA, module docs)
    /// at the window's device address. Call only while inside the window
    /// ([`BmObject::enter`], or the gate for the own window), which keeps it mapped.
    ///
    /// # Errors
    /// `SM_ERROR` when the range is not mapped (or not device memory of this process).
    #[inline]
    pub(crate) fn window_range(
        &self,
        rank: u32,
        part: Part,
        offset: u64,
        len: u64,
    ) -> Result<RawRange<'_>> {
        let range = match (part, self.device_base(rank)) {
            (Part::Hbm, Some(dev)) => dev
                .checked_add(offset)
                .and_then(|at| self.ctx.device.device_range(at, len)),
            _ => self.layout.window_base(rank).and_then(|base| {
                // Validated by the planners: inside the object's span, so no overflow.
                let at = base.raw() + self.layout.part_offset(part) + offset;
                // Bounds only (no lock on the reservation's mapped parts): a window is
                // `MAPPED` only once every part of the layout is mapped (`map_peer` refuses a
                // record without one; `open_pending` opens whole windows), and it stays so while
                // the caller is inside it, so the part is mapped for the copy's whole run.
                self.reservation
                    .reserved_range(at.checked_sub(self.reservation.base().raw())?, len)
            }),
        };
        range.ok_or_else(|| {
            Error::new(
                ErrorCode::Error,
                format!(
                    "{len} bytes at offset {offset:#x} of rank {rank}'s {part:?} part of BM object {} are not mapped in this process",
                    self.id
                ),
            )
        })
    }
}

impl Served for BmObject {
    fn pinned(&self, token: u64, offset: u64, span: u64, io: PinnedIo<'_>) -> Result<()> {
        let w = &self.served;
        w.inflight.fetch_add(1, Ordering::SeqCst);
        let _hold = GateGuard(w);
        if w.state.load(Ordering::SeqCst) != MAPPED
            || token == 0
            || self.token.load(Ordering::SeqCst) != token
        {
            return Err(Error::new(
                ErrorCode::ObjectNotExists,
                format!(
                    "rank {}'s window of BM object {} is not served (not joined, left, destroyed, or joined again since)",
                    self.rank, self.id
                ),
            ));
        }
        let bad = |e: &dyn std::fmt::Display| {
            Error::invalid(format!(
                "{span} bytes at offset {offset:#x} of rank {}'s window of BM object {}: {e}",
                self.rank, self.id
            ))
        };
        let start = self
            .layout
            .window_base(self.rank)
            .and_then(|b| b.checked_add(offset))
            .ok_or_else(|| bad(&"offset overflows"))?;
        let loc = self.layout.locate(start, span).map_err(|e| bad(&e))?;
        if loc.rank != self.rank {
            return Err(bad(&"the range leaves the window"));
        }
        // The part stays mapped (or allocated on the device) while the gate's in-flight count,
        // held by `_hold`, keeps a leave or destroy from unmapping it (`drain`).
        let range = self.window_range(self.rank, loc.part, loc.offset, span)?;
        io(Pinned {
            range,
            device: (loc.part == Part::Hbm).then_some(&*self.ctx.device as &dyn Device),
        });
        Ok(())
    }
}

/// Waits until no request is in flight through the gate (each is one bounded chunk).
pub(super) fn drain(w: &Gate) {
    let mut spins = 0u32;
    while w.inflight.load(Ordering::SeqCst) != 0 {
        spins += 1;
        if spins < 100 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}
