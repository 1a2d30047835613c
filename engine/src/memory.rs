//! How many token windows one batch on a GPU holds: the index job's batch size when none is
//! given. The device memory one token needs through a lens is estimated from the shapes (the
//! largest working set of one layer of the forward pass, the captured hooks, and the largest
//! dictionary encode, which runs after the forward pass and one dictionary at a time), and a
//! batch may plan for half of the memory the driver reports free: the other half covers
//! cuBLAS workspaces, the allocator's pool, the weights' later growth and the estimate's
//! error. Batches stop growing at [`MAX_BATCH_TOKENS`], where a small model's matmuls fill
//! the GPU already and bigger batches only space checkpoints and progress further apart.

use crate::config::ModelConfig;
use crate::dictionary::{Activation, Dictionary};
use crate::error::Result;
use crate::lens::FeatureLens;

/// At most this many tokens a batch (1,024 windows of 128).
pub const MAX_BATCH_TOKENS: usize = 131_072;

/// The share of the free device memory a batch plans to use.
pub const FREE_MEMORY_SHARE: f64 = 0.5;

/// Room a row of the GPU selection kernel keeps for a threshold activation's (ReLU, JumpReLU,
/// gated) active latents; a row with more is read back densely.
pub const SELECT_ROOM_THRESHOLD: usize = 1024;

/// The batch a GPU holds, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuBatch {
    pub windows: usize,
    pub free_bytes: usize,
    pub bytes_per_window: usize,
}

impl std::fmt::Display for GpuBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        write!(
            f,
            "{} windows a batch: {:.1} GiB free on the GPU, ~{:.1} MiB a window (half the free memory, at most {MAX_BATCH_TOKENS} tokens)",
            self.windows,
            gib(self.free_bytes),
            self.bytes_per_window as f64 / (1 << 20) as f64
        )
    }
}

/// Windows of `context` tokens, `bytes_per_window` each, that fit in a share of `free_bytes`:
/// at least 1, at most [`MAX_BATCH_TOKENS`] tokens' worth.
pub fn windows_that_fit(free_bytes: usize, bytes_per_window: usize, context: usize) -> usize {
    let by_memory = (free_bytes as f64 * FREE_MEMORY_SHARE / bytes_per_window.max(1) as f64) as usize;
    let by_tokens = MAX_BATCH_TOKENS / context.max(1);
    by_memory.min(by_tokens).max(1)
}

/// Device bytes one token takes in one layer of the forward pass (the larger of attention's
/// and the MLP's working sets), weights in `dtype_bytes`, sequences of `context` tokens.
pub fn forward_bytes_per_token(config: &ModelConfig, dtype_bytes: usize, context: usize) -> usize {
    let (h, q, kv) = (config.hidden_size, config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim);
    // Residual stream, its normed copy and the layer's output; the fused q/k/v projection, its
    // head-major and rotated copies, and the attention output.
    let attention = dtype_bytes * (3 * h + 3 * (q + 2 * kv) + q);
    // Scores, their f32 copy, scaled, masked and softmaxed (f32), and the probabilities back
    // in the model's dtype: one row of `context` keys per head.
    let scores = config.n_heads * context * (2 * dtype_bytes + 4 * 4);
    // The fused gate/up projection, the activated product, and the down projection.
    let mlp = dtype_bytes * (3 * h + 2 * config.intermediate_size + config.intermediate_size + h);
    (attention + scores).max(mlp)
}

/// Device bytes one token takes in `dictionary`'s encode: the input rows (f32, normalised and
/// centred copies), the pre-activations and the activation's element-wise temporaries, the
/// selection's room, and a transcoder's skip output.
pub fn encode_bytes_per_token(dictionary: &Dictionary) -> usize {
    let info = dictionary.info();
    let (copies, room) = match dictionary.activation() {
        Activation::TopK { k } => (4, *k),
        Activation::GroupMax { k } => (4, *k),
        Activation::Relu | Activation::JumpRelu { .. } | Activation::Gated { .. } => (6, SELECT_ROOM_THRESHOLD),
    };
    4 * (3 * info.d_in + copies * info.d_sae + info.d_out) + 8 * room.min(info.d_sae)
}

/// Device bytes one window of `context` tokens takes through `lens`.
pub fn bytes_per_window(lens: &FeatureLens, context: usize) -> usize {
    let model = lens.model();
    let config = model.config();
    let dtype_bytes = model.compute().dtype.size_in_bytes();
    let mut hooks: Vec<_> = lens.dictionaries().iter().flat_map(|d| [d.dictionary.info().hook_in, d.dictionary.info().hook_out]).collect();
    hooks.sort();
    hooks.dedup();
    // Each captured hook is held in the model's dtype and handed back in f32.
    let captured = hooks.len() * config.hidden_size * (dtype_bytes + 4);
    let encode = lens.dictionaries().iter().map(|d| encode_bytes_per_token(&d.dictionary)).max().unwrap_or(0);
    context * (forward_bytes_per_token(config, dtype_bytes, context) + captured + encode)
}

/// The batch `lens` holds on its GPU for windows of `context` tokens; `None` on the CPU.
pub fn gpu_batch(lens: &FeatureLens, context: usize) -> Result<Option<GpuBatch>> {
    let Some(free_bytes) = lens.model().compute().free_memory()? else {
        return Ok(None);
    };
    let bytes_per_window = bytes_per_window(lens, context);
    Ok(Some(GpuBatch { windows: windows_that_fit(free_bytes, bytes_per_window, context), free_bytes, bytes_per_window }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2_135m() -> ModelConfig {
        ModelConfig {
            architecture: crate::config::Architecture::Llama,
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            n_layers: 30,
            n_heads: 9,
            n_kv_heads: 3,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 100_000.0,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
        }
    }

    #[test]
    fn the_batch_grows_with_free_memory_between_one_window_and_the_token_cap() {
        let mib = 1 << 20;
        assert_eq!(windows_that_fit(0, 13 * mib, 128), 1, "nothing free still runs one window");
        assert_eq!(windows_that_fit(26 * mib, 13 * mib, 128), 1);
        assert_eq!(windows_that_fit(260 * mib, 13 * mib, 128), 10);
        assert_eq!(windows_that_fit(1 << 40, 13 * mib, 128), 1024, "capped at 131,072 tokens");
        assert_eq!(windows_that_fit(1 << 40, 13 * mib, 4096), 32);
        assert_eq!(windows_that_fit(1 << 40, mib, 1 << 20), 1, "a window longer than the cap is still one window");
        let mut last = 0;
        for free in (0..200).map(|g| g * (1usize << 30)) {
            let n = windows_that_fit(free, 138 * mib, 128);
            assert!(n >= last, "{free}: {n} < {last}");
            last = n;
        }
    }

    #[test]
    fn smollm2_in_bf16_needs_tens_of_kilobytes_a_token_and_the_mlp_or_the_scores_dominate() {
        let config = smollm2_135m();
        // Attention: 2 * (3*576 + 3*(576 + 2*192) + 576) = 10,368; scores at 128 keys:
        // 9 * 128 * (4 + 16) = 23,040; the MLP: 2 * (3*576 + 3*1536 + 576) = 13,824.
        assert_eq!(forward_bytes_per_token(&config, 2, 128), 10_368 + 23_040);
        assert_eq!(forward_bytes_per_token(&config, 2, 16), 13_824, "short windows: the MLP is the larger");
        assert!(forward_bytes_per_token(&config, 4, 128) > forward_bytes_per_token(&config, 2, 128));
    }
}
