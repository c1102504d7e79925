//! Same-host windows in one segment (see the parent's module docs): the memfd the ranks of a
//! host share for the DRAM windows of a DRAM-only object ([`shared_segment`], also the one
//! segment per host of an SHM object), and opening and closing the windows of the same-host
//! joiners and leavers of a piece of the log in runs.

use std::sync::atomic::Ordering;

use log::debug;

use super::membership::Notes;
use super::records::WindowRecord;
use super::{BmObject, Ctl, MAPPED, key, prefault, protect_windows};
use crate::mem::{HostSegment, SegmentDescriptor, SegmentKind};
use crate::runtime::Ctx;
use crate::store::{CasResult, StoreClient};
use crate::{Error, Result};

/// The segment of this host for BM object `id` (`span` bytes, a window per rank at the
/// window's offset), published in `hs/<host>` ([`shared_segment`]).
pub(super) fn host_segment(ctx: &Ctx, id: u32, span: u64) -> Result<HostSegment> {
    shared_segment(
        &ctx.store,
        &key(id, &format!("hs/{}", ctx.host_id)),
        &format!("smem-bm{id}-host"),
        span,
        &format!("smem_bm_create {id}: the DRAM segment of this host"),
    )
    .map(|(seg, _)| seg)
}

/// The segment of `len` bytes the ranks of this host share, named in the store key `k`
/// (BM objects and SHM objects each have one per host): this rank creates a sparse one
/// (`name`, no page allocated: each rank allocates its part) and offers it with one
/// compare-and-swap that creates the absent key; when another rank's is there and can be
/// opened, that one (and this rank's is dropped); when the published one cannot be opened
/// (its owner exited), this rank's replaces it (compare-and-swap against what it found). When
/// another rank published one in between that cannot be opened either, this rank keeps its own
/// unpublished segment: peers then map its window through its record, like a per-rank segment.
/// Returns the segment and whether it is the published one. `what` prefixes errors.
///
/// # Errors
/// Store errors; memory errors creating the segment.
pub(crate) fn shared_segment(
    store: &StoreClient,
    k: &[u8],
    name: &str,
    len: u64,
    what: &str,
) -> Result<(HostSegment, bool)> {
    let ctx_err = |e: Error| e.context(what);
    // Created speculatively (a sparse file costs two system calls) and offered with one CAS,
    // which creates the absent key: ranks of a host creating together would otherwise each
    // ask first, find nothing and need a second round trip.
    let mine = HostSegment::create_sparse(name, SegmentKind::Host, len).map_err(ctx_err)?;
    let offer = mine.descriptor().encode();
    let current = match store.cas(k, b"", &offer).map_err(ctx_err)? {
        CasResult::Swapped => return Ok((mine, true)),
        CasResult::Mismatch(v) => v,
    };
    if let Some(seg) = open(what, &current, len) {
        return Ok((seg, true));
    }
    // The published one is gone (its owner exited): replace it.
    match store.cas(k, &current, &offer).map_err(ctx_err)? {
        CasResult::Swapped => Ok((mine, true)),
        CasResult::Mismatch(v) => Ok(open(what, &v, len).map_or((mine, false), |s| (s, true))),
    }
}

/// The published segment `v`, if it has `len` bytes and its owner still holds it.
fn open(what: &str, v: &[u8], len: u64) -> Option<HostSegment> {
    let d = SegmentDescriptor::decode(v)
        .ok()
        .filter(|d| d.len == len && d.kind == SegmentKind::Host)?;
    HostSegment::open(&d)
        .map_err(|e| debug!("{what}: the published segment is gone: {e}"))
        .ok()
}

impl BmObject {
    /// Whether a peer's window (record `rec`) is in this rank's segment of the host, so it is
    /// mapped from the descriptor this rank holds.
    pub(super) fn in_own_segment(&self, rec: &WindowRecord) -> bool {
        match (&self.dram, self.dram_off, rec.dram) {
            (Some(seg), Some(_), Some(d)) => d.inode == seg.inode() && d.len == seg.len(),
            _ => false,
        }
    }

    /// Where rank `r`'s DRAM part starts in the segment `d` of its record: 0 in a segment of
    /// its own (the part's length), the window's offset in a segment of the host's ranks (the
    /// object's span). A record carries no offset: the segment's length tells the two apart.
    ///
    /// # Errors
    /// `SM_INVALID_PARAM` naming both sizes for any other length (sizes differ).
    pub(super) fn dram_file_offset(&self, r: u32, d: &SegmentDescriptor) -> Result<u64> {
        let len = self.layout.dram_len();
        if d.len == len {
            return Ok(0);
        }
        let span = self.layout.stride() * u64::from(self.layout.member_size());
        let off = self.window_offset(r) + self.layout.hbm_len();
        if d.len == span && off + len <= span {
            return Ok(off);
        }
        Err(Error::invalid(format!(
            "rank {r}'s DRAM part is in a segment of {:#x} bytes, neither this object's part ({len:#x}) nor its span ({span:#x}); every member must create with the same sizes",
            d.len
        )))
    }

