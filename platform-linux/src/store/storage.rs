//! The config store's state in std collections: [`MapStorage`] implements
//! [`smem_core::store::Storage`] (the key-value map, ranks, parked GETs and watches) for the
//! server's event loop.

use std::collections::HashMap;
use std::collections::hash_map;

use smem_core::store::Storage;

/// Names a link of the server.
pub(super) type LinkId = u64;

/// A parked GET.
struct Parked {
    link: LinkId,
    seq: u32,
    key: Vec<u8>,
}

/// What the store keeps per link.
#[derive(Default)]
struct LinkState {
    rank: Option<u32>,
    /// Keys this link watches, with the registering seqNo.
    watches: HashMap<Vec<u8>, u32>,
    rank_watch: Option<u32>,
    parked: usize,
}

/// The store's state in hash maps.
#[derive(Default)]
pub(super) struct MapStorage {
    data: HashMap<Vec<u8>, Vec<u8>>,
    parked: HashMap<u64, Parked>,
    parked_by_key: HashMap<Vec<u8>, Vec<u64>>,
    next_parked: u64,
    watchers: HashMap<Vec<u8>, HashMap<LinkId, u32>>,
    ranks: HashMap<u32, LinkId>,
    links: HashMap<LinkId, LinkState>,
}

impl MapStorage {
    /// GETs parked now.
    pub(super) fn parked_count(&self) -> usize {
        self.parked.len()
    }

    /// Whether parked GET `id` still waits.
    pub(super) fn is_parked(&self, id: u64) -> bool {
        self.parked.contains_key(&id)
    }

    fn link(&mut self, link: LinkId) -> &mut LinkState {
        self.links.entry(link).or_default()
    }

    fn unwatch_key(&mut self, link: LinkId, key: &[u8]) {
        if let Some(w) = self.watchers.get_mut(key) {
            w.remove(&link);
            if w.is_empty() {
                self.watchers.remove(key);
            }
        }
    }
}

/// The pairs under a prefix.
#[derive(Clone)]
pub(super) struct Prefixed<'a> {
    iter: hash_map::Iter<'a, Vec<u8>, Vec<u8>>,
    prefix: &'a [u8],
}

impl<'a> Iterator for Prefixed<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        self.iter
            .by_ref()
            .find(|(k, _)| k.starts_with(self.prefix))
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }
}

impl Storage for MapStorage {
    type Link = LinkId;
    type Pairs<'a> = Prefixed<'a>;

    fn value(&self, key: &[u8]) -> Option<&[u8]> {
        self.data.get(key).map(Vec::as_slice)
    }

    fn key_count(&self) -> usize {
        self.data.len()
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        match self.data.get_mut(key) {
            Some(v) => {
                v.clear();
                v.extend_from_slice(value);
            }
            None => {
                self.data.insert(key.to_vec(), value.to_vec());
            }
        }
    }

    fn append(&mut self, key: &[u8], tail: &[u8]) {
        match self.data.get_mut(key) {
            Some(v) => v.extend_from_slice(tail),
            None => {
                self.data.insert(key.to_vec(), tail.to_vec());
            }
        }
    }

    fn write_at(&mut self, key: &[u8], offset: usize, data: &[u8]) {
        let v = match self.data.get_mut(key) {
            Some(v) => v,
            None => self.data.entry(key.to_vec()).or_default(),
        };
        let end = offset + data.len();
        if v.len() < end {
            v.resize(end, 0);
        }
        v[offset..end].copy_from_slice(data);
    }

    fn remove(&mut self, key: &[u8]) -> Option<usize> {
        self.data.remove(key).map(|v| v.len())
    }

    fn with_prefix<'a>(&'a self, prefix: &'a [u8]) -> Prefixed<'a> {
        Prefixed {
            iter: self.data.iter(),
            prefix,
        }
    }

    fn clear(&mut self) {
        self.data.clear();
    }

    fn rank_holder(&self, rank: u32) -> Option<LinkId> {
        self.ranks.get(&rank).copied()
    }

    fn rank_of(&self, link: LinkId) -> Option<u32> {
        self.links.get(&link).and_then(|l| l.rank)
    }

    fn bind_rank(&mut self, rank: u32, link: LinkId) {
        self.ranks.insert(rank, link);
        self.link(link).rank = Some(rank);
    }

