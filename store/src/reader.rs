//! Reading one committed generation of a store.

use std::path::{Path, PathBuf};

use lance::Dataset;
use loupe_schema::tables::{DICTIONARIES, EXAMPLES, FEATURES};

use crate::arrow::{dictionaries_from_batch, examples_from_batch, features_from_batch};
use crate::error::{Result, StoreError};
use crate::layout::{self, Generation};
use crate::records::{DictionaryRecord, ExampleKind, ExampleRecord, FeatureRecord};
use crate::search::{SearchFilter, SearchIndex, SearchResults};
use crate::tables::{open_at, quote, scan};

pub struct StoreReader {
    root: PathBuf,
    generation: Generation,
    dictionaries: Dataset,
    features: Dataset,
    examples: Dataset,
    search: SearchIndex,
}

impl StoreReader {
    /// Opens the last committed generation.
    pub async fn open(root: &Path) -> Result<Self> {
        layout::check_store(root)?;
        let generation = layout::current(root)?.ok_or_else(|| StoreError::Empty { path: root.into() })?;
        Self::open_generation_record(root, generation).await
    }

    /// Opens an earlier generation (every commit stays readable).
    pub async fn open_generation(root: &Path, generation: u64) -> Result<Self> {
        layout::check_store(root)?;
        let record = layout::generation(root, generation)?;
        Self::open_generation_record(root, record).await
    }

    async fn open_generation_record(root: &Path, generation: Generation) -> Result<Self> {
        let root = root.canonicalize().map_err(|e| StoreError::io(root, e))?;
        let version = |table: &str| {
            generation.versions.get(table).copied().ok_or_else(|| StoreError::Corrupt {
                path: root.join("CURRENT"),
                reason: format!("generation {} names no version of table {table}", generation.generation),
            })
        };
        let dictionaries = open_at(&root, DICTIONARIES, version(DICTIONARIES)?).await?;
        let features = open_at(&root, FEATURES, version(FEATURES)?).await?;
        let examples = open_at(&root, EXAMPLES, version(EXAMPLES)?).await?;
        let search = SearchIndex::open(&root.join(&generation.search))?;
        Ok(StoreReader { root, generation, dictionaries, features, examples, search })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn generation(&self) -> &Generation {
        &self.generation
    }

    pub async fn dictionaries(&self) -> Result<Vec<DictionaryRecord>> {
        let mut out = Vec::new();
        for batch in scan(&self.dictionaries, DICTIONARIES, None, None).await? {
            out.extend(dictionaries_from_batch(&batch)?);
        }
        out.sort_by(|a, b| a.dictionary_id.cmp(&b.dictionary_id));
        Ok(out)
    }

    /// Every feature of a dictionary, by index.
    pub async fn features(&self, dictionary_id: &str) -> Result<Vec<FeatureRecord>> {
        let filter = format!("dictionary_id = {}", quote(dictionary_id));
        let mut out = Vec::new();
        for batch in scan(&self.features, FEATURES, Some(&filter), None).await? {
            out.extend(features_from_batch(&batch)?);
        }
        out.sort_by_key(|f| f.feature);
        Ok(out)
    }

    pub async fn feature(&self, dictionary_id: &str, feature: u32) -> Result<Option<FeatureRecord>> {
        let filter = format!("dictionary_id = {} AND feature = {feature}", quote(dictionary_id));
        let mut out = Vec::new();
        for batch in scan(&self.features, FEATURES, Some(&filter), None).await? {
            out.extend(features_from_batch(&batch)?);
        }
        Ok(out.into_iter().next())
    }

    /// Examples of one feature (or of every feature when None): top examples by rank, then
    /// interval samples by interval and rank.
    pub async fn examples(&self, dictionary_id: &str, feature: Option<u32>) -> Result<Vec<ExampleRecord>> {
        let mut filter = format!("dictionary_id = {}", quote(dictionary_id));
        if let Some(feature) = feature {
            filter.push_str(&format!(" AND feature = {feature}"));
        }
        let mut out = Vec::new();
        for batch in scan(&self.examples, EXAMPLES, Some(&filter), None).await? {
            out.extend(examples_from_batch(&batch)?);
        }
        let order = |e: &ExampleRecord| {
            let interval = match e.kind {
                ExampleKind::Top => 0,
                ExampleKind::Interval { index, .. } => 1 + index as u64,
            };
            (e.feature, interval, e.rank)
        };
        out.sort_by_key(order);
        Ok(out)
    }

    pub fn search(&self, query: &str, filter: &SearchFilter, offset: usize, limit: usize) -> Result<SearchResults> {
        self.search.search(query, filter, offset, limit)
    }

    pub fn search_index(&self) -> &SearchIndex {
        &self.search
    }
}
