//! What the server holds: the store reader (swapped on a new generation), the model and
//! dictionaries loaded once, per-dictionary caches, and the model worker pool.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use loupe_engine::{Compute, Dictionary, FeatureLens, HookPoint, Model};
use loupe_schema::proto::v1 as pb;
use loupe_store::{DictionaryRecord, Location, StoreReader};

use crate::config::{Limits, ServerConfig};
use crate::error::{Result, ServiceError};
use crate::labels::LabelWriter;
use crate::response_cache::{DashboardKey, ResponseCache, SearchKey};
use crate::workers::{ModelWorkers, RequestThreads};

/// One generation of the store and what the server derives from it.
pub struct Snapshot {
    pub reader: StoreReader,
    pub dictionaries: BTreeMap<String, DictionaryRecord>,
    /// Density and label of every feature, for dictionaries the engine runs (small).
    pub feature_notes: HashMap<String, FeatureNotes>,
}

#[derive(Default)]
pub struct FeatureNotes {
    pub density: Vec<f64>,
    /// Labels the generation was built with; `StoreReader::label_override` has later ones.
    pub labels: HashMap<u32, String>,
}

pub struct AppState {
    pub store_root: Location,
    /// The generation served, replaced when the store publishes a new one
    /// (`follow_generations`).
    snapshot: std::sync::RwLock<Arc<Snapshot>>,
    /// The model and the store's dictionaries it can run (None: started without a model).
    pub engine: Option<Arc<FeatureLens>>,
    pub workers: Arc<ModelWorkers>,
    /// Where searches run (see `RequestThreads`).
    pub request_threads: RequestThreads,
    /// Where long CPU-bound request work runs (monitor evaluations' bootstraps, explained
    /// alerts' encodes: up to seconds): apart from the searches, which would queue behind it,
    /// and from the blocking pool, whose few threads (`limits.io_threads`) serve store reads.
    pub long_threads: RequestThreads,
    pub limits: Limits,
    /// Tokens, scopes and quotas of callers.
    pub access: crate::access::Access,
    /// Appends label writes to the store (group commits).
    pub labels: LabelWriter,
    /// SHA-256 of the model's file (as dictionaries and vectors record the model).
    pub model_checksum: Option<String>,
    /// Mean residual norm per hook, measured once on a reference text (steering's
    /// residual-norm unit).
    pub residual_norms: Mutex<HashMap<HookPoint, f32>>,
    /// Monitors, the scoring batcher and the alerts log.
    pub monitoring: crate::monitoring::MonitoringState,
    /// Hot GetFeature and SearchFeatures answers.
    pub dashboards: ResponseCache<DashboardKey, pb::GetFeatureResponse>,
    pub searches: ResponseCache<SearchKey, pb::SearchFeaturesResponse>,
    next_request: AtomicU64,
}

impl AppState {
    pub async fn load(config: &ServerConfig) -> Result<AppState> {
        // Access settings first: a wrong TLS or token file stops the server before it loads.
        let access = crate::access::Access::new(&config.access, &config.limits)?;
        let reader = StoreReader::open(&config.store).await?;
        let snapshot = Snapshot::build(reader, None).await?;
        let engine = match &config.model {
            Some(model) => Some(Arc::new(load_engine(model, Compute::open(config.device, config.precision)?, &snapshot, &config.dictionaries)?)),
            None => None,
        };
        let snapshot = Snapshot::build(snapshot.reader, engine.as_deref()).await?;
        let model_checksum = match &config.model {
            Some(path) => Some(loupe_indexer::checksum::sha256_path(path).map_err(|e| ServiceError::Internal(format!("model checksum: {e}")))?),
            None => None,
        };
        let workers = Arc::new(ModelWorkers::new(config.limits.model_workers, config.limits.max_waiting));
        let batcher = engine.as_ref().map(|lens| crate::monitoring::Batcher::start(lens.clone(), workers.clone(), &config.limits));
        let state = AppState {
            store_root: config.store.clone(),
            snapshot: std::sync::RwLock::new(Arc::new(snapshot)),
            engine,
            workers,
            request_threads: RequestThreads::per_core("request"),
            long_threads: RequestThreads::per_core("long"),
            limits: config.limits,
            access,
            labels: crate::labels::label_writer(config.store.clone()),
            model_checksum,
            residual_norms: Mutex::new(HashMap::new()),
            monitoring: crate::monitoring::MonitoringState::new(config.store.clone(), batcher),
            dashboards: ResponseCache::new(config.limits.dashboard_cache_bytes),
            searches: ResponseCache::new(config.limits.search_cache_bytes),
            next_request: AtomicU64::new(1),
        };
        state.monitoring.registry.refresh(&state).await?;
        Ok(state)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Serves the store's current generation if it is newer than the one served: opened
    /// and warmed beside the old one, then swapped in, so no call fails or waits on it.
    /// Calls in flight finish on the snapshot they started with. Returns the new
    /// generation's number when it swapped.
    pub async fn refresh_generation(&self) -> Result<Option<u64>> {
        let served = self.snapshot().reader.generation().generation;
        let Some(latest) = loupe_store::layout::current(&self.store_root).await? else { return Ok(None) };
        if latest.generation <= served {
            return Ok(None);
        }
        let reader = StoreReader::open_generation(&self.store_root, latest.generation).await?;
        let snapshot = Snapshot::build(reader, self.engine.as_deref()).await?;
        if let Some(engine) = &self.engine {
            let served = self.snapshot();
            for id in engine.dictionaries().iter().map(|d| &d.id) {
                let checksum = |s: &Snapshot| s.dictionaries.get(id).map(|d| d.source_checksum.clone());
                if checksum(&served) != checksum(&snapshot) {
                    // The model-side dictionaries are loaded once, at start.
                    tracing::warn!(dictionary = %id, generation = latest.generation, "the new generation indexed another version of this dictionary: search and dashboards serve it now; text, steering and monitoring calls keep the version loaded at start until the server restarts");
                }
            }
        }
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
        Ok(Some(latest.generation))
    }

    pub fn request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }

