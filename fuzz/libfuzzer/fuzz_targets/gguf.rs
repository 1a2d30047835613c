#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| loupe_fuzz::gguf(data));
