//! SmolLM2-135M-Instruct against Hugging Face transformers (fixtures written by
//! `reference/engine_parity.py` from the same GGUF): hidden states at hook_embed and the
//! outputs of layers 0, 9, 20, 29, and the top-5 tokens of the final logits, for prompts run
//! one by one, as one padded batch, and one token at a time through the KV cache.

mod common;

use candle_core::{Tensor, D};
use common::{assert_close, load_safetensors, prompts_fixture, smollm2};
use loupe_engine::generate::{generate, SamplingParams};
use loupe_engine::{HookPoint, Hooks, KvCache, Logits, TokenBatch};

struct Prompt {
    ids: Vec<u32>,
    /// (hook, reference `[seq, d]`)
    hidden: Vec<(HookPoint, Tensor)>,
    /// reference top-5 token ids at every position
    top5: Vec<Vec<u32>>,
}

fn prompts() -> Vec<Prompt> {
    let meta = prompts_fixture();
    let tensors = load_safetensors("smollm2_hidden.safetensors");
    let hooks: Vec<String> = serde_json::from_value(meta["hooks"].clone()).unwrap();
    let list = meta["prompts"].as_array().unwrap();
    assert!(list.len() >= 8, "the acceptance asks for at least 8 prompts");
    list.iter()
        .enumerate()
        .map(|(p, prompt)| {
            let ids: Vec<u32> = serde_json::from_value(prompt["ids"].clone()).unwrap();
            let hidden = hooks.iter().map(|h| (h.parse().unwrap(), tensors[&format!("{p}/{h}")].clone())).collect();
            let top = tensors[&format!("{p}/top_logits.indices")].to_vec2::<i64>().unwrap();
            let top5 = top.iter().map(|row| row[..5].iter().map(|&i| i as u32).collect()).collect();
            Prompt { ids, hidden, top5 }
        })
        .collect()
}

fn capture_hooks(prompt: &Prompt) -> Hooks {
    Hooks::new().capture_all(prompt.hidden.iter().map(|(h, _)| *h))
}

fn top5(logits_row: &[f32]) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..logits_row.len() as u32).collect();
    ids.select_nth_unstable_by(5, |&a, &b| logits_row[b as usize].total_cmp(&logits_row[a as usize]));
    let mut top: Vec<u32> = ids[..5].to_vec();
    top.sort_by(|&a, &b| logits_row[b as usize].total_cmp(&logits_row[a as usize]));
    top
}

fn assert_top5(what: &str, logits: &Tensor, expected: &[Vec<u32>]) {
    let rows = logits.to_vec2::<f32>().unwrap();
    for (pos, (row, want)) in rows.iter().zip(expected).enumerate() {
        assert_eq!(&top5(row), want, "{what}: top-5 tokens at position {pos}");
    }
}

#[test]
fn prompts_one_by_one_match_transformers() {
    let model = smollm2();
    for (p, prompt) in prompts().iter().enumerate() {
        let out = model.forward(&TokenBatch::single(&prompt.ids).unwrap(), &capture_hooks(prompt), Logits::All, None).unwrap();
        for (hook, expected) in &prompt.hidden {
            assert_close(&format!("prompt {p} {hook}"), &out.captured[hook].squeeze(0).unwrap(), expected);
        }
        assert_top5(&format!("prompt {p}"), &out.logits.unwrap().squeeze(0).unwrap(), &prompt.top5);
    }
}

#[test]
fn padded_batch_matches_transformers() {
    let model = smollm2();
    let prompts = prompts();
    let sequences: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
    let batch = TokenBatch::right_padded(&sequences, model.pad_token_id()).unwrap();
    assert!(batch.is_padded());
    let out = model.forward(&batch, &capture_hooks(&prompts[0]), Logits::All, None).unwrap();
    let logits = out.logits.unwrap();
    for (p, prompt) in prompts.iter().enumerate() {
        let len = prompt.ids.len();
        for (hook, expected) in &prompt.hidden {
            let actual = out.captured[hook].get(p).unwrap().narrow(0, 0, len).unwrap();
            assert_close(&format!("batched prompt {p} {hook}"), &actual, expected);
        }
        assert_top5(&format!("batched prompt {p}"), &logits.get(p).unwrap().narrow(0, 0, len).unwrap(), &prompt.top5);
    }
}

#[test]
fn token_by_token_kv_cache_matches_transformers() {
    let model = smollm2();
    for (p, prompt) in prompts().iter().enumerate() {
        let hooks = capture_hooks(prompt);
        let mut cache = KvCache::new(model.config().n_layers, 4);
        let mut steps = Vec::new();
        let mut logits = Vec::new();
        for &id in &prompt.ids {
            let out = model.forward(&TokenBatch::single(&[id]).unwrap(), &hooks, Logits::All, Some(&mut cache)).unwrap();
            logits.push(out.logits.unwrap().squeeze(0).unwrap());
            steps.push(out.captured);
        }
        assert_eq!(cache.seq_len(), prompt.ids.len());
        for (hook, expected) in &prompt.hidden {
            let per_step: Vec<Tensor> = steps.iter().map(|s| s[hook].squeeze(0).unwrap()).collect();
            assert_close(&format!("cached prompt {p} {hook}"), &Tensor::cat(&per_step, 0).unwrap(), expected);
        }
        assert_top5(&format!("cached prompt {p}"), &Tensor::cat(&logits, 0).unwrap(), &prompt.top5);
    }
}

