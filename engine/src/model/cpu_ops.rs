//! Fused CPU kernels for the element-wise steps between matmuls. candle's generic binary
//! and unary ops run on one thread and over strided views; these run over contiguous rows in
//! parallel (rayon) and fuse several passes into one, which matters once matmuls are fast.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
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
    gate_up.contiguous()?.apply_op1_no_bwd(&SwiGlu)
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
        dst.par_chunks_mut(kv_len).zip(src.par_chunks(kv_len)).enumerate().with_min_len(MIN_ROWS_PER_TASK).for_each(
            |(row, (out, scores))| {
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
            },
        );
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

pub fn masked_softmax(scores: &Tensor, scale: f32, lengths: &[usize], offset: usize) -> candle_core::Result<Tensor> {
    scores.contiguous()?.apply_op1_no_bwd(&MaskedSoftmax { scale, lengths, offset })
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
