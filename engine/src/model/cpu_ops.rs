//! Fused CPU kernels for the element-wise steps between matmuls. candle's generic binary
//! and unary ops run on one thread and over strided views; these run over contiguous rows in
//! parallel (rayon) and fuse several passes into one, which matters once matmuls are fast.
//! On another device or dtype each function falls back to candle's generic ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Rows per rayon task: big enough to amortise scheduling, small enough to balance.
const MIN_ROWS_PER_TASK: usize = 64;

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(data) => data,
        _ => candle_core::bail!("{op}: expected f32"),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: expected a contiguous tensor"),
    }
}

/// `silu(gate) * up` for `x = [gate | up]` of shape `[rows, 2 * width]` -> `[rows, width]`.
struct SwiGlu;

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "loupe-swiglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, self.name())?;
        let (rows, cols) = layout.shape().dims2()?;
        let width = cols / 2;
        let mut dst = vec![0f32; rows * width];
        dst.par_chunks_mut(width).zip(src.par_chunks(cols)).with_min_len(MIN_ROWS_PER_TASK).for_each(|(out, row)| {
            let (gate, up) = row.split_at(width);
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        });
        Ok((CpuStorage::F32(dst), Shape::from((rows, width))))
    }
}

pub fn swiglu(gate_up: &Tensor) -> candle_core::Result<Tensor> {
    if !on_cpu_in_f32(gate_up) {
        let width = gate_up.dim(1)? / 2;
        return gate_up.narrow(1, 0, width)?.silu()? * gate_up.narrow(1, width, width)?;
    }
    gate_up.contiguous()?.apply_op1_no_bwd(&SwiGlu)
}

fn on_cpu_in_f32(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// Softmax over the last axis of attention scores `[batch, heads, seq, kv_len]` after scaling
/// and masking: query `i` of sequence `b` sees key `j` iff `j <= offset + i` (causal) and
/// `j < offset + lengths[b]` (right padding). Masked keys get probability 0.
struct MaskedSoftmax<'a> {
    scale: f32,
    lengths: &'a [usize],
    offset: usize,
}

impl CustomOp1 for MaskedSoftmax<'_> {
    fn name(&self) -> &'static str {
        "loupe-masked-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, self.name())?;
        let (batch, heads, seq, kv_len) = layout.shape().dims4()?;
        if batch != self.lengths.len() {
            candle_core::bail!("{}: {} lengths for a batch of {batch}", self.name(), self.lengths.len());
        }
        let mut dst = vec![0f32; src.len()];
        let rows_per_seq = heads * seq;
        dst.par_chunks_mut(kv_len).zip(src.par_chunks(kv_len)).enumerate().with_min_len(MIN_ROWS_PER_TASK).for_each(|(row, (out, scores))| {
            let b = row / rows_per_seq;
            let i = row % seq;
            let visible = (self.offset + i + 1).min(self.offset + self.lengths[b]).min(kv_len);
            let max = scores[..visible].iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s)) * self.scale;
            let mut sum = 0f32;
            for (o, &s) in out[..visible].iter_mut().zip(&scores[..visible]) {
                *o = (s * self.scale - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            out[..visible].iter_mut().for_each(|o| *o *= inv);
        });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// Returns f32 probabilities whatever the scores' dtype (a softmax in bf16 loses the small
/// ones).
pub fn masked_softmax(scores: &Tensor, scale: f32, lengths: &[usize], offset: usize) -> candle_core::Result<Tensor> {
    if !on_cpu_in_f32(scores) {
        let (batch, _, seq, kv_len) = scores.dims4()?;
        if batch != lengths.len() {
            candle_core::bail!("masked softmax: {} lengths for a batch of {batch}", lengths.len());
        }
        let mut mask = vec![f32::NEG_INFINITY; batch * seq * kv_len];
        for (b, &length) in lengths.iter().enumerate() {
            for i in 0..seq {
                let visible = (offset + i + 1).min(offset + length).min(kv_len);
                mask[(b * seq + i) * kv_len..(b * seq + i) * kv_len + visible].fill(0.0);
            }
        }
        let mask = Tensor::from_vec(mask, (batch, 1, seq, kv_len), scores.device())?;
        let scaled = (scores.to_dtype(candle_core::DType::F32)? * f64::from(scale))?.broadcast_add(&mask)?;
        return candle_nn::ops::softmax_last_dim(&scaled);
    }
    scores.contiguous()?.apply_op1_no_bwd(&MaskedSoftmax { scale, lengths, offset })
}

/// Most rows for which [`linear`] streams the weights once instead of calling the GEMM.
pub const SMALL_ROWS: usize = 8;

/// Output columns per rayon task of the small-batch product: the `rows x COLUMNS` block of
/// the output stays in L1 while the weights stream past it.
const COLUMNS_PER_TASK: usize = 128;

/// `x [rows, in] @ w [in, out]` for a few rows (decoding: one token per sequence). A GEMM
/// packs and tiles for large products; with 1-8 rows it spent ~60% of a decode step in 2x2
/// microkernels and packing, and a second row cost almost as much as the first. Here each
/// weight row is read once and used for every input row, so the product runs at memory
/// speed and a batch of two costs little more than one.
struct SmallMatmul;

