use loupe_engine::{HookPoint, Hooks, Logits, Model, TokenBatch};
use serde_json::json;

use crate::output::{about_text, print_json_for, ModelArgs, TextArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub text: TextArgs,
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
    let texts = args.text.read()?;
    let model = args.model.load()?;
    for (i, (name, text)) in texts.iter().enumerate() {
        let report = activations(&model, &hooks, text, args.values).map_err(|e| about_text(e, name))?;
        if args.json {
            print_json_for(&report, args.text.many())?;
            continue;
        }
        if let Some(name) = name {
            println!("{}{name}", if i > 0 { "\n" } else { "" });
        }
        for hook in &hooks {
            let entry = &report["hooks"][hook.to_string()];
            println!("{hook}  shape {}", entry["shape"]);
            let pieces = report["tokens"].as_array().into_iter().flatten();
            for (piece, norm) in pieces.zip(entry["norms"].as_array().into_iter().flatten()) {
                println!("  {:>10.3}  {piece}", norm.as_f64().unwrap_or(f64::NAN));
            }
        }
    }
    Ok(())
}

/// One text's tokens and, per hook, the shape, each token's norm and (with `values`) the
/// activations.
fn activations(model: &Model, hooks: &[HookPoint], text: &str, values: bool) -> anyhow::Result<serde_json::Value> {
    let tokenizer = model.tokenizer()?;
    let ids = tokenizer.encode(text)?;
    if ids.is_empty() {
        anyhow::bail!("the text has no tokens");
    }
    let pieces = tokenizer.token_strings(&ids)?;
    let out = model.forward(&TokenBatch::single(&ids)?, &Hooks::new().capture_all(hooks.iter().copied()), Logits::None, None)?;
    let mut report = serde_json::Map::new();
    for hook in hooks {
        let activation = out.captured[hook].squeeze(0)?;
        let norms: Vec<f32> = activation.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
        let mut entry = json!({ "shape": out.captured[hook].dims(), "norms": norms });
        if values {
            entry["values"] = json!(activation.to_vec2::<f32>()?);
        }
        report.insert(hook.to_string(), entry);
    }
    Ok(json!({ "ids": ids, "tokens": pieces, "hooks": report }))
}
