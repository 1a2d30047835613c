//! The trainable TopK / BatchTopK SAE and one optimisation step: the normalised MSE (fraction
//! of variance unexplained) plus the AuxK loss that revives dead latents (Gao et al. 2024),
//! with decoder rows kept at unit norm.
//!
//! Gradients are written out by hand instead of using candle's autograd: only the encoder
//! matmul is dense, and everything after the top-k touches `k` latents per token, so the
//! sparse backward costs `O(batch · k · d_in)` instead of four more dense matmuls (the
//! autograd version was ~5x slower per step).

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use super::adam::{self, AdamParams, Moments};
use crate::error::Result;
use loupe_engine::dictionary::activation::top_k;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sparsity {
    /// The `k` largest latents of each token.
    TopK,
    /// The `k * batch` largest latents of the whole batch (Bussmann et al. 2024); saved as
    /// JumpReLU with the learned threshold.
    BatchTopK,
}

/// Parameters, row-major on the host. The encoder is stored transposed (`[d_sae, d_in]`, one
/// row per latent) so that both sparse gradient passes walk contiguous rows.
pub struct TrainableSae {
    pub d_in: usize,
    pub d_sae: usize,
    pub w_enc_t: Vec<f32>,
    pub b_enc: Vec<f32>,
    pub w_dec: Vec<f32>,
    pub b_dec: Vec<f32>,
    /// Adam moments of `[w_enc_t, b_enc, w_dec, b_dec]`.
    pub moments: Vec<Moments>,
}

/// What one step measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepStats {
    pub fvu: f64,
    pub aux_loss: f64,
    pub l0: f64,
    /// Smallest positive activation kept in the batch (for the BatchTopK threshold).
    pub min_kept: f64,
}

/// One active latent of one token, with the gradient flowing into its pre-activation.
struct Term {
    token: u32,
    latent: u32,
    value: f32,
    grad_pre: f32,
    /// Whether it reconstructs the input (main) or the residual error (AuxK).
    aux: bool,
}

impl TrainableSae {
    /// Unit-norm random decoder rows, encoder initialised to the decoder's transpose,
    /// `b_dec` at the given centre (geometric median of the data).
    pub fn init(d_in: usize, d_sae: usize, b_dec: &[f32], seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut w_dec: Vec<f32> = (0..d_in * d_sae).map(|_| StandardNormal.sample(&mut rng)).collect();
        normalize_rows(&mut w_dec, d_in);
        let params = [w_dec.clone(), vec![0.0; d_sae], w_dec, b_dec.to_vec()];
        Self::from_params(d_in, d_sae, params, None)
    }

    pub fn from_params(d_in: usize, d_sae: usize, params: [Vec<f32>; 4], moments: Option<Vec<Moments>>) -> Self {
        let [w_enc_t, b_enc, w_dec, b_dec] = params;
        let moments = moments.unwrap_or_else(|| [&w_enc_t, &b_enc, &w_dec, &b_dec].iter().map(|p| Moments::zeros(p.len())).collect());
        TrainableSae { d_in, d_sae, w_enc_t, b_enc, w_dec, b_dec, moments }
    }

