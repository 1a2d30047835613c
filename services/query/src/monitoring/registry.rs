//! The monitors this server scores with: the live (not archived) latest version of each name
//! from the store's `monitors` table, resolved against the model (stored vectors read), and
//! re-read when this server writes one or when the follower sees another writer's rows.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use loupe_engine::monitor::{Detector, Monitor};
use loupe_store::MonitorVersion;

use crate::error::{Result, ServiceError};
use crate::state::AppState;

/// A monitor as scored: its stored definition and the detectors resolved for the model.
pub struct LiveMonitor {
    pub version: u32,
    pub monitor: Monitor,
    pub detectors: Vec<Detector>,
}

#[derive(Default)]
pub struct Registry {
    live: RwLock<Arc<BTreeMap<String, Arc<LiveMonitor>>>>,
    /// The table's marker when last read, if it had been created (a refresh that finds the
    /// same marker does nothing).
    seen: RwLock<Option<String>>,
}

impl Registry {
    /// The live monitors by name.
    pub fn live(&self) -> Arc<BTreeMap<String, Arc<LiveMonitor>>> {
        self.live.read().map(|l| l.clone()).unwrap_or_default()
    }

    /// Re-reads the table (when it has new rows) and resolves every live monitor. A monitor
    /// that no longer resolves (its stored vector was deleted) is left out, with a warning.
    pub async fn refresh(&self, state: &AppState) -> Result<()> {
        let marker = loupe_store::monitors_marker(&state.store_root).await?;
        if marker.is_some() && self.seen.read().map(|s| *s == marker).unwrap_or(false) {
            return Ok(());
        }
        let history = loupe_store::monitor_history(&state.store_root).await?;
        let mut live = BTreeMap::new();
        if state.engine.is_some() {
            for (name, versions) in &history {
                let Some(latest) = versions.last().filter(|v| !v.archived) else { continue };
                match parse(latest) {
                    Ok(monitor) => match super::definition::resolve(state, &monitor).await {
                        Ok(detectors) => {
                            live.insert(name.clone(), Arc::new(LiveMonitor { version: latest.version, monitor, detectors }));
                        }
                        Err(e) => tracing::warn!(monitor = %name, error = %e, "monitor does not resolve on this server; not scoring it"),
                    },
                    Err(e) => tracing::warn!(monitor = %name, error = %e, "stored monitor definition is unreadable"),
                }
            }
        }
        if let Ok(mut slot) = self.live.write() {
            *slot = Arc::new(live);
        }
        if let Ok(mut seen) = self.seen.write() {
            *seen = marker;
        }
        Ok(())
    }
}

/// The definition stored in a version row.
pub fn parse(version: &MonitorVersion) -> Result<Monitor> {
    serde_json::from_str(&version.definition).map_err(|e| ServiceError::Internal(format!("monitor {:?} version {}: stored definition: {e}", version.name, version.version)))
}
