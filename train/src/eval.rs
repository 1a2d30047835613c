//! Quality of a dictionary on a corpus, as SAELens and SAEBench report it: L0, explained
//! variance, MSE, dead latents, and the cross-entropy loss recovered when the reconstruction
//! is spliced into the model (vs the clean model and vs zero-ablating the hook).
//!
//! Position 0 of every window (BOS) is neither spliced nor counted (see [`crate::corpus`]).

use std::sync::{Arc, Mutex};

use candle_core::{Tensor, D};
use loupe_schema::hook::HookPoint;

use crate::error::Result;
use loupe_corpus::TokenWindows;
use loupe_engine::lens::{run_parts, Read, Rows};
use loupe_engine::Dictionary;
use loupe_engine::{ForwardContext, Hooks};
use loupe_engine::{Logits, Model, TokenBatch};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QualityReport {
    pub dictionary: String,
    pub hook_in: String,
    pub hook_out: String,
    pub d_sae: usize,
    /// Tokens measured (BOS positions excluded).
    pub tokens: usize,
    /// Mean active latents per token.
    pub l0: f64,
    /// `1 - Σ||x - x̂||² / Σ||x - mean(x)||²`.
    pub explained_variance: f64,
    /// Mean squared error per element.
    pub mse: f64,
    /// Fraction of latents that never fired on these tokens.
    pub dead_fraction: f64,
    /// Next-token cross-entropy of the clean model.
    pub ce_loss_clean: f64,
    /// ... with the hook's activation replaced by the dictionary's reconstruction.
    pub ce_loss_spliced: f64,
    /// ... with the hook's activation replaced by zeros.
    pub ce_loss_zero_ablated: f64,
    /// `(zero - spliced) / (zero - clean)`.
    pub ce_loss_recovered: f64,
}

/// Running sums for the reconstruction metrics.
#[derive(Default)]
struct Sums {
    tokens: usize,
    active: usize,
    squared_error: f64,
    sum: Vec<f64>,
    sum_squares: Vec<f64>,
    fired: Vec<bool>,
}

/// Evaluates `dictionary` on the windows, `batch_size` windows per forward pass.
/// `progress` is told how many windows were done after each batch.
pub fn evaluate(model: &Model, dictionary: Arc<Dictionary>, windows: &TokenWindows, batch_size: usize, mut progress: impl FnMut(usize)) -> Result<QualityReport> {
    dictionary.check_model(model.config())?;
    let info = dictionary.info().clone();
    let mut sums = Sums { sum: vec![0.0; info.d_out], sum_squares: vec![0.0; info.d_out], fired: vec![false; info.d_sae], ..Sums::default() };
    let (mut ce_clean, mut ce_spliced, mut ce_zero, mut ce_count) = (0.0, 0.0, 0.0, 0usize);
    let n_windows = windows.len();
    for start in (0..n_windows).step_by(batch_size.max(1)) {
        let end = (start + batch_size.max(1)).min(n_windows);
        let sequences: Vec<Vec<u32>> = (start..end).map(|i| windows.window(i).to_vec()).collect();
        let batch = TokenBatch::right_padded(&sequences, 0)?;

        // Codes and reconstruction errors at the counted positions, and the clean logits.
        let read = Read { errors: true, logits: Logits::All, ..Read::only(vec![0], Rows::RealAfterFirst) };
        let clean = run_parts(model, &[dictionary.as_ref()], &batch, &read)?;
        accumulate(&mut sums, &clean.targets[0], &clean.errors[0], &clean.codes[0].features)?;

        let spliced = model.forward(&batch, &splice_hooks(&dictionary), Logits::All, None)?;
        let zero = model.forward(&batch, &zero_hooks(info.hook_out), Logits::All, None)?;
        let (clean_sum, count) = next_token_loss(clean.logits.as_ref(), &batch)?;
        ce_clean += clean_sum;
        ce_spliced += next_token_loss(spliced.logits.as_ref(), &batch)?.0;
        ce_zero += next_token_loss(zero.logits.as_ref(), &batch)?.0;
        ce_count += count;
        progress(end - start);
    }

    let n = sums.tokens.max(1) as f64;
    let total_variance: f64 = sums.sum.iter().zip(&sums.sum_squares).map(|(s, s2)| s2 - s * s / n).sum();
    let count = ce_count.max(1) as f64;
    let (clean, spliced, zero) = (ce_clean / count, ce_spliced / count, ce_zero / count);
    Ok(QualityReport {
        dictionary: info.source.display().to_string(),
        hook_in: info.hook_in.to_string(),
        hook_out: info.hook_out.to_string(),
        d_sae: info.d_sae,
        tokens: sums.tokens,
        l0: sums.active as f64 / n,
        explained_variance: 1.0 - sums.squared_error / total_variance,
        mse: sums.squared_error / (n * info.d_out as f64),
        dead_fraction: sums.fired.iter().filter(|f| !**f).count() as f64 / info.d_sae as f64,
        ce_loss_clean: clean,
        ce_loss_spliced: spliced,
        ce_loss_zero_ablated: zero,
        ce_loss_recovered: (zero - spliced) / (zero - clean),
    })
}

