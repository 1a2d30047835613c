//! Access to a real server on loopback: TLS (and mutual TLS) with certificates made by
//! `loupe tls create`'s code, bearer tokens with scopes from a real token file, revocation
//! without a restart, the token's name recorded on writes, and per-caller quotas.

use std::path::Path;
use std::time::{Duration, Instant};

use loupe_query::access::scope::Scope;
use loupe_query::access::tls::create_certificates;
use loupe_query::access::tokens::{NewToken, TokenFile};
use loupe_query::config::AccessConfig;
use loupe_query::config::TlsSettings;
use loupe_query::Limits;
use loupe_schema::proto::v1 as pb;
use loupe_schema::proto::v1::features_client::FeaturesClient;
use loupe_store::{label_history, Location};
use loupe_tests::{fref, private_store, start_server_with, DICTIONARY};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request};

fn token(file: &TokenFile, name: &str, scopes: &[Scope], requests_per_second: Option<f64>, model_tokens_per_minute: Option<u64>) -> String {
    file.create(NewToken { name: name.into(), scopes: scopes.to_vec(), requests_per_second, model_tokens_per_minute }).unwrap().1
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn search(query: &str) -> pb::SearchFeaturesRequest {
    pb::SearchFeaturesRequest { query: query.into(), limit: 5, ..Default::default() }
}

async fn tls_channel(addr: &str, dir: &Path, client_certificate: bool) -> Result<Channel, tonic::transport::Error> {
    let ca = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if client_certificate {
        tls = tls.identity(Identity::from_pem(std::fs::read_to_string(dir.join("client.pem")).unwrap(), std::fs::read_to_string(dir.join("client.key")).unwrap()));
    }
    Channel::from_shared(addr.to_string()).unwrap().tls_config(tls).unwrap().connect().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_tokens_scopes_and_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let files = create_certificates(&certs, &["localhost".into(), "127.0.0.1".into()], "tests", false).unwrap();
    let tokens = TokenFile::new(dir.path().join("tokens.json"));
    let reader = token(&tokens, "reader", &[Scope::Read], None, None);
    let labeller = token(&tokens, "labeller", &[Scope::Read, Scope::Label], None, None);
    let store = private_store(dir.path()).await;
    let access =
        AccessConfig { tls: TlsSettings { cert: Some(files.server_cert), key: Some(files.server_key), client_ca: Some(files.ca) }, tokens_file: Some(tokens.path().to_path_buf()), insecure: false };
    let server = start_server_with(&store, Limits::default(), false, access).await;
    assert!(server.addr.starts_with("https://"));

    // Plain text to the TLS port, and TLS without a client certificate, get no answer.
    let plain = server.addr.replace("https://", "http://");
    if let Ok(channel) = Channel::from_shared(plain).unwrap().connect().await {
        let refused = FeaturesClient::new(channel).search_features(with_token(search("the"), &reader)).await;
        assert!(refused.is_err(), "a plain-text call to a TLS server must fail");
    }
    match tls_channel(&server.addr, &certs, false).await {
        Err(_) => {}
        Ok(channel) => {
            let refused = FeaturesClient::new(channel).search_features(with_token(search("the"), &reader)).await;
            assert!(refused.is_err(), "mutual TLS refuses a client without a certificate");
        }
    }

    let channel = tls_channel(&server.addr, &certs, true).await.expect("TLS with the client certificate");
    let mut client = FeaturesClient::new(channel.clone());
    // Health stays open; every loupe call needs a token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(status.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let missing = client.search_features(search("the")).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    assert!(missing.message().contains("Bearer"), "{}", missing.message());
    for bad in ["nonsense", "loupe_000000000000_0000000000000000000000000000000000000000000000000000000000000000"] {
        let status = client.search_features(with_token(search("the"), bad)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{bad}: {status:?}");
    }
    // The reader's id with a wrong secret.
    let (id, _) = loupe_query::access::tokens::parse_token(&reader).unwrap();
    let forged = format!("loupe_{id}_{}", "ab".repeat(32));
    assert_eq!(client.search_features(with_token(search("the"), &forged)).await.unwrap_err().code(), Code::Unauthenticated);

    // Scopes.
    client.search_features(with_token(search("the"), &reader)).await.expect("read may search");
    let label = |author: &str| pb::SetFeatureLabelRequest { feature: fref(3), label: "tokens work".into(), author: Some(author.into()) };
    let denied = client.set_feature_label(with_token(label("reader"), &reader)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("\"label\""), "names the scope needed: {}", denied.message());
    let denied = client.top_features_for_text(with_token(pb::TopFeaturesForTextRequest { text: "hi".into(), ..Default::default() }, &reader)).await.unwrap_err();
    assert!(denied.code() == Code::PermissionDenied && denied.message().contains("\"inspect\""), "{denied:?}");

    // The token's name is recorded, whatever author the request claims.
    client.set_feature_label(with_token(label("somebody-else"), &labeller)).await.expect("label may label");
    let history = label_history(&Location::local(&store), DICTIONARY, 3).await.unwrap();
    assert_eq!(history.last().unwrap().author, "labeller");

    // Revocation takes effect at the next call, without a restart.
    tokens.revoke("labeller").unwrap();
    let revoked = client.set_feature_label(with_token(label("x"), &labeller)).await.unwrap_err();
    assert_eq!(revoked.code(), Code::Unauthenticated, "{revoked:?}");
    client.search_features(with_token(search("the"), &reader)).await.expect("other tokens still work");
}

/// Median of a few calls' latency.
async fn median_latency(client: &mut FeaturesClient<Channel>, token: &str, calls: usize) -> Duration {
    let mut times = Vec::with_capacity(calls);
    for i in 0..calls {
        let start = Instant::now();
        client
            .get_feature(with_token(pb::GetFeatureRequest { feature: fref((i % 8) as u32), max_top_examples: 8, max_interval_examples: 0, include: None }, token))
            .await
            .expect("the quiet caller is served");
        times.push(start.elapsed());
    }
    times.sort();
    times[calls / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_throttle_the_flooding_caller_only() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenFile::new(dir.path().join("tokens.json"));
    let flooder = token(&tokens, "flooder", &[Scope::Read], Some(20.0), None);
    let quiet = token(&tokens, "quiet", &[Scope::Read], None, None);
    let store = private_store(dir.path()).await;
    let access = AccessConfig { tokens_file: Some(tokens.path().to_path_buf()), ..AccessConfig::default() };
    let server = start_server_with(&store, Limits::default(), false, access).await;
    let channel = loupe_tests::channel(&server.addr).await;
    let mut client = FeaturesClient::new(channel.clone());

    // A burst of a second's worth, then RESOURCE_EXHAUSTED with a retry hint.
    let mut refused = None;
    for _ in 0..40 {
        if let Err(status) = client.search_features(with_token(search("the"), &flooder)).await {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.expect("the 20 requests/s quota refuses a burst of 40");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("flooder") && refused.message().contains("requests per second"), "{}", refused.message());
    let retry_ms: u64 = refused.metadata().get("retry-after-ms").expect("a retry hint").to_str().unwrap().parse().unwrap();
    assert!((1..=1000).contains(&retry_ms), "{retry_ms}");

    // The quiet caller's latency alone and while the flooder hammers from 4 connections, in
    // alternating rounds (so that other load on the machine falls on both). The flood's
    // clients run on their own thread at low OS priority, as a flood from another machine
    // would: what is measured is what the server spends on it.
    for _ in 0..5 {
        median_latency(&mut client, &quiet, 5).await; // warm up
    }
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (flooding, stop, flooder, addr) = (flooding.clone(), stop.clone(), flooder.clone(), server.addr.clone());
        std::thread::spawn(move || {
            loupe_query::workers::lower_this_thread();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let mut tasks = Vec::new();
                for _ in 0..4 {
                    let (flooding, stop, flooder) = (flooding.clone(), stop.clone(), flooder.clone());
                    let mut c = FeaturesClient::new(loupe_tests::channel(&addr).await);
                    tasks.push(tokio::spawn(async move {
                        let (mut served, mut throttled) = (0u32, 0u32);
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            if !flooding.load(std::sync::atomic::Ordering::Relaxed) {
                                tokio::time::sleep(Duration::from_millis(1)).await;
                                continue;
                            }
                            match c.search_features(with_token(search("the"), &flooder)).await {
                                Ok(_) => served += 1,
                                Err(s) if s.code() == Code::ResourceExhausted => throttled += 1,
                                Err(s) => panic!("unexpected {s:?}"),
                            }
                        }
                        (served, throttled)
                    }));
                }
                let (mut served, mut throttled) = (0, 0);
                for t in tasks {
                    let (s, t) = t.await.unwrap();
                    served += s;
                    throttled += t;
                }
                (served, throttled)
            })
        })
    };
    let (mut alone, mut flooded) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        alone.push(median_latency(&mut client, &quiet, 15).await);
        flooding.store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
        flooded.push(median_latency(&mut client, &quiet, 15).await);
        flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (served, throttled) = flood.join().unwrap();
    alone.sort();
    flooded.sort();
    let (alone, flooded) = (alone[alone.len() / 2], flooded[flooded.len() / 2]);
    eprintln!("quiet caller's median: {alone:?} alone, {flooded:?} under the flood ({served} flood calls served, {throttled} throttled)");
    assert!(throttled > served, "the flood is mostly refused: {served} served, {throttled} throttled");
    assert!(flooded <= alone * 2, "one caller's flood raised another's median latency from {alone:?} to {flooded:?} (more than 2x)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_token_quota_is_charged_per_token_run() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenFile::new(dir.path().join("tokens.json"));
    let researcher = token(&tokens, "researcher", &[Scope::Read, Scope::Inspect], None, Some(20));
    let store = private_store(dir.path()).await;
    let access = AccessConfig { tokens_file: Some(tokens.path().to_path_buf()), ..AccessConfig::default() };
    let server = start_server_with(&store, Limits::default(), true, access).await;
    let mut client = FeaturesClient::new(loupe_tests::channel(&server.addr).await);
    let text = pb::TopFeaturesForTextRequest { text: "The quick brown fox jumps over the lazy dog near the river bank".into(), ..Default::default() };
    // 20 tokens a minute: the first call (BOS + 13 tokens) and the second (below zero) run,
    // the third waits for the debt to refill; calls that run no model are not held back.
    let started = std::time::Instant::now();
    let first = client.top_features_for_text(with_token(text.clone(), &researcher)).await.expect("within the quota").into_inner();
    let used = first.tokens.len() + 1; // and BOS
    assert!(used > 10 && used < 20, "{used} tokens");
    client.top_features_for_text(with_token(text.clone(), &researcher)).await.expect("some quota was left");
    let refused = client.top_features_for_text(with_token(text, &researcher)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("model tokens per minute"), "{}", refused.message());
    let elapsed_ms = started.elapsed().as_millis() as f64;
    let retry_ms: u64 = refused.metadata().get("retry-after-ms").unwrap().to_str().unwrap().parse().unwrap();
    // The debt refills at 1 token per 3 s from the first charge on, so the wait is the
    // whole debt's 3 s a token less at most the time the three calls took (on a loaded
    // machine the model runs slowly; the bound holds however long they took).
    let debt = (2 * used) as f64 - 20.0;
    let (most, least) = (debt * 3000.0, debt * 3000.0 - elapsed_ms);
    assert!(
        (retry_ms as f64) <= most + 5.0 && (retry_ms as f64) >= least - 5.0,
        "{retry_ms} ms for a debt of {debt} tokens at 1/3 per second, {elapsed_ms} ms after the first charge: expected {least}..{most}"
    );
    client.search_features(with_token(search("the"), &researcher)).await.expect("search runs no model");
}
