//! Where a store lives: a local folder, or a prefix of an S3-compatible bucket
//! (`s3://bucket/prefix`).
//!
//! Lance opens the tables itself at [`Location::table_uri`] with
//! [`Location::storage_options`] (on S3 it commits with conditional puts). Everything else a
//! store keeps is a small object read and written here, by key relative to the root: the
//! format marker, generation records, job checkpoints, the uploaded search index. Each write
//! is atomic on both kinds of storage (a temporary file renamed into place, or one PUT), and
//! [`Location::put_new`] is create-only (a hard link, or `If-None-Match: *`), which is what
//! publishes a generation on object storage, where there is no rename.
//!
//! S3 settings come from the usual `AWS_*` variables (`AWS_ENDPOINT`, `AWS_REGION`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`, ...) and from the
//! `[storage]` table of a config (the same keys in lower case: `aws_endpoint`, ...), which
//! takes precedence.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::{Result, StoreError};
use crate::read_cache::ReadCache;

/// A store's root. Cheap to clone (one client per store, shared).
#[derive(Clone)]
pub struct Location {
    backend: Arc<Backend>,
}

enum Backend {
    Local(PathBuf),
    Object(ObjectRoot),
}

pub(crate) struct ObjectRoot {
    /// `s3://bucket/prefix`, without a trailing slash.
    url: String,
    bucket: String,
    prefix: String,
    pub(crate) store: Arc<dyn ObjectStore>,
    /// The options given in config, handed to Lance too (which reads `AWS_*` itself).
    options: HashMap<String, String>,
    read_cache: OnceLock<Option<Arc<ReadCache>>>,
}

/// What the last write of an object was, for a conditional update of it (the lease).
pub(crate) type Version = object_store::UpdateVersion;

/// Where a local store keeps `table`.
fn table_folder(root: &Path, table: &str) -> PathBuf {
    root.join(format!("{table}.lance"))
}

impl Location {
    /// A local folder (need not exist yet).
    pub fn local(path: &Path) -> Location {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Location { backend: Arc::new(Backend::Local(path)) }
    }

    /// A local folder, or `s3://bucket/prefix` with these storage options (config keys such
    /// as `aws_endpoint`; the `AWS_*` variables fill in what they do not set).
    pub fn parse(spec: &str, options: &BTreeMap<String, String>) -> Result<Location> {
        let invalid = |reason: String| StoreError::InvalidLocation { location: spec.to_string(), reason };
        let Some(rest) = spec.strip_prefix("s3://") else {
            if let Some((scheme, _)) = spec.split_once("://") {
                return Err(invalid(format!("scheme {scheme:?} is not supported: give a local folder or s3://BUCKET/PREFIX")));
            }
            if spec.is_empty() {
                return Err(invalid("empty: give a local folder or s3://BUCKET/PREFIX".into()));
            }
            return Ok(Location::local(Path::new(spec)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/').to_string();
        if bucket.is_empty() {
            return Err(invalid("no bucket: expected s3://BUCKET/PREFIX".into()));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (key, value) in options {
            let parsed: AmazonS3ConfigKey =
                key.parse().map_err(|_| invalid(format!("unknown storage option {key:?}: expected an S3 setting such as aws_endpoint, aws_region, aws_access_key_id, aws_secret_access_key, aws_allow_http")))?;
            builder = builder.with_config(parsed, value);
        }
        let store = builder.build().map_err(|e| invalid(e.to_string()))?;
        let url = if prefix.is_empty() { format!("s3://{bucket}") } else { format!("s3://{bucket}/{prefix}") };
        let options = options.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        Ok(Location { backend: Arc::new(Backend::Object(ObjectRoot { url, bucket: bucket.to_string(), prefix, store: Arc::new(store), options, read_cache: OnceLock::new() })) })
    }

    /// A store argument of the command line or a config (a path, which may spell an
    /// `s3://` URL).
    pub fn from_arg(path: &Path, options: &BTreeMap<String, String>) -> Result<Location> {
        match path.to_str() {
            Some(spec) => Location::parse(spec, options),
            None => Ok(Location::local(path)),
        }
    }

    /// The folder of a local store (None on object storage).
    pub fn local_path(&self) -> Option<&Path> {
        match &*self.backend {
            Backend::Local(path) => Some(path),
            Backend::Object(_) => None,
        }
    }

    pub(crate) fn object_root(&self) -> Option<&ObjectRoot> {
        match &*self.backend {
            Backend::Local(_) => None,
            Backend::Object(root) => Some(root),
        }
    }

    /// Where Lance finds `table`.
    pub fn table_uri(&self, table: &str) -> String {
        match &*self.backend {
            Backend::Local(path) => table_folder(path, table).to_string_lossy().into_owned(),
            Backend::Object(root) => format!("{}/{table}.lance", root.url),
        }
    }

    /// The folder of `table` in a local store (None on object storage).
    pub(crate) fn local_table_path(&self, table: &str) -> Option<PathBuf> {
        Some(table_folder(self.local_path()?, table))
    }

    /// Options for Lance's object store (empty for a local store).
    pub fn storage_options(&self) -> HashMap<String, String> {
        self.object_root().map(|r| r.options.clone()).unwrap_or_default()
    }

    /// A local folder for files kept next to a remote store (the downloaded search index):
    /// `$LOUPE_CACHE`, else `$XDG_CACHE_HOME/loupe`, else `~/.cache/loupe`, then
    /// `s3/BUCKET/PREFIX`. None for a local store.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        let root = self.object_root()?;
        let base = std::env::var_os("LOUPE_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("loupe")))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/loupe")))
            .unwrap_or_else(|| std::env::temp_dir().join("loupe-cache"));
        Some(base.join("s3").join(&root.bucket).join(&root.prefix))
    }

    /// The local block cache under Lance's reads of this store (`cache_dir()/lance`), one
    /// per location and shared by every table opened through it. None for a local store, or
    /// with `LOUPE_S3_READ_CACHE=off`.
    pub(crate) fn read_cache(&self) -> Option<Arc<ReadCache>> {
        let root = self.object_root()?;
        root.read_cache
            .get_or_init(|| {
                let off = std::env::var("LOUPE_S3_READ_CACHE").is_ok_and(|v| v == "off" || v == "0");
                (!off).then(|| ReadCache::new(self.cache_dir().expect("a remote store has a cache folder").join("lance")))
            })
            .clone()
    }

    fn local_file(root: &Path, key: &str) -> PathBuf {
        root.join(key)
    }

    pub(crate) fn object_key(root: &ObjectRoot, key: &str) -> ObjectPath {
        if root.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", root.prefix))
        }
    }

