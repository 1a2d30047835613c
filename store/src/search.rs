//! The tantivy index over features: what a researcher types to find a feature.
//!
//! One document per feature. Searchable text: the tokens where its top examples peak, the
//! text around those peaks, its top logit tokens and its label. Dictionary, hook, layer,
//! feature index, density and max activation are fast fields for filters and results.

use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use tantivy::collector::{Count, TopDocs};
use tantivy::query::{BooleanQuery, Occur, Query, QueryParser, RangeQuery, RegexQuery, TermQuery, TermSetQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema, Value, FAST, INDEXED, STORED, STRING, TEXT};
use tantivy::snippet::SnippetGenerator;
use tantivy::{doc, Index, IndexReader, IndexSettings, ReloadPolicy, TantivyDocument, Term};

use crate::error::{Result, StoreError};
use crate::records::FeatureRecord;

/// Fields of the feature index.
#[derive(Clone, Copy)]
struct Fields {
    /// "dictionary_id/feature": the unique key, to replace one feature's document.
    key: Field,
    dictionary_id: Field,
    feature: Field,
    hook: Field,
    layer: Field,
    density: Field,
    max_activation: Field,
    tokens: Field,
    context: Field,
    logits: Field,
    label: Field,
}

/// Doc-store block size of new indexes (see `IndexBuilder::create`).
const DOCSTORE_BLOCK_BYTES: usize = 4096;
/// Decompressed doc-store blocks each segment reader keeps.
const DOC_STORE_CACHE_BLOCKS: usize = 2048;

/// `layer` of hooks without one (`hook_embed`), so that layer filters never match them.
const NO_LAYER: u64 = u64::MAX;

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = Fields {
        key: b.add_text_field("key", STRING),
        dictionary_id: b.add_text_field("dictionary_id", STRING | STORED | FAST),
        feature: b.add_u64_field("feature", INDEXED | STORED | FAST),
        hook: b.add_text_field("hook", STRING | STORED),
        layer: b.add_u64_field("layer", INDEXED | FAST),
        density: b.add_f64_field("density", INDEXED | STORED | FAST),
        max_activation: b.add_f64_field("max_activation", STORED | FAST),
        tokens: b.add_text_field("tokens", TEXT),
        context: b.add_text_field("context", TEXT | STORED),
        logits: b.add_text_field("logits", TEXT),
        label: b.add_text_field("label", TEXT | STORED),
    };
    (b.build(), fields)
}

fn feature_key(dictionary_id: &str, feature: u32) -> String {
    format!("{dictionary_id}/{feature}")
}

/// Splits bare `word*` prefixes (which tantivy's parser only takes as phrase prefixes of
/// two or more words) from the rest of a query.
fn split_prefixes(query: &str) -> (String, Vec<String>) {
    let mut rest = Vec::new();
    let mut prefixes = Vec::new();
    for word in query.split_whitespace() {
        match word.strip_suffix('*') {
            Some(stem) if !stem.is_empty() && stem.chars().all(char::is_alphanumeric) => prefixes.push(stem.to_lowercase()),
            _ => rest.push(word),
        }
    }
    (rest.join(" "), prefixes)
}

fn regex_escape(text: &str) -> String {
    text.chars().flat_map(|c| if c.is_alphanumeric() { vec![c] } else { vec!['\\', c] }).collect()
}

/// The document of one feature.
fn feature_doc(f: &Fields, feature: &FeatureRecord, site: &FeatureSite) -> TantivyDocument {
    let logits: Vec<&str> = feature.top_logits.iter().map(|l| l.token.as_str()).collect();
    doc!(
        f.key => feature_key(&feature.dictionary_id, feature.feature),
        f.dictionary_id => feature.dictionary_id.as_str(),
        f.feature => u64::from(feature.feature),
        f.hook => site.hook,
        f.layer => site.layer.map_or(NO_LAYER, u64::from),
        f.density => feature.density,
        f.max_activation => f64::from(feature.max_activation),
        f.tokens => feature.top_tokens.join(" "),
        f.context => feature.top_contexts.join("\n"),
        f.logits => logits.join(" "),
        f.label => feature.label.clone().unwrap_or_default(),
    )
}

/// Where a feature lives: what the index needs beyond the feature row.
pub struct FeatureSite<'a> {
    pub hook: &'a str,
    pub layer: Option<u32>,
}

/// Builds a new index in `dir` (which must not exist) from feature rows.
pub struct IndexBuilder {
    index: Index,
    writer: tantivy::IndexWriter,
    fields: Fields,
}

