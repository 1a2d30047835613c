//! The store against real Lance datasets and a real tantivy index in temporary folders.

use loupe_store::{
    append_labels, label_history, DictionaryCommit, DictionaryRecord, ExampleKind, ExampleRecord, FeatureRecord, LabelRecord, Location, LogitEffect, Neighbour, SearchFilter, StoreReader, StoreWriter,
};

fn dictionary(id: &str, layer: u32) -> DictionaryRecord {
    DictionaryRecord {
        dictionary_id: id.into(),
        model_id: "tiny".into(),
        model_checksum: "abc".into(),
        hook: format!("blocks.{layer}.hook_resid_post"),
        hook_out: format!("blocks.{layer}.hook_resid_post"),
        layer: Some(layer),
        architecture: "topk".into(),
        d_in: 4,
        d_sae: 3,
        source_format: "sae_lens".into(),
        source_checksum: "def".into(),
        manifest: serde_json::json!({"tokens_seen": 1000, "corpus": [{"path": "a.jsonl"}]}),
        created_at: "2026-11-27T00:00:00Z".into(),
    }
}

fn feature(id: &str, index: u32, words: &[&str], label: Option<&str>) -> FeatureRecord {
    FeatureRecord {
        dictionary_id: id.into(),
        feature: index,
        max_activation: 1.5 + index as f32,
        mean_activation: 0.5,
        density: 0.001 * f64::from(index + 1),
        fire_count: 10 * u64::from(index + 1),
        histogram_width: 0.25,
        histogram_counts: vec![1, 2, 3],
        top_logits: vec![LogitEffect { token_id: 7, token: " the".into(), value: 0.5 }],
        bottom_logits: vec![LogitEffect { token_id: 8, token: "ing".into(), value: -0.5 }],
        neighbours: vec![Neighbour { feature: (index + 1) % 3, cosine: 0.25 }],
        top_tokens: words.iter().map(|w| w.to_string()).collect(),
        top_contexts: vec![format!("a sentence about {}", words.join(" and "))],
        decoder_norm: 1.0,
        decoder: vec![0.5, -0.5, 0.5, -0.5],
        label: label.map(String::from),
    }
}

fn example(id: &str, feature: u32, kind: ExampleKind, rank: u32) -> ExampleRecord {
    ExampleRecord {
        dictionary_id: id.into(),
        feature,
        kind,
        rank,
        max_activation: 2.0 - rank as f32 * 0.1,
        max_position: 2,
        window: u64::from(rank) * 3,
        token_ids: vec![1, 50, 60, 70],
        tokens: vec!["<|im_start|>".into(), "The".into(), " cat".into(), " sat".into()],
        activations: vec![0.0, 0.0, 2.0, 0.5],
        document_id: 4,
        document_offset: 17,
    }
}

fn commit_of(id: &str, layer: u32, words: [&[&str]; 3]) -> DictionaryCommit {
    let features = (0..3).map(|i| feature(id, i, words[i as usize], None)).collect();
    let mut examples = Vec::new();
    for f in 0..3 {
        examples.push(example(id, f, ExampleKind::Top, 0));
        examples.push(example(id, f, ExampleKind::Top, 1));
        examples.push(example(id, f, ExampleKind::Interval { index: 2, low: 0.5, high: 0.75 }, 0));
    }
    DictionaryCommit { dictionary: dictionary(id, layer), features, examples }
}

