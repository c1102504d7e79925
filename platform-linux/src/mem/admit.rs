//! Admission of shareable memory: refuse a request the machine cannot back *before* any page
//! of it is allocated.
//!
//! Shared memory (`memfd`, tmpfs) is not limited by overcommit: `fallocate` of a segment larger
//! than the machine allocates pages until the OOM killer ends the process, or others. So every
//! [`super::HostSegment::create`] (the BM DRAM part, the BM HBM part of the `sim` backend, SHM
//! windows) first asks [`admit()`], which compares the request with [`headroom`]:
//!
//! - `MemAvailable + SwapFree` of `/proc/meminfo`;
//! - the memory cgroup of this process and each of its ancestors: cgroup v2 `memory.max -
//!   memory.current` (when set, not `max`), cgroup v1 `memory.limit_in_bytes -
//!   memory.usage_in_bytes`, for the path `/proc/self/cgroup` names under `/sys/fs/cgroup`
//!   (levels that do not exist there, e.g. above a container's cgroup namespace, are skipped).
//!
//! The smallest of these is the headroom. What this process already allocated needs no
//! bookkeeping: the kernel numbers include it. The check is advisory against races (another
//! process may take the memory between check and allocation); it stops the absurd requests, and
//! a failing `fallocate` (`ENOSPC`, `ENOMEM`) still maps to `SM_MALLOC_FAILED`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use smem_core::ErrorCode;

use crate::{Error, Result};

/// Most ancestor levels of a cgroup path looked at (bounds the walk).
const CGROUP_DEPTH_MAX: usize = 32;

/// What this machine can still back with new shared memory, and where the number came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Headroom {
    /// Bytes that can still be allocated (the smallest of the limits found).
    pub bytes: u64,
    /// The sources, e.g. `MemAvailable 1.0 GiB + SwapFree 0 B (/proc/meminfo)`.
    pub detail: String,
}

/// `n` bytes for humans: `1.5 GiB`, `512 B`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// `MemAvailable` and `SwapFree` in bytes from the text of `/proc/meminfo`.
fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let mut words = line[name.len()..].split_whitespace();
        let n: u64 = words.next()?.parse().ok()?;
        Some(match words.next() {
            Some("kB") => n.saturating_mul(1024),
            _ => n,
        })
    };
    Some((field("MemAvailable:")?, field("SwapFree:").unwrap_or(0)))
}

/// The cgroup paths of `/proc/self/cgroup` text: (v2 path, v1 memory controller path).
fn parse_proc_cgroup(text: &str) -> (Option<String>, Option<String>) {
    let (mut v2, mut v1) = (None, None);
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && ctrls.is_empty() {
            v2 = Some(path.to_owned());
        } else if ctrls.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_owned());
        }
    }
    (v2, v1)
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The tightest `limit - usage` over `path` and its ancestors under the cgroup mount `root`,
/// with the directory it was found in.
fn cgroup_headroom(root: &Path, path: &str, limit: &str, usage: &str) -> Option<(u64, PathBuf)> {
    let mut best: Option<(u64, PathBuf)> = None;
    let mut rel = Path::new(path.trim_start_matches('/'));
    for _ in 0..CGROUP_DEPTH_MAX {
        let dir = root.join(rel);
        // "max" (v2) does not parse: no limit at this level. v1's "unlimited" is a huge number.
        if let (Some(l), Some(u)) = (read_u64(&dir.join(limit)), read_u64(&dir.join(usage))) {
            let left = l.saturating_sub(u);
            if best.as_ref().is_none_or(|(b, _)| left < *b) {
                best = Some((left, dir));
            }
        }
        match rel.parent() {
            Some(p) => rel = p,
            None => break,
        }
    }
    best
}

