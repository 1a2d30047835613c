//! Turning a reducer state into store rows: examples with their tokens, statistics, logit
//! effects and decoder neighbours.
//!
//! Logit effects are `W_dec[f] @ W_U`, the direct effect of a feature's decoder direction on
//! the logits, WITHOUT the final norm (as SAEDashboard computes them). They are computed for
//! dictionaries that write to the residual stream width (d_out = d_model).

use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};
use loupe_engine::{Dictionary, Model, Tokenizer};
use loupe_store::{ExampleKind, ExampleRecord, FeatureRecord, LogitEffect, Neighbour};

use crate::error::{IndexError, Result};
use crate::reducer::{DictionaryState, Example};
use loupe_corpus::Window;

pub const LOGIT_EFFECTS: usize = 10;
pub const NEIGHBOURS: usize = 10;
/// Top examples whose text around the max token goes into the search index.
const CONTEXT_EXAMPLES: usize = 5;
const CONTEXT_BEFORE: usize = 10;
const CONTEXT_AFTER: usize = 4;
/// Features per matmul chunk for logit effects and neighbours.
const CHUNK: usize = 256;

/// Token strings, decoded once per id.
struct TokenNames<'a> {
    tokenizer: &'a Tokenizer,
    cache: HashMap<u32, String>,
}

impl<'a> TokenNames<'a> {
    fn new(tokenizer: &'a Tokenizer) -> Self {
        TokenNames { tokenizer, cache: HashMap::new() }
    }

    fn name(&mut self, id: u32) -> Result<String> {
        if let Some(name) = self.cache.get(&id) {
            return Ok(name.clone());
        }
        let name = self.tokenizer.decode(&[id])?;
        self.cache.insert(id, name.clone());
        Ok(name)
    }
}

/// The store rows of a dictionary's features. Their examples are made separately, a chunk
/// at a time, by [`example_chunks`].
pub fn feature_records(model: &Model, dictionary: &Dictionary, dictionary_id: &str, state: &DictionaryState, windows: &BTreeMap<u64, Window>) -> Result<Vec<FeatureRecord>> {
    let tokenizer = model.tokenizer()?;
    let mut names = TokenNames::new(tokenizer);
    let info = dictionary.info();
    let d_sae = info.d_sae;
    let logit_effects = if info.d_out == model.config().hidden_size { logit_effects(model, dictionary, &mut names)? } else { vec![(Vec::new(), Vec::new()); d_sae] };
    let neighbours = neighbours(dictionary)?;
    let mut features = Vec::with_capacity(d_sae);
    for (index, (feature_state, (top_logits, bottom_logits))) in state.features.iter().zip(logit_effects).enumerate() {
        let feature = index as u32;
        let mut top_tokens: Vec<(String, usize)> = Vec::new();
        let mut top_contexts = Vec::new();
        for (rank, example) in feature_state.top.iter().enumerate() {
            let window = window_of(windows, example, feature)?;
            let position = example.position as usize;
            let peak = names.name(window.tokens[position])?.trim().to_string();
            match top_tokens.iter_mut().find(|(t, _)| *t == peak) {
                Some((_, count)) => *count += 1,
                None if !peak.is_empty() => top_tokens.push((peak, 1)),
                None => {}
            }
            if rank < CONTEXT_EXAMPLES {
                let from = position.saturating_sub(CONTEXT_BEFORE).max(1);
                let to = (position + CONTEXT_AFTER + 1).min(window.tokens.len());
                top_contexts.push(tokenizer.decode(&window.tokens[from..to])?);
            }
        }
        // Most frequent peak tokens first; ties keep the order of the examples.
        top_tokens.sort_by(|a, b| b.1.cmp(&a.1));
        let decoder = dictionary.decoder_row(index).to_vec();
        features.push(FeatureRecord {
            dictionary_id: dictionary_id.to_string(),
            feature,
            max_activation: feature_state.max,
            mean_activation: feature_state.mean() as f32,
            density: if state.tokens == 0 { 0.0 } else { feature_state.fire_count as f64 / state.tokens as f64 },
            fire_count: feature_state.fire_count,
            histogram_width: feature_state.histogram.width() as f32,
            histogram_counts: feature_state.histogram.bins().to_vec(),
            top_logits,
            bottom_logits,
            neighbours: neighbours[index].clone(),
            top_tokens: top_tokens.into_iter().take(10).map(|(t, _)| t).collect(),
            top_contexts,
            decoder_norm: decoder.iter().map(|v| v * v).sum::<f32>().sqrt(),
            decoder,
            label: None,
        });
    }
    Ok(features)
}

fn window_of<'w>(windows: &'w BTreeMap<u64, Window>, example: &Example, feature: u32) -> Result<&'w Window> {
    windows.get(&example.window).ok_or_else(|| IndexError::InvalidJob(format!("state has no window {} for feature {feature}; the checkpoint is inconsistent", example.window)))
}

