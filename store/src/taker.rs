//! Point reads by row address through fragment readers that stay open with the reader.
//!
//! `Dataset::take_rows` opens the fragment's files and plans a DataFusion projection on
//! every call: ~0.8 ms before it reads a byte, most of a dashboard's time. A Lance
//! `FragmentReader` opened once for one projection only schedules and decodes the rows
//! it is asked for (measured on the 1M-row store: a dashboard's two takes 5.1 -> 2.0 ms).
//!
//! Every take of a reader shares its I/O scheduler, which serves the lowest priority
//! first, and by default a request's priority is its position in the file: under load,
//! rows near the end of a file waited seconds behind a stream of earlier rows. Each take
//! therefore gets the next number of a counter as its priority, so requests are served in
//! arrival order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use lance::dataset::fragment::{FragReadConfig, FragmentReader};
use lance::Dataset;
use tokio::sync::OnceCell;

use crate::error::{Result, StoreError};

pub struct RowTaker {
    table: String,
    dataset: Dataset,
    projection: lance::datatypes::Schema,
    /// The columns read, in the order a take returns them.
    read_schema: SchemaRef,
    /// Readers by fragment id, opened on first use (or by `open_all`).
    fragments: HashMap<u64, OnceCell<FragmentReader>>,
    /// The next take's I/O priority (lower is served first).
    arrivals: AtomicU32,
}

impl RowTaker {
    /// A taker of `columns` of one opened version of `table`.
    pub fn new(dataset: &Dataset, table: &str, columns: &[&str]) -> Result<Self> {
        let projection = dataset.schema().project(columns).map_err(|e| StoreError::lance(table, e))?;
        let read_schema = Arc::new(arrow_schema::Schema::from(&projection));
        let fragments = dataset.get_fragments().iter().map(|f| (f.id() as u64, OnceCell::new())).collect();
        Ok(RowTaker { table: table.into(), dataset: dataset.clone(), projection, read_schema, fragments, arrivals: AtomicU32::new(0) })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Opens every fragment's reader now, so that no request pays for it.
    pub async fn open_all(&self) -> Result<()> {
        for &id in self.fragments.keys() {
            self.fragment(id).await?;
        }
        Ok(())
    }

    async fn fragment(&self, id: u64) -> Result<&FragmentReader> {
        let cell = self.fragments.get(&id).ok_or_else(|| StoreError::Corrupt {
            path: self.dataset.uri().into(),
            reason: format!("row address names fragment {id}, which version {} of {} does not have", self.dataset.version().version, self.table),
        })?;
        cell.get_or_try_init(|| async {
            let lance_err = |e| StoreError::lance(&self.table, e);
            let fragment =
                self.dataset.get_fragment(id as usize).ok_or_else(|| StoreError::Corrupt { path: self.dataset.uri().into(), reason: format!("fragment {id} of {} is missing", self.table) })?;
            fragment.open(&self.projection, FragReadConfig::default()).await.map_err(lance_err)
        })
        .await
    }

    /// The rows at `addresses` (live rows of this version), in fragment then address order.
    pub async fn take(&self, addresses: &[u64]) -> Result<RecordBatch> {
        let mut by_fragment: Vec<(u64, Vec<u32>)> = Vec::new();
        for address in sorted_unique(addresses) {
            let (fragment, offset) = (address >> 32, address as u32);
            match by_fragment.last_mut() {
                Some((f, offsets)) if *f == fragment => offsets.push(offset),
                _ => by_fragment.push((fragment, vec![offset])),
            }
        }
        let priority = self.arrivals.fetch_add(1, Ordering::Relaxed);
        let mut batches = Vec::with_capacity(by_fragment.len());
        for (id, offsets) in by_fragment {
            // Offsets within the fragment's files, as row addresses give them.
            let reader = self.fragment(id).await?;
            batches.push(reader.take_as_batch(&offsets, Some(priority)).await.map_err(|e| StoreError::lance(&self.table, e))?);
        }
        Ok(arrow_select::concat::concat_batches(&self.read_schema, &batches)?)
    }
}

/// `addresses` sorted, without repeats: the rows a take returns, in its order.
pub(crate) fn sorted_unique(addresses: &[u64]) -> Vec<u64> {
    let mut sorted = addresses.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted
}

/// Point reads of one table: every column but `dictionary_id`, which is filled in. Lance
/// stores a column with one value per file as a constant page, and taking a row from one
/// costs time linear in the row's position (~3 ms at row 800k), more than all the other
/// columns together.
pub struct PointReads {
    full: arrow_schema::SchemaRef,
    taker: RowTaker,
}

impl PointReads {
    pub fn new(dataset: &Dataset, table: &str) -> Result<Self> {
        let full: arrow_schema::SchemaRef = Arc::new(dataset.schema().into());
        let columns: Vec<&str> = full.fields().iter().map(|f| f.name().as_str()).filter(|&name| name != "dictionary_id").collect();
        Ok(PointReads { taker: RowTaker::new(dataset, table, &columns)?, full })
    }

    /// Opens the table's files now, so that no request pays for it.
    pub async fn open_all(&self) -> Result<()> {
        self.taker.open_all().await
    }

    /// The rows of one dictionary at `addresses`, all columns.
    pub async fn take(&self, dictionary_id: &str, addresses: &[u64]) -> Result<RecordBatch> {
        if addresses.is_empty() {
            return Ok(RecordBatch::new_empty(self.full.clone()));
        }
        let rows = self.taker.take(addresses).await?;
        let ids: arrow_array::ArrayRef = Arc::new(arrow_array::StringArray::from(vec![dictionary_id; rows.num_rows()]));
        let arrays = self.full.fields().iter().map(|field| match field.name().as_str() {
            "dictionary_id" => Ok(ids.clone()),
            name => rows.column_by_name(name).cloned().ok_or_else(|| StoreError::Column { table: self.taker.table().into(), column: name.into(), reason: "missing from a take".into() }),
        });
        Ok(RecordBatch::try_new(self.full.clone(), arrays.collect::<Result<Vec<_>>>()?)?)
    }
}
