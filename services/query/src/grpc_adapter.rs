//! The gRPC adapters: for each RPC, decode the request, call the plain-Rust service, convert
//! the result (quickwit's grpc_adapter pattern). Logging, request ids, deadlines and the
//! error-to-status conversion are done once, by [`Call`]; the logic lives in the services.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loupe_schema::proto::v1 as pb;
use loupe_schema::proto::v1::features_server::Features;
use loupe_schema::proto::v1::internals_server::Internals;
use loupe_schema::proto::v1::monitoring_server::Monitoring;
use loupe_schema::proto::v1::steering_server::Steering;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::access::{self, Caller};
use crate::error::Result;
use crate::features::FeaturesService;
use crate::internals::InternalsService;
use crate::monitoring::MonitoringService;
use crate::state::AppState;
use crate::steering::SteeringService;

/// A service behind its gRPC adapter.
pub struct Grpc<S>(pub S);

type Reply<T> = std::result::Result<Response<T>, Status>;

/// One call: its method, request id, the caller's deadline, and who calls.
pub struct Call {
    method: &'static str,
    request_id: u64,
    pub deadline: Option<Duration>,
    caller: std::result::Result<Arc<Caller>, crate::error::ServiceError>,
}

impl Call {
    /// Reads the call's metadata and checks its caller (token, scope, quota); a refused
    /// caller's call fails in [`Call::run`] before any work is done.
    pub async fn new<T>(method: &'static str, request: &Request<T>, state: &AppState) -> Self {
        let authorization = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let caller = state.access.authorize(method, authorization, request.remote_addr()).await;
        Call { method, request_id: state.request_id(), deadline: deadline(request.metadata()), caller }
    }

