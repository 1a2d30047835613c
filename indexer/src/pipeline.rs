//! One pass over a corpus: a reader thread tokenizes and packs windows, the calling thread
//! runs the model (stopped at the deepest hook any dictionary needs) and every dictionary's
//! encoder, and a reducer thread folds the sparse codes into the per-feature state. Bounded
//! channels between the three keep memory flat whatever the corpus size, and let model
//! compute overlap reading and reduction.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use loupe_engine::lens::{self, Rows};
use loupe_engine::{FeatureLens, SparseActs, TokenBatch};

use crate::error::{IndexError, Result};
use crate::state::{IndexState, SourceSummary};
use loupe_corpus::{read_documents, CorpusSource, Document, SkipReason, Skipped};
use loupe_corpus::{Window, WindowPacker};
use rayon::prelude::*;

/// Which windows this process indexes: those with `index % count == index_of_shard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    pub fn parse(text: &str) -> Result<Shard> {
        let bad = || IndexError::InvalidJob(format!("shard {text:?}: expected i/n with 0 <= i < n, e.g. 0/4"));
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count): (u64, u64) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    fn owns(&self, window: u64) -> bool {
        window % self.count == self.index
    }
}

/// What to read and how.
pub struct PassPlan<'a> {
    pub sources: &'a [CorpusSource],
    pub first_document: u64,
    pub first_window: u64,
    pub context: usize,
    pub batch_size: usize,
    pub shard: Shard,
    /// Stop after this many windows (counted from `first_window`, all shards together).
    pub max_windows: Option<u64>,
    /// Windows below this index were reduced before (resume).
    pub resume_from: u64,
    pub checkpoint_every: usize,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub bytes_read: u64,
    pub tokens: u64,
    pub windows: u64,
}

/// Where the time went (per thread; they overlap).
#[derive(Debug, Clone, Copy, Default)]
pub struct PassTimings {
    /// The reader thread's time, waits for a full channel included.
    pub read: Duration,
    /// Of which tokenizing (the reader's own work: on a GPU, what it must outpace).
    pub tokenize: Duration,
    pub forward: Duration,
    pub encode: Duration,
    pub reduce: Duration,
    pub checkpoint: Duration,
    pub wall: Duration,
}

/// Callbacks of a pass.
pub struct PassHooks<'a> {
    pub progress: &'a (dyn Fn(Progress) + Sync),
    pub checkpoint: &'a (dyn Fn(u64, &IndexState) -> Result<()> + Sync),
    pub interrupted: &'a AtomicBool,
}

enum Read {
    Batch(Vec<Window>),
    Done(Vec<SourceSummary>),
}

enum Encoded {
    Batch(Vec<Window>, Vec<SparseActs>),
    Done(Vec<SourceSummary>),
}

pub struct PassOutcome {
    pub state: IndexState,
    pub complete: bool,
    pub timings: PassTimings,
}

/// Runs one pass, continuing `state`.
pub fn run_pass(lens: &FeatureLens, plan: &PassPlan, state: IndexState, hooks: &PassHooks) -> Result<PassOutcome> {
    let start = Instant::now();
    let bytes_read = AtomicU64::new(0);
    let (read_tx, read_rx) = bounded::<Read>(4);
    let (enc_tx, enc_rx) = bounded::<Encoded>(2);
    let tokenizer = lens.model().tokenizer()?;
    let widths: Vec<usize> = lens.dictionaries().iter().map(|d| d.dictionary.info().d_sae).collect();
    let tokenize_nanos = AtomicU64::new(0);
    let (state, complete, read_time, reduce_time, checkpoint_time, forward, encode) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| read_windows(tokenizer, plan, read_tx, &bytes_read, &tokenize_nanos, hooks.interrupted));
        let reducer = scope.spawn(|| reduce_batches(&widths, plan, state, enc_rx, &bytes_read, hooks));
        let computed = compute(lens, read_rx, enc_tx);
        let read = reader.join().expect("reader thread does not panic");
        let reduced = reducer.join().expect("reducer thread does not panic");
        let (forward, encode) = computed?;
        let read_time = read?;
        let (state, complete, reduce_time, checkpoint_time) = reduced?;
        Ok::<_, IndexError>((state, complete, read_time, reduce_time, checkpoint_time, forward, encode))
    })?;
    let tokenize = Duration::from_nanos(tokenize_nanos.load(Ordering::Relaxed));
    let timings = PassTimings { read: read_time, tokenize, forward, encode, reduce: reduce_time, checkpoint: checkpoint_time, wall: start.elapsed() };
    Ok(PassOutcome { state, complete, timings })
}

