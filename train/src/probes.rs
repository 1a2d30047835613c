//! Linear probes on pooled activations and their evaluation: L2-regularised logistic
//! regression (Newton's method with conjugate gradients: exact to the optimiser's tolerance,
//! so it can be checked against scikit-learn), DiffMean, the single most discriminative
//! dictionary feature, and the metrics a monitor is judged by (AUROC, average precision,
//! recall at a fixed false-positive rate, thresholds calibrated on negatives, bootstrap
//! confidence intervals).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Which part of a labelled set a text belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
    Test,
}

/// 60% train, 20% validation, 20% test, by an FNV-1a hash of the text: stable across runs,
/// machines and Rust versions, so a monitor's calibration split can be named.
pub fn split_of(text: &str) -> Split {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    match hash % 10 {
        0..=5 => Split::Train,
        6 | 7 => Split::Validation,
        _ => Split::Test,
    }
}

/// `score(x) = weights·x + bias`; positive scores lean to the positive class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearProbe {
    pub weights: Vec<f32>,
    pub bias: f32,
}

impl LinearProbe {
    pub fn score(&self, x: &[f32]) -> f32 {
        dot(&self.weights, x) + self.bias
    }

    pub fn scores(&self, rows: &[Vec<f32>]) -> Vec<f32> {
        rows.iter().map(|x| self.score(x)).collect()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Logistic regression minimising `mean_i log(1 + exp(-y_i (w·x_i + b))) + l2/2 |w|²` (the
/// bias is not penalised; scikit-learn's `C` is `1 / (l2 · n)`). Features are standardised
/// inside (and the probe returned on the original scale), which keeps Newton's steps well
/// conditioned; constant features get weight 0.
pub fn logistic_regression(x: &[Vec<f32>], y: &[bool], l2: f64) -> LinearProbe {
    fit_logistic(x, y, l2, Penalty::Original)
}

/// Which weights the L2 penalty is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Penalty {
    /// The weights on the features as given (scikit-learn's `LogisticRegression` on raw x).
    Original,
    /// The weights on standardised features (scikit-learn's `StandardScaler` then
    /// `LogisticRegression`): every feature is shrunk alike, whatever its scale, which
    /// keeps a few high-variance residual dimensions from dominating a probe.
    Standardised,
}

/// [`logistic_regression`] with the penalty on the weights `penalty` says; the probe is
/// returned on the original scale either way.
pub fn fit_logistic(x: &[Vec<f32>], y: &[bool], l2: f64, penalty_on: Penalty) -> LinearProbe {
    let n = x.len();
    let d = x.first().map_or(0, Vec::len);
    if n == 0 || d == 0 {
        return LinearProbe { weights: vec![0.0; d], bias: 0.0 };
    }
    let (mean, scale) = standardisation(x);
    let z: Vec<Vec<f64>> = x.iter().map(|row| row.iter().enumerate().map(|(j, &v)| (v as f64 - mean[j]) * scale[j]).collect()).collect();
    let signs: Vec<f64> = y.iter().map(|&p| if p { 1.0 } else { -1.0 }).collect();
    // Parameters: d weights then the bias. The penalty on standardised weights w_z is
    // l2/2 |w_z · scale|² (scale = 1/std), i.e. the same penalty as on the original scale.
    let penalty: Vec<f64> = scale
        .iter()
        .map(|s| match (*s > 0.0, penalty_on) {
            (false, _) => 1.0,
            (true, Penalty::Original) => l2 * s * s,
            (true, Penalty::Standardised) => l2,
        })
        .collect();
    let mut theta = vec![0f64; d + 1];
    let margin = |theta: &[f64], i: usize| -> f64 { z[i].iter().zip(&theta[..d]).map(|(a, b)| a * b).sum::<f64>() + theta[d] };
    let objective = |theta: &[f64]| -> f64 {
        let loss: f64 = (0..n).map(|i| softplus(-signs[i] * margin(theta, i))).sum::<f64>() / n as f64;
        loss + 0.5 * theta[..d].iter().zip(&penalty).map(|(w, p)| p * w * w).sum::<f64>()
    };
    for _ in 0..50 {
        let margins: Vec<f64> = (0..n).map(|i| margin(&theta, i)).collect();
        let probs: Vec<f64> = margins.iter().map(|&m| sigmoid(m)).collect();
        // Gradient: mean_i (p_i - t_i) [z_i, 1] + penalty ⊙ w.
        let mut grad = vec![0f64; d + 1];
        for i in 0..n {
            let r = (probs[i] - f64::from(u8::from(y[i]))) / n as f64;
            grad[..d].iter_mut().zip(&z[i]).for_each(|(g, v)| *g += r * v);
            grad[d] += r;
        }
        grad[..d].iter_mut().zip(theta[..d].iter().zip(&penalty)).for_each(|(g, (w, p))| *g += p * w);
        let grad_norm = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
        if grad_norm < 1e-10 {
            break;
        }
        // Hessian-vector product: mean_i p_i (1 - p_i) (z_i·v) [z_i, 1] + penalty ⊙ v.
        let weights: Vec<f64> = probs.iter().map(|p| p * (1.0 - p) / n as f64).collect();
        let hessian = |v: &[f64]| -> Vec<f64> {
            let mut out = vec![0f64; d + 1];
            for i in 0..n {
                let s = weights[i] * (z[i].iter().zip(&v[..d]).map(|(a, b)| a * b).sum::<f64>() + v[d]);
                out[..d].iter_mut().zip(&z[i]).for_each(|(o, a)| *o += s * a);
                out[d] += s;
            }
            out[..d].iter_mut().zip(v[..d].iter().zip(&penalty)).for_each(|(o, (vi, p))| *o += p * vi);
            out
        };
        let step = conjugate_gradient(hessian, &grad, 200, 1e-12);
        // Backtracking line search on the Newton direction (the objective is convex).
        let before = objective(&theta);
        let mut t = 1.0;
        loop {
            let candidate: Vec<f64> = theta.iter().zip(&step).map(|(a, s)| a - t * s).collect();
            if objective(&candidate) <= before - 1e-4 * t * grad.iter().zip(&step).map(|(g, s)| g * s).sum::<f64>() || t < 1e-8 {
                theta = candidate;
                break;
            }
            t *= 0.5;
        }
        if t * step.iter().map(|s| s * s).sum::<f64>().sqrt() < 1e-10 {
            break;
        }
    }
    let weights: Vec<f32> = (0..d).map(|j| (theta[j] * scale[j]) as f32).collect();
    let bias = theta[d] - (0..d).map(|j| theta[j] * scale[j] * mean[j]).sum::<f64>();
    LinearProbe { weights, bias: bias as f32 }
}

/// Solves `A s = b` for a symmetric positive-definite `A` given as a product.
fn conjugate_gradient(a: impl Fn(&[f64]) -> Vec<f64>, b: &[f64], iterations: usize, tolerance: f64) -> Vec<f64> {
    let mut s = vec![0f64; b.len()];
    let mut r = b.to_vec();
    let mut p = r.clone();
    let mut rr: f64 = r.iter().map(|v| v * v).sum();
    let target = tolerance * b.iter().map(|v| v * v).sum::<f64>();
    for _ in 0..iterations {
        if rr <= target {
            break;
        }
        let ap = a(&p);
        let alpha = rr / p.iter().zip(&ap).map(|(x, y)| x * y).sum::<f64>();
        s.iter_mut().zip(&p).for_each(|(si, pi)| *si += alpha * pi);
        r.iter_mut().zip(&ap).for_each(|(ri, api)| *ri -= alpha * api);
        let next: f64 = r.iter().map(|v| v * v).sum();
        let beta = next / rr;
        rr = next;
        p.iter_mut().zip(&r).for_each(|(pi, ri)| *pi = ri + beta * *pi);
    }
    s
}

fn softplus(v: f64) -> f64 {
    if v > 0.0 {
        v + (-v).exp().ln_1p()
    } else {
        v.exp().ln_1p()
    }
}

fn sigmoid(v: f64) -> f64 {
    if v >= 0.0 {
        1.0 / (1.0 + (-v).exp())
    } else {
        let e = v.exp();
        e / (1.0 + e)
    }
}

/// Column means and inverse standard deviations (0 for constant columns).
fn standardisation(x: &[Vec<f32>]) -> (Vec<f64>, Vec<f64>) {
    let (n, d) = (x.len() as f64, x[0].len());
    let mut mean = vec![0f64; d];
    for row in x {
        mean.iter_mut().zip(row).for_each(|(m, &v)| *m += v as f64 / n);
    }
    let mut var = vec![0f64; d];
    for row in x {
        var.iter_mut().zip(row.iter().zip(&mean)).for_each(|(s, (&v, m))| *s += (v as f64 - m).powi(2) / n);
    }
    let scale = var.iter().map(|v| if *v > 1e-12 { 1.0 / v.sqrt() } else { 0.0 }).collect();
    (mean, scale)
}

/// The bag-of-words baseline's features: presence of each token seen in at least two
/// training texts.
#[derive(Debug, Clone)]
pub struct BagOfWords {
    column: std::collections::HashMap<u32, usize>,
}

impl BagOfWords {
    /// The vocabulary of the training texts' tokens.
    pub fn fit<'a>(train: impl IntoIterator<Item = &'a [u32]>) -> Self {
        let mut df: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
        for tokens in train {
            let unique: std::collections::HashSet<u32> = tokens.iter().copied().collect();
            unique.into_iter().for_each(|t| *df.entry(t).or_default() += 1);
        }
        let mut vocabulary: Vec<u32> = df.into_iter().filter(|(_, c)| *c >= 2).map(|(t, _)| t).collect();
        vocabulary.sort_unstable();
        BagOfWords { column: vocabulary.into_iter().enumerate().map(|(j, t)| (t, j)).collect() }
    }

    pub fn len(&self) -> usize {
        self.column.len()
    }

    pub fn is_empty(&self) -> bool {
        self.column.is_empty()
    }

    /// 1 for each vocabulary token present in `tokens`, else 0.
    pub fn features(&self, tokens: &[u32]) -> Vec<f32> {
        let mut row = vec![0f32; self.column.len()];
        tokens.iter().filter_map(|t| self.column.get(t)).for_each(|&j| row[j] = 1.0);
        row
    }
}

/// The regularisation [`tuned_logistic`] chose.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Regularisation {
    pub l2: f64,
    pub standardised: bool,
}

