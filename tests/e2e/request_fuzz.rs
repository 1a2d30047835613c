//! The request validation of every RPC, fuzzed against a real server: a valid request per
//! method, then seeded mutations of its encoding (loupe-fuzz's mutator) sent as raw bytes;
//! the streaming methods get the same for each message they take (StreamScore: one of its
//! start, text and end messages mutated). Every answer must be a deliberate status (OK,
//! INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, ...): INTERNAL or UNKNOWN would be a panic
//! or an unchecked input; a stream must end once the client's side has; and the server must
//! still answer at the end. `LOUPE_FUZZ_REQUESTS` mutations per method (default 40).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Buf, BufMut};
use loupe_fuzz::mutate::{mutate, Mutator};
use loupe_query::Limits;
use loupe_schema::proto::v1 as pb;
use loupe_tests::{fref, private_store, start_server};
use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
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

/// How a method takes its requests and gives its answers.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Unary,
    /// One request, a stream of answers that ends.
    ServerStream,
    /// One request, a stream of answers that goes on while the server runs (a subscription):
    /// its status and first answer are read.
    Subscription,
    /// A stream of requests, a stream of answers that ends after the requests do.
    BothStream,
}

/// A stream that must end once the client's side has: longer than this is a hang.
const STREAM_END: Duration = Duration::from_secs(60);
/// How long a subscription is read for its first answer.
const SUBSCRIPTION_READ: Duration = Duration::from_millis(200);

/// The streaming methods and a valid request sequence for each, encoded.
fn stream_seeds(steer: &[u8]) -> Vec<(&'static str, Shape, Vec<Vec<u8>>)> {
    use pb::stream_score_request::Event;
    let event = |event: Event| pb::StreamScoreRequest { event: Some(event) }.encode_to_vec();
    let start = event(Event::Start(pb::StreamStart { monitors: vec![], id: "fuzz".into(), caller: None }));
    vec![
        ("/loupe.v1.Steering/SteerStream", Shape::ServerStream, vec![steer.to_vec()]),
        ("/loupe.v1.Monitoring/SubscribeAlerts", Shape::Subscription, vec![pb::SubscribeAlertsRequest { monitor: String::new(), min_severity: 0 }.encode_to_vec()]),
        ("/loupe.v1.Monitoring/StreamScore", Shape::BothStream, vec![start.clone(), event(Event::Text("stream this text".into())), event(Event::Text(" and this".into())), event(Event::End(true))]),
        ("/loupe.v1.Monitoring/StreamScore", Shape::BothStream, vec![start, event(Event::Tokens(pb::TokenChunk { ids: vec![1, 2, 3] })), event(Event::End(true))]),
    ]
}

/// Reads a stream's answers: to its end, or (a subscription) its first answer or a short
/// wait; the first error status it carries.
async fn drain(mut answers: Streaming<Vec<u8>>, shape: Shape, path: &str) -> Result<(), Status> {
    loop {
        let wait = if shape == Shape::Subscription { SUBSCRIPTION_READ } else { STREAM_END };
        match tokio::time::timeout(wait, answers.message()).await {
            Ok(Ok(Some(_))) if shape == Shape::Subscription => return Ok(()),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(status)) => return Err(status),
            Err(_) if shape == Shape::Subscription => return Ok(()),
            Err(_) => panic!("{path}: the stream did not end within {STREAM_END:?} of the client's side"),
        }
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
        ("/loupe.v1.Features/GetFeature", pb::GetFeatureRequest { feature: fref(1), max_top_examples: 3, max_interval_examples: 1, include: None }.encode_to_vec()),
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
    let steer = &seeds.iter().find(|(path, _)| path.ends_with("/Steer")).expect("a Steer seed").1;
    let mut methods: Vec<(&str, Shape, Vec<Vec<u8>>)> = seeds.iter().map(|(path, seed)| (*path, Shape::Unary, vec![seed.clone()])).collect();
    methods.extend(stream_seeds(steer));
    // Mutations splice in parts of any method's messages.
    let donors: Vec<&Vec<u8>> = methods.iter().flat_map(|(_, _, messages)| messages).collect();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut rng = Mutator::seeded(0xF022);
    for (path, shape, valid) in &methods {
        for i in 0..=mutations {
            let mut messages = valid.clone();
            if i > 0 {
                let which = rng.below(messages.len());
                messages[which] = mutate(&messages[which], donors[rng.below(donors.len())], &mut rng);
            }
            grpc.ready().await.unwrap();
            let path_and_query = tonic::codegen::http::uri::PathAndQuery::from_static(path);
            let outcome = match shape {
                Shape::Unary => grpc.unary(tonic::Request::new(messages[0].clone()), path_and_query, Raw).await.map(|_| ()),
                Shape::ServerStream | Shape::Subscription => match grpc.server_streaming(tonic::Request::new(messages[0].clone()), path_and_query, Raw).await {
                    Ok(answers) => drain(answers.into_inner(), *shape, path).await,
                    Err(status) => Err(status),
                },
                Shape::BothStream => match grpc.streaming(tonic::Request::new(futures::stream::iter(messages.clone())), path_and_query, Raw).await {
                    Ok(answers) => drain(answers.into_inner(), *shape, path).await,
                    Err(status) => Err(status),
                },
            };
            let code = outcome.as_ref().map_or_else(|s| s.code(), |_| Code::Ok);
            if let Err(status) = &outcome {
                let hex: Vec<String> = messages.iter().map(|m| m.iter().map(|b| format!("{b:02x}")).collect()).collect();
                assert!(!matches!(status.code(), Code::Internal | Code::Unknown), "{path} answered {:?} {:?} to a mutated request (messages in hex: {hex:?})", status.code(), status.message(),);
            }
            *codes.entry(format!("{code:?}")).or_default() += 1;
        }
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("the server still answers");
    eprintln!("{} methods x {} requests: {codes:?}", methods.len(), mutations + 1);
    assert!(codes.get("Ok").copied().unwrap_or(0) >= methods.len(), "the valid seeds succeed: {codes:?}");
}
