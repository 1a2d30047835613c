//! The rows of the store's tables as Rust structs.

use serde::{Deserialize, Serialize};

/// One indexed dictionary and the manifest of the run that indexed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DictionaryRecord {
    pub dictionary_id: String,
    pub model_id: String,
    pub model_checksum: String,
    pub hook: String,
    pub hook_out: String,
    pub layer: Option<u32>,
    pub architecture: String,
    pub d_in: u32,
    pub d_sae: u32,
    pub source_format: String,
    pub source_checksum: String,
    /// Corpus spec, windows, tokens seen, code version: whatever the indexer records.
    pub manifest: serde_json::Value,
    pub created_at: String,
}

/// A token and the size of a feature's direct effect on its logit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogitEffect {
    pub token_id: u32,
    pub token: String,
    pub value: f32,
}

/// A feature with a similar decoder direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Neighbour {
    pub feature: u32,
    pub cosine: f32,
}

/// The statistics and summaries of one feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureRecord {
    pub dictionary_id: String,
    pub feature: u32,
    pub max_activation: f32,
    pub mean_activation: f32,
    pub density: f64,
    pub fire_count: u64,
    pub histogram_width: f32,
    pub histogram_counts: Vec<u64>,
    pub top_logits: Vec<LogitEffect>,
    pub bottom_logits: Vec<LogitEffect>,
    pub neighbours: Vec<Neighbour>,
    pub top_tokens: Vec<String>,
    pub top_contexts: Vec<String>,
    pub decoder_norm: f32,
    pub decoder: Vec<f32>,
    pub label: Option<String>,
}

/// Which list an example belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum ExampleKind {
    /// The max-activating windows, `rank` 0 strongest.
    Top,
    /// A sample of windows whose max falls in `[low, high)`.
    Interval { index: u32, low: f32, high: f32 },
}

/// One window of text with a feature's activation on each of its tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExampleRecord {
    pub dictionary_id: String,
    pub feature: u32,
    pub kind: ExampleKind,
    pub rank: u32,
    pub max_activation: f32,
    pub max_position: u32,
    pub window: u64,
    pub token_ids: Vec<u32>,
    pub tokens: Vec<String>,
    pub activations: Vec<f32>,
    pub document_id: u64,
    pub document_offset: u32,
}

/// Everything stored about one dictionary, committed together.
#[derive(Debug, Clone, PartialEq)]
pub struct DictionaryCommit {
    pub dictionary: DictionaryRecord,
    pub features: Vec<FeatureRecord>,
    pub examples: Vec<ExampleRecord>,
}

/// One write to the `labels` table: a feature's label from then on (None clears it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelRecord {
    pub dictionary_id: String,
    pub feature: u32,
    pub label: Option<String>,
    pub author: String,
    /// Microseconds since the Unix epoch, UTC.
    pub created_at_us: i64,
}

impl LabelRecord {
    /// A label written now.
    pub fn now(dictionary_id: &str, feature: u32, label: Option<String>, author: &str) -> Self {
        let created_at_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
        LabelRecord { dictionary_id: dictionary_id.into(), feature, label, author: author.into(), created_at_us }
    }
}