impl std::fmt::Display for Regularisation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "L2 {:e}{}", self.l2, if self.standardised { " on standardised features" } else { "" })
    }
}

/// Logistic regression fitted on the train rows with the L2 strength and penalty (on the
/// original or the standardised weights) that score best (AUROC) on the validation rows.
pub fn tuned_logistic(train: &[Vec<f32>], y_train: &[bool], validation: &[Vec<f32>], y_validation: &[bool]) -> (LinearProbe, Regularisation) {
    let mut best: Option<(LinearProbe, Regularisation, f64)> = None;
    for penalty in [Penalty::Original, Penalty::Standardised] {
        for l2 in [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0] {
            let probe = fit_logistic(train, y_train, l2, penalty);
            let auc = auroc(&probe.scores(validation), y_validation);
            if best.as_ref().is_none_or(|b| auc > b.2) {
                best = Some((probe, Regularisation { l2, standardised: penalty == Penalty::Standardised }, auc));
            }
        }
    }
    let (probe, chosen, _) = best.expect("a grid");
    (probe, chosen)
}

/// DiffMean: `w = mean(positive) - mean(negative)`, the bias putting 0 half-way between the
/// class means along `w`.
pub fn diffmean(x: &[Vec<f32>], y: &[bool]) -> LinearProbe {
    let d = x.first().map_or(0, Vec::len);
    let mean_of = |label: bool| -> Vec<f64> {
        let rows: Vec<&Vec<f32>> = x.iter().zip(y).filter(|(_, &l)| l == label).map(|(r, _)| r).collect();
        let mut m = vec![0f64; d];
        for r in &rows {
            m.iter_mut().zip(r.iter()).for_each(|(a, &v)| *a += v as f64 / rows.len().max(1) as f64);
        }
        m
    };
    let (p, q) = (mean_of(true), mean_of(false));
    let weights: Vec<f32> = p.iter().zip(&q).map(|(a, b)| (a - b) as f32).collect();
    let midpoint: Vec<f32> = p.iter().zip(&q).map(|(a, b)| ((a + b) / 2.0) as f32).collect();
    let bias = -dot(&weights, &midpoint);
    LinearProbe { weights, bias }
}

