//! Reading one committed generation of a store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::RwLock;

use lance::Dataset;
use loupe_schema::proto::v1 as pb;
use loupe_schema::tables::{DASHBOARDS, DICTIONARIES, EXAMPLES, FEATURES};
use tokio::sync::OnceCell;

use crate::arrow::{dictionaries_from_batch, examples_from_batch, features_from_batch};
use crate::dashboards;
use crate::error::{Result, StoreError};
use crate::labels::LabelCursor;
use crate::layout::{self, Generation, Location};
use crate::locator::RowLocator;
use crate::records::{DictionaryRecord, ExampleRecord, FeatureRecord};
use crate::search::{FeatureSite, SearchFilter, SearchIndex, SearchPage, SearchResults};
use crate::tables::{open_for_reads, quote, scan};
use crate::grouped_take::GroupedTaker;
use crate::taker::{PointReads, RowTaker};
use crate::decoder_scan::QuantizedDecoders;
use crate::vectors::{self, SimilarFeature};

/// One batch of rows of [`StoreReader::for_each_batch`].
pub enum Batch {
    Features(Vec<FeatureRecord>),
    Examples(Vec<ExampleRecord>),
}

pub struct StoreReader {
    root: Location,
    generation: Generation,
    dictionaries: Dataset,
    features: Dataset,
    examples: Dataset,
    search: SearchIndex,
    /// Decoder vector tables by width.
    decoders: BTreeMap<usize, DecoderTable>,
    /// Row addresses per feature, read on the first point lookup (or by `warm`).
    feature_rows: OnceCell<RowLocator>,
    example_rows: OnceCell<RowLocator>,
    /// Point reads of every column but `dictionary_id` (see `PointReads`).
    feature_reads: PointReads,
    example_reads: PointReads,
    /// The `dashboards` table, when the generation has one (older ones do not).
    dashboards: Option<StoredDashboards>,
    /// Follows the append-only `labels` table (refreshed by `refresh_labels`).
    label_cursor: tokio::sync::Mutex<LabelCursor>,
    /// The current label of every feature labelled through the table (None: cleared),
    /// by dictionary and feature, which overrides the label its generation was built with
    /// (the cursor's state, readable without awaiting its lock).
    labels: RwLock<HashMap<String, HashMap<u32, Option<String>>>>,
    /// Bumped after every refresh that changed a label (once search and dashboards see it):
    /// what a cache of search results keys on.
    labels_version: std::sync::atomic::AtomicU64,
}

/// The local folder of a generation's search index: in the store, or for a store on object
/// storage, a copy downloaded once into the local cache (the folder is immutable).
async fn search_folder(root: &Location, generation: &Generation) -> Result<PathBuf> {
    if let Some(path) = root.local_path() {
        return Ok(path.join(&generation.search));
    }
    let cache = root.cache_dir().expect("a remote store has a cache folder");
    let folder = cache.join(&generation.search);
    if !folder.is_dir() {
        if let Some(parent) = folder.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
        }
        root.download_dir(&generation.search, &folder).await?;
    }
    Ok(folder)
}

/// One decoder vector table, with what SimilarFeatures reads from it once.
struct DecoderTable {
    dataset: Dataset,
    /// The dictionaries it holds (for Lance's exact scan, which filters only when needed).
    held: OnceCell<BTreeSet<String>>,
    /// Its int8 copy, loaded on the first quantized search (or by `warm`).
    quantized: OnceCell<QuantizedDecoders>,
}

impl DecoderTable {
    async fn quantized(&self, width: usize) -> Result<&QuantizedDecoders> {
        self.quantized.get_or_try_init(|| async move { QuantizedDecoders::load(&self.dataset, &vectors::table_name(width), width).await }).await
    }
}

/// Point reads of the `dashboards` table: the summary alone, or with the examples.
struct StoredDashboards {
    dataset: Dataset,
    rows: OnceCell<RowLocator>,
    summary: GroupedTaker,
    whole: GroupedTaker,
}

impl StoredDashboards {
    fn new(dataset: Dataset) -> Result<Self> {
        let summary = GroupedTaker::new(RowTaker::new(&dataset, DASHBOARDS, &["summary"])?);
        let whole = GroupedTaker::new(RowTaker::new(&dataset, DASHBOARDS, &["summary", "examples"])?);
        Ok(StoredDashboards { dataset, rows: OnceCell::new(), summary, whole })
    }

    async fn locator(&self) -> Result<&RowLocator> {
        self.rows.get_or_try_init(|| RowLocator::build(&self.dataset, DASHBOARDS)).await
    }
}

impl StoreReader {
    /// Opens the last committed generation.
    pub async fn open(root: &Location) -> Result<Self> {
        layout::check_store(root).await?;
        let generation = layout::current(root).await?.ok_or_else(|| StoreError::Empty { path: root.to_string() })?;
        Self::open_generation_record(root, generation).await
    }

