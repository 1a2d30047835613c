//! `loupe bench store`: a synthetic store of a million features — time to open it, and the
//! latency of search queries against its tantivy index, of dashboard reads, and of
//! SimilarFeatures through the vector index against an exact scan.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use loupe_store::vectors::Search;
use loupe_store::{SearchFilter, StoreReader, StoreWriter};
use serde_json::json;

use crate::output::print_json;

#[derive(clap::Args)]
pub struct StoreArgs {
    /// Store directory; generated on the first run and reused after.
    #[arg(long, default_value = "target/bench-store-1m")]
    pub store: PathBuf,
    #[arg(long, default_value_t = 1_000_000)]
    pub features: usize,
    /// Decoder width of the synthetic features.
    #[arg(long, default_value_t = 16)]
    pub d: usize,
    /// Queries per kind.
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    #[arg(long)]
    pub json: bool,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn run(args: StoreArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let id = format!("synthetic-{}", args.features);
    let mut generated = None;
    let existing = runtime.block_on(StoreReader::open(&args.store)).ok();
    let has_it = match &existing {
        // A store from before decoder vectors were stored is generated again.
        Some(reader) => reader.generation().versions.contains_key(&loupe_store::vectors::table_name(args.d)) && runtime.block_on(reader.dictionaries())?.iter().any(|d| d.dictionary_id == id),
        None => false,
    };
    drop(existing);
    if !has_it {
        eprintln!("generating {} synthetic features in {} (once)...", args.features, args.store.display());
        let t = Instant::now();
        let commit = loupe_store::synthetic::synthetic_dictionary(&id, args.features, args.d, 1);
        let writer = StoreWriter::open_or_create(&args.store)?;
        runtime.block_on(writer.commit(&[commit])).context("writing the synthetic store")?;
        generated = Some(t.elapsed().as_secs_f64());
    }

    let t = Instant::now();
    let reader = runtime.block_on(StoreReader::open(&args.store))?;
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
    let t = Instant::now();
    runtime.block_on(reader.warm())?;
    let warm_ms = t.elapsed().as_secs_f64() * 1e3;
    // A dashboard's reads: the feature row and its examples, for features spread over the store.
    let mut lookups = Vec::with_capacity(args.queries);
    for i in 0..args.queries {
        let feature = ((i as u64 * 7_919_993) % args.features as u64) as u32;
        let t = Instant::now();
        let (row, examples) = runtime.block_on(async { tokio::join!(reader.feature(&id, feature), reader.examples(&id, Some(feature))) });
        lookups.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(row?.is_some_and(|r| r.feature == feature), "feature {feature} lookup found the wrong row");
        anyhow::ensure!(examples?.iter().all(|e| e.feature == feature), "examples of feature {feature} are wrong");
    }
    lookups.sort_by(f64::total_cmp);
    let lookup = json!({"warm_ms": warm_ms, "p50_ms": percentile(&lookups, 0.5), "p99_ms": percentile(&lookups, 0.99)});

    let similar = similar_features(&runtime, &reader, &id, &args)?;

    let report = json!({"features": n_docs, "generated_seconds": generated, "open_seconds": open_seconds, "queries": rows, "dashboard_reads": lookup, "similar_features": similar});
    if args.json {
        return print_json(&report);
    }
    if let Some(s) = generated {
        println!("generated {} features in {s:.1} s", args.features);
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
        "dashboard reads (feature row + its examples by row address): p50 {:.2} ms, p99 {:.2} ms; row addresses read once in {:.0} ms",
        lookup["p50_ms"].as_f64().unwrap_or(0.0),
        lookup["p99_ms"].as_f64().unwrap_or(0.0),
        warm_ms
    );
    println!(
        "similar features (k=10, decoder cosine): vector index p50 {:.2} ms p99 {:.2} ms; exact scan p50 {:.2} ms p99 {:.2} ms; {:.1}x faster, recall@10 {:.3}{}",
        similar["indexed"]["p50_ms"].as_f64().unwrap_or(0.0),
        similar["indexed"]["p99_ms"].as_f64().unwrap_or(0.0),
        similar["exact"]["p50_ms"].as_f64().unwrap_or(0.0),
        similar["exact"]["p99_ms"].as_f64().unwrap_or(0.0),
        similar["speedup_p50"].as_f64().unwrap_or(0.0),
        similar["recall_at_10"].as_f64().unwrap_or(0.0),
        if similar["indexed"]["has_index"].as_bool() == Some(true) { "" } else { " (no index: the table is below the indexing threshold)" }
    );
    Ok(())
}

/// SimilarFeatures through the vector index against the exact scan on the same queries:
/// latency of each, and how many of the exact top 10 the index finds.
fn similar_features(runtime: &tokio::runtime::Runtime, reader: &StoreReader, id: &str, args: &StoreArgs) -> anyhow::Result<serde_json::Value> {
    let queries = args.queries.min(50);
    let has_index = runtime.block_on(reader.similar_is_indexed(args.d))?;
    let (mut indexed, mut exact) = (Vec::with_capacity(queries), Vec::with_capacity(queries));
    let mut found = 0;
    for i in 0..queries {
        let feature = ((i as u64 * 104_729) % args.features as u64) as u32;
        let row = runtime.block_on(reader.feature(id, feature))?.with_context(|| format!("feature {feature} is missing"))?;
        let t = Instant::now();
        let approximate = runtime.block_on(reader.similar(&row.decoder, &[id], 10, Search::Indexed))?;
        indexed.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let truth = runtime.block_on(reader.similar(&row.decoder, &[id], 10, Search::Exact))?;
        exact.push(t.elapsed().as_secs_f64() * 1e3);
        found += approximate.iter().filter(|n| truth.iter().any(|t| t.feature == n.feature)).count();
    }
    indexed.sort_by(f64::total_cmp);
    exact.sort_by(f64::total_cmp);
    Ok(json!({
        "indexed": {"has_index": has_index, "p50_ms": percentile(&indexed, 0.5), "p99_ms": percentile(&indexed, 0.99)},
        "exact": {"p50_ms": percentile(&exact, 0.5), "p99_ms": percentile(&exact, 0.99)},
        "speedup_p50": percentile(&exact, 0.5) / percentile(&indexed, 0.5),
        "recall_at_10": found as f64 / (queries * 10) as f64,
    }))
}
