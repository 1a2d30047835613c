//! The store on S3-compatible object storage, against a real S3 server (moto on loopback):
//! sharded and resumed index jobs give the same store as one local run, the writer lease,
//! and two query replicas on one bucket that share label writes and pick up a re-index
//! without a restart or a failed call.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loupe_corpus::CorpusSource;
use loupe_indexer::{DictionarySpec, Job, JobConfig, JobHooks, RunOptions, Shard};
use loupe_query::config::AccessConfig;
use loupe_query::Limits;
use loupe_schema::proto::v1 as pb;
use loupe_store::layout::{self, lock_writer_with_term};
use loupe_store::{append_alerts, append_labels, label_history, read_alerts, AlertFilter, AlertRecord, LabelRecord, Location, SearchFilter, StoreReader};
use loupe_tests::s3::S3Server;
use loupe_tests::*;

const BUCKET: &str = "loupe-e2e";

/// The fixture's job (64-token windows, 8 top examples) over `corpus` into `store`.
fn job_at(store: &str, storage: &BTreeMap<String, String>, corpus: &Path) -> Job {
    let mut config = JobConfig::new(PathBuf::from(store));
    config.storage = storage.clone();
    config.corpus = vec![CorpusSource::new(corpus)];
    config.dictionaries = vec![DictionarySpec { path: default_dictionary(), id: Some(DICTIONARY.into()) }];
    config.context = 64;
    config.top_k = 8;
    config.checkpoint_every = 1;
    Job::prepare(config, &default_model()).unwrap()
}

fn run(job: &Job, shard: Shard) -> loupe_indexer::RunReport {
    let interrupted = AtomicBool::new(false);
    job.run(RunOptions { shard, append: false, force: false }, &JobHooks { progress: &|_, _| {}, interrupted: &interrupted }).unwrap()
}

/// What a reader sees of the default dictionary: every feature row, a sample of stored
/// dashboards (as their bytes), and the hits of a few searches.
async fn content(store: &Location) -> Content {
    let reader = StoreReader::open(store).await.unwrap();
    let d_sae = reader.dictionaries().await.unwrap()[0].d_sae;
    let mut features = Vec::new();
    let mut dashboards = Vec::new();
    for f in 0..d_sae {
        features.push(reader.feature(DICTIONARY, f).await.unwrap().unwrap());
        if f % 97 == 0 {
            dashboards.push(reader.stored_dashboard(DICTIONARY, f, true).await.unwrap());
        }
    }
    let mut searches = Vec::new();
    for query in ["the", "lord", "love OR money", "\"and the\""] {
        // Every hit, by feature: tantivy's writer threads set the index's document order
        // either way, so equal scores may come in either order, and block-max WAND adds a
        // document's term scores in an order that follows the postings it walked (equal up
        // to rounding). The same features must match, with the same labels and scores.
        let hits = reader.search(query, &SearchFilter::default(), 0, 10_000).unwrap();
        let mut hits: Vec<(u32, Option<String>, f32)> = hits.hits.iter().map(|h| (h.feature, h.label.clone(), h.score)).collect();
        hits.sort_by_key(|h| h.0);
        searches.push(hits);
    }
    (features, dashboards, searches)
}

type Content = (Vec<loupe_store::FeatureRecord>, Vec<Option<Vec<u8>>>, Vec<Vec<(u32, Option<String>, f32)>>);

/// Compares two stores' content, naming the first difference (the records are large).
fn assert_same(got: &Content, expected: &Content, what: &str) {
    assert_eq!(got.0.len(), expected.0.len(), "{what}: feature count");
    if let Some((g, e)) = got.0.iter().zip(&expected.0).find(|(g, e)| g != e) {
        let brief = |f: &loupe_store::FeatureRecord| format!("max {} fires {} density {} contexts {:?} neighbours {:?}", f.max_activation, f.fire_count, f.density, f.top_contexts, f.neighbours);
        panic!("{what}: feature {} differs:\n got      {}\n expected {}", g.feature, brief(g), brief(e));
    }
    if let Some(i) = got.1.iter().zip(&expected.1).position(|(g, e)| g != e) {
        panic!("{what}: the stored dashboard of feature {} differs", i * 97);
    }
    for (query, (got, expected)) in got.2.iter().zip(&expected.2).enumerate() {
        let matched = |hits: &[(u32, Option<String>, f32)]| hits.iter().map(|(feature, label, _)| (*feature, label.clone())).collect::<Vec<_>>();
        assert_eq!(matched(got), matched(expected), "{what}: the hits of search {query}");
        for ((feature, _, g), (_, _, e)) in got.iter().zip(expected) {
            assert!((g - e).abs() <= 1e-5 * e.abs().max(1.0), "{what}: search {query} scores feature {feature} {g}, expected {e}");
        }
    }
}

