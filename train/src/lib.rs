//! loupe-train: training TopK and BatchTopK SAEs on a hook of the engine (`loupe train`),
//! evaluating dictionaries on a corpus (`loupe dict eval`, [`eval`]), and linear probes
//! with the metrics monitors are judged by ([`probes`]).
//!
//! Activations stream from the model through a shuffle buffer ([`stream`]); inputs are scaled
//! so their mean norm is `sqrt(d_in)` (SAELens' `expected_average_only_in`, folded into the
//! saved weights); `b_dec` starts at the geometric median of the first buffer; AdamW with
//! warm-up and a final linear decay; unit-norm decoder rows; AuxK for dead latents. Each
//! buffer ends with a checkpoint, so an interrupted run resumes where it stopped and, being
//! seeded, produces the same weights as an uninterrupted one.

pub mod adam;
pub mod error;
pub mod eval;
pub mod probes;
pub mod sae;
pub mod save;
pub mod stream;

pub use error::{Result, TrainError};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

pub use sae::Sparsity;
pub use save::SaveDType;

use self::adam::{AdamParams, Moments};
use self::sae::{geometric_median, TrainableSae};
use self::stream::ActivationStream;
use loupe_corpus::TokenWindows;
use loupe_engine::Model;
use loupe_schema::hook::HookPoint;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub hook: String,
    pub sparsity: Sparsity,
    pub d_sae: usize,
    pub k: usize,
    /// Training tokens (BOS positions excluded).
    pub tokens: usize,
    pub batch_tokens: usize,
    pub context: usize,
    /// Windows per shuffle buffer.
    pub buffer_windows: usize,
    /// Windows per model forward pass.
    pub forward_batch: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    /// Fraction of the steps at the end over which the learning rate decays to 0.
    pub decay_fraction: f64,
    pub aux_k: usize,
    pub aux_coefficient: f64,
    /// A latent that has not fired for this many tokens counts as dead (for AuxK).
    pub dead_after_tokens: usize,
    pub seed: u64,
    pub model_name: String,
    pub dataset: String,
    pub dtype: SaveDType,
}

impl TrainConfig {
    /// Defaults for `hook` after Gao et al. (2024): AuxK with `k_aux = d_in / 2`, weight 1/32.
    pub fn new(hook: HookPoint, d_in: usize, d_sae: usize, k: usize, tokens: usize) -> Self {
        TrainConfig {
            hook: hook.to_string(),
            sparsity: Sparsity::TopK,
            d_sae,
            k,
            tokens,
            batch_tokens: 1024,
            context: 128,
            buffer_windows: 256,
            forward_batch: 32,
            lr: 4e-4,
            warmup_steps: 50,
            decay_fraction: 0.2,
            aux_k: (d_in / 2).max(1),
            aux_coefficient: 1.0 / 32.0,
            dead_after_tokens: 250_000,
            seed: 0,
            model_name: String::new(),
            dataset: String::new(),
            dtype: SaveDType::F32,
        }
    }

    fn total_steps(&self) -> usize {
        self.tokens.div_ceil(self.batch_tokens.max(1))
    }

    /// Warm-up, constant, then linear decay to zero.
    fn lr_at(&self, step: usize) -> f64 {
        let total = self.total_steps() as f64;
        let step = step as f64;
        let warmup = (step + 1.0) / (self.warmup_steps.max(1) as f64);
        let decay_start = total * (1.0 - self.decay_fraction);
        let decay = if step >= decay_start { (total - step) / (total - decay_start).max(1.0) } else { 1.0 };
        self.lr * warmup.min(1.0) * decay.clamp(0.0, 1.0)
    }

    fn validate(&self, d_in: usize) -> Result<()> {
        let bad = |what: String| Err(TrainError::InvalidInput(what));
        if self.k == 0 || self.k > self.d_sae {
            return bad(format!("k = {} must be between 1 and the number of latents ({})", self.k, self.d_sae));
        }
        if self.d_sae < d_in.min(2) || self.batch_tokens == 0 || self.tokens == 0 {
            return bad("latents, batch size and tokens must be positive".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("learning rate {} must be positive", self.lr));
        }
        Ok(())
    }
}

/// Where training is, reported after every step.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrainProgress {
    pub step: usize,
    pub tokens: usize,
    pub total_tokens: usize,
    pub fvu: f64,
    pub aux_loss: f64,
    pub l0: f64,
    pub dead_fraction: f64,
    /// Tokens already done when this run resumed from a checkpoint.
    pub resumed_at: Option<usize>,
}

/// The saved checkpoint's bookkeeping (the tensors are beside it).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    config: TrainConfig,
    buffers_done: usize,
    step: usize,
    tokens: usize,
    scale: f64,
    threshold_sum: f64,
    threshold_count: usize,
}

/// Training state: parameters, optimiser moments and dead-latent bookkeeping.
struct Run {
    sae: TrainableSae,
    state: CheckpointState,
    tokens_since_fired: Vec<u32>,
    /// Tokens each latent was active on, over the whole run (for sparsity.safetensors).
    fire_counts: Vec<f64>,
}

