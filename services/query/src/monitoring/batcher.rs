//! Dynamic batching of scoring work: concurrent Score calls put their texts in one queue; a
//! task takes everything waiting (plus whatever arrives within a short bounded wait), sorts
//! it by length, packs it into right-padded batches of at most `max_batch_tokens` padded
//! tokens, and runs each batch as one pass of the feature lens on the model worker pool,
//! stopped at the deepest hook any of its texts needs. Each caller gets the pass's output
//! and the range of rows that are its text (causal attention: padding changes nothing).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use loupe_engine::dictionary::SparseActs;
use loupe_engine::{FeatureLens, HookPoint, Hooks, Read, Rows, TokenBatch};
use tokio::sync::{mpsc, oneshot};

use crate::config::Limits;
use crate::error::{Result, ServiceError};
use crate::workers::ModelWorkers;

/// What a text needs read: hooks to capture and dictionaries (lens positions) to encode.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadSpec {
    pub hooks: Vec<HookPoint>,
    pub dictionaries: Vec<usize>,
}

impl ReadSpec {
    fn merge(&mut self, other: &ReadSpec) {
        for h in &other.hooks {
            if !self.hooks.contains(h) {
                self.hooks.push(*h);
            }
        }
        for d in &other.dictionaries {
            if !self.dictionaries.contains(d) {
                self.dictionaries.push(*d);
            }
        }
    }
}

/// One pass's output over all of its rows (texts one after another, padding dropped).
pub struct PassOutput {
    /// Codes by lens position of the dictionary.
    pub codes: Vec<(usize, SparseActs)>,
    pub captured: BTreeMap<HookPoint, Tensor>,
}

/// A text's share of a pass.
pub struct TextRows {
    pub pass: Arc<PassOutput>,
    pub rows: Range<usize>,
}

struct Job {
    ids: Vec<u32>,
    spec: ReadSpec,
    reply: oneshot::Sender<Result<TextRows>>,
}

/// A pass run, for the benchmark's forward-only comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub texts: usize,
    pub width: usize,
    pub tokens: usize,
    /// Seconds the pass took on its worker.
    pub seconds: f64,
}

const SHAPES_KEPT: usize = 4096;

pub struct Batcher {
    queue: mpsc::Sender<Job>,
    shapes: Arc<Mutex<Vec<Shape>>>,
}

impl Batcher {
    pub fn start(lens: Arc<FeatureLens>, workers: Arc<ModelWorkers>, limits: &Limits) -> Self {
        let (queue, jobs) = mpsc::channel(limits.max_queued_texts.max(1));
        let shapes = Arc::new(Mutex::new(Vec::new()));
        let wait = Duration::from_micros(limits.batch_wait_us);
        tokio::spawn(run(lens, workers, jobs, wait, limits.max_batch_tokens.max(1), shapes.clone()));
        Batcher { queue, shapes }
    }

    /// Runs `ids` in the next shared pass; RESOURCE_EXHAUSTED when the queue is full.
    pub async fn run(&self, ids: Vec<u32>, spec: ReadSpec) -> Result<TextRows> {
        let (reply, done) = oneshot::channel();
        self.queue.try_send(Job { ids, spec, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ServiceError::ResourceExhausted("the scoring queue is full (max_queued_texts); retry later".into()),
            mpsc::error::TrySendError::Closed(_) => ServiceError::Unavailable("the scoring task has stopped".into()),
        })?;
        done.await.map_err(|_| ServiceError::Internal("the scoring task dropped the text".into()))?
    }

    /// The shapes of the passes run so far (the most recent ones), and forgets them.
    pub fn take_shapes(&self) -> Vec<Shape> {
        self.shapes.lock().map(|mut s| std::mem::take(&mut *s)).unwrap_or_default()
    }
}

async fn run(lens: Arc<FeatureLens>, workers: Arc<ModelWorkers>, mut queue: mpsc::Receiver<Job>, wait: Duration, max_tokens: usize, shapes: Arc<Mutex<Vec<Shape>>>) {
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        let until = Instant::now() + wait;
        let full = |jobs: &[Job]| jobs.iter().map(|j| j.ids.len()).sum::<usize>() >= max_tokens;
        while !full(&jobs) {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => match tokio::time::timeout_at(until.into(), queue.recv()).await {
                    Ok(Some(job)) => jobs.push(job),
                    _ => break,
                },
            }
        }
        jobs.retain(|j| !j.reply.is_closed());
        jobs.sort_by_key(|j| j.ids.len());
        for group in pack(jobs, max_tokens) {
            run_group(&lens, &workers, group, &shapes).await;
        }
    }
}

