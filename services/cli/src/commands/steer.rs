//! `loupe steer` and `loupe vector`: gRPC clients of the server's Steering service.
//!
//! Interventions are written as a target followed by what to do to it, in order:
//! `--feature res-9/123 --add 8x --feature res-9/77 --ablate --vector happy --add 0.5r`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::ArgMatches;
use loupe_schema::proto::v1 as pb;
use loupe_schema::proto::v1::steering_client::SteeringClient;

use super::client::{parse_feature, runtime, status, Conn, ServerArgs};
use crate::output::print_json;

#[derive(clap::Args)]
pub struct Args {
    /// The prompt: a user message (chat template applied), or raw text with --raw.
    pub prompt: String,
    /// Target: a dictionary feature, DICTIONARY/FEATURE (repeatable; the operations after
    /// it apply to it).
    #[arg(long = "feature", value_name = "DICTIONARY/FEATURE", action = clap::ArgAction::Append)]
    pub features: Vec<String>,
    /// Target: a vector stored with `loupe vector create` (repeatable).
    #[arg(long = "vector", value_name = "NAME", action = clap::ArgAction::Append)]
    pub vectors: Vec<String>,
    /// Add S times the direction. Strengths: 8 (raw), 8x (times the feature's max activation
    /// in the store), 0.5r (a fraction of the hook's mean residual norm).
    #[arg(long = "add", value_name = "S", action = clap::ArgAction::Append, allow_hyphen_values = true)]
    pub add: Vec<String>,
    /// Set the feature's activation to V (its error term kept), e.g. --clamp 0 or --clamp 4x.
    #[arg(long = "clamp", value_name = "V", action = clap::ArgAction::Append, allow_hyphen_values = true)]
    pub clamp: Vec<String>,
    /// Set the feature's activation to 0.
    #[arg(long = "ablate", action = clap::ArgAction::Append, num_args = 0, default_missing_value = "0")]
    pub ablate: Vec<String>,
    /// Replace the component along the direction by S times its unit vector.
    #[arg(long = "orthogonal", value_name = "S", action = clap::ArgAction::Append, allow_hyphen_values = true)]
    pub orthogonal: Vec<String>,
    /// Limit the projection on the direction to LO:HI.
    #[arg(long = "cap", value_name = "LO:HI", action = clap::ArgAction::Append, allow_hyphen_values = true)]
    pub cap: Vec<String>,
    /// Positions edited: all, prompt, generated, or ranges such as 0-4,10-12.
    #[arg(long, default_value = "all")]
    pub positions: String,
    /// Edit special tokens (BOS, chat markers) too.
    #[arg(long)]
    pub include_special_tokens: bool,
    /// Continue the text as is instead of wrapping it in the chat template.
    #[arg(long)]
    pub raw: bool,
    #[arg(long)]
    pub system: Option<String>,
    /// Tokens per completion (0: the server's default).
    #[arg(long, default_value_t = 0)]
    pub max_tokens: u32,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop a completion at this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Which completions: both, steered, default.
    #[arg(long, default_value = "both")]
    pub output: String,
    /// Per-token log-probabilities (in --json).
    #[arg(long)]
    pub logprobs: bool,
    /// Guardrail: run this server monitor on the generated tokens (repeatable); a BLOCK
    /// monitor that fires stops that completion, and every firing is an alert.
    #[arg(long = "monitor")]
    pub monitors: Vec<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Subcommand)]
pub enum Vector {
    /// A DiffMean contrast vector: mean activation at HOOK over the positive texts minus the
    /// mean over the negative texts, stored by name.
    Create(CreateArgs),
    /// The stored vectors.
    List(ServerArgs),
    /// Delete a stored vector (its history stays in the store).
    Delete(DeleteArgs),
}

#[derive(clap::Args)]
pub struct CreateArgs {
    pub name: String,
    /// Texts: JSONL (a "text" field or a string per line) or plain text (one per line).
    #[arg(long)]
    pub positive: PathBuf,
    #[arg(long)]
    pub negative: PathBuf,
    #[arg(long, default_value = "blocks.9.hook_resid_post")]
    pub hook: String,
    #[arg(long, default_value = "")]
    pub description: String,
    /// Replace a vector of the same name.
    #[arg(long)]
    pub replace: bool,
    #[arg(long, env = "USER")]
    pub author: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Args)]
