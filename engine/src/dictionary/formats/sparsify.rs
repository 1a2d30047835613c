//! EleutherAI sparsify: a folder per hookpoint (named after it, e.g. `layers.6` or
//! `layers.6.mlp`) with `cfg.json` and `sae.safetensors`.
//!
//! `encoder.weight: [latents, d_in]`, `encoder.bias`, `W_dec: [latents, d_out]`, `b_dec`,
//! optional `W_skip: [d_out, d_in]`. Encode: `ReLU((x - b_dec) · encoderᵀ + bias)` (no
//! `b_dec` subtraction when transcoding), then top-k or group-max; decode:
//! `f · W_dec + b_dec (+ x · W_skipᵀ)`.

use std::path::Path;

use loupe_schema::hook::{BlockSite, HookPoint};

use super::{read_json, Config, Tensors};
use crate::dictionary::{Activation, DictionaryInfo, DictionaryParts, Format, InputNorm, Skip};
use crate::error::{EngineError, Result};

pub fn load(dir: &Path) -> Result<DictionaryParts> {
    let cfg_path = dir.join("cfg.json");
    let value = read_json(&cfg_path)?;
    let cfg = Config { path: &cfg_path, value: &value };
    let weights_path = dir.join("sae.safetensors");
    let mut tensors = Tensors::safetensors(&weights_path, "sparsify")?;

    let k = cfg.usize("k")?;
    let transcode = cfg.bool_or("transcode", false)?;
    let activation = match cfg.opt_str("activation")?.unwrap_or("topk") {
        "topk" => Activation::TopK { k },
        "groupmax" => Activation::GroupMax { k },
        other => return Err(EngineError::UnknownArchitecture { path: cfg_path.clone(), field: "activation", architecture: other.into(), supported: "topk, groupmax" }),
    };
    let encoder_dims = tensors.dims("encoder.weight")?;
    let [d_sae, d_in] = encoder_dims[..] else {
        return Err(EngineError::BadTensor { path: weights_path, tensor: "encoder.weight".into(), reason: format!("has shape {encoder_dims:?}, expected [latents, d_in]") });
    };
    if let Some(cfg_d_in) = cfg.opt_usize("d_in")? {
        if cfg_d_in != d_in {
            return Err(cfg.bad("d_in", format!("is {cfg_d_in}, but encoder.weight has d_in {d_in}")));
        }
    }
    let d_out = tensors.dims("b_dec")?.last().copied().unwrap_or(d_in);

    let w_enc = tensors.take("encoder.weight", &[d_sae, d_in])?.t()?.contiguous()?;
    let b_enc = tensors.take("encoder.bias", &[d_sae])?;
    let w_dec = tensors.take("W_dec", &[d_sae, d_out])?;
    let b_dec = tensors.take("b_dec", &[d_out])?;
    let skip = match tensors.take_opt("W_skip", &[d_out, d_in])? {
        Some(w_skip) => Some(Skip { weight: w_skip.t()?.contiguous()?, bias: None }),
        None if cfg.bool_or("skip_connection", false)? => {
            return Err(EngineError::MissingTensor { path: weights_path, tensor: "W_skip".into(), family: "a sparsify dictionary with skip_connection".into() })
        }
        None => None,
    };
    if !transcode && d_out != d_in {
        return Err(cfg.bad("transcode", format!("is false, but b_dec has width {d_out} and the input {d_in}")));
    }

    let hookpoint = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let hook = hookpoint.parse::<HookPoint>().map_err(|e| EngineError::BadFile { path: dir.into(), format: "sparsify dictionary", reason: format!("the folder name is the hookpoint: {e}") })?;
    // A transcoder on `layers.L.mlp` reads the MLP's input and writes its output.
    let (hook_in, hook_out) = match hook {
        HookPoint::Block { layer, site: BlockSite::MlpOut } if transcode => (HookPoint::block(layer, BlockSite::Ln2Normalized), hook),
        _ => (hook, hook),
    };
    let input_bias = if transcode { None } else { Some(b_dec.clone()) };
    Ok(DictionaryParts {
        info: DictionaryInfo {
            format: Format::Sparsify,
            architecture: if transcode { format!("{}_transcoder", activation.name()) } else { activation.name().into() },
            hook_in,
            hook_out,
            d_in,
            d_sae,
            d_out,
            model_name: None,
            source: dir.into(),
        },
        w_enc,
        b_enc,
        w_dec,
        b_dec,
        input_bias,
        input_norm: InputNorm::None,
        activation,
        rescale_by_decoder_norm: false,
        skip,
    })
}
