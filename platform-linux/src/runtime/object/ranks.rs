//! [`RankSet`]: a set of ranks as a bitmap. The membership watcher updates a few sets per log
//! entry, a million entries per 1024-rank job and process count; a `BTreeSet` insert cost 5%
//! of the job's CPU time there.

/// A set of ranks (`u32`), one bit each; grows as ranks are inserted.
#[derive(Clone, Debug, Default)]
pub(crate) struct RankSet {
    words: Vec<u64>,
    len: usize,
}

impl RankSet {
    fn at(r: u32) -> (usize, u64) {
        ((r / 64) as usize, 1u64 << (r % 64))
    }

    /// Adds `r`; `true` when it was not in the set.
    pub(crate) fn insert(&mut self, r: u32) -> bool {
        let (i, bit) = Self::at(r);
        if i >= self.words.len() {
            self.words.resize(i + 1, 0);
        }
        let new = self.words[i] & bit == 0;
        self.words[i] |= bit;
        self.len += usize::from(new);
        new
    }

    /// Removes `r`; `true` when it was in the set.
    pub(crate) fn remove(&mut self, r: u32) -> bool {
        let (i, bit) = Self::at(r);
        let Some(w) = self.words.get_mut(i) else {
            return false;
        };
        let was = *w & bit != 0;
        *w &= !bit;
        self.len -= usize::from(was);
        was
    }

    /// Whether `r` is in the set.
    pub(crate) fn contains(&self, r: u32) -> bool {
        let (i, bit) = Self::at(r);
        self.words.get(i).is_some_and(|w| w & bit != 0)
    }

    /// The number of ranks in the set.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The ranks in ascending order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                (w != 0).then(|| {
                    let b = w.trailing_zeros();
                    w &= w - 1;
                    i as u32 * 64 + b
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::RankSet;

    #[test]
    fn behaves_like_a_btree_set() {
        let mut set = RankSet::default();
        let mut model = BTreeSet::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let r = (x % 1100) as u32;
            match x % 3 {
                0 => assert_eq!(set.remove(r), model.remove(&r)),
                _ => assert_eq!(set.insert(r), model.insert(r)),
            }
            assert_eq!(set.contains(r), model.contains(&r));
            assert_eq!(set.len(), model.len());
        }
        assert!(set.iter().eq(model.iter().copied()));
        assert!(!set.contains(u32::MAX) && !set.clone().remove(u32::MAX));
    }
}