pub struct DeleteArgs {
    pub name: String,
    #[arg(long, env = "USER")]
    pub author: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

async fn connect(server: &ServerArgs) -> anyhow::Result<SteeringClient<Conn>> {
    Ok(SteeringClient::new(super::client::channel(&server.server, &server.credentials).await?))
}

/// A strength: `8` raw, `8x` max activations, `0.5r` residual-norm fractions.
pub fn parse_strength(text: &str) -> anyhow::Result<(f32, pb::Unit)> {
    let (number, unit) = if let Some(n) = text.strip_suffix('x') {
        (n, pb::Unit::MaxActivation)
    } else if let Some(n) = text.strip_suffix('r') {
        (n, pb::Unit::ResidualNorm)
    } else {
        (text, pb::Unit::Raw)
    };
    let value: f32 = number.trim().parse().with_context(|| format!("strength {text:?}: expected a number, optionally followed by x (max activations) or r (residual norm)"))?;
    if !value.is_finite() {
        bail!("strength {text:?} is not finite");
    }
    Ok((value, unit))
}

/// The interventions in command-line order: each operation applies to the target before it.
fn interventions(args: &Args, matches: &ArgMatches) -> anyhow::Result<Vec<pb::Intervention>> {
    enum Item<'a> {
        Target(pb::intervention::Target),
        Op(&'a str, &'a str),
    }
    let mut items: Vec<(usize, Item)> = Vec::new();
    let indexed = |id: &str| -> Vec<usize> { matches.indices_of(id).map(|i| i.collect()).unwrap_or_default() };
    for (index, f) in indexed("features").into_iter().zip(&args.features) {
        items.push((index, Item::Target(pb::intervention::Target::Feature(parse_feature(f)?))));
    }
    for (index, name) in indexed("vectors").into_iter().zip(&args.vectors) {
        items.push((index, Item::Target(pb::intervention::Target::VectorName(name.clone()))));
    }
    for (id, values) in [("add", &args.add), ("clamp", &args.clamp), ("ablate", &args.ablate), ("orthogonal", &args.orthogonal), ("cap", &args.cap)] {
        for (index, value) in indexed(id).into_iter().zip(values) {
            items.push((index, Item::Op(id, value)));
        }
    }
    items.sort_by_key(|(index, _)| *index);
    let (positions, ranges) = parse_positions(&args.positions)?;
    let mut target: Option<pb::intervention::Target> = None;
    let mut used = true;
    let mut out = Vec::new();
    for (_, item) in items {
        match item {
            Item::Target(t) => {
                if !used {
                    bail!("{} has no operation: follow it with --add, --clamp, --ablate, --orthogonal or --cap", describe(target.as_ref()));
                }
                target = Some(t);
                used = false;
            }
            Item::Op(op, value) => {
                let Some(t) = target.clone() else {
                    bail!("--{op} comes before any --feature or --vector: name the target first");
                };
                used = true;
                let mut iv = pb::Intervention { target: Some(t), positions: positions as i32, ranges: ranges.clone(), include_special_tokens: args.include_special_tokens, ..Default::default() };
                let (operation, (strength, unit)) = match op {
                    "add" => (pb::Operation::Add, parse_strength(value)?),
                    "clamp" => (pb::Operation::Clamp, parse_strength(value)?),
                    "ablate" => (pb::Operation::Ablate, (0.0, pb::Unit::Raw)),
                    "orthogonal" => (pb::Operation::Orthogonal, parse_strength(value)?),
                    _ => {
                        let (lo, hi) = value.split_once(':').with_context(|| format!("--cap {value:?}: expected LO:HI"))?;
                        let ((lo, lo_unit), (hi, hi_unit)) = (parse_strength(lo)?, parse_strength(hi)?);
                        if lo_unit != hi_unit {
                            bail!("--cap {value:?}: give both bounds in the same unit");
                        }
                        iv.cap_low = lo;
                        iv.cap_high = hi;
                        (pb::Operation::Cap, (0.0, lo_unit))
                    }
                };
                iv.operation = operation as i32;
                iv.strength = strength;
                iv.unit = unit as i32;
                out.push(iv);
            }
        }
    }
    if !used {
        bail!("{} has no operation: follow it with --add, --clamp, --ablate, --orthogonal or --cap", describe(target.as_ref()));
    }
    Ok(out)
}

