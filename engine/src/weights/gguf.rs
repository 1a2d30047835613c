//! GGUF (llama.cpp) model files: header, config, and every tensor dequantized to f32.
//!
//! llama.cpp's converter permutes the rows of the Q and K projections so that its
//! interleaved RoPE applies; we undo that permutation so that weights match Hugging Face's
//! layout (and its half-split RoPE), as transformers does when it reads a GGUF.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::WeightMap;
use crate::config::ModelConfig;
use crate::error::{EngineError, Result};

/// A parsed GGUF header (metadata and tensor directory), tensors not yet read.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: gguf_file::Content,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader).map_err(|e| EngineError::BadFile { path: path.into(), format: "GGUF", reason: e.to_string() })?;
        Ok(GgufFile { path: path.into(), content })
    }

    /// Reads and dequantizes every tensor the model uses, renamed to Hugging Face paths.
    pub fn load_weights(&self, config: &ModelConfig) -> Result<WeightMap> {
        let names: Vec<&String> = self.content.tensor_infos.keys().collect();
        // Each thread opens its own handle: reads are independent and dequantization is the
        // slow part (~100M parameters for SmolLM2).
        let loaded: Vec<(String, Tensor)> = names
            .par_iter()
            .filter_map(|name| hf_name(name).map(|hf| (name.as_str(), hf)))
            .map_init(
                || File::open(&self.path).map(BufReader::new),
                |reader, (name, hf)| {
                    let reader = reader.as_mut().map_err(|e| EngineError::io(&self.path, std::io::Error::new(e.kind(), e.to_string())))?;
                    let tensor = self.read_tensor(reader, name)?;
                    let tensor = unpermute_rope_rows(&hf, tensor, config)?;
                    Ok((hf, tensor))
                },
            )
            .collect::<Result<_>>()?;
        Ok(WeightMap::new(&self.path, loaded.into_iter().collect::<HashMap<_, _>>()))
    }

    /// One tensor, dequantized to f32, under its GGUF name.
    pub fn tensor_f32(&self, name: &str) -> Result<Tensor> {
        let file = File::open(&self.path).map_err(|e| EngineError::io(&self.path, e))?;
        self.read_tensor(&mut BufReader::new(file), name)
    }

    fn read_tensor(&self, reader: &mut BufReader<File>, name: &str) -> Result<Tensor> {
        let bad = |reason: String| EngineError::BadTensor { path: self.path.clone(), tensor: name.into(), reason };
        let qtensor = self.content.tensor(reader, name, &Device::Cpu).map_err(|e| bad(e.to_string()))?;
        let tensor = qtensor.dequantize(&Device::Cpu).map_err(|e| bad(e.to_string()))?;
        Ok(tensor)
    }
}

/// llama.cpp tensor name -> Hugging Face module path; `None` for tensors no family uses.
fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, leaf) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let module = match leaf {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}"))
}

/// Undoes llama.cpp's `permute(w, n_head)` on Q/K rows: within each head, rows were stored as
/// interleaved (even, odd) pairs; Hugging Face keeps the first half then the second half.
fn unpermute_rope_rows(hf_name: &str, w: Tensor, config: &ModelConfig) -> Result<Tensor> {
    let n_heads = if hf_name.ends_with("q_proj.weight") {
        config.n_heads
    } else if hf_name.ends_with("k_proj.weight") {
        config.n_kv_heads
    } else {
        return Ok(w);
    };
    let (rows, cols) = w.dims2()?;
    if rows != n_heads * config.head_dim {
        // Leave it to the model's shape check, which names the tensor and both shapes.
        return Ok(w);
    }
    let w = w.reshape((n_heads, config.head_dim / 2, 2, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hugging_face_paths() {
        assert_eq!(hf_name("blk.12.attn_q.weight").unwrap(), "model.layers.12.self_attn.q_proj.weight");
        assert_eq!(hf_name("token_embd.weight").unwrap(), "model.embed_tokens.weight");
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() -> anyhow::Result<()> {
        // llama.cpp: w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols)
        let (n_heads, head_dim, cols) = (2usize, 4usize, 3usize);
        let hf = Tensor::arange(0f32, (n_heads * head_dim * cols) as f32, &Device::Cpu)?.reshape((n_heads * head_dim, cols))?;
        let permuted = hf.reshape((n_heads, 2, head_dim / 2, cols))?.transpose(1, 2)?.contiguous()?.reshape((n_heads * head_dim, cols))?;
        let config = ModelConfig {
            architecture: crate::config::Architecture::Llama,
            vocab_size: 1,
            hidden_size: cols,
            intermediate_size: 1,
            n_layers: 1,
            n_heads,
            n_kv_heads: n_heads,
            head_dim,
            rms_norm_eps: 1e-5,
            rope_theta: 1e4,
            max_position_embeddings: 8,
            tie_word_embeddings: true,
        };
        let back = unpermute_rope_rows("model.layers.0.self_attn.q_proj.weight", permuted, &config)?;
        assert_eq!(back.to_vec2::<f32>()?, hf.to_vec2::<f32>()?);
        Ok(())
    }
}
