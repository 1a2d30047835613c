//! `loupe bench serve`: concurrent clients against a real server on loopback — p50/p99
//! latency and QPS of SearchFeatures and GetFeature, on the demo store and a synthetic
//! 1M-feature store, and search and dashboard latency while model calls (TopFeaturesForText,
//! or Steer generations) keep the worker pool busy.
//!
//! Every figure comes with the machine's floor, measured in the same run: the same clients
//! calling the gRPC health check, which does no work. Its QPS is what loopback gRPC alone
//! allows here, and by Little's law (latency = clients / QPS) no call can average less
//! than clients / floor QPS.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use loupe_query::{Limits, ServerConfig};
use loupe_schema::proto::v1 as pb;
use loupe_schema::proto::v1::features_client::FeaturesClient;
use loupe_schema::proto::v1::monitoring_client::MonitoringClient;
use loupe_schema::proto::v1::steering_client::SteeringClient;
use serde_json::json;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::output::print_json;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// An indexed store (default: the demo store that scripts/demo.sh builds).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// The synthetic store of `loupe bench store` (skipped if absent; a folder or s3://).
    #[arg(long, default_value = "target/bench-store-1m")]
    pub synthetic: PathBuf,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Concurrent clients, comma-separated.
    #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
    pub clients: Vec<usize>,
    /// Which calls to measure, comma-separated: search, feature (and, on the demo store, the
    /// model-load checks: `load` with TopFeaturesForText calls, `steer` with Steer calls).
    #[arg(long, default_value = "search,feature,load,steer", value_delimiter = ',')]
    pub calls: Vec<String>,
    /// Skip the demo store (measure only the synthetic one).
    #[arg(long)]
    pub synthetic_only: bool,
    /// Measure a server that is already running (e.g. on another host, so that the clients
    /// do not share its cores) instead of starting the demo and synthetic ones here.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// GetFeature calls ask for the first N features only (a hot set, as dashboards of
    /// popular features are); 0: features spread over the whole dictionary.
    #[arg(long, default_value_t = 0)]
    pub hot_features: u32,
    /// Bytes of dashboards the servers started here cache (default: the server's default;
    /// 0 turns the cache off).
    #[arg(long)]
    pub dashboard_cache_bytes: Option<u64>,
    /// Bytes of search answers the servers started here cache (default: the server's
    /// default; 0 turns the cache off).
    #[arg(long)]
    pub search_cache_bytes: Option<u64>,
    /// After each call's closed-loop runs, offer this fraction of its highest measured QPS
    /// as a fixed rate for `--seconds` after one second at that rate that is not counted
    /// (open loop: requests go out on schedule whatever the server is doing, and latency
    /// counts from when a request was due), e.g. 0.5.
    #[arg(long, value_name = "FRACTION")]
    pub open_loop: Option<f64>,
    /// Write every open-loop request (due_ms, lag_ms, latency_ms; latency empty when it
    /// failed) to `<DIR>/<store>-<call>-open-loop.csv`: whether a tail is a stall that
    /// delays everything due in one window, or queueing spread over the run.
    #[arg(long, value_name = "DIR", requires = "open_loop")]
    pub open_loop_trace: Option<PathBuf>,
    /// SearchFeatures queries, one per line (default: words the store's top examples fire
    /// on), e.g. the same queries a peer is given (`reference/bench_postgres.py`).
    #[arg(long, value_name = "FILE")]
    pub queries: Option<PathBuf>,
    /// Clients build each SearchFeatures and GetFeature reply into its messages (hits,
    /// dashboard, examples, token strings), as an application does. By default they receive
    /// every reply whole, through HTTP/2 and the gRPC frame, and keep the hits and the
    /// dashboard as bytes, as pgbench receives PostgreSQL's rows without converting them:
    /// the clients share the server's cores, and building ~50 strings per dashboard took a
    /// third of the clients' CPU (`perf`), which the server's figure then lacked.
    #[arg(long)]
    pub decode_replies: bool,
    #[arg(long)]
    pub json: bool,
}

/// A GetFeatureResponse as the clients receive it unless `--decode-replies`: the encoded
/// dashboard's bytes (wire-compatible with the generated message).
#[derive(Clone, PartialEq, prost::Message)]
struct DashboardBytes {
    #[prost(bytes = "bytes", tag = "1")]
    dashboard: prost::bytes::Bytes,
}

