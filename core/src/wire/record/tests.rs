use super::*;

fn emit_to<const N: usize>(f: impl FnOnce(&mut [u8]) -> Result<usize>) -> ([u8; N], usize) {
    let mut buf = [0u8; N];
    let n = f(&mut buf).expect("emit");
    (buf, n)
}

const PROPOSAL: Proposal = Proposal {
    version: 3,
    nonce: 0xabc,
    base: 0x7f00_0000_0000,
    span: 0x80_0000,
    stride: 0x40_0000,
    hbm: 0x20_0000,
    dram: 0x20_0000,
};

static PROPOSAL_BYTES: &[u8] = b"v3 abc 7f0000000000 800000 400000 200000 200000";

#[test]
fn proposal_emit_parse() {
    let (buf, n) = emit_to::<PROPOSAL_MAX_LEN>(|b| PROPOSAL.emit(b));
    assert_eq!(&buf[..n], PROPOSAL_BYTES);
    assert_eq!(Proposal::parse(PROPOSAL_BYTES), Ok(PROPOSAL));
    let max = Proposal {
        version: u64::MAX,
        nonce: u64::MAX,
        base: u64::MAX,
        span: u64::MAX,
        stride: u64::MAX,
        hbm: u64::MAX,
        dram: u64::MAX,
    };
    let (buf, n) = emit_to::<PROPOSAL_MAX_LEN>(|b| max.emit(b));
    assert_eq!(n, PROPOSAL_MAX_LEN);
    assert_eq!(Proposal::parse(&buf[..n]), Ok(max));
    assert_eq!(
        PROPOSAL.emit(&mut [0u8; 10]),
        Err(WireError::BufferTooSmall)
    );
}