fn describe(target: Option<&pb::intervention::Target>) -> String {
    match target {
        Some(pb::intervention::Target::Feature(f)) => {
            format!("--feature {}/{}", f.dictionary_id, f.feature)
        }
        Some(pb::intervention::Target::VectorName(n)) => format!("--vector {n}"),
        _ => "the target".into(),
    }
}

fn parse_positions(text: &str) -> anyhow::Result<(pb::Positions, Vec<pb::Range>)> {
    Ok(match text {
        "all" => (pb::Positions::All, Vec::new()),
        "prompt" => (pb::Positions::Prompt, Vec::new()),
        "generated" => (pb::Positions::Generated, Vec::new()),
        ranges => {
            let parse = |r: &str| -> anyhow::Result<pb::Range> {
                let (a, b) = r.split_once('-').with_context(|| format!("--positions {r:?}: expected all, prompt, generated or ranges like 0-4,10-12"))?;
                Ok(pb::Range { start: a.trim().parse()?, end: b.trim().parse()? })
            };
            (pb::Positions::Ranges, ranges.split(',').map(parse).collect::<anyhow::Result<_>>()?)
        }
    })
}

pub fn steer(args: Args, matches: &ArgMatches) -> anyhow::Result<()> {
    let interventions = interventions(&args, matches)?;
    let output = match args.output.as_str() {
        "both" => pb::Output::Both,
        "steered" => pb::Output::Steered,
        "default" => pb::Output::Default,
        other => bail!("--output {other:?}: expected both, steered or default"),
    };
    let (prompt, messages) = if args.raw {
        (args.prompt.clone(), Vec::new())
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(pb::ChatMessage { role: "system".into(), content: system.clone() });
        }
        messages.push(pb::ChatMessage { role: "user".into(), content: args.prompt.clone() });
        (String::new(), messages)
    };
    let request = pb::SteerRequest {
        prompt,
        messages,
        interventions,
        max_new_tokens: args.max_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        stop: args.stop.clone(),
        output: output as i32,
        logprobs: args.logprobs,
        monitors: args.monitors.clone(),
    };
    runtime()?.block_on(async {
        let mut client = connect(&args.server).await?;
        let r = client.steer(request).await.map_err(status)?.into_inner();
        if args.server.json {
            return print_json(&r);
        }
        print_side_by_side(&r);
        Ok(())
    })
}

