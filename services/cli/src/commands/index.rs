//! `loupe index`: run the indexer as a resumable (and shardable) batch job.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use loupe_corpus::CorpusSource;
use loupe_indexer::{DictionarySpec, Job, JobConfig, JobHooks, Outcome, RunOptions, RunReport, Shard};
use serde_json::json;

use crate::output::{default_corpus, default_dictionary, print_json, ModelArgs};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub action: Option<Action>,
    #[command(flatten)]
    pub job: JobArgs,
    /// Run only shard i of n (windows with index % n == i); `loupe index merge` commits.
    #[arg(long)]
    pub shard: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// Merge the states of all shards of a sharded run and commit them to the store.
    Merge(MergeArgs),
}

#[derive(clap::Args)]
pub struct MergeArgs {
    /// The number of shards the run was split into.
    #[arg(long)]
    pub shards: u64,
    #[command(flatten)]
    pub job: JobArgs,
}

/// The job: a TOML config, overridden field by field by flags.
#[derive(clap::Args)]
pub struct JobArgs {
    /// Job config (TOML: store, model, [[corpus]], [[dictionary]], context, top_k, ...).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Store: a folder or s3://bucket/prefix (default: $LOUPE_HOME/store; S3 settings from
    /// AWS_* variables or the config's [storage] table).
    #[arg(long, env = "LOUPE_STORE")]
    pub store: Option<PathBuf>,
    /// Corpus file or folder (JSONL, Parquet, text), repeatable (default: the demo corpus).
    #[arg(long)]
    pub corpus: Vec<PathBuf>,
    /// JSONL field / Parquet column with the text.
    #[arg(long)]
    pub text_field: Option<String>,
    /// Dictionary folder, repeatable; `--dictionary ID=DIR` names it in the store
    /// (default: the embedded default dictionary).
    #[arg(long)]
    pub dictionary: Vec<String>,
    /// Tokens per context window (BOS included).
    #[arg(long)]
    pub context: Option<usize>,
    /// Windows per forward pass (default: 8 on the CPU; on a GPU, as many as half its free
    /// memory holds, at most 131,072 tokens).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Max-activating examples kept per feature.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Examples sampled per activation interval.
    #[arg(long)]
    pub interval_samples: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Batches between checkpoints.
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Index only the first N tokens of the corpus.
    #[arg(long)]
    pub max_tokens: Option<u64>,
    /// Add this corpus to the last committed run (same dictionaries and settings).
    #[arg(long)]
    pub append: bool,
    /// Index again even if this exact run (same model, dictionaries, settings and corpus
    /// files) is already the store's last commit.
    #[arg(long)]
    pub force: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

impl JobArgs {
    pub fn config(&self) -> anyhow::Result<JobConfig> {
        let mut config = match &self.config {
            Some(path) => JobConfig::from_file(path)?,
            None => JobConfig::new(self.store.clone().unwrap_or_else(|| loupe_query::config::loupe_home().join("store"))),
        };
        if let Some(store) = &self.store {
            config.store = store.clone();
        }
        if !self.corpus.is_empty() {
            config.corpus = self.corpus.iter().map(CorpusSource::new).collect();
        }
        if config.corpus.is_empty() {
            config.corpus.push(CorpusSource::new(default_corpus()));
        }
        if let Some(field) = &self.text_field {
            config.corpus.iter_mut().for_each(|c| c.text_field = field.clone());
        }
        if !self.dictionary.is_empty() {
            config.dictionaries = self
                .dictionary
                .iter()
                .map(|d| match d.split_once('=') {
                    Some((id, path)) if !id.contains('/') => DictionarySpec { path: path.into(), id: Some(id.into()) },
                    _ => DictionarySpec { path: d.into(), id: None },
                })
                .collect();
        }
        if config.dictionaries.is_empty() {
            config.dictionaries.push(DictionarySpec { path: default_dictionary(), id: None });
        }
        let set = |field: &mut usize, value: Option<usize>| value.into_iter().for_each(|v| *field = v);
        set(&mut config.context, self.context);
        if self.batch_size.is_some() {
            config.batch_size = self.batch_size;
        }
        set(&mut config.top_k, self.top_k);
        set(&mut config.interval_samples, self.interval_samples);
        set(&mut config.checkpoint_every, self.checkpoint_every);
        if let Some(seed) = self.seed {
            config.seed = seed;
        }
        if self.max_tokens.is_some() {
            config.max_tokens = self.max_tokens;
        }
        // --device / LOUPE_DEVICE over the config's device.
        if let Some(device) = self.model.device {
            config.device = device;
        }
        if let Some(precision) = self.model.precision {
            config.precision = precision;
        }
        if self.model.model.is_some() {
            config.model = self.model.model.clone();
        }
        Ok(config)
    }

