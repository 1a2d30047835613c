//! Synthetic dictionaries of any size, for scale benchmarks of the store and the service
//! (a real 1M-feature index would take days on a CPU).

use crate::records::{DictionaryCommit, DictionaryRecord, ExampleKind, ExampleRecord, FeatureRecord, LogitEffect, Neighbour};

/// SplitMix64 stream: deterministic pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Pronounceable pseudo-words ("kalo", "temira", ...): a vocabulary with a Zipf-like use.
fn vocabulary(size: usize) -> Vec<String> {
    const SYLLABLES: [&str; 20] = ["ka", "lo", "mi", "ra", "te", "su", "no", "vi", "pe", "do", "ga", "li", "zo", "fu", "be", "ni", "sa", "to", "we", "ru"];
    (0..size)
        .map(|i| {
            let mut word = String::new();
            let mut n = i + 20;
            while n > 0 {
                word.push_str(SYLLABLES[n % 20]);
                n /= 20;
            }
            word
        })
        .collect()
}

/// The sizes of a synthetic dictionary's rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Decoder width (the model's hidden size).
    pub d: usize,
    /// Top examples per feature.
    pub top_examples: usize,
    /// Interval samples per feature (spread over up to 10 intervals).
    pub interval_samples: usize,
    /// Tokens per example window.
    pub window: usize,
    /// Logit effects per side.
    pub logits: usize,
}

impl Shape {
    /// Small rows: one top example and one interval sample of 14 tokens, 3 logits per side.
    pub fn small(d: usize) -> Self {
        Shape { d, top_examples: 1, interval_samples: 1, window: 14, logits: 3 }
    }

    /// What `loupe index` stores for the embedded default: 576-wide decoders, 32 top
    /// examples and 5 samples in each of 10 intervals, of 128-token windows, 10 logits per side.
    pub fn real() -> Self {
        Shape { d: 576, top_examples: 32, interval_samples: 50, window: 128, logits: 10 }
    }
}

/// A synthetic dictionary, generated feature by feature (each from its own seed), so that
/// stores larger than memory can be written a chunk of examples at a time.
pub struct Synthetic {
    id: String,
    n_features: usize,
    shape: Shape,
    seed: u64,
    words: Vec<String>,
}

impl Synthetic {
    pub fn new(id: &str, n_features: usize, shape: Shape, seed: u64) -> Self {
        Synthetic { id: id.into(), n_features, shape, seed, words: vocabulary(20_000) }
    }

    /// Feature `feature`'s own stream: a hash of (seed, feature, stream), so that the streams
    /// of neighbouring features are not shifted copies of one another.
    fn rng(&self, feature: u32, stream: u64) -> Rng {
        Rng(Rng(Rng(self.seed).next() ^ (u64::from(feature) << 2 | stream)).next())
    }

    fn word(&self, rng: &mut Rng) -> String {
        // Squaring a uniform index favours frequent words, roughly like text.
        let u = rng.unit();
        self.words[((u * u) * self.words.len() as f32) as usize % self.words.len()].clone()
    }

    pub fn dictionary(&self) -> DictionaryRecord {
        DictionaryRecord {
            dictionary_id: self.id.clone(),
            model_id: "synthetic".into(),
            model_checksum: "synthetic".into(),
            hook: "blocks.0.hook_resid_post".into(),
            hook_out: "blocks.0.hook_resid_post".into(),
            layer: Some(0),
            architecture: "synthetic".into(),
            d_in: self.shape.d as u32,
            d_sae: self.n_features as u32,
            source_format: "synthetic".into(),
            source_checksum: format!("seed-{}", self.seed),
            manifest: serde_json::json!({"synthetic": true, "generator": 2, "seed": self.seed, "shape": format!("{:?}", self.shape)}),
            created_at: crate::clock::now_rfc3339(),
        }
    }

    fn max_activation(&self, f: u32) -> f32 {
        1.0 + 20.0 * self.rng(f, 2).unit()
    }

