//! Writes a trained SAE as a SAELens v6 folder (`cfg.json`, `sae_weights.safetensors`,
//! `sparsity.safetensors`), with the input scaling used in training folded into the weights.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::json;

use super::sae::{Sparsity, TrainableSae};
use super::TrainConfig;
use crate::error::{Result, TrainError};

/// Everything besides the parameters that goes into the saved folder.
pub struct SaveInfo<'a> {
    pub config: &'a TrainConfig,
    /// Training inputs were `x * scale`.
    pub scale: f64,
    /// BatchTopK: the JumpReLU threshold learned during training.
    pub threshold: f64,
    /// Per-latent firing frequency over training.
    pub frequency: &'a [f64],
}

/// Writes into `out` through a temporary folder, so a failed save leaves the old files.
pub fn save_saelens(sae: &TrainableSae, info: &SaveInfo, out: &Path) -> Result<()> {
    let config = info.config;
    let c = info.scale;
    // Trained on x·c: f = act((x·c - b)·W + b_enc) = act((x - b/c)·(c·W) + b_enc), and the
    // reconstruction of x is (f·W_dec + b_dec) / c.
    let (d_in, d_sae) = (sae.d_in, sae.d_sae);
    let cpu = &candle_core::Device::Cpu;
    let w_enc = (Tensor::from_slice(&sae.w_enc_t, (d_sae, d_in), cpu)?.t()?.contiguous()? * c)?;
    let w_dec = (Tensor::from_slice(&sae.w_dec, (d_sae, d_in), cpu)? / c)?;
    let b_dec = (Tensor::from_slice(&sae.b_dec, d_in, cpu)? / c)?;
    let b_enc = Tensor::from_slice(&sae.b_enc, d_sae, cpu)?;
    let dtype = config.dtype.candle();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, tensor) in [("W_enc", w_enc), ("W_dec", w_dec), ("b_enc", b_enc), ("b_dec", b_dec)] {
        tensors.insert(name.into(), tensor.to_dtype(dtype)?);
    }
    let architecture = match config.sparsity {
        Sparsity::TopK => "topk",
        Sparsity::BatchTopK => {
            let threshold = Tensor::full(info.threshold as f32, d_sae, &candle_core::Device::Cpu)?;
            tensors.insert("threshold".into(), threshold.to_dtype(dtype)?);
            "jumprelu"
        }
    };
    let mut cfg = json!({
        "architecture": architecture,
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": config.dtype.name(),
        "device": "cpu",
        "apply_b_dec_to_input": true,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": config.model_name,
            "hook_name": config.hook,
            "hook_head_index": null,
            "prepend_bos": true,
            "exclude_special_tokens": false,
            "context_size": config.context,
            "dataset_path": config.dataset,
            "sae_lens_version": null,
            "sae_lens_training_version": null,
            "trained_by": format!("loupe {}", env!("CARGO_PKG_VERSION")),
        },
    });
    if config.sparsity == Sparsity::TopK {
        cfg["k"] = json!(config.k);
        cfg["rescale_acts_by_decoder_norm"] = json!(false);
    }
    let log_sparsity: Vec<f32> = info.frequency.iter().map(|&f| (f + 1e-10).log10() as f32).collect();
    let sparsity = HashMap::from([("sparsity".to_string(), Tensor::from_vec(log_sparsity, d_sae, &candle_core::Device::Cpu)?)]);

    let tmp = out.with_extension("saving");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let write_err = |path: &Path, e: candle_core::Error| TrainError::BadFile { path: path.into(), format: "safetensors", reason: format!("cannot write: {e}") };
    let weights_path = tmp.join("sae_weights.safetensors");
    candle_core::safetensors::save(&tensors, &weights_path).map_err(|e| write_err(&weights_path, e))?;
    let sparsity_path = tmp.join("sparsity.safetensors");
    candle_core::safetensors::save(&sparsity, &sparsity_path).map_err(|e| write_err(&sparsity_path, e))?;
    let cfg_path = tmp.join("cfg.json");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap_or_default()).map_err(|e| TrainError::io(&cfg_path, e))?;
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    for name in ["sae_weights.safetensors", "sparsity.safetensors", "cfg.json"] {
        std::fs::rename(tmp.join(name), out.join(name)).map_err(|e| TrainError::io(out.join(name), e))?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveDType {
    F32,
    F16,
}

impl SaveDType {
    pub fn candle(self) -> DType {
        match self {
            SaveDType::F32 => DType::F32,
            SaveDType::F16 => DType::F16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SaveDType::F32 => "float32",
            SaveDType::F16 => "float16",
        }
    }
}
