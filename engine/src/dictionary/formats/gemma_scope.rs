//! Gemma Scope (DeepMind's JumpReLU SAEs and transcoders).
//!
//! v1: `params.npz` with `W_enc: [d_in, d_sae]`, `W_dec: [d_sae, d_in]`, `b_enc`, `b_dec`,
//! `threshold`. The file has no config, so the hook comes from the release path
//! (`gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71/params.npz`).
//! v2: `config.json` + `params.safetensors` with lowercase `w_enc`, `w_dec`, `b_enc`, `b_dec`,
//! `threshold` and an optional `affine_skip_connection`.
//! Encode is `ReLU(h) · 1[h > threshold]` with `h = x · W_enc + b_enc`: no `b_dec` is
//! subtracted from the input.

use std::path::Path;

use candle_core::Tensor;
use loupe_schema::hook::{BlockSite, HookPoint};

use super::{host, read_json, Config, Tensors};
use crate::dictionary::{Activation, DictionaryInfo, DictionaryParts, Format, InputNorm, Skip};
use crate::error::{EngineError, Result};

pub fn load_v1(npz: &Path) -> Result<DictionaryParts> {
    let mut tensors = Tensors::npz(npz, "Gemma Scope")?;
    let dims = tensors.dims("W_enc")?;
    let [d_in, d_sae] = dims[..] else {
        return Err(EngineError::BadTensor { path: npz.into(), tensor: "W_enc".into(), reason: format!("has shape {dims:?}, expected [d_in, d_sae]") });
    };
    let hook = hook_from_release_path(npz)?;
    let w_enc = tensors.take("W_enc", &[d_in, d_sae])?;
    let w_dec = tensors.take("W_dec", &[d_sae, d_in])?;
    let b_enc = tensors.take("b_enc", &[d_sae])?;
    let b_dec = tensors.take("b_dec", &[d_in])?;
    let threshold = host(&tensors.take("threshold", &[d_sae])?)?;
    let info = DictionaryInfo { format: Format::GemmaScope, architecture: "jumprelu".into(), hook_in: hook, hook_out: hook, d_in, d_sae, d_out: d_in, model_name: None, source: npz.into() };
    Ok(jumprelu_parts(info, [w_enc, b_enc, w_dec, b_dec], threshold, None))
}

/// Both Gemma Scope versions: JumpReLU on `x · W_enc + b_enc`, nothing subtracted or
/// normalised on the way in.
fn jumprelu_parts(info: DictionaryInfo, [w_enc, b_enc, w_dec, b_dec]: [Tensor; 4], threshold: Vec<f32>, skip: Option<Skip>) -> DictionaryParts {
    DictionaryParts { info, w_enc, b_enc, w_dec, b_dec, input_bias: None, input_norm: InputNorm::None, activation: Activation::JumpRelu { threshold }, rescale_by_decoder_norm: false, skip }
}

/// `layer_N` and the release's site (`-res`, `-mlp`, `-transcoders`) in the path name the hook.
fn hook_from_release_path(path: &Path) -> Result<HookPoint> {
    let components: Vec<&str> = path.iter().filter_map(|c| c.to_str()).collect();
    let layer = components.iter().find_map(|c| c.strip_prefix("layer_").and_then(|n| n.parse::<usize>().ok()));
    let site = components.iter().rev().find_map(|c| {
        if c.contains("-res") {
            Some(BlockSite::ResidPost)
        } else if c.contains("-mlp") {
            Some(BlockSite::MlpOut)
        } else {
            None
        }
    });
    match (layer, site) {
        (Some(layer), Some(site)) => Ok(HookPoint::block(layer, site)),
        _ => Err(EngineError::BadFile {
            path: path.into(),
            format: "Gemma Scope params.npz",
            reason: "the file has no config, so its path must name the hook as a Gemma Scope release does: \
                     .../gemma-scope-<model>-<res|mlp>/layer_<L>/width_<W>/<variant>/params.npz"
                .into(),
        }),
    }
}

