//! Fuzz entry points for the handle tables and copy validation.
//!
//! Each drives the real code with a byte-coded operation sequence and checks it against a
//! simple model; a panic here means an invariant of ours broke.

use crate::bm::{Copy2d, Part, WindowLayout, check_copy, check_copy_2d};
use crate::gva::{Gva, GvaRange};
use crate::table::{Handle, Table, TableError};

/// A little-endian cursor over fuzz input that yields zeros once exhausted.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u64(&mut self) -> u64 {
        let mut v = 0u64;
        for i in 0..8 {
            v |= u64::from(self.u8()) << (8 * i);
        }
        v
    }

    /// A value that is often small or near a boundary, so the fuzzer reaches edges quickly.
    fn edgy(&mut self, scale: u64) -> u64 {
        match self.u8() % 4 {
            0 => u64::from(self.u8()).wrapping_mul(scale),
            1 => u64::MAX - u64::from(self.u8()),
            2 => u64::from(self.u8()),
            _ => self.u64(),
        }
    }
}

const SLOTS: usize = 8;

/// Table op sequences checked against a model of live handles.
pub fn table_ops(data: &[u8]) {
    let mut b = Bytes(data);
    let mut t: Table<u64, SLOTS> = Table::new();
    let mut live: heapless::Vec<(Handle, u64), SLOTS> = heapless::Vec::new();
    let mut dead: heapless::Deque<Handle, 16> = heapless::Deque::new();
    while !b.is_empty() {
        match b.u8() % 5 {
            0 => {
                let v = b.u64();
                match t.insert(v) {
                    Ok(h) => assert!(live.push((h, v)).is_ok()),
                    Err((e, back)) => {
                        assert_eq!(e, TableError::Full);
                        assert_eq!(back, v);
                        assert!(live.is_full());
                    }
                }
            }
            1 if !live.is_empty() => {
                let i = usize::from(b.u8()) % live.len();
                let (h, v) = live.swap_remove(i);
                assert_eq!(t.remove(h), Ok(v));
                if dead.is_full() {
                    dead.pop_front();
                }
                let _ = dead.push_back(h);
            }
            2 => {
                for h in dead.iter() {
                    assert!(t.get(*h).is_err());
                }
            }
            3 => {
                let raw = b.u64();
                if let Some(h) = Handle::decode(raw) {
                    assert_eq!(h.encode(), raw);
                    if let Ok(v) = t.get(h) {
                        assert!(live.iter().any(|(lh, lv)| *lh == h && lv == v));
                    }
                }
            }
            _ => {
                for (h, v) in live.iter() {
                    assert_eq!(t.get(*h), Ok(v));
                    assert_eq!(Handle::decode(h.encode()), Some(*h));
                }
            }
        }
        assert_eq!(t.len(), live.len());
    }
}

/// Copy validation: any accepted copy lies inside one part of one window, on the global side,
/// and its local side neither wraps nor overlaps it.
pub fn copy_check(data: &[u8]) {
    let mut b = Bytes(data);
    let m2 = crate::limits::WINDOW_ALIGN;
    let base = b.edgy(m2) & !(m2 - 1);
    let stride = (b.edgy(m2) & !(m2 - 1)).max(m2);
    let members = u32::from(b.u8()) % 8 + 1;
    let hbm = b.edgy(m2);
    let dram = b.edgy(m2);
    let Ok(layout) = WindowLayout::new(Gva(base), stride, members, hbm, dram) else {
        return;
    };
    let t = u32::from(b.u8() % 6);
    let src = b.edgy(m2).wrapping_add(base);
    let dest = b.edgy(m2).wrapping_add(base);
    if b.u8() % 2 == 0 {
        let size = b.edgy(0x1000);
        if let Ok(plan) = check_copy(&layout, t, src, dest, size) {
            let global = if plan.kind.writes_global() { dest } else { src };
            assert_in_one_part(&layout, global, size, plan.global.rank, plan.global.part);
            assert_eq!(plan.global.len, size);
            let local = GvaRange::new(Gva(plan.local), size).expect("local range checked");
            let g = GvaRange::new(Gva(global), size).expect("global range checked");
            assert!(!local.overlaps(&g));
            assert!(plan.local != 0);
        }
    } else {
        let (sp, dp, w, h) = (b.edgy(0x100), b.edgy(0x100), b.edgy(0x100), b.edgy(1));
        if let Ok(plan) = check_copy_2d(&layout, t, &Copy2d::new(src, sp, dest, dp, w, h)) {
            let global = if plan.kind.writes_global() { dest } else { src };
            let span = (h - 1) * plan.global_pitch + w;
            assert_in_one_part(&layout, global, span, plan.global.rank, plan.global.part);
            assert!(plan.global_pitch >= w && plan.local_pitch >= w);
            let local_span = (h - 1)
                .checked_mul(plan.local_pitch)
                .and_then(|v| v.checked_add(w));
            let local_span = local_span.expect("local span checked");
            assert!(plan.local.checked_add(local_span - 1).is_some());
        }
    }
}

fn assert_in_one_part(layout: &WindowLayout, addr: u64, len: u64, rank: u32, part: Part) {
    let range = layout.part(rank, part).expect("accepted part exists");
    let copy = GvaRange::new(Gva(addr), len).expect("accepted range is valid");
    assert!(
        range.contains_range(&copy),
        "{copy} not inside rank {rank} {part} {range}"
    );
    let window = layout.window(rank).expect("accepted window exists");
    assert!(window.contains_range(&range));
}

#[cfg(test)]
mod tests {
    /// Runs every hook on a few thousand pseudo-random inputs (a smoke test of the hooks).
    #[test]
    fn hooks_survive_random_inputs() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut buf = [0u8; 256];
        for round in 0..3000usize {
            for b in buf.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            let len = round % buf.len();
            super::table_ops(&buf[..len]);
            super::copy_check(&buf[..len]);
        }
    }
}
