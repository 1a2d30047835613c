//! How a reader reads a local store's generation tables: through io_uring where the kernel
//! allows it and the machine has cores to spare for it.
//!
//! Lance reads a local file on tokio's blocking pool (`lance-io`'s `LocalObjectReader`): each
//! read of a dashboard is a hop to a pool thread and back. Under 64 concurrent GetFeature
//! calls on the 1M-feature store, 40% of the server's samples (`perf record`) were threads
//! going to sleep and waking each other. Lance's `file+uring` scheme hands reads to two
//! threads that own an io_uring each and take every read waiting at one wake-up.
//!
//! But those threads spin (`try_recv` in a loop) for as long as any read is in flight, so
//! each can hold a core. On the 2-core machine that is half or all of the server: in 16
//! open-loop GetFeature runs at half load, io_uring's p99 passed 200 ms four times (211-542
//! ms), once as a standing queue that did not drain (p50 76 ms), against a worst of 55 ms
//! in the 12 blocking-pool runs alternated with them; `perf` of one server under load had
//! half its samples in the ring threads' clock reads. The standing queue is io_uring's own:
//! reads in flight keep the threads spinning, which keeps the queue. (Bursts of ~200 ms
//! p99 with a p50 under 2 ms came later on the blocking pool too: the machine's.) `auto`
//! therefore picks io_uring only where the ring threads' two cores are at most a quarter of
//! the machine ([`URING_MIN_CORES`]).
//!
//! Only the reader's tables, which a generation never changes, are opened this way. Writers
//! keep Lance's `file` scheme, which picks the commit handler (and so the atomicity) of a
//! local store. Where io_uring is unavailable (a kernel before 5.1, or a container whose
//! seccomp profile refuses `io_uring_setup`, as Docker's default does) reads stay on the
//! blocking pool. `LOUPE_LOCAL_READS` chooses: `auto` (default), `uring` (an error where it is
//! unavailable) or `blocking`.

use std::path::Path;
use std::sync::OnceLock;

use crate::error::{Result, StoreError};

const SETTING: &str = "LOUPE_LOCAL_READS";

/// The fewest cores on which `auto` reads through io_uring: Lance's two ring threads may
/// each hold one (see the module comment).
pub const URING_MIN_CORES: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalReads {
    /// Lance's `file+uring` reader.
    Uring,
    /// Lance's `file` reader, on tokio's blocking pool.
    Blocking,
}

/// The URI a reader opens a local table at.
pub(crate) fn read_uri(path: &Path) -> Result<String> {
    let plain = || path.to_string_lossy().into_owned();
    if local_reads()? == LocalReads::Blocking {
        return Ok(plain());
    }
    Ok(uring_uri(path).unwrap_or_else(plain))
}

/// `path` as a `file+uring` URL (percent-encoded, so that a folder name with spaces or `%`
/// reaches Lance unchanged); None for a relative path.
fn uring_uri(path: &Path) -> Option<String> {
    let url = url::Url::from_file_path(path).ok()?;
    Some(format!("file+uring{}", &url.as_str()["file".len()..]))
}

/// How this process reads local tables (decided once, from `LOUPE_LOCAL_READS` and whether
/// the kernel lets it set up a ring).
pub fn local_reads() -> Result<LocalReads> {
    static CHOSEN: OnceLock<std::result::Result<LocalReads, String>> = OnceLock::new();
    let chosen = CHOSEN.get_or_init(|| {
        let asked = std::env::var(SETTING).unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chosen = choose(&asked, cores, uring_available);
        match &chosen {
            Ok(reads) => tracing::info!(?reads, "local store reads"),
            Err(reason) => tracing::error!(%reason, "local store reads"),
        }
        chosen
    });
    chosen.clone().map_err(|reason| StoreError::Setting { name: SETTING, reason })
}

fn choose(asked: &str, cores: usize, available: impl FnOnce() -> std::result::Result<(), String>) -> std::result::Result<LocalReads, String> {
    match asked.trim() {
        "" | "auto" if cores < URING_MIN_CORES => Ok(LocalReads::Blocking),
        "" | "auto" => Ok(available().map_or(LocalReads::Blocking, |()| LocalReads::Uring)),
        "uring" => available().map(|()| LocalReads::Uring).map_err(|why| format!("uring was asked for, but io_uring is unavailable here ({why}); set it to auto or blocking")),
        "blocking" => Ok(LocalReads::Blocking),
        other => Err(format!("expected auto, uring or blocking, got {other:?}")),
    }
}

