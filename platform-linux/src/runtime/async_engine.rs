//! The asynchronous copy engine of this process (SPEC 6.1, `SMEM_ASYNC_COPY_FLAG`).
//!
//! A copy with the flag is validated by the caller's thread (planned exactly like a synchronous
//! copy; an invalid one fails at once and nothing is queued), then queued here and the call
//! returns. [`WORKERS`] worker threads (started on the first asynchronous copy) take copies
//! from one bounded queue ([`QUEUE_MAX`] copies; a submitter waits for room, which the workers
//! make, each copy being bounded by `controlOperationTimeout`) and run each as the synchronous
//! copy it describes, so it is checked again against the windows as they are then.
//!
//! Completion is tracked per (thread, handle): each thread keeps a counter of its outstanding
//! copies per handle and the first error among them; `smem_bm_wait(h)` waits until that counter
//! is zero and returns (and clears) the first error. Copies of other threads or handles are not
//! waited for.
//!
//! Fork: a `pthread_atfork` handler holds the engine's locks across `fork`; the child forgets
//! the parent's engine (its threads do not exist there) and the forking thread's outstanding
//! copies (they were the parent's), and starts a fresh engine on its next asynchronous copy.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::time::Duration;

use smem_core::ErrorCode;

use super::BmHandle;
use super::batch::{self, BatchEntry};
use super::copy::{self, Entered};
use crate::sync::{Held, lock, wait_timeout};
use crate::{Error, Result};

/// How long a condition-variable wait sleeps before re-checking (wake-ups are notified; this
/// only bounds a missed one).
const RECHECK: Duration = Duration::from_secs(1);

/// Worker threads of the engine.
pub(super) const WORKERS: usize = 4;
/// Copies queued at most; a submitter waits for room beyond this.
pub(super) const QUEUE_MAX: usize = 1024;

/// One queued copy: the arguments of the synchronous call that runs it.
#[derive(Debug)]
pub(super) enum Job {
    /// `smem_bm_copy` or `smem_bm_copy_2d`.
    Copy(copy::Request),
    /// `smem_bm_copy_batch`.
    Batch {
        entries: Vec<BatchEntry>,
        copy_type: u32,
    },
}

/// Outstanding copies of one (thread, handle) and the first error among them.
#[derive(Debug, Default)]
struct Pending {
    state: Mutex<(u64, Option<Error>)>,
    done: Condvar,
}

impl Pending {
    fn finish(&self, r: Result<()>) {
        let mut s = lock(&self.state);
        s.0 -= 1;
        if let Err(e) = r {
            s.1.get_or_insert(e);
        }
        if s.0 == 0 {
            self.done.notify_all();
        }
    }
}

#[derive(Debug)]
struct Task {
    handle: BmHandle,
    job: Job,
    pending: Arc<Pending>,
}

#[derive(Debug, Default)]
struct Engine {
    queue: Mutex<VecDeque<Task>>,
    ready: Condvar,
    room: Condvar,
}

static ENGINE: Mutex<Option<&'static Engine>> = Mutex::new(None);
static ATFORK: Once = Once::new();

thread_local! {
    /// This thread's outstanding copies per handle.
    static PENDING: RefCell<Vec<(u64, Arc<Pending>)>> = const { RefCell::new(Vec::new()) };
    /// Locks held across `fork` by the forking thread.
    static FORK_GUARDS: RefCell<Option<ForkGuards>> = const { RefCell::new(None) };
}

struct ForkGuards {
    engine: Held<MutexGuard<'static, Option<&'static Engine>>>,
    queue: Option<Held<MutexGuard<'static, VecDeque<Task>>>>,
}

/// The engine, started on first use.
fn engine() -> Result<&'static Engine> {
    // Before the lock: it may log.
    register_atfork();
    let mut e = lock(&ENGINE);
    if let Some(e) = *e {
        return Ok(e);
    }
    let new: &'static Engine = Box::leak(Box::default());
    for i in 0..WORKERS {
        std::thread::Builder::new()
            .name(format!("smem-copy-{i}"))
            .spawn(move || work(new))
            .map_err(|err| Error::io("starting an asynchronous copy worker", &err))?;
    }
    *e = Some(new);
    Ok(new)
}