/// The store at a local folder.
fn at(path: &std::path::Path) -> Location {
    Location::local(path)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn commits_read_back_search_and_stay_readable() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let writer = rt.block_on(StoreWriter::open_or_create(&at(&root))).unwrap();
    let first = commit_of("sae-a", 3, [&["cats", "kitten"], &["dogs"], &["rain", "weather"]]);
    let g1 = rt.block_on(writer.commit(std::slice::from_ref(&first))).unwrap();
    assert_eq!(g1.generation, 1);

    let reader = rt.block_on(StoreReader::open(&at(&root))).unwrap();
    assert_eq!(rt.block_on(reader.dictionaries()).unwrap(), vec![first.dictionary.clone()]);
    assert_eq!(rt.block_on(reader.features("sae-a")).unwrap(), first.features);
    assert_eq!(rt.block_on(reader.feature("sae-a", 1)).unwrap().as_ref(), Some(&first.features[1]));
    assert_eq!(rt.block_on(reader.feature("sae-a", 9)).unwrap(), None);
    let examples = rt.block_on(reader.examples("sae-a", Some(2))).unwrap();
    assert_eq!(examples, first.examples[6..9].to_vec());

    let hits = reader.search("kitten", &SearchFilter::default(), 0, 10).unwrap();
    assert_eq!(hits.total, 1);
    assert_eq!((hits.hits[0].dictionary_id.as_str(), hits.hits[0].feature), ("sae-a", 0));
    assert!(hits.hits[0].snippet.contains("kitten"), "{:?}", hits.hits[0]);
    assert!(!hits.hits[0].highlights.is_empty());
    assert!(reader.search("weath*", &SearchFilter::default(), 0, 10).unwrap().hits.iter().any(|h| h.feature == 2));
    assert_eq!(reader.search("\"about rain\"", &SearchFilter::default(), 0, 10).unwrap().total, 1);
    let err = reader.search("cats AND (", &SearchFilter::default(), 0, 10).unwrap_err().to_string();
    assert!(err.contains("search query"), "{err}");

    // A second dictionary and a re-index of the first: new generations, old ones readable.
    let second = commit_of("sae-b", 5, [&["cats"], &["music"], &["code"]]);
    rt.block_on(writer.commit(std::slice::from_ref(&second))).unwrap();
    let reindexed = commit_of("sae-a", 3, [&["tigers"], &["dogs"], &["rain"]]);
    let g3 = rt.block_on(writer.commit(std::slice::from_ref(&reindexed))).unwrap();
    assert_eq!(g3.generation, 3);
    let latest = rt.block_on(StoreReader::open(&at(&root))).unwrap();
    assert_eq!(rt.block_on(latest.dictionaries()).unwrap().len(), 2);
    assert_eq!(rt.block_on(latest.features("sae-a")).unwrap(), reindexed.features);
    assert_eq!(rt.block_on(latest.features("sae-b")).unwrap(), second.features);
    assert_eq!(rt.block_on(latest.examples("sae-a", None)).unwrap().len(), 9);
    // Point reads go by row address; after a delete and an append, rows of the two
    // dictionaries sit in different fragments.
    for (id, commit) in [("sae-a", &reindexed), ("sae-b", &second)] {
        for f in 0..3u32 {
            assert_eq!(rt.block_on(latest.feature(id, f)).unwrap().as_ref(), Some(&commit.features[f as usize]));
            let expected: Vec<_> = commit.examples.iter().filter(|e| e.feature == f).cloned().collect();
            assert_eq!(rt.block_on(latest.examples(id, Some(f))).unwrap(), expected);
        }
    }
    assert_eq!(rt.block_on(latest.examples("sae-c", Some(0))).unwrap(), vec![]);
    let cats = latest.search("cats", &SearchFilter::default(), 0, 10).unwrap();
    assert_eq!(cats.hits.iter().map(|h| h.dictionary_id.as_str()).collect::<Vec<_>>(), vec!["sae-b"]);
    let layer5 = SearchFilter { layer: Some(5), ..Default::default() };
    assert_eq!(latest.search("dogs OR music", &layer5, 0, 10).unwrap().total, 1);
    let dense = SearchFilter { min_density: Some(0.0025), ..Default::default() };
    assert!(latest.search("dogs OR music OR rain OR code", &dense, 0, 10).unwrap().hits.iter().all(|h| h.density >= 0.0025));

    let old = rt.block_on(StoreReader::open_generation(&at(&root), 1)).unwrap();
    assert_eq!(rt.block_on(old.features("sae-a")).unwrap(), first.features);
    assert_eq!(old.search("kitten", &SearchFilter::default(), 0, 10).unwrap().total, 1);
    assert!(rt.block_on(StoreReader::open_generation(&at(&root), 9)).is_err());
}

