//! Steering interventions: edits of a hook's activation along a feature's decoder direction
//! or a raw vector, plugged into the forward pass as [`Intervention`]s (so they apply to
//! each token as it is computed, with or without the KV cache).
//!
//! The operations, for an activation row `x`, a direction `d` (a feature's decoder row, or
//! the vector) and its unit `d̂ = d / |d|`:
//! - `Add { s }`: `x' = x + s·d`.
//! - `Clamp { v }` (feature targets): set the feature's activation to `v` while keeping the
//!   dictionary's error term, `x' = x + (decode(f with f_i = v) - decode(f))`, which is
//!   `x + (v - f_i(x))·d` for a plain SAE (Anthropic's clamping); clamping to the current value
//!   is the identity.
//! - `Ablate`: `Clamp { v: 0 }`.
//! - `Orthogonal { s }`: replace the component along `d̂` by `s·d̂`:
//!   `x' = x - (x·d̂)d̂ + s·d̂` (Neuronpedia's orthogonal decomposition).
//! - `Cap { lo, hi }`: limit the projection on `d̂` to `[lo, hi]`:
//!   `x' = x + (clamp(x·d̂, lo, hi) - x·d̂)·d̂`.
//!
//! Strengths here are raw; the services convert "8x the max activation" and "a fraction of
//! the residual norm" to raw values before building an edit.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use loupe_schema::hook::HookPoint;

use crate::dictionary::Dictionary;
use crate::error::{EngineError, Result};
use crate::hooks::{ForwardContext, Intervention};

/// What an edit acts on.
#[derive(Clone)]
pub enum Target {
    /// Feature `feature` of a dictionary, at the hook its decoder writes (`hook_out`).
    Feature { dictionary: Arc<Dictionary>, feature: u32 },
    /// A direction at a hook (a contrast vector, or any vector of the hook's width).
    Vector { hook: HookPoint, direction: Vec<f32> },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Operation {
    Add { strength: f32 },
    Clamp { value: f32 },
    Ablate,
    Orthogonal { strength: f32 },
    Cap { lo: f32, hi: f32 },
}

/// Which positions an edit touches, counted from the start of the sequence (the prompt's
/// first token is 0; generated tokens follow it).
#[derive(Debug, Clone, PartialEq)]
pub enum Positions {
    All,
    /// Positions before `prompt_len`.
    Prompt {
        prompt_len: usize,
    },
    /// Positions from `prompt_len` on.
    Generated {
        prompt_len: usize,
    },
    Ranges(Vec<Range<usize>>),
}

/// One steering edit.
#[derive(Clone)]
pub struct Edit {
    pub target: Target,
    pub operation: Operation,
    pub positions: Positions,
    /// Positions never edited (BOS, chat markers: special tokens, unless asked for).
    pub skip: BTreeSet<usize>,
    /// Batch rows edited (None: all). A default and a steered run share a batch of two.
    pub rows: Option<Vec<usize>>,
}

impl Edit {
    pub fn new(target: Target, operation: Operation, positions: Positions) -> Result<Self> {
        let edit = Edit { target, operation, positions, skip: BTreeSet::new(), rows: None };
        edit.validate()?;
        Ok(edit)
    }