    /// Opens an earlier generation (every commit stays readable).
    pub async fn open_generation(root: &Location, generation: u64) -> Result<Self> {
        layout::check_store(root).await?;
        let record = layout::generation(root, generation).await?;
        Self::open_generation_record(root, record).await
    }

    async fn open_generation_record(root: &Location, generation: Generation) -> Result<Self> {
        let root = match root.local_path() {
            Some(path) => Location::local(&path.canonicalize().map_err(|e| StoreError::io(path, e))?),
            None => root.clone(),
        };
        let version = |table: &str| {
            generation
                .versions
                .get(table)
                .copied()
                .ok_or_else(|| StoreError::Corrupt { path: format!("{root} generation {}", generation.generation), reason: format!("generation {} names no version of table {table}", generation.generation) })
        };
        let dictionaries = open_for_reads(&root, DICTIONARIES, version(DICTIONARIES)?).await?;
        let features = open_for_reads(&root, FEATURES, version(FEATURES)?).await?;
        let examples = open_for_reads(&root, EXAMPLES, version(EXAMPLES)?).await?;
        let mut decoders = BTreeMap::new();
        for (table, &version) in &generation.versions {
            if let Some(width) = vectors::width_of(table) {
                decoders.insert(width, DecoderTable { dataset: open_for_reads(&root, table, version).await?, held: OnceCell::new(), quantized: OnceCell::new() });
            }
        }
        let dashboards = match generation.versions.get(DASHBOARDS) {
            Some(&version) => Some(StoredDashboards::new(open_for_reads(&root, DASHBOARDS, version).await?)?),
            None => None,
        };
        let search = SearchIndex::open(&search_folder(&root, &generation).await?)?;
        let feature_reads = PointReads::new(&features, FEATURES)?;
        let example_reads = PointReads::new(&examples, EXAMPLES)?;
        let label_cursor = tokio::sync::Mutex::new(LabelCursor::new(&root));
        let reader = StoreReader {
            root,
            generation,
            dictionaries,
            features,
            examples,
            search,
            decoders,
            feature_rows: OnceCell::new(),
            example_rows: OnceCell::new(),
            feature_reads,
            example_reads,
            dashboards,
            label_cursor,
            labels: RwLock::new(HashMap::new()),
            labels_version: std::sync::atomic::AtomicU64::new(0),
        };
        reader.refresh_labels().await?;
        Ok(reader)
    }