/// Documents are tokenized in chunks of about this much text, in parallel on the CPU's
/// threads, then packed in order: one thread tokenizes ~0.35M tokens/s (2026-12-02, a 2-core
/// Zen 2 VM), short of what a GPU consumes.
const TOKENIZE_CHUNK_BYTES: usize = 1 << 20;
const TOKENIZE_CHUNK_DOCUMENTS: usize = 4096;

/// The reader's position: documents and windows so far, and whether to stop.
struct Packing<'a> {
    plan: &'a PassPlan<'a>,
    tx: &'a Sender<Read>,
    tokenizer: &'a loupe_engine::Tokenizer,
    tokenize_nanos: &'a AtomicU64,
    limit: Option<u64>,
    document: u64,
    batch: Vec<Window>,
    stopped: bool,
}

impl Packing<'_> {
    /// Tokenizes `documents` (read in order, not yet counted) in parallel and packs them in
    /// order into `packer`'s windows. At the window limit or when the consumer has gone, it
    /// stops there: later documents of the chunk are dropped uncounted, as if never read.
    fn pack(&mut self, documents: &mut Vec<Document>, packer: &mut WindowPacker, emitted: &mut u64, skipped: &mut Skipped) -> Result<()> {
        let start = Instant::now();
        let tokenizer = self.tokenizer;
        // Each document's token ids, or why it was skipped.
        let tokenized: Vec<std::result::Result<Vec<u32>, SkipReason>> = documents
            .par_iter()
            .map(|doc| match doc {
                Document::Text(text) => tokenizer.encode(text).map(Ok),
                Document::Skipped(reason) => Ok(Err(*reason)),
            })
            .collect::<std::result::Result<_, _>>()?;
        self.tokenize_nanos.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        for document in tokenized {
            match document {
                Ok(ids) => {
                    for w in packer.push_document(self.document, &ids) {
                        if self.limit.is_some_and(|l| w.index >= l) {
                            self.stopped = true;
                            break;
                        }
                        *emitted = w.index + 1;
                        self.keep(w);
                    }
                }
                Err(reason) => skipped.count(reason),
            }
            self.document += 1;
            if self.stopped {
                break;
            }
        }
        documents.clear();
        Ok(())
    }

    /// Queues a window this shard owns (and that was not reduced before); sends full batches.
    fn keep(&mut self, w: Window) {
        if w.index >= self.plan.resume_from && self.plan.shard.owns(w.index) {
            self.batch.push(w);
            if self.batch.len() == self.plan.batch_size && self.tx.send(Read::Batch(std::mem::take(&mut self.batch))).is_err() {
                // The consumer has gone (it failed or was interrupted).
                self.stopped = true;
            }
        }
    }
}

fn read_windows(tokenizer: &loupe_engine::Tokenizer, plan: &PassPlan, tx: Sender<Read>, bytes_read: &AtomicU64, tokenize_nanos: &AtomicU64, interrupted: &AtomicBool) -> Result<Duration> {
    let start = Instant::now();
    let bos = tokenizer.bos_token_id().or(tokenizer.eos_token_id()).unwrap_or(0);
    let separator = tokenizer.eos_token_id().unwrap_or(bos);
    let limit = plan.max_windows.map(|m| plan.first_window + m);
    let mut window = plan.first_window;
    let mut summaries = Vec::new();
    let mut bytes_before = 0u64;
    let mut packing = Packing { plan, tx: &tx, tokenizer, tokenize_nanos, limit, document: plan.first_document, batch: Vec::with_capacity(plan.batch_size), stopped: false };
    for source in plan.sources {
        if packing.stopped {
            break;
        }
        let (first_document, first_window) = (packing.document, window);
        let mut packer = WindowPacker::new(plan.context, bos, separator, window);
        // What the reader counts includes documents read ahead; the summary counts those used.
        let (mut skipped, mut read_ahead_skipped) = (Skipped::default(), Skipped::default());
        let mut emitted = window;
        let (mut chunk, mut chunk_bytes) = (Vec::new(), 0usize);
        read_documents(source, &mut read_ahead_skipped, |doc, bytes| {
            bytes_read.store(bytes_before + bytes, Ordering::Relaxed);
            if interrupted.load(Ordering::Relaxed) {
                packing.stopped = true;
                return Ok(false);
            }
            if let Document::Text(text) = &doc {
                chunk_bytes += text.len();
            }
            chunk.push(doc);
            if chunk_bytes >= TOKENIZE_CHUNK_BYTES || chunk.len() >= TOKENIZE_CHUNK_DOCUMENTS {
                packing.pack(&mut chunk, &mut packer, &mut emitted, &mut skipped)?;
                chunk_bytes = 0;
            }
            Ok::<_, IndexError>(!packing.stopped)
        })?;
        bytes_before += source.total_bytes()?;
        if !packing.stopped {
            packing.pack(&mut chunk, &mut packer, &mut emitted, &mut skipped)?;
        }
        if !packing.stopped {
            let (last, _) = packer.finish();
            if let Some(w) = last {
                if limit.is_none_or(|l| w.index < l) {
                    emitted = w.index + 1;
                    packing.keep(w);
                }
            }
        }
        window = emitted;
        summaries.push(SourceSummary { source: source.clone(), first_document, documents: packing.document - first_document, first_window, windows: window - first_window, skipped });
        if limit.is_some_and(|l| window >= l) {
            break;
        }
    }
    let batch = std::mem::take(&mut packing.batch);
    if interrupted.load(Ordering::Relaxed) {
        // Hand over what was read, but no Done: the run is not complete.
        if !batch.is_empty() {
            let _ = tx.send(Read::Batch(batch));
        }
        return Ok(start.elapsed());
    }
    if !batch.is_empty() && tx.send(Read::Batch(batch)).is_err() {
        return Ok(start.elapsed());
    }
    let _ = tx.send(Read::Done(summaries));
    Ok(start.elapsed())
}

