//! Throughput of the config store on loopback (ignored by default; run with
//! `cargo test --release -p smem-linux --test store_bench -- --ignored --nocapture`).

use std::time::{Duration, Instant};

use smem_linux::store::{ClientOptions, ServerConfig, StoreClient, StoreServer};

fn run(threads: usize, shared_link: bool, value_len: usize, dur: Duration) -> f64 {
    let s = StoreServer::start(ServerConfig {
        heartbeat_timeout: None,
        ..ServerConfig::default()
    })
    .unwrap();
    let base = StoreClient::connect(s.local_addr(), ClientOptions::default()).unwrap();
    let value = vec![0x5Au8; value_len];
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let c = if shared_link {
                base.clone()
            } else {
                StoreClient::connect(s.local_addr(), ClientOptions::default()).unwrap()
            };
            let value = value.clone();
            std::thread::spawn(move || {
                let key = format!("bench/{t}");
                let mut n = 0u64;
                while start.elapsed() < dur {
                    c.set(key.as_bytes(), &value).unwrap();
                    assert_eq!(
                        c.get(key.as_bytes()).unwrap().map(|v| v.len()),
                        Some(value_len)
                    );
                    n += 2;
                }
                n
            })
        })
        .collect();
    let ops: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    ops as f64 / start.elapsed().as_secs_f64()
}

#[test]
#[ignore = "benchmark"]
fn throughput() {
    let d = Duration::from_secs(2);
    for (threads, shared, len) in [
        (1, true, 16),
        (16, true, 16),
        (16, false, 16),
        (64, false, 16),
        (16, false, 65_536),
    ] {
        let ops = run(threads, shared, len, d);
        println!(
            "{threads:3} threads, {} link(s), {len:6} B values: {:9.0} ops/s",
            if shared { "one" } else { "own" },
            ops
        );
    }
}
