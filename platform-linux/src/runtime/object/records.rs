//! The BM and SHM runtimes' records in the config store, between platform types and the
//! codecs of [`smem_core::wire::record`] (which define the bytes): window records, membership
//! log entries, GVA proposals and rank records.

use std::net::SocketAddr;

use smem_core::ErrorCode;
use smem_core::wire::record::{
    self as wire, DESCRIPTOR_MAX, LOG_ENTRY_MAX_LEN, LOG_RECORD_MAX_LEN, LogEntry,
    PROPOSAL_MAX_LEN, Proposal, RankRecord, WINDOW_RECORD_MAX_LEN,
};

use crate::device::DeviceDescriptor;
use crate::mem::SegmentDescriptor;
use crate::{Error, Result};

/// What a member publishes at join: where its window's memory is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WindowRecord {
    pub(crate) host: String,
    pub(crate) hbm: Option<DeviceDescriptor>,
    pub(crate) dram: Option<SegmentDescriptor>,
    /// The member's transport endpoint and window generation token, when it serves the window
    /// over the network.
    pub(crate) net: Option<(SocketAddr, u64)>,
}

impl WindowRecord {
    /// The record's bytes (BM: no world rank).
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        self.encode_with(None)
    }

    fn encode_with(&self, world_rank: Option<u32>) -> Result<Vec<u8>> {
        let hbm = self.hbm.as_ref().map(DeviceDescriptor::encode);
        let dram = self.dram.map(|d| d.encode());
        let rec = wire::WindowRecord {
            host: &self.host,
            hbm: hbm.as_deref(),
            dram: dram.as_ref().map(|d| &d[..]),
            net: self.net,
            world_rank,
        };
        let mut buf = vec![0u8; WINDOW_RECORD_MAX_LEN];
        let n = rec.emit(&mut buf).map_err(|e| {
            Error::invalid(format!(
                "cannot publish the window record of host {:?}: {e}",
                self.host
            ))
        })?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Parses a BM record (a world rank in it is ignored).
    pub(crate) fn decode(b: &[u8]) -> Result<Self> {
        Self::decode_ranked(b).map(|(rec, _)| rec)
    }

    /// Parses a record with the world rank it may carry.
    pub(crate) fn decode_ranked(b: &[u8]) -> Result<(Self, Option<u32>)> {
        let bad = |e: smem_core::wire::WireError| {
            Error::new(
                ErrorCode::ProtocolError,
                format!("malformed window record in the config store: {e}"),
            )
        };
        let mut scratch = [0u8; 2 * DESCRIPTOR_MAX];
        let rec = wire::WindowRecord::parse(b, &mut scratch).map_err(bad)?;
        let hbm = rec.hbm.map(DeviceDescriptor::decode).transpose()?;
        let dram = rec.dram.map(SegmentDescriptor::decode).transpose()?;
        let out = Self {
            host: rec.host.to_owned(),
            hbm,
            dram,
            net: rec.net,
        };
        Ok((out, rec.world_rank))
    }
}

/// The bytes of a membership log entry (with its `;`).
pub(crate) fn entry_bytes(entry: LogEntry) -> Vec<u8> {
    let mut buf = [0u8; LOG_ENTRY_MAX_LEN];
    // INVARIANT: every entry fits LOG_ENTRY_MAX_LEN bytes (the codec's bound).
    let n = entry.emit(&mut buf).expect("log entry fits its maximum");
    buf[..n].to_vec()
}

/// The bytes of rank `rank`'s join: its window record entry and its join entry, appended
/// together (module docs of [`super`], "Membership").
pub(crate) fn join_bytes(rank: u32, record: &[u8]) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; LOG_RECORD_MAX_LEN];
    let n = wire::emit_log_record(rank, record, &mut buf)
        .map_err(|e| Error::invalid(format!("cannot publish the window record: {e}")))?;
    buf.truncate(n);
    buf.extend_from_slice(&entry_bytes(LogEntry::Join(rank)));
    Ok(buf)
}

/// The bytes of a GVA proposal.
pub(crate) fn proposal_bytes(p: &Proposal) -> Vec<u8> {
    let mut buf = [0u8; PROPOSAL_MAX_LEN];
    // INVARIANT: every proposal fits PROPOSAL_MAX_LEN bytes (the codec's bound).
    let n = p.emit(&mut buf).expect("proposal fits its maximum");
    buf[..n].to_vec()
}

/// The device sharing id of a BM rank record on host `host` (`None`: another host, an SHM
/// record, or a record that does not parse).
pub(crate) fn sharing_pid_on(record: &[u8], host: &str) -> Option<i32> {
    RankRecord::parse(record)
        .ok()
        .filter(|r| r.host == host)
        .and_then(|r| r.sharing_pid)
}