impl IndexBuilder {
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let (schema, fields) = schema();
        // A hit's stored fields are read by decompressing the whole doc-store block around
        // it: 4 KiB blocks instead of tantivy's 16 KiB make that ~4x less work per hit.
        let settings = IndexSettings { docstore_blocksize: DOCSTORE_BLOCK_BYTES, ..IndexSettings::default() };
        let index = Index::builder().schema(schema).settings(settings).create_in_dir(dir)?;
        // tantivy needs >= 15 MB per indexing thread; two threads fit the 2-core machines.
        let writer = index.writer_with_num_threads(2, 128 << 20)?;
        Ok(IndexBuilder { index, writer, fields })
    }

    pub fn add(&mut self, feature: &FeatureRecord, site: &FeatureSite) -> Result<()> {
        self.writer.add_document(feature_doc(&self.fields, feature, site))?;
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        self.writer.commit()?;
        self.writer.wait_merging_threads()?;
        drop(self.index);
        Ok(())
    }
}

/// Filters applied on top of the text query.
#[derive(Debug, Clone, Default)]
pub struct SearchFilter {
    pub dictionary_id: Option<String>,
    pub hook: Option<String>,
    pub layer: Option<u32>,
    pub min_density: Option<f64>,
    pub max_density: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    pub dictionary_id: String,
    pub feature: u32,
    pub score: f32,
    pub label: Option<String>,
    pub max_activation: f32,
    pub density: f64,
    /// A fragment of the best matching example text, with the matched byte ranges.
    pub snippet: String,
    pub highlights: Vec<std::ops::Range<usize>>,
}

#[derive(Debug, Clone)]
pub struct SearchResults {
    pub total: usize,
    pub hits: Vec<SearchHit>,
}

/// An open feature index: one generation's index (read-only) plus an overlay of the
/// features labelled since it was built.
///
/// Labels live outside generations (see `labels.rs`), so a generation's documents carry
/// the labels of when it was built. Every feature with a later label write gets a fresh
/// document in a small in-memory overlay index and is masked out of the generation's index;
/// a search runs on both, scoring the overlay with the generation's BM25 statistics so the
/// two lists merge by score.
pub struct SearchIndex {
    reader: IndexReader,
    parser: QueryParser,
    fields: Fields,
    overlay: Overlay,
}

/// tantivy's smallest indexing budget (15 MB; it refuses less).
const OVERLAY_WRITER_BYTES: usize = 15_000_000;

struct Overlay {
    writer: Mutex<tantivy::IndexWriter>,
    reader: IndexReader,
    /// Keys of the features it holds, masked out of the generation's index.
    keys: RwLock<Arc<Vec<Term>>>,
}

impl Overlay {
    fn new() -> Result<Self> {
        let (schema, _) = schema();
        let index = Index::create_in_ram(schema);
        let writer = index.writer_with_num_threads(1, OVERLAY_WRITER_BYTES)?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        Ok(Overlay { writer: Mutex::new(writer), reader, keys: RwLock::new(Arc::new(Vec::new())) })
    }
}

/// Where a hit was found.
#[derive(Clone, Copy)]
enum Source {
    Generation,
    Overlay,
}

