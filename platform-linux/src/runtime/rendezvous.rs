//! The init rendezvous of `smem_bm_init` and `smem_shm_init`: wait until every rank of the
//! world registered, in a constant number of store operations per rank.
//!
//! # Store keys (under the API's namespace `ns`: `smem/bm/` or `smem/shm/`)
//! | key | value | written by |
//! |---|---|---|
//! | `rank/<r>` | the rank record (host identity, pid, ...) | rank `r` at init |
//! | `registered` | ADD counter: +1 per registration, -1 per uninit | every rank |
//! | `ready` | `1`: every rank of the world registered (SHM: and holds a live link) | the rank that completed the world |
//!
//! A rank sets its record and adds 1 to `registered`. When the counter reaches `worldSize`, it
//! checks with one PREFIX get (SHM: plus one QUERY_ALIVE per rank, all sent at once and
//! answered in one round trip; a key left by a process that died without uninit is no rank) that every rank's record is there, and sets `ready`. Every
//! rank waits for `ready` with one parked GET, in slices (the first 10 ms per rank, 50 ms to
//! 1 s, doubling up to 8 s); after each
//! slice it reads the counter (one GET) and, once it says the world is complete (SHM: from the
//! third slice on) or the deadline is within the next slice, checks the records itself with
//! one PREFIX get (SHM: and, when every record is there, the liveness of every rank), which covers a
//! counter that overshot (a rank that registered twice) and a `ready` removed meanwhile; from
//! the second slice on it also reads them when the counter says more ranks registered than it
//! has seen (so a timeout names a rank that came and left as such). So a world slow to gather
//! (1024 ranks, first slice 1 s) costs each waiter a GET per slice, not the `n` records, for
//! its first slice. At the deadline the error names the
//! ranks that never registered (or, SHM, registered without a live link).
//!
//! Cost: SET + ADD + one parked GET per rank (3 ops, about 250 bytes with the frame headers,
//! whatever the world size); the rank that completes the world adds one PREFIX get of the `n`
//! records (about 60 `n` bytes) and, for SHM, `n` QUERY_ALIVE (pipelined: one round trip); a parked GET of every rank's
//! record by every rank would cost `n` ops per rank, `n^2` for the store.
//!
//! At uninit a rank removes its record and adds -1; the rank whose decrement takes the counter
//! below `worldSize` removes `ready`, so a world that lost a rank is waited for again.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use smem_core::ErrorCode;

use super::rank_list;
use crate::store::StoreClient;
use crate::{Error, Result};

/// The first wait slice for `ready` is 10 ms per rank of the world, within these bounds (a
/// small world sees its members registered early, which the message of a lost store names);
/// it doubles up to [`SLICE_MAX`].
const SLICE_FIRST_MIN: Duration = Duration::from_millis(50);
const SLICE_FIRST_MAX: Duration = Duration::from_secs(1);
const SLICE_MAX: Duration = Duration::from_secs(8);

/// One API's rendezvous.
pub(crate) struct Rendezvous<'a> {
    /// Key namespace, e.g. `smem/bm/`.
    pub(crate) ns: &'a str,
    /// The init call in messages, e.g. `smem_bm_init`.
    pub(crate) what: &'a str,
    pub(crate) world_size: u32,
    /// Registered ranks must also hold a live store link (SHM).
    pub(crate) alive: bool,
    /// The timeout knob named in messages, e.g. `initTimeout`.
    pub(crate) knob: &'a str,
}

