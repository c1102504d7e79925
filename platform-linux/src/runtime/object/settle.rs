//! Acknowledging the membership log and waiting for a change to settle (see the parent's
//! module docs, "Membership"): one acknowledgement per piece of the log, `Settled` markers,
//! and the wait of join / leave.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use log::{debug, warn};
use smem_core::ErrorCode;

use smem_core::wire::record::LogEntry;

use super::records::{entry_bytes, join_bytes};
use super::{BmObject, key};
use crate::runtime::life::remaining;
use crate::runtime::rank_list;
use crate::store::Posted;
use crate::sync::{lock, wait_timeout};
use crate::{Error, Result};

/// How long join / leave wait for a `Settled` marker before reading the members'
/// acknowledgements themselves (a member died, or the log never quiesced at one offset).
/// The wait doubles after each check, up to [`SETTLE_SLICE_MAX`].
const SETTLE_SLICE: Duration = Duration::from_secs(1);
const SETTLE_SLICE_MAX: Duration = Duration::from_secs(8);

/// At most this many lagging members are asked about (QUERY_ALIVE) per slice: a dead member
/// is normally reported by the rank-down watch already.
const ALIVE_QUERIES: usize = 8;

impl BmObject {
    /// Acknowledges that this rank applied the log up to `p` (the end of the last membership
    /// entry of a piece), `holders` being the holders according to the log at `p`: the join
    /// entries in `failed` first get their `err/` records, then `ack/<rank>` = `p` and one ADD
    /// to `seen/<p>`; the holder whose ADD makes it `holders` appends `Settled(p)`. Only the
    /// ADD waits for the store's answer (one round trip per piece, where a round trip takes
    /// 100-300 ms at 1024 ranks on 2 cores): the others are posted, and the store applies a
    /// link's requests in order, so the `err/` and `ack/` records are in place before the
    /// ADD that may settle `p`.
    pub(super) fn acknowledge(&self, p: u64, holders: usize, failed: &[(u64, String)]) {
        let store = &self.ctx.store;
        let id = self.id;
        for (x, msg) in failed {
            let k = key(id, &format!("err/{x}/{}", self.rank));
            if let Err(e) = store.post(Posted::Set(&k, msg.as_bytes())) {
                warn!("BM object {id}: cannot report a failed join at {x}: {e}");
            }
        }
        let ack = key(id, &format!("ack/{}", self.rank));
        if let Err(e) = store.post(Posted::Set(&ack, p.to_string().as_bytes())) {
            warn!("BM object {id}: cannot acknowledge the membership log at {p}: {e}");
        }
        let seen = key(id, &format!("seen/{p}"));
        match store.add(&seen, 1) {
            Ok(n) if n == i64::try_from(holders).unwrap_or(i64::MAX) => {
                let marker = entry_bytes(LogEntry::Settled(p));
                if let Err(e) = store.post(Posted::Append(&key(id, "log"), &marker)) {
                    warn!("BM object {id}: cannot announce that offset {p} settled: {e}");
                }
                let _ = store.post(Posted::Remove(&seen));
            }
            Ok(_) => {}
            Err(e) => warn!("BM object {id}: cannot acknowledge the membership log at {p}: {e}"),
        }
    }

    /// The offsets the members acknowledged (`ack/<m>`), by rank.
    fn watermarks(&self) -> Result<HashMap<u32, u64>> {
        let prefix = key(self.id, "ack/");
        Ok(self
            .ctx
            .store
            .prefix(&prefix)?
            .into_iter()
            .filter_map(|(k, v)| {
                let m = std::str::from_utf8(k.get(prefix.len()..)?)
                    .ok()?
                    .parse()
                    .ok()?;
                let off = std::str::from_utf8(&v).ok()?.parse().ok()?;
                Some((m, off))
            })
            .collect())
    }

    /// Appends `entry` (a join with its window `record`) and waits until every other alive holder applied it: a `Settled`
    /// marker at or past it, or (checked after [`SETTLE_SLICE`], then at doubling intervals) every such holder's
    /// acknowledgement at or past it. Then the members that could not map this rank's window
    /// (join) make it fail with their reasons.
    pub(super) fn announce(
        &self,
        entry: LogEntry,
        record: Option<&[u8]>,
        what: &str,
        deadline: Instant,
    ) -> Result<()> {
        let store = &self.ctx.store;
        let bytes = match record {
            Some(rec) => join_bytes(self.rank, rec)?,
            None => entry_bytes(entry),
        };
        let len = store.append(&key(self.id, "log"), &bytes)?;
        let gone = |why: &str| {
            Error::new(
                ErrorCode::IoError,
                format!(
                    "{what}: the membership watch of BM object {} stopped ({why})",
                    self.id
                ),
            )
        };
        let late = || {
            Error::new(
                ErrorCode::Timeout,
                format!(
                    "{what}: the membership log of BM object {} was not delivered in time",
                    self.id
                ),
            )
        };
        let others = {
            let mut ctl = lock(&self.ctl);
            loop {
                if let Some(i) = ctl.own_entries.iter().position(|e| e.0 == len) {
                    break ctl.own_entries.swap_remove(i).1;
                }
                if ctl.watcher_gone {
                    return Err(gone("config store link down?"));
                }
                let left = remaining(deadline);
                if left.is_zero() {
                    return Err(late());
                }
                ctl = wait_timeout(&self.ctl_cv, ctl, left);
            }
        };
        let mut slice = SETTLE_SLICE;
        let mut check_at = Instant::now() + slice;
        loop {
            let settled = {
                let mut ctl = lock(&self.ctl);
                loop {
                    if ctl.settled >= len {
                        break true;
                    }
                    if ctl.watcher_gone {
                        return Err(gone("config store link down?"));
                    }
                    let until = check_at.min(deadline);
                    let now = Instant::now();
                    if now >= until {
                        break false;
                    }
                    ctl = wait_timeout(&self.ctl_cv, ctl, until - now);
                }
            };
            if settled {
                break;
            }
            let marks = self.watermarks().map_err(|e| e.context(what))?;
            let mut pending: Vec<u32> = {
                let ctl = lock(&self.ctl);
                others
                    .iter()
                    .copied()
                    .filter(|m| {
                        marks.get(m).copied().unwrap_or(0) < len && ctl.holders.contains(*m)
                    })
                    .collect()
            };
            if pending.len() <= ALIVE_QUERIES {
                pending.retain(|&m| {
                    let alive = store.query_alive(m).unwrap_or(true);
                    if !alive {
                        debug!("{what}: rank {m} is gone; not waiting for it");
                    }
                    alive
                });
            }
            if pending.is_empty() {
                break;
            }
            if remaining(deadline).is_zero() {
                return Err(Error::new(
                    ErrorCode::Timeout,
                    format!(
                        "{what}: rank(s) {} did not apply the membership change within the create timeout",
                        rank_list(&pending)
                    ),
                ));
            }
            slice = (slice * 2).min(SETTLE_SLICE_MAX);
            check_at = Instant::now() + slice;
        }
        if !matches!(entry, LogEntry::Join(_)) {
            return Ok(());
        }
        let prefix = key(self.id, &format!("err/{len}/"));
        let failures: Vec<String> = store
            .prefix(&prefix)
            .map_err(|e| e.context(what))?
            .into_iter()
            .map(|(k, v)| {
                let _ = store.remove(&k);
                String::from_utf8_lossy(&v).into_owned()
            })
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::Error,
                format!("{what}: {}", failures.join("; ")),
            ))
        }
    }
}
