#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| smem_core::__fuzz::record::store_records(data));
