#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| smem_core::__fuzz::transport::transport_header(data));