/// The interventions as applied, then the default and steered completions in two columns,
/// then each targeted feature's mean activation over the generated tokens of each.
fn print_side_by_side(r: &pb::SteerResponse) {
    for i in &r.interventions {
        let op = pb::Operation::try_from(i.operation).map_or("?".to_string(), |o| o.as_str_name().trim_start_matches("OPERATION_").to_lowercase());
        let amount = match pb::Operation::try_from(i.operation) {
            Ok(pb::Operation::Cap) => format!("[{:.2}, {:.2}]", i.cap_low, i.cap_high),
            Ok(pb::Operation::Ablate) => String::new(),
            _ => format!("{:.2}", i.strength),
        };
        println!("{op} {amount} on {} at {} (raw units; {} prompt positions{})", i.target, i.hook, i.prompt_positions.len(), if i.edits_generated { " and every generated token" } else { "" });
    }
    let width = terminal_width().saturating_sub(3) / 2;
    let columns: Vec<(&str, Option<&pb::Completion>)> = [("default", r.default.as_ref()), ("steered", r.steered.as_ref())].into_iter().filter(|(_, c)| c.is_some()).collect();
    let width = if columns.len() == 1 { width * 2 + 3 } else { width };
    let wrapped: Vec<Vec<String>> = columns.iter().map(|(_, c)| wrap(&c.map(|c| c.text.clone()).unwrap_or_default(), width.max(20))).collect();
    println!();
    let headers: Vec<String> = columns.iter().map(|(name, c)| format!("── {name} ({} tokens, {}) ", c.map_or(0, |c| c.tokens.len()), c.map_or("", |c| c.stop_reason.as_str()))).collect();
    println!("{}", headers.iter().map(|h| format!("{h:─<width$}")).collect::<Vec<_>>().join(" │ "));
    let lines = wrapped.iter().map(Vec::len).max().unwrap_or(0);
    for line in 0..lines {
        let cells: Vec<String> = wrapped.iter().map(|w| format!("{:<width$}", w.get(line).map_or("", String::as_str))).collect();
        println!("{}", cells.join(" │ ").trim_end());
    }
    for (name, completion) in &columns {
        for a in completion.map(|c| c.alerts.as_slice()).unwrap_or_default() {
            println!("{name}: monitor {} fired at generated token {} (score {:.3} > {:.3}), alert {}", a.monitor, a.first_token, a.score, a.threshold, a.alert_id);
        }
    }
    let mut features: Vec<String> = Vec::new();
    for (name, completion) in &columns {
        let Some(c) = completion else { continue };
        let mut sums: Vec<(String, f32, usize)> = Vec::new();
        for t in &c.tokens {
            for f in &t.features {
                let key = f.feature.as_ref().map_or(String::new(), |f| format!("{}/{}", f.dictionary_id, f.feature));
                match sums.iter_mut().find(|(k, _, _)| *k == key) {
                    Some(s) => {
                        s.1 += f.activation;
                        s.2 += 1;
                    }
                    None => sums.push((key, f.activation, 1)),
                }
            }
        }
        for (key, sum, n) in sums {
            features.push(format!("{key} mean activation over {name} tokens: {:.2}", sum / n.max(1) as f32));
        }
    }
    if !features.is_empty() {
        println!();
        features.iter().for_each(|f| println!("{f}"));
    }
}

fn terminal_width() -> usize {
    std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()).unwrap_or(100)
}

/// Words of `text` in lines of at most `width` characters (newlines kept).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.split('\n') {
        let mut line = String::new();
        for word in paragraph.split(' ') {
            let mut word = word.to_string();
            while word.chars().count() > width {
                let head: String = word.chars().take(width).collect();
                word = word.chars().skip(width).collect();
                if !line.is_empty() {
                    lines.push(std::mem::take(&mut line));
                }
                lines.push(head);
            }
            if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&word);
        }
        lines.push(line);
    }
    lines
}

/// Texts of a file: JSONL (a "text" field, or a JSON string, per line) or plain text (one
/// per line); blank lines skipped.
pub fn read_texts(path: &Path) -> anyhow::Result<Vec<String>> {
    let content = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl" || e == "json");
    let mut texts = Vec::new();
    for (i, line) in content.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        if !jsonl {
            texts.push(line.to_string());
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
        match value.get("text").unwrap_or(&value) {
            serde_json::Value::String(text) => texts.push(text.clone()),
            _ => bail!("{} line {}: expected a string or an object with a \"text\" string", path.display(), i + 1),
        }
    }
    if texts.is_empty() {
        bail!("{} has no texts", path.display());
    }
    Ok(texts)
}

