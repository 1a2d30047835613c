//! `loupe bench index`: indexing throughput, where the time goes, and peak memory as the
//! corpus grows. Each size runs in its own process so that peak memory is per run.

use std::process::Command;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use loupe_indexer::{JobHooks, Outcome, RunOptions, Shard};
use serde_json::json;

use crate::commands::index::JobArgs;
use crate::output::print_json;

#[derive(clap::Args)]
pub struct IndexArgs {
    /// Tokens of the smallest run.
    #[arg(long, default_value_t = 16_384)]
    pub tokens: u64,
    /// The largest run indexes this many times more tokens (peak memory should not grow).
    #[arg(long, default_value_t = 10)]
    pub scale: u64,
    /// Run one size in this process and print its JSON (used by the parent run).
    #[arg(long, hide = true)]
    pub single: bool,
    #[command(flatten)]
    pub job: JobArgs,
}

/// Peak resident memory of this process (VmHWM), in MiB.
fn peak_memory_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok()).map_or(0.0, |kb| kb / 1024.0)
}

fn single(args: &IndexArgs) -> anyhow::Result<serde_json::Value> {
    let temporary = tempfile::tempdir().context("creating a temporary store")?;
    let store = args.job.store.clone().unwrap_or_else(|| temporary.path().join("store"));
    let mut config = args.job.config()?;
    config.store = store;
    config.max_tokens = Some(args.tokens);
    let model_path = config.model.clone().unwrap_or_else(loupe_query::config::default_model_path);
    let job = loupe_indexer::Job::prepare(config, &model_path)?;
    let interrupted = AtomicBool::new(false);
    let report = job.run(RunOptions { shard: Shard::WHOLE, append: false, force: true }, &JobHooks { progress: &|_, _| {}, interrupted: &interrupted })?;
    anyhow::ensure!(matches!(report.outcome, Outcome::Committed(_)), "the benchmark run did not commit");
    let t = report.timings;
    let engine = (t.forward + t.encode).as_secs_f64();
    let total = t.wall.as_secs_f64() + report.finalize.as_secs_f64() + report.commit.as_secs_f64();
    Ok(json!({
        "tokens": report.tokens,
        "batch_windows": job.batch().windows(),
        "batch": job.batch().to_string(),
        "tokens_per_s": report.tokens as f64 / total,
        "seconds": {"total": total, "pass": t.wall.as_secs_f64(), "forward": t.forward.as_secs_f64(), "encode": t.encode.as_secs_f64(),
                    "reduce": t.reduce.as_secs_f64(), "checkpoint": t.checkpoint.as_secs_f64(), "read": t.read.as_secs_f64(), "tokenize": t.tokenize.as_secs_f64(),
                    "finalize": report.finalize.as_secs_f64(), "commit": report.commit.as_secs_f64()},
        "overhead_over_engine": total / engine - 1.0,
        "peak_memory_mib": peak_memory_mib(),
    }))
}

/// This command's job flags, without the size flags (which the parent sets per run).
fn forwarded_args() -> Vec<String> {
    let mut out = Vec::new();
    let mut args = std::env::args().skip(3);
    while let Some(arg) = args.next() {
        if arg == "--tokens" || arg == "--scale" {
            args.next();
        } else if !arg.starts_with("--tokens=") && !arg.starts_with("--scale=") && arg != "--json" {
            out.push(arg);
        }
    }
    out
}

pub fn run(args: IndexArgs) -> anyhow::Result<()> {
    if args.single {
        return print_json(&single(&args)?);
    }
    let exe = std::env::current_exe().context("finding the loupe binary")?;
    let mut runs = Vec::new();
    for tokens in [args.tokens, args.tokens * args.scale] {
        eprintln!("indexing {tokens} tokens...");
        let mut command = Command::new(&exe);
        command.args(["bench", "index", "--single", "--tokens", &tokens.to_string()]);
        command.args(forwarded_args());
        let out = command.output().context("running a benchmark size")?;
        anyhow::ensure!(out.status.success(), "benchmark run failed: {}", String::from_utf8_lossy(&out.stderr));
        runs.push(serde_json::from_slice::<serde_json::Value>(&out.stdout)?);
    }
    let (small, large) = (&runs[0], &runs[1]);
    let memory_ratio = large["peak_memory_mib"].as_f64().unwrap_or(0.0) / small["peak_memory_mib"].as_f64().unwrap_or(1.0);
    if args.job.json {
        return print_json(&json!({"runs": runs, "peak_memory_ratio": memory_ratio, "provenance": super::bench::provenance()}));
    }
    println!("{:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9}", "tokens", "tok/s", "forward", "encode", "tokenize", "reduce", "ckpt", "finalize", "commit", "overhead", "peak MiB");
    for r in &runs {
        let s = &r["seconds"];
        let total = s["total"].as_f64().unwrap_or(1.0);
        let share = |k: &str| format!("{:.1}%", 100.0 * s[k].as_f64().unwrap_or(0.0) / total);
        println!(
            "{:>9} {:>8.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8.1}% {:>9.0}",
            r["tokens"],
            r["tokens_per_s"].as_f64().unwrap_or(0.0),
            share("forward"),
            share("encode"),
            share("tokenize"),
            share("reduce"),
            share("checkpoint"),
            share("finalize"),
            share("commit"),
            100.0 * r["overhead_over_engine"].as_f64().unwrap_or(0.0),
            r["peak_memory_mib"].as_f64().unwrap_or(0.0)
        );
    }
    println!("shares are of each run's wall time; tokenize (the reader thread) and reduce run on threads of their own, overlapped with the model.");
    println!("overhead = wall time / (forward + encode) - 1: what reduction, checkpoints and writing add on top of the engine.");
    println!("peak memory grows {memory_ratio:.2}x for {}x the tokens", args.scale);
    Ok(())
}