/// The rank record of this process (`sharing_pid`: BM's device sharing id).
pub(crate) fn rank_record(host: &str, sharing_pid: Option<i32>) -> Result<Vec<u8>> {
    let rec = RankRecord {
        host,
        pid: std::process::id(),
        sharing_pid,
    };
    let mut buf = vec![0u8; wire::RANK_RECORD_MAX_LEN];
    let n = rec
        .emit(&mut buf)
        .map_err(|e| Error::invalid(format!("cannot register host identity {host:?}: {e}")))?;
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::SegmentKind;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn window_records_round_trip() {
        let d = SegmentDescriptor {
            kind: SegmentKind::Host,
            pid: 1,
            fd: 3,
            inode: 9,
            len: 0x20_0000,
        };
        let r = WindowRecord {
            host: "boot/123".into(),
            hbm: None,
            dram: Some(d),
            net: None,
        };
        let bytes = r.encode().expect("encode");
        assert_eq!(
            bytes,
            format!("host=boot/123;hbm=-;dram={}", hex(&d.encode())).into_bytes()
        );
        assert_eq!(WindowRecord::decode(&bytes), Ok(r.clone()));
        let n = WindowRecord {
            net: Some(("10.250.0.2:4711".parse().expect("addr"), 0xfeed)),
            ..r
        };
        let bytes = n.encode().expect("encode");
        assert!(bytes.ends_with(b";ep=10.250.0.2:4711;tok=feed"));
        assert_eq!(WindowRecord::decode(&bytes), Ok(n));
        assert!(WindowRecord::decode(b"host=a;hbm=-;dram=-;ep=1.2.3.4:5").is_err());
        assert!(WindowRecord::decode(b"hbm=-").is_err());
        let r = WindowRecord {
            host: "boot/123".into(),
            hbm: Some(DeviceDescriptor::AclIpc {
                len: 0x40_0000,
                key: "stub-12-7-99".into(),
            }),
            dram: None,
            net: None,
        };
        assert_eq!(WindowRecord::decode(&r.encode().expect("encode")), Ok(r));
        let sim = WindowRecord {
            host: "h".into(),
            hbm: Some(DeviceDescriptor::Mapped(SegmentDescriptor {
                kind: SegmentKind::SimDevice,
                ..d
            })),
            dram: Some(d),
            net: None,
        };
        assert_eq!(
            WindowRecord::decode(&sim.encode().expect("encode")),
            Ok(sim)
        );
        // An ACL descriptor with a bad key is refused.
        let bad = format!(
            "host=h;hbm={};dram=-",
            hex(b"SMAK\x01\0\0\0\0\0\x20\0\0\0\0\0a b")
        );
        assert!(WindowRecord::decode(bad.as_bytes()).is_err());
    }

    #[test]
    fn window_records_carry_the_world_rank() {
        let rec = WindowRecord {
            host: "boot/1".into(),
            hbm: None,
            dram: None,
            net: None,
        };
        let bytes = rec.encode_with(Some(17)).expect("encode");
        assert_eq!(bytes, b"host=boot/1;hbm=-;dram=-;wrank=17");
        assert_eq!(
            WindowRecord::decode_ranked(&bytes),
            Ok((rec.clone(), Some(17)))
        );
        assert_eq!(WindowRecord::decode(&bytes), Ok(rec.clone()));
        let plain = rec.encode().expect("encode");
        assert_eq!(WindowRecord::decode_ranked(&plain), Ok((rec, None)));
    }

    #[test]
    fn entries_proposals_and_rank_records() {
        assert_eq!(entry_bytes(LogEntry::Join(5)), b"+5;");
        assert_eq!(entry_bytes(LogEntry::Settled(77)), b"d77;");
        let p = Proposal {
            version: 1,
            nonce: 0xff,
            base: 0x10,
            span: 0x20,
            stride: 0x10,
            hbm: 0,
            dram: 0x10,
        };
        assert_eq!(proposal_bytes(&p), b"v1 ff 10 20 10 0 10");
        let me = rank_record("boot/9", Some(-1)).expect("record");
        assert_eq!(me, format!("boot/9 {} -1", std::process::id()).into_bytes());
        assert_eq!(sharing_pid_on(&me, "boot/9"), Some(-1));
        assert_eq!(sharing_pid_on(&me, "boot/8"), None);
        let shm = rank_record("boot/9", None).expect("record");
        assert_eq!(sharing_pid_on(&shm, "boot/9"), None);
        assert!(rank_record("a b", None).is_err());
    }
}
