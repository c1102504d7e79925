//! Barrier and allgather of an SHM object: the host's control segment
//! ([`crate::collective::HostGroup`]) combines the members of this host; with members on
//! several hosts, the last arriver of each host runs the store machine of
//! `smem_core::collective` with one participant per host ([`StoreSide`]).

use std::fmt;
use std::time::Instant;

use smem_core::ErrorCode;
use smem_core::collective::{ALLGATHER_SEND_MAX, Collective, Reply, Step, StoreOp, gathered_key};

use super::{ShmObject, WAIT_SLICE, lock, parse_u64, remaining};
use crate::collective::Exchange;
use crate::{Error, Result};

impl ShmObject {
    /// The member whose process died first since create, if any (members that merely left
    /// after failing the same collective are reported later, so they are not named).
    pub(super) fn dead_member(&self) -> Option<u32> {
        let downs = lock(&self.ctx.downs);
        self.peers
            .iter()
            .enumerate()
            .filter_map(|(r, p)| {
                let now = downs.get(&p.world_rank).copied().unwrap_or(0);
                (now > p.downs_at_create && r as u32 != self.rank).then_some((now, r as u32))
            })
            .min()
            .map(|(_, r)| r)
    }

    /// A parked GET of `key` in slices, failing early when a member died.
    fn wait_key(&self, key: &[u8], deadline: Instant, what: &str) -> Result<Vec<u8>> {
        let store = &self.ctx.store;
        loop {
            let left = remaining(deadline);
            if left.is_zero() {
                return Err(Error::new(
                    ErrorCode::Timeout,
                    format!("{what}: not every member arrived in time"),
                ));
            }
            match store.wait_get(key, left.min(WAIT_SLICE)) {
                Ok(v) => return Ok(v),
                Err(e) if e.code() == ErrorCode::Timeout => {
                    // A member of this host already named the cause (it saw it first).
                    if let Some(e) = self.group.recorded_failure(&what) {
                        return Err(e);
                    }
                    if let Some(r) = self.dead_member() {
                        return Err(Error::new(
                            ErrorCode::IoError,
                            format!(
                                "{what}: rank {r} (world rank {}) died: its config store link went down",
                                self.peers[r as usize].world_rank
                            ),
                        ));
                    }
                }
                Err(e) => return Err(e.context(what)),
            }
        }
    }

    /// Drives one collective machine to its end.
    pub(super) fn run(
        &self,
        mut m: Collective,
        send: &[u8],
        mut recv: Option<&mut [u8]>,
        deadline: Instant,
        what: &str,
    ) -> Result<()> {
        let store = &self.ctx.store;
        let mut counter_key = Vec::new();
        loop {
            let reply = match m.poll() {
                Step::Finished => break,
                Step::Run(op) => match op {
                    StoreOp::WriteSendBytes { key, offset } => {
                        store.write(key.as_bytes(), offset, send)?;
                        Reply::Done
                    }
                    StoreOp::Add { key, delta } => {
                        counter_key.clear();
                        counter_key.extend_from_slice(key.as_bytes());
                        Reply::Added(store.add(key.as_bytes(), delta)?)
                    }
                    StoreOp::Set { key, value } => {
                        store.set(key.as_bytes(), value)?;
                        Reply::Done
                    }
                    StoreOp::WaitGet { key } => {
                        let v = self
                            .wait_key(key.as_bytes(), deadline, what)
                            .map_err(|e| self.arrivals(e, &counter_key))?;
                        Reply::Value(v.len())
                    }
                    StoreOp::GetGathered { key } => {
                        let v = store.get(key.as_bytes())?.unwrap_or_default();
                        if let Some(out) = recv.as_deref_mut() {
                            if out.len() == v.len() {
                                out.copy_from_slice(&v);
                            }
                        }
                        Reply::Value(v.len())
                    }
                    StoreOp::Remove { key } => {
                        // Keys of generation g - 1, which every member has finished: nobody
                        // waits for them, so their removal leaves the critical path.
                        let queued = match &self.ctx.gc {
                            Some(tx) => tx.try_send(key.as_bytes().to_vec()).is_ok(),
                            None => false,
                        };
                        if !queued {
                            store.remove(key.as_bytes())?;
                        }
                        Reply::Done
                    }
                    _ => return Err(unknown_step(what)),
                },
                _ => return Err(unknown_step(what)),
            };
            m.complete(reply).map_err(|e| {
                let code = match e {
                    smem_core::collective::CollectiveError::GatheredLength { .. } => {
                        ErrorCode::InvalidParam
                    }
                    _ => ErrorCode::ProtocolError,
                };
                Error::new(code, format!("{what}: {e}"))
            })?;
        }
        Ok(())
    }