/// What this machine can still back with new shared memory (see the module docs); `None` when
/// `/proc/meminfo` cannot be read (then nothing is refused up front).
pub fn headroom() -> Option<Headroom> {
    let (avail, swap) = parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)?;
    let mut bytes = avail.saturating_add(swap);
    let mut detail = format!(
        "MemAvailable {} + SwapFree {} (/proc/meminfo)",
        human(avail),
        human(swap)
    );
    let (v2, v1) = std::fs::read_to_string("/proc/self/cgroup")
        .map(|t| parse_proc_cgroup(&t))
        .unwrap_or_default();
    let cg = Path::new("/sys/fs/cgroup");
    let v2_root = if cg.join("cgroup.controllers").exists() {
        cg.to_path_buf()
    } else {
        cg.join("unified")
    };
    let found = [
        v2.and_then(|p| cgroup_headroom(&v2_root, &p, "memory.max", "memory.current"))
            .map(|h| (h, "memory.max - memory.current")),
        v1.and_then(|p| {
            cgroup_headroom(
                &cg.join("memory"),
                &p,
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        })
        .map(|h| (h, "memory.limit_in_bytes - memory.usage_in_bytes")),
    ];
    for ((left, dir), what) in found.into_iter().flatten() {
        if left < bytes {
            bytes = left;
            let _ = write!(
                detail,
                "; memory cgroup {}: {what} = {}",
                dir.display(),
                human(left)
            );
        }
    }
    Some(Headroom { bytes, detail })
}

/// Refuses `len` bytes of new shared memory for `what` when they exceed [`headroom`].
///
/// # Errors
/// `SM_MALLOC_FAILED` naming the size, the headroom and its sources, and what to do.
pub fn admit(what: &str, len: u64) -> Result<()> {
    match headroom() {
        Some(h) if len > h.bytes => Err(Error::new(
            ErrorCode::MallocFailed,
            format!(
                "{what}: refusing to allocate {len:#x} bytes ({}) of shared memory: this machine can back at most {} now ({}); free memory, add swap, raise the memory cgroup limit, or ask for less",
                human(len),
                human(h.bytes),
                h.detail
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_cgroup_parsing() {
        let m = "MemTotal:       24000000 kB\nMemAvailable:   1000 kB\nSwapFree:  2 kB\n";
        assert_eq!(parse_meminfo(m), Some((1_024_000, 2048)));
        assert_eq!(parse_meminfo("MemAvailable: 5 kB\n"), Some((5120, 0)));
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
        let c = "9:name=systemd:/\n4:memory:/a/b\n0::/user.slice/x\n";
        assert_eq!(
            parse_proc_cgroup(c),
            (Some("/user.slice/x".into()), Some("/a/b".into()))
        );
        assert_eq!(
            parse_proc_cgroup("5:cpu,memory:/k\n"),
            (None, Some("/k".into()))
        );
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(1 << 50), "1.0 PiB");
    }

    #[test]
    fn cgroup_walk_takes_the_tightest_level() {
        let root = std::env::temp_dir().join(format!("smem-admit-{}", std::process::id()));
        let leaf = root.join("a/b");
        std::fs::create_dir_all(&leaf).expect("dirs");
        std::fs::write(root.join("a/memory.max"), "1000\n").expect("write");
        std::fs::write(root.join("a/memory.current"), "400\n").expect("write");
        std::fs::write(leaf.join("memory.max"), "max\n").expect("write");
        std::fs::write(leaf.join("memory.current"), "100\n").expect("write");
        let got = cgroup_headroom(&root, "/a/b", "memory.max", "memory.current");
        assert_eq!(got, Some((600, root.join("a"))));
        assert_eq!(
            cgroup_headroom(&root, "/nope/deeper", "memory.max", "memory.current"),
            None
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn absurd_sizes_are_refused() {
        let e = admit("t", 1 << 62).expect_err("refused");
        assert_eq!(e.code(), ErrorCode::MallocFailed);
        assert!(e.message().contains("MemAvailable"), "{e:?}");
        assert!(admit("t", 4096).is_ok());
    }
}
