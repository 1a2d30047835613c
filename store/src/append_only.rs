//! Append-only Lance tables outside generations (`labels`, `vectors`): the many small
//! writes clients make. Nothing is updated in place; a write appends rows in one Lance
//! commit, concurrent writers (two servers on one store) are rebased by Lance since appends
//! do not conflict, and readers take rows in commit order (fragment ids grow with each
//! commit), so "the latest row wins" never depends on two hosts' clocks.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow_array::RecordBatch;
use futures::TryStreamExt;
use lance::dataset::{CommitBuilder, InsertBuilder, WriteMode};
use lance::table::format::Fragment;
use lance::Dataset;

use crate::error::{Result, StoreError};
use crate::layout::check_store;
use crate::location::Location;
use crate::tables::{open_latest, write_params};

/// How many times an append retries a commit that lost a race (Lance's default is 20; a
/// burst of writers on one store can need more).
const COMMIT_RETRIES: u32 = 100;
/// ... and for at most this long.
const COMMIT_RETRY_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether the table has been created.
pub(crate) async fn exists(root: &Location, table: &str) -> Result<bool> {
    root.has_any(&format!("{table}.lance/_versions")).await
}

/// Appends `batch` to `table` (creating it on first use) in one Lance commit; returns once
/// the commit is durable.
pub(crate) async fn append(root: &Location, table: &str, batch: RecordBatch) -> Result<()> {
    check_store(root).await?;
    if batch.num_rows() == 0 {
        return Ok(());
    }
    let lance_err = |e| StoreError::lance(table, e);
    if !exists(root, table).await? && create_with(root, table, &batch).await? {
        return Ok(());
    }
    let uri = root.table_uri(table);
    let params = write_params(root, WriteMode::Append);
    let transaction = InsertBuilder::new(uri.as_str()).with_params(&params).execute_uncommitted(vec![batch]).await.map_err(lance_err)?;
    let mut commit = CommitBuilder::new(uri.as_str()).with_max_retries(COMMIT_RETRIES).with_retry_timeout(COMMIT_RETRY_TIMEOUT);
    if let Some(store_params) = params.store_params.clone() {
        commit = commit.with_store_params(store_params);
    }
    commit.execute(transaction).await.map_err(lance_err)?;
    Ok(())
}

/// Creates the table holding `batch`, unless another writer creates it first; returns
/// whether this call created it. Two Lance creates racing on one local path could both
/// commit (the second as an overwrite of the first), so locally the table is written in a
/// private folder and renamed into place, and renaming onto an existing table fails. On
/// object storage Lance creates version 1 with a conditional put, but a create whose commit
/// finds the table already there is committed as an overwrite of it (dropping the other
/// creator's acknowledged rows) unless it is committed strictly, without retries: then it
/// fails, and the caller appends.
async fn create_with(root: &Location, table: &str, batch: &RecordBatch) -> Result<bool> {
    let params = write_params(root, WriteMode::Create);
    let Some(local) = root.local_path() else {
        let uri = root.table_uri(table);
        let created = async {
            // Refused with "already exists" when another writer created the table after
            // this one looked; the commit below fails the same way if one does after this.
            let transaction = InsertBuilder::new(uri.as_str()).with_params(&params).execute_uncommitted(vec![batch.clone()]).await?;
            // The settings InsertBuilder's own commit takes from the write parameters.
            let mut commit = CommitBuilder::new(uri.as_str())
                .with_max_retries(0)
                .with_storage_format(params.data_storage_version.unwrap_or_default())
                .enable_v2_manifest_paths(params.enable_v2_manifest_paths)
                .use_stable_row_ids(params.enable_stable_row_ids);
            if let Some(store_params) = params.store_params.clone() {
                commit = commit.with_store_params(store_params);
            }
            commit.execute(transaction).await
        };
        return match created.await {
            Ok(_) => Ok(true),
            Err(_) if exists(root, table).await? => Ok(false),
            Err(e) => Err(StoreError::lance(table, e)),
        };
    };
    // Unique to this call: two creators that shared a folder (the clock alone named it, and
    // concurrent calls read the same nanosecond) wrote into one table, and the loser's
    // clean-up deleted the winner's files before its rename.
    static CREATES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CREATES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let private = local.join(format!("{table}.lance.creating-{}-{call}-{nanos}", std::process::id()));
    let uri = private.to_string_lossy().into_owned();
    InsertBuilder::new(uri.as_str()).with_params(&params).execute(vec![batch.clone()]).await.map_err(|e| StoreError::lance(table, e))?;
    let path = local.join(format!("{table}.lance"));
    match std::fs::rename(&private, &path) {
        Ok(()) => Ok(true),
        Err(_) if path.join("_versions").is_dir() => {
            std::fs::remove_dir_all(&private).map_err(|e| StoreError::io(&private, e))?;
            Ok(false)
        }
        Err(e) => Err(StoreError::io(&path, e)),
    }
}

/// Opens the table (None before its first write).
pub(crate) async fn open(root: &Location, table: &str) -> Result<Option<Dataset>> {
    if !exists(root, table).await? {
        return Ok(None);
    }
    Ok(Some(open_latest(root, table).await?))
}

/// The rows of these fragments, in the order given (commit order), as record batches.
pub(crate) async fn read_in_order(table: &str, dataset: &Dataset, fragments: Vec<Fragment>, filter: Option<&str>) -> Result<Vec<RecordBatch>> {
    if fragments.is_empty() {
        return Ok(Vec::new());
    }
    let lance_err = |e| StoreError::lance(table, e);
    let mut scanner = dataset.scan();
    scanner.with_fragments(fragments);
    scanner.scan_in_order(true);
    if let Some(filter) = filter {
        scanner.filter(filter).map_err(lance_err)?;
    }
    scanner.try_into_stream().await.map_err(lance_err)?.try_collect().await.map_err(lance_err)
}

/// The dataset's fragments in commit order (fragment ids grow with every commit).
pub(crate) fn sorted_fragments(dataset: &Dataset) -> BTreeMap<u64, Fragment> {
    dataset.get_fragments().into_iter().map(|f| (f.id() as u64, f.metadata().clone())).collect()
}

/// Every row of the table in commit order (empty before its first write).
pub(crate) async fn read_all(root: &Location, table: &str, filter: Option<&str>) -> Result<Vec<RecordBatch>> {
    match open(root, table).await? {
        Some(dataset) => read_in_order(table, &dataset, sorted_fragments(&dataset).into_values().collect(), filter).await,
        None => Ok(Vec::new()),
    }
}
