//! Measuring this machine: the matmul peak that throughput figures are compared to (f32 on
//! the CPU, the compute dtype on a GPU).

use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::device::Compute;
use crate::error::Result;

/// Best GFLOP/s of candle's f32 matmul on the CPU (the kernel the forward pass uses) on
/// square `size x size` matrices over `repeats` timed runs, after one warm-up.
pub fn matmul_peak_gflops(size: usize, repeats: usize) -> Result<f64> {
    matmul_peak_gflops_on(&Compute::cpu(), size, repeats)
}

/// The same on any device, in its compute dtype (on a GPU: cuBLAS in bf16 with f32
/// accumulation); each run waits for the device to finish.
pub fn matmul_peak_gflops_on(compute: &Compute, size: usize, repeats: usize) -> Result<f64> {
    let random = || -> Result<Tensor> { Ok(Tensor::randn(0f32, 1.0, (size, size), &Device::Cpu)?.to_device(&compute.device)?.to_dtype(compute.dtype)?) };
    let (a, b) = (random()?, random()?);
    a.matmul(&b)?;
    compute.device.synchronize()?;
    let flops = 2.0 * (size as f64).powi(3);
    let mut best = 0f64;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        let c = a.matmul(&b)?;
        compute.device.synchronize()?;
        let secs = start.elapsed().as_secs_f64();
        drop(c);
        best = best.max(flops / secs / 1e9);
    }
    Ok(best)
}
