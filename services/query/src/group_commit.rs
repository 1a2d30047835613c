//! Group commits to an append-only table: writes go to one task that appends everything
//! waiting as one Lance commit, so 32 concurrent calls cost one or two commits instead of
//! 32 racing ones. A write returns once its commit is durable. Labels and alerts use it.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use crate::error::{Result, ServiceError};

/// Most rows folded into one commit.
const MAX_GROUP: usize = 1024;

type Reply = oneshot::Sender<std::result::Result<(), String>>;

pub struct GroupCommit<R> {
    what: &'static str,
    queue: mpsc::Sender<(Vec<R>, Reply)>,
}

impl<R> Clone for GroupCommit<R> {
    fn clone(&self) -> Self {
        GroupCommit { what: self.what, queue: self.queue.clone() }
    }
}

impl<R: Send + 'static> GroupCommit<R> {
    /// Starts the task; `append` commits a group of rows (`what` names them in errors).
    pub fn start<F, Fut>(what: &'static str, append: F) -> Self
    where
        F: Fn(Vec<R>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<(), String>> + Send,
    {
        let (queue, mut pending) = mpsc::channel::<(Vec<R>, Reply)>(MAX_GROUP);
        tokio::spawn(async move {
            while let Some(first) = pending.recv().await {
                let mut group = vec![first];
                let mut rows_waiting = group[0].0.len();
                while rows_waiting < MAX_GROUP {
                    match pending.try_recv() {
                        Ok(next) => {
                            rows_waiting += next.0.len();
                            group.push(next);
                        }
                        Err(_) => break,
                    }
                }
                let mut rows = Vec::with_capacity(rows_waiting);
                let mut replies = Vec::with_capacity(group.len());
                for (r, reply) in group {
                    rows.extend(r);
                    replies.push(reply);
                }
                let count = rows.len();
                let outcome = append(rows).await;
                if let Err(e) = &outcome {
                    tracing::warn!(error = %e, rows = count, what, "append failed");
                }
                for reply in replies {
                    let _ = reply.send(outcome.clone());
                }
            }
        });
        GroupCommit { what, queue }
    }

    /// Appends `rows`; returns once they are committed to the store.
    pub async fn write(&self, rows: Vec<R>) -> Result<()> {
        let stopped = || ServiceError::Unavailable(format!("the {} writer has stopped (the server is shutting down)", self.what));
        let (reply, done) = oneshot::channel();
        self.queue.send((rows, reply)).await.map_err(|_| stopped())?;
        let outcome = done.await.map_err(|_| stopped())?;
        outcome.map_err(|e| ServiceError::Internal(format!("writing the {}: {e}", self.what)))
    }
}
