//! `loupe bench store`: a synthetic store of real shapes — time to open it, and the
//! latency of search queries against its tantivy index, of dashboard reads (one record, and
//! assembled from the columnar tables), and of SimilarFeatures by the quantized scan against
//! Lance's exact scan, with recall@10 of the quantized scan over many queries.
//!
//! Two shapes: `real` has what `loupe index` stores per feature for the embedded default
//! (576-wide decoders, 32 top examples and 50 interval samples of 128-token windows, 10
//! logits per side), ~180 KB of examples and dashboard per feature, so its default size is
//! what this machine's disk holds; `wide` has a million features with real decoders and
//! logits but two short examples each, for search and vector search at scale.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use loupe_schema::tables::DASHBOARDS;
use loupe_store::synthetic::{Shape, Synthetic};
use loupe_store::vectors::Search;
use loupe_store::{SearchFilter, StoreReader, StoreWriter};
use serde_json::json;

use crate::output::print_json;

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Debug)]
pub enum ShapeName {
    /// Real dashboards (32 top examples + 50 interval samples of 128 tokens, 10 logits per
    /// side, 576-wide decoders); default 8,192 features.
    Real,
    /// Real decoders and logits, two examples of 16 tokens; default 1,000,000 features.
    Wide,
}

#[derive(clap::Args)]
pub struct StoreArgs {
    #[arg(long, value_enum, default_value = "real")]
    pub shape: ShapeName,
    /// Store directory; generated on the first run and reused after (default:
    /// target/bench-store-real or target/bench-store-1m).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Features (default: by shape).
    #[arg(long)]
    pub features: Option<usize>,
    /// Search queries per kind, and dashboard reads.
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// SimilarFeatures queries for recall@10 of the quantized scan against an exact answer.
    #[arg(long, default_value_t = 1000)]
    pub similar_queries: usize,
    #[arg(long)]
    pub json: bool,
}

impl StoreArgs {
    fn shape(&self) -> Shape {
        match self.shape {
            ShapeName::Real => Shape::real(),
            ShapeName::Wide => Shape { top_examples: 1, interval_samples: 1, window: 16, ..Shape::real() },
        }
    }

    fn features(&self) -> usize {
        self.features.unwrap_or(match self.shape {
            ShapeName::Real => 8_192,
            ShapeName::Wide => 1_000_000,
        })
    }

