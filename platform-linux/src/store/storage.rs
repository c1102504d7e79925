//! The config store's state in std collections: [`MapStorage`] implements
//! [`smem_core::store::Storage`] (the key-value map, ranks, parked GETs and watches) for the
//! server's event loop.

use std::collections::{BTreeMap, HashMap, btree_map};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Bound;

use smem_core::store::Storage;

/// Names a link of the server.
pub(super) type LinkId = u64;

/// Hashes the server's own ids (links, parked GETs, ranks): they are handed out in sequence or
/// bounded by the world size, never chosen freely by a peer, so one multiplication spreads
/// them over the buckets, and SipHash's resistance to chosen keys would only cost time (every
/// watch event looks its link up).
#[derive(Default, Clone, Copy)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A hash map keyed by one of the server's ids.
pub(super) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

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
    /// Ordered, so the pairs under a prefix are one range (PREFIX gets of `n` window records
    /// or acknowledgements cost O(n), not a scan of every key).
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    parked: IdMap<u64, Parked>,
    parked_by_key: HashMap<Vec<u8>, Vec<u64>>,
    next_parked: u64,
    watchers: HashMap<Vec<u8>, IdMap<LinkId, u32>>,
    ranks: IdMap<u32, LinkId>,
    links: IdMap<LinkId, LinkState>,
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
    iter: btree_map::Range<'a, Vec<u8>, Vec<u8>>,
    prefix: &'a [u8],
}

impl<'a> Iterator for Prefixed<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        // The range starts at the prefix; the first key without it ends the pairs under it.
        self.iter
            .next()
            .filter(|(k, _)| k.starts_with(self.prefix))
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
            iter: self
                .data
                .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded)),
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

/// The store's ops one by one, without sockets: requests in, replies and deadlines out.
#[cfg(test)]
mod tests {
    use std::fmt;

    use smem_core::store::{Output, Refusal, Store, StoreLimits};
    use smem_core::wire::message::{self, MessageHeader};
    use smem_core::wire::{Handshake, MessageType};

    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Ev {
        Text(LinkId, u32, i16, String),
        Packed(LinkId, u32, MessageType, Vec<Vec<u8>>, Vec<Vec<u8>>),
        Deadline(u64, u64),
        Heartbeat(LinkId),
    }

    #[derive(Default)]
    struct Rec(Vec<Ev>);

    impl Output<LinkId> for Rec {
        fn text(&mut self, link: LinkId, seq: u32, status: i16, text: fmt::Arguments<'_>) {
            self.0.push(Ev::Text(link, seq, status, text.to_string()));
        }
        fn packed<'v, K, V>(&mut self, link: LinkId, seq: u32, mt: MessageType, keys: K, values: V)
        where
            K: Iterator<Item = &'v [u8]> + Clone,
            V: Iterator<Item = &'v [u8]> + Clone,
        {
            let own = |i: &[u8]| i.to_vec();
            self.0.push(Ev::Packed(
                link,
                seq,
                mt,
                keys.map(own).collect(),
                values.map(own).collect(),
            ));
        }
        fn arm_deadline(&mut self, id: u64, after_ms: u64) {
            self.0.push(Ev::Deadline(id, after_ms));
        }
        fn heartbeat(&mut self, link: LinkId) {
            self.0.push(Ev::Heartbeat(link));
        }
        fn log(&mut self, _: bool, _: fmt::Arguments<'_>) {}
    }

    const LIMITS: StoreLimits = StoreLimits {
        max_body_len: 1 << 20,
        max_keys: 8,
        max_key_len: 32,
        max_value_len: 64,
        max_total_bytes: 100,
        max_waiters_per_link: 2,
    };

    struct T {
        store: Store<MapStorage>,
        out: Rec,
    }

    impl T {
        fn new() -> Self {
            Self {
                store: Store::new(MapStorage::default(), LIMITS),
                out: Rec::default(),
            }
        }

