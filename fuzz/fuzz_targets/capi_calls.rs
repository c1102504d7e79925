#![no_main]
//! C API call sequences against a live single-rank runtime (see `fuzz/capi_driver.rs`).

#[path = "../capi_driver.rs"]
mod capi_driver;

libfuzzer_sys::fuzz_target!(|data: &[u8]| capi_driver::run(data));
