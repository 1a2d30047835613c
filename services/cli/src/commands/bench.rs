//! `loupe bench forward`: forward-pass throughput as a fraction of this machine's measured
//! f32 matmul peak, and against transformers (torch) timed in the same run.

use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::Context;
use std::sync::Arc;

use loupe_engine::dictionary::{Activation, DictionaryParts, Format, InputNorm};
use loupe_engine::{Dictionary, DictionaryInfo, FeatureLens, HookPoint, Hooks, Logits, Model, Read as LensRead, Rows, TokenBatch};
use serde_json::json;

use crate::output::{print_json, ModelArgs};

#[derive(clap::Subcommand)]
pub enum Bench {
    /// Forward-pass tokens/s and GFLOP/s vs the matmul peak (to a middle layer and with logits).
    Forward(ForwardArgs),
    /// Dictionary encode (and sparse decode) tokens/s and GFLOP/s vs the matmul peak.
    Encode(EncodeArgs),
    /// Indexing tokens/s, time shares (forward, encode, reduce, write) and peak memory.
    Index(super::bench_index::IndexArgs),
    /// A synthetic store of real shapes (or 1M wide features): open time, search latency,
    /// dashboard reads, vector search speed and recall@10.
    Store(super::bench_store::StoreArgs),
    /// gRPC latency and QPS with concurrent clients on loopback, and search and dashboards
    /// under model load (TopFeaturesForText and Steer).
    Serve(super::bench_serve::ServeArgs),
    /// Steered generation vs plain generation, and the default + steered pair as one batch
    /// vs two runs.
    Steer(super::bench_steer::SteerArgs),
    /// The Monitoring service: texts scored per second at 1/16/64 clients against the
    /// forward pass alone on the same batch shapes, a 512-token text's latency, and search
    /// and dashboard latency under a monitoring load.
    Monitor(super::bench_monitor::MonitorArgs),
}

#[derive(clap::Args)]
pub struct EncodeArgs {
    /// Dictionary folder (default: the embedded default dictionary).
    pub dictionary: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Tokens per encode call (activations of real text from the model).
    #[arg(long, default_value_t = 4096)]
    pub tokens: usize,
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Batch sizes (comma-separated): 1 and 8 are the server's shapes, 32 the indexer's.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8, 32])]
    pub batch: Vec<usize>,
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// The shallow measurement stops after this layer.
    #[arg(long, default_value_t = 15)]
    pub layer: usize,
    /// Timed repetitions of each measurement at least, loupe's and transformers' in turn (the
    /// best of each is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// ...and more, until each side has run this many seconds of a measurement (at most 100
    /// runs): a 1 x 128 pass takes ~0.1 s.
    #[arg(long, default_value_t = 2.0)]
    pub min_seconds: f64,
    /// Reference script timing transformers on the same batches (run with --serve, one pass
    /// per request, alternating with loupe's); skipped if python/torch are missing.
    #[arg(long, default_value = "reference/bench_transformers.py")]
    pub reference: PathBuf,
    /// Do not run the transformers comparison.
    #[arg(long)]
    pub no_reference: bool,
    /// Also time the forward pass with a dictionary encode through the feature lens: the
    /// default dictionary (or --dictionary) and a random TopK dictionary of --wide latents at
    /// --layer (what reference/bench_torch_gpu.py times in PyTorch).
    #[arg(long)]
    pub encode: bool,
    /// Dictionary for --encode (default: the embedded default dictionary).
    #[arg(long, requires = "encode")]
    pub dictionary: Option<PathBuf>,
    /// Latents of the random wide TopK dictionary of --encode.
    #[arg(long, default_value_t = 65_536, requires = "encode")]
    pub wide: usize,
    /// Skip the matmul peak measurement (no fraction of peak): for profiling the passes alone.
    #[arg(long)]
    pub no_peak: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Forward(args) => forward(args),
        Bench::Encode(args) => encode(args),
        Bench::Index(args) => super::bench_index::run(args),
        Bench::Store(args) => super::bench_store::run(args),
        Bench::Serve(args) => super::bench_serve::run(args),
        Bench::Steer(args) => super::bench_steer::run(args),
        Bench::Monitor(args) => super::bench_monitor::run(args),
    }
}

