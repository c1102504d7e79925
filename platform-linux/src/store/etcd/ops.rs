//! The data operations of SPEC 5.4 on etcd: SET, GET, PREFIX, ADD, REMOVE, APPEND, CAS, WRITE
//! (GET with wait and WATCH are in `watch`).

use std::sync::{Arc, Mutex};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use smem_core::ErrorCode;

use super::{EtcdClient, show};
use crate::store::CasResult;
use crate::sync::lock;
use crate::{Error, Result};

/// Wake length stored by WRITE: watchers are not woken (SPEC 5.4).
pub const NO_WAKE: u32 = u32::MAX;
/// WRITE's limit on offset + length (SPEC 5.4).
const WRITE_LIMIT: u64 = 1 << 30;

/// The stored form of `value` whose watchers get its last `wake` bytes.
pub(crate) fn encode(wake: u32, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + value.len());
    v.extend_from_slice(&wake.to_le_bytes());
    v.extend_from_slice(value);
    v
}

/// The user's value of a stored value (a foreign value without our header is taken whole).
pub(crate) fn full(stored: &[u8]) -> &[u8] {
    stored.get(4..).unwrap_or(stored)
}

/// What a watcher of a stored value is sent: `None` when it does not wake (WRITE).
pub(crate) fn wake_piece(stored: &[u8]) -> Option<&[u8]> {
    let Some(h) = stored.get(..4) else {
        return Some(stored);
    };
    let wake = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    if wake == NO_WAKE {
        return None;
    }
    let v = full(stored);
    Some(&v[v.len() - v.len().min(wake as usize)..])
}

fn len32(v: &[u8]) -> u32 {
    u32::try_from(v.len()).unwrap_or(NO_WAKE - 1)
}

fn rejected(op: &str, key: &[u8], why: &str) -> Error {
    Error::new(
        ErrorCode::StoreRejected,
        format!("store {op} of key {} failed: {why}", show(key)),
    )
}

/// What a read-modify-write step decided: the stored value to write (`None`: write nothing)
/// and the op's result.
type Step<R> = Result<(Option<Vec<u8>>, R)>;