    pub fn prepare(&self) -> anyhow::Result<Job> {
        let config = self.config()?;
        let model_path = config.model.clone().unwrap_or_else(loupe_query::config::default_model_path);
        if !model_path.exists() {
            anyhow::bail!("model not found at {}: run scripts/setup.sh to install the default model, or pass --model", model_path.display());
        }
        let spinner = crate::output::spinner(format!("loading {} and {} dictionaries", model_path.display(), config.dictionaries.len()));
        let job = Job::prepare(config, &model_path).context("preparing the index job")?;
        spinner.finish_and_clear();
        Ok(job)
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(Action::Merge(merge)) = args.action {
        let job = merge.job.prepare()?;
        let report = job.merge(merge.shards, merge.job.append)?;
        return print_report(&job, &report, merge.job.json);
    }
    let shard = args.shard.as_deref().map(Shard::parse).transpose()?.unwrap_or(Shard::WHOLE);
    let job = args.job.prepare()?;
    eprintln!("batch: {}", job.batch());
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template("{spinner} indexing [{bar:30}] {bytes}/{total_bytes} of corpus  {msg}  ETA {eta}").expect("valid template").progress_chars("=> "));
    let start = Instant::now();
    let progress = |p: loupe_indexer::Progress, total: u64| {
        bar.set_length(total);
        bar.set_position(p.bytes_read);
        let rate = p.tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{} tokens, {rate:.0} tok/s", p.tokens));
    };
    let hooks = JobHooks { progress: &progress, interrupted: &interrupted };
    let report = job.run(RunOptions { shard, append: args.job.append, force: args.job.force }, &hooks);
    bar.finish_and_clear();
    let report = report?;
    print_report(&job, &report, args.job.json)
}

fn print_report(job: &Job, report: &RunReport, as_json: bool) -> anyhow::Result<()> {
    let store = job.store().to_string();
    let (status, detail) = match &report.outcome {
        Outcome::Committed(g) => ("committed", json!({"generation": g.generation, "versions": g.versions})),
        Outcome::UpToDate(g) => ("up_to_date", json!({"generation": g.generation, "versions": g.versions})),
        Outcome::ShardDone { shard, pending } => ("shard_done", json!({"shard": format!("{}/{}", shard.index, shard.count), "pending": pending})),
        Outcome::Interrupted => ("interrupted", json!({})),
    };
    let t = &report.timings;
    if as_json {
        return print_json(&json!({
            "status": status,
            "detail": detail,
            "store": store,
            "dictionaries": job.dictionary_ids(),
            "tokens": report.tokens,
            "windows": report.windows,
            "resumed_from_window": report.resumed_from,
            "seconds": {"wall": t.wall.as_secs_f64(), "forward": t.forward.as_secs_f64(), "encode": t.encode.as_secs_f64(),
                        "reduce": t.reduce.as_secs_f64(), "checkpoint": t.checkpoint.as_secs_f64(), "read": t.read.as_secs_f64(),
                        "finalize": report.finalize.as_secs_f64(), "commit": report.commit.as_secs_f64()},
        }));
    }
    let rate = report.tokens as f64 / t.wall.as_secs_f64().max(1e-9);
    match &report.outcome {
        Outcome::Committed(g) => {
            println!("indexed {} tokens ({} windows) at {rate:.0} tok/s into {store}, generation {}", report.tokens, report.windows, g.generation);
            println!("dictionaries: {}", job.dictionary_ids().join(", "));
            println!("next: `loupe serve --store {store}`, then `loupe search WORD` or `loupe show DICTIONARY/FEATURE`");
        }
        Outcome::UpToDate(g) => {
            println!("already indexed: generation {} of {store} is this exact run (same model, dictionaries, settings and corpus files); nothing to do (--force indexes again)", g.generation);
            println!("next: `loupe serve --store {store}`, then `loupe search WORD` or `loupe show DICTIONARY/FEATURE`");
        }
        Outcome::ShardDone { shard, pending } if pending.is_empty() => {
            println!("shard {}/{} done; all shards are done: run `loupe index merge --shards {}` with the same job", shard.index, shard.count, shard.count)
        }
        Outcome::ShardDone { shard, pending } => println!("shard {}/{} done; waiting for shards {pending:?}", shard.index, shard.count),
        Outcome::Interrupted => {
            println!("interrupted after {} tokens; the state is checkpointed: run the same command again to resume", report.tokens)
        }
    }
    Ok(())
}
