use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use loupe_engine::chat::{self, ChatMessage};
use loupe_engine::generate::{Generation, SamplingParams};
use loupe_engine::monitor::{self, Action, Monitor, Running};
use loupe_engine::{FeatureLens, HookPoint, Hooks, Read};
use serde_json::json;

use crate::output::{print_json, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    /// The prompt: a user message in chat mode, else raw text to continue.
    pub prompt: String,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Continue the text as is instead of wrapping it in the model's chat template.
    #[arg(long)]
    pub raw: bool,
    /// System message for chat mode (the template's default when absent).
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Guardrail: a monitor definition file (repeatable) run on the generated tokens as
    /// they are made; a monitor whose action is "block" stops the generation at the token
    /// that crossed, the others are reported.
    #[arg(long = "monitor")]
    pub monitors: Vec<std::path::PathBuf>,
    /// Dictionary folder for feature detectors of --monitor (default: the embedded default).
    #[arg(long)]
    pub dictionary: Option<std::path::PathBuf>,
    /// Print JSON for scripts (no streaming).
    #[arg(long)]
    pub json: bool,
}

/// The guardrail monitors' running scores over the generated tokens.
struct Guard<'a> {
    lens: &'a FeatureLens,
    monitors: &'a [Monitor],
    read: Read,
    running: Vec<Vec<Running>>,
    fired: Vec<Option<usize>>,
}

impl<'a> Guard<'a> {
    fn new(lens: &'a FeatureLens, monitors: &'a [Monitor]) -> anyhow::Result<Self> {
        let detectors: Vec<_> = monitors.iter().flat_map(|m| m.detectors.iter().cloned()).collect();
        let read = monitor::read_for(lens, &detectors)?;
        let running = monitors.iter().map(|m| m.detectors.iter().map(|d| Running::new(d.aggregation)).collect()).collect();
        Ok(Guard { lens, monitors, read, running, fired: vec![None; monitors.len()] })
    }

    /// What each step captures: the probes' hooks and the dictionaries' inputs.
    fn hooks(&self) -> Hooks {
        let inputs = self.read.dictionaries.iter().map(|&at| self.lens.dictionaries()[at].dictionary.info().hook_in);
        Hooks::new().capture_all(self.read.hooks.captures()).capture_all(inputs)
    }

