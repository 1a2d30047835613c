//! The Llama family (Llama 2/3, SmolLM, Mistral-style GQA): RMSNorm, RoPE, grouped-query
//! attention, SwiGLU MLP, with every TransformerLens hook point. f32 on the CPU (with
//! loupe's fused CPU kernels), or any device and dtype through candle's generic ops.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use loupe_schema::hook::{BlockSite, HookPoint};

use super::{cpu_ops, rope, ForwardOutput, KvCache, LanguageModel, Logits, TokenBatch};
use crate::config::ModelConfig;
use crate::device::Compute;
use crate::error::{EngineError, Result};
use crate::hooks::{ForwardContext, Hooks};
use crate::weights::WeightMap;

const FAMILY: &str = "the llama model";

/// One decoder block. Projections are stored transposed (`[in, out]`, contiguous) and fused
/// (Q|K|V and gate|up) so that each is one large matmul over all tokens of the batch.
struct Block {
    attn_norm: Tensor,
    mlp_norm: Tensor,
    qkv: Tensor,
    out: Tensor,
    gate_up: Tensor,
    down: Tensor,
}

pub struct Llama {
    config: ModelConfig,
    compute: Compute,
    embed: Tensor,
    blocks: Vec<Block>,
    final_norm: Tensor,
    /// `[d_model, vocab]`: W_U, tied to the embeddings when the file has no `lm_head`.
    unembed: Tensor,
    /// W_U in f32 on the device, for logit attribution (the same tensor on the CPU).
    unembed_f32: Tensor,
}

/// Per-call state shared by the blocks of one forward pass.
struct Pass<'a> {
    hooks: &'a Hooks,
    ctx: ForwardContext,
    captured: BTreeMap<HookPoint, Tensor>,
    cos: Tensor,
    sin: Tensor,
    batch: usize,
    seq: usize,
}

impl Pass<'_> {
    fn hook(&mut self, hook: HookPoint, x: Tensor) -> Result<Tensor> {
        if !self.hooks.touches(hook) {
            return Ok(x);
        }
        self.hooks.apply(hook, x, &self.ctx, &mut self.captured)
    }
}

impl Llama {
    pub fn new(config: ModelConfig, weights: &mut WeightMap, compute: &Compute) -> Result<Self> {
        // Weights load in f32 on the CPU; each goes to the device in its dtype once fused.
        let on = |t: Tensor| -> candle_core::Result<Tensor> { t.to_device(&compute.device)?.to_dtype(compute.dtype) };
        let d = config.hidden_size;
        let q_out = config.n_heads * config.head_dim;
        let kv_out = config.n_kv_heads * config.head_dim;
        let ff = config.intermediate_size;
        let embed = weights.take("model.embed_tokens.weight", &[config.vocab_size, d], FAMILY)?;
        let unembed = if weights.contains("lm_head.weight") { weights.take("lm_head.weight", &[config.vocab_size, d], FAMILY)? } else { embed.clone() };
        let unembed_f32 = unembed.t()?.contiguous()?.to_device(&compute.device)?;
        let unembed = unembed_f32.to_dtype(compute.dtype)?;
        let embed = on(embed)?;
        let mut blocks = Vec::with_capacity(config.n_layers);
        for layer in 0..config.n_layers {
            let p = |leaf: &str| format!("model.layers.{layer}.{leaf}");
            let mut take = |leaf: &str, shape: &[usize]| weights.take(&p(leaf), shape, FAMILY);
            let q = take("self_attn.q_proj.weight", &[q_out, d])?;
            let k = take("self_attn.k_proj.weight", &[kv_out, d])?;
            let v = take("self_attn.v_proj.weight", &[kv_out, d])?;
            let o = take("self_attn.o_proj.weight", &[d, q_out])?;
            let gate = take("mlp.gate_proj.weight", &[ff, d])?;
            let up = take("mlp.up_proj.weight", &[ff, d])?;
            let down = take("mlp.down_proj.weight", &[d, ff])?;
            blocks.push(Block {
                attn_norm: on(take("input_layernorm.weight", &[d])?)?,
                mlp_norm: on(take("post_attention_layernorm.weight", &[d])?)?,
                qkv: on(transposed(&Tensor::cat(&[&q, &k, &v], 0)?)?)?,
                out: on(transposed(&o)?)?,
                gate_up: on(transposed(&Tensor::cat(&[&gate, &up], 0)?)?)?,
                down: on(transposed(&down)?)?,
            });
        }
        let final_norm = on(weights.take("model.norm.weight", &[d], FAMILY)?)?;
        Ok(Llama { config, compute: compute.clone(), embed, blocks, final_norm, unembed, unembed_f32 })
    }