/// Area under the ROC curve (the Mann-Whitney statistic; ties count one half). NaN when a
/// class is missing.
pub fn auroc(scores: &[f32], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks over ties.
    let mut ranks = vec![0f64; scores.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = rank;
        }
        i = j + 1;
    }
    let positives = labels.iter().filter(|&&l| l).count() as f64;
    let negatives = labels.len() as f64 - positives;
    let rank_sum: f64 = ranks.iter().zip(labels).filter(|(_, &l)| l).map(|(r, _)| r).sum();
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// Average precision: `Σ_k (R_k - R_{k-1}) P_k` over the distinct score thresholds, highest
/// first (scikit-learn's `average_precision_score`).
pub fn average_precision(scores: &[f32], labels: &[bool]) -> f64 {
    let positives = labels.iter().filter(|&&l| l).count();
    if positives == 0 {
        return f64::NAN;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp, mut ap, mut last_recall) = (0usize, 0usize, 0f64, 0f64);
    let mut i = 0;
    while i < order.len() {
        let threshold = scores[order[i]];
        while i < order.len() && scores[order[i]] == threshold {
            if labels[order[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        let recall = tp as f64 / positives as f64;
        ap += (recall - last_recall) * tp as f64 / (tp + fp) as f64;
        last_recall = recall;
    }
    ap
}

/// The smallest threshold such that at most `fpr` of `negatives` score above it (a monitor
/// fires when `score > threshold`).
pub fn threshold_at_fpr(negatives: &[f32], fpr: f64) -> f32 {
    let mut sorted = negatives.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let allowed = (fpr * sorted.len() as f64).floor() as usize;
    match sorted.get(allowed) {
        Some(&t) => t,
        None => f32::NEG_INFINITY,
    }
}

/// Rates of a threshold: (true-positive rate, false-positive rate, precision).
pub fn rates(scores: &[f32], labels: &[bool], threshold: f32) -> (f64, f64, f64) {
    let (mut tp, mut fp, mut pos, mut neg) = (0f64, 0f64, 0f64, 0f64);
    for (&s, &l) in scores.iter().zip(labels) {
        let fired = s > threshold;
        if l {
            pos += 1.0;
            tp += f64::from(u8::from(fired));
        } else {
            neg += 1.0;
            fp += f64::from(u8::from(fired));
        }
    }
    (tp / pos.max(1.0), fp / neg.max(1.0), if tp + fp > 0.0 { tp / (tp + fp) } else { f64::NAN })
}

/// Recall at the threshold that keeps the false-positive rate at most `fpr` on these
/// negatives.
pub fn recall_at_fpr(scores: &[f32], labels: &[bool], fpr: f64) -> f64 {
    let negatives: Vec<f32> = scores.iter().zip(labels).filter(|(_, &l)| !l).map(|(&s, _)| s).collect();
    rates(scores, labels, threshold_at_fpr(&negatives, fpr)).0
}

/// A 95% percentile bootstrap interval of `metric` over `resamples` resamples of the pairs.
pub fn bootstrap_ci(scores: &[f32], labels: &[bool], metric: impl Fn(&[f32], &[bool]) -> f64, resamples: usize, seed: u64) -> (f64, f64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = scores.len();
    let mut values = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        let picks: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
        let s: Vec<f32> = picks.iter().map(|&i| scores[i]).collect();
        let l: Vec<bool> = picks.iter().map(|&i| labels[i]).collect();
        let v = metric(&s, &l);
        if v.is_finite() {
            values.push(v);
        }
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values.get(((values.len().max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or(f64::NAN);
    (at(0.025), at(0.975))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_and_average_precision_on_known_cases() {
        let labels = [false, false, true, true];
        assert_eq!(auroc(&[0.1, 0.2, 0.8, 0.9], &labels), 1.0);
        assert_eq!(auroc(&[0.9, 0.8, 0.2, 0.1], &labels), 0.0);
        assert_eq!(auroc(&[0.5, 0.5, 0.5, 0.5], &labels), 0.5);
        // scikit-learn's documented example: roc_auc_score([0,0,1,1], [0.1,0.4,0.35,0.8]) = 0.75,
        // average_precision_score(...) = 0.8333.
        assert!((auroc(&[0.1, 0.4, 0.35, 0.8], &labels) - 0.75).abs() < 1e-12);
        assert!((average_precision(&[0.1, 0.4, 0.35, 0.8], &labels) - 0.833_333_333).abs() < 1e-6);
    }

    #[test]
    fn thresholds_keep_the_false_positive_rate() {
        let negatives: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let t = threshold_at_fpr(&negatives, 0.01);
        let fired = negatives.iter().filter(|&&s| s > t).count();
        assert_eq!(fired, 10);
    }

    #[test]
    fn logistic_regression_finds_the_separating_direction() {
        let mut rng = StdRng::seed_from_u64(3);
        let truth = [2.0f32, -1.0, 0.0, 0.5];
        let mut x = Vec::new();
        let mut y = Vec::new();
        for _ in 0..400 {
            let row: Vec<f32> = (0..4).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
            let p = 1.0 / (1.0 + (-(dot(&truth, &row) * 3.0)).exp());
            y.push(rng.random::<f32>() < p);
            x.push(row);
        }
        let probe = logistic_regression(&x, &y, 1e-3);
        let cosine = dot(&probe.weights, &truth) / (dot(&probe.weights, &probe.weights).sqrt() * dot(&truth, &truth).sqrt());
        assert!(cosine > 0.97, "cosine {cosine}");
        assert!(auroc(&probe.scores(&x), &y) > 0.85);
        let dm = diffmean(&x, &y);
        assert!(auroc(&dm.scores(&x), &y) > 0.8);
    }
}
