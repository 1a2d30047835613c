//! The Monitoring service: monitors (named, versioned detector lists in the store), scoring
//! of texts, conversations and streams with dynamic batching, probe training and evaluation,
//! and the alerts audit log with its subscribers.

pub(crate) mod alerts;
mod batcher;
pub mod definition;
mod registry;
pub mod score;
mod stream;
mod train;

use std::sync::Arc;
use std::time::Duration;

use loupe_engine::monitor::{Calibration, Detector, Monitor};
use loupe_schema::proto::v1 as pb;
use loupe_store::{MonitorVersion, MonitorWrite};
use tokio::sync::mpsc;

pub use alerts::AlertLog;
pub use batcher::{Batcher, ReadSpec, Shape};
pub use registry::{LiveMonitor, Registry};
pub use stream::StreamReplies;

use crate::error::{Result, ServiceError};
use crate::state::AppState;

/// What the server holds for monitoring.
pub struct MonitoringState {
    pub registry: Registry,
    pub alerts: AlertLog,
    /// StreamScore streams open now.
    pub(crate) open_streams: Arc<std::sync::atomic::AtomicUsize>,
    /// None without a model.
    batcher: Option<Batcher>,
}

impl MonitoringState {
    pub fn new(store_root: loupe_store::Location, batcher: Option<Batcher>) -> Self {
        MonitoringState { registry: Registry::default(), alerts: AlertLog::start(store_root), open_streams: Arc::default(), batcher }
    }

    pub fn batcher(&self) -> Result<&Batcher> {
        self.batcher.as_ref().ok_or_else(|| ServiceError::FailedPrecondition("this server has no model loaded, so it cannot score: restart it with one".into()))
    }
}

pub struct MonitoringService {
    pub state: Arc<AppState>,
}

/// New alerts for a subscriber, or the error that ended the subscription.
pub type AlertEvents = mpsc::UnboundedReceiver<Result<pb::Alert>>;

impl MonitoringService {
    pub async fn create_monitor(&self, r: pb::CreateMonitorRequest) -> Result<pb::MonitorInfo> {
        self.write_definition(r.definition, r.author.as_deref(), false).await
    }

    pub async fn update_monitor(&self, r: pb::UpdateMonitorRequest) -> Result<pb::MonitorInfo> {
        self.write_definition(r.definition, r.author.as_deref(), true).await
    }

    async fn write_definition(&self, definition: Option<pb::MonitorDefinition>, author: Option<&str>, update: bool) -> Result<pb::MonitorInfo> {
        let author = crate::rpc::author_of(author)?;
        let definition = definition.ok_or_else(|| ServiceError::InvalidArgument("definition is missing".into()))?;
        let (mut monitor, to_calibrate) = definition::from_proto(definition)?;
        let live = latest(&self.state, &monitor.name).await?.is_some_and(|v| !v.archived);
        match (update, live) {
            (false, true) => return Err(ServiceError::AlreadyExists(format!("monitor {:?} exists: UpdateMonitor makes a new version of it", monitor.name))),
            (true, false) => return Err(ServiceError::NotFound(format!("no live monitor {:?} to update (CreateMonitor makes one)", monitor.name))),
            _ => {}
        }
        let resolved = definition::resolve(&self.state, &monitor).await?;
        for (i, request) in to_calibrate {
            let detector = calibrate(&self.state, &resolved[i], &request).await.map_err(|e| match e {
                ServiceError::InvalidArgument(m) => ServiceError::InvalidArgument(format!("definition.detectors[{i}].calibrate: {m}")),
                other => other,
            })?;
            // A linear probe's offset moves to its bias; a stored vector keeps its name
            // unless its offset had to move (then it is stored as the probe it resolved to).
            let stored = &monitor.detectors[i];
            monitor.detectors[i] = match &stored.signal {
                loupe_engine::monitor::Signal::Vector { .. } if detector.signal == resolved[i].signal => {
                    Detector { calibration: detector.calibration.clone(), threshold: detector.threshold, ..stored.clone() }
                }
                _ => detector,
            };
        }
        monitor.validate().map_err(|e| ServiceError::InvalidArgument(format!("definition.{}", e.to_string().trim_start_matches("invalid input: "))))?;
        let write = MonitorWrite { name: monitor.name.clone(), definition: serde_json::to_string(&monitor).map_err(|e| ServiceError::Internal(e.to_string()))?, archived: false, author };
        loupe_store::append_monitor(&self.state.store_root, &write).await?;
        self.state.monitoring.registry.refresh(&self.state).await?;
        let version = latest(&self.state, &monitor.name).await?.ok_or_else(|| ServiceError::Internal("the monitor written is not in the store".into()))?;
        info(&version)
    }

