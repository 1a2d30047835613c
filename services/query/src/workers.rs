//! The bounded pool that runs model-bound work (forward passes) off the async runtime, so
//! that search and dashboard calls never wait behind the model.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::error::{Result, ServiceError};

pub struct ModelWorkers {
    permits: Arc<Semaphore>,
    workers: usize,
    /// Calls running or waiting.
    in_flight: AtomicUsize,
    max_waiting: usize,
}

impl ModelWorkers {
    pub fn new(workers: usize, max_waiting: usize) -> Self {
        let workers = workers.max(1);
        ModelWorkers { permits: Arc::new(Semaphore::new(workers)), workers, in_flight: AtomicUsize::new(0), max_waiting }
    }

    /// Runs `work` on a blocking thread once a worker is free; refuses at once when the
    /// queue is full, and gives up when `deadline` passes first.
    pub async fn run<T: Send + 'static>(&self, deadline: Option<Duration>, work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        let queued = self.in_flight.fetch_add(1, Ordering::SeqCst);
        let _guard = InFlight(&self.in_flight);
        if queued >= self.workers + self.max_waiting {
            return Err(ServiceError::ResourceExhausted(format!(
                "the model is busy: {queued} requests are running or waiting (limit {}); retry later",
                self.workers + self.max_waiting
            )));
        }
        let job = async {
            let permit = self.permits.clone().acquire_owned().await.map_err(|_| ServiceError::Unavailable("the server is shutting down".into()))?;
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                work()
            })
            .await
            .map_err(|e| ServiceError::Internal(format!("model worker failed: {e}")))?
        };
        match deadline {
            Some(deadline) => tokio::time::timeout(deadline, job)
                .await
                .map_err(|_| ServiceError::DeadlineExceeded(format!("the deadline of {} ms passed before the model finished", deadline.as_millis())))?,
            None => job.await,
        }
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
