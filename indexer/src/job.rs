//! Index jobs: a TOML config (overridable by flags), resumable by checkpoints, sharded over
//! workers and merged, or appended to an earlier run.
//!
//! A job's working files live in `STORE/jobs/<index key>/` (in the store, so that on
//! object storage any node can resume or merge them), where the index key covers the
//! model, the dictionaries and the reducer settings:
//! - `run-<run key>-<i>-of-<n>.ckpt`: the state of shard i of n of a run over some corpus
//!   (the run key adds the corpus and where its ids start); complete or resumable;
//! - `committed.state`: the state behind the last commit, which `--append` extends;
//! - `committed.run`: the run key and generation of the last commit, so that running the
//!   same job over the same, unchanged corpus again finds it done instead of redoing it.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loupe_engine::{Compute, Dictionary, FeatureLens, Model};
use loupe_store::{DictionaryRecord, FeatureRecord, Generation, Location, StoreError, StoreWriter};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::checksum::{sha256_bytes, sha256_path};
use crate::config::{DictionarySpec, JobConfig};
use crate::error::{IndexError, Result};
use crate::finalize::{example_chunks, feature_records};
use crate::pipeline::{run_pass, PassHooks, PassPlan, PassTimings, Progress, Shard};
use crate::reducer::{DictionaryState, ReducerConfig, HISTOGRAM_BINS, INTERVAL_BINS};
use crate::state::{Checkpoint, IndexState};

/// Bumped when the reducer state or its meaning changes: old checkpoints are not resumed.
const STATE_FORMAT: u32 = 1;

impl JobConfig {
    fn reducer(&self) -> ReducerConfig {
        ReducerConfig { top_k: self.top_k, interval_samples: self.interval_samples, seed: self.seed }
    }

    fn max_windows(&self) -> Option<u64> {
        self.max_tokens.map(|t| t.div_ceil(self.context as u64 - 1))
    }
}

/// How this invocation takes part in the job.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    pub shard: Shard,
    /// Add the corpus to the last committed run instead of replacing it.
    pub append: bool,
    /// Index even if this exact run is already the store's last commit.
    pub force: bool,
}

/// `committed.run`: which run the last commit was.
#[derive(Serialize, Deserialize)]
struct CommittedRun {
    run_key: String,
    generation: u64,
}

/// Callbacks while a job runs.
pub struct JobHooks<'a> {
    /// Called with progress and the corpus size in bytes.
    pub progress: &'a (dyn Fn(Progress, u64) + Sync),
    pub interrupted: &'a AtomicBool,
}

#[derive(Debug)]
pub enum Outcome {
    Committed(Generation),
    /// This exact run (model, dictionaries, settings, corpus files unchanged) is already the
    /// store's last commit, this generation; nothing was done.
    UpToDate(Generation),
    /// This shard is done; `loupe index merge` commits when all are.
    ShardDone {
        shard: Shard,
        pending: Vec<u64>,
    },
    Interrupted,
}

#[derive(Debug)]
pub struct RunReport {
    pub outcome: Outcome,
    pub tokens: u64,
    pub windows: u64,
    pub timings: PassTimings,
    pub finalize: Duration,
    pub commit: Duration,
    pub resumed_from: u64,
}

/// A job with its model and dictionaries loaded.
pub struct Job {
    pub config: JobConfig,
    /// The model and the dictionaries, in the order of `config.dictionaries` (and `ids`).
    lens: FeatureLens,
    /// The store, resolved from `config.store` and `config.storage`.
    store: Location,
    model_path: PathBuf,
    model_checksum: String,
    dictionary_checksums: Vec<String>,
    ids: Vec<String>,
    index_key: String,
    /// Windows per forward pass: the config's, else chosen for the device.
    batch: BatchChoice,
}

/// How many windows a forward pass takes, and where the number came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchChoice {
    Given(usize),
    /// The CPU default.
    Cpu(usize),
    /// Planned from the GPU's free memory.
    Gpu(loupe_engine::memory::GpuBatch),
}

impl BatchChoice {
    pub fn windows(&self) -> usize {
        match self {
            BatchChoice::Given(n) | BatchChoice::Cpu(n) => *n,
            BatchChoice::Gpu(plan) => plan.windows,
        }
    }
}

