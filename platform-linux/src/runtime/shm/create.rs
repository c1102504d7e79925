//! An SHM object of this process and its collective creation: the host's segment and
//! directory, GVA agreement, the host table, the same-host windows mapped, the host's control segment joined
//! (see the module docs of [`super`], "Create"), and its destruction.

use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use log::{debug, info, warn};
use smem_core::ErrorCode;
use smem_core::collective::Collective;
use smem_core::data_op::ShmDataOps;
use smem_core::limits::{SHM_OBJECTS_MAX, WINDOW_ALIGN, WORLD_SIZE_MAX};

use super::hosts::{self, Local};
use super::{
    DATA_OP_MTE, DATA_OP_SDMA, EPOCH_KEY, STATE, ShmCtx, ShmHandle, State, WAIT_SLICE,
    not_initialized, open_key, parse_u64,
};
use crate::collective::{HostGroup, Members};
use crate::mem::{HostSegment, Reservation};
use crate::runtime::agree::{AgreeNs, Agreement, Departed, Proposal, agree_gva};
use crate::runtime::life::{self, remaining};
use crate::runtime::object::shared::shared_segment;
use crate::runtime::rank_list;
use crate::store::StoreClient;
use crate::sync::lock;
use crate::{Error, Result};

/// One member as seen from this process.
#[derive(Debug)]
pub(super) struct Peer {
    /// On this host (its window is mapped here).
    pub(super) same_host: bool,
    /// Its world rank (for the store's rank-down reports).
    pub(super) world_rank: u32,
    /// How many times its world rank was reported down when the object was created.
    pub(super) downs_at_create: u64,
    /// Its host: the lowest object rank on it (the host's leader).
    pub(super) host: u32,
    /// Its process id (same host only; 0 otherwise).
    pub(super) pid: u32,
}

/// An SHM object of this process.
#[derive(Debug)]
pub(super) struct ShmObject {
    pub(super) id: u32,
    pub(super) epoch: u64,
    pub(super) prefix: String,
    pub(super) ctx: Arc<ShmCtx>,
    pub(super) rank: u32,
    pub(super) rank_size: u32,
    pub(super) symmetric_size: u64,
    pub(super) base: u64,
    pub(super) peers: Vec<Peer>,
    /// The next control operation's generation; held for the whole operation.
    pub(super) next_generation: Mutex<u64>,
    /// The control segment shared with the members of this host (barrier, allgather).
    pub(super) group: HostGroup,
    /// The GVA range with every same-host window mapped; dropping it unmaps them all.
    pub(super) _reservation: Reservation,
    /// This host's segment of the object (this rank's window at `rank * symmetricSize`), held
    /// open: the peers of this host may open it through this process's descriptor.
    pub(super) _segment: HostSegment,
}

/// Arguments of `shm_create`, validated.
pub(super) struct CreateArgs {
    pub(super) id: u32,
    pub(super) rank_size: u32,
    pub(super) rank: u32,
    pub(super) symmetric_size: u64,
}

/// Creates or opens this host's control segment of the object (see [`crate::collective`]).
fn join_host_group(
    store: &StoreClient,
    prefix: &str,
    rank: u32,
    peers: &[Peer],
    deadline: Instant,
    what: &str,
) -> Result<HostGroup> {
    let n = u32::try_from(peers.len()).unwrap_or(u32::MAX);
    let world_ranks: Vec<u32> = peers.iter().map(|p| p.world_rank).collect();
    let local: Vec<(u32, u32)> = (0..n)
        .zip(peers)
        .filter(|(_, p)| p.same_host)
        .map(|(r, p)| (r, p.pid))
        .collect();
    let hosts = smem_core::ctl_segment::Hosts::of(n, rank, |a, b| {
        peers[a as usize].host == peers[b as usize].host
    });
    let members = Members {
        rank,
        world_ranks: &world_ranks,
        local: &local,
        hosts,
    };
    HostGroup::join(store, prefix, &members, deadline, what)
}

impl ShmObject {
    pub(super) fn what(&self, call: &str) -> String {
        format!(
            "{call} of SHM object {} (rank {} of {})",
            self.id, self.rank, self.rank_size
        )
    }

