//! SAELens folders: `cfg.json` + `sae_weights.safetensors` (+ optional
//! `sparsity.safetensors`, not needed to encode).
//!
//! v6 configs carry `architecture` at the top level and the hook in `metadata.hook_name`;
//! older ones are flat (`hook_name` or `hook_point`, `activation_fn_str`,
//! `activation_fn_kwargs.k`). Weights are `W_enc: [d_in, d_sae]`, `W_dec: [d_sae, d_out]`,
//! `b_enc`, `b_dec`, plus `threshold` (jumprelu), `b_gate`/`b_mag`/`r_mag` (gated) and
//! `W_skip: [d_out, d_in]` (skip transcoders).

use std::path::Path;

use loupe_schema::hook::HookPoint;

use super::{host, read_json, Config, Tensors};
use crate::dictionary::{Activation, DictionaryInfo, DictionaryParts, Format, InputNorm, Skip};
use crate::error::{EngineError, Result};

const SUPPORTED: &str = "standard, jumprelu, gated, topk, batchtopk, transcoder, skip_transcoder, \
                         jumprelu_transcoder, jumprelu_skip_transcoder";

pub fn load(dir: &Path) -> Result<DictionaryParts> {
    let cfg_path = dir.join("cfg.json");
    let value = read_json(&cfg_path)?;
    let cfg = Config { path: &cfg_path, value: &value };
    let metadata_value = value.get("metadata").filter(|m| m.is_object());
    let is_v6 = metadata_value.is_some();
    // v6 keeps the hook and model in `metadata`; older configs keep them at the top level.
    let meta = Config { path: &cfg_path, value: metadata_value.unwrap_or(&value) };

    let d_in = cfg.usize("d_in")?;
    let d_sae = cfg.usize("d_sae")?;
    let architecture = cfg.opt_str("architecture")?.unwrap_or("standard").to_string();
    let activation_field = if cfg.get("activation_fn_str").is_some() { "activation_fn_str" } else { "activation_fn" };
    let legacy_activation = cfg.opt_str(activation_field)?;
    let k = match cfg.opt_usize("k")? {
        Some(k) => Some(k),
        None => match cfg.get("activation_fn_kwargs") {
            Some(kwargs) => Config { path: &cfg_path, value: kwargs }.opt_usize("k")?,
            None => None,
        },
    };

    let is_transcoder = architecture.contains("transcoder");
    let d_out = if is_transcoder { cfg.opt_usize("d_out")?.unwrap_or(d_in) } else { d_in };
    let hook_field = if meta.get("hook_name").is_some() { "hook_name" } else { "hook_point" };
    let hook_in = meta.hook(hook_field)?;
    let hook_out = if is_transcoder { transcoder_output_hook(&meta, hook_in)? } else { hook_in };

    let weights_path = dir.join("sae_weights.safetensors");
    let mut tensors = Tensors::safetensors(&weights_path, &architecture)?;
    let w_enc = tensors.take("W_enc", &[d_in, d_sae])?;
    let w_dec = tensors.take("W_dec", &[d_sae, d_out])?;
    let b_dec = tensors.take("b_dec", &[d_out])?;

    let (activation, b_enc) = match (architecture.as_str(), legacy_activation) {
        ("standard", Some("topk")) | ("topk", _) => {
            let k = k.ok_or_else(|| cfg.bad("k", "is missing (a topk dictionary needs k)"))?;
            (Activation::TopK { k }, tensors.take("b_enc", &[d_sae])?)
        }
        ("standard" | "transcoder" | "skip_transcoder", None | Some("relu")) => (Activation::Relu, tensors.take("b_enc", &[d_sae])?),
        ("jumprelu" | "batchtopk" | "jumprelu_transcoder" | "jumprelu_skip_transcoder", None | Some("relu")) => {
            let threshold = host(&tensors.take("threshold", &[d_sae])?)?;
            (Activation::JumpRelu { threshold }, tensors.take("b_enc", &[d_sae])?)
        }
        ("gated", None | Some("relu")) => {
            let b_gate = tensors.take("b_gate", &[d_sae])?;
            let r_mag_exp = host(&tensors.take("r_mag", &[d_sae])?.exp()?)?;
            let b_mag = host(&tensors.take("b_mag", &[d_sae])?)?;
            (Activation::Gated { r_mag_exp, b_mag, b_gate: host(&b_gate)? }, b_gate)
        }
        (_, Some(other)) if !["relu", "topk"].contains(&other) => {
            return Err(EngineError::UnknownArchitecture { path: cfg_path.clone(), field: "activation_fn_str", architecture: other.into(), supported: "relu, topk" })
        }
        (other, _) => return Err(EngineError::UnknownArchitecture { path: cfg_path.clone(), field: "architecture", architecture: other.into(), supported: SUPPORTED }),
    };

    // Older SAEs fine-tuned a per-latent scale applied to the features before decoding;
    // folding it into the decoder rows keeps encode outputs and reconstructions exact.
    let w_dec = match tensors.take_opt("scaling_factor", &[d_sae])? {
        Some(scale) if cfg.bool_or("finetuning_scaling_factor", false)? => w_dec.broadcast_mul(&scale.unsqueeze(1)?)?,
        _ => w_dec,
    };
    let skip = if architecture.contains("skip_transcoder") {
        let w_skip = tensors.take("W_skip", &[d_out, d_in])?;
        Some(Skip { weight: w_skip.t()?.contiguous()?, bias: None })
    } else {
        None
    };
    // Pre-6.0 configs may say true/false: true meant the training-time scale, since folded.
    let normalize = match cfg.get("normalize_activations") {
        Some(serde_json::Value::Bool(_)) => "none",
        _ => cfg.opt_str("normalize_activations")?.unwrap_or("none"),
    };
    let input_norm = match normalize {
        "none" | "expected_average_only_in" => InputNorm::None,
        "constant_norm_rescale" => InputNorm::ConstantNormRescale,
        "layer_norm" => InputNorm::LayerNorm { eps: 1e-5 },
        other => return Err(cfg.bad("normalize_activations", format!("is '{other}', expected none, expected_average_only_in, constant_norm_rescale or layer_norm"))),
    };
    // Transcoders never subtract b_dec (it lives in the output space).
    let apply_b_dec = !is_transcoder && cfg.bool_or("apply_b_dec_to_input", true)?;
    let rescale_by_decoder_norm = matches!(activation, Activation::TopK { .. }) && cfg.bool_or("rescale_acts_by_decoder_norm", false)?;
    Ok(DictionaryParts {
        info: DictionaryInfo {
            format: if is_v6 { Format::SaeLens } else { Format::SaeLensLegacy },
            architecture: if legacy_activation == Some("topk") { "topk".into() } else { architecture },
            hook_in,
            hook_out,
            d_in,
            d_sae,
            d_out,
            model_name: meta.opt_str("model_name")?.map(str::to_string),
            source: dir.into(),
        },
        input_bias: apply_b_dec.then(|| b_dec.clone()),
        w_enc,
        b_enc,
        w_dec,
        b_dec,
        input_norm,
        activation,
        rescale_by_decoder_norm,
        skip,
    })
}

/// A transcoder's output hook: `hook_name_out` where given, else the MLP output of the
/// input's layer (transcoders replace MLPs).
fn transcoder_output_hook(meta: &Config, hook_in: HookPoint) -> Result<HookPoint> {
    if meta.get("hook_name_out").is_some() {
        return meta.hook("hook_name_out");
    }
    match hook_in.layer() {
        Some(layer) => Ok(HookPoint::block(layer, loupe_schema::hook::BlockSite::MlpOut)),
        None => Err(meta.bad("hook_name_out", "is missing (a transcoder needs its output hook)")),
    }
}