#[test]
fn a_failed_write_is_invisible_and_rolled_back() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let writer = rt.block_on(StoreWriter::open_or_create(&at(&root))).unwrap();
    let good = commit_of("sae-a", 3, [&["cats"], &["dogs"], &["rain"]]);
    rt.block_on(writer.commit(std::slice::from_ref(&good))).unwrap();
    // A writer that dies after writing Lance versions but before publishing: simulated by a
    // file where generation 2's search index goes, so the commit fails after the Lance writes.
    std::fs::write(root.join("search").join("g2"), b"not a directory").unwrap();
    let bad = commit_of("sae-a", 3, [&["broken"], &["broken"], &["broken"]]);
    assert!(rt.block_on(writer.commit(std::slice::from_ref(&bad))).is_err());
    let reader = rt.block_on(StoreReader::open(&at(&root))).unwrap();
    assert_eq!(reader.generation().generation, 1);
    assert_eq!(rt.block_on(reader.features("sae-a")).unwrap(), good.features);
    assert_eq!(reader.search("broken", &SearchFilter::default(), 0, 10).unwrap().total, 0);
    // The next commit starts from the committed versions, not from the debris.
    std::fs::remove_file(root.join("search").join("g2")).unwrap();
    let next = commit_of("sae-b", 4, [&["music"], &["code"], &["art"]]);
    rt.block_on(writer.commit(std::slice::from_ref(&next))).unwrap();
    let reader = rt.block_on(StoreReader::open(&at(&root))).unwrap();
    assert_eq!(rt.block_on(reader.features("sae-a")).unwrap(), good.features);
    assert_eq!(rt.block_on(reader.examples("sae-a", None)).unwrap().len(), 9);
    assert_eq!(rt.block_on(reader.features("sae-b")).unwrap(), next.features);
}

#[test]
fn foreign_and_corrupt_stores_are_clear_errors() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("photos");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("cat.jpg"), b"\xff\xd8").unwrap();
    let err = rt.block_on(StoreWriter::open_or_create(&at(&foreign))).err().unwrap().to_string();
    assert!(err.contains("not a loupe store") && err.contains("not empty"), "{err}");
    let err = rt.block_on(StoreReader::open(&at(&foreign))).err().unwrap().to_string();
    assert!(err.contains("not a loupe store"), "{err}");
    assert!(foreign.join("cat.jpg").exists());

    let root = dir.path().join("store");
    let writer = rt.block_on(StoreWriter::open_or_create(&at(&root))).unwrap();
    let err = rt.block_on(StoreReader::open(&at(&root))).err().unwrap().to_string();
    assert!(err.contains("no committed index"), "{err}");
    assert!(rt.block_on(StoreWriter::open_or_create(&at(&root))).err().unwrap().to_string().contains("another writer"));
    rt.block_on(writer.commit(&[commit_of("sae-a", 3, [&["cats"], &["dogs"], &["rain"]])])).unwrap();
    std::fs::write(root.join("CURRENT"), b"{\"generation\": ").unwrap();
    let err = rt.block_on(StoreReader::open(&at(&root))).err().unwrap().to_string();
    assert!(err.contains("CURRENT") && err.contains("not a generation record"), "{err}");
}

fn label(id: &str, feature: u32, text: Option<&str>, author: &str) -> LabelRecord {
    LabelRecord::now(id, feature, text.map(String::from), author)
}

fn hits_of(reader: &StoreReader, query: &str, filter: &SearchFilter) -> Vec<(u32, Option<String>)> {
    reader.search(query, filter, 0, 10).unwrap().hits.into_iter().map(|h| (h.feature, h.label)).collect()
}

