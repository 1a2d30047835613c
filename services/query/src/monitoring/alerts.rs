//! Alerts: written to the store's append-only `alerts` table (group commits) before the
//! caller hears of them, then sent to subscribers; listed with filters and pages.

use std::sync::Arc;

use loupe_schema::proto::v1 as pb;
use loupe_store::{AlertFilter, AlertRecord};
use tokio::sync::broadcast;

use super::definition::{action_from_name, severity_from_name};
use crate::error::{Result, ServiceError};
use crate::group_commit::GroupCommit;
use crate::state::AppState;

/// Alerts a slow subscriber may fall behind by before it misses some (it is told).
const SUBSCRIBER_BACKLOG: usize = 1024;

pub struct AlertLog {
    writer: GroupCommit<AlertRecord>,
    subscribers: broadcast::Sender<Arc<pb::Alert>>,
}

impl AlertLog {
    pub fn start(store_root: loupe_store::Location) -> Self {
        let writer = GroupCommit::start("alert", move |rows: Vec<AlertRecord>| {
            let root = store_root.clone();
            async move { loupe_store::append_alerts(&root, &rows).await.map_err(|e| e.to_string()) }
        });
        let (subscribers, _) = broadcast::channel(SUBSCRIBER_BACKLOG);
        AlertLog { writer, subscribers }
    }

    /// Makes `rows` durable, then sends those whose action is not "log" to subscribers.
    pub async fn record(&self, rows: Vec<AlertRecord>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let alerts: Vec<pb::Alert> = rows.iter().map(to_proto).collect();
        self.writer.write(rows).await?;
        for alert in alerts {
            if alert.action != pb::Action::Log as i32 {
                let _ = self.subscribers.send(Arc::new(alert));
            }
        }
        Ok(())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<pb::Alert>> {
        self.subscribers.subscribe()
    }
}

pub fn to_proto(r: &AlertRecord) -> pb::Alert {
    pb::Alert {
        alert_id: r.alert_id.clone(),
        monitor: r.monitor.clone(),
        version: r.version,
        request_id: r.request_id.clone(),
        caller: r.caller.clone(),
        created_at: rfc3339_us(r.created_at_us),
        severity: severity_from_name(&r.severity) as i32,
        action: action_from_name(&r.action) as i32,
        score: r.score,
        threshold: r.threshold,
        spans: serde_json::from_str::<Vec<super::score::SpanJson>>(&r.spans).unwrap_or_default().into_iter().map(Into::into).collect(),
        text_sha256: r.text_sha256.clone(),
        text: r.text.clone(),
        input_id: r.input_id.clone(),
        first_token: r.first_token,
    }
}

pub fn rfc3339_us(us: i64) -> String {
    humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64)).to_string()
}

fn parse_time(field: &str, value: &str) -> Result<Option<i64>> {
    if value.is_empty() {
        return Ok(None);
    }
    let t = humantime::parse_rfc3339_weak(value).map_err(|e| ServiceError::InvalidArgument(format!("{field}: {value:?} is not an RFC 3339 time ({e}); e.g. 2026-11-30T08:00:00Z")))?;
    Ok(Some(t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)))
}

/// Severities at or above `min` (UNSPECIFIED: all).
fn severities_from(min: i32) -> Result<Vec<String>> {
    let min = pb::Severity::try_from(min).map_err(|_| ServiceError::InvalidArgument(format!("min_severity: {min} is not a severity")))?;
    Ok(match min {
        pb::Severity::Unspecified => Vec::new(),
        pb::Severity::Low => vec![],
        pb::Severity::Medium => vec!["medium".into(), "high".into(), "critical".into()],
        pb::Severity::High => vec!["high".into(), "critical".into()],
        pb::Severity::Critical => vec!["critical".into()],
    })
}

/// Whether a subscriber asking for `r` wants `alert`.
pub fn wanted(alert: &pb::Alert, monitor: &str, min_severity: i32) -> bool {
    (monitor.is_empty() || alert.monitor == monitor) && (min_severity == 0 || alert.severity >= min_severity)
}

pub async fn list(state: &AppState, r: pb::ListAlertsRequest) -> Result<pb::ListAlertsResponse> {
    let limits = &state.limits;
    let limit = match r.limit as usize {
        0 => limits.default_search_limit,
        n if n > limits.max_page => return Err(ServiceError::InvalidArgument(format!("limit {n} is above this server's page limit of {}", limits.max_page))),
        n => n,
    };
    let since_us = parse_time("since", &r.since)?;
    let until_us = parse_time("until", &r.until)?;
    if let (Some(s), Some(u)) = (since_us, until_us) {
        if s >= u {
            return Err(ServiceError::InvalidArgument(format!("since {:?} is not before until {:?}", r.since, r.until)));
        }
    }
    let filter = AlertFilter {
        monitor: (!r.monitor.is_empty()).then(|| r.monitor.clone()),
        caller: (!r.caller.is_empty()).then(|| r.caller.clone()),
        severities: severities_from(r.min_severity)?,
        since_us,
        until_us,
    };
    let rows = loupe_store::read_alerts(&state.store_root, &filter).await?;
    // The page token is the id of the last alert of the previous page.
    let start = if r.page_token.is_empty() {
        0
    } else {
        rows.iter().position(|a| a.alert_id == r.page_token).map(|i| i + 1).ok_or_else(|| ServiceError::InvalidArgument(format!("page_token {:?} is not an alert of this listing", r.page_token)))?
    };
    let page: Vec<&AlertRecord> = rows.iter().skip(start).take(limit).collect();
    let next_page_token = if start + page.len() < rows.len() { page.last().map(|a| a.alert_id.clone()).unwrap_or_default() } else { String::new() };
    Ok(pb::ListAlertsResponse { alerts: page.into_iter().map(to_proto).collect(), next_page_token })
}