    fn store(&self) -> PathBuf {
        self.store.clone().unwrap_or_else(|| match self.shape {
            ShapeName::Real => "target/bench-store-real".into(),
            ShapeName::Wide => "target/bench-store-1m".into(),
        })
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn run(args: StoreArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (shape, n_features, store) = (args.shape(), args.features(), args.store());
    let id = format!("synthetic-{n_features}");
    let synthetic = Synthetic::new(&id, n_features, shape, 1);
    let mut generated = None;
    let location = super::store_location(&store)?;
    let existing = runtime.block_on(StoreReader::open(&location)).ok();
    let has_it = match &existing {
        // A store of another shape, or from before dashboards were stored, is generated again.
        Some(reader) => {
            reader.generation().versions.contains_key(DASHBOARDS) && runtime.block_on(reader.dictionaries())?.iter().any(|d| d.dictionary_id == id && d.manifest == synthetic.dictionary().manifest)
        }
        None => false,
    };
    drop(existing);
    if !has_it {
        runtime.block_on(location.delete_dir("")).with_context(|| format!("replacing {location}"))?;
        eprintln!("generating {n_features} synthetic features of shape {:?} in {} (once)...", args.shape, store.display());
        let t = Instant::now();
        let features = synthetic.features();
        let writer = runtime.block_on(StoreWriter::open_or_create(&location))?;
        let bar = indicatif::ProgressBar::new(n_features as u64);
        bar.set_style(indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} features' examples {elapsed} (eta {eta})").expect("valid template"));
        let owned = Synthetic::new(&id, n_features, shape, 1);
        let per_chunk = (4096 / (shape.top_examples + shape.interval_samples)).max(1);
        let progress = bar.clone();
        let examples = (0..n_features).step_by(per_chunk).map(move |start| {
            let end = (start + per_chunk).min(n_features);
            progress.inc((end - start) as u64);
            Ok((start as u32..end as u32).flat_map(|f| owned.examples(f)).collect())
        });
        runtime.block_on(writer.commit_streaming(&[synthetic.dictionary()], &features, examples)).context("writing the synthetic store")?;
        bar.finish_and_clear();
        generated = Some(t.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    let reader = runtime.block_on(StoreReader::open(&location))?;
    let open_seconds = t.elapsed().as_secs_f64();
    let n_docs = reader.search_index().num_features();

    let words = loupe_store::synthetic::query_words(args.queries);
    let filter = SearchFilter { dictionary_id: Some(id.clone()), ..Default::default() };
    let dense = SearchFilter { min_density: Some(0.001), ..Default::default() };
    let kinds: Vec<(&str, Box<dyn Fn(usize) -> (String, SearchFilter)>)> = vec![
        ("word", Box::new(|i| (words[i].clone(), SearchFilter::default()))),
        ("two words", Box::new(|i| (format!("{} {}", words[i], words[(i + 1) % words.len()]), SearchFilter::default()))),
        ("phrase", Box::new(|i| (format!("\"{} {}\"", words[i], words[(i + 7) % words.len()]), SearchFilter::default()))),
        ("prefix", Box::new(|i| (format!("{}*", &words[i][..4.min(words[i].len())]), SearchFilter::default()))),
        ("word + dictionary filter", Box::new(|i| (words[i].clone(), filter.clone()))),
        ("word + density range", Box::new(|i| (words[i].clone(), dense.clone()))),
    ];
    let mut rows = Vec::new();
    for (name, make) in &kinds {
        let mut latencies = Vec::with_capacity(args.queries);
        let mut hits = 0;
        for i in 0..args.queries {
            let (query, filter) = make(i);
            let t = Instant::now();
            let results = reader.search(&query, &filter, 0, 20)?;
            latencies.push(t.elapsed().as_secs_f64() * 1e3);
            hits += results.total;
        }
        latencies.sort_by(f64::total_cmp);
        rows.push(json!({"query": name, "p50_ms": percentile(&latencies, 0.5), "p99_ms": percentile(&latencies, 0.99), "mean_hits": hits as f64 / args.queries as f64}));
    }
    // SimilarFeatures' int8 copy of the decoders first, timed on its own (warm loads it too).
    let t = Instant::now();
    let (quantized_rows, quantized_bytes) = runtime.block_on(reader.similar_footprint(args.shape().d))?;
    let quantized_load_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    runtime.block_on(reader.warm())?;
    let warm_ms = t.elapsed().as_secs_f64() * 1e3;
    // Dashboards of features spread over the store: the one-record read GetFeature makes,
    // and the same dashboard assembled from the columnar tables (as before format 2).
    let hook = synthetic.dictionary().hook;
    let (mut one_read, mut assembled) = (Vec::with_capacity(args.queries), Vec::with_capacity(args.queries));
    let mut bytes = 0;
    for i in 0..args.queries {
        let feature = ((i as u64 * 7_919_993) % n_features as u64) as u32;
        let t = Instant::now();
        let stored = runtime.block_on(reader.dashboard(&id, feature, &hook, true))?;
        one_read.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let columnar = runtime.block_on(reader.assembled_dashboard(&id, feature, &hook, true))?;
        assembled.push(t.elapsed().as_secs_f64() * 1e3);
        let stored = stored.with_context(|| format!("feature {feature} has no dashboard"))?;
        anyhow::ensure!(Some(&stored) == columnar.as_ref(), "feature {feature}: the stored dashboard differs from the one assembled from the tables");
        anyhow::ensure!(stored.top_examples.len() == shape.top_examples, "feature {feature}: {} top examples", stored.top_examples.len());
        bytes += prost::Message::encoded_len(&stored);
    }
    // The same dashboards again: on object storage the first pass fetched them (into the
    // local read cache), this one is what a warmed-up server pays.
    let mut again = Vec::with_capacity(args.queries);
    for i in 0..args.queries {
        let feature = ((i as u64 * 7_919_993) % n_features as u64) as u32;
        let t = Instant::now();
        runtime.block_on(reader.dashboard(&id, feature, &hook, true))?;
        again.push(t.elapsed().as_secs_f64() * 1e3);
    }
    one_read.sort_by(f64::total_cmp);
    again.sort_by(f64::total_cmp);
    assembled.sort_by(f64::total_cmp);
    let lookup = json!({
        "warm_ms": warm_ms,
        "dashboard_bytes_mean": bytes / args.queries.max(1),
        "one_record": {"p50_ms": percentile(&one_read, 0.5), "p99_ms": percentile(&one_read, 0.99)},
        "one_record_again": {"p50_ms": percentile(&again, 0.5), "p99_ms": percentile(&again, 0.99)},
        "assembled": {"p50_ms": percentile(&assembled, 0.5), "p99_ms": percentile(&assembled, 0.99)},
        "speedup_p50": percentile(&assembled, 0.5) / percentile(&one_read, 0.5),
    });

    let mut similar = similar_features(&runtime, &reader, &synthetic, &args)?;
    similar["quantized"]["rows"] = json!(quantized_rows);
    similar["quantized"]["bytes"] = json!(quantized_bytes);
    similar["quantized"]["load_s"] = json!(quantized_load_s);

    let report = json!({"shape": format!("{:?}", args.shape), "store": store, "features": n_docs, "generated_seconds": generated, "provenance": super::bench::provenance(), "open_seconds": open_seconds, "queries": rows, "dashboard_reads": lookup, "similar_features": similar});
    if args.json {
        return print_json(&report);
    }
    if let Some(s) = generated {
        println!("generated {n_features} features in {s:.1} s");
    }
    println!("store with {n_docs} features opens in {:.3} s (target < 2 s)", open_seconds);
    println!("{:<26} {:>9} {:>9} {:>10}", "query (20 hits/page)", "p50 ms", "p99 ms", "mean hits");
    for r in &rows {
        println!(
            "{:<26} {:>9.2} {:>9.2} {:>10.0}",
            r["query"].as_str().unwrap_or(""),
            r["p50_ms"].as_f64().unwrap_or(0.0),
            r["p99_ms"].as_f64().unwrap_or(0.0),
            r["mean_hits"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "dashboards ({} bytes each): one record p50 {:.2} ms p99 {:.2} ms; assembled from the tables p50 {:.2} ms p99 {:.2} ms ({:.1}x); row addresses read once in {:.0} ms",
        lookup["dashboard_bytes_mean"],
        lookup["one_record"]["p50_ms"].as_f64().unwrap_or(0.0),
        lookup["one_record"]["p99_ms"].as_f64().unwrap_or(0.0),
        lookup["assembled"]["p50_ms"].as_f64().unwrap_or(0.0),
        lookup["assembled"]["p99_ms"].as_f64().unwrap_or(0.0),
        lookup["speedup_p50"].as_f64().unwrap_or(0.0),
        warm_ms
    );
    println!(
        "the same dashboards read again (warm; on object storage from the local read cache): p50 {:.2} ms p99 {:.2} ms",
        lookup["one_record_again"]["p50_ms"].as_f64().unwrap_or(0.0),
        lookup["one_record_again"]["p99_ms"].as_f64().unwrap_or(0.0)
    );
    println!(
        "similar features (k=10, decoder cosine): quantized scan p50 {:.2} ms p99 {:.2} ms; Lance exact scan p50 {:.2} ms p99 {:.2} ms; {:.1}x faster; recall@10 {:.3} over {} queries; int8 copy of {} rows, {:.1} MB, loaded in {:.1} s",
        similar["quantized"]["p50_ms"].as_f64().unwrap_or(0.0),
        similar["quantized"]["p99_ms"].as_f64().unwrap_or(0.0),
        similar["exact"]["p50_ms"].as_f64().unwrap_or(0.0),
        similar["exact"]["p99_ms"].as_f64().unwrap_or(0.0),
        similar["speedup_p50"].as_f64().unwrap_or(0.0),
        similar["recall_at_10"].as_f64().unwrap_or(0.0),
        similar["recall_queries"],
        quantized_rows,
        quantized_bytes as f64 / 1e6,
        quantized_load_s
    );
    Ok(())
}

/// SimilarFeatures by the quantized scan against Lance's exact scan: latency of each (on
/// the first queries), and recall@10 of the quantized scan over `--similar-queries` queries
/// against the exact top 10, computed here by brute force over the generator's decoders.
fn similar_features(runtime: &tokio::runtime::Runtime, reader: &StoreReader, synthetic: &Synthetic, args: &StoreArgs) -> anyhow::Result<serde_json::Value> {
    let (n, id) = (args.features(), synthetic.dictionary().dictionary_id);
    let queries: Vec<u32> = (0..args.similar_queries).map(|i| ((i as u64 * 104_729) % n as u64) as u32).collect();
    let directions: Vec<Vec<f32>> = queries.iter().map(|&f| synthetic.feature(f).decoder).collect();
    let truth = exact_top10(synthetic, n, &directions)?;
    let timed = queries.len().min(50);
    let (mut quantized, mut exact) = (Vec::with_capacity(queries.len()), Vec::with_capacity(timed));
    let mut found = 0;
    for (i, direction) in directions.iter().enumerate() {
        let t = Instant::now();
        let approximate = runtime.block_on(reader.similar(direction, &[&id], 10, Search::Quantized))?;
        quantized.push(t.elapsed().as_secs_f64() * 1e3);
        if i < timed {
            let t = Instant::now();
            let scanned = runtime.block_on(reader.similar(direction, &[&id], 10, Search::Exact))?;
            exact.push(t.elapsed().as_secs_f64() * 1e3);
            let agree = scanned.iter().filter(|s| truth[i].contains(&s.feature)).count();
            anyhow::ensure!(agree >= 9, "query {i}: the exact scan found {agree} of the brute-force top 10");
        }
        found += approximate.iter().filter(|a| truth[i].contains(&a.feature)).count();
    }
    quantized.sort_by(f64::total_cmp);
    exact.sort_by(f64::total_cmp);
    Ok(json!({
        "quantized": {"p50_ms": percentile(&quantized, 0.5), "p99_ms": percentile(&quantized, 0.99), "queries": quantized.len()},
        "exact": {"p50_ms": percentile(&exact, 0.5), "p99_ms": percentile(&exact, 0.99), "queries": timed},
        "speedup_p50": percentile(&exact, 0.5) / percentile(&quantized, 0.5),
        "recall_at_10": found as f64 / (queries.len() * 10) as f64,
        "recall_queries": queries.len(),
    }))
}

/// The exact 10 nearest features by cosine of each direction, by brute force (a matmul per
/// chunk of the generator's decoders).
fn exact_top10(synthetic: &Synthetic, n: usize, directions: &[Vec<f32>]) -> anyhow::Result<Vec<Vec<u32>>> {
    use candle_core::{Device, Tensor};
    let d = directions.first().map_or(0, Vec::len);
    let unit = |v: &[f32]| loupe_store::vectors::unit(v);
    let q: Vec<f32> = directions.iter().flat_map(|v| unit(v)).collect();
    let q = Tensor::from_vec(q, (directions.len(), d), &Device::Cpu)?;
    let mut best: Vec<Vec<(f32, u32)>> = vec![Vec::new(); directions.len()];
    const CHUNK: usize = 32_768;
    for start in (0..n).step_by(CHUNK) {
        let end = (start + CHUNK).min(n);
        let rows: Vec<f32> = (start..end).flat_map(|f| unit(&synthetic.feature(f as u32).decoder)).collect();
        let rows = Tensor::from_vec(rows, (end - start, d), &Device::Cpu)?;
        let cosines: Vec<Vec<f32>> = q.matmul(&rows.t()?)?.to_vec2()?;
        for (kept, row) in best.iter_mut().zip(cosines) {
            kept.extend(row.into_iter().enumerate().map(|(j, c)| (c, (start + j) as u32)));
            if kept.len() > 10 {
                kept.select_nth_unstable_by(9, |a, b| b.0.total_cmp(&a.0));
                kept.truncate(10);
            }
        }
    }
    Ok(best.into_iter().map(|kept| kept.into_iter().map(|(_, f)| f).collect()).collect())
}
