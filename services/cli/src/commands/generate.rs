use std::io::Write;
use std::time::Instant;

use loupe_engine::chat::{self, ChatMessage};
use loupe_engine::generate::{generate, SamplingParams};
use loupe_engine::Hooks;
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
    /// Print JSON for scripts (no streaming).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let model = args.model.load()?;
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
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        max_new_tokens: args.max_tokens,
        stop_tokens: tokenizer.eos_token_id().into_iter().collect(),
    };
    let start = Instant::now();
    let mut shown = String::new();
    let mut so_far = Vec::new();
    let mut stdout = std::io::stdout();
    let completion = generate(&model, &prompt, &params, &Hooks::new(), |id| {
        if args.json || params.stop_tokens.contains(&id) {
            return;
        }
        // Decode the whole completion so far: one token may hold part of a UTF-8 character.
        so_far.push(id);
        if let Ok(text) = tokenizer.decode(&so_far) {
            if !text.ends_with('\u{FFFD}') && text.len() > shown.len() && text.starts_with(&shown) {
                let _ = write!(stdout, "{}", &text[shown.len()..]);
                let _ = stdout.flush();
                shown = text;
            }
        }
    })?;
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
        }));
    }
    if answer.len() > shown.len() && answer.starts_with(&shown) {
        print!("{}", &answer[shown.len()..]);
    }
    println!();
    eprintln!("[{} tokens in {:.2}s, {:.1} tokens/s]", completion.len(), seconds, completion.len() as f64 / seconds);
    Ok(())
}
