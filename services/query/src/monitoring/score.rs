//! Score: texts and conversations through monitors. Inputs are tokenized (with BOS, and each
//! token's byte range and chat role), run in shared passes by the batcher, and each
//! detector's per-token signal becomes a score, spans and (when it fired) an explanation:
//! the dictionary features that contributed most at the peak. Firings are written to the
//! alerts table before the reply.

use std::sync::Arc;

use loupe_engine::chat::{self, ChatMessage};
use loupe_engine::monitor::{self, Action, Detector, Severity, Signal, Span};
use loupe_engine::{FeatureLens, Tokenizer};
use loupe_schema::proto::v1 as pb;
use loupe_store::AlertRecord;
use serde::{Deserialize, Serialize};

use super::batcher::{ReadSpec, TextRows};
use super::definition::{action_name, action_to_proto, severity_name, severity_to_proto};
use super::registry::LiveMonitor;
use crate::error::{Result, ServiceError};
use crate::state::{AppState, Snapshot};

/// A text ready to score.
pub struct Prepared {
    pub id: String,
    /// The scored text (a conversation rendered with the chat template).
    pub text: String,
    pub ids: Vec<u32>,
    /// Byte range of each token in `text` (BOS: empty).
    pub offsets: Vec<(usize, usize)>,
    /// Chat role of each token's message (None: raw text, or template markup).
    pub roles: Vec<Option<String>>,
    pub special: Vec<bool>,
}

impl Prepared {
    /// Which tokens a detector reads.
    pub fn scope(&self, detector: &Detector) -> Vec<bool> {
        let roles = &detector.scope.roles;
        (0..self.ids.len()).map(|t| !self.special[t] && (roles.is_empty() || self.roles[t].as_ref().is_some_and(|r| roles.contains(r)))).collect()
    }

    /// A span in characters of the text, with its text.
    pub fn span(&self, s: &Span) -> pb::Span {
        let bytes = (self.offsets[s.start].0, self.offsets[s.end - 1].1.max(self.offsets[s.start].0));
        let chars = |b: usize| self.text.get(..b).map_or(0, |p| p.chars().count()) as u32;
        pb::Span {
            token_start: s.start as u32,
            token_end: s.end as u32,
            char_start: chars(bytes.0),
            char_end: chars(bytes.1),
            peak_token: s.peak as u32,
            peak_value: s.peak_value,
            text: self.text.get(bytes.0..bytes.1).unwrap_or("").to_string(),
        }
    }
}

/// Tokenizes one input (`field` names it in errors).
pub fn prepare(tokenizer: &Tokenizer, input: pb::ScoreInput, max_text_bytes: usize, max_tokens: usize, field: &str) -> Result<Prepared> {
    let invalid = |what: String| ServiceError::InvalidArgument(format!("{field}: {what}"));
    let (text, contents) = match (input.text.is_empty(), input.messages.is_empty()) {
        (false, true) => (input.text, Vec::new()),
        (true, false) => {
            let messages: Vec<ChatMessage> = input.messages.iter().map(|m| ChatMessage::new(m.role.clone(), m.content.clone())).collect();
            if let Some(i) = input.messages.iter().position(|m| m.role.trim().is_empty()) {
                return Err(invalid(format!("messages[{i}].role is empty")));
            }
            let text = chat::render(tokenizer.chat_template(), &messages, false).map_err(|e| invalid(format!("messages: {e}")))?;
            // Each message's content range in the rendered text, in order.
            let mut contents = Vec::new();
            let mut cursor = 0;
            for m in &input.messages {
                if let Some(at) = text.get(cursor..).and_then(|rest| rest.find(m.content.as_str())) {
                    let start = cursor + at;
                    contents.push((start, start + m.content.len(), m.role.clone()));
                    cursor = start + m.content.len();
                }
            }
            (text, contents)
        }
        (false, false) => return Err(invalid("give text or messages, not both".into())),
        (true, true) => return Err(invalid("is empty: give text or messages".into())),
    };
    if text.trim().is_empty() {
        return Err(invalid("the text is empty".into()));
    }
    if text.len() > max_text_bytes {
        return Err(invalid(format!("the text is {} bytes; this server accepts at most {max_text_bytes} (max_text_bytes)", text.len())));
    }
    let (tokens, token_offsets) = tokenizer.encode_with_offsets(&text)?;
    let mut ids: Vec<u32> = tokenizer.bos_token_id().into_iter().collect();
    let mut offsets = vec![(0, 0); ids.len()];
    ids.extend(tokens);
    offsets.extend(token_offsets);
    if ids.len() > max_tokens {
        return Err(invalid(format!("the text is {} tokens; this server scores at most {max_tokens} per text (max_tokens)", ids.len())));
    }
    let roles = offsets.iter().map(|&(s, e)| contents.iter().find(|(cs, ce, _)| s < *ce && e > *cs).map(|(_, _, r)| r.clone())).collect();
    let special = ids.iter().map(|&t| tokenizer.is_special(t)).collect();
    Ok(Prepared { id: input.id, text, ids, offsets, roles, special })
}