#[test]
fn labels_are_appended_outside_generations_and_searchable_at_once() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let writer = rt.block_on(StoreWriter::open_or_create(&at(&root))).unwrap();
    rt.block_on(writer.commit(&[commit_of("sae-a", 3, [&["cats"], &["dogs"], &["rain"]])])).unwrap();
    let reader = rt.block_on(StoreReader::open(&at(&root))).unwrap();
    assert_eq!(rt.block_on(reader.refresh_labels()).unwrap(), 0, "no labels table yet");

    // A label write while the index writer holds its lock: no lock, no new generation.
    let canine = "canine things, it's \"dogs\"";
    rt.block_on(append_labels(&at(&root), &[label("sae-a", 1, Some(canine), "ann")])).unwrap();
    assert_eq!(hits_of(&reader, "canine", &SearchFilter::default()), vec![], "not visible before a refresh");
    assert_eq!(rt.block_on(reader.refresh_labels()).unwrap(), 1);
    assert_eq!(hits_of(&reader, "canine", &SearchFilter::default()), vec![(1, Some(canine.to_string()))]);
    assert_eq!(reader.search("dogs", &SearchFilter::default(), 0, 10).unwrap().total, 1, "the feature is found once, not in both indexes");
    assert_eq!(hits_of(&reader, "dogs OR cats", &SearchFilter::default()).len(), 2);
    assert_eq!(rt.block_on(reader.feature("sae-a", 1)).unwrap().unwrap().label.as_deref(), Some(canine));
    assert_eq!(rt.block_on(reader.feature("sae-a", 0)).unwrap().unwrap().label, None);
    assert_eq!(rt.block_on(loupe_store::layout::current(&at(&root))).unwrap().unwrap().generation, 1);
    // Filters apply to relabelled features as to the rest.
    let only = |dictionary: &str| SearchFilter { dictionary_id: Some(dictionary.into()), ..SearchFilter::default() };
    assert_eq!(hits_of(&reader, "canine", &only("sae-b")), vec![]);
    assert_eq!(hits_of(&reader, "canine", &SearchFilter { layer: Some(3), ..SearchFilter::default() }).len(), 1);
    assert_eq!(hits_of(&reader, "canine", &SearchFilter { layer: Some(4), ..SearchFilter::default() }), vec![]);

    // The latest write wins; clearing is a write; the history keeps all of them in order.
    rt.block_on(append_labels(&at(&root), &[label("sae-a", 1, Some("hounds"), "bob")])).unwrap();
    rt.block_on(reader.refresh_labels()).unwrap();
    assert_eq!(hits_of(&reader, "canine", &SearchFilter::default()), vec![]);
    assert_eq!(hits_of(&reader, "hounds", &SearchFilter::default()), vec![(1, Some("hounds".to_string()))]);
    rt.block_on(append_labels(&at(&root), &[label("sae-a", 1, None, "cy")])).unwrap();
    rt.block_on(reader.refresh_labels()).unwrap();
    assert_eq!(hits_of(&reader, "hounds", &SearchFilter::default()), vec![]);
    assert_eq!(hits_of(&reader, "dogs", &SearchFilter::default()), vec![(1, None)]);
    let history = rt.block_on(label_history(&at(&root), "sae-a", 1)).unwrap();
    let history: Vec<(Option<&str>, &str)> = history.iter().map(|r| (r.label.as_deref(), r.author.as_str())).collect();
    assert_eq!(history, vec![(Some(canine), "ann"), (Some("hounds"), "bob"), (None, "cy")]);

    // Labels survive a re-index of their dictionary (a new generation) and a fresh reader.
    rt.block_on(append_labels(&at(&root), &[label("sae-a", 2, Some("weather"), "ann")])).unwrap();
    rt.block_on(writer.commit(&[commit_of("sae-a", 3, [&["cats"], &["dogs"], &["rain"]])])).unwrap();
    let reader = rt.block_on(StoreReader::open(&at(&root))).unwrap();
    assert_eq!(reader.generation().generation, 2);
    assert_eq!(hits_of(&reader, "weather", &SearchFilter::default()), vec![(2, Some("weather".to_string()))]);
    assert_eq!(rt.block_on(reader.features("sae-a")).unwrap().iter().map(|f| f.label.clone()).collect::<Vec<_>>(), vec![None, None, Some("weather".into())]);
}

#[test]
fn concurrent_label_appends_are_all_kept() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let writer = rt.block_on(StoreWriter::open_or_create(&at(&root))).unwrap();
    rt.block_on(writer.commit(&[commit_of("sae-a", 3, [&["cats"], &["dogs"], &["rain"]])])).unwrap();
    // 24 writers at once, the first of them racing to create the table.
    let writes: Vec<_> = (0..24u32)
        .map(|i| {
            let root = root.clone();
            rt.spawn(async move { append_labels(&at(&root), &[label(&format!("d{}", i % 4), i, Some(&format!("label {i}")), "w")]).await })
        })
        .collect();
    for write in writes {
        rt.block_on(write).unwrap().unwrap();
    }
    let mut cursor = loupe_store::labels::LabelCursor::new(&at(&root));
    assert_eq!(rt.block_on(cursor.refresh()).unwrap().len(), 24);
    for i in 0..24u32 {
        assert_eq!(cursor.get(&format!("d{}", i % 4), i).and_then(|r| r.label.clone()), Some(format!("label {i}")));
    }
}

#[test]
fn labels_must_be_printable_single_lines() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let writer = rt.block_on(StoreWriter::open_or_create(&at(&root))).unwrap();
    rt.block_on(writer.commit(&[commit_of("sae-a", 3, [&["cats"], &["dogs"], &["rain"]])])).unwrap();
    for bad in ["a\x00b", "red \x1b[31m", "two\nlines"] {
        let err = rt.block_on(append_labels(&at(&root), &[label("sae-a", 0, Some(bad), "x")])).unwrap_err().to_string();
        assert!(err.contains("control character"), "{err}");
    }
    let err = rt.block_on(append_labels(&at(&root), &[label("sae-a", 0, Some(&"x".repeat(2000)), "x")])).unwrap_err().to_string();
    assert!(err.contains("at most 1024"), "{err}");
    assert!(rt.block_on(label_history(&at(&root), "sae-a", 0)).unwrap().is_empty(), "nothing was written");
}

