//! `loupe score`: monitors on a text, with the spans where each one's signal crossed its
//! threshold highlighted and the features that explain it. With `--server`, the server's
//! live monitors score it (and record alerts); without, the committed defaults in
//! `monitors/` (or `--monitor FILE`) run here on the local model.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use loupe_engine::monitor::{run_detectors, Monitor, Signal};
use loupe_engine::{Dictionary, FeatureLens};
use loupe_query::monitoring::definition::{action_to_proto, severity_to_proto};
use loupe_query::monitoring::score::prepare;
use loupe_schema::proto::v1 as pb;
use loupe_schema::proto::v1::monitoring_client::MonitoringClient;

use super::client::{channel, runtime, status};
use crate::output::{default_dictionary, print_json, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    pub text: String,
    /// Score on this server with its live monitors (alerts are recorded there).
    #[arg(long)]
    pub server: Option<String>,
    #[command(flatten)]
    pub credentials: super::client::Credentials,
    /// With --server: only these monitors (repeatable; default: every live one).
    #[arg(long = "name")]
    pub names: Vec<String>,
    /// Here: monitor definition files (repeatable; default: every *.json in monitors/).
    #[arg(long = "monitor")]
    pub monitors: Vec<PathBuf>,
    /// Here: dictionary folder for feature detectors (default: the embedded default).
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
    let results = match &args.server {
        Some(server) => runtime()?.block_on(async {
            let mut client = MonitoringClient::new(channel(server, &args.credentials).await?);
            let request = pb::ScoreRequest { inputs: vec![pb::ScoreInput { text: args.text.clone(), ..Default::default() }], monitors: args.names.clone(), ..Default::default() };
            let r = client.score(request).await.map_err(status)?.into_inner();
            anyhow::Ok(r.results.into_iter().next().map(|t| t.monitors).unwrap_or_default())
        })?,
        None => score_here(&args)?,
    };
    if args.json {
        return print_json(&serde_json::json!({"text": args.text, "results": results}));
    }
    print_results(&args.text, &results, std::io::stdout().is_terminal());
    Ok(())
}

/// Monitor definition files, and the lens that runs them here: the model and, when a
/// detector reads features, the dictionary at `dictionary` (default: the embedded one).
pub fn local_monitors(files: &[PathBuf], model: loupe_engine::Model, dictionary: Option<PathBuf>) -> anyhow::Result<(Vec<Monitor>, FeatureLens)> {
    let mut monitors = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let monitor: Monitor = serde_json::from_str(&text).with_context(|| format!("{}: not a monitor definition ({{\"name\", \"detectors\": [...]}})", file.display()))?;
        monitor.validate().with_context(|| file.display().to_string())?;
        anyhow::ensure!(!monitor.detectors.iter().any(|d| matches!(d.signal, Signal::Vector { .. })), "{}: stored-vector detectors need the store: run them on a server", file.display());
        monitors.push(monitor);
    }
    let dictionary_dir = dictionary.unwrap_or_else(default_dictionary);
    let needs_dictionary = monitors.iter().flat_map(|m| &m.detectors).any(|d| !matches!(d.signal, Signal::Linear { .. }));
    let mut dictionaries = Vec::new();
    if needs_dictionary {
        let id = dictionary_dir.file_name().map_or("dictionary".into(), |n| n.to_string_lossy().into_owned());
        dictionaries.push((id, Arc::new(Dictionary::load_for_model(&dictionary_dir, model.config())?)));
    }
    Ok((monitors, FeatureLens::new(model, dictionaries)?))
}

