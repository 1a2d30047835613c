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

use std::collections::{HashMap, HashSet};

use lance::Dataset;
use loupe_schema::tables::LABELS;

use crate::append_only;
use crate::arrow::{labels_batch, labels_from_batch};
use crate::error::{Result, StoreError};
use crate::location::Location;
use crate::records::LabelRecord;
use crate::tables::quote;

/// Longest label accepted, in bytes.
pub const MAX_LABEL_BYTES: usize = 1024;

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
pub async fn append_labels(root: &Location, rows: &[LabelRecord]) -> Result<()> {
    for row in rows {
        if let Some(label) = &row.label {
            check_label(label)?;
        }
    }
    append_only::append(root, LABELS, labels_batch(rows)?).await
}

/// Every label ever written for one feature, oldest first.
pub async fn label_history(root: &Location, dictionary_id: &str, feature: u32) -> Result<Vec<LabelRecord>> {
    let filter = format!("dictionary_id = {} AND feature = {feature}", quote(dictionary_id));
    rows_of(append_only::read_all(root, LABELS, Some(&filter)).await?)
}

fn rows_of(batches: Vec<arrow_array::RecordBatch>) -> Result<Vec<LabelRecord>> {
    let mut rows = Vec::new();
    for batch in &batches {
        rows.extend(labels_from_batch(batch)?);
    }
    Ok(rows)
}

/// The current label of every labelled feature, kept up to date incrementally.
pub struct LabelCursor {
    root: Location,
    dataset: Option<Dataset>,
    /// Fragments already folded into `latest`.
    seen: HashSet<u64>,
    latest: HashMap<(String, u32), LabelRecord>,
}

impl LabelCursor {
    pub fn new(root: &Location) -> Self {
        LabelCursor { root: root.clone(), dataset: None, seen: HashSet::new(), latest: HashMap::new() }
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
            self.dataset = append_only::open(&self.root, LABELS).await?;
            if self.dataset.is_none() {
                return Ok(Vec::new());
            }
        } else if let Some(dataset) = self.dataset.as_mut() {
            let latest = dataset.latest_version_id().await.map_err(lance_err)?;
            if latest == dataset.version().version {
                return Ok(Vec::new());
            }
            dataset.checkout_latest().await.map_err(lance_err)?;
        }
        let dataset = self.dataset.as_ref().expect("opened above");
        let fragments = append_only::sorted_fragments(dataset);
        let mut changed: HashSet<(String, u32)> = HashSet::new();
        if self.seen.iter().any(|id| !fragments.contains_key(id)) {
            // Fragments were rewritten (compaction): fold the whole table again.
            changed.extend(self.latest.keys().cloned());
            self.latest.clear();
            self.seen.clear();
        }
        let new: Vec<(u64, lance::table::format::Fragment)> = fragments.into_iter().filter(|(id, _)| !self.seen.contains(id)).collect();
        self.seen.extend(new.iter().map(|(id, _)| *id));
        for row in rows_of(append_only::read_in_order(LABELS, dataset, new.into_iter().map(|(_, f)| f).collect(), None).await?)? {
            let key = (row.dictionary_id.clone(), row.feature);
            changed.insert(key.clone());
            self.latest.insert(key, row);
        }
        let mut changed: Vec<_> = changed.into_iter().collect();
        changed.sort();
        Ok(changed)
    }
}