/// A SearchFeaturesResponse as the clients receive it unless `--decode-replies`: the total
/// and each hit's bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct HitsBytes {
    #[prost(uint64, tag = "1")]
    total: u64,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    hits: Vec<prost::bytes::Bytes>,
}

/// A unary call through `grpc` whose reply decodes as `Reply` (a shallow view of the
/// method's response).
async fn call_shallow<Q, Reply>(grpc: &mut tonic::client::Grpc<Channel>, method: &'static str, request: Q) -> anyhow::Result<Reply>
where
    Q: prost::Message + Send + Sync + 'static,
    Reply: prost::Message + Default + Send + 'static,
{
    grpc.ready().await.map_err(|e| anyhow::anyhow!("{method}: the connection is not ready: {e}"))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    let codec = loupe_schema::proto::codec::Codec::<Q, Reply>::default();
    Ok(grpc.unary(tonic::Request::new(request), path, codec).await?.into_inner())
}

/// A server started by a benchmark, on a runtime of its own: as `loupe serve` in another
/// process would be, its tasks are not queued behind the clients' on shared workers (the
/// OS shares the cores between them), so the clients' lag and the server's latency are
/// told apart.
pub(crate) struct Running {
    pub(crate) addr: String,
    pub(crate) state: Arc<loupe_query::state::AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Dropped from the clients' async context, where a blocking shutdown may not run.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The limits of the servers the benchmarks start: many clients may queue for the model.
pub(crate) fn bench_limits() -> Limits {
    Limits { max_waiting: 1024, ..Limits::default() }
}

pub(crate) async fn start(store: &PathBuf, with_model: bool, limits: Limits) -> anyhow::Result<Running> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let model = with_model.then(loupe_query::config::default_model_path);
    let config =
        ServerConfig { store: super::store_location(store)?, addr, model, device: Default::default(), precision: Default::default(), dictionaries: vec![], limits, access: Default::default() };
    let runtime = loupe_query::server::runtime(&config.limits, "loupe-bench-server")?;
    let state = runtime.spawn(async move { loupe_query::state::AppState::load(&config).await }).await?;
    let state = Arc::new(state.with_context(|| format!("loading {}", store.display()))?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = state.clone();
    runtime.spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => return tracing::error!(error = %e, "the benchmark server cannot listen"),
        };
        if let Err(e) = loupe_query::serve_state(served, listener, async {
            let _ = stopped.await;
        })
        .await
        {
            tracing::error!(error = %e, "the benchmark server stopped");
        }
    });
    Ok(Running { addr: format!("http://{addr}"), state, stop: Some(stop), runtime: Some(runtime) })
}

/// A server to measure: one started here (kept running while `_running` lives) or one
/// given by `--server`.
struct Target {
    name: String,
    addr: String,
    /// Whether it runs a model, so that the search-under-model-load check applies.
    with_model: bool,
    _running: Option<Running>,
}

/// Whether the server at `url` has a dictionary loaded with its model (TopFeaturesForText works).
async fn has_model(url: &str) -> anyhow::Result<bool> {
    let channel = Channel::from_shared(url.to_string())?.connect().await.with_context(|| format!("connecting to {url}"))?;
    let list = FeaturesClient::new(channel).list_dictionaries(pb::ListDictionariesRequest {}).await?.into_inner();
    Ok(list.dictionaries.iter().any(|d| d.loaded))
}

#[derive(Clone, Copy)]
pub(crate) enum Call {
    /// The gRPC health check: no work, the floor of every other call.
    Health,
    Search,
    Feature,
    Text,
    /// A 32-token default + steered generation.
    Steer,
    /// A Score call on one of the workload's texts with every live monitor.
    Score,
}

pub(crate) struct Workload {
    dictionary: String,
    d_sae: u32,
    /// GetFeature asks for features below this (0: any feature).
    hot: u32,
    words: Vec<String>,
    /// Texts for Score calls.
    pub(crate) texts: Vec<String>,
    /// Whether SearchFeatures and GetFeature replies are built into messages (`--decode-replies`).
    decode_replies: bool,
}

#[derive(Clone)]
struct Clients {
    features: FeaturesClient<Channel>,
    health: HealthClient<Channel>,
    steering: SteeringClient<Channel>,
    monitoring: MonitoringClient<Channel>,
    /// The same connection for calls whose replies are kept as bytes.
    raw: tonic::client::Grpc<Channel>,
}

