//! Fuzz entry of the runtimes' text records in the store ([`crate::wire::record`]).

use crate::wire::record::{
    DESCRIPTOR_MAX, LOG_ENTRY_MAX_LEN, LOG_RECORD_MAX_LEN, LogEntry, PROPOSAL_MAX_LEN, Proposal,
    RANK_RECORD_MAX_LEN, RankRecord, WINDOW_RECORD_MAX_LEN, WindowRecord, emit_log_record,
    log_entries, log_records,
};

/// Parses `data` as every record: whatever parses must emit, and the emitted bytes must parse
/// to the same value; log entries come with increasing offsets, each just past a `;`; log
/// records emit to bytes that parse to the same record. Then
/// the bytes, read as numbers, make a proposal and a log entry that must survive emit and
/// parse.
pub fn store_records(data: &[u8]) {
    if let Ok(p) = Proposal::parse(data) {
        proposal_round_trip(p);
    }
    let mut last = 0;
    for (end, entry) in log_entries(data).take(1024) {
        assert!(end > last && end <= data.len() && data[end - 1] == b';');
        last = end;
        if let Some(e) = entry {
            entry_round_trip(e);
        }
    }
    for (r, rec) in log_records(data).take(1024) {
        let mut buf = [0u8; LOG_RECORD_MAX_LEN];
        let n = emit_log_record(r, rec, &mut buf).expect("a parsed log record emits");
        let mut again = log_records(&buf[..n]);
        assert_eq!(again.next(), Some((r, rec)));
        assert_eq!(again.next(), None);
    }
    let mut scratch = [0u8; 2 * DESCRIPTOR_MAX];
    if let Ok(w) = WindowRecord::parse(data, &mut scratch) {
        let mut buf = [0u8; WINDOW_RECORD_MAX_LEN];
        let n = w.emit(&mut buf).expect("a parsed window record emits");
        let mut again = [0u8; 2 * DESCRIPTOR_MAX];
        assert_eq!(WindowRecord::parse(&buf[..n], &mut again), Ok(w));
    }
    if let Ok(r) = RankRecord::parse(data) {
        let mut buf = [0u8; RANK_RECORD_MAX_LEN];
        let n = r.emit(&mut buf).expect("a parsed rank record emits");
        assert_eq!(RankRecord::parse(&buf[..n]), Ok(r));
    }
    let mut words = data
        .chunks(8)
        .map(|c| c.iter().fold(0u64, |n, b| n << 8 | u64::from(*b)));
    let mut word = || words.next().unwrap_or(0);
    proposal_round_trip(Proposal {
        version: word(),
        nonce: word(),
        base: word(),
        span: word(),
        stride: word(),
        hbm: word(),
        dram: word(),
    });
    let (kind, n) = (word(), word());
    let r = n as u32;
    entry_round_trip(match kind % 5 {
        0 => LogEntry::Create(r),
        1 => LogEntry::Join(r),
        2 => LogEntry::Leave(r),
        3 => LogEntry::Destroy(r),
        _ => LogEntry::Settled(n),
    });
}

fn proposal_round_trip(p: Proposal) {
    let mut buf = [0u8; PROPOSAL_MAX_LEN];
    let n = p.emit(&mut buf).expect("a proposal fits PROPOSAL_MAX_LEN");
    assert_eq!(Proposal::parse(&buf[..n]), Ok(p));
}

fn entry_round_trip(e: LogEntry) {
    let mut buf = [0u8; LOG_ENTRY_MAX_LEN];
    let n = e.emit(&mut buf).expect("an entry fits LOG_ENTRY_MAX_LEN");
    assert_eq!(buf[n - 1], b';');
    assert_eq!(LogEntry::parse(&buf[..n - 1]), Ok(e));
    assert_eq!(log_entries(&buf[..n]).next(), Some((n, Some(e))));
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    /// The seed corpus parses as intended, and truncations and bit flips of it never break an
    /// invariant of [`super::store_records`].
    #[test]
    fn seeds_and_their_mutations() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/store_records");
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).expect("seed corpus") {
            let bytes: Vec<u8> = std::fs::read(entry.expect("entry").path()).expect("seed");
            let mut scratch = [0u8; 2 * super::DESCRIPTOR_MAX];
            let parses = super::Proposal::parse(&bytes).is_ok()
                || super::log_entries(&bytes).any(|(_, e)| e.is_some())
                || super::WindowRecord::parse(&bytes, &mut scratch).is_ok()
                || super::RankRecord::parse(&bytes).is_ok();
            assert!(parses, "seed does not parse: {bytes:?}");
            seeds += 1;
            for cut in 0..bytes.len() {
                super::store_records(&bytes[..cut]);
            }
            for i in 0..bytes.len() {
                for bit in 0..8 {
                    let mut m = bytes.clone();
                    m[i] ^= 1 << bit;
                    super::store_records(&m);
                }
            }
        }
        assert!(seeds >= 4);
    }
}
