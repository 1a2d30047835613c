//! Model hyper-parameters, read from GGUF metadata or a Hugging Face `config.json`.

use std::path::Path;

use candle_core::quantized::gguf_file;
use loupe_schema::hook::{BlockSite, HookPoint};
use serde::Deserialize;

use crate::error::{EngineError, Result};

/// Model families the engine can run. Callers never match on this: the family only chooses
/// how weights are named and how a block is wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
}

impl Architecture {
    pub const SUPPORTED: &'static str = "llama";

    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

impl ModelConfig {
    /// Reads `{arch}.*` keys of a GGUF header. Whether embeddings are tied is decided later,
    /// by the presence of `output.weight`.
    pub fn from_gguf(path: &Path, content: &gguf_file::Content) -> Result<Self> {
        let arch = gguf_string(path, content, "general.architecture")?;
        let architecture = match arch.as_str() {
            "llama" => Architecture::Llama,
            other => return Err(EngineError::UnknownArchitecture { path: path.into(), field: "general.architecture", architecture: other.into(), supported: Architecture::SUPPORTED }),
        };
        let usize_field = |key: &str| gguf_usize(path, content, &format!("{arch}.{key}"));
        let hidden_size = usize_field("embedding_length")?;
        let n_heads = usize_field("attention.head_count")?;
        let n_kv_heads = match content.metadata.get(&format!("{arch}.attention.head_count_kv")) {
            Some(_) => usize_field("attention.head_count_kv")?,
            None => n_heads,
        };
        let head_dim = match content.metadata.get(&format!("{arch}.rope.dimension_count")) {
            Some(_) => usize_field("rope.dimension_count")?,
            None => hidden_size / n_heads.max(1),
        };
        let vocab_size = match content.metadata.get(&format!("{arch}.vocab_size")) {
            Some(_) => usize_field("vocab_size")?,
            None => match content.metadata.get("tokenizer.ggml.tokens") {
                Some(gguf_file::Value::Array(tokens)) => tokens.len(),
                _ => return Err(missing_field(path, &format!("{arch}.vocab_size"))),
            },
        };
        let config = ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: usize_field("feed_forward_length")?,
            n_layers: usize_field("block_count")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rms_norm_eps: gguf_f64(path, content, &format!("{arch}.attention.layer_norm_rms_epsilon"))?,
            rope_theta: gguf_f64(path, content, &format!("{arch}.rope.freq_base")).unwrap_or(10_000.0),
            max_position_embeddings: usize_field("context_length").unwrap_or(4096),
            tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Reads a Hugging Face `config.json` (transformers 4 and 5 spellings of RoPE theta).
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        let raw: HfConfig = serde_json::from_str(&text).map_err(|e| EngineError::BadFile { path: path.into(), format: "config.json", reason: e.to_string() })?;
        let architecture = match raw.model_type.as_str() {
            "llama" => Architecture::Llama,
            other => return Err(EngineError::UnknownArchitecture { path: path.into(), field: "model_type", architecture: other.into(), supported: Architecture::SUPPORTED }),
        };
        let n_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        let rope_theta = raw.rope_theta.or_else(|| raw.rope_parameters.as_ref().and_then(|p| p.rope_theta)).unwrap_or(10_000.0);
        let config = ModelConfig {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            n_layers: raw.num_hidden_layers,
            n_heads: raw.num_attention_heads,
            n_kv_heads,
            head_dim: raw.head_dim.unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1)),
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
        };
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, problem: String| EngineError::BadField { path: path.into(), field: field.into(), problem };
        for (field, value) in [
            ("hidden_size", self.hidden_size),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("vocab_size", self.vocab_size),
            ("intermediate_size", self.intermediate_size),
        ] {
            if value == 0 {
                return Err(bad(field, "must be positive".into()));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(bad("n_kv_heads", format!("({}) must divide the number of attention heads ({})", self.n_kv_heads, self.n_heads)));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(bad("head_dim", format!("({}) must be even for rotary embeddings", self.head_dim)));
        }
        Ok(())
    }

    /// Width of the activation at `hook`, or `None` if the model has no such hook.
    pub fn hook_width(&self, hook: HookPoint) -> Option<usize> {
        if hook.layer().is_some_and(|layer| layer >= self.n_layers) {
            return None;
        }
        Some(match hook {
            HookPoint::Block { site: BlockSite::MlpPost, .. } => self.intermediate_size,
            _ => self.hidden_size,
        })
    }

    /// Floating-point operations of one forward over `tokens` tokens, through `layers` blocks,
    /// with or without the unembedding; `context` is the attention span per token on average.
    pub fn forward_flops(&self, tokens: usize, layers: usize, context: usize, logits: bool) -> f64 {
        let d = self.hidden_size as f64;
        let q_out = (self.n_heads * self.head_dim) as f64;
        let kv_out = (self.n_kv_heads * self.head_dim) as f64;
        let ff = self.intermediate_size as f64;
        let projections = d * (q_out + 2.0 * kv_out) + q_out * d + 3.0 * d * ff;
        let attention = 2.0 * q_out * context as f64;
        let per_token_layer = 2.0 * projections + 2.0 * attention;
        let unembed = if logits { 2.0 * d * self.vocab_size as f64 } else { 0.0 };
        tokens as f64 * (per_token_layer * layers as f64 + unembed)
    }
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
}

fn missing_field(path: &Path, field: &str) -> EngineError {
    EngineError::BadField { path: path.into(), field: field.into(), problem: "is missing".into() }
}

pub(crate) fn gguf_value<'a>(path: &Path, content: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    content.metadata.get(key).ok_or_else(|| missing_field(path, key))
}

pub(crate) fn gguf_string(path: &Path, content: &gguf_file::Content, key: &str) -> Result<String> {
    gguf_value(path, content, key)?.to_string().cloned().map_err(|_| EngineError::BadField { path: path.into(), field: key.into(), problem: "should be a string".into() })
}

pub(crate) fn gguf_usize(path: &Path, content: &gguf_file::Content, key: &str) -> Result<usize> {
    use gguf_file::Value::*;
    let value = gguf_value(path, content, key)?;
    let n: Option<u64> = match value {
        U8(v) => Some(*v as u64),
        U16(v) => Some(*v as u64),
        U32(v) => Some(*v as u64),
        U64(v) => Some(*v),
        I8(v) => u64::try_from(*v).ok(),
        I16(v) => u64::try_from(*v).ok(),
        I32(v) => u64::try_from(*v).ok(),
        I64(v) => u64::try_from(*v).ok(),
        _ => None,
    };
    n.map(|n| n as usize).ok_or_else(|| EngineError::BadField { path: path.into(), field: key.into(), problem: format!("should be a non-negative integer, found {value:?}") })
}

pub(crate) fn gguf_f64(path: &Path, content: &gguf_file::Content, key: &str) -> Result<f64> {
    use gguf_file::Value::*;
    match gguf_value(path, content, key)? {
        F32(v) => Ok(*v as f64),
        F64(v) => Ok(*v),
        other => Err(EngineError::BadField { path: path.into(), field: key.into(), problem: format!("should be a float, found {other:?}") }),
    }
}