    /// One step on `x: [batch, d_in]`. `dead` marks latents that have not fired for a while;
    /// the AuxK loss makes the `aux_k` largest of them model the residual error. Each
    /// latent's `active_tokens` grows by the number of tokens it was active on.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        x: &Tensor,
        sparsity: Sparsity,
        k: usize,
        dead: &[bool],
        aux_k: usize,
        aux_coefficient: f64,
        lr: f64,
        adam_params: &AdamParams,
        t: u64,
        active_tokens: &mut [u32],
    ) -> Result<StepStats> {
        let (d, n) = (self.d_in, self.d_sae);
        let x: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let batch = x.len() / d;
        let xc: Vec<f32> = x.par_chunks(d).flat_map_iter(|row| row.iter().zip(&self.b_dec).map(|(v, b)| v - b)).collect();
        let pre = self.pre_activations(&xc, batch)?;

        // Forward: sparse codes, reconstruction, error.
        let (codes, min_kept) = match sparsity {
            Sparsity::TopK => (pre.par_chunks(n).map(|row| top_k(row, k)).collect::<Vec<_>>(), 0.0),
            Sparsity::BatchTopK => batch_top_k(&pre, n, k * batch),
        };
        let x_hat: Vec<f32> = self.decode_rows(&codes, true);
        let error: Vec<f32> = x_hat.iter().zip(&x).map(|(h, v)| h - v).collect();
        let variance = total_variance(&x, d).max(1e-12);
        let fvu = error.iter().map(|e| (*e as f64).powi(2)).sum::<f64>() / variance;
        let grad_x_hat: Vec<f32> = error.iter().map(|e| (2.0 * *e as f64 / variance) as f32).collect();

        // AuxK: the top `aux_k` dead latents reconstruct the residual x - x̂.
        let n_dead = dead.iter().filter(|d| **d).count();
        let (aux_codes, grad_aux, aux_loss) = if n_dead > 0 && aux_coefficient > 0.0 {
            let aux_codes: Vec<Vec<(u32, f32)>> = pre
                .par_chunks(n)
                .map(|row| {
                    let masked: Vec<f32> = row.iter().zip(dead).map(|(&v, &is_dead)| if is_dead { v } else { f32::NEG_INFINITY }).collect();
                    top_k(&masked, aux_k.min(n_dead))
                })
                .collect();
            let predicted = self.decode_rows(&aux_codes, false);
            let residual: Vec<f32> = error.iter().map(|e| -e).collect();
            let residual_variance = total_variance(&residual, d);
            let diff: Vec<f32> = predicted.iter().zip(&residual).map(|(p, r)| p - r).collect();
            let aux = diff.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / residual_variance.max(1e-12);
            if aux.is_finite() && residual_variance > 0.0 {
                let scale = aux_coefficient * 2.0 / residual_variance;
                (aux_codes, diff.iter().map(|v| (*v as f64 * scale) as f32).collect(), aux)
            } else {
                (Vec::new(), Vec::new(), 0.0)
            }
        } else {
            (Vec::new(), Vec::new(), 0.0)
        };

        // Backward through the decoder to each active pre-activation.
        let mut terms: Vec<Term> = Vec::new();
        for (aux, codes, grad_out) in [(false, &codes, &grad_x_hat), (true, &aux_codes, &grad_aux)] {
            let per_token: Vec<Vec<Term>> = codes
                .par_iter()
                .enumerate()
                .map(|(token, code)| {
                    let g = &grad_out[token * d..(token + 1) * d];
                    code.iter()
                        .map(|&(latent, value)| {
                            let row = &self.w_dec[latent as usize * d..(latent as usize + 1) * d];
                            let grad_pre = row.iter().zip(g).map(|(w, g)| w * g).sum();
                            Term { token: token as u32, latent, value, grad_pre, aux }
                        })
                        .collect()
                })
                .collect();
            terms.extend(per_token.into_iter().flatten());
        }
        let mut active = 0usize;
        for term in terms.iter().filter(|t| !t.aux) {
            active_tokens[term.latent as usize] += 1;
            active += 1;
        }

        let grads = self.gradients(&terms, &xc, &grad_x_hat, &grad_aux, batch);
        self.apply(grads, lr, adam_params, t);
        Ok(StepStats { fvu, aux_loss, l0: active as f64 / batch as f64, min_kept })
    }

    /// `(x - b_dec) · W_enc + b_enc`, `[batch, d_sae]` row-major: the one dense matmul.
    fn pre_activations(&self, xc: &[f32], batch: usize) -> Result<Vec<f32>> {
        let (d, n) = (self.d_in, self.d_sae);
        let xc = Tensor::from_slice(xc, (batch, d), &Device::Cpu)?;
        let w_enc_t = Tensor::from_slice(&self.w_enc_t, (n, d), &Device::Cpu)?;
        let b_enc = Tensor::from_slice(&self.b_enc, n, &Device::Cpu)?;
        Ok(xc.matmul(&w_enc_t.t()?)?.broadcast_add(&b_enc)?.flatten_all()?.to_vec1()?)
    }

    /// `Σ value · W_dec[latent]` per token, plus `b_dec` if asked.
    fn decode_rows(&self, codes: &[Vec<(u32, f32)>], with_bias: bool) -> Vec<f32> {
        let d = self.d_in;
        let mut out = vec![0f32; codes.len() * d];
        out.par_chunks_mut(d).zip(codes).for_each(|(row, code)| {
            if with_bias {
                row.copy_from_slice(&self.b_dec);
            }
            for &(latent, value) in code {
                let w = &self.w_dec[latent as usize * d..(latent as usize + 1) * d];
                row.iter_mut().zip(w).for_each(|(o, w)| *o += value * w);
            }
        });
        out
    }

    /// Gradients of `[w_enc_t, b_enc, w_dec, b_dec]` from the active terms.
    fn gradients(&self, terms: &[Term], xc: &[f32], grad_x_hat: &[f32], grad_aux: &[f32], batch: usize) -> [Vec<f32>; 4] {
        let (d, n) = (self.d_in, self.d_sae);
        // Group terms by latent (stable, so sums run in a fixed order: deterministic).
        let mut order: Vec<u32> = (0..terms.len() as u32).collect();
        order.sort_by_key(|&i| (terms[i as usize].latent, terms[i as usize].token, terms[i as usize].aux));
        let mut starts = vec![0usize; n + 1];
        for term in terms {
            starts[term.latent as usize + 1] += 1;
        }
        for j in 0..n {
            starts[j + 1] += starts[j];
        }

        let mut grad_w_enc_t = vec![0f32; n * d];
        let mut grad_w_dec = vec![0f32; n * d];
        let mut grad_b_enc = vec![0f32; n];
        grad_w_enc_t.par_chunks_mut(d).zip(grad_w_dec.par_chunks_mut(d)).zip(grad_b_enc.par_iter_mut()).enumerate().for_each(|(j, ((g_enc, g_dec), g_b))| {
            for &i in &order[starts[j]..starts[j + 1]] {
                let term = &terms[i as usize];
                let t = term.token as usize;
                let x_row = &xc[t * d..(t + 1) * d];
                let out_grad = if term.aux { &grad_aux[t * d..(t + 1) * d] } else { &grad_x_hat[t * d..(t + 1) * d] };
                *g_b += term.grad_pre;
                g_enc.iter_mut().zip(x_row).for_each(|(g, x)| *g += term.grad_pre * x);
                g_dec.iter_mut().zip(out_grad).for_each(|(g, o)| *g += term.value * o);
            }
        });

        // b_dec enters the reconstruction directly and the encoder input as -b_dec.
        let mut by_token: Vec<Vec<&Term>> = (0..batch).map(|_| Vec::new()).collect();
        for term in terms {
            by_token[term.token as usize].push(term);
        }
        let grad_xc: Vec<Vec<f32>> = by_token
            .par_iter()
            .map(|token_terms| {
                let mut g = vec![0f32; d];
                for term in token_terms {
                    let w = &self.w_enc_t[term.latent as usize * d..(term.latent as usize + 1) * d];
                    g.iter_mut().zip(w).for_each(|(g, w)| *g += term.grad_pre * w);
                }
                g
            })
            .collect();
        let mut grad_b_dec = vec![0f32; d];
        for t in 0..batch {
            for i in 0..d {
                grad_b_dec[i] += grad_x_hat[t * d + i] - grad_xc[t][i];
            }
        }
        [grad_w_enc_t, grad_b_enc, grad_w_dec, grad_b_dec]
    }

    fn apply(&mut self, grads: [Vec<f32>; 4], lr: f64, adam_params: &AdamParams, t: u64) {
        let [g_enc, g_b_enc, mut g_dec, g_b_dec] = grads;
        // Decoder rows stay unit-norm: step only along the sphere, then renormalise.
        remove_parallel_component(&mut g_dec, &self.w_dec, self.d_in);
        let [m_enc, m_b_enc, m_dec, m_b_dec] = &mut self.moments[..] else { unreachable!("four parameters") };
        adam::update(&mut self.w_enc_t, &g_enc, m_enc, adam_params, lr, t);
        adam::update(&mut self.b_enc, &g_b_enc, m_b_enc, adam_params, lr, t);
        adam::update(&mut self.w_dec, &g_dec, m_dec, adam_params, lr, t);
        adam::update(&mut self.b_dec, &g_b_dec, m_b_dec, adam_params, lr, t);
        normalize_rows(&mut self.w_dec, self.d_in);
    }
}

