//! Fuzz entry of the transfer engine's store records ([`crate::wire::trans`]).

use crate::wire::trans::{EngineRecord, Region, RegionsView, emit_regions, regions_len};

/// Parses `data` as an engine record and as a region table: whatever parses must re-encode to
/// the same bytes, and every region found by address must hold the address asked for.
pub fn trans_records(data: &[u8]) {
    if let Ok(rec) = EngineRecord::parse(data) {
        let mut buf = [0u8; 512];
        assert_eq!(rec.emit(&mut buf), Ok(data.len()));
        assert_eq!(&buf[..data.len()], data);
    }
    let Ok(view) = RegionsView::parse(data) else {
        return;
    };
    let mut regions = [Region {
        addr: 0,
        len: 0,
        kind: crate::wire::trans::RegionKind::User,
        fd: 0,
        inode: 0,
    }; 16];
    let n = view.len().min(regions.len());
    for (slot, r) in regions.iter_mut().zip(view.iter()) {
        *slot = r;
    }
    if view.len() <= regions.len() {
        let mut buf = [0u8; regions_len(16)];
        let len = emit_regions(view.generation, &regions[..n], &mut buf);
        assert_eq!(len, Ok(data.len()));
        assert_eq!(&buf[..data.len()], data);
    }
    for r in view.iter().take(64) {
        let mid = r.addr + r.len / 2;
        assert_eq!(view.find(mid, 1).map(|f| f.addr), Some(r.addr));
        assert!(view.find(r.addr, r.len).is_some());
        assert!(view.find(r.end(), 1).is_none_or(|f| f.addr == r.end()));
    }
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    /// The seed corpus parses as intended, and truncations and bit flips of it never break an
    /// invariant of [`super::trans_records`].
    #[test]
    fn seeds_and_their_mutations() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/trans_records");
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).expect("seed corpus") {
            let bytes: Vec<u8> = std::fs::read(entry.expect("entry").path()).expect("seed");
            let parses = crate::wire::trans::EngineRecord::parse(&bytes).is_ok()
                || crate::wire::trans::RegionsView::parse(&bytes).is_ok();
            assert!(parses, "seed does not parse: {bytes:?}");
            seeds += 1;
            for cut in 0..bytes.len() {
                super::trans_records(&bytes[..cut]);
            }
            for i in 0..bytes.len() {
                for bit in 0..8 {
                    let mut m = bytes.clone();
                    m[i] ^= 1 << bit;
                    super::trans_records(&m);
                }
            }
        }
        assert!(seeds >= 4);
    }
}
