//! Sparse feature activations: for each token, the indices and values of its active features.

use candle_core::{Device, Tensor};

use crate::error::Result;

/// Feature activations of a batch of tokens in compressed-row form: token `t` has features
/// `indices[offsets[t]..offsets[t + 1]]` with the matching `values`, in ascending index order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SparseActs {
    pub d_sae: usize,
    pub offsets: Vec<usize>,
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl SparseActs {
    /// Assembles per-token rows (each sorted by feature index).
    pub fn from_rows(d_sae: usize, rows: Vec<Vec<(u32, f32)>>) -> Self {
        let total = rows.iter().map(Vec::len).sum();
        let mut acts = SparseActs { d_sae, offsets: Vec::with_capacity(rows.len() + 1), indices: Vec::with_capacity(total), values: Vec::with_capacity(total) };
        acts.offsets.push(0);
        for row in rows {
            for (index, value) in row {
                acts.indices.push(index);
                acts.values.push(value);
            }
            acts.offsets.push(acts.indices.len());
        }
        acts
    }

    pub fn n_tokens(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Active features of token `t`: (indices, values).
    pub fn token(&self, t: usize) -> (&[u32], &[f32]) {
        let range = self.offsets[t]..self.offsets[t + 1];
        (&self.indices[range.clone()], &self.values[range])
    }

    /// Number of active features, summed over tokens.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// Mean number of active features per token (L0).
    pub fn mean_l0(&self) -> f64 {
        if self.n_tokens() == 0 {
            return 0.0;
        }
        self.nnz() as f64 / self.n_tokens() as f64
    }

    /// Sets feature `feature` of token `t` to `value` (adding it if inactive, removing it at 0).
    pub fn set(&mut self, t: usize, feature: u32, value: f32) {
        let mut row: Vec<(u32, f32)> = {
            let (indices, values) = self.token(t);
            indices.iter().copied().zip(values.iter().copied()).filter(|&(i, _)| i != feature).collect()
        };
        if value != 0.0 {
            let at = row.partition_point(|&(i, _)| i < feature);
            row.insert(at, (feature, value));
        }
        let (start, end) = (self.offsets[t], self.offsets[t + 1]);
        let delta = row.len() as isize - (end - start) as isize;
        self.indices.splice(start..end, row.iter().map(|&(i, _)| i));
        self.values.splice(start..end, row.iter().map(|&(_, v)| v));
        for offset in &mut self.offsets[t + 1..] {
            *offset = (*offset as isize + delta) as usize;
        }
    }

    /// Dense `[n_tokens, d_sae]` tensor (for tests and small batches).
    pub fn to_dense(&self) -> Result<Tensor> {
        let mut dense = vec![0f32; self.n_tokens() * self.d_sae];
        for t in 0..self.n_tokens() {
            let (indices, values) = self.token(t);
            for (&i, &v) in indices.iter().zip(values) {
                dense[t * self.d_sae + i as usize] = v;
            }
        }
        Ok(Tensor::from_vec(dense, (self.n_tokens(), self.d_sae), &Device::Cpu)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_adds_replaces_and_removes_features() {
        let mut acts = SparseActs::from_rows(8, vec![vec![(1, 1.0), (5, 2.0)], vec![(0, 3.0)]]);
        acts.set(0, 3, 4.0);
        assert_eq!(acts.token(0), (&[1, 3, 5][..], &[1.0, 4.0, 2.0][..]));
        acts.set(0, 5, 0.0);
        assert_eq!(acts.token(0), (&[1, 3][..], &[1.0, 4.0][..]));
        assert_eq!(acts.token(1), (&[0][..], &[3.0][..]));
        acts.set(1, 7, -1.0);
        assert_eq!(acts.token(1), (&[0, 7][..], &[3.0, -1.0][..]));
        assert_eq!(acts.mean_l0(), 2.0);
    }
}
