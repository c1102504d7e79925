//! The BM handle table: the objects of this process by id (`smem_bm_create`, `_destroy`,
//! `_join`, `_leave`, `_ptr`, `_get_local_mem_size`), the per-object slot locks the copy path
//! holds, and the fork handlers that hold every one of those locks across `fork` (see the
//! module docs of [`super`], "Locks" and "Fork").

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Once, RwLock, RwLockWriteGuard};

use log::warn;
use smem_core::ErrorCode;
use smem_core::gva::Gva;
use smem_core::limits::BM_OBJECTS_MAX;
use smem_core::table::{Handle, Table};

use super::bm::{STATE, State, ready_ctx};
use super::life::{self, reserved_zero};
use super::object::{BmObject, CreateArgs};
use crate::sync::{Held, lock, read, write};
use crate::{Error, Result};

/// An opaque, generation-checked BM object handle as handed to C (never 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BmHandle(pub u64);

/// A published object with its handle generation (`None`: free slot).
pub(super) type Published = Option<(u32, Arc<BmObject>)>;
type Slot = RwLock<Published>;

pub(super) static OBJECTS: LazyLock<Mutex<Table<Arc<BmObject>, BM_OBJECTS_MAX>>> =
    LazyLock::new(|| Mutex::new(Table::new()));
pub(super) static SLOTS: [Slot; BM_OBJECTS_MAX] = [const { RwLock::new(None) }; BM_OBJECTS_MAX];
static CREATING: [AtomicBool; BM_OBJECTS_MAX] = [const { AtomicBool::new(false) }; BM_OBJECTS_MAX];
static ATFORK: Once = Once::new();

/// `smem_bm_create`.
pub fn bm_create(
    id: u32,
    member_size: u32,
    data_op_type: u32,
    local_dram_size: u64,
    local_hbm_size: u64,
    flags: u32,
) -> Result<BmHandle> {
    let what = format!("smem_bm_create {id}");
    reserved_zero(&what, "flags", flags)?;
    let ctx = ready_ctx(&what)?;
    let index = id as usize;
    if index >= BM_OBJECTS_MAX {
        return Err(Error::invalid(format!(
            "{what}: id must be below {BM_OBJECTS_MAX}"
        )));
    }
    if member_size == 0 || member_size > ctx.world_size {
        return Err(Error::invalid(format!(
            "{what}: memberSize {member_size} must be in 1..={} (worldSize)",
            ctx.world_size
        )));
    }
    if ctx.rank >= member_size {
        return Err(Error::invalid(format!(
            "{what}: rank {} is not a member of an object of memberSize {member_size}",
            ctx.rank
        )));
    }
    smem_core::data_op::BmDataOps::from_c(data_op_type)
        .map_err(|e| Error::invalid(format!("{what}: {e}")))?;
    if local_dram_size == 0 && local_hbm_size == 0 {
        return Err(Error::invalid(format!(
            "{what}: localDRAMSize and localHBMSize are both 0; give at least one"
        )));
    }
    {
        let objects = lock(&OBJECTS);
        if objects.handle_at(index).is_some() || CREATING[index].swap(true, Ordering::SeqCst) {
            return Err(Error::new(
                ErrorCode::DuplicatedObject,
                format!("{what}: an object with this id exists in this process; destroy it first"),
            ));
        }
    }
    let args = CreateArgs {
        id,
        member_size,
        dram: local_dram_size,
        hbm: local_hbm_size,
        data_op: data_op_type,
    };
    let created = BmObject::create(&ctx, ctx.rank, &args);
    let mut objects = lock(&OBJECTS);
    CREATING[index].store(false, Ordering::SeqCst);
    let obj = created?;
    let handle = objects
        .insert_at(index, Arc::clone(&obj))
        .map_err(|(e, _)| Error::new(ErrorCode::DuplicatedObject, format!("{what}: {e}")))?;
    *write(&SLOTS[index]) = Some((handle.generation, obj));
    Ok(BmHandle(handle.encode()))
}

pub(super) fn decode(handle: BmHandle, what: &str) -> Result<Handle> {
    Handle::decode(handle.0)
        .filter(|h| (h.index as usize) < BM_OBJECTS_MAX)
        .ok_or_else(|| Error::invalid(format!("{what}: {:#x} is not a BM handle", handle.0)))
}

pub(super) fn stale(what: &str) -> Error {
    Error::new(
        ErrorCode::ObjectNotExists,
        format!("{what}: the BM object was destroyed (stale handle)"),
    )
}

