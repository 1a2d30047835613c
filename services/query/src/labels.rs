//! Label writes: group commits to the store's append-only `labels` table, and the tasks that
//! keep the served snapshot current: its labels (writes by this server, by other servers on
//! the same store, or by any other writer) and its generation (a re-index elsewhere).

use std::sync::Arc;
use std::time::Duration;

use loupe_store::{append_labels, LabelRecord, Location};

use crate::group_commit::GroupCommit;
use crate::state::AppState;

/// Label writes, group-committed to the store's `labels` table.
pub type LabelWriter = GroupCommit<LabelRecord>;

/// Starts the label writer of the store at `store_root`.
pub fn label_writer(store_root: Location) -> LabelWriter {
    GroupCommit::start("label", move |rows: Vec<LabelRecord>| {
        let root = store_root.clone();
        async move { append_labels(&root, &rows).await.map_err(|e| e.to_string()) }
    })
}

/// Follows the labels table every `every` until the returned handle is aborted, so that
/// labels written elsewhere show up in search and dashboards without a restart.
pub fn follow_labels(state: Arc<AppState>, every: Duration) -> tokio::task::JoinHandle<()> {
    every_tick(every, move || {
        let state = state.clone();
        async move {
            if let Err(e) = state.snapshot().reader.refresh_labels().await {
                tracing::warn!(error = %e, "reading new labels failed; retrying");
            }
        }
    })
}

/// Runs `work` every `every` (a late tick waits rather than bunching up) until the returned
/// handle is aborted: the loop of the tasks that follow the store.
pub fn every_tick<F: std::future::Future<Output = ()> + Send>(every: Duration, mut work: impl FnMut() -> F + Send + 'static) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            work().await;
        }
    })
}

/// Looks for a new generation every `every` until the returned handle is aborted, and
/// serves it once it is open (see `AppState::refresh_generation`).
pub fn follow_generations(state: Arc<AppState>, every: Duration) -> tokio::task::JoinHandle<()> {
    every_tick(every, move || {
        let state = state.clone();
        async move {
            match state.refresh_generation().await {
                Ok(Some(generation)) => tracing::info!(generation, "serving a new generation of the store"),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "opening the store's new generation failed; still serving the previous one, retrying"),
            }
        }
    })
}