/// Nearest decoders by the definition: cos(a, b) = a·b / (|a| |b|), over every row.
fn brute_force_similar(query: &[f32], commits: &[&DictionaryCommit], k: usize) -> Vec<(String, u32, f32)> {
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    let mut all: Vec<(String, u32, f32)> = Vec::new();
    for commit in commits {
        for f in &commit.features {
            let dot: f64 = f.decoder.iter().zip(query).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
            all.push((f.dictionary_id.clone(), f.feature, (dot / (norm(&f.decoder) * norm(query))) as f32));
        }
    }
    all.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| (&a.0, a.1).cmp(&(&b.0, b.1))));
    all.truncate(k);
    all
}

fn assert_same_neighbours(found: &[loupe_store::SimilarFeature], expected: &[(String, u32, f32)]) {
    let ids: Vec<(&str, u32)> = found.iter().map(|n| (n.dictionary_id.as_str(), n.feature)).collect();
    let expected_ids: Vec<(&str, u32)> = expected.iter().map(|(d, f, _)| (d.as_str(), *f)).collect();
    assert_eq!(ids, expected_ids);
    for (n, (_, _, cosine)) in found.iter().zip(expected) {
        assert!((n.cosine - cosine).abs() <= 1e-5, "{} vs {cosine}", n.cosine);
    }
}

#[test]
fn similar_features_by_decoder_cosine_quantized_or_exact() {
    use loupe_store::synthetic::synthetic_dictionary;
    use loupe_store::vectors::Search;
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let writer = rt.block_on(StoreWriter::open_or_create(&at(&root))).unwrap();
    let a = synthetic_dictionary("a", 600, 8, 1);
    let b = synthetic_dictionary("b", 400, 8, 2);
    let narrow = synthetic_dictionary("narrow", 50, 4, 3);
    rt.block_on(writer.commit(&[a.clone(), b.clone(), narrow.clone()])).unwrap();
    let reader = rt.block_on(StoreReader::open(&at(&root))).unwrap();
    // The int8 copies: width-8 rows of a and b, width-4 rows of narrow.
    assert_eq!(rt.block_on(reader.similar_footprint(8)).unwrap().0, 1000);
    assert_eq!(rt.block_on(reader.similar_footprint(4)).unwrap().0, 50);

    for query in [0usize, 17, 333, 599] {
        let decoder = &a.features[query].decoder;
        let expected = brute_force_similar(decoder, &[&a, &b], 10);
        assert_eq!((expected[0].0.as_str(), expected[0].1), ("a", query as u32), "a decoder is its own nearest");
        for search in [Search::Quantized, Search::Exact] {
            assert_same_neighbours(&rt.block_on(reader.similar(decoder, &["a", "b"], 10, search)).unwrap(), &expected);
        }
        let only_b = brute_force_similar(decoder, &[&b], 5);
        assert_same_neighbours(&rt.block_on(reader.similar(decoder, &["b"], 5, Search::Quantized)).unwrap(), &only_b);
    }
    let decoder = &narrow.features[7].decoder;
    assert_same_neighbours(&rt.block_on(reader.similar(decoder, &["narrow"], 3, Search::Quantized)).unwrap(), &brute_force_similar(decoder, &[&narrow], 3));
    let err = rt.block_on(reader.similar(&[1.0; 5], &["a"], 3, Search::Quantized)).unwrap_err().to_string();
    assert!(err.contains("no decoder vectors of width 5"), "{err}");

    // Re-indexing `a` at another width moves its vectors out of the width-8 table.
    let a4 = synthetic_dictionary("a", 300, 4, 4);
    rt.block_on(writer.commit(std::slice::from_ref(&a4))).unwrap();
    let latest = rt.block_on(StoreReader::open(&at(&root))).unwrap();
    let query = &b.features[5].decoder;
    assert_same_neighbours(&rt.block_on(latest.similar(query, &["a", "b"], 10, Search::Exact)).unwrap(), &brute_force_similar(query, &[&b], 10));
    let query = &a4.features[9].decoder;
    assert_same_neighbours(&rt.block_on(latest.similar(query, &["a", "narrow"], 10, Search::Quantized)).unwrap(), &brute_force_similar(query, &[&a4, &narrow], 10));
    // A commit that writes only width 4 leaves the width-8 table (and its index) as it was.
    let g = rt.block_on(writer.commit(std::slice::from_ref(&narrow))).unwrap();
    assert_eq!(g.versions["decoders_8"], latest.generation().versions["decoders_8"]);
    let query = &b.features[5].decoder;
    let reread = rt.block_on(StoreReader::open(&at(&root))).unwrap();
    assert_same_neighbours(&rt.block_on(reread.similar(query, &["b"], 10, Search::Quantized)).unwrap(), &brute_force_similar(query, &[&b], 10));
    // The first generation still answers with its own vectors.
    let old = rt.block_on(StoreReader::open_generation(&at(&root), 1)).unwrap();
    let query = &a.features[42].decoder;
    assert_same_neighbours(&rt.block_on(old.similar(query, &["a"], 10, Search::Quantized)).unwrap(), &brute_force_similar(query, &[&a], 10));
}

