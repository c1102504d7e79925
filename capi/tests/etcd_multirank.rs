//! The C BM and SHM acceptance programs (`tests/c/bm_multirank.c`, `tests/c/shm_multirank.c`)
//! run unchanged on an `etcd://` URL of a real 3-member etcd cluster on loopback (SPEC 6.4):
//! every rank keeps `startConfigStore` on (ignored with a log line: nobody hosts a store).
//! The cluster is started and stopped by PID; the test skips with a printed reason only where
//! no etcd binary exists (`.ci/run` installs one).

mod common;
#[path = "../../platform-linux/tests/etcd_common/mod.rs"]
mod etcd_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Lang, Link};
use etcd_common::Cluster;

const WORLD: u32 = 4;
const DEADLINE: Duration = Duration::from_secs(180);

fn build(dir: &Path, name: &str) -> PathBuf {
    let exe = dir.join(name);
    common::build_c(
        &[&format!("{name}.c")],
        &exe,
        Lang::C,
        Link::Shared,
        &common::lib_dir(),
    );
    exe
}

fn run_on_etcd(name: &str) {
    let Some(cluster) = Cluster::start(3, name) else {
        return;
    };
    let dir = common::scratch(&format!("{name}-etcd"));
    let exe = build(&dir, name);
    let url = cluster.url(&format!("/{name}/"));
    common::ranks::run_ranks(
        &exe,
        &dir,
        WORLD,
        DEADLINE,
        &[
            ("SMEM_DEVICE", "sim"),
            ("SMEM_LOG_LEVEL", "info"),
            ("SMEM_TEST_STORE_URL", &url),
        ],
        &|_| Vec::new(),
        &|_| Vec::new(),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[cfg_attr(miri, ignore)]
fn bm_four_ranks_on_a_three_member_etcd() {
    run_on_etcd("bm_multirank");
}

#[test]
#[cfg_attr(miri, ignore)]
fn shm_four_ranks_on_a_three_member_etcd() {
    run_on_etcd("shm_multirank");
}