impl std::fmt::Display for BatchChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchChoice::Given(n) => write!(f, "{n} windows a batch (batch_size)"),
            BatchChoice::Cpu(n) => write!(f, "{n} windows a batch (the CPU default; --batch-size sets it)"),
            BatchChoice::Gpu(plan) => write!(f, "{plan}"),
        }
    }
}

impl Job {
    pub fn prepare(config: JobConfig, model_path: &Path) -> Result<Job> {
        config.validate()?;
        let store = Location::from_arg(&config.store, &config.storage)?;
        futures::executor::block_on(loupe_store::layout::create_or_check(&store))?;
        for source in &config.corpus {
            source.files()?;
        }
        let compute = Compute::open(config.device, config.precision)?;
        let model = Model::load_on(model_path, &compute)?;
        let ids: Vec<String> = config.dictionaries.iter().map(DictionarySpec::id).collect();
        let mut dictionaries = Vec::new();
        let mut dictionary_checksums = Vec::new();
        for (spec, id) in config.dictionaries.iter().zip(&ids) {
            dictionaries.push((id.clone(), Arc::new(Dictionary::load_for_model(&spec.path, model.config())?)));
            dictionary_checksums.push(sha256_path(&spec.path)?);
        }
        let lens = FeatureLens::new(model, dictionaries)?;
        let model_checksum = sha256_path(model_path)?;
        let mut identity = json!({
            "state_format": STATE_FORMAT,
            "model": model_checksum,
            "dictionaries": ids.iter().zip(&dictionary_checksums).collect::<Vec<_>>(),
            "context": config.context,
            "reducer": config.reducer(),
        });
        // A run in another precision gives other activations: its shards and checkpoints
        // must not mix with an f32 run's (f32 runs keep the key they always had).
        if compute.dtype != candle_core::DType::F32 {
            identity["precision"] = json!(format!("{:?}", compute.dtype));
        }
        let index_key = sha256_bytes(identity.to_string().as_bytes())[..16].to_string();
        // The batch size is not part of any key: checkpoints count windows, so a run may
        // resume with another batch size (on another GPU) and reach the same state.
        let batch = match config.batch_size {
            Some(n) => BatchChoice::Given(n),
            None => match loupe_engine::memory::gpu_batch(&lens, config.context)? {
                Some(plan) => BatchChoice::Gpu(plan),
                None => BatchChoice::Cpu(JobConfig::CPU_BATCH_SIZE),
            },
        };
        Ok(Job { config, lens, store, model_path: model_path.into(), model_checksum, dictionary_checksums, ids, index_key, batch })
    }

    /// Windows per forward pass, and why that many.
    pub fn batch(&self) -> BatchChoice {
        self.batch
    }

    /// The model and the dictionaries this job indexes.
    pub fn lens(&self) -> &FeatureLens {
        &self.lens
    }

    pub fn dictionary_ids(&self) -> &[String] {
        &self.ids
    }

    /// The store the job writes (a local folder or object storage).
    pub fn store(&self) -> &Location {
        &self.store
    }

    fn job_dir(&self) -> String {
        format!("jobs/{}", self.index_key)
    }

    fn committed_state_key(&self) -> String {
        format!("{}/committed.state", self.job_dir())
    }

    fn committed_run_key(&self) -> String {
        format!("{}/committed.run", self.job_dir())
    }

    /// The store's current generation if the last commit was `run_key` and nothing was
    /// committed since.
    fn up_to_date(&self, run_key: &str) -> Result<Option<Generation>> {
        // A missing or unreadable record only means the run is done again.
        let recorded = futures::executor::block_on(self.store.get(&self.committed_run_key())).ok().flatten();
        let Some(record) = recorded.and_then(|bytes| serde_json::from_slice::<CommittedRun>(&bytes).ok()) else {
            return Ok(None);
        };
        let current = futures::executor::block_on(loupe_store::layout::current(&self.store))?;
        Ok(current.filter(|g| record.run_key == run_key && g.generation == record.generation))
    }

