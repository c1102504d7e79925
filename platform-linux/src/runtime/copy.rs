//! The BM copy path: `smem_bm_copy`, `smem_bm_copy_2d` (SPEC 2.2, 6.1) and the validated copy
//! plans shared with the batch path ([`super::batch`]) and the asynchronous engine
//! ([`super::async_engine`]).
//!
//! A copy is *planned* first (flags, type and ranges checked by `smem_core::bm`, every window it
//! touches entered: see `runtime/object.rs`, "Copy path"), then *run*: both sides addressable
//! in this process (the caller's memory, a mapped window, a device-resident HBM part) => a
//! memory / device copy; one side in a window of another host => one transport transfer with the
//! other side as its local memory; both sides on other hosts (`G2G` only) => through a bounce
//! buffer in this process, at most [`BOUNCE`] bytes at a time. Planning and the first two routes
//! allocate nothing; an error message is only built on failure.
//!
//! `flags` is 0 or `SMEM_ASYNC_COPY_FLAG`; any other bit is `SM_INVALID_PARAM` before anything
//! else. With the flag the copy is planned here (an invalid copy fails at once, nothing is
//! queued) and queued on the engine, which runs it again as a synchronous copy.

use std::sync::RwLockReadGuard;

use smem_core::ErrorCode;
use smem_core::bm::{
    self, Copy2d, LocalMemory, Location, Part, check_copy, check_copy_2d, check_copy_2d_g2g,
    check_copy_flags, check_copy_g2g,
};
use smem_core::gva::{Gva, GvaRange};

use super::async_engine;
use super::handles::{BmHandle, Published, SLOTS, decode, stale};
use super::object::BmObject;
use crate::device::{CopyDirection, RawRange, Shape2d};
use crate::sync::read;
use crate::transport::{Op, Transfer};
use crate::{Error, Result};

/// Bytes a `G2G` copy between two windows of other hosts stages in this process at a time.
pub(super) const BOUNCE: u64 = 8 * 1024 * 1024;

/// The object behind `handle`, with its slot's read lock held (see the module docs of
/// `runtime/mod.rs`, "Locks"): copies run while it is held.
pub(super) struct Entered {
    slot: crate::sync::Held<RwLockReadGuard<'static, Published>>,
}

impl Entered {
    /// Takes `handle`'s slot read lock; fails for a forged or stale handle.
    #[inline]
    pub(super) fn enter(handle: BmHandle, what: &str) -> Result<Self> {
        let h = decode(handle, what)?;
        let slot = read(&SLOTS[h.index as usize]);
        match &*slot {
            Some((generation, _)) if *generation == h.generation => Ok(Self { slot }),
            _ => Err(stale(what)),
        }
    }

    /// The object.
    #[inline]
    pub(super) fn obj(&self) -> &BmObject {
        match &*self.slot {
            Some((_, obj)) => obj,
            // `enter` checked the slot, and the read lock keeps it.
            None => unreachable!("a held slot is published"),
        }
    }
}