/// Most timed runs of one measurement, whatever `--min-seconds` asks.
const MAX_RUNS: usize = 100;

struct Timing {
    batch: usize,
    name: String,
    seconds: f64,
    gflop: f64,
    /// transformers' best on the same case, timed in turn with loupe's runs.
    reference_tokens_per_s: Option<f64>,
    /// Timed runs of each side.
    runs: usize,
}

fn forward(args: ForwardArgs) -> anyhow::Result<()> {
    let model = args.model.load()?;
    let config = model.config().clone();
    if args.layer >= config.n_layers {
        anyhow::bail!("--layer {} is beyond the model's last layer ({})", args.layer, config.n_layers - 1);
    }
    if args.batch.is_empty() || args.batch.contains(&0) || args.seq == 0 {
        anyhow::bail!("--batch takes sizes of at least 1 (e.g. 1,8,32) and --seq at least 1");
    }
    if args.encode && args.wide == 0 {
        anyhow::bail!("--wide takes a number of latents of at least 1 (e.g. 65536)");
    }
    let lens = FeatureLens::new(model, if args.encode { encode_dictionaries(&args, &config)? } else { Vec::new() })?;
    let model = lens.model();
    let threads = rayon_threads();
    let compute = model.compute().clone();
    // Loaded first, so that its start does not share the CPU with the peak measurement.
    let mut reference = if args.no_reference { Err(anyhow::anyhow!("disabled by --no-reference")) } else { Transformers::start(&args, &model, threads) };
    // The peak in the dtype the model computes in, where it computes (a GPU needs larger
    // products to reach its peak).
    let size = if compute.is_cpu() { 2048 } else { 8192 };
    let peak = match args.no_peak {
        true => f64::NAN,
        false => {
            eprintln!("measuring the {:?} matmul peak on {:?} ({threads} CPU threads)...", compute.dtype, compute.device);
            loupe_engine::perf::matmul_peak_gflops_on(&compute, size, 10)?
        }
    };
    // Attention cost: each query attends to (seq + 1) / 2 keys on average under the causal mask.
    let context = args.seq.div_ceil(2);
    let mut timings = Vec::new();
    for &batch_size in &args.batch {
        let batch = bench_batch(&model, batch_size, args.seq)?;
        let tokens = batch_size * args.seq;
        let cases = [
            (format!("to layer {}", args.layer), Hooks::new().capture(HookPoint::resid_post(args.layer)), Logits::None, args.layer + 1, "to_layer"),
            ("all layers + logits".to_string(), Hooks::new(), Logits::All, config.n_layers, "logits"),
        ];
        for (name, hooks, logits, layers, reference_case) in cases {
            eprintln!("timing forward {name} ({batch_size} x {} tokens){}...", args.seq, if reference.is_ok() { ", loupe and transformers in turn" } else { "" });
            let run_loupe = || {
                timed(|| {
                    let out = model.forward(&batch, &hooks, logits, None)?;
                    compute.device.synchronize()?;
                    Ok(out)
                })
            };
            let (best, best_reference, runs) = best_of(&args, run_loupe, &mut reference, Some((batch_size, reference_case)))?;
            let gflop = config.forward_flops(tokens, layers, context, logits != Logits::None) / 1e9;
            let reference_tokens_per_s = best_reference.map(|seconds| tokens as f64 / seconds);
            timings.push(Timing { batch: batch_size, name, seconds: best, gflop, reference_tokens_per_s, runs });
        }
        for (index, dictionary) in lens.dictionaries().iter().enumerate() {
            let info = dictionary.dictionary.info();
            let name = format!("{} + {}", info.hook_in, dictionary.id);
            eprintln!("timing forward {name} ({batch_size} x {} tokens)...", args.seq);
            let read = LensRead::only(vec![index], Rows::All);
            // The lens copies the sparse codes to the host, so the run has finished when it returns.
            let run_lens = || timed(|| Ok(lens.run(&batch, &read)?));
            let (best, _, runs) = best_of(&args, run_lens, &mut reference, None)?;
            let layers = info.hook_in.layer().map_or(config.n_layers, |l| l + 1);
            let gflop = (config.forward_flops(tokens, layers, context, false) + 2.0 * (tokens * info.d_in * info.d_sae) as f64) / 1e9;
            timings.push(Timing { batch: batch_size, name, seconds: best, gflop, reference_tokens_per_s: None, runs });
        }
    }
    let rows: Vec<serde_json::Value> = timings
        .iter()
        .map(|t| {
            let tokens_per_s = (t.batch * args.seq) as f64 / t.seconds;
            let gflops = t.gflop / t.seconds;
            // A reference that failed part-way is dropped from every row.
            let torch = reference.as_ref().ok().and(t.reference_tokens_per_s);
            json!({
                "batch": t.batch,
                "case": t.name,
                "seconds": t.seconds,
                "tokens_per_second": tokens_per_s,
                "gflops": gflops,
                "fraction_of_peak": Some(gflops / peak).filter(|f| f.is_finite()),
                "transformers_tokens_per_second": torch,
                "speedup_vs_transformers": torch.map(|r| tokens_per_s / r),
                "runs": t.runs,
            })
        })
        .collect();
    let report = json!({
        "provenance": provenance(),
        "model": model.source(),
        "threads": threads,
        "seq": args.seq,
        "matmul_peak_gflops": Some(peak).filter(|p| p.is_finite()),
        "device": format!("{:?}", compute.device),
        "dtype": format!("{:?}", compute.dtype),
        "results": rows,
        "transformers": match &reference { Ok(_) => json!("measured"), Err(e) => json!(format!("skipped: {e:#}")) },
    });
    if args.json {
        return print_json(&report);
    }
    println!("forward pass, batches of {} tokens, {threads} threads", args.seq);
    match args.no_peak {
        true => println!("matmul peak not measured (--no-peak)"),
        false => println!("{:?} matmul peak on {:?} (candle, {size}^3): {peak:.1} GFLOP/s", compute.dtype, compute.device),
    }
    println!("{:>5} {:<44} {:>10} {:>10} {:>9} {:>14} {:>9}", "batch", "case", "tokens/s", "GFLOP/s", "of peak", "transformers", "ratio");
    for row in &rows {
        let torch = row["transformers_tokens_per_second"].as_f64();
        println!(
            "{:>5} {:<44} {:>10.0} {:>10.1} {:>9} {:>14} {:>9}",
            row["batch"].as_u64().unwrap_or(0),
            row["case"].as_str().unwrap_or_default(),
            row["tokens_per_second"].as_f64().unwrap_or(0.0),
            row["gflops"].as_f64().unwrap_or(0.0),
            row["fraction_of_peak"].as_f64().map_or("-".into(), |f| format!("{:.1}%", 100.0 * f)),
            torch.map_or("-".into(), |t| format!("{t:.0} tok/s")),
            row["speedup_vs_transformers"].as_f64().map_or("-".into(), |r| format!("{r:.2}x")),
        );
    }
    if let Err(e) = &reference {
        println!("transformers comparison skipped: {e:#}");
    }
    Ok(())
}