    pub fn engine(&self) -> Result<Arc<FeatureLens>> {
        self.engine
            .clone()
            .ok_or_else(|| ServiceError::FailedPrecondition("this server has no model loaded: restart it with one (`loupe serve --model PATH`, or without --no-model for the default model)".into()))
    }
}

impl Snapshot {
    async fn build(reader: StoreReader, engine: Option<&FeatureLens>) -> Result<Snapshot> {
        reader.warm().await?;
        let dictionaries: BTreeMap<String, DictionaryRecord> = reader.dictionaries().await?.into_iter().map(|d| (d.dictionary_id.clone(), d)).collect();
        let mut feature_notes = HashMap::new();
        if let Some(engine) = engine {
            for id in engine.dictionaries().iter().map(|d| &d.id) {
                let mut notes = FeatureNotes::default();
                for f in reader.features_as_built(id).await? {
                    notes.density.push(f.density);
                    if let Some(label) = f.label {
                        notes.labels.insert(f.feature, label);
                    }
                }
                feature_notes.insert(id.clone(), notes);
            }
        }
        Ok(Snapshot { reader, dictionaries, feature_notes })
    }

    pub fn dictionary(&self, id: &str) -> Result<&DictionaryRecord> {
        self.dictionaries.get(id).ok_or_else(|| {
            let known: Vec<&str> = self.dictionaries.keys().map(String::as_str).collect();
            ServiceError::NotFound(format!("no dictionary {id:?} in the store; it has: {}", known.join(", ")))
        })
    }

    /// A feature's current label: the latest label write, else the generation's.
    pub fn label(&self, dictionary_id: &str, feature: u32) -> Option<String> {
        match self.reader.label_override(dictionary_id, feature) {
            Some(label) => label,
            None => self.feature_notes.get(dictionary_id).and_then(|n| n.labels.get(&feature).cloned()),
        }
    }

    /// Checks that `feature` exists in `dictionary_id`.
    pub fn check_feature(&self, dictionary_id: &str, feature: u32) -> Result<&DictionaryRecord> {
        let dictionary = self.dictionary(dictionary_id)?;
        if feature >= dictionary.d_sae {
            return Err(ServiceError::NotFound(format!(
                "feature {feature} is out of range: dictionary {dictionary_id:?} has {} features (0..={})",
                dictionary.d_sae,
                dictionary.d_sae.saturating_sub(1)
            )));
        }
        Ok(dictionary)
    }
}

/// Loads the model and every dictionary of the store that reads it.
fn load_engine(model_path: &Path, compute: Compute, snapshot: &Snapshot, overrides: &[(String, PathBuf)]) -> Result<FeatureLens> {
    let model = Model::load_on(model_path, &compute)?;
    let mut dictionaries = Vec::new();
    for (id, record) in &snapshot.dictionaries {
        let path = overrides.iter().find(|(o, _)| o == id).map(|(_, p)| p.clone()).or_else(|| record.manifest.pointer("/dictionary/path").and_then(|p| p.as_str()).map(PathBuf::from));
        let Some(path) = path.filter(|p| p.exists()) else {
            tracing::warn!(dictionary = %id, "dictionary files not found; serving its index only (give --dictionary {id}=DIR)");
            continue;
        };
        match Dictionary::load_for_model(&path, model.config()) {
            Ok(dictionary) => {
                dictionaries.push((id.clone(), Arc::new(dictionary)));
            }
            Err(e) => {
                tracing::warn!(dictionary = %id, error = %e, "cannot run this dictionary on the model; serving its index only")
            }
        }
    }
    Ok(FeatureLens::new(model, dictionaries)?)
}