    fn committed_state(&self) -> Result<IndexState> {
        match Checkpoint::load(&self.store, &self.committed_state_key())? {
            Some(c) => Ok(c.state),
            None => Err(IndexError::InvalidJob(format!("nothing to append to: {} has no committed index of these dictionaries with these settings; run without --append first", self.store))),
        }
    }

    /// The run key: the index key plus the corpus and where its ids start.
    fn run_key(&self, first_ids: (u64, u64)) -> Result<String> {
        let mut sources = Vec::new();
        for source in &self.config.corpus {
            let mut files = Vec::new();
            for (file, format) in source.files()? {
                let meta = std::fs::metadata(&file).map_err(|e| IndexError::io(&file, e))?;
                let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
                let path = file.canonicalize().unwrap_or(file);
                files.push(json!([path, format, meta.len(), modified.to_string()]));
            }
            sources.push(json!({"files": files, "text_field": source.text_field}));
        }
        let identity = json!({"index": self.index_key, "sources": sources, "max_windows": self.config.max_windows(), "first_ids": first_ids});
        Ok(sha256_bytes(identity.to_string().as_bytes())[..16].to_string())
    }

    fn checkpoint_key(&self, run_key: &str, shard: Shard) -> String {
        format!("{}/run-{run_key}-{}-of-{}.ckpt", self.job_dir(), shard.index, shard.count)
    }

    fn fresh_state(&self) -> IndexState {
        IndexState::new(self.lens.dictionaries().iter().map(|d| DictionaryState::new(d.dictionary.info().d_sae, self.config.reducer())).collect())
    }

    /// Runs (or resumes) this invocation's part of the job; commits unless it is one shard
    /// of several.
    pub fn run(&self, options: RunOptions, hooks: &JobHooks) -> Result<RunReport> {
        let base = if options.append { Some(self.committed_state()?) } else { None };
        let first_ids = base.as_ref().map_or((0, 0), IndexState::next_ids);
        let run_key = self.run_key(first_ids)?;
        if !options.append && !options.force && options.shard == Shard::WHOLE {
            if let Some(generation) = self.up_to_date(&run_key)? {
                return Ok(RunReport {
                    outcome: Outcome::UpToDate(generation),
                    tokens: 0,
                    windows: 0,
                    timings: PassTimings::default(),
                    finalize: Duration::ZERO,
                    commit: Duration::ZERO,
                    resumed_from: 0,
                });
            }
        }
        let checkpoint_key = self.checkpoint_key(&run_key, options.shard);
        let resumed = Checkpoint::load(&self.store, &checkpoint_key)?.filter(|c| c.run_key == run_key);
        let resumed_from = resumed.as_ref().map_or(0, |c| c.next_window);
        let (state, timings, tokens, windows) = match resumed {
            Some(c) if c.complete => (c.state, PassTimings::default(), 0, 0),
            resumed => {
                let (state, next) = resumed.map_or((self.fresh_state(), first_ids.1), |c| (c.state, c.next_window));
                let tokens_before: u64 = state.dictionaries.first().map_or(0, |d| d.tokens);
                let windows_before = state.windows_reduced;
                let plan = PassPlan {
                    sources: &self.config.corpus,
                    first_document: first_ids.0,
                    first_window: first_ids.1,
                    context: self.config.context,
                    batch_size: self.batch.windows(),
                    shard: options.shard,
                    max_windows: self.config.max_windows(),
                    resume_from: next,
                    checkpoint_every: self.config.checkpoint_every,
                };
                let total_bytes: u64 = self.config.corpus.iter().map(|s| s.total_bytes()).sum::<Result<u64, _>>()?;
                let save = |next_window: u64, state: &IndexState| -> Result<()> {
                    // Cloning costs a copy of the state; checkpoints are rare next to batches.
                    Checkpoint { run_key: run_key.clone(), next_window, complete: false, state: state.clone() }.save(&self.store, &checkpoint_key)
                };
                let progress = |p: Progress| (hooks.progress)(p, total_bytes);
                let pass_hooks = PassHooks { progress: &progress, checkpoint: &save, interrupted: hooks.interrupted };
                let outcome = run_pass(&self.lens, &plan, state, &pass_hooks)?;
                let tokens = outcome.state.dictionaries.first().map_or(0, |d| d.tokens) - tokens_before;
                let windows = outcome.state.windows_reduced - windows_before;
                if !outcome.complete {
                    return Ok(RunReport { outcome: Outcome::Interrupted, tokens, windows, timings: outcome.timings, finalize: Duration::ZERO, commit: Duration::ZERO, resumed_from });
                }
                let done = Checkpoint { run_key: run_key.clone(), next_window: u64::MAX, complete: true, state: outcome.state };
                done.save(&self.store, &checkpoint_key)?;
                (done.state, outcome.timings, tokens, windows)
            }
        };
        if options.shard.count > 1 {
            let pending = self.pending_shards(&run_key, options.shard.count)?;
            return Ok(RunReport { outcome: Outcome::ShardDone { shard: options.shard, pending }, tokens, windows, timings, finalize: Duration::ZERO, commit: Duration::ZERO, resumed_from });
        }
        let (generation, finalize, commit) = self.commit(state, base, &run_key)?;
        Ok(RunReport { outcome: Outcome::Committed(generation), tokens, windows, timings, finalize, commit, resumed_from })
    }