pub fn vector(command: Vector) -> anyhow::Result<()> {
    match command {
        Vector::Create(args) => {
            let request = pb::CreateVectorRequest {
                name: args.name.clone(),
                hook: args.hook.clone(),
                positive: read_texts(&args.positive)?,
                negative: read_texts(&args.negative)?,
                values: Vec::new(),
                replace: args.replace,
                description: args.description.clone(),
                author: args.author.clone(),
            };
            runtime()?.block_on(async {
                let mut client = connect(&args.server).await?;
                let r = client.create_vector(request).await.map_err(status)?.into_inner();
                if args.server.json {
                    return print_json(&r);
                }
                if let Some(v) = r.vector {
                    println!("stored vector {} at {} (width {}, norm {:.3})", v.name, v.hook, v.width, v.norm);
                }
                Ok(())
            })
        }
        Vector::List(server) => runtime()?.block_on(async {
            let mut client = connect(&server).await?;
            let r = client.list_vectors(pb::ListVectorsRequest {}).await.map_err(status)?.into_inner();
            if server.json {
                return print_json(&r);
            }
            for v in &r.vectors {
                let provenance: serde_json::Value = serde_json::from_str(&v.provenance_json).unwrap_or_default();
                println!("{}  {} width={} norm={:.3} {} by {} at {}", v.name, v.hook, v.width, v.norm, provenance["method"].as_str().unwrap_or("?"), v.author, v.created_at);
            }
            Ok(())
        }),
        Vector::Delete(args) => runtime()?.block_on(async {
            let mut client = connect(&args.server).await?;
            let r = client.delete_vector(pb::DeleteVectorRequest { name: args.name.clone(), author: args.author.clone() }).await.map_err(status)?.into_inner();
            if args.server.json {
                return print_json(&r);
            }
            println!("deleted vector {}", args.name);
            Ok(())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strengths_and_units() {
        assert_eq!(parse_strength("8x").unwrap(), (8.0, pb::Unit::MaxActivation));
        assert_eq!(parse_strength("-0.5r").unwrap(), (-0.5, pb::Unit::ResidualNorm));
        assert_eq!(parse_strength("3").unwrap(), (3.0, pb::Unit::Raw));
        assert!(parse_strength("lots").unwrap_err().to_string().contains("lots"));
        assert!(parse_strength("NaN").is_err());
    }

    fn parsed(argv: &[&str]) -> anyhow::Result<Vec<pb::Intervention>> {
        use clap::FromArgMatches;
        let command = <Args as clap::Args>::augment_args(clap::Command::new("steer"));
        let matches = command.try_get_matches_from(std::iter::once("steer").chain(argv.iter().copied()))?;
        interventions(&Args::from_arg_matches(&matches)?, &matches)
    }

    #[test]
    fn each_operation_applies_to_the_target_before_it() {
        let ivs = parsed(&["hi", "--feature", "res/1", "--add", "8x", "--clamp", "-2", "--vector", "happy", "--ablate", "--feature", "res/2", "--cap", "0r:3r"]).unwrap();
        let summary: Vec<(String, i32, f32, i32)> = ivs
            .iter()
            .map(|iv| {
                let target = match iv.target.as_ref().unwrap() {
                    pb::intervention::Target::Feature(f) => {
                        format!("{}/{}", f.dictionary_id, f.feature)
                    }
                    pb::intervention::Target::VectorName(n) => n.clone(),
                    _ => unreachable!(),
                };
                (target, iv.operation, iv.strength, iv.unit)
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("res/1".into(), pb::Operation::Add as i32, 8.0, pb::Unit::MaxActivation as i32),
                ("res/1".into(), pb::Operation::Clamp as i32, -2.0, pb::Unit::Raw as i32),
                ("happy".into(), pb::Operation::Ablate as i32, 0.0, pb::Unit::Raw as i32),
                ("res/2".into(), pb::Operation::Cap as i32, 0.0, pb::Unit::ResidualNorm as i32),
            ]
        );
        assert_eq!((ivs[3].cap_low, ivs[3].cap_high), (0.0, 3.0));
        let err = parsed(&["hi", "--add", "1", "--feature", "res/1"]).unwrap_err().to_string();
        assert!(err.contains("before any --feature"), "{err}");
        let err = parsed(&["hi", "--feature", "res/1", "--feature", "res/2", "--ablate"]).unwrap_err().to_string();
        assert!(err.contains("res/1 has no operation"), "{err}");
        assert!(parsed(&["hi", "--feature", "res/1", "--add", "1", "--positions", "3-1x"]).is_err());
    }

    #[test]
    fn wrapping_keeps_words_and_widths() {
        let lines = wrap("the quick brown fox jumps over the lazy dog", 10);
        assert!(lines.iter().all(|l| l.chars().count() <= 10), "{lines:?}");
        assert_eq!(lines.join(" "), "the quick brown fox jumps over the lazy dog");
    }
}