/// One side of a planned copy.
#[derive(Clone, Copy, Debug)]
pub(super) enum Side {
    /// Memory of this process outside the object (the caller's, from the first row), of this
    /// kind.
    Local(RawRange<'static>, LocalMemory),
    /// A range of a joined window; `net`: reached through the network transport.
    Window(Location, bool),
}

impl Side {
    /// Whether the side is reached through the network transport.
    #[inline]
    pub(super) fn net(self) -> bool {
        matches!(self, Self::Window(_, true))
    }
}

/// The memory of `side` in this process holding `height` rows of `width` bytes `pitch` apart,
/// and whether it is device memory (a window side: only while the window is entered and not
/// `net`).
#[inline]
pub(super) fn side_range(
    obj: &BmObject,
    side: Side,
    pitch: u64,
    width: u64,
    height: u64,
) -> Result<(RawRange<'_>, bool)> {
    let span = (height - 1)
        .checked_mul(pitch)
        .and_then(|v| v.checked_add(width))
        .ok_or_else(|| Error::invalid("copy span overflows the address space"))?;
    match side {
        Side::Local(r, m) => {
            let r = r.sub(0, span).ok_or_else(|| {
                Error::invalid(format!(
                    "the local rows of the copy ({span} bytes) leave the {} bytes given",
                    r.len()
                ))
            })?;
            Ok((r, m == LocalMemory::Device))
        }
        Side::Window(loc, _) => Ok((
            obj.window_range(loc.rank, loc.part, loc.offset, span)?,
            loc.part == Part::Hbm,
        )),
    }
}

/// A validated copy of `height` rows of `width` bytes (1D: one row).
#[derive(Clone, Copy, Debug)]
pub(super) struct Plan {
    pub(super) src: Side,
    pub(super) spitch: u64,
    pub(super) dst: Side,
    pub(super) dpitch: u64,
    pub(super) width: u64,
    pub(super) height: u64,
}

/// Refuses copy flags other than 0 and `SMEM_ASYNC_COPY_FLAG`; `Ok(true)` for an asynchronous
/// copy.
#[inline]
pub(super) fn async_flag(flags: u32, what: &str) -> Result<bool> {
    check_copy_flags(flags).map_err(|e| Error::invalid(format!("{what}: {e}")))
}

#[cold]
fn invalid(e: bm::CopyError) -> Error {
    Error::invalid(e.to_string())
}

/// The window side at `loc`, entered (its state checked) for a copy.
#[inline]
fn window(obj: &BmObject, loc: Location) -> Result<Side> {
    Ok(Side::Window(loc, obj.enter(loc.rank)?.net))
}

/// The local side of a copy of type L2G/G2L/G2H/H2G. When it lies in the object's own GVA span
/// (e.g. a copy between two windows written as H2G), it must be one joined, mapped part and is
/// addressed like one.
fn local_side(
    obj: &BmObject,
    local: u64,
    len: u64,
    memory: LocalMemory,
    given: Option<RawRange<'static>>,
) -> Result<Side> {
    let outside = || {
        given
            .and_then(|g| g.sub(local.checked_sub(g.addr())?, len))
            .map(|r| Side::Local(r, memory))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "the local side of the copy ({len} bytes at {local:#x}) is not inside the local memory given with it"
                ))
            })
    };
    let Some(range) = GvaRange::new(Gva(local), len) else {
        return outside();
    };
    if !range.overlaps(&obj.layout.span()) {
        return outside();
    }
    let loc = obj.layout.locate(Gva(local), len).map_err(|e| {
        Error::invalid(format!(
            "local side of the copy lies in this object's GVA range: {e}"
        ))
    })?;
    let side = window(obj, loc)?;
    if side.net() {
        return Err(Error::invalid(format!(
            "the local side of the copy lies in rank {}'s window, which is on another host; use SMEMB_COPY_G2G for a copy between two windows",
            loc.rank
        )));
    }
    Ok(side)
}

/// The arguments of `smem_bm_copy` or `smem_bm_copy_2d` (without flags): a 1D copy is the
/// 2D copy of one row of `size` bytes, validated with the 1D rules (and messages).
#[derive(Clone, Copy, Debug)]
pub(super) struct Request {
    /// The ranges; a 1D copy of `size` bytes is one row with both pitches `size`.
    pub(super) copy: Copy2d,
    pub(super) copy_type: u32,
    /// Made by `smem_bm_copy` (checked by the 1D rules).
    pub(super) one_d: bool,
    /// The caller's memory of the local side (see [`bm_copy`]).
    pub(super) local: Option<RawRange<'static>>,
}

impl Request {
    /// `smem_bm_copy(src, dest, size, copy_type)` with the caller's `local` memory.
    pub(super) const fn new_1d(
        src: u64,
        dest: u64,
        size: u64,
        copy_type: u32,
        local: Option<RawRange<'static>>,
    ) -> Self {
        Self {
            copy: Copy2d::new(src, size, dest, size, size, 1),
            copy_type,
            one_d: true,
            local,
        }
    }

    /// The API call the request came from, for messages.
    pub(super) const fn what(&self) -> &'static str {
        if self.one_d {
            "smem_bm_copy"
        } else {
            "smem_bm_copy_2d"
        }
    }
}

/// Plans `smem_bm_copy(src, dest, size, copy_type)` with the caller's `local` memory (flags
/// already checked).
#[inline]
pub(super) fn plan_1d(
    obj: &BmObject,
    src: u64,
    dest: u64,
    size: u64,
    copy_type: u32,
    local: Option<RawRange<'static>>,
) -> Result<Plan> {
    plan(obj, &Request::new_1d(src, dest, size, copy_type, local))
}

