//! Training and evaluation end to end: a TopK/BatchTopK SAE trained on the tiny Llama
//! fixture (deterministic, resumable, a valid SAELens folder), and the shipped default
//! dictionary's quality on held-out text of the demo corpus.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use loupe_corpus::TokenWindows;
use loupe_engine::dictionary::Format;
use loupe_engine::{Dictionary, HookPoint, Model};
use loupe_train::{self as train, TrainConfig, TrainError};

/// Where scripts/setup.sh puts the default model and the demo corpora (`$LOUPE_HOME`, else
/// `~/.cache/loupe`; the CLI's default, loupe_query::config, says the same).
fn setup_home() -> PathBuf {
    std::env::var_os("LOUPE_HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/loupe"))
}

fn engine_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures")
}

fn tiny_llama() -> Model {
    Model::load(&engine_fixtures().join("tiny_llama")).unwrap()
}

/// SmolLM2-135M-Instruct; missing = a failing test that says how to get it.
fn smollm2() -> Model {
    let path = setup_home().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run scripts/setup.sh", path.display());
    Model::load(&path).unwrap()
}

fn default_dictionary_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dictionaries/smollm2-135m-instruct/blocks.9.hook_resid_post-topk-4608")
}

/// A small corpus of token windows for tiny_llama (vocabulary 256), deterministic.
fn tiny_windows(n_windows: usize, context: usize) -> TokenWindows {
    let mut state = 12345u64;
    let tokens = (0..n_windows * context)
        .map(|i| {
            if i % context == 0 {
                return 1;
            }
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) % 200 + 3) as u32
        })
        .collect();
    TokenWindows { context, tokens }
}

fn tiny_config() -> TrainConfig {
    let mut config = TrainConfig::new(HookPoint::resid_post(1), 64, 128, 8, 3000);
    config.batch_tokens = 256;
    config.context = 16;
    config.buffer_windows = 40;
    config.forward_batch = 8;
    config.lr = 1e-3;
    config.dead_after_tokens = 500;
    config.warmup_steps = 2;
    config.model_name = "tiny_llama".into();
    config.dataset = "synthetic".into();
    config
}

fn read_files(dir: &Path) -> Vec<Vec<u8>> {
    ["cfg.json", "sae_weights.safetensors", "sparsity.safetensors"].iter().map(|f| std::fs::read(dir.join(f)).unwrap()).collect()
}

