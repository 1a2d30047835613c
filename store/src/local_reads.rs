//! How a reader reads a local store's generation tables: on the asking thread when the bytes
//! are in the page cache (`inline`, see `inline_reads.rs`), through io_uring where the kernel
//! allows it and the machine has cores to spare for it, or on tokio's blocking pool.
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
//! the machine ([`URING_MIN_CORES`]), and below that reads inline: page-cached bytes with
//! no hop at all, and only the rest on the blocking pool.
//!
//! Only the reader's tables, which a generation never changes, are opened this way. Writers
//! keep Lance's `file` scheme, which picks the commit handler (and so the atomicity) of a
//! local store. Where io_uring is unavailable (a kernel before 5.1, or a container whose
//! seccomp profile refuses `io_uring_setup`, as Docker's default does) `auto` reads inline.
//! `LOUPE_LOCAL_READS` chooses: `auto` (default), `inline`, `uring` (an error where it is
//! unavailable) or `blocking` (Lance's own local reader).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use lance::io::WrappingObjectStore;

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
    /// Page-cached bytes read on the asking thread, the rest on the blocking pool.
    Inline,
}

/// Where a reader opens a local table: its URI, and the wrapper of the object store under it.
pub(crate) fn read_target(path: &Path) -> Result<(String, Option<Arc<dyn WrappingObjectStore>>)> {
    let plain = || (path.to_string_lossy().into_owned(), None);
    Ok(match local_reads()? {
        LocalReads::Blocking => plain(),
        LocalReads::Uring => scheme_uri("file+uring", path).map_or_else(plain, |uri| (uri, None)),
        LocalReads::Inline => match scheme_uri("file-object-store", path) {
            Some(uri) => (uri, Some(Arc::new(crate::inline_reads::InlineReads) as Arc<dyn WrappingObjectStore>)),
            None => plain(),
        },
    })
}

/// `path` as a URL of `scheme` (percent-encoded, so that a folder name with spaces or `%`
/// reaches Lance unchanged); None for a relative path.
fn scheme_uri(scheme: &str, path: &Path) -> Option<String> {
    let url = url::Url::from_file_path(path).ok()?;
    Some(format!("{scheme}{}", &url.as_str()["file".len()..]))
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
        "" | "auto" if cores < URING_MIN_CORES => Ok(LocalReads::Inline),
        "" | "auto" => Ok(available().map_or(LocalReads::Inline, |()| LocalReads::Uring)),
        "uring" => available().map(|()| LocalReads::Uring).map_err(|why| format!("uring was asked for, but io_uring is unavailable here ({why}); set it to auto, inline or blocking")),
        "inline" => Ok(LocalReads::Inline),
        "blocking" => Ok(LocalReads::Blocking),
        other => Err(format!("expected auto, inline, uring or blocking, got {other:?}")),
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
        assert_eq!(choose("auto", many, no), Ok(LocalReads::Inline));
        assert_eq!(choose("blocking", many, yes), Ok(LocalReads::Blocking));
        assert_eq!(choose("inline", many, yes), Ok(LocalReads::Inline));
        assert_eq!(choose("uring", many, yes), Ok(LocalReads::Uring));
        assert!(choose("uring", many, no).unwrap_err().contains("Operation not permitted"));
        assert_eq!(choose("fast", many, yes), Err("expected auto, inline, uring or blocking, got \"fast\"".into()));
    }

    #[test]
    fn auto_reads_inline_on_small_machines_and_uring_still_overrides() {
        let yes = || Ok(());
        assert_eq!(choose("auto", URING_MIN_CORES - 1, yes), Ok(LocalReads::Inline));
        assert_eq!(choose("", 2, yes), Ok(LocalReads::Inline));
        assert_eq!(choose("uring", 2, yes), Ok(LocalReads::Uring));
        assert_eq!(choose("blocking", 2, yes), Ok(LocalReads::Blocking));
    }

    /// `auto` reads inline on this machine (2 cores), so the io_uring reader is
    /// checked here directly: a table in a folder whose name a URL must escape reads back.
    #[tokio::test]
    async fn a_table_in_an_odd_folder_reads_back_through_io_uring() {
        if let Err(why) = uring_available() {
            eprintln!("io_uring is unavailable here ({why}); the blocking reader is the only one");
            return;
        }
        let (_dir, path, batch) = table_in_an_odd_folder().await;
        let dataset = lance::Dataset::open(&scheme_uri("file+uring", &path).unwrap()).await.unwrap();
        assert_reads_back(&dataset, &batch).await;
    }

    /// The same table read back through the inline reader (`file-object-store://` under
    /// `InlineReads`).
    #[tokio::test]
    async fn a_table_in_an_odd_folder_reads_back_inline() {
        use lance::dataset::builder::DatasetBuilder;
        use lance::io::ObjectStoreParams;
        let (_dir, path, batch) = table_in_an_odd_folder().await;
        let uri = scheme_uri("file-object-store", &path).unwrap();
        let wrapper: Arc<dyn WrappingObjectStore> = Arc::new(crate::inline_reads::InlineReads);
        let params = ObjectStoreParams { object_store_wrapper: Some(wrapper), ..Default::default() };
        let dataset = DatasetBuilder::from_uri(&uri).with_store_params(params).load().await.unwrap();
        assert_reads_back(&dataset, &batch).await;
    }

    /// A 5,000-row Lance table written in a folder whose name a URL must escape.
    async fn table_in_an_odd_folder() -> (tempfile::TempDir, std::path::PathBuf, arrow_array::RecordBatch) {
        use arrow_array::{ArrayRef, RecordBatch, RecordBatchIterator, StringArray, UInt32Array};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a store %20 #1 ?x").join("t.lance");
        let ids: ArrayRef = Arc::new(UInt32Array::from_iter_values(0..5000));
        let texts: ArrayRef = Arc::new(StringArray::from_iter_values((0..5000).map(|i| format!("row {i}"))));
        let batch = RecordBatch::try_from_iter([("id", ids), ("text", texts)]).unwrap();
        let rows = RecordBatchIterator::new([Ok(batch.clone())], batch.schema());
        lance::Dataset::write(rows, path.to_str().unwrap(), None).await.unwrap();
        (dir, path, batch)
    }

    /// A scan gives back `batch`, and a take the rows asked for, in three places.
    async fn assert_reads_back(dataset: &lance::Dataset, batch: &arrow_array::RecordBatch) {
        use arrow_array::StringArray;
        assert_eq!(&dataset.scan().try_into_batch().await.unwrap(), batch);
        let taken = dataset.take(&[4999, 7, 2500], dataset.schema().clone()).await.unwrap();
        let texts = taken.column_by_name("text").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(texts.iter().flatten().collect::<Vec<_>>(), ["row 4999", "row 7", "row 2500"]);
    }

    #[test]
    fn uris_keep_odd_folder_names() {
        assert_eq!(scheme_uri("file+uring", Path::new("/tmp/a b%c/t.lance")).unwrap(), "file+uring:///tmp/a%20b%25c/t.lance");
        assert_eq!(scheme_uri("file-object-store", Path::new("/tmp/a b/t.lance")).unwrap(), "file-object-store:///tmp/a%20b/t.lance");
        assert_eq!(scheme_uri("file+uring", Path::new("relative/t.lance")), None);
    }
}
