//! Label writes: group commits to the store's append-only `labels` table, and the task that
//! keeps the served snapshot's labels current (writes by this server, by other servers on
//! the same store, or by any other writer).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use loupe_store::{append_labels, LabelRecord};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Result, ServiceError};
use crate::state::AppState;

/// Most label writes folded into one Lance commit.
const MAX_GROUP: usize = 1024;

type Reply = oneshot::Sender<std::result::Result<(), String>>;

/// Sends label writes to one task that appends everything waiting as one commit: 32
/// concurrent calls cost one or two Lance commits instead of 32 racing ones.
#[derive(Clone)]
pub struct LabelWriter {
    queue: mpsc::Sender<(LabelRecord, Reply)>,
}

impl LabelWriter {
    pub fn start(store_root: PathBuf) -> Self {
        let (queue, mut pending) = mpsc::channel::<(LabelRecord, Reply)>(MAX_GROUP);
        tokio::spawn(async move {
            while let Some(first) = pending.recv().await {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match pending.try_recv() {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
                let (rows, replies): (Vec<LabelRecord>, Vec<Reply>) = group.into_iter().unzip();
                let outcome = append_labels(&store_root, &rows).await.map_err(|e| e.to_string());
                if let Err(e) = &outcome {
                    tracing::warn!(error = %e, rows = rows.len(), "label write failed");
                }
                for reply in replies {
                    let _ = reply.send(outcome.clone());
                }
            }
        });
        LabelWriter { queue }
    }

    /// Appends one label write; returns once it is committed to the store.
    pub async fn write(&self, record: LabelRecord) -> Result<()> {
        let (reply, done) = oneshot::channel();
        self.queue.send((record, reply)).await.map_err(|_| ServiceError::Unavailable("the label writer has stopped (the server is shutting down)".into()))?;
        let outcome = done.await.map_err(|_| ServiceError::Unavailable("the label writer has stopped (the server is shutting down)".into()))?;
        outcome.map_err(|e| ServiceError::Internal(format!("writing the label: {e}")))
    }
}

/// Follows the labels table every `every` until the returned handle is aborted, so that
/// labels written elsewhere show up in search and dashboards without a restart.
pub fn follow_labels(state: Arc<AppState>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(e) = state.snapshot().reader.refresh_labels().await {
                tracing::warn!(error = %e, "reading new labels failed; retrying");
            }
        }
    })
}