#[test]
fn proposal_malformed() {
    for bad in [
        &b""[..],
        b"v1 zz",
        b"1 a b c d e f",
        b"v1 a b c d e",
        b"v+1 a b c d e f",
        b"v1 +a b c d e f",
        b"v1 a b c d e f ",
        b"v1  a b c d e f",
        b"v1 a b c d e f 0",
        b"v18446744073709551616 a b c d e f",
        b"v1 10000000000000000 b c d e f",
        b"v1 a b c d e \xff",
    ] {
        assert!(Proposal::parse(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        Proposal::parse(b"v1 a b c d e f 0"),
        Err(WireError::SizeMismatch("proposal"))
    );
}

#[test]
fn proposal_tags_and_sizes() {
    use std::string::ToString;
    assert_eq!(PROPOSAL.tag().to_string(), "abc.3");
    let other = Proposal {
        version: 0,
        nonce: 1,
        base: 2,
        ..PROPOSAL
    };
    assert!(PROPOSAL.same_sizes(&other));
    assert!(!PROPOSAL.same_sizes(&Proposal { dram: 1, ..other }));
}

#[test]
fn log_entries_parse_with_offsets() {
    let mut e = log_entries(b"+0;+12;-0;x3;?;c7;d4096;c");
    assert_eq!(e.next(), Some((3, Some(LogEntry::Join(0)))));
    assert_eq!(e.next(), Some((7, Some(LogEntry::Join(12)))));
    assert_eq!(e.next(), Some((10, Some(LogEntry::Leave(0)))));
    assert_eq!(e.next(), Some((13, Some(LogEntry::Destroy(3)))));
    assert_eq!(e.next(), Some((15, None)));
    assert_eq!(e.next(), Some((18, Some(LogEntry::Create(7)))));
    assert_eq!(e.next(), Some((24, Some(LogEntry::Settled(4096)))));
    // The trailing `c` has no `;` yet.
    assert_eq!(e.next(), None);
    assert_eq!(log_entries(b"").count(), 0);
    assert_eq!(
        log_entries(b";;").collect::<heapless::Vec<_, 4>>(),
        [(1, None), (2, None)]
    );
}

#[test]
fn log_records_travel_with_their_join_entries() {
    let rec = b"host=h;hbm=-;dram=-";
    let mut piece = [0u8; 64];
    let n = emit_log_record(5, rec, &mut piece).expect("emit");
    assert_eq!(&piece[..n], b"w5:19:host=h;hbm=-;dram=-;");
    piece[n..n + 3].copy_from_slice(b"+5;");
    let piece = &piece[..n + 3];
    // The record's `;`s do not split it; entries skip it, records yield it.
    assert_eq!(
        log_entries(piece).collect::<heapless::Vec<_, 4>>(),
        [(n + 3, Some(LogEntry::Join(5)))]
    );
    assert_eq!(
        log_records(piece).collect::<heapless::Vec<_, 4>>(),
        [(5, &rec[..])]
    );
    // Malformed record entries are skipped up to their first `;`, like any malformed entry.
    for bad in [
        &b"w5:99:host=h;+5;"[..],
        b"w:3:abc;+5;",
        b"w5:3:abcd;+5;",
        b"wx;+5;",
    ] {
        assert_eq!(log_records(bad).count(), 0, "{bad:?}");
        assert_eq!(
            log_entries(bad).last(),
            Some((bad.len(), Some(LogEntry::Join(5)))),
            "{bad:?}"
        );
    }
    // An incomplete record is not yielded.
    assert_eq!(log_records(&piece[..n - 1]).count(), 0);
    let mut small = [0u8; 8];
    assert_eq!(
        emit_log_record(5, rec, &mut small),
        Err(WireError::BufferTooSmall)
    );
    let long = [b'a'; WINDOW_RECORD_MAX_LEN + 1];
    let mut buf = [0u8; LOG_RECORD_MAX_LEN + 8];
    assert!(emit_log_record(5, &long, &mut buf).is_err());
    let max = emit_log_record(u32::MAX, &long[1..], &mut buf).expect("longest");
    assert!(max <= LOG_RECORD_MAX_LEN);
}

#[test]
fn log_entry_emit_parse() {
    for (e, bytes) in [
        (LogEntry::Create(0), &b"c0;"[..]),
        (LogEntry::Join(5), b"+5;"),
        (LogEntry::Leave(4_294_967_295), b"-4294967295;"),
        (LogEntry::Destroy(12), b"x12;"),
        (LogEntry::Settled(u64::MAX), b"d18446744073709551615;"),
    ] {
        let (buf, n) = emit_to::<LOG_ENTRY_MAX_LEN>(|b| e.emit(b));
        assert_eq!(&buf[..n], bytes);
        assert_eq!(LogEntry::parse(&bytes[..bytes.len() - 1]), Ok(e));
    }
    assert_eq!(LogEntry::Join(3).rank(), Some(3));
    assert_eq!(LogEntry::Settled(3).rank(), None);
    for bad in [
        &b""[..],
        b"+",
        b"?1",
        b"c4294967296",
        b"c-1",
        b"c+1",
        b"d",
        b"c1 ",
    ] {
        assert!(LogEntry::parse(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        LogEntry::Join(123).emit(&mut [0u8; 3]),
        Err(WireError::BufferTooSmall)
    );
}

static DESC: [u8; 4] = [0x01, 0xab, 0x00, 0xff];

#[test]
fn window_record_emit_parse() {
    let r = WindowRecord {
        host: "boot/123",
        hbm: None,
        dram: Some(&DESC),
        net: None,
        world_rank: None,
    };
    let (buf, n) = emit_to::<WINDOW_RECORD_MAX_LEN>(|b| r.emit(b));
    assert_eq!(&buf[..n], b"host=boot/123;hbm=-;dram=01ab00ff");
    let mut scratch = [0u8; 2 * DESCRIPTOR_MAX];
    assert_eq!(WindowRecord::parse(&buf[..n], &mut scratch), Ok(r));

    let n2 = WindowRecord {
        hbm: Some(&DESC[..2]),
        net: Some(("10.250.0.2:4711".parse().expect("addr"), 0xfeed)),
        world_rank: Some(17),
        ..r
    };
    let (buf, n) = emit_to::<WINDOW_RECORD_MAX_LEN>(|b| n2.emit(b));
    assert_eq!(
        &buf[..n],
        b"host=boot/123;hbm=01ab;dram=01ab00ff;ep=10.250.0.2:4711;tok=feed;wrank=17"
    );
    let mut scratch = [0u8; 2 * DESCRIPTOR_MAX];
    assert_eq!(WindowRecord::parse(&buf[..n], &mut scratch), Ok(n2));
}

#[test]
fn window_record_fields_any_order_unknown_skipped() {
    let mut scratch = [0u8; 2 * DESCRIPTOR_MAX];
    let r = WindowRecord::parse(
        b"new=1;dram=-;tok=A;host=x=y;ep=[::1]:9;hbm=FF;host=h",
        &mut scratch,
    )
    .expect("parse");
    assert_eq!(r.host, "h");
    assert_eq!(r.hbm, Some(&[0xff][..]));
    assert_eq!(r.dram, None);
    assert_eq!(r.net, Some(("[::1]:9".parse().expect("addr"), 10)));
    assert_eq!(r.world_rank, None);
}

#[test]
fn window_record_malformed() {
    for bad in [
        &b""[..],
        b"hbm=-",
        b"host=a;hbm=-;dram=-;ep=1.2.3.4:5",
        b"host=a;tok=5",
        b"host=a;ep=1.2.3.4:5;tok=0",
        b"host=a;ep=1.2.3.4;tok=1",
        b"host=a;hbm=abc",
        b"host=a;hbm=zz",
        b"host=a;dram=+1",
        b"host=a;wrank=-1",
        b"host=a;wrank=4294967296",
        b"host=a;noequals",
        b"host=\xff",
    ] {
        let mut scratch = [0u8; 2 * DESCRIPTOR_MAX];
        assert!(WindowRecord::parse(bad, &mut scratch).is_err(), "{bad:?}");
    }
    let mut long = [b'a'; 6 + 2 * DESCRIPTOR_MAX + 2 + 7];
    long[..7].copy_from_slice(b"host=h;");
    long[7..11].copy_from_slice(b"hbm=");
    let mut scratch = [0u8; 2 * DESCRIPTOR_MAX];
    assert_eq!(
        WindowRecord::parse(&long, &mut scratch),
        Err(WireError::TooLarge("window HBM descriptor"))
    );
}

#[test]
fn window_record_emit_refuses() {
    let mut buf = [0u8; WINDOW_RECORD_MAX_LEN];
    let r = WindowRecord {
        host: "a;b",
        hbm: None,
        dram: None,
        net: None,
        world_rank: None,
    };
    assert_eq!(r.emit(&mut buf), Err(WireError::Invalid("window host")));
    let big = [0u8; DESCRIPTOR_MAX + 1];
    let r = WindowRecord {
        host: "a",
        hbm: Some(&big),
        ..r
    };
    assert_eq!(
        r.emit(&mut buf),
        Err(WireError::TooLarge("window descriptor"))
    );
    let r = WindowRecord {
        hbm: None,
        net: Some(("1.2.3.4:5".parse().expect("addr"), 0)),
        ..r
    };
    assert_eq!(r.emit(&mut buf), Err(WireError::Invalid("window token")));
    let r = WindowRecord { net: None, ..r };
    assert_eq!(r.emit(&mut buf[..5]), Err(WireError::BufferTooSmall));
}

#[test]
fn window_record_max_len_fits_the_largest() {
    let host = [b'h'; HOST_MAX];
    let host = core::str::from_utf8(&host).expect("ascii");
    let desc = [0xffu8; DESCRIPTOR_MAX];
    let r = WindowRecord {
        host,
        hbm: Some(&desc),
        dram: Some(&desc),
        net: Some((
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535"
                .parse()
                .expect("addr"),
            u64::MAX,
        )),
        world_rank: Some(u32::MAX),
    };
    let (buf, n) = emit_to::<WINDOW_RECORD_MAX_LEN>(|b| r.emit(b));
    let mut scratch = [0u8; 2 * DESCRIPTOR_MAX];
    assert_eq!(WindowRecord::parse(&buf[..n], &mut scratch), Ok(r));
}

#[test]
fn rank_record_emit_parse() {
    let r = RankRecord {
        host: "boot/7",
        pid: 4242,
        sharing_pid: Some(-1),
    };
    let (buf, n) = emit_to::<RANK_RECORD_MAX_LEN>(|b| r.emit(b));
    assert_eq!(&buf[..n], b"boot/7 4242 -1");
    assert_eq!(RankRecord::parse(&buf[..n]), Ok(r));
    let shm = RankRecord {
        sharing_pid: None,
        ..r
    };
    let (buf, n) = emit_to::<RANK_RECORD_MAX_LEN>(|b| shm.emit(b));
    assert_eq!(&buf[..n], b"boot/7 4242");
    assert_eq!(RankRecord::parse(&buf[..n]), Ok(shm));
    for bad in [
        &b""[..],
        b"h",
        b"h x",
        b" 1",
        b"h 1 2 3",
        b"h 1 +2",
        b"h 4294967296",
        b"h 1 2147483648",
        b"h\xff 1",
    ] {
        assert!(RankRecord::parse(bad).is_err(), "{bad:?}");
    }
    let spaced = RankRecord { host: "a b", ..r };
    assert!(spaced.emit(&mut [0u8; 64]).is_err());
}