#[test]
fn training_writes_a_saelens_folder_that_loads_back_exactly() {
    let model = tiny_llama();
    let windows = tiny_windows(100, 16);
    let config = tiny_config();
    let out = tempfile::tempdir().unwrap();
    let first = train::train(&model, &windows, &config, out.path(), |_| true).unwrap();
    assert_eq!(first.tokens, 3000);
    assert!(first.fvu < 0.9, "the SAE learned something: fvu {}", first.fvu);

    // A valid SAELens v6 config.
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("cfg.json")).unwrap()).unwrap();
    for key in ["architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations", "reshape_activations", "k", "metadata"] {
        assert!(cfg.get(key).is_some(), "cfg.json lacks {key}");
    }
    assert_eq!(cfg["architecture"], "topk");
    assert_eq!(cfg["metadata"]["hook_name"], "blocks.1.hook_resid_post");
    assert_eq!((cfg["d_in"].as_u64(), cfg["d_sae"].as_u64(), cfg["k"].as_u64()), (Some(64), Some(128), Some(8)));
    // sparsity.safetensors holds log10 firing frequencies per token; they sum to the mean L0.
    let sparsity = candle_core::safetensors::load(out.path().join("sparsity.safetensors"), &Device::Cpu).unwrap();
    let mean_l0: f64 = sparsity["sparsity"].to_vec1::<f32>().unwrap().iter().map(|s| 10f64.powf(*s as f64) - 1e-10).sum();
    assert!(mean_l0 > 4.0 && mean_l0 <= 8.0 + 1e-3, "firing frequencies sum to {mean_l0}, expected the mean L0 (<= k = 8)");

    // Loads back, and encodes exactly as the saved weights say: topk((x - b_dec)·W_enc + b_enc).
    let dictionary = Dictionary::load_for_model(out.path(), model.config()).unwrap();
    assert_eq!(dictionary.info().format, Format::SaeLens);
    let weights = candle_core::safetensors::load(out.path().join("sae_weights.safetensors"), &Device::Cpu).unwrap();
    let x = Tensor::randn(0f32, 3.0, (20, 64), &Device::Cpu).unwrap();
    let pre = x.broadcast_sub(&weights["b_dec"]).unwrap().matmul(&weights["W_enc"]).unwrap().broadcast_add(&weights["b_enc"]).unwrap();
    let encoding = dictionary.encode(&x).unwrap();
    for (t, row) in pre.to_vec2::<f32>().unwrap().iter().enumerate() {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|a, b| row[*b].total_cmp(&row[*a]));
        let mut expected: Vec<(u32, f32)> = order[..8].iter().filter(|&&i| row[i] > 0.0).map(|&i| (i as u32, row[i])).collect();
        expected.sort_by_key(|e| e.0);
        let (indices, values) = encoding.features.token(t);
        assert_eq!(indices, expected.iter().map(|e| e.0).collect::<Vec<_>>().as_slice());
        for (v, e) in values.iter().zip(&expected) {
            assert!((v - e.1).abs() <= 1e-5 * e.1.abs().max(1.0), "{v} vs {}", e.1);
        }
    }

    // Seeded: the same run again writes identical files.
    let again = tempfile::tempdir().unwrap();
    train::train(&model, &windows, &config, again.path(), |_| true).unwrap();
    assert_eq!(read_files(out.path()), read_files(again.path()), "training is not deterministic");

    // Interrupted mid-way, then resumed from the checkpoint: the same files as without a stop.
    let resumed = tempfile::tempdir().unwrap();
    let err = train::train(&model, &windows, &config, resumed.path(), |p| p.step < 7).unwrap_err();
    assert!(matches!(err, TrainError::Interrupted { .. }), "{err}");
    assert!(resumed.path().join("checkpoint").join("state.json").exists());
    let mut resumed_at = None;
    train::train(&model, &windows, &config, resumed.path(), |p| {
        resumed_at = p.resumed_at;
        true
    })
    .unwrap();
    assert!(resumed_at.is_some_and(|t| t > 0 && t < 3000), "resumed at {resumed_at:?}");
    assert_eq!(read_files(out.path()), read_files(resumed.path()), "a resumed run differs from an uninterrupted one");
    assert!(!resumed.path().join("checkpoint").exists(), "the checkpoint is removed once the run is done");

    // Other settings with that checkpoint present are refused, not mixed.
    let clash = tempfile::tempdir().unwrap();
    train::train(&model, &windows, &config, clash.path(), |p| p.step < 7).unwrap_err();
    let mut other = config.clone();
    other.k = 4;
    let err = train::train(&model, &windows, &other, clash.path(), |_| true).unwrap_err().to_string();
    assert!(err.contains("checkpoint of a run with other settings"), "{err}");
}

#[test]
fn batchtopk_training_saves_a_jumprelu_with_its_threshold() {
    let model = tiny_llama();
    let windows = tiny_windows(100, 16);
    let mut config = tiny_config();
    config.sparsity = train::Sparsity::BatchTopK;
    let out = tempfile::tempdir().unwrap();
    train::train(&model, &windows, &config, out.path(), |_| true).unwrap();
    let dictionary = Dictionary::load(out.path()).unwrap();
    assert_eq!(dictionary.info().architecture, "jumprelu");
    let weights = candle_core::safetensors::load(out.path().join("sae_weights.safetensors"), &Device::Cpu).unwrap();
    let threshold: Vec<f32> = weights["threshold"].to_vec1().unwrap();
    assert!(threshold[0] > 0.0 && threshold.iter().all(|t| *t == threshold[0]), "one learned threshold: {}", threshold[0]);
}

#[test]
fn the_default_dictionary_meets_its_quality_bar_on_held_out_text() {
    let model = smollm2();
    let dictionary = std::sync::Arc::new(Dictionary::load_for_model(&default_dictionary_dir(), model.config()).unwrap());
    let heldout = setup_home().join("corpora").join("demo-heldout.jsonl");
    assert!(heldout.exists(), "{} is missing: run scripts/setup.sh", heldout.display());
    let windows = TokenWindows::from_file(&heldout, model.tokenizer().unwrap(), 128, Some(16 * 128)).unwrap();
    let report = loupe_train::eval::evaluate(&model, dictionary, &windows, 8, |_| {}).unwrap();
    println!("{report:?}");
    assert!(report.explained_variance >= 0.7, "explained variance {}", report.explained_variance);
    assert!(report.ce_loss_recovered >= 0.8, "CE loss recovered {}", report.ce_loss_recovered);
    assert!((report.l0 - 32.0).abs() < 1e-9, "a TopK-32 dictionary: L0 {}", report.l0);
}
