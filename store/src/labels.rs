//! Feature labels: an append-only Lance table outside generations.
//!
//! Every write appends rows (`LabelRecord`); nothing is ever updated in place, so label
//! writes never take the store's writer lock, never publish a generation, and never wait
//! for (or block) an index job. Several writers (two servers on one store) append
//! concurrently: Lance commits each append as a new version and rebases an append that
//! lost the race onto the winner, since appends do not conflict with each other.
//!
//! A feature's label is the one in the last committed row for it (commit order, not
//! wall-clock time, so two hosts' clocks cannot reorder writes); earlier rows are its
//! history. Readers follow the table incrementally with a [`LabelCursor`]: each append is
//! one new fragment, so a refresh reads only the fragments it has not seen.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use std::time::Duration;

use futures::TryStreamExt;
use lance::dataset::{CommitBuilder, InsertBuilder, WriteMode, WriteParams};
use lance::Dataset;
use loupe_schema::tables::LABELS;

use crate::arrow::{labels_batch, labels_from_batch};
use crate::error::{Result, StoreError};
use crate::layout::{check_store, table_path};
use crate::records::LabelRecord;
use crate::tables::quote;

/// Longest label accepted, in bytes.
pub const MAX_LABEL_BYTES: usize = 1024;

/// How many times an append retries a commit that lost a race (Lance's default is 20; a
/// burst of writers on one store can need more).
const COMMIT_RETRIES: u32 = 100;
/// ... and for at most this long.
const COMMIT_RETRY_TIMEOUT: Duration = Duration::from_secs(60);

fn uri(root: &Path) -> String {
    table_path(root, LABELS).to_string_lossy().into_owned()
}

/// Checks one label's text: one line of printable text, so that it is safe to show in a
/// terminal or a web page.
pub fn check_label(label: &str) -> Result<()> {
    if label.len() > MAX_LABEL_BYTES {
        return Err(StoreError::InvalidRecord(format!("label is {} bytes; at most {MAX_LABEL_BYTES} are accepted", label.len())));
    }
    if let Some(c) = label.chars().find(|c| c.is_control()) {
        return Err(StoreError::InvalidRecord(format!("label contains the control character {:?}; give one line of printable text", c)));
    }
    Ok(())
}