/// Plans a copy request (flags already checked): the G2G or local/global checks of its
/// dimension, then every window side entered.
#[inline]
pub(super) fn plan(obj: &BmObject, r: &Request) -> Result<Plan> {
    let c = &r.copy;
    let layout = &obj.layout;
    let (src, dst) = if r.copy_type == bm::COPY_G2G {
        let (s, d) = if r.one_d {
            let p = check_copy_g2g(layout, c.src, c.dest, c.width).map_err(invalid)?;
            (p.src, p.dest)
        } else {
            let p = check_copy_2d_g2g(layout, c).map_err(invalid)?;
            (p.src, p.dest)
        };
        (window(obj, s)?, window(obj, d)?)
    } else {
        // The local side's span: checked for overflow by `check_copy_2d`.
        let (kind, global, local, span) = if r.one_d {
            let p = check_copy(layout, r.copy_type, c.src, c.dest, c.width).map_err(invalid)?;
            (p.kind, p.global, p.local, c.width)
        } else {
            let p = check_copy_2d(layout, r.copy_type, c).map_err(invalid)?;
            let span = (c.height - 1) * p.local_pitch + c.width;
            (p.kind, p.global, p.local, span)
        };
        let global = window(obj, global)?;
        let local = local_side(obj, local, span, kind.local_memory(), r.local)?;
        if kind.writes_global() {
            (local, global)
        } else {
            (global, local)
        }
    };
    Ok(Plan {
        src,
        spitch: c.spitch,
        dst,
        dpitch: c.dpitch,
        width: c.width,
        height: c.height,
    })
}

/// The device copy direction between memories of these kinds (`true`: device memory).
pub(super) fn direction(src_device: bool, dst_device: bool) -> CopyDirection {
    match (src_device, dst_device) {
        (true, true) => CopyDirection::DeviceToDevice,
        (true, false) => CopyDirection::DeviceToHost,
        (false, true) => CopyDirection::HostToDevice,
        (false, false) => CopyDirection::HostToHost,
    }
}

fn usize_of(v: u64, what: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::invalid(format!("{what}: {v} is too large")))
}

/// Runs a planned copy to completion. The caller holds the object's slot read lock since
/// `plan` was made (window sides stay entered).
pub(super) fn run(obj: &BmObject, plan: &Plan, what: &str) -> Result<()> {
    match (plan.src.net(), plan.dst.net()) {
        (false, false) => {
            let (s, s_dev) = side_range(obj, plan.src, plan.spitch, plan.width, plan.height)?;
            let (d, d_dev) = side_range(obj, plan.dst, plan.dpitch, plan.width, plan.height)?;
            let dir = direction(s_dev, d_dev);
            let len = usize_of(plan.width, what)?;
            if plan.height == 1 {
                return obj.ctx.device.copy_2d(s, d, Shape2d::row(len), dir);
            }
            let (sp, dp, h) = (
                usize_of(plan.spitch, what)?,
                usize_of(plan.dpitch, what)?,
                usize_of(plan.height, what)?,
            );
            obj.ctx
                .device
                .copy_2d(s, d, Shape2d::new(sp, dp, len, h), dir)
        }
        (false, true) | (true, false) => remote(obj, plan).map_err(|e| e.context(what)),
        (true, true) => bounce(obj, plan).map_err(|e| e.context(what)),
    }
}

/// The network transfer of a plan with exactly one side on another host: a WRITE into the
/// destination window, or a READ of the source window, with the other side as local memory.
#[cold]
#[inline(never)]
fn remote(obj: &BmObject, plan: &Plan) -> Result<()> {
    let (global, global_pitch, local, local_pitch, op) = match (plan.src, plan.dst) {
        (local, Side::Window(loc, true)) => (loc, plan.dpitch, local, plan.spitch, Op::Write),
        (Side::Window(loc, true), local) => (loc, plan.spitch, local, plan.dpitch, Op::Read),
        _ => {
            return Err(Error::new(
                ErrorCode::Error,
                "no side of the copy is remote",
            ));
        }
    };
    let (local, device) = side_range(obj, local, local_pitch, plan.width, plan.height)?;
    let t = transfer(obj, global, global_pitch, op, device)?;
    let t = Transfer {
        local,
        local_pitch,
        width: plan.width,
        height: plan.height,
        ..t
    };
    let node = node(obj)?;
    node.pool().transfer(&t, node.timeout())
}

/// The object's transport, or why it has none.
pub(super) fn node(obj: &BmObject) -> Result<&crate::transport::Node> {
    obj.node.as_deref().ok_or_else(|| {
        Error::new(
            ErrorCode::NotSupported,
            "this object does not use the network transport",
        )
    })
}

/// A transfer to `global`'s window (its rows `global_pitch` apart), without its local side.
pub(super) fn transfer(
    obj: &BmObject,
    global: Location,
    global_pitch: u64,
    op: Op,
    local_device: bool,
) -> Result<Transfer<'_>> {
    let (peer, token) = obj.remote_of(global.rank)?;
    Ok(Transfer {
        peer,
        rank: global.rank,
        object: obj.id,
        token,
        op,
        remote_offset: obj.layout.part_offset(global.part) + global.offset,
        remote_pitch: global_pitch,
        local: RawRange::EMPTY,
        local_pitch: 0,
        width: 0,
        height: 0,
        local_device: local_device.then_some(&*obj.ctx.device),
    })
}