impl Clients {
    fn on(channel: Channel) -> Self {
        Clients {
            features: FeaturesClient::new(channel.clone()).max_decoding_message_size(64 << 20),
            health: HealthClient::new(channel.clone()),
            steering: SteeringClient::new(channel.clone()),
            monitoring: MonitoringClient::new(channel.clone()),
            raw: tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20),
        }
    }
}

async fn one_call(clients: &mut Clients, call: Call, workload: &Workload, i: usize) -> anyhow::Result<()> {
    let client = &mut clients.features;
    match call {
        Call::Health => {
            clients.health.check(HealthCheckRequest { service: String::new() }).await?;
        }
        Call::Search => {
            let request = pb::SearchFeaturesRequest { query: workload.words[i % workload.words.len()].clone(), limit: 20, ..Default::default() };
            if workload.decode_replies {
                client.search_features(request).await?;
            } else {
                let reply: HitsBytes = call_shallow(&mut clients.raw, "/loupe.v1.Features/SearchFeatures", request).await?;
                anyhow::ensure!(reply.hits.len() <= 20 && reply.hits.len() as u64 <= reply.total, "SearchFeatures answered {} hits of {} for a limit of 20", reply.hits.len(), reply.total);
            }
        }
        Call::Feature => {
            let span = if workload.hot > 0 { workload.hot.min(workload.d_sae) } else { workload.d_sae };
            let feature = ((i as u64 * 2_654_435_761) % u64::from(span)) as u32;
            let request = pb::GetFeatureRequest { feature: Some(pb::FeatureRef { dictionary_id: workload.dictionary.clone(), feature }), max_top_examples: 0, max_interval_examples: 0, include: None };
            if workload.decode_replies {
                client.get_feature(request).await?;
            } else {
                let reply: DashboardBytes = call_shallow(&mut clients.raw, "/loupe.v1.Features/GetFeature", request).await?;
                anyhow::ensure!(!reply.dashboard.is_empty(), "GetFeature answered no dashboard for feature {feature}");
            }
        }
        Call::Text => {
            let text = format!("The {} of the {} said unto them", workload.words[i % workload.words.len()], workload.words[(i + 3) % workload.words.len()]);
            client.top_features_for_text(pb::TopFeaturesForTextRequest { text, ..Default::default() }).await?;
        }
        Call::Steer => {
            let feature = ((i as u64 * 2_654_435_761) % u64::from(workload.d_sae)) as u32;
            let intervention = pb::Intervention {
                target: Some(pb::intervention::Target::Feature(pb::FeatureRef { dictionary_id: workload.dictionary.clone(), feature })),
                operation: pb::Operation::Add as i32,
                strength: 0.5,
                unit: pb::Unit::ResidualNorm as i32,
                ..Default::default()
            };
            let prompt = format!("The {} of the", workload.words[i % workload.words.len()]);
            let request = pb::SteerRequest { prompt, interventions: vec![intervention], max_new_tokens: 32, temperature: 0.7, seed: i as u64, ..Default::default() };
            clients.steering.steer(request).await?;
        }
        Call::Score => {
            let text = workload.texts[i % workload.texts.len()].clone();
            clients.monitoring.score(pb::ScoreRequest { inputs: vec![pb::ScoreInput { text, ..Default::default() }], ..Default::default() }).await?;
        }
    }
    Ok(())
}

