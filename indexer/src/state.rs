//! The whole reducer state of a run, its checkpoints, and how states combine.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};
use crate::reducer::DictionaryState;
use loupe_corpus::Window;
use loupe_corpus::{CorpusSource, Skipped};
use loupe_store::Location;

/// What one corpus source contributed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceSummary {
    pub source: CorpusSource,
    pub first_document: u64,
    pub documents: u64,
    pub first_window: u64,
    pub windows: u64,
    pub skipped: Skipped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexState {
    /// One per dictionary, in job order.
    pub dictionaries: Vec<DictionaryState>,
    /// The windows that stored examples point to (tokens and origins).
    pub windows: BTreeMap<u64, Window>,
    /// Windows run through the model.
    pub windows_reduced: u64,
    /// The corpus sources, filled in when a run has read them to the end.
    pub sources: Vec<SourceSummary>,
}

impl IndexState {
    pub fn new(dictionaries: Vec<DictionaryState>) -> Self {
        IndexState { dictionaries, windows: BTreeMap::new(), windows_reduced: 0, sources: Vec::new() }
    }

    /// Drops stored windows that no example points to any more.
    pub fn collect_garbage(&mut self) {
        let live: BTreeSet<u64> = self.dictionaries.iter().flat_map(|d| d.features.iter().flat_map(|f| f.windows())).collect();
        self.windows.retain(|index, _| live.contains(index));
    }

    /// Combines the states of two shards of the same corpus.
    pub fn merge_shard(&mut self, other: IndexState) -> Result<()> {
        if self.sources != other.sources {
            return Err(IndexError::InvalidJob("shards were run over different corpora; run every shard with the same job config".into()));
        }
        self.merge_reducers(other);
        Ok(())
    }

    /// Adds the state of a run over further corpus sources (an append).
    pub fn append(&mut self, other: IndexState) {
        let sources = other.sources.clone();
        self.merge_reducers(other);
        self.sources.extend(sources);
    }

    fn merge_reducers(&mut self, other: IndexState) {
        for (mine, theirs) in self.dictionaries.iter_mut().zip(other.dictionaries) {
            mine.merge(theirs);
        }
        self.windows.extend(other.windows);
        self.windows_reduced += other.windows_reduced;
        self.collect_garbage();
    }

    /// Documents and windows of all sources: where an appended corpus starts.
    pub fn next_ids(&self) -> (u64, u64) {
        self.sources.last().map_or((0, 0), |s| (s.first_document + s.documents, s.first_window + s.windows))
    }
}

/// A state saved in the store (local or on object storage): the run it belongs to and how
/// far it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Identity of the run (model, dictionaries, corpus, settings, shard).
    pub run_key: String,
    /// Every window of this shard with a smaller index has been reduced.
    pub next_window: u64,
    pub complete: bool,
    pub state: IndexState,
}

impl Checkpoint {
    /// The checkpoint at `key` of the store, if there is one. Blocking: called from the
    /// job's threads, outside any async runtime.
    pub fn load(store: &Location, key: &str) -> Result<Option<Checkpoint>> {
        let Some(bytes) = futures::executor::block_on(store.get(key))? else { return Ok(None) };
        bincode::deserialize(&bytes).map(Some).map_err(|e| IndexError::BadCheckpoint { path: format!("{store}/{key}"), reason: format!("cannot be read ({e}); delete it to start the run over") })
    }

    /// Saves atomically: a kill at any moment leaves the previous or the new checkpoint.
    pub fn save(&self, store: &Location, key: &str) -> Result<()> {
        let bytes = bincode::serialize(self).map_err(|e| IndexError::BadCheckpoint { path: format!("{store}/{key}"), reason: e.to_string() })?;
        futures::executor::block_on(store.put(key, bytes)).map_err(IndexError::from)
    }
}
