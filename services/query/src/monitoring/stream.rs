//! StreamScore: a conversation or a generation scored as it is produced. The stream keeps
//! its KV cache (to the deepest hook its monitors read), so each token is computed once;
//! every chunk is answered with running scores, and a monitor that crosses its threshold
//! is an alert (written before it is sent) naming the first token that crossed.
//!
//! Text chunks are tokenized as one text: the last token of the text so far is held back
//! until more text or the end arrives (more text can merge into it). If re-tokenizing ever
//! changes a token already scored, the stream is re-scored from its start (alerts already
//! sent stand).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use loupe_engine::monitor::{self, Running};
use loupe_engine::{FeatureLens, KvCache, Read, TokenBatch};
use loupe_schema::proto::v1 as pb;
use loupe_store::AlertRecord;
use tokio::sync::mpsc;

use super::registry::LiveMonitor;
use super::score::{alert_of, chosen_monitors, new_id, read_spec, AlertContext, Firing};
use crate::error::{Result, ServiceError};
use crate::state::AppState;

pub type StreamReplies = mpsc::UnboundedReceiver<Result<pb::StreamScoreResponse>>;

enum Mode {
    Unknown,
    Text(String),
    Tokens,
}

/// One monitor's running state in a stream.
struct Watch {
    monitor: Arc<LiveMonitor>,
    running: Vec<Running>,
    first_token: Option<u32>,
}

struct StreamState {
    lens: Arc<FeatureLens>,
    read: Read,
    cache: Option<KvCache>,
    /// Tokens scored (BOS first).
    ids: Vec<u32>,
    watches: Vec<Watch>,
    mode: Mode,
    id: String,
    caller: String,
    /// The caller's quota, charged as chunks arrive (the stream's task outlives the call).
    owner: Option<Arc<crate::access::Caller>>,
    request_id: String,
}

