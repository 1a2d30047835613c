//! Dictionaries: every format against the numpy reference (reference/dictionary_reference.py),
//! bad files, and training (round trip, determinism, resume).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use loupe_engine::corpus::TokenWindows;
use loupe_engine::dictionary::train::{self, TrainConfig};
use loupe_engine::dictionary::{Format, SparseActs};
use loupe_engine::{BlockSite, Dictionary, EngineError, HookPoint, Model};

fn dictionary_fixtures() -> PathBuf {
    common::fixtures().join("dictionaries")
}

/// Every fixture folder (those holding expected.safetensors), with the path to load.
fn cases() -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let mut stack = vec![dictionary_fixtures()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            }
        }
        if dir.join("expected.safetensors").exists() {
            let name = dir.strip_prefix(dictionary_fixtures()).unwrap().display().to_string();
            let load_path = if dir.join("params.npz").exists() { dir.join("params.npz") } else { dir.clone() };
            found.push((name, load_path));
        }
    }
    found.sort();
    found
}

fn expected(case_dir: &Path) -> HashMap<String, Tensor> {
    let dir = if case_dir.is_file() { case_dir.parent().unwrap() } else { case_dir };
    candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap()
}

/// max |a - b| / max |b|.
fn relative_error(actual: &Tensor, reference: &Tensor) -> f32 {
    let (err, scale) = common::max_abs_error(actual, reference);
    err / scale.max(f32::MIN_POSITIVE)
}

fn sparse_from_dense(dense: &Tensor) -> SparseActs {
    let rows: Vec<Vec<f32>> = dense.to_vec2().unwrap();
    let d_sae = dense.dim(1).unwrap();
    SparseActs::from_rows(d_sae, rows.iter().map(|r| r.iter().enumerate().filter(|(_, v)| **v != 0.0).map(|(i, v)| (i as u32, *v)).collect()).collect())
}

#[test]
fn every_format_matches_the_numpy_reference() {
    let cases = cases();
    assert!(cases.len() >= 19, "expected every format's fixture, found {}", cases.len());
    for (name, path) in cases {
        let dictionary = Dictionary::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let reference = expected(&path);
        let x = &reference["x"];
        let encoding = dictionary.encode(x).unwrap();
        let acts = encoding.features.to_dense().unwrap();
        let encode_error = relative_error(&acts, &reference["acts"]);
        let reconstruction_error = relative_error(&dictionary.decode(&encoding).unwrap(), &reference["reconstruction"]);
        let mut probe = encoding.clone();
        probe.features = sparse_from_dense(&reference["probe"]);
        let decode_error = relative_error(&dictionary.decode(&probe).unwrap(), &reference["decoded"]);
        println!("{name}: encode {encode_error:.2e} decode {decode_error:.2e} reconstruction {reconstruction_error:.2e}");
        assert!(encode_error <= 1e-5, "{name}: encode relative error {encode_error}");
        assert!(decode_error <= 1e-5, "{name}: decode relative error {decode_error}");
        assert!(reconstruction_error <= 1e-5, "{name}: reconstruction relative error {reconstruction_error}");
        // The same active set, not just close values: no latent may flip on or off.
        let expected_active: Vec<Vec<f32>> = reference["acts"].to_vec2().unwrap();
        for (t, row) in expected_active.iter().enumerate() {
            let (indices, _) = encoding.features.token(t);
            let expected_indices: Vec<u32> = row.iter().enumerate().filter(|(_, v)| **v != 0.0).map(|(i, _)| i as u32).collect();
            assert_eq!(indices, expected_indices.as_slice(), "{name}: token {t} active latents");
        }
    }
}

#[test]
fn hooks_and_formats_are_read_from_each_layout() {
    let load = |case: &str| Dictionary::load(&dictionary_fixtures().join(case)).unwrap();
    let resid = HookPoint::resid_post(1);
    let mlp_in = HookPoint::block(1, BlockSite::Ln2Normalized);
    let mlp_out = HookPoint::block(1, BlockSite::MlpOut);
    let table = [
        ("saelens_topk", Format::SaeLens, resid, resid),
        ("saelens_legacy_topk", Format::SaeLensLegacy, resid, resid),
        ("saelens_skip_transcoder", Format::SaeLens, mlp_in, mlp_out),
        ("gemma_scope/gemma-scope-tiny-res/layer_1/width_80/average_l0_9/params.npz", Format::GemmaScope, resid, resid),
        ("gemma_scope2_transcoder", Format::GemmaScope2, mlp_in, mlp_out),
        ("sparsify_topk/layers.1", Format::Sparsify, resid, resid),
        ("sparsify_skip_transcoder/layers.1.mlp", Format::Sparsify, mlp_in, mlp_out),
    ];
    for (case, format, hook_in, hook_out) in table {
        let info = load(case).info().clone();
        assert_eq!((info.format, info.hook_in, info.hook_out), (format, hook_in, hook_out), "{case}");
        assert_eq!((info.d_in, info.d_sae), (64, 80), "{case}");
    }
    assert_eq!(load("saelens_legacy_topk").info().architecture, "topk");
}