    fn object_error(&self, key: &str, source: object_store::Error) -> StoreError {
        StoreError::ObjectStore { location: format!("{self}/{key}"), source: Box::new(source) }
    }

    /// The object's bytes, or None if there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_versioned(key).await?.map(|(bytes, _)| bytes))
    }

    /// The object's bytes and what identifies this write of it.
    pub(crate) async fn get_versioned(&self, key: &str) -> Result<Option<(Vec<u8>, Version)>> {
        match &*self.backend {
            Backend::Local(root) => {
                let path = Self::local_file(root, key);
                match std::fs::read(&path) {
                    Ok(bytes) => Ok(Some((bytes, Version { e_tag: None, version: None }))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(StoreError::io(path, e)),
                }
            }
            Backend::Object(root) => {
                let store = root.store.clone();
                let path = Self::object_key(root, key);
                let got = io(async move {
                    let result = store.get(&path).await?;
                    let version = Version { e_tag: result.meta.e_tag.clone(), version: result.meta.version.clone() };
                    Ok::<_, object_store::Error>((result.bytes().await?.to_vec(), version))
                })
                .await;
                match got {
                    Ok(got) => Ok(Some(got)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(self.object_error(key, e)),
                }
            }
        }
    }

    /// Writes the object atomically (readers see the old or the new bytes), replacing it.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        match &*self.backend {
            Backend::Local(root) => write_atomic(&Self::local_file(root, key), &bytes),
            Backend::Object(_) => match self.put_object(key, bytes, PutMode::Overwrite).await {
                Ok(_) => Ok(()),
                Err(PutFailure::Store(e)) => Err(e),
                Err(PutFailure::Lost) => Err(StoreError::Conflict { path: format!("{self}/{key}"), reason: "an unconditional write was refused".into() }),
            },
        }
    }

    /// Writes the object only if there is none yet; returns whether this call wrote it.
    pub async fn put_new(&self, key: &str, bytes: Vec<u8>) -> Result<bool> {
        match &*self.backend {
            Backend::Local(root) => {
                let path = Self::local_file(root, key);
                let tmp = temporary_sibling(&path);
                write_synced(&tmp, &bytes)?;
                // A hard link fails if the name exists: create-only, and atomic.
                let linked = std::fs::hard_link(&tmp, &path);
                let _ = std::fs::remove_file(&tmp);
                match linked {
                    Ok(()) => {
                        sync_parent(&path);
                        Ok(true)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(StoreError::io(path, e)),
                }
            }
            Backend::Object(_) => match self.put_object(key, bytes, PutMode::Create).await {
                Ok(_) => Ok(true),
                Err(PutFailure::Lost) => Ok(false),
                Err(PutFailure::Store(e)) => Err(e),
            },
        }
    }

    /// One PUT with a precondition (object storage only).
    pub(crate) async fn put_object(&self, key: &str, bytes: Vec<u8>, mode: PutMode) -> Result<Version, PutFailure> {
        let root = self.object_root().expect("put_object is for object storage");
        let store = root.store.clone();
        let path = Self::object_key(root, key);
        let put = io(async move { store.put_opts(&path, PutPayload::from(bytes), PutOptions { mode, ..Default::default() }).await }).await;
        match put {
            Ok(result) => Ok(Version { e_tag: result.e_tag, version: result.version }),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Err(PutFailure::Lost),
            Err(e) => Err(PutFailure::Store(self.object_error(key, e))),
        }
    }

    /// Removes the object (a missing one is not an error).
    pub async fn delete(&self, key: &str) -> Result<()> {
        match &*self.backend {
            Backend::Local(root) => {
                let path = Self::local_file(root, key);
                gone_or_missing(std::fs::remove_file(&path), &path)
            }
            Backend::Object(root) => {
                let store = root.store.clone();
                let path = Self::object_key(root, key);
                match io(async move { store.delete(&path).await }).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(self.object_error(key, e)),
                }
            }
        }
    }

    /// Every object under the folder `dir`, as keys relative to it (sorted).
    pub async fn list(&self, dir: &str) -> Result<Vec<String>> {
        let dir = dir.trim_end_matches('/');
        match &*self.backend {
            Backend::Local(root) => {
                let base = Self::local_file(root, dir);
                let mut keys = Vec::new();
                list_local(&base, &base, &mut keys)?;
                keys.sort();
                Ok(keys)
            }
            Backend::Object(root) => {
                let store = root.store.clone();
                let path = if dir.is_empty() { ObjectPath::from(root.prefix.as_str()) } else { Self::object_key(root, dir) };
                let base = if path.as_ref().is_empty() { String::new() } else { format!("{}/", path.as_ref()) };
                let listed = io(async move { store.list(Some(&path)).try_collect::<Vec<_>>().await }).await.map_err(|e| self.object_error(dir, e))?;
                let mut keys: Vec<String> = listed.into_iter().filter_map(|meta| meta.location.as_ref().strip_prefix(&base).map(String::from)).collect();
                keys.sort();
                Ok(keys)
            }
        }
    }

    /// Whether anything is stored under the folder `dir`.
    pub async fn has_any(&self, dir: &str) -> Result<bool> {
        match &*self.backend {
            Backend::Local(root) => Ok(Self::local_file(root, dir).exists()),
            Backend::Object(_) => Ok(!self.list(dir).await?.is_empty()),
        }
    }

    /// Removes every object under the folder `dir`.
    pub async fn delete_dir(&self, dir: &str) -> Result<()> {
        match &*self.backend {
            Backend::Local(root) => {
                let path = Self::local_file(root, dir);
                gone_or_missing(std::fs::remove_dir_all(&path), &path)
            }
            Backend::Object(_) => {
                let dir = dir.trim_end_matches('/');
                for key in self.list(dir).await? {
                    self.delete(&if dir.is_empty() { key } else { format!("{dir}/{key}") }).await?;
                }
                Ok(())
            }
        }
    }

    /// Uploads every file of the local folder `from` under the folder `dir`.
    pub async fn upload_dir(&self, from: &Path, dir: &str) -> Result<()> {
        let mut files = Vec::new();
        list_local(from, from, &mut files)?;
        for file in files {
            let path = from.join(&file);
            let bytes = std::fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
            self.put(&format!("{}/{file}", dir.trim_end_matches('/')), bytes).await?;
        }
        Ok(())
    }

    /// Downloads every object under the folder `dir` into the local folder `to`, which
    /// appears whole or not at all (written beside it, then renamed into place).
    pub async fn download_dir(&self, dir: &str, to: &Path) -> Result<()> {
        let partial = temporary_sibling(to);
        for key in self.list(dir).await? {
            let bytes = self.get(&format!("{}/{key}", dir.trim_end_matches('/'))).await?.unwrap_or_default();
            let path = partial.join(&key);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
            }
            std::fs::write(&path, bytes).map_err(|e| StoreError::io(&path, e))?;
        }
        std::fs::create_dir_all(&partial).map_err(|e| StoreError::io(&partial, e))?;
        match std::fs::rename(&partial, to) {
            Ok(()) => Ok(()),
            // Another process on this machine downloaded it first: theirs is the same.
            Err(_) if to.is_dir() => std::fs::remove_dir_all(&partial).map_err(|e| StoreError::io(&partial, e)),
            Err(e) => Err(StoreError::io(to, e)),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.backend {
            Backend::Local(path) => write!(f, "{}", path.display()),
            Backend::Object(root) => f.write_str(&root.url),
        }
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Location({self})")
    }
}