/// The `count` largest positive pre-activations of the whole batch, split back into rows,
/// and the smallest one kept.
fn batch_top_k(pre: &[f32], n: usize, count: usize) -> (Vec<Vec<(u32, f32)>>, f64) {
    let mut codes: Vec<Vec<(u32, f32)>> = vec![Vec::new(); pre.len() / n];
    let mut min_kept = f32::INFINITY;
    for (flat, value) in top_k(pre, count) {
        codes[flat as usize / n].push(((flat as usize % n) as u32, value));
        min_kept = min_kept.min(value);
    }
    (codes, if min_kept.is_finite() { min_kept as f64 } else { 0.0 })
}

/// `Σ_t ||x_t - mean(x)||²` over rows of width `d`.
fn total_variance(x: &[f32], d: usize) -> f64 {
    let rows = (x.len() / d).max(1) as f64;
    let mut sum = vec![0f64; d];
    let mut sum_sq = 0f64;
    for row in x.chunks(d) {
        for (s, &v) in sum.iter_mut().zip(row) {
            *s += v as f64;
            sum_sq += (v as f64) * (v as f64);
        }
    }
    sum_sq - sum.iter().map(|s| s * s).sum::<f64>() / rows
}

/// Rows of width `d` scaled to unit L2 norm.
pub fn normalize_rows(w: &mut [f32], d: usize) {
    w.par_chunks_mut(d).for_each(|row| {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= norm);
    });
}