fn encode(args: EncodeArgs) -> anyhow::Result<()> {
    let model = args.model.load()?;
    let path = args.dictionary.clone().unwrap_or_else(crate::output::default_dictionary);
    let dictionary = Dictionary::load_for_model(&path, model.config()).with_context(|| format!("loading dictionary {}", path.display()))?;
    let info = dictionary.info().clone();
    let threads = rayon_threads();
    // Dictionaries encode in f32 wherever the model runs.
    let compute = loupe_engine::Compute { device: model.compute().device.clone(), dtype: candle_core::DType::F32 };
    let dictionary = if compute.is_cpu() { dictionary } else { dictionary.on_device(&compute.device)? };
    let size = if compute.is_cpu() { 2048 } else { 8192 };
    eprintln!("measuring the f32 matmul peak on {:?} ({threads} CPU threads)...", compute.device);
    let peak = loupe_engine::perf::matmul_peak_gflops_on(&compute, size, 10)?;
    let seq = 128;
    let batch = bench_batch(&model, args.tokens.div_ceil(seq).max(1), seq)?;
    let out = model.forward(&batch, &Hooks::new().capture(info.hook_in), Logits::None, None)?;
    let x = out.captured[&info.hook_in].reshape(((), info.d_in))?.narrow(0, 0, args.tokens.max(1))?.contiguous()?;
    let tokens = x.dim(0)?;
    let time = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        f()?; // warm-up
        let mut best = f64::INFINITY;
        for _ in 0..args.repeats.max(1) {
            let start = Instant::now();
            f()?;
            compute.device.synchronize()?;
            best = best.min(start.elapsed().as_secs_f64());
        }
        Ok(best)
    };
    let encode_s = time(&mut || dictionary.encode(&x).map(|_| ()).map_err(Into::into))?;
    let encoding = dictionary.encode(&x)?;
    let decode_s = time(&mut || dictionary.decode(&encoding).map(|_| ()).map_err(Into::into))?;
    // Encode is one [tokens, d_in] x [d_in, d_sae] matmul; decode touches L0 rows per token.
    let encode_gflops = 2.0 * (tokens * info.d_in * info.d_sae) as f64 / encode_s / 1e9;
    let l0 = encoding.features.mean_l0();
    let report = json!({
        "dictionary": path,
        "d_in": info.d_in, "d_sae": info.d_sae, "tokens": tokens, "threads": threads,
        "matmul_peak_gflops": peak,
        "encode_tokens_per_second": tokens as f64 / encode_s,
        "encode_gflops": encode_gflops,
        "encode_fraction_of_peak": encode_gflops / peak,
        "decode_tokens_per_second": tokens as f64 / decode_s,
        "l0": l0,
    });
    if args.json {
        return print_json(&report);
    }
    println!("{} ({} -> {} latents, L0 {l0:.1}), {tokens} tokens, {threads} threads", path.display(), info.d_in, info.d_sae);
    println!("{:?} matmul peak on {:?} (candle, {size}^3): {peak:.1} GFLOP/s", compute.dtype, compute.device);
    println!("encode  {:>10.0} tokens/s  {encode_gflops:>7.1} GFLOP/s  {:>5.1}% of peak", tokens as f64 / encode_s, 100.0 * encode_gflops / peak);
    println!("decode  {:>10.0} tokens/s  (sparse, L0 rows per token)", tokens as f64 / decode_s);
    Ok(())
}

