//! Autoregressive generation with a KV cache: greedy, or temperature + nucleus (top-p)
//! sampling from a seeded generator, so that a run is reproducible.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use loupe_schema::hook::HookPoint;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{EngineError, Result};
use crate::hooks::Hooks;
use crate::model::{KvCache, Logits, Model, TokenBatch};

#[derive(Debug, Clone)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f32,
    pub seed: u64,
    pub max_new_tokens: usize,
    /// Generation stops after emitting one of these.
    pub stop_tokens: Vec<u32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_p: 1.0, seed: 0, max_new_tokens: 64, stop_tokens: Vec::new() }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(EngineError::InvalidInput(format!("temperature must be >= 0, got {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(EngineError::InvalidInput(format!("top_p must be in (0, 1], got {}", self.top_p)));
        }
        Ok(())
    }
}

/// Generates up to `max_new_tokens` after `prompt`, calling `on_token` as each arrives
/// (for streaming). `hooks` apply at every step (e.g. steering interventions).
pub fn generate(model: &Model, prompt: &[u32], params: &SamplingParams, hooks: &Hooks, mut on_token: impl FnMut(u32)) -> Result<Vec<u32>> {
    let mut rows = generate_rows(model, prompt, 1, params, hooks, |_, token| on_token(token))?;
    Ok(rows.pop().unwrap_or_default())
}

/// Generates `rows` continuations of one prompt in one batch (KV cache of `rows` sequences),
/// each row sampling with its own generator seeded with `params.seed`: rows differ only
/// where `hooks` edit them differently (a default and a steered run: edit row 1 only).
/// `on_token(row, token)` is called as tokens arrive. A row that emits a stop token is done;
/// it keeps feeding that token (so the batch stays rectangular) and its outputs are dropped.
pub fn generate_rows(model: &Model, prompt: &[u32], rows: usize, params: &SamplingParams, hooks: &Hooks, mut on_token: impl FnMut(usize, u32)) -> Result<Vec<Vec<u32>>> {
    let mut generation = Generation::new(model, prompt, rows, params.clone())?;
    while !generation.is_finished() {
        let step = generation.step(model, hooks)?;
        for (row, emitted) in step.tokens.iter().enumerate() {
            if let Some(emitted) = emitted {
                on_token(row, emitted.token);
            }
        }
    }
    Ok(generation.into_generated())
}

/// A token a row emitted, with its log-probability under the (edited) model at temperature
/// 1 (before temperature and top-p reshape the draw).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Emitted {
    pub token: u32,
    pub logprob: f32,
}

/// What one decoding step gave.
pub struct Step {
    /// The token each row emitted (None for rows already finished).
    pub tokens: Vec<Option<Emitted>>,
    /// The hooks captured at the position each row was fed this step, `[rows, d]` (after
    /// any edit of that hook): the prompt's last token on the first step, then the token
    /// emitted on the step before.
    pub captured: BTreeMap<HookPoint, Tensor>,
}

/// Generation one token at a time, so that the caller can stream tokens, stop rows (stop
/// strings), read activations per token, and give its thread back between tokens.
pub struct Generation {
    params: SamplingParams,
    rngs: Vec<StdRng>,
    cache: KvCache,
    inputs: Vec<Vec<u32>>,
    generated: Vec<Vec<u32>>,
    done: Vec<bool>,
    steps: usize,
}

impl Generation {
    pub fn new(model: &Model, prompt: &[u32], rows: usize, params: SamplingParams) -> Result<Self> {
        params.validate()?;
        if prompt.is_empty() {
            return Err(EngineError::InvalidInput("the prompt has no tokens".into()));
        }
        if rows == 0 {
            return Err(EngineError::InvalidInput("rows must be at least 1".into()));
        }
        Ok(Generation {
            rngs: (0..rows).map(|_| StdRng::seed_from_u64(params.seed)).collect(),
            cache: model.new_cache(),
            inputs: vec![prompt.to_vec(); rows],
            generated: vec![Vec::new(); rows],
            done: vec![false; rows],
            steps: 0,
            params,
        })
    }

    /// Every row is done, or `max_new_tokens` steps have run.
    pub fn is_finished(&self) -> bool {
        self.steps >= self.params.max_new_tokens || self.done.iter().all(|d| *d)
    }

    /// Runs one forward pass of the batch (the prompt, then one token per row) with `hooks`
    /// and samples the next token of each unfinished row.
    pub fn step(&mut self, model: &Model, hooks: &Hooks) -> Result<Step> {
        let out = model.forward(&TokenBatch::right_padded(&self.inputs, 0)?, hooks, Logits::Last, Some(&mut self.cache))?;
        let logits = out.logits.expect("Logits::Last returns logits");
        let captured = last_positions(out.captured)?;
        let mut tokens = vec![None; self.rows()];
        for (row, slot) in tokens.iter_mut().enumerate() {
            if self.done[row] {
                continue;
            }
            let row_logits = logits.get(row)?.to_dtype(DType::F32)?;
            let next = sample(&row_logits, &self.params, &mut self.rngs[row])?;
            let logprob = log_probability(&row_logits.to_vec1()?, next);
            self.generated[row].push(next);
            *slot = Some(Emitted { token: next, logprob });
            self.done[row] = self.params.stop_tokens.contains(&next);
            self.inputs[row] = vec![next];
        }
        self.steps += 1;
        Ok(Step { tokens, captured })
    }