fn tiny_llama() -> Model {
    Model::load(&common::fixtures().join("tiny_llama")).unwrap()
}

#[test]
fn dictionaries_are_checked_against_the_model_at_load_time() {
    let model = tiny_llama();
    let config = model.config();
    Dictionary::load_for_model(&dictionary_fixtures().join("saelens_topk"), config).expect("widths match tiny_llama");

    // A dictionary for a wider model: d_in 64 vs hidden size 32.
    let mut narrow = config.clone();
    narrow.hidden_size = 32;
    let err = Dictionary::load_for_model(&dictionary_fixtures().join("saelens_topk"), &narrow).err().unwrap().to_string();
    assert!(err.contains("d_in is 64") && err.contains("width 32") && err.contains("blocks.1.hook_resid_post"), "{err}");

    // A hook beyond the model's layers.
    let dir = copy_case("saelens_topk");
    edit_cfg(&dir, |cfg| cfg["metadata"]["hook_name"] = "blocks.7.hook_resid_post".into());
    let err = Dictionary::load_for_model(&dir, config).err().unwrap().to_string();
    assert!(err.contains("blocks.7.hook_resid_post") && err.contains("2 layers"), "{err}");

    // A hook name that is no hook at all.
    edit_cfg(&dir, |cfg| cfg["metadata"]["hook_name"] = "blocks.1.hook_nope".into());
    let err = Dictionary::load(&dir).err().unwrap().to_string();
    assert!(err.contains("hook_name") && err.contains("blocks.1.hook_nope"), "{err}");
}

