//! Reading and writing activations at hook points during a forward pass.
//!
//! A [`Hooks`] value says which hook points to *capture* (returned to the caller) and which
//! to *edit* (an [`Intervention`] replaces the activation before the forward pass goes on).
//! Edits run before capture, so a captured activation is the one the model went on with.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{DType, Tensor};
use loupe_schema::hook::HookPoint;

use crate::error::{EngineError, Result};

/// What an intervention knows about the forward pass it is editing.
#[derive(Debug, Clone)]
pub struct ForwardContext {
    /// Position of the first token of this call (non-zero when decoding with a KV cache).
    pub position_offset: usize,
    /// Real (unpadded) length of each sequence in this call.
    pub lengths: Vec<usize>,
}

/// Edits an activation of shape `[batch, seq, width]`; returns a tensor of the same shape.
pub trait Intervention: Send + Sync {
    fn edit(&self, hook: HookPoint, activation: &Tensor, ctx: &ForwardContext) -> candle_core::Result<Tensor>;
}

impl<F> Intervention for F
where
    F: Fn(HookPoint, &Tensor, &ForwardContext) -> candle_core::Result<Tensor> + Send + Sync,
{
    fn edit(&self, hook: HookPoint, activation: &Tensor, ctx: &ForwardContext) -> candle_core::Result<Tensor> {
        self(hook, activation, ctx)
    }
}

#[derive(Clone, Default)]
pub struct Hooks {
    capture: BTreeSet<HookPoint>,
    edits: BTreeMap<HookPoint, Vec<Arc<dyn Intervention>>>,
    /// Raised by someone else to stop the pass at the next layer (a caller gone, a deadline
    /// passed), so that the thread running it is free again within one layer.
    cancel: Option<Arc<AtomicBool>>,
}

impl Hooks {
    pub fn new() -> Self {
        Hooks::default()
    }

    /// Captures the activation at `hook`.
    pub fn capture(mut self, hook: HookPoint) -> Self {
        self.capture.insert(hook);
        self
    }

    pub fn capture_all(mut self, hooks: impl IntoIterator<Item = HookPoint>) -> Self {
        self.capture.extend(hooks);
        self
    }

    /// Edits the activation at `hook`; several edits of one hook run in the order added.
    pub fn edit(mut self, hook: HookPoint, intervention: impl Intervention + 'static) -> Self {
        self.edits.entry(hook).or_default().push(Arc::new(intervention));
        self
    }

    /// Stops the pass with [`EngineError::Cancelled`] at the next layer once `flag` is set.
    pub fn cancel_when(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cancel = Some(flag);
        self
    }

    /// Fails with [`EngineError::Cancelled`] if the pass was cancelled (checked between layers).
    pub fn check_cancelled(&self) -> Result<()> {
        match &self.cancel {
            Some(flag) if flag.load(Ordering::Relaxed) => Err(EngineError::Cancelled),
            _ => Ok(()),
        }
    }

    /// The hooks captured, in execution order.
    pub fn captures(&self) -> impl Iterator<Item = HookPoint> + '_ {
        self.capture.iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.capture.is_empty() && self.edits.is_empty()
    }

    /// The deepest hook point read or written, in execution order.
    pub fn deepest(&self) -> Option<HookPoint> {
        let captured = self.capture.last().copied();
        let edited = self.edits.keys().last().copied();
        captured.max(edited)
    }

    /// Checks that every hook exists in a model with `n_layers` blocks.
    pub fn validate(&self, n_layers: usize) -> Result<()> {
        for hook in self.capture.iter().chain(self.edits.keys()) {
            if hook.layer().is_some_and(|layer| layer >= n_layers) {
                return Err(EngineError::HookOutOfRange { hook: hook.to_string(), n_layers });
            }
        }
        Ok(())
    }

    /// Whether anything happens at `hook` (so the model can skip building the activation).
    pub fn touches(&self, hook: HookPoint) -> bool {
        self.capture.contains(&hook) || self.edits.contains_key(&hook)
    }

    /// Runs the edits registered at `hook`, then records it if captured.
    pub(crate) fn apply(&self, hook: HookPoint, mut activation: Tensor, ctx: &ForwardContext, captured: &mut BTreeMap<HookPoint, Tensor>) -> Result<Tensor> {
        // Edits and captures see f32 wherever the model computes (on a GPU in bf16, say);
        // on the CPU in f32 these conversions are no-ops.
        let (device, dtype) = (activation.device().clone(), activation.dtype());
        if let Some(edits) = self.edits.get(&hook) {
            for edit in edits {
                let edited = edit.edit(hook, &activation.to_dtype(DType::F32)?, ctx)?;
                if edited.dims() != activation.dims() {
                    return Err(EngineError::InvalidInput(format!("intervention at {hook} returned shape {:?}, expected {:?}", edited.dims(), activation.dims())));
                }
                activation = edited.to_device(&device)?.to_dtype(dtype)?;
            }
        }
        if self.capture.contains(&hook) {
            captured.insert(hook, activation.to_dtype(DType::F32)?);
        }
        Ok(activation)
    }
}
