//! Fused CPU kernels for the steps between the model's large matmuls: SwiGLU, the masked
//! softmax, attention without a KV cache, and the product for a few rows. candle's generic
//! binary and unary ops run on one thread and over strided views; these run over contiguous
//! rows in parallel (rayon) and fuse several passes into one, which matters once matmuls are
//! fast. On another device or dtype each function falls back to candle's generic ops (or
//! returns `None` for the caller's).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
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
            swiglu_row(gate, up, out);
        });
        Ok((CpuStorage::F32(dst), Shape::from((rows, width))))
    }
}

/// `out = silu(gate) * up`, with the fastest instructions this CPU has.
fn swiglu_row(gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { swiglu_row_avx2(gate, up, out) };
        return;
    }
    swiglu_row_with(gate, up, out, &|a, x, y| y + a * x);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_row_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
    swiglu_row_with(gate, up, out, &f32::mul_add);
}

/// `silu(g) = g · sigmoid(g)`, with `e = exp(-|g|)` (never overflows): `sigmoid(g)` is
/// `1 / (1 + e)` for `g >= 0` and `e / (1 + e)` below; a vector loop, where libm's expf per
/// value was ~5% of a forward pass.
#[inline(always)]
fn swiglu_row_with(gate: &[f32], up: &[f32], out: &mut [f32], fma: &impl Fn(f32, f32, f32) -> f32) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        let e = exp_non_positive(-g.abs(), fma);
        let sigmoid = if g >= 0.0 { 1.0 } else { e } / (1.0 + e);
        *o = g * sigmoid * u;
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

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &candle_core::CudaStorage, layout: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        super::gpu_softmax::masked_softmax(storage, layout, self.scale, self.lengths, self.offset)
    }
}

/// Which keys each query of `scores` `[batch, heads, seq, kv_len]` sees, as a `[batch, 1, seq,
/// kv_len]` u8 mask built on the scores' device: query `i` sees keys `< offset + i + 1` that
/// are real (`< offset + length`). Only the `batch` lengths are copied to the device, not a
/// mask per layer (on a GPU, a host-built one was 64 MiB a layer at 1,024 windows of 128).
fn visible_keys(scores: &Tensor, lengths: &[usize], offset: usize) -> candle_core::Result<Tensor> {
    let (batch, _, seq, kv_len) = scores.dims4()?;
    if batch != lengths.len() {
        candle_core::bail!("masked softmax: {} lengths for a batch of {batch}", lengths.len());
    }
    let device = scores.device();
    let as_u32 = |n: usize| u32::try_from(n).map_err(|_| candle_core::Error::Msg(format!("masked softmax: position {n} exceeds u32")));
    let keys = Tensor::arange(0u32, as_u32(kv_len)?, device)?.reshape((1, 1, 1, kv_len))?;
    let causal = Tensor::arange(as_u32(offset + 1)?, as_u32(offset + seq + 1)?, device)?.reshape((1, 1, seq, 1))?;
    let real: Vec<u32> = lengths.iter().map(|&l| as_u32(offset + l)).collect::<candle_core::Result<_>>()?;
    let limit = causal.broadcast_minimum(&Tensor::from_vec(real, (batch, 1, 1, 1), device)?)?;
    keys.broadcast_lt(&limit)
}

/// Attention probabilities of `scores` (see [`masked_softmax`]) in `dtype`. On a GPU, with
/// scores in `dtype` (f32 or bf16), loupe's kernel does it in one pass (computing in f32 and
/// rounding once, as the generic path's final conversion does).
pub fn attention_probs(scores: &Tensor, scale: f32, lengths: &[usize], offset: usize, dtype: candle_core::DType) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if scores.device().is_cuda() && scores.dtype() == dtype && matches!(dtype, candle_core::DType::F32 | candle_core::DType::BF16) {
        return scores.contiguous()?.apply_op1_no_bwd(&MaskedSoftmax { scale, lengths, offset });
    }
    masked_softmax(scores, scale, lengths, offset)?.to_dtype(dtype)
}

