//! Adam with decoupled weight decay (AdamW) on host vectors. candle-nn has one, but its
//! moments are private and a resumable run must checkpoint them.

use rayon::prelude::*;

#[derive(Debug, Clone, Copy)]
pub struct AdamParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamParams {
    fn default() -> Self {
        AdamParams { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// First and second moments of one parameter.
#[derive(Debug, Clone)]
pub struct Moments {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

impl Moments {
    pub fn zeros(len: usize) -> Self {
        Moments { m: vec![0.0; len], v: vec![0.0; len] }
    }
}

/// One AdamW update of `param` with gradient `grad` at step `t` (1-based).
pub fn update(param: &mut [f32], grad: &[f32], moments: &mut Moments, params: &AdamParams, lr: f64, t: u64) {
    let AdamParams { beta1, beta2, eps, weight_decay } = *params;
    let correction1 = 1.0 - beta1.powi(t as i32);
    let correction2 = 1.0 - beta2.powi(t as i32);
    let (b1, b2) = (beta1 as f32, beta2 as f32);
    let step_size = (lr / correction1) as f32;
    let decay = (1.0 - lr * weight_decay) as f32;
    let sqrt_c2 = correction2.sqrt() as f32;
    param.par_iter_mut().zip(grad.par_iter()).zip(moments.m.par_iter_mut().zip(moments.v.par_iter_mut())).for_each(|((p, &g), (m, v))| {
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        *p = *p * decay - step_size * *m / (v.sqrt() / sqrt_c2 + eps as f32);
    });
}
