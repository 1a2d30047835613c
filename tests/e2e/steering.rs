//! Steering through a real client against a real server on loopback, over the fixture store
//! and the default model and dictionary: what the published formulas imply (ADD 0 and an
//! empty position set change nothing; CLAMP holds the feature; ABLATE removes it), the
//! default and steered outputs of one batch, streaming, named vectors, the worker pool, and
//! bad input with its status codes.

use std::time::Duration;

use loupe_engine::generate::{generate, SamplingParams};
use loupe_engine::Hooks;
use loupe_query::Limits;
use loupe_schema::proto::v1 as pb;
use loupe_schema::proto::v1::steering_client::SteeringClient;
use loupe_tests::{assert_code, channel, clients, fref, private_store, start_server};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

const PROMPT: &str = "The old sailor looked at the sea and said";

async fn steering(addr: &str) -> SteeringClient<Channel> {
    SteeringClient::new(channel(addr).await)
}

fn on_feature(feature: u32, operation: pb::Operation, strength: f32, unit: pb::Unit) -> pb::Intervention {
    pb::Intervention { target: Some(pb::intervention::Target::Feature(fref(feature).unwrap())), operation: operation as i32, strength, unit: unit as i32, ..Default::default() }
}

fn request(interventions: Vec<pb::Intervention>, max_new_tokens: u32) -> pb::SteerRequest {
    pb::SteerRequest { prompt: PROMPT.into(), interventions, max_new_tokens, temperature: 0.8, top_p: Some(0.95), seed: 5, ..Default::default() }
}

fn ids(c: &Option<pb::Completion>) -> Vec<u32> {
    c.as_ref().expect("completion").tokens.iter().map(|t| t.token_id).collect()
}

