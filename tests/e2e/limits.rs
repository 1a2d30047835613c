//! The server under pressure, through a real client: a passed deadline, a full model queue
//! and a server without a model answer with their status codes, and the server goes on.

use std::time::Duration;

use loupe_query::Limits;
use loupe_schema::proto::v1 as pb;
use loupe_tests::{assert_code, clients, private_store, start_server};
use tonic::{Code, Request};

/// A GetActivations call that runs every layer over ~1,000 tokens: long enough to be caught
/// by a short deadline or to keep the one worker busy.
fn long_call() -> pb::GetActivationsRequest {
    pb::GetActivationsRequest { text: "one two three four five ".repeat(200), token_ids: vec![], hooks: vec!["blocks.29.hook_resid_post".into()] }
}

fn short_call() -> pb::GetActivationsRequest {
    pb::GetActivationsRequest { text: "The cat sat".into(), token_ids: vec![], hooks: vec!["hook_embed".into()] }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_full_queues_and_missing_models_have_their_codes() {
    let dir = tempfile::tempdir().unwrap();
    let store = private_store(dir.path()).await;
    let limits = Limits { model_workers: 1, max_waiting: 0, ..Limits::default() };
    let server = start_server(&store, limits, true).await;
    let (_, internals) = clients(&server.addr).await;

    // A deadline shorter than the forward pass: DEADLINE_EXCEEDED, and the worker comes free.
    let mut request = Request::new(long_call());
    request.set_timeout(Duration::from_millis(30));
    let status = internals.clone().get_activations(request).await.expect_err("the deadline passes first");
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    let mut freed = false;
    for _ in 0..500 {
        match internals.clone().get_activations(short_call()).await {
            Ok(_) => {
                freed = true;
                break;
            }
            Err(status) if status.code() == Code::ResourceExhausted => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(status) => panic!("{status:?}"),
        }
    }
    assert!(freed, "the worker stayed busy after its caller's deadline passed");

    // One worker, no queue: while a long call runs, the next is refused at once.
    let busy = tokio::spawn({
        let mut internals = internals.clone();
        async move { internals.get_activations(long_call()).await }
    });
    // Probe only once the long call holds the worker (a probe sent earlier could take the
    // worker first and get the long call refused instead, on a loaded machine).
    for _ in 0..1000 {
        if server.state.workers.in_flight() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut refused = None;
    for _ in 0..200 {
        match internals.clone().get_activations(short_call()).await {
            Err(status) if status.code() == Code::ResourceExhausted => {
                refused = Some(status);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    let refused = refused.expect("a call while the one worker is busy is refused");
    assert!(refused.message().contains("busy"), "{refused:?}");
    busy.await.unwrap().expect("the long call itself succeeds");

    // A server without a model answers model calls with FAILED_PRECONDITION and how to fix it, and
    // still serves the index.
    let index_only = start_server(&store, Limits::default(), false).await;
    let (mut features, mut internals) = clients(&index_only.addr).await;
    assert_code(internals.get_activations(short_call()).await, Code::FailedPrecondition, "no model loaded");
    let text = pb::TopFeaturesForTextRequest { text: "hi".into(), ..Default::default() };
    assert_code(features.top_features_for_text(text).await, Code::FailedPrecondition, "no model loaded");
    assert!(!features.list_dictionaries(pb::ListDictionariesRequest {}).await.unwrap().into_inner().dictionaries.is_empty());
}