/// Returns f32 probabilities whatever the scores' dtype (a softmax in bf16 loses the small
/// ones).
pub fn masked_softmax(scores: &Tensor, scale: f32, lengths: &[usize], offset: usize) -> candle_core::Result<Tensor> {
    if !on_cpu_in_f32(scores) {
        let scaled = (scores.to_dtype(candle_core::DType::F32)? * f64::from(scale))?;
        let visible = visible_keys(scores, lengths, offset)?.broadcast_as(scaled.shape())?;
        let hidden = Tensor::new(f32::NEG_INFINITY, scores.device())?.broadcast_as(scaled.shape())?;
        return candle_nn::ops::softmax_last_dim(&visible.where_cond(&scaled, &hidden)?);
    }
    scores.contiguous()?.apply_op1_no_bwd(&MaskedSoftmax { scale, lengths, offset })
}

/// The sizes of one attention call: `heads` query heads share `kv_heads` key/value heads
/// (grouped-query attention), each `head_dim` wide.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    /// Entries per row of the transposed keys: `seq` rounded up to whole blocks of
    /// [`weighted_rows`], so that every score block reads a full row (zeros past `seq`).
    fn key_stride(&self) -> usize {
        self.seq.next_multiple_of(BLOCK)
    }
}

/// Query rows per rayon task of [`CausalAttention`]: later rows see more keys, so several
/// tasks per sequence let the pool even out the causal triangle.
const ATTENTION_ROWS_PER_TASK: usize = 16;

/// Rotary embedding, causal and padding masks, softmax and the value mix of one layer in
/// one pass over the fused projection `qkv = [batch * seq, (heads + 2 * kv_heads) * head_dim]`
/// (Q | K | V per row, as the model's fused matmul writes it), straight into the output
/// `[batch * seq, heads * head_dim]` that the output projection reads. candle's ops for the
/// same steps copy Q, K and V out of the fused rows into head-major tensors, rotate them into
/// new tensors, run one small GEMM per sequence and group for the scores and another for the
/// mix, and copy the heads back into rows (a 1 x 128-token pass to layer 15 ran ~10% faster
/// with this op: best of four alternating runs, 1,038 -> 1,144 tokens/s). Keys are rotated once per sequence
/// into `[kv_heads, head_dim, key_stride]` (transposed) so that both products are vector
/// multiply-adds over contiguous rows. No KV cache: a pass that has one uses candle's ops.
struct CausalAttention<'a> {
    shape: AttentionShape,
    lengths: &'a [usize],
}

impl CausalAttention<'_> {
    /// Rotated, transposed keys `[batch, kv_heads, head_dim, key_stride]` and values
    /// `[batch, kv_heads, seq, head_dim]` of every sequence.
    fn keys_and_values(&self, qkv: &[f32], cos: &[f32], sin: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let AttentionShape { batch, seq, heads, kv_heads, head_dim } = self.shape;
        let (row, half) = ((heads + 2 * kv_heads) * head_dim, head_dim / 2);
        let stride = self.shape.key_stride();
        let (keys_per_seq, values_per_seq) = (kv_heads * head_dim * stride, kv_heads * seq * head_dim);
        let mut keys = vec![0f32; batch * keys_per_seq];
        let mut values = vec![0f32; batch * values_per_seq];
        keys.par_chunks_mut(keys_per_seq).zip(values.par_chunks_mut(values_per_seq)).enumerate().for_each(|(b, (keys, values))| {
            for t in 0..seq {
                let src = &qkv[(b * seq + t) * row..(b * seq + t + 1) * row];
                let (cos, sin) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
                for g in 0..kv_heads {
                    let k = &src[(heads + g) * head_dim..(heads + g + 1) * head_dim];
                    let keys = &mut keys[g * head_dim * stride..(g + 1) * head_dim * stride];
                    for i in 0..half {
                        keys[i * stride + t] = k[i] * cos[i] - k[i + half] * sin[i];
                        keys[(i + half) * stride + t] = k[i] * sin[i] + k[i + half] * cos[i];
                    }
                    let v = &src[(heads + kv_heads + g) * head_dim..(heads + kv_heads + g + 1) * head_dim];
                    values[(g * seq + t) * head_dim..(g * seq + t + 1) * head_dim].copy_from_slice(v);
                }
            }
        });
        (keys, values)
    }
}

