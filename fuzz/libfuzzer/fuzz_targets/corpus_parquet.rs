#![no_main]
// The Parquet reader catches panics left in the parquet decoders and reports a bad file, so
// a caught panic is not a crash here: the default hook (print, no abort) replaces
// libfuzzer-sys's aborting one. A panic that escapes the reader still aborts the run.
libfuzzer_sys::fuzz_target!(
    init: {
        let _ = std::panic::take_hook();
    },
    |data: &[u8]| loupe_fuzz::corpus_parquet(data)
);
