//! The attention softmax on a GPU: loupe's kernel (`attention_softmax.cu`, compiled to PTX by
//! build.rs with the CUDA build's nvcc) scales, masks and softmaxes the scores in one pass and
//! writes the probabilities in the scores' dtype (f32 or bf16). Semantics are those of the CPU
//! kernel, `MaskedSoftmax` in cpu_ops.rs.

use candle_core::cuda::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda::{CudaStorage, CudaStorageSlice, WrapErr};
use candle_core::{Layout, Shape};

const SOFTMAX_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention_softmax.ptx"));

/// attention_softmax.cu's WARPS (rows a block) and WARP (threads a row).
const WARPS: u32 = 8;
const WARP: u32 = 32;

fn fail(message: String) -> candle_core::Error {
    candle_core::Error::Msg(format!("masked softmax on the GPU: {message}"))
}

/// Probabilities of the contiguous scores `[batch, heads, seq, kv_len]` in `storage`.
pub(super) fn masked_softmax(storage: &CudaStorage, layout: &Layout, scale: f32, lengths: &[usize], offset: usize) -> candle_core::Result<(CudaStorage, Shape)> {
    let (batch, heads, seq, kv_len) = layout.shape().dims4()?;
    if batch != lengths.len() {
        return Err(fail(format!("{} lengths for a batch of {batch}", lengths.len())));
    }
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(fail("the scores are not contiguous".into()));
    };
    let u32_of = |n: usize, what: &str| u32::try_from(n).map_err(|_| fail(format!("{what} {n} exceeds u32")));
    let rows = u32_of(batch * heads * seq, "rows")?;
    let (kv32, seq32, per_seq, offset32) = (u32_of(kv_len, "keys")?, u32_of(seq, "sequence length")?, u32_of(heads * seq, "rows a sequence")?, u32_of(offset, "offset")?);
    let device = storage.device.clone();
    let lengths: Vec<u32> = lengths.iter().map(|&l| u32_of(l, "length")).collect::<candle_core::Result<_>>()?;
    let lengths = device.clone_htod(&lengths)?;
    let config = LaunchConfig { grid_dim: (rows.div_ceil(WARPS), 1, 1), block_dim: (WARPS * WARP, 1, 1), shared_mem_bytes: 0 };
    let n = end - start;
    let slice = match &storage.slice {
        CudaStorageSlice::F32(scores) => {
            let scores = scores.slice(start..end);
            // SAFETY: every element is written by the kernel before it is read.
            let mut probs = unsafe { device.alloc::<f32>(n)? };
            let func = device.get_or_load_custom_func("loupe_masked_softmax_f32", "loupe_attention_softmax", SOFTMAX_PTX)?;
            let mut launch = func.builder();
            launch.arg(&scores).arg(&mut probs).arg(&rows).arg(&kv32).arg(&seq32).arg(&per_seq).arg(&lengths).arg(&offset32).arg(&scale);
            // SAFETY: the arguments match the kernel's signature; scores and probs hold rows *
            // kv_len values and lengths one per sequence, as the kernel indexes them.
            unsafe { launch.launch(config) }.w()?;
            CudaStorageSlice::F32(probs)
        }
        CudaStorageSlice::BF16(scores) => {
            let scores = scores.slice(start..end);
            // SAFETY: every element is written by the kernel before it is read.
            let mut probs = unsafe { device.alloc::<half::bf16>(n)? };
            let func = device.get_or_load_custom_func("loupe_masked_softmax_bf16", "loupe_attention_softmax", SOFTMAX_PTX)?;
            let mut launch = func.builder();
            launch.arg(&scores).arg(&mut probs).arg(&rows).arg(&kv32).arg(&seq32).arg(&per_seq).arg(&lengths).arg(&offset32).arg(&scale);
            // SAFETY: as above; bf16 is passed as its 16 bits, which the kernel reads as such.
            unsafe { launch.launch(config) }.w()?;
            CudaStorageSlice::BF16(probs)
        }
        _ => return Err(fail("the kernel takes scores in f32 or bf16".into())),
    };
    Ok((CudaStorage { slice, device }, layout.shape().clone()))
}
