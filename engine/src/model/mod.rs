//! Language models with hook points. A family (only Llama today) implements
//! [`LanguageModel`]; callers hold a [`Model`] and never see which family it is.

mod cpu_ops;
#[cfg(feature = "cuda")]
mod gpu_softmax;
pub mod llama;
mod rope;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use loupe_schema::hook::HookPoint;

use crate::config::{Architecture, ModelConfig};
use crate::device::Compute;
use crate::error::{EngineError, Result};
use crate::hooks::Hooks;
use crate::tokenizer::Tokenizer;
use crate::weights::{self, gguf::GgufFile};

/// Token ids of a batch of sequences, right-padded to the longest.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// `[batch, seq]` u32.
    pub ids: Tensor,
    /// Real length of each sequence; positions at or beyond it are padding.
    pub lengths: Vec<usize>,
}

impl TokenBatch {
    /// Right-pads `sequences` with `pad_id`. Every sequence must have at least one token.
    pub fn right_padded(sequences: &[Vec<u32>], pad_id: u32) -> Result<Self> {
        if sequences.is_empty() {
            return Err(EngineError::InvalidInput("empty batch: give at least one sequence".into()));
        }
        if let Some(i) = sequences.iter().position(Vec::is_empty) {
            return Err(EngineError::InvalidInput(format!("sequence {i} of the batch has no tokens")));
        }
        let width = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let mut flat = Vec::with_capacity(width * sequences.len());
        for seq in sequences {
            flat.extend_from_slice(seq);
            flat.extend(std::iter::repeat_n(pad_id, width - seq.len()));
        }
        let ids = Tensor::from_vec(flat, (sequences.len(), width), &Device::Cpu)?;
        Ok(TokenBatch { ids, lengths: sequences.iter().map(Vec::len).collect() })
    }

    pub fn single(ids: &[u32]) -> Result<Self> {
        Self::right_padded(&[ids.to_vec()], 0)
    }

    pub fn batch_size(&self) -> usize {
        self.lengths.len()
    }

    pub fn width(&self) -> usize {
        self.ids.dim(1).unwrap_or(0)
    }

    pub fn is_padded(&self) -> bool {
        let width = self.width();
        self.lengths.iter().any(|&l| l != width)
    }
}

/// Which logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None: the pass stops after the deepest hook it needs.
    None,
    /// `[batch, vocab]` at each sequence's last real token (for generation).
    Last,
    /// `[batch, seq, vocab]`.
    All,
}

#[derive(Debug, Default)]
pub struct ForwardOutput {
    pub logits: Option<Tensor>,
    /// Captured activations, `[batch, seq, width]` each.
    pub captured: BTreeMap<HookPoint, Tensor>,
}

/// Keys and values of past positions, one entry per layer, for incremental decoding.
pub struct KvCache {
    layers: Vec<candle_nn::kv_cache::KvCache>,
}

impl KvCache {
    /// Room for `capacity` positions to start with; it grows as needed.
    pub fn new(n_layers: usize, capacity: usize) -> Self {
        KvCache { layers: (0..n_layers).map(|_| candle_nn::kv_cache::KvCache::new(2, capacity.max(1))).collect() }
    }

    /// Number of positions already cached.
    pub fn seq_len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.current_seq_len())
    }

    pub(crate) fn layer(&mut self, layer: usize) -> &mut candle_nn::kv_cache::KvCache {
        &mut self.layers[layer]
    }
}

/// A model family's forward pass with hook points.
pub trait LanguageModel: Send + Sync {
    fn config(&self) -> &ModelConfig;

    /// Where it computes, and in which dtype.
    fn compute(&self) -> &Compute;

    /// Runs the model over `batch`. With `Logits::None` it stops after the block of the
    /// deepest hook in `hooks`. With a cache, positions continue from the cached ones.
    fn forward(&self, batch: &TokenBatch, hooks: &Hooks, logits: Logits, cache: Option<&mut KvCache>) -> Result<ForwardOutput>;

