//! Dictionaries (sparse autoencoders and transcoders): loading every public format into one
//! representation, encoding hook activations into sparse feature activations, decoding them
//! back. Training and evaluating them is loupe-train's job.
//!
//! All formats become: `f = act((norm(x) - input_bias) · W_enc + b_enc)` and
//! `x̂ = denorm(f · W_dec + b_dec) + skip(x)`, with `W_enc: [d_in, d_sae]` and
//! `W_dec: [d_sae, d_out]` (`d_out = d_in` except for transcoders).

pub mod activation;
pub mod formats;
#[cfg(feature = "cuda")]
mod gpu_select;
pub mod sparse;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use loupe_schema::hook::HookPoint;
use rayon::prelude::*;

pub use activation::Activation;
pub use sparse::SparseActs;

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};

/// The file layout a dictionary was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// SAELens >= 6 (`cfg.json` with `architecture` and `metadata`, `sae_weights.safetensors`).
    SaeLens,
    /// SAELens < 6 (flat `cfg.json` with `hook_point`/`hook_name`, `activation_fn_str`).
    SaeLensLegacy,
    /// Gemma Scope `params.npz`.
    GemmaScope,
    /// Gemma Scope 2 (`config.json` + `params.safetensors`).
    GemmaScope2,
    /// EleutherAI sparsify (`cfg.json` + `sae.safetensors`).
    Sparsify,
}

/// What a dictionary reads and writes, as stored beside it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DictionaryInfo {
    pub format: Format,
    /// The architecture as the source names it (e.g. `topk`, `jumprelu_skip_transcoder`).
    pub architecture: String,
    /// The hook whose activation is encoded.
    pub hook_in: HookPoint,
    /// The hook the decoder reconstructs (`hook_in` except for transcoders).
    pub hook_out: HookPoint,
    pub d_in: usize,
    pub d_sae: usize,
    pub d_out: usize,
    pub model_name: Option<String>,
    pub source: PathBuf,
}

impl DictionaryInfo {
    pub fn is_transcoder(&self) -> bool {
        self.hook_in != self.hook_out
    }
}

/// Per-token normalisation of the input, undone on the output (SAELens
/// `normalize_activations`). A constant scale from training is folded into the weights at load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InputNorm {
    None,
    /// `x · sqrt(d_in) / ||x||`; the output is divided by the same factor.
    ConstantNormRescale,
    /// `(x - mean) / (std + eps)` with torch's unbiased std; the output is `y · std + mean`
    /// (SAELens adds eps on the way in only).
    LayerNorm {
        eps: f32,
    },
}

/// How one token's output is de-normalised: `y * out_scale + shift`.
#[derive(Debug, Clone, Copy)]
struct TokenNorm {
    shift: f32,
    out_scale: f32,
}

/// A skip connection from the input to the output: `x · weight (+ bias)`, `weight: [d_in, d_out]`.
#[derive(Debug, Clone)]
pub struct Skip {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

/// Everything a format loader reads, before validation.
pub struct DictionaryParts {
    pub info: DictionaryInfo,
    pub w_enc: Tensor,
    pub b_enc: Tensor,
    pub w_dec: Tensor,
    pub b_dec: Tensor,
    /// Subtracted from the (normalised) input before encoding (`b_dec` in most SAEs).
    pub input_bias: Option<Tensor>,
    pub input_norm: InputNorm,
    pub activation: Activation,
    /// TopK SAEs trained with `rescale_acts_by_decoder_norm`: pre-activations are scaled by
    /// each latent's decoder norm before selection (feature activations keep that scale, as
    /// in SAELens) and divided by it before decoding.
    pub rescale_by_decoder_norm: bool,
    pub skip: Option<Skip>,
}

/// A loaded dictionary, ready to encode and decode: on the CPU, or with its encoder on a GPU
/// (`on_device`; the decoder stays on the host for sparse decoding).
pub struct Dictionary {
    info: DictionaryInfo,
    w_enc: Tensor,
    b_enc: Tensor,
    /// `[d_sae, d_out]` row-major, for sparse decoding.
    w_dec: Vec<f32>,
    b_dec: Vec<f32>,
    input_bias: Option<Tensor>,
    input_norm: InputNorm,
    activation: Activation,
    decoder_norms: Option<Vec<f32>>,
    skip: Option<Skip>,
    /// The activation's per-latent parameters on the encoder's GPU (`on_device` a CUDA one).
    #[cfg(feature = "cuda")]
    latent_params: Option<gpu_select::LatentParams>,
}

/// The result of encoding a batch: the sparse features plus what decoding needs to undo the
/// input normalisation and add the skip connection.
#[derive(Debug, Clone)]
pub struct Encoding {
    /// Editable: decode the edited features to steer.
    pub features: SparseActs,
    /// Number of tokens encoded (edited features must keep it).
    tokens: usize,
    /// Per token, how the input was normalised, to undo it on the output.
    token_norm: Option<Vec<TokenNorm>>,
    skip: Option<Tensor>,
}

impl Dictionary {
    /// Reads a dictionary folder (or Gemma Scope `params.npz`), detecting its format.
    pub fn load(path: &Path) -> Result<Self> {
        formats::load(path)
    }

