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
use std::ops::Range;

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
    /// A stored contrast vector by name (`vectors` table), read as `Linear` with bias 0:
    /// whoever holds the store resolves it with [`Signal::resolved`] before scoring.
    Vector { name: String },
}

impl Signal {
    /// This signal with a stored vector replaced by the linear read it stands for.
    pub fn resolved(&self, vector: impl FnOnce(&str) -> Result<(HookPoint, Vec<f32>)>) -> Result<Signal> {
        match self {
            Signal::Vector { name } => {
                let (hook, weights) = vector(name)?;
                Ok(Signal::Linear { hook, weights, bias: 0.0 })
            }
            other => Ok(other.clone()),
        }
    }
}

/// Which tokens of a text count. Special tokens (BOS, chat markers) never do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Scope {
    /// Chat roles whose messages count ("user", "assistant", ...); empty: all of the text.
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    #[default]
    Medium,
    High,
    Critical,
}

/// What a firing does: recorded in the audit log only, an alert sent to subscribers, or
/// (on a generation) the generation stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Log,
    #[default]
    Alert,
    Block,
}

/// How a threshold was set at a target false-positive rate on a control set of texts that
/// should not fire: enough to redo it (the texts' hash and count) and to judge it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub target_fpr: f64,
    /// The control set's name (a file, or a named set).
    pub control_set: String,
    /// SHA-256 of the control texts (or of the file they came from).
    pub control_sha256: String,
    pub control_texts: usize,
    /// The threshold it gave.
    pub threshold: f32,
    /// Anything else the calibrating tool recorded (method, validation metrics, model).
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// A named watch: its detectors (it fires when any of them does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Monitor {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub detectors: Vec<Detector>,
}

impl Monitor {
    /// Checks what can be checked without a model: detectors present, thresholds finite
    /// and non-negative, weights finite, windows and FPRs in range. Errors name the field
    /// (`detectors[i].threshold`).
    pub fn validate(&self) -> Result<()> {
        let bad = |field: String, what: String| Err(EngineError::InvalidInput(format!("{field}: {what}")));
        if self.detectors.is_empty() {
            return bad("detectors".into(), "is empty; give at least one detector".into());
        }
        for (i, d) in self.detectors.iter().enumerate() {
            let at = |f: &str| format!("detectors[{i}].{f}");
            if !d.threshold.is_finite() || d.threshold < 0.0 {
                return bad(at("threshold"), format!("{} must be a finite number >= 0 (a linear probe carries any offset in its bias)", d.threshold));
            }
            if let Aggregation::RollingMean { window } = d.aggregation {
                if window == 0 {
                    return bad(at("aggregation.window"), "must be at least 1 token".into());
                }
            }
            match &d.signal {
                Signal::Feature { dictionary, .. } if dictionary.is_empty() => return bad(at("signal.dictionary"), "is empty".into()),
                Signal::Features { dictionary, weights, bias } => {
                    if dictionary.is_empty() {
                        return bad(at("signal.dictionary"), "is empty".into());
                    }
                    if weights.is_empty() {
                        return bad(at("signal.weights"), "is empty; give (feature, weight) pairs".into());
                    }
                    if !bias.is_finite() || weights.iter().any(|(_, w)| !w.is_finite()) {
                        return bad(at("signal.weights"), "weights and bias must be finite".into());
                    }
                }
                Signal::Linear { weights, bias, .. } => {
                    if weights.is_empty() || !bias.is_finite() || weights.iter().any(|w| !w.is_finite()) {
                        return bad(at("signal.weights"), "must be non-empty and finite, as must the bias".into());
                    }
                }
                Signal::Vector { name } if name.is_empty() => return bad(at("signal.name"), "is empty".into()),
                _ => {}
            }
            if let Some(c) = &d.calibration {
                if !(c.target_fpr > 0.0 && c.target_fpr < 1.0) {
                    return bad(at("calibration.target_fpr"), format!("{} must be in (0, 1)", c.target_fpr));
                }
            }
        }
        Ok(())
    }
}

