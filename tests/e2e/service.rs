//! Every RPC of the service end to end: the fixture store (demo corpus, default dictionary),
//! a real server on an ephemeral loopback port, every call through the generated tonic
//! client.

use loupe_query::Limits;
use loupe_schema::proto::v1 as pb;
use loupe_tests::{assert_code, clients, fref, private_store, start_server, DICTIONARY};
use tonic::transport::Channel;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_over_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let store = private_store(dir.path()).await;
    let server = start_server(&store, Limits { max_text_bytes: 2000, max_tokens: 256, ..Limits::default() }, true).await;
    let (mut features, mut internals) = clients(&server.addr).await;

    // ListDictionaries
    let list = features.list_dictionaries(pb::ListDictionariesRequest {}).await.unwrap().into_inner();
    assert_eq!(list.dictionaries.len(), 1);
    let d = &list.dictionaries[0];
    assert_eq!((d.dictionary_id.as_str(), d.hook.as_str(), d.d_sae, d.layer, d.loaded), (DICTIONARY, "blocks.9.hook_resid_post", 4608, Some(9), true));
    let manifest: serde_json::Value = serde_json::from_str(&d.manifest_json).unwrap();
    assert!(manifest["tokens_seen"].as_u64().unwrap() > 1000, "{manifest}");

    // Pick a feature with examples: the strongest feature of some stored window.
    let dashboard = features.get_feature(pb::GetFeatureRequest { feature: fref(0), max_top_examples: 0, max_interval_examples: 0, include: None }).await.unwrap().into_inner();
    assert!(dashboard.dashboard.is_some());
    let mut chosen = None;
    for f in 0..4608 {
        let d = features.get_feature(pb::GetFeatureRequest { feature: fref(f), max_top_examples: 0, max_interval_examples: 0, include: None }).await.unwrap().into_inner().dashboard.unwrap();
        if d.top_examples.len() >= 4 {
            let e = &d.top_examples[0];
            let word = e.tokens[e.max_position as usize].trim().to_lowercase();
            if word.len() >= 4 && word.chars().all(|c| c.is_alphabetic()) {
                chosen = Some((f, d, word));
                break;
            }
        }
    }
    let (f, dash, word) = chosen.expect("some feature peaks on a word");
    assert_eq!(dash.histogram.as_ref().unwrap().counts.iter().sum::<u64>(), dash.fire_count);
    assert_eq!(dash.top_logits.len(), 10);
    assert_eq!(dash.neighbours.len(), 10);
    assert!(dash.top_examples.windows(2).all(|w| w[0].max_activation >= w[1].max_activation));
    // Parts: only the histogram asked for; the statistics come with every dashboard.
    let only = |parts: pb::DashboardParts| pb::GetFeatureRequest { feature: fref(f), max_top_examples: 0, max_interval_examples: 0, include: Some(parts) };
    let histogram = features.get_feature(only(pb::DashboardParts { histogram: true, ..Default::default() })).await.unwrap().into_inner().dashboard.unwrap();
    assert_eq!(
        histogram,
        pb::FeatureDashboard { top_examples: vec![], interval_examples: vec![], top_logits: vec![], bottom_logits: vec![], neighbours: vec![], ..dash.clone() },
        "the full dashboard less what was not asked for"
    );
    let examples = features.get_feature(only(pb::DashboardParts { top_examples: true, logits: true, ..Default::default() })).await.unwrap().into_inner().dashboard.unwrap();
    assert_eq!((examples.top_examples, examples.top_logits, examples.histogram, examples.interval_examples.len()), (dash.top_examples.clone(), dash.top_logits.clone(), None, 0));

    // SearchFeatures: the peak word of its best example finds it on the first page.
    let hits = features.search_features(pb::SearchFeaturesRequest { query: word.clone(), dictionary_id: Some(DICTIONARY.into()), limit: 20, ..Default::default() }).await.unwrap().into_inner();
    assert!(hits.hits.iter().any(|h| h.feature.as_ref().unwrap().feature == f), "{word:?} did not find feature {f}: {hits:?}");
    let hit = &hits.hits[0];
    assert!(!hit.snippet.is_empty() && hit.score > 0.0);
    let prefix = features.search_features(pb::SearchFeaturesRequest { query: format!("{}*", &word[..3]), ..Default::default() }).await.unwrap().into_inner();
    assert!(prefix.total >= 1);
    let page2 = features.search_features(pb::SearchFeaturesRequest { query: word.clone(), offset: 1, limit: 1, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(page2.total, hits.total);
    assert!(!hits.total_is_estimate, "{} matches are counted exactly", hits.total);

    // TopFeaturesForText on the stored top example: the feature is among the top features
    // of its max token, with the stored activation.
    let e = &dash.top_examples[0];
    let text = features.top_features_for_text(pb::TopFeaturesForTextRequest { token_ids: e.token_ids.clone(), k: 32, ..Default::default() }).await.unwrap().into_inner();
    let at_max = &text.tokens[e.max_position as usize];
    assert_eq!(at_max.position, e.max_position);
    let found = at_max.features.iter().find(|a| a.feature.as_ref().unwrap().feature == f).expect("feature among the max token's features");
    assert!((found.activation - e.max_activation).abs() <= 1e-4, "{} vs stored {}", found.activation, e.max_activation);
    let by_text = features.top_features_for_text(pb::TopFeaturesForTextRequest { text: "The king and the queen".into(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(by_text.tokens.len(), 5, "BOS left out");
    assert!(by_text.tokens.iter().all(|t| t.features.len() == 5));
    assert_eq!(by_text.text_features.len(), 20);

    // SimilarFeatures: exact decoder cosine, equal to the stored neighbours.
    let similar = features.similar_features(pb::SimilarFeaturesRequest { feature: fref(f), dictionary_ids: vec![], k: 10 }).await.unwrap().into_inner();
    let stored: Vec<u32> = dash.neighbours.iter().map(|n| n.feature.as_ref().unwrap().feature).collect();
    let served: Vec<u32> = similar.neighbours.iter().map(|n| n.feature.as_ref().unwrap().feature).collect();
    assert_eq!(served, stored);

    // SetFeatureLabel: searchable when the call returns, without a new generation.
    let labelled = features.set_feature_label(pb::SetFeatureLabelRequest { feature: fref(f), label: "zebracorn detector".into(), author: None }).await.unwrap().into_inner();
    assert_eq!(labelled.store_generation, list.store_generation);
    let found = features.search_features(pb::SearchFeaturesRequest { query: "zebracorn".into(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(found.hits.iter().map(|h| (h.feature.as_ref().unwrap().feature, h.label.clone())).collect::<Vec<_>>(), vec![(f, Some("zebracorn detector".into()))]);

    // Tokenize and GetActivations.
    let tokens = internals.tokenize(pb::TokenizeRequest { text: "Call 555".into(), add_bos: None }).await.unwrap().into_inner();
    assert_eq!(tokens.tokens[0], "<|im_start|>");
    assert_eq!(tokens.tokens.len(), tokens.token_ids.len());
    let acts = internals
        .get_activations(pb::GetActivationsRequest { text: "Call 555".into(), token_ids: vec![], hooks: vec!["blocks.9.hook_resid_post".into(), "model.layers.3".into()] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acts.tensors.len(), 2);
    assert_eq!(acts.tensors[0].shape, vec![tokens.token_ids.len() as u64, 576]);
    assert_eq!(acts.tensors[0].data.len(), tokens.token_ids.len() * 576 * 4);

    // Bad input: the right code and a message a person can act on; the server stays up.
    let search = |query: &str| pb::SearchFeaturesRequest { query: query.into(), ..Default::default() };
    assert_code(features.search_features(search("")).await, Code::InvalidArgument, "query is empty");
    assert_code(features.search_features(search("cats AND (")).await, Code::InvalidArgument, "search query");
    assert_code(features.search_features(pb::SearchFeaturesRequest { query: "a".into(), limit: 1000, ..Default::default() }).await, Code::InvalidArgument, "at most 100");
    assert_code(features.search_features(pb::SearchFeaturesRequest { query: "a".into(), dictionary_id: Some("nope".into()), ..Default::default() }).await, Code::NotFound, "no dictionary \"nope\"");
    assert_code(features.get_feature(pb::GetFeatureRequest { feature: fref(99_999), ..Default::default() }).await, Code::NotFound, "out of range");
    assert_code(features.get_feature(pb::GetFeatureRequest { feature: None, ..Default::default() }).await, Code::InvalidArgument, "feature is missing");
    assert_code(features.similar_features(pb::SimilarFeaturesRequest { feature: fref(5000), ..Default::default() }).await, Code::NotFound, "out of range");
    let empty = pb::TopFeaturesForTextRequest { text: "   ".into(), ..Default::default() };
    assert_code(features.top_features_for_text(empty).await, Code::InvalidArgument, "text is empty");
    let huge = pb::TopFeaturesForTextRequest { text: "word ".repeat(1000), ..Default::default() };
    assert_code(features.top_features_for_text(huge).await, Code::ResourceExhausted, "at most 2000");
    let long = pb::TopFeaturesForTextRequest { text: "1 2 3 4 5 6 7 8 9 ".repeat(20), ..Default::default() };
    assert_code(features.top_features_for_text(long).await, Code::ResourceExhausted, "at most 256");
    let unknown = pb::TopFeaturesForTextRequest { text: "hi".into(), dictionary_ids: vec!["nope".into()], ..Default::default() };
    assert_code(features.top_features_for_text(unknown).await, Code::NotFound, "no dictionary");
    assert_code(features.set_feature_label(pb::SetFeatureLabelRequest { feature: fref(4608), label: "x".into(), author: None }).await, Code::NotFound, "out of range");
    let bad_hook = pb::GetActivationsRequest { text: "hi".into(), token_ids: vec![], hooks: vec!["blocks.9.hook_bogus".into()] };
    assert_code(internals.get_activations(bad_hook).await, Code::InvalidArgument, "hook_bogus");
    let deep_hook = pb::GetActivationsRequest { text: "hi".into(), token_ids: vec![], hooks: vec!["blocks.99.hook_resid_post".into()] };
    assert_code(internals.get_activations(deep_hook).await, Code::InvalidArgument, "30 layers");
    let bad_ids = pb::GetActivationsRequest { text: String::new(), token_ids: vec![1, 999_999], hooks: vec!["hook_embed".into()] };
    assert_code(internals.get_activations(bad_ids).await, Code::InvalidArgument, "outside the vocabulary");
    // Still serving.
    assert_eq!(features.list_dictionaries(pb::ListDictionariesRequest {}).await.unwrap().into_inner().dictionaries.len(), 1);

    // Health and reflection, as grpcurl uses them.
    let channel = Channel::from_shared(server.addr.clone()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health.check(tonic_health::pb::HealthCheckRequest { service: "loupe.v1.Features".into() }).await.unwrap().into_inner();
    assert_eq!(serving.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}