/// `clients` tasks calling `call` in a loop for `seconds`: (p50 ms, p99 ms, QPS).
pub(crate) async fn measure(addr: &str, call: Call, clients: usize, seconds: f64, workload: &Arc<Workload>) -> anyhow::Result<(f64, f64, f64)> {
    // A few connections shared by the clients, as a real fleet of callers would use.
    let mut channels = Vec::new();
    for _ in 0..clients.clamp(1, 8) {
        channels.push(Channel::from_shared(addr.to_string())?.connect().await?);
    }
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = Clients::on(channels[c % channels.len()].clone());
        let workload = workload.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = c * 7919;
            while Instant::now() < until {
                let t = Instant::now();
                one_call(&mut client, call, &workload, i).await?;
                latencies.push(t.elapsed().as_secs_f64() * 1e3);
                i += 1;
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let start = Instant::now();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let elapsed = start.elapsed().as_secs_f64().max(seconds);
    let [p50, p99] = percentiles(&mut all, [0.5, 0.99]);
    Ok((p50, p99, all.len() as f64 / elapsed))
}

/// The latency distribution of an open-loop run.
struct OpenLoop {
    /// Requests the schedule held, all of them sent and answered or failed.
    requests: usize,
    /// p99 of the uncounted warm-up's requests.
    warmup_p99_ms: f64,
    /// Every request, warm-up included, by due time.
    sent: Vec<Sent>,
    achieved_qps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    /// How late the load generator itself started requests (p50, p99): part of every
    /// latency above, and the share of the tail that is the clients', not the server's.
    client_lag_p50_ms: f64,
    client_lag_p99_ms: f64,
    /// p99 counted from when each request started instead of when it was due: the
    /// latency without the clients' lag.
    p99_from_start_ms: f64,
    failed: usize,
    /// CPU time the hypervisor took during the measured part (None: not readable here).
    stolen: Option<super::cpu_steal::Stolen>,
}

/// Requests of `call` due at a fixed `rate` for `seconds`, each sent when it is due whatever
/// the earlier ones are doing, over a few shared connections. A request's latency counts from
/// when it was due, not from when it could be sent, so a server that falls behind shows it in
/// the tail (no coordinated omission).
///
/// One driver task per connection releases its share of the schedule and polls the calls in
/// flight itself: no task or thread per request, so the load generator costs little of the
/// cores it shares with the server. tokio's timer ticks in whole milliseconds, so requests
/// leave on the tick after they are due (on average half a millisecond late); that lag is
/// measured and reported apart, and p99 from each request's start leaves it out.
async fn open_loop(addr: &str, call: Call, rate: f64, seconds: f64, workload: &Arc<Workload>) -> anyhow::Result<OpenLoop> {
    const CONNECTIONS: usize = 8;
    // Connections are open and have carried a call before the schedule starts, as a fleet
    // of callers keeps theirs: opening them on the clock sent the first requests late, in
    // one burst, which was most of some runs' p99.
    let mut connections = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let mut clients = Clients::on(Channel::from_shared(addr.to_string())?.connect().await?);
        clients.health.check(HealthCheckRequest { service: String::new() }).await?;
        connections.push(clients);
    }
    // The schedule runs WARMUP_SECONDS at the same rate before the measured `seconds`, and
    // those requests are not counted (their trace rows have negative due times): from idle,
    // the first tens of milliseconds at 20,000/s went out up to 30 ms late, in batches, as
    // the clients' and the server's threads woke, a start-up the steady state never shows.
    let warmup = (rate * WARMUP_SECONDS).round() as usize;
    let requests = (rate * seconds).round().max(1.0) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let steal = super::cpu_steal::StealSampler::start();
    let schedule = Schedule { start: Instant::now(), interval, warmup, requests: warmup + requests, drivers: CONNECTIONS };
    let drivers: Vec<_> = connections.into_iter().enumerate().map(|(first, clients)| tokio::spawn(drive(clients, call, workload.clone(), schedule, first))).collect();
    let mut sent = Vec::with_capacity(schedule.requests);
    for driver in drivers {
        sent.extend(driver.await?);
    }
    let measured_from = schedule.due(warmup);
    let stolen = steal.and_then(|sampler| sampler.stop(measured_from));
    sent.sort_by(|a, b| a.due_ms.total_cmp(&b.due_ms));
    let (mut latencies, mut lags, mut from_start) = (Vec::with_capacity(requests), Vec::with_capacity(requests), Vec::with_capacity(requests));
    let mut failed = 0;
    for sent in sent.iter().filter(|s| s.due_ms >= 0.0) {
        lags.push(sent.lag_ms);
        match sent.latency_ms {
            Some(ms) => {
                latencies.push(ms);
                from_start.push(ms - sent.lag_ms);
            }
            None => failed += 1,
        }
    }
    let mut warmup_latencies: Vec<f64> = sent.iter().filter(|s| s.due_ms < 0.0).filter_map(|s| s.latency_ms).collect();
    let [warmup_p99_ms] = percentiles(&mut warmup_latencies, [0.99]);
    let elapsed = measured_from.elapsed().as_secs_f64();
    let achieved_qps = latencies.len() as f64 / elapsed;
    let [p50_ms, p99_ms, p999_ms] = percentiles(&mut latencies, [0.5, 0.99, 0.999]);
    let [client_lag_p50_ms, client_lag_p99_ms] = percentiles(&mut lags, [0.5, 0.99]);
    let [p99_from_start_ms] = percentiles(&mut from_start, [0.99]);
    Ok(OpenLoop { requests: lags.len(), warmup_p99_ms, sent, achieved_qps, p50_ms, p99_ms, p999_ms, client_lag_p50_ms, client_lag_p99_ms, p99_from_start_ms, failed, stolen })
}

