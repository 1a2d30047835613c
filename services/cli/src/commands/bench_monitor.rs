//! `loupe bench monitor`: the Monitoring service under load, on a real server on loopback
//! over (a hard-linked copy of) the demo store with the default monitors:
//! - texts scored per second at 1, 16 and 64 concurrent clients, against the forward-only
//!   rate of the very batch shapes the batcher formed (the same passes replayed with the
//!   lens alone): the ratio is what tokenizing, batching, detectors, explanations, alerts
//!   and gRPC cost on top of the model;
//! - p50/p99 latency of one 512-token text at a time;
//! - search and dashboard p99 under a monitoring load against idle (target <= 2x).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use loupe_engine::monitor::Monitor;
use loupe_engine::{Hooks, Read, Rows, TokenBatch};
use loupe_schema::proto::v1 as pb;
use loupe_schema::proto::v1::monitoring_client::MonitoringClient;
use serde_json::json;
use tonic::transport::Channel;

use super::bench_serve::{bench_limits, measure, start, workload_of, Call};
use crate::output::print_json;

#[derive(clap::Args)]
pub struct MonitorArgs {
    /// An indexed store (default: the demo store that scripts/demo.sh builds); the bench
    /// works on a copy (large immutable files hard-linked), so the store itself is not written.
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Labelled JSONL whose texts are scored (default: $LOUPE_HOME/data/harmful.jsonl and
    /// offensive.jsonl, which setup fetches).
    #[arg(long)]
    pub data: Vec<PathBuf>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 8.0)]
    pub seconds: f64,
    #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
    pub clients: Vec<usize>,
    #[arg(long)]
    pub json: bool,
}

/// Files at least this large are hard-linked into the bench's copy of the store, smaller
/// ones copied.
const LINK_AT_BYTES: u64 = 1 << 20;

/// Copies `from` to `to`: the large files (Lance data and index files, tantivy segments,
/// all immutable once written) as hard links, so the copy costs little and the copy's
/// appends (new files) never reach the original; every small file (manifests, version
/// hints, pointers, locks, which a writer may rewrite in place) as a private copy.
fn link_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            link_tree(&entry.path(), &target)?;
        } else if entry.metadata()?.len() < LINK_AT_BYTES || std::fs::hard_link(entry.path(), &target).is_err() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn texts_of(paths: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let mut texts = Vec::new();
    for path in paths {
        for (text, _) in super::monitor::read_labelled(path)? {
            texts.push(text);
        }
    }
    anyhow::ensure!(!texts.is_empty(), "no texts in {paths:?}");
    // Interleave the sets (a fixed shuffle by a hash of the text) so every client sees both kinds.
    texts.sort_by_key(|t| t.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)));
    Ok(texts)
}

