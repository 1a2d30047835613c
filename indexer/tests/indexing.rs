//! The indexer on the real model and the default dictionary, against a brute-force
//! reference that keeps every activation of a small corpus in memory.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use loupe_corpus::CorpusSource;
use loupe_corpus::TokenWindows;
use loupe_engine::{Dictionary, Hooks, Logits, Model, TokenBatch};
use loupe_indexer::reducer::{priority, HISTOGRAM_BINS, INTERVAL_BINS};
use loupe_indexer::{DictionarySpec, Job, JobConfig, JobHooks, Outcome, RunOptions, Shard};
use loupe_store::{ExampleKind, ExampleRecord, StoreReader};

/// Where scripts/setup.sh puts the default model and the demo corpora (`$LOUPE_HOME`, else
/// `~/.cache/loupe`; the CLI's default, loupe_query::config, says the same).
fn setup_home() -> PathBuf {
    std::env::var_os("LOUPE_HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/loupe"))
}

const CONTEXT: usize = 32;
const BATCH: usize = 4;
const TOP_K: usize = 4;
const INTERVAL_SAMPLES: usize = 2;
const SEED: u64 = 5;

fn model_path() -> PathBuf {
    let path = setup_home().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run scripts/setup.sh", path.display());
    path
}

fn default_dictionary() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dictionaries/smollm2-135m-instruct/blocks.9.hook_resid_post-topk-4608")
}

/// The first `lines` documents of the demo corpus.
fn small_corpus(dir: &Path, lines: usize) -> PathBuf {
    let demo = setup_home().join("corpora").join("demo.jsonl");
    assert!(demo.exists(), "{} is missing: run scripts/setup.sh", demo.display());
    let path = dir.join("small.jsonl");
    let mut out = std::fs::File::create(&path).unwrap();
    for line in std::io::BufReader::new(std::fs::File::open(&demo).unwrap()).lines().take(lines) {
        writeln!(out, "{}", line.unwrap()).unwrap();
    }
    path
}

/// One example of the reference: (max activation, window, first max position, dense acts).
type Reference = (f32, u64, u32, Vec<f32>);

/// The width of `bins` equal bins from 0 that cover `max` (the published rule: the smallest
/// power of two 2^e with max < bins * 2^e), and the bin of `value`.
fn bin_width(max: f32, bins: usize) -> f64 {
    let mut width = 1f64;
    while f64::from(max) >= bins as f64 * width {
        width *= 2.0;
    }
    while f64::from(max) < bins as f64 * width / 2.0 {
        width /= 2.0;
    }
    width
}

fn bin_of(value: f32, width: f64, bins: usize) -> usize {
    ((f64::from(value) / width).floor() as usize).min(bins - 1)
}

/// Top `k` token ids of `row`, strongest first.
fn top_ids(row: &[f64], k: usize) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..row.len()).collect();
    ids.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    ids.truncate(k);
    ids
}