pub fn load_v2(dir: &Path) -> Result<DictionaryParts> {
    let cfg_path = dir.join("config.json");
    let value = read_json(&cfg_path)?;
    let cfg = Config { path: &cfg_path, value: &value };
    let weights_path = dir.join("params.safetensors");
    let mut tensors = Tensors::safetensors(&weights_path, "Gemma Scope 2")?;
    let dims = tensors.dims("w_enc")?;
    let [d_in, d_sae] = dims[..] else {
        return Err(EngineError::BadTensor { path: weights_path, tensor: "w_enc".into(), reason: format!("has shape {dims:?}, expected [d_in, d_sae]") });
    };
    let d_out = tensors.dims("b_dec")?.last().copied().unwrap_or(d_in);
    for (field, size) in [("width", d_sae), ("d_in", d_in)] {
        if let Some(stated) = cfg.opt_usize(field)? {
            if stated != size {
                return Err(cfg.bad(field, format!("is {stated}, but the weights have {size}")));
            }
        }
    }
    if let Some(architecture) = cfg.opt_str("architecture")? {
        if architecture != "jump_relu" {
            return Err(EngineError::UnknownArchitecture { path: cfg_path.clone(), field: "architecture", architecture: architecture.into(), supported: "jump_relu" });
        }
    }
    let hook_in = gemma_hook(&cfg, "hf_hook_point_in")?;
    let hook_out = match cfg.get("hf_hook_point_out") {
        Some(_) => gemma_hook(&cfg, "hf_hook_point_out")?,
        None => hook_in,
    };
    if hook_in == hook_out && d_out != d_in {
        return Err(cfg.bad("hf_hook_point_out", format!("names the input hook, but the decoder writes width {d_out} and reads width {d_in}")));
    }
    let w_enc = tensors.take("w_enc", &[d_in, d_sae])?;
    let w_dec = tensors.take("w_dec", &[d_sae, d_out])?;
    let b_enc = tensors.take("b_enc", &[d_sae])?;
    let b_dec = tensors.take("b_dec", &[d_out])?;
    let threshold = host(&tensors.take("threshold", &[d_sae])?)?;
    // `x · affine_skip_connection`, untransposed (it is square, so only the tutorial's code
    // tells which way round it goes).
    let skip = tensors.take_opt("affine_skip_connection", &[d_in, d_out])?.map(|weight| Skip { weight, bias: None });
    if skip.is_none() && cfg.bool_or("affine_connection", false)? {
        return Err(EngineError::MissingTensor { path: weights_path, tensor: "affine_skip_connection".into(), family: "a Gemma Scope 2 dictionary with affine_connection".into() });
    }
    let architecture = match (hook_in != hook_out, skip.is_some()) {
        (false, _) => "jumprelu",
        (true, false) => "jumprelu_transcoder",
        (true, true) => "jumprelu_skip_transcoder",
    };
    let info = DictionaryInfo {
        format: Format::GemmaScope2,
        architecture: architecture.into(),
        hook_in,
        hook_out,
        d_in,
        d_sae,
        d_out,
        model_name: cfg.opt_str("model_name")?.map(str::to_string),
        source: dir.into(),
    };
    Ok(jumprelu_parts(info, [w_enc, b_enc, w_dec, b_dec], threshold, skip))
}

/// Gemma Scope 2 names hooks by Hugging Face module input/output
/// (`model.layers.L.output`, `...pre_feedforward_layernorm.output`,
/// `...post_feedforward_layernorm.output`); translated to engine hooks.
fn gemma_hook(cfg: &Config, field: &str) -> Result<HookPoint> {
    let name = cfg.str(field)?;
    let module = name.strip_suffix(".output").unwrap_or(name);
    let translated = if let Some(prefix) = module.strip_suffix(".post_feedforward_layernorm") {
        format!("{prefix}.mlp")
    } else if let Some(prefix) = module.strip_suffix(".pre_feedforward_layernorm") {
        format!("{prefix}.post_attention_layernorm")
    } else if module.ends_with(".input") {
        return Err(cfg.bad(field, format!("is '{name}': module inputs such as the attention's o_proj input (hook_z) are not hook points of this engine")));
    } else {
        module.to_string()
    };
    translated.parse::<HookPoint>().map_err(|e| cfg.bad(field, e.to_string()))
}