    /// Feature `f`'s statistics, searchable words, logits, neighbours and decoder.
    pub fn feature(&self, f: u32) -> FeatureRecord {
        let mut rng = self.rng(f, 0);
        let max = self.max_activation(f);
        let top_tokens: Vec<String> = (0..4).map(|_| self.word(&mut rng)).collect();
        let context: Vec<String> = (0..14).map(|_| self.word(&mut rng)).collect();
        let density = 1e-5 + 0.05 * f64::from(rng.unit()).powi(3);
        let mut logits =
            |sign: f32| -> Vec<LogitEffect> { (0..self.shape.logits).map(|_| LogitEffect { token: self.word(&mut rng), token_id: rng.below(49_152) as u32, value: sign * rng.unit() }).collect() };
        let (top_logits, bottom_logits) = (logits(1.0), logits(-1.0));
        let decoder: Vec<f32> = (0..self.shape.d).map(|_| rng.unit() - 0.5).collect();
        FeatureRecord {
            dictionary_id: self.id.clone(),
            feature: f,
            max_activation: max,
            mean_activation: max * 0.3,
            density,
            fire_count: (density * 1e7) as u64,
            histogram_width: max / 48.0,
            histogram_counts: (0..64).map(|i| if i < 49 { (49 - i) as u64 * 3 } else { 0 }).collect(),
            top_logits,
            bottom_logits,
            neighbours: (0..10).map(|_| Neighbour { feature: rng.below(self.n_features) as u32, cosine: rng.unit() }).collect(),
            top_tokens,
            top_contexts: vec![context.join(" ")],
            decoder_norm: 1.0,
            decoder,
            label: (f % 10 == 0).then(|| format!("{} {}", self.word(&mut rng), self.word(&mut rng))),
        }
    }

    /// Feature `f`'s top examples (strongest first) and interval samples, with the variety
    /// of real rows (positions, windows, documents), so that the tables encode like real ones.
    pub fn examples(&self, f: u32) -> Vec<ExampleRecord> {
        let mut rng = self.rng(f, 1);
        let max = self.max_activation(f);
        let width = max / 10.0;
        let mut kinds: Vec<(ExampleKind, u32, f32)> = (0..self.shape.top_examples).map(|rank| (ExampleKind::Top, rank as u32, max * (1.0 - 0.01 * rank as f32))).collect();
        let per_interval = self.shape.interval_samples.div_ceil(10).max(1);
        for sample in 0..self.shape.interval_samples {
            let interval = if self.shape.interval_samples < 10 { rng.below(10) } else { sample / per_interval } as u32;
            let kind = ExampleKind::Interval { index: interval, low: interval as f32 * width, high: (interval + 1) as f32 * width };
            kinds.push((kind, (sample % per_interval) as u32, (interval as f32 + 0.5) * width));
        }
        kinds
            .into_iter()
            .map(|(kind, rank, peak)| {
                let tokens: Vec<String> = (0..self.shape.window).map(|_| format!(" {}", self.word(&mut rng))).collect();
                let position = 1 + rng.below(tokens.len() - 1);
                ExampleRecord {
                    dictionary_id: self.id.clone(),
                    feature: f,
                    kind,
                    rank,
                    max_activation: peak,
                    max_position: position as u32,
                    window: rng.below(1 << 40) as u64,
                    token_ids: (0..tokens.len()).map(|_| rng.below(49_152) as u32).collect(),
                    activations: (0..tokens.len())
                        .map(|i| {
                            if i == position {
                                peak
                            } else if rng.below(4) == 0 {
                                peak * rng.unit() * 0.5
                            } else {
                                0.0
                            }
                        })
                        .collect(),
                    tokens,
                    document_id: rng.below(1 << 30) as u64,
                    document_offset: rng.below(4096) as u32,
                }
            })
            .collect()
    }

    pub fn features(&self) -> Vec<FeatureRecord> {
        (0..self.n_features as u32).map(|f| self.feature(f)).collect()
    }

    /// Every feature's examples, `features_per_chunk` features at a time.
    pub fn example_chunks(&self, features_per_chunk: usize) -> impl Iterator<Item = Vec<ExampleRecord>> + '_ {
        (0..self.n_features as u32).step_by(features_per_chunk.max(1)).map(move |start| {
            let end = (start as usize + features_per_chunk.max(1)).min(self.n_features) as u32;
            (start..end).flat_map(|f| self.examples(f)).collect()
        })
    }
}

/// A whole dictionary in memory: `n_features` features with `d`-dimensional decoders and
/// [`Shape::small`] rows.
pub fn synthetic_dictionary(id: &str, n_features: usize, d: usize, seed: u64) -> DictionaryCommit {
    let synthetic = Synthetic::new(id, n_features, Shape::small(d), seed);
    DictionaryCommit { dictionary: synthetic.dictionary(), features: synthetic.features(), examples: synthetic.example_chunks(n_features.max(1)).flatten().collect() }
}

/// Words that occur in a synthetic store (for benchmark queries).
pub fn query_words(count: usize) -> Vec<String> {
    vocabulary(20_000).into_iter().step_by(37).take(count).collect()
}