/// What the monitors read, as lens positions.
pub fn read_spec(lens: &FeatureLens, monitors: &[Arc<LiveMonitor>]) -> Result<ReadSpec> {
    let detectors: Vec<Detector> = monitors.iter().flat_map(|m| m.detectors.iter().cloned()).collect();
    let read = monitor::read_for(lens, &detectors)?;
    Ok(ReadSpec { hooks: read.hooks.captures().collect(), dictionaries: read.dictionaries })
}

/// Each detector of `m` on the text's rows of a pass.
pub fn run_monitor(lens: &FeatureLens, m: &LiveMonitor, text: &Prepared, rows: &TextRows) -> Result<Vec<monitor::Scored>> {
    let codes: Vec<(&str, &loupe_engine::SparseActs)> = rows.pass.codes.iter().map(|(at, c)| (lens.dictionaries()[*at].id.as_str(), c)).collect();
    m.detectors
        .iter()
        .map(|d| {
            let values = monitor::token_values(&d.signal, &codes, &rows.pass.captured, rows.rows.clone())?;
            Ok(monitor::score(&values, &text.scope(d), d.aggregation, d.threshold))
        })
        .collect()
}

/// How far above its threshold a verdict is (NaN scores are furthest below).
fn margin(score: f32, threshold: f32) -> f32 {
    if score.is_nan() {
        f32::NEG_INFINITY
    } else {
        score - threshold
    }
}

/// The features that contributed most to detector `d`'s value at row `row` of the pass.
fn explain(lens: &FeatureLens, snapshot: &Snapshot, d: &Detector, rows: &TextRows, token: usize, k: usize) -> Result<Vec<pb::FeatureContribution>> {
    let row = rows.rows.start + token;
    let mut found: Vec<(String, u32, f32, f32)> = Vec::new();
    match &d.signal {
        Signal::Linear { hook, weights, .. } => {
            // A dictionary that reads and writes the probe's hook (an SAE there): the probe's
            // value is Σ_i f_i (d_i · w) + (error · w) + bias.
            let x = rows.pass.captured.get(hook).ok_or_else(|| ServiceError::Internal(format!("the pass did not capture {hook}")))?.narrow(0, row, 1)?;
            for entry in lens.dictionaries().iter().filter(|e| e.dictionary.info().hook_in == *hook && e.dictionary.info().hook_out == *hook) {
                let encoding = entry.dictionary.encode(&x)?;
                let (indices, values) = encoding.features.token(0);
                for (&f, &a) in indices.iter().zip(values) {
                    let along: f32 = entry.dictionary.decoder_row(f as usize).iter().zip(weights).map(|(d, w)| d * w).sum();
                    found.push((entry.id.clone(), f, a, a * along));
                }
            }
        }
        Signal::Feature { dictionary, feature } => {
            if let Some((_, codes)) = rows.pass.codes.iter().find(|(at, _)| lens.dictionaries()[*at].id == *dictionary) {
                let (indices, values) = codes.token(row);
                if let Some(i) = indices.iter().position(|i| i == feature) {
                    found.push((dictionary.clone(), *feature, values[i], values[i]));
                }
            }
        }
        Signal::Features { dictionary, weights, .. } => {
            if let Some((_, codes)) = rows.pass.codes.iter().find(|(at, _)| lens.dictionaries()[*at].id == *dictionary) {
                let (indices, values) = codes.token(row);
                for (f, w) in weights {
                    if let Some(i) = indices.iter().position(|i| i == f) {
                        found.push((dictionary.clone(), *f, values[i], w * values[i]));
                    }
                }
            }
        }
        Signal::Vector { .. } => {}
    }
    found.retain(|c| c.3 > 0.0);
    found.sort_by(|a, b| b.3.total_cmp(&a.3));
    found.truncate(k);
    Ok(found
        .into_iter()
        .map(|(dictionary, feature, activation, contribution)| pb::FeatureContribution {
            label: snapshot.label(&dictionary, feature),
            feature: crate::convert::feature_ref(&dictionary, feature),
            activation,
            contribution,
        })
        .collect())
}

/// A monitor's result on one text, and the alert it makes when it fired.
pub struct MonitorOutcome {
    pub result: pb::MonitorResult,
    pub alert: Option<AlertRecord>,
}

/// Who and what an alert records.
pub struct AlertContext<'a> {
    pub request_id: &'a str,
    pub caller: &'a str,
    pub keep_text: bool,
}

