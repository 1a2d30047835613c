//! Hook point names, shared by the engine (where activations are read and written), the
//! dictionaries (which hook they encode) and the services (what callers ask for).
//!
//! Names follow TransformerLens so that SAELens and Neuronpedia users feel at home. Hugging
//! Face module paths are accepted too: `model.layers.12` (or `layers.12`) is the output of
//! layer 12, i.e. `blocks.12.hook_resid_post`.

use std::fmt;
use std::str::FromStr;

/// Where in one transformer block an activation is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum BlockSite {
    /// Residual stream entering the block.
    ResidPre,
    /// Output of the attention sublayer, before it is added to the residual stream.
    AttnOut,
    /// Residual stream after attention, before the MLP.
    ResidMid,
    /// Input of the MLP after its norm (the usual transcoder input).
    Ln2Normalized,
    /// MLP hidden activation after the gate: `act(gate) * up` (width d_mlp).
    MlpPost,
    /// Output of the MLP sublayer, before it is added to the residual stream.
    MlpOut,
    /// Residual stream leaving the block.
    ResidPost,
}

impl BlockSite {
    pub const ALL: [BlockSite; 7] = [BlockSite::ResidPre, BlockSite::AttnOut, BlockSite::ResidMid, BlockSite::Ln2Normalized, BlockSite::MlpPost, BlockSite::MlpOut, BlockSite::ResidPost];

    /// The suffix after `blocks.{L}.`.
    pub fn suffix(self) -> &'static str {
        match self {
            BlockSite::ResidPre => "hook_resid_pre",
            BlockSite::AttnOut => "hook_attn_out",
            BlockSite::ResidMid => "hook_resid_mid",
            BlockSite::Ln2Normalized => "ln2.hook_normalized",
            BlockSite::MlpPost => "mlp.hook_post",
            BlockSite::MlpOut => "hook_mlp_out",
            BlockSite::ResidPost => "hook_resid_post",
        }
    }
}

/// A named place in the forward pass whose activation can be captured or edited.
///
/// The derived order is the order in which the forward pass reaches the hooks, so a sorted
/// set of hooks lists them in execution order and its last element is the deepest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum HookPoint {
    /// Token embeddings (the residual stream entering block 0).
    Embed,
    Block {
        layer: usize,
        site: BlockSite,
    },
    /// Residual stream after the final norm, the input of the unembedding.
    FinalNormalized,
}

impl HookPoint {
    pub fn block(layer: usize, site: BlockSite) -> Self {
        HookPoint::Block { layer, site }
    }

    pub fn resid_post(layer: usize) -> Self {
        HookPoint::block(layer, BlockSite::ResidPost)
    }

    /// The block this hook lives in, if any.
    pub fn layer(&self) -> Option<usize> {
        match self {
            HookPoint::Block { layer, .. } => Some(*layer),
            _ => None,
        }
    }

    /// Every hook point of a model with `n_layers` blocks, in execution order.
    pub fn all(n_layers: usize) -> Vec<HookPoint> {
        let mut hooks = vec![HookPoint::Embed];
        for layer in 0..n_layers {
            hooks.extend(BlockSite::ALL.iter().map(|&site| HookPoint::block(layer, site)));
        }
        hooks.push(HookPoint::FinalNormalized);
        hooks
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookPoint::Embed => f.write_str("hook_embed"),
            HookPoint::Block { layer, site } => write!(f, "blocks.{layer}.{}", site.suffix()),
            HookPoint::FinalNormalized => f.write_str("ln_final.hook_normalized"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown hook point '{name}': expected hook_embed, blocks.<layer>.<site> with site one of {sites}, ln_final.hook_normalized, or a Hugging Face path such as model.layers.<layer>")]
pub struct UnknownHook {
    pub name: String,
    sites: String,
}

impl UnknownHook {
    fn new(name: &str) -> Self {
        let sites = BlockSite::ALL.iter().map(|s| s.suffix()).collect::<Vec<_>>().join(", ");
        UnknownHook { name: name.to_string(), sites }
    }
}

impl FromStr for HookPoint {
    type Err = UnknownHook;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownHook::new(name);
        let trimmed = name.trim();
        match trimmed {
            "hook_embed" | "embed" | "model.embed_tokens" | "embed_tokens" => return Ok(HookPoint::Embed),
            "ln_final.hook_normalized" | "model.norm" | "norm" => return Ok(HookPoint::FinalNormalized),
            _ => {}
        }
        // Hugging Face module paths: `layers.L` is the output of decoder layer L, and the
        // output of its submodules are the sublayer hooks.
        for prefix in ["model.layers.", "layers.", "model.model.layers."] {
            if let Some(rest) = trimmed.strip_prefix(prefix) {
                let (layer, module) = rest.split_once('.').unwrap_or((rest, ""));
                let layer = layer.parse::<usize>().map_err(|_| unknown())?;
                let site = match module {
                    "" => BlockSite::ResidPost,
                    "self_attn" => BlockSite::AttnOut,
                    "post_attention_layernorm" => BlockSite::Ln2Normalized,
                    "mlp" => BlockSite::MlpOut,
                    "mlp.act_fn" => BlockSite::MlpPost,
                    _ => return Err(unknown()),
                };
                return Ok(HookPoint::block(layer, site));
            }
        }
        let rest = trimmed.strip_prefix("blocks.").ok_or_else(unknown)?;
        let (layer, suffix) = rest.split_once('.').ok_or_else(unknown)?;
        let layer = layer.parse::<usize>().map_err(|_| unknown())?;
        let site = BlockSite::ALL.iter().copied().find(|s| s.suffix() == suffix).ok_or_else(unknown)?;
        Ok(HookPoint::block(layer, site))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for hook in HookPoint::all(3) {
            let name = hook.to_string();
            assert_eq!(name.parse::<HookPoint>().unwrap(), hook, "{name}");
        }
        assert_eq!(HookPoint::resid_post(9).to_string(), "blocks.9.hook_resid_post");
        assert_eq!(HookPoint::block(2, BlockSite::Ln2Normalized).to_string(), "blocks.2.ln2.hook_normalized");
    }

    #[test]
    fn hugging_face_paths_are_layer_outputs() {
        assert_eq!("model.layers.12".parse::<HookPoint>().unwrap(), HookPoint::resid_post(12));
        assert_eq!("layers.3".parse::<HookPoint>().unwrap(), HookPoint::resid_post(3));
        assert_eq!("layers.3.mlp".parse::<HookPoint>().unwrap(), HookPoint::block(3, BlockSite::MlpOut));
        assert_eq!("model.layers.4.self_attn".parse::<HookPoint>().unwrap(), HookPoint::block(4, BlockSite::AttnOut));
        assert!("layers.3.nope".parse::<HookPoint>().is_err());
    }

    #[test]
    fn execution_order_is_the_derived_order() {
        let all = HookPoint::all(2);
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(all, sorted);
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        for bad in ["blocks.x.hook_resid_post", "blocks.1.hook_nope", "resid", "blocks.1", "model.layers.a"] {
            let err = bad.parse::<HookPoint>().unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(bad) && msg.contains("hook_resid_post"), "{msg}");
        }
    }
}