/// Real text repeated to fill `batch` windows of `seq` tokens (content does not change the
/// cost, but real tokens keep the activations realistic).
/// Seconds one pass takes, after a settling pause; `pass` returns once its work has finished
/// (its output is dropped after the clock stops).
fn timed<T>(pass: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<f64> {
    settle();
    let start = Instant::now();
    let out = pass()?;
    let seconds = start.elapsed().as_secs_f64();
    drop(out);
    Ok(seconds)
}

/// One warm-up each, then timed runs of loupe's pass alternating with transformers' on the
/// same case (when it has one): the best of each side, and loupe's number of runs. A
/// reference that fails is kept as the error, and times nothing more.
fn best_of(
    args: &ForwardArgs,
    mut run_loupe: impl FnMut() -> anyhow::Result<f64>,
    reference: &mut anyhow::Result<Transformers>,
    case: Option<(usize, &str)>,
) -> anyhow::Result<(f64, Option<f64>, usize)> {
    let time_reference = |reference: &mut anyhow::Result<Transformers>| -> Option<f64> {
        let (batch, name) = case?;
        match reference.as_mut().ok()?.time(batch, name) {
            Ok(seconds) => Some(seconds),
            Err(e) => {
                *reference = Err(e);
                None
            }
        }
    };
    let compared = |reference: &anyhow::Result<Transformers>| case.is_some() && reference.is_ok();
    run_loupe()?;
    time_reference(reference);
    let (mut best, mut best_reference) = (f64::INFINITY, f64::INFINITY);
    let (mut runs, mut spent, mut spent_reference) = (0, 0.0, 0.0);
    // Short passes run more often: this machine's speed moves within seconds, and the best of
    // a few 0.1 s runs says more about the minute than about the code.
    while runs < args.repeats.max(1) || (runs < MAX_RUNS && (spent < args.min_seconds || (compared(reference) && spent_reference < args.min_seconds))) {
        let seconds = run_loupe()?;
        (best, spent, runs) = (best.min(seconds), spent + seconds, runs + 1);
        if let Some(seconds) = time_reference(reference) {
            (best_reference, spent_reference) = (best_reference.min(seconds), spent_reference + seconds);
        }
    }
    Ok((best, compared(reference).then_some(best_reference), runs))
}

/// `--encode`'s dictionaries: the default (or given) one, and a random TopK dictionary of
/// `--wide` latents at `--layer` with the default's k (W_enc ~ N(0, 1/d_in), W_dec its transpose:
/// the cost of an encode depends on the shapes and k, not on what the latents mean).
fn encode_dictionaries(args: &ForwardArgs, config: &loupe_engine::ModelConfig) -> anyhow::Result<Vec<(String, Arc<Dictionary>)>> {
    let path = args.dictionary.clone().unwrap_or_else(crate::output::default_dictionary);
    let default = Dictionary::load_for_model(&path, config).with_context(|| format!("loading dictionary {}", path.display()))?;
    let k = match default.activation() {
        Activation::TopK { k } => *k,
        _ => 32,
    };
    let (d_in, d_sae) = (config.hidden_size, args.wide);
    let hook = HookPoint::resid_post(args.layer);
    let info = DictionaryInfo {
        format: Format::SaeLens,
        architecture: "topk".into(),
        hook_in: hook,
        hook_out: hook,
        d_in,
        d_sae,
        d_out: d_in,
        model_name: None,
        source: PathBuf::from(format!("random-topk-{d_sae}")),
    };
    let cpu = candle_core::Device::Cpu;
    let w_enc = candle_core::Tensor::randn(0f32, (1.0 / d_in as f64).sqrt() as f32, (d_in, d_sae), &cpu)?;
    let wide = Dictionary::from_parts(DictionaryParts {
        info,
        w_dec: w_enc.t()?.contiguous()?,
        w_enc,
        b_enc: candle_core::Tensor::zeros(d_sae, candle_core::DType::F32, &cpu)?,
        b_dec: candle_core::Tensor::zeros(d_in, candle_core::DType::F32, &cpu)?,
        input_bias: None,
        input_norm: InputNorm::None,
        activation: Activation::TopK { k },
        rescale_by_decoder_norm: false,
        skip: None,
    })?;
    let default_name = format!("{} latents", default.info().d_sae);
    Ok(vec![(default_name, Arc::new(default)), (format!("{d_sae} random latents"), Arc::new(wide))])
}

fn bench_batch(model: &Model, batch: usize, seq: usize) -> anyhow::Result<TokenBatch> {
    let text = "The history of science is the study of the development of science and scientific knowledge, \
                including both the natural and social sciences. Mathematics, 1234567890, and code such as \
                fn main() { println!(\"hello\"); } appear too. ";
    let ids = model.tokenizer()?.encode(text)?;
    let windows: Vec<Vec<u32>> = (0..batch).map(|b| (0..seq).map(|i| ids[(b * 7 + i) % ids.len()]).collect()).collect();
    Ok(TokenBatch::right_padded(&windows, 0)?)
}

/// Where a benchmark ran, so that a committed result can be traced: the CPU, cores and
/// memory, the build profile and the commit (`git` in the working directory, when there).
pub fn provenance() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo.lines().find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()));
    let avx512 = cpuinfo.lines().find(|l| l.starts_with("flags")).map(|l| l.split_whitespace().any(|f| f == "avx512f"));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    let git = |args: &[&str]| Command::new("git").args(args).output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
    json!({
        "cpu": cpu,
        "avx512": avx512,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "memory_gib": memory_kib.map(|k| (k as f64 / (1 << 20) as f64 * 10.0).round() / 10.0),
        "build_profile": if cfg!(debug_assertions) { "dev" } else { "release" },
        "commit": git(&["rev-parse", "--short", "HEAD"]),
        "uncommitted_changes": dirty,
        "loupe_version": env!("CARGO_PKG_VERSION"),
        // How servers started here read local stores (io_uring or tokio's blocking pool).
        "local_reads": loupe_store::local_reads().map(|r| format!("{r:?}").to_lowercase()).unwrap_or_else(|e| e.to_string()),
    })
}

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A pause before each timed run, loupe's or the reference's: the other side's idle threads
/// spin for a while after its last run (rayon's, OpenMP's) and would take cores from this one.
fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(100));
}