#[test]
fn the_quantized_scan_finds_the_exact_neighbours_of_near_isotropic_decoders() {
    use loupe_store::synthetic::synthetic_dictionary;
    use loupe_store::vectors::Search;
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let writer = rt.block_on(StoreWriter::open_or_create(&at(&root))).unwrap();
    // Random directions are the hard case: neighbours' cosines crowd together near the top.
    let iso = synthetic_dictionary("iso", 8000, 256, 11);
    rt.block_on(writer.commit(std::slice::from_ref(&iso))).unwrap();
    let reader = rt.block_on(StoreReader::open(&at(&root))).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    for q in 0..60 {
        // Half the queries are stored decoders, half are directions no row has.
        let query: Vec<f32> = if q % 2 == 0 { iso.features[q * 131 % 8000].decoder.clone() } else { (0..256).map(|_| next()).collect() };
        let expected = brute_force_similar(&query, &[&iso], 10);
        assert_same_neighbours(&rt.block_on(reader.similar(&query, &["iso"], 10, Search::Quantized)).unwrap(), &expected);
    }
}

/// A commit of `n` features whose words all say `word`, with two examples each.
fn wide_commit(id: &str, n: u32, word: &str) -> DictionaryCommit {
    let mut commit = commit_of(id, 3, [&[word], &[word], &[word]]);
    commit.dictionary.d_sae = n;
    commit.features = (0..n).map(|i| feature(id, i, &[word], None)).collect();
    commit.examples = (0..n).flat_map(|f| [example(id, f, ExampleKind::Top, 0), example(id, f, ExampleKind::Top, 1)]).collect();
    commit
}

#[test]
fn readers_see_one_whole_generation_while_another_is_written() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let writer = rt.block_on(StoreWriter::open_or_create(&at(&root))).unwrap();
    const N: u32 = 3000;
    rt.block_on(writer.commit(&[wide_commit("sae-a", N, "cats")])).unwrap();
    // Generation 2 rewrites every row (features, examples, decoders, search) in another thread.
    let committing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let write = {
        let committing = committing.clone();
        let handle = rt.handle().clone();
        std::thread::spawn(move || {
            let result = handle.block_on(writer.commit(&[wide_commit("sae-a", N, "lions")]));
            committing.store(false, std::sync::atomic::Ordering::SeqCst);
            result.map(|g| g.generation)
        })
    };
    let mut reads_during = 0;
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let done = !committing.load(std::sync::atomic::Ordering::SeqCst);
        let reader = rt.block_on(StoreReader::open(&at(&root))).unwrap();
        let generation = reader.generation().generation;
        let (word, other) = if generation == 1 { ("cats", "lions") } else { ("lions", "cats") };
        // Everything read agrees with the generation opened: no half-written state.
        assert_eq!(reader.search(word, &SearchFilter::default(), 0, 10).unwrap().total, N as usize, "generation {generation}");
        assert_eq!(reader.search(other, &SearchFilter::default(), 0, 10).unwrap().total, 0, "generation {generation}");
        let feature = rt.block_on(reader.feature("sae-a", N - 1)).unwrap().unwrap();
        assert_eq!(feature.top_tokens, vec![word.to_string()]);
        assert_eq!(rt.block_on(reader.examples("sae-a", Some(N - 1))).unwrap().len(), 2);
        seen.insert(generation);
        if done {
            break;
        }
        reads_during += 1;
    }
    assert_eq!(write.join().unwrap().unwrap(), 2);
    assert!(reads_during > 0, "no read overlapped the commit");
    assert!(seen.contains(&2), "the last read sees the new generation");
}

