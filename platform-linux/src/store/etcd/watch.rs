//! WATCH, GET with wait and rank-down notices on etcd Watch streams.
//!
//! Each watch is a task on the client's runtime that forwards events into a `std` channel
//! (the receiver shape of the TCP client) and re-opens its stream from the revision after
//! the last event it delivered when the stream breaks (member down, leader lost), so nothing
//! is missed across a failover. A watch stops when its stop handle in the [`Registry`] is
//! dropped (unwatch, a second watch of the key, close) or its receiver is dropped.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use log::{debug, warn};
use smem_core::ErrorCode;
use tokio::sync::oneshot;

use super::ops::{full, wake_piece};
use super::{EtcdClient, Shared, show};
use crate::sync::lock;
use crate::{Error, Result};

/// The stop handles of a client's watches (dropping one ends its task).
#[derive(Default)]
pub(crate) struct Registry {
    by_key: HashMap<Vec<u8>, oneshot::Sender<()>>,
    rank_down: Option<oneshot::Sender<()>>,
}

/// Ends every watch of `s` (their receivers disconnect).
pub(crate) fn cancel_all(s: &Shared) {
    let old = std::mem::take(&mut *lock(&s.watches));
    drop(old);
}

/// What a data watch sends.
#[derive(Clone, Copy)]
enum Mode {
    /// What a WATCH wake carries (SPEC 5.4: the appended piece after APPEND).
    Wake,
    /// The whole value (GET with wait).
    Full,
}