fn compute(lens: &FeatureLens, rx: Receiver<Read>, tx: Sender<Encoded>) -> Result<(Duration, Duration)> {
    let (mut forward, mut encode) = (Duration::ZERO, Duration::ZERO);
    // Every dictionary, at every real position (BOS included: the reducer skips it).
    let read = lens::Read::all(lens, Rows::Real);
    for message in rx {
        let windows = match message {
            Read::Batch(windows) => windows,
            Read::Done(summaries) => {
                let _ = tx.send(Encoded::Done(summaries));
                break;
            }
        };
        let sequences: Vec<Vec<u32>> = windows.iter().map(|w| w.tokens.clone()).collect();
        let batch = TokenBatch::right_padded(&sequences, lens.model().pad_token_id())?;
        let output = lens.run(&batch, &read)?;
        forward += output.forward_time;
        encode += output.encode_time;
        let codes = output.codes.into_iter().map(|e| e.features).collect();
        if tx.send(Encoded::Batch(windows, codes)).is_err() {
            break;
        }
    }
    Ok((forward, encode))
}

type Reduced = (IndexState, bool, Duration, Duration);

fn reduce_batches(widths: &[usize], plan: &PassPlan, mut state: IndexState, rx: Receiver<Encoded>, bytes_read: &AtomicU64, hooks: &PassHooks) -> Result<Reduced> {
    let (mut reduce_time, mut checkpoint_time) = (Duration::ZERO, Duration::ZERO);
    let mut scratch: Vec<Vec<Vec<(u16, f32)>>> = widths.iter().map(|&d_sae| vec![Vec::new(); d_sae]).collect();
    let mut touched: Vec<u32> = Vec::new();
    let mut batches_since_checkpoint = 0;
    let mut next_window = plan.resume_from;
    let mut live_windows = 0usize;
    let mut progress = Progress::default();
    let save = |state: &mut IndexState, next_window: u64, time: &mut Duration| -> Result<()> {
        let t = Instant::now();
        state.collect_garbage();
        (hooks.checkpoint)(next_window, state)?;
        *time += t.elapsed();
        Ok(())
    };
    for message in rx {
        let (windows, codes) = match message {
            Encoded::Batch(windows, codes) => (windows, codes),
            Encoded::Done(summaries) => {
                state.sources = summaries;
                state.collect_garbage();
                return Ok((state, true, reduce_time, checkpoint_time));
            }
        };
        let t = Instant::now();
        for (d, acts) in codes.iter().enumerate() {
            let mut row = 0;
            for window in &windows {
                let mut kept = false;
                for position in 0..window.tokens.len() {
                    let (indices, values) = acts.token(row + position);
                    for (&feature, &value) in indices.iter().zip(values) {
                        let list = &mut scratch[d][feature as usize];
                        if list.is_empty() {
                            touched.push(feature);
                        }
                        list.push((position as u16, value));
                    }
                }
                row += window.tokens.len();
                let dictionary = &mut state.dictionaries[d];
                for &feature in &touched {
                    let list = &mut scratch[d][feature as usize];
                    kept |= dictionary.observe(feature, window.index, list);
                    list.clear();
                }
                touched.clear();
                dictionary.tokens += window.tokens.len() as u64 - 1;
                if kept && !state.windows.contains_key(&window.index) {
                    state.windows.insert(window.index, window.clone());
                }
            }
        }
        state.windows_reduced += windows.len() as u64;
        next_window = windows.last().map_or(next_window, |w| w.index + 1);
        progress.tokens += windows.iter().map(|w| w.tokens.len() as u64 - 1).sum::<u64>();
        progress.windows += windows.len() as u64;
        progress.bytes_read = bytes_read.load(Ordering::Relaxed);
        reduce_time += t.elapsed();
        (hooks.progress)(progress);
        // Windows evicted from every top-K and sample accumulate; sweep them now and then.
        if state.windows.len() > 2 * live_windows + 4096 {
            state.collect_garbage();
            live_windows = state.windows.len();
        }
        batches_since_checkpoint += 1;
        if batches_since_checkpoint >= plan.checkpoint_every {
            save(&mut state, next_window, &mut checkpoint_time)?;
            batches_since_checkpoint = 0;
        }
    }
    // The reader stopped early (interrupt): save where we are.
    save(&mut state, next_window, &mut checkpoint_time)?;
    Ok((state, false, reduce_time, checkpoint_time))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::PathBuf;

    use super::*;

    fn tokenizer() -> loupe_engine::Model {
        let home = std::env::var_os("LOUPE_HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/loupe"));
        let path = home.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(path.exists(), "{} is missing: run scripts/setup.sh", path.display());
        loupe_engine::Model::load(&path).unwrap()
    }

    /// The old reader, one document at a time: tokenize, pack, stop at the limit.
    fn sequential(tokenizer: &loupe_engine::Tokenizer, source: &CorpusSource, context: usize, limit: Option<u64>) -> (Vec<Window>, u64, Skipped) {
        let bos = tokenizer.bos_token_id().or(tokenizer.eos_token_id()).unwrap_or(0);
        let separator = tokenizer.eos_token_id().unwrap_or(bos);
        let mut packer = WindowPacker::new(context, bos, separator, 0);
        let (mut windows, mut document, mut skipped, mut stopped) = (Vec::new(), 0u64, Skipped::default(), false);
        read_documents(source, &mut skipped, |doc, _| {
            if let Document::Text(text) = doc {
                for w in packer.push_document(document, &tokenizer.encode(&text)?) {
                    if limit.is_some_and(|l| w.index >= l) {
                        stopped = true;
                        break;
                    }
                    windows.push(w);
                }
            }
            document += 1;
            Ok::<_, IndexError>(!stopped)
        })
        .unwrap();
        if !stopped {
            if let (Some(w), _) = packer.finish() {
                if limit.is_none_or(|l| w.index < l) {
                    windows.push(w);
                }
            }
        }
        (windows, document, skipped)
    }

    #[test]
    fn chunked_parallel_tokenizing_packs_what_a_sequential_reader_packs_and_counts_only_the_documents_used() {
        let model = tokenizer();
        let tokenizer = model.tokenizer().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corpus.jsonl");
        let mut file = std::fs::File::create(&path).unwrap();
        // More documents than one tokenizing chunk holds, with empty and invalid ones.
        let documents = TOKENIZE_CHUNK_DOCUMENTS + 900;
        for i in 0..documents {
            if i % 500 == 7 {
                writeln!(file, "{}", serde_json::json!({"text": "  "})).unwrap();
            } else if i % 777 == 5 {
                file.write_all(b"{\"text\": \"caf\xff\"}\n").unwrap();
            } else {
                writeln!(file, "{}", serde_json::json!({"text": format!("Document {i}:{}", " more words".repeat(i % 13))})).unwrap();
            }
        }
        drop(file);
        let source = CorpusSource::new(&path);
        let context = 32;
        let (all, _, _) = sequential(tokenizer, &source, context, None);
        // No limit; a limit inside the first chunk; one inside the second.
        for limit in [None, Some(all.len() as u64 / 10), Some(all.len() as u64 * 9 / 10)] {
            let (expected, expected_documents, expected_skipped) = sequential(tokenizer, &source, context, limit);
            let plan = PassPlan {
                sources: std::slice::from_ref(&source),
                first_document: 0,
                first_window: 0,
                context,
                batch_size: 7,
                shard: Shard::WHOLE,
                max_windows: limit,
                resume_from: 0,
                checkpoint_every: 1,
            };
            let (tx, rx) = crossbeam_channel::unbounded();
            let (bytes, nanos, interrupted) = (AtomicU64::new(0), AtomicU64::new(0), AtomicBool::new(false));
            read_windows(tokenizer, &plan, tx, &bytes, &nanos, &interrupted).unwrap();
            let (mut windows, mut summaries) = (Vec::new(), Vec::new());
            for message in rx {
                match message {
                    Read::Batch(batch) => windows.extend(batch),
                    Read::Done(s) => summaries = s,
                }
            }
            assert_eq!(windows.len(), expected.len(), "limit {limit:?}");
            assert!(windows == expected, "limit {limit:?}: the windows differ");
            assert_eq!(summaries.len(), 1);
            assert_eq!((summaries[0].documents, summaries[0].skipped, summaries[0].windows), (expected_documents, expected_skipped, expected.len() as u64), "limit {limit:?}");
            if limit.is_none() {
                assert_eq!(expected_documents, documents as u64);
                assert!(expected_skipped.empty > 0 && expected_skipped.invalid_utf8 > 0);
            }
        }
    }
}
