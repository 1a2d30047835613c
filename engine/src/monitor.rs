//! Monitor reads: a detector's signal at every token, from what one pass of the feature lens
//! gives (dictionary codes and hook activations), then aggregated over the tokens in scope
//! with the spans where it crossed the threshold.
//!
//! Signals are linear in what they read, so aggregating per-token scores by their mean is
//! the same as scoring the mean-pooled activation: a probe trained on mean-pooled
//! activations (`loupe probe train`) scores a text exactly as it did in training under
//! [`Aggregation::Mean`], and a feature ranked by its max over tokens under
//! [`Aggregation::Max`].

use std::collections::BTreeMap;

use candle_core::Tensor;
use loupe_schema::hook::HookPoint;
use serde::{Deserialize, Serialize};

use crate::dictionary::SparseActs;
use crate::error::{EngineError, Result};

/// What a detector reads at each token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Signal {
    /// One feature's activation in the dictionary called `dictionary`.
    Feature { dictionary: String, feature: u32 },
    /// `Σ w_i f_i + bias` over features of one dictionary (a sparse probe).
    Features { dictionary: String, weights: Vec<(u32, f32)>, bias: f32 },
    /// `w·x + bias` on a hook's activation (a logistic or DiffMean probe, a stored vector).
    Linear { hook: HookPoint, weights: Vec<f32>, bias: f32 },
}

/// How per-token values become one score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Aggregation {
    Max,
    Mean,
    /// The largest mean over `window` consecutive tokens in scope (all of them if fewer).
    RollingMean { window: usize },
    /// The last token in scope.
    Last,
}

/// A run of consecutive tokens in scope whose value is above the threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Span {
    /// Token positions `[start, end)`.
    pub start: usize,
    pub end: usize,
    pub peak: usize,
    pub peak_value: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    pub score: f32,
    pub fired: bool,
    pub spans: Vec<Span>,
}

/// A detector: its signal, how it is aggregated over a text, and when it fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detector {
    pub signal: Signal,
    pub aggregation: Aggregation,
    /// Fires when the aggregated score is above this.
    pub threshold: f32,
}

/// The signal's value at each of the `tokens` rows: `codes` are the dictionaries' codes of
/// those rows by dictionary id, `captured[hook]` the hook's activations `[tokens, width]`.
pub fn token_values(signal: &Signal, codes: &[(&str, &SparseActs)], captured: &BTreeMap<HookPoint, Tensor>, tokens: usize) -> Result<Vec<f32>> {
    let codes_of = |d: &str| -> Result<&SparseActs> {
        let c = codes.iter().find(|(id, _)| *id == d).map(|(_, c)| *c).ok_or_else(|| EngineError::InvalidInput(format!("the signal reads dictionary {d:?}, which was not encoded")))?;
        if c.n_tokens() != tokens {
            return Err(EngineError::InvalidInput(format!("codes of {} tokens for {tokens} tokens", c.n_tokens())));
        }
        Ok(c)
    };
    match signal {
        Signal::Feature { dictionary, feature } => {
            let c = codes_of(dictionary)?;
            Ok((0..tokens).map(|t| activation(c, t, *feature)).collect())
        }
        Signal::Features { dictionary, weights, bias } => {
            let c = codes_of(dictionary)?;
            Ok((0..tokens).map(|t| bias + weights.iter().map(|(f, w)| w * activation(c, t, *f)).sum::<f32>()).collect())
        }
        Signal::Linear { hook, weights, bias } => {
            let x = captured.get(hook).ok_or_else(|| EngineError::InvalidInput(format!("the pass did not capture {hook}")))?;
            let (rows, width) = x.dims2()?;
            if rows != tokens || width != weights.len() {
                return Err(EngineError::InvalidInput(format!("{hook} is [{rows}, {width}]; the probe has {} weights for {tokens} tokens", weights.len())));
            }
            let rows: Vec<Vec<f32>> = x.to_vec2()?;
            Ok(rows.iter().map(|r| bias + r.iter().zip(weights).map(|(a, w)| a * w).sum::<f32>()).collect())
        }
    }
}

fn activation(codes: &SparseActs, token: usize, feature: u32) -> f32 {
    let (indices, values) = codes.token(token);
    indices.iter().position(|&i| i == feature).map_or(0.0, |i| values[i])
}

/// The score of `values` over the tokens where `in_scope` is true (NaN if none is).
pub fn aggregate(values: &[f32], in_scope: &[bool], aggregation: Aggregation) -> f32 {
    let kept: Vec<f32> = values.iter().zip(in_scope).filter(|(_, &s)| s).map(|(&v, _)| v).collect();
    if kept.is_empty() {
        return f32::NAN;
    }
    match aggregation {
        Aggregation::Max => kept.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        Aggregation::Mean => kept.iter().sum::<f32>() / kept.len() as f32,
        Aggregation::Last => kept[kept.len() - 1],
        Aggregation::RollingMean { window } => {
            let window = window.clamp(1, kept.len());
            kept.windows(window).map(|w| w.iter().sum::<f32>() / window as f32).fold(f32::NEG_INFINITY, f32::max)
        }
    }
}

/// Runs of consecutive in-scope tokens whose value is above `threshold`, with their peaks.
pub fn spans(values: &[f32], in_scope: &[bool], threshold: f32) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::new();
    let mut open: Option<Span> = None;
    for (t, (&v, &s)) in values.iter().zip(in_scope).enumerate() {
        if s && v > threshold {
            let span = open.get_or_insert(Span { start: t, end: t, peak: t, peak_value: v });
            span.end = t + 1;
            if v > span.peak_value {
                span.peak = t;
                span.peak_value = v;
            }
        } else if let Some(span) = open.take() {
            out.push(span);
        }
    }
    out.extend(open);
    out
}

