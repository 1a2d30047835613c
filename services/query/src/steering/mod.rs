//! The Steering service: generation with interventions, the default and steered outputs side
//! by side in one batch (same seed), unary or as a stream of token events; and the named
//! vectors that interventions can target.
//!
//! A generation runs one token at a time on the model worker pool: each token is one pool
//! call, so short model calls waiting for a worker get it between two tokens, and a
//! cancelled call (client gone, deadline passed) frees its worker within one token.

mod plan;
mod vectors;

use std::sync::Arc;
use std::time::{Duration, Instant};

use loupe_engine::generate::{Emitted, Generation, Step};
use loupe_engine::monitor::{self, Action, Running};
use loupe_engine::{FeatureLens, HookPoint};
use loupe_schema::proto::v1 as pb;
use tokio::sync::mpsc;

use crate::error::{Result, ServiceError};
use crate::monitoring::score::{alert_of, AlertContext, Firing};
use crate::state::AppState;
use plan::{SteerPlan, Watched};

pub struct SteeringService {
    pub state: Arc<AppState>,
}

/// Events of a SteerStream call, or the error that ended it.
pub type SteerEvents = mpsc::UnboundedReceiver<Result<pb::SteerEvent>>;

impl SteeringService {
    /// Both completions in full.
    pub async fn steer(&self, r: pb::SteerRequest, deadline: Option<Duration>) -> Result<pb::SteerResponse> {
        let plan = plan::plan(&self.state, r, deadline).await?;
        let mut response = pb::SteerResponse::default();
        run(&self.state, plan, deadline, |event| {
            collect(&mut response, event);
            true
        })
        .await?;
        Ok(response)
    }

    /// Token events as they are made. The request is checked before the stream starts (a
    /// bad request is an error status, not an event); the generation stops within one token
    /// once the receiver is dropped.
    pub async fn steer_stream(&self, r: pb::SteerRequest, deadline: Option<Duration>) -> Result<SteerEvents> {
        let plan = plan::plan(&self.state, r, deadline).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let state = self.state.clone();
        tokio::spawn(async move {
            let events = tx.clone();
            if let Err(e) = run(&state, plan, deadline, move |event| events.send(Ok(event)).is_ok()).await {
                let _ = tx.send(Err(e));
            }
        });
        Ok(rx)
    }

    pub async fn create_vector(&self, r: pb::CreateVectorRequest, deadline: Option<Duration>) -> Result<pb::CreateVectorResponse> {
        vectors::create(&self.state, r, deadline).await
    }

    pub async fn list_vectors(&self, _: pb::ListVectorsRequest) -> Result<pb::ListVectorsResponse> {
        vectors::list(&self.state).await
    }

    pub async fn delete_vector(&self, r: pb::DeleteVectorRequest) -> Result<pb::DeleteVectorResponse> {
        vectors::delete(&self.state, r).await
    }
}

/// Folds one event into the unary response.
fn collect(response: &mut pb::SteerResponse, event: pb::SteerEvent) {
    fn slot(response: &mut pb::SteerResponse, output: i32) -> &mut pb::Completion {
        let slot = if output == pb::Output::Default as i32 { &mut response.default } else { &mut response.steered };
        slot.get_or_insert_with(Default::default)
    }
    match event.event {
        Some(pb::steer_event::Event::Started(s)) => {
            response.prompt_text = s.prompt_text;
            response.prompt_tokens = s.prompt_tokens;
            response.interventions = s.interventions;
        }
        Some(pb::steer_event::Event::Token(t)) => slot(response, t.output).tokens.extend(t.token),
        Some(pb::steer_event::Event::Done(d)) => {
            let completion = slot(response, d.output);
            completion.text = d.text;
            completion.stop_reason = d.stop_reason;
            completion.alerts = d.alerts;
        }
        None => {}
    }
}

