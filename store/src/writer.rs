//! Committing an indexed dictionary: Lance tables first, then the search index, then the
//! generation pointer. Until the pointer moves, readers see the previous generation.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use arrow_array::{RecordBatchIterator, RecordBatchReader};
use arrow_schema::ArrowError;

use loupe_schema::tables::{DASHBOARDS, DICTIONARIES, EXAMPLES, FEATURES};

use crate::arrow::{dictionaries_batch, dictionaries_from_batch, examples_batch, features_batch, features_from_batch};
use crate::dashboards;
use crate::error::{Result, StoreError};
use crate::layout::{self, Generation, Location, WriterLock};
use crate::records::{DictionaryCommit, DictionaryRecord, ExampleRecord, FeatureRecord};
use crate::search::{FeatureSite, IndexBuilder};
use crate::tables::{delete_dictionaries, index_feature_column, of_dictionaries, open_at, open_for_write, replace_dictionary_rows, scan, sliced};
use crate::vectors;

/// The one writer of a store (holds an exclusive lock while alive).
pub struct StoreWriter {
    root: Location,
    lock: WriterLock,
}

impl StoreWriter {
    /// Opens a store for writing, creating it if `root` is new or empty.
    pub async fn open_or_create(root: &Location) -> Result<Self> {
        layout::create_or_check(root).await?;
        let root = match root.local_path() {
            Some(path) => Location::local(&path.canonicalize().map_err(|e| StoreError::io(path, e))?),
            None => root.clone(),
        };
        let lock = layout::lock_writer(&root).await?;
        Ok(StoreWriter { root, lock })
    }

    pub fn root(&self) -> &Location {
        &self.root
    }

    /// Replaces everything stored about the given dictionaries and publishes one new
    /// generation. Earlier generations stay readable.
    pub async fn commit(&self, entries: &[DictionaryCommit]) -> Result<Generation> {
        let dictionaries: Vec<DictionaryRecord> = entries.iter().map(|e| e.dictionary.clone()).collect();
        let features: Vec<FeatureRecord> = entries.iter().flat_map(|e| e.features.iter().cloned()).collect();
        let examples: Vec<ExampleRecord> = entries.iter().flat_map(|e| e.examples.iter().cloned()).collect();
        self.commit_streaming(&dictionaries, &features, std::iter::once(Ok(examples))).await
    }

    /// [`commit`](Self::commit) with the examples arriving in chunks (a few thousand rows
    /// each is best), so that neither the caller nor the writer holds all of them at once:
    /// the examples are what grows with the corpus. An `Err` chunk aborts the commit with
    /// that error and the store keeps its last generation.
    pub async fn commit_streaming(
        &self,
        dictionaries: &[DictionaryRecord],
        features: &[FeatureRecord],
        examples: impl Iterator<Item = Result<Vec<ExampleRecord>>> + Send + 'static,
    ) -> Result<Generation> {
        if dictionaries.is_empty() {
            return Err(StoreError::InvalidRecord("nothing to commit".into()));
        }
        let ids: Vec<String> = dictionaries.iter().map(|d| d.dictionary_id.clone()).collect();
        check_dictionary_ids(&ids, features.iter().map(|f| &f.dictionary_id))?;
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let current = layout::current(&self.root).await?;
        let committed = |table: &str| current.as_ref().and_then(|g| g.versions.get(table).copied());
        let mut versions = BTreeMap::new();
        for (table, batch) in [(DICTIONARIES, dictionaries_batch(dictionaries)?), (FEATURES, features_batch(features)?)] {
            let mut dataset = replace_dictionary_rows(&self.root, table, committed(table), &id_refs, sliced(batch)).await?;
            index_feature_column(&mut dataset, table).await?;
            versions.insert(table.to_string(), dataset.version().version);
        }
        versions.extend(self.write_decoders(current.as_ref(), &id_refs, features).await?);
        let (batches, failure) = example_batches(ids.clone(), examples);
        let written = replace_dictionary_rows(&self.root, EXAMPLES, committed(EXAMPLES), &id_refs, batches).await;
        // The chunk's own error says more than Lance's wrapping of it.
        if let Some(error) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(error);
        }
        let mut examples = written?;
        index_feature_column(&mut examples, EXAMPLES).await?;
        versions.insert(EXAMPLES.to_string(), examples.version().version);
        // Each feature's dashboard as one record, from the rows just written.
        let hooks = dictionaries.iter().map(|d| (d.dictionary_id.clone(), d.hook.clone())).collect();
        let features_table = open_at(&self.root, FEATURES, versions[FEATURES]).await?;
        let dashboards = dashboards::write(&self.root, committed(DASHBOARDS), &id_refs, hooks, &features_table, &examples).await?;
        versions.insert(DASHBOARDS.to_string(), dashboards.version().version);
        let generation = current.as_ref().map_or(1, |g| g.generation + 1);
        let search = match self.root.local_path() {
            Some(_) => format!("search/g{generation}"),
            // Readers cache it by this name: unique, so that a store deleted and made again
            // at the same URL never serves a stale cached index.
            None => format!("search/g{generation}-{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()) ^ u128::from(std::process::id())),
        };
        self.write_search_index(&versions, &search).await?;
        let message = format!("index {}", ids.join(", "));
        let generation = Generation { generation, versions, search, committed_at: layout::now_rfc3339(), message };
        self.lock.check()?;
        layout::upgrade_marker(&self.root).await?;
        layout::publish(&self.root, &generation).await?;
        Ok(generation)
    }

