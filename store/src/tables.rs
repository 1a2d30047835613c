//! Lance table operations shared by the writer and the reader.

use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchIterator, RecordBatchReader};
use futures::TryStreamExt;

use lance::dataset::builder::DatasetBuilder;
use lance::dataset::{InsertBuilder, WriteMode, WriteParams};
use lance::io::ObjectStoreParams;
use lance::deps::datafusion::physical_plan::SendableRecordBatchStream;
use lance::index::DatasetIndexExt;
use lance::Dataset;
use lance_index::scalar::ScalarIndexParams;
use lance_index::IndexType;

use crate::error::{Result, StoreError};
use crate::location::Location;

/// Rows per Arrow batch handed to Lance.
const WRITE_BATCH_ROWS: usize = 4096;

/// Write parameters with the store's storage options (for a table on object storage).
pub fn write_params(root: &Location, mode: WriteMode) -> WriteParams {
    let options = root.storage_options();
    let store_params = (!options.is_empty()).then(|| ObjectStoreParams { storage_options_accessor: Some(Arc::new(lance::io::StorageOptionsAccessor::with_static_options(options))), ..Default::default() });
    WriteParams { mode, store_params, ..Default::default() }
}

/// Opens the latest version of `table` (on object storage, reading through the local block
/// cache of immutable files, `read_cache`).
pub async fn open_latest(root: &Location, table: &str) -> Result<Dataset> {
    open_uri(root, table, &root.table_uri(table)).await
}

async fn open_uri(root: &Location, table: &str, uri: &str) -> Result<Dataset> {
    let builder = DatasetBuilder::from_uri(uri);
    let builder = match root.read_cache() {
        Some(cache) => builder.with_store_params(ObjectStoreParams {
            object_store_wrapper: Some(cache),
            storage_options_accessor: Some(Arc::new(lance::io::StorageOptionsAccessor::with_static_options(root.storage_options()))),
            ..Default::default()
        }),
        None => builder.with_storage_options(root.storage_options()),
    };
    builder.load().await.map_err(|e| StoreError::lance(table, e))
}

/// A SQL string literal for Lance filters.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

pub async fn open_at(root: &Location, table: &str, version: u64) -> Result<Dataset> {
    checkout(open_latest(root, table).await?, table, version).await
}

/// Opens `version` of `table` for reads only: on a local store as `local_reads` chooses
/// (inline, io_uring or the blocking pool). Never commit through the dataset this returns.
pub async fn open_for_reads(root: &Location, table: &str, version: u64) -> Result<Dataset> {
    let dataset = match root.local_table_path(table) {
        Some(path) => match crate::local_reads::read_target(&path)? {
            (uri, None) => open_uri(root, table, &uri).await?,
            (uri, Some(wrapper)) => {
                let params = ObjectStoreParams { object_store_wrapper: Some(wrapper), ..Default::default() };
                DatasetBuilder::from_uri(&uri).with_store_params(params).load().await.map_err(|e| StoreError::lance(table, e))?
            }
        },
        None => open_latest(root, table).await?,
    };
    checkout(dataset, table, version).await
}

async fn checkout(dataset: Dataset, table: &str, version: u64) -> Result<Dataset> {
    if dataset.version().version == version {
        return Ok(dataset);
    }
    dataset.checkout_version(version).await.map_err(|e| StoreError::lance(table, e))
}

/// One batch as the stream of moderate batches that Lance writes best.
pub fn sliced(batch: RecordBatch) -> impl RecordBatchReader + Send + 'static {
    let batches: Vec<RecordBatch> = (0..batch.num_rows()).step_by(WRITE_BATCH_ROWS).map(|start| batch.slice(start, WRITE_BATCH_ROWS.min(batch.num_rows() - start))).collect();
    RecordBatchIterator::new(batches.into_iter().map(Ok), batch.schema())
}

