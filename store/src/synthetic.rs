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

/// A dictionary of `n_features` features with `d`-dimensional decoders, random statistics,
/// searchable words, and two examples per feature (a top one and an interval sample).
pub fn synthetic_dictionary(id: &str, n_features: usize, d: usize, seed: u64) -> DictionaryCommit {
    let words = vocabulary(20_000);
    let mut rng = Rng(seed);
    let word = |rng: &mut Rng| {
        // Squaring a uniform index favours frequent words, roughly like text.
        let u = rng.unit();
        words[((u * u) * words.len() as f32) as usize % words.len()].clone()
    };
    let mut features = Vec::with_capacity(n_features);
    let mut examples = Vec::with_capacity(2 * n_features);
    for f in 0..n_features as u32 {
        let top_tokens: Vec<String> = (0..4).map(|_| word(&mut rng)).collect();
        let context: Vec<String> = (0..14).map(|_| word(&mut rng)).collect();
        let max = 1.0 + 20.0 * rng.unit();
        let density = 1e-5 + 0.05 * f64::from(rng.unit()).powi(3);
        let logit = |rng: &mut Rng, sign: f32, word: String| LogitEffect { token_id: rng.below(49_152) as u32, token: word, value: sign * rng.unit() };
        let top_logits = (0..3)
            .map(|_| {
                let w = word(&mut rng);
                logit(&mut rng, 1.0, w)
            })
            .collect();
        let bottom_logits = (0..3)
            .map(|_| {
                let w = word(&mut rng);
                logit(&mut rng, -1.0, w)
            })
            .collect();
        let decoder: Vec<f32> = (0..d).map(|_| rng.unit() - 0.5).collect();
        features.push(FeatureRecord {
            dictionary_id: id.into(),
            feature: f,
            max_activation: max,
            mean_activation: max * 0.3,
            density,
            fire_count: (density * 1e7) as u64,
            histogram_width: max / 48.0,
            histogram_counts: (0..64).map(|i| if i < 49 { (49 - i) as u64 * 3 } else { 0 }).collect(),
            top_logits,
            bottom_logits,
            neighbours: (0..10).map(|_| Neighbour { feature: rng.below(n_features) as u32, cosine: rng.unit() }).collect(),
            top_tokens: top_tokens.clone(),
            top_contexts: vec![context.join(" ")],
            decoder_norm: 1.0,
            decoder,
            label: (f % 10 == 0).then(|| format!("{} {}", word(&mut rng), word(&mut rng))),
        });
        let tokens: Vec<String> = context.iter().map(|w| format!(" {w}")).collect();
        // A top example and an interval sample, with the variety of real rows (ranks,
        // positions, documents), so that the table encodes like a real one.
        let interval = rng.below(10) as u32;
        let width = max / 10.0;
        let kinds = [(ExampleKind::Top, max), (ExampleKind::Interval { index: interval, low: interval as f32 * width, high: (interval + 1) as f32 * width }, (interval as f32 + 0.5) * width)];
        for (kind, peak) in kinds {
            let position = 1 + rng.below(tokens.len() - 1);
            examples.push(ExampleRecord {
                dictionary_id: id.into(),
                feature: f,
                kind,
                rank: rng.below(4) as u32,
                max_activation: peak,
                max_position: position as u32,
                window: rng.below(1 << 40) as u64,
                token_ids: (0..tokens.len()).map(|_| rng.below(49_152) as u32).collect(),
                activations: (0..tokens.len()).map(|i| if i == position { peak } else { 0.0 }).collect(),
                tokens: tokens.clone(),
                document_id: rng.below(1 << 30) as u64,
                document_offset: rng.below(4096) as u32,
            });
        }
    }
    let dictionary = DictionaryRecord {
        dictionary_id: id.into(),
        model_id: "synthetic".into(),
        model_checksum: "synthetic".into(),
        hook: "blocks.0.hook_resid_post".into(),
        hook_out: "blocks.0.hook_resid_post".into(),
        layer: Some(0),
        architecture: "synthetic".into(),
        d_in: d as u32,
        d_sae: n_features as u32,
        source_format: "synthetic".into(),
        source_checksum: format!("seed-{seed}"),
        manifest: serde_json::json!({"synthetic": true, "seed": seed}),
        created_at: crate::layout::now_rfc3339(),
    };
    DictionaryCommit { dictionary, features, examples }
}

/// Words that occur in a synthetic store (for benchmark queries).
pub fn query_words(count: usize) -> Vec<String> {
    vocabulary(20_000).into_iter().step_by(37).take(count).collect()
}
