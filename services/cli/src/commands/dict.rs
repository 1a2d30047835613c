//! `loupe dict info|eval`: what a dictionary is, and how good it is on a corpus.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use loupe_corpus::TokenWindows;
use loupe_engine::{Dictionary, FeatureLens, Read, Rows, TokenBatch};
use loupe_train::eval;
use serde_json::json;

use crate::output::{about_text, default_dictionary, default_heldout_corpus, print_json, print_json_for, spinner, ModelArgs, TextArgs};

#[derive(clap::Subcommand)]
pub enum Dict {
    /// Print a dictionary's format, architecture, hooks and sizes.
    Info(InfoArgs),
    /// Quality on a corpus: L0, explained variance, MSE, dead latents, CE loss recovered.
    Eval(EvalArgs),
    /// The features that fire on each token of a text, strongest first.
    Encode(EncodeArgs),
}

#[derive(clap::Args)]
pub struct EncodeArgs {
    #[command(flatten)]
    pub text: TextArgs,
    /// Dictionary folder (default: the embedded default dictionary).
    #[arg(long)]
    pub dictionary: Option<PathBuf>,
    /// Features shown per token.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(clap::Args)]
pub struct InfoArgs {
    /// Dictionary folder (SAELens, sparsify, Gemma Scope 2) or Gemma Scope params.npz.
    pub dictionary: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Dictionary folder (default: the embedded default dictionary).
    pub dictionary: Option<PathBuf>,
    /// Corpus: JSONL, Parquet, plain text or a folder (default: the held-out demo corpus).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Tokens to evaluate on.
    #[arg(long, default_value_t = 32_768)]
    pub tokens: usize,
    #[arg(long, default_value_t = 128)]
    pub context: usize,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(command: Dict) -> anyhow::Result<()> {
    match command {
        Dict::Info(args) => info(args),
        Dict::Eval(args) => evaluate(args),
        Dict::Encode(args) => encode(args),
    }
}

fn info(args: InfoArgs) -> anyhow::Result<()> {
    let dictionary = Dictionary::load(&args.dictionary).with_context(|| format!("loading dictionary {}", args.dictionary.display()))?;
    let info = dictionary.info();
    if args.json {
        return print_json(&json!({
            "format": info.format, "architecture": info.architecture,
            "hook_in": info.hook_in.to_string(), "hook_out": info.hook_out.to_string(),
            "d_in": info.d_in, "d_sae": info.d_sae, "d_out": info.d_out,
            "model_name": info.model_name, "activation": dictionary.activation().name(),
        }));
    }
    println!("{}", args.dictionary.display());
    println!("  format        {:?}", info.format);
    println!("  architecture  {}", info.architecture);
    println!("  reads         {} (d_in {})", info.hook_in, info.d_in);
    println!("  writes        {} (d_out {})", info.hook_out, info.d_out);
    println!("  latents       {}", info.d_sae);
    if let Some(model) = &info.model_name {
        println!("  model         {model}");
    }
    Ok(())
}

fn evaluate(args: EvalArgs) -> anyhow::Result<()> {
    let model = args.model.load()?;
    let path = args.dictionary.clone().unwrap_or_else(default_dictionary);
    let dictionary = Arc::new(Dictionary::load_for_model(&path, model.config()).with_context(|| format!("loading dictionary {}", path.display()))?);
    let corpus = args.corpus.clone().unwrap_or_else(default_heldout_corpus);
    let tokenizing = spinner(format!("tokenizing {}", corpus.display()));
    let windows = TokenWindows::from_file(&corpus, model.tokenizer()?, args.context, Some(args.tokens)).context("reading the corpus")?;
    tokenizing.finish_and_clear();
    let bar = ProgressBar::new(windows.len() as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} windows eta {eta}").expect("valid template"));
    let report = eval::evaluate(&model, dictionary, &windows, args.batch, |done| bar.inc(done as u64))?;
    bar.finish_and_clear();
    let value = serde_json::to_value(&report)?;
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&value)? + "\n").with_context(|| format!("writing {}", out.display()))?;
    }
    if args.json {
        return print_json(&value);
    }
    println!("{} on {} tokens of {}", report.dictionary, report.tokens, corpus.display());
    println!("  L0                   {:.2}", report.l0);
    println!("  explained variance   {:.4}", report.explained_variance);
    println!("  MSE                  {:.6}", report.mse);
    println!("  dead latents         {:.2}%", 100.0 * report.dead_fraction);
    println!("  CE loss clean        {:.4}", report.ce_loss_clean);
    println!("  CE loss spliced      {:.4}", report.ce_loss_spliced);
    println!("  CE loss zero-ablated {:.4}", report.ce_loss_zero_ablated);
    println!("  CE loss recovered    {:.4}", report.ce_loss_recovered);
    Ok(())
}

fn encode(args: EncodeArgs) -> anyhow::Result<()> {
    let texts = args.text.read()?;
    let model = args.model.load()?;
    let path = args.dictionary.clone().unwrap_or_else(default_dictionary);
    let dictionary = Dictionary::load_for_model(&path, model.config()).with_context(|| format!("loading dictionary {}", path.display()))?;
    let hook = dictionary.info().hook_in;
    let lens = FeatureLens::new(model, vec![("dictionary".into(), Arc::new(dictionary))])?;
    for (i, (name, text)) in texts.iter().enumerate() {
        let tokens = encode_text(&lens, text, args.top).map_err(|e| about_text(e, name))?;
        if args.json {
            print_json_for(&json!({ "dictionary": path, "hook": hook.to_string(), "tokens": tokens }), args.text.many())?;
            continue;
        }
        if let Some(name) = name {
            println!("{}{name}", if i > 0 { "\n" } else { "" });
        }
        println!("{} at {hook}: top {} features per token", path.display(), args.top);
        for token in &tokens {
            let features: Vec<String> =
                token["features"].as_array().map(|fs| fs.iter().map(|f| format!("#{}={:.2}", f["feature"], f["activation"].as_f64().unwrap_or(0.0))).collect()).unwrap_or_default();
            println!("  {:<14} {}", format!("{:?}", token["token"].as_str().unwrap_or_default()), features.join("  "));
        }
    }
    Ok(())
}

/// Each token of one text with its `top` strongest active features, strongest first.
fn encode_text(lens: &FeatureLens, text: &str, top: usize) -> anyhow::Result<Vec<serde_json::Value>> {
    let tokenizer = lens.model().tokenizer()?;
    let ids = tokenizer.encode(text)?;
    if ids.is_empty() {
        anyhow::bail!("the text has no tokens");
    }
    let pieces = tokenizer.token_strings(&ids)?;
    let out = lens.run(&TokenBatch::single(&ids)?, &Read::all(lens, Rows::All))?;
    let encoding = &out.codes[0];
    Ok(pieces
        .iter()
        .enumerate()
        .map(|(t, piece)| {
            let (indices, values) = encoding.features.token(t);
            let mut active: Vec<(u32, f32)> = indices.iter().copied().zip(values.iter().copied()).collect();
            active.sort_by(|a, b| b.1.total_cmp(&a.1));
            active.truncate(top);
            json!({ "token": piece, "features": active.iter().map(|(f, v)| json!({ "feature": f, "activation": v })).collect::<Vec<_>>() })
        })
        .collect())
}