impl CustomOp3 for CausalAttention<'_> {
    fn name(&self) -> &'static str {
        "loupe-causal-attention"
    }

    fn cpu_fwd(&self, qkv_s: &CpuStorage, qkv_l: &Layout, cos_s: &CpuStorage, cos_l: &Layout, sin_s: &CpuStorage, sin_l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let AttentionShape { batch, seq, heads, kv_heads, head_dim } = self.shape;
        let qkv = contiguous_f32(qkv_s, qkv_l, self.name())?;
        let (cos, sin) = (contiguous_f32(cos_s, cos_l, self.name())?, contiguous_f32(sin_s, sin_l, self.name())?);
        let row = (heads + 2 * kv_heads) * head_dim;
        if qkv_l.shape().dims2()? != (batch * seq, row) || head_dim % 2 != 0 || kv_heads == 0 || heads % kv_heads != 0 {
            candle_core::bail!("{}: qkv {:?} does not fit {:?}", self.name(), qkv_l.shape(), self.shape);
        }
        if cos.len() != seq * head_dim / 2 || sin.len() != cos.len() || self.lengths.len() != batch || self.lengths.iter().any(|&l| l == 0 || l > seq) {
            candle_core::bail!("{}: rotary tables of {} values and lengths {:?} for {:?}", self.name(), cos.len(), self.lengths, self.shape);
        }
        let (keys, values) = self.keys_and_values(qkv, cos, sin);
        let width = heads * head_dim;
        let mut out = vec![0f32; batch * seq * width];
        // Tasks of up to ATTENTION_ROWS_PER_TASK rows within one sequence.
        let tasks_per_seq = seq.div_ceil(ATTENTION_ROWS_PER_TASK);
        let chunks: Vec<&mut [f32]> = out.chunks_mut(seq * width).flat_map(|rows| rows.chunks_mut(ATTENTION_ROWS_PER_TASK * width)).collect();
        let scale = 1.0 / (head_dim as f32).sqrt();
        chunks.into_par_iter().enumerate().for_each(|(task, out)| {
            let (b, first) = (task / tasks_per_seq, (task % tasks_per_seq) * ATTENTION_ROWS_PER_TASK);
            let (keys_per_seq, values_per_seq) = (kv_heads * head_dim * self.shape.key_stride(), kv_heads * seq * head_dim);
            let (keys, values) = (&keys[b * keys_per_seq..][..keys_per_seq], &values[b * values_per_seq..][..values_per_seq]);
            let rows = Rows { qkv, cos, sin, keys, values, shape: self.shape, sequence: b, first, length: self.lengths[b], scale };
            rows.mix(out);
        });
        Ok((CpuStorage::F32(out), Shape::from((batch * seq, width))))
    }
}

/// One task of [`CausalAttention`]: query rows `first..` of sequence `sequence`.
struct Rows<'a> {
    qkv: &'a [f32],
    cos: &'a [f32],
    sin: &'a [f32],
    /// This sequence's rotated keys `[kv_heads, head_dim, key_stride]`.
    keys: &'a [f32],
    /// This sequence's values `[kv_heads, seq, head_dim]`.
    values: &'a [f32],
    shape: AttentionShape,
    sequence: usize,
    first: usize,
    /// The sequence's real length: keys at or past it are padding.
    length: usize,
    scale: f32,
}

