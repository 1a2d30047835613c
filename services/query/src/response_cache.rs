//! Hot answers kept in memory: a repeated GetFeature or SearchFeatures costs a map lookup
//! and a copy instead of the store's reads (and, for a dashboard, their decoding).
//!
//! Each cache is bounded in bytes (an entry weighs its encoded size) and evicts as
//! quick_cache's CLOCK-PRO variant does: a new entry waits in a small probation queue and
//! is promoted only when asked for again, so a scan of cold features does not evict the hot
//! ones. Its lookups and inserts take one shard's lock for a bounded step; moka, used
//! before, batched its bookkeeping into whichever call found its log full, and on the 1M
//! store, where most dashboards are asked for once, that call waited 10-60 ms (open-loop
//! GetFeature p99 12-60 ms with the cache, 3-6 ms without). Keys carry what an answer
//! depends on that can change while the server runs: the store generation for both, and
//! for searches the reader's labels version (labels are searchable). A dashboard's label is
//! not in its key: GetFeature reads it fresh on every hit instead, so that a label write
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

/// An answer and its weight, weighed once when it is cached (eviction reads it often).
type Weighed<V> = (Arc<V>, u64);

#[derive(Clone)]
struct ByBytes;

impl<K: CacheKey, V> quick_cache::Weighter<K, Weighed<V>> for ByBytes {
    fn weight(&self, _key: &K, value: &Weighed<V>) -> u64 {
        value.1
    }
}

/// A cache of `V` answers; holds nothing when its limit is 0 (off).
pub struct ResponseCache<K: CacheKey, V> {
    cache: Option<quick_cache::sync::Cache<K, Weighed<V>, ByBytes>>,
}

/// What the hash tables are first sized for: one entry per this many bytes of the limit.
const BYTES_PER_ENTRY_ESTIMATE: u64 = 4096;

impl<K: CacheKey, V: Message + Clone + Send + Sync + 'static> ResponseCache<K, V> {
    /// A cache holding at most `bytes` of encoded answers and their keys (0: no cache).
    pub fn new(bytes: u64) -> Self {
        let cache = (bytes > 0).then(|| {
            let entries = (bytes / BYTES_PER_ENTRY_ESTIMATE).clamp(16, 1 << 20) as usize;
            quick_cache::sync::Cache::with_weighter(entries, bytes, ByBytes)
        });
        ResponseCache { cache }
    }

    /// A copy of the answer cached for `key`.
    pub fn get(&self, key: &K) -> Option<V> {
        Some((*self.cache.as_ref()?.get(key)?.0).clone())
    }

    pub fn insert(&self, key: K, value: &V) {
        if let Some(cache) = &self.cache {
            let weight = (value.encoded_len() + std::mem::size_of::<K>() + key.heap_bytes()) as u64;
            cache.insert(key, (Arc::new(value.clone()), weight));
        }
    }

    /// Entries and their weight in bytes.
    pub fn usage(&self) -> (u64, u64) {
        match &self.cache {
            Some(cache) => (cache.len() as u64, cache.weight()),
            None => (0, 0),
        }
    }
}
