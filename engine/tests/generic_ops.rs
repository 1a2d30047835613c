//! The device-generic path of the model (what runs on a GPU: candle's generic ops, the
//! attention mask as a tensor, weights and tables moved to the device in its dtype) checked
//! on the CPU by computing in f64, which takes that path: it must match transformers as the
//! fused f32 CPU path does, padded batches included, and hand back f32.

mod common;

use candle_core::{DType, Device};
use common::{assert_close, fixtures, load_safetensors};
use loupe_engine::{Compute, HookPoint, Hooks, Logits, Model, TokenBatch};

fn generic_cpu() -> Compute {
    Compute { device: Device::Cpu, dtype: DType::F64 }
}

#[test]
fn the_generic_path_matches_transformers_and_returns_f32() {
    let model = Model::load_on(&fixtures().join("tiny_llama"), &generic_cpu()).unwrap();
    assert_eq!(model.compute().dtype, DType::F64);
    let reference = load_safetensors("tiny_llama_hidden.safetensors");
    let ids: Vec<u32> = reference["ids"].to_vec1::<i64>().unwrap().into_iter().map(|i| i as u32).collect();
    let hooks = ["hook_embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"];
    let capture = Hooks::new().capture_all(hooks.iter().map(|h| h.parse::<HookPoint>().unwrap()));
    let out = model.forward(&TokenBatch::single(&ids).unwrap(), &capture, Logits::All, None).unwrap();
    for hook in hooks {
        let captured = &out.captured[&hook.parse().unwrap()];
        assert_eq!(captured.dtype(), DType::F32, "{hook} comes back in f32");
        assert_close(hook, &captured.squeeze(0).unwrap(), &reference[hook]);
    }
    let logits = out.logits.unwrap();
    assert_eq!(logits.dtype(), DType::F32);
    assert_close("logits", &logits.squeeze(0).unwrap(), &reference["logits"]);
    assert_eq!(model.unembedding().dtype(), DType::F32);
}

#[test]
fn padded_batches_on_the_generic_path_equal_each_sequence_alone() {
    let fused = Model::load(&fixtures().join("tiny_llama")).unwrap();
    let generic = Model::load_on(&fixtures().join("tiny_llama"), &generic_cpu()).unwrap();
    let sequences = vec![vec![5u32, 9, 13, 2, 7, 30, 4], vec![11u32, 3, 8]];
    let hook: HookPoint = "blocks.1.hook_resid_post".parse().unwrap();
    let capture = Hooks::new().capture(hook);
    let batch = TokenBatch::right_padded(&sequences, 0).unwrap();
    let out = generic.forward(&batch, &capture, Logits::Last, None).unwrap();
    for (i, sequence) in sequences.iter().enumerate() {
        let alone = fused.forward(&TokenBatch::single(sequence).unwrap(), &capture, Logits::Last, None).unwrap();
        let rows = out.captured[&hook].get(i).unwrap().narrow(0, 0, sequence.len()).unwrap();
        assert_close(&format!("sequence {i}"), &rows, &alone.captured[&hook].squeeze(0).unwrap());
        let last = out.logits.as_ref().unwrap().get(i).unwrap().unsqueeze(0).unwrap();
        assert_close(&format!("last logits of sequence {i}"), &last, &alone.logits.unwrap());
    }
}
