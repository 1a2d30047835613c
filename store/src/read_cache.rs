//! A local disk cache under Lance's reads of a store on object storage.
//!
//! Lance never rewrites a data, index or deletion file: each commit writes new ones (only
//! manifests and listings change, and those are not cached). So byte ranges of those files
//! can be kept on local disk and served from there for as long as the file exists, with no
//! invalidation. Files are cached in aligned blocks ([`BLOCK`]), fetched on first touch: a
//! point read of a dashboard costs one block of its data file once, then a local read.
//! The folder is bounded (`LOUPE_S3_READ_CACHE_BYTES`, default [`DEFAULT_LIMIT`]): past the
//! bound, the oldest blocks are removed (first in, first out) down to 80% of it.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use lance::io::WrappingObjectStore;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload,
    PutResult,
};

/// Bytes per cached block.
const BLOCK: u64 = 1 << 20;
/// The cache folder's bound unless `LOUPE_S3_READ_CACHE_BYTES` says otherwise.
const DEFAULT_LIMIT: u64 = 8 << 30;

/// Wraps Lance's object store for one store root with a block cache in `dir`.
#[derive(Debug)]
pub struct ReadCache {
    dir: PathBuf,
    budget: Arc<Budget>,
}

impl ReadCache {
    pub fn new(dir: PathBuf) -> Arc<Self> {
        let limit = std::env::var("LOUPE_S3_READ_CACHE_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_LIMIT);
        Self::with_limit(dir, limit)
    }

    pub fn with_limit(dir: PathBuf, limit: u64) -> Arc<Self> {
        let used = block_files(&dir).iter().map(|(_, _, len)| len).sum();
        Arc::new(ReadCache { budget: Arc::new(Budget { dir: dir.clone(), limit, used: AtomicU64::new(used), evicting: AtomicBool::new(false) }), dir })
    }
}

/// How much of the bound the folder uses, and the one eviction running at a time.
#[derive(Debug)]
struct Budget {
    dir: PathBuf,
    limit: u64,
    used: AtomicU64,
    evicting: AtomicBool,
}

impl Budget {
    fn added(self: &Arc<Self>, bytes: u64) {
        if self.used.fetch_add(bytes, Ordering::Relaxed) + bytes <= self.limit || self.evicting.swap(true, Ordering::AcqRel) {
            return;
        }
        let budget = self.clone();
        // Off the read path: a scan of the folder and some deletions.
        std::thread::spawn(move || loop {
            budget.evict();
            budget.evicting.store(false, Ordering::Release);
            // Blocks written while it ran may have crossed the bound again.
            if budget.used.load(Ordering::Relaxed) <= budget.limit || budget.evicting.swap(true, Ordering::AcqRel) {
                return;
            }
        });
    }

    fn evict(&self) {
        let mut files = block_files(&self.dir);
        files.sort_by_key(|(_, modified, _)| *modified);
        let mut used: u64 = files.iter().map(|(_, _, len)| len).sum();
        let target = self.limit / 5 * 4;
        for (path, _, len) in files {
            if used <= target {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                used -= len;
            }
        }
        self.used.store(used, Ordering::Relaxed);
    }
}

/// Every cached block under `dir`: path, when it was written, bytes.
fn block_files(dir: &std::path::Path) -> Vec<(PathBuf, std::time::SystemTime, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if entry.path().extension().is_some_and(|e| e == "block") {
                out.push((entry.path(), meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len()));
            }
        }
    }
    out
}

impl WrappingObjectStore for ReadCache {
    fn wrap(&self, _store_prefix: &str, original: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        Arc::new(CachedStore { inner: original, dir: self.dir.clone(), metas: Mutex::default(), budget: self.budget.clone() })
    }

    /// Listings are left alone (the cache only serves reads of immutable files).
    fn wrap_paginated(&self, _store_prefix: &str, original: Arc<dyn object_store::list::PaginatedListStore>) -> Option<Arc<dyn object_store::list::PaginatedListStore>> {
        Some(original)
    }
}

struct CachedStore {
    inner: Arc<dyn ObjectStore>,
    dir: PathBuf,
    /// Size and date of every cached file seen (immutable, so never stale).
    metas: Mutex<HashMap<ObjectPath, ObjectMeta>>,
    budget: Arc<Budget>,
}

impl fmt::Debug for CachedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CachedStore({}, {})", self.inner, self.dir.display())
    }
}

impl fmt::Display for CachedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CachedStore({})", self.inner)
    }
}