        /// Send op `mt` from `link` with seqNo 7; the events it produced.
        fn op(
            &mut self,
            link: LinkId,
            mt: MessageType,
            user_def: i64,
            keys: &[&[u8]],
            values: &[&[u8]],
        ) -> Vec<Ev> {
            let (k, v) = (keys.iter().copied(), values.iter().copied());
            let mut body = vec![0; message::encoded_len(k.clone(), v.clone())];
            let mut h = MessageHeader::reply(mt);
            h.user_def = user_def;
            message::emit(&h, k, v, &mut body).unwrap();
            self.store.request(link, 7, &body, &mut self.out);
            std::mem::take(&mut self.out.0)
        }

        fn hello(
            &mut self,
            link: LinkId,
            world: Option<u32>,
            rank: Option<u32>,
        ) -> Result<(), Refusal<LinkId>> {
            self.store
                .handshake(link, &Handshake::new(world, rank, false), &mut self.out)
        }

        fn close(&mut self, link: LinkId) -> Vec<Ev> {
            self.store.link_closed(link, &mut self.out);
            std::mem::take(&mut self.out.0)
        }
    }

    use MessageType as M;

    fn text(link: LinkId, st: i16, t: &str) -> Vec<Ev> {
        vec![Ev::Text(link, 7, st, t.into())]
    }

    fn value(link: LinkId, seq: u32, mt: MessageType, v: &[u8]) -> Ev {
        Ev::Packed(link, seq, mt, vec![], vec![v.to_vec()])
    }

    #[test]
    fn set_get_remove_and_accounting() {
        let mut t = T::new();
        assert_eq!(t.op(1, M::Set, 0, &[b"k"], &[b"v1"]), text(1, 0, "success"));
        assert_eq!(t.store.stored_bytes(), 3);
        assert_eq!(
            t.op(1, M::Get, 0, &[b"k"], &[]),
            vec![value(1, 7, M::Get, b"v1")]
        );
        assert_eq!(
            t.op(1, M::Set, 0, &[b"k"], &[b"long"]),
            text(1, 0, "success")
        );
        assert_eq!(t.store.stored_bytes(), 5);
        assert_eq!(t.op(1, M::Remove, 0, &[b"k"], &[]), text(1, 0, "success"));
        assert_eq!(t.store.stored_bytes(), 0);
        assert_eq!(
            t.op(1, M::Remove, 0, &[b"k"], &[]),
            text(1, -404, "not exist")
        );
        assert_eq!(
            t.op(1, M::Get, 0, &[b"k"], &[]),
            text(1, -404, "<not exist>")
        );
        assert_eq!(
            t.op(1, M::Set, 0, &[b"k"], &[]),
            text(1, -400, "invalid request: key value should be one")
        );
    }

    #[test]
    fn limits_refuse_without_change() {
        let mut t = T::new();
        let big = [0u8; 65];
        assert_eq!(
            t.op(1, M::Set, 0, &[b"k"], &[&big]),
            text(1, -400, "invalid request: value larger than 64 bytes")
        );
        let v60 = [1u8; 60];
        t.op(1, M::Set, 0, &[b"a"], &[&v60]);
        assert_eq!(
            t.op(1, M::Set, 0, &[b"b"], &[&v60]),
            text(
                1,
                -400,
                "store full: 61 of 100 bytes stored (max_total_bytes); remove keys first"
            )
        );
        assert_eq!(
            t.op(1, M::Append, 0, &[b"a"], &[b"12345"]),
            text(1, -400, "invalid request: value would exceed 64 bytes")
        );
        assert_eq!(t.op(1, M::Append, 0, &[b"a"], &[b"1234"]), text(1, 0, "64"));
        assert_eq!(t.store.stored_bytes(), 65);
        assert_eq!(t.store.storage().value(b"b"), None);
    }

    #[test]
    fn add_parses_and_wakes() {
        let mut t = T::new();
        assert_eq!(t.op(1, M::Add, 0, &[b"n"], &[b"5"]), text(1, 0, "5"));
        assert_eq!(t.op(1, M::Add, 0, &[b"n"], &[b"-7"]), text(1, 0, "-2"));
        assert_eq!(
            t.op(1, M::Add, 0, &[b"n"], &[b"+1"]),
            text(1, -400, "invalid request: value should be a number.")
        );
        t.op(1, M::Set, 0, &[b"s"], &[b"x"]);
        assert_eq!(
            t.op(1, M::Add, 0, &[b"s"], &[b"1"]),
            text(1, -400, "oldValueStr should be a number.")
        );
        t.op(1, M::Set, 0, &[b"m"], &[i64::MAX.to_string().as_bytes()]);
        assert_eq!(
            t.op(1, M::Add, 0, &[b"m"], &[b"1"]),
            text(1, -400, "add result overflow.")
        );
        assert!(t.op(2, M::Get, -1, &[b"w"], &[]).is_empty());
        assert_eq!(
            t.op(1, M::Add, 0, &[b"w"], &[b"3"]),
            vec![value(2, 7, M::Get, b"3"), Ev::Text(1, 7, 0, "3".into())]
        );
    }