/// Why a conditional PUT did not write.
pub(crate) enum PutFailure {
    /// The precondition failed: another writer's object is there.
    Lost,
    Store(StoreError),
}

/// loupe's own runtime for object-store I/O, so that it works whichever runtime (or none,
/// through `futures::executor::block_on`) awaits it, and a client's pooled connections never
/// belong to a runtime that has gone.
fn io_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("loupe-object-io").enable_all().build().expect("an I/O runtime starts"))
}

async fn io<T: Send + 'static>(work: impl std::future::Future<Output = std::result::Result<T, object_store::Error>> + Send + 'static) -> std::result::Result<T, object_store::Error> {
    match io_runtime().spawn(work).await {
        Ok(result) => result,
        Err(join) => Err(object_store::Error::Generic { store: "S3", source: Box::new(join) }),
    }
}

/// Spawns `work` on the object-store runtime without waiting (the lease's renewals).
pub(crate) fn spawn_io(work: impl std::future::Future<Output = ()> + Send + 'static) -> tokio::task::JoinHandle<()> {
    io_runtime().spawn(work)
}

/// A local removal's result, where "it was not there" counts as done.
fn gone_or_missing(removed: std::io::Result<()>, path: &Path) -> Result<()> {
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::io(path, e)),
        _ => Ok(()),
    }
}

