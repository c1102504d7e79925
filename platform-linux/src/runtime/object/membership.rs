//! Applying the membership log (module docs of [`super`], "Membership"): the watcher's
//! pieces, mapping and unmapping peers' windows, and ranks the store reports down.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use log::{Level, info};
use smem_core::ErrorCode;
use smem_core::bm::Part;
use smem_core::wire::record::{LogEntry, log_entries, log_records};

use super::records::{WindowRecord, sharing_pid_on};
use super::{ABSENT, BmObject, CLOSING, Ctl, MAPPED, NET, REMOTE, prefault, protect_windows};
use crate::device::DeviceDescriptor;
use crate::mem::{HostSegment, SegmentKind};
use crate::runtime::{rank_key, wait_for_copies};
use crate::sync::lock;
use crate::{Error, Result};

/// Log lines collected while the object's control lock is held, logged after it is released.
pub(super) type Notes = Vec<(Level, String)>;

fn log_notes(notes: Notes) {
    for (level, msg) in notes {
        log::log!(level, "{msg}");
    }
}

/// What applying entries of the membership log needs and produces besides the control state.
struct Applied<'a> {
    /// Window records of the joiners in the piece, by rank.
    records: &'a HashMap<u32, &'a [u8]>,
    notes: &'a mut Notes,
    /// Join entries (end offset) whose window this rank could not map, with why.
    failed: &'a mut Vec<(u64, String)>,
}

impl BmObject {
    /// The window offset of `rank` from the object base.
    pub(super) fn window_offset(&self, rank: u32) -> u64 {
        u64::from(rank) * self.layout.stride()
    }

    /// Applies a piece of the membership log (watcher thread): maps and unmaps windows, then
    /// acknowledges the whole piece once (module docs, "Membership").
    pub(super) fn apply(&self, piece: &[u8]) {
        // The records of the piece's joiners travel with their join entries (the last one
        // of a rank counts).
        let records: HashMap<u32, &[u8]> = log_records(piece).collect();
        // Logged after the lock is released.
        let mut notes = Notes::new();
        let mut failed = Vec::new();
        let ack = {
            let mut ctl = lock(&self.ctl);
            let base = ctl.processed;
            let mut last_real = None;
            for (end, entry) in log_entries(piece) {
                let off = base + end as u64;
                match entry {
                    None => notes.push((
                        Level::Warn,
                        format!(
                            "BM object {}: ignoring a malformed membership log entry",
                            self.id
                        ),
                    )),
                    Some(LogEntry::Settled(p)) => ctl.settled = ctl.settled.max(p),
                    Some(e) => {
                        last_real = Some(off);
                        let mut out = Applied {
                            records: &records,
                            notes: &mut notes,
                            failed: &mut failed,
                        };
                        self.apply_entry(&mut ctl, e, off, &mut out);
                    }
                }
                ctl.processed = off;
            }
            self.close_dropped(&mut ctl, &mut notes);
            self.open_pending(&mut ctl, &mut notes, &mut failed);
            // Bytes after the last ';' (never written by us) are skipped.
            ctl.processed = base + piece.len() as u64;
            self.ctl_cv.notify_all();
            last_real
                .filter(|_| ctl.logged.contains(self.rank))
                .map(|p| (p, ctl.logged.len()))
        };
        log_notes(notes);
        if let Some((p, holders)) = ack {
            self.acknowledge(p, holders, &failed);
        }
    }