    /// The unembedding matrix `[d_model, vocab]` (W_U), for logit attribution, in f32 on
    /// the model's device.
    fn unembedding(&self) -> &Tensor;
}

/// A loaded model: its family's forward pass plus its tokenizer.
pub struct Model {
    inner: Box<dyn LanguageModel>,
    tokenizer: Option<Tokenizer>,
    source: PathBuf,
}

impl Model {
    /// Loads a GGUF file, or a Hugging Face folder (`config.json`, `*.safetensors`, and
    /// `tokenizer.json` if the tokenizer is wanted), onto the CPU in f32.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_on(path, &Compute::cpu())
    }

    /// [`load`](Self::load) onto a device, in its precision.
    pub fn load_on(path: &Path, compute: &Compute) -> Result<Self> {
        if path.is_dir() {
            Self::load_hf_dir(path, compute)
        } else if path.is_file() {
            Self::load_gguf(path, compute)
        } else {
            Err(EngineError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder")))
        }
    }

    fn load_gguf(path: &Path, compute: &Compute) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let config = ModelConfig::from_gguf(path, &file.content)?;
        let tokenizer = Tokenizer::from_gguf(path, &file.content)?;
        let weights = file.load_weights(&config)?;
        let inner = build_family(config, weights, compute)?;
        Ok(Model { inner, tokenizer: Some(tokenizer), source: path.into() })
    }

    fn load_hf_dir(dir: &Path, compute: &Compute) -> Result<Self> {
        let config = ModelConfig::from_hf_config(&dir.join("config.json"))?;
        let weights = weights::safetensors::load_weights(dir)?;
        let inner = build_family(config, weights, compute)?;
        let tokenizer = if dir.join("tokenizer.json").exists() { Some(Tokenizer::from_hf_dir(dir)?) } else { None };
        Ok(Model { inner, tokenizer, source: dir.into() })
    }

    pub fn config(&self) -> &ModelConfig {
        self.inner.config()
    }

    /// Where the model computes, and in which dtype.
    pub fn compute(&self) -> &Compute {
        self.inner.compute()
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| EngineError::Tokenizer(format!("{} has no tokenizer (expected tokenizer.json beside config.json)", self.source.display())))
    }

    /// On the CPU the pass runs on a thread of the compute pool (rayon's, which the matmuls
    /// and the fused kernels split their work over): each parallel op of the pass (~10 per
    /// layer) then starts from a pool thread, and the others, still spinning from the op
    /// before, take their share at once. Called from outside the pool, every op handed its
    /// work to sleeping threads and slept until they were done; those wake-ups took ~8% of
    /// a 1 x 128-token pass on 2 cores, and the pass ran ~6% faster in the pool.
    pub fn forward(&self, batch: &TokenBatch, hooks: &Hooks, logits: Logits, cache: Option<&mut KvCache>) -> Result<ForwardOutput> {
        if self.compute().device.is_cpu() {
            return rayon::scope(|_| self.inner.forward(batch, hooks, logits, cache));
        }
        self.inner.forward(batch, hooks, logits, cache)
    }

    pub fn unembedding(&self) -> &Tensor {
        self.inner.unembedding()
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config().n_layers, 256)
    }

    /// Padding id for batches: the tokenizer's EOS, else 0 (padding is masked either way).
    pub fn pad_token_id(&self) -> u32 {
        self.tokenizer.as_ref().and_then(Tokenizer::eos_token_id).unwrap_or(0)
    }
}

fn build_family(config: ModelConfig, mut weights: weights::WeightMap, compute: &Compute) -> Result<Box<dyn LanguageModel>> {
    let model: Box<dyn LanguageModel> = match config.architecture {
        Architecture::Llama => Box::new(llama::Llama::new(config, &mut weights, compute)?),
    };
    let unused = weights.remaining();
    if !unused.is_empty() {
        tracing::debug!(path = %weights.path().display(), ?unused, "tensors not used by the model");
    }
    Ok(model)
}