/// One row's progress.
#[derive(Default)]
struct RowProgress {
    /// Tokens of the completion (stop tokens left out).
    ids: Vec<u32>,
    /// A token emitted whose activations come with the next step.
    pending: Option<Emitted>,
    stop_reason: Option<&'static str>,
    /// Byte length of the text when a stop string ended it.
    cut: Option<usize>,
}

/// Runs the plan's generation, calling `emit` with each event; stops early (Ok) when `emit`
/// returns false (nobody is listening any more).
async fn run(state: &Arc<AppState>, plan: SteerPlan, deadline: Option<Duration>, mut emit: impl FnMut(pb::SteerEvent) -> bool) -> Result<()> {
    use pb::steer_event::Event;
    let lens = state.engine()?;
    let tokenizer = lens.model().tokenizer()?;
    let end = deadline.map(|d| Instant::now() + d);
    let remaining = || -> Result<Option<Duration>> {
        match end {
            Some(end) => match end.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Ok(Some(left)),
                _ => Err(ServiceError::DeadlineExceeded("the deadline passed before the generation finished".into())),
            },
            None => Ok(None),
        }
    };
    let started = pb::SteerStarted { prompt_text: plan.prompt_text.clone(), prompt_tokens: plan.prompt.len() as u32, interventions: plan.applied.clone() };
    if !emit(pb::SteerEvent { event: Some(Event::Started(started)) }) {
        return Ok(());
    }
    let plan = Arc::new(plan);
    let hooks = plan.hooks(&lens);
    let mut guards = Guards::new(&plan);
    let mut generation = Generation::new(lens.model(), &plan.prompt, plan.rows.len(), plan.params.clone())?;
    let mut rows: Vec<RowProgress> = (0..plan.rows.len()).map(|_| RowProgress::default()).collect();
    let token_event = |plan: &SteerPlan, row: usize, index: usize, emitted: Emitted, features: Vec<pb::FeatureActivation>| {
        let token = pb::GeneratedToken { token_id: emitted.token, text: tokenizer.decode(&[emitted.token]).unwrap_or_default(), logprob: plan.logprobs.then_some(emitted.logprob), features };
        pb::SteerEvent { event: Some(Event::Token(pb::SteerToken { output: plan.rows[row].output() as i32, index: index as u32, token: Some(token) })) }
    };
    while !generation.is_finished() {
        let (lens_, plan_, hooks_) = (lens.clone(), plan.clone(), hooks.clone());
        let (returned, step, features, guard_values) = state
            .workers
            .run(remaining()?, move |cancel| {
                let mut generation = generation;
                let step = generation.step(lens_.model(), &hooks_.cancel_when(cancel))?;
                let features = watched_activations(&plan_.watched, &step.captured, plan_.rows.len())?;
                let guard_values = guard_values(&lens_, &plan_, &step.captured)?;
                Ok((generation, step, features, guard_values))
            })
            .await?;
        generation = returned;
        let Step { tokens, .. } = step;
        for (row, emitted) in tokens.into_iter().enumerate() {
            // The guardrails read the token fed at this step (this row's last emitted one).
            if guards.check(state, &plan, row, &guard_values, &rows[row].ids, tokenizer).await? {
                rows[row].stop_reason = Some("blocked");
                generation.stop_row(row);
                if let Some(pending) = rows[row].pending.take() {
                    let index = rows[row].ids.len() - 1;
                    if !emit(token_event(&plan, row, index, pending, features[row].clone())) {
                        return Ok(());
                    }
                }
                continue;
            }
            let progress = &mut rows[row];
            if let Some(pending) = progress.pending.take() {
                let index = progress.ids.len() - 1;
                if !emit(token_event(&plan, row, index, pending, features[row].clone())) {
                    return Ok(());
                }
            }
            let Some(emitted) = emitted else { continue };
            if plan.params.stop_tokens.contains(&emitted.token) {
                rows[row].stop_reason = Some("eos");
                continue;
            }
            let progress = &mut rows[row];
            progress.ids.push(emitted.token);
            guards.expect(row);
            if !plan.stop.is_empty() {
                let text = tokenizer.decode(&progress.ids)?;
                if let Some(cut) = plan.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                    progress.cut = Some(cut);
                    progress.stop_reason = Some("stop");
                    generation.stop_row(row);
                }
            }
            if plan.watched.is_empty() {
                let index = progress.ids.len() - 1;
                if !emit(token_event(&plan, row, index, emitted, Vec::new())) {
                    return Ok(());
                }
            } else {
                progress.pending = Some(emitted);
            }
        }
    }
    if rows.iter().any(|r| r.pending.is_some()) || guards.waiting() {
        // The last tokens' own activations: one more pass over them, to the watched hooks.
        let (lens_, plan_, hooks_) = (lens.clone(), plan.clone(), hooks.clone());
        let (features, guard_values) = state
            .workers
            .run(remaining()?, move |cancel| {
                let mut generation = generation;
                let captured = generation.read_last(lens_.model(), &hooks_.cancel_when(cancel))?;
                Ok((watched_activations(&plan_.watched, &captured, plan_.rows.len())?, guard_values(&lens_, &plan_, &captured)?))
            })
            .await?;
        for row in 0..rows.len() {
            if guards.check(state, &plan, row, &guard_values, &rows[row].ids, tokenizer).await? {
                rows[row].stop_reason = Some("blocked");
            }
        }
        for (row, progress) in rows.iter_mut().enumerate() {
            if let Some(pending) = progress.pending.take() {
                if !emit(token_event(&plan, row, progress.ids.len() - 1, pending, features[row].clone())) {
                    return Ok(());
                }
            }
        }
    }
    for (row, progress) in rows.iter().enumerate() {
        let mut text = tokenizer.decode(&progress.ids)?;
        if let Some(cut) = progress.cut {
            text.truncate(cut);
        }
        let done = pb::SteerDone { output: plan.rows[row].output() as i32, text, stop_reason: progress.stop_reason.unwrap_or("length").into(), alerts: guards.alerts[row].clone() };
        if !emit(pb::SteerEvent { event: Some(Event::Done(done)) }) {
            return Ok(());
        }
    }
    Ok(())
}