    fn apply_entry(&self, ctl: &mut Ctl, entry: LogEntry, off: u64, out: &mut Applied<'_>) {
        let r = match entry {
            LogEntry::Create(r) | LogEntry::Join(r) | LogEntry::Leave(r) | LogEntry::Destroy(r) => {
                r
            }
            LogEntry::Settled(_) => return,
        };
        if r >= self.layout.member_size() {
            out.notes.push((
                Level::Warn,
                format!(
                    "BM object {}: log names rank {r}, outside {} members",
                    self.id,
                    self.layout.member_size()
                ),
            ));
            return;
        }
        if let LogEntry::Create(_) = entry {
            // A holder from now on: it acks the later entries.
            ctl.holders.insert(r);
            ctl.logged.insert(r);
            return;
        }
        if matches!(entry, LogEntry::Destroy(_)) {
            ctl.logged.remove(r);
        }
        if r == self.rank {
            match entry {
                LogEntry::Join(_) => {
                    ctl.joined.insert(r);
                }
                LogEntry::Leave(_) => {
                    ctl.joined.remove(r);
                }
                LogEntry::Destroy(_) => {
                    ctl.joined.remove(r);
                    ctl.holders.remove(r);
                }
                LogEntry::Create(_) | LogEntry::Settled(_) => {}
            }
            let others: Vec<u32> = ctl.holders.iter().filter(|&h| h != self.rank).collect();
            ctl.own_entries.push((off, others));
            return;
        }
        match entry {
            LogEntry::Join(_) => {
                // A rank not joined has nothing mapped here (leave, destroy and a report of
                // its death unmapped it): only a repeated join replaces a mapping.
                if !ctl.joined.insert(r) {
                    self.unmap_peer(ctl, r, out.notes);
                }
                if let Err(e) = self.map_peer(ctl, r, off, out.records.get(&r).copied(), out.notes)
                {
                    out.notes.push((
                        Level::Warn,
                        format!("BM object {}: cannot map rank {r}'s window: {e}", self.id),
                    ));
                    out.failed.push((
                        off,
                        format!("rank {} could not map rank {r}'s window: {e}", self.rank),
                    ));
                }
            }
            LogEntry::Leave(_) | LogEntry::Destroy(_) => {
                ctl.joined.remove(r);
                if matches!(entry, LogEntry::Destroy(_)) {
                    ctl.holders.remove(r);
                }
                self.unmap_peer(ctl, r, out.notes);
            }
            LogEntry::Create(_) | LogEntry::Settled(_) => {}
        }
    }

    /// Maps rank `r`'s window from its record. `Ok(false)`: another host (left reserved).
    /// `rec`: its record, carried by the log with its join entry.
    /// `entry_end`: the end of its join entry (a window in this host's segment is mapped with
    /// the piece's other joiners, see `map_pending`).
    fn map_peer(
        &self,
        ctl: &mut Ctl,
        r: u32,
        entry_end: u64,
        rec: Option<&[u8]>,
        notes: &mut Notes,
    ) -> Result<bool> {
        let rec = rec.ok_or_else(|| {
            Error::new(
                ErrorCode::ObjectNotExists,
                format!("rank {r} joined but its join entry carries no window record"),
            )
        })?;
        let rec = WindowRecord::decode(rec)?;
        let w = &self.windows[r as usize];
        let check = |got: u64, want: u64, part: Part| -> Result<()> {
            if got != want {
                return Err(Error::invalid(format!(
                    "rank {r}'s {part} part is {got:#x} bytes but this object's is {want:#x}; every member must create with the same sizes"
                )));
            }
            Ok(())
        };
        check(
            rec.hbm.as_ref().map_or(0, DeviceDescriptor::len),
            self.layout.hbm_len(),
            Part::Hbm,
        )?;
        let dram_at = match &rec.dram {
            Some(d) => Some(self.dram_file_offset(r, d)?),
            None => {
                check(0, self.layout.dram_len(), Part::Dram)?;
                None
            }
        };
        if rec.host != self.ctx.host_id {
            match (&self.node, rec.net) {
                (Some(_), Some(net)) => {
                    *lock(&w.remote) = Some(net);
                    w.state.store(NET, Ordering::SeqCst);
                    notes.push((Level::Debug, format!(
                        "BM object {}: rank {r} is on host {}; its window is reached through the network transport at {}",
                        self.id, rec.host, net.0
                    )));
                }
                _ => {
                    w.state.store(REMOTE, Ordering::SeqCst);
                    notes.push((Level::Debug, format!(
                        "BM object {}: rank {r} is on host {} (not ours) and no network transport connects us; its window stays reserved",
                        self.id, rec.host
                    )));
                }
            }
            return Ok(false);
        }
        let off = self.window_offset(r);
        if rec.hbm.is_none() && self.in_own_segment(&rec) {
            // Opened with the other joiners of the piece, at its end (`open_pending`).
            ctl.closing.remove(&r);
            ctl.pending.push((r, entry_end));
            return Ok(true);
        }
        let dram_at_off = off + self.layout.hbm_len();
        if rec.dram.is_some()
            && self.dram_off.is_some()
            && !protect_windows(self.layout.member_size())
            && self
                .reservation
                .is_mapped(dram_at_off, self.layout.dram_len())
        {
            // The host segment is accessible over the whole range here; the window of a
            // segment of its own replaces that part of it.
            self.reservation
                .close(dram_at_off, self.layout.dram_len())?;
        }
        ctl.foreign.insert(r);
        let mut hbm_mapped = false;
        let mut imported = None;
        if let Some(d) = &rec.hbm {
            let seg = self.ctx.device.open_peer(d)?;
            match (seg.mapping_fd(), seg.device_addr()) {
                (Some(fd), _) => {
                    self.reservation.map_segment_with(
                        off,
                        fd,
                        d.len(),
                        prefault(self.layout.member_size()),
                    )?;
                    hbm_mapped = true;
                }
                (None, Some(addr)) => imported = Some((addr, seg)),
                (None, None) => {
                    return Err(Error::new(
                        ErrorCode::Error,
                        "device segment neither mappable nor addressable",
                    ));
                }
            }
        }
        if let Some(d) = &rec.dram {
            let res = (|| {
                if d.kind != SegmentKind::Host {
                    return Err(Error::invalid(format!(
                        "rank {r}'s DRAM descriptor is a {:?} segment",
                        d.kind
                    )));
                }
                let seg = HostSegment::open(d)?;
                self.reservation.map_file_part(
                    off + self.layout.hbm_len(),
                    seg.fd(),
                    dram_at.unwrap_or(0),
                    self.layout.dram_len(),
                    prefault(self.layout.member_size()),
                )
            })();
            if let Err(e) = res {
                if hbm_mapped {
                    let _ = self.reservation.unmap(off, self.layout.hbm_len());
                }
                return Err(e);
            }
        }
        // The segments' descriptors close here; the mappings keep the memory.
        ctl.mapped.insert(r, (hbm_mapped, rec.dram.is_some()));
        if let Some((addr, seg)) = imported {
            w.dev.store(addr, Ordering::SeqCst);
            ctl.imported.push((r, seg));
        }
        w.state.store(MAPPED, Ordering::SeqCst);
        Ok(true)
    }

