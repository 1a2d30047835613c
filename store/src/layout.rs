//! The store's directory: a marker file, the committed generations, and the writer lock.
//!
//! ```text
//! ROOT/LOUPE_STORE            marker: this directory is a loupe store (format version)
//! ROOT/CURRENT                the last committed generation (written by atomic rename)
//! ROOT/generations/N.json     every committed generation, for reading old versions
//! ROOT/{dictionaries,features,examples}.lance
//! ROOT/dashboards.lance       each feature's encoded dashboard (format version 2)
//! ROOT/decoders_{width}.lance unit decoder vectors (IVF index when large), for SimilarFeatures
//! ROOT/search/gN/             the tantivy index of generation N
//! ROOT/labels.lance           append-only, outside generations: every label write
//! ROOT/vectors.lance          append-only, outside generations: named vectors (DiffMean)
//! ROOT/writer.lock            held (flock) by the one writer that commits
//! ROOT/jobs/KEY/              checkpoints of resumable index jobs
//! ```
//! The same keys under `s3://bucket/prefix` for a store on object storage, with two
//! differences: a generation is published by creating `generations/N.json` only if absent
//! (no `CURRENT`: the highest record is current), and `writer.lock` is a lease object with
//! an expiry (see `lease`). The tantivy index is built locally, uploaded as an immutable
//! folder per generation, and downloaded by readers into a local cache.
//! A generation names one Lance version per table: readers open exactly those versions, so
//! a run that fails half-way (or is still running) is never visible.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
pub use crate::clock::{now_rfc3339, rfc3339};
pub use crate::lease::{lock_writer, lock_writer_with_term, WriterLock};
pub use crate::location::{write_atomic, Location};

pub const MARKER: &str = "LOUPE_STORE";
const FORMAT: &str = "loupe-store";
/// 2: generations name a `dashboards` table (one record per feature). Stores of version 1
/// are read as they are: their dashboards are assembled from the columnar tables, and their
/// next commit adds the table for the dictionaries it writes.
const FORMAT_VERSION: u32 = 2;
/// The oldest format this build reads and writes.
const OLDEST_FORMAT_VERSION: u32 = 1;
const CURRENT: &str = "CURRENT";
const GENERATIONS: &str = "generations";

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    format: String,
    version: u32,
}

/// One committed state of the whole store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub generation: u64,
    /// Lance version of each table.
    pub versions: BTreeMap<String, u64>,
    /// Folder of the tantivy index, relative to the root.
    pub search: String,
    pub committed_at: String,
    /// What this commit did, e.g. "index blocks.9.hook_resid_post-topk-4608".
    pub message: String,
}

fn generation_key(generation: u64) -> String {
    format!("{GENERATIONS}/{generation}.json")
}

fn not_a_store(root: &Location, reason: String) -> StoreError {
    StoreError::NotAStore { path: root.to_string(), reason }
}

/// Checks that `root` is a store (for readers).
pub async fn check_store(root: &Location) -> Result<()> {
    if root.local_path().is_some_and(|p| !p.is_dir()) {
        return Err(not_a_store(root, "no such directory".into()));
    }
    let Some(bytes) = root.get(MARKER).await? else {
        return Err(not_a_store(root, format!("no {MARKER} file (create a store with `loupe index --store {root}`)")));
    };
    let marker: Marker = serde_json::from_slice(&bytes).map_err(|e| not_a_store(root, format!("{MARKER} is not valid: {e}")))?;
    if marker.format != FORMAT {
        return Err(not_a_store(root, format!("{MARKER} says format {:?}, expected {FORMAT:?}", marker.format)));
    }
    if marker.version > FORMAT_VERSION {
        return Err(not_a_store(
            root,
            format!(
                "{MARKER} says format version {}, newer than this loupe reads ({OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}): upgrade loupe, or re-index into a new store with this one",
                marker.version
            ),
        ));
    }
    if marker.version < OLDEST_FORMAT_VERSION {
        return Err(not_a_store(root, format!("{MARKER} says format version {}, older than this loupe reads ({OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}): re-index into a new store", marker.version)));
    }
    Ok(())
}