/// `clients` tasks scoring texts in a loop for `seconds`: (texts/s, tokens/s, p50 ms, p99 ms,
/// seconds elapsed until the last call returned).
async fn score_load(addr: &str, texts: &Arc<Vec<String>>, clients: usize, seconds: f64) -> anyhow::Result<(f64, f64, f64, f64, f64)> {
    let mut channels = Vec::new();
    for _ in 0..clients.clamp(1, 8) {
        channels.push(Channel::from_shared(addr.to_string())?.connect().await?);
    }
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = MonitoringClient::new(channels[c % channels.len()].clone());
        let texts = texts.clone();
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut tokens) = (Vec::new(), 0u64);
            let mut i = c * 7919;
            while Instant::now() < until {
                let t = Instant::now();
                let text = texts[i % texts.len()].clone();
                let r = client.score(pb::ScoreRequest { inputs: vec![pb::ScoreInput { text, ..Default::default() }], ..Default::default() }).await?.into_inner();
                latencies.push(t.elapsed().as_secs_f64() * 1e3);
                tokens += r.results.iter().map(|r| u64::from(r.tokens)).sum::<u64>();
                i += 1;
            }
            Ok::<_, anyhow::Error>((latencies, tokens))
        }));
    }
    let (mut all, mut tokens) = (Vec::new(), 0u64);
    for task in tasks {
        let (l, t) = task.await??;
        all.extend(l);
        tokens += t;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let pick = |p: f64| all.get(((all.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or(0.0);
    Ok((all.len() as f64 / elapsed, tokens as f64 / elapsed, pick(0.5), pick(0.99), elapsed))
}

pub fn run(args: MonitorArgs) -> anyhow::Result<()> {
    loupe_query::workers::lower_model_priority();
    let home = loupe_query::config::loupe_home();
    let source = args.store.clone().unwrap_or_else(|| home.join("demo-store"));
    anyhow::ensure!(source.join("CURRENT").exists(), "{} is not an indexed store: run scripts/demo.sh (or give --store)", source.display());
    let data = if args.data.is_empty() { vec![home.join("data/harmful.jsonl"), home.join("data/offensive.jsonl")] } else { args.data.clone() };
    let texts = Arc::new(texts_of(&data).context("the texts to score (scripts/setup.sh fetches the default ones)")?);
    let scratch = tempfile::tempdir()?;
    let store = scratch.path().join("store");
    link_tree(&source, &store).with_context(|| format!("copying {}", source.display()))?;
    let monitors_dir = if Path::new("monitors").is_dir() { PathBuf::from("monitors") } else { PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../monitors") };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut report = serde_json::Map::new();
    runtime.block_on(async {
        let running = start(&store, true, bench_limits()).await?;
        let mut client = MonitoringClient::new(Channel::from_shared(running.addr.clone())?.connect().await?);
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&monitors_dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let monitor: Monitor = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
                names.push(monitor.name.clone());
                // The store may hold them already (the demo stores the defaults): a new version.
                let definition = Some(loupe_query::monitoring::definition::to_proto(&monitor));
                match client.create_monitor(pb::CreateMonitorRequest { definition: definition.clone(), author: Some("bench".into()) }).await {
                    Err(e) if e.code() == tonic::Code::AlreadyExists => {
                        client.update_monitor(pb::UpdateMonitorRequest { definition, author: Some("bench".into()) }).await?;
                    }
                    other => {
                        other?;
                    }
                }
            }
        }
        eprintln!("monitors {names:?}; {} texts; {} s per measurement", texts.len(), args.seconds);
        let state = running.state.clone();
        let lens = state.engine()?;
        let batcher = state.monitoring.batcher()?;
        // What the monitors read: the forward-only replay reads the same.
        let live: Vec<_> = state.monitoring.registry.live().values().cloned().collect();
        let spec = loupe_query::monitoring::score::read_spec(&lens, &live)?;
        score_load(&running.addr, &texts, 1, 1.0).await?; // warm-up
        batcher.take_shapes();
        let mut rows = Vec::new();
        for &clients in &args.clients {
            let (texts_per_s, tokens_per_s, p50, p99, elapsed) = score_load(&running.addr, &texts, clients, args.seconds).await?;
            let shapes = batcher.take_shapes();
            // The same passes, the model and reads alone, replayed on this thread.
            let tokenizer = lens.model().tokenizer()?;
            let sample: Vec<Vec<u32>> = texts.iter().take(256).map(|t| {
                let mut ids: Vec<u32> = tokenizer.bos_token_id().into_iter().collect();
                ids.extend(tokenizer.encode(t).unwrap_or_default());
                ids
            }).collect();
            let read = Read { hooks: Hooks::new().capture_all(spec.hooks.iter().copied()), ..Read::only(spec.dictionaries.clone(), Rows::Real) };
            let (replay_tokens, replay_seconds) = {
                let lens = lens.clone();
                let shapes = shapes.clone();
                // On a thread of its own at the model workers' priority, as the server runs
                // its passes (its sequential parts yield to request threads there too).
                let (done, result) = tokio::sync::oneshot::channel();
                std::thread::spawn(move || {
                    loupe_query::workers::lower_this_thread();
                    let _ = done.send((|| -> anyhow::Result<(usize, f64)> {
                    let start = Instant::now();
                    let mut tokens = 0;
                    for (i, shape) in shapes.iter().enumerate() {
                        // The shape's texts: one of its width, the others sharing the rest of
                        // its real tokens (so padding and real tokens are as recorded).
                        let others = shape.texts.saturating_sub(1);
                        let rest = shape.tokens.saturating_sub(shape.width);
                        let sequences: Vec<Vec<u32>> = (0..shape.texts).map(|j| {
                            let base = &sample[(i + j) % sample.len()];
                            let len = if j == 0 { shape.width } else { (rest / others + usize::from(j <= rest % others)).clamp(1, shape.width) };
                            base.iter().cycle().take(len).copied().collect()
                        }).collect();
                        tokens += sequences.iter().map(Vec::len).sum::<usize>();
                        let batch = TokenBatch::right_padded(&sequences, lens.model().pad_token_id())?;
                        std::hint::black_box(lens.run(&batch, &read)?);
                        if start.elapsed().as_secs_f64() > 60.0 {
                            break;
                        }
                    }
                    Ok((tokens, start.elapsed().as_secs_f64()))
                    })());
                });
                result.await??
            };
            let forward_tokens_per_s = replay_tokens as f64 / replay_seconds.max(1e-9);
            let mean_batch = shapes.iter().map(|s| s.texts).sum::<usize>() as f64 / shapes.len().max(1) as f64;
            // The share of the run the model was busy with the passes.
            let busy = shapes.iter().map(|s| s.seconds).sum::<f64>() / elapsed;
            eprintln!(
                "{clients:>3} clients: {texts_per_s:>7.1} texts/s {tokens_per_s:>8.0} tokens/s scored (p50 {p50:.0} ms, p99 {p99:.0} ms); {} passes of {mean_batch:.1} texts, model busy {:.0}% of the time; forward only {forward_tokens_per_s:.0} tokens/s -> {:.2}x",
                shapes.len(),
                100.0 * busy,
                tokens_per_s / forward_tokens_per_s
            );
            rows.push(json!({
                "clients": clients, "texts_per_s": texts_per_s, "tokens_per_s": tokens_per_s, "p50_ms": p50, "p99_ms": p99,
                "passes": shapes.len(), "mean_texts_per_pass": mean_batch, "model_busy_fraction": busy,
                "forward_only_tokens_per_s": forward_tokens_per_s, "vs_forward_only": tokens_per_s / forward_tokens_per_s,
            }));
        }
        report.insert("throughput".into(), json!(rows));
        // One 512-token text at a time.
        let tokenizer = lens.model().tokenizer()?;
        let mut long = String::new();
        for t in texts.iter().cycle() {
            if tokenizer.encode(&long)?.len() >= 511 {
                break;
            }
            long.push_str(t);
            long.push(' ');
        }
        let mut ids = tokenizer.encode(&long)?;
        ids.truncate(511);
        let long = tokenizer.decode(&ids)?;
        let mut latencies = Vec::new();
        let until = Instant::now() + Duration::from_secs_f64(args.seconds);
        while Instant::now() < until || latencies.len() < 5 {
            let t = Instant::now();
            let r = client.score(pb::ScoreRequest { inputs: vec![pb::ScoreInput { text: long.clone(), ..Default::default() }], ..Default::default() }).await?.into_inner();
            latencies.push(t.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(r.results[0].tokens >= 500, "the long text is {} tokens", r.results[0].tokens);
        }
        latencies.sort_by(f64::total_cmp);
        let pick = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        eprintln!("512-token text: p50 {:.0} ms, p99 {:.0} ms over {} calls", pick(0.5), pick(0.99), latencies.len());
        report.insert("long_text".into(), json!({"tokens": 512, "calls": latencies.len(), "p50_ms": pick(0.5), "p99_ms": pick(0.99)}));
        // Search and dashboards while 16 clients keep the monitors scoring.
        let mut workload = workload_of(&running.addr).await?;
        workload.texts = texts.as_ref().clone();
        let workload = Arc::new(workload);
        let mut under_load = Vec::new();
        for (call, name) in [(Call::Search, "SearchFeatures"), (Call::Feature, "GetFeature")] {
            let idle = measure(&running.addr, call, 16, args.seconds, &workload).await?;
            let loader = {
                let (addr, workload, seconds) = (running.addr.clone(), workload.clone(), args.seconds + 1.0);
                tokio::spawn(async move { measure(&addr, Call::Score, 16, seconds, &workload).await })
            };
            tokio::time::sleep(Duration::from_millis(300)).await;
            let loaded = measure(&running.addr, call, 16, args.seconds, &workload).await?;
            let scoring = loader.await??;
            let ratio = loaded.1 / idle.1.max(1e-9);
            eprintln!("{name} p99 idle {:.2} ms, under monitoring load {:.2} ms: {ratio:.2}x (scoring {:.1} texts/s meanwhile)", idle.1, loaded.1, scoring.2);
            under_load.push(json!({"call": name, "clients": 16, "p50_idle_ms": idle.0, "p99_idle_ms": idle.1, "p50_loaded_ms": loaded.0, "p99_loaded_ms": loaded.1, "p99_ratio": ratio, "scoring_texts_per_s": scoring.2}));
        }
        report.insert("search_under_monitoring".into(), json!(under_load));
        report.insert("threads".into(), json!(candle_core::utils::get_num_threads()));
        report.insert("provenance".into(), super::bench::provenance());
        Ok::<_, anyhow::Error>(())
    })?;
    if args.json {
        return print_json(&serde_json::Value::Object(report));
    }
    println!("{:>7} {:>9} {:>10} {:>8} {:>8} {:>8} {:>12} {:>8}", "clients", "texts/s", "tokens/s", "p50 ms", "p99 ms", "texts/pass", "forward tok/s", "ratio");
    for r in report["throughput"].as_array().into_iter().flatten() {
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        println!(
            "{:>7} {:>9.1} {:>10.0} {:>8.0} {:>8.0} {:>10.1} {:>12.0} {:>7.2}x",
            r["clients"],
            f("texts_per_s"),
            f("tokens_per_s"),
            f("p50_ms"),
            f("p99_ms"),
            f("mean_texts_per_pass"),
            f("forward_only_tokens_per_s"),
            f("vs_forward_only")
        );
    }
    println!("ratio: tokens scored per second through gRPC against the forward pass alone on the same batch shapes (target >= 0.85x at 16+ clients)");
    let l = &report["long_text"];
    println!("512-token text, one at a time: p50 {:.0} ms, p99 {:.0} ms", l["p50_ms"].as_f64().unwrap_or(0.0), l["p99_ms"].as_f64().unwrap_or(0.0));
    for r in report["search_under_monitoring"].as_array().into_iter().flatten() {
        println!(
            "{} p99 idle {:.2} ms, under monitoring load {:.2} ms: {:.2}x (target <= 2x)",
            r["call"].as_str().unwrap_or(""),
            r["p99_idle_ms"].as_f64().unwrap_or(0.0),
            r["p99_loaded_ms"].as_f64().unwrap_or(0.0),
            r["p99_ratio"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