/// Seconds an open loop runs at its rate before what it measures.
const WARMUP_SECONDS: f64 = 1.0;

/// When each request of an open-loop run is due; driver `k` sends requests k, k + drivers, ...
/// The first `warmup` are not counted.
#[derive(Clone, Copy)]
struct Schedule {
    start: Instant,
    interval: Duration,
    warmup: usize,
    requests: usize,
    drivers: usize,
}

impl Schedule {
    fn due(&self, i: usize) -> Instant {
        self.start + self.interval.mul_f64(i as f64)
    }
}

/// One open-loop request: when it was due (ms from the start of what is measured; negative
/// in the warm-up), how late it left, and its latency from when it was due (None: failed).
struct Sent {
    due_ms: f64,
    lag_ms: f64,
    latency_ms: Option<f64>,
}

/// Sends driver `first`'s share of `schedule` on one connection and waits for every reply.
async fn drive(clients: Clients, call: Call, workload: Arc<Workload>, schedule: Schedule, first: usize) -> Vec<Sent> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let mut in_flight = FuturesUnordered::new();
    let mut done = Vec::with_capacity(schedule.requests / schedule.drivers + 1);
    let mut next = first;
    // One timer, moved to the next due time, rather than one per wait.
    let wake = tokio::time::sleep_until(schedule.due(next).into());
    tokio::pin!(wake);
    loop {
        let now = Instant::now();
        while next < schedule.requests && schedule.due(next) <= now {
            let (due, i, mut clients, workload) = (schedule.due(next), next, clients.clone(), workload.clone());
            in_flight.push(async move {
                // Taken when the call first runs: the request leaves now, not when released.
                let lag_ms = due.elapsed().as_secs_f64() * 1e3;
                let outcome = one_call(&mut clients, call, &workload, i).await;
                let due_ms = (i as f64 - schedule.warmup as f64) * schedule.interval.as_secs_f64() * 1e3;
                Sent { due_ms, lag_ms, latency_ms: outcome.is_ok().then(|| due.elapsed().as_secs_f64() * 1e3) }
            });
            next += schedule.drivers;
        }
        let more = next < schedule.requests;
        if !more && in_flight.is_empty() {
            return done;
        }
        if more && wake.deadline() != schedule.due(next).into() {
            wake.as_mut().reset(schedule.due(next).into());
        }
        tokio::select! {
            Some(sent) = in_flight.next(), if !in_flight.is_empty() => done.push(sent),
            _ = &mut wake, if more => {}
        }
    }
}

/// One row per open-loop request, by due time.
fn write_trace(path: &std::path::Path, sent: &[Sent]) -> anyhow::Result<()> {
    use std::fmt::Write;
    let mut csv = String::from("due_ms,lag_ms,latency_ms\n");
    for s in sent {
        let latency = s.latency_ms.map_or(String::new(), |ms| format!("{ms:.3}"));
        let _ = writeln!(csv, "{:.3},{:.3},{latency}", s.due_ms, s.lag_ms);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating --open-loop-trace {}", dir.display()))?;
    }
    std::fs::write(path, csv).with_context(|| format!("writing the open-loop trace {}", path.display()))
}

