//! The GPU attention softmax kernel (src/model/attention_softmax.cu) checked on the CPU: the
//! kernel's own source runs under the block emulator (tests/host_cuda/cuda_on_cpu.h, warp
//! shuffles included) and its probabilities are compared with the definition, computed here
//! in f64: `softmax(scale * scores)` over the keys query `i` of sequence `b` sees (`j <= offset
//! + i` and `j < offset + length_b`), zero elsewhere; for bf16 scores, that f64 result rounded
//! to bf16 once. Needs a C++20 compiler (`c++`, or $CXX); the GPU machine checks the device.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use half::bf16;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

struct Case {
    batch: usize,
    heads: usize,
    seq: usize,
    offset: usize,
    lengths: Vec<usize>,
    scale: f32,
}

impl Case {
    fn kv_len(&self) -> usize {
        self.offset + self.seq
    }

    fn rows(&self) -> usize {
        self.batch * self.heads * self.seq
    }

    /// The definition, in f64, from the scores as the kernel reads them (as f32).
    fn expected(&self, scores: &[f32]) -> Vec<f64> {
        let kv = self.kv_len();
        let mut out = vec![0f64; scores.len()];
        for row in 0..self.rows() {
            let (b, i) = (row / (self.heads * self.seq), row % self.seq);
            let visible = (self.offset + i + 1).min(self.offset + self.lengths[b]).min(kv);
            let x: Vec<f64> = scores[row * kv..row * kv + visible].iter().map(|&s| f64::from(s) * f64::from(self.scale)).collect();
            let max = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = x.iter().map(|v| (v - max).exp()).sum();
            for (j, v) in x.iter().enumerate() {
                out[row * kv + j] = (v - max).exp() / sum;
            }
        }
        out
    }

    fn header(&self, bf16: bool) -> Vec<u8> {
        let words = [bf16 as u32, self.batch as u32, self.heads as u32, self.seq as u32, self.kv_len() as u32, self.offset as u32];
        let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.extend(self.scale.to_le_bytes());
        bytes.extend(self.lengths.iter().flat_map(|&l| (l as u32).to_le_bytes()));
        bytes
    }
}

fn run(exe: &Path, dir: &Path, input: Vec<u8>) -> Vec<u8> {
    let (input_path, output_path) = (dir.join("in"), dir.join("out"));
    std::fs::write(&input_path, input).unwrap();
    let status = Command::new(exe).arg(&input_path).arg(&output_path).status().unwrap();
    assert!(status.success());
    std::fs::read(&output_path).unwrap()
}

fn emulator(dir: &Path) -> PathBuf {
    common::cuda_kernel_on_cpu("softmax_emulator.cpp", "src/model/attention_softmax.cu", dir)
}

/// Scores for a case, normal with a spread of 8 (softmaxes from flat to nearly one-hot).
fn random_scores(seed: u64) -> impl FnMut(&Case) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let normal = Normal::new(0f32, 8.0).unwrap();
    move |case| (0..case.rows() * case.kv_len()).map(|_| normal.sample(&mut rng)).collect()
}

fn cases() -> Vec<Case> {
    vec![
        // Right-padded sequences (padded queries see the real keys only); 30 rows: the last
        // block has rows past the end.
        Case { batch: 3, heads: 2, seq: 5, offset: 0, lengths: vec![5, 1, 3], scale: 0.125 },
        // Rows longer than a warp (lanes stride the row) and a padded one.
        Case { batch: 2, heads: 3, seq: 70, offset: 0, lengths: vec![70, 41], scale: 0.125 },
        // Continuing a KV cache: 4 new positions after 9 cached.
        Case { batch: 1, heads: 9, seq: 4, offset: 9, lengths: vec![4], scale: 1.0 },
    ]
}

#[test]
fn f32_probabilities_match_the_masked_softmax_definition() {
    let dir = tempfile::tempdir().unwrap();
    let exe = emulator(dir.path());
    let mut scores_of = random_scores(3);
    for case in cases() {
        let scores = scores_of(&case);
        let mut input = case.header(false);
        input.extend(scores.iter().flat_map(|v| v.to_le_bytes()));
        let got: Vec<f32> = run(&exe, dir.path(), input).chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        let expected = case.expected(&scores);
        assert_eq!(got.len(), expected.len());
        for (at, (&g, &e)) in got.iter().zip(&expected).enumerate() {
            assert!((f64::from(g) - e).abs() <= 1e-6 * e.max(1e-3), "seq {} offset {} at {at}: {g} vs {e}", case.seq, case.offset);
            if e == 0.0 {
                assert_eq!(g, 0.0, "a hidden key has probability 0 (at {at})");
            }
        }
        for row in got.chunks(case.kv_len()) {
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "a row sums to {sum}");
        }
    }
}

#[test]
fn bf16_probabilities_are_the_definition_rounded_once() {
    let dir = tempfile::tempdir().unwrap();
    let exe = emulator(dir.path());
    let mut scores_of = random_scores(5);
    let mut rounded_differently = 0;
    let mut total = 0;
    for case in cases() {
        let scores: Vec<bf16> = scores_of(&case).into_iter().map(bf16::from_f32).collect();
        let mut input = case.header(true);
        input.extend(scores.iter().flat_map(|v| v.to_bits().to_le_bytes()));
        let got: Vec<bf16> = run(&exe, dir.path(), input).chunks(2).map(|b| bf16::from_bits(u16::from_le_bytes(b.try_into().unwrap()))).collect();
        let as_f32: Vec<f32> = scores.iter().map(|v| v.to_f32()).collect();
        for (at, (g, e)) in got.iter().zip(case.expected(&as_f32)).enumerate() {
            let want = bf16::from_f64(e);
            // The kernel computes in f32: a value within f32 error of a rounding boundary may
            // round to the neighbour; never further.
            let apart = (i32::from(g.to_bits() as i16) - i32::from(want.to_bits() as i16)).abs();
            assert!(apart <= 1, "seq {} at {at}: {g} vs {want} ({e})", case.seq);
            rounded_differently += (apart == 1) as usize;
            total += 1;
        }
    }
    assert!(rounded_differently * 100 < total, "{rounded_differently} of {total} values one bf16 step off");
}
