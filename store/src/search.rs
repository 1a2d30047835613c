//! The tantivy index over features: what a researcher types to find a feature.
//!
//! One document per feature. Searchable text: the tokens where its top examples peak, the
//! text around those peaks, its top logit tokens and its label. Dictionary, hook, layer,
//! feature index, density and max activation are fast fields for filters and results.

use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use tantivy::collector::{Count, TopDocs};
use tantivy::indexer::NoMergePolicy;
use tantivy::query::{BooleanQuery, EnableScoring, Occur, Query, QueryParser, RangeQuery, RegexQuery, TermQuery, TermSetQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema, Value, FAST, INDEXED, STORED, STRING, TEXT};
use tantivy::snippet::{Snippet, SnippetGenerator};
use tantivy::{doc, DocSet, Index, IndexReader, IndexSettings, ReloadPolicy, Searcher, TantivyDocument, Term, TERMINATED};

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
        // No merges while indexing: `finish` merges everything into one segment, and a
        // background merge of some segments would take them from under it.
        writer.set_merge_policy(Box::new(NoMergePolicy));
        Ok(IndexBuilder { index, writer, fields })
    }

    pub fn add(&mut self, feature: &FeatureRecord, site: &FeatureSite) -> Result<()> {
        self.writer.add_document(feature_doc(&self.fields, feature, site))?;
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        self.writer.commit()?;
        // The index is read-only from here on: one segment means one term lookup, one
        // scorer and one doc-store cache per query term instead of one per segment.
        let segments = self.index.searchable_segment_ids()?;
        if segments.len() > 1 {
            self.writer.merge(&segments).wait()?;
        }
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
    /// Matching features: exact up to the page's `exact_total_up_to`, an estimate beyond.
    pub total: usize,
    pub total_is_estimate: bool,
    pub hits: Vec<SearchHit>,
}

/// Matches counted exactly before `total` becomes an estimate (as Elasticsearch's
/// `track_total_hits`): counting every match of a common word costs more than ranking.
pub const EXACT_TOTAL_UP_TO: usize = 10_000;

/// Which hits a search returns, and how far it counts the rest.
#[derive(Debug, Clone, Copy)]
pub struct SearchPage {
    pub offset: usize,
    pub limit: usize,
    pub exact_total_up_to: usize,
}

impl SearchPage {
    pub fn new(offset: usize, limit: usize) -> Self {
        SearchPage { offset, limit, exact_total_up_to: EXACT_TOTAL_UP_TO }
    }
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

    /// BM25 search with tantivy's query syntax: words, "phrases", prefix*, AND/OR/-, field:;
    /// `total` counted exactly up to the default cutoff.
    pub fn search(&self, query: &str, filter: &SearchFilter, offset: usize, limit: usize) -> Result<SearchResults> {
        self.search_page(query, filter, SearchPage::new(offset, limit))
    }

    /// The text query, the filters on top of it, and whether the query has prefixes.
    fn parse(&self, query: &str, filter: &SearchFilter) -> Result<(Box<dyn Query>, Vec<(Occur, Box<dyn Query>)>, bool)> {
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
        let mut filters: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let term = |field: Field, value: &str| -> Box<dyn Query> { Box::new(TermQuery::new(Term::from_field_text(field, value), IndexRecordOption::Basic)) };
        if let Some(id) = &filter.dictionary_id {
            filters.push((Occur::Must, term(f.dictionary_id, id)));
        }
        if let Some(hook) = &filter.hook {
            filters.push((Occur::Must, term(f.hook, hook)));
        }
        if let Some(layer) = filter.layer {
            filters.push((Occur::Must, Box::new(TermQuery::new(Term::from_field_u64(f.layer, u64::from(layer)), IndexRecordOption::Basic))));
        }
        if filter.min_density.is_some() || filter.max_density.is_some() {
            let bound = |v: Option<f64>| v.map_or(Bound::Unbounded, |v| Bound::Included(Term::from_field_f64(f.density, v)));
            filters.push((Occur::Must, Box::new(RangeQuery::new(bound(filter.min_density), bound(filter.max_density)))));
        }
        Ok((text_query, filters, !prefixes.is_empty()))
    }