/// Appends label writes to the store's `labels` table (creating it on first use) in one
/// Lance commit. Returns once the commit is durable in the table.
pub async fn append_labels(root: &Path, rows: &[LabelRecord]) -> Result<()> {
    check_store(root)?;
    for row in rows {
        if let Some(label) = &row.label {
            check_label(label)?;
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    let batch = labels_batch(rows)?;
    let lance_err = |e| StoreError::lance(LABELS, e);
    if !table_path(root, LABELS).join("_versions").is_dir() && create_with(root, &batch).await? {
        return Ok(());
    }
    let uri = uri(root);
    let params = WriteParams { mode: WriteMode::Append, ..Default::default() };
    let transaction = InsertBuilder::new(uri.as_str()).with_params(&params).execute_uncommitted(vec![batch]).await.map_err(lance_err)?;
    CommitBuilder::new(uri.as_str()).with_max_retries(COMMIT_RETRIES).with_retry_timeout(COMMIT_RETRY_TIMEOUT).execute(transaction).await.map_err(lance_err)?;
    Ok(())
}

/// Creates the table holding `batch`, unless another writer creates it first: the table is
/// written in a private folder and renamed into place, and renaming onto an existing table
/// fails, so exactly one creator wins (two Lance creates racing on one path could both
/// commit, the second as an overwrite of the first). Returns whether this call created it.
async fn create_with(root: &Path, batch: &arrow_array::RecordBatch) -> Result<bool> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let private = root.join(format!("{LABELS}.lance.creating-{}-{nanos}", std::process::id()));
    let params = WriteParams { mode: WriteMode::Create, ..Default::default() };
    let uri = private.to_string_lossy().into_owned();
    InsertBuilder::new(uri.as_str()).with_params(&params).execute(vec![batch.clone()]).await.map_err(|e| StoreError::lance(LABELS, e))?;
    let table = table_path(root, LABELS);
    match std::fs::rename(&private, &table) {
        Ok(()) => Ok(true),
        Err(_) if table.join("_versions").is_dir() => {
            std::fs::remove_dir_all(&private).map_err(|e| StoreError::io(&private, e))?;
            Ok(false)
        }
        Err(e) => Err(StoreError::io(&table, e)),
    }
}

/// Every label ever written for one feature, oldest first.
pub async fn label_history(root: &Path, dictionary_id: &str, feature: u32) -> Result<Vec<LabelRecord>> {
    let path = table_path(root, LABELS);
    if !path.join("_versions").is_dir() {
        return Ok(Vec::new());
    }
    let dataset = Dataset::open(&uri(root)).await.map_err(|e| StoreError::lance(LABELS, e))?;
    let fragments = sorted_fragments(&dataset).into_values().collect();
    let filter = format!("dictionary_id = {} AND feature = {feature}", quote(dictionary_id));
    read_in_order(&dataset, fragments, Some(&filter)).await
}

/// The rows of these fragments, in the order given (commit order).
async fn read_in_order(dataset: &Dataset, fragments: Vec<lance::table::format::Fragment>, filter: Option<&str>) -> Result<Vec<LabelRecord>> {
    if fragments.is_empty() {
        return Ok(Vec::new());
    }
    let lance_err = |e| StoreError::lance(LABELS, e);
    let mut scanner = dataset.scan();
    scanner.with_fragments(fragments);
    scanner.scan_in_order(true);
    if let Some(filter) = filter {
        scanner.filter(filter).map_err(lance_err)?;
    }
    let batches: Vec<_> = scanner.try_into_stream().await.map_err(lance_err)?.try_collect().await.map_err(lance_err)?;
    let mut rows = Vec::new();
    for batch in &batches {
        rows.extend(labels_from_batch(batch)?);
    }
    Ok(rows)
}

/// The dataset's fragments in commit order (fragment ids grow with every commit).
fn sorted_fragments(dataset: &Dataset) -> BTreeMap<u64, lance::table::format::Fragment> {
    dataset.get_fragments().into_iter().map(|f| (f.id() as u64, f.metadata().clone())).collect()
}

/// The current label of every labelled feature, kept up to date incrementally.
pub struct LabelCursor {
    root: PathBuf,
    dataset: Option<Dataset>,
    /// Fragments already folded into `latest`.
    seen: HashSet<u64>,
    latest: HashMap<(String, u32), LabelRecord>,
}

impl LabelCursor {
    pub fn new(root: &Path) -> Self {
        LabelCursor { root: root.to_path_buf(), dataset: None, seen: HashSet::new(), latest: HashMap::new() }
    }

    /// The latest write for a feature, if it was ever labelled (its `label` is None when
    /// the last write cleared it).
    pub fn get(&self, dictionary_id: &str, feature: u32) -> Option<&LabelRecord> {
        self.latest.get(&(dictionary_id.to_string(), feature))
    }

    /// Reads what was appended since the last call; returns the features whose label rows
    /// changed. Cheap when nothing changed (one look at the latest version).
    pub async fn refresh(&mut self) -> Result<Vec<(String, u32)>> {
        let lance_err = |e| StoreError::lance(LABELS, e);
        if self.dataset.is_none() {
            if !table_path(&self.root, LABELS).join("_versions").is_dir() {
                return Ok(Vec::new());
            }
            self.dataset = Some(Dataset::open(&uri(&self.root)).await.map_err(lance_err)?);
        } else if let Some(dataset) = self.dataset.as_mut() {
            let latest = dataset.latest_version_id().await.map_err(lance_err)?;
            if latest == dataset.version().version {
                return Ok(Vec::new());
            }
            dataset.checkout_latest().await.map_err(lance_err)?;
        }
        let dataset = self.dataset.as_ref().expect("opened above");
        let fragments = sorted_fragments(dataset);
        let mut changed: HashSet<(String, u32)> = HashSet::new();
        if self.seen.iter().any(|id| !fragments.contains_key(id)) {
            // Fragments were rewritten (compaction): fold the whole table again.
            changed.extend(self.latest.keys().cloned());
            self.latest.clear();
            self.seen.clear();
        }
        let new: Vec<(u64, lance::table::format::Fragment)> = fragments.into_iter().filter(|(id, _)| !self.seen.contains(id)).collect();
        self.seen.extend(new.iter().map(|(id, _)| *id));
        for row in read_in_order(dataset, new.into_iter().map(|(_, f)| f).collect(), None).await? {
            let key = (row.dictionary_id.clone(), row.feature);
            changed.insert(key.clone());
            self.latest.insert(key, row);
        }
        let mut changed: Vec<_> = changed.into_iter().collect();
        changed.sort();
        Ok(changed)
    }
}
