//! `loupe monitor` and `loupe alerts`: monitors on a server (create from a definition file,
//! with an optional calibration on a control set; list, show, delete, evaluate on labelled
//! data with bootstrap intervals) and the alerts they raised.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use loupe_engine::monitor::Monitor;
use loupe_schema::proto::v1 as pb;
use loupe_schema::proto::v1::monitoring_client::MonitoringClient;
use loupe_train::probes::{split_of, Split};

use super::client::{channel, runtime, status, Conn, ServerArgs};
use crate::output::{print_json, printable};

#[derive(clap::Subcommand)]
pub enum MonitorCommand {
    /// Store a monitor from a definition file (JSON, as `loupe probe train --monitor` writes).
    Create(WriteArgs),
    /// A new version of a live monitor from a definition file.
    Update(WriteArgs),
    /// The live monitors (with --all, archived ones too).
    List {
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// A monitor's definition (the latest version, or --version N).
    Show {
        name: String,
        #[arg(long, default_value_t = 0)]
        version: u32,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Archive a monitor (its versions and alerts are kept).
    Delete {
        name: String,
        #[arg(long, env = "USER")]
        author: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// A monitor on labelled JSONL: AUROC, average precision, recall at 1% FPR, precision,
    /// recall and F1 at its threshold, with 95% bootstrap intervals; and the false-positive
    /// rate on a fresh control set (--control).
    Eval(EvalArgs),
}

#[derive(clap::Args)]
pub struct WriteArgs {
    /// Definition file: {"name", "description", "detectors": [...]}.
    pub file: PathBuf,
    /// Store it under this name instead of the file's.
    #[arg(long)]
    pub name: Option<String>,
    /// With create: when the name is taken, make this a new version of it instead.
    #[arg(long)]
    pub replace: bool,
    /// Calibrate every detector's threshold at this false-positive rate on --control.
    #[arg(long, requires = "control")]
    pub calibrate_fpr: Option<f64>,
    /// Control texts for calibration: JSONL ({"text", "label"}: the label-0 rows) or plain
    /// text, one per line.
    #[arg(long)]
    pub control: Option<PathBuf>,
    #[arg(long, env = "USER")]
    pub author: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    pub name: String,
    /// Labelled JSONL: {"text", "label": 0|1} per line.
    #[arg(long)]
    pub data: PathBuf,
    /// Which texts of --data: the held-out test split of `loupe probe train` (default), or all.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// A fresh control set (texts that should not fire; JSONL label-0 rows or plain lines):
    /// its false-positive rate at the monitor's threshold.
    #[arg(long)]
    pub control: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub version: u32,
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: u32,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Args)]
pub struct AlertsArgs {
    #[arg(long)]
    pub monitor: Option<String>,
    /// At least this severity: low, medium, high, critical.
    #[arg(long)]
    pub severity: Option<String>,
    /// RFC 3339 bounds, e.g. 2026-11-30T08:00:00Z.
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long)]
    pub caller: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Keep listening and print new alerts as they are raised.
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

async fn connect(server: &ServerArgs) -> anyhow::Result<MonitoringClient<Conn>> {
    Ok(MonitoringClient::new(channel(&server.server, &server.credentials).await?).max_decoding_message_size(64 << 20))
}

/// Labelled rows of a JSONL file ({"text", "label": 0|1|true|false}).
pub fn read_labelled(path: &Path) -> anyhow::Result<Vec<(String, bool)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
        let text = v["text"].as_str().with_context(|| format!("{} line {}: no \"text\" string", path.display(), i + 1))?;
        let label = match &v["label"] {
            serde_json::Value::Bool(b) => *b,
            serde_json::Value::Number(n) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => n.as_u64() == Some(1),
            other => anyhow::bail!("{} line {}: label is {other}; expected 0, 1, true or false", path.display(), i + 1),
        };
        rows.push((text.to_string(), label));
    }
    Ok(rows)
}

/// Control texts: the label-0 rows of JSONL, or every line of plain text.
pub fn read_control(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if text.trim_start().starts_with('{') {
        return Ok(read_labelled(path)?.into_iter().filter(|(_, l)| !l).map(|(t, _)| t).collect());
    }
    Ok(text.lines().filter(|l| !l.trim().is_empty()).map(String::from).collect())
}

/// A definition file as the API's message.
fn definition_of(args: &WriteArgs) -> anyhow::Result<pb::MonitorDefinition> {
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let mut monitor: Monitor = serde_json::from_str(&text).with_context(|| format!("{}: not a monitor definition ({{\"name\", \"detectors\": [...]}})", args.file.display()))?;
    if let Some(name) = &args.name {
        monitor.name = name.clone();
    }
    let mut definition = loupe_query::monitoring::definition::to_proto(&monitor);
    if let (Some(fpr), Some(control)) = (args.calibrate_fpr, &args.control) {
        let texts = read_control(control)?;
        anyhow::ensure!(!texts.is_empty(), "{}: no control texts", control.display());
        for d in &mut definition.detectors {
            d.calibrate = Some(pb::CalibrateRequest { target_fpr: fpr, control_set: control.display().to_string(), control_texts: texts.clone() });
            d.calibration = None;
        }
    }
    Ok(definition)
}