/// Adds one batch: the target rows `x`, the reconstruction error `x - x̂` and the codes.
fn accumulate(sums: &mut Sums, x: &Tensor, error: &Tensor, features: &loupe_engine::SparseActs) -> Result<()> {
    let d = sums.sum.len();
    let x: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let error: Vec<f32> = error.flatten_all()?.to_vec1()?;
    for (row, row_error) in x.chunks(d).zip(error.chunks(d)) {
        for (i, (&v, &e)) in row.iter().zip(row_error).enumerate() {
            let (v, e) = (v as f64, e as f64);
            sums.squared_error += e * e;
            sums.sum[i] += v;
            sums.sum_squares[i] += v * v;
        }
    }
    sums.tokens += x.len() / d;
    sums.active += features.nnz();
    for &index in &features.indices {
        sums.fired[index as usize] = true;
    }
    Ok(())
}

/// Replaces positions 1.. of the output hook with the reconstruction of the input hook.
fn splice_hooks(dictionary: &Arc<Dictionary>) -> Hooks {
    let info = dictionary.info();
    let (hook_in, hook_out) = (info.hook_in, info.hook_out);
    let input: Arc<Mutex<Option<Tensor>>> = Arc::default();
    let stash = input.clone();
    let dict = dictionary.clone();
    let mut hooks = Hooks::new();
    if hook_in != hook_out {
        hooks = hooks.edit(hook_in, move |_: HookPoint, x: &Tensor, _: &ForwardContext| {
            *stash.lock().expect("splice input lock") = Some(x.clone());
            Ok(x.clone())
        });
    }
    hooks.edit(hook_out, move |_: HookPoint, out: &Tensor, _: &ForwardContext| {
        let x = if hook_in == hook_out { out.clone() } else { input.lock().expect("splice input lock").take().unwrap_or_else(|| out.clone()) };
        let (batch, seq, d_in) = x.dims3()?;
        let flat = x.reshape((batch * seq, d_in))?;
        let reconstruction = dict.reconstruct(&flat).map_err(candle_core::Error::wrap)?;
        let reconstruction = reconstruction.reshape((batch, seq, out.dim(2)?))?;
        Tensor::cat(&[out.narrow(1, 0, 1)?, reconstruction.narrow(1, 1, seq - 1)?], 1)
    })
}

/// Zeros positions 1.. of `hook`.
fn zero_hooks(hook: HookPoint) -> Hooks {
    Hooks::new().edit(hook, |_: HookPoint, out: &Tensor, _: &ForwardContext| {
        let seq = out.dim(1)?;
        Tensor::cat(&[out.narrow(1, 0, 1)?, out.narrow(1, 1, seq - 1)?.zeros_like()?], 1)
    })
}

/// Summed next-token cross-entropy of predictions made at positions 1..len-1, and their count.
fn next_token_loss(logits: Option<&Tensor>, batch: &TokenBatch) -> Result<(f64, usize)> {
    let logits = logits.ok_or_else(|| crate::error::TrainError::InvalidInput("forward returned no logits".into()))?;
    let seq = logits.dim(1)?;
    if seq < 3 {
        return Ok((0.0, 0));
    }
    let predictions = logits.narrow(1, 1, seq - 2)?;
    let targets = batch.ids.narrow(1, 2, seq - 2)?;
    let log_probs = candle_nn::ops::log_softmax(&predictions, D::Minus1)?;
    let picked = log_probs.gather(&targets.unsqueeze(2)?.contiguous()?, 2)?.squeeze(2)?;
    let picked: Vec<Vec<f32>> = picked.to_vec2()?;
    let (mut total, mut count) = (0.0, 0);
    for (row, &len) in picked.iter().zip(&batch.lengths) {
        // Prediction at position p targets p + 1, which must be a real token.
        for &lp in row.iter().take(len.saturating_sub(2)) {
            total -= lp as f64;
            count += 1;
        }
    }
    Ok((total, count))
}