    /// Stops copies into rank `r`'s window and unmaps it (if mapped).
    pub(super) fn unmap_peer(&self, ctl: &mut Ctl, r: u32, notes: &mut Notes) {
        let w = &self.windows[r as usize];
        ctl.pending.retain(|&(x, _)| x != r);
        // Only a window copies can enter (`MAPPED`, `NET`) needs the copies in flight drained.
        if !matches!(w.state.swap(CLOSING, Ordering::SeqCst), ABSENT | REMOTE) {
            wait_for_copies(self.id);
        }
        if ctl.open.remove(r) {
            // Closed with the piece's other dropped windows, at its end (`close_dropped`).
            ctl.closing.insert(r);
        }
        if let Some((hbm, dram)) = ctl.mapped.remove(&r) {
            let off = self.window_offset(r);
            if hbm {
                if let Err(e) = self.reservation.unmap(off, self.layout.hbm_len()) {
                    notes.push((
                        Level::Warn,
                        format!("BM object {}: unmapping rank {r}'s HBM part: {e}", self.id),
                    ));
                }
            }
            if dram {
                if let Err(e) = self
                    .reservation
                    .unmap(off + self.layout.hbm_len(), self.layout.dram_len())
                {
                    notes.push((
                        Level::Warn,
                        format!("BM object {}: unmapping rank {r}'s DRAM part: {e}", self.id),
                    ));
                }
            }
        }
        if let Some(i) = ctl.imported.iter().position(|m| m.0 == r) {
            w.dev.store(0, Ordering::SeqCst);
            // Releases the imported device memory (no copy is in flight: drained above).
            drop(ctl.imported.swap_remove(i));
        }
        w.state.store(ABSENT, Ordering::SeqCst);
    }

    /// A rank's link went down: drop its window like a destroy.
    pub(crate) fn peer_down(&self, r: u32) {
        if r == self.rank || r >= self.layout.member_size() {
            return;
        }
        let mut notes = Notes::new();
        {
            let mut ctl = lock(&self.ctl);
            ctl.joined.remove(r);
            ctl.holders.remove(r);
            self.unmap_peer(&mut ctl, r, &mut notes);
            self.close_dropped(&mut ctl, &mut notes);
        }
        log_notes(notes);
        info!(
            "BM object {}: rank {r} is down; its window was dropped",
            self.id
        );
    }

    /// The sharing ids (rank records, see `runtime::rank_key`) of the other members on this
    /// host; every member registered before create completed.
    pub(super) fn same_host_sharing_pids(&self) -> Result<Vec<i32>> {
        let mut pids = Vec::new();
        for r in (0..self.layout.member_size()).filter(|&r| r != self.rank) {
            let Some(v) = self.ctx.store.get(&rank_key(r))? else {
                continue;
            };
            if let Some(p) = sharing_pid_on(&v, &self.ctx.host_id) {
                pids.push(p);
            }
        }
        Ok(pids)
    }
}