    /// One page of hits, best first.
    pub fn search_page(&self, query: &str, filter: &SearchFilter, page: SearchPage) -> Result<SearchResults> {
        let f = self.fields;
        let (text_query, filters, has_prefixes) = self.parse(query, filter)?;
        // Without filters the parsed query runs as it is: a union of term queries then ranks
        // with block-max WAND, skipping blocks of postings that cannot reach the top k.
        let with_filters = |extra: Option<(Occur, Box<dyn Query>)>| -> Box<dyn Query> {
            if filters.is_empty() && extra.is_none() {
                return text_query.box_clone();
            }
            let mut clauses = vec![(Occur::Must, text_query.box_clone())];
            clauses.extend(filters.iter().map(|(occur, q)| (*occur, q.box_clone())));
            clauses.extend(extra);
            Box::new(BooleanQuery::new(clauses))
        };
        let overlaid = self.overlay.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        let searcher = self.reader.searcher();
        let top_k = || TopDocs::with_limit(page.offset.saturating_add(page.limit.max(1))).order_by_score();
        let in_generation = with_filters((!overlaid.is_empty()).then(|| (Occur::MustNot, Box::new(TermSetQuery::new(overlaid.iter().cloned())) as Box<dyn Query>)));
        // Ranking and counting run as separate passes: ranking alone skips the blocks of
        // postings that cannot reach the page (block-max WAND), and counting alone skips
        // scoring. One scored pass doing both scored every match of a union of fields: on the
        // 1M store, 5,854 against 6,347 searches/s (means of eight alternated rounds, the two
        // passes ahead in six; `benchmarks/results/ab/search-count-ab.sh`).
        // Prefixes are the exception: their regex scorers cannot prune, so their one ranking
        // pass counts as it goes.
        let (top, mut total, total_is_estimate) = if has_prefixes {
            let (top, total) = searcher.search(&*in_generation, &(top_k(), Count))?;
            (top, total, false)
        } else {
            let top = searcher.search(&*in_generation, &top_k())?;
            // Where the terms cannot match more documents than are counted exactly, tantivy's
            // count (unscored, in blocks) is exact; otherwise it stops at the cutoff.
            let (total, estimate) = if match_bound(&searcher, &*text_query)? <= page.exact_total_up_to as u64 {
                (searcher.search(&*in_generation, &Count)?, false)
            } else {
                count_matches(&searcher, &*in_generation, page.exact_total_up_to)?
            };
            (top, total, estimate)
        };
        let mut ranked: Vec<(f32, Source, tantivy::DocAddress)> = top.into_iter().map(|(score, address)| (score, Source::Generation, address)).collect();
        if !overlaid.is_empty() {
            // The overlay scored with the generation's statistics, so the scores compare.
            let in_overlay = with_filters(None);
            let (overlay_top, overlay_total) = self.overlay.reader.searcher().search_with_statistics_provider(&*in_overlay, &(top_k(), Count), &searcher)?;
            ranked.extend(overlay_top.into_iter().map(|(score, address)| (score, Source::Overlay, address)));
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
            total += overlay_total;
        }
        let ranked: Vec<_> = ranked.into_iter().skip(page.offset).take(page.limit).collect();
        let mut hits = Vec::with_capacity(ranked.len());
        if ranked.is_empty() {
            return Ok(SearchResults { total, total_is_estimate, hits });
        }
        let overlay_searcher = self.overlay.reader.searcher();
        let snippets = SnippetGenerator::create(&searcher, &*text_query, f.context)?;
        let mut context_terms = std::collections::BTreeSet::new();
        text_query.query_terms(&mut |term, _| {
            if term.field() == f.context {
                context_terms.insert(term.serialized_value_bytes().to_vec());
            }
        });
        for (score, source, address) in ranked {
            let doc: TantivyDocument = match source {
                Source::Generation => searcher.doc(address)?,
                Source::Overlay => overlay_searcher.doc(address)?,
            };
            let text = |field: Field| doc.get_first(field).and_then(|v| v.as_str()).unwrap_or_default();
            let number = |field: Field| doc.get_first(field).and_then(|v| v.as_f64()).unwrap_or_default();
            let snippet = if context_terms.len() > 1 { snippets.snippet(text(f.context)) } else { first_matching_context(&snippets, text(f.context)) };
            let label = text(f.label);
            hits.push(SearchHit {
                dictionary_id: text(f.dictionary_id).to_string(),
                feature: doc.get_first(f.feature).and_then(|v| v.as_u64()).unwrap_or_default() as u32,
                score,
                label: (!label.is_empty()).then(|| label.to_string()),
                max_activation: number(f.max_activation) as f32,
                density: number(f.density),
                snippet: snippet.fragment().to_string(),
                highlights: snippet.highlighted().to_vec(),
            });
        }
        Ok(SearchResults { total, total_is_estimate, hits })
    }
}

/// For a one-word query, the snippet of the first context that holds it (contexts are
/// stored one per line, strongest example first): only the lines up to it are tokenized.
/// Queries of more words take the best fragment of all contexts, where several may meet.
fn first_matching_context(snippets: &SnippetGenerator, contexts: &str) -> Snippet {
    contexts.split('\n').map(|line| snippets.snippet(line)).find(|s| !s.highlighted().is_empty()).unwrap_or_else(Snippet::empty)
}