/// Every feature's dashboard as `assemble` makes it from the committed records themselves.
fn expected_dashboards(commit: &DictionaryCommit) -> Vec<loupe_schema::proto::v1::FeatureDashboard> {
    use loupe_store::dashboards::{assemble, sort_examples};
    commit
        .features
        .iter()
        .map(|f| {
            let mut examples: Vec<ExampleRecord> = commit.examples.iter().filter(|e| e.feature == f.feature).cloned().collect();
            sort_examples(&mut examples);
            assemble(f, &commit.dictionary.hook, examples)
        })
        .collect()
}

fn assert_dashboards(rt: &tokio::runtime::Runtime, reader: &StoreReader, commit: &DictionaryCommit) {
    let id = &commit.dictionary.dictionary_id;
    for expected in expected_dashboards(commit) {
        let feature = expected.feature.as_ref().unwrap().feature;
        let read = rt.block_on(reader.dashboard(id, feature, &commit.dictionary.hook, true)).unwrap();
        assert_eq!(read.as_ref(), Some(&expected), "dashboard of {id} feature {feature}");
        let summary = rt.block_on(reader.dashboard(id, feature, &commit.dictionary.hook, false)).unwrap().unwrap();
        let without_examples = loupe_schema::proto::v1::FeatureDashboard { top_examples: vec![], interval_examples: vec![], ..expected };
        assert_eq!(summary, without_examples);
    }
}

/// Concurrent dashboard reads share takes (grouped_take.rs): every caller still gets its own
/// feature's dashboard, in either shape, including callers that ask for the same feature.
#[test]
fn concurrent_dashboards_each_get_their_own_feature() {
    use loupe_store::synthetic::synthetic_dictionary;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let writer = rt.block_on(StoreWriter::open_or_create(&at(&root))).unwrap();
    let a = synthetic_dictionary("a", 400, 8, 1);
    let b = synthetic_dictionary("b", 300, 8, 2);
    rt.block_on(writer.commit(&[a.clone(), b.clone()])).unwrap();
    let reader = std::sync::Arc::new(rt.block_on(StoreReader::open(&at(&root))).unwrap());
    let expected: std::collections::HashMap<(String, u32), _> =
        [&a, &b].into_iter().flat_map(|commit| expected_dashboards(commit).into_iter().map(move |d| ((commit.dictionary.dictionary_id.clone(), d.feature.as_ref().unwrap().feature), d))).collect();
    // Three rounds over every feature, the calls of each round all in flight at once.
    let mut asks: Vec<(String, u32, bool)> = Vec::new();
    for round in 0..3u32 {
        for (id, n) in [("a", 400u32), ("b", 300)] {
            asks.extend((0..n).map(|f| (id.to_string(), (f * 7 + round * 13) % n, (f + round) % 3 != 0)));
        }
    }
    let answers = rt.block_on(async {
        let calls: Vec<_> = asks
            .iter()
            .cloned()
            .map(|(id, feature, with_examples)| {
                let reader = reader.clone();
                tokio::spawn(async move { reader.dashboard(&id, feature, "h", with_examples).await })
            })
            .collect();
        futures::future::join_all(calls).await
    });
    for ((id, feature, with_examples), answer) in asks.iter().zip(answers) {
        let read = answer.unwrap().unwrap().unwrap_or_else(|| panic!("no dashboard for {id} {feature}"));
        let mut want = expected[&(id.clone(), *feature)].clone();
        if !with_examples {
            want.top_examples.clear();
            want.interval_examples.clear();
        }
        assert_eq!(read, want, "dashboard of {id} feature {feature} (examples: {with_examples})");
    }
}

