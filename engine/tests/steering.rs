//! Steering edits on SmolLM2 and the default dictionary, against the published formulas
//! computed here from the clean activations (ADD: x + s·d; CLAMP: the feature set to v with
//! the error term kept; ORTHOGONAL: the component along d̂ replaced by s·d̂; CAP: the
//! projection limited to [lo, hi]).

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Tensor;
use common::smollm2;
use loupe_engine::generate::{generate, SamplingParams};
use loupe_engine::steering::{with_edits, Edit, Operation, Positions, Target};
use loupe_engine::{Dictionary, HookPoint, Hooks, Logits, TokenBatch};

fn default_dictionary() -> Arc<Dictionary> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dictionaries/smollm2-135m-instruct/blocks.9.hook_resid_post-topk-4608");
    Arc::new(Dictionary::load_for_model(&dir, smollm2().config()).unwrap())
}

fn prompt() -> Vec<u32> {
    smollm2().tokenizer().unwrap().encode("The old sailor looked at the sea and said").unwrap()
}

fn hook() -> HookPoint {
    HookPoint::resid_post(9)
}

/// The activation at the hook and the logits, with `edits` applied.
fn run(ids: &[u32], edits: &[Edit]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let hooks = with_edits(Hooks::new().capture(hook()), edits);
    let out = smollm2().forward(&TokenBatch::single(ids).unwrap(), &hooks, Logits::All, None).unwrap();
    (out.captured[&hook()].squeeze(0).unwrap().to_vec2().unwrap(), out.logits.unwrap().squeeze(0).unwrap().to_vec2().unwrap())
}

fn feature_edit(dictionary: &Arc<Dictionary>, feature: u32, operation: Operation, positions: Positions) -> Edit {
    Edit::new(Target::Feature { dictionary: dictionary.clone(), feature }, operation, positions).unwrap()
}

/// The dictionary's activation of `feature` on one activation row.
fn activation_of(dictionary: &Dictionary, row: &[f32], feature: u32) -> f32 {
    let x = Tensor::from_slice(row, (1, row.len()), &candle_core::Device::Cpu).unwrap();
    let encoding = dictionary.encode(&x).unwrap();
    let (indices, values) = encoding.features.token(0);
    indices.iter().position(|&i| i == feature).map_or(0.0, |i| values[i])
}

/// The strongest feature at `position` and its activation.
fn strongest(dictionary: &Dictionary, row: &[f32]) -> (u32, f32) {
    let x = Tensor::from_slice(row, (1, row.len()), &candle_core::Device::Cpu).unwrap();
    let encoding = dictionary.encode(&x).unwrap();
    let (indices, values) = encoding.features.token(0);
    let best = (0..indices.len()).max_by(|&a, &b| values[a].total_cmp(&values[b])).unwrap();
    (indices[best], values[best])
}