    fn pending_shards(&self, run_key: &str, count: u64) -> Result<Vec<u64>> {
        let mut pending = Vec::new();
        for index in 0..count {
            let key = self.checkpoint_key(run_key, Shard { index, count });
            if !Checkpoint::load(&self.store, &key)?.is_some_and(|c| c.complete && c.run_key == run_key) {
                pending.push(index);
            }
        }
        Ok(pending)
    }

    /// Merges the complete states of all `count` shards and commits.
    pub fn merge(&self, count: u64, append: bool) -> Result<RunReport> {
        if count == 0 {
            return Err(IndexError::InvalidJob("--shards 0: give the number of shards the run was split into (at least 1)".into()));
        }
        let base = if append { Some(self.committed_state()?) } else { None };
        let first_ids = base.as_ref().map_or((0, 0), IndexState::next_ids);
        let run_key = self.run_key(first_ids)?;
        let pending = self.pending_shards(&run_key, count)?;
        if !pending.is_empty() {
            let list: Vec<String> = pending.iter().map(|i| format!("{i}/{count}")).collect();
            return Err(IndexError::InvalidJob(format!("cannot merge yet: shards {} are not complete (run them with --shard)", list.join(", "))));
        }
        let mut merged: Option<IndexState> = None;
        for index in 0..count {
            let key = self.checkpoint_key(&run_key, Shard { index, count });
            let state = Checkpoint::load(&self.store, &key)?
                .ok_or_else(|| IndexError::InvalidJob(format!("shard {index}/{count}'s checkpoint {}/{key} vanished during the merge; run the shard again", self.store)))?
                .state;
            match merged.as_mut() {
                None => merged = Some(state),
                Some(m) => m.merge_shard(state)?,
            }
        }
        let state = merged.ok_or_else(|| IndexError::InvalidJob("no shard to merge".into()))?;
        let (tokens, windows) = (state.dictionaries.first().map_or(0, |d| d.tokens), state.windows_reduced);
        let (generation, finalize, commit) = self.commit(state, base, &run_key)?;
        Ok(RunReport { outcome: Outcome::Committed(generation), tokens, windows, timings: PassTimings::default(), finalize, commit, resumed_from: 0 })
    }

