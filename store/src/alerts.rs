//! The audit log of monitor firings: the append-only `alerts` table. A server appends an
//! alert (one Lance commit, group-committed with others waiting) before the caller hears
//! of it, so an alert a caller saw survives a crash of the server.

use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array};
use loupe_schema::tables::{self, ALERTS};
use serde::Serialize;

use crate::append_only;
use crate::arrow::Columns;
use crate::error::Result;
use crate::location::Location;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRecord {
    pub alert_id: String,
    pub monitor: String,
    pub version: u32,
    pub request_id: String,
    /// The caller's id for the input (ScoreInput.id).
    pub input_id: String,
    pub caller: String,
    pub created_at_us: i64,
    /// "low", "medium", "high" or "critical".
    pub severity: String,
    /// "log", "alert" or "block".
    pub action: String,
    pub score: f32,
    pub threshold: f32,
    pub first_token: u32,
    /// JSON list of spans.
    pub spans: String,
    pub text_sha256: String,
    pub text: Option<String>,
}

/// Which alerts to read.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    pub monitor: Option<String>,
    pub caller: Option<String>,
    /// Severities to keep (empty: all).
    pub severities: Vec<String>,
    /// `[since, until)` on created_at, microseconds since the epoch.
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
}

/// Appends `rows` in one commit; durable when it returns.
pub async fn append_alerts(root: &Location, rows: &[AlertRecord]) -> Result<()> {
    let strings = |f: &dyn Fn(&AlertRecord) -> &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(rows.iter().map(f))) };
    let columns: Vec<ArrayRef> = vec![
        strings(&|r| &r.alert_id),
        strings(&|r| &r.monitor),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.version))),
        strings(&|r| &r.request_id),
        strings(&|r| &r.input_id),
        strings(&|r| &r.caller),
        Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.created_at_us)).with_timezone("UTC")),
        strings(&|r| &r.severity),
        strings(&|r| &r.action),
        Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.score))),
        Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.threshold))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.first_token))),
        strings(&|r| &r.spans),
        strings(&|r| &r.text_sha256),
        Arc::new(StringArray::from(rows.iter().map(|r| r.text.as_deref()).collect::<Vec<_>>())),
    ];
    append_only::append(root, ALERTS, RecordBatch::try_new(tables::alerts(), columns)?).await
}

/// The alerts that pass `filter`, newest first (commit order reversed).
pub async fn read_alerts(root: &Location, filter: &AlertFilter) -> Result<Vec<AlertRecord>> {
    // Filter in the scan: Lance prunes with it, and quoting is ours (names are checked
    // to letters, digits, '.', '_', '-'; callers are escaped).
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let mut clauses = Vec::new();
    if let Some(m) = &filter.monitor {
        clauses.push(format!("monitor = {}", quote(m)));
    }
    if let Some(c) = &filter.caller {
        clauses.push(format!("caller = {}", quote(c)));
    }
    if !filter.severities.is_empty() {
        clauses.push(format!("severity IN ({})", filter.severities.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")));
    }
    let clause = (!clauses.is_empty()).then(|| clauses.join(" AND "));
    let mut out = Vec::new();
    for batch in append_only::read_all(root, ALERTS, clause.as_deref()).await? {
        let c = Columns::new(ALERTS, &batch);
        let s = |name| c.str(name);
        let (ids, monitors, requests, inputs, callers, severities, actions, spans, hashes, texts) =
            (s("alert_id")?, s("monitor")?, s("request_id")?, s("input_id")?, s("caller")?, s("severity")?, s("action")?, s("spans")?, s("text_sha256")?, s("text")?);
        let (versions, created, scores, thresholds, first) = (c.u32("version")?, c.timestamp_us("created_at")?, c.f32("score")?, c.f32("threshold")?, c.u32("first_token")?);
        for i in 0..batch.num_rows() {
            let at = created.value(i);
            if filter.since_us.is_some_and(|s| at < s) || filter.until_us.is_some_and(|u| at >= u) {
                continue;
            }
            out.push(AlertRecord {
                alert_id: ids.value(i).into(),
                monitor: monitors.value(i).into(),
                version: versions.value(i),
                request_id: requests.value(i).into(),
                input_id: inputs.value(i).into(),
                caller: callers.value(i).into(),
                created_at_us: at,
                severity: severities.value(i).into(),
                action: actions.value(i).into(),
                score: scores.value(i),
                threshold: thresholds.value(i),
                first_token: first.value(i),
                spans: spans.value(i).into(),
                text_sha256: hashes.value(i).into(),
                text: arrow_array::Array::is_valid(texts, i).then(|| texts.value(i).to_string()),
            });
        }
    }
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(id: &str, monitor: &str, severity: &str, caller: &str, at: i64) -> AlertRecord {
        AlertRecord {
            alert_id: id.into(),
            monitor: monitor.into(),
            version: 1,
            request_id: "r".into(),
            input_id: String::new(),
            caller: caller.into(),
            created_at_us: at,
            severity: severity.into(),
            action: "alert".into(),
            score: 2.0,
            threshold: 1.0,
            first_token: 3,
            spans: "[]".into(),
            text_sha256: "00".into(),
            text: (id == "a").then(|| "kept".to_string()),
        }
    }

    #[tokio::test]
    async fn alerts_read_back_newest_first_through_filters() {
        let dir = tempfile::tempdir().unwrap();
        let root = Location::local(dir.path());
        crate::writer::StoreWriter::open_or_create(&root).await.unwrap();
        append_alerts(&root, &[alert("a", "pii", "high", "o'brien", 10), alert("b", "toxic", "low", "x", 20)]).await.unwrap();
        append_alerts(&root, &[alert("c", "pii", "low", "x", 30)]).await.unwrap();
        let ids = |rows: Vec<AlertRecord>| rows.into_iter().map(|r| r.alert_id).collect::<Vec<_>>();
        assert_eq!(ids(read_alerts(&root, &AlertFilter::default()).await.unwrap()), vec!["c", "b", "a"]);
        let pii = AlertFilter { monitor: Some("pii".into()), ..Default::default() };
        assert_eq!(ids(read_alerts(&root, &pii).await.unwrap()), vec!["c", "a"]);
        let quoted = AlertFilter { caller: Some("o'brien".into()), ..Default::default() };
        let rows = read_alerts(&root, &quoted).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].text.as_deref(), Some("kept"));
        let high = AlertFilter { severities: vec!["high".into(), "critical".into()], ..Default::default() };
        assert_eq!(ids(read_alerts(&root, &high).await.unwrap()), vec!["a"]);
        let window = AlertFilter { since_us: Some(15), until_us: Some(30), ..Default::default() };
        assert_eq!(ids(read_alerts(&root, &window).await.unwrap()), vec!["b"]);
    }
}
