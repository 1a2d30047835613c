//! Per-feature reducers: top-K examples, interval samples, histogram, density, max, mean.
//!
//! Every reducer is exact and order-independent, so a checkpointed, resumed, sharded or
//! appended run gives the same state as one pass:
//! - top-K keeps the K windows with the highest max activation, ties broken by window index;
//! - interval samples keep, per activation bin, the examples with the smallest seeded hash
//!   of (feature, window): a bottom-k sample, which is a uniform random sample that merges
//!   exactly (reservoir sampling by priorities);
//! - sums are kept in fixed point (integers), so their order does not matter.
//!
//! An example is one (window, feature) pair; its activation is the feature's max over the
//! window's tokens. BOS (position 0) never counts toward statistics or examples.

use serde::{Deserialize, Serialize};

use crate::bins::{BinContent, DoublingBins};

/// Histogram resolution (bins of equal width from 0 to max).
pub const HISTOGRAM_BINS: usize = 64;
/// Activation intervals for interval samples: 9 to 16 intervals of equal width from 0 to max.
pub const INTERVAL_BINS: usize = 16;
/// Fixed-point scale of activation sums (2^32): exact, order-independent addition.
const SUM_SCALE: f64 = 4_294_967_296.0;

/// Reducer settings (part of a job's identity: changing them starts a new state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReducerConfig {
    pub top_k: usize,
    pub interval_samples: usize,
    pub seed: u64,
}

/// One window in which a feature fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// The feature's max over the window's tokens (BOS excluded).
    pub activation: f32,
    pub window: u64,
    /// First position of that max.
    pub position: u16,
    /// Seeded hash of (feature, window): the sampling priority, smallest first.
    pub priority: u64,
    /// The feature's non-zero activations in the window, BOS included, by position.
    pub activations: Vec<(u16, f32)>,
}

impl Example {
    /// Top-K order: stronger first, then earlier window.
    fn ranks_before(&self, activation: f32, window: u64) -> bool {
        self.activation > activation || (self.activation == activation && self.window < window)
    }
}

/// The sampled examples of one activation interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Samples {
    pub capacity: usize,
    /// Smallest priority first.
    pub examples: Vec<Example>,
}

impl Samples {
    fn admits(&self, priority: u64, window: u64) -> bool {
        self.examples.len() < self.capacity || self.examples.last().is_some_and(|last| (priority, window) < (last.priority, last.window))
    }

    fn insert(&mut self, example: Example) {
        let at = self.examples.partition_point(|e| (e.priority, e.window) < (example.priority, example.window));
        self.examples.insert(at, example);
        self.examples.truncate(self.capacity);
    }
}

impl BinContent for Samples {
    fn absorb(&mut self, other: Self) {
        self.capacity = self.capacity.max(other.capacity);
        for example in other.examples {
            if self.admits(example.priority, example.window) {
                self.insert(example);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureState {
    pub fire_count: u64,
    pub sum_fixed: i128,
    pub max: f32,
    pub histogram: DoublingBins<u64>,
    pub intervals: DoublingBins<Samples>,
    /// Best first, at most K.
    pub top: Vec<Example>,
}

impl FeatureState {
    fn new() -> Self {
        FeatureState { fire_count: 0, sum_fixed: 0, max: 0.0, histogram: DoublingBins::new(HISTOGRAM_BINS), intervals: DoublingBins::new(INTERVAL_BINS), top: Vec::new() }
    }

    pub fn mean(&self) -> f64 {
        if self.fire_count == 0 {
            0.0
        } else {
            self.sum_fixed as f64 / SUM_SCALE / self.fire_count as f64
        }
    }

    fn admits_top(&self, k: usize, activation: f32, window: u64) -> bool {
        self.top.len() < k || self.top.last().is_some_and(|worst| !worst.ranks_before(activation, window))
    }

    fn insert_top(&mut self, k: usize, example: Example) {
        let at = self.top.partition_point(|e| e.ranks_before(example.activation, example.window));
        self.top.insert(at, example);
        self.top.truncate(k);
    }

    fn merge(&mut self, other: FeatureState, k: usize) {
        self.fire_count += other.fire_count;
        self.sum_fixed += other.sum_fixed;
        self.max = self.max.max(other.max);
        self.histogram.merge(other.histogram);
        self.intervals.merge(other.intervals);
        for example in other.top {
            if self.admits_top(k, example.activation, example.window) {
                self.insert_top(k, example);
            }
        }
    }

    /// Windows that this feature's examples point to.
    pub fn windows(&self) -> impl Iterator<Item = u64> + '_ {
        self.top.iter().chain(self.intervals.bins().iter().flat_map(|s| s.examples.iter())).map(|e| e.window)
    }
}

/// The reducers of every feature of one dictionary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DictionaryState {
    pub config: ReducerConfig,
    /// Tokens counted (BOS and padding excluded).
    pub tokens: u64,
    pub features: Vec<FeatureState>,
}

/// SplitMix64: a fixed, seeded hash for sampling priorities.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn priority(seed: u64, feature: u32, window: u64) -> u64 {
    mix(mix(seed ^ mix(u64::from(feature))) ^ window)
}

impl DictionaryState {
    pub fn new(d_sae: usize, config: ReducerConfig) -> Self {
        DictionaryState { config, tokens: 0, features: (0..d_sae).map(|_| FeatureState::new()).collect() }
    }