/// Real tokens a pass must hold of its padded size: below this, the padding would cost
/// more than a second, narrower pass.
const MIN_FILL: f64 = 0.75;

/// Consecutive (length-sorted) jobs whose padded size fits `max_tokens` and is at least
/// `MIN_FILL` real tokens (a longer text runs alone).
fn pack(jobs: Vec<Job>, max_tokens: usize) -> Vec<Vec<Job>> {
    let mut groups: Vec<Vec<Job>> = Vec::new();
    let mut current: Vec<Job> = Vec::new();
    let mut real = 0;
    for job in jobs {
        let width = job.ids.len();
        let padded = (current.len() + 1) * width;
        if !current.is_empty() && (padded > max_tokens || ((real + width) as f64) < MIN_FILL * padded as f64) {
            groups.push(std::mem::take(&mut current));
            real = 0;
        }
        real += width;
        current.push(job);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

async fn run_group(lens: &Arc<FeatureLens>, workers: &ModelWorkers, group: Vec<Job>, shapes: &Mutex<Vec<Shape>>) {
    let mut spec = ReadSpec::default();
    group.iter().for_each(|j| spec.merge(&j.spec));
    let sequences: Vec<Vec<u32>> = group.iter().map(|j| j.ids.clone()).collect();
    let width = sequences.iter().map(Vec::len).max().unwrap_or(0);
    let tokens: usize = sequences.iter().map(Vec::len).sum();
    let texts = sequences.len();
    let lens = lens.clone();
    let outcome = workers
        .run(None, move |cancel| {
            let start = Instant::now();
            let batch = TokenBatch::right_padded(&sequences, lens.model().pad_token_id())?;
            let read = Read { hooks: Hooks::new().capture_all(spec.hooks.iter().copied()).cancel_when(cancel), ..Read::only(spec.dictionaries.clone(), Rows::Real) };
            let out = lens.run(&batch, &read)?;
            let codes = spec.dictionaries.iter().copied().zip(out.codes.into_iter().map(|e| e.features)).collect();
            Ok((PassOutput { codes, captured: out.captured }, start.elapsed().as_secs_f64()))
        })
        .await;
    match outcome {
        Ok((pass, seconds)) => {
            if let Ok(mut s) = shapes.lock() {
                if s.len() < SHAPES_KEPT {
                    s.push(Shape { texts, width, tokens, seconds });
                }
            }
            let pass = Arc::new(pass);
            let mut at = 0;
            for job in group {
                let rows = at..at + job.ids.len();
                at = rows.end;
                let _ = job.reply.send(Ok(TextRows { pass: pass.clone(), rows }));
            }
        }
        Err(e) => {
            // Every text of the pass gets the pass's error, with its status code kept (a busy
            // model pool is RESOURCE_EXHAUSTED for each of them).
            let message = e.to_string();
            for job in group {
                let error = match &e {
                    ServiceError::ResourceExhausted(_) => ServiceError::ResourceExhausted(message.clone()),
                    ServiceError::Unavailable(_) => ServiceError::Unavailable(message.clone()),
                    _ => ServiceError::Internal(format!("scoring pass failed: {message}")),
                };
                let _ = job.reply.send(Err(error));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(len: usize) -> Job {
        let (reply, _) = oneshot::channel();
        Job { ids: vec![1; len], spec: ReadSpec::default(), reply }
    }

    #[test]
    fn packing_keeps_padded_size_within_the_budget() {
        let jobs: Vec<Job> = [10, 10, 20, 30, 100, 300].into_iter().map(job).collect();
        let groups: Vec<Vec<usize>> = pack(jobs, 100).into_iter().map(|g| g.iter().map(|j| j.ids.len()).collect()).collect();
        assert_eq!(groups, vec![vec![10, 10], vec![20, 30], vec![100], vec![300]]);
        for g in &groups {
            let (width, real) = (*g.iter().max().unwrap(), g.iter().sum::<usize>());
            assert!(g.len() == 1 || (g.len() * width <= 100 && real as f64 >= MIN_FILL * (g.len() * width) as f64), "{g:?}");
        }
    }
}