/// At most how many documents the text query matches: the sum of its terms' document
/// frequencies. (Prefixes have no terms before the search, and block-max WAND cannot prune
/// their regex scorers: their one ranking pass counts as it goes.)
fn match_bound(searcher: &Searcher, text_query: &dyn Query) -> Result<u64> {
    let mut terms = Vec::new();
    text_query.query_terms(&mut |term, _| terms.push(term.clone()));
    let mut bound = 0;
    for term in &terms {
        bound += searcher.doc_freq(term)?;
    }
    Ok(bound)
}

/// How many documents `query` matches: exact up to `exact_up_to`; past it an estimate (and
/// `true`), from where in doc-id order the match past the cutoff lies, extrapolated to the
/// rest of the index. Counting skips scoring, so it is cheap up to the cutoff.
fn count_matches(searcher: &Searcher, query: &dyn Query, exact_up_to: usize) -> Result<(usize, bool)> {
    let weight = query.weight(EnableScoring::disabled_from_searcher(searcher))?;
    let all_docs: u64 = searcher.segment_readers().iter().map(|r| u64::from(r.max_doc())).sum();
    let (mut counted, mut scanned, mut first) = (0usize, 0u64, None);
    for reader in searcher.segment_readers() {
        let mut matches = weight.scorer(reader, 1.0)?;
        let alive = reader.alive_bitset();
        let mut doc = matches.doc();
        while doc != TERMINATED {
            if alive.is_none_or(|a| a.is_alive(doc)) {
                let at = scanned + u64::from(doc);
                let first = *first.get_or_insert(at);
                counted += 1;
                if counted > exact_up_to {
                    // Matches spread over [first, end): the share seen so far says how many.
                    let seen = (at + 1 - first) as f64;
                    let estimate = counted as f64 * (all_docs - first) as f64 / seen;
                    return Ok((estimate.round().max(counted as f64) as usize, true));
                }
            }
            doc = matches.advance();
        }
        scanned += u64::from(reader.max_doc());
    }
    Ok((counted, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feature `i` of `n`: every third one says "common" 1-7 times in a context of ten words
    /// (so BM25 ranks by that count), features 0-4 also say "rare".
    fn record(i: u32) -> FeatureRecord {
        let mut words: Vec<String> = Vec::new();
        if i % 3 == 0 {
            words.extend(std::iter::repeat_n("common".to_string(), 1 + (i as usize / 3) % 7));
        }
        if i < 5 {
            words.push("rare".into());
        }
        while words.len() < 10 {
            words.push(format!("filler{}", words.len()));
        }
        FeatureRecord {
            dictionary_id: "d".into(),
            feature: i,
            max_activation: 1.0,
            mean_activation: 0.5,
            density: 0.01,
            fire_count: 1,
            histogram_width: 0.1,
            histogram_counts: vec![1],
            top_logits: Vec::new(),
            bottom_logits: Vec::new(),
            neighbours: Vec::new(),
            top_tokens: Vec::new(),
            top_contexts: vec![format!("line without it {i}"), words.join(" "), "the last line".into()],
            decoder_norm: 1.0,
            decoder: vec![1.0],
            label: None,
        }
    }

    fn index(n: u32) -> (tempfile::TempDir, SearchIndex) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("search");
        let mut builder = IndexBuilder::create(&path).unwrap();
        let site = FeatureSite { hook: "blocks.0.hook_resid_post", layer: Some(0) };
        for i in 0..n {
            builder.add(&record(i), &site).unwrap();
        }
        builder.finish().unwrap();
        let index = SearchIndex::open(&path).unwrap();
        (dir, index)
    }

    #[test]
    fn total_is_exact_up_to_the_cutoff_and_an_estimate_beyond() {
        let (_dir, index) = index(6000);
        let matching = 2000; // every third feature
        let exact = index.search_page("common", &SearchFilter::default(), SearchPage { offset: 0, limit: 20, exact_total_up_to: 5000 }).unwrap();
        assert_eq!((exact.total, exact.total_is_estimate), (matching, false));
        let at_cutoff = index.search_page("common", &SearchFilter::default(), SearchPage { offset: 0, limit: 20, exact_total_up_to: matching }).unwrap();
        assert_eq!((at_cutoff.total, at_cutoff.total_is_estimate), (matching, false));
        let estimated = index.search_page("common", &SearchFilter::default(), SearchPage { offset: 0, limit: 20, exact_total_up_to: 1000 }).unwrap();
        assert!(estimated.total_is_estimate);
        // The index's two writer threads take documents in no fixed order, so the first
        // thousand matches are a sample of where matches lie: its estimate's relative error
        // has a standard deviation of about sqrt((1 - 1/3) / 1000) = 2.6% (5% failed 4 of
        // 150 runs at a cutoff of 200). 15% is past 5 of those, and well short of an estimate
        // that did not extrapolate (1001, half the matches).
        let error = (estimated.total as f64 - matching as f64).abs() / matching as f64;
        assert!(error < 0.15, "estimated {} for {matching} matches", estimated.total);
        // The same hits whether or not the total was cut short.
        assert_eq!(estimated.hits, exact.hits);
        let rare = index.search_page("rare", &SearchFilter::default(), SearchPage { offset: 0, limit: 20, exact_total_up_to: 200 }).unwrap();
        assert_eq!((rare.total, rare.total_is_estimate), (5, false));
        // Prefixes rank in one pass that counts as it goes: exact whatever the cutoff.
        let prefix = index.search_page("comm*", &SearchFilter::default(), SearchPage { offset: 0, limit: 20, exact_total_up_to: 200 }).unwrap();
        assert_eq!((prefix.total, prefix.total_is_estimate), (matching, false));
    }

    #[test]
    fn ranked_pages_are_the_highest_scores_in_order() {
        let (_dir, index) = index(3000);
        let all = index.search_page("common", &SearchFilter::default(), SearchPage { offset: 0, limit: 1000, exact_total_up_to: 10 }).unwrap();
        assert_eq!(all.hits.len(), 1000);
        let top = index.search_page("common", &SearchFilter::default(), SearchPage::new(0, 20)).unwrap();
        // Seven mentions score highest (same length, more occurrences): every top hit has them.
        assert!(top.hits.iter().all(|h| (h.feature / 3) % 7 == 6), "{:?}", top.hits.iter().map(|h| h.feature).collect::<Vec<_>>());
        assert!(all.hits.windows(2).all(|w| w[0].score >= w[1].score));
        let tied = all.hits.iter().filter(|h| h.score == top.hits[0].score).count();
        assert!(tied >= 20);
        // Pages walk the same order as one long page, up to ties among equal scores.
        let page = index.search_page("common", &SearchFilter::default(), SearchPage::new(140, 20)).unwrap();
        for (hit, expected) in page.hits.iter().zip(&all.hits[140..160]) {
            assert_eq!(hit.score, expected.score);
        }
    }

    /// Ranking with pruning and counting apart give what one exhaustive scored pass gives:
    /// the same scores on the page and the same total, with and without filters.
    #[test]
    fn pruned_ranking_and_a_separate_count_match_an_exhaustive_pass() {
        let (_dir, index) = index(3000);
        let dictionary = SearchFilter { dictionary_id: Some("d".into()), ..SearchFilter::default() };
        for (query, filter) in [("common", SearchFilter::default()), ("common rare", SearchFilter::default()), ("filler9 line", SearchFilter::default()), ("common", dictionary)] {
            let page = index.search_page(query, &filter, SearchPage { offset: 0, limit: 20, exact_total_up_to: 100_000 }).unwrap();
            let (text, filters, _) = index.parse(query, &filter).unwrap();
            let mut clauses = vec![(Occur::Must, text)];
            clauses.extend(filters);
            let searcher = index.reader.searcher();
            let everything = TopDocs::with_limit(searcher.num_docs() as usize).order_by_score();
            let (all, total) = searcher.search(&BooleanQuery::new(clauses), &(everything, Count)).unwrap();
            assert!(total > 20, "{query}: {total} matches");
            assert_eq!((page.total, page.total_is_estimate), (total, false), "{query}");
            // Pruning adds a document's term scores in another order than the exhaustive
            // pass: equal up to rounding (which the writer threads' document order decides).
            let expected: Vec<f32> = all.iter().take(20).map(|(score, _)| *score).collect();
            assert_eq!(page.hits.len(), expected.len(), "{query}");
            for (hit, e) in page.hits.iter().zip(&expected) {
                assert!((hit.score - e).abs() <= 1e-5 * e.abs().max(1.0), "{query}: feature {} scored {}, expected {e}", hit.feature, hit.score);
            }
        }
    }

    #[test]
    fn a_one_word_snippet_comes_from_the_strongest_context_that_has_it() {
        let (_dir, index) = index(30);
        let hit = &index.search("common", &SearchFilter::default(), 0, 1).unwrap().hits[0];
        assert!(hit.snippet.starts_with("common common"), "{:?}", hit.snippet);
        assert_eq!(&hit.snippet[hit.highlights[0].clone()], "common");
        let rare = index.search("rare", &SearchFilter::default(), 0, 10).unwrap();
        assert_eq!(rare.hits.len(), 5);
        for hit in &rare.hits {
            assert!(hit.snippet.contains("rare") && !hit.snippet.contains("last line"), "{:?}", hit.snippet);
        }
        // Two words: the best fragment over all contexts.
        let both = index.search("rare last", &SearchFilter::default(), 0, 10).unwrap();
        assert!(both.hits.iter().all(|h| !h.highlights.is_empty()));
    }
}