    /// Adds how many members arrived to a timeout message.
    fn arrivals(&self, e: Error, counter_key: &[u8]) -> Error {
        if e.code() != ErrorCode::Timeout || counter_key.is_empty() {
            return e;
        }
        let n = self
            .ctx
            .store
            .get(counter_key)
            .ok()
            .flatten()
            .and_then(|v| parse_u64(&v));
        match n {
            Some(n) => Error::new(
                e.code(),
                format!(
                    "{}; {n} of {} members arrived within controlOperationTimeout",
                    e.message(),
                    self.rank_size
                ),
            ),
            None => e,
        }
    }

    pub(super) fn barrier(&self) -> Result<()> {
        let what = Call(self, "smem_shm_control_barrier");
        self.next_call(what, 0, |round, side| {
            self.group.barrier(round, side.deadline, side, &what)
        })
    }

    /// Runs `f` as the next collective call (round and store side), holding the object's call
    /// lock for the whole call.
    fn next_call(
        &self,
        what: Call<'_>,
        send_len: usize,
        f: impl FnOnce(u64, &mut StoreSide<'_>) -> Result<()>,
    ) -> Result<()> {
        let mut g = lock(&self.next_generation);
        let generation = *g;
        *g += 1;
        let mut side = StoreSide {
            obj: self,
            generation,
            deadline: Instant::now() + self.ctx.config.control_timeout,
            send_len,
            what,
        };
        // Generation 0 is create's barrier (through the store): round k is generation k + 1.
        f(generation - 1, &mut side)
    }

    pub(super) fn allgather(&self, send: &[u8], recv: &mut [u8]) -> Result<()> {
        let what = Call(self, "smem_shm_control_allgather");
        let len = send.len();
        if len == 0 || len > ALLGATHER_SEND_MAX as usize {
            return Err(Error::invalid(format!(
                "{what}: sendSize {len} is outside 1..={ALLGATHER_SEND_MAX}"
            )));
        }
        let want = len as u64 * u64::from(self.rank_size);
        if recv.len() as u64 != want {
            return Err(Error::invalid(format!(
                "{what}: recvSize {} must be sendSize {len} x rankSize {} = {want}",
                recv.len(),
                self.rank_size
            )));
        }
        self.next_call(what, len, |round, side| {
            self.group
                .allgather(round, send, recv, side.deadline, side, &what)
        })
    }
}

/// The name of a call on an object in messages, formatted only when a message is made.
#[derive(Clone, Copy)]
struct Call<'a>(&'a ShmObject, &'static str);

impl fmt::Display for Call<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{} of SHM object {} (rank {} of {})",
            self.1, o.id, o.rank, o.rank_size
        )
    }
}

/// The store side of one collective call with members on several hosts.
struct StoreSide<'a> {
    obj: &'a ShmObject,
    generation: u64,
    deadline: Instant,
    send_len: usize,
    what: Call<'a>,
}

impl StoreSide<'_> {
    fn value_key(&self) -> Result<Vec<u8>> {
        gathered_key(&self.obj.collective_prefix(), self.generation)
            .map(|k| k.as_bytes().to_vec())
            .map_err(|e| Error::invalid(format!("{}: {e}", self.what)))
    }
}

impl Exchange for StoreSide<'_> {
    fn publish(&mut self, send: &[u8]) -> Result<()> {
        let offset = u32::try_from(u64::from(self.obj.rank) * send.len() as u64).map_err(|_| {
            Error::invalid(format!(
                "{}: rank x sendSize does not fit the store's 32-bit value offsets; use a smaller sendSize",
                self.what
            ))
        })?;
        self.obj
            .ctx
            .store
            .write(&self.value_key()?, offset, send)
            .map_err(|e| e.context(self.what))
    }

    fn exchange(&mut self) -> Result<()> {
        let hosts = self.obj.group.hosts();
        let m = Collective::barrier(
            &self.obj.collective_prefix(),
            self.generation,
            hosts.index,
            hosts.count,
        )
        .map_err(|e| Error::invalid(format!("{}: {e}", self.what)))?;
        self.obj
            .run(m, &[], None, self.deadline, &self.what.to_string())
    }

    fn fetch(&mut self, recv: &mut [u8]) -> Result<()> {
        let v = self
            .obj
            .ctx
            .store
            .get(&self.value_key()?)
            .map_err(|e| e.context(self.what))?
            .unwrap_or_default();
        if v.len() != recv.len() {
            return Err(Error::invalid(format!(
                "{}: allgather collected {} bytes, expected {} (sendSize {} x rankSize {}): members passed different sendSize values",
                self.what,
                v.len(),
                recv.len(),
                self.send_len,
                self.obj.rank_size
            )));
        }
        recv.copy_from_slice(&v);
        Ok(())
    }

    fn departed(&self) -> Option<u32> {
        self.obj.dead_member()
    }
}

fn unknown_step(what: &str) -> Error {
    Error::new(
        ErrorCode::Error,
        format!("{what}: unknown collective step (smem-core is newer than this runtime)"),
    )
}