/// A scratch copy of a fixture case.
fn copy_case(case: &str) -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep().join(case);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(dictionary_fixtures().join(case)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn edit_cfg(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("cfg.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, cfg.to_string()).unwrap();
}

fn edit_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("sae_weights.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

#[test]
fn bad_dictionary_files_are_clear_errors() {
    let err_of = |dir: &Path| Dictionary::load(dir).err().expect("must fail").to_string();

    let dir = copy_case("saelens_jumprelu");
    edit_weights(&dir, |t| {
        t.remove("threshold");
    });
    let err = err_of(&dir);
    assert!(err.contains("'threshold' is missing") && err.contains("jumprelu"), "{err}");

    let dir = copy_case("saelens_topk");
    edit_weights(&dir, |t| {
        let w = t["W_dec"].t().unwrap().contiguous().unwrap();
        t.insert("W_dec".into(), w);
    });
    let err = err_of(&dir);
    assert!(err.contains("W_dec") && err.contains("[64, 80]") && err.contains("transposed"), "{err}");

    let dir = copy_case("saelens_topk");
    edit_weights(&dir, |t| {
        let mut values: Vec<f32> = t["W_enc"].flatten_all().unwrap().to_vec1().unwrap();
        values[100] = f32::NAN;
        t.insert("W_enc".into(), Tensor::from_vec(values, (64, 80), &Device::Cpu).unwrap());
    });
    let err = err_of(&dir);
    assert!(err.contains("W_enc") && err.contains("NaN") && err.contains("index 100"), "{err}");

    let dir = copy_case("saelens_topk");
    edit_cfg(&dir, |cfg| cfg["architecture"] = "matryoshka_hyper".into());
    let err = err_of(&dir);
    assert!(err.contains("unknown architecture 'matryoshka_hyper'") && err.contains("jumprelu"), "{err}");

    // cfg.json says d_in 48 but the weights have 64.
    let dir = copy_case("saelens_topk");
    edit_cfg(&dir, |cfg| cfg["d_in"] = 48.into());
    let err = err_of(&dir);
    assert!(err.contains("W_enc") && err.contains("[64, 80]") && err.contains("[48, 80]"), "{err}");

    let dir = copy_case("saelens_topk");
    edit_cfg(&dir, |cfg| {
        cfg.as_object_mut().unwrap().remove("k");
    });
    let err = err_of(&dir);
    assert!(err.contains("'k'") && err.contains("topk"), "{err}");

    let dir = copy_case("saelens_topk");
    std::fs::write(dir.join("sae_weights.safetensors"), b"not a safetensors file").unwrap();
    let err = err_of(&dir);
    assert!(err.contains("sae_weights.safetensors") && err.contains("safetensors"), "{err}");

    let empty = tempfile::tempdir().unwrap();
    let err = err_of(empty.path());
    assert!(err.contains("expected a SAELens folder"), "{err}");
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
    assert!(matches!(err, EngineError::Interrupted { .. }), "{err}");
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

/// The shipped default dictionary (dictionaries/…), on the default model.
fn default_dictionary_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dictionaries/smollm2-135m-instruct/blocks.9.hook_resid_post-topk-4608")
}

#[test]
fn the_default_dictionary_encodes_as_saelens_does() {
    let dictionary = Dictionary::load_for_model(&default_dictionary_dir(), common::smollm2().config()).unwrap();
    assert_eq!(dictionary.info().hook_in, HookPoint::resid_post(9));
    assert!(dictionary.info().d_sae >= 4608);
    // Written by reference/saelens_check.py: SAELens' own encode of real activations.
    let reference = common::load_safetensors("default_dictionary_saelens.safetensors");
    let encoding = dictionary.encode(&reference["x"]).unwrap();
    let error = relative_error(&encoding.features.to_dense().unwrap(), &reference["acts"]);
    assert!(error <= 1e-5, "encode differs from SAELens: relative error {error}");
    let error = relative_error(&dictionary.decode(&encoding).unwrap(), &reference["reconstruction"]);
    assert!(error <= 1e-5, "reconstruction differs from SAELens: relative error {error}");
}

#[test]
fn the_default_dictionary_meets_its_quality_bar_on_held_out_text() {
    let model = common::smollm2();
    let dictionary = std::sync::Arc::new(Dictionary::load_for_model(&default_dictionary_dir(), model.config()).unwrap());
    let heldout = loupe_engine::loupe_home().join("corpora").join("demo-heldout.jsonl");
    assert!(heldout.exists(), "{} is missing: run scripts/setup.sh", heldout.display());
    let windows = TokenWindows::from_file(&heldout, model.tokenizer().unwrap(), 128, Some(16 * 128)).unwrap();
    let report = loupe_engine::dictionary::eval::evaluate(model, dictionary, &windows, 8, |_| {}).unwrap();
    println!("{report:?}");
    assert!(report.explained_variance >= 0.7, "explained variance {}", report.explained_variance);
    assert!(report.ce_loss_recovered >= 0.8, "CE loss recovered {}", report.ce_loss_recovered);
    assert!((report.l0 - 32.0).abs() < 1e-9, "a TopK-32 dictionary: L0 {}", report.l0);
}

#[test]
fn decoding_edited_features_checks_them() {
    let dictionary = Dictionary::load(&dictionary_fixtures().join("saelens_topk")).unwrap();
    let x = Tensor::randn(0f32, 1.0, (3, 64), &Device::Cpu).unwrap();
    let mut encoding = dictionary.encode(&x).unwrap();
    // Steering: set a feature on one token; the output moves along that feature's decoder row.
    let before: Vec<Vec<f32>> = dictionary.decode(&encoding).unwrap().to_vec2().unwrap();
    let (indices, values) = encoding.features.token(1);
    let old = indices.iter().position(|&i| i == 7).map_or(0.0, |p| values[p]);
    encoding.features.set(1, 7, 5.0);
    let after: Vec<Vec<f32>> = dictionary.decode(&encoding).unwrap().to_vec2().unwrap();
    let row = dictionary.decoder_row(7);
    for i in 0..64 {
        assert!((after[1][i] - before[1][i] - (5.0 - old) * row[i]).abs() < 1e-5);
        assert_eq!(after[0][i], before[0][i]);
    }
    encoding.features.set(1, 80, 1.0);
    let err = dictionary.decode(&encoding).unwrap_err().to_string();
    assert!(err.contains("feature 80 does not exist") && err.contains("80 latents"), "{err}");
    encoding.features = SparseActs::from_rows(80, vec![vec![(1, 1.0)]]);
    let err = dictionary.decode(&encoding).unwrap_err().to_string();
    assert!(err.contains("1 tokens of features"), "{err}");
}