/// Scores the text with monitor files on the local model.
fn score_here(args: &Args) -> anyhow::Result<Vec<pb::MonitorResult>> {
    let files = if args.monitors.is_empty() { default_monitors()? } else { args.monitors.clone() };
    let (monitors, lens) = local_monitors(&files, args.model.load()?, args.dictionary.clone())?;
    let tokenizer = lens.model().tokenizer()?;
    let text = prepare(tokenizer, pb::ScoreInput { text: args.text.clone(), ..Default::default() }, usize::MAX, usize::MAX, "text")?;
    let mut results = Vec::new();
    for m in &monitors {
        let mut best: Option<(f32, pb::MonitorResult)> = None;
        let mut fired = false;
        for d in &m.detectors {
            let (_, verdict) = run_detectors(&lens, std::slice::from_ref(d), &text.ids, &text.scope(d))?.remove(0);
            fired |= verdict.fired;
            let margin = if verdict.score.is_nan() { f32::NEG_INFINITY } else { verdict.score - d.threshold };
            if best.as_ref().is_none_or(|b| margin > b.0) {
                let result = pb::MonitorResult {
                    monitor: m.name.clone(),
                    score: verdict.score,
                    threshold: d.threshold,
                    spans: verdict.spans.iter().map(|s| text.span(s)).collect(),
                    severity: severity_to_proto(d.severity) as i32,
                    action: action_to_proto(d.action) as i32,
                    ..Default::default()
                };
                best = Some((margin, result));
            }
        }
        if let Some((_, mut result)) = best {
            result.fired = fired;
            results.push(result);
        }
    }
    Ok(results)
}

/// Characters of the scored text as the terminal shows them (newlines kept).
fn shown(chars: &[char]) -> String {
    let text: String = chars.iter().collect();
    text.split('\n').map(|line| crate::output::printable(line).into_owned()).collect::<Vec<_>>().join("\n")
}

/// The text with spans marked: red when printing to a terminal, [[...]] otherwise.
fn highlighted(text: &str, spans: &[pb::Span], color: bool) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut at = 0usize;
    let mut ranges: Vec<(usize, usize)> = spans.iter().map(|s| (s.char_start as usize, (s.char_end as usize).min(chars.len()))).collect();
    ranges.sort();
    for (start, end) in ranges {
        if start < at || start >= end {
            continue;
        }
        out.push_str(&shown(&chars[at..start]));
        let (open, close) = if color { ("\x1b[1;31m", "\x1b[0m") } else { ("[[", "]]") };
        out.push_str(open);
        out.push_str(&shown(&chars[start..end]));
        out.push_str(close);
        at = end;
    }
    out.push_str(&shown(&chars[at.min(chars.len())..]));
    out
}

fn print_results(text: &str, results: &[pb::MonitorResult], color: bool) {
    for r in results {
        let verdict = match (r.fired, color) {
            (true, true) => "\x1b[1;31mFIRED\x1b[0m",
            (true, false) => "FIRED",
            (false, _) => "quiet",
        };
        println!("{:<16} {verdict}  score {:.3} (threshold {:.3}){}", r.monitor, r.score, r.threshold, if r.alert_id.is_empty() { String::new() } else { format!("  alert {}", r.alert_id) });
        if !r.fired {
            continue;
        }
        println!("    {}", highlighted(text, &r.spans, color).replace('\n', "\n    "));
        for d in r.detectors.iter().filter(|d| d.fired && !d.explanation.is_empty()) {
            let features: Vec<String> = d
                .explanation
                .iter()
                .take(5)
                .map(|c| {
                    let f = c.feature.clone().unwrap_or_default();
                    format!("{}/{} {:+.2}{}", f.dictionary_id, f.feature, c.contribution, c.label.as_deref().map_or(String::new(), |l| format!(" ({l})")))
                })
                .collect();
            println!("    explained at token {} by: {}", d.explained_token, features.join(", "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_marked_by_characters() {
        let span = |a, b| pb::Span { char_start: a, char_end: b, ..Default::default() };
        assert_eq!(highlighted("héllo wörld", &[span(6, 11), span(0, 1)], false), "[[h]]éllo [[wörld]]");
        assert_eq!(highlighted("abc", &[span(1, 9)], false), "a[[bc]]");
    }
}