    /// Replaces these dictionaries' rows in the decoder tables: the widths they write now,
    /// and any width they wrote before (a re-index may change it). Returns the new versions.
    async fn write_decoders(&self, current: Option<&Generation>, ids: &[&str], features: &[FeatureRecord]) -> Result<BTreeMap<String, u64>> {
        let mut by_table: BTreeMap<String, Vec<&FeatureRecord>> = BTreeMap::new();
        for feature in features.iter().filter(|f| !f.decoder.is_empty()) {
            by_table.entry(vectors::table_name(feature.decoder.len())).or_default().push(feature);
        }
        for table in current.into_iter().flat_map(|g| g.versions.keys()).filter(|t| vectors::width_of(t).is_some()) {
            by_table.entry(table.clone()).or_default();
        }
        let mut versions = BTreeMap::new();
        for (table, rows) in by_table {
            let width = vectors::width_of(&table).expect("a decoder table name");
            let committed = current.and_then(|g| g.versions.get(&table).copied());
            let dataset = if rows.is_empty() {
                let Some(version) = committed else { continue };
                let mut dataset = open_for_write(&self.root, &table, version).await?;
                if !has_rows_of(&dataset, &table, ids).await? {
                    // Another width's table, untouched: no new version.
                    versions.insert(table, dataset.version().version);
                    continue;
                }
                // These dictionaries no longer write this width: only their old rows go.
                delete_dictionaries(&mut dataset, &table, ids).await?;
                dataset
            } else {
                replace_dictionary_rows(&self.root, &table, committed, ids, sliced(vectors::batch(&rows, width)?)).await?
            };
            versions.insert(table, dataset.version().version);
        }
        Ok(versions)
    }

    /// Builds the generation's tantivy index in its folder `search` (replacing the debris of
    /// a run that died before publishing it). On object storage it is built in a local
    /// temporary folder and uploaded: an immutable folder per generation.
    async fn write_search_index(&self, versions: &BTreeMap<String, u64>, search: &str) -> Result<()> {
        self.root.delete_dir(search).await?;
        if let Some(root) = self.root.local_path() {
            return self.build_search_index(versions, &root.join(search)).await;
        }
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let local = std::env::temp_dir().join(format!("loupe-search-{}-{nanos}", std::process::id()));
        let built = match self.build_search_index(versions, &local).await {
            Ok(()) => self.root.upload_dir(&local, search).await,
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_dir_all(&local);
        built
    }

    async fn build_search_index(&self, versions: &BTreeMap<String, u64>, dir: &Path) -> Result<()> {
        let dictionaries = open_at(&self.root, DICTIONARIES, versions[DICTIONARIES]).await?;
        let mut sites = HashMap::new();
        for batch in scan(&dictionaries, DICTIONARIES, None, None).await? {
            for d in dictionaries_from_batch(&batch)? {
                sites.insert(d.dictionary_id.clone(), (d.hook, d.layer));
            }
        }
        let features = open_at(&self.root, FEATURES, versions[FEATURES]).await?;
        let mut builder = IndexBuilder::create(dir)?;
        for batch in scan(&features, FEATURES, None, None).await? {
            for feature in features_from_batch(&batch)? {
                let (hook, layer) = sites.get(&feature.dictionary_id).map(|(h, l)| (h.as_str(), *l)).unwrap_or(("", None));
                builder.add(&feature, &FeatureSite { hook, layer })?;
            }
        }
        builder.finish()
    }
}

/// Whether `dataset` holds any row of these dictionaries.
async fn has_rows_of(dataset: &lance::Dataset, table: &str, ids: &[&str]) -> Result<bool> {
    let rows = dataset.count_rows(Some(of_dictionaries(ids))).await.map_err(|e| StoreError::lance(table, e))?;
    Ok(rows > 0)
}

fn check_dictionary_ids<'a>(ids: &[String], rows: impl IntoIterator<Item = &'a String>) -> Result<()> {
    match rows.into_iter().find(|d| !ids.contains(d)) {
        Some(bad) => Err(StoreError::InvalidRecord(format!("row of dictionary {bad:?} in a commit of {ids:?}"))),
        None => Ok(()),
    }
}

type FailureSlot = Arc<Mutex<Option<StoreError>>>;

/// Example chunks as Arrow batches for Lance, keeping the first error for the caller.
fn example_batches(ids: Vec<String>, chunks: impl Iterator<Item = Result<Vec<ExampleRecord>>> + Send + 'static) -> (impl RecordBatchReader + Send + 'static, FailureSlot) {
    let failure = FailureSlot::default();
    let slot = failure.clone();
    let batches = chunks.map(move |chunk| {
        let batch = chunk.and_then(|rows| {
            check_dictionary_ids(&ids, rows.iter().map(|r| &r.dictionary_id))?;
            examples_batch(&rows)
        });
        batch.map_err(|error| {
            let message = error.to_string();
            slot.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(error);
            ArrowError::ExternalError(message.into())
        })
    });
    (RecordBatchIterator::new(batches, loupe_schema::tables::examples()), failure)
}