/// Forwards the events of `key` (a prefix when `prefix`) from revision `from` to `deliver`
/// until `stop` fires or `deliver` returns `false`.
async fn forward(
    client: Client,
    target: String,
    key: Vec<u8>,
    prefix: bool,
    mut from: i64,
    mut stop: oneshot::Receiver<()>,
    mut deliver: impl FnMut(EventType, &[u8], &[u8]) -> bool + Send + 'static,
) {
    loop {
        let mut opts = WatchOptions::new().with_start_revision(from);
        if prefix {
            opts = opts.with_prefix();
        }
        let mut wc = client.watch_client();
        let opened = tokio::select! {
            _ = &mut stop => return,
            r = wc.watch(key.clone(), Some(opts)) => r,
        };
        match opened {
            Ok(mut stream) => loop {
                let msg = tokio::select! {
                    _ = &mut stop => return,
                    m = stream.message() => m,
                };
                let Ok(Some(resp)) = msg else { break };
                if resp.canceled() {
                    if resp.compact_revision() > 0 {
                        warn!(
                            "etcd store {target}: watch of {} lost events (compacted at revision {}); its receiver disconnects",
                            show(&key),
                            resp.compact_revision()
                        );
                        return;
                    }
                    break;
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    from = kv.mod_revision() + 1;
                    if !deliver(ev.event_type(), kv.key(), kv.value()) {
                        return;
                    }
                }
            },
            Err(e) => debug!("etcd store {target}: watch of {}: {e}; again", show(&key)),
        }
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

impl Shared {
    /// Starts forwarding the events of `key` (a prefix when `prefix`) after revision `rev` to
    /// `deliver` on the client's runtime (see [`forward`]); dropping the returned handle stops
    /// it.
    fn spawn_forward(
        &self,
        key: Vec<u8>,
        prefix: bool,
        rev: i64,
        deliver: impl FnMut(EventType, &[u8], &[u8]) -> bool + Send + 'static,
    ) -> oneshot::Sender<()> {
        let (stop_tx, stop_rx) = oneshot::channel();
        self.handle.spawn(forward(
            self.client.clone(),
            self.target.to_string(),
            key,
            prefix,
            rev + 1,
            stop_rx,
            deliver,
        ));
        stop_tx
    }
}

impl EtcdClient {
    /// Reads `key` (data key) and starts a watch from the revision after the read; the
    /// receiver gets the current value first, if any.
    fn open(&self, key: &[u8], mode: Mode) -> Result<(oneshot::Sender<()>, Receiver<Vec<u8>>)> {
        let s = self.shared();
        let dk = s.data_key(key);
        let r = s.run("store WATCH", s.deadline(), |mut c| {
            let dk = dk.clone();
            async move { c.get(dk, None).await }
        })?;
        let rev = r.header().map_or(0, |h| h.revision());
        let (tx, rx): (Sender<Vec<u8>>, _) = mpsc::channel();
        if let Some(kv) = r.kvs().first() {
            let _ = tx.send(full(kv.value()).to_vec());
        }
        let deliver = move |t: EventType, _: &[u8], v: &[u8]| {
            if t != EventType::Put {
                return true;
            }
            let piece = match mode {
                Mode::Wake => wake_piece(v),
                Mode::Full => Some(full(v)),
            };
            piece.is_none_or(|p| tx.send(p.to_vec()).is_ok())
        };
        Ok((s.spawn_forward(dk, false, rev, deliver), rx))
    }

    /// Watch `key`: the receiver gets the current value (if any) and what every later wake
    /// carries. It disconnects on [`EtcdClient::unwatch`], a second watch of the key, or close.
    ///
    /// # Errors
    /// The cluster did not answer within the op timeout.
    pub fn watch(&self, key: &[u8]) -> Result<Receiver<Vec<u8>>> {
        let (stop, rx) = self.open(key, Mode::Wake)?;
        let old = lock(&self.shared().watches)
            .by_key
            .insert(key.to_vec(), stop);
        drop(old);
        Ok(rx)
    }

    /// Stop watching `key` (its receiver disconnects).
    ///
    /// # Errors
    /// None today (kept for the TCP client's signature).
    pub fn unwatch(&self, key: &[u8]) -> Result<()> {
        let old = lock(&self.shared().watches).by_key.remove(key);
        drop(old);
        Ok(())
    }

    /// Wait until `key` exists, up to `timeout`.
    ///
    /// # Errors
    /// `SM_TIMEOUT` naming the key when it did not appear in time; `SM_IO_ERROR` when the
    /// client was closed meanwhile.
    pub fn wait_get(&self, key: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let started = Instant::now();
        let (stop, rx) = self.open(key, Mode::Full)?;
        let left = timeout.saturating_sub(started.elapsed());
        let r = match rx.recv_timeout(left) {
            Ok(v) => Ok(v),
            Err(RecvTimeoutError::Timeout) => Err(Error::new(
                ErrorCode::Timeout,
                format!(
                    "key {} did not appear in the config store within {} ms",
                    show(key),
                    timeout.as_millis()
                ),
            )),
            Err(RecvTimeoutError::Disconnected) => Err(Error::new(
                ErrorCode::IoError,
                format!(
                    "waiting for key {}: the etcd store client was closed",
                    show(key)
                ),
            )),
        };
        drop(stop);
        r
    }

    /// Be told the rank of every client that goes down (its rank key deleted: closed, or its
    /// lease expired). The receiver disconnects when the client closes.
    ///
    /// # Errors
    /// The cluster did not answer within the op timeout.
    pub fn watch_rank_down(&self) -> Result<Receiver<u32>> {
        let s = self.shared();
        let prefix = s.key(b"r/");
        let p = prefix.clone();
        let r = s.run("watching ranks", s.deadline(), |mut c| {
            let p = p.clone();
            async move {
                c.get(p, Some(GetOptions::new().with_prefix().with_count_only()))
                    .await
            }
        })?;
        let rev = r.header().map_or(0, |h| h.revision());
        let (tx, rx) = mpsc::channel();
        let strip = prefix.len();
        let deliver = move |t: EventType, k: &[u8], _: &[u8]| {
            if t != EventType::Delete {
                return true;
            }
            match std::str::from_utf8(&k[strip..])
                .ok()
                .and_then(|r| r.parse().ok())
            {
                Some(rank) => tx.send(rank).is_ok(),
                None => true,
            }
        };
        let stop = s.spawn_forward(prefix, true, rev, deliver);
        let old = lock(&s.watches).rank_down.replace(stop);
        drop(old);
        Ok(rx)
    }
}
