//! `loupe score`: run monitors (definitions written by `loupe probe train --monitor`, or the
//! committed defaults in `monitors/`) on a text with the model here, and show where each
//! one's signal crossed its threshold.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use loupe_engine::monitor::{run_detectors, Detector, Signal};
use loupe_engine::{Dictionary, FeatureLens};
use serde_json::json;

use crate::output::{default_dictionary, print_json, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    pub text: String,
    /// Monitor definitions (repeatable; default: every *.json in the repository's monitors/).
    #[arg(long = "monitor")]
    pub monitors: Vec<PathBuf>,
    /// Dictionary folder for feature detectors (default: the embedded default).
    #[arg(long)]
    pub dictionary: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub json: bool,
}

/// The committed default monitors.
fn default_monitors() -> anyhow::Result<Vec<PathBuf>> {
    let local = PathBuf::from("monitors");
    let dir = if local.is_dir() { local } else { PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../monitors") };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {} (give --monitor FILE)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    Ok(files)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(!args.text.trim().is_empty(), "the text is empty: give the text to score");
    let files = if args.monitors.is_empty() { default_monitors()? } else { args.monitors.clone() };
    let mut monitors = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?;
        let detectors: Vec<Detector> = serde_json::from_value(value["detectors"].clone()).with_context(|| format!("{}: \"detectors\" is not a list of detectors", file.display()))?;
        anyhow::ensure!(!detectors.is_empty(), "{}: \"detectors\" is empty", file.display());
        monitors.push((value["name"].as_str().unwrap_or("monitor").to_string(), detectors));
    }
    let model = args.model.load()?;
    let dictionary_dir = args.dictionary.clone().unwrap_or_else(default_dictionary);
    let needs_dictionary = monitors.iter().flat_map(|(_, d)| d).any(|d| !matches!(d.signal, Signal::Linear { .. }));
    let mut dictionaries = Vec::new();
    if needs_dictionary {
        let id = dictionary_dir.file_name().map_or("dictionary".into(), |n| n.to_string_lossy().into_owned());
        dictionaries.push((id, Arc::new(Dictionary::load_for_model(&dictionary_dir, model.config())?)));
    }
    let lens = FeatureLens::new(model, dictionaries)?;
    let tokenizer = lens.model().tokenizer()?;
    let mut ids: Vec<u32> = tokenizer.bos_token_id().into_iter().collect();
    ids.extend(tokenizer.encode(&args.text)?);
    // BOS and other special tokens do not count (as in training).
    let in_scope: Vec<bool> = ids.iter().map(|&t| !tokenizer.is_special(t)).collect();
    // Byte range of each token in the text, from the decoded prefixes.
    let mut ends = Vec::with_capacity(ids.len());
    for t in 0..ids.len() {
        ends.push(tokenizer.decode(&ids[..=t])?.len());
    }
    let range = |t: usize| -> (usize, usize) { (if t == 0 { 0 } else { ends[t - 1] }, ends[t]) };
    let decoded = tokenizer.decode(&ids)?;
    let mut report = Vec::new();
    for (name, detectors) in &monitors {
        let results = run_detectors(&lens, detectors, &ids, &in_scope)?;
        for (detector, (_, verdict)) in detectors.iter().zip(results) {
            let spans: Vec<serde_json::Value> = verdict
                .spans
                .iter()
                .map(|s| {
                    let (start, end) = (range(s.start).0, range(s.end - 1).1);
                    json!({"tokens": [s.start, s.end], "bytes": [start, end], "text": decoded.get(start..end).unwrap_or(""), "peak_token": s.peak, "peak_value": s.peak_value})
                })
                .collect();
            report.push(json!({"monitor": name, "score": verdict.score, "threshold": detector.threshold, "fired": verdict.fired, "spans": spans}));
        }
    }
    if args.json {
        return print_json(&json!({"text": args.text, "results": report}));
    }
    let color = std::io::stdout().is_terminal();
    for r in &report {
        let fired = r["fired"].as_bool().unwrap_or(false);
        let verdict = if fired { if color { "\x1b[1;31mFIRED\x1b[0m" } else { "FIRED" } } else { "quiet" };
        println!("{:<12} {verdict}  score {:.3} (threshold {:.3})", r["monitor"].as_str().unwrap_or(""), r["score"].as_f64().unwrap_or(0.0), r["threshold"].as_f64().unwrap_or(0.0));
        if fired {
            for s in r["spans"].as_array().into_iter().flatten().take(5) {
                println!("    tokens {}-{}: {:?} (peak {:.3})", s["tokens"][0], s["tokens"][1], s["text"].as_str().unwrap_or(""), s["peak_value"].as_f64().unwrap_or(0.0));
            }
        }
    }
    Ok(())
}