    /// Pushes the values of generated token `index` (`token`, captured `[1, d]`); returns the
    /// monitors that crossed with it, and whether one of them blocks.
    fn push(&mut self, captured: &BTreeMap<HookPoint, candle_core::Tensor>, token: u32, index: usize) -> anyhow::Result<(Vec<serde_json::Value>, bool)> {
        let mut encoded = Vec::new();
        for &at in &self.read.dictionaries {
            let entry = &self.lens.dictionaries()[at];
            let x = captured.get(&entry.dictionary.info().hook_in).context("the step captured the dictionary's input")?;
            encoded.push((entry.id.as_str(), entry.dictionary.encode(x)?));
        }
        let codes: Vec<(&str, &loupe_engine::SparseActs)> = encoded.iter().map(|(id, e)| (*id, &e.features)).collect();
        let in_scope = !self.lens.model().tokenizer()?.is_special(token);
        let (mut crossed, mut blocks) = (Vec::new(), false);
        for (i, m) in self.monitors.iter().enumerate() {
            for (running, d) in self.running[i].iter_mut().zip(&m.detectors) {
                running.push(monitor::token_values(&d.signal, &codes, captured, 0..1)?[0], in_scope);
            }
            if self.fired[i].is_some() {
                continue;
            }
            if let Some((d, detector)) = m.detectors.iter().enumerate().find(|(d, detector)| self.running[i][*d].score() > detector.threshold) {
                self.fired[i] = Some(index);
                blocks |= detector.action == Action::Block;
                crossed.push(json!({"monitor": m.name, "detector": d, "token": index, "score": self.running[i][d].score(), "threshold": detector.threshold, "action": detector.action}));
            }
        }
        Ok((crossed, blocks))
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (monitors, lens) = super::score::local_monitors(&args.monitors, args.model.load()?, args.dictionary.clone())?;
    let model = lens.model();
    let tokenizer = model.tokenizer()?;
    let chat_mode = !args.raw;
    let text = if chat_mode {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system.clone()));
        }
        messages.push(ChatMessage::user(args.prompt.clone()));
        chat::render(tokenizer.chat_template(), &messages, true)?
    } else {
        args.prompt.clone()
    };
    let prompt = tokenizer.encode(&text)?;
    let params = SamplingParams { temperature: args.temperature, top_p: args.top_p, seed: args.seed, max_new_tokens: args.max_tokens, stop_tokens: tokenizer.eos_token_id().into_iter().collect() };
    let start = Instant::now();
    let mut shown = String::new();
    let mut so_far = Vec::new();
    let mut stdout = std::io::stdout();
    let mut guard = Guard::new(&lens, &monitors)?;
    let hooks = guard.hooks();
    let mut generation = Generation::new(model, &prompt, 1, params.clone())?;
    let (mut completion, mut firings, mut blocked) = (Vec::new(), Vec::new(), false);
    // A token's own activations come with the next step, when it is fed.
    let mut pending: Option<u32> = None;
    while !generation.is_finished() && !blocked {
        let step = generation.step(model, &hooks)?;
        if let Some(token) = pending.take() {
            let (crossed, blocks) = guard.push(&step.captured, token, completion.len() - 1)?;
            firings.extend(crossed);
            if blocks {
                blocked = true;
                break;
            }
        }
        let Some(emitted) = step.tokens[0] else { continue };
        completion.push(emitted.token);
        if params.stop_tokens.contains(&emitted.token) {
            continue;
        }
        if !monitors.is_empty() {
            pending = Some(emitted.token);
        }
        if args.json {
            continue;
        }
        // Decode the whole completion so far: one token may hold part of a UTF-8 character.
        so_far.push(emitted.token);
        if let Ok(text) = tokenizer.decode(&so_far) {
            if !text.ends_with('\u{FFFD}') && text.len() > shown.len() && text.starts_with(&shown) {
                let _ = write!(stdout, "{}", &text[shown.len()..]);
                let _ = stdout.flush();
                shown = text;
            }
        }
    }
    if let (Some(token), false) = (pending, blocked) {
        let captured = generation.read_last(model, &hooks)?;
        let (crossed, blocks) = guard.push(&captured, token, completion.len() - 1)?;
        firings.extend(crossed);
        blocked = blocks;
    }
    let seconds = start.elapsed().as_secs_f64();
    let answer_ids: Vec<u32> = completion.iter().copied().filter(|id| !params.stop_tokens.contains(id)).collect();
    let answer = tokenizer.decode(&answer_ids)?;
    if args.json {
        return print_json(&json!({
            "prompt": text,
            "prompt_tokens": prompt.len(),
            "completion": answer,
            "completion_ids": completion,
            "tokens_per_second": completion.len() as f64 / seconds,
            "monitors_fired": firings,
            "blocked": blocked,
        }));
    }
    if answer.len() > shown.len() && answer.starts_with(&shown) {
        print!("{}", &answer[shown.len()..]);
    }
    println!();
    for f in &firings {
        eprintln!(
            "[monitor {} fired at generated token {} (score {:.3} > {:.3}){}]",
            f["monitor"].as_str().unwrap_or(""),
            f["token"],
            f["score"].as_f64().unwrap_or(0.0),
            f["threshold"].as_f64().unwrap_or(0.0),
            if f["action"] == "block" { ": generation blocked" } else { "" }
        );
    }
    eprintln!("[{} tokens in {:.2}s, {:.1} tokens/s]", completion.len(), seconds, completion.len() as f64 / seconds);
    Ok(())
}