/// Whether `options` ask only for bytes (no conditions, versions or HEAD): what the
/// wrappers over immutable files may answer themselves.
pub(crate) fn plain_read(options: &GetOptions) -> bool {
    options.if_match.is_none() && options.if_none_match.is_none() && options.if_modified_since.is_none() && options.if_unmodified_since.is_none() && options.version.is_none() && !options.head
}

/// The bytes `range` asks for of a file of `size` bytes (all of it when None).
pub(crate) fn resolve_range(range: &Option<GetRange>, size: u64) -> Range<u64> {
    match range {
        None => 0..size,
        Some(GetRange::Bounded(r)) => r.start..r.end.min(size),
        Some(GetRange::Offset(start)) => *start..size,
        Some(GetRange::Suffix(n)) => size.saturating_sub(*n)..size,
    }
}

/// Whether Lance writes the file once and never again: a file under a table's `data`,
/// `_indices` or `_deletions` folder (`<table>.lance/data/...`). The folder must follow the
/// table's own: a store kept under a folder named `data` has manifests too.
pub(crate) fn immutable(path: &ObjectPath) -> bool {
    let parts: Vec<_> = path.parts().collect();
    parts.windows(2).any(|w| w[0].as_ref().ends_with(".lance") && ["data", "_indices", "_deletions"].contains(&w[1].as_ref()))
}

impl CachedStore {
    async fn meta(&self, location: &ObjectPath) -> object_store::Result<ObjectMeta> {
        if let Some(meta) = self.metas.lock().unwrap_or_else(|p| p.into_inner()).get(location) {
            return Ok(meta.clone());
        }
        let meta = self.inner.head(location).await?;
        self.metas.lock().unwrap_or_else(|p| p.into_inner()).insert(location.clone(), meta.clone());
        Ok(meta)
    }

    fn block_file(&self, location: &ObjectPath, block: u64) -> PathBuf {
        self.dir.join(location.as_ref()).join(format!("{block}.block"))
    }

    async fn block(&self, location: &ObjectPath, block: u64, size: u64) -> object_store::Result<Bytes> {
        let file = self.block_file(location, block);
        if let Ok(bytes) = std::fs::read(&file) {
            return Ok(Bytes::from(bytes));
        }
        let range = block * BLOCK..((block + 1) * BLOCK).min(size);
        let bytes = self.inner.get_range(location, range).await?;
        // A failed write only means the block is fetched again next time.
        if let Some(parent) = file.parent() {
            if std::fs::create_dir_all(parent).is_ok() {
                let tmp = file.with_extension(format!("tmp-{}-{:?}", std::process::id(), std::thread::current().id()));
                if std::fs::write(&tmp, &bytes).is_ok() {
                    match std::fs::rename(&tmp, &file) {
                        Ok(()) => self.budget.added(bytes.len() as u64),
                        Err(_) => {
                            let _ = std::fs::remove_file(&tmp);
                        }
                    }
                }
            }
        }
        Ok(bytes)
    }

    async fn cached_range(&self, location: &ObjectPath, range: Range<u64>, meta: &ObjectMeta) -> object_store::Result<Bytes> {
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        let (first, last) = (range.start / BLOCK, (range.end - 1) / BLOCK);
        if first == last {
            let block = self.block(location, first, meta.size).await?;
            let offset = first * BLOCK;
            return Ok(block.slice((range.start - offset) as usize..(range.end - offset) as usize));
        }
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        for index in first..=last {
            let block = self.block(location, index, meta.size).await?;
            let offset = index * BLOCK;
            let from = range.start.max(offset) - offset;
            let to = range.end.min(offset + block.len() as u64) - offset;
            out.extend_from_slice(&block[from as usize..to as usize]);
        }
        Ok(Bytes::from(out))
    }
}