/// Trains an SAE and writes it to `out` as a SAELens v6 folder. A checkpoint in
/// `out/checkpoint` from the same configuration is resumed. `on_progress` runs after every
/// step; when it returns `false` training stops with [`TrainError::Interrupted`] (the last
/// checkpoint stays, and the same call resumes from it).
pub fn train(model: &Model, windows: &TokenWindows, config: &TrainConfig, out: &Path, mut on_progress: impl FnMut(&TrainProgress) -> bool) -> Result<TrainProgress> {
    let hook: HookPoint = config.hook.parse()?;
    let d_in = model.config().hook_width(hook).ok_or_else(|| TrainError::HookOutOfRange { hook: config.hook.clone(), n_layers: model.config().n_layers })?;
    config.validate(d_in)?;
    if windows.context != config.context {
        return Err(TrainError::InvalidInput(format!("corpus windows have {} tokens, the config says {}", windows.context, config.context)));
    }
    let stream = ActivationStream::new(model, windows, hook, config.buffer_windows, config.forward_batch, config.seed);
    let checkpoint_dir = out.join("checkpoint");
    // A fresh run computes the first buffer to initialise from, then trains on it.
    let (mut run, mut first_buffer) = match load_checkpoint(&checkpoint_dir, config)? {
        Some(run) => (run, None),
        None => {
            let first = stream.buffer(0)?;
            (start(&first, config, d_in)?, Some(first))
        }
    };
    let resumed_at = (run.state.tokens > 0).then_some(run.state.tokens);
    let adam_params = AdamParams::default();
    let mut progress = TrainProgress { total_tokens: config.tokens, resumed_at, tokens: run.state.tokens, ..TrainProgress::default() };

    while run.state.tokens < config.tokens {
        let started = std::time::Instant::now();
        let raw = match first_buffer.take() {
            Some(first) => first,
            None => stream.buffer(run.state.buffers_done)?,
        };
        let buffer = (raw * run.state.scale)?;
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), rows = buffer.dim(0)?, "activation buffer");
        let started = std::time::Instant::now();
        let rows = buffer.dim(0)?;
        let mut start_row = 0;
        while start_row < rows && run.state.tokens < config.tokens {
            let take = config.batch_tokens.min(rows - start_row).min(config.tokens - run.state.tokens);
            let x = buffer.narrow(0, start_row, take)?;
            start_row += take;
            let dead: Vec<bool> = run.tokens_since_fired.iter().map(|&t| t as usize >= config.dead_after_tokens).collect();
            let mut active_tokens = vec![0u32; config.d_sae];
            let lr = config.lr_at(run.state.step);
            let stats = run.sae.step(&x, config.sparsity, config.k, &dead, config.aux_k, config.aux_coefficient, lr, &adam_params, run.state.step as u64 + 1, &mut active_tokens)?;
            for ((since, count), &active) in run.tokens_since_fired.iter_mut().zip(run.fire_counts.iter_mut()).zip(&active_tokens) {
                if active > 0 {
                    *since = 0;
                    *count += active as f64;
                } else {
                    *since = since.saturating_add(take as u32);
                }
            }
            if config.sparsity == Sparsity::BatchTopK && stats.min_kept > 0.0 {
                run.state.threshold_sum += stats.min_kept;
                run.state.threshold_count += 1;
            }
            run.state.step += 1;
            run.state.tokens += take;
            progress.step = run.state.step;
            progress.tokens = run.state.tokens;
            progress.fvu = stats.fvu;
            progress.aux_loss = stats.aux_loss;
            progress.l0 = stats.l0;
            progress.dead_fraction = dead.iter().filter(|d| **d).count() as f64 / config.d_sae as f64;
            if !on_progress(&progress) {
                return Err(TrainError::Interrupted { checkpoint: checkpoint_dir.clone() });
            }
        }
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), "training on the buffer");
        run.state.buffers_done += 1;
        if run.state.tokens < config.tokens {
            save_checkpoint(&checkpoint_dir, &run)?;
        }
    }

    let tokens_seen = run.state.tokens.max(1) as f64;
    let frequency: Vec<f64> = run.fire_counts.iter().map(|count| count / tokens_seen).collect();
    let threshold = if run.state.threshold_count > 0 { run.state.threshold_sum / run.state.threshold_count as f64 } else { 0.0 };
    save::save_saelens(&run.sae, &save::SaveInfo { config, scale: run.state.scale, threshold, frequency: &frequency }, out)?;
    let _ = std::fs::remove_dir_all(&checkpoint_dir);
    Ok(progress)
}