    /// Opens the windows of the piece's joiners in this host's segment (`ctl.pending`): one
    /// `mprotect` per run of ranks whose windows are to be opened or already open (the own
    /// included), then marks them `MAPPED`. A run that cannot be opened fails the joins of
    /// its ranks (reported in `failed`, as `map_peer` does).
    pub(super) fn open_pending(
        &self,
        ctl: &mut Ctl,
        notes: &mut Notes,
        failed: &mut Vec<(u64, String)>,
    ) {
        if ctl.pending.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut ctl.pending);
        pending.sort_unstable_by_key(|&(r, _)| r);
        let len = self.layout.dram_len();
        let populate = prefault(self.layout.member_size());
        let protect = protect_windows(self.layout.member_size());
        let open = |ctl: &Ctl, x: u32| x == self.rank || ctl.open.contains(x);
        for run in self.runs(ctl, &pending, open) {
            let (first, last) = (run[0].0, run[run.len() - 1].0);
            let at = self.window_offset(first);
            let bytes = self.window_offset(last) + len - at;
            // Without per-window protection the segment is accessible already, unless a
            // window of a segment of its own was mapped over part of it meanwhile.
            let done = !protect && self.reservation.is_mapped(at, bytes);
            let opened = if done {
                Ok(())
            } else {
                self.reservation.open(at, bytes, populate)
            };
            match opened {
                Ok(()) => {
                    for &(r, _) in run {
                        ctl.open.insert(r);
                        self.windows[r as usize]
                            .state
                            .store(MAPPED, Ordering::SeqCst);
                    }
                }
                Err(e) => {
                    for &(r, end) in run {
                        notes.push((
                            log::Level::Warn,
                            format!("BM object {}: cannot map rank {r}'s window: {e}", self.id),
                        ));
                        failed.push((
                            end,
                            format!("rank {} could not map rank {r}'s window: {e}", self.rank),
                        ));
                    }
                }
            }
        }
    }

    /// Closes the windows in this host's segment dropped while applying the piece
    /// (`ctl.closing`, already drained of copies): one `mprotect` per run of ranks whose
    /// windows are to be closed or already closed.
    pub(super) fn close_dropped(&self, ctl: &mut Ctl, notes: &mut Notes) {
        if ctl.closing.is_empty() {
            return;
        }
        if !protect_windows(self.layout.member_size()) {
            // The segment stays accessible; the windows' states keep copies out.
            ctl.closing.clear();
            return;
        }
        let closing: Vec<(u32, u64)> = std::mem::take(&mut ctl.closing)
            .into_iter()
            .map(|r| (r, 0))
            .collect();
        let len = self.layout.dram_len();
        let closed =
            |ctl: &Ctl, x: u32| x != self.rank && !ctl.open.contains(x) && !ctl.foreign.contains(x);
        for run in self.runs(ctl, &closing, closed) {
            let (first, last) = (run[0].0, run[run.len() - 1].0);
            let at = self.window_offset(first);
            let bytes = self.window_offset(last) + len - at;
            if let Err(e) = self.reservation.close(at, bytes) {
                notes.push((
                    log::Level::Warn,
                    format!(
                        "BM object {}: closing the windows of ranks {first}-{last}: {e}",
                        self.id
                    ),
                ));
            }
        }
    }

    /// Splits `ranks` (sorted) into runs: two neighbours share one when every rank between
    /// them already is in the state the run sets (`like`), so one `mprotect` covers them.
    /// Windows are back to back only when the stride is the DRAM part; else one run each.
    fn runs<'a>(
        &self,
        ctl: &Ctl,
        ranks: &'a [(u32, u64)],
        like: impl Fn(&Ctl, u32) -> bool,
    ) -> Vec<&'a [(u32, u64)]> {
        let joinable = self.layout.stride() == self.layout.dram_len();
        let mut out = Vec::new();
        let mut i = 0;
        while i < ranks.len() {
            let mut j = i + 1;
            while joinable
                && j < ranks.len()
                && (ranks[j - 1].0 + 1..ranks[j].0).all(|x| like(ctl, x))
            {
                j += 1;
            }
            out.push(&ranks[i..j]);
            i = j;
        }
        out
    }

    /// Frees the pages of this rank's window in the host's segment (destroy: the peers dropped
    /// the window when it left).
    pub(super) fn release_own(&self) {
        if let (Some(seg), Some(off)) = (&self.dram, self.dram_off) {
            if let Err(e) = seg.release(off, self.layout.dram_len()) {
                debug!("BM object {}: {e}", self.id);
            }
        }
    }
}