/// Every example of a dictionary (each feature's top examples, then its interval samples),
/// handed to `emit` in chunks of about `chunk_rows` rows so that they never all sit in
/// memory: a window's tokens and activations are repeated in each of its examples. Stops
/// early, without error, when `emit` returns false (the consumer has gone).
pub fn example_chunks(
    tokenizer: &Tokenizer,
    dictionary_id: &str,
    state: &DictionaryState,
    windows: &BTreeMap<u64, Window>,
    chunk_rows: usize,
    mut emit: impl FnMut(Vec<ExampleRecord>) -> bool,
) -> Result<()> {
    let mut names = TokenNames::new(tokenizer);
    let mut chunk = Vec::with_capacity(chunk_rows);
    for (index, feature_state) in state.features.iter().enumerate() {
        let feature = index as u32;
        let mut record = |example: &Example, kind: ExampleKind, rank: usize| -> Result<ExampleRecord> {
            let window = window_of(windows, example, feature)?;
            let mut activations = vec![0f32; window.tokens.len()];
            for &(position, value) in &example.activations {
                activations[position as usize] = value;
            }
            let (document_id, document_offset) = window.origin(example.position as usize);
            Ok(ExampleRecord {
                dictionary_id: dictionary_id.to_string(),
                feature,
                kind,
                rank: rank as u32,
                max_activation: example.activation,
                max_position: u32::from(example.position),
                window: window.index,
                token_ids: window.tokens.clone(),
                tokens: window.tokens.iter().map(|&t| names.name(t)).collect::<Result<_>>()?,
                activations,
                document_id,
                document_offset,
            })
        };
        for (rank, example) in feature_state.top.iter().enumerate() {
            chunk.push(record(example, ExampleKind::Top, rank)?);
        }
        let width = feature_state.intervals.width() as f32;
        for (interval, samples) in feature_state.intervals.bins().iter().enumerate() {
            let kind = ExampleKind::Interval { index: interval as u32, low: interval as f32 * width, high: (interval + 1) as f32 * width };
            for (rank, example) in samples.examples.iter().enumerate() {
                chunk.push(record(example, kind, rank)?);
            }
        }
        if chunk.len() >= chunk_rows && !emit(std::mem::replace(&mut chunk, Vec::with_capacity(chunk_rows))) {
            return Ok(());
        }
    }
    if !chunk.is_empty() {
        emit(chunk);
    }
    Ok(())
}

fn decoder_chunk(dictionary: &Dictionary, from: usize, to: usize, normalize: bool) -> Result<Tensor> {
    let d = dictionary.info().d_out;
    let mut rows = Vec::with_capacity((to - from) * d);
    for f in from..to {
        let row = dictionary.decoder_row(f);
        let scale = if normalize { 1.0 / row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12) } else { 1.0 };
        rows.extend(row.iter().map(|v| v * scale));
    }
    Ok(Tensor::from_vec(rows, (to - from, d), &Device::Cpu)?)
}

/// Indices of the `n` largest values (descending, ties by index).
fn top_indices(values: &[f32], n: usize, skip: Option<usize>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).filter(|&i| Some(i) != skip).collect();
    let n = n.min(order.len());
    let cmp = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    if n < order.len() {
        order.select_nth_unstable_by(n, cmp);
        order.truncate(n);
    }
    order.sort_by(cmp);
    order
}

type LogitPair = (Vec<LogitEffect>, Vec<LogitEffect>);

fn logit_effects(model: &Model, dictionary: &Dictionary, names: &mut TokenNames) -> Result<Vec<LogitPair>> {
    // [d_model, vocab] for the matmul, whichever way the model stores it.
    let unembedding = model.unembedding().to_dtype(candle_core::DType::F32)?;
    let d_model = dictionary.info().d_out;
    let unembedding_t = if unembedding.dims()[0] == d_model { unembedding } else { unembedding.t()?.contiguous()? };
    let d_sae = dictionary.info().d_sae;
    let mut out = Vec::with_capacity(d_sae);
    for from in (0..d_sae).step_by(CHUNK) {
        let to = (from + CHUNK).min(d_sae);
        // On the model's device (a GPU makes this [d_sae, vocab] product quick).
        let logits: Vec<Vec<f32>> = decoder_chunk(dictionary, from, to, false)?.to_device(unembedding_t.device())?.matmul(&unembedding_t)?.to_vec2()?;
        for row in logits {
            let negated: Vec<f32> = row.iter().map(|v| -v).collect();
            let effect = |i: usize, names: &mut TokenNames| -> Result<LogitEffect> { Ok(LogitEffect { token_id: i as u32, token: names.name(i as u32)?, value: row[i] }) };
            let top = top_indices(&row, LOGIT_EFFECTS, None).into_iter().map(|i| effect(i, names)).collect::<Result<_>>()?;
            let bottom = top_indices(&negated, LOGIT_EFFECTS, None).into_iter().map(|i| effect(i, names)).collect::<Result<_>>()?;
            out.push((top, bottom));
        }
    }
    Ok(out)
}

/// The nearest features by decoder cosine (exact).
fn neighbours(dictionary: &Dictionary) -> Result<Vec<Vec<Neighbour>>> {
    let d_sae = dictionary.info().d_sae;
    let all_t = decoder_chunk(dictionary, 0, d_sae, true)?.t()?.contiguous()?;
    let mut out = Vec::with_capacity(d_sae);
    for from in (0..d_sae).step_by(CHUNK) {
        let to = (from + CHUNK).min(d_sae);
        let cosines: Vec<Vec<f32>> = decoder_chunk(dictionary, from, to, true)?.matmul(&all_t)?.to_vec2()?;
        for (i, row) in cosines.iter().enumerate() {
            let nearest = top_indices(row, NEIGHBOURS, Some(from + i));
            out.push(nearest.into_iter().map(|j| Neighbour { feature: j as u32, cosine: row[j] }).collect());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::top_indices;

    #[test]
    fn top_indices_sorted_with_ties_by_index() {
        let values = [0.5, 2.0, 2.0, -1.0, 3.0];
        assert_eq!(top_indices(&values, 3, None), vec![4, 1, 2]);
        assert_eq!(top_indices(&values, 10, Some(4)), vec![1, 2, 0, 3]);
    }
}
