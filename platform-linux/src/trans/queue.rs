//! The `*_submit` queue: worker threads run queued transfers; `smem_trans_wait` waits for the
//! calling thread's.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use smem_core::ErrorCode;

use super::copy::{self, Direction, Entry};
use super::{Engine, lock};
use crate::{Error, Result};

/// Worker threads per engine.
const WORKERS: usize = 2;
/// Transfers queued before `submit` blocks.
const DEPTH: usize = 1024;

struct Job {
    owner: ThreadId,
    dir: Direction,
    peer: String,
    entries: Vec<Entry>,
}

#[derive(Debug, Default)]
struct Pending {
    count: usize,
    first: Option<Error>,
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<HashMap<ThreadId, Pending>>,
    done: Condvar,
}

/// The queue of one engine.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    tx: Mutex<Option<SyncSender<Job>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    shared: Arc<Shared>,
}

impl Queue {
    /// Queues a transfer of the calling thread. Its entries' local memory stays valid until
    /// the calling thread's [`Queue::wait`] returned (the C caller's promise).
    pub(crate) fn submit(
        &self,
        engine: &Arc<Engine>,
        dir: Direction,
        peer: &str,
        entries: Vec<Entry>,
    ) -> Result<()> {
        let owner = std::thread::current().id();
        let tx = {
            let mut tx = lock(&self.tx);
            if tx.is_none() {
                *tx = Some(self.start(engine)?);
            }
            tx.clone()
        };
        let tx = tx.ok_or_else(|| Error::new(ErrorCode::Error, "smem_trans: queue not started"))?;
        lock(&self.shared.pending).entry(owner).or_default().count += 1;
        let job = Job {
            owner,
            dir,
            peer: peer.to_owned(),
            entries,
        };
        if tx.send(job).is_err() {
            self.finish(
                owner,
                Err(Error::new(
                    ErrorCode::ObjectNotExists,
                    "smem_trans: the engine is being destroyed",
                )),
            );
            return Err(Error::new(
                ErrorCode::ObjectNotExists,
                "smem_trans: the engine is being destroyed",
            ));
        }
        Ok(())
    }

    fn start(&self, engine: &Arc<Engine>) -> Result<SyncSender<Job>> {
        let (tx, rx) = sync_channel::<Job>(DEPTH);
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = lock(&self.workers);
        for _ in 0..WORKERS {
            let rx = Arc::clone(&rx);
            let weak = Arc::downgrade(engine);
            let shared = Arc::clone(&self.shared);
            let t = std::thread::Builder::new()
                .name("smem-trans-q".into())
                .spawn(move || worker(&rx, &weak, &shared))
                .map_err(|e| {
                    Error::new(
                        ErrorCode::NewObjectFailed,
                        format!("smem_trans: cannot start a queue worker: {e}"),
                    )
                })?;
            workers.push(t);
        }
        Ok(tx)
    }

    fn finish(&self, owner: ThreadId, r: Result<()>) {
        finish(&self.shared, owner, r);
    }

    /// Waits until the calling thread's transfers are done; their first error. Bounded: a
    /// wait with no progress for `timeout` (the engine's initTimeout plus a minute) gives up.
    pub(crate) fn wait(&self, timeout: Duration) -> Result<()> {
        let me = std::thread::current().id();
        let mut pending = lock(&self.shared.pending);
        let mut last = Instant::now();
        let mut seen = pending.get(&me).map_or(0, |p| p.count);
        loop {
            let p = pending.entry(me).or_default();
            if p.count == 0 {
                let first = p.first.take();
                pending.remove(&me);
                return first.map_or(Ok(()), Err);
            }
            if p.count != seen {
                seen = p.count;
                last = Instant::now();
            }
            if last.elapsed() >= timeout {
                return Err(Error::new(
                    ErrorCode::Timeout,
                    format!(
                        "smem_trans_wait: {} transfers made no progress within {} s",
                        p.count,
                        timeout.as_secs()
                    ),
                ));
            }
            pending =
                crate::sync::wait_timeout(&self.shared.done, pending, Duration::from_millis(200));
        }
    }

    /// Stops the workers after the queued transfers ran.
    pub(crate) fn stop(&self) {
        drop(lock(&self.tx).take());
        let workers: Vec<_> = lock(&self.workers).drain(..).collect();
        for w in workers {
            if w.thread().id() != std::thread::current().id() {
                let _ = w.join();
            }
        }
    }
}

fn finish(shared: &Shared, owner: ThreadId, r: Result<()>) {
    let mut pending = lock(&shared.pending);
    let p = pending.entry(owner).or_default();
    p.count = p.count.saturating_sub(1);
    if let Err(e) = r {
        p.first.get_or_insert(e);
    }
    drop(pending);
    shared.done.notify_all();
}

fn worker(rx: &Mutex<Receiver<Job>>, engine: &Weak<Engine>, shared: &Shared) {
    loop {
        let Ok(job) = lock(rx).recv() else { return };
        let r = match engine.upgrade() {
            // The submitter keeps the local memory valid until its wait returns, which is after
            // this job finished.
            Some(e) => copy::run(&e, job.dir, &job.peer, &job.entries),
            None => Err(Error::new(
                ErrorCode::ObjectNotExists,
                "smem_trans: the engine was destroyed before this transfer ran",
            )),
        };
        finish(shared, job.owner, r);
    }
}