    /// Creates the object; `used` is set to the instance number as soon as it is known (also
    /// when create then fails), so a retry waits for a newer instance.
    pub(super) fn create(
        ctx: &Arc<ShmCtx>,
        args: &CreateArgs,
        epoch_floor: u64,
        used: &mut u64,
    ) -> Result<Self> {
        let id = args.id;
        let what = format!("smem_shm_create {id} (rank {})", args.rank);
        let deadline = Instant::now() + ctx.config.create_timeout;
        let store = &ctx.store;
        let span = args
            .symmetric_size
            .checked_mul(u64::from(args.rank_size))
            .ok_or_else(|| Error::invalid(format!("{what}: rankSize x symmetricSize overflows")))?;
        let epoch = if args.rank == 0 {
            let e = store.add(EPOCH_KEY, 1).map_err(|e| e.context(&what))?;
            let e = u64::try_from(e).map_err(|_| {
                Error::new(
                    ErrorCode::ProtocolError,
                    format!("{what}: smem/shm/epoch is negative"),
                )
            })?;
            store
                .set(&open_key(id), e.to_string().as_bytes())
                .map_err(|e| e.context(&what))?;
            e
        } else {
            wait_open(store, id, epoch_floor, deadline, &what, &|| {
                ctx.departed_members(args.rank_size)
            })?
        };
        *used = epoch;
        let prefix = format!("smem/shm/{id}.{epoch}/");
        Self::create_instance(ctx, args, epoch, &prefix, span, deadline, &what)
    }

    pub(super) fn create_instance(
        ctx: &Arc<ShmCtx>,
        args: &CreateArgs,
        epoch: u64,
        prefix: &str,
        span: u64,
        deadline: Instant,
        what: &str,
    ) -> Result<Self> {
        let store = &ctx.store;
        let (id, rank, size, n) = (args.id, args.rank, args.symmetric_size, args.rank_size);
        let head = hosts::dir_len(n);
        let (segment, published) = shared_segment(
            store,
            // The length in the key: members passing another symmetricSize make a segment of
            // their own, and the agreement below names the mismatch.
            format!("{prefix}hs/{:x}/{}", head + span, ctx.host_id).as_bytes(),
            &format!("smem-shm{id}-host"),
            head + span,
            &format!("{what}: the segment of this host"),
        )?;
        if !published {
            return Err(Error::new(
                ErrorCode::IoError,
                format!(
                    "{what}: another member of this host published the host's segment of the object, but it cannot be opened (its process gone, another user or PID namespace; the debug log says which)"
                ),
            ));
        }
        let own = u64::from(rank) * size;
        // Its pages are allocated through this rank's mapping once the range is agreed
        // (`fallocate` takes the file's lock: the ranks of a host queue on it).
        segment
            .prepare(head + own, size)
            .map_err(|e| e.context(format!("{what}: window")))?;
        let dir = hosts::Directory::map(&segment, n, what)?;
        dir.enter(Local {
            rank,
            pid: std::process::id(),
            world_rank: ctx.rank,
        })?;
        let want = Proposal {
            version: 0,
            nonce: 0,
            base: 0,
            span,
            stride: size,
            hbm: 0,
            dram: size,
        };
        let ns = AgreeNs {
            prefix: prefix.to_owned(),
            object: format!("SHM object {id}"),
            call: format!("smem_shm_create {id}"),
        };
        let departed = || ctx.departed_members(n);
        // Every member entered its host's directory before counting in here.
        let (reservation, base) = agree_gva(&Agreement {
            store,
            ns: &ns,
            rank,
            members: n,
            want,
            deadline,
            departed: &departed,
        })?;
        reservation
            .map_file_part(own, segment.fd(), head + own, size, false)
            .map_err(|e| e.context(what))?;
        let window = |e: Error| e.context(format!("{what}: window"));
        if !reservation.populate(own, size).map_err(window)? {
            // A kernel older than 5.14 (which cannot pre-fault either): `fallocate`.
            segment.fallocate(head + own, size).map_err(window)?;
        }
        let local = dir.members()?;
        let leader = local.first().map_or(rank, |l| l.rank);
        let by = if leader == rank {
            store
                .append(
                    format!("{prefix}hosts").as_bytes(),
                    &hosts::encode_runs(&local),
                )
                .map_err(|e| e.context(what))?;
            local.len() as i64
        } else {
            0
        };
        hosts::count_in(ctx, prefix, "hostsn", (by, n), n, deadline, what)?;
        let table = store
            .get(format!("{prefix}hosts").as_bytes())
            .map_err(|e| e.context(what))?
            .unwrap_or_default();
        let whereabouts = hosts::decode_runs(&table, n).map_err(|e| e.context(what))?;
        let mut peers = Vec::with_capacity(n as usize);
        let mut mine = local.iter().peekable();
        for (r, (host, world_rank)) in (0..n).zip(whereabouts) {
            let pid = mine.next_if(|l| l.rank == r).map(|l| l.pid);
            if pid.is_some() != (host == leader) {
                return Err(Error::new(
                    ErrorCode::ProtocolError,
                    format!(
                        "{what}: the host table puts rank {r} on the host of rank {host}, this host's directory {}",
                        if pid.is_some() {
                            "on this one"
                        } else {
                            "elsewhere"
                        }
                    ),
                ));
            }
            peers.push(Peer {
                same_host: pid.is_some(),
                world_rank,
                downs_at_create: ctx.downs_of(world_rank),
                host,
                pid: pid.unwrap_or(0),
            });
        }
        // One mapping per run of consecutive ranks of this host (this rank's window, mapped
        // pre-faulted above, splits a run): the whole span in two when every member is here.
        let populate = crate::runtime::object::prefault(n);
        let others: Vec<u32> = local
            .iter()
            .map(|l| l.rank)
            .filter(|&r| r != rank)
            .collect();
        for run in others.chunk_by(|a, b| *b == a + 1) {
            let at = u64::from(run[0]) * size;
            let len = size * run.len() as u64;
            reservation
                .map_file_part(at, segment.fd(), head + at, len, populate)
                .map_err(|e| {
                    e.context(format!(
                        "{what}: mapping the windows of ranks {}..={}",
                        run[0],
                        run[run.len() - 1]
                    ))
                })?;
        }
        let group = join_host_group(store, prefix, rank, &peers, deadline, what)?;
        let obj = Self {
            id,
            epoch,
            prefix: prefix.to_owned(),
            ctx: Arc::clone(ctx),
            rank,
            rank_size: n,
            symmetric_size: size,
            base,
            peers,
            group,
            next_generation: Mutex::new(1),
            _reservation: reservation,
            _segment: segment,
        };
        // Generation 0: nobody returns before every member mapped every window.
        let m = Collective::barrier(&obj.collective_prefix(), 0, rank, n)
            .map_err(|e| Error::invalid(format!("{what}: {e}")))?;
        obj.run(m, &[], None, deadline, what)?;
        info!("{what}: instance {epoch} at GVA {base:#x}, {n} windows of {size:#x} bytes");
        Ok(obj)
    }

