//! The Hugging Face safetensors path against transformers (a random 2-layer Llama with an
//! untied lm_head, written by reference/engine_parity.py), and bad inputs: each must be a
//! clear error naming the file, tensor or hook, never a panic.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use common::{assert_close, fixtures, load_safetensors};
use loupe_engine::{EngineError, HookPoint, Hooks, Logits, Model, TokenBatch};

#[test]
fn hugging_face_folder_matches_transformers() {
    let model = Model::load(&fixtures().join("tiny_llama")).unwrap();
    assert!(!model.config().tie_word_embeddings);
    let reference = load_safetensors("tiny_llama_hidden.safetensors");
    let ids: Vec<u32> = reference["ids"].to_vec1::<i64>().unwrap().into_iter().map(|i| i as u32).collect();
    let hooks = ["hook_embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"];
    let capture = Hooks::new().capture_all(hooks.iter().map(|h| h.parse::<HookPoint>().unwrap()));
    let out = model.forward(&TokenBatch::single(&ids).unwrap(), &capture, Logits::All, None).unwrap();
    for hook in hooks {
        assert_close(hook, &out.captured[&hook.parse().unwrap()].squeeze(0).unwrap(), &reference[hook]);
    }
    assert_close("logits", &out.logits.unwrap().squeeze(0).unwrap(), &reference["logits"]);
}

fn copy_tiny_llama(dir: &Path) {
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("tiny_llama").join(file), dir.join(file)).unwrap();
    }
}

#[test]
fn safetensors_with_a_wrong_shape_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    copy_tiny_llama(dir.path());
    let file = dir.path().join("model.safetensors");
    let mut tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let name = "model.layers.1.mlp.down_proj.weight";
    let transposed = tensors[name].t().unwrap().contiguous().unwrap();
    tensors.insert(name.into(), transposed);
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let err = Model::load(dir.path()).err().expect("a wrong shape must fail");
    assert!(matches!(err, EngineError::WrongShape { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(name) && msg.contains("[128, 64]") && msg.contains("[64, 128]"), "{msg}");
}

#[test]
fn truncated_safetensors_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    copy_tiny_llama(dir.path());
    let file = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let msg = Model::load(dir.path()).err().expect("must fail").to_string();
    assert!(msg.contains("model.safetensors") && msg.contains("not a valid safetensors"), "{msg}");
}

#[test]
fn unknown_architecture_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    copy_tiny_llama(dir.path());
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(dir.path().join("config.json"), config.replace("\"llama\"", "\"mamba\"")).unwrap();
    let msg = Model::load(dir.path()).err().expect("must fail").to_string();
    assert!(msg.contains("unknown architecture 'mamba'") && msg.contains("model_type"), "{msg}");
}

#[test]
fn truncated_gguf_is_a_clear_error() {
    let source = common::default_model_path();
    let bytes = std::fs::read(&source).expect("run scripts/setup.sh first");
    let dir = tempfile::tempdir().unwrap();
    // Cut inside the header, and inside the tensor data.
    for (cut, expect) in [(4096usize, "not a valid GGUF"), (bytes.len() - 1_000_000, "cannot read tensor")] {
        let path = dir.path().join(format!("cut{cut}.gguf"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let msg = Model::load(&path).err().expect("a truncated file must fail").to_string();
        assert!(msg.contains(&path.display().to_string()) && msg.contains(expect), "{msg}");
    }
}

#[test]
fn gguf_missing_a_tensor_names_it() {
    let source = common::default_model_path();
    let mut reader = std::fs::File::open(&source).expect("run scripts/setup.sh first");
    let content = gguf_file::Content::read(&mut reader).unwrap();
    let removed = "blk.7.ffn_up.weight";
    let mut tensors = Vec::new();
    for name in content.tensor_infos.keys().filter(|n| n.as_str() != removed) {
        tensors.push((name.clone(), content.tensor(&mut reader, name, &Device::Cpu).unwrap()));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &candle_core::quantized::QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.gguf");
    let mut out = std::fs::File::create(&path).unwrap();
    gguf_file::write(&mut out, &metadata, &tensor_refs).unwrap();
    drop(out);
    let err = Model::load(&path).err().expect("a missing tensor must fail");
    let msg = err.to_string();
    assert!(matches!(err, EngineError::MissingTensor { .. }), "{msg}");
    assert!(msg.contains("model.layers.7.mlp.up_proj.weight") && msg.contains("missing.gguf"), "{msg}");
}

#[test]
fn unknown_hooks_are_clear_errors() {
    let err = "blocks.9.hook_nope".parse::<HookPoint>().unwrap_err();
    assert!(err.to_string().contains("unknown hook point 'blocks.9.hook_nope'"), "{err}");
    let model = Model::load(&fixtures().join("tiny_llama")).unwrap();
    let hooks = Hooks::new().capture(HookPoint::resid_post(40));
    let err = model.forward(&TokenBatch::single(&[1, 2]).unwrap(), &hooks, Logits::None, None).unwrap_err();
    assert_eq!(err.to_string(), "hook 'blocks.40.hook_resid_post' does not exist in this model: it has 2 layers (0..=1)");
}

#[test]
fn bad_token_ids_and_empty_batches_are_rejected() {
    let model = Model::load(&fixtures().join("tiny_llama")).unwrap();
    let err = model.forward(&TokenBatch::single(&[1, 999]).unwrap(), &Hooks::new(), Logits::Last, None).unwrap_err();
    assert!(err.to_string().contains("token id 999 is outside the vocabulary (size 256)"), "{err}");
    assert!(TokenBatch::right_padded(&[], 0).is_err());
    assert!(TokenBatch::right_padded(&[vec![1], vec![]], 0).unwrap_err().to_string().contains("sequence 1"));
}

#[test]
fn every_gguf_tensor_type_dequantizes_like_gguf_py() {
    // reference/gguf_quant_fixture.py: one tensor per type, and gguf-py's dequantization.
    let file = loupe_engine::weights::gguf::GgufFile::open(&fixtures().join("quants.gguf")).unwrap();
    let reference = load_safetensors("quants_reference.safetensors");
    let mut names: Vec<&String> = reference.keys().collect();
    names.sort();
    assert_eq!(names.len(), 13, "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q2_K..Q6_K");
    for name in names {
        let actual = file.tensor_f32(name).unwrap();
        let (err, scale) = common::max_abs_error(&actual, &reference[name]);
        assert!(err <= 1e-6 * scale.max(1.0), "{name}: max abs error {err} (scale {scale})");
    }
}
