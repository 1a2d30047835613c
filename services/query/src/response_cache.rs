//! Hot answers kept in memory: a repeated GetFeature or SearchFeatures costs a map lookup
//! and a copy instead of the store's reads (and, for a dashboard, their decoding).
//!
//! Each cache is bounded in bytes (an entry weighs its encoded size) with moka's TinyLFU
//! admission, so a scan of cold features does not evict the hot ones. Keys carry what an
//! answer depends on that can change while the server runs: the store generation for both,
//! and for searches the reader's labels version (labels are searchable). A dashboard's label
//! is not in its key: GetFeature reads it fresh on every hit instead, so that a label write
//! does not drop every cached dashboard.

use std::hash::Hash;
use std::sync::Arc;

use prost::Message;

/// What a cached answer was computed for.
pub trait CacheKey: Hash + Eq + Send + Sync + 'static {
    /// Bytes the key holds beyond its own size (its strings).
    fn heap_bytes(&self) -> usize;
}

/// A GetFeature answer's key: its feature in one generation, how many examples, which parts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DashboardKey {
    pub generation: u64,
    pub dictionary_id: String,
    pub feature: u32,
    pub max_top_examples: u32,
    pub max_interval_examples: u32,
    /// The parts asked for: top examples, interval examples, histogram, logits, neighbours.
    pub parts: [bool; 5],
}

impl CacheKey for DashboardKey {
    fn heap_bytes(&self) -> usize {
        self.dictionary_id.len()
    }
}

/// A SearchFeatures answer's key: the request as validated (density bounds by their bits),
/// in one generation and labels version.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SearchKey {
    pub generation: u64,
    pub labels_version: u64,
    pub query: String,
    pub dictionary_id: Option<String>,
    pub hook: Option<String>,
    pub layer: Option<u32>,
    pub min_density: Option<u64>,
    pub max_density: Option<u64>,
    pub offset: usize,
    pub limit: usize,
}

impl CacheKey for SearchKey {
    fn heap_bytes(&self) -> usize {
        self.query.len() + self.dictionary_id.as_ref().map_or(0, String::len) + self.hook.as_ref().map_or(0, String::len)
    }
}

/// A cache of `V` answers; holds nothing when its limit is 0 (off).
pub struct ResponseCache<K: CacheKey, V> {
    cache: Option<moka::future::Cache<K, Arc<V>>>,
}

impl<K: CacheKey, V: Message + Clone + Send + Sync + 'static> ResponseCache<K, V> {
    /// A cache holding at most `bytes` of encoded answers and their keys (0: no cache).
    pub fn new(bytes: u64) -> Self {
        let cache = (bytes > 0).then(|| {
            moka::future::Cache::builder()
                .max_capacity(bytes)
                .weigher(|key: &K, value: &Arc<V>| u32::try_from(value.encoded_len() + std::mem::size_of::<K>() + key.heap_bytes()).unwrap_or(u32::MAX))
                .build()
        });
        ResponseCache { cache }
    }

    /// A copy of the answer cached for `key`.
    pub async fn get(&self, key: &K) -> Option<V> {
        Some((*self.cache.as_ref()?.get(key).await?).clone())
    }

    pub async fn insert(&self, key: K, value: &V) {
        if let Some(cache) = &self.cache {
            cache.insert(key, Arc::new(value.clone())).await;
        }
    }

    /// Entries and their weight in bytes (after moka's pending bookkeeping).
    pub async fn usage(&self) -> (u64, u64) {
        match &self.cache {
            Some(cache) => {
                cache.run_pending_tasks().await;
                (cache.entry_count(), cache.weighted_size())
            }
            None => (0, 0),
        }
    }
}