/// The values at quantiles `qs` of `values` (0 when there are none).
fn percentiles<const N: usize>(values: &mut [f64], qs: [f64; N]) -> [f64; N] {
    values.sort_by(f64::total_cmp);
    qs.map(|q| values.get(((values.len().max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or(0.0))
}

pub(crate) async fn workload_of(addr: &str) -> anyhow::Result<Workload> {
    let mut client = FeaturesClient::new(Channel::from_shared(addr.to_string())?.connect().await?);
    let list = client.list_dictionaries(pb::ListDictionariesRequest {}).await?.into_inner();
    let d = list.dictionaries.first().context("the store has no dictionary")?;
    let mut words = Vec::new();
    for feature in (0..d.d_sae).step_by((d.d_sae as usize / 50).max(1)).take(50) {
        let request = pb::GetFeatureRequest {
            feature: Some(pb::FeatureRef { dictionary_id: d.dictionary_id.clone(), feature }),
            max_top_examples: 1,
            max_interval_examples: 0,
            include: Some(pb::DashboardParts { top_examples: true, ..Default::default() }),
        };
        let dash = client.get_feature(request).await?.into_inner().dashboard.context("dashboard")?;
        if let Some(e) = dash.top_examples.first() {
            let word = e.tokens[e.max_position as usize].trim().to_lowercase();
            if word.len() >= 2 && word.chars().all(char::is_alphanumeric) {
                words.push(word);
            }
        }
    }
    if words.is_empty() {
        words.push("the".into());
    }
    Ok(Workload { dictionary: d.dictionary_id.clone(), d_sae: d.d_sae, hot: 0, words, texts: Vec::new(), decode_replies: true })
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    if let Some(f) = args.open_loop {
        anyhow::ensure!(f > 0.0 && f <= 1.0, "--open-loop takes the fraction of each call's best measured QPS to offer, from 0 to 1 (e.g. 0.5); got {f}");
    }
    // As `loupe serve` does: the model's threads yield to the ones answering requests.
    loupe_query::workers::lower_model_priority();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let store = args.store.clone().unwrap_or_else(|| loupe_query::config::loupe_home().join("demo-store"));
    let mut report = Vec::new();
    runtime.block_on(async {
        let mut targets = Vec::new();
        match &args.server {
            Some(url) => targets.push(Target { name: "server".into(), addr: url.clone(), with_model: has_model(url).await?, _running: None }),
            None => {
                let mut stores = if args.synthetic_only { vec![] } else { vec![("demo", store.clone(), true)] };
                // A store on object storage (s3://) is taken as given: opening it says if it is not one.
                let synthetic = super::store_location(&args.synthetic)?;
                if synthetic.local_path().is_none_or(|p| p.join("CURRENT").exists()) {
                    stores.push(("synthetic", args.synthetic.clone(), false));
                } else {
                    eprintln!("no synthetic store at {}: run `loupe bench store` first to include it", args.synthetic.display());
                }
                for (name, path, with_model) in stores {
                    let mut limits = bench_limits();
                    if let Some(bytes) = args.dashboard_cache_bytes {
                        limits.dashboard_cache_bytes = bytes;
                    }
                    if let Some(bytes) = args.search_cache_bytes {
                        limits.search_cache_bytes = bytes;
                    }
                    let running = start(&path, with_model, limits).await?;
                    targets.push(Target { name: name.into(), addr: running.addr.clone(), with_model, _running: Some(running) });
                }
            }
        }
        for target in &targets {
            let (name, with_model) = (target.name.as_str(), target.with_model);
            let mut workload = Workload { hot: args.hot_features, decode_replies: args.decode_replies, ..workload_of(&target.addr).await? };
            if let Some(path) = &args.queries {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading --queries {}", path.display()))?;
                workload.words = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
                anyhow::ensure!(!workload.words.is_empty(), "--queries {} holds no query (one per line)", path.display());
            }
            let workload = Arc::new(workload);
            let wanted = |call: &str| args.calls.iter().any(|c| c == call);
            let mut floor_qps = std::collections::HashMap::new();
            for &clients in &args.clients {
                let (p50, p99, qps) = measure(&target.addr, Call::Health, clients, args.seconds.min(2.0), &workload).await?;
                eprintln!("{name:<13} {:<15} {clients:>3} clients  p50 {p50:>8.2} ms  p99 {p99:>8.2} ms  {qps:>8.0} QPS (floor: no work)", "health check");
                report.push(json!({"store": name, "call": "health check (floor)", "clients": clients, "p50_ms": p50, "p99_ms": p99, "qps": qps}));
                floor_qps.insert(clients, qps);
            }
            for (call_name, call, key) in [("SearchFeatures", Call::Search, "search"), ("GetFeature", Call::Feature, "feature")] {
                if !wanted(key) {
                    continue;
                }
                let mut best_qps: f64 = 0.0;
                for &clients in &args.clients {
                    let (p50, p99, qps) = measure(&target.addr, call, clients, args.seconds, &workload).await?;
                    best_qps = best_qps.max(qps);
                    let floor = floor_qps[&clients];
                    // Little's law: with `clients` always waiting, the mean latency is clients / QPS.
                    let bound_ms = clients as f64 / floor * 1e3;
                    eprintln!("{name:<13} {call_name:<15} {clients:>3} clients  p50 {p50:>8.2} ms  p99 {p99:>8.2} ms  {qps:>8.0} QPS ({:.0}% of the floor; mean latency >= {bound_ms:.2} ms here)", 100.0 * qps / floor);
                    report.push(json!({"store": name, "call": call_name, "clients": clients, "p50_ms": p50, "p99_ms": p99, "qps": qps, "fraction_of_floor_qps": qps / floor, "floor_mean_latency_ms": bound_ms}));
                }
                if let Some(fraction) = args.open_loop {
                    let offered = best_qps * fraction;
                    let r = open_loop(&target.addr, call, offered, args.seconds, &workload).await?;
                    if let Some(dir) = &args.open_loop_trace {
                        write_trace(&dir.join(format!("{name}-{call_name}-open-loop.csv")), &r.sent)?;
                    }
                    eprintln!(
                        "{name:<13} {call_name:<15} open loop at {offered:.0}/s ({:.0}% of its best QPS): achieved {:.0}/s, p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms (the clients' own lag p50 {:.2} ms, p99 {:.2} ms; p99 from each request's start {:.2} ms), {} failed; after {WARMUP_SECONDS} s not counted (p99 {:.2} ms){}",
                        100.0 * fraction,
                        r.achieved_qps,
                        r.p50_ms,
                        r.p99_ms,
                        r.p999_ms,
                        r.client_lag_p50_ms,
                        r.client_lag_p99_ms,
                        r.p99_from_start_ms,
                        r.failed,
                        r.warmup_p99_ms,
                        r.stolen.map_or(String::new(), |s| format!("; the hypervisor stole {:.0} ms of CPU time, at most {:.0} ms in 100 ms", s.total_ms, s.worst_100ms_ms))
                    );
                    report.push(json!({
                        "store": name, "call": format!("{call_name} open loop"), "offered_qps": offered, "fraction_of_best_qps": fraction,
                        "requests": r.requests, "achieved_qps": r.achieved_qps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "p999_ms": r.p999_ms,
                        "client_lag_p50_ms": r.client_lag_p50_ms, "client_lag_p99_ms": r.client_lag_p99_ms, "p99_from_start_ms": r.p99_from_start_ms, "failed": r.failed,
                        "warmup_seconds": WARMUP_SECONDS, "warmup_p99_ms": r.warmup_p99_ms,
                        "steal_ms": r.stolen.map(|s| s.total_ms), "steal_worst_100ms_ms": r.stolen.map(|s| s.worst_100ms_ms)
                    }));
                }
            }
            // Searches and dashboards while model calls keep the workers saturated: 4 loaders
            // of 4 clients each (TopFeaturesForText, or 32-token Steer generations).
            for (loader, loader_name, key) in [(Call::Text, "TopFeaturesForText", "load"), (Call::Steer, "Steer", "steer")] {
                if !with_model || !wanted(key) {
                    continue;
                }
                for (call, call_name) in [(Call::Search, "SearchFeatures"), (Call::Feature, "GetFeature")] {
                    let idle = measure(&target.addr, call, 16, args.seconds, &workload).await?;
                    let loaders: Vec<_> = (0..4)
                        .map(|_| {
                            let (addr, workload) = (target.addr.clone(), workload.clone());
                            tokio::spawn(async move { measure(&addr, loader, 4, args.seconds + 1.0, &workload).await })
                        })
                        .collect();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let loaded = measure(&target.addr, call, 16, args.seconds, &workload).await?;
                    let mut model_qps = 0.0;
                    for l in loaders {
                        model_qps += l.await??.2;
                    }
                    let ratio = loaded.1 / idle.1.max(1e-9);
                    eprintln!("{name:<13} {call_name} p99 idle {:.2} ms, under {loader_name} load {:.2} ms ({ratio:.2}x; model calls {model_qps:.1}/s)", idle.1, loaded.1);
                    report.push(json!({"store": name, "call": format!("{call_name} under {loader_name} load"), "clients": 16, "p99_idle_ms": idle.1, "p99_loaded_ms": loaded.1, "ratio": ratio, "model_calls_per_s": model_qps}));
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let replies = if args.decode_replies { "decoded into messages" } else { "received whole, kept as bytes" };
    if args.json {
        return print_json(&json!({"rows": report, "replies": replies, "provenance": super::bench::provenance()}));
    }
    println!("{:<13} {:<40} {:>7} {:>9} {:>9} {:>9}", "store", "call", "clients", "p50 ms", "p99 ms", "QPS");
    for r in &report {
        if let Some(offered) = r.get("offered_qps").and_then(|v| v.as_f64()) {
            println!(
                "{:<13} {:<40} offered {offered:.0}/s, achieved {:.0}/s: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
                r["store"].as_str().unwrap_or(""),
                r["call"].as_str().unwrap_or(""),
                r["achieved_qps"].as_f64().unwrap_or(0.0),
                r["p50_ms"].as_f64().unwrap_or(0.0),
                r["p99_ms"].as_f64().unwrap_or(0.0),
                r["p999_ms"].as_f64().unwrap_or(0.0)
            );
        } else if r.get("ratio").is_some() {
            println!(
                "{:<13} {:<40} {:>7} idle p99 {:.2} ms, loaded p99 {:.2} ms: {:.2}x (target <= 2x)",
                r["store"].as_str().unwrap_or(""),
                r["call"].as_str().unwrap_or(""),
                r["clients"],
                r["p99_idle_ms"].as_f64().unwrap_or(0.0),
                r["p99_loaded_ms"].as_f64().unwrap_or(0.0),
                r["ratio"].as_f64().unwrap_or(0.0)
            );
        } else {
            let of_floor = r["fraction_of_floor_qps"].as_f64().map_or(String::new(), |f| format!("  {:>5.1}% of floor QPS", 100.0 * f));
            println!(
                "{:<13} {:<40} {:>7} {:>9.2} {:>9.2} {:>9.0}{of_floor}",
                r["store"].as_str().unwrap_or(""),
                r["call"].as_str().unwrap_or(""),
                r["clients"],
                r["p50_ms"].as_f64().unwrap_or(0.0),
                r["p99_ms"].as_f64().unwrap_or(0.0),
                r["qps"].as_f64().unwrap_or(0.0)
            );
        }
    }
    println!("targets on the 1M store with 64 clients: SearchFeatures p99 <= 10 ms, GetFeature p99 <= 20 ms");
    println!("floor: the health check, which does no work, on the same server and clients; by Little's law no call averages below clients / floor QPS");
    println!("SearchFeatures and GetFeature replies: {replies}{}", if args.decode_replies { "" } else { " (--decode-replies builds them into messages)" });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real gRPC health server on loopback; the open loop must send every request of its
    /// schedule exactly once and hear back from each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_sends_its_whole_schedule_and_counts_failures() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let (_reporter, health) = tonic_health::server::health_reporter();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(tonic::transport::Server::builder().add_service(health).serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
            let _ = stopped.await;
        }));
        let workload = Arc::new(Workload { dictionary: String::new(), d_sae: 1, hot: 0, words: vec!["x".into()], texts: vec![], decode_replies: false });
        // 1,203 requests: not a multiple of the 8 connections, so the drivers' shares differ.
        let run = open_loop(&addr, Call::Health, 2_005.0, 0.6, &workload).await.unwrap();
        assert_eq!(run.requests, 1_203);
        assert!(run.sent.windows(2).all(|w| w[0].due_ms < w[1].due_ms), "requests by due time, each once");
        let dir = tempfile::tempdir().unwrap();
        write_trace(&dir.path().join("health.csv"), &run.sent).unwrap();
        let csv = std::fs::read_to_string(dir.path().join("health.csv")).unwrap();
        // A header, the second of warm-up (not counted, negative due times), the 1,203.
        assert_eq!(csv.lines().count(), 1 + 2_005 + 1_203);
        assert_eq!(run.sent.iter().filter(|s| s.due_ms < 0.0).count(), 2_005);
        assert_eq!(run.failed, 0);
        assert!(run.p50_ms > 0.0 && run.p50_ms <= run.p99_ms && run.p99_ms <= run.p999_ms, "{} {} {}", run.p50_ms, run.p99_ms, run.p999_ms);
        assert!(run.client_lag_p50_ms <= run.client_lag_p99_ms && run.p99_from_start_ms <= run.p99_ms);

        // A call the server does not serve fails every time, and each failure is counted.
        let run = open_loop(&addr, Call::Search, 500.0, 0.2, &workload).await.unwrap();
        assert_eq!((run.requests, run.failed), (100, 100));
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