/// Scores one text with one monitor: per-detector results, the deciding detector, the alert.
pub fn outcome(
    lens: &FeatureLens,
    snapshot: &Snapshot,
    m: &LiveMonitor,
    text: &Prepared,
    rows: &TextRows,
    verdicts: Vec<monitor::Scored>,
    explain_k: usize,
    context: &AlertContext,
) -> Result<MonitorOutcome> {
    let mut detectors = Vec::with_capacity(verdicts.len());
    for (i, (d, v)) in m.detectors.iter().zip(&verdicts).enumerate() {
        let (explanation, explained_token) = match v.spans.iter().max_by(|a, b| a.peak_value.total_cmp(&b.peak_value)) {
            Some(peak) if v.fired && explain_k > 0 => (explain(lens, snapshot, d, rows, peak.peak, explain_k)?, peak.peak as u32),
            _ => (Vec::new(), 0),
        };
        detectors.push(pb::DetectorResult {
            detector: i as u32,
            score: v.score,
            threshold: d.threshold,
            fired: v.fired,
            spans: v.spans.iter().map(|s| text.span(s)).collect(),
            explanation,
            explained_token,
        });
    }
    let deciding = (0..verdicts.len()).max_by(|&a, &b| margin(verdicts[a].score, m.detectors[a].threshold).total_cmp(&margin(verdicts[b].score, m.detectors[b].threshold))).unwrap_or(0);
    let fired_detectors: Vec<usize> = (0..verdicts.len()).filter(|&i| verdicts[i].fired).collect();
    let fired = !fired_detectors.is_empty();
    let (severity, action) = severity_and_action(m, if fired { &fired_detectors } else { std::slice::from_ref(&deciding) });
    let decided = &detectors[deciding];
    let mut result = pb::MonitorResult {
        monitor: m.monitor.name.clone(),
        version: m.version,
        fired,
        score: decided.score,
        threshold: decided.threshold,
        spans: decided.spans.clone(),
        detectors,
        severity: severity_to_proto(severity) as i32,
        action: action_to_proto(action) as i32,
        alert_id: String::new(),
    };
    let alert = fired.then(|| {
        let first_token = verdicts[deciding].spans.first().map_or(0, |s| s.start as u32);
        let firing = Firing { crossed: &fired_detectors, score: result.score, threshold: result.threshold, first_token, spans: &result.spans };
        let alert = alert_of(m, &firing, &text.text, &text.id, context);
        result.alert_id = alert.alert_id.clone();
        alert
    });
    Ok(MonitorOutcome { result, alert })
}

/// The most severe severity and the strongest action among `detectors` of `m`.
pub fn severity_and_action(m: &LiveMonitor, detectors: &[usize]) -> (Severity, Action) {
    let chosen = || detectors.iter().map(|&i| &m.detectors[i]);
    (chosen().map(|d| d.severity).max().unwrap_or_default(), chosen().map(|d| d.action).max().unwrap_or_default())
}

/// How a monitor crossed: which detectors, the deciding score and threshold, where.
pub struct Firing<'a> {
    pub crossed: &'a [usize],
    pub score: f32,
    pub threshold: f32,
    pub first_token: u32,
    pub spans: &'a [pb::Span],
}

/// The alerts-table row of a firing of `m` on `text` (Score, StreamScore, guardrails).
pub fn alert_of(m: &LiveMonitor, firing: &Firing, text: &str, input_id: &str, context: &AlertContext) -> AlertRecord {
    let (severity, action) = severity_and_action(m, firing.crossed);
    let spans: Vec<SpanJson> = firing.spans.iter().map(SpanJson::from).collect();
    AlertRecord {
        alert_id: new_id(),
        monitor: m.monitor.name.clone(),
        version: m.version,
        request_id: context.request_id.to_string(),
        input_id: input_id.to_string(),
        caller: context.caller.to_string(),
        created_at_us: now_us(),
        severity: severity_name(severity).into(),
        action: action_name(action).into(),
        score: firing.score,
        threshold: firing.threshold,
        first_token: firing.first_token,
        spans: serde_json::to_string(&spans).unwrap_or_else(|_| "[]".into()),
        text_sha256: sha256_hex(text.as_bytes()),
        text: context.keep_text.then(|| text.to_string()),
    }
}

/// A span as the alerts table keeps it (JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SpanJson {
    pub tokens: [u32; 2],
    pub chars: [u32; 2],
    pub peak_token: u32,
    pub peak_value: f32,
    pub text: String,
}

impl From<&pb::Span> for SpanJson {
    fn from(s: &pb::Span) -> Self {
        SpanJson { tokens: [s.token_start, s.token_end], chars: [s.char_start, s.char_end], peak_token: s.peak_token, peak_value: s.peak_value, text: s.text.clone() }
    }
}