#[test]
fn dashboards_are_one_record_per_feature_and_older_stores_read_through_the_tables() {
    use loupe_store::synthetic::synthetic_dictionary;
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let writer = rt.block_on(StoreWriter::open_or_create(&at(&root))).unwrap();
    let a = synthetic_dictionary("a", 300, 8, 1);
    let mut b = synthetic_dictionary("b", 200, 8, 2);
    // The examples arrive in any order; a dashboard lists them by kind, interval and rank.
    b.examples.reverse();
    let g1 = rt.block_on(writer.commit(&[a.clone(), b.clone()])).unwrap();
    assert!(g1.versions.contains_key("dashboards"));
    let reader = rt.block_on(StoreReader::open(&at(&root))).unwrap();
    assert_dashboards(&rt, &reader, &a);
    assert_dashboards(&rt, &reader, &b);
    assert_eq!(rt.block_on(reader.dashboard("a", 300, "h", true)).unwrap(), None, "no feature 300");
    assert_eq!(rt.block_on(reader.dashboard("c", 0, "h", true)).unwrap(), None, "no dictionary c");
    // A label written after the commit is the dashboard's label.
    rt.block_on(append_labels(&at(&root), &[label("a", 7, Some("relabelled"), "ann")])).unwrap();
    rt.block_on(reader.refresh_labels()).unwrap();
    let relabelled = rt.block_on(reader.dashboard("a", 7, "h", false)).unwrap().unwrap();
    assert_eq!(relabelled.label.as_deref(), Some("relabelled"));

    // Re-indexing b replaces its dashboards and leaves a's.
    let b2 = synthetic_dictionary("b", 120, 8, 9);
    rt.block_on(writer.commit(std::slice::from_ref(&b2))).unwrap();
    let reader = rt.block_on(StoreReader::open(&at(&root))).unwrap();
    assert_dashboards(&rt, &reader, &b2);
    assert_eq!(rt.block_on(reader.dashboard("b", 150, "h", true)).unwrap(), None, "b has 120 features now");
    let unchanged = rt.block_on(reader.dashboard("a", 299, &a.dictionary.hook, true)).unwrap();
    assert_eq!(unchanged, expected_dashboards(&a).pop());
    drop(writer);

    // A store of format 1 (no dashboards table in its generations) reads the same dashboards
    // from its columnar tables, and its next commit upgrades it.
    let old = dir.path().join("old");
    let writer = rt.block_on(StoreWriter::open_or_create(&at(&old))).unwrap();
    rt.block_on(writer.commit(std::slice::from_ref(&a))).unwrap();
    let mut generation: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(old.join("CURRENT")).unwrap()).unwrap();
    generation["versions"].as_object_mut().unwrap().remove("dashboards");
    std::fs::write(old.join("CURRENT"), generation.to_string()).unwrap();
    std::fs::write(old.join("LOUPE_STORE"), r#"{"format": "loupe-store", "version": 1}"#).unwrap();
    std::fs::remove_dir_all(old.join("dashboards.lance")).unwrap();
    let reader = rt.block_on(StoreReader::open(&at(&old))).unwrap();
    assert!(!reader.generation().versions.contains_key("dashboards"));
    assert_dashboards(&rt, &reader, &a);
    let c = synthetic_dictionary("c", 50, 8, 3);
    rt.block_on(writer.commit(std::slice::from_ref(&c))).unwrap();
    assert!(std::fs::read_to_string(old.join("LOUPE_STORE")).unwrap().contains("\"version\": 2"));
    let reader = rt.block_on(StoreReader::open(&at(&old))).unwrap();
    assert_dashboards(&rt, &reader, &a);
    assert_dashboards(&rt, &reader, &c);
    drop(writer);

    // A store from a newer loupe is refused, saying what to do.
    std::fs::write(old.join("LOUPE_STORE"), r#"{"format": "loupe-store", "version": 3}"#).unwrap();
    let err = rt.block_on(StoreReader::open(&at(&old))).err().unwrap().to_string();
    assert!(err.contains("version 3") && err.contains("upgrade loupe"), "{err}");
    std::fs::write(old.join("LOUPE_STORE"), r#"{"format": "loupe-store", "version": 0}"#).unwrap();
    let err = rt.block_on(StoreReader::open(&at(&old))).err().unwrap().to_string();
    assert!(err.contains("re-index"), "{err}");
}

/// Readers open local tables at `file-object-store://` (inline reads, the default below 8
/// cores) or `file+uring://` URLs (many cores or `LOUPE_LOCAL_READS=uring`): a folder name
/// that a URL must escape reads back like any other.
#[test]
fn a_store_in_a_folder_with_url_characters_reads_back() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a store %20 #1 ?x");
    let writer = rt.block_on(StoreWriter::open_or_create(&at(&root))).unwrap();
    let commit = commit_of("sae-a", 3, [&["cats"], &["dogs"], &["rain"]]);
    rt.block_on(writer.commit(std::slice::from_ref(&commit))).unwrap();
    let reader = rt.block_on(StoreReader::open(&at(&root))).unwrap();
    assert_eq!(rt.block_on(reader.features("sae-a")).unwrap(), commit.features);
    assert_dashboards(&rt, &reader, &commit);
    assert_eq!(reader.search("dogs", &SearchFilter::default(), 0, 10).unwrap().total, 1);
    // Which reader read the tables above (local_reads.rs checks the io_uring one directly).
    eprintln!("local reads: {:?}", loupe_store::local_reads().unwrap());
}
