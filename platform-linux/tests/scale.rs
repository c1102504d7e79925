//! 256 ranks on one host, as processes: init, create (2 MiB DRAM), join, a copy into the next
//! rank's window (and back, verified), a check of what the previous rank wrote, teardown; and
//! the store traffic of the control plane stays constant per rank (see `runtime/rendezvous.rs`
//! and the module docs of `runtime/object.rs`). The benchmark of the same code at 64 / 256 /
//! 1024 ranks is `benches/scale.rs`.
#![allow(unsafe_code)]

#[path = "scale_common/mod.rs"]
mod scale_common;

use std::time::Duration;

use scale_common::{Api, Shape};

#[test]
#[cfg_attr(miri, ignore)]
fn ranks_256_init_create_join_copy_teardown() {
    let shape = Shape {
        api: Api::Bm,
        world: 256,
        per_host: None,
        // Generous for a loaded 2-core machine; about 5 s when it is idle.
        deadline: Duration::from_secs(120),
        store: None,
    };
    let rep = scale_common::run(&shape).unwrap_or_else(|e| panic!("256 ranks: {e}"));
    let mut ops = 0.0;
    for p in ["init", "create", "join"] {
        let (o, bytes, events) = rep.per_rank(p);
        println!(
            "{p}: slowest {} ms, {o:.1} ops, {bytes:.0} bytes, {events:.1} events per rank",
            rep.max_micros(p) / 1000
        );
        ops += o;
    }
    // A parked GET per peer at init and an ack per peer at join cost over 1000 ops per rank
    // at 256 ranks; the constant schemes about 20 (more batches on a loaded machine).
    assert!(
        ops < 128.0,
        "{ops:.1} store ops per rank for init + create + join: not constant"
    );
}