    fn unbind_rank(&mut self, link: LinkId) -> Option<u32> {
        let rank = self.links.remove(&link)?.rank?;
        if self.ranks.get(&rank) == Some(&link) {
            self.ranks.remove(&rank);
        }
        Some(rank)
    }

    fn any_rank(&self) -> bool {
        !self.ranks.is_empty()
    }

    fn waiters(&self, link: LinkId) -> usize {
        self.links
            .get(&link)
            .map_or(0, |l| l.parked + l.watches.len())
    }

    fn park(&mut self, link: LinkId, seq: u32, key: &[u8]) -> u64 {
        self.link(link).parked += 1;
        let id = self.next_parked;
        self.next_parked += 1;
        self.parked.insert(
            id,
            Parked {
                link,
                seq,
                key: key.to_vec(),
            },
        );
        self.parked_by_key.entry(key.to_vec()).or_default().push(id);
        id
    }

    fn unpark(&mut self, id: u64) -> Option<(LinkId, u32)> {
        let p = self.parked.remove(&id)?;
        if let Some(list) = self.parked_by_key.get_mut(&p.key) {
            list.retain(|x| *x != id);
            if list.is_empty() {
                self.parked_by_key.remove(&p.key);
            }
        }
        if let Some(l) = self.links.get_mut(&p.link) {
            l.parked = l.parked.saturating_sub(1);
        }
        Some((p.link, p.seq))
    }

    fn unpark_key(&mut self, key: &[u8], each: &mut dyn FnMut(LinkId, u32)) {
        let Some(ids) = self.parked_by_key.remove(key) else {
            return;
        };
        for id in ids {
            if let Some(p) = self.parked.remove(&id) {
                if let Some(l) = self.links.get_mut(&p.link) {
                    l.parked = l.parked.saturating_sub(1);
                }
                each(p.link, p.seq);
            }
        }
    }

    fn watch_seq(&self, link: LinkId, key: &[u8]) -> Option<u32> {
        self.links.get(&link)?.watches.get(key).copied()
    }

    fn add_watch(&mut self, link: LinkId, key: &[u8], seq: u32) {
        self.link(link).watches.insert(key.to_vec(), seq);
        self.watchers
            .entry(key.to_vec())
            .or_default()
            .insert(link, seq);
    }

    fn remove_watch(&mut self, link: LinkId, key: &[u8]) {
        let removed = self
            .links
            .get_mut(&link)
            .is_some_and(|l| l.watches.remove(key).is_some());
        if removed {
            self.unwatch_key(link, key);
        }
    }

    fn watchers(&self, key: &[u8], each: &mut dyn FnMut(LinkId, u32)) {
        for (l, s) in self.watchers.get(key).into_iter().flatten() {
            each(*l, *s);
        }
    }

    fn rank_watch(&self, link: LinkId) -> Option<u32> {
        self.links.get(&link)?.rank_watch
    }

    fn set_rank_watch(&mut self, link: LinkId, seq: Option<u32>) {
        if seq.is_some() || self.links.contains_key(&link) {
            self.link(link).rank_watch = seq;
        }
    }

    fn rank_watchers(&self, each: &mut dyn FnMut(LinkId, u32)) {
        for (l, state) in &self.links {
            if let Some(s) = state.rank_watch {
                each(*l, s);
            }
        }
    }

    fn drop_link(&mut self, link: LinkId) {
        let Some(state) = self.links.get_mut(&link) else {
            return;
        };
        let watches = std::mem::take(&mut state.watches);
        let parked = std::mem::take(&mut state.parked);
        state.rank_watch = None;
        if state.rank.is_none() {
            self.links.remove(&link);
        }
        for key in watches.keys() {
            self.unwatch_key(link, key);
        }
        if parked > 0 {
            let ids: Vec<u64> = self
                .parked
                .iter()
                .filter(|(_, p)| p.link == link)
                .map(|(k, _)| *k)
                .collect();
            for id in ids {
                self.unpark(id);
            }
        }
    }

    fn take_waiters(&mut self, each: &mut dyn FnMut(LinkId, u32)) {
        for (_, p) in self.parked.drain() {
            if let Some(l) = self.links.get_mut(&p.link) {
                l.parked = 0;
            }
            each(p.link, p.seq);
        }
        self.parked_by_key.clear();
        for (key, links) in std::mem::take(&mut self.watchers) {
            for (l, s) in links {
                if let Some(state) = self.links.get_mut(&l) {
                    state.watches.remove(&key);
                }
                each(l, s);
            }
        }
    }
}