    /// The last block the pass must run: all of them when logits or the final norm are
    /// wanted, else the block of the deepest hook.
    fn last_block(&self, hooks: &Hooks, logits: Logits) -> Option<usize> {
        let all = self.config.n_layers.checked_sub(1);
        if logits != Logits::None {
            return all;
        }
        match hooks.deepest()? {
            HookPoint::Embed => None,
            HookPoint::Block { layer, .. } => Some(layer),
            HookPoint::FinalNormalized => all,
        }
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        let eps = self.config.rms_norm_eps as f32;
        Ok(match x.dtype() {
            DType::F32 | DType::BF16 | DType::F16 => candle_nn::ops::rms_norm(x, weight, eps)?,
            // candle's fused kernel has no f64; the composed ops do.
            _ => candle_nn::ops::rms_norm_slow(x, weight, eps)?,
        })
    }

    fn block(&self, layer: usize, x: Tensor, pass: &mut Pass, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let w = &self.blocks[layer];
        let hook = |site| HookPoint::block(layer, site);
        let x = pass.hook(hook(BlockSite::ResidPre), x)?;
        let attn = self.attention(w, &self.rms_norm(&x, &w.attn_norm)?, pass, cache.map(|c| c.layer(layer)))?;
        let attn = pass.hook(hook(BlockSite::AttnOut), attn)?;
        let x = pass.hook(hook(BlockSite::ResidMid), (x + attn)?)?;
        let normed = pass.hook(hook(BlockSite::Ln2Normalized), self.rms_norm(&x, &w.mlp_norm)?)?;
        let mlp_out = self.mlp(w, &normed, layer, pass)?;
        let mlp_out = pass.hook(hook(BlockSite::MlpOut), mlp_out)?;
        pass.hook(hook(BlockSite::ResidPost), (x + mlp_out)?)
    }

    /// `x`: `[batch, seq, d]`. Returns the attention sublayer's output, same shape.
    fn attention(&self, w: &Block, x: &Tensor, pass: &Pass, cache: Option<&mut candle_nn::kv_cache::KvCache>) -> Result<Tensor> {
        let c = &self.config;
        let (b, t) = (pass.batch, pass.seq);
        let qkv = cpu_ops::linear(&x.reshape((b * t, c.hidden_size))?, &w.qkv)?;
        let shape = cpu_ops::AttentionShape { batch: b, seq: t, heads: c.n_heads, kv_heads: c.n_kv_heads, head_dim: c.head_dim };
        let fused = match cache {
            None => cpu_ops::causal_attention(&qkv, &pass.cos, &pass.sin, shape, &pass.ctx.lengths)?,
            _ => None,
        };
        let mixed = match fused {
            Some(mixed) => mixed,
            None => self.attention_ops(&qkv, pass, cache)?,
        };
        Ok(cpu_ops::linear(&mixed, &w.out)?.reshape((b, t, c.hidden_size))?)
    }

    /// Attention with candle's ops, on any device and with a KV cache: the fused projection
    /// `qkv` `[batch * seq, (heads + 2 * kv_heads) * head_dim]` -> `[batch * seq, heads * head_dim]`.
    fn attention_ops(&self, qkv: &Tensor, pass: &Pass, cache: Option<&mut candle_nn::kv_cache::KvCache>) -> Result<Tensor> {
        let c = &self.config;
        let (b, t) = (pass.batch, pass.seq);
        let (h, kv, hd) = (c.n_heads, c.n_kv_heads, c.head_dim);
        let groups = h / kv;
        let heads = |start: usize, n: usize| -> candle_core::Result<Tensor> { qkv.narrow(1, start * hd, n * hd)?.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous() };
        let q = candle_nn::rotary_emb::rope(&heads(0, h)?, &pass.cos, &pass.sin)?;
        let k = candle_nn::rotary_emb::rope(&heads(h, kv)?, &pass.cos, &pass.sin)?;
        let v = heads(h + kv, kv)?;
        let (k, v) = match cache {
            Some(cache) => cache.append(&k, &v)?,
            None => (k, v),
        };
        let kv_len = k.dim(2)?;
        // Heads sharing a KV head are stacked along rows: [b, kv, groups * t, hd], so GQA
        // needs no copy of K and V per query head.
        let scores = q.reshape((b, kv, groups * t, hd))?.matmul(&k.t()?)?.reshape((b, h, t, kv_len))?;
        let scale = 1.0 / (hd as f32).sqrt();
        let probs = cpu_ops::attention_probs(&scores, scale, &pass.ctx.lengths, pass.ctx.position_offset, v.dtype())?.reshape((b, kv, groups * t, kv_len))?;
        Ok(probs.matmul(&v.contiguous()?)?.reshape((b, h, t, hd))?.transpose(1, 2)?.reshape((b * t, h * hd))?)
    }

    fn mlp(&self, w: &Block, x: &Tensor, layer: usize, pass: &mut Pass) -> Result<Tensor> {
        let c = &self.config;
        let (b, t, ff) = (pass.batch, pass.seq, c.intermediate_size);
        let gate_up = cpu_ops::linear(&x.reshape((b * t, c.hidden_size))?, &w.gate_up)?;
        let hidden = cpu_ops::swiglu(&gate_up)?;
        let hidden = pass.hook(HookPoint::block(layer, BlockSite::MlpPost), hidden.reshape((b, t, ff))?)?;
        Ok(cpu_ops::linear(&hidden.reshape((b * t, ff))?, &w.down)?.reshape((b, t, c.hidden_size))?)
    }

