//! The activation functions of dictionaries: from pre-activations `[n, d_sae]` to sparse
//! feature activations, row by row in parallel. Top-k uses partial selection
//! (`select_nth_unstable`), never a full sort.

use rayon::prelude::*;

use super::sparse::SparseActs;

#[derive(Debug, Clone, PartialEq)]
pub enum Activation {
    /// `ReLU(h)`.
    Relu,
    /// `ReLU(h) * 1[h > threshold]` (strict), per latent.
    JumpRelu { threshold: Vec<f32> },
    /// Gated SAE: the gate is `h > 0` on the gate pre-activation; the magnitude is
    /// `ReLU(h_gate_no_bias * exp(r_mag) + b_mag)` (computed by the dictionary, see `encode`).
    Gated { r_mag_exp: Vec<f32>, b_mag: Vec<f32>, b_gate: Vec<f32> },
    /// The `k` largest pre-activations, then ReLU (zeros dropped).
    TopK { k: usize },
    /// Latents split into `k` contiguous groups; the largest of each group, then ReLU.
    GroupMax { k: usize },
}

impl Activation {
    pub fn name(&self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::JumpRelu { .. } => "jumprelu",
            Activation::Gated { .. } => "gated",
            Activation::TopK { .. } => "topk",
            Activation::GroupMax { .. } => "groupmax",
        }
    }

    /// Applies the activation to the row-major `[n, d_sae]` pre-activations. For `Gated`,
    /// `pre` must hold `x · W_enc` without bias.
    pub fn apply(&self, pre: &[f32], d_sae: usize) -> SparseActs {
        let rows: Vec<Vec<(u32, f32)>> = pre.par_chunks(d_sae).map(|row| self.apply_row(row)).collect();
        SparseActs::from_rows(d_sae, rows)
    }

    fn apply_row(&self, row: &[f32]) -> Vec<(u32, f32)> {
        match self {
            Activation::Relu => nonzero(row.iter().map(|&h| h.max(0.0))),
            Activation::JumpRelu { threshold } => nonzero(row.iter().zip(threshold).map(|(&h, &t)| if h > t { h.max(0.0) } else { 0.0 })),
            Activation::Gated { r_mag_exp, b_mag, b_gate } => nonzero(row.iter().enumerate().map(|(i, &h)| if h + b_gate[i] > 0.0 { (h * r_mag_exp[i] + b_mag[i]).max(0.0) } else { 0.0 })),
            Activation::TopK { k } => top_k(row, *k),
            Activation::GroupMax { k } => group_max(row, *k),
        }
    }
}

fn nonzero(values: impl Iterator<Item = f32>) -> Vec<(u32, f32)> {
    values.enumerate().filter(|&(_, v)| v != 0.0).map(|(i, v)| (i as u32, v)).collect()
}

/// Indices and ReLU'd values of the `k` largest entries of `row`, by index, zeros dropped.
pub fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(row.len());
    if k == 0 {
        return Vec::new();
    }
    let mut order: Vec<u32> = (0..row.len() as u32).collect();
    // Descending by value; NaN sorts last so it is never selected over a number.
    let descending = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]);
    if k < row.len() {
        order.select_nth_unstable_by(k - 1, descending);
    }
    let mut chosen: Vec<(u32, f32)> = order[..k].iter().map(|&i| (i, row[i as usize].max(0.0))).filter(|&(_, v)| v > 0.0).collect();
    chosen.sort_unstable_by_key(|&(i, _)| i);
    chosen
}

fn group_max(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let group = row.len() / k.max(1);
    if group == 0 {
        return Vec::new();
    }
    row.chunks_exact(group)
        .enumerate()
        .filter_map(|(g, values)| {
            // First maximum of the group, as torch's max() returns.
            let (offset, &value) = values.iter().enumerate().fold((0, &f32::NEG_INFINITY), |best, (i, v)| if *v > *best.1 { (i, v) } else { best });
            let value = value.max(0.0);
            (value > 0.0).then_some(((g * group + offset) as u32, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_matches_a_full_sort() {
        let row: Vec<f32> = (0..97).map(|i| ((i * 37 % 97) as f32 - 40.0) * 0.5).collect();
        for k in [1, 5, 32, 97, 200] {
            let mut sorted: Vec<(u32, f32)> = row.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
            sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
            let mut expected: Vec<(u32, f32)> = sorted.into_iter().take(k).filter(|&(_, v)| v > 0.0).collect();
            expected.sort_by_key(|&(i, _)| i);
            assert_eq!(top_k(&row, k), expected, "k={k}");
        }
    }

    #[test]
    fn jumprelu_threshold_is_strict() {
        let act = Activation::JumpRelu { threshold: vec![1.0, 1.0, -1.0] };
        let acts = act.apply(&[1.0, 1.5, -0.5], 3);
        assert_eq!(acts.token(0), (&[1][..], &[1.5][..]));
    }

    #[test]
    fn group_max_takes_the_first_maximum_of_each_group() {
        let acts = Activation::GroupMax { k: 2 }.apply(&[1.0, 3.0, 3.0, -1.0, -2.0, -0.5], 6);
        assert_eq!(acts.token(0), (&[1][..], &[3.0][..]));
    }
}