impl Rows<'_> {
    /// Writes `out = [rows, heads * head_dim]`, with the fastest instructions this CPU has.
    fn mix(&self, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            unsafe { self.mix_avx2(out) };
            return;
        }
        // A separate multiply and add: without FMA in hardware, mul_add is a slow library call.
        self.mix_with(out, |a, x, y| y + a * x);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn mix_avx2(&self, out: &mut [f32]) {
        self.mix_with(out, f32::mul_add);
    }

    /// With `fma(a, x, y) = a·x + y`; inlined into each caller so that it compiles with that
    /// caller's instruction set.
    #[inline(always)]
    fn mix_with(&self, out: &mut [f32], fma: impl Fn(f32, f32, f32) -> f32) {
        let AttentionShape { seq, heads, kv_heads, head_dim, .. } = self.shape;
        let (row, half, width) = ((heads + 2 * kv_heads) * head_dim, head_dim / 2, heads * head_dim);
        let groups = heads / kv_heads;
        let mut query = vec![0f32; head_dim];
        let stride = self.shape.key_stride();
        let mut scores = vec![0f32; stride];
        for (r, out) in out.chunks_mut(width).enumerate() {
            let t = self.first + r;
            // Causal, and never a padding key (a padding query still sees the real ones).
            let visible = (t + 1).min(self.length);
            let src = &self.qkv[(self.sequence * seq + t) * row..][..row];
            let (cos, sin) = (&self.cos[t * half..][..half], &self.sin[t * half..][..half]);
            for (h, out) in out.chunks_mut(head_dim).enumerate() {
                let q = &src[h * head_dim..][..head_dim];
                for i in 0..half {
                    query[i] = (q[i] * cos[i] - q[i + half] * sin[i]) * self.scale;
                    query[i + half] = (q[i] * sin[i] + q[i + half] * cos[i]) * self.scale;
                }
                let g = h / groups;
                let keys = &self.keys[g * head_dim * stride..][..head_dim * stride];
                // score[j] = Σ_d query[d] · keys[d, j], in whole blocks of keys (those past
                // `visible` are computed and dropped: cheaper than a tail loop).
                weighted_rows(&query, keys, stride, &mut scores[..visible.next_multiple_of(BLOCK)], &fma);
                let scores = &mut scores[..visible];
                let sum = exponentiate(scores, &fma);
                // out = Σ_j p[j] · values[j] / Σ_j p[j].
                let values = &self.values[g * seq * head_dim..][..visible * head_dim];
                weighted_rows(scores, values, head_dim, out, &fma);
                let inv = 1.0 / sum;
                out.iter_mut().for_each(|o| *o *= inv);
            }
        }
    }
}

/// Lanes of the element-wise loops below: one 256-bit register of f32.
const LANES: usize = 8;

/// `s = exp(s - max(scores))` for every score; returns their sum. In lanes, so that the
/// maximum, the exponentials and the sum run in vector registers (a fold over scalars, or a
/// call to libm's expf per score, would not).
#[inline(always)]
fn exponentiate(scores: &mut [f32], fma: &impl Fn(f32, f32, f32) -> f32) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = scores.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &s) in lanes.iter_mut().zip(chunk) {
            *m = if s > *m { s } else { *m };
        }
    }
    let max = chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &s| if s > m { s } else { m });
    let mut sums = [0f32; LANES];
    let mut chunks = scores.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (sum, s) in sums.iter_mut().zip(chunk) {
            *s = exp_non_positive(*s - max, fma);
            *sum += *s;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for s in chunks.into_remainder() {
        *s = exp_non_positive(*s - max, fma);
        sum += *s;
    }
    sum
}

/// `e^x` for `x <= 0` to ~1 ulp (Cephes' expf: `x = n·ln 2 + r`, a degree-7 polynomial in
/// `r`, then `2^n` put into the exponent bits), written so that a loop over it vectorizes.
/// Below -87 (where e^x leaves the normal range) it returns ~e^-87 (< 2e-38).
#[inline(always)]
fn exp_non_positive(x: f32, fma: &impl Fn(f32, f32, f32) -> f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, the first exact in a few bits, so that `x - n·ln 2` loses nothing.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1];
    let x = x.max(-87.0);
    let n = fma(x, LOG2_E, 0.5).floor();
    let r = fma(n, -LN2_LO, fma(n, -LN2_HI, x));
    let mut p = P[0];
    for &c in &P[1..] {
        p = fma(p, r, c);
    }
    let y = fma(p, r * r, r) + 1.0;
    // 2^n as the bits of a float: n is in [-126, 0] here, so the exponent field is normal.
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Columns per block of [`weighted_rows`]: four 256-bit registers of accumulators, which
/// stay in registers while the rows stream past (an axpy per row would load and store the
/// whole output for every row).
const BLOCK: usize = 32;