/// A detector's verdict on one text: the aggregated score, whether it is above `threshold`,
/// and where the per-token signal crossed it.
pub fn score(values: &[f32], in_scope: &[bool], aggregation: Aggregation, threshold: f32) -> Scored {
    let score = aggregate(values, in_scope, aggregation);
    Scored { score, fired: score > threshold, spans: spans(values, in_scope, threshold) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn aggregations_follow_their_definitions() {
        let values = [1.0, 5.0, 2.0, 4.0, 9.0];
        let scope = [true, true, true, true, false];
        assert_eq!(aggregate(&values, &scope, Aggregation::Max), 5.0);
        assert_eq!(aggregate(&values, &scope, Aggregation::Mean), 3.0);
        assert_eq!(aggregate(&values, &scope, Aggregation::Last), 4.0);
        assert_eq!(aggregate(&values, &scope, Aggregation::RollingMean { window: 2 }), 3.5);
        assert_eq!(aggregate(&values, &scope, Aggregation::RollingMean { window: 10 }), 3.0);
        assert!(aggregate(&values, &[false; 5], Aggregation::Max).is_nan());
    }

    #[test]
    fn spans_are_runs_above_the_threshold_in_scope() {
        let values = [0.0, 3.0, 4.0, 1.0, 5.0, 6.0, 7.0];
        let scope = [true, true, true, true, true, false, true];
        let found = spans(&values, &scope, 2.0);
        assert_eq!(
            found,
            vec![
                Span { start: 1, end: 3, peak: 2, peak_value: 4.0 },
                Span { start: 4, end: 5, peak: 4, peak_value: 5.0 },
                Span { start: 6, end: 7, peak: 6, peak_value: 7.0 },
            ]
        );
        let verdict = score(&values, &scope, Aggregation::Mean, 2.0);
        assert!(verdict.fired && (verdict.score - 20.0 / 6.0).abs() < 1e-6);
    }

    #[test]
    fn a_linear_signal_averaged_over_tokens_scores_the_mean_pooled_activation() {
        let x = Tensor::new(&[[1.0f32, 2.0], [3.0, -1.0], [0.5, 0.5]], &Device::Cpu).unwrap();
        let hook = HookPoint::resid_post(9);
        let captured = BTreeMap::from([(hook, x)]);
        let probe = Signal::Linear { hook, weights: vec![0.5, -2.0], bias: 0.25 };
        let values = token_values(&probe, &[], &captured, 3).unwrap();
        let pooled = [(1.0 + 3.0 + 0.5) / 3.0, (2.0 - 1.0 + 0.5) / 3.0];
        let expected = 0.5 * pooled[0] - 2.0 * pooled[1] + 0.25;
        assert!((aggregate(&values, &[true; 3], Aggregation::Mean) - expected).abs() < 1e-6);
        let wrong = Signal::Linear { hook, weights: vec![1.0; 3], bias: 0.0 };
        assert!(token_values(&wrong, &[], &captured, 3).unwrap_err().to_string().contains("3 weights"));
    }

    #[test]
    fn feature_signals_read_the_codes() {
        let codes = SparseActs::from_rows(8, vec![vec![(2, 1.5), (5, 0.5)], vec![], vec![(5, 2.0)]]);
        let one = Signal::Feature { dictionary: "res".into(), feature: 5 };
        assert_eq!(token_values(&one, &[("res", &codes)], &BTreeMap::new(), 3).unwrap(), vec![0.5, 0.0, 2.0]);
        let sparse = Signal::Features { dictionary: "res".into(), weights: vec![(2, 2.0), (5, -1.0)], bias: 1.0 };
        assert_eq!(token_values(&sparse, &[("res", &codes)], &BTreeMap::new(), 3).unwrap(), vec![3.5, 1.0, -1.0]);
        assert!(token_values(&one, &[], &BTreeMap::new(), 3).unwrap_err().to_string().contains("res"));
    }
}

/// Each detector's per-token values and verdict on one token sequence, from one pass of
/// `lens` (to the deepest hook the detectors read). `in_scope` says which tokens count
/// (the caller leaves out BOS and other special tokens).
pub fn run_detectors(lens: &crate::FeatureLens, detectors: &[Detector], ids: &[u32], in_scope: &[bool]) -> Result<Vec<(Vec<f32>, Scored)>> {
    if in_scope.len() != ids.len() {
        return Err(EngineError::InvalidInput(format!("{} scope flags for {} tokens", in_scope.len(), ids.len())));
    }
    let mut hooks = crate::Hooks::new();
    let mut dictionaries: Vec<usize> = Vec::new();
    for detector in detectors {
        match &detector.signal {
            Signal::Linear { hook, .. } => hooks = hooks.capture(*hook),
            Signal::Feature { dictionary, .. } | Signal::Features { dictionary, .. } => {
                let at = lens.position(dictionary).ok_or_else(|| EngineError::InvalidInput(format!("dictionary {dictionary:?} is not loaded")))?;
                if !dictionaries.contains(&at) {
                    dictionaries.push(at);
                }
            }
        }
    }
    let read = crate::Read { hooks, ..crate::Read::only(dictionaries.clone(), crate::Rows::Real) };
    let out = lens.run(&crate::TokenBatch::single(ids)?, &read)?;
    let codes: Vec<(&str, &SparseActs)> = dictionaries.iter().zip(&out.codes).map(|(&at, c)| (lens.dictionaries()[at].id.as_str(), &c.features)).collect();
    detectors
        .iter()
        .map(|d| {
            let values = token_values(&d.signal, &codes, &out.captured, ids.len())?;
            let verdict = score(&values, in_scope, d.aggregation, d.threshold);
            Ok((values, verdict))
        })
        .collect()
}
