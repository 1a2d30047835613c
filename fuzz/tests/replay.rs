//! Every fuzz target on stable Rust: each committed corpus input, then seeded mutations of
//! them (bit flips, byte changes, truncations, splices, inserted "interesting" values), a
//! bounded number per target (`LOUPE_FUZZ_REPLAY` mutations, default 2000). A panic here is
//! a bug: make its input a file in the target's corpus folder and fix the parser.

use std::path::{Path, PathBuf};

use loupe_fuzz::mutate::{mutate, Mutator};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

/// The address space libFuzzer's runs allow (`-rss_limit_mb=4096` in scripts/fuzz.sh): on
/// a kernel that overcommits, a parser that allocates gigabytes it never touches would pass
/// here and abort `loupe index` under a memory limit, so the replay sets the limit too.
const ADDRESS_SPACE_BYTES: u64 = 4 << 30;

#[test]
fn every_target_survives_its_corpus_and_mutations_of_it() {
    let limit = libc::rlimit { rlim_cur: ADDRESS_SPACE_BYTES, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads the struct it is given; lowering a soft limit is always allowed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) }, 0, "setting the address space limit");
    let mutations: usize = std::env::var("LOUPE_FUZZ_REPLAY").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    for target in loupe_fuzz::targets() {
        let inputs = corpus(target.name);
        for (path, data) in &inputs {
            let outcome = std::panic::catch_unwind(|| (target.run)(data));
            assert!(outcome.is_ok(), "{}: corpus input {} panics", target.name, path.display());
        }
        let mut rng = Mutator::seeded(0x5EED ^ target.name.len() as u64);
        for i in 0..mutations {
            let (_, input) = &inputs[rng.below(inputs.len())];
            let (_, other) = &inputs[rng.below(inputs.len())];
            let data = mutate(input, other, &mut rng);
            if std::panic::catch_unwind(|| (target.run)(&data)).is_err() {
                let crash = std::env::temp_dir().join(format!("loupe-fuzz-{}-{i}", target.name));
                std::fs::write(&crash, &data).unwrap();
                panic!("{}: mutation {i} panics; its input is at {} (add it to fuzz/corpus/{} and fix the parser)", target.name, crash.display(), target.name);
            }
        }
        eprintln!("{}: {} corpus inputs and {mutations} mutations, no panic", target.name, inputs.len());
    }
}