/// Waits until no copy is in flight in BM object `id` (each copy holds the slot's read lock;
/// the lock prefers writers, so this is not starved by new copies). The caller has already
/// marked what it unmaps `CLOSING`, so copies that start afterwards fail cleanly.
pub(crate) fn wait_for_copies(id: u32) {
    if let Some(slot) = SLOTS.get(id as usize) {
        drop(write(slot));
    }
}

/// The object behind `handle` (control path).
fn lookup(handle: BmHandle, what: &str) -> Result<Arc<BmObject>> {
    let h = decode(handle, what)?;
    match &*read(&SLOTS[h.index as usize]) {
        Some((generation, obj)) if *generation == h.generation => Ok(Arc::clone(obj)),
        _ => Err(stale(what)),
    }
}

/// Uninit: destroys every object of this process.
pub(super) fn destroy_all() {
    let handles: Vec<Handle> = lock(&OBJECTS).iter().map(|(h, _)| h).collect();
    for h in handles {
        if let Err(e) = destroy_handle(h) {
            warn!("smem_bm_uninit: destroying BM object {}: {e}", h.index);
        }
    }
}

fn destroy_handle(h: Handle) -> Result<()> {
    let what = "smem_bm_destroy";
    let obj = {
        let mut objects = lock(&OBJECTS);
        let obj = objects.remove(h).map_err(|_| stale(what))?;
        // Waits for copies of other threads that are inside the object.
        *write(&SLOTS[h.index as usize]) = None;
        obj
    };
    let r = obj.destroy();
    obj.quiesce();
    drop(obj);
    r
}

/// `smem_bm_destroy`.
pub fn bm_destroy(handle: BmHandle) -> Result<()> {
    destroy_handle(decode(handle, "smem_bm_destroy")?)
}

/// `smem_bm_join`: returns this rank's window base (GVA).
pub fn bm_join(handle: BmHandle, flags: u32) -> Result<u64> {
    reserved_zero("smem_bm_join", "flags", flags)?;
    lookup(handle, "smem_bm_join")?.join()
}

/// `smem_bm_leave`.
pub fn bm_leave(handle: BmHandle, flags: u32) -> Result<()> {
    reserved_zero("smem_bm_leave", "flags", flags)?;
    lookup(handle, "smem_bm_leave")?.leave()
}

/// `smem_bm_get_local_mem_size`.
pub fn bm_local_mem_size(handle: BmHandle) -> Result<u64> {
    Ok(lookup(handle, "smem_bm_get_local_mem_size")?
        .layout
        .local_mem_size())
}

/// `smem_bm_ptr`: `base + peer * stride`.
pub fn bm_ptr(handle: BmHandle, peer: u16) -> Result<u64> {
    let obj = lookup(handle, "smem_bm_ptr")?;
    obj.layout
        .window_base(u32::from(peer))
        .map(Gva::raw)
        .ok_or_else(|| {
            Error::invalid(format!(
                "smem_bm_ptr: peer {peer} is not below memberSize {}",
                obj.layout.member_size()
            ))
        })
}

/// Locks held across `fork` by the thread that forks (see the module docs).
struct ForkGuards {
    state: Held<MutexGuard<'static, State>>,
    objects: Held<MutexGuard<'static, Table<Arc<BmObject>, BM_OBJECTS_MAX>>>,
    slots: Vec<Held<RwLockWriteGuard<'static, Published>>>,
}

thread_local! {
    static FORK_GUARDS: RefCell<Option<ForkGuards>> = const { RefCell::new(None) };
}

extern "C" fn fork_prepare() {
    let guards = ForkGuards {
        state: lock(&STATE),
        objects: lock(&OBJECTS),
        slots: SLOTS.iter().map(write).collect(),
    };
    FORK_GUARDS.with(|g| *g.borrow_mut() = Some(guards));
}

extern "C" fn fork_parent() {
    FORK_GUARDS.with(|g| drop(g.borrow_mut().take()));
}

extern "C" fn fork_child() {
    FORK_GUARDS.with(|g| {
        if let Some(mut guards) = g.borrow_mut().take() {
            // The parent's threads do not exist here: forget (never drop) what they served.
            std::mem::forget(std::mem::take(&mut *guards.state));
            std::mem::forget(std::mem::take(&mut *guards.objects));
            for s in guards.slots.iter_mut() {
                std::mem::forget(s.take());
            }
            for c in &CREATING {
                c.store(false, Ordering::SeqCst);
            }
        }
    });
}

/// Registers the fork handlers of the BM runtime (once per process).
pub(super) fn register_atfork() {
    life::register_atfork(
        &ATFORK,
        [fork_prepare, fork_parent, fork_child],
        "smem is busy",
    );
}