/// Makes `root` a store if it is new or empty; refuses a non-empty folder (or prefix) that
/// is not one. Safe when several jobs start at once on a new store (the shards of an
/// Indexed Job): the marker is created only if absent, and a store another job is creating
/// right now is waited for rather than taken for a foreign folder.
pub async fn create_or_check(root: &Location) -> Result<()> {
    if root.get(MARKER).await?.is_some() {
        return check_store(root).await;
    }
    let occupied = match root.local_path() {
        Some(path) => path.exists() && std::fs::read_dir(path).map_err(|e| StoreError::io(path, e))?.next().is_some(),
        None => !root.list("").await?.is_empty(),
    };
    if occupied {
        // Another job may be creating it (its marker is its first write).
        for _ in 0..20 {
            if root.get(MARKER).await?.is_some() {
                return check_store(root).await;
            }
            // A blocking pause (callers may have no timer): only a foreign folder, or a store
            // created this instant, comes here.
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        return Err(not_a_store(root, format!("it is not empty and has no {MARKER} file; refusing to write into it (give a new or empty folder or prefix)")));
    }
    let marker = serde_json::to_vec_pretty(&Marker { format: FORMAT.into(), version: FORMAT_VERSION }).expect("marker serializes");
    if !root.put_new(MARKER, marker).await? {
        // Created by another job in the meantime.
        return check_store(root).await;
    }
    if let Some(path) = root.local_path() {
        std::fs::create_dir_all(path.join(GENERATIONS)).map_err(|e| StoreError::io(path, e))?;
    }
    Ok(())
}

/// Marks a store of an older format as this one's, once a commit wrote what it adds.
pub async fn upgrade_marker(root: &Location) -> Result<()> {
    let bytes = root.get(MARKER).await?.ok_or_else(|| not_a_store(root, format!("no {MARKER} file")))?;
    let marker: Marker = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt { path: format!("{root}/{MARKER}"), reason: e.to_string() })?;
    if marker.version >= FORMAT_VERSION {
        return Ok(());
    }
    let marker = serde_json::to_vec_pretty(&Marker { format: FORMAT.into(), version: FORMAT_VERSION }).expect("marker serializes");
    root.put(MARKER, marker).await
}

fn parse_generation(root: &Location, key: &str, bytes: &[u8]) -> Result<Generation> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { path: format!("{root}/{key}"), reason: format!("not a generation record: {e}") })
}

/// The last committed generation, or None for a store with no commit yet.
///
/// A local store names it in `CURRENT` (replaced by rename). Object storage has no rename:
/// there a generation is published by creating its record (`If-None-Match: *`), and the
/// current one is the highest record listed.
pub async fn current(root: &Location) -> Result<Option<Generation>> {
    if root.local_path().is_some() {
        return match root.get(CURRENT).await? {
            Some(bytes) => parse_generation(root, CURRENT, &bytes).map(Some),
            None => Ok(None),
        };
    }
    let latest = root.list(GENERATIONS).await?.iter().filter_map(|name| name.strip_suffix(".json")?.parse::<u64>().ok()).max();
    match latest {
        Some(n) => {
            let key = generation_key(n);
            let bytes = root.get(&key).await?.ok_or_else(|| StoreError::Corrupt { path: format!("{root}/{key}"), reason: "listed but gone".into() })?;
            parse_generation(root, &key, &bytes).map(Some)
        }
        None => Ok(None),
    }
}

pub async fn generation(root: &Location, generation: u64) -> Result<Generation> {
    let key = generation_key(generation);
    let latest = current(root).await?.ok_or_else(|| StoreError::Empty { path: root.to_string() })?;
    let bytes = root.get(&key).await?.ok_or_else(|| StoreError::NoSuchGeneration { path: root.to_string(), generation, latest: latest.generation })?;
    parse_generation(root, &key, &bytes)
}

/// Publishes `generation`: its record, created only if no other writer published the same
/// number (the commit point on object storage), then `CURRENT` on a local store.
pub async fn publish(root: &Location, generation: &Generation) -> Result<()> {
    let text = serde_json::to_vec_pretty(generation).expect("generation serializes");
    let key = generation_key(generation.generation);
    if !root.put_new(&key, text.clone()).await? {
        return Err(StoreError::Conflict { path: root.to_string(), reason: format!("generation {} was published by another writer first; nothing of this commit is visible, run it again", generation.generation) });
    }
    if root.local_path().is_some() {
        root.put(CURRENT, text).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_starting_together_on_a_new_store_all_open_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = Location::local(&dir.path().join("store"));
        let starts: Vec<_> = (0..8).map(|_| {
            let root = root.clone();
            std::thread::spawn(move || futures::executor::block_on(create_or_check(&root)))
        }).collect();
        for start in starts {
            start.join().unwrap().unwrap();
        }
        futures::executor::block_on(check_store(&root)).unwrap();
    }

    #[test]
    fn refuses_foreign_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = Location::local(dir.path());
        std::fs::write(dir.path().join("data.csv"), "a,b").unwrap();
        use futures::executor::block_on;
        let err = block_on(create_or_check(&root)).unwrap_err().to_string();
        assert!(err.contains("not empty") && err.contains(MARKER), "{err}");
        let err = block_on(check_store(&root)).unwrap_err().to_string();
        assert!(err.contains("not a loupe store"), "{err}");
        std::fs::write(dir.path().join(MARKER), "{garbage").unwrap();
        assert!(block_on(check_store(&root)).unwrap_err().to_string().contains("not valid"));
    }
}