/// Removes from each gradient row its component along the (unit) weight row.
fn remove_parallel_component(grad: &mut [f32], w: &[f32], d: usize) {
    grad.par_chunks_mut(d).zip(w.par_chunks(d)).for_each(|(g, w)| {
        let along: f32 = g.iter().zip(w).map(|(g, w)| g * w).sum();
        g.iter_mut().zip(w).for_each(|(g, w)| *g -= along * w);
    });
}

/// Geometric median of the rows of `x: [rows, d]` by Weiszfeld's iterations from the mean.
pub fn geometric_median(x: &[f32], d: usize, iterations: usize) -> Vec<f32> {
    let rows = (x.len() / d).max(1);
    let mut median = vec![0f64; d];
    for row in x.chunks(d) {
        median.iter_mut().zip(row).for_each(|(m, v)| *m += *v as f64 / rows as f64);
    }
    for _ in 0..iterations {
        let mut weighted = vec![0f64; d];
        let mut total_weight = 0f64;
        for row in x.chunks(d) {
            let distance = row.iter().zip(&median).map(|(v, m)| (*v as f64 - m).powi(2)).sum::<f64>().sqrt().max(1e-8);
            total_weight += 1.0 / distance;
            weighted.iter_mut().zip(row).for_each(|(w, v)| *w += *v as f64 / distance);
        }
        median = weighted.iter().map(|w| w / total_weight).collect();
    }
    median.into_iter().map(|m| m as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written gradients against central finite differences of the loss.
    #[test]
    fn gradients_match_finite_differences() {
        let (d, n, batch, k) = (6, 10, 5, 3);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut sample = |len: usize| -> Vec<f32> { (0..len).map(|_| StandardNormal.sample(&mut rng)).collect() };
        let x = sample(batch * d);
        let mut sae = TrainableSae::init(d, n, &sample(d), 3);
        sae.b_enc = sample(n).iter().map(|v| v * 0.1).collect();
        let dead: Vec<bool> = (0..n).map(|j| j % 3 == 0).collect();
        let clone = |sae: &TrainableSae| TrainableSae::from_params(d, n, [sae.w_enc_t.clone(), sae.b_enc.clone(), sae.w_dec.clone(), sae.b_dec.clone()], None);
        // Forward pieces: reconstruction error and the AuxK prediction of a given residual.
        let forward = |sae: &TrainableSae, residual: Option<&[f32]>| -> (Vec<f32>, f64) {
            let xc: Vec<f32> = x.chunks(d).flat_map(|r| r.iter().zip(&sae.b_dec).map(|(v, b)| v - b).collect::<Vec<_>>()).collect();
            let pre = sae.pre_activations(&xc, batch).unwrap();
            let codes: Vec<_> = pre.chunks(n).map(|r| top_k(r, k)).collect();
            let err: Vec<f32> = sae.decode_rows(&codes, true).iter().zip(&x).map(|(h, v)| h - v).collect();
            let fvu = err.iter().map(|e| (*e as f64).powi(2)).sum::<f64>() / total_variance(&x, d);
            let Some(resid) = residual else { return (err, fvu) };
            let aux_codes: Vec<_> = pre.chunks(n).map(|r| top_k(&r.iter().zip(&dead).map(|(&v, &dd)| if dd { v } else { f32::NEG_INFINITY }).collect::<Vec<_>>(), 2)).collect();
            let pred = sae.decode_rows(&aux_codes, false);
            let aux = pred.iter().zip(resid).map(|(p, r)| ((p - r) as f64).powi(2)).sum::<f64>() / total_variance(resid, d);
            (err, fvu + 0.5 * aux)
        };
        // The AuxK target (the residual) is a constant, as in the step.
        let residual: Vec<f32> = forward(&sae, None).0.iter().map(|e| -e).collect();
        let loss = |sae: &TrainableSae| forward(sae, Some(&residual)).1;
        // A step with lr = 0 leaves the weights and leaves (1 - β1)·grad in the first moment.
        let before = clone(&sae);
        let x_t = Tensor::from_slice(&x, (batch, d), &Device::Cpu).unwrap();
        let mut probe = clone(&sae);
        let mut active_tokens = vec![0; n];
        probe.step(&x_t, Sparsity::TopK, k, &dead, 2, 0.5, 0.0, &AdamParams::default(), 1, &mut active_tokens).unwrap();
        let eps = 1e-3f32;
        for (p, name) in [(0usize, "w_enc"), (1, "b_enc"), (3, "b_dec")] {
            let analytic: Vec<f32> = probe.moments[p].m.iter().map(|m| m / 0.1).collect();
            for i in (0..analytic.len()).step_by(7) {
                let (mut plus, mut minus) = (clone(&before), clone(&before));
                param_mut(&mut plus, p)[i] += eps;
                param_mut(&mut minus, p)[i] -= eps;
                let numeric = (loss(&plus) - loss(&minus)) / (2.0 * eps as f64);
                assert!((numeric - analytic[i] as f64).abs() < 2e-2 * (1.0 + numeric.abs()), "{name}[{i}]: numeric {numeric}, analytic {}", analytic[i]);
            }
        }
        // W_dec's rows stay unit-norm, so its gradient is the loss gradient with each row's
        // component along the row removed. Check both halves: no parallel component left,
        // and the derivative along random directions tangent to each row (where the
        // constraint does not act) equals the finite difference.
        let analytic: Vec<f32> = probe.moments[2].m.iter().map(|m| m / 0.1).collect();
        let mut directions = rand::rngs::StdRng::seed_from_u64(11);
        for row in 0..n {
            let w = &before.w_dec[row * d..(row + 1) * d];
            let g = &analytic[row * d..(row + 1) * d];
            let norm = w.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "decoder row {row} has norm {norm}");
            let parallel: f32 = g.iter().zip(w).map(|(g, w)| g * w).sum();
            let size = g.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!(parallel.abs() <= 1e-5 * (1.0 + size), "w_dec row {row}: gradient keeps a component {parallel} along the row");
            let v: Vec<f32> = (0..d).map(|_| StandardNormal.sample(&mut directions)).collect();
            let along: f32 = v.iter().zip(w).map(|(v, w)| v * w).sum();
            let tangent: Vec<f32> = v.iter().zip(w).map(|(v, w)| v - along * w).collect();
            let (mut plus, mut minus) = (clone(&before), clone(&before));
            for (i, t) in tangent.iter().enumerate() {
                plus.w_dec[row * d + i] += eps * t;
                minus.w_dec[row * d + i] -= eps * t;
            }
            let numeric = (loss(&plus) - loss(&minus)) / (2.0 * eps as f64);
            let predicted: f64 = g.iter().zip(&tangent).map(|(g, t)| (*g as f64) * (*t as f64)).sum();
            assert!((numeric - predicted).abs() < 2e-2 * (1.0 + numeric.abs()), "w_dec row {row} along a tangent: numeric {numeric}, analytic {predicted}");
        }
    }

    fn param_mut(sae: &mut TrainableSae, p: usize) -> &mut Vec<f32> {
        match p {
            0 => &mut sae.w_enc_t,
            1 => &mut sae.b_enc,
            2 => &mut sae.w_dec,
            _ => &mut sae.b_dec,
        }
    }
}
