//! Small helpers shared by the commands' human and JSON output.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use loupe_engine::{Compute, DeviceChoice, Model, Precision};

/// `--model` shared by every command that runs the model.
#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// GGUF file or Hugging Face folder (config.json + *.safetensors + tokenizer.json).
    /// Defaults to the embedded SmolLM2-135M-Instruct that scripts/setup.sh installs.
    #[arg(long, env = "LOUPE_MODEL")]
    pub model: Option<PathBuf>,
    /// Where the model and dictionaries compute: cpu (default), cuda or cuda:N (cuda needs
    /// the CUDA build, scripts/build_cuda.sh).
    #[arg(long, env = "LOUPE_DEVICE")]
    pub device: Option<DeviceChoice>,
    /// auto (default: f32 on the CPU, bf16 on a GPU), f32 or bf16.
    #[arg(long, env = "LOUPE_PRECISION")]
    pub precision: Option<Precision>,
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<Model> {
        let path = self.model.clone().unwrap_or_else(loupe_query::config::default_model_path);
        if !path.exists() {
            anyhow::bail!("model not found at {}: run scripts/setup.sh to install the default model, or pass --model", path.display());
        }
        let compute = self.compute()?;
        let spinner = spinner(format!("loading {} onto {}", path.display(), self.device.unwrap_or_default()));
        let model = Model::load_on(&path, &compute).context("loading the model")?;
        spinner.finish_and_clear();
        Ok(model)
    }
}

impl ModelArgs {
    /// The device and precision asked for, opened.
    pub fn compute(&self) -> anyhow::Result<Compute> {
        Ok(Compute::open(self.device.unwrap_or_default(), self.precision.unwrap_or_default())?)
    }
}

/// The demo corpus that scripts/setup.sh assembles.
pub fn default_corpus() -> PathBuf {
    loupe_query::config::loupe_home().join("corpora").join("demo.jsonl")
}

/// The embedded default dictionary, shipped in the repository's `dictionaries/`:
/// `$LOUPE_DICTIONARY` if set, else the copy under the current directory, else the one in
/// the checkout this binary was built from.
pub fn default_dictionary() -> PathBuf {
    const SHIPPED: &str = "dictionaries/smollm2-135m-instruct/blocks.9.hook_resid_post-topk-4608";
    if let Some(path) = std::env::var_os("LOUPE_DICTIONARY") {
        return path.into();
    }
    let local = PathBuf::from(SHIPPED);
    if local.exists() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(SHIPPED)
}

/// The held-out part of the demo corpus (for evaluation).
pub fn default_heldout_corpus() -> PathBuf {
    loupe_query::config::loupe_home().join("corpora").join("demo-heldout.jsonl")
}

/// A spinner on stderr (hidden when stderr is not a terminal).
pub fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_message(message);
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"));
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Stored or user text as a terminal may show it: control characters (escape sequences
/// start with one) and the invisible characters that reorder or hide text (bidirectional
/// overrides, zero-width marks) are written as visible escapes, so a label, a monitor name
/// or corpus text cannot move the cursor, recolour the terminal or disguise what it says.
/// Newlines and tabs become `\n` and `\t`.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    fn hidden(c: char) -> bool {
        c.is_control() || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
    }
    if !text.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if hidden(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `TEXT | --texts FILE`, shared by the commands that run the model on texts.
#[derive(clap::Args, Clone)]
pub struct TextArgs {
    /// Text to run through the model.
    #[arg(required_unless_present = "texts", conflicts_with = "texts")]
    pub text: Option<String>,
    /// Run on every text of a JSON-lines file instead (a string or a {"text": ...} object a
    /// line, as in a JSONL corpus), with one model load; `--json` then prints one line a text.
    #[arg(long, value_name = "FILE")]
    pub texts: Option<PathBuf>,
}

impl TextArgs {
    /// The texts asked for, in order, each from `--texts` with where it came from (for errors).
    pub fn read(&self) -> anyhow::Result<Vec<(Option<String>, String)>> {
        match (&self.text, &self.texts) {
            (Some(text), _) => Ok(vec![(None, text.clone())]),
            (None, Some(path)) => read_texts(path),
            (None, None) => anyhow::bail!("give a text, or --texts FILE"),
        }
    }

    /// Whether the texts came from `--texts` (JSON output is then one line per text).
    pub fn many(&self) -> bool {
        self.text.is_none()
    }
}

fn read_texts(path: &Path) -> anyhow::Result<Vec<(Option<String>, String)>> {
    let content = std::fs::read_to_string(path).with_context(|| format!("reading --texts {}", path.display()))?;
    let mut texts = Vec::new();
    for (i, line) in content.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
        let where_ = format!("--texts {} line {}", path.display(), i + 1);
        let text = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::String(text)) => text,
            Ok(serde_json::Value::Object(mut object)) => match object.remove("text") {
                Some(serde_json::Value::String(text)) => text,
                _ => anyhow::bail!("{where_}: expected a \"text\" field holding a string"),
            },
            Ok(_) => anyhow::bail!("{where_}: expected a JSON string or an object with a \"text\" string"),
            Err(e) => anyhow::bail!("{where_}: not JSON ({e}); expected a JSON string or an object with a \"text\" string"),
        };
        texts.push((Some(where_), text));
    }
    if texts.is_empty() {
        anyhow::bail!("--texts {}: no texts in the file (expected one JSON string or {{\"text\": ...}} object a line)", path.display());
    }
    Ok(texts)
}

/// An error about one of the texts, naming its line when it came from `--texts`.
pub fn about_text(error: anyhow::Error, name: &Option<String>) -> anyhow::Error {
    match name {
        Some(name) => error.context(name.clone()),
        None => error,
    }
}

/// `--json` output of a command that ran on one text (pretty) or on `--texts` (one line each).
pub fn print_json_for(value: &serde_json::Value, many: bool) -> anyhow::Result<()> {
    if many {
        println!("{}", serde_json::to_string(value)?);
        return Ok(());
    }
    print_json(value)
}

/// `--json` output: any serializable value (the gRPC responses derive it), pretty-printed.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn escapes_control_and_invisible_characters_only() {
        assert_eq!(printable("plain text, ünïcode ✓"), "plain text, ünïcode ✓");
        assert_eq!(printable("a\x00b\x1b[31m"), "a\\u{0}b\\u{1b}[31m");
        assert_eq!(printable("line\nnext\ttab"), "line\\nnext\\ttab");
        assert_eq!(printable("abc\u{202E}fed"), "abc\\u{202e}fed");
        assert_eq!(printable("\u{9b}2J"), "\\u{9b}2J", "C1 control sequence introducer");
    }
}