/// The hooks (linear signals) and dictionaries (feature signals) that `detectors` read.
pub fn reads(detectors: &[Detector]) -> (Vec<HookPoint>, Vec<&str>) {
    let (mut hooks, mut dictionaries) = (Vec::new(), Vec::new());
    for d in detectors {
        match &d.signal {
            Signal::Linear { hook, .. } if !hooks.contains(hook) => hooks.push(*hook),
            Signal::Feature { dictionary, .. } | Signal::Features { dictionary, .. } if !dictionaries.contains(&dictionary.as_str()) => dictionaries.push(dictionary.as_str()),
            _ => {}
        }
    }
    (hooks, dictionaries)
}

/// How per-token values become one score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Aggregation {
    Max,
    Mean,
    /// The largest mean over `window` consecutive tokens in scope (all of them if fewer).
    RollingMean {
        window: usize,
    },
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
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub severity: Severity,
    #[serde(default)]
    pub action: Action,
    /// Present when the threshold was calibrated at a false-positive rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
}

impl Detector {
    /// A detector with the default scope (all of the text), severity and action.
    pub fn new(signal: Signal, aggregation: Aggregation, threshold: f32) -> Self {
        Detector { signal, aggregation, threshold, scope: Scope::default(), severity: Severity::default(), action: Action::default(), calibration: None }
    }

    /// Thresholds are non-negative: a linear probe (or a weighted feature set) whose
    /// calibrated threshold `t` is below zero scores `w·x + b - t` against 0 instead (the same decisions; every aggregation is
    /// shift-equivariant).
    pub fn with_offset_in_bias(self) -> Self {
        match self.signal {
            Signal::Linear { hook, weights, bias } if self.threshold < 0.0 => Detector { signal: Signal::Linear { hook, weights, bias: bias - self.threshold }, threshold: 0.0, ..self },
            Signal::Features { dictionary, weights, bias } if self.threshold < 0.0 => {
                Detector { signal: Signal::Features { dictionary, weights, bias: bias - self.threshold }, threshold: 0.0, ..self }
            }
            _ => self,
        }
    }
}

