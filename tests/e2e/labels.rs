//! Label writes through the API: many at once on one server, two servers on one store, and
//! label writes while an index job commits a new generation. None may be lost, none may
//! fail, and none creates a generation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use loupe_query::Limits;
use loupe_schema::proto::v1 as pb;
use loupe_schema::proto::v1::features_client::FeaturesClient;
use loupe_store::{label_history, Location, StoreReader};
use loupe_tests::{clients, corpus_head, default_dictionary, fref, loupe_binary, private_store, start_server, DICTIONARY};
use tonic::transport::Channel;

fn label_request(feature: u32, label: &str, author: &str) -> pb::SetFeatureLabelRequest {
    pb::SetFeatureLabelRequest { feature: fref(feature), label: label.into(), author: Some(author.into()) }
}

/// A word no corpus holds, unique to feature `f`.
fn marker(f: u32) -> String {
    format!("qzx{f}marker")
}

async fn label_of(client: &mut FeaturesClient<Channel>, feature: u32) -> Option<String> {
    let dashboard = client.get_feature(pb::GetFeatureRequest { feature: fref(feature), max_top_examples: 0, max_interval_examples: 0, include: None }).await.unwrap().into_inner();
    dashboard.dashboard.unwrap().label
}

async fn search_hits(client: &mut FeaturesClient<Channel>, query: &str) -> Vec<(u32, Option<String>)> {
    let found = client.search_features(pb::SearchFeaturesRequest { query: query.into(), limit: 100, ..Default::default() }).await.unwrap().into_inner();
    found.hits.into_iter().map(|h| (h.feature.unwrap().feature, h.label)).collect()
}

