use serde_json::json;

use crate::output::{print_json, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    /// Text to tokenize (special tokens such as <|im_start|> are recognised).
    pub text: String,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let model = args.model.load()?;
    let tokenizer = model.tokenizer()?;
    let ids = tokenizer.encode(&args.text)?;
    let pieces = tokenizer.token_strings(&ids)?;
    if args.json {
        return print_json(&json!({ "ids": ids, "tokens": pieces }));
    }
    println!("{} tokens", ids.len());
    for (id, piece) in ids.iter().zip(&pieces) {
        println!("{id:>7}  {piece:?}");
    }
    Ok(())
}