/// The signal's value at each of the rows `rows` of one pass: `codes` are the dictionaries'
/// codes of the pass's rows by dictionary id, `captured[hook]` the hook's activations
/// `[pass rows, width]` (a batch of texts is one pass; each text is a range of its rows).
pub fn token_values(signal: &Signal, codes: &[(&str, &SparseActs)], captured: &BTreeMap<HookPoint, Tensor>, rows: Range<usize>) -> Result<Vec<f32>> {
    let codes_of = |d: &str| -> Result<&SparseActs> {
        let c = codes.iter().find(|(id, _)| *id == d).map(|(_, c)| *c).ok_or_else(|| EngineError::InvalidInput(format!("the signal reads dictionary {d:?}, which was not encoded")))?;
        if c.n_tokens() < rows.end {
            return Err(EngineError::InvalidInput(format!("codes of {} tokens for rows {rows:?}", c.n_tokens())));
        }
        Ok(c)
    };
    match signal {
        Signal::Feature { dictionary, feature } => {
            let c = codes_of(dictionary)?;
            Ok(rows.map(|t| activation(c, t, *feature)).collect())
        }
        Signal::Features { dictionary, weights, bias } => {
            let c = codes_of(dictionary)?;
            Ok(rows.map(|t| bias + weights.iter().map(|(f, w)| w * activation(c, t, *f)).sum::<f32>()).collect())
        }
        Signal::Vector { name } => Err(EngineError::InvalidInput(format!("the stored vector {name:?} was not resolved to its values before scoring"))),
        Signal::Linear { hook, weights, bias } => {
            let x = captured.get(hook).ok_or_else(|| EngineError::InvalidInput(format!("the pass did not capture {hook}")))?;
            let (n, width) = x.dims2()?;
            if n < rows.end || width != weights.len() {
                return Err(EngineError::InvalidInput(format!("{hook} is [{n}, {width}]; the probe has {} weights for rows {rows:?}", weights.len())));
            }
            let w = Tensor::from_slice(weights, (width, 1), x.device())?;
            let values: Vec<f32> = x.narrow(0, rows.start, rows.len())?.matmul(&w)?.flatten_all()?.to_vec1()?;
            Ok(values.into_iter().map(|v| v + bias).collect())
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

/// An aggregation kept up to date token by token (a stream, a generation): after each push,
/// [`Running::score`] equals [`aggregate`] over the values pushed so far.
#[derive(Debug, Clone)]
pub struct Running {
    aggregation: Aggregation,
    count: usize,
    sum: f64,
    max: f32,
    last: f32,
    /// The last `window` kept values and their sum, and the best full-window mean so far.
    recent: std::collections::VecDeque<f32>,
    recent_sum: f64,
    best_window: f32,
}

impl Running {
    pub fn new(aggregation: Aggregation) -> Self {
        Running { aggregation, count: 0, sum: 0.0, max: f32::NEG_INFINITY, last: f32::NAN, recent: Default::default(), recent_sum: 0.0, best_window: f32::NEG_INFINITY }
    }

    pub fn push(&mut self, value: f32, in_scope: bool) {
        if !in_scope {
            return;
        }
        self.count += 1;
        self.sum += value as f64;
        self.max = self.max.max(value);
        self.last = value;
        if let Aggregation::RollingMean { window } = self.aggregation {
            let window = window.max(1);
            self.recent.push_back(value);
            self.recent_sum += value as f64;
            if self.recent.len() > window {
                self.recent_sum -= self.recent.pop_front().unwrap_or(0.0) as f64;
            }
            if self.recent.len() == window {
                self.best_window = self.best_window.max((self.recent_sum / window as f64) as f32);
            }
        }
    }

    /// The score so far (NaN before any token in scope).
    pub fn score(&self) -> f32 {
        if self.count == 0 {
            return f32::NAN;
        }
        match self.aggregation {
            Aggregation::Max => self.max,
            Aggregation::Mean => (self.sum / self.count as f64) as f32,
            Aggregation::Last => self.last,
            Aggregation::RollingMean { window } if self.count < window.max(1) => (self.sum / self.count as f64) as f32,
            Aggregation::RollingMean { .. } => self.best_window,
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
    fn running_scores_equal_the_aggregation_of_every_prefix() {
        let values = [0.5, -1.0, 3.0, 2.0, 2.5, -0.5, 4.0, 1.0];
        let scope = [true, false, true, true, true, true, false, true];
        for aggregation in [Aggregation::Max, Aggregation::Mean, Aggregation::Last, Aggregation::RollingMean { window: 1 }, Aggregation::RollingMean { window: 3 }] {
            let mut running = Running::new(aggregation);
            for t in 0..values.len() {
                running.push(values[t], scope[t]);
                let expected = aggregate(&values[..=t], &scope[..=t], aggregation);
                assert!((running.score() - expected).abs() < 1e-6, "{aggregation:?} after {t}: {} vs {expected}", running.score());
            }
        }
        assert!(Running::new(Aggregation::Max).score().is_nan());
    }

    #[test]
    fn spans_are_runs_above_the_threshold_in_scope() {
        let values = [0.0, 3.0, 4.0, 1.0, 5.0, 6.0, 7.0];
        let scope = [true, true, true, true, true, false, true];
        let found = spans(&values, &scope, 2.0);
        assert_eq!(found, vec![Span { start: 1, end: 3, peak: 2, peak_value: 4.0 }, Span { start: 4, end: 5, peak: 4, peak_value: 5.0 }, Span { start: 6, end: 7, peak: 6, peak_value: 7.0 },]);
        let verdict = score(&values, &scope, Aggregation::Mean, 2.0);
        assert!(verdict.fired && (verdict.score - 20.0 / 6.0).abs() < 1e-6);
    }

    #[test]
    fn a_linear_signal_averaged_over_tokens_scores_the_mean_pooled_activation() {
        let x = Tensor::new(&[[1.0f32, 2.0], [3.0, -1.0], [0.5, 0.5]], &Device::Cpu).unwrap();
        let hook = HookPoint::resid_post(9);
        let captured = BTreeMap::from([(hook, x)]);
        let probe = Signal::Linear { hook, weights: vec![0.5, -2.0], bias: 0.25 };
        let values = token_values(&probe, &[], &captured, 0..3).unwrap();
        let pooled = [(1.0 + 3.0 + 0.5) / 3.0, (2.0 - 1.0 + 0.5) / 3.0];
        let expected = 0.5 * pooled[0] - 2.0 * pooled[1] + 0.25;
        assert!((aggregate(&values, &[true; 3], Aggregation::Mean) - expected).abs() < 1e-6);
        let wrong = Signal::Linear { hook, weights: vec![1.0; 3], bias: 0.0 };
        assert!(token_values(&wrong, &[], &captured, 0..3).unwrap_err().to_string().contains("3 weights"));
    }

    #[test]
    fn feature_signals_read_the_codes() {
        let codes = SparseActs::from_rows(8, vec![vec![(2, 1.5), (5, 0.5)], vec![], vec![(5, 2.0)]]);
        let one = Signal::Feature { dictionary: "res".into(), feature: 5 };
        assert_eq!(token_values(&one, &[("res", &codes)], &BTreeMap::new(), 0..3).unwrap(), vec![0.5, 0.0, 2.0]);
        let sparse = Signal::Features { dictionary: "res".into(), weights: vec![(2, 2.0), (5, -1.0)], bias: 1.0 };
        assert_eq!(token_values(&sparse, &[("res", &codes)], &BTreeMap::new(), 0..3).unwrap(), vec![3.5, 1.0, -1.0]);
        assert!(token_values(&one, &[], &BTreeMap::new(), 0..3).unwrap_err().to_string().contains("res"));
    }
}

/// Each detector's per-token values and verdict on one token sequence, from one pass of
/// `lens` (to the deepest hook the detectors read). `in_scope` says which tokens count
/// (the caller leaves out BOS and other special tokens).
pub fn run_detectors(lens: &crate::FeatureLens, detectors: &[Detector], ids: &[u32], in_scope: &[bool]) -> Result<Vec<(Vec<f32>, Scored)>> {
    if in_scope.len() != ids.len() {
        return Err(EngineError::InvalidInput(format!("{} scope flags for {} tokens", in_scope.len(), ids.len())));
    }
    let read = read_for(lens, detectors)?;
    let dictionaries = read.dictionaries.clone();
    let out = lens.run(&crate::TokenBatch::single(ids)?, &read)?;
    let codes: Vec<(&str, &SparseActs)> = dictionaries.iter().zip(&out.codes).map(|(&at, c)| (lens.dictionaries()[at].id.as_str(), &c.features)).collect();
    detectors
        .iter()
        .map(|d| {
            let values = token_values(&d.signal, &codes, &out.captured, 0..ids.len())?;
            let verdict = score(&values, in_scope, d.aggregation, d.threshold);
            Ok((values, verdict))
        })
        .collect()
}

/// The lens read that `detectors` need: their hooks captured, their dictionaries encoded,
/// every real row.
pub fn read_for(lens: &crate::FeatureLens, detectors: &[Detector]) -> Result<crate::Read> {
    let (hooks, dictionaries) = reads(detectors);
    let dictionaries = dictionaries.into_iter().map(|d| lens.position(d).ok_or_else(|| EngineError::InvalidInput(format!("dictionary {d:?} is not loaded")))).collect::<Result<Vec<usize>>>()?;
    Ok(crate::Read { hooks: crate::Hooks::new().capture_all(hooks), ..crate::Read::only(dictionaries, crate::Rows::Real) })
}
