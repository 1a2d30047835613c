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
//! ```
//! A generation names one Lance version per table: readers open exactly those versions, so
//! a run that fails half-way (or is still running) is never visible.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};

pub const MARKER: &str = "LOUPE_STORE";
const FORMAT: &str = "loupe-store";
/// 2: generations name a `dashboards` table (one record per feature). Stores of version 1
/// are read as they are: their dashboards are assembled from the columnar tables, and their
/// next commit adds the table for the dictionaries it writes.
const FORMAT_VERSION: u32 = 2;
/// The oldest format this build reads and writes.
const OLDEST_FORMAT_VERSION: u32 = 1;

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

pub fn table_path(root: &Path, table: &str) -> PathBuf {
    root.join(format!("{table}.lance"))
}

/// Checks that `root` is a store (for readers).
pub fn check_store(root: &Path) -> Result<()> {
    let not_a_store = |reason: String| StoreError::NotAStore { path: root.into(), reason };
    if !root.is_dir() {
        return Err(not_a_store("no such directory".into()));
    }
    let marker_path = root.join(MARKER);
    let text = std::fs::read_to_string(&marker_path).map_err(|_| not_a_store(format!("no {MARKER} file (create a store with `loupe index --store DIR`)")))?;
    let marker: Marker = serde_json::from_str(&text).map_err(|e| not_a_store(format!("{MARKER} is not valid: {e}")))?;
    if marker.format != FORMAT {
        return Err(not_a_store(format!("{MARKER} says format {:?}, expected {FORMAT:?}", marker.format)));
    }
    if marker.version > FORMAT_VERSION {
        return Err(not_a_store(format!(
            "{MARKER} says format version {}, newer than this loupe reads ({OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}): upgrade loupe, or re-index into a new store with this one",
            marker.version
        )));
    }
    if marker.version < OLDEST_FORMAT_VERSION {
        return Err(not_a_store(format!("{MARKER} says format version {}, older than this loupe reads ({OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}): re-index into a new store", marker.version)));
    }
    Ok(())
}

/// Makes `root` a store if it is new or empty; refuses a non-empty directory that is not one.
pub fn create_or_check(root: &Path) -> Result<()> {
    if root.join(MARKER).exists() {
        return check_store(root);
    }
    if root.exists() {
        let mut entries = std::fs::read_dir(root).map_err(|e| StoreError::io(root, e))?;
        if entries.next().is_some() {
            return Err(StoreError::NotAStore { path: root.into(), reason: format!("the directory is not empty and has no {MARKER} file; refusing to write into it (give a new or empty directory)") });
        }
    }
    std::fs::create_dir_all(root.join("generations")).map_err(|e| StoreError::io(root, e))?;
    let marker = serde_json::to_string_pretty(&Marker { format: FORMAT.into(), version: FORMAT_VERSION }).expect("marker serializes");
    write_atomic(&root.join(MARKER), marker.as_bytes())
}

/// Marks a store of an older format as this one's, once a commit wrote what it adds.
pub fn upgrade_marker(root: &Path) -> Result<()> {
    let marker_path = root.join(MARKER);
    let text = std::fs::read_to_string(&marker_path).map_err(|e| StoreError::io(&marker_path, e))?;
    let marker: Marker = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt { path: marker_path.clone(), reason: e.to_string() })?;
    if marker.version >= FORMAT_VERSION {
        return Ok(());
    }
    let marker = serde_json::to_string_pretty(&Marker { format: FORMAT.into(), version: FORMAT_VERSION }).expect("marker serializes");
    write_atomic(&marker_path, marker.as_bytes())
}

/// The last committed generation, or None for a store with no commit yet.
pub fn current(root: &Path) -> Result<Option<Generation>> {
    let path = root.join("CURRENT");
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| StoreError::Corrupt { path, reason: format!("not a generation record: {e}") }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(path, e)),
    }
}

pub fn generation(root: &Path, generation: u64) -> Result<Generation> {
    let path = root.join("generations").join(format!("{generation}.json"));
    let latest = current(root)?.ok_or_else(|| StoreError::Empty { path: root.into() })?;
    let text = std::fs::read_to_string(&path).map_err(|_| StoreError::NoSuchGeneration { path: root.into(), generation, latest: latest.generation })?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt { path, reason: format!("not a generation record: {e}") })
}

/// Publishes `generation`: its record first, then CURRENT by atomic rename.
pub fn publish(root: &Path, generation: &Generation) -> Result<()> {
    let text = serde_json::to_string_pretty(generation).expect("generation serializes");
    write_atomic(&root.join("generations").join(format!("{}.json", generation.generation)), text.as_bytes())?;
    write_atomic(&root.join("CURRENT"), text.as_bytes())
}

/// Writes through a temporary file, fsync and rename: readers see the old or the new file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
    file.write_all(bytes).and_then(|_| file.sync_all()).map_err(|e| StoreError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| StoreError::io(path, e))?;
    if let Some(parent) = path.parent() {
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// The exclusive writer lock; released when dropped (or when the process dies).
pub struct WriterLock {
    _file: File,
}

pub fn lock_writer(root: &Path) -> Result<WriterLock> {
    let path = root.join("writer.lock");
    let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(|e| StoreError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(WriterLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked { path: root.into() }),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::io(path, e)),
    }
}

pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    rfc3339(secs)
}

/// `secs` since the Unix epoch as RFC 3339 (UTC).
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let (h, m, s) = ((secs % 86_400) / 3600, (secs % 3600) / 60, secs % 60);
    let (y, mo, d) = civil_from_days(days as i64);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_419), (2025, 11, 27));
    }

    #[test]
    fn refuses_foreign_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data.csv"), "a,b").unwrap();
        let err = create_or_check(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not empty") && err.contains(MARKER), "{err}");
        let err = check_store(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a loupe store"), "{err}");
        std::fs::write(dir.path().join(MARKER), "{garbage").unwrap();
        assert!(check_store(dir.path()).unwrap_err().to_string().contains("not valid"));
    }
}
