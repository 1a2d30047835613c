#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| loupe_fuzz::search_query(data));