/// Starts a stream: the first message must be `start`; replies come on the returned channel.
pub async fn stream_score(state: Arc<AppState>, mut inbound: impl Stream<Item = Result<pb::StreamScoreRequest>> + Send + Unpin + 'static) -> Result<StreamReplies> {
    let lens = state.engine()?;
    let open = OpenStream::claim(&state.monitoring.open_streams, state.limits.max_streams)?;
    let start = match inbound.next().await {
        Some(Ok(pb::StreamScoreRequest { event: Some(pb::stream_score_request::Event::Start(start)) })) => start,
        Some(Err(e)) => return Err(e),
        _ => return Err(ServiceError::InvalidArgument("the first message of a stream must be start (the monitors to run)".into())),
    };
    let caller = crate::rpc::caller_of(start.caller.as_deref(), "start.caller")?;
    let monitors = chosen_monitors(&state, &start.monitors)?;
    let spec = read_spec(&lens, &monitors)?;
    let read = Read { hooks: loupe_engine::Hooks::new().capture_all(spec.hooks.iter().copied()), ..Read::only(spec.dictionaries, loupe_engine::Rows::All) };
    let watches = monitors.into_iter().map(|m| Watch { running: m.detectors.iter().map(|d| Running::new(d.aggregation)).collect(), monitor: m, first_token: None }).collect();
    let cache = Some(lens.model().new_cache());
    let mut stream = StreamState { lens, read, cache, ids: Vec::new(), watches, mode: Mode::Unknown, id: start.id, caller, owner: crate::access::current(), request_id: new_id() };
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _open = open;
        loop {
            let message = inbound.next().await;
            let outcome = match message {
                None => stream.chunk(&state, Chunk::End).await,
                Some(Err(e)) => Err(e),
                Some(Ok(m)) => match m.event {
                    Some(pb::stream_score_request::Event::Text(t)) => stream.chunk(&state, Chunk::Text(t)).await,
                    Some(pb::stream_score_request::Event::Tokens(t)) => stream.chunk(&state, Chunk::Tokens(t.ids)).await,
                    Some(pb::stream_score_request::Event::End(_)) => stream.chunk(&state, Chunk::End).await,
                    Some(pb::stream_score_request::Event::Start(_)) | None => Err(ServiceError::InvalidArgument("start may only be the first message of a stream".into())),
                },
            };
            match outcome {
                Ok(reply) => {
                    let done = reply.done;
                    if tx.send(Ok(reply)).is_err() || done {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    Ok(rx)
}

enum Chunk {
    Text(String),
    Tokens(Vec<u32>),
    End,
}

impl StreamState {
    async fn chunk(&mut self, state: &Arc<AppState>, chunk: Chunk) -> Result<pb::StreamScoreResponse> {
        let limits = state.limits;
        let tokenizer = self.lens.model().tokenizer()?;
        let bos: Vec<u32> = tokenizer.bos_token_id().into_iter().collect();
        let done = matches!(chunk, Chunk::End);
        // The tokens the stream now holds for sure.
        let target: Vec<u32> = match (chunk, &mut self.mode) {
            (Chunk::Text(t), Mode::Unknown) => {
                self.mode = Mode::Text(t);
                self.text_tokens(&bos, false)?
            }
            (Chunk::Text(t), Mode::Text(text)) => {
                text.push_str(&t);
                self.text_tokens(&bos, false)?
            }
            (Chunk::Tokens(ids), Mode::Unknown | Mode::Tokens) => {
                self.mode = Mode::Tokens;
                let vocab = tokenizer.vocab_size();
                if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                    return Err(ServiceError::InvalidArgument(format!("tokens.ids: {bad} is outside the vocabulary (size {vocab})")));
                }
                let mut all = if self.ids.is_empty() { bos.clone() } else { self.ids.clone() };
                all.extend(ids);
                all
            }
            (Chunk::End, Mode::Text(_)) => self.text_tokens(&bos, true)?,
            (Chunk::End, _) => self.ids.clone(),
            _ => return Err(ServiceError::InvalidArgument("a stream takes text chunks or token chunks, not both".into())),
        };
        if let Mode::Text(text) = &self.mode {
            if text.len() > limits.max_stream_bytes {
                return Err(ServiceError::InvalidArgument(format!("the stream's text is {} bytes; this server scores at most {} per stream (max_stream_bytes)", text.len(), limits.max_stream_bytes)));
            }
        }
        if target.len() > limits.max_stream_tokens {
            return Err(ServiceError::InvalidArgument(format!("the stream is {} tokens; this server scores at most {} per stream (max_stream_tokens)", target.len(), limits.max_stream_tokens)));
        }
        if !target.starts_with(&self.ids) {
            // A scored token changed: score again from the start.
            self.ids.clear();
            self.cache = Some(self.lens.model().new_cache());
            for w in &mut self.watches {
                w.running = w.monitor.detectors.iter().map(|d| Running::new(d.aggregation)).collect();
            }
        }
        let new: Vec<u32> = target[self.ids.len()..].to_vec();
        let mut alerts = Vec::new();
        if !new.is_empty() {
            if let Some(owner) = &self.owner {
                owner.charge_model_tokens(new.len());
            }
            alerts = self.score_tokens(state, new).await?;
        }
        let protos: Vec<pb::Alert> = alerts.iter().map(super::alerts::to_proto).collect();
        state.monitoring.alerts.record(alerts).await?;
        let scores = self
            .watches
            .iter()
            .map(|w| {
                let (i, score) = deciding(w);
                pb::RunningScore {
                    monitor: w.monitor.monitor.name.clone(),
                    version: w.monitor.version,
                    score,
                    threshold: w.monitor.detectors[i].threshold,
                    fired: w.first_token.is_some(),
                    first_token: w.first_token,
                }
            })
            .collect();
        Ok(pb::StreamScoreResponse { tokens: self.ids.len() as u32, scores, alerts: protos, done })
    }

    /// BOS and the text's tokens, the last held back unless the text is complete.
    fn text_tokens(&self, bos: &[u32], complete: bool) -> Result<Vec<u32>> {
        let Mode::Text(text) = &self.mode else {
            return Ok(self.ids.clone());
        };
        let mut ids = bos.to_vec();
        ids.extend(self.lens.model().tokenizer()?.encode(text)?);
        if !complete && ids.len() > bos.len() {
            ids.pop();
        }
        Ok(ids)
    }

    /// Runs `new` on the cached stream and pushes each detector's values; returns the
    /// alerts of monitors that crossed with these tokens.
    async fn score_tokens(&mut self, state: &Arc<AppState>, new: Vec<u32>) -> Result<Vec<AlertRecord>> {
        let (lens, read) = (self.lens.clone(), self.read.clone());
        let mut cache = self.cache.take().ok_or_else(|| ServiceError::Internal("the stream lost its cache".into()))?;
        let signals: Vec<Vec<monitor::Signal>> = self.watches.iter().map(|w| w.monitor.detectors.iter().map(|d| d.signal.clone()).collect()).collect();
        let ids = new.clone();
        let outcome = state
            .workers
            .run(None, move |cancel| {
                let run = Read { hooks: read.hooks.clone().cancel_when(cancel), ..read.clone() };
                let values = lens.run_cached(&TokenBatch::single(&ids)?, &run, Some(&mut cache)).map_err(ServiceError::from).and_then(|out| {
                    let codes: Vec<(&str, &loupe_engine::SparseActs)> = read.dictionaries.iter().zip(&out.codes).map(|(&at, c)| (lens.dictionaries()[at].id.as_str(), &c.features)).collect();
                    signals
                        .iter()
                        .map(|detectors| detectors.iter().map(|signal| Ok(monitor::token_values(signal, &codes, &out.captured, 0..ids.len())?)).collect::<Result<Vec<Vec<f32>>>>())
                        .collect::<Result<Vec<_>>>()
                });
                Ok((cache, values))
            })
            .await;
        // An error ends the stream: its cache went with the call, or holds a partial pass.
        let (cache, values) = outcome?;
        let values = values?;
        self.cache = Some(cache);
        let tokenizer = self.lens.model().tokenizer()?;
        let text = match &self.mode {
            Mode::Text(t) => Some(t.as_str()),
            _ => None,
        };
        let mut alerts = Vec::new();
        for (k, &token) in new.iter().enumerate() {
            let position = self.ids.len() + k;
            let in_scope = !tokenizer.is_special(token);
            for (w, per_detector) in self.watches.iter_mut().zip(&values) {
                for (running, v) in w.running.iter_mut().zip(per_detector) {
                    running.push(v[k], in_scope);
                }
                if w.first_token.is_some() {
                    continue;
                }
                let crossed: Vec<usize> = (0..w.running.len()).filter(|&i| w.running[i].score() > w.monitor.detectors[i].threshold).collect();
                if crossed.is_empty() {
                    continue;
                }
                w.first_token = Some(position as u32);
                let firing = Firing { crossed: &crossed, score: w.running[crossed[0]].score(), threshold: w.monitor.detectors[crossed[0]].threshold, first_token: position as u32, spans: &[] };
                let context = AlertContext { request_id: &self.request_id, caller: &self.caller, keep_text: state.limits.store_alert_text };
                alerts.push(alert_of(&w.monitor, &firing, text.unwrap_or(""), &self.id, &context));
            }
        }
        self.ids.extend(new);
        Ok(alerts)
    }
}

/// The detector furthest above (or least below) its threshold, and its running score.
fn deciding(w: &Watch) -> (usize, f32) {
    let margin = |i: usize| {
        let s = w.running[i].score();
        if s.is_nan() {
            f32::NEG_INFINITY
        } else {
            s - w.monitor.detectors[i].threshold
        }
    };
    let i = (0..w.running.len()).max_by(|&a, &b| margin(a).total_cmp(&margin(b))).unwrap_or(0);
    (i, w.running[i].score())
}

/// One of the server's open streams, released when the stream ends however it ends.
struct OpenStream(Arc<AtomicUsize>);

impl OpenStream {
    fn claim(open: &Arc<AtomicUsize>, max: usize) -> Result<Self> {
        let before = open.fetch_add(1, Ordering::SeqCst);
        let claimed = OpenStream(open.clone());
        if before >= max {
            return Err(ServiceError::ResourceExhausted(format!("{before} streams are open; this server holds at most {max} (max_streams): retry later")));
        }
        Ok(claimed)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