    pub fn root(&self) -> &Location {
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

    /// Every feature of a dictionary, by index, with its current label.
    pub async fn features(&self, dictionary_id: &str) -> Result<Vec<FeatureRecord>> {
        let mut out = self.features_as_built(dictionary_id).await?;
        out.iter_mut().for_each(|f| self.apply_label(f));
        Ok(out)
    }

    /// Every feature of a dictionary, by index, as its generation stored them.
    pub async fn features_as_built(&self, dictionary_id: &str) -> Result<Vec<FeatureRecord>> {
        let filter = format!("dictionary_id = {}", quote(dictionary_id));
        let mut out = Vec::new();
        for batch in scan(&self.features, FEATURES, Some(&filter), None).await? {
            out.extend(features_from_batch(&batch)?);
        }
        out.sort_by_key(|f| f.feature);
        Ok(out)
    }

    /// Reads where every feature's rows are and opens the tables' files for point reads,
    /// so that the first dashboard is as fast as the rest (a server calls this once at start).
    pub async fn warm(&self) -> Result<()> {
        self.feature_locator().await?;
        self.example_locator().await?;
        self.feature_reads.open_all().await?;
        self.example_reads.open_all().await?;
        if let Some(stored) = &self.dashboards {
            stored.locator().await?;
            stored.whole.taker().open_all().await?;
            stored.summary.taker().open_all().await?;
        }
        for (&width, table) in &self.decoders {
            table.quantized(width).await?;
        }
        Ok(())
    }

    /// A feature's dashboard with its current label and every stored example (none unless
    /// `with_examples`): one point read of the `dashboards` table, or, for a generation or
    /// dictionary written before that table existed, assembled from the columnar tables.
    pub async fn dashboard(&self, dictionary_id: &str, feature: u32, hook: &str, with_examples: bool) -> Result<Option<pb::FeatureDashboard>> {
        if let Some(encoded) = self.stored_dashboard(dictionary_id, feature, with_examples).await? {
            let mut dashboard = dashboards::decode(&encoded, None)?;
            if let Some(label) = self.label_override(dictionary_id, feature) {
                dashboard.label = label;
            }
            return Ok(Some(dashboard));
        }
        self.assembled_dashboard(dictionary_id, feature, hook, with_examples).await
    }

    /// A feature's dashboard as the generation stored it, still encoded (an encoded
    /// `FeatureDashboard`: the summary, then the examples when `with_examples`, since
    /// protobuf reads concatenated messages as one), with the label the generation was built
    /// with; None when the generation or dictionary has no `dashboards` record for it (use
    /// [`dashboard`](Self::dashboard)).
    pub async fn stored_dashboard(&self, dictionary_id: &str, feature: u32, with_examples: bool) -> Result<Option<Vec<u8>>> {
        let Some(stored) = &self.dashboards else { return Ok(None) };
        let addresses = stored.locator().await?.addresses(dictionary_id, feature);
        if addresses.is_empty() {
            return Ok(None);
        }
        let taker = if with_examples { &stored.whole } else { &stored.summary };
        Ok(dashboards::concatenated_rows(&taker.take(addresses).await?)?.into_iter().next())
    }

    /// The dashboard from the `features` and `examples` tables (what a commit stores in
    /// `dashboards`).
    pub async fn assembled_dashboard(&self, dictionary_id: &str, feature: u32, hook: &str, with_examples: bool) -> Result<Option<pb::FeatureDashboard>> {
        let examples = async {
            match with_examples {
                true => self.examples(dictionary_id, Some(feature)).await,
                false => Ok(Vec::new()),
            }
        };
        let (record, examples) = tokio::join!(self.feature(dictionary_id, feature), examples);
        let (record, examples) = (record?, examples?);
        Ok(record.map(|r| dashboards::assemble(&r, hook, examples)))
    }

    async fn feature_locator(&self) -> Result<&RowLocator> {
        self.feature_rows.get_or_try_init(|| RowLocator::build(&self.features, FEATURES)).await
    }

    async fn example_locator(&self) -> Result<&RowLocator> {
        self.example_rows.get_or_try_init(|| RowLocator::build(&self.examples, EXAMPLES)).await
    }

    /// One feature, with its current label.
    pub async fn feature(&self, dictionary_id: &str, feature: u32) -> Result<Option<FeatureRecord>> {
        let record = self.feature_as_built(dictionary_id, feature).await?;
        Ok(record.map(|mut r| {
            self.apply_label(&mut r);
            r
        }))
    }

    /// One feature as its generation stored it (with the label it was built with).
    async fn feature_as_built(&self, dictionary_id: &str, feature: u32) -> Result<Option<FeatureRecord>> {
        let addresses = self.feature_locator().await?.addresses(dictionary_id, feature);
        let batch = self.feature_reads.take(dictionary_id, &addresses).await?;
        Ok(features_from_batch(&batch)?.into_iter().next())
    }

    fn apply_label(&self, record: &mut FeatureRecord) {
        if let Some(label) = self.label_override(&record.dictionary_id, record.feature) {
            record.label = label;
        }
    }

    /// A feature's label from the `labels` table, if it was ever written there (Some(None):
    /// cleared); None means the label of the generation stands.
    pub fn label_override(&self, dictionary_id: &str, feature: u32) -> Option<Option<String>> {
        self.labels.read().unwrap_or_else(|p| p.into_inner()).get(dictionary_id).and_then(|features| features.get(&feature)).cloned()
    }

    /// Reads label writes appended since the last refresh (by any writer) and makes them
    /// visible to dashboards and search. Returns how many features changed.
    pub async fn refresh_labels(&self) -> Result<usize> {
        let mut cursor = self.label_cursor.lock().await;
        let changed = cursor.refresh().await?;
        if changed.is_empty() {
            return Ok(0);
        }
        let sites: HashMap<String, (String, Option<u32>)> = self.dictionaries().await?.into_iter().map(|d| (d.dictionary_id, (d.hook, d.layer))).collect();
        let mut documents = Vec::new();
        let mut updates = Vec::with_capacity(changed.len());
        for (dictionary_id, feature) in changed {
            let label = cursor.get(&dictionary_id, feature).and_then(|r| r.label.clone());
            if let Some((hook, layer)) = sites.get(&dictionary_id) {
                if let Some(mut record) = self.feature_as_built(&dictionary_id, feature).await? {
                    record.label = label.clone();
                    documents.push((record, FeatureSite { hook: hook.as_str(), layer: *layer }));
                }
            }
            updates.push((dictionary_id, feature, label));
        }
        self.search.overlay(&documents)?;
        let count = updates.len();
        let mut labels = self.labels.write().unwrap_or_else(|p| p.into_inner());
        for (dictionary_id, feature, label) in updates {
            labels.entry(dictionary_id).or_default().insert(feature, label);
        }
        self.labels_version.fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(count)
    }

    /// Changes with every label refresh that changed a label: searches answered under one
    /// version answer the same until it changes (within a generation).
    pub fn labels_version(&self) -> u64 {
        self.labels_version.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Examples of one feature (or of every feature when None): top examples by rank, then
    /// interval samples by interval and rank.
    pub async fn examples(&self, dictionary_id: &str, feature: Option<u32>) -> Result<Vec<ExampleRecord>> {
        let mut out = Vec::new();
        match feature {
            Some(feature) => {
                let addresses = self.example_locator().await?.addresses(dictionary_id, feature);
                out.extend(examples_from_batch(&self.example_reads.take(dictionary_id, &addresses).await?)?);
            }
            None => {
                let filter = format!("dictionary_id = {}", quote(dictionary_id));
                for batch in scan(&self.examples, EXAMPLES, Some(&filter), None).await? {
                    out.extend(examples_from_batch(&batch)?);
                }
            }
        }
        dashboards::sort_examples(&mut out);
        Ok(out)
    }

    /// Every row of a dictionary in `features` (with `examples` false) or `examples`, a
    /// batch at a time and as stored (features with the label they were built with), for
    /// exports; `each` may stop the scan by returning an error.
    pub async fn for_each_batch<E: From<StoreError>>(&self, dictionary_id: &str, examples: bool, mut each: impl FnMut(Batch) -> std::result::Result<(), E>) -> std::result::Result<(), E> {
        use futures::TryStreamExt;
        let (dataset, table) = if examples { (&self.examples, EXAMPLES) } else { (&self.features, FEATURES) };
        let lance_err = |e| StoreError::lance(table, e);
        let mut scanner = dataset.scan();
        scanner.filter(&format!("dictionary_id = {}", quote(dictionary_id))).map_err(lance_err)?;
        scanner.batch_size(1024);
        let mut stream = scanner.try_into_stream().await.map_err(lance_err)?;
        while let Some(batch) = stream.try_next().await.map_err(lance_err)? {
            each(if examples { Batch::Examples(examples_from_batch(&batch)?) } else { Batch::Features(features_from_batch(&batch)?) })?;
        }
        Ok(())
    }

    /// Rows of `table` for one dictionary (for an export's progress).
    pub async fn count_rows(&self, dictionary_id: &str, examples: bool) -> Result<usize> {
        let (dataset, table) = if examples { (&self.examples, EXAMPLES) } else { (&self.features, FEATURES) };
        dataset.count_rows(Some(format!("dictionary_id = {}", quote(dictionary_id)))).await.map_err(|e| StoreError::lance(table, e))
    }

    /// The features of `dictionary_ids` whose decoder directions are nearest to `direction`
    /// by cosine, most similar first: by the quantized scan with an exact re-score, or by
    /// Lance's exact f32 scan (`Search::Exact`, the reference).
    pub async fn similar(&self, direction: &[f32], dictionary_ids: &[&str], k: usize, search: vectors::Search) -> Result<Vec<SimilarFeature>> {
        let width = direction.len();
        let table = self.decoders.get(&width).ok_or_else(|| StoreError::NoVectors { path: self.root.to_string(), width })?;
        match search {
            vectors::Search::Quantized => {
                let quantized = table.quantized(width).await?;
                quantized.nearest(&vectors::unit(direction), dictionary_ids, k).await
            }
            vectors::Search::Exact => {
                let name = vectors::table_name(width);
                let held = table.held.get_or_try_init(|| vectors::dictionaries_in(&table.dataset, &name)).await?;
                // Asking for every dictionary of the table (the usual case) needs no filter.
                let only = (!held.iter().all(|id| dictionary_ids.contains(&id.as_str()))).then_some(dictionary_ids);
                vectors::nearest_exact(&table.dataset, &name, direction, only, k).await
            }
        }
    }

    /// The rows and in-memory bytes of the quantized copy of the decoders of one width
    /// (loading it if no search has yet).
    pub async fn similar_footprint(&self, width: usize) -> Result<(usize, usize)> {
        let table = self.decoders.get(&width).ok_or_else(|| StoreError::NoVectors { path: self.root.to_string(), width })?;
        let quantized = table.quantized(width).await?;
        Ok((quantized.rows(), quantized.bytes()))
    }

    pub fn search(&self, query: &str, filter: &SearchFilter, offset: usize, limit: usize) -> Result<SearchResults> {
        self.search.search(query, filter, offset, limit)
    }

    /// One page of hits, with `total` counted exactly up to `page.exact_total_up_to`.
    pub fn search_page(&self, query: &str, filter: &SearchFilter, page: SearchPage) -> Result<SearchResults> {
        self.search.search_page(query, filter, page)
    }

    pub fn search_index(&self) -> &SearchIndex {
        &self.search
    }
}