fn severity_name(s: i32) -> &'static str {
    match pb::Severity::try_from(s).unwrap_or(pb::Severity::Unspecified) {
        pb::Severity::Low => "low",
        pb::Severity::Medium | pb::Severity::Unspecified => "medium",
        pb::Severity::High => "high",
        pb::Severity::Critical => "critical",
    }
}

fn action_name(a: i32) -> &'static str {
    match pb::Action::try_from(a).unwrap_or(pb::Action::Unspecified) {
        pb::Action::Log => "log",
        pb::Action::Alert | pb::Action::Unspecified => "alert",
        pb::Action::Block => "block",
    }
}

fn print_info(m: &pb::MonitorInfo) {
    let d = m.definition.clone().unwrap_or_default();
    println!("{} v{}{}  by {} at {}  {}", printable(&d.name), m.version, if m.archived { " (archived)" } else { "" }, printable(&m.author), m.created_at, printable(&d.description));
    for (i, det) in d.detectors.iter().enumerate() {
        let signal = match det.signal.as_ref().and_then(|s| s.signal.as_ref()) {
            Some(pb::signal::Signal::Feature(f)) => {
                format!("feature {}/{}", f.dictionary_id, f.feature)
            }
            Some(pb::signal::Signal::Features(f)) => {
                format!("{} features of {}", f.weights.len(), f.dictionary_id)
            }
            Some(pb::signal::Signal::Linear(l)) => {
                format!("linear probe at {} ({} weights)", l.hook, l.weights.len())
            }
            Some(pb::signal::Signal::VectorName(n)) => format!("vector {n}"),
            None => "?".into(),
        };
        let aggregation = pb::Aggregation::try_from(det.aggregation).map(|a| a.as_str_name().trim_start_matches("AGGREGATION_").to_lowercase()).unwrap_or_default();
        let calibrated = det.calibration.as_ref().map_or(String::new(), |c| format!(" (calibrated at {:.1}% FPR on {} texts of {})", 100.0 * c.target_fpr, c.control_texts, c.control_set));
        let roles = if det.roles.is_empty() { String::new() } else { format!(" roles {}", det.roles.join(",")) };
        println!("  [{i}] {signal}, {aggregation}{roles}, threshold {:.4}{calibrated}, {} -> {}", det.threshold, severity_name(det.severity), action_name(det.action));
    }
}

pub fn run(command: MonitorCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        match command {
            MonitorCommand::Create(args) => {
                let definition = definition_of(&args)?;
                let mut client = connect(&args.server).await?;
                let r = match client.create_monitor(pb::CreateMonitorRequest { definition: Some(definition.clone()), author: args.author.clone() }).await {
                    Err(e) if e.code() == tonic::Code::AlreadyExists && args.replace => {
                        client.update_monitor(pb::UpdateMonitorRequest { definition: Some(definition), author: args.author.clone() }).await.map_err(status)?.into_inner()
                    }
                    other => other.map_err(status)?.into_inner(),
                };
                if args.server.json {
                    return print_json(&r);
                }
                print_info(&r);
            }
            MonitorCommand::Update(args) => {
                let definition = definition_of(&args)?;
                let mut client = connect(&args.server).await?;
                let r = client.update_monitor(pb::UpdateMonitorRequest { definition: Some(definition), author: args.author.clone() }).await.map_err(status)?.into_inner();
                if args.server.json {
                    return print_json(&r);
                }
                print_info(&r);
            }
            MonitorCommand::List { all, server } => {
                let r = connect(&server).await?.list_monitors(pb::ListMonitorsRequest { include_archived: all }).await.map_err(status)?.into_inner();
                if server.json {
                    return print_json(&r);
                }
                if r.monitors.is_empty() {
                    println!("no monitors (create one with `loupe monitor create FILE.json`)");
                }
                r.monitors.iter().for_each(print_info);
            }
            MonitorCommand::Show { name, version, server } => {
                let r = connect(&server).await?.get_monitor(pb::GetMonitorRequest { name, version }).await.map_err(status)?.into_inner();
                if server.json {
                    return print_json(&r);
                }
                print_info(&r);
            }
            MonitorCommand::Delete { name, author, server } => {
                let r = connect(&server).await?.delete_monitor(pb::DeleteMonitorRequest { name, author }).await.map_err(status)?.into_inner();
                if server.json {
                    return print_json(&r);
                }
                print_info(&r);
            }
            MonitorCommand::Eval(args) => eval(args).await?,
        }
        Ok(())
    })
}

fn estimate(e: &Option<pb::Estimate>) -> String {
    let e = e.clone().unwrap_or_default();
    format!("{:.3} ({:.3}-{:.3})", e.value, e.low, e.high)
}

async fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let rows = read_labelled(&args.data)?;
    let rows: Vec<(String, bool)> = match args.split.as_str() {
        "test" => rows.into_iter().filter(|(t, _)| split_of(t) == Split::Test).collect(),
        "all" => rows,
        other => anyhow::bail!("--split {other:?}: expected test or all"),
    };
    let mut client = connect(&args.server).await?;
    let examples = |rows: &[(String, bool)]| rows.iter().map(|(text, label)| pb::LabelledText { text: text.clone(), label: *label }).collect();
    let request = pb::EvaluateMonitorRequest { monitor: args.name.clone(), version: args.version, examples: examples(&rows), bootstrap: args.bootstrap, target_fpr: 0.01 };
    let r = client.evaluate_monitor(request).await.map_err(status)?.into_inner();
    let control = match &args.control {
        Some(path) => {
            let texts = read_control(path)?;
            anyhow::ensure!(!texts.is_empty(), "{}: no control texts", path.display());
            let rows: Vec<(String, bool)> = texts.into_iter().map(|t| (t, false)).collect();
            let request = pb::EvaluateMonitorRequest { monitor: args.name.clone(), version: args.version, examples: examples(&rows), bootstrap: args.bootstrap, target_fpr: 0.01 };
            Some((path.display().to_string(), rows.len(), client.evaluate_monitor(request).await.map_err(status)?.into_inner()))
        }
        None => None,
    };
    if args.server.json {
        let control = control.as_ref().map(|(path, n, c)| serde_json::json!({"control": path, "texts": n, "fpr": c.fpr}));
        return print_json(&serde_json::json!({"evaluation": r, "split": args.split, "data": args.data, "fresh_control": control}));
    }
    println!("{} v{} on {} ({} split): {} positive, {} negative texts; 95% bootstrap intervals", r.monitor, r.version, args.data.display(), args.split, r.positives, r.negatives);
    for d in &r.detectors {
        println!("  detector {} (threshold {:.4})", d.detector, d.threshold);
        println!("    AUROC              {}", estimate(&d.auroc));
        println!("    average precision  {}", estimate(&d.average_precision));
        println!("    recall at 1% FPR   {}", estimate(&d.recall_at_fpr));
        println!("    at the threshold   precision {}  recall {}  F1 {}  FPR {}", estimate(&d.precision), estimate(&d.recall), estimate(&d.f1), estimate(&d.fpr));
    }
    if let Some((path, n, c)) = &control {
        println!("  fresh control set {path}: {n} texts, false-positive rate {}", estimate(&c.fpr));
    }
    Ok(())
}

fn print_alert(a: &pb::Alert, color: bool) {
    let severity = severity_name(a.severity);
    let tag = if color { format!("\x1b[1;31m{severity}\x1b[0m") } else { severity.to_string() };
    let spans: Vec<String> = a.spans.iter().take(3).map(|s| format!("{:?}", s.text)).collect();
    println!(
        "{}  {tag:<8} {} v{}  score {:.3} > {:.3}  {}  caller {}  id {}{}",
        a.created_at,
        printable(&a.monitor),
        a.version,
        a.score,
        a.threshold,
        action_name(a.action),
        printable(&a.caller),
        a.alert_id,
        if spans.is_empty() { String::new() } else { format!("  at {}", spans.join(", ")) }
    );
}

pub fn alerts(args: AlertsArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let min_severity = match args.severity.as_deref() {
            None => pb::Severity::Unspecified,
            Some("low") => pb::Severity::Low,
            Some("medium") => pb::Severity::Medium,
            Some("high") => pb::Severity::High,
            Some("critical") => pb::Severity::Critical,
            Some(other) => {
                anyhow::bail!("--severity {other:?}: expected low, medium, high or critical")
            }
        } as i32;
        let mut client = connect(&args.server).await?;
        let color = std::io::stdout().is_terminal();
        if args.follow {
            let mut stream = client.subscribe_alerts(pb::SubscribeAlertsRequest { monitor: args.monitor.clone().unwrap_or_default(), min_severity }).await.map_err(status)?.into_inner();
            while let Some(alert) = stream.message().await.map_err(status)? {
                if args.server.json {
                    print_json(&alert)?;
                } else {
                    print_alert(&alert, color);
                }
            }
            return Ok(());
        }
        let request = pb::ListAlertsRequest {
            monitor: args.monitor.clone().unwrap_or_default(),
            min_severity,
            since: args.since.clone().unwrap_or_default(),
            until: args.until.clone().unwrap_or_default(),
            caller: args.caller.clone().unwrap_or_default(),
            limit: args.limit,
            page_token: String::new(),
        };
        let r = client.list_alerts(request).await.map_err(status)?.into_inner();
        if args.server.json {
            return print_json(&r);
        }
        if r.alerts.is_empty() {
            println!("no alerts");
        }
        r.alerts.iter().for_each(|a| print_alert(a, color));
        if !r.next_page_token.is_empty() {
            println!("(more: raise --limit or narrow with --since/--monitor)");
        }
        Ok(())
    })
}