/// Each row's activations of the watched features, from the captured hooks `[rows, d]`
/// (each dictionary encodes once, however many of its features are watched).
fn watched_activations(watched: &[Watched], captured: &std::collections::BTreeMap<HookPoint, candle_core::Tensor>, rows: usize) -> Result<Vec<Vec<pb::FeatureActivation>>> {
    let mut out = vec![Vec::with_capacity(watched.len()); rows];
    let mut encoded: Vec<(&str, loupe_engine::Encoding)> = Vec::new();
    for w in watched {
        if !encoded.iter().any(|(id, _)| *id == w.dictionary_id) {
            let hook = w.dictionary.info().hook_in;
            let x = captured.get(&hook).ok_or_else(|| ServiceError::Internal(format!("the step did not capture {hook}")))?;
            encoded.push((w.dictionary_id.as_str(), w.dictionary.encode(x)?));
        }
        let encoding = &encoded.iter().find(|(id, _)| *id == w.dictionary_id).expect("encoded just above").1;
        for (row, features) in out.iter_mut().enumerate() {
            let (indices, values) = encoding.features.token(row);
            let activation = indices.iter().position(|&i| i == w.feature).map_or(0.0, |i| values[i]);
            features.push(pb::FeatureActivation { feature: crate::convert::feature_ref(&w.dictionary_id, w.feature), activation, label: w.label.clone() });
        }
    }
    Ok(out)
}

