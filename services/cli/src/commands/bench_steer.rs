//! `loupe bench steer`: steered generation against plain generation on the same prompts and
//! seeds, in one run, and the default + steered pair as one batch of two against the two
//! run one after the other (what the Steer service does, against the naive way).
//!
//! The steered runs do what the service does per token: the ADD edit at every position, and
//! a read of the steered feature's activation (capture + encode) at each new token.

use std::time::Instant;

use anyhow::Context;
use loupe_engine::generate::{Generation, SamplingParams};
use loupe_engine::steering::{with_edits, Edit, Operation, Positions, Target};
use loupe_engine::{Dictionary, Hooks, Model};
use serde_json::json;

use crate::output::{default_dictionary, print_json, ModelArgs};

#[derive(clap::Args)]
pub struct SteerArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Dictionary whose feature is steered (default: the embedded default dictionary).
    #[arg(long)]
    pub dictionary: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 100)]
    pub feature: u32,
    /// Tokens generated per completion (no early stop, so every run makes the same number).
    #[arg(long, default_value_t = 48)]
    pub tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Timed repetitions (the best is kept).
    #[arg(long, default_value_t = 2)]
    pub repeats: usize,
    #[arg(long)]
    pub json: bool,
}

const PROMPTS: [&str; 4] = ["The old sailor looked at the sea and said", "My favourite recipe for a rainy day is", "The committee met on Tuesday to discuss", "Once upon a time, in a small village,"];

/// Seconds to generate `tokens` tokens after each prompt in `rows` rows with `hooks`,
/// reading `read`'s feature at each step when given.
fn generate_all(model: &Model, prompts: &[Vec<u32>], rows: usize, hooks: &Hooks, params: &SamplingParams, read: Option<(&Dictionary, u32)>) -> anyhow::Result<f64> {
    let start = Instant::now();
    for prompt in prompts {
        let mut generation = Generation::new(model, prompt, rows, params.clone())?;
        while !generation.is_finished() {
            let step = generation.step(model, hooks)?;
            if let Some((dictionary, _feature)) = read {
                let x = step.captured.get(&dictionary.info().hook_in).context("the steered hook was captured")?;
                std::hint::black_box(dictionary.encode(x)?);
            }
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

pub fn run(args: SteerArgs) -> anyhow::Result<()> {
    let model = args.model.load()?;
    let dictionary_dir = args.dictionary.clone().unwrap_or_else(default_dictionary);
    let dictionary = std::sync::Arc::new(Dictionary::load_for_model(&dictionary_dir, model.config()).with_context(|| format!("loading {}", dictionary_dir.display()))?);
    let tokenizer = model.tokenizer()?;
    let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|p| tokenizer.encode(p)).collect::<Result<_, _>>()?;
    let params = SamplingParams { temperature: args.temperature, top_p: 0.95, seed: 1, max_new_tokens: args.tokens, stop_tokens: Vec::new() };
    let edit = |rows: Option<Vec<usize>>| -> anyhow::Result<Edit> {
        let mut edit = Edit::new(Target::Feature { dictionary: dictionary.clone(), feature: args.feature }, Operation::Add { strength: 4.0 }, Positions::All)?;
        edit.rows = rows;
        Ok(edit)
    };
    let hook = dictionary.info().hook_in;
    let plain_hooks = Hooks::new();
    let steered_hooks = with_edits(Hooks::new().capture(hook), &[edit(None)?]);
    let pair_hooks = with_edits(Hooks::new().capture(hook), &[edit(Some(vec![1]))?]);
    let read = Some((dictionary.as_ref(), args.feature));
    let tokens = (prompts.len() * args.tokens) as f64;
    generate_all(&model, &prompts[..1], 1, &plain_hooks, &SamplingParams { max_new_tokens: 4, ..params.clone() }, None)?; // warm-up
    let best = |f: &dyn Fn() -> anyhow::Result<f64>| -> anyhow::Result<f64> {
        let mut best = f64::INFINITY;
        for _ in 0..args.repeats.max(1) {
            best = best.min(f()?);
        }
        Ok(best)
    };
    eprintln!("timing {} prompts x {} tokens, best of {}", prompts.len(), args.tokens, args.repeats);
    let plain = best(&|| generate_all(&model, &prompts, 1, &plain_hooks, &params, None))?;
    let steered = best(&|| generate_all(&model, &prompts, 1, &steered_hooks, &params, read))?;
    let pair = best(&|| generate_all(&model, &prompts, 2, &pair_hooks, &params, read))?;
    let (plain_tps, steered_tps) = (tokens / plain, tokens / steered);
    let (pair_tps, sequential_tps) = (2.0 * tokens / pair, 2.0 * tokens / (plain + steered));
    let report = json!({
        "prompts": prompts.len(),
        "tokens_per_completion": args.tokens,
        "plain_tokens_per_s": plain_tps,
        "steered_tokens_per_s": steered_tps,
        "steered_vs_plain": steered_tps / plain_tps,
        "pair_batch_tokens_per_s": pair_tps,
        "pair_sequential_tokens_per_s": sequential_tps,
        "pair_batch_vs_sequential": pair_tps / sequential_tps,
        "threads": candle_core::utils::get_num_threads(),
        "provenance": super::bench::provenance(),
    });
    if args.json {
        return print_json(&report);
    }
    println!("plain generation          {plain_tps:>8.1} tokens/s");
    println!("steered (ADD + read)      {steered_tps:>8.1} tokens/s   {:.2}x plain (target >= 0.9x)", steered_tps / plain_tps);
    println!("default + steered, 2 runs {sequential_tps:>8.1} tokens/s");
    println!("default + steered, 1 batch{pair_tps:>8.1} tokens/s   {:.2}x the two runs (target >= 1.5x)", pair_tps / sequential_tps);
    Ok(())
}
