//! `loupe train`: trains a TopK or BatchTopK SAE on a hook of the model over a corpus and
//! writes a SAELens v6 folder. Interrupt it at any time; the same command resumes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use loupe_corpus::TokenWindows;
use loupe_engine::HookPoint;
use loupe_train::{self as train, SaveDType, Sparsity, TrainConfig};

use crate::output::{default_corpus, spinner, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    /// Hook to train on, e.g. blocks.9.hook_resid_post.
    #[arg(long)]
    pub hook: String,
    /// Output folder (SAELens v6 layout); a checkpoint inside it is resumed.
    #[arg(long)]
    pub out: PathBuf,
    /// Corpus: JSONL ("text" field), Parquet, plain text (blank lines separate documents) or a
    /// folder of these (default: the demo corpus from setup).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    #[arg(long, default_value_t = 4608)]
    pub latents: usize,
    /// Active latents per token (per token for topk, on average for batchtopk).
    #[arg(long, default_value_t = 32)]
    pub k: usize,
    #[arg(long, value_enum, default_value = "topk")]
    pub sparsity: SparsityArg,
    /// Training tokens.
    #[arg(long, default_value_t = 1_000_000)]
    pub tokens: usize,
    #[arg(long, default_value_t = 1024)]
    pub batch_tokens: usize,
    #[arg(long, default_value_t = 128)]
    pub context: usize,
    #[arg(long, default_value_t = 4e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Windows per shuffle buffer (and per checkpoint).
    #[arg(long, default_value_t = 256)]
    pub buffer_windows: usize,
    /// Save weights as float16 (half the size) instead of float32.
    #[arg(long)]
    pub f16: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(clap::ValueEnum, Clone, Copy)]
pub enum SparsityArg {
    Topk,
    Batchtopk,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let hook: HookPoint = args.hook.parse()?;
    let model = args.model.load()?;
    let d_in = model.config().hook_width(hook).with_context(|| format!("hook {hook} is beyond the model's {} layers", model.config().n_layers))?;
    let corpus = args.corpus.clone().unwrap_or_else(default_corpus);
    let mut config = TrainConfig::new(hook, d_in, args.latents, args.k, args.tokens);
    config.sparsity = match args.sparsity {
        SparsityArg::Topk => Sparsity::TopK,
        SparsityArg::Batchtopk => Sparsity::BatchTopK,
    };
    config.batch_tokens = args.batch_tokens;
    config.context = args.context;
    config.lr = args.lr;
    config.seed = args.seed;
    config.buffer_windows = args.buffer_windows;
    config.dtype = if args.f16 { SaveDType::F16 } else { SaveDType::F32 };
    config.model_name = model.source().file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    config.dataset = corpus.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();

    let tokenizing = spinner(format!("tokenizing {}", corpus.display()));
    // Enough windows for the run (plus BOS positions), so a small run reads a small prefix.
    let windows_tokens = args.tokens / args.context.saturating_sub(1).max(1) * args.context + args.context * args.buffer_windows;
    let windows = TokenWindows::from_file(&corpus, model.tokenizer()?, args.context, Some(windows_tokens)).context("reading the corpus")?;
    tokenizing.finish_and_clear();
    let passes = args.tokens as f64 / (windows.len() * args.context.saturating_sub(1)).max(1) as f64;
    if passes > 1.0 {
        eprintln!("note: the corpus has {} windows; training makes {passes:.1} passes over it", windows.len());
    }

    let bar = ProgressBar::new(args.tokens as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} tokens {per_sec} eta {eta} | {msg}").expect("valid template"));
    // Ctrl-C stops after the current step; the last checkpoint stays and the same command resumes.
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    let summary = train::train(&model, &windows, &config, &args.out, |p| {
        if let Some(at) = p.resumed_at.filter(|_| bar.position() == 0) {
            bar.println(format!("resuming from the checkpoint at {at} tokens"));
            bar.reset_elapsed();
        }
        bar.set_position(p.tokens as u64);
        bar.set_message(format!("fvu {:.3} aux {:.3} L0 {:.1} dead {:.1}%", p.fvu, p.aux_loss, p.l0, 100.0 * p.dead_fraction));
        if bar.is_hidden() && p.step % 100 == 0 {
            eprintln!("step {} tokens {}/{} fvu {:.3} L0 {:.1} dead {:.1}%", p.step, p.tokens, p.total_tokens, p.fvu, p.l0, 100.0 * p.dead_fraction);
        }
        !interrupted.load(Ordering::SeqCst)
    })?;
    bar.finish();
    eprintln!(
        "wrote {} (step {}, last batch: fraction of variance unexplained {:.3}, L0 {:.1}, dead {:.1}%)",
        args.out.display(),
        summary.step,
        summary.fvu,
        summary.l0,
        100.0 * summary.dead_fraction
    );
    Ok(())
}
