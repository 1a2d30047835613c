//! The feature lens: a model plus the dictionaries it feeds, and the one call that runs a
//! token batch to the deepest hook needed and returns each dictionary's sparse codes.
//!
//! Everything that reads features goes through [`FeatureLens::run`] (or [`run_parts`] over
//! borrowed parts): the indexer, the server's search by text, `loupe dict encode/eval`, and
//! training (no dictionary, one captured hook: raw activations). Steering edits and monitor reads plug in as extra [`Hooks`]
//! (edits run before the dictionaries read their hooks, so codes describe the edited run).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use loupe_schema::hook::HookPoint;

use crate::dictionary::{Dictionary, Encoding};
use crate::error::{EngineError, Result};
use crate::hooks::Hooks;
use crate::model::{KvCache, Logits, Model, TokenBatch};

/// Which positions of a `[batch, seq, d]` activation become rows (codes, activations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Every position, padding included: `batch * seq` rows.
    All,
    /// Each sequence's real positions (right padding dropped), sequence after sequence.
    Real,
    /// Real positions after the first (BOS): what statistics and training count.
    RealAfterFirst,
}

/// What to read from one pass, beyond the codes of the chosen dictionaries.
#[derive(Clone)]
pub struct Read {
    /// Indices into the lens's dictionaries to encode (empty: none; see [`Read::all`]).
    pub dictionaries: Vec<usize>,
    pub rows: Rows,
    /// Return each chosen dictionary's reconstruction error `x_out - decode(encode(x_in))`.
    pub errors: bool,
    /// Extra hooks: captures returned row-selected in `LensOutput::captured`, and edits
    /// (steering) that run before the dictionaries read their hooks.
    pub hooks: Hooks,
    pub logits: Logits,
}

impl Read {
    /// The codes of every dictionary of `lens` at `rows`, nothing else.
    pub fn all(lens: &FeatureLens, rows: Rows) -> Self {
        Read { dictionaries: (0..lens.dictionaries.len()).collect(), rows, errors: false, hooks: Hooks::new(), logits: Logits::None }
    }

    /// Only the given dictionaries.
    pub fn only(dictionaries: Vec<usize>, rows: Rows) -> Self {
        Read { dictionaries, rows, errors: false, hooks: Hooks::new(), logits: Logits::None }
    }
}

/// One pass's results, in the order of `Read::dictionaries`.
pub struct LensOutput {
    /// Each dictionary's encoding of its input rows (sparse codes plus what decoding needs).
    pub codes: Vec<Encoding>,
    /// Each dictionary's target rows `[rows, d_out]` and reconstruction error, when asked.
    pub targets: Vec<Tensor>,
    pub errors: Vec<Tensor>,
    /// The extra hooks' captures, row-selected.
    pub captured: BTreeMap<HookPoint, Tensor>,
    pub logits: Option<Tensor>,
    pub forward_time: Duration,
    pub encode_time: Duration,
}

/// A dictionary of the lens and the name it goes by (the store's dictionary id).
pub struct LensDictionary {
    pub id: String,
    pub dictionary: Arc<Dictionary>,
}

/// The model and the dictionaries it feeds.
pub struct FeatureLens {
    model: Model,
    dictionaries: Vec<LensDictionary>,
}

impl FeatureLens {
    /// Checks that every dictionary reads this model (hook and width) and that ids differ,
    /// and puts each dictionary's encoder on the model's device.
    pub fn new(model: Model, dictionaries: Vec<(String, Arc<Dictionary>)>) -> Result<Self> {
        let mut seen = std::collections::BTreeSet::new();
        for (id, dictionary) in &dictionaries {
            if !seen.insert(id.as_str()) {
                return Err(EngineError::InvalidInput(format!("two dictionaries are named {id:?}: give them distinct ids")));
            }
            dictionary.check_model(model.config())?;
        }
        let device = &model.compute().device;
        let dictionaries = dictionaries
            .into_iter()
            .map(|(id, dictionary)| {
                let dictionary = if dictionary.device().same_device(device) { dictionary } else { Arc::new(dictionary.on_device(device)?) };
                Ok(LensDictionary { id, dictionary })
            })
            .collect::<Result<_>>()?;
        Ok(FeatureLens { model, dictionaries })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn dictionaries(&self) -> &[LensDictionary] {
        &self.dictionaries
    }

    /// The position of the dictionary named `id`.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.dictionaries.iter().position(|d| d.id == id)
    }

    pub fn dictionary(&self, id: &str) -> Option<&Arc<Dictionary>> {
        self.dictionaries.iter().find(|d| d.id == id).map(|d| &d.dictionary)
    }

    /// Runs `batch` through the model, stopping after the deepest hook needed (unless logits
    /// are asked for), and encodes the chosen dictionaries' inputs.
    pub fn run(&self, batch: &TokenBatch, read: &Read) -> Result<LensOutput> {
        self.run_cached(batch, read, None)
    }