fn max_relative(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    let scale = b.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().flatten().zip(b.iter().flatten()).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn add_zero_and_empty_position_sets_generate_exactly_as_without_steering() {
    let model = smollm2();
    let dictionary = default_dictionary();
    let params = SamplingParams { temperature: 0.8, top_p: 0.95, seed: 11, max_new_tokens: 12, ..Default::default() };
    let plain = generate(model, &prompt(), &params, &Hooks::new(), |_| {}).unwrap();
    let zero = feature_edit(&dictionary, 100, Operation::Add { strength: 0.0 }, Positions::All);
    let nowhere = feature_edit(&dictionary, 100, Operation::Clamp { value: 50.0 }, Positions::Ranges(Vec::new()));
    let orthogonal_nowhere = feature_edit(&dictionary, 7, Operation::Orthogonal { strength: 9.0 }, Positions::Generated { prompt_len: 10_000 });
    for edits in [vec![zero], vec![nowhere, orthogonal_nowhere]] {
        let steered = generate(model, &prompt(), &params, &with_edits(Hooks::new(), &edits), |_| {}).unwrap();
        assert_eq!(steered, plain);
    }
}

#[test]
fn add_orthogonal_and_cap_follow_their_formulas() {
    let dictionary = default_dictionary();
    let ids = prompt();
    let (clean, _) = run(&ids, &[]);
    let feature = 1234u32;
    let d = dictionary.decoder_row(feature as usize).to_vec();
    let norm = d.iter().map(|v| v * v).sum::<f32>().sqrt();
    let unit: Vec<f32> = d.iter().map(|v| v / norm).collect();
    let along = |row: &[f32]| row.iter().zip(&unit).map(|(x, u)| x * u).sum::<f32>();
    let edited = 2..5;
    let check = |operation: Operation, expect: &dyn Fn(&[f32]) -> Vec<f32>| {
        let (steered, _) = run(&ids, &[feature_edit(&dictionary, feature, operation, Positions::Ranges(vec![edited.clone()]))]);
        for (p, (row, clean_row)) in steered.iter().zip(&clean).enumerate() {
            let want = if edited.contains(&p) { expect(clean_row) } else { clean_row.clone() };
            let err = row.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(err <= 1e-5 * scale.max(1.0), "{operation:?} at position {p}: max error {err}");
        }
    };
    check(Operation::Add { strength: 4.0 }, &|x| x.iter().zip(&d).map(|(x, d)| x + 4.0 * d).collect());
    check(Operation::Orthogonal { strength: -3.0 }, &|x| {
        let a = along(x);
        x.iter().zip(&unit).map(|(x, u)| x - a * u - 3.0 * u).collect()
    });
    check(Operation::Cap { lo: -0.5, hi: 0.5 }, &|x| {
        let a = along(x);
        x.iter().zip(&unit).map(|(x, u)| x + (a.clamp(-0.5, 0.5) - a) * u).collect()
    });
}

#[test]
fn clamping_to_the_current_value_changes_nothing_and_clamping_sets_the_feature() {
    let dictionary = default_dictionary();
    let ids = prompt();
    let (clean, clean_logits) = run(&ids, &[]);
    let position = ids.len() - 2;
    let (feature, current) = strongest(&dictionary, &clean[position]);
    assert!(current > 0.0);
    let at = || Positions::Ranges(vec![position..position + 1]);

    // The identity: the error term is kept, so the logits do not move.
    let (_, logits) = run(&ids, &[feature_edit(&dictionary, feature, Operation::Clamp { value: current }, at())]);
    let change = max_relative(&logits, &clean_logits);
    assert!(change <= 1e-4, "clamping to the current value moved the logits by {change} (relative)");

    // To v: x' = x + (v - f)·d, so the re-encoded activation is f + (v - f)·a, where
    // a = d·W_enc[:, i] is how well the feature's encoder reads its own decoder direction
    // (1 for a perfectly aligned dictionary). Measured here by encoding x + d.
    let d = dictionary.decoder_row(feature as usize);
    let shifted: Vec<f32> = clean[position].iter().zip(d).map(|(x, d)| x + d).collect();
    let alignment = activation_of(&dictionary, &shifted, feature) - current;
    assert!((0.5..=1.5).contains(&alignment), "feature {feature} reads its own direction at {alignment}");
    for v in [2.0 * current, 0.5 * current] {
        let (steered, logits) = run(&ids, &[feature_edit(&dictionary, feature, Operation::Clamp { value: v }, at())]);
        let reencoded = activation_of(&dictionary, &steered[position], feature);
        let predicted = current + (v - current) * alignment;
        assert!((reencoded - predicted).abs() <= 1e-3 * v.max(1.0), "clamp to {v} (from {current}, alignment {alignment}) re-encodes to {reencoded}, expected {predicted}");
        assert!((reencoded - v).abs() <= (1.0 - alignment).abs() * (v - current).abs() + 1e-3, "clamp to {v} re-encodes to {reencoded}");
        assert!(max_relative(&logits, &clean_logits) > 1e-3, "a real clamp changes the logits");
        for p in 0..position {
            assert_eq!(steered[p], clean[p], "position {p} before the clamp is untouched");
        }
    }
    // Ablation removes the feature's decoded contribution: what is left re-encodes to
    // f·(1 - a), or drops out of the top k.
    let (steered, _) = run(&ids, &[feature_edit(&dictionary, feature, Operation::Ablate, at())]);
    let reencoded = activation_of(&dictionary, &steered[position], feature);
    assert!(reencoded == 0.0 || (reencoded - current * (1.0 - alignment)).abs() <= 1e-3, "ablated feature re-encodes to {reencoded} (was {current}, alignment {alignment})");
}

#[test]
fn steering_edits_refuse_bad_input() {
    let dictionary = default_dictionary();
    let target = || Target::Feature { dictionary: dictionary.clone(), feature: 3 };
    let err = |target: Target, operation: Operation| Edit::new(target, operation, Positions::All).err().expect("refused").to_string();
    assert!(err(target(), Operation::Add { strength: f32::NAN }).contains("strength is NaN"));
    assert!(err(target(), Operation::Cap { lo: 2.0, hi: 1.0 }).contains("inverted"));
    assert!(err(Target::Feature { dictionary: dictionary.clone(), feature: 4608 }, Operation::Ablate).contains("4608 features"));
    let vector = |direction: Vec<f32>| Target::Vector { hook: hook(), direction };
    assert!(err(vector(vec![0.0; 576]), Operation::Add { strength: 1.0 }).contains("non-zero"));
    assert!(err(vector(vec![1.0; 576]), Operation::Clamp { value: 1.0 }).contains("not a raw vector"));
    // A vector of the wrong width fails the forward pass with a message naming the hook.
    let wrong = Edit::new(vector(vec![1.0; 10]), Operation::Add { strength: 1.0 }, Positions::All).unwrap();
    let hooks = with_edits(Hooks::new(), &[wrong]);
    let message = smollm2().forward(&TokenBatch::single(&prompt()).unwrap(), &hooks, Logits::Last, None).unwrap_err().to_string();
    assert!(message.contains("width 10") && message.contains("blocks.9.hook_resid_post"), "{message}");
}

#[test]
fn edits_on_generated_tokens_agree_between_the_kv_cache_and_a_full_pass() {
    let dictionary = default_dictionary();
    let ids = prompt();
    let edit = feature_edit(&dictionary, 1234, Operation::Add { strength: 8.0 }, Positions::Generated { prompt_len: ids.len() });
    let params = SamplingParams { max_new_tokens: 8, ..Default::default() };
    // Greedy generation through the KV cache, the edit applied to each new token as it is made.
    let generated = generate(smollm2(), &ids, &params, &with_edits(Hooks::new(), std::slice::from_ref(&edit)), |_| {}).unwrap();
    let plain = generate(smollm2(), &ids, &params, &Hooks::new(), |_| {}).unwrap();
    assert_ne!(generated, plain, "the edit changes the continuation");
    // One uncached pass over prompt + continuation with the same edit predicts the same tokens.
    let mut all = ids.clone();
    all.extend(&generated);
    let (_, logits) = run(&all, &[edit]);
    for (step, token) in generated.iter().enumerate() {
        let row = &logits[ids.len() - 1 + step];
        let argmax = (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap() as u32;
        assert_eq!(argmax, *token, "step {step}: the full pass disagrees with the cached one");
    }
}

#[test]
fn a_default_and_a_steered_row_in_one_batch_match_two_separate_runs() {
    use loupe_engine::generate::generate_rows;
    let dictionary = default_dictionary();
    let ids = prompt();
    let params = SamplingParams { temperature: 0.7, top_p: 0.9, seed: 5, max_new_tokens: 10, ..Default::default() };
    let mut edit = feature_edit(&dictionary, 1234, Operation::Add { strength: 8.0 }, Positions::All);
    let alone = generate(smollm2(), &ids, &params, &with_edits(Hooks::new(), std::slice::from_ref(&edit)), |_| {}).unwrap();
    let plain = generate(smollm2(), &ids, &params, &Hooks::new(), |_| {}).unwrap();
    // Row 0 is the default run, row 1 the steered one: the edit touches row 1 only.
    edit.rows = Some(vec![1]);
    let mut streamed = vec![Vec::new(), Vec::new()];
    let rows = generate_rows(smollm2(), &ids, 2, &params, &with_edits(Hooks::new(), &[edit]), |row, token| streamed[row].push(token)).unwrap();
    assert_eq!(rows[0], plain, "the default row of the batch");
    assert_eq!(rows[1], alone, "the steered row of the batch");
    assert_eq!(streamed, rows, "tokens are streamed as they are made");
    assert_ne!(rows[0], rows[1]);
}

/// Logits `[seq, keep.len()]` at the kept token ids, with `edits` applied.
fn kept_logits(ids: &[u32], edits: &[Edit], keep: &[usize]) -> Vec<Vec<f32>> {
    let (_, logits) = run(ids, edits);
    logits.iter().map(|row| keep.iter().map(|&t| row[t]).collect()).collect()
}

#[test]
fn steered_logits_match_transformers_hooks_on_the_same_weights() {
    // Written by reference/steering_reference.py: transformers forward hooks at layer 9's
    // output editing the residual stream with numpy's SAE, for ADD, CLAMP and ORTHOGONAL.
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(common::fixtures().join("steering_reference.json")).unwrap()).unwrap();
    let reference = common::load_safetensors("steering_reference.safetensors");
    let keep: Vec<usize> = reference["token_ids"].to_vec1::<i64>().unwrap().into_iter().map(|t| t as usize).collect();
    let dictionary = default_dictionary();
    let tokenizer = smollm2().tokenizer().unwrap();
    for (p, case) in meta["prompts"].as_array().unwrap().iter().enumerate() {
        let ids = tokenizer.encode(case["text"].as_str().unwrap()).unwrap();
        let expected_ids: Vec<u32> = reference[&format!("p{p}.ids")].to_vec1::<i64>().unwrap().into_iter().map(|t| t as u32).collect();
        assert_eq!(ids, expected_ids, "prompt {p} tokenizes as transformers does");
        let number = |key: &str| case[key].as_f64().unwrap() as f32;
        let feature = |key: &str| case[key].as_u64().unwrap() as u32;
        let edits: [(&str, Vec<Edit>); 4] = [
            ("none", vec![]),
            ("add", vec![feature_edit(&dictionary, feature("add_feature"), Operation::Add { strength: number("add_strength") }, Positions::All)]),
            ("clamp", vec![feature_edit(&dictionary, feature("clamp_feature"), Operation::Clamp { value: number("clamp_value") }, Positions::All)]),
            ("orthogonal", vec![feature_edit(&dictionary, feature("orthogonal_feature"), Operation::Orthogonal { strength: number("orthogonal_strength") }, Positions::All)]),
        ];
        let clean: Vec<Vec<f32>> = reference[&format!("p{p}.none")].to_vec2().unwrap();
        for (name, edits) in edits {
            let expected: Vec<Vec<f32>> = reference[&format!("p{p}.{name}")].to_vec2().unwrap();
            let actual = kept_logits(&ids, &edits, &keep);
            let error = max_relative(&actual, &expected);
            eprintln!("prompt {p}, {name}: max error {error:.1e} of the max logit");
            assert!(error <= 1e-3, "prompt {p}, {name}: steered logits differ from transformers' by {error} of the max");
            if name != "none" {
                let moved = max_relative(&expected, &clean);
                assert!(moved > 0.05, "prompt {p}, {name}: the reference edit must move the logits (it moved them by {moved})");
            }
        }
    }
}