    /// Folds one feature's activations in one window (positions ascending) into its state.
    /// Returns whether an example of this window was kept (so the window must be stored).
    pub fn observe(&mut self, feature: u32, window: u64, activations: &[(u16, f32)]) -> bool {
        let config = self.config;
        let state = &mut self.features[feature as usize];
        let mut best: Option<(f32, u16)> = None;
        for &(position, value) in activations {
            if position == 0 || value <= 0.0 {
                continue;
            }
            state.fire_count += 1;
            state.sum_fixed += (f64::from(value) * SUM_SCALE).round() as i128;
            *state.histogram.bin_mut(value) += 1;
            if best.is_none_or(|(max, _)| value > max) {
                best = Some((value, position));
            }
        }
        let Some((activation, position)) = best else { return false };
        state.max = state.max.max(activation);
        let priority = priority(config.seed, feature, window);
        let make = || Example { activation, window, position, priority, activations: activations.to_vec() };
        let mut kept = false;
        if state.admits_top(config.top_k, activation, window) {
            state.insert_top(config.top_k, make());
            kept = true;
        }
        let samples = state.intervals.bin_mut(activation);
        samples.capacity = config.interval_samples;
        if samples.admits(priority, window) {
            samples.insert(make());
            kept = true;
        }
        kept
    }

    pub fn merge(&mut self, other: DictionaryState) {
        let k = self.config.top_k;
        self.tokens += other.tokens;
        for (mine, theirs) in self.features.iter_mut().zip(other.features) {
            mine.merge(theirs, k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ReducerConfig {
        ReducerConfig { top_k: 3, interval_samples: 2, seed: 7 }
    }

    /// Deterministic pseudo-random activations of 4 features over 60 windows, with ties.
    fn stream() -> Vec<(u32, u64, Vec<(u16, f32)>)> {
        let mut out = Vec::new();
        for window in 0..60u64 {
            for feature in 0..4u32 {
                let h = mix(window * 31 + u64::from(feature));
                if h % 3 == 0 {
                    continue;
                }
                let acts: Vec<(u16, f32)> = (0..4u16).map(|p| (p, ((mix(h + u64::from(p)) % 8) as f32) * 0.5)).filter(|(_, v)| *v > 0.0).collect();
                out.push((feature, window, acts));
            }
        }
        out
    }

    fn run(items: &[(u32, u64, Vec<(u16, f32)>)]) -> DictionaryState {
        let mut state = DictionaryState::new(4, config());
        for (feature, window, acts) in items {
            state.observe(*feature, *window, acts);
        }
        state
    }

    #[test]
    fn top_k_matches_sorting_with_ties_by_window() {
        let items = stream();
        let state = run(&items);
        for feature in 0..4u32 {
            let mut expected: Vec<(f32, u64)> =
                items.iter().filter(|(f, ..)| *f == feature).filter_map(|(_, w, acts)| acts.iter().filter(|(p, v)| *p > 0 && *v > 0.0).map(|(_, v)| *v).reduce(f32::max).map(|m| (m, *w))).collect();
            expected.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            expected.truncate(3);
            let got: Vec<(f32, u64)> = state.features[feature as usize].top.iter().map(|e| (e.activation, e.window)).collect();
            assert_eq!(got, expected, "feature {feature}");
        }
    }

    #[test]
    fn any_split_and_order_merges_to_the_same_state() {
        let items = stream();
        let whole = run(&items);
        let mut reversed = items.clone();
        reversed.reverse();
        assert_eq!(run(&reversed), whole);
        let (even, odd): (Vec<_>, Vec<_>) = items.iter().cloned().partition(|(_, w, _)| w % 2 == 0);
        let mut merged = run(&odd);
        merged.merge(run(&even));
        assert_eq!(merged, whole);
    }

    #[test]
    fn bos_never_counts() {
        let mut state = DictionaryState::new(1, config());
        assert!(!state.observe(0, 0, &[(0, 9.0)]));
        assert_eq!(state.features[0].fire_count, 0);
        assert!(state.observe(0, 1, &[(0, 9.0), (3, 1.5)]));
        assert_eq!(state.features[0].top[0].activation, 1.5);
        assert_eq!(state.features[0].top[0].position, 3);
        assert_eq!(state.features[0].top[0].activations, vec![(0, 9.0), (3, 1.5)]);
        assert_eq!(state.features[0].mean(), 1.5);
    }
}