/// The activations of `feature` reported on each token of a completion.
fn activations(c: &Option<pb::Completion>, feature: u32) -> Vec<f32> {
    c.as_ref().expect("completion").tokens.iter().map(|t| t.features.iter().find(|f| f.feature.as_ref().is_some_and(|r| r.feature == feature)).expect("the feature is reported").activation).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_op_interventions_generate_exactly_what_plain_generation_does() {
    let dir = tempfile::tempdir().unwrap();
    let store = private_store(dir.path()).await;
    let server = start_server(&store, Limits::default(), true).await;
    let mut client = steering(&server.addr).await;

    // The reference: the engine's plain generation, same prompt, sampling and seed.
    let lens = server.state.engine().unwrap();
    let model = lens.model();
    let prompt = model.tokenizer().unwrap().encode(PROMPT).unwrap();
    let eos: Vec<u32> = model.tokenizer().unwrap().eos_token_id().into_iter().collect();
    let params = SamplingParams { temperature: 0.8, top_p: 0.95, seed: 5, max_new_tokens: 16, stop_tokens: eos.clone() };
    let plain: Vec<u32> = generate(model, &prompt, &params, &Hooks::new(), |_| {}).unwrap().into_iter().filter(|t| !eos.contains(t)).collect();

    let add_zero = on_feature(100, pb::Operation::Add, 0.0, pb::Unit::MaxActivation);
    let mut nowhere = on_feature(100, pb::Operation::Clamp, 50.0, pb::Unit::Raw);
    nowhere.positions = pb::Positions::Ranges as i32;
    for interventions in [vec![add_zero], vec![nowhere]] {
        let r = client.steer(request(interventions, 16)).await.unwrap().into_inner();
        assert_eq!(ids(&r.default), plain, "the default output is plain generation");
        assert_eq!(ids(&r.steered), plain, "a no-op intervention changes nothing");
        assert_eq!(r.prompt_tokens as usize, prompt.len());
    }
    // The default output alone needs no intervention.
    let r = client.steer(pb::SteerRequest { output: pb::Output::Default as i32, ..request(vec![], 16) }).await.unwrap().into_inner();
    assert_eq!(ids(&r.default), plain);
    assert!(r.steered.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamp_holds_a_feature_on_ablate_removes_it_and_add_steers() {
    let dir = tempfile::tempdir().unwrap();
    let store = private_store(dir.path()).await;
    let server = start_server(&store, Limits::default(), true).await;
    let (mut features, _) = clients(&server.addr).await;
    let mut client = steering(&server.addr).await;

    // A feature that fires on this prompt, and its max activation in the store.
    let text = pb::TopFeaturesForTextRequest { text: PROMPT.into(), k: 1, ..Default::default() };
    let top = features.top_features_for_text(text).await.unwrap().into_inner();
    let feature = top.tokens.iter().rev().find_map(|t| t.features.first()).and_then(|f| f.feature.clone()).expect("a feature fires").feature;
    let dashboard = features.get_feature(pb::GetFeatureRequest { feature: fref(feature), ..Default::default() }).await.unwrap().into_inner();
    let max = dashboard.dashboard.unwrap().max_activation;
    assert!(max > 0.0);

    // CLAMP to 4x the max activation, greedy: x' = x + (v - f)·d, so the dictionary reads
    // f + (v - f)·a back, with a = d·W_enc[:, i] its gain on its own direction (0.51-0.97 for
    // every feature of this dictionary, see the engine's steering tests): at least a·v.
    let v = 4.0 * max;
    let mut clamp = on_feature(feature, pb::Operation::Clamp, 4.0, pb::Unit::MaxActivation);
    clamp.positions = pb::Positions::Generated as i32;
    let greedy = |interventions| pb::SteerRequest { temperature: 0.0, ..request(interventions, 12) };
    let r = client.steer(greedy(vec![clamp])).await.unwrap().into_inner();
    assert!((r.interventions[0].strength - v).abs() <= 1e-3 * v, "4x resolves to 4 x the store's max: {} vs {v}", r.interventions[0].strength);
    assert!(r.interventions[0].prompt_positions.is_empty() && r.interventions[0].edits_generated);
    let held = activations(&r.steered, feature);
    assert!(held.iter().all(|&a| a >= 0.5 * v), "the clamp held on every generated token: {held:?} (v = {v})");
    let default = activations(&r.default, feature);
    assert!(default.iter().all(|&a| a < 0.5 * v), "the default run does not reach the clamp: {default:?}");

    // ABLATE everywhere: what is left of the feature is f·(1 - a) <= half of it, or nothing.
    let r = client.steer(greedy(vec![on_feature(feature, pb::Operation::Ablate, 0.0, pb::Unit::Raw)])).await.unwrap().into_inner();
    let ablated = activations(&r.steered, feature);
    assert!(ablated.iter().all(|&a| a <= 0.5 * max), "ablated activations {ablated:?} (max {max})");

    // ADD in residual-norm units changes the output; logprobs come on request.
    let mut add = on_feature(feature, pb::Operation::Add, 0.5, pb::Unit::ResidualNorm);
    add.positions = pb::Positions::All as i32;
    let r = client.steer(pb::SteerRequest { logprobs: true, ..greedy(vec![add]) }).await.unwrap().into_inner();
    assert_ne!(ids(&r.default), ids(&r.steered), "adding half the residual norm changes a greedy completion");
    assert!(r.steered.as_ref().unwrap().tokens.iter().all(|t| t.logprob.is_some_and(|l| l <= 0.0 && l.is_finite())));
    assert!(r.interventions[0].strength > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_match_the_unary_call_and_vectors_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = private_store(dir.path()).await;
    let server = start_server(&store, Limits::default(), true).await;
    let mut client = steering(&server.addr).await;

    let add = on_feature(7, pb::Operation::Add, 2.0, pb::Unit::MaxActivation);
    let unary = client.steer(request(vec![add.clone()], 10)).await.unwrap().into_inner();
    let mut stream = client.steer_stream(request(vec![add], 10)).await.unwrap().into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event.unwrap().event.unwrap());
    }
    assert!(matches!(events.first(), Some(pb::steer_event::Event::Started(_))));
    let streamed = |output: pb::Output| -> Vec<u32> {
        events
            .iter()
            .filter_map(|e| match e {
                pb::steer_event::Event::Token(t) if t.output == output as i32 => t.token.as_ref().map(|t| t.token_id),
                _ => None,
            })
            .collect()
    };
    assert_eq!(streamed(pb::Output::Default), ids(&unary.default));
    assert_eq!(streamed(pb::Output::Steered), ids(&unary.steered));
    let done: Vec<&pb::SteerDone> = events.iter().filter_map(|e| if let pb::steer_event::Event::Done(d) = e { Some(d) } else { None }).collect();
    assert_eq!(done.len(), 2);
    assert!(done.iter().any(|d| d.text == unary.steered.as_ref().unwrap().text));

    // Stop strings end a completion before the string; chat messages go through the model's
    // chat template, whose special tokens are not edited unless asked.
    let greedy = pb::SteerRequest { temperature: 0.0, output: pb::Output::Default as i32, ..request(vec![], 16) };
    let full = client.steer(greedy.clone()).await.unwrap().into_inner().default.unwrap().text;
    let word = full.split_whitespace().nth(3).expect("a few words").to_string();
    let stopped = client.steer(pb::SteerRequest { stop: vec![word.clone()], ..greedy }).await.unwrap().into_inner().default.unwrap();
    assert_eq!(stopped.stop_reason, "stop");
    assert_eq!(stopped.text, full[..full.find(&word).unwrap()], "the text ends where {word:?} starts");
    let chat = pb::SteerRequest {
        prompt: String::new(),
        messages: vec![pb::ChatMessage { role: "user".into(), content: "Tell me about the sea.".into() }],
        interventions: vec![pb::Intervention { positions: pb::Positions::Prompt as i32, ..on_feature(7, pb::Operation::Add, 1.0, pb::Unit::Raw) }],
        ..request(vec![], 4)
    };
    let r = client.steer(chat.clone()).await.unwrap().into_inner();
    assert!(r.prompt_text.contains("<|im_start|>user\nTell me about the sea.<|im_end|>"), "{}", r.prompt_text);
    let lens = server.state.engine().unwrap();
    let tokenizer = lens.model().tokenizer().unwrap();
    let prompt_ids = tokenizer.encode(&r.prompt_text).unwrap();
    let edited: Vec<u32> = r.interventions[0].prompt_positions.clone();
    let specials: Vec<u32> = (0..prompt_ids.len() as u32).filter(|&p| tokenizer.is_special(prompt_ids[p as usize])).collect();
    assert!(specials.len() >= 4, "the chat template has special tokens: {specials:?}");
    assert!(specials.iter().all(|p| !edited.contains(p)) && edited.len() == prompt_ids.len() - specials.len(), "special tokens skipped: {edited:?}");
    assert!(!r.interventions[0].edits_generated);
    let mut with_specials = chat;
    with_specials.interventions[0].include_special_tokens = true;
    let r = client.steer(with_specials).await.unwrap().into_inner();
    assert_eq!(r.interventions[0].prompt_positions.len(), prompt_ids.len(), "include_special_tokens edits every prompt position");

    // A DiffMean vector from texts, stored with its provenance, usable as a target.
    let create = pb::CreateVectorRequest {
        name: "weddings".into(),
        hook: "blocks.9.hook_resid_post".into(),
        positive: vec!["The bride and groom exchanged rings at the wedding.".into(), "Wedding guests threw rice as the married couple left the church.".into()],
        negative: vec!["The engineer checked the pressure in the pipes.".into(), "Rain fell on the empty car park all afternoon.".into()],
        description: "weddings vs. plain prose".into(),
        ..Default::default()
    };
    let made = client.create_vector(create.clone()).await.unwrap().into_inner().vector.unwrap();
    assert_eq!((made.width, made.hook.as_str()), (576, "blocks.9.hook_resid_post"));
    let provenance: serde_json::Value = serde_json::from_str(&made.provenance_json).unwrap();
    assert_eq!(provenance["method"], "diffmean");
    assert_eq!(provenance["positive"]["texts"], 2);
    assert_code(client.create_vector(create.clone()).await, Code::AlreadyExists, "weddings");
    let listed = client.list_vectors(pb::ListVectorsRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.vectors.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), vec!["weddings"]);
    let by_name = pb::Intervention { target: Some(pb::intervention::Target::VectorName("weddings".into())), operation: pb::Operation::Add as i32, strength: 8.0, ..Default::default() };
    let r = client.steer(pb::SteerRequest { temperature: 0.0, ..request(vec![by_name.clone()], 12) }).await.unwrap().into_inner();
    assert_ne!(ids(&r.default), ids(&r.steered), "adding 8x the contrast vector changes the completion");
    assert_eq!(r.interventions[0].target, "vector weddings");
    client.delete_vector(pb::DeleteVectorRequest { name: "weddings".into(), author: None }).await.unwrap();
    assert_code(client.steer(request(vec![by_name], 4)).await, Code::NotFound, "weddings");
    assert_code(client.delete_vector(pb::DeleteVectorRequest { name: "weddings".into(), author: None }).await, Code::NotFound, "weddings");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_steering_requests_name_the_field_and_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = private_store(dir.path()).await;
    let limits = Limits { max_interventions: 2, max_new_tokens: 32, ..Limits::default() };
    let server = start_server(&store, limits, true).await;
    let mut client = steering(&server.addr).await;
    let add = |strength| on_feature(3, pb::Operation::Add, strength, pb::Unit::Raw);

    let mut unknown = add(1.0);
    unknown.target = Some(pb::intervention::Target::Feature(pb::FeatureRef { dictionary_id: "nope".into(), feature: 1 }));
    assert_code(client.steer(request(vec![unknown], 4)).await, Code::NotFound, "nope");
    assert_code(client.steer(request(vec![on_feature(999_999, pb::Operation::Add, 1.0, pb::Unit::Raw)], 4)).await, Code::NotFound, "out of range");
    assert_code(client.steer(request(vec![add(f32::NAN)], 4)).await, Code::InvalidArgument, "interventions[0].strength");
    assert_code(client.steer(request(vec![add(f32::INFINITY)], 4)).await, Code::InvalidArgument, "finite");
    let vector = |hook: &str, width: usize| pb::Intervention {
        target: Some(pb::intervention::Target::Vector(pb::HookVector { hook: hook.into(), values: vec![0.1; width] })),
        operation: pb::Operation::Add as i32,
        strength: 1.0,
        ..Default::default()
    };
    assert_code(client.steer(request(vec![vector("blocks.9.hook_resid_post", 10)], 4)).await, Code::InvalidArgument, "width 576");
    assert_code(client.steer(request(vec![vector("blocks.40.hook_resid_post", 576)], 4)).await, Code::InvalidArgument, "30 layers");
    let mut clamp_vector = vector("blocks.9.hook_resid_post", 576);
    clamp_vector.operation = pb::Operation::Clamp as i32;
    assert_code(client.steer(request(vec![clamp_vector], 4)).await, Code::InvalidArgument, "dictionary feature");
    assert_code(client.steer(request(vec![add(1.0), add(2.0), add(3.0)], 4)).await, Code::InvalidArgument, "at most 2");
    assert_code(client.steer(request(vec![add(1.0)], 33)).await, Code::InvalidArgument, "max_new_tokens 33");
    assert_code(client.steer(request(vec![], 4)).await, Code::InvalidArgument, "interventions is empty");
    let mut cap = on_feature(3, pb::Operation::Cap, 0.0, pb::Unit::Raw);
    (cap.cap_low, cap.cap_high) = (2.0, 1.0);
    assert_code(client.steer(request(vec![cap], 4)).await, Code::InvalidArgument, "inverted");
    let no_unit = on_feature(3, pb::Operation::Unspecified, 1.0, pb::Unit::Raw);
    assert_code(client.steer(request(vec![no_unit], 4)).await, Code::InvalidArgument, "interventions[0].operation");
    let long = pb::SteerRequest { prompt: "word ".repeat(1500), ..request(vec![add(1.0)], 4) };
    assert_code(client.steer(long).await, Code::InvalidArgument, "max_tokens");
    let bad_name = pb::CreateVectorRequest { name: "no spaces".into(), hook: "blocks.9.hook_resid_post".into(), values: vec![1.0; 576], ..Default::default() };
    assert_code(client.create_vector(bad_name).await, Code::InvalidArgument, "name");

    // A deadline shorter than the generation: the call ends with DEADLINE_EXCEEDED.
    let mut slow = tonic::Request::new(pb::SteerRequest { temperature: 1.5, ..request(vec![add(1.0)], 32) });
    slow.set_timeout(Duration::from_millis(150));
    let status = client.steer(slow).await.expect_err("the deadline passes first");
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");

    // Without a model: FAILED_PRECONDITION saying how to start one.
    let no_model = start_server(&store, Limits::default(), false).await;
    let mut client = steering(&no_model.addr).await;
    assert_code(client.steer(request(vec![add(1.0)], 4)).await, Code::FailedPrecondition, "--model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_generation_yields_the_worker_and_stops_when_its_caller_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let store = private_store(dir.path()).await;
    let limits = Limits { model_workers: 1, max_new_tokens: 400, ..Limits::default() };
    let server = start_server(&store, limits, true).await;
    let mut client = steering(&server.addr).await;
    let (_, mut internals) = clients(&server.addr).await;

    // A long sampled generation (no EOS in sight at temperature 1.5) on the only worker.
    let long = pb::SteerRequest { temperature: 1.5, output: pb::Output::Default as i32, ..request(vec![], 400) };
    let mut stream = client.steer_stream(long).await.unwrap().into_inner();
    let mut tokens = 0;
    while tokens < 3 {
        if let pb::steer_event::Event::Token(_) = stream.next().await.unwrap().unwrap().event.unwrap() {
            tokens += 1;
        }
    }
    // A short model call gets the worker between two tokens, long before the generation ends.
    let short = pb::GetActivationsRequest { text: "The cat sat".into(), token_ids: vec![], hooks: vec!["hook_embed".into()] };
    internals.get_activations(short).await.unwrap();
    let mut after = 0;
    let mut finished = false;
    while let Some(event) = stream.next().await {
        match event.unwrap().event.unwrap() {
            pb::steer_event::Event::Token(_) => after += 1,
            pb::steer_event::Event::Done(_) => finished = true,
            _ => {}
        }
        if after >= 5 {
            break;
        }
    }
    assert!(!finished && after >= 5, "the generation went on after the short call ({after} more tokens)");

    // The caller leaves: the generation stops, and the pool stays idle from then on.
    drop(stream);
    let mut idle_streak = 0;
    for _ in 0..400 {
        if server.state.workers.in_flight() == 0 {
            idle_streak += 1;
            if idle_streak >= 50 {
                break;
            }
        } else {
            idle_streak = 0;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(idle_streak >= 50, "the generation kept taking the worker after its caller left");
}