    pub(super) fn collective_prefix(&self) -> String {
        format!("{}c/", self.prefix)
    }

    pub(super) fn reach(&self, remote: u32) -> Result<u32> {
        let peer = self.peers.get(remote as usize).ok_or_else(|| {
            Error::invalid(format!(
                "smem_shm_topology_can_reach of SHM object {}: remoteRank {remote} is not below rankSize {}",
                self.id, self.rank_size
            ))
        })?;
        Ok(if peer.same_host {
            DATA_OP_MTE | DATA_OP_SDMA
        } else {
            // Another host: reached through a network engine, of which this build has none.
            0
        })
    }

    /// Store side of destroy: counts this member out; the last one removes the instance's
    /// keys. Store failures are logged (the local memory is released anyway).
    pub(super) fn destroy(&self) {
        let what = self.what("smem_shm_destroy");
        let store = &self.ctx.store;
        match store.add(format!("{}fin", self.prefix).as_bytes(), 1) {
            Ok(n) if n >= i64::from(self.rank_size) => match store.prefix(self.prefix.as_bytes()) {
                Ok(keys) => {
                    for (k, _) in keys {
                        let _ = store.remove(&k);
                    }
                }
                Err(e) => warn!("{what}: cannot list the object's keys to remove them: {e}"),
            },
            Ok(_) => {}
            Err(e) => warn!("{what}: cannot count this member out in the config store: {e}"),
        }
        debug!(
            "{what}: instance {} at {:#x} ({:#x} bytes a window) released",
            self.epoch, self.base, self.symmetric_size
        );
    }
}