    pub async fn get_monitor(&self, r: pb::GetMonitorRequest) -> Result<pb::MonitorInfo> {
        let history = loupe_store::monitor_history(&self.state.store_root).await?;
        let versions = history.get(&r.name).ok_or_else(|| ServiceError::NotFound(format!("no monitor {:?}", r.name)))?;
        let version = match r.version {
            0 => versions.last(),
            v => versions.get(v as usize - 1),
        }
        .ok_or_else(|| ServiceError::NotFound(format!("monitor {:?} has versions 1 to {}, not {}", r.name, versions.len(), r.version)))?;
        info(version)
    }

    pub async fn list_monitors(&self, r: pb::ListMonitorsRequest) -> Result<pb::ListMonitorsResponse> {
        let history = loupe_store::monitor_history(&self.state.store_root).await?;
        let monitors = history.values().filter_map(|v| v.last()).filter(|v| r.include_archived || !v.archived).map(info).collect::<Result<_>>()?;
        Ok(pb::ListMonitorsResponse { monitors })
    }

    pub async fn delete_monitor(&self, r: pb::DeleteMonitorRequest) -> Result<pb::MonitorInfo> {
        let author = crate::rpc::author_of(r.author.as_deref())?;
        let current = latest(&self.state, &r.name).await?.filter(|v| !v.archived).ok_or_else(|| ServiceError::NotFound(format!("no live monitor {:?}", r.name)))?;
        let write = MonitorWrite { name: r.name.clone(), definition: current.definition, archived: true, author };
        loupe_store::append_monitor(&self.state.store_root, &write).await?;
        self.state.monitoring.registry.refresh(&self.state).await?;
        info(&latest(&self.state, &r.name).await?.ok_or_else(|| ServiceError::Internal("the archival is not in the store".into()))?)
    }

    pub async fn score(&self, r: pb::ScoreRequest, deadline: Option<Duration>) -> Result<pb::ScoreResponse> {
        with_deadline(deadline, score::score(&self.state, r)).await
    }

    pub async fn stream_score(&self, inbound: impl futures::Stream<Item = Result<pb::StreamScoreRequest>> + Send + Unpin + 'static) -> Result<StreamReplies> {
        stream::stream_score(self.state.clone(), inbound).await
    }

    pub async fn train_probe(&self, r: pb::TrainProbeRequest, deadline: Option<Duration>) -> Result<pb::TrainProbeResponse> {
        let (detector, report) = with_deadline(deadline, train::train_probe(&self.state, &r)).await?;
        let monitor = if r.monitor_name.is_empty() {
            None
        } else {
            let definition =
                pb::MonitorDefinition { name: r.monitor_name.clone(), description: format!("probe trained by TrainProbe at {}", r.hook), detectors: vec![definition::detector_to_proto(&detector)] };
            let update = latest(&self.state, &r.monitor_name).await?.is_some_and(|v| !v.archived);
            Some(self.write_definition(Some(definition), r.author.as_deref(), update).await?)
        };
        Ok(pb::TrainProbeResponse { detector: Some(definition::detector_to_proto(&detector)), report: Some(report), monitor })
    }

    pub async fn evaluate_monitor(&self, r: pb::EvaluateMonitorRequest, deadline: Option<Duration>) -> Result<pb::EvaluateMonitorResponse> {
        with_deadline(deadline, train::evaluate(&self.state, r)).await
    }

    pub async fn list_alerts(&self, r: pb::ListAlertsRequest) -> Result<pb::ListAlertsResponse> {
        alerts::list(&self.state, r).await
    }

