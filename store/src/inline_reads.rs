//! Reads of a local store's data files on the thread that asks, when the bytes are in the
//! OS page cache.
//!
//! Lance reads a local file on tokio's blocking pool: every read is a hop to a pool thread
//! and back. A dashboard takes a few reads (offsets, then values, of two columns), and under
//! 64 concurrent cold GetFeature calls a third of the server's samples (`perf`) were those
//! threads going to sleep and waking each other (`finish_task_switch`, wake-ups), while the
//! reads themselves, of page-cached bytes, took microseconds.
//!
//! So the reader's tables are opened through Lance's object-store path for local files
//! (`file-object-store://`), under a wrapper that reads data, index and deletion files (which
//! Lance writes once and never changes) with `preadv2(RWF_NOWAIT)`: the kernel copies the
//! bytes if every page is cached and otherwise answers EAGAIN at once, without touching the
//! disk. Only then does the read go to the blocking pool, so a cold page never stalls an
//! async worker. Manifests and listings go to object_store's local file system as before.
//! Files stay open (bounded, [`MAX_OPEN_FILES`]) with their size and date from one `fstat`.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use lance::io::WrappingObjectStore;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload,
    PutResult,
};

use crate::read_cache::{immutable, plain_read, resolve_range};

/// The largest read done on the asking thread: a copy of at most this many cached bytes
/// takes ~100 us; larger reads (scans) go to the blocking pool, so that async workers never
/// spend long on one read (DESIGN.md: async code never blocks).
const MAX_INLINE_BYTES: usize = 1 << 20;

/// Open files kept per store; past it the table of open files starts again (a generation's
/// tables have a few hundred files at most).
const MAX_OPEN_FILES: usize = 4096;

/// Wraps the local object store under a reader's tables (see the module comment).
#[derive(Debug, Default)]
pub struct InlineReads;

impl WrappingObjectStore for InlineReads {
    fn wrap(&self, _store_prefix: &str, original: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        Arc::new(InlineStore { inner: original, files: Mutex::default(), nowait_refused: AtomicBool::new(false) })
    }

    /// Listings are left alone (only reads of immutable files are served here).
    fn wrap_paginated(&self, _store_prefix: &str, original: Arc<dyn object_store::list::PaginatedListStore>) -> Option<Arc<dyn object_store::list::PaginatedListStore>> {
        Some(original)
    }
}

struct OpenFile {
    file: File,
    meta: ObjectMeta,
}

struct InlineStore {
    inner: Arc<dyn ObjectStore>,
    files: Mutex<HashMap<ObjectPath, Arc<OpenFile>>>,
    /// The kernel or file system does not take RWF_NOWAIT: every read goes to the pool.
    nowait_refused: AtomicBool,
}

impl fmt::Debug for InlineStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InlineStore({})", self.inner)
    }
}

impl fmt::Display for InlineStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InlineStore({})", self.inner)
    }
}

fn io_error(location: &ObjectPath, e: std::io::Error) -> object_store::Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => object_store::Error::NotFound { path: location.to_string(), source: Box::new(e) },
        _ => object_store::Error::Generic { store: "local (inline reads)", source: Box::new(e) },
    }
}

/// What a read without waiting gave.
enum Nowait {
    /// All `len` bytes.
    Read(Vec<u8>),
    /// Not all cached (or RWF_NOWAIT refused): read on the pool.
    WouldBlock,
    Refused,
}

/// Reads `len` bytes at `offset` only if the page cache holds them all.
#[cfg(target_os = "linux")]
fn read_nowait(file: &File, offset: u64, len: usize) -> Nowait {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; len];
    let iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: len };
    // SAFETY: one iovec over `buf`, which lives across the call and is `len` bytes long.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset as libc::off_t, libc::RWF_NOWAIT) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            // Not supported here: a kernel before 4.14, a file system without it, or a
            // seccomp profile that refuses preadv2.
            Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS | libc::EPERM) => Nowait::Refused,
            // EAGAIN (not all cached), or an error the pool's read reports.
            _ => Nowait::WouldBlock,
        };
    }
    // A short read: some pages were not cached (or the file is shorter: the pool's exact
    // read says so).
    if n as usize == len {
        Nowait::Read(buf)
    } else {
        Nowait::WouldBlock
    }
}

#[cfg(not(target_os = "linux"))]
fn read_nowait(_file: &File, _offset: u64, _len: usize) -> Nowait {
    Nowait::Refused
}

impl InlineStore {
    /// The open file at `location` (opened and `fstat`ed on first use, on the pool).
    async fn file(&self, location: &ObjectPath) -> object_store::Result<Arc<OpenFile>> {
        if let Some(file) = self.files.lock().unwrap_or_else(|p| p.into_inner()).get(location) {
            return Ok(file.clone());
        }
        // The size and date as object_store gives them, then the file.
        let meta = self.inner.head(location).await?;
        let path = std::path::Path::new("/").join(location.as_ref());
        let open = tokio::task::spawn_blocking(move || File::open(&path))
            .await
            .map_err(|e| object_store::Error::Generic { store: "local (inline reads)", source: Box::new(e) })?;
        let file = Arc::new(OpenFile { file: open.map_err(|e| io_error(location, e))?, meta });
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if files.len() >= MAX_OPEN_FILES {
            files.clear();
        }
        files.insert(location.clone(), file.clone());
        Ok(file)
    }

