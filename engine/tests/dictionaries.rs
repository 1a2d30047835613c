//! Dictionaries: every format against the numpy reference (reference/dictionary_reference.py),
//! bad files, and training (round trip, determinism, resume).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use loupe_engine::dictionary::{Format, SparseActs};
use loupe_engine::{BlockSite, Dictionary, FeatureLens, HookPoint, Model};

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

#[test]
fn a_gpu_batch_plan_counts_the_forward_the_hooks_and_the_largest_encode_and_the_cpu_plans_none() {
    use loupe_engine::dictionary::Activation;
    use loupe_engine::memory;
    let model = tiny_llama();
    let config = model.config().clone();
    let topk = Arc::new(Dictionary::load_for_model(&dictionary_fixtures().join("saelens_topk"), &config).unwrap());
    let jumprelu = Arc::new(Dictionary::load_for_model(&dictionary_fixtures().join("saelens_jumprelu"), &config).unwrap());
    let Activation::TopK { k } = *topk.activation() else { panic!("saelens_topk is a TopK dictionary") };
    // Inputs (f32, three copies), four [d_sae] temporaries for TopK and six for a threshold
    // activation, the output, and the selection's room (k, or 1,024 capped at d_sae).
    let (d_in, d_sae) = (topk.info().d_in, topk.info().d_sae);
    assert_eq!(memory::encode_bytes_per_token(&topk), 4 * (3 * d_in + 4 * d_sae + d_in) + 8 * k.min(d_sae));
    assert_eq!(memory::encode_bytes_per_token(&jumprelu), 4 * (3 * d_in + 6 * d_sae + d_in) + 8 * d_sae);
    let mut hooks: Vec<_> = [&topk, &jumprelu].iter().flat_map(|d| [d.info().hook_in, d.info().hook_out]).collect();
    hooks.sort();
    hooks.dedup();
    let lens = FeatureLens::new(model, vec![("topk".into(), topk.clone()), ("jumprelu".into(), jumprelu.clone())]).unwrap();
    let encode = memory::encode_bytes_per_token(&topk).max(memory::encode_bytes_per_token(&jumprelu));
    // f32 on the CPU: each captured hook is held and handed back in 4 + 4 bytes a value.
    let per_token = memory::forward_bytes_per_token(&config, 4, 16) + hooks.len() * config.hidden_size * 8 + encode;
    assert_eq!(memory::bytes_per_window(&lens, 16), 16 * per_token);
    assert!(memory::gpu_batch(&lens, 16).unwrap().is_none(), "the CPU has no device memory to plan a batch by");
}