    /// The hook this edit writes.
    pub fn hook(&self) -> HookPoint {
        match &self.target {
            Target::Feature { dictionary, .. } => dictionary.info().hook_out,
            Target::Vector { hook, .. } => *hook,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(EngineError::InvalidInput(what));
        let finite = |name: &str, v: f32| if v.is_finite() { Ok(()) } else { bad(format!("{name} is {v}: give a finite number")) };
        match self.operation {
            Operation::Add { strength } | Operation::Orthogonal { strength } => finite("strength", strength)?,
            Operation::Clamp { value } => finite("clamp value", value)?,
            Operation::Ablate => {}
            Operation::Cap { lo, hi } => {
                finite("cap low", lo)?;
                finite("cap high", hi)?;
                if lo > hi {
                    return bad(format!("cap range [{lo}, {hi}] is inverted: give low <= high"));
                }
            }
        }
        match &self.target {
            Target::Feature { dictionary, feature } => {
                let info = dictionary.info();
                if *feature as usize >= info.d_sae {
                    return bad(format!("feature {feature} does not exist: the dictionary has {} features", info.d_sae));
                }
                if info.hook_in != info.hook_out && matches!(self.operation, Operation::Clamp { .. } | Operation::Ablate) {
                    return bad(format!("clamping a transcoder's feature ({} -> {}) is not supported: use add, orthogonal or cap", info.hook_in, info.hook_out));
                }
            }
            Target::Vector { direction, .. } => {
                if matches!(self.operation, Operation::Clamp { .. } | Operation::Ablate) {
                    return bad("clamp and ablate act on a dictionary feature, not a raw vector: use add, orthogonal or cap".into());
                }
                if direction.iter().any(|v| !v.is_finite()) || direction.iter().all(|v| *v == 0.0) {
                    return bad("the steering vector must be finite and non-zero".into());
                }
            }
        }
        Ok(())
    }

    /// The direction `d` the operation moves along.
    pub fn direction(&self) -> &[f32] {
        match &self.target {
            Target::Feature { dictionary, feature } => dictionary.decoder_row(*feature as usize),
            Target::Vector { direction, .. } => direction,
        }
    }

    /// Whether the edit touches `position` (of any row it edits).
    pub fn edits_position(&self, position: usize) -> bool {
        if self.skip.contains(&position) {
            return false;
        }
        match &self.positions {
            Positions::All => true,
            Positions::Prompt { prompt_len } => position < *prompt_len,
            Positions::Generated { prompt_len } => position >= *prompt_len,
            Positions::Ranges(ranges) => ranges.iter().any(|r| r.contains(&position)),
        }
    }

    /// Edits `[batch, seq, width]` rows in place (as f32 values) per the operation.
    fn apply(&self, x: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let (batch, seq, width) = x.dims3()?;
        let direction = self.direction();
        if direction.len() != width {
            return Err(EngineError::InvalidInput(format!("steering direction has width {}, but {} has width {width}", direction.len(), self.hook())));
        }
        let mut values: Vec<f32> = x.flatten_all()?.to_vec1()?;
        // The edited rows, as row indices into `values`.
        let mut edited: Vec<usize> = Vec::new();
        for b in 0..batch {
            if self.rows.as_ref().is_some_and(|rows| !rows.contains(&b)) {
                continue;
            }
            let length = ctx.lengths.get(b).copied().unwrap_or(seq);
            for t in 0..seq.min(length) {
                if self.edits_position(ctx.position_offset + t) {
                    edited.push(b * seq + t);
                }
            }
        }
        if edited.is_empty() {
            return Ok(x.clone());
        }
        let norm = direction.iter().map(|v| v * v).sum::<f32>().sqrt();
        let unit: Vec<f32> = direction.iter().map(|v| v / norm).collect();
        match self.operation {
            Operation::Add { strength } => {
                for &r in &edited {
                    values[r * width..(r + 1) * width].iter_mut().zip(direction).for_each(|(x, d)| *x += strength * d);
                }
            }
            Operation::Orthogonal { strength } => {
                for &r in &edited {
                    let row = &mut values[r * width..(r + 1) * width];
                    let along: f32 = row.iter().zip(&unit).map(|(x, u)| x * u).sum();
                    row.iter_mut().zip(&unit).for_each(|(x, u)| *x += (strength - along) * u);
                }
            }
            Operation::Cap { lo, hi } => {
                for &r in &edited {
                    let row = &mut values[r * width..(r + 1) * width];
                    let along: f32 = row.iter().zip(&unit).map(|(x, u)| x * u).sum();
                    let shift = along.clamp(lo, hi) - along;
                    row.iter_mut().zip(&unit).for_each(|(x, u)| *x += shift * u);
                }
            }
            Operation::Clamp { value } => self.clamp(&mut values, &edited, width, value)?,
            Operation::Ablate => self.clamp(&mut values, &edited, width, 0.0)?,
        }
        Ok(Tensor::from_vec(values, (batch, seq, width), &Device::Cpu)?)
    }

    /// `x' = x + decode(f with f_i = v) - decode(f)` on the edited rows: the feature is set to
    /// `v` and the dictionary's error term `x - decode(f)` is kept.
    fn clamp(&self, values: &mut [f32], edited: &[usize], width: usize, value: f32) -> Result<()> {
        let Target::Feature { dictionary, feature } = &self.target else {
            return Err(EngineError::InvalidInput("clamp needs a dictionary feature".into()));
        };
        let rows: Vec<f32> = edited.iter().flat_map(|&r| values[r * width..(r + 1) * width].iter().copied()).collect();
        let x = Tensor::from_vec(rows, (edited.len(), width), &Device::Cpu)?;
        let encoding = dictionary.encode(&x)?;
        let before = dictionary.decode(&encoding)?;
        let mut clamped = encoding;
        for t in 0..edited.len() {
            clamped.features.set(t, *feature, value);
        }
        let shift: Vec<f32> = (dictionary.decode(&clamped)? - before)?.flatten_all()?.to_vec1()?;
        for (i, &r) in edited.iter().enumerate() {
            values[r * width..(r + 1) * width].iter_mut().zip(&shift[i * width..(i + 1) * width]).for_each(|(x, s)| *x += s);
        }
        Ok(())
    }
}

impl Intervention for Edit {
    fn edit(&self, _hook: HookPoint, activation: &Tensor, ctx: &ForwardContext) -> candle_core::Result<Tensor> {
        self.apply(activation, ctx).map_err(candle_core::Error::wrap)
    }
}

/// Adds every edit to `hooks` at the hook it writes, in order.
pub fn with_edits(mut hooks: crate::hooks::Hooks, edits: &[Edit]) -> crate::hooks::Hooks {
    for edit in edits {
        hooks = hooks.edit(edit.hook(), edit.clone());
    }
    hooks
}

/// A DiffMean contrast direction and how many tokens each side averaged.
pub struct ContrastMean {
    pub direction: Vec<f32>,
    pub positive_tokens: usize,
    pub negative_tokens: usize,
}

/// DiffMean at `hook`: the mean activation over the positive sequences' tokens minus the mean
/// over the negative sequences' tokens, each sequence's first token (BOS) left out. `hooks`
/// may carry a cancel flag; the hook is captured in addition.
pub fn diffmean(model: &crate::Model, hook: HookPoint, positive: &[Vec<u32>], negative: &[Vec<u32>], hooks: &crate::Hooks) -> Result<ContrastMean> {
    let width = model.config().hook_width(hook).ok_or_else(|| EngineError::HookOutOfRange { hook: hook.to_string(), n_layers: model.config().n_layers })?;
    let hooks = hooks.clone().capture(hook);
    let mean = |side: &str, sequences: &[Vec<u32>]| -> Result<(Vec<f64>, usize)> {
        let mut sum = vec![0f64; width];
        let mut count = 0usize;
        for ids in sequences {
            let out = model.forward(&crate::TokenBatch::single(ids)?, &hooks, crate::Logits::None, None)?;
            let rows: Vec<Vec<f32>> = out.captured[&hook].squeeze(0)?.to_vec2()?;
            for row in rows.iter().skip(1) {
                sum.iter_mut().zip(row).for_each(|(s, v)| *s += *v as f64);
                count += 1;
            }
        }
        if count == 0 {
            return Err(EngineError::InvalidInput(format!("the {side} texts have no tokens after BOS")));
        }
        Ok((sum.into_iter().map(|s| s / count as f64).collect(), count))
    };
    let (p, positive_tokens) = mean("positive", positive)?;
    let (q, negative_tokens) = mean("negative", negative)?;
    Ok(ContrastMean { direction: p.iter().zip(&q).map(|(a, b)| (a - b) as f32).collect(), positive_tokens, negative_tokens })
}
