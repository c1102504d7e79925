#![no_main]
// TODO(skeleton): calls smem_core::__fuzz::... once its owner lands it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = data;
});