    async fn read(&self, location: &ObjectPath, file: Arc<OpenFile>, range: Range<u64>) -> object_store::Result<Bytes> {
        let len = (range.end - range.start) as usize;
        if len == 0 {
            return Ok(Bytes::new());
        }
        if len <= MAX_INLINE_BYTES && !self.nowait_refused.load(Ordering::Relaxed) {
            match read_nowait(&file.file, range.start, len) {
                Nowait::Read(bytes) => return Ok(Bytes::from(bytes)),
                Nowait::Refused => self.nowait_refused.store(true, Ordering::Relaxed),
                Nowait::WouldBlock => {}
            }
        }
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut buf = vec![0u8; len];
            file.file.read_exact_at(&mut buf, range.start)?;
            Ok(buf)
        })
        .await
        .map_err(|e| object_store::Error::Generic { store: "local (inline reads)", source: Box::new(e) })?;
        Ok(Bytes::from(read.map_err(|e| io_error(location, e))?))
    }
}

#[async_trait]
impl ObjectStore for InlineStore {
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
        let file = self.file(location).await?;
        let range = resolve_range(&options.range, file.meta.size);
        if range.start >= range.end {
            // Empty or past the end: object_store's own answer (and error).
            return self.inner.get_opts(location, options).await;
        }
        let meta = file.meta.clone();
        let bytes = self.read(location, file, range.clone()).await?;
        Ok(GetResult { payload: GetResultPayload::Stream(futures::stream::once(async move { Ok(bytes) }).boxed()), meta, range, attributes: Default::default(), extensions: Default::default() })
    }

    async fn get_ranges(&self, location: &ObjectPath, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        if !immutable(location) {
            return self.inner.get_ranges(location, ranges).await;
        }
        let file = self.file(location).await?;
        let mut out = Vec::with_capacity(ranges.len());
        for range in ranges {
            out.push(self.read(location, file.clone(), range.start..range.end.min(file.meta.size)).await?);
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
    use object_store::local::LocalFileSystem;


    /// Every range of a data file reads back as the file's bytes, cached or not (the first
    /// read of a fresh file may find its pages cached already: both paths give the bytes).
    #[tokio::test]
    async fn reads_every_range_of_a_data_file_and_leaves_manifests_to_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        // Larger than MAX_INLINE_BYTES, so that the whole-file reads take the pool's path.
        let data: Vec<u8> = (0..1_200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let file = dir.path().join("t.lance").join("data").join("abc.lance");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, &data).unwrap();
        let store = InlineReads.wrap("file-object-store", Arc::new(LocalFileSystem::new()));
        let path = ObjectPath::from_filesystem_path(&file).unwrap();
        for range in [0..10u64, 4090..4100, 3..1_200_000, 1_199_990..1_200_000] {
            let got = store.get_range(&path, range.clone()).await.unwrap();
            assert_eq!(&got[..], &data[range.start as usize..range.end as usize], "{range:?}");
        }
        assert_eq!(store.get_ranges(&path, &[1..2, 5000..5001]).await.unwrap(), vec![Bytes::from(vec![data[1]]), Bytes::from(vec![data[5000]])]);
        let all = store.get(&path).await.unwrap();
        assert_eq!(all.meta.size, data.len() as u64);
        assert_eq!(&all.bytes().await.unwrap()[..], &data[..]);
        // A missing data file is NotFound, as object_store says it.
        let missing = ObjectPath::from(format!("{}/t.lance/data/none.lance", ObjectPath::from_filesystem_path(dir.path()).unwrap()));
        assert!(matches!(store.get_range(&missing, 0..1).await, Err(object_store::Error::NotFound { .. })));
        // Manifests change: read through the file system each time.
        let manifest = dir.path().join("t.lance").join("_versions").join("1.manifest");
        std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
        std::fs::write(&manifest, [1u8]).unwrap();
        let manifest = ObjectPath::from_filesystem_path(&manifest).unwrap();
        assert_eq!(&store.get(&manifest).await.unwrap().bytes().await.unwrap()[..], &[1u8]);
    }

    /// The read that finds pages outside the cache goes to the pool and still returns them:
    /// with the pages dropped from the cache (`posix_fadvise(DONTNEED)` on a synced file),
    /// RWF_NOWAIT answers EAGAIN or a short read.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn uncached_pages_are_read_on_the_pool() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        let file = dir.path().join("t.lance").join("data").join("cold.lance");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, &data).unwrap();
        let f = File::open(&f_sync(&file)).unwrap();
        // SAFETY: a plain advisory call on an open descriptor.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if let Nowait::Read(_) = read_nowait(&f, 500_000, 100_000) {
            eprintln!("the pages stayed cached (a file system that ignores DONTNEED): the pool path is not exercised here");
        }
        let store = InlineReads.wrap("file-object-store", Arc::new(LocalFileSystem::new()));
        let path = ObjectPath::from_filesystem_path(&file).unwrap();
        let got = store.get_range(&path, 500_000..600_000).await.unwrap();
        assert_eq!(&got[..], &data[500_000..600_000]);
    }

    fn f_sync(path: &std::path::Path) -> std::path::PathBuf {
        File::open(path).unwrap().sync_all().unwrap();
        path.to_path_buf()
    }
}