    #[test]
    fn append_cas_write_prefix() {
        let mut t = T::new();
        assert_eq!(t.op(1, M::Append, 0, &[b"a"], &[b"xy"]), text(1, 0, "2"));
        assert_eq!(t.op(1, M::Append, 0, &[b"a"], &[b"z"]), text(1, 0, "3"));
        assert_eq!(
            t.op(1, M::Cas, 0, &[b"a"], &[b"no", b"new"]),
            vec![Ev::Packed(
                1,
                7,
                M::Cas,
                vec![],
                vec![b"xyz".to_vec(), b"xyz".to_vec()]
            )]
        );
        assert_eq!(
            t.op(1, M::Cas, 0, &[b"a"], &[b"xyz", b"new"]),
            vec![value(1, 7, M::Cas, b"new")]
        );
        assert_eq!(t.store.stored_bytes(), 4);
        let mut w = 2u32.to_le_bytes().to_vec();
        w.extend_from_slice(b"AB");
        assert_eq!(t.op(1, M::Write, 0, &[b"w"], &[&w]), text(1, 0, "success"));
        assert_eq!(t.store.storage().value(b"w"), Some(&b"\0\0AB"[..]));
        assert_eq!(t.store.stored_bytes(), 9);
        assert_eq!(
            t.op(1, M::Write, 0, &[b"w"], &[b"ab"]),
            text(1, -400, "value size too small.")
        );
        let far = [0, 0, 1, 0, 1];
        assert_eq!(
            t.op(1, M::Write, 0, &[b"w"], &[&far]),
            text(
                1,
                -400,
                "invalid request: write offset larger than 65535 times the data length"
            )
        );
        let ev = t.op(1, M::Prefix, 0, &[b"a"], &[]);
        assert_eq!(
            ev,
            vec![Ev::Packed(
                1,
                7,
                M::Prefix,
                vec![b"a".to_vec()],
                vec![b"new".to_vec()]
            )]
        );
    }

    #[test]
    fn parked_get_wakes_times_out_and_is_bounded() {
        let mut t = T::new();
        assert_eq!(
            t.op(2, M::Get, 500, &[b"k"], &[]),
            vec![Ev::Deadline(0, 500)]
        );
        assert!(t.op(2, M::Get, -1, &[b"k"], &[]).is_empty());
        assert_eq!(
            t.op(2, M::Get, -1, &[b"k"], &[]),
            text(
                2,
                -400,
                "invalid request: too many parked GETs and watches on this link"
            )
        );
        t.store.expire(0, &mut t.out);
        assert_eq!(
            t.out.0.pop(),
            Some(Ev::Text(2, 7, -601, "<timeout>".into()))
        );
        // Expired already: nothing more.
        t.store.expire(0, &mut t.out);
        assert!(t.out.0.is_empty());
        assert_eq!(
            t.op(1, M::Set, 0, &[b"k"], &[b"v"]),
            vec![
                value(2, 7, M::Get, b"v"),
                Ev::Text(1, 7, 0, "success".into())
            ]
        );
        assert_eq!(t.store.storage().parked_count(), 0);
        // An unchanged value wakes no one.
        t.op(2, M::Get, -1, &[b"k2"], &[]);
        t.op(1, M::Set, 0, &[b"k2"], &[b"v"]);
        t.op(2, M::Get, -1, &[b"k2"], &[]);
        assert_eq!(t.op(1, M::Set, 0, &[b"k2"], &[b"v"]), text(1, 0, "success"));
    }