/// A `G2G` copy between two windows of other hosts, staged through a buffer of this process:
/// groups of rows (or pieces of one long row) of at most [`BOUNCE`] bytes are read, then
/// written.
#[cold]
#[inline(never)]
fn bounce(obj: &BmObject, plan: &Plan) -> Result<()> {
    let (Side::Window(src, _), Side::Window(dst, _)) = (plan.src, plan.dst) else {
        return Err(Error::new(
            ErrorCode::Error,
            "a bounce copy needs two windows",
        ));
    };
    let node = node(obj)?;
    let mut buf = vec![0u8; plan.width.saturating_mul(plan.height).min(BOUNCE) as usize];
    let local = RawRange::from_mut(&mut buf);
    // (first row, rows, byte offset in the row, bytes per row) of each stage.
    let (rows_per, cols_per) = if plan.width <= BOUNCE {
        ((BOUNCE / plan.width).max(1), plan.width)
    } else {
        (1, BOUNCE)
    };
    let mut row = 0;
    while row < plan.height {
        let rows = rows_per.min(plan.height - row);
        let mut col = 0;
        while col < plan.width {
            let cols = cols_per.min(plan.width - col);
            let at = |loc: Location, pitch: u64| Location {
                offset: loc.offset + row * pitch + col,
                ..loc
            };
            for (loc, pitch, op) in [
                (at(src, plan.spitch), plan.spitch, Op::Read),
                (at(dst, plan.dpitch), plan.dpitch, Op::Write),
            ] {
                let t = Transfer {
                    local,
                    local_pitch: cols,
                    width: cols,
                    height: rows,
                    ..transfer(obj, loc, pitch, op, false)?
                };
                node.pool().transfer(&t, node.timeout())?;
            }
            col += cols;
        }
        row += rows;
    }
    drop(buf);
    Ok(())
}

/// Plans `request` and runs it, or with `SMEM_ASYNC_COPY_FLAG` queues it (`smem_bm_copy`,
/// `smem_bm_copy_2d`, and the asynchronous engine with `flags` 0).
pub(super) fn copy(handle: BmHandle, request: Request, flags: u32) -> Result<()> {
    let what = request.what();
    let is_async = async_flag(flags, what)?;
    let held = Entered::enter(handle, what)?;
    let obj = held.obj();
    let plan = plan(obj, &request).map_err(|e| e.context(what))?;
    if is_async {
        drop(held);
        return async_engine::submit(handle, async_engine::Job::Copy(request));
    }
    // `held` keeps the planned windows entered.
    run(obj, &plan, what)
}

/// `smem_bm_copy`. `local` is the caller's memory of the local side (`src` for L2G/H2G,
/// `dest` for G2L/G2H, `size` bytes; `None` for G2G), valid for the call or, with
/// `SMEM_ASYNC_COPY_FLAG`, until `smem_bm_wait` returned (see [`crate::sys::copy::bm_local`]); the local side
/// must lie in it. The global side is validated against the object's windows.
///
/// # Errors
/// As SPEC 2.2 `smem_bm_copy`.
pub fn bm_copy(
    handle: BmHandle,
    src: u64,
    dest: u64,
    size: u64,
    copy_type: u32,
    flags: u32,
    local: Option<RawRange<'static>>,
) -> Result<()> {
    copy(
        handle,
        Request::new_1d(src, dest, size, copy_type, local),
        flags,
    )
}

/// `smem_bm_copy_2d`: `ranges` holds its six range arguments (see [`Copy2d::new`]); `local` as
/// for [`bm_copy`], holding every row of the local side.
///
/// # Errors
/// As SPEC 2.2 `smem_bm_copy_2d`.
pub fn bm_copy_2d(
    handle: BmHandle,
    ranges: Copy2d,
    copy_type: u32,
    flags: u32,
    local: Option<RawRange<'static>>,
) -> Result<()> {
    let request = Request {
        copy: ranges,
        copy_type,
        one_d: false,
        local,
    };
    copy(handle, request, flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_directions() {
        use CopyDirection::*;
        assert_eq!(direction(false, false), HostToHost);
        assert_eq!(direction(false, true), HostToDevice);
        assert_eq!(direction(true, false), DeviceToHost);
        assert_eq!(direction(true, true), DeviceToDevice);
    }
}