/// Waits until `open/<id>` names an instance newer than `floor`.
fn wait_open(
    store: &StoreClient,
    id: u32,
    floor: u64,
    deadline: Instant,
    what: &str,
    departed: Departed<'_>,
) -> Result<u64> {
    let key = open_key(id);
    let rx = store.watch(&key).map_err(|e| e.context(what))?;
    let r = loop {
        let left = remaining(deadline);
        match rx.recv_timeout(left.min(WAIT_SLICE)) {
            Ok(v) => match parse_u64(&v) {
                Some(e) if e > floor => break Ok(e),
                _ => {}
            },
            Err(RecvTimeoutError::Timeout) if left > WAIT_SLICE => {
                let gone = departed();
                if !gone.is_empty() {
                    break Err(Error::new(
                        ErrorCode::IoError,
                        format!(
                            "{what}: member rank(s) [{}] died before the object was created (their config store link went down); restart the job",
                            rank_list(&gone)
                        ),
                    ));
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                break Err(Error::new(
                    ErrorCode::Timeout,
                    format!(
                        "{what}: rank 0 of the object did not create it within shmCreateTimeout"
                    ),
                ));
            }
            Err(RecvTimeoutError::Disconnected) => {
                break Err(Error::new(
                    ErrorCode::IoError,
                    format!("{what}: the config store link went down"),
                ));
            }
        }
    };
    let _ = store.unwatch(&key);
    r
}

/// `smem_shm_create`: returns the handle and the object's base GVA (rank 0's window).
///
/// # Errors
/// `SM_INVALID_PARAM` for bad arguments, `SM_DUPLICATED_OBJECT` when id exists in this
/// process, `SM_TIMEOUT` after `shmCreateTimeout`, store and memory errors.
pub fn shm_create(
    id: u32,
    rank_size: u32,
    rank_id: u32,
    symmetric_size: u64,
    data_op: u32,
    flags: u32,
) -> Result<(ShmHandle, u64)> {
    let what = format!("smem_shm_create {id}");
    life::reserved_zero(&what, "flags", flags)?;
    let index = id as usize;
    if index >= SHM_OBJECTS_MAX {
        return Err(Error::invalid(format!(
            "{what}: id must be below {SHM_OBJECTS_MAX}"
        )));
    }
    if rank_size == 0 || rank_size as usize > WORLD_SIZE_MAX {
        return Err(Error::invalid(format!(
            "{what}: rankSize {rank_size} is outside 1..={WORLD_SIZE_MAX}"
        )));
    }
    if rank_id >= rank_size {
        return Err(Error::invalid(format!(
            "{what}: rankId {rank_id} is not below rankSize {rank_size}"
        )));
    }
    if symmetric_size == 0 || symmetric_size % WINDOW_ALIGN != 0 {
        return Err(Error::invalid(format!(
            "{what}: symmetricSize {symmetric_size:#x} is not a non-zero multiple of 2 MiB"
        )));
    }
    ShmDataOps::from_c(data_op).map_err(|e| Error::invalid(format!("{what}: {e}")))?;
    if data_op & !super::shm_query_support_data_operation() != 0 {
        return Err(Error::new(
            ErrorCode::NotSupported,
            format!(
                "{what}: dataOpType {data_op:#x} asks for SMEMS_DATA_OP_ROCE, but SHM has no network engine in this build (windows of other hosts are unreachable); use MTE and/or SDMA (smem_shm_query_support_data_operation)"
            ),
        ));
    }
    // The span is reserved in one address space and each window is a file of `symmetricSize`
    // bytes: neither can reach 2^63 bytes.
    if symmetric_size
        .checked_mul(u64::from(rank_size))
        .is_none_or(|span| span > i64::MAX as u64)
    {
        return Err(Error::invalid(format!(
            "{what}: rankSize {rank_size} x symmetricSize {symmetric_size:#x} overflows the 64-bit address space; ask for less"
        )));
    }
    // Refused before any store traffic, so the other members are not left waiting for a
    // create this rank cannot back.
    crate::mem::admit(&format!("{what}: window"), symmetric_size)?;
    let (ctx, floor) = {
        let mut st = lock(&STATE);
        let State::Ready(ready) = &mut *st else {
            return Err(not_initialized(&what));
        };
        if rank_size > ready.args.world_size {
            return Err(Error::invalid(format!(
                "{what}: rankSize {rank_size} is larger than worldSize {}",
                ready.args.world_size
            )));
        }
        if ready.objects.handle_at(index).is_some() || ready.creating[index] {
            return Err(Error::new(
                ErrorCode::DuplicatedObject,
                format!("{what}: an object with this id exists in this process; destroy it first"),
            ));
        }
        ready.creating[index] = true;
        (
            Arc::clone(&ready.ctx),
            ready.last_epoch[index].max(ready.epoch_at_init),
        )
    };
    let args = CreateArgs {
        id,
        rank_size,
        rank: rank_id,
        symmetric_size,
    };
    let mut used = 0;
    let created = ShmObject::create(&ctx, &args, floor, &mut used);
    let mut st = lock(&STATE);
    let State::Ready(ready) = &mut *st else {
        // Uninit ran meanwhile: the new object is dropped (unmapped) here.
        return Err(not_initialized(&what));
    };
    ready.creating[index] = false;
    ready.last_epoch[index] = ready.last_epoch[index].max(used);
    let obj = created?;
    let base = obj.base;
    let handle = ready
        .objects
        .insert_at(index, Arc::new(obj))
        .map_err(|(e, _)| Error::new(ErrorCode::DuplicatedObject, format!("{what}: {e}")))?;
    Ok((ShmHandle(handle.encode()), base))
}