impl Rendezvous<'_> {
    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}{rest}", self.ns).into_bytes()
    }

    /// The key of rank `r`'s record.
    pub(crate) fn rank_key(&self, r: u32) -> Vec<u8> {
        self.key(&format!("rank/{r}"))
    }

    /// The ranks whose records are present.
    fn present(&self, store: &StoreClient) -> Result<BTreeSet<u32>> {
        let prefix = self.key("rank/");
        Ok(store
            .prefix(&prefix)?
            .iter()
            .filter_map(|(k, _)| {
                std::str::from_utf8(k.get(prefix.len()..)?)
                    .ok()?
                    .parse()
                    .ok()
            })
            .collect())
    }

    /// Why the world is not complete (`None`: it is), adding the ranks present to `seen`.
    /// The message names the ranks never seen registered during this wait (a rank that gave
    /// up and unregistered since was there).
    fn incomplete(&self, store: &StoreClient, seen: &mut BTreeSet<u32>) -> Result<Option<String>> {
        let present = self.present(store)?;
        seen.extend(present.iter().copied().filter(|&r| r < self.world_size));
        if (0..self.world_size).any(|r| !present.contains(&r)) {
            let missing: Vec<u32> = (0..self.world_size).filter(|r| !seen.contains(r)).collect();
            if missing.is_empty() {
                let left: Vec<u32> = (0..self.world_size)
                    .filter(|r| !present.contains(r))
                    .collect();
                return Ok(Some(format!(
                    "rank(s) {} registered and left again (gave up or uninitialised)",
                    rank_list(&left)
                )));
            }
            return Ok(Some(format!(
                "{} of {} ranks did not register: missing rank(s) {}",
                missing.len(),
                self.world_size,
                rank_list(&missing)
            )));
        }
        if self.alive {
            let ranks: Vec<u32> = (0..self.world_size).collect();
            let alive = store.query_alive_each(&ranks)?;
            let dead: Vec<u32> = ranks
                .iter()
                .zip(alive)
                .filter(|&(_, alive)| !alive)
                .map(|(&r, _)| r)
                .collect();
            if !dead.is_empty() {
                return Ok(Some(format!(
                    "rank(s) {} registered but hold no live config store link (a process that died without smem_shm_uninit?)",
                    rank_list(&dead)
                )));
            }
        }
        Ok(None)
    }

    /// Sets `ready` when the world is complete; true when it did.
    fn complete(&self, store: &StoreClient, seen: &mut BTreeSet<u32>) -> Result<bool> {
        if self.incomplete(store, seen)?.is_some() {
            return Ok(false);
        }
        store.set(&self.key("ready"), b"1")?;
        Ok(true)
    }

    /// The check of a waiter whose slice passed: one PREFIX get; only when every record is
    /// there and the counter says the world is complete (the rank that completed it may still
    /// be checking), and from the third slice on, the full check of [`Self::complete`]
    /// (for SHM `n` QUERY_ALIVE), so that a slow world does not make every waiter query
    /// every rank.
    ///
    /// Unless `near_deadline` (the records then name the missing ranks should the store be
    /// gone at the deadline), a counter below the world size ends the check after one GET
    /// (the rank that completes the count checks the records itself), and so does, for SHM,
    /// any counter before the third slice; except from the second slice on, when the counter
    /// says more ranks registered than this waiter has seen.
    fn recheck(
        &self,
        store: &StoreClient,
        seen: &mut BTreeSet<u32>,
        round: u32,
        near_deadline: bool,
    ) -> Result<bool> {
        if !near_deadline {
            let count = store.get(&self.key("registered"))?.and_then(|v| {
                std::str::from_utf8(&v)
                    .ok()
                    .and_then(|t| t.trim().parse::<i64>().ok())
            });
            let complete = count.is_none_or(|c| c >= i64::from(self.world_size));
            // SHM before the third slice: the rank that completed the count is still
            // checking the ranks' links, and this check would end where that one starts.
            let useful = complete && !(self.alive && round < 2);
            // From the second slice on, ranks registered that this waiter has not seen yet
            // are looked up, so that a timeout can tell a rank that came and left from one
            // that never came.
            let unseen = round >= 1 && count.is_some_and(|c| c > seen.len() as i64);
            if !useful && !unseen {
                return Ok(false);
            }
        }
        let present = self.present(store)?;
        seen.extend(present.iter().copied().filter(|&r| r < self.world_size));
        if (0..self.world_size).any(|r| !present.contains(&r)) {
            return Ok(false);
        }
        if !self.alive {
            store.set(&self.key("ready"), b"1")?;
            return Ok(true);
        }
        if round < 2 {
            return Ok(false);
        }
        self.complete(store, seen)
    }

    /// Registers rank `rank` with `record` and waits until every rank of the world registered
    /// (module docs), adding the ranks seen registered to `seen`. `SM_TIMEOUT` at `deadline`
    /// naming the missing ranks (`timeout` is the configured wait, for the message).
    pub(crate) fn register_and_wait(
        &self,
        store: &StoreClient,
        rank: u32,
        record: &[u8],
        deadline: Instant,
        timeout: Duration,
        seen: &mut BTreeSet<u32>,
    ) -> Result<()> {
        let what = self.what;
        store
            .set(&self.rank_key(rank), record)
            .map_err(|e| e.context(what))?;
        seen.insert(rank);
        let n = store
            .add(&self.key("registered"), 1)
            .map_err(|e| e.context(what))?;
        if n >= i64::from(self.world_size)
            && self.complete(store, seen).map_err(|e| e.context(what))?
        {
            seen.extend(0..self.world_size);
            return Ok(());
        }
        let mut slice =
            (Duration::from_millis(10) * self.world_size).clamp(SLICE_FIRST_MIN, SLICE_FIRST_MAX);
        let mut round = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match store.wait_get(
                &self.key("ready"),
                left.min(slice).max(Duration::from_millis(1)),
            ) {
                Ok(_) => {
                    seen.extend(0..self.world_size);
                    return Ok(());
                }
                Err(e) if e.code() == ErrorCode::Timeout => {
                    let near = deadline <= Instant::now() + slice * 2;
                    if self
                        .recheck(store, seen, round, near)
                        .map_err(|e| e.context(what))?
                    {
                        seen.extend(0..self.world_size);
                        return Ok(());
                    }
                    if deadline <= Instant::now() {
                        // The store may be gone by now (its host gave up): then the ranks
                        // never seen registered during the wait.
                        let detail = match self.incomplete(store, seen) {
                            Ok(Some(d)) => d,
                            _ => {
                                let missing: Vec<u32> =
                                    (0..self.world_size).filter(|r| !seen.contains(r)).collect();
                                format!(
                                    "{} of {} ranks were not seen registered: missing rank(s) {}",
                                    missing.len(),
                                    self.world_size,
                                    rank_list(&missing)
                                )
                            }
                        };
                        return Err(Error::new(
                            ErrorCode::Timeout,
                            format!(
                                "{what}: {detail}; waited {} s; start them or raise {}",
                                timeout.as_secs_f32(),
                                self.knob
                            ),
                        ));
                    }
                    slice = (slice * 2).min(SLICE_MAX);
                    round += 1;
                }
                Err(e) => return Err(e.context(format!("{what}: waiting for the other ranks"))),
            }
        }
    }

    /// Uninit: removes rank `rank`'s record and its registration (module docs).
    pub(crate) fn unregister(&self, store: &StoreClient, rank: u32) {
        let _ = store.remove(&self.rank_key(rank));
        if let Ok(n) = store.add(&self.key("registered"), -1) {
            if n < i64::from(self.world_size) {
                let _ = store.remove(&self.key("ready"));
            }
        }
    }
}