impl SearchIndex {
    pub fn open(dir: &Path) -> Result<Self> {
        let index = Index::open_in_dir(dir)?;
        let (_, fields) = schema();
        // Manual reloads: a reader sees exactly the commit it opened (one store generation).
        // Every hit reads its stored fields from a 4 KiB doc-store block; tantivy keeps 100
        // decompressed blocks per segment, a fraction of a small store's hot blocks, and
        // decompressing was the largest single cost of a cold search (8 MB per segment here).
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).doc_store_cache_num_blocks(DOC_STORE_CACHE_BLOCKS).try_into()?;
        let mut parser = QueryParser::for_index(&index, vec![fields.tokens, fields.context, fields.logits, fields.label]);
        parser.set_field_boost(fields.label, 3.0);
        parser.set_field_boost(fields.tokens, 2.0);
        Ok(SearchIndex { reader, parser, fields, overlay: Overlay::new()? })
    }

    pub fn num_features(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Puts these features' documents (with their current labels) in the overlay,
    /// replacing any earlier overlay document of theirs; searchable when this returns.
    pub fn overlay(&self, features: &[(FeatureRecord, FeatureSite)]) -> Result<()> {
        if features.is_empty() {
            return Ok(());
        }
        let f = self.fields;
        let mut writer = self.overlay.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys: Vec<Term> = self.overlay.keys.read().unwrap_or_else(|p| p.into_inner()).as_ref().clone();
        for (feature, site) in features {
            let key = Term::from_field_text(f.key, &feature_key(&feature.dictionary_id, feature.feature));
            writer.delete_term(key.clone());
            writer.add_document(feature_doc(&f, feature, site))?;
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        writer.commit()?;
        self.overlay.reader.reload()?;
        *self.overlay.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        Ok(())
    }

    /// BM25 search with tantivy's query syntax: words, "phrases", prefix*, AND/OR/-, field:.
    pub fn search(&self, query: &str, filter: &SearchFilter, offset: usize, limit: usize) -> Result<SearchResults> {
        let f = self.fields;
        let (rest, prefixes) = split_prefixes(query);
        let mut text_clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        if !rest.is_empty() {
            let parsed = self.parser.parse_query(&rest).map_err(|e| StoreError::Query { query: query.into(), reason: e.to_string() })?;
            text_clauses.push((Occur::Must, parsed));
        }
        for prefix in &prefixes {
            let pattern = format!("{}.*", regex_escape(prefix));
            let mut per_field: Vec<(Occur, Box<dyn Query>)> = Vec::new();
            for field in [f.tokens, f.context, f.logits, f.label] {
                let regex = RegexQuery::from_pattern(&pattern, field).map_err(|e| StoreError::Query { query: query.into(), reason: e.to_string() })?;
                per_field.push((Occur::Should, Box::new(regex)));
            }
            text_clauses.push((Occur::Must, Box::new(BooleanQuery::new(per_field))));
        }
        let text_query: Box<dyn Query> = if text_clauses.len() == 1 { text_clauses.pop().expect("one clause").1 } else { Box::new(BooleanQuery::new(text_clauses)) };
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, text_query.box_clone())];
        let term = |field: Field, value: &str| -> Box<dyn Query> { Box::new(TermQuery::new(Term::from_field_text(field, value), IndexRecordOption::Basic)) };
        if let Some(id) = &filter.dictionary_id {
            clauses.push((Occur::Must, term(f.dictionary_id, id)));
        }
        if let Some(hook) = &filter.hook {
            clauses.push((Occur::Must, term(f.hook, hook)));
        }
        if let Some(layer) = filter.layer {
            clauses.push((Occur::Must, Box::new(TermQuery::new(Term::from_field_u64(f.layer, u64::from(layer)), IndexRecordOption::Basic))));
        }
        if filter.min_density.is_some() || filter.max_density.is_some() {
            let bound = |v: Option<f64>| v.map_or(Bound::Unbounded, |v| Bound::Included(Term::from_field_f64(f.density, v)));
            clauses.push((Occur::Must, Box::new(RangeQuery::new(bound(filter.min_density), bound(filter.max_density)))));
        }
        let overlaid = self.overlay.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        let searcher = self.reader.searcher();
        let wanted = offset.saturating_add(limit.max(1));
        let (mut ranked, total): (Vec<(f32, Source, tantivy::DocAddress)>, usize) = if overlaid.is_empty() {
            let query = BooleanQuery::new(clauses);
            let (top, total) = searcher.search(&query, &(TopDocs::with_limit(limit.max(1)).and_offset(offset).order_by_score(), Count))?;
            (top.into_iter().map(|(score, address)| (score, Source::Generation, address)).collect(), total)
        } else {
            let in_overlay = BooleanQuery::new(clauses.iter().map(|(occur, q)| (*occur, q.box_clone())).collect());
            clauses.push((Occur::MustNot, Box::new(TermSetQuery::new(overlaid.iter().cloned()))));
            let in_generation = BooleanQuery::new(clauses);
            let collector = (TopDocs::with_limit(wanted).order_by_score(), Count);
            let (top, total) = searcher.search(&in_generation, &collector)?;
            // The overlay scored with the generation's statistics, so the scores compare.
            let (overlay_top, overlay_total) = self.overlay.reader.searcher().search_with_statistics_provider(&in_overlay, &collector, &searcher)?;
            let mut ranked: Vec<_> = top.into_iter().map(|(score, address)| (score, Source::Generation, address)).collect();
            ranked.extend(overlay_top.into_iter().map(|(score, address)| (score, Source::Overlay, address)));
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
            (ranked.into_iter().skip(offset).collect(), total + overlay_total)
        };
        ranked.truncate(limit);
        let overlay_searcher = self.overlay.reader.searcher();
        let snippets = SnippetGenerator::create(&searcher, &*text_query, f.context)?;
        let mut hits = Vec::with_capacity(ranked.len());
        for (score, source, address) in ranked {
            let doc: TantivyDocument = match source {
                Source::Generation => searcher.doc(address)?,
                Source::Overlay => overlay_searcher.doc(address)?,
            };
            let text = |field: Field| doc.get_first(field).and_then(|v| v.as_str()).unwrap_or_default().to_string();
            let number = |field: Field| doc.get_first(field).and_then(|v| v.as_f64()).unwrap_or_default();
            let snippet = snippets.snippet_from_doc(&doc);
            let label = text(f.label);
            hits.push(SearchHit {
                dictionary_id: text(f.dictionary_id),
                feature: doc.get_first(f.feature).and_then(|v| v.as_u64()).unwrap_or_default() as u32,
                score,
                label: (!label.is_empty()).then_some(label),
                max_activation: number(f.max_activation) as f32,
                density: number(f.density),
                snippet: snippet.fragment().to_string(),
                highlights: snippet.highlighted().to_vec(),
            });
        }
        Ok(SearchResults { total, hits })
    }
}