    #[test]
    fn watch_and_unwatch() {
        let mut t = T::new();
        assert!(t.op(2, M::Watch, 0, &[b"k"], &[]).is_empty());
        let ev = t.op(1, M::Append, 0, &[b"k"], &[b"ab"]);
        assert_eq!(ev[0], value(2, 7, M::Watch, b"ab"));
        // Watching again answers with the current value and the first seqNo.
        assert_eq!(
            t.op(2, M::Watch, 0, &[b"k"], &[]),
            vec![value(2, 7, M::Watch, b"ab")]
        );
        assert!(t.op(2, M::Unwatch, 0, &[b"k"], &[]).is_empty());
        assert_eq!(t.op(1, M::Set, 0, &[b"k"], &[b"c"]), text(1, 0, "success"));
    }

    #[test]
    fn handshake_ranks_auto_ranking_and_wipe() {
        let mut t = T::new();
        t.hello(1, Some(2), Some(0)).unwrap();
        assert_eq!(
            t.hello(2, Some(3), Some(1)),
            Err(Refusal::WorldSize { asked: 3, fixed: 2 })
        );
        assert_eq!(
            t.hello(2, Some(2), Some(0)),
            Err(Refusal::RankHeld { rank: 0, holder: 1 })
        );
        t.hello(2, Some(2), None).unwrap();
        let rank1 = 1u32.to_le_bytes();
        assert_eq!(
            t.op(2, M::Get, 0, &[b"AutoRanking#x"], &[]),
            vec![value(2, 7, M::Get, &rank1)]
        );
        t.hello(3, None, None).unwrap();
        assert_eq!(
            t.op(3, M::Get, 0, &[b"AutoRanking#x"], &[]),
            text(3, -1, "error: worldSize rankSize bigger than worldSize.")
        );
        assert_eq!(
            t.op(3, M::QueryAlive, 0, &[b"1"], &[]),
            vec![Ev::Packed(3, 7, M::QueryAlive, vec![], vec![vec![1]])]
        );
        assert!(
            t.op(3, M::WatchRankState, 0, &[b"WATCH_RANK_DOWN_KEY"], &[])
                .is_empty()
        );
        assert_eq!(t.op(3, M::Heartbeat, 0, &[], &[]), vec![Ev::Heartbeat(3)]);
        t.op(1, M::Set, 0, &[b"k"], &[b"v"]);
        t.op(3, M::Get, -1, &[b"never"], &[]);
        assert_eq!(t.close(2), vec![value(3, 7, M::WatchRankState, &rank1)]);
        assert_eq!(
            t.op(3, M::QueryAlive, 0, &[b"1"], &[]),
            vec![Ev::Packed(3, 7, M::QueryAlive, vec![], vec![])]
        );
        // The last ranked link goes: rank-down, then the wipe answers the parked GET.
        let ev = t.close(1);
        assert_eq!(ev[0], value(3, 7, M::WatchRankState, &0u32.to_le_bytes()));
        assert_eq!(
            ev[1],
            Ev::Text(3, 7, -602, "store wiped: no ranked link left".into())
        );
        assert_eq!(t.store.storage().value(b"k"), None);
        assert_eq!(t.store.stored_bytes(), 0);
        // The world size went with the wipe: a job of another size registers.
        assert_eq!(t.store.world_size(), None);
        t.hello(4, Some(3), Some(2)).unwrap();
        assert_eq!(t.store.world_size(), Some(3));
    }

    #[test]
    fn malformed_and_unsupported() {
        let mut t = T::new();
        t.store.request(1, 9, &[], &mut t.out);
        t.store.request(1, 9, &[1, 2, 3], &mut t.out);
        assert_eq!(
            std::mem::take(&mut t.out.0),
            vec![
                Ev::Text(1, 9, -400, "invalid request: empty body".into()),
                Ev::Text(1, 9, -400, "invalid request".into())
            ]
        );
        assert_eq!(
            t.op(1, M::Control, 0, &[b"3"], &[]),
            text(1, -400, "unsupported control op")
        );
        assert_eq!(
            t.op(1, M::Control, 0, &[b"x"], &[]),
            text(1, -400, "invalid control op")
        );
        let many: Vec<&[u8]> = vec![b"k"; 9];
        assert_eq!(
            t.op(1, M::Get, 0, &many, &[]),
            text(1, -400, "invalid request: more than 8 keys or values")
        );
    }
}