/// `out[i] = Σ_r weights[r] · rows[r * stride + i]` for `i < out.len()`.
#[inline(always)]
fn weighted_rows(weights: &[f32], rows: &[f32], stride: usize, out: &mut [f32], fma: &impl Fn(f32, f32, f32) -> f32) {
    let mut blocks = out.chunks_exact_mut(BLOCK);
    let mut start = 0;
    for block in &mut blocks {
        let mut acc = [0f32; BLOCK];
        for (r, &w) in weights.iter().enumerate() {
            let row: &[f32; BLOCK] = rows[r * stride + start..][..BLOCK].try_into().expect("a block of BLOCK values");
            for (a, &x) in acc.iter_mut().zip(row) {
                *a = fma(w, x, *a);
            }
        }
        block.copy_from_slice(&acc);
        start += BLOCK;
    }
    let tail = blocks.into_remainder();
    let width = tail.len();
    tail.fill(0.0);
    for (r, &w) in weights.iter().enumerate() {
        for (a, &x) in tail.iter_mut().zip(&rows[r * stride + start..][..width]) {
            *a = fma(w, x, *a);
        }
    }
}

/// Causal self-attention of a layer without a KV cache: `qkv` `[batch * seq, (heads + 2 *
/// kv_heads) * head_dim]`, rotary tables `[seq, head_dim / 2]` (positions from 0), each
/// sequence's real length -> `[batch * seq, heads * head_dim]`. One fused pass on the CPU in
/// f32 ([`CausalAttention`]); `None` elsewhere, for the caller's generic ops.
pub fn causal_attention(qkv: &Tensor, cos: &Tensor, sin: &Tensor, shape: AttentionShape, lengths: &[usize]) -> candle_core::Result<Option<Tensor>> {
    if !on_cpu_in_f32(qkv) || !on_cpu_in_f32(cos) || !on_cpu_in_f32(sin) {
        return Ok(None);
    }
    let (qkv, cos, sin) = (qkv.contiguous()?, cos.contiguous()?, sin.contiguous()?);
    qkv.apply_op3_no_bwd(&cos, &sin, &CausalAttention { shape, lengths }).map(Some)
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
        // Wide enough for the vector loop, with gates far into both tails.
        let x = Tensor::randn(0f32, 20.0, (5, 80), &Device::Cpu).unwrap();
        let expected = (candle_nn::ops::silu(&x.narrow(1, 0, 40).unwrap()).unwrap() * x.narrow(1, 40, 40).unwrap()).unwrap();
        let actual = swiglu(&x).unwrap();
        for (a, e) in actual.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().zip(expected.flatten_all().unwrap().to_vec1::<f32>().unwrap()) {
            assert!((a - e).abs() <= 5e-7 * e.abs() + 1e-30, "{a} vs {e}");
        }
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
        let diff = (actual - &expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{diff}");
        // The generic path (a GPU's, taken on the CPU by any dtype but f32), mask built from
        // the lengths on the scores' device.
        let generic = masked_softmax(&scores.to_dtype(candle_core::DType::F64).unwrap(), 0.5, &lengths, offset).unwrap();
        assert_eq!(generic.dtype(), candle_core::DType::F32);
        let diff = (generic - &expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "generic path: {diff}");
        let err = masked_softmax(&scores.to_dtype(candle_core::DType::F64).unwrap(), 0.5, &lengths[..1], offset).unwrap_err().to_string();
        assert!(err.contains("1 lengths for a batch of 2"), "{err}");
    }

    /// The fused pass against the textbook steps in candle's ops: rotate Q and K per head,
    /// `softmax(QKᵀ / √d + mask) V` with each query head reading its group's K and V.
    #[test]
    fn fused_attention_matches_rope_then_masked_softmax_attention() {
        // 37 rows: tasks of 16 rows end inside a sequence; the second sequence is padded.
        // Heads of 8 (all tail) and of 40 (one block of 32 values and a tail of 8).
        for head_dim in [8, 40] {
            check_fused_attention(AttentionShape { batch: 2, seq: 37, heads: 6, kv_heads: 2, head_dim });
        }
    }

    fn check_fused_attention(shape: AttentionShape) {
        let AttentionShape { batch, seq, heads, kv_heads, head_dim } = shape;
        let lengths = [37usize, 20];
        let qkv = Tensor::randn(0f32, 1.0, (batch * seq, (heads + 2 * kv_heads) * head_dim), &Device::Cpu).unwrap();
        let (cos, sin) = super::super::rope::tables(10_000.0, head_dim, 0, seq).unwrap();
        let split = |start: usize, n: usize| qkv.narrow(1, start * head_dim, n * head_dim).unwrap().reshape((batch, seq, n, head_dim)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        let q = candle_nn::rotary_emb::rope(&split(0, heads), &cos, &sin).unwrap();
        let k = candle_nn::rotary_emb::rope(&split(heads, kv_heads), &cos, &sin).unwrap();
        let v = split(heads + kv_heads, kv_heads);
        let groups = heads / kv_heads;
        let repeat = |x: &Tensor| Tensor::cat(&(0..heads).map(|h| x.narrow(1, h / groups, 1).unwrap()).collect::<Vec<_>>(), 1).unwrap();
        let (k, v) = (repeat(&k), repeat(&v));
        let scores = q.matmul(&k.t().unwrap().contiguous().unwrap()).unwrap();
        let mut mask = vec![0f32; batch * seq * seq];
        for (b, &len) in lengths.iter().enumerate() {
            for i in 0..seq {
                for j in 0..seq {
                    if j > i || j >= len {
                        mask[(b * seq + i) * seq + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(mask, (batch, 1, seq, seq), &Device::Cpu).unwrap();
        let scale = 1.0 / (head_dim as f64).sqrt();
        let probs = candle_nn::ops::softmax(&(scores * scale).unwrap().broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
        let expected = probs.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((batch * seq, heads * head_dim)).unwrap();
        let actual = causal_attention(&qkv, &cos, &sin, shape, &lengths).unwrap().expect("f32 on the CPU takes the fused pass");
        let diff = (actual - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "{shape:?}: {diff}");
    }

    #[test]
    fn fused_attention_refuses_a_projection_of_the_wrong_width() {
        let shape = AttentionShape { batch: 1, seq: 4, heads: 2, kv_heads: 1, head_dim: 4 };
        let qkv = Tensor::zeros((4, 15), candle_core::DType::F32, &Device::Cpu).unwrap();
        let (cos, sin) = super::super::rope::tables(10_000.0, 4, 0, 4).unwrap();
        assert!(causal_attention(&qkv, &cos, &sin, shape, &[4]).is_err());
    }

    #[test]
    fn fused_attention_refuses_lengths_outside_the_sequence() {
        let shape = AttentionShape { batch: 1, seq: 4, heads: 2, kv_heads: 1, head_dim: 4 };
        let qkv = Tensor::zeros((4, 16), candle_core::DType::F32, &Device::Cpu).unwrap();
        let (cos, sin) = super::super::rope::tables(10_000.0, 4, 0, 4).unwrap();
        for bad in [0, 5] {
            let err = causal_attention(&qkv, &cos, &sin, shape, &[bad]).unwrap_err();
            assert!(err.to_string().contains("lengths"), "{err}");
        }
        assert!(causal_attention(&qkv, &cos, &sin, shape, &[4]).unwrap().is_some());
    }

    #[test]
    fn the_vector_exponential_is_within_two_ulp_of_libm() {
        let fma = |a: f32, x: f32, y: f32| a.mul_add(x, y);
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let (ours, libm) = (exp_non_positive(x, &fma), x.exp());
            worst = worst.max((ours - libm).abs() / libm);
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        let mut scores = vec![1.0f32, 3.0, -2.0, 0.5, 7.0, 7.0, -100.0, 2.0, 4.0, -1.0, 0.0];
        let expected: Vec<f32> = scores.iter().map(|&s| (s - 7.0f32).exp()).collect();
        let sum = exponentiate(&mut scores, &fma);
        for (a, e) in scores.iter().zip(&expected) {
            assert!((a - e).abs() <= 2.5e-7 * e.max(1e-30), "{a} vs {e}");
        }
        assert!((sum - expected.iter().sum::<f32>()).abs() < 1e-6, "{sum}");
    }
}