/// Replaces the rows of some dictionaries in `table` and returns the new version.
/// The rows arrive as a stream, so a table larger than memory can be written.
///
/// `committed` is the version the store's current generation names. Anything written after
/// it (a run that died before publishing) is rolled back first, so a failed run never leaks
/// into the next commit.
pub async fn replace_dictionary_rows(root: &Location, table: &str, committed: Option<u64>, dictionary_ids: &[&str], reader: impl RecordBatchReader + Send + 'static) -> Result<Dataset> {
    let params = prepare_replace(root, table, committed, dictionary_ids).await?;
    Dataset::write(reader, &root.table_uri(table), Some(params)).await.map_err(|e| StoreError::lance(table, e))
}

/// [`replace_dictionary_rows`] with rows that an async stream makes (reading other tables).
pub async fn replace_dictionary_rows_from_stream(root: &Location, table: &str, committed: Option<u64>, dictionary_ids: &[&str], stream: SendableRecordBatchStream) -> Result<Dataset> {
    let params = prepare_replace(root, table, committed, dictionary_ids).await?;
    let target = root.table_uri(table);
    InsertBuilder::new(target.as_str()).with_params(&params).execute_stream(stream).await.map_err(|e| StoreError::lance(table, e))
}

/// Deletes the dictionaries' committed rows and says how to write theirs: appended to the
/// committed version, or as a new table (a first commit, possibly over the debris of a
/// first run that died).
async fn prepare_replace(root: &Location, table: &str, committed: Option<u64>, dictionary_ids: &[&str]) -> Result<WriteParams> {
    match committed {
        Some(version) => {
            let mut dataset = open_for_write(root, table, version).await?;
            delete_dictionaries(&mut dataset, table, dictionary_ids).await?;
            Ok(write_params(root, WriteMode::Append))
        }
        None => Ok(write_params(root, WriteMode::Overwrite)),
    }
}

/// A Lance filter for the rows of these dictionaries.
pub fn of_dictionaries(dictionary_ids: &[&str]) -> String {
    let ids: Vec<String> = dictionary_ids.iter().map(|id| quote(id)).collect();
    format!("dictionary_id IN ({})", ids.join(", "))
}

/// Deletes every row of these dictionaries (a new version).
pub async fn delete_dictionaries(dataset: &mut Dataset, table: &str, dictionary_ids: &[&str]) -> Result<()> {
    dataset.delete(&of_dictionaries(dictionary_ids)).await.map_err(|e| StoreError::lance(table, e))?;
    Ok(())
}

/// A B-tree index on `feature`, so that filtered reads of one feature (labels) do not scan
/// the table.
pub async fn index_feature_column(dataset: &mut Dataset, table: &str) -> Result<()> {
    if dataset.schema().field("feature").is_none() {
        return Ok(());
    }
    dataset.create_index(&["feature"], IndexType::BTree, Some("feature_idx".into()), &ScalarIndexParams::default(), true).await.map_err(|e| StoreError::lance(table, e))?;
    Ok(())
}

/// Rolls `table` back to `committed` if a failed run wrote after it; returns the dataset.
pub async fn open_for_write(root: &Location, table: &str, committed: u64) -> Result<Dataset> {
    let lance_err = |e| StoreError::lance(table, e);
    let mut dataset = open_latest(root, table).await?;
    if dataset.version().version != committed {
        dataset = dataset.checkout_version(committed).await.map_err(lance_err)?;
        dataset.restore().await.map_err(lance_err)?;
    }
    Ok(dataset)
}

/// All rows matching `filter` (all rows if None), with only `columns` if given.
pub async fn scan(dataset: &Dataset, table: &str, filter: Option<&str>, columns: Option<&[&str]>) -> Result<Vec<RecordBatch>> {
    let lance_err = |e| StoreError::lance(table, e);
    let mut scanner = dataset.scan();
    if let Some(filter) = filter {
        scanner.filter(filter).map_err(lance_err)?;
    }
    if let Some(columns) = columns {
        scanner.project(columns).map_err(lance_err)?;
    }
    let stream = scanner.try_into_stream().await.map_err(lance_err)?;
    stream.try_collect().await.map_err(lance_err)
}