    /// [`Self::run`] continuing the positions held in `cache` (one unpadded sequence at a
    /// time; every call on one cache must read to the same depth): a stream scored chunk by
    /// chunk computes each token once.
    pub fn run_cached(&self, batch: &TokenBatch, read: &Read, cache: Option<&mut KvCache>) -> Result<LensOutput> {
        let dictionaries: Vec<&Dictionary> = self.dictionaries.iter().map(|d| d.dictionary.as_ref()).collect();
        run_with_cache(&self.model, &dictionaries, batch, read, cache)
    }
}

/// [`FeatureLens::run`] over borrowed parts, for callers that hold a model and dictionaries
/// of their own (evaluation, training): `read.dictionaries` indexes `dictionaries`.
pub fn run_parts(model: &Model, dictionaries: &[&Dictionary], batch: &TokenBatch, read: &Read) -> Result<LensOutput> {
    run_with_cache(model, dictionaries, batch, read, None)
}

fn run_with_cache(model: &Model, dictionaries: &[&Dictionary], batch: &TokenBatch, read: &Read, cache: Option<&mut KvCache>) -> Result<LensOutput> {
    let chosen: Vec<&Dictionary> = read
        .dictionaries
        .iter()
        .map(|&i| dictionaries.get(i).copied().ok_or_else(|| EngineError::InvalidInput(format!("the lens has {} dictionaries, not {}", dictionaries.len(), i + 1))))
        .collect::<Result<_>>()?;
    let extra: Vec<HookPoint> = read.hooks.captures().collect();
    let mut hooks = read.hooks.clone().capture_all(chosen.iter().map(|d| d.info().hook_in));
    if read.errors {
        hooks = hooks.capture_all(chosen.iter().map(|d| d.info().hook_out));
    }
    let start = Instant::now();
    let output = model.forward(batch, &hooks, read.logits, cache)?;
    let forward_time = start.elapsed();
    let start = Instant::now();
    let rows = |hook: HookPoint| -> Result<Tensor> {
        let x = output.captured.get(&hook).ok_or_else(|| EngineError::InvalidInput(format!("the forward pass did not reach {hook}")))?;
        select_rows(x, batch, read.rows)
    };
    let mut codes = Vec::with_capacity(chosen.len());
    let (mut targets, mut errors) = (Vec::new(), Vec::new());
    for dictionary in &chosen {
        let x = rows(dictionary.info().hook_in)?;
        let encoding = dictionary.encode(&x)?;
        if read.errors {
            let target = rows(dictionary.info().hook_out)?;
            errors.push((&target - dictionary.decode(&encoding)?)?);
            targets.push(target);
        }
        codes.push(encoding);
    }
    let captured = extra.into_iter().map(|hook| Ok((hook, rows(hook)?))).collect::<Result<_>>()?;
    Ok(LensOutput { codes, targets, errors, captured, logits: output.logits, forward_time, encode_time: start.elapsed() })
}

/// The rows of `[batch, seq, d]` that `rows` selects, as `[n, d]`.
pub fn select_rows(x: &Tensor, batch: &TokenBatch, rows: Rows) -> Result<Tensor> {
    let (b, seq, d) = x.dims3()?;
    if b != batch.lengths.len() {
        return Err(EngineError::InvalidInput(format!("activation of {b} sequences for a batch of {}", batch.lengths.len())));
    }
    let first = match rows {
        Rows::All => return Ok(x.reshape((b * seq, d))?),
        Rows::Real => 0,
        Rows::RealAfterFirst => 1,
    };
    if batch.lengths.iter().all(|&l| l == seq) {
        return Ok(x.narrow(1, first, seq - first)?.contiguous()?.reshape((b * (seq - first), d))?);
    }
    let index: Vec<u32> = batch.lengths.iter().enumerate().flat_map(|(s, &len)| (first..len).map(move |p| (s * seq + p) as u32)).collect();
    let index = Tensor::from_vec(index.clone(), index.len(), x.device())?;
    Ok(x.reshape((b * seq, d))?.index_select(&index, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_lengths() {
        let x = Tensor::arange(0f32, 12., &candle_core::Device::Cpu).unwrap().reshape((2, 3, 2)).unwrap();
        let batch = TokenBatch::right_padded(&[vec![1, 2, 3], vec![4, 5]], 0).unwrap();
        let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(select_rows(&x, &batch, Rows::All).unwrap()), (0..12).map(|v| v as f32).collect::<Vec<_>>());
        assert_eq!(flat(select_rows(&x, &batch, Rows::Real).unwrap()), vec![0., 1., 2., 3., 4., 5., 6., 7., 8., 9.]);
        assert_eq!(flat(select_rows(&x, &batch, Rows::RealAfterFirst).unwrap()), vec![2., 3., 4., 5., 8., 9.]);
        let full = TokenBatch::right_padded(&[vec![1, 2, 3], vec![4, 5, 6]], 0).unwrap();
        assert_eq!(flat(select_rows(&x, &full, Rows::RealAfterFirst).unwrap()), vec![2., 3., 4., 5., 8., 9., 10., 11.]);
    }
}
