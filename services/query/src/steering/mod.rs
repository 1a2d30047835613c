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
use loupe_engine::HookPoint;
use loupe_schema::proto::v1 as pb;
use tokio::sync::mpsc;

use crate::error::{Result, ServiceError};
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
    let hooks = plan.hooks();
    let mut generation = Generation::new(lens.model(), &plan.prompt, plan.rows.len(), plan.params.clone())?;
    let mut rows: Vec<RowProgress> = (0..plan.rows.len()).map(|_| RowProgress::default()).collect();
    let token_event = |plan: &SteerPlan, row: usize, index: usize, emitted: Emitted, features: Vec<pb::FeatureActivation>| {
        let token = pb::GeneratedToken {
            token_id: emitted.token,
            text: tokenizer.decode(&[emitted.token]).unwrap_or_default(),
            logprob: plan.logprobs.then_some(emitted.logprob),
            features,
        };
        pb::SteerEvent { event: Some(Event::Token(pb::SteerToken { output: plan.rows[row].output() as i32, index: index as u32, token: Some(token) })) }
    };
    while !generation.is_finished() {
        let (lens_, plan_, hooks_) = (lens.clone(), plan.clone(), hooks.clone());
        let (returned, step, features) = state
            .workers
            .run(remaining()?, move |cancel| {
                let mut generation = generation;
                let step = generation.step(lens_.model(), &hooks_.cancel_when(cancel))?;
                let features = watched_activations(&plan_.watched, &step.captured, plan_.rows.len())?;
                Ok((generation, step, features))
            })
            .await?;
        generation = returned;
        let Step { tokens, .. } = step;
        for (row, emitted) in tokens.into_iter().enumerate() {
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
    if rows.iter().any(|r| r.pending.is_some()) {
        // The last tokens' own activations: one more pass over them, to the watched hooks.
        let (lens_, plan_, hooks_) = (lens.clone(), plan.clone(), hooks.clone());
        let features = state
            .workers
            .run(remaining()?, move |cancel| {
                let mut generation = generation;
                let captured = generation.read_last(lens_.model(), &hooks_.cancel_when(cancel))?;
                watched_activations(&plan_.watched, &captured, plan_.rows.len())
            })
            .await?;
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
        let done = pb::SteerDone { output: plan.rows[row].output() as i32, text, stop_reason: progress.stop_reason.unwrap_or("length").into() };
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