    fn logits(&self, x: &Tensor, batch: &TokenBatch, logits: Logits, pass: &mut Pass) -> Result<Option<Tensor>> {
        let (b, t, d) = (pass.batch, pass.seq, self.config.hidden_size);
        let vocab = self.config.vocab_size;
        let needs_all = logits == Logits::All || pass.hooks.touches(HookPoint::FinalNormalized);
        if logits == Logits::None && !needs_all {
            return Ok(None);
        }
        if !needs_all {
            // Only each sequence's last real position: norm and unembed b rows, not b * t.
            let rows: Vec<u32> = batch.lengths.iter().enumerate().map(|(i, &len)| (i * t + len - 1) as u32).collect();
            let rows = Tensor::from_vec(rows, b, x.device())?;
            let last = x.reshape((b * t, d))?.index_select(&rows, 0)?;
            return Ok(Some(cpu_ops::linear(&self.rms_norm(&last, &self.final_norm)?, &self.unembed)?));
        }
        let normed = pass.hook(HookPoint::FinalNormalized, self.rms_norm(x, &self.final_norm)?)?;
        match logits {
            Logits::None => Ok(None),
            Logits::All => Ok(Some(normed.reshape((b * t, d))?.matmul(&self.unembed)?.reshape((b, t, vocab))?)),
            Logits::Last => {
                let rows: Vec<u32> = batch.lengths.iter().enumerate().map(|(i, &len)| (i * t + len - 1) as u32).collect();
                let rows = Tensor::from_vec(rows, b, x.device())?;
                Ok(Some(cpu_ops::linear(&normed.reshape((b * t, d))?.index_select(&rows, 0)?, &self.unembed)?))
            }
        }
    }
}

impl LanguageModel for Llama {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn compute(&self) -> &Compute {
        &self.compute
    }

    fn unembedding(&self) -> &Tensor {
        &self.unembed_f32
    }

    fn forward(&self, batch: &TokenBatch, hooks: &Hooks, logits: Logits, mut cache: Option<&mut KvCache>) -> Result<ForwardOutput> {
        let c = &self.config;
        hooks.validate(c.n_layers)?;
        let (b, t) = batch.ids.dims2()?;
        if b != batch.lengths.len() || batch.lengths.iter().any(|&l| l == 0 || l > t) {
            return Err(EngineError::InvalidInput(format!("batch lengths {:?} do not fit token ids of shape [{b}, {t}]", batch.lengths)));
        }
        let offset = cache.as_ref().map_or(0, |c| c.seq_len());
        let last_block = self.last_block(hooks, logits);
        if let Some(cache) = cache.as_deref_mut() {
            if batch.is_padded() {
                return Err(EngineError::InvalidInput("a KV cache needs unpadded sequences of equal length".into()));
            }
            // A pass that stops early fills the cache of its layers only: every call on one
            // cache must reach the same depth (a monitor stream reads to its deepest hook).
            if let Some(last) = last_block {
                if let Some(layer) = (0..=last).find(|&l| cache.layer(l).current_seq_len() != offset) {
                    return Err(EngineError::InvalidInput(format!(
                        "the KV cache holds {} positions at layer {layer} but {offset} at layer 0: read to the same depth on every call",
                        cache.layer(layer).current_seq_len()
                    )));
                }
            }
        }
        let max_id = batch.ids.max_all()?.to_scalar::<u32>()?;
        if max_id as usize >= c.vocab_size {
            return Err(EngineError::InvalidInput(format!("token id {max_id} is outside the vocabulary (size {})", c.vocab_size)));
        }
        let (device, dtype) = (&self.compute.device, self.compute.dtype);
        let (cos, sin) = rope::tables(c.rope_theta, c.head_dim, offset, t)?;
        let (cos, sin) = (cos.to_device(device)?.to_dtype(dtype)?, sin.to_device(device)?.to_dtype(dtype)?);
        let mut pass = Pass { hooks, ctx: ForwardContext { position_offset: offset, lengths: batch.lengths.clone() }, captured: BTreeMap::new(), cos, sin, batch: b, seq: t };
        let x = self.embed.index_select(&batch.ids.flatten_all()?.to_device(device)?, 0)?.reshape((b, t, c.hidden_size))?;
        let mut x = pass.hook(HookPoint::Embed, x)?;
        if let Some(last) = last_block {
            for layer in 0..=last {
                hooks.check_cancelled()?;
                x = self.block(layer, x, &mut pass, cache.as_deref_mut())?;
            }
        }
        // Callers get f32 whatever the model computes in (a no-op in f32).
        let logits = self.logits(&x, batch, logits, &mut pass)?.map(|l| l.to_dtype(DType::F32)).transpose()?;
        Ok(ForwardOutput { logits, captured: pass.captured })
    }
}

fn transposed(w: &Tensor) -> candle_core::Result<Tensor> {
    w.t()?.contiguous()
}