    fn commit(&self, state: IndexState, base: Option<IndexState>, run_key: &str) -> Result<(Generation, Duration, Duration)> {
        let state = match base {
            Some(mut base) => {
                base.append(state);
                base
            }
            None => state,
        };
        let t = Instant::now();
        let (dictionaries, features) = self.finalize(&state)?;
        let finalize = t.elapsed();
        let t = Instant::now();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| IndexError::io("a tokio runtime", e))?;
        let writer = runtime.block_on(StoreWriter::open_or_create(&self.store))?;
        // Examples are made on a second thread while Lance writes the ones before them.
        let generation = std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(2);
            let producer = scope.spawn(|| self.send_examples(&state, tx));
            let written = runtime.block_on(writer.commit_streaming(&dictionaries, &features, rx.into_iter()));
            producer.join().expect("the example thread does not panic");
            written
        })?;
        Checkpoint { run_key: self.index_key.clone(), next_window: u64::MAX, complete: true, state }.save(&self.store, &self.committed_state_key())?;
        let record = serde_json::to_vec(&CommittedRun { run_key: run_key.into(), generation: generation.generation }).expect("a run record serializes");
        futures::executor::block_on(self.store.put(&self.committed_run_key(), record))?;
        self.remove_run_checkpoints(run_key)?;
        Ok((generation, finalize, t.elapsed()))
    }

    /// Streams every dictionary's examples to `tx`, in chunks; an error is sent as the last
    /// item, and a hung-up receiver (the commit failed) ends the stream.
    fn send_examples(&self, state: &IndexState, tx: std::sync::mpsc::SyncSender<loupe_store::Result<Vec<loupe_store::ExampleRecord>>>) {
        const CHUNK_ROWS: usize = 4096;
        let result = self.lens.model().tokenizer().map_err(IndexError::from).and_then(|tokenizer| {
            for (id, dictionary_state) in self.ids.iter().zip(&state.dictionaries) {
                let mut open = true;
                example_chunks(tokenizer, id, dictionary_state, &state.windows, CHUNK_ROWS, |chunk| {
                    open = tx.send(Ok(chunk)).is_ok();
                    open
                })?;
                if !open {
                    break;
                }
            }
            Ok(())
        });
        if let Err(error) = result {
            let _ = tx.send(Err(StoreError::ExampleSource(error.to_string())));
        }
    }

    fn remove_run_checkpoints(&self, run_key: &str) -> Result<()> {
        let dir = self.job_dir();
        let prefix = format!("run-{run_key}-");
        futures::executor::block_on(async {
            for name in self.store.list(&dir).await?.into_iter().filter(|n| n.starts_with(&prefix)) {
                self.store.delete(&format!("{dir}/{name}")).await?;
            }
            Ok(())
        })
    }

    /// The dictionary and feature rows of every dictionary of the state (the examples are
    /// streamed by `send_examples`).
    pub fn finalize(&self, state: &IndexState) -> Result<(Vec<DictionaryRecord>, Vec<FeatureRecord>)> {
        let created_at = loupe_store::layout::now_rfc3339();
        let tokens = state.dictionaries.first().map_or(0, |d| d.tokens);
        let mut dictionaries = Vec::new();
        let mut features = Vec::new();
        let absolute = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        let specs = self.lens.dictionaries().iter().map(|d| &d.dictionary).zip(&state.dictionaries).zip(&self.ids).zip(&self.dictionary_checksums).zip(&self.config.dictionaries);
        for ((((dictionary, dictionary_state), id), checksum), spec) in specs {
            let info = dictionary.info();
            features.extend(feature_records(self.lens.model(), dictionary, id, dictionary_state, &state.windows)?);
            let manifest = json!({
                "model": {"path": absolute(&self.model_path), "checksum": self.model_checksum},
                "dictionary": {"path": absolute(&spec.path), "checksum": checksum},
                "corpus": state.sources,
                "context": self.config.context,
                "windows": state.windows_reduced,
                "tokens_seen": tokens,
                "reducer": {
                    "top_k": self.config.top_k,
                    "interval_samples": self.config.interval_samples,
                    "interval_bins": INTERVAL_BINS,
                    "histogram_bins": HISTOGRAM_BINS,
                    "seed": self.config.seed,
                },
                "logit_effects": "W_dec[f] @ W_U, without the final norm (as SAEDashboard)",
                "code_version": concat!("loupe ", env!("CARGO_PKG_VERSION")),
            });
            let record = DictionaryRecord {
                dictionary_id: id.clone(),
                model_id: self.model_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
                model_checksum: self.model_checksum.clone(),
                hook: info.hook_in.to_string(),
                hook_out: info.hook_out.to_string(),
                layer: info.hook_in.layer().map(|l| l as u32),
                architecture: info.architecture.clone(),
                d_in: info.d_in as u32,
                d_sae: info.d_sae as u32,
                source_format: serde_json::to_value(info.format).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
                source_checksum: checksum.clone(),
                manifest,
                created_at: created_at.clone(),
            };
            dictionaries.push(record);
        }
        Ok((dictionaries, features))
    }
}
