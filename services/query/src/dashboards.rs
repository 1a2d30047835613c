//! Hot dashboards kept in memory: a GetFeature that hits costs a map lookup and a copy
//! instead of the feature row's and its examples' reads and their decoding.
//!
//! Bounded in bytes (each entry weighs its encoded size) with moka's TinyLFU admission, so a
//! scan of cold features does not evict the hot ones. An entry is keyed by the store
//! generation it was read from (a new generation never sees an older one's dashboards). The
//! label is the one part that changes within a generation; it is not trusted from the
//! cache but read again on every hit from the labels every server keeps current.

use std::sync::Arc;

use loupe_schema::proto::v1 as pb;
use prost::Message;

use crate::state::Snapshot;

/// What a dashboard was read for: its feature in one generation, and how many examples.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DashboardKey {
    pub generation: u64,
    pub dictionary_id: String,
    pub feature: u32,
    pub max_top_examples: u32,
    pub max_interval_examples: u32,
}

/// The cache; `None` inside when the limit is 0 (off).
pub struct DashboardCache {
    cache: Option<moka::future::Cache<DashboardKey, Arc<pb::FeatureDashboard>>>,
}

impl DashboardCache {
    /// A cache holding at most `bytes` of encoded dashboards (0: no cache).
    pub fn new(bytes: u64) -> Self {
        let cache = (bytes > 0).then(|| {
            moka::future::Cache::builder()
                .max_capacity(bytes)
                .weigher(|key: &DashboardKey, value: &Arc<pb::FeatureDashboard>| u32::try_from(value.encoded_len() + key.dictionary_id.len() + std::mem::size_of::<DashboardKey>()).unwrap_or(u32::MAX))
                .build()
        });
        DashboardCache { cache }
    }

    /// The dashboard for `key`, with its current label, if it is cached.
    pub async fn get(&self, key: &DashboardKey, snapshot: &Snapshot) -> Option<pb::FeatureDashboard> {
        let cached = self.cache.as_ref()?.get(key).await?;
        let mut dashboard = (*cached).clone();
        // Label writes only add overrides, so a feature without one now had none when its
        // dashboard was read, and the cached label is still the generation's.
        if let Some(label) = snapshot.reader.label_override(&key.dictionary_id, key.feature) {
            dashboard.label = label;
        }
        Some(dashboard)
    }

    pub async fn insert(&self, key: DashboardKey, dashboard: &pb::FeatureDashboard) {
        if let Some(cache) = &self.cache {
            cache.insert(key, Arc::new(dashboard.clone())).await;
        }
    }

    /// Entries and their weight in bytes (moka's counts are eventually consistent).
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
