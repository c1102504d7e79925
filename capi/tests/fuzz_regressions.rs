//! Replays the `capi_calls` fuzz target's seed corpus and every input that ever crashed it
//! (`fuzz/regressions/capi_calls/`) through the same driver, on stable Rust, so CI checks them
//! without cargo-fuzz. The driver keeps a live single-rank runtime in this process.

#[path = "../../fuzz/capi_driver.rs"]
mod capi_driver;

use std::path::PathBuf;

fn inputs() -> Vec<PathBuf> {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for (dir, seeds_only) in [
        ("corpus/capi_calls", true),
        ("regressions/capi_calls", false),
    ] {
        let Ok(rd) = std::fs::read_dir(fuzz.join(dir)) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !seeds_only || name.starts_with("seed-") {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn capi_calls_seeds_and_regressions() {
    let inputs = inputs();
    assert!(!inputs.is_empty(), "no capi_calls seeds found");
    for p in &inputs {
        let data = std::fs::read(p).expect("read input");
        println!("replaying {}", p.display());
        capi_driver::run(&data);
    }
    let [created, joined, copied, refused] = capi_driver::counts();
    println!("objects created {created}, joined {joined}; copies done {copied}, refused {refused}");
    assert!(
        created > 0 && joined > 0 && copied > 0 && refused > 0,
        "the seeds reach every path"
    );
    println!("{} capi_calls inputs replayed", inputs.len());
}
