//! The process-wide state behind the C API: BM pools (here) and SHM objects ([`shm`]).
//!
//! `capi` calls only these functions; it knows nothing of the store protocol or of memory.
//!
//! # Life cycle
//! `bm_init` connects to the config store (hosting it in-process first when this process is
//! rank 0, or with `autoRanking` the process that can bind the URL's address), registers the
//! rank (`smem/bm/rank/<r>` = host identity and pid) and waits until every rank of the world
//! registered (unless `dynamicWorldSize`), naming the missing ranks on timeout: a constant
//! number of store operations per rank (`runtime/rendezvous.rs`). When the store
//! link goes down during that wait (the store host gave up at its own deadline, or died), the
//! rank does not fail with `SM_IO_ERROR`: it connects again to the store URL until its own init
//! deadline, registers again when the store is back and keeps waiting; at the deadline it
//! returns `SM_TIMEOUT` naming the ranks it never saw registered and when the store went away
//! (`survive_store_loss`, shared with `smem_shm_init`). So every surviving rank gets
//! `SM_TIMEOUT` naming the missing ranks, whichever gives up first. A second
//! `bm_init` with identical arguments returns 0; with different ones `SM_REPEAT_CALL`.
//! Objects: see the module docs of `runtime/object.rs` for the GVA agreement, the membership log
//! and the store key schedule.
//! Windows of peers on other hosts stay reserved; objects created with `HOST_TCP` or `ROCE`
//! reach them through the network transport ([`crate::transport`]), others get
//! `SM_NOT_SUPPORTED` for them. `unifiedAddressSpace = false` is refused with
//! `SM_INVALID_PARAM` (every member maps the pool at the same GVA); reserved `flags` (config,
//! create, join, leave) must be 0; `dataOpType` does not change the same-host route (memory
//! copy / device copy engine). The route is chosen per window at join (its atomic state): the copy path reads it
//! once, with no lookup beyond the object's table slot.
//!
//! # Locks
//! Every lock is taken through [`crate::sync`], so no log record reaches the external logger
//! while its thread holds one (SPEC 2.1). `STATE` (init/uninit), `OBJECTS` (the handle table) and each slot's `RwLock` are only held
//! for short, non-blocking sections, in that order. The copy path takes one slot's read lock
//! (per object, never global) for the whole copy, validates with `smem_core::bm`, checks the
//! window's state and copies; it allocates nothing unless it fails. Unmapping a window waits for
//! the copies in flight by taking the slot's write lock once (`wait_for_copies`); no thread
//! holding a slot lock waits for anything else, so this cannot deadlock.
//!
//! # Fork
//! A `pthread_atfork` prepare handler takes `STATE`, `OBJECTS` and every slot lock, so no lock
//! is held by another thread across `fork`; the parent releases them; the child forgets every
//! object, store link and server of the parent (their threads do not exist in the child; their
//! memory is not freed, the child's mappings keep sharing the parent's pages) and starts
//! uninitialised, so it can call `bm_init` again. No-clobber reservations keep its new objects
//! off the ranges it still has reserved. The store sockets of the parent (client links, the listener and
//! links of a hosted store) are not inherited as such: [`crate::sys::fork::DetachOnFork`]
//! replaces them in the child with unconnected placeholders, so the store sees this process's
//! link close when it dies even while a forked child lives, and a hosted store's port is freed.

mod agree;
mod async_engine;
mod batch;
mod bm;
mod copy;
mod handles;
mod life;
mod object;
mod regions;
mod rendezvous;
pub mod shm;

pub use self::async_engine::bm_wait;
pub use self::batch::{BATCH_MAX, BatchEntry, bm_copy_batch};
pub use self::bm::{BmConfig, bm_init, bm_rank_id, bm_uninit};
pub(crate) use self::bm::{Ctx, bm_store_user, rank_key};
pub use self::copy::{bm_copy, bm_copy_2d};
pub(crate) use self::handles::wait_for_copies;
pub use self::handles::{
    BmHandle, bm_create, bm_destroy, bm_join, bm_leave, bm_local_mem_size, bm_ptr,
};
pub(crate) use self::life::{hosted_addr, parse_store_url};
pub use self::regions::{bm_rank_by_gva, bm_register_user_mem, bm_unregister_user_mem};
use crate::{Error, Result};

/// `smem_init`: process-wide initialisation (idempotent).
pub fn init(flags: u32) -> Result<()> {
    if flags != 0 {
        return Err(Error::invalid(format!(
            "smem_init flags must be 0, got {flags:#x}"
        )));
    }
    handles::register_atfork();
    Ok(())
}

/// `smem_uninit`: tears down everything this process created.
pub fn uninit() {
    shm::shm_uninit(0);
    bm_uninit(0);
}

/// Names a list of ranks compactly: `0-3,7`.
pub(crate) fn rank_list(ranks: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < ranks.len() {
        let mut j = i;
        while j + 1 < ranks.len() && ranks[j + 1] == ranks[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if j > i {
            out.push_str(&format!("{}-{}", ranks[i], ranks[j]));
        } else {
            out.push_str(&ranks[i].to_string());
        }
        i = j + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use smem_core::ErrorCode;
    use smem_core::table::Handle;

    use super::*;

    /// Nothing in this test binary calls `bm_init`, so every call sees an uninitialised process.
    #[test]
    fn calls_before_init_fail_cleanly() {
        assert_eq!(
            bm_rank_id().map_err(|e| e.code()),
            Err(ErrorCode::NotInitialized)
        );
        assert_eq!(
            bm_create(0, 1, 1, 1, 0, 0).map_err(|e| e.code()),
            Err(ErrorCode::NotInitialized)
        );
        let forged = BmHandle(
            Handle {
                index: 3,
                generation: 9,
            }
            .encode(),
        );
        assert_eq!(
            bm_join(forged, 0).map_err(|e| e.code()),
            Err(ErrorCode::ObjectNotExists)
        );
        assert_eq!(
            bm_destroy(BmHandle(0)).map_err(|e| e.code()),
            Err(ErrorCode::InvalidParam)
        );
        let beyond = BmHandle(
            Handle {
                index: 64,
                generation: 0,
            }
            .encode(),
        );
        assert_eq!(
            bm_ptr(beyond, 0).map_err(|e| e.code()),
            Err(ErrorCode::InvalidParam)
        );
        let r = bm_copy(forged, 1, 2, 3, 0, 0, None);
        assert_eq!(r.map_err(|e| e.code()), Err(ErrorCode::ObjectNotExists));
        let e = bm_init("http://x", 1, 0, &BmConfig::default()).expect_err("bad url");
        assert_eq!(e.code(), ErrorCode::InvalidParam);
        let e = bm_init("tcp://127.0.0.1:1", 0, 0, &BmConfig::default()).expect_err("world 0");
        assert_eq!(e.code(), ErrorCode::InvalidParam);
        bm_uninit(0);
    }

    #[test]
    fn rank_lists_are_compact() {
        assert_eq!(rank_list(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9-10");
        assert_eq!(rank_list(&[]), "");
        assert_eq!(rank_list(&[5]), "5");
    }
}
