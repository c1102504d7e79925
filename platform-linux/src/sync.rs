//! The locks of smem, counted per thread, so no log record reaches the external logger while
//! a lock is held (SPEC 2.1).
//!
//! Every lock of smem is taken through this module: [`lock`] (a `Mutex`), [`read`] / [`write()`]
//! (an `RwLock`), [`wait_timeout`] (a `Condvar` wait keeps the count), [`once`] (a `Once`) and
//! [`get_or_init`] (a `OnceLock`: its initialiser runs under the cell's lock). Each returns a
//! [`Held`] guard (or runs its closure) while a per-thread count of held locks is raised.
//! While this thread's count is above zero, [`crate::logging`] queues the records meant for the
//! external sink instead of calling it; the guard that brings the count back to zero, *after*
//! releasing its lock, hands the queued records to the sink in order. So a sink may call any
//! smem function (e.g. `smem_bm_get_rank_id` while `smem_bm_init` holds the init lock) without
//! deadlocking, wherever the record was logged. Records for stderr are written at once (that
//! path takes no lock and calls no user code).
//!
//! The rule holds by construction for code that takes its locks here; the crate's
//! `clippy.toml` (and `capi`'s) refuses `Mutex::lock`, `RwLock::read`/`write`,
//! `Once::call_once` and `OnceLock::get_or_init` anywhere else, so code added later cannot
//! bypass it by accident.
//!
//! Other threads: the count is per thread, so a sink called on thread B may run while thread A
//! holds a lock. Locks held across a wait for another thread are few: no thread joins another
//! while holding a lock, and the init state, the handle tables and the object slots are never
//! held across a wait; so a sink calling the getters, the last error, the level or a copy never
//! waits for a thread that waits for it. An object's join / leave / destroy serialise on its
//! `op` lock across store round trips: a sink that calls those of an object whose membership
//! operation is in flight waits for that operation (bounded by its timeouts), like any caller.
//!
//! Locks ignore poisoning: a panic caught at the C boundary must not make every later call
//! fail; the data they protect stays consistent at every unlock.
#![allow(clippy::disallowed_methods)] // The one place that takes std locks directly.

use std::cell::Cell;
use std::ops::{Deref, DerefMut};
use std::sync::{
    Condvar, Mutex, MutexGuard, Once, OnceLock, PoisonError, RwLock, RwLockReadGuard,
    RwLockWriteGuard,
};
use std::time::Duration;

thread_local! {
    /// Locks of this module this thread holds now.
    static HELD: Cell<usize> = const { Cell::new(0) };
}

/// How many locks of this module the calling thread holds (0 when it holds none).
pub fn held() -> usize {
    HELD.try_with(Cell::get).unwrap_or(0)
}

/// One raised count of this thread; lowering it to zero flushes the deferred log records.
#[derive(Debug)]
struct Count(());

impl Count {
    fn raise() -> Self {
        let _ = HELD.try_with(|h| h.set(h.get() + 1));
        Self(())
    }
}

impl Drop for Count {
    fn drop(&mut self) {
        let now = HELD.try_with(|h| {
            let n = h.get().saturating_sub(1);
            h.set(n);
            n
        });
        if now == Ok(0) {
            crate::logging::flush_deferred();
        }
    }
}

/// A lock guard that counts as held for the logger (see the module docs). Derefs to the
/// protected value; dropping it releases the lock first and then lowers the count.
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub struct Held<G> {
    // Field order matters: the guard (the lock) is dropped before the count.
    guard: G,
    count: Count,
}

impl<G: Deref> Deref for Held<G> {
    type Target = G::Target;
    fn deref(&self) -> &Self::Target {
        &self.guard
    }
}

impl<G: DerefMut> DerefMut for Held<G> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.guard
    }
}

/// Locks `m` (ignoring poison).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> Held<MutexGuard<'_, T>> {
    let count = Count::raise();
    Held {
        guard: m.lock().unwrap_or_else(PoisonError::into_inner),
        count,
    }
}

/// Takes `l` for reading (ignoring poison).
pub fn read<T: ?Sized>(l: &RwLock<T>) -> Held<RwLockReadGuard<'_, T>> {
    let count = Count::raise();
    Held {
        guard: l.read().unwrap_or_else(PoisonError::into_inner),
        count,
    }
}

/// Takes `l` for writing (ignoring poison).
pub fn write<T: ?Sized>(l: &RwLock<T>) -> Held<RwLockWriteGuard<'_, T>> {
    let count = Count::raise();
    Held {
        guard: l.write().unwrap_or_else(PoisonError::into_inner),
        count,
    }
}

/// Waits on `cv` for at most `timeout` with the lock of `held` released meanwhile, and takes it
/// again (spurious wake-ups included: callers re-check their condition and deadline). The
/// thread stays counted as holding the lock: it logs nothing while it sleeps.
pub fn wait_timeout<'a, T>(
    cv: &Condvar,
    held: Held<MutexGuard<'a, T>>,
    timeout: Duration,
) -> Held<MutexGuard<'a, T>> {
    let Held { guard, count } = held;
    let guard = cv
        .wait_timeout(guard, timeout)
        .unwrap_or_else(PoisonError::into_inner)
        .0;
    Held { guard, count }
}

/// Runs `f` once per `o` (as `Once::call_once`), counted as holding a lock while it runs.
pub fn once(o: &Once, f: impl FnOnce()) {
    if o.is_completed() {
        return;
    }
    let _count = Count::raise();
    o.call_once(f);
}

/// The value of `cell`, initialised by `f` first if empty (as `OnceLock::get_or_init`), counted
/// as holding a lock while `f` runs.
pub fn get_or_init<T>(cell: &OnceLock<T>, f: impl FnOnce() -> T) -> &T {
    if let Some(v) = cell.get() {
        return v;
    }
    let _count = Count::raise();
    cell.get_or_init(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_nest_and_survive_condvar_waits() {
        let m = Mutex::new(1);
        let l = RwLock::new(2);
        assert_eq!(held(), 0);
        {
            let a = lock(&m);
            assert_eq!(held(), 1);
            {
                let b = read(&l);
                assert_eq!(*a + *b, 3);
                assert_eq!(held(), 2);
            }
            assert_eq!(held(), 1);
            let cv = Condvar::new();
            let a = wait_timeout(&cv, a, Duration::from_millis(1));
            assert_eq!(*a, 1);
            assert_eq!(held(), 1);
        }
        assert_eq!(held(), 0);
        *write(&l) += 1;
        assert_eq!(*read(&l), 3);
        let o = Once::new();
        once(&o, || assert_eq!(held(), 1));
        let cell = OnceLock::new();
        assert_eq!(*get_or_init(&cell, held), 1);
        assert_eq!(held(), 0);
    }

    #[test]
    fn poison_is_ignored() {
        let m = std::sync::Arc::new(Mutex::new(5));
        let m2 = std::sync::Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let _g = lock(&m2);
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 5);
        assert_eq!(held(), 0);
    }
}