impl From<SpanJson> for pb::Span {
    fn from(s: SpanJson) -> Self {
        pb::Span { token_start: s.tokens[0], token_end: s.tokens[1], char_start: s.chars[0], char_end: s.chars[1], peak_token: s.peak_token, peak_value: s.peak_value, text: s.text }
    }
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// A random 128-bit id in hex (alerts and requests, unique across servers and restarts).
pub fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The monitors a request names (all live ones when none): NOT_FOUND for an unknown name.
pub fn chosen_monitors(state: &AppState, names: &[String]) -> Result<Vec<Arc<LiveMonitor>>> {
    let live = state.monitoring.registry.live();
    if names.is_empty() {
        if live.is_empty() {
            return Err(ServiceError::FailedPrecondition("no live monitors on this server: create one with CreateMonitor (loupe monitor create)".into()));
        }
        return Ok(live.values().cloned().collect());
    }
    names
        .iter()
        .map(|n| {
            live.get(n).cloned().ok_or_else(|| {
                let known: Vec<&str> = live.keys().map(String::as_str).collect();
                ServiceError::NotFound(format!("no live monitor {n:?}; live monitors: {}", if known.is_empty() { "none".into() } else { known.join(", ") }))
            })
        })
        .collect()
}

pub async fn score(state: &Arc<AppState>, r: pb::ScoreRequest) -> Result<pb::ScoreResponse> {
    let limits = state.limits;
    let lens = state.engine()?;
    if r.inputs.is_empty() {
        return Err(ServiceError::InvalidArgument("inputs is empty: give at least one text or conversation".into()));
    }
    if r.inputs.len() > limits.max_score_inputs {
        return Err(ServiceError::InvalidArgument(format!("{} inputs; this server scores at most {} per call (max_score_inputs)", r.inputs.len(), limits.max_score_inputs)));
    }
    let explain_k = match r.explain_features as usize {
        0 => limits.default_explain_features,
        k if k > limits.max_explain_features => return Err(ServiceError::InvalidArgument(format!("explain_features {k} is above this server's limit of {}", limits.max_explain_features))),
        k => k,
    };
    let caller = crate::rpc::caller_of(r.caller.as_deref(), "caller")?;
    let monitors = chosen_monitors(state, &r.monitors)?;
    let tokenizer = lens.model().tokenizer()?;
    let texts: Vec<Prepared> =
        r.inputs.into_iter().enumerate().map(|(i, input)| prepare(tokenizer, input, limits.max_text_bytes, limits.max_tokens, &format!("inputs[{i}]"))).collect::<Result<_>>()?;
    crate::access::charge_model_tokens(texts.iter().map(|t| t.ids.len()).sum());
    let spec = read_spec(&lens, &monitors)?;
    let batcher = state.monitoring.batcher()?;
    let passes = futures::future::try_join_all(texts.iter().map(|t| batcher.run(t.ids.clone(), spec.clone()))).await?;
    let request_id = new_id();
    let snapshot = state.snapshot();
    let keep_text = limits.store_alert_text;
    // The detectors' values are a small product per text (done here); explaining a firing
    // encodes its peak with the dictionaries (a job for the long-work threads, when one fired).
    let verdicts: Vec<Vec<Vec<monitor::Scored>>> =
        texts.iter().zip(&passes).map(|(text, rows)| monitors.iter().map(|m| run_monitor(&lens, m, text, rows)).collect::<Result<Vec<_>>>()).collect::<Result<_>>()?;
    let explains = explain_k > 0 && verdicts.iter().flatten().flatten().any(|v| v.fired);
    let finish = {
        let request_id = request_id.clone();
        move || -> Result<(Vec<pb::TextResult>, Vec<AlertRecord>)> {
            let context = AlertContext { request_id: &request_id, caller: &caller, keep_text };
            let mut results = Vec::with_capacity(texts.len());
            let mut alerts = Vec::new();
            for ((text, rows), per_monitor) in texts.iter().zip(&passes).zip(verdicts) {
                let mut monitors_out = Vec::with_capacity(monitors.len());
                for (m, verdicts) in monitors.iter().zip(per_monitor) {
                    let o = outcome(&lens, &snapshot, m, text, rows, verdicts, explain_k, &context)?;
                    alerts.extend(o.alert);
                    monitors_out.push(o.result);
                }
                results.push(pb::TextResult { id: text.id.clone(), tokens: text.ids.len() as u32, monitors: monitors_out });
            }
            Ok((results, alerts))
        }
    };
    let (results, alerts) = if explains { state.long_threads.run(finish).await? } else { finish()? };
    state.monitoring.alerts.record(alerts).await?;
    Ok(pb::ScoreResponse { results, request_id })
}