/// transformers in a process of its own (`reference/bench_transformers.py --serve`), timing
/// one pass per request, so that the bench can alternate its runs with loupe's.
struct Transformers {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Its stderr, in a file: a pipe nobody reads while it runs would fill with its load
    /// messages and block it.
    stderr: std::fs::File,
}

impl Transformers {
    /// Starts the reference and waits until it has loaded the model.
    fn start(args: &ForwardArgs, model: &Model, threads: usize) -> anyhow::Result<Self> {
        if !args.reference.exists() {
            anyhow::bail!("{} not found (run from the repository root)", args.reference.display());
        }
        eprintln!("loading transformers with {} ...", args.reference.display());
        let stderr = tempfile::tempfile().context("a file for the reference's stderr")?;
        let mut child = Command::new("python3")
            .arg(&args.reference)
            .args(["--serve", "--model", &model.source().display().to_string()])
            .args(["--batch", &args.batch.iter().map(usize::to_string).collect::<Vec<_>>().join(","), "--seq", &args.seq.to_string()])
            .args(["--layer", &args.layer.to_string(), "--threads", &threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.try_clone().context("a file for the reference's stderr")?)
            .spawn()
            .context("running python3")?;
        let (stdin, stdout) = (child.stdin.take().context("the reference's stdin")?, child.stdout.take().context("the reference's stdout")?);
        let mut reference = Transformers { child, stdin, stdout: BufReader::new(stdout), stderr };
        reference.answer().context("starting the reference")?;
        Ok(reference)
    }

    /// Seconds of one pass of `case` (`to_layer` or `logits`) over `batch` sequences.
    fn time(&mut self, batch: usize, case: &str) -> anyhow::Result<f64> {
        settle();
        writeln!(self.stdin, "{batch} {case}").and_then(|_| self.stdin.flush()).context("writing to the reference")?;
        self.answer()?["seconds"].as_f64().context("the reference's answer lacks 'seconds'")
    }

    /// The reference's next line of JSON, or why it stopped.
    fn answer(&mut self) -> anyhow::Result<serde_json::Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line).context("reading from the reference")? == 0 {
            // It has exited (stdout closed): what it wrote last says why.
            let _ = self.child.wait();
            let mut stderr = String::new();
            let _ = self.stderr.seek(std::io::SeekFrom::Start(0)).and_then(|_| self.stderr.read_to_string(&mut stderr));
            let last = stderr.lines().last().unwrap_or("no output");
            // The reference is not part of the product, so setup does not install it.
            let hint = if last.contains("ModuleNotFoundError") { " (install the reference: pip install torch transformers gguf accelerate)" } else { "" };
            anyhow::bail!("reference script failed: {last}{hint}");
        }
        serde_json::from_str(&line).with_context(|| format!("parsing the reference script's answer {line:?}"))
    }
}

impl Drop for Transformers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
