//! Every fuzz target on stable Rust: each committed corpus input, then seeded mutations of
//! them (bit flips, byte changes, truncations, splices, inserted "interesting" values), a
//! bounded number per target (`LOUPE_FUZZ_REPLAY` mutations, default 2000). A panic here is
//! a bug: make its input a file in the target's corpus folder and fix the parser.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng};

/// Seeded, so that a failure reproduces.
struct Rng(StdRng);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.random()
    }

    fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n.max(1))
    }
}

const INTERESTING: [&[u8]; 8] = [&[0xff; 8], &[0; 8], &[0x7f, 0xff, 0xff, 0xff], &[0x80, 0, 0, 0], &[0xff, 0xff, 0xff, 0x7f], b"NaN", b"-1", b"1e309"];

fn mutate(input: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = rng.next() as u8;
            }
            2 if !data.is_empty() => data.truncate(rng.below(data.len())),
            3 if !other.is_empty() => {
                let (at, from) = (rng.below(data.len() + 1), rng.below(other.len()));
                let take = rng.below(other.len() - from + 1);
                data.splice(at..at, other[from..from + take].iter().copied());
            }
            4 => {
                let value = INTERESTING[rng.below(INTERESTING.len())];
                let at = rng.below(data.len() + 1);
                let end = (at + value.len()).min(data.len());
                data.splice(at..end, value.iter().copied());
            }
            _ if !data.is_empty() => {
                let (a, b) = (rng.below(data.len()), rng.below(data.len()));
                data.swap(a, b);
            }
            _ => data.push(rng.next() as u8),
        }
    }
    data
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

#[test]
fn every_target_survives_its_corpus_and_mutations_of_it() {
    let mutations: usize = std::env::var("LOUPE_FUZZ_REPLAY").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    for target in loupe_fuzz::targets() {
        let inputs = corpus(target.name);
        for (path, data) in &inputs {
            let outcome = std::panic::catch_unwind(|| (target.run)(data));
            assert!(outcome.is_ok(), "{}: corpus input {} panics", target.name, path.display());
        }
        let mut rng = Rng(StdRng::seed_from_u64(0x5EED ^ target.name.len() as u64));
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