/// A fresh run: input scale and `b_dec` from the first buffer, then a seeded initialisation.
fn start(first: &Tensor, config: &TrainConfig, d_in: usize) -> Result<Run> {
    let sample = first.narrow(0, 0, first.dim(0)?.min(8192))?;
    let mean_norm = sample.sqr()?.sum(1)?.sqrt()?.mean_all()?.to_scalar::<f32>()? as f64;
    if !(mean_norm > 0.0 && mean_norm.is_finite()) {
        return Err(TrainError::InvalidInput(format!("activations at {} have mean norm {mean_norm}: cannot train on them", config.hook)));
    }
    let scale = (d_in as f64).sqrt() / mean_norm;
    let scaled: Vec<f32> = (sample * scale)?.flatten_all()?.to_vec1()?;
    let centre = geometric_median(&scaled, d_in, 20);
    let sae = TrainableSae::init(d_in, config.d_sae, &centre, config.seed);
    Ok(Run {
        sae,
        state: CheckpointState { config: config.clone(), buffers_done: 0, step: 0, tokens: 0, scale, threshold_sum: 0.0, threshold_count: 0 },
        tokens_since_fired: vec![0; config.d_sae],
        fire_counts: vec![0.0; config.d_sae],
    })
}

const PARAM_NAMES: [&str; 4] = ["w_enc", "b_enc", "w_dec", "b_dec"];

fn save_checkpoint(dir: &Path, run: &Run) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let sae = &run.sae;
    let params = [&sae.w_enc_t, &sae.b_enc, &sae.w_dec, &sae.b_dec];
    for ((name, param), moments) in PARAM_NAMES.iter().zip(params).zip(&sae.moments) {
        tensors.insert(name.to_string(), Tensor::new(param.as_slice(), &Device::Cpu)?);
        tensors.insert(format!("{name}.adam_m"), Tensor::new(moments.m.as_slice(), &Device::Cpu)?);
        tensors.insert(format!("{name}.adam_v"), Tensor::new(moments.v.as_slice(), &Device::Cpu)?);
    }
    tensors.insert("tokens_since_fired".into(), Tensor::new(run.tokens_since_fired.as_slice(), &Device::Cpu)?);
    tensors.insert("fire_counts".into(), Tensor::new(run.fire_counts.as_slice(), &Device::Cpu)?);
    // Write beside, then swap: an interrupt mid-write keeps the previous checkpoint.
    let tmp: PathBuf = dir.with_extension("writing");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let tensors_path = tmp.join("state.safetensors");
    candle_core::safetensors::save(&tensors, &tensors_path).map_err(|e| TrainError::BadFile { path: tensors_path.clone(), format: "safetensors", reason: format!("cannot write: {e}") })?;
    let state_path = tmp.join("state.json");
    std::fs::write(&state_path, serde_json::to_string_pretty(&run.state).unwrap_or_default()).map_err(|e| TrainError::io(&state_path, e))?;
    let old = dir.with_extension("old");
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| TrainError::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| TrainError::io(dir, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

fn load_checkpoint(dir: &Path, config: &TrainConfig) -> Result<Option<Run>> {
    let state_path = dir.join("state.json");
    if !state_path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    let state: CheckpointState = serde_json::from_str(&text).map_err(|e| TrainError::BadFile { path: state_path.clone(), format: "checkpoint state", reason: e.to_string() })?;
    if &state.config != config {
        return Err(TrainError::InvalidInput(format!("{} holds a checkpoint of a run with other settings; resume it with the same settings, or delete it to start over", dir.display())));
    }
    let tensors_path = dir.join("state.safetensors");
    let mut tensors = candle_core::safetensors::load(&tensors_path, &Device::Cpu).map_err(|e| TrainError::BadFile { path: tensors_path.clone(), format: "safetensors", reason: e.to_string() })?;
    let mut take = |name: &str| tensors.remove(name).ok_or_else(|| TrainError::MissingTensor { path: tensors_path.clone(), tensor: name.into(), family: "a training checkpoint".into() });
    let mut host = |name: &str| -> Result<Vec<f32>> { Ok(take(name)?.to_dtype(DType::F32)?.to_vec1()?) };
    let mut params = Vec::new();
    let mut moments = Vec::new();
    for name in PARAM_NAMES {
        params.push(host(name)?);
        moments.push(Moments { m: host(&format!("{name}.adam_m"))?, v: host(&format!("{name}.adam_v"))? });
    }
    let tokens_since_fired: Vec<u32> = take("tokens_since_fired")?.to_dtype(DType::U32)?.to_vec1()?;
    let fire_counts: Vec<f64> = take("fire_counts")?.to_dtype(DType::F64)?.to_vec1()?;
    let d_in = params[3].len();
    let d_sae = params[1].len();
    if params[0].len() != d_in * d_sae || params[2].len() != d_in * d_sae || d_sae != config.d_sae {
        return Err(TrainError::BadFile { path: tensors_path, format: "checkpoint", reason: "parameter sizes do not match the run's settings".into() });
    }
    let params: [Vec<f32>; 4] = params.try_into().map_err(|_| TrainError::InvalidInput("checkpoint parameters".into()))?;
    let sae = TrainableSae::from_params(d_in, d_sae, params, Some(moments));
    Ok(Some(Run { sae, state, tokens_since_fired, fire_counts }))
}