fn temporary_sibling(path: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}-{nanos}", std::process::id()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
    }
    let mut file = std::fs::File::create(path).map_err(|e| StoreError::io(path, e))?;
    file.write_all(bytes).and_then(|_| file.sync_all()).map_err(|e| StoreError::io(path, e))
}

fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().and_then(|p| std::fs::File::open(p).ok()) {
        let _ = dir.sync_all();
    }
}

/// Writes through a temporary file, fsync and rename: readers see the old or the new file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_sibling(path);
    write_synced(&tmp, bytes)?;
    std::fs::rename(&tmp, path).map_err(|e| StoreError::io(path, e))?;
    sync_parent(path);
    Ok(())
}

fn list_local(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| StoreError::io(dir, e))?.path();
        if path.is_dir() {
            list_local(base, &path, out)?;
        } else if let Ok(relative) = path.strip_prefix(base) {
            out.push(relative.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_local_folders_and_s3_urls() {
        let none = BTreeMap::new();
        let local = Location::parse("relative/store", &none).unwrap();
        assert!(local.local_path().unwrap().is_absolute());
        let s3 = Location::parse("s3://bucket/some/prefix/", &none).unwrap();
        assert_eq!(s3.to_string(), "s3://bucket/some/prefix");
        assert_eq!(s3.table_uri("features"), "s3://bucket/some/prefix/features.lance");
        assert!(s3.local_path().is_none());
        let bad = |spec: &str, options: &BTreeMap<String, String>| Location::parse(spec, options).unwrap_err().to_string();
        assert!(bad("gs://bucket/x", &none).contains("not supported"));
        assert!(bad("s3:///x", &none).contains("no bucket"));
        let typo = BTreeMap::from([("aws_endpiont".to_string(), "http://127.0.0.1:1".to_string())]);
        assert!(bad("s3://bucket/x", &typo).contains("aws_endpiont"));
    }

    #[test]
    fn local_objects_are_atomic_and_create_only() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::local(dir.path());
        futures::executor::block_on(async {
            assert_eq!(location.get("a/b.json").await.unwrap(), None);
            assert!(location.put_new("a/b.json", b"1".to_vec()).await.unwrap());
            assert!(!location.put_new("a/b.json", b"2".to_vec()).await.unwrap());
            assert_eq!(location.get("a/b.json").await.unwrap().unwrap(), b"1");
            location.put("a/b.json", b"3".to_vec()).await.unwrap();
            location.put("a/c/d", b"4".to_vec()).await.unwrap();
            assert_eq!(location.list("a").await.unwrap(), vec!["b.json".to_string(), "c/d".to_string()]);
            location.delete_dir("a/c").await.unwrap();
            assert_eq!(location.list("a").await.unwrap(), vec!["b.json".to_string()]);
        });
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path().join("a")).unwrap().count(), 1);
    }
}