    /// New alerts matching the filter until the receiver is dropped.
    pub async fn subscribe_alerts(&self, r: pb::SubscribeAlertsRequest) -> Result<AlertEvents> {
        pb::Severity::try_from(r.min_severity).map_err(|_| ServiceError::InvalidArgument(format!("min_severity: {} is not a severity", r.min_severity)))?;
        let mut alerts = self.state.monitoring.alerts.subscribe();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    next = alerts.recv() => match next {
                        Ok(alert) => {
                            if alerts::wanted(&alert, &r.monitor, r.min_severity) && tx.send(Ok((*alert).clone())).is_err() {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                            let _ = tx.send(Err(ServiceError::ResourceExhausted(format!("this subscriber fell {missed} alerts behind and missed them; ListAlerts has them"))));
                            return;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(rx)
    }
}

/// Re-reads the monitors table every `every` until the handle is aborted, so monitors
/// written through other servers on the same store are scored here too.
pub fn follow_monitors(state: Arc<AppState>, every: Duration) -> tokio::task::JoinHandle<()> {
    crate::labels::every_tick(every, move || {
        let state = state.clone();
        async move {
            if let Err(e) = state.monitoring.registry.refresh(&state).await {
                tracing::warn!(error = %e, "reading monitors failed; retrying");
            }
        }
    })
}

async fn with_deadline<T>(deadline: Option<Duration>, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    match deadline {
        Some(d) => tokio::time::timeout(d, work).await.map_err(|_| ServiceError::DeadlineExceeded(format!("the deadline of {} ms passed before scoring finished", d.as_millis())))?,
        None => work.await,
    }
}

async fn latest(state: &AppState, name: &str) -> Result<Option<MonitorVersion>> {
    let mut history = loupe_store::monitor_history(&state.store_root).await?;
    Ok(history.remove(name).and_then(|mut v| v.pop()))
}

fn info(v: &MonitorVersion) -> Result<pb::MonitorInfo> {
    let monitor = registry::parse(v)?;
    Ok(pb::MonitorInfo { definition: Some(definition::to_proto(&monitor)), version: v.version, archived: v.archived, author: v.author.clone(), created_at: alerts::rfc3339_us(v.created_at_us) })
}

/// Each detector's score on each text (`[detector][text]`), in shared passes.
pub(crate) async fn scores_of(state: &AppState, detectors: &[Detector], texts: &[String]) -> Result<Vec<Vec<f32>>> {
    let lens = state.engine()?;
    let tokenizer = lens.model().tokenizer()?;
    let live = Arc::new(LiveMonitor { version: 0, monitor: Monitor { name: String::new(), description: String::new(), detectors: detectors.to_vec() }, detectors: detectors.to_vec() });
    let spec = score::read_spec(&lens, std::slice::from_ref(&live))?;
    let prepared: Vec<score::Prepared> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| score::prepare(tokenizer, pb::ScoreInput { text: t.clone(), ..Default::default() }, state.limits.max_text_bytes, state.limits.max_tokens, &format!("texts[{i}]")))
        .collect::<Result<_>>()?;
    let batcher = state.monitoring.batcher()?;
    let mut out = vec![Vec::with_capacity(texts.len()); detectors.len()];
    // In slices, so that a large set neither fills the scoring queue nor holds every pass.
    let slice = (state.limits.max_queued_texts / 4).max(1);
    for chunk in prepared.chunks(slice) {
        let passes = futures::future::try_join_all(chunk.iter().map(|p| batcher.run(p.ids.clone(), spec.clone()))).await?;
        for (p, rows) in chunk.iter().zip(&passes) {
            for (d, verdict) in score::run_monitor(&lens, &live, p, rows)?.into_iter().enumerate() {
                out[d].push(verdict.score);
            }
        }
    }
    Ok(out)
}

/// The detector with its threshold set at the request's FPR on its control texts, and the
/// calibration recorded.
async fn calibrate(state: &AppState, detector: &Detector, request: &pb::CalibrateRequest) -> Result<Detector> {
    let scores = scores_of(state, std::slice::from_ref(detector), &request.control_texts).await?.remove(0);
    let finite: Vec<f32> = scores.into_iter().filter(|s| s.is_finite()).collect();
    if finite.is_empty() {
        return Err(ServiceError::InvalidArgument("no control text has a token in the detector's scope".into()));
    }
    let threshold = loupe_train::probes::threshold_at_fpr(&finite, request.target_fpr);
    let joined = request.control_texts.join("\n");
    let calibration = Calibration {
        target_fpr: request.target_fpr,
        control_set: if request.control_set.is_empty() { "control texts given to CreateMonitor".into() } else { request.control_set.clone() },
        control_sha256: score::sha256_hex(joined.as_bytes()),
        control_texts: request.control_texts.len(),
        threshold,
        details: serde_json::Map::new(),
    };
    let calibrated = Detector { threshold, calibration: Some(calibration), ..detector.clone() }.with_offset_in_bias();
    if calibrated.threshold < 0.0 {
        return Err(ServiceError::InvalidArgument(format!("the calibrated threshold is {threshold}, below 0: feature signals cannot carry an offset; give an absolute threshold")));
    }
    Ok(calibrated)
}