/// Polls `client`'s search until `query` finds exactly `expected`, for at most `within`.
async fn searchable_within(client: &mut FeaturesClient<Channel>, query: &str, expected: &[(u32, Option<String>)], within: Duration) -> bool {
    let start = Instant::now();
    loop {
        if search_hits(client, query).await == expected {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_label_calls_on_one_server_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let store = private_store(dir.path()).await;
    let server = start_server(&store, Limits::default(), false).await;
    let (client, _) = clients(&server.addr).await;
    let generation = server.state.snapshot().reader.generation().generation;

    // 32 calls sent at the same moment, each labelling its own feature.
    let calls = (0..32u32).map(|f| {
        let mut client = client.clone();
        async move { client.set_feature_label(label_request(f, &format!("{} feature", marker(f)), "one-server")).await }
    });
    for answer in join_all(calls).await {
        assert_eq!(answer.expect("every label call succeeds").into_inner().store_generation, generation, "labels create no generation");
    }
    let mut client = client;
    for f in 0..32u32 {
        let expected = format!("{} feature", marker(f));
        assert_eq!(label_of(&mut client, f).await.as_deref(), Some(expected.as_str()));
        assert_eq!(search_hits(&mut client, &marker(f)).await, vec![(f, Some(expected))]);
    }

    // 32 calls at once on one feature: all succeed, all are kept in the history, and the
    // label is the last one committed.
    let calls = (0..32u32).map(|i| {
        let mut client = client.clone();
        async move { client.set_feature_label(label_request(40, &format!("take {i}"), "same-feature")).await }
    });
    assert!(join_all(calls).await.iter().all(|answer| answer.is_ok()));
    let history = label_history(&Location::local(&store), DICTIONARY, 40).await.unwrap();
    assert_eq!(history.len(), 32);
    assert_eq!(label_of(&mut client, 40).await, history.last().unwrap().label);
    assert_eq!(loupe_store::layout::current(&Location::local(&store)).await.unwrap().unwrap().generation, generation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_store_keep_both_writers_labels() {
    let dir = tempfile::tempdir().unwrap();
    let store = private_store(dir.path()).await;
    let limits = Limits::default();
    let (a, b) = (start_server(&store, limits, false).await, start_server(&store, limits, false).await);
    let (client_a, _) = clients(&a.addr).await;
    let (client_b, _) = clients(&b.addr).await;

    // Both servers take 16 label writes each, all at the same time.
    let calls = (100..132u32).map(|f| {
        let mut client = if f % 2 == 0 { client_a.clone() } else { client_b.clone() };
        async move { client.set_feature_label(label_request(f, &marker(f), if f % 2 == 0 { "server-a" } else { "server-b" })).await }
    });
    for answer in join_all(calls).await {
        answer.expect("every label call succeeds");
    }
    // Each server's own writes are searchable when the call returns; the other server's
    // within a second (it follows the labels table every 250 ms).
    let (mut client_a, mut client_b) = (client_a, client_b);
    for f in 100..132u32 {
        let expected = vec![(f, Some(marker(f)))];
        let (own, other) = if f % 2 == 0 { (&mut client_a, &mut client_b) } else { (&mut client_b, &mut client_a) };
        assert_eq!(search_hits(own, &marker(f)).await, expected, "feature {f} on the server that wrote it");
        assert!(searchable_within(other, &marker(f), &expected, Duration::from_secs(1)).await, "feature {f}'s label did not reach the other server within 1 s");
    }
    // And a server started afterwards reads them all from the store.
    let c = start_server(&store, limits, false).await;
    let (mut client_c, _) = clients(&c.addr).await;
    for f in 100..132u32 {
        assert_eq!(label_of(&mut client_c, f).await, Some(marker(f)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_writes_and_an_index_commit_do_not_block_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = private_store(dir.path()).await;
    let server = start_server(&store, Limits::default(), false).await;
    let (client, _) = clients(&server.addr).await;
    let before = loupe_store::layout::current(&Location::local(&store)).await.unwrap().unwrap().generation;

    // Re-index the store (a new generation) with the real `loupe index`, in another process...
    let corpus = corpus_head(dir.path(), 20);
    let index = std::process::Command::new(loupe_binary())
        .args(["index", "--force", "--json", "--context", "64", "--top-k", "8", "--store"])
        .arg(&store)
        .arg("--corpus")
        .arg(&corpus)
        .arg("--dictionary")
        .arg(format!("{DICTIONARY}={}", default_dictionary().display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let indexing = Arc::new(AtomicBool::new(true));
    let job = {
        let indexing = indexing.clone();
        tokio::task::spawn_blocking(move || {
            let output = index.wait_with_output();
            indexing.store(false, Ordering::SeqCst);
            output.unwrap()
        })
    };
    // ...while labels are written through the server until the job is done.
    let mut during = 0;
    let mut written = Vec::new();
    let mut client = client;
    for f in 200u32..400 {
        if !indexing.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.set_feature_label(label_request(f, &marker(f), "while-indexing")).await.expect("a label write while the job runs");
        if indexing.load(Ordering::SeqCst) {
            during += 1;
        }
        written.push(f);
    }
    let output = job.await.unwrap();
    assert!(output.status.success(), "loupe index failed while labels were written: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["status"], "committed", "{report}");
    assert!(during > 0, "no label write overlapped the job");

    // The job committed its generation; every label is there, in the new generation too.
    let after = StoreReader::open(&Location::local(&store)).await.unwrap();
    assert_eq!(after.generation().generation, before + 1);
    for &f in &written {
        assert_eq!(after.feature(DICTIONARY, f).await.unwrap().unwrap().label, Some(marker(f)), "feature {f}");
        assert_eq!(label_of(&mut client, f).await, Some(marker(f)));
    }
}

/// GetFeature and SearchFeatures answer repeated requests from their caches, and a label
/// written after an answer was cached, on this server or on another one sharing the store,
/// shows in the next answer (within the other server's label poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_answers_carry_the_current_label() {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let store = private_store(dir.path()).await;
    let limits = Limits::default();
    let (a, b) = (start_server(&store, limits, false).await, start_server(&store, limits, false).await);
    let (mut client_a, _) = clients(&a.addr).await;
    let (mut client_b, _) = clients(&b.addr).await;
    let request = pb::GetFeatureRequest { feature: fref(5), max_top_examples: 4, max_interval_examples: 1, include: None };
    let first = client_a.get_feature(request.clone()).await.unwrap().into_inner().dashboard.unwrap();
    let (entries, bytes) = a.state.dashboards.usage();
    assert_eq!(entries, 1, "the dashboard is cached");
    assert!(bytes as usize >= first.encoded_len(), "{bytes} bytes weighed for a {}-byte dashboard", first.encoded_len());
    let unchanged = |label: Option<String>| pb::FeatureDashboard { label, ..first.clone() };
    // Searches for the coming labels' words, cached while nothing matches them.
    assert_eq!(search_hits(&mut client_a, "qzxcachedmarker").await, vec![]);
    assert_eq!(search_hits(&mut client_a, "qzxothermarker").await, vec![]);
    assert_eq!(a.state.searches.usage().0, 2, "both searches cached");

    client_a.set_feature_label(label_request(5, "labelled after caching qzxcachedmarker", "tester")).await.unwrap();
    let second = client_a.get_feature(request.clone()).await.unwrap().into_inner().dashboard.unwrap();
    assert_eq!(second, unchanged(Some("labelled after caching qzxcachedmarker".into())), "the same dashboard with the new label");
    assert_eq!(a.state.dashboards.usage().0, 1, "answered from the cache, not read again");
    assert_eq!(search_hits(&mut client_a, "qzxcachedmarker").await, vec![(5, Some("labelled after caching qzxcachedmarker".into()))]);

    client_b.set_feature_label(label_request(5, "labelled on the other server qzxothermarker", "tester")).await.unwrap();
    let start = Instant::now();
    loop {
        let third = client_a.get_feature(request.clone()).await.unwrap().into_inner().dashboard.unwrap();
        if third.label.as_deref() == Some("labelled on the other server qzxothermarker") {
            assert_eq!(third, unchanged(third.label.clone()));
            assert_eq!(search_hits(&mut client_a, "qzxothermarker").await, vec![(5, third.label.clone())]);
            assert_eq!(search_hits(&mut client_a, "qzxcachedmarker").await, vec![], "the replaced label is no longer found");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(2), "the other server's label did not reach the cached dashboard");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