/// Whether a ring of the depth Lance asks for can be set up (Lance's threads log and give up
/// where it cannot, and every read would then fail).
#[cfg(target_os = "linux")]
fn uring_available() -> std::result::Result<(), String> {
    // Lance's default queue depth (`lance_io::uring::DEFAULT_URING_QUEUE_DEPTH`), or its setting.
    let depth = std::env::var("LANCE_URING_QUEUE_DEPTH").ok().and_then(|d| d.parse().ok()).unwrap_or(16 * 1024);
    io_uring::IoUring::new(depth).map(drop).map_err(|e| e.to_string())
}

#[cfg(not(target_os = "linux"))]
fn uring_available() -> std::result::Result<(), String> {
    Err("io_uring is Linux only".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_picks_the_reader_and_names_what_it_expects() {
        let yes = || Ok(());
        let no = || Err("Operation not permitted (os error 1)".to_string());
        let many = URING_MIN_CORES;
        assert_eq!(choose("", many, yes), Ok(LocalReads::Uring));
        assert_eq!(choose("auto", many, no), Ok(LocalReads::Blocking));
        assert_eq!(choose("blocking", many, yes), Ok(LocalReads::Blocking));
        assert_eq!(choose("uring", many, yes), Ok(LocalReads::Uring));
        assert!(choose("uring", many, no).unwrap_err().contains("Operation not permitted"));
        assert_eq!(choose("fast", many, yes), Err("expected auto, uring or blocking, got \"fast\"".into()));
    }

    #[test]
    fn auto_leaves_small_machines_on_the_blocking_pool_and_uring_still_overrides() {
        let yes = || Ok(());
        assert_eq!(choose("auto", URING_MIN_CORES - 1, yes), Ok(LocalReads::Blocking));
        assert_eq!(choose("", 2, yes), Ok(LocalReads::Blocking));
        assert_eq!(choose("uring", 2, yes), Ok(LocalReads::Uring));
    }

    /// `auto` keeps this machine (2 cores) on the blocking pool, so the io_uring reader is
    /// checked here directly: a table in a folder whose name a URL must escape reads back.
    #[tokio::test]
    async fn a_table_in_an_odd_folder_reads_back_through_io_uring() {
        use arrow_array::{ArrayRef, RecordBatch, RecordBatchIterator, StringArray, UInt32Array};
        use std::sync::Arc;
        if let Err(why) = uring_available() {
            eprintln!("io_uring is unavailable here ({why}); the blocking reader is the only one");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a store %20 #1 ?x").join("t.lance");
        let ids: ArrayRef = Arc::new(UInt32Array::from_iter_values(0..5000));
        let texts: ArrayRef = Arc::new(StringArray::from_iter_values((0..5000).map(|i| format!("row {i}"))));
        let batch = RecordBatch::try_from_iter([("id", ids), ("text", texts)]).unwrap();
        let rows = RecordBatchIterator::new([Ok(batch.clone())], batch.schema());
        lance::Dataset::write(rows, path.to_str().unwrap(), None).await.unwrap();
        let dataset = lance::Dataset::open(&uring_uri(&path).unwrap()).await.unwrap();
        assert_eq!(dataset.scan().try_into_batch().await.unwrap(), batch);
        let taken = dataset.take(&[4999, 7, 2500], dataset.schema().clone()).await.unwrap();
        let texts = taken.column_by_name("text").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(texts.iter().flatten().collect::<Vec<_>>(), ["row 4999", "row 7", "row 2500"]);
    }

    #[test]
    fn uring_uris_keep_odd_folder_names() {
        assert_eq!(uring_uri(Path::new("/tmp/a b%c/t.lance")).unwrap(), "file+uring:///tmp/a%20b%25c/t.lance");
        assert_eq!(uring_uri(Path::new("relative/t.lance")), None);
    }
}
