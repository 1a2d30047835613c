//! The request validation of every unary RPC, fuzzed against a real server: a valid request
//! per method, then seeded mutations of its encoding (loupe-fuzz's mutator) sent as raw
//! bytes. Every answer must be a deliberate status (OK, INVALID_ARGUMENT, NOT_FOUND,
//! RESOURCE_EXHAUSTED, ...): INTERNAL or UNKNOWN would be a panic or an unchecked input, and
//! the server must still answer at the end. `LOUPE_FUZZ_REQUESTS` mutations per method
//! (default 40).

use std::collections::BTreeMap;

use bytes::{Buf, BufMut};
use loupe_fuzz::mutate::{mutate, Mutator};
use loupe_query::Limits;
use loupe_schema::proto::v1 as pb;
use loupe_tests::{fref, private_store, start_server};
use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

/// Bytes in, bytes out: the request goes on the wire exactly as mutated.
#[derive(Default)]
struct Raw;

struct RawEncoder;
struct RawDecoder;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// A valid request for each unary method, encoded.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let monitor = pb::MonitorDefinition {
        name: "fuzzed".into(),
        description: "fuzz".into(),
        detectors: vec![pb::Detector {
            signal: Some(pb::Signal { signal: Some(pb::signal::Signal::Feature(pb::FeatureRef { dictionary_id: loupe_tests::DICTIONARY.into(), feature: 3 })) }),
            threshold: 1.0,
            ..Default::default()
        }],
    };
    let labelled = |text: &str, label: bool| pb::LabelledText { text: text.into(), label };
    let examples = vec![labelled("a kind word", false), labelled("a cruel word", true), labelled("hello there", false), labelled("go away now", true)];
    vec![
        ("/loupe.v1.Features/ListDictionaries", pb::ListDictionariesRequest {}.encode_to_vec()),
        (
            "/loupe.v1.Features/SearchFeatures",
            pb::SearchFeaturesRequest { query: "the \"a b\" c*".into(), limit: 5, min_density: Some(0.0), max_density: Some(0.5), ..Default::default() }.encode_to_vec(),
        ),
        ("/loupe.v1.Features/GetFeature", pb::GetFeatureRequest { feature: fref(1), max_top_examples: 3, max_interval_examples: 1 }.encode_to_vec()),
        ("/loupe.v1.Features/SimilarFeatures", pb::SimilarFeaturesRequest { feature: fref(1), k: 3, ..Default::default() }.encode_to_vec()),
        ("/loupe.v1.Features/TopFeaturesForText", pb::TopFeaturesForTextRequest { text: "The cat sat".into(), k: 3, ..Default::default() }.encode_to_vec()),
        ("/loupe.v1.Features/SetFeatureLabel", pb::SetFeatureLabelRequest { feature: fref(2), label: "fuzzed".into(), author: Some("fuzz".into()) }.encode_to_vec()),
        ("/loupe.v1.Internals/Tokenize", pb::TokenizeRequest { text: "Hello world".into(), ..Default::default() }.encode_to_vec()),
        ("/loupe.v1.Internals/GetActivations", pb::GetActivationsRequest { text: "Hi there".into(), hooks: vec!["blocks.1.hook_resid_post".into()], ..Default::default() }.encode_to_vec()),
        (
            "/loupe.v1.Steering/Steer",
            pb::SteerRequest {
                prompt: "Once".into(),
                interventions: vec![pb::Intervention {
                    target: Some(pb::intervention::Target::Feature(pb::FeatureRef { dictionary_id: loupe_tests::DICTIONARY.into(), feature: 3 })),
                    strength: 2.0,
                    ..Default::default()
                }],
                max_new_tokens: 2,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "/loupe.v1.Steering/CreateVector",
            pb::CreateVectorRequest { name: "fuzzed".into(), hook: "blocks.1.hook_resid_post".into(), positive: vec!["happy".into()], negative: vec!["sad".into()], ..Default::default() }
                .encode_to_vec(),
        ),
        ("/loupe.v1.Steering/ListVectors", pb::ListVectorsRequest {}.encode_to_vec()),
        ("/loupe.v1.Steering/DeleteVector", pb::DeleteVectorRequest { name: "fuzzed".into(), author: None }.encode_to_vec()),
        ("/loupe.v1.Monitoring/CreateMonitor", pb::CreateMonitorRequest { definition: Some(monitor.clone()), author: None }.encode_to_vec()),
        ("/loupe.v1.Monitoring/UpdateMonitor", pb::UpdateMonitorRequest { definition: Some(monitor), author: None }.encode_to_vec()),
        ("/loupe.v1.Monitoring/GetMonitor", pb::GetMonitorRequest { name: "fuzzed".into(), version: 0 }.encode_to_vec()),
        ("/loupe.v1.Monitoring/ListMonitors", pb::ListMonitorsRequest { include_archived: true }.encode_to_vec()),
        ("/loupe.v1.Monitoring/DeleteMonitor", pb::DeleteMonitorRequest { name: "fuzzed".into(), author: None }.encode_to_vec()),
        ("/loupe.v1.Monitoring/Score", pb::ScoreRequest { inputs: vec![pb::ScoreInput { text: "score this".into(), ..Default::default() }], ..Default::default() }.encode_to_vec()),
        ("/loupe.v1.Monitoring/ListAlerts", pb::ListAlertsRequest { limit: 5, since: "2026-01-01T00:00:00Z".into(), ..Default::default() }.encode_to_vec()),
        ("/loupe.v1.Monitoring/TrainProbe", pb::TrainProbeRequest { hook: "blocks.1.hook_resid_post".into(), examples: examples.clone(), ..Default::default() }.encode_to_vec()),
        ("/loupe.v1.Monitoring/EvaluateMonitor", pb::EvaluateMonitorRequest { monitor: "fuzzed".into(), examples, bootstrap: 10, ..Default::default() }.encode_to_vec()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_get_deliberate_statuses_and_the_server_stays_up() {
    let mutations: usize = std::env::var("LOUPE_FUZZ_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let dir = tempfile::tempdir().unwrap();
    let store = private_store(dir.path()).await;
    // Small generation and text limits keep mutated model calls short.
    let limits = Limits { max_new_tokens: 8, default_new_tokens: 4, max_tokens: 64, max_text_bytes: 512, max_train_texts: 16, ..Limits::default() };
    let server = start_server(&store, limits, true).await;
    let channel = loupe_tests::channel(&server.addr).await;
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    let seeds = seeds();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut rng = Mutator::seeded(0xF022);
    for (path, seed) in &seeds {
        for i in 0..=mutations {
            let body = if i == 0 { seed.clone() } else { mutate(seed, &seeds[rng.below(seeds.len())].1, &mut rng) };
            grpc.ready().await.unwrap();
            let path_and_query = tonic::codegen::http::uri::PathAndQuery::from_static(path);
            let outcome = grpc.unary(tonic::Request::new(body.clone()), path_and_query, Raw).await;
            let code = outcome.as_ref().map_or_else(|s| s.code(), |_| Code::Ok);
            if let Err(status) = &outcome {
                assert!(
                    !matches!(status.code(), Code::Internal | Code::Unknown),
                    "{path} answered {:?} {:?} to a mutated request (hex {})",
                    status.code(),
                    status.message(),
                    body.iter().map(|b| format!("{b:02x}")).collect::<String>()
                );
            }
            *codes.entry(format!("{code:?}")).or_default() += 1;
        }
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("the server still answers");
    eprintln!("{} methods x {} requests: {codes:?}", seeds.len(), mutations + 1);
    assert!(codes.get("Ok").copied().unwrap_or(0) >= seeds.len(), "the valid seeds succeed: {codes:?}");
}