    /// Feeds each row's last token through the model once more (no sampling) and returns
    /// the hooks captured there, `[rows, d]`: what the final emitted token's activations are.
    pub fn read_last(&mut self, model: &Model, hooks: &Hooks) -> Result<BTreeMap<HookPoint, Tensor>> {
        // A pass with a KV cache runs every layer (the cache must stay whole), logits included.
        let out = model.forward(&TokenBatch::right_padded(&self.inputs, 0)?, hooks, Logits::Last, Some(&mut self.cache))?;
        last_positions(out.captured)
    }

    /// Marks `row` done (a stop string appeared); its later steps emit nothing.
    pub fn stop_row(&mut self, row: usize) {
        if let Some(done) = self.done.get_mut(row) {
            *done = true;
        }
    }

    pub fn rows(&self) -> usize {
        self.done.len()
    }

    pub fn generated(&self) -> &[Vec<u32>] {
        &self.generated
    }

    pub fn into_generated(self) -> Vec<Vec<u32>> {
        self.generated
    }
}

/// `[rows, seq, d]` captures reduced to each row's last position, `[rows, d]` (all rows
/// of a generation batch have the same length).
fn last_positions(captured: BTreeMap<HookPoint, Tensor>) -> Result<BTreeMap<HookPoint, Tensor>> {
    captured
        .into_iter()
        .map(|(hook, x)| {
            let seq = x.dim(1)?;
            Ok((hook, x.narrow(1, seq - 1, 1)?.squeeze(1)?))
        })
        .collect()
}

/// `log softmax(logits)[token]`.
pub fn log_probability(logits: &[f32], token: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    (logits[token as usize] - max) - sum.ln() as f32
}

/// Tokens sorted first when looking for the nucleus (see [`sample`]).
const NUCLEUS_GUESS: usize = 256;

/// Picks the next token from `logits` `[vocab]`.
pub fn sample(logits: &Tensor, params: &SamplingParams, rng: &mut impl Rng) -> Result<u32> {
    let logits: Vec<f32> = logits.to_dtype(DType::F32)?.to_vec1()?;
    if params.temperature == 0.0 {
        return Ok(argmax(&logits));
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, ((l - max) / params.temperature).exp())).collect();
    let total: f32 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    if params.top_p >= 1.0 {
        // No nucleus to find: draw from the whole distribution, no sort needed.
        return Ok(draw(&probs, probs.iter().map(|p| p.1).sum(), rng));
    }
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    // The nucleus is a prefix of the tokens sorted by probability, usually a short one: sort
    // the most likely NUCLEUS_GUESS first and the whole vocabulary only if they fall short.
    let nucleus = |probs: &[(u32, f32)]| -> Option<(usize, f32)> {
        let mut kept = 0.0;
        probs
            .iter()
            .position(|p| {
                kept += p.1;
                kept >= params.top_p
            })
            .map(|i| (i + 1, kept))
    };
    if probs.len() > NUCLEUS_GUESS {
        probs.select_nth_unstable_by(NUCLEUS_GUESS, order);
        probs[..NUCLEUS_GUESS].sort_by(order);
    } else {
        probs.sort_by(order);
    }
    let (cut, kept) = match nucleus(&probs[..probs.len().min(NUCLEUS_GUESS)]) {
        Some(found) => found,
        None => {
            probs.sort_by(order);
            nucleus(&probs).unwrap_or((probs.len(), probs.iter().map(|p| p.1).sum()))
        }
    };
    Ok(draw(&probs[..cut], kept, rng))
}

/// A token drawn from `probs` (which sum to `total`).
fn draw(probs: &[(u32, f32)], total: f32, rng: &mut impl Rng) -> u32 {
    let mut r = rng.random::<f32>() * total;
    for &(id, p) in probs {
        if r < p {
            return id;
        }
        r -= p;
    }
    probs[probs.len() - 1].0
}

fn argmax(values: &[f32]) -> u32 {
    // Ties go to the lowest id, as torch.argmax does.
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn greedy_is_argmax_and_top_p_keeps_the_nucleus() {
        let logits = Tensor::new(&[0.0f32, 3.0, 1.0, 2.9], &Device::Cpu).unwrap();
        let greedy = SamplingParams::default();
        assert_eq!(sample(&logits, &greedy, &mut StdRng::seed_from_u64(0)).unwrap(), 1);
        // A tiny top_p keeps only the most likely token, whatever the draw.
        let nucleus = SamplingParams { temperature: 1.0, top_p: 0.01, ..Default::default() };
        for seed in 0..20 {
            assert_eq!(sample(&logits, &nucleus, &mut StdRng::seed_from_u64(seed)).unwrap(), 1);
        }
        // With top_p = 1 every token can come up, and the same seed gives the same draw.
        let full = SamplingParams { temperature: 5.0, top_p: 1.0, ..Default::default() };
        let draws: Vec<u32> = (0..200).map(|s| sample(&logits, &full, &mut StdRng::seed_from_u64(s)).unwrap()).collect();
        assert!((0..4).all(|id| draws.contains(&id)));
        let again: Vec<u32> = (0..200).map(|s| sample(&logits, &full, &mut StdRng::seed_from_u64(s)).unwrap()).collect();
        assert_eq!(draws, again);
    }

    #[test]
    fn bad_params_are_rejected() {
        let bad = SamplingParams { top_p: 0.0, ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("top_p"));
    }
}