/// Each row's value of every guard detector at the position captured, `[row][monitor][detector]`
/// (empty without guards): each dictionary they read encodes once.
fn guard_values(lens: &FeatureLens, plan: &SteerPlan, captured: &std::collections::BTreeMap<HookPoint, candle_core::Tensor>) -> Result<Vec<Vec<Vec<f32>>>> {
    if plan.guards.is_empty() {
        return Ok(Vec::new());
    }
    let mut encoded = Vec::with_capacity(plan.guard_reads.dictionaries.len());
    for &at in &plan.guard_reads.dictionaries {
        let entry = &lens.dictionaries()[at];
        let hook = entry.dictionary.info().hook_in;
        let x = captured.get(&hook).ok_or_else(|| ServiceError::Internal(format!("the step did not capture {hook}")))?;
        encoded.push((entry.id.as_str(), entry.dictionary.encode(x)?));
    }
    let codes: Vec<(&str, &loupe_engine::SparseActs)> = encoded.iter().map(|(id, e)| (*id, &e.features)).collect();
    (0..plan.rows.len())
        .map(|row| {
            plan.guards.iter().map(|m| m.detectors.iter().map(|d| Ok(monitor::token_values(&d.signal, &codes, captured, row..row + 1)?[0])).collect::<Result<Vec<f32>>>()).collect::<Result<Vec<_>>>()
        })
        .collect()
}

/// The guardrail monitors' running scores per completion, and their alerts.
struct Guards {
    /// `[row][monitor][detector]`.
    running: Vec<Vec<Vec<Running>>>,
    fired: Vec<Vec<bool>>,
    /// Whether the row's last emitted token still waits for its values.
    expecting: Vec<bool>,
    alerts: Vec<Vec<pb::Alert>>,
    request_id: String,
}

impl Guards {
    fn new(plan: &SteerPlan) -> Self {
        let rows = plan.rows.len();
        let fresh = || plan.guards.iter().map(|m| m.detectors.iter().map(|d| Running::new(d.aggregation)).collect()).collect();
        Guards {
            running: (0..rows).map(|_| fresh()).collect(),
            fired: vec![vec![false; plan.guards.len()]; rows],
            expecting: vec![false; rows],
            alerts: vec![Vec::new(); rows],
            request_id: crate::monitoring::score::new_id(),
        }
    }

    fn expect(&mut self, row: usize) {
        self.expecting[row] = !self.running[row].is_empty();
    }

    fn waiting(&self) -> bool {
        self.expecting.iter().any(|&e| e)
    }

    /// Pushes the values of the row's last emitted token (when it waits for them), records an
    /// alert for each monitor that crossed, and says whether one of them blocks.
    async fn check(&mut self, state: &AppState, plan: &SteerPlan, row: usize, values: &[Vec<Vec<f32>>], ids: &[u32], tokenizer: &loupe_engine::Tokenizer) -> Result<bool> {
        if !std::mem::take(&mut self.expecting[row]) || values.is_empty() {
            return Ok(false);
        }
        let Some(&token) = ids.last() else {
            return Ok(false);
        };
        let in_scope = !tokenizer.is_special(token);
        let mut blocked = false;
        let mut records = Vec::new();
        for (i, m) in plan.guards.iter().enumerate() {
            for (running, v) in self.running[row][i].iter_mut().zip(&values[row][i]) {
                running.push(*v, in_scope);
            }
            if self.fired[row][i] {
                continue;
            }
            let crossed: Vec<usize> = (0..m.detectors.len()).filter(|&d| self.running[row][i][d].score() > m.detectors[d].threshold).collect();
            let Some(&first) = crossed.first() else {
                continue;
            };
            self.fired[row][i] = true;
            blocked |= crate::monitoring::score::severity_and_action(m, &crossed).1 == Action::Block;
            let text = tokenizer.decode(ids)?;
            let firing = Firing { crossed: &crossed, score: self.running[row][i][first].score(), threshold: m.detectors[first].threshold, first_token: (ids.len() - 1) as u32, spans: &[] };
            let context = AlertContext { request_id: &self.request_id, caller: &plan.caller, keep_text: state.limits.store_alert_text };
            let output = if plan.rows[row] == plan::RowKind::Steered { "steered" } else { "default" };
            records.push(alert_of(m, &firing, &text, output, &context));
        }
        self.alerts[row].extend(records.iter().map(crate::monitoring::alerts::to_proto));
        state.monitoring.alerts.record(records).await?;
        Ok(blocked)
    }
}