impl EtcdClient {
    /// Store `value` under `key` (watchers are woken only when the value changes).
    ///
    /// # Errors
    /// The cluster did not answer within the op timeout, or refused the value (too large).
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let s = self.shared();
        let dk = s.data_key(key);
        let stored = encode(len32(value), value);
        s.run("store SET", s.deadline(), |mut c| {
            let (dk, stored) = (dk.clone(), stored.clone());
            async move {
                // The user's value compared (not our header): an unchanged value wakes nobody.
                let cur = c.get(dk.clone(), None).await?;
                if cur
                    .kvs()
                    .first()
                    .is_some_and(|kv| full(kv.value()) == full(&stored))
                {
                    return Ok(());
                }
                c.put(dk, stored, None).await.map(drop)
            }
        })
    }

    /// The value of `key`, `None` if absent.
    ///
    /// # Errors
    /// The cluster did not answer within the op timeout.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let s = self.shared();
        let dk = s.data_key(key);
        let r = s.run("store GET", s.deadline(), |mut c| {
            let dk = dk.clone();
            async move { c.get(dk, None).await }
        })?;
        Ok(r.kvs().first().map(|kv| full(kv.value()).to_vec()))
    }

    /// Delete `key`; `false` if it did not exist.
    ///
    /// # Errors
    /// The cluster did not answer within the op timeout.
    pub fn remove(&self, key: &[u8]) -> Result<bool> {
        let s = self.shared();
        let dk = s.data_key(key);
        let r = s.run("store REMOVE", s.deadline(), |mut c| {
            let dk = dk.clone();
            async move { c.delete(dk, None).await }
        })?;
        Ok(r.deleted() > 0)
    }

    /// Every `(key, value)` whose key starts with `prefix`.
    ///
    /// # Errors
    /// The cluster did not answer within the op timeout.
    pub fn prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let s = self.shared();
        let dk = s.data_key(prefix);
        let strip = s.data_key(b"").len();
        let mut r = s.run("store PREFIX", s.deadline(), |mut c| {
            let dk = dk.clone();
            async move { c.get(dk, Some(GetOptions::new().with_prefix())).await }
        })?;
        Ok(r.take_kvs()
            .into_iter()
            .map(|kv| {
                let (k, v) = kv.into_key_value();
                (k[strip..].to_vec(), full(&v).to_vec())
            })
            .collect())
    }

    /// Add `delta` to the decimal integer at `key` (absent: stores `delta`); the new value.
    ///
    /// # Errors
    /// `SM_STORE_REJECTED` when the stored value is not a number or the sum overflows.
    pub fn add(&self, key: &[u8], delta: i64) -> Result<i64> {
        self.rmw("ADD", key, move |cur| {
            let new = match cur {
                None => delta,
                Some(v) => {
                    let old: i64 = std::str::from_utf8(v)
                        .ok()
                        .and_then(|t| t.trim_start().parse().ok())
                        .ok_or_else(|| rejected("ADD", key, "oldValueStr should be a number."))?;
                    old.checked_add(delta)
                        .ok_or_else(|| rejected("ADD", key, "add result overflow."))?
                }
            };
            let text = new.to_string();
            Ok((Some(encode(len32(text.as_bytes()), text.as_bytes())), new))
        })
    }

    /// Append `value` to `key` (created if absent); the new length. Watchers get `value`.
    ///
    /// # Errors
    /// The cluster did not answer within the op timeout, or refused the value (too large).
    pub fn append(&self, key: &[u8], value: &[u8]) -> Result<u64> {
        self.rmw("APPEND", key, move |cur| {
            let mut new = cur.unwrap_or_default().to_vec();
            new.extend_from_slice(value);
            let len = new.len() as u64;
            Ok((Some(encode(len32(value), &new)), len))
        })
    }

    /// Compare and swap: set `new` if `key` is absent or holds `expected`.
    ///
    /// # Errors
    /// The cluster did not answer within the op timeout.
    pub fn cas(&self, key: &[u8], expected: &[u8], new: &[u8]) -> Result<CasResult> {
        self.rmw("CAS", key, move |cur| match cur {
            Some(v) if v != expected => Ok((None, CasResult::Mismatch(v.to_vec()))),
            _ => Ok((Some(encode(len32(new), new)), CasResult::Swapped)),
        })
    }

    /// Write `data` at `offset` of `key` (created / extended with zeros); wakes nobody.
    ///
    /// # Errors
    /// `SM_STORE_REJECTED` when offset + length exceeds 1 GiB; cluster errors.
    pub fn write(&self, key: &[u8], offset: u32, data: &[u8]) -> Result<()> {
        let end = u64::from(offset) + data.len() as u64;
        if end > WRITE_LIMIT {
            return Err(rejected("WRITE", key, "write total size exceeds limit."));
        }
        self.rmw("WRITE", key, move |cur| {
            let mut v = cur.unwrap_or_default().to_vec();
            let end = end as usize;
            if v.len() < end {
                v.resize(end, 0);
            }
            v[offset as usize..end].copy_from_slice(data);
            Ok((Some(encode(NO_WAKE, &v)), ()))
        })
    }

    /// A read-modify-write of `key`: `step` sees the current user value and decides; the
    /// write commits only if the key did not change since the read (else read again). The
    /// transaction also puts a marker key, so that after an attempt whose reply was lost (a
    /// member died) the retry finds out whether it committed instead of applying it twice.
    fn rmw<R: Clone + Send + 'static>(
        &self,
        op: &str,
        key: &[u8],
        step: impl Fn(Option<&[u8]>) -> Step<R>,
    ) -> Result<R> {
        let s = self.shared();
        let dk = s.data_key(key);
        let marker = s.marker();
        let lease = s.lease;
        // (a write was sent, the result it would give)
        let sent: Arc<Mutex<(bool, Option<R>)>> = Arc::new(Mutex::new((false, None)));
        let step = &step;
        let out = s.run(&format!("store {op}"), s.deadline(), |mut c| {
            let (dk, marker, sent) = (dk.clone(), marker.clone(), Arc::clone(&sent));
            async move {
                let earlier = lock(&sent).clone();
                if let (true, Some(r)) = earlier {
                    let m = c
                        .get(marker.clone(), Some(GetOptions::new().with_count_only()))
                        .await?;
                    if m.count() > 0 {
                        return Ok(Ok((true, r)));
                    }
                }
                loop {
                    let g = c.get(dk.clone(), None).await?;
                    let (cur, rev) = g.kvs().first().map_or((None, 0), |kv| {
                        (Some(full(kv.value()).to_vec()), kv.mod_revision())
                    });
                    let (stored, r) = match step(cur.as_deref()) {
                        Ok(x) => x,
                        Err(e) => return Ok(Err(e)),
                    };
                    let Some(stored) = stored else {
                        return Ok(Ok((false, r)));
                    };
                    *lock(&sent) = (true, Some(r.clone()));
                    let t = c
                        .txn(
                            Txn::new()
                                .when([Compare::mod_revision(dk.clone(), CompareOp::Equal, rev)])
                                .and_then([
                                    TxnOp::put(dk.clone(), stored, None),
                                    TxnOp::put(
                                        marker.clone(),
                                        "",
                                        Some(PutOptions::new().with_lease(lease)),
                                    ),
                                ]),
                        )
                        .await?;
                    if t.succeeded() {
                        return Ok(Ok((true, r)));
                    }
                }
            }
        })?;
        let (wrote, r) = out?;
        if wrote {
            // The marker is no longer needed (it would go with the lease anyway).
            let mut c = s.client.clone();
            s.handle.spawn(async move {
                let _ = c.delete(marker, None).await;
            });
        }
        Ok(r)
    }
}