    /// Runs the service call as its caller's, inside a span with the request id; logs its
    /// outcome, caller and latency; converts its error to the one status code it maps to.
    pub async fn run<T>(self, work: impl Future<Output = Result<T>>) -> Reply<T> {
        let who = self.caller.as_ref().ok().and_then(|c| c.name.clone()).unwrap_or_default();
        let span = tracing::info_span!("rpc", request_id = self.request_id, method = self.method, caller = who);
        async move {
            let start = Instant::now();
            let result = match self.caller {
                Ok(caller) => access::as_caller(caller, work).await,
                Err(refused) => Err(refused),
            };
            let ms = start.elapsed().as_secs_f64() * 1e3;
            match result {
                Ok(value) => {
                    tracing::info!(ms, "ok");
                    Ok(Response::new(value))
                }
                Err(e) => {
                    let status = Status::from(e);
                    tracing::warn!(ms, code = ?status.code(), message = status.message(), "failed");
                    Err(status)
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// The caller's deadline, from the `grpc-timeout` header ("<n><unit>", unit H M S m u n).
pub fn deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl Grpc<FeaturesService> {
    pub fn features(state: Arc<AppState>) -> Self {
        Grpc(FeaturesService { state })
    }
}

impl Grpc<InternalsService> {
    pub fn internals(state: Arc<AppState>) -> Self {
        Grpc(InternalsService { state })
    }
}

impl Grpc<MonitoringService> {
    pub fn monitoring(state: Arc<AppState>) -> Self {
        Grpc(MonitoringService { state })
    }
}

impl Grpc<SteeringService> {
    pub fn steering(state: Arc<AppState>) -> Self {
        Grpc(SteeringService { state })
    }
}

#[tonic::async_trait]
impl Features for Grpc<FeaturesService> {
    async fn list_dictionaries(&self, request: Request<pb::ListDictionariesRequest>) -> Reply<pb::ListDictionariesResponse> {
        let call = Call::new("ListDictionaries", &request, &self.0.state).await;
        call.run(self.0.list_dictionaries(request.into_inner())).await
    }

    async fn search_features(&self, request: Request<pb::SearchFeaturesRequest>) -> Reply<pb::SearchFeaturesResponse> {
        let call = Call::new("SearchFeatures", &request, &self.0.state).await;
        call.run(self.0.search_features(request.into_inner())).await
    }

    async fn get_feature(&self, request: Request<pb::GetFeatureRequest>) -> Reply<pb::GetFeatureResponse> {
        let call = Call::new("GetFeature", &request, &self.0.state).await;
        call.run(self.0.get_feature(request.into_inner())).await
    }

    async fn similar_features(&self, request: Request<pb::SimilarFeaturesRequest>) -> Reply<pb::SimilarFeaturesResponse> {
        let call = Call::new("SimilarFeatures", &request, &self.0.state).await;
        call.run(self.0.similar_features(request.into_inner())).await
    }

    async fn top_features_for_text(&self, request: Request<pb::TopFeaturesForTextRequest>) -> Reply<pb::TopFeaturesForTextResponse> {
        let call = Call::new("TopFeaturesForText", &request, &self.0.state).await;
        let deadline = call.deadline;
        call.run(self.0.top_features_for_text(request.into_inner(), deadline)).await
    }

    async fn set_feature_label(&self, request: Request<pb::SetFeatureLabelRequest>) -> Reply<pb::SetFeatureLabelResponse> {
        let call = Call::new("SetFeatureLabel", &request, &self.0.state).await;
        call.run(self.0.set_feature_label(request.into_inner())).await
    }
}

#[tonic::async_trait]
impl Internals for Grpc<InternalsService> {
    async fn tokenize(&self, request: Request<pb::TokenizeRequest>) -> Reply<pb::TokenizeResponse> {
        let call = Call::new("Tokenize", &request, &self.0.state).await;
        call.run(self.0.tokenize(request.into_inner())).await
    }

    async fn get_activations(&self, request: Request<pb::GetActivationsRequest>) -> Reply<pb::GetActivationsResponse> {
        let call = Call::new("GetActivations", &request, &self.0.state).await;
        let deadline = call.deadline;
        call.run(self.0.get_activations(request.into_inner(), deadline)).await
    }
}

/// SteerStream's events on the wire.
type SteerEventStream = WireStream<pb::SteerEvent>;

#[tonic::async_trait]
impl Steering for Grpc<SteeringService> {
    async fn steer(&self, request: Request<pb::SteerRequest>) -> Reply<pb::SteerResponse> {
        let call = Call::new("Steer", &request, &self.0.state).await;
        let deadline = call.deadline;
        call.run(self.0.steer(request.into_inner(), deadline)).await
    }

    type SteerStreamStream = SteerEventStream;

    async fn steer_stream(&self, request: Request<pb::SteerRequest>) -> Reply<SteerEventStream> {
        let call = Call::new("SteerStream", &request, &self.0.state).await;
        let events = self.0.steer_stream(request.into_inner(), call.deadline);
        call.run(async move { Ok(wire(events.await?)) }).await
    }

    async fn create_vector(&self, request: Request<pb::CreateVectorRequest>) -> Reply<pb::CreateVectorResponse> {
        let call = Call::new("CreateVector", &request, &self.0.state).await;
        let deadline = call.deadline;
        call.run(self.0.create_vector(request.into_inner(), deadline)).await
    }

    async fn list_vectors(&self, request: Request<pb::ListVectorsRequest>) -> Reply<pb::ListVectorsResponse> {
        let call = Call::new("ListVectors", &request, &self.0.state).await;
        call.run(self.0.list_vectors(request.into_inner())).await
    }

    async fn delete_vector(&self, request: Request<pb::DeleteVectorRequest>) -> Reply<pb::DeleteVectorResponse> {
        let call = Call::new("DeleteVector", &request, &self.0.state).await;
        call.run(self.0.delete_vector(request.into_inner())).await
    }
}

/// A server stream of `T` on the wire.
type WireStream<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = std::result::Result<T, Status>> + Send>>;

/// A service's channel of items (or the error that ended it) as a wire stream.
fn wire<T: Send + 'static>(items: tokio::sync::mpsc::UnboundedReceiver<Result<T>>) -> WireStream<T> {
    use tokio_stream::StreamExt;
    Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(items).map(|item| item.map_err(Status::from)))
}

#[tonic::async_trait]
impl Monitoring for Grpc<MonitoringService> {
    async fn create_monitor(&self, request: Request<pb::CreateMonitorRequest>) -> Reply<pb::MonitorInfo> {
        let call = Call::new("CreateMonitor", &request, &self.0.state).await;
        call.run(self.0.create_monitor(request.into_inner())).await
    }

    async fn update_monitor(&self, request: Request<pb::UpdateMonitorRequest>) -> Reply<pb::MonitorInfo> {
        let call = Call::new("UpdateMonitor", &request, &self.0.state).await;
        call.run(self.0.update_monitor(request.into_inner())).await
    }

    async fn get_monitor(&self, request: Request<pb::GetMonitorRequest>) -> Reply<pb::MonitorInfo> {
        let call = Call::new("GetMonitor", &request, &self.0.state).await;
        call.run(self.0.get_monitor(request.into_inner())).await
    }

    async fn list_monitors(&self, request: Request<pb::ListMonitorsRequest>) -> Reply<pb::ListMonitorsResponse> {
        let call = Call::new("ListMonitors", &request, &self.0.state).await;
        call.run(self.0.list_monitors(request.into_inner())).await
    }

    async fn delete_monitor(&self, request: Request<pb::DeleteMonitorRequest>) -> Reply<pb::MonitorInfo> {
        let call = Call::new("DeleteMonitor", &request, &self.0.state).await;
        call.run(self.0.delete_monitor(request.into_inner())).await
    }

    async fn train_probe(&self, request: Request<pb::TrainProbeRequest>) -> Reply<pb::TrainProbeResponse> {
        let call = Call::new("TrainProbe", &request, &self.0.state).await;
        let deadline = call.deadline;
        call.run(self.0.train_probe(request.into_inner(), deadline)).await
    }

    async fn evaluate_monitor(&self, request: Request<pb::EvaluateMonitorRequest>) -> Reply<pb::EvaluateMonitorResponse> {
        let call = Call::new("EvaluateMonitor", &request, &self.0.state).await;
        let deadline = call.deadline;
        call.run(self.0.evaluate_monitor(request.into_inner(), deadline)).await
    }

    async fn score(&self, request: Request<pb::ScoreRequest>) -> Reply<pb::ScoreResponse> {
        let call = Call::new("Score", &request, &self.0.state).await;
        let deadline = call.deadline;
        call.run(self.0.score(request.into_inner(), deadline)).await
    }

    type StreamScoreStream = WireStream<pb::StreamScoreResponse>;

    async fn stream_score(&self, request: Request<tonic::Streaming<pb::StreamScoreRequest>>) -> Reply<Self::StreamScoreStream> {
        use tokio_stream::StreamExt;
        let call = Call::new("StreamScore", &request, &self.0.state).await;
        let inbound = request.into_inner().map(|m| m.map_err(|s| crate::error::ServiceError::InvalidArgument(format!("the request stream failed: {}", s.message()))));
        call.run(async move { Ok(wire(self.0.stream_score(inbound).await?)) }).await
    }

    async fn list_alerts(&self, request: Request<pb::ListAlertsRequest>) -> Reply<pb::ListAlertsResponse> {
        let call = Call::new("ListAlerts", &request, &self.0.state).await;
        call.run(self.0.list_alerts(request.into_inner())).await
    }

    type SubscribeAlertsStream = WireStream<pb::Alert>;

    async fn subscribe_alerts(&self, request: Request<pb::SubscribeAlertsRequest>) -> Reply<Self::SubscribeAlertsStream> {
        let call = Call::new("SubscribeAlerts", &request, &self.0.state).await;
        call.run(async move { Ok(wire(self.0.subscribe_alerts(request.into_inner()).await?)) }).await
    }
}
