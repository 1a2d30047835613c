use loupe_engine::{HookPoint, Hooks, Logits, TokenBatch};
use serde_json::json;

use crate::output::{print_json, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    /// Text to run through the model.
    pub text: String,
    /// Hook point(s) to read, e.g. blocks.9.hook_resid_post (repeatable).
    #[arg(long = "hook", required = true)]
    pub hooks: Vec<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print JSON for scripts (shapes, per-token norms, and the values with --values).
    #[arg(long)]
    pub json: bool,
    /// Include the activation values in the JSON output.
    #[arg(long, requires = "json")]
    pub values: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let hooks: Vec<HookPoint> = args.hooks.iter().map(|h| h.parse()).collect::<Result<_, _>>()?;
    let model = args.model.load()?;
    let tokenizer = model.tokenizer()?;
    let ids = tokenizer.encode(&args.text)?;
    if ids.is_empty() {
        anyhow::bail!("the text has no tokens");
    }
    let pieces = tokenizer.token_strings(&ids)?;
    let out = model.forward(&TokenBatch::single(&ids)?, &Hooks::new().capture_all(hooks.iter().copied()), Logits::None, None)?;
    let mut report = serde_json::Map::new();
    for hook in &hooks {
        let activation = out.captured[hook].squeeze(0)?;
        let norms: Vec<f32> = activation.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
        let mut entry = json!({ "shape": out.captured[hook].dims(), "norms": norms });
        if args.values {
            entry["values"] = json!(activation.to_vec2::<f32>()?);
        }
        report.insert(hook.to_string(), entry);
    }
    if args.json {
        return print_json(&json!({ "ids": ids, "tokens": pieces, "hooks": report }));
    }
    for hook in &hooks {
        let entry = &report[&hook.to_string()];
        println!("{hook}  shape {}", entry["shape"]);
        for (piece, norm) in pieces.iter().zip(entry["norms"].as_array().unwrap()) {
            println!("  {:>10.3}  {piece:?}", norm.as_f64().unwrap_or(f64::NAN));
        }
    }
    Ok(())
}