fn work(e: &'static Engine) {
    loop {
        let task = {
            let mut q = lock(&e.queue);
            loop {
                if let Some(t) = q.pop_front() {
                    break t;
                }
                q = wait_timeout(&e.ready, q, RECHECK);
            }
        };
        e.room.notify_one();
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(task.handle, task.job)))
                .unwrap_or_else(|_| {
                    Err(Error::new(
                        ErrorCode::Error,
                        "internal error: an asynchronous copy panicked",
                    ))
                });
        task.pending
            .finish(r.map_err(|e| e.context("asynchronous copy")));
    }
}

/// Runs a queued copy synchronously.
fn run(handle: BmHandle, job: Job) -> Result<()> {
    // The submitter's local memory (in the job) stays valid until its `smem_bm_wait`, which
    // waits for this copy (SPEC 6.1).
    match job {
        Job::Copy(request) => copy::copy(handle, request, 0),
        Job::Batch { entries, copy_type } => batch::bm_copy_batch(handle, entries, copy_type, 0),
    }
}

/// Queues a validated copy for this thread and `handle`.
pub(super) fn submit(handle: BmHandle, job: Job) -> Result<()> {
    let e = engine()?;
    let pending = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        if let Some((_, x)) = p.iter().find(|(h, _)| *h == handle.0) {
            return Arc::clone(x);
        }
        let x = Arc::new(Pending::default());
        p.push((handle.0, Arc::clone(&x)));
        x
    });
    lock(&pending.state).0 += 1;
    let mut q = lock(&e.queue);
    while q.len() >= QUEUE_MAX {
        q = wait_timeout(&e.room, q, RECHECK);
    }
    q.push_back(Task {
        handle,
        job,
        pending,
    });
    drop(q);
    e.ready.notify_one();
    Ok(())
}

/// `smem_bm_wait`: waits until every asynchronous copy this thread issued on `handle` is
/// complete; returns the first error among them (then forgotten), or `Ok`.
///
/// # Errors
/// The first copy error; `SM_INVALID_PARAM` / `SM_OBJECT_NOT_EXISTS` for a forged or stale
/// handle with nothing outstanding.
pub fn bm_wait(handle: BmHandle) -> Result<()> {
    let what = "smem_bm_wait";
    let pending = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        let i = p.iter().position(|(h, _)| *h == handle.0)?;
        Some(p.swap_remove(i).1)
    });
    let Some(pending) = pending else {
        // Nothing outstanding: only the handle itself can be wrong.
        drop(Entered::enter(handle, what)?);
        return Ok(());
    };
    let mut s = lock(&pending.state);
    while s.0 != 0 {
        s = wait_timeout(&pending.done, s, RECHECK);
    }
    match s.1.take() {
        Some(e) => Err(e.context(what)),
        None => Ok(()),
    }
}

extern "C" fn fork_prepare() {
    let engine = lock(&ENGINE);
    let queue = engine.map(|e| lock(&e.queue));
    FORK_GUARDS.with(|g| *g.borrow_mut() = Some(ForkGuards { engine, queue }));
}

extern "C" fn fork_parent() {
    FORK_GUARDS.with(|g| drop(g.borrow_mut().take()));
}

extern "C" fn fork_child() {
    FORK_GUARDS.with(|g| {
        if let Some(mut guards) = g.borrow_mut().take() {
            // The parent's workers do not exist here: forget (never run or drop) its queued
            // copies and abandon its engine (leaked); the next asynchronous copy starts another.
            if let Some(mut q) = guards.queue.take() {
                std::mem::forget(std::mem::take(&mut *q));
            }
            *guards.engine = None;
        }
    });
    PENDING.with(|p| std::mem::forget(std::mem::take(&mut *p.borrow_mut())));
}

fn register_atfork() {
    super::life::register_atfork(
        &ATFORK,
        [fork_prepare, fork_parent, fork_child],
        "asynchronous copies run",
    );
}