#[async_trait]
impl ObjectStore for CachedStore {
    async fn put_opts(&self, location: &ObjectPath, payload: PutPayload, opts: PutOptions) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &ObjectPath, opts: PutMultipartOptions) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &ObjectPath, options: GetOptions) -> object_store::Result<GetResult> {
        if !(plain_read(&options) && immutable(location)) {
            return self.inner.get_opts(location, options).await;
        }
        let meta = self.meta(location).await?;
        let range = resolve_range(&options.range, meta.size);
        if range.start >= range.end {
            return self.inner.get_opts(location, options).await;
        }
        let bytes = self.cached_range(location, range.clone(), &meta).await?;
        Ok(GetResult { payload: GetResultPayload::Stream(futures::stream::once(async move { Ok(bytes) }).boxed()), meta, range, attributes: Default::default(), extensions: Default::default() })
    }

    async fn get_ranges(&self, location: &ObjectPath, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        if !immutable(location) {
            return self.inner.get_ranges(location, ranges).await;
        }
        let meta = self.meta(location).await?;
        let mut out = Vec::with_capacity(ranges.len());
        for range in ranges {
            out.push(self.cached_range(location, range.start..range.end.min(meta.size), &meta).await?);
        }
        Ok(out)
    }

    fn delete_stream(&self, locations: BoxStream<'static, object_store::Result<ObjectPath>>) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&ObjectPath>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(&self, prefix: Option<&ObjectPath>, offset: &ObjectPath) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&ObjectPath>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &ObjectPath, to: &ObjectPath, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[test]
    fn serves_every_range_of_an_immutable_file_from_its_blocks() {
        futures::executor::block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let inner = Arc::new(InMemory::new());
            let data: Vec<u8> = (0..(BLOCK * 2 + 777)).map(|i| (i * 7 % 251) as u8).collect();
            let path = ObjectPath::from("store/features.lance/data/abc.lance");
            inner.put(&path, PutPayload::from(data.clone())).await.unwrap();
            let cached = ReadCache::new(dir.path().to_path_buf()).wrap("s3://bucket", inner.clone());
            for range in [0..10, BLOCK - 5..BLOCK + 5, 3..BLOCK * 2 + 777, BLOCK * 2..BLOCK * 2 + 777] {
                let got = cached.get_range(&path, range.clone()).await.unwrap();
                assert_eq!(&got[..], &data[range.start as usize..range.end as usize], "{range:?}");
            }
            assert_eq!(cached.get_ranges(&path, &[1..2, BLOCK..BLOCK + 1]).await.unwrap(), vec![Bytes::from(vec![data[1]]), Bytes::from(vec![data[BLOCK as usize]])]);
            assert_eq!(&cached.get(&path).await.unwrap().bytes().await.unwrap()[..], &data[..]);
            // Served from disk once cached: the object can go away.
            inner.delete(&path).await.unwrap();
            assert_eq!(&cached.get_range(&path, 100..200).await.unwrap()[..], &data[100..200]);
            // Manifests are not cached.
            let manifest = ObjectPath::from("store/features.lance/_versions/1.manifest");
            inner.put(&manifest, PutPayload::from(vec![1u8])).await.unwrap();
            cached.get(&manifest).await.unwrap();
            inner.put(&manifest, PutPayload::from(vec![2u8])).await.unwrap();
            assert_eq!(&cached.get(&manifest).await.unwrap().bytes().await.unwrap()[..], &[2u8]);
        });
    }

    #[test]
    fn only_a_tables_data_index_and_deletion_files_are_immutable() {
        for (path, expected) in [
            ("store/features.lance/data/abc.lance", true),
            ("home/u/data/store/features.lance/_indices/1f/part.idx", true),
            ("store/features.lance/_deletions/3-7.arrow", true),
            ("home/u/data/store/features.lance/_versions/3.manifest", false),
            ("data/store/features.lance/_latest.manifest", false),
            ("store/data/x.bin", false),
        ] {
            assert_eq!(immutable(&ObjectPath::from(path)), expected, "{path}");
        }
    }

    #[test]
    fn the_folder_stays_within_its_bound() {
        futures::executor::block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let inner = Arc::new(InMemory::new());
            let data = vec![7u8; (BLOCK * 6) as usize];
            let path = ObjectPath::from("store/examples.lance/data/big.lance");
            inner.put(&path, PutPayload::from(data.clone())).await.unwrap();
            let cache = ReadCache::with_limit(dir.path().to_path_buf(), BLOCK * 3);
            let cached = cache.wrap("s3://bucket", inner.clone());
            for block in 0..6 {
                assert_eq!(&cached.get_range(&path, block * BLOCK..block * BLOCK + 10).await.unwrap()[..], &data[..10]);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let start = std::time::Instant::now();
            while cache.budget.evicting.load(Ordering::Acquire) || block_files(dir.path()).len() > 3 {
                assert!(start.elapsed() < std::time::Duration::from_secs(10), "never evicted: {} blocks", block_files(dir.path()).len());
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let kept: u64 = block_files(dir.path()).iter().map(|(_, _, len)| len).sum();
            assert!(kept <= BLOCK * 3, "{kept} bytes kept");
            // An evicted block is fetched again.
            assert_eq!(&cached.get_range(&path, 5..15).await.unwrap()[..], &data[5..15]);
        });
    }
}
