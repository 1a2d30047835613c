//! Activations for training, streamed from the model over a corpus through a shuffle buffer.
//!
//! The corpus windows are visited in a seeded random order; each buffer runs the model over
//! the next `buffer_windows` windows, drops the BOS position, shuffles the rows (seeded per
//! buffer) and is cut into training batches. Nothing carries over between buffers, so a run
//! can resume at any buffer boundary and reproduce the same batches.

use candle_core::{Device, Tensor};
use loupe_schema::hook::HookPoint;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::error::Result;
use loupe_corpus::TokenWindows;
use loupe_engine::lens::{run_parts, Read, Rows};
use loupe_engine::Hooks;
use loupe_engine::{Model, TokenBatch};

pub struct ActivationStream<'a> {
    model: &'a Model,
    windows: &'a TokenWindows,
    hook: HookPoint,
    order: Vec<usize>,
    buffer_windows: usize,
    forward_batch: usize,
    seed: u64,
}

impl<'a> ActivationStream<'a> {
    pub fn new(model: &'a Model, windows: &'a TokenWindows, hook: HookPoint, buffer_windows: usize, forward_batch: usize, seed: u64) -> Self {
        let mut order: Vec<usize> = (0..windows.len()).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        ActivationStream { model, windows, hook, order, buffer_windows: buffer_windows.max(1), forward_batch: forward_batch.max(1), seed }
    }

    /// Buffers in one pass over the corpus.
    pub fn buffers_per_epoch(&self) -> usize {
        self.order.len().div_ceil(self.buffer_windows)
    }

    /// Activation rows `[tokens, d]` of buffer `index` (wrapping around the corpus), shuffled.
    pub fn buffer(&self, index: usize) -> Result<Tensor> {
        let epoch_index = index % self.buffers_per_epoch();
        let start = epoch_index * self.buffer_windows;
        let chosen = &self.order[start..(start + self.buffer_windows).min(self.order.len())];
        let mut rows: Vec<Tensor> = Vec::new();
        for group in chosen.chunks(self.forward_batch) {
            let sequences: Vec<Vec<u32>> = group.iter().map(|&w| self.windows.window(w).to_vec()).collect();
            let batch = TokenBatch::right_padded(&sequences, 0)?;
            // No dictionary: the lens returns the hook's rows, BOS left out.
            let read = Read { hooks: Hooks::new().capture(self.hook), ..Read::only(Vec::new(), Rows::RealAfterFirst) };
            let mut output = run_parts(self.model, &[], &batch, &read)?;
            // The dictionary trains on the CPU wherever the model ran.
            rows.extend(output.captured.remove(&self.hook).map(|t| t.to_device(&Device::Cpu)).transpose()?);
        }
        let all = Tensor::cat(&rows, 0)?;
        let mut permutation: Vec<u32> = (0..all.dim(0)? as u32).collect();
        permutation.shuffle(&mut rand::rngs::StdRng::seed_from_u64(self.seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        let permutation = Tensor::from_vec(permutation, all.dim(0)?, &Device::Cpu)?;
        Ok(all.index_select(&permutation, 0)?)
    }
}
