//! Assembling and running the server: the services, health, reflection, and the tasks
//! that follow label and monitor writes.

use std::sync::Arc;
use std::time::Duration;

use loupe_schema::proto::v1::features_server::FeaturesServer;
use loupe_schema::proto::v1::internals_server::InternalsServer;
use loupe_schema::proto::v1::monitoring_server::MonitoringServer;
use loupe_schema::proto::v1::steering_server::SteeringServer;
use loupe_schema::proto::v1::FILE_DESCRIPTOR_SET;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::config::{Limits, ServerConfig};
use crate::error::{Result, ServiceError};
use crate::features::FeaturesService;
use crate::grpc_adapter::Grpc;
use crate::internals::InternalsService;
use crate::labels::follow_labels;
use crate::monitoring::MonitoringService;
use crate::state::AppState;
use crate::steering::SteeringService;

/// Largest request message accepted (texts are also limited in bytes and tokens).
const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// A request larger than the message limit is refused by tonic with OUT_OF_RANGE before any
/// service sees it; gRPC's own servers answer RESOURCE_EXHAUSTED, which is what clients
/// retry or report as "too large", so the status is rewritten on its way out.
fn oversized_is_resource_exhausted(mut response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let out_of_range = headers.get("grpc-status").is_some_and(|s| s.as_bytes() == b"11");
    // grpc-message is percent-encoded on the wire.
    let too_large = headers.get("grpc-message").is_some_and(|m| String::from_utf8_lossy(m.as_bytes()).replace("%20", " ").contains("message length too large"));
    if out_of_range && too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

/// The runtime a server runs on: tokio's multi-thread runtime with a worker per CPU it may
/// use, whose blocking pool (where Lance reads a local store's files, one hop per read) holds
/// at most `limits.io_threads` threads when that is set, and whose async workers are each
/// pinned to a CPU of their own as `limits.pin_workers` decides.
pub fn runtime(limits: &Limits, thread_name: &str) -> std::io::Result<tokio::runtime::Runtime> {
    runtime_with(tokio::runtime::Builder::new_multi_thread(), async_workers(), limits, thread_name)
}

/// Async workers: `TOKIO_WORKER_THREADS` when set, else one per CPU the process may use (as
/// tokio counts them, a CPU quota included).
fn async_workers() -> usize {
    let given = std::env::var("TOKIO_WORKER_THREADS").ok().and_then(|v| v.trim().parse().ok()).filter(|&n: &usize| n > 0);
    given.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// What [`runtime`] does with its async workers, in words (for the server's start-up lines).
pub fn describe_workers(limits: &Limits) -> String {
    let (workers, cpus) = (async_workers(), crate::workers::PinToCpus::allowed().cpus());
    let placement = if limits.pin_workers.pins(workers, cpus) { "each pinned to a CPU of its own" } else { "not pinned" };
    format!("{workers} async workers on {cpus} CPUs, {placement} (pin_workers = {})", limits.pin_workers)
}

fn runtime_with(mut builder: tokio::runtime::Builder, workers: usize, limits: &Limits, thread_name: &str) -> std::io::Result<tokio::runtime::Runtime> {
    builder.enable_all().thread_name(thread_name).worker_threads(workers);
    if limits.io_threads > 0 {
        builder.max_blocking_threads(limits.io_threads);
    }
    let pin = crate::workers::PinToCpus::allowed();
    if limits.pin_workers.pins(workers, pin.cpus()) {
        // Only async workers park (blocking-pool threads never call this hook), and each
        // parks once as soon as it is idle, so every worker is pinned from its first pause.
        // Every thread the runtime starts first takes back the whole CPU set, which a
        // blocking-pool thread would otherwise inherit narrowed from the worker creating it.
        let pin = Arc::new(pin);
        let free = pin.clone();
        builder.on_thread_start(move || free.free_this_thread());
        builder.on_thread_park(move || pin.pin_this_thread_once());
    }
    builder.build()
}

/// Loads the store (and model) and serves on `listener` until `shutdown` resolves.
pub async fn serve(config: ServerConfig, listener: TcpListener, shutdown: impl std::future::Future<Output = ()> + Send) -> Result<()> {
    crate::workers::lower_model_priority();
    let state = Arc::new(AppState::load(&config).await?);
    serve_state(state, listener, shutdown).await
}

pub async fn serve_state(state: Arc<AppState>, listener: TcpListener, shutdown: impl std::future::Future<Output = ()> + Send) -> Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<FeaturesServer<Grpc<FeaturesService>>>().await;
    health.set_serving::<InternalsServer<Grpc<InternalsService>>>().await;
    health.set_serving::<SteeringServer<Grpc<SteeringService>>>().await;
    health.set_serving::<MonitoringServer<Grpc<MonitoringService>>>().await;
    // Reflection in both protocol versions: grpcurl speaks v1, while Python's
    // grpcio-reflection and several GUI clients speak only v1alpha.
    let reflection =
        || tonic_reflection::server::Builder::configure().register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET).register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    let reflection_error = |e: tonic_reflection::server::Error| ServiceError::Internal(format!("reflection: {e}"));
    let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;
    let features = FeaturesServer::new(Grpc::features(state.clone())).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let internals = InternalsServer::new(Grpc::internals(state.clone())).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let steering = SteeringServer::new(Grpc::steering(state.clone())).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let monitoring = MonitoringServer::new(Grpc::monitoring(state.clone())).max_decoding_message_size(MAX_MESSAGE_BYTES);
    tracing::info!(addr = ?listener.local_addr().ok(), generation = state.snapshot().reader.generation().generation, "serving");
    // No Nagle: small responses would otherwise wait ~40 ms for delayed ACKs.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let follower = follow_labels(state.clone(), Duration::from_millis(state.limits.label_poll_ms.max(1)));
    let monitors = crate::monitoring::follow_monitors(state.clone(), Duration::from_millis(state.limits.label_poll_ms.max(1)));
    let generations = crate::labels::follow_generations(state.clone(), Duration::from_millis(state.limits.generation_poll_ms.max(1)));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = state.access.tls.server_config()? {
        builder = builder.tls_config(tls).map_err(|e| ServiceError::InvalidArgument(format!("tls: {e}")))?;
    }
    let served = builder
        .layer(tower::util::MapResponseLayer::new(oversized_is_resource_exhausted))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(features)
        .add_service(internals)
        .add_service(steering)
        .add_service(monitoring)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    follower.abort();
    monitors.abort();
    generations.abort();
    served.map_err(|e| ServiceError::Internal(format!("server: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PinWorkers;
    use crate::workers::cpus_of_this_thread;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The most blocking tasks of `runtime` that ran at once, of `tasks` that each hold their
    /// thread for a while.
    fn peak_blocking(runtime: &tokio::runtime::Runtime, tasks: usize) -> usize {
        let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        runtime.block_on(async {
            let handles: Vec<_> = (0..tasks)
                .map(|_| {
                    let (running, peak) = (running.clone(), peak.clone());
                    tokio::task::spawn_blocking(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(30));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                })
                .collect();
            for handle in handles {
                handle.await.unwrap();
            }
        });
        peak.load(Ordering::SeqCst)
    }

    #[test]
    fn io_threads_caps_the_blocking_pool_and_zero_leaves_tokio_default() {
        let capped = runtime(&Limits { io_threads: 3, ..Limits::default() }, "capped").unwrap();
        assert_eq!(peak_blocking(&capped, 12), 3);
        let uncapped = runtime(&Limits { io_threads: 0, ..Limits::default() }, "uncapped").unwrap();
        assert!(peak_blocking(&uncapped, 12) > 3, "tokio's default pool grows a thread per waiting task");
    }

    /// Where each async worker and a blocking-pool thread of `runtime` may run, by thread, as
    /// the kernel reports it.
    #[cfg(target_os = "linux")]
    fn affinities(runtime: &tokio::runtime::Runtime) -> (std::collections::BTreeMap<String, Vec<usize>>, Vec<usize>) {
        runtime.block_on(async {
            // Idle long enough for every worker to park once.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut workers = std::collections::BTreeMap::new();
            for _ in 0..400 {
                let (id, cpus) = tokio::spawn(async {
                    tokio::task::yield_now().await;
                    (format!("{:?}", std::thread::current().id()), cpus_of_this_thread())
                })
                .await
                .unwrap();
                workers.insert(id, cpus);
                if workers.len() == 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            // The blocking thread is created by a worker (pinned, when pinning is on), as a
            // server's are: a new thread inherits its creator's CPUs.
            let blocking = tokio::spawn(async { tokio::task::spawn_blocking(cpus_of_this_thread).await.unwrap() }).await.unwrap();
            (workers, blocking)
        })
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn pin_workers_gives_each_async_worker_its_own_cpu_and_leaves_blocking_threads_free() {
        let process = cpus_of_this_thread();
        // The runtime `runtime` builds, with two workers whatever the machine.
        let build = |pin_workers| runtime_with(tokio::runtime::Builder::new_multi_thread(), 2, &Limits { pin_workers, ..Limits::default() }, "pin-test");
        let (workers, blocking) = affinities(&build(PinWorkers::Always).unwrap());
        assert_eq!(blocking, process, "blocking-pool threads are not pinned");
        for cpus in workers.values() {
            assert_eq!(cpus.len(), 1, "a pinned worker runs on one CPU: {workers:?}");
            assert!(process.contains(&cpus[0]), "and on one the process may use: {workers:?} of {process:?}");
        }
        if process.len() >= 2 && workers.len() == 2 {
            let pinned: std::collections::BTreeSet<_> = workers.values().map(|c| c[0]).collect();
            assert_eq!(pinned.len(), 2, "two workers on two CPUs: {workers:?}");
        }
        let (free, _) = affinities(&build(PinWorkers::Never).unwrap());
        assert!(free.values().all(|cpus| *cpus == process), "without the setting workers keep the process's CPUs: {free:?}");
        // Auto pins two workers only where the process has exactly two CPUs.
        let (auto, _) = affinities(&build(PinWorkers::Auto).unwrap());
        let auto_pinned = auto.values().all(|cpus| cpus.len() == 1);
        assert_eq!(auto_pinned, process.len() == 2, "auto on {} CPUs: {auto:?}", process.len());
    }
}