fn loupe_index(s3: &S3Server, store: &str, corpus: &Path, extra: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(loupe_binary());
    command
        .args(["index", "--json", "--context", "64", "--top-k", "8", "--checkpoint-every", "1", "--store", store])
        .arg("--corpus")
        .arg(corpus)
        .arg("--dictionary")
        .arg(format!("{DICTIONARY}={}", default_dictionary().display()))
        .args(extra)
        .envs(s3.env())
        .env("LOUPE_LEASE_SECONDS", "3")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    command
}

#[test]
fn sharded_and_killed_index_jobs_on_s3_give_the_local_store() {
    let s3 = S3Server::start(&[BUCKET]);
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus_head(dir.path(), 24);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    // The reference: one run into a local folder.
    let local = dir.path().join("local");
    run(&job_at(local.to_str().unwrap(), &BTreeMap::new(), &corpus), Shard::WHOLE);
    let expected = rt.block_on(content(&Location::local(&local)));

    // Two shards and a merge, each with its own job (as on two nodes), on S3.
    let sharded = format!("s3://{BUCKET}/sharded");
    for index in 0..2 {
        let report = run(&job_at(&sharded, &s3.options(), &corpus), Shard { index, count: 2 });
        assert!(matches!(report.outcome, loupe_indexer::Outcome::ShardDone { .. }), "{report:?}");
    }
    let merged = job_at(&sharded, &s3.options(), &corpus).merge(2, false).unwrap();
    assert!(matches!(merged.outcome, loupe_indexer::Outcome::Committed(_)), "{merged:?}");
    let location = s3.location(&sharded);
    assert_same(&rt.block_on(content(&location)), &expected, "a sharded run on S3 against the local run");
    // The shards' checkpoints are gone once merged; the committed state stays for --append.
    let jobs = rt.block_on(location.list("jobs")).unwrap();
    assert!(jobs.iter().all(|k| !k.contains("/run-")) && jobs.iter().any(|k| k.ends_with("committed.state")), "{jobs:?}");

    // `loupe index` killed with SIGKILL once it has checkpointed, then run again: resumes
    // from the checkpoint on S3 and commits the same store.
    let killed = format!("s3://{BUCKET}/killed");
    let killed_location = s3.location(&killed);
    let mut child = loupe_index(&s3, &killed, &corpus, &[]).spawn().unwrap();
    let start = Instant::now();
    loop {
        let checkpoints = rt.block_on(killed_location.list("jobs")).unwrap_or_default();
        if checkpoints.iter().any(|k| k.contains("/run-")) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the job ended before it checkpointed; give it a larger corpus");
        assert!(start.elapsed() < Duration::from_secs(300), "no checkpoint on S3 after 300 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(rt.block_on(layout::current(&killed_location)).unwrap().is_none(), "nothing was committed before the kill");
    let output = loupe_index(&s3, &killed, &corpus, &[]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["status"], "committed", "{report}");
    assert!(report["resumed_from_window"].as_u64().unwrap() > 0, "the second run did not resume: {report}");
    assert_same(&rt.block_on(content(&killed_location)), &expected, "a killed and resumed run on S3 against the local run");

    // The same job again is up to date (the run record is on S3 too).
    let output = loupe_index(&s3, &killed, &corpus, &[]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["status"], "up_to_date", "{report}");
}

#[test]
fn the_writer_lease_excludes_a_second_writer_and_outlives_a_dead_one() {
    let s3 = S3Server::start(&[BUCKET]);
    let store = s3.location(&format!("s3://{BUCKET}/lease"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        // Shards of an Indexed Job start together on a new prefix: every one opens the store.
        let starts: Vec<_> = (0..6).map(|_| s3.location(&format!("s3://{BUCKET}/started-together"))).collect();
        for started in futures::future::join_all(starts.iter().map(layout::create_or_check)).await {
            started.unwrap();
        }
        let term = Duration::from_millis(900);
        let first = lock_writer_with_term(&store, term).await.unwrap();
        // Held and renewed: a second writer waits two terms, then gives up with who holds it.
        let t = Instant::now();
        let err = lock_writer_with_term(&store, term).await.err().expect("a second writer is refused").to_string();
        assert!(err.contains("another writer") && err.contains("pid"), "{err}");
        assert!(t.elapsed() >= term, "refused before the lease could have expired");
        first.check().unwrap();
        // Released on drop: the next writer gets it at once.
        drop(first);
        let second = lock_writer_with_term(&store, term).await.unwrap();
        second.check().unwrap();
        // A holder that died (no renewals) loses it when its term runs out.
        std::mem::forget(second);
        let dead = serde_json::json!({"holder": "a dead host pid 1", "expires_at_ms": now_ms() + 700});
        store.put("writer.lock", dead.to_string().into_bytes()).await.unwrap();
        let t = Instant::now();
        let third = lock_writer_with_term(&store, term).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(500), "took over a lease before it expired");
        third.check().unwrap();
    });
}

/// Writers that append at once to a table no one has created yet (alerts from several
/// servers on a new store): one creates it, the others append, and every acknowledged row
/// is kept. (Lance commits a create that finds the table already there as an overwrite
/// unless it is committed strictly; a writer that finds it created between its look and
/// its write is refused before committing.)
#[test]
fn racing_first_appends_on_object_storage_keep_every_row() {
    let s3 = S3Server::start(&[BUCKET]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        for round in 0..6 {
            let url = format!("s3://{BUCKET}/racing-{round}");
            layout::create_or_check(&s3.location(&url)).await.unwrap();
            let writers: Vec<_> = (0..6).map(|_| s3.location(&url)).collect();
            let rows: Vec<_> = (0..6).map(|i| [alert_row(&format!("{round}-{i}"))]).collect();
            for appended in futures::future::join_all(writers.iter().zip(&rows).map(|(store, row)| append_alerts(store, row))).await {
                appended.unwrap();
            }
            let mut stored: Vec<String> = read_alerts(&s3.location(&url), &AlertFilter::default()).await.unwrap().into_iter().map(|a| a.alert_id).collect();
            stored.sort();
            assert_eq!(stored, (0..6).map(|i| format!("{round}-{i}")).collect::<Vec<_>>(), "round {round}: acknowledged alerts lost");
        }
    });
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn limits() -> Limits {
    Limits { label_poll_ms: 100, generation_poll_ms: 200, ..Limits::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_bucket_share_labels_and_pick_up_a_reindex() {
    let s3 = S3Server::start(&[BUCKET]);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("s3://{BUCKET}/served");
    let store = s3.location(&url);
    let corpus = corpus_head(dir.path(), 20);
    let (options, job_corpus) = (s3.options(), corpus.clone());
    let url_for_job = url.clone();
    tokio::task::spawn_blocking(move || run(&job_at(&url_for_job, &options, &job_corpus), Shard::WHOLE)).await.unwrap();
    let reader = StoreReader::open(&store).await.unwrap();

    // Two replicas, each with its own cache folder for the downloaded search index.
    let a = start_server_at(store.clone(), limits(), false, AccessConfig::default()).await;
    let b = start_server_at(s3.location(&url), limits(), false, AccessConfig::default()).await;
    let (mut client_a, _) = clients(&a.addr).await;
    let (mut client_b, _) = clients(&b.addr).await;
    for client in [&mut client_a, &mut client_b] {
        let hits = client.search_features(pb::SearchFeaturesRequest { query: "the".into(), limit: 10, ..Default::default() }).await.unwrap().into_inner();
        let expected = reader.search("the", &SearchFilter::default(), 0, 10).unwrap();
        assert_eq!(hits.hits.iter().map(|h| h.feature.as_ref().unwrap().feature).collect::<Vec<_>>(), expected.hits.iter().map(|h| h.feature).collect::<Vec<_>>());
        let dashboard = client.get_feature(pb::GetFeatureRequest { feature: fref(5), ..Default::default() }).await.unwrap().into_inner();
        let stored = reader.dashboard(DICTIONARY, 5, "", true).await.unwrap().unwrap();
        assert_eq!(dashboard.dashboard.unwrap().top_examples, stored.top_examples);
    }

    // A label written through one replica is served by the other.
    let set = pb::SetFeatureLabelRequest { feature: fref(7), label: "written through replica a".into(), author: Some("e2e".into()) };
    client_a.set_feature_label(set).await.unwrap();
    let start = Instant::now();
    loop {
        let got = client_b.get_feature(pb::GetFeatureRequest { feature: fref(7), ..Default::default() }).await.unwrap().into_inner();
        if got.dashboard.unwrap().label.as_deref() == Some("written through replica a") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "replica b never saw replica a's label");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(label_history(&store, DICTIONARY, 7).await.unwrap().len(), 1);

    // Appends from two writers at once on one table: none is lost.
    let other = s3.location(&url);
    let (alert_x, alert_y) = ([alert_row("x")], [alert_row("y")]);
    let (x, y) = tokio::join!(append_alerts(&store, &alert_x), append_alerts(&other, &alert_y));
    x.unwrap();
    y.unwrap();
    let (label_x, label_y) = ([label_row(8, "x")], [label_row(9, "y")]);
    let (x, y) = tokio::join!(append_labels(&store, &label_x), append_labels(&other, &label_y));
    x.unwrap();
    y.unwrap();
    assert_eq!(read_alerts(&store, &AlertFilter::default()).await.unwrap().len(), 2);

    // Re-index with another corpus while both replicas answer a stream of calls: they move
    // to the new generation by themselves, and no call fails.
    let before = layout::current(&store).await.unwrap().unwrap().generation;
    let other_corpus = dir.path().join("other.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(demo_corpus()).unwrap().lines().skip(500).take(20).map(String::from).collect();
    std::fs::write(&other_corpus, lines.join("\n") + "\n").unwrap();
    let indexing = Arc::new(AtomicBool::new(true));
    let job = {
        let (indexing, mut command) = (indexing.clone(), loupe_index(&s3, &url, &other_corpus, &[]));
        tokio::task::spawn_blocking(move || {
            let output = command.output();
            indexing.store(false, Ordering::SeqCst);
            output.unwrap()
        })
    };
    let mut calls = 0;
    let mut seen = [0u64; 2];
    let deadline = Instant::now() + Duration::from_secs(600);
    while indexing.load(Ordering::SeqCst) || seen.iter().any(|&g| g <= before) {
        assert!(Instant::now() < deadline, "the replicas did not move to the new generation: {seen:?}");
        for (i, client) in [&mut client_a, &mut client_b].into_iter().enumerate() {
            client.search_features(pb::SearchFeaturesRequest { query: "the".into(), limit: 5, ..Default::default() }).await.expect("search during the re-index");
            client.get_feature(pb::GetFeatureRequest { feature: fref(11), ..Default::default() }).await.expect("a dashboard during the re-index");
            seen[i] = client.list_dictionaries(pb::ListDictionariesRequest {}).await.unwrap().into_inner().store_generation;
            calls += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = job.await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(calls > 10, "too few calls overlapped the re-index ({calls})");
    let after = StoreReader::open(&store).await.unwrap();
    assert_eq!(seen, [after.generation().generation; 2]);
    // The new generation's search answers come from its own index, on both replicas.
    let expected = after.search("the", &SearchFilter::default(), 0, 10).unwrap();
    for client in [&mut client_a, &mut client_b] {
        let hits = client.search_features(pb::SearchFeaturesRequest { query: "the".into(), limit: 10, ..Default::default() }).await.unwrap().into_inner();
        assert_eq!(hits.hits.iter().map(|h| h.feature.as_ref().unwrap().feature).collect::<Vec<_>>(), expected.hits.iter().map(|h| h.feature).collect::<Vec<_>>());
    }
}

fn alert_row(id: &str) -> AlertRecord {
    AlertRecord {
        alert_id: id.into(),
        monitor: "m".into(),
        version: 1,
        request_id: id.into(),
        input_id: String::new(),
        caller: "e2e".into(),
        created_at_us: 1,
        severity: "low".into(),
        action: "log".into(),
        score: 1.0,
        threshold: 0.5,
        first_token: 0,
        spans: "[]".into(),
        text_sha256: String::new(),
        text: None,
    }
}

fn label_row(feature: u32, text: &str) -> LabelRecord {
    LabelRecord::now(DICTIONARY, feature, Some(text.into()), "e2e")
}