#[test]
fn top_examples_equal_a_brute_force_reference_and_reencode_alone() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = small_corpus(dir.path(), 160);
    let model = Model::load(&model_path()).unwrap();
    let dictionary = Dictionary::load_for_model(&default_dictionary(), model.config()).unwrap();

    // Only full windows: the reference packer (the engine's) drops a partial last window.
    let windows = TokenWindows::from_file(&corpus, model.tokenizer().unwrap(), CONTEXT, None).unwrap();
    let n_windows = windows.len() - windows.len() % BATCH;
    assert!(n_windows >= 64, "corpus too small: {n_windows} windows");

    let mut config = JobConfig::new(dir.path().join("store"));
    config.corpus = vec![CorpusSource::new(&corpus)];
    config.dictionaries = vec![DictionarySpec { path: default_dictionary(), id: Some("default".into()) }];
    config.context = CONTEXT;
    config.batch_size = Some(BATCH);
    config.top_k = TOP_K;
    config.interval_samples = INTERVAL_SAMPLES;
    config.seed = SEED;
    config.max_tokens = Some((n_windows * (CONTEXT - 1)) as u64);
    let job = Job::prepare(config, &model_path()).unwrap();
    let interrupted = AtomicBool::new(false);
    let report = job.run(RunOptions { shard: Shard::WHOLE, append: false, force: false }, &JobHooks { progress: &|_, _| {}, interrupted: &interrupted }).unwrap();
    let Outcome::Committed(committed) = &report.outcome else { panic!("{report:?}") };
    assert_eq!(report.windows, n_windows as u64);
    // The same job over the same, unchanged corpus is already done: no pass, no commit.
    let again = job.run(RunOptions { shard: Shard::WHOLE, append: false, force: false }, &JobHooks { progress: &|_, _| {}, interrupted: &interrupted }).unwrap();
    let Outcome::UpToDate(current) = &again.outcome else { panic!("{again:?}") };
    assert_eq!((current.generation, again.windows), (committed.generation, 0));
    assert_eq!(futures::executor::block_on(loupe_store::layout::current(job.store())).unwrap().unwrap().generation, committed.generation);

    // Brute force: every activation of every window, batched as the job batches them (so
    // the numbers are bit-identical), then sorted per feature.
    let d_sae = dictionary.info().d_sae;
    let hook = dictionary.info().hook_in;
    let mut all: Vec<Vec<Reference>> = vec![Vec::new(); d_sae];
    let mut fire_count = vec![0u64; d_sae];
    // Every non-zero activation at a counted position (BOS excluded), per feature.
    let mut fired_values: Vec<Vec<f32>> = vec![Vec::new(); d_sae];
    for start in (0..n_windows).step_by(BATCH) {
        let sequences: Vec<Vec<u32>> = (start..start + BATCH).map(|i| windows.window(i).to_vec()).collect();
        let batch = TokenBatch::right_padded(&sequences, 0).unwrap();
        let out = model.forward(&batch, &Hooks::new().capture(hook), Logits::None, None).unwrap();
        let x = out.captured[&hook].reshape((BATCH * CONTEXT, dictionary.info().d_in)).unwrap();
        let dense: Vec<Vec<f32>> = dictionary.encode(&x).unwrap().features.to_dense().unwrap().to_vec2().unwrap();
        for b in 0..BATCH {
            let rows = &dense[b * CONTEXT..(b + 1) * CONTEXT];
            for f in 0..d_sae {
                let acts: Vec<f32> = rows.iter().map(|r| r[f]).collect();
                fire_count[f] += acts[1..].iter().filter(|v| **v > 0.0).count() as u64;
                fired_values[f].extend(acts[1..].iter().filter(|v| **v > 0.0));
                let mut best: Option<(f32, u32)> = None;
                for (p, &v) in acts.iter().enumerate().skip(1) {
                    if v > 0.0 && best.is_none_or(|(m, _)| v > m) {
                        best = Some((v, p as u32));
                    }
                }
                if let Some((m, p)) = best {
                    all[f].push((m, (start + b) as u64, p, acts));
                }
            }
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = rt.block_on(StoreReader::open(job.store())).unwrap();
    let features = rt.block_on(store.features("default")).unwrap();
    let examples = rt.block_on(store.examples("default", None)).unwrap();
    let mut by_feature: BTreeMap<u32, Vec<&ExampleRecord>> = BTreeMap::new();
    for e in &examples {
        by_feature.entry(e.feature).or_default().push(e);
    }
    assert_eq!(features.len(), d_sae);
    let tokens = (n_windows * (CONTEXT - 1)) as f64;
    let mut fired = 0;
    for f in 0..d_sae {
        let mut expected = all[f].clone();
        expected.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        expected.truncate(TOP_K);
        let stored = by_feature.get(&(f as u32)).cloned().unwrap_or_default();
        let top: Vec<Reference> = stored.iter().filter(|e| e.kind == ExampleKind::Top).map(|e| (e.max_activation, e.window, e.max_position, e.activations.clone())).collect();
        assert_eq!(top, expected, "feature {f}");
        let record = &features[f];
        assert_eq!(record.fire_count, fire_count[f], "feature {f}");
        assert_eq!(record.density, fire_count[f] as f64 / tokens);
        assert_eq!(record.histogram_counts.iter().sum::<u64>(), fire_count[f]);
        assert_eq!(record.max_activation, expected.first().map_or(0.0, |e| e.0));
        for e in &stored {
            assert_eq!(e.token_ids, windows.window(e.window as usize), "feature {f} window {}", e.window);
            if let ExampleKind::Interval { low, high, .. } = e.kind {
                assert!(e.max_activation >= low && e.max_activation < high, "{e:?}");
            }
        }
        // Mean of the non-zero activations, and the histogram by the published bin rule.
        let values = &fired_values[f];
        let mean = if values.is_empty() { 0.0 } else { values.iter().map(|v| f64::from(*v)).sum::<f64>() / values.len() as f64 };
        assert!((f64::from(record.mean_activation) - mean).abs() <= 1e-6 * mean.max(1.0), "feature {f}: mean {} vs {mean}", record.mean_activation);
        if let Some(&max) = expected.first().map(|e| &e.0) {
            let width = bin_width(max, HISTOGRAM_BINS);
            let mut counts = vec![0u64; HISTOGRAM_BINS];
            values.iter().for_each(|&v| counts[bin_of(v, width, HISTOGRAM_BINS)] += 1);
            assert_eq!((f64::from(record.histogram_width), &record.histogram_counts), (width, &counts), "feature {f}: histogram");
            // Interval samples: windows binned by their max into equal intervals; in each,
            // the `interval_samples` windows of smallest seeded priority (ties: window).
            let width = bin_width(max, INTERVAL_BINS);
            let mut by_interval: BTreeMap<usize, Vec<(u64, u64)>> = BTreeMap::new();
            for (m, window, _, _) in &all[f] {
                by_interval.entry(bin_of(*m, width, INTERVAL_BINS)).or_default().push((priority(SEED, f as u32, *window), *window));
            }
            let expected_samples: BTreeMap<usize, Vec<u64>> = by_interval
                .into_iter()
                .map(|(interval, mut windows)| {
                    windows.sort();
                    (interval, windows.into_iter().take(INTERVAL_SAMPLES).map(|(_, w)| w).collect())
                })
                .collect();
            let mut stored_samples: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
            for e in &stored {
                if let ExampleKind::Interval { index, low, high } = e.kind {
                    assert_eq!((f64::from(low), f64::from(high)), (index as f64 * width, (index + 1) as f64 * width), "feature {f}: interval {index} bounds");
                    stored_samples.entry(index as usize).or_default().push(e.window);
                }
            }
            assert_eq!(stored_samples, expected_samples, "feature {f}: interval samples");
        }
        fired += usize::from(!expected.is_empty());
    }
    assert!(fired >= 200, "only {fired} features fired");

    // Logit effects by their definition: W_dec[f] @ W_U (no final norm), in f64, for a sample
    // of features: the stored top and bottom 10 are the largest and smallest entries.
    let unembedding = model.unembedding().to_dtype(candle_core::DType::F32).unwrap();
    let d_model = dictionary.info().d_out;
    let w_u: Vec<Vec<f32>> = if unembedding.dims()[0] == d_model { unembedding.t().unwrap().to_vec2().unwrap() } else { unembedding.to_vec2().unwrap() };
    for f in (0..d_sae).step_by(d_sae / 12) {
        let decoder = dictionary.decoder_row(f);
        let logits: Vec<f64> = w_u.iter().map(|column| column.iter().zip(decoder).map(|(u, w)| f64::from(*u) * f64::from(*w)).sum()).collect();
        let negated: Vec<f64> = logits.iter().map(|v| -v).collect();
        let scale = logits.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (stored, reference) in [(&features[f].top_logits, top_ids(&logits, 10)), (&features[f].bottom_logits, top_ids(&negated, 10))] {
            assert_eq!(stored.len(), 10);
            for (effect, &id) in stored.iter().zip(&reference) {
                assert!((f64::from(effect.value) - logits[id]).abs() <= 1e-4 * scale, "feature {f}: logit effect {effect:?} vs token {id} = {}", logits[id]);
                assert!((f64::from(effect.value) - logits[effect.token_id as usize]).abs() <= 1e-4 * scale, "feature {f}: {effect:?} is not W_dec @ W_U");
            }
        }
    }

    // Each stored top example, run through the engine alone, gives back its activations.
    let sample: Vec<u32> = (0..d_sae as u32).filter(|f| !all[*f as usize].is_empty()).step_by(fired / 200).take(200).collect();
    assert_eq!(sample.len(), 200);
    let mut worst = 0f32;
    for &f in &sample {
        for e in by_feature[&f].iter().filter(|e| e.kind == ExampleKind::Top) {
            let batch = TokenBatch::single(&e.token_ids).unwrap();
            let out = model.forward(&batch, &Hooks::new().capture(hook), Logits::None, None).unwrap();
            let x = out.captured[&hook].reshape((e.token_ids.len(), dictionary.info().d_in)).unwrap();
            let dense: Vec<Vec<f32>> = dictionary.encode(&x).unwrap().features.to_dense().unwrap().to_vec2().unwrap();
            for (p, row) in dense.iter().enumerate() {
                worst = worst.max((row[f as usize] - e.activations[p]).abs());
            }
        }
    }
    assert!(worst <= 1e-4, "re-encoded activations differ by {worst}");
}