impl CustomOp2 for SmallMatmul {
    fn name(&self) -> &'static str {
        "loupe-small-matmul"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, self.name())?;
        let w = contiguous_f32(ws, wl, self.name())?;
        let (rows, inner) = xl.shape().dims2()?;
        let (w_inner, out) = wl.shape().dims2()?;
        if inner != w_inner {
            candle_core::bail!("{}: [{rows}, {inner}] @ [{w_inner}, {out}]", self.name());
        }
        let mut dst = vec![0f32; rows * out];
        let tasks = out.div_ceil(COLUMNS_PER_TASK);
        // Each task owns a band of output columns for every row: a `rows x band` block.
        let mut bands: Vec<Vec<f32>> = vec![Vec::new(); tasks];
        bands.par_iter_mut().enumerate().for_each(|(task, band)| {
            let start = task * COLUMNS_PER_TASK;
            let width = COLUMNS_PER_TASK.min(out - start);
            band.resize(rows * width, 0.0);
            accumulate(x, w, rows, inner, out, start, width, band);
        });
        for (task, band) in bands.iter().enumerate() {
            let start = task * COLUMNS_PER_TASK;
            let width = band.len() / rows.max(1);
            for r in 0..rows {
                dst[r * out + start..r * out + start + width].copy_from_slice(&band[r * width..(r + 1) * width]);
            }
        }
        Ok((CpuStorage::F32(dst), Shape::from((rows, out))))
    }
}

/// `band[r, j] = Σ_k x[r, k] · w[k, start + j]`, with the fastest instructions this CPU has.
#[allow(clippy::too_many_arguments)]
fn accumulate(x: &[f32], w: &[f32], rows: usize, inner: usize, out: usize, start: usize, width: usize, band: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { accumulate_avx2(x, w, rows, inner, out, start, width, band) };
        return;
    }
    accumulate_portable(x, w, rows, inner, out, start, width, band);
}

/// The loop of [`accumulate`], with `fma(a, w, y) = a·w + y`; inlined into each caller so
/// that it compiles with that caller's instruction set.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn accumulate_with(x: &[f32], w: &[f32], rows: usize, inner: usize, out: usize, start: usize, width: usize, band: &mut [f32], fma: impl Fn(f32, f32, f32) -> f32) {
    for k in 0..inner {
        let w_row = &w[k * out + start..k * out + start + width];
        for r in 0..rows {
            let a = x[r * inner + k];
            for (y, &wv) in band[r * width..(r + 1) * width].iter_mut().zip(w_row) {
                *y = fma(a, wv, *y);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn accumulate_portable(x: &[f32], w: &[f32], rows: usize, inner: usize, out: usize, start: usize, width: usize, band: &mut [f32]) {
    // A separate multiply and add: without FMA in hardware, mul_add is a slow library call.
    accumulate_with(x, w, rows, inner, out, start, width, band, |a, wv, y| y + a * wv);
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn accumulate_avx2(x: &[f32], w: &[f32], rows: usize, inner: usize, out: usize, start: usize, width: usize, band: &mut [f32]) {
    accumulate_with(x, w, rows, inner, out, start, width, band, f32::mul_add);
}

/// `x [rows, in] @ w [in, out]`: the weight-streaming product for a few rows, else the GEMM.
pub fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let rows = x.dim(0)?;
    if rows <= SMALL_ROWS && x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && w.dtype() == candle_core::DType::F32 {
        return x.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &SmallMatmul);
    }
    x.matmul(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    #[test]
    fn swiglu_matches_unfused() {
        let x = Tensor::randn(0f32, 2.0, (5, 8), &Device::Cpu).unwrap();
        let expected = (candle_nn::ops::silu(&x.narrow(1, 0, 4).unwrap()).unwrap() * x.narrow(1, 4, 4).unwrap()).unwrap();
        let diff = (swiglu(&x).unwrap() - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{diff}");
    }

    #[test]
    fn the_small_batch_product_matches_the_gemm() {
        for rows in [1, 2, 5, 8] {
            for (inner, out) in [(576, 1536), (64, 300), (7, 129)] {
                let x = Tensor::randn(0f32, 1.0, (rows, inner), &Device::Cpu).unwrap();
                let w = Tensor::randn(0f32, 1.0, (inner, out), &Device::Cpu).unwrap();
                let expected = x.matmul(&w).unwrap();
                let actual = linear(&x, &w).unwrap();
                let scale = expected.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let diff = (actual - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(diff <= 1e-5 * scale, "rows {rows}, [{inner}, {out}]: {diff} of {scale}");
            }
        }
    }

    #[test]
    fn masked_softmax_matches_mask_then_softmax() {
        let (b, h, t, offset) = (2, 3, 4, 2);
        let kv_len = offset + t;
        let lengths = [4usize, 2];
        let scores = Tensor::randn(0f32, 3.0, (b, h, t, kv_len), &Device::Cpu).unwrap();
        let mut mask = vec![0f32; b * t * kv_len];
        for (bi, &len) in lengths.iter().enumerate() {
            for i in 0..t {
                for j in 0..kv_len {
                    if j > offset + i || j >= offset + len {
                        mask[(bi * t + i) * kv_len + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(mask, (b, 1, t, kv_len), &Device::Cpu).unwrap();
        let expected = candle_nn::ops::softmax(&(scores.clone() * 0.5).unwrap().broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
        let actual = masked_softmax(&scores, 0.5, &lengths, offset).unwrap();
        let diff = (actual - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{diff}");
    }
}