#[test]
fn stopping_early_gives_the_same_activations() {
    let model = smollm2();
    let prompt = &prompts()[0];
    let hook = HookPoint::resid_post(9);
    let batch = TokenBatch::single(&prompt.ids).unwrap();
    let early = model.forward(&batch, &Hooks::new().capture(hook), Logits::None, None).unwrap();
    assert!(early.logits.is_none());
    let expected = &prompt.hidden.iter().find(|(h, _)| *h == hook).unwrap().1;
    assert_close("stop at layer 9", &early.captured[&hook].squeeze(0).unwrap(), expected);
}

#[test]
fn greedy_chat_generation_matches_transformers() {
    let model = smollm2();
    let chat = &prompts_fixture()["chat"];
    let prompt: Vec<u32> = serde_json::from_value(chat["prompt_ids"].clone()).unwrap();
    let expected: Vec<u32> = serde_json::from_value(chat["greedy_completion_ids"].clone()).unwrap();
    // Our chat template renders the same prompt transformers was given.
    let text = loupe_engine::chat::render(model.tokenizer().unwrap().chat_template(), &[loupe_engine::chat::ChatMessage::user(chat["user"].as_str().unwrap())], true).unwrap();
    assert_eq!(model.tokenizer().unwrap().encode(&text).unwrap(), prompt);
    let params = SamplingParams { max_new_tokens: expected.len(), stop_tokens: vec![2], ..Default::default() };
    let first = generate(model, &prompt, &params, &Hooks::new(), |_| {}).unwrap();
    assert_eq!(first, expected, "greedy completion differs from transformers'");
    let again = generate(model, &prompt, &params, &Hooks::new(), |_| {}).unwrap();
    assert_eq!(first, again, "greedy generation is not deterministic");
    let answer = model.tokenizer().unwrap().decode(&first).unwrap();
    assert!(answer.contains("Paris"), "{answer}");
}

#[test]
fn interventions_edit_the_forward_pass() {
    let model = smollm2();
    let ids = &prompts()[7].ids;
    let batch = TokenBatch::single(ids).unwrap();
    let hook = HookPoint::resid_post(5);
    let clean = model.forward(&batch, &Hooks::new().capture(hook), Logits::Last, None).unwrap();
    // Zeroing the residual stream at layer 5 erases the prompt: what follows depends only on
    // positions, so the edited activation must be captured as zeros and the logits change.
    let zeroed = Hooks::new().edit(hook, |_, x: &Tensor, _: &_| x.zeros_like()).capture(hook);
    let edited = model.forward(&batch, &zeroed, Logits::Last, None).unwrap();
    let captured_sum = edited.captured[&hook].abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(captured_sum, 0.0);
    let diff = (clean.logits.unwrap() - edited.logits.unwrap()).unwrap().abs().unwrap().max(D::Minus1).unwrap();
    assert!(diff.to_vec1::<f32>().unwrap()[0] > 1.0);
}

#[test]
fn a_raised_cancel_flag_stops_the_pass_at_the_next_layer() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let model = smollm2();
    let batch = TokenBatch::single(&prompts()[0].ids).unwrap();
    let cancel = Arc::new(AtomicBool::new(false));
    let later = Arc::new(AtomicUsize::new(0));
    let (raise, count) = (cancel.clone(), later.clone());
    // The flag goes up while layer 3 runs (as a deadline passing would); layer 4 never starts.
    let hooks = Hooks::new()
        .edit(HookPoint::resid_post(3), move |_, x: &Tensor, _: &_| {
            raise.store(true, Ordering::SeqCst);
            Ok(x.clone())
        })
        .edit(HookPoint::resid_post(4), move |_, x: &Tensor, _: &_| {
            count.fetch_add(1, Ordering::SeqCst);
            Ok(x.clone())
        })
        .cancel_when(cancel);
    let err = model.forward(&batch, &hooks, Logits::All, None).unwrap_err();
    assert!(matches!(err, loupe_engine::EngineError::Cancelled), "{err}");
    assert_eq!(later.load(Ordering::SeqCst), 0, "a layer ran after the cancel flag went up");
    // Without the flag raised, the same hooks run every layer.
    let hooks = Hooks::new().cancel_when(Arc::new(AtomicBool::new(false)));
    assert!(model.forward(&batch, &hooks, Logits::All, None).unwrap().logits.is_some());
}
