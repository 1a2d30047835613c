//! Where each feature's rows are in one Lance version, so that a dashboard reads them with
//! a direct take by row address instead of planning and running a filtered scan (which
//! costs ~10 ms per lookup even with the B-tree index on `feature`).
//!
//! Row addresses are only valid for the version they were read from; a locator belongs to
//! one opened dataset and is rebuilt with it.

use std::collections::HashMap;

use arrow_array::cast::AsArray;
use arrow_array::types::{UInt32Type, UInt64Type};
use futures::TryStreamExt;
use lance::Dataset;

use crate::error::{Result, StoreError};

/// Lance's name for the row address column (`ROW_ADDR`).
const ROW_ADDR: &str = "_rowaddr";

/// A run of consecutive row addresses.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Run {
    start: u64,
    len: u32,
}

/// The rows of one dictionary, grouped by feature (compressed sparse rows of runs).
#[derive(Debug, Default)]
struct DictionaryRows {
    /// `runs[offsets[f]..offsets[f + 1]]` are feature f's rows.
    offsets: Vec<u32>,
    runs: Vec<Run>,
}

impl DictionaryRows {
    /// From (feature, row address) pairs sorted by feature then address.
    fn from_sorted(rows: &[(u32, u64)]) -> Self {
        let features = rows.last().map_or(0, |&(f, _)| f as usize + 1);
        let mut offsets = vec![0u32; features + 1];
        let mut runs: Vec<Run> = Vec::new();
        let mut previous: Option<(u32, u64)> = None;
        for &(feature, address) in rows {
            match (previous, runs.last_mut()) {
                (Some((f, a)), Some(run)) if f == feature && a + 1 == address => run.len += 1,
                _ => runs.push(Run { start: address, len: 1 }),
            }
            offsets[feature as usize + 1] = runs.len() as u32;
            previous = Some((feature, address));
        }
        // Features without rows end where the feature before them ended.
        for f in 1..offsets.len() {
            offsets[f] = offsets[f].max(offsets[f - 1]);
        }
        DictionaryRows { offsets, runs }
    }

    fn addresses(&self, feature: u32) -> Vec<u64> {
        let f = feature as usize;
        if f + 1 >= self.offsets.len() {
            return Vec::new();
        }
        let runs = &self.runs[self.offsets[f] as usize..self.offsets[f + 1] as usize];
        runs.iter().flat_map(|r| r.start..r.start + u64::from(r.len)).collect()
    }
}

#[derive(Debug, Default)]
pub struct RowLocator {
    dictionaries: HashMap<String, DictionaryRows>,
}

impl RowLocator {
    /// Reads the `dictionary_id` and `feature` columns of `dataset` with row addresses.
    pub async fn build(dataset: &Dataset, table: &str) -> Result<Self> {
        let lance_err = |e| StoreError::lance(table, e);
        let column_err = |column: &str, reason: &str| StoreError::Column { table: table.into(), column: column.into(), reason: reason.into() };
        let mut scanner = dataset.scan();
        scanner.project(&["dictionary_id", "feature"]).map_err(lance_err)?;
        scanner.with_row_address();
        let mut stream = scanner.try_into_stream().await.map_err(lance_err)?;
        let mut rows: HashMap<String, Vec<(u32, u64)>> = HashMap::new();
        while let Some(batch) = stream.try_next().await.map_err(lance_err)? {
            let ids = batch.column_by_name("dictionary_id").and_then(|c| c.as_string_opt::<i32>()).ok_or_else(|| column_err("dictionary_id", "expected utf8"))?;
            let features = batch.column_by_name("feature").and_then(|c| c.as_primitive_opt::<UInt32Type>()).ok_or_else(|| column_err("feature", "expected uint32"))?;
            let addresses = batch.column_by_name(ROW_ADDR).and_then(|c| c.as_primitive_opt::<UInt64Type>()).ok_or_else(|| column_err(ROW_ADDR, "expected uint64"))?;
            for i in 0..batch.num_rows() {
                let id = ids.value(i);
                let entry = match rows.get_mut(id) {
                    Some(entry) => entry,
                    None => rows.entry(id.to_string()).or_default(),
                };
                entry.push((features.value(i), addresses.value(i)));
            }
        }
        let dictionaries = rows
            .into_iter()
            .map(|(id, mut pairs)| {
                pairs.sort_unstable();
                (id, DictionaryRows::from_sorted(&pairs))
            })
            .collect();
        Ok(RowLocator { dictionaries })
    }

    /// Row addresses of a feature's rows (empty if it has none).
    pub fn addresses(&self, dictionary_id: &str, feature: u32) -> Vec<u64> {
        self.dictionaries.get(dictionary_id).map_or_else(Vec::new, |rows| rows.addresses(feature))
    }
}

#[cfg(test)]
mod tests {
    use super::DictionaryRows;

    #[test]
    fn runs_group_consecutive_addresses_per_feature() {
        let rows = [(0, 10), (0, 11), (0, 12), (2, 13), (2, 20), (2, 21), (3, 1 << 32)];
        let located = DictionaryRows::from_sorted(&rows);
        assert_eq!(located.addresses(0), vec![10, 11, 12]);
        assert_eq!(located.addresses(1), Vec::<u64>::new());
        assert_eq!(located.addresses(2), vec![13, 20, 21]);
        assert_eq!(located.addresses(3), vec![1 << 32]);
        assert_eq!(located.addresses(4), Vec::<u64>::new());
        assert_eq!(located.runs.len(), 4);
    }
}