    /// Reads a dictionary and checks that its hooks exist in `model` with the right widths.
    pub fn load_for_model(path: &Path, model: &ModelConfig) -> Result<Self> {
        let dictionary = Self::load(path)?;
        dictionary.check_model(model)?;
        Ok(dictionary)
    }

    /// Checks the dictionary's hooks and widths against a model.
    pub fn check_model(&self, model: &ModelConfig) -> Result<()> {
        let info = &self.info;
        for (hook, width, field) in [(info.hook_in, info.d_in, "d_in"), (info.hook_out, info.d_out, "d_out")] {
            match model.hook_width(hook) {
                None => {
                    return Err(EngineError::HookOutOfRange { hook: hook.to_string(), n_layers: model.n_layers });
                }
                Some(expected) if expected != width => {
                    return Err(EngineError::DictionaryMismatch { path: info.source.clone(), reason: format!("{field} is {width}, but the model's {hook} has width {expected}") });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Validates shapes and values and prepares the decoder for sparse use.
    pub fn from_parts(parts: DictionaryParts) -> Result<Self> {
        let DictionaryParts { info, w_enc, b_enc, w_dec, b_dec, input_bias, input_norm, activation, rescale_by_decoder_norm, skip } = parts;
        let (d_in, d_sae, d_out) = (info.d_in, info.d_sae, info.d_out);
        let mut checks: Vec<(&str, &Tensor, Vec<usize>)> =
            vec![("W_enc", &w_enc, vec![d_in, d_sae]), ("b_enc", &b_enc, vec![d_sae]), ("W_dec", &w_dec, vec![d_sae, d_out]), ("b_dec", &b_dec, vec![d_out])];
        if let Some(bias) = &input_bias {
            checks.push(("input bias", bias, vec![d_in]));
        }
        if let Some(skip) = &skip {
            checks.push(("W_skip", &skip.weight, vec![d_in, d_out]));
            if let Some(bias) = &skip.bias {
                checks.push(("b_skip", bias, vec![d_out]));
            }
        }
        for (name, tensor, shape) in &checks {
            check_tensor(&info.source, name, tensor, shape)?;
        }
        let per_latent_ok = match &activation {
            Activation::JumpRelu { threshold } => threshold.len() == d_sae,
            Activation::Gated { r_mag_exp, b_mag, b_gate } => [r_mag_exp, b_mag, b_gate].iter().all(|v| v.len() == d_sae),
            Activation::TopK { k } | Activation::GroupMax { k } => *k > 0 && *k <= d_sae,
            Activation::Relu => true,
        };
        if !per_latent_ok {
            return Err(EngineError::DictionaryMismatch { path: info.source.clone(), reason: format!("{} parameters do not fit d_sae = {d_sae}", activation.name()) });
        }
        let w_dec_host: Vec<f32> = w_dec.flatten_all()?.to_vec1()?;
        let decoder_norms = rescale_by_decoder_norm.then(|| w_dec_host.chunks(d_out).map(|row| row.iter().map(|v| v * v).sum::<f32>().sqrt()).collect());
        Ok(Dictionary {
            info,
            w_enc: w_enc.contiguous()?,
            b_enc,
            w_dec: w_dec_host,
            b_dec: b_dec.to_vec1()?,
            input_bias,
            input_norm,
            activation,
            decoder_norms,
            skip,
            #[cfg(feature = "cuda")]
            latent_params: None,
        })
    }

    pub fn info(&self) -> &DictionaryInfo {
        &self.info
    }

    /// A copy whose encoder (and skip connection) computes on `device`, in f32: encoding
    /// selects features by comparing pre-activations, which bf16 would blur.
    pub fn on_device(&self, device: &Device) -> Result<Self> {
        let to = |t: &Tensor| t.to_device(device);
        Ok(Dictionary {
            info: self.info.clone(),
            w_enc: to(&self.w_enc)?,
            b_enc: to(&self.b_enc)?,
            w_dec: self.w_dec.clone(),
            b_dec: self.b_dec.clone(),
            input_bias: self.input_bias.as_ref().map(to).transpose()?,
            input_norm: self.input_norm,
            activation: self.activation.clone(),
            decoder_norms: self.decoder_norms.clone(),
            skip: self.skip.as_ref().map(|s| Ok::<_, candle_core::Error>(Skip { weight: to(&s.weight)?, bias: s.bias.as_ref().map(to).transpose()? })).transpose()?,
            #[cfg(feature = "cuda")]
            latent_params: match device.is_cuda() {
                true => Some(gpu_select::LatentParams::new(&self.activation, self.decoder_norms.as_deref(), device)?),
                false => None,
            },
        })
    }

    /// Where the encoder computes.
    pub fn device(&self) -> &Device {
        self.w_enc.device()
    }

    pub fn activation(&self) -> &Activation {
        &self.activation
    }

    /// Decoder direction of `feature` (`[d_out]`).
    pub fn decoder_row(&self, feature: usize) -> &[f32] {
        let d_out = self.info.d_out;
        &self.w_dec[feature * d_out..(feature + 1) * d_out]
    }

    /// Encodes `x: [n, d_in]` (or `[batch, seq, d_in]`, flattened) into sparse features.
    pub fn encode(&self, x: &Tensor) -> Result<Encoding> {
        let x = self.as_rows(x, self.info.d_in, "input")?.to_device(self.device())?;
        let (normed, token_norm) = self.normalize(&x)?;
        let centred = match &self.input_bias {
            Some(bias) => normed.broadcast_sub(bias)?,
            None => normed,
        };
        let projected = centred.matmul(&self.w_enc)?;
        let pre = match &self.activation {
            // The gate and magnitude paths share x · W_enc; the activation adds their biases.
            Activation::Gated { .. } => projected,
            _ => projected.broadcast_add(&self.b_enc)?,
        };
        let features = self.activate(&pre)?;
        let skip = match &self.skip {
            Some(skip) => {
                let out = x.matmul(&skip.weight)?;
                Some(match &skip.bias {
                    Some(bias) => out.broadcast_add(bias)?,
                    None => out,
                })
            }
            None => None,
        };
        Ok(Encoding { tokens: features.n_tokens(), features, token_norm, skip })
    }

    /// Sparse features of the pre-activations `[n, d_sae]`: selected on the GPU when the
    /// encoder is on one (only the active latents are copied back), else on the host.
    fn activate(&self, pre: &Tensor) -> Result<SparseActs> {
        #[cfg(feature = "cuda")]
        if let Some(params) = &self.latent_params {
            return gpu_select::activate(&self.activation, pre, params);
        }
        let mut pre: Vec<f32> = pre.flatten_all()?.to_vec1()?;
        let d_sae = self.info.d_sae;
        if let Some(norms) = &self.decoder_norms {
            pre.par_chunks_mut(d_sae).for_each(|row| row.iter_mut().zip(norms).for_each(|(h, n)| *h *= n));
        }
        Ok(self.activation.apply(&pre, d_sae))
    }

    /// Reconstructs `[n, d_out]` from an encoding (possibly with edited features).
    pub fn decode(&self, encoding: &Encoding) -> Result<Tensor> {
        let d_out = self.info.d_out;
        let n = encoding.features.n_tokens();
        self.check_encoding(encoding)?;
        let mut out = vec![0f32; n * d_out];
        out.par_chunks_mut(d_out).enumerate().for_each(|(t, row)| {
            row.copy_from_slice(&self.b_dec);
            let (indices, values) = encoding.features.token(t);
            for (&index, &value) in indices.iter().zip(values) {
                let value = match &self.decoder_norms {
                    Some(norms) => value / norms[index as usize],
                    None => value,
                };
                for (o, w) in row.iter_mut().zip(self.decoder_row(index as usize)) {
                    *o += value * w;
                }
            }
            if let Some(norm) = &encoding.token_norm {
                let TokenNorm { shift, out_scale, .. } = norm[t];
                row.iter_mut().for_each(|o| *o = *o * out_scale + shift);
            }
        });
        let out = Tensor::from_vec(out, (n, d_out), self.device())?;
        Ok(match &encoding.skip {
            Some(skip) => (out + skip)?,
            None => out,
        })
    }

    /// Edited features must stay within this dictionary and the encoded tokens.
    fn check_encoding(&self, encoding: &Encoding) -> Result<()> {
        let features = &encoding.features;
        let n = features.n_tokens();
        let bad = |reason: String| Err(EngineError::InvalidInput(format!("cannot decode with {}: {reason}", self.info.source.display())));
        if let Some(&index) = features.indices.iter().find(|&&i| i as usize >= self.info.d_sae) {
            return bad(format!("feature {index} does not exist (the dictionary has {} latents)", self.info.d_sae));
        }
        if features.values.len() != features.indices.len() || features.offsets.last().copied().unwrap_or(0) != features.indices.len() {
            return bad("the sparse features are inconsistent (offsets, indices and values disagree)".into());
        }
        if n != encoding.tokens {
            return bad(format!("{n} tokens of features for an encoding of {} tokens", encoding.tokens));
        }
        Ok(())
    }

    /// `decode(encode(x))`, `[n, d_out]`.
    pub fn reconstruct(&self, x: &Tensor) -> Result<Tensor> {
        self.decode(&self.encode(x)?)
    }

    /// Dense feature activations `[n, d_sae]` (tests and small batches).
    pub fn encode_dense(&self, x: &Tensor) -> Result<Tensor> {
        self.encode(x)?.features.to_dense()
    }

    /// Flattens leading dimensions to rows and checks the width.
    fn as_rows(&self, x: &Tensor, width: usize, what: &str) -> Result<Tensor> {
        let dims = x.dims();
        if dims.last() != Some(&width) {
            return Err(EngineError::InvalidInput(format!("{what} of dictionary {} has shape {dims:?}, expected [..., {width}]", self.info.source.display())));
        }
        Ok(x.to_dtype(DType::F32)?.reshape(((), width))?)
    }

    fn normalize(&self, x: &Tensor) -> Result<(Tensor, Option<Vec<TokenNorm>>)> {
        let d_in = self.info.d_in as f64;
        let (shift, in_scale, out_scale) = match self.input_norm {
            InputNorm::None => return Ok((x.clone(), None)),
            InputNorm::ConstantNormRescale => {
                let norms = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
                let scale = norms.recip()?.affine(d_in.sqrt(), 0.0)?;
                (Tensor::zeros_like(&scale)?, scale.clone(), scale.recip()?)
            }
            InputNorm::LayerNorm { eps } => {
                let mean = x.mean_keepdim(D::Minus1)?;
                let centred = x.broadcast_sub(&mean)?;
                let std = (centred.sqr()?.sum_keepdim(D::Minus1)? / (d_in - 1.0).max(1.0))?.sqrt()?;
                (mean, (&std + eps as f64)?.recip()?, std)
            }
        };
        let normed = x.broadcast_sub(&shift)?.broadcast_mul(&in_scale)?;
        let host = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1()?) };
        let norms = host(&shift)?.into_iter().zip(host(&out_scale)?).map(|(shift, out_scale)| TokenNorm { shift, out_scale }).collect();
        Ok((normed, Some(norms)))
    }
}

/// Checks a tensor's shape (naming a transposed matrix as such) and that it is finite.
pub(crate) fn check_tensor(path: &Path, name: &str, tensor: &Tensor, shape: &[usize]) -> Result<()> {
    let dims = tensor.dims();
    if dims != shape {
        let transposed = dims.len() == 2 && shape.len() == 2 && dims[0] == shape[1] && dims[1] == shape[0];
        let reason = if transposed { format!("has shape {dims:?}, expected {shape:?}: it looks transposed") } else { format!("has shape {dims:?}, expected {shape:?}") };
        return Err(EngineError::BadTensor { path: path.into(), tensor: name.into(), reason });
    }
    let values: Vec<f32> = tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    if let Some(at) = values.iter().position(|v| !v.is_finite()) {
        return Err(EngineError::BadTensor { path: path.into(), tensor: name.into(), reason: format!("value {} at flat index {at} is not finite (NaN or infinity)", values[at]) });
    }
    Ok(())
}
