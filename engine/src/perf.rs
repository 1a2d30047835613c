//! Measuring this machine: the f32 matmul peak that throughput figures are compared to.

use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::error::Result;

/// Best GFLOP/s of candle's f32 matmul (the kernel the forward pass uses) on square
/// `size x size` matrices over `repeats` timed runs, after one warm-up.
pub fn matmul_peak_gflops(size: usize, repeats: usize) -> Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (size, size), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (size, size), &Device::Cpu)?;
    a.matmul(&b)?;
    let flops = 2.0 * (size as f64).powi(3);
    let mut best = 0f64;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        let c = a.matmul(&b)?;
        let secs = start.elapsed().as_secs_f64();
        drop(c);
        best = best.max(flops / secs / 1e9);
    }
    Ok(best)
}
