//! Arrow schemas of the store's Lance tables (see DESIGN.md, "Store").
//!
//! Every table carries `dictionary_id`, so that re-indexing one dictionary replaces only its
//! rows, in one new Lance version.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

pub const DICTIONARIES: &str = "dictionaries";
pub const FEATURES: &str = "features";
pub const EXAMPLES: &str = "examples";
/// One row per feature: its whole dashboard, encoded, for GetFeature's single read.
pub const DASHBOARDS: &str = "dashboards";
/// Append-only, outside generations: every label ever set (the latest per feature wins).
pub const LABELS: &str = "labels";
/// Append-only, outside generations: named directions at a hook (steering targets, probes).
pub const VECTORS: &str = "vectors";
/// Append-only, outside generations: every version of every monitor definition.
pub const MONITORS: &str = "monitors";
/// Append-only, outside generations: the audit log of monitor firings.
pub const ALERTS: &str = "alerts";

/// The kind column of `examples`: the K max-activating windows, or samples of an interval.
pub const KIND_TOP: &str = "top";
pub const KIND_INTERVAL: &str = "interval";

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, true)))
}

/// One row per indexed dictionary: what it is and how it was indexed.
pub fn dictionaries() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("dictionary_id", DataType::Utf8, false),
        Field::new("model_id", DataType::Utf8, false),
        Field::new("model_checksum", DataType::Utf8, false),
        Field::new("hook", DataType::Utf8, false),
        Field::new("hook_out", DataType::Utf8, false),
        Field::new("layer", DataType::UInt32, true),
        Field::new("architecture", DataType::Utf8, false),
        Field::new("d_in", DataType::UInt32, false),
        Field::new("d_sae", DataType::UInt32, false),
        Field::new("source_format", DataType::Utf8, false),
        Field::new("source_checksum", DataType::Utf8, false),
        // The index run's manifest as JSON: corpus spec, windows, tokens seen, code version.
        Field::new("manifest", DataType::Utf8, false),
        Field::new("created_at", DataType::Utf8, false),
    ]))
}

/// One row per feature: statistics, logit effects, neighbours, decoder vector.
pub fn features() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("dictionary_id", DataType::Utf8, false),
        Field::new("feature", DataType::UInt32, false),
        Field::new("max_activation", DataType::Float32, false),
        Field::new("mean_activation", DataType::Float32, false),
        // Fraction of counted tokens (BOS and padding excluded) where the feature is > 0.
        Field::new("density", DataType::Float64, false),
        Field::new("fire_count", DataType::UInt64, false),
        // Histogram of the non-zero activations: bin i covers [i * width, (i + 1) * width).
        Field::new("histogram_width", DataType::Float32, false),
        Field::new("histogram_counts", list_of(DataType::UInt64), false),
        Field::new("top_logit_ids", list_of(DataType::UInt32), false),
        Field::new("top_logit_tokens", list_of(DataType::Utf8), false),
        Field::new("top_logit_values", list_of(DataType::Float32), false),
        Field::new("bottom_logit_ids", list_of(DataType::UInt32), false),
        Field::new("bottom_logit_tokens", list_of(DataType::Utf8), false),
        Field::new("bottom_logit_values", list_of(DataType::Float32), false),
        Field::new("neighbours", list_of(DataType::UInt32), false),
        Field::new("neighbour_cosines", list_of(DataType::Float32), false),
        // The tokens where the top examples peak, most frequent first (searchable).
        Field::new("top_tokens", list_of(DataType::Utf8), false),
        // Text around the max token of the best top examples (searchable, shown as snippets).
        Field::new("top_contexts", list_of(DataType::Utf8), false),
        Field::new("decoder_norm", DataType::Float32, false),
        Field::new("decoder", list_of(DataType::Float32), false),
        Field::new("label", DataType::Utf8, true),
    ]))
}

/// One row per stored example window of a feature.
pub fn examples() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("dictionary_id", DataType::Utf8, false),
        Field::new("feature", DataType::UInt32, false),
        Field::new("kind", DataType::Utf8, false),
        // Interval examples: the interval's index (0 = lowest); top examples: 0.
        Field::new("interval", DataType::UInt32, false),
        Field::new("interval_low", DataType::Float32, false),
        Field::new("interval_high", DataType::Float32, false),
        // Position in the list: top examples by activation, interval samples by sample order.
        Field::new("rank", DataType::UInt32, false),
        Field::new("max_activation", DataType::Float32, false),
        Field::new("max_position", DataType::UInt32, false),
        Field::new("window", DataType::UInt64, false),
        Field::new("token_ids", list_of(DataType::UInt32), false),
        Field::new("tokens", list_of(DataType::Utf8), false),
        Field::new("activations", list_of(DataType::Float32), false),
        // Where the max token comes from: document (ordinal in the corpus) and token offset.
        Field::new("document_id", DataType::UInt64, false),
        Field::new("document_offset", DataType::UInt32, false),
    ]))
}

/// One row per feature: its dashboard as the API's `FeatureDashboard` message (protobuf),
/// split in two so that a dashboard without examples reads only the small part. `summary`
/// holds everything but the examples (statistics, histogram, logits, neighbours, the label
/// the generation was built with); `examples` holds only `top_examples` and
/// `interval_examples`, every one the generation stored. Written by each commit from the
/// `features` and `examples` rows it wrote, which stay the tables for analysis.
pub fn dashboards() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("dictionary_id", DataType::Utf8, false),
        Field::new("feature", DataType::UInt32, false),
        Field::new("summary", DataType::Binary, false),
        Field::new("examples", DataType::LargeBinary, false),
    ]))
}

/// One row per vector write (append-only: the last committed row of a name is the vector;
/// a null `direction` deletes it). `provenance` is JSON: method, texts' hashes, counts.
pub fn vectors() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("model_checksum", DataType::Utf8, false),
        Field::new("hook", DataType::Utf8, false),
        Field::new("direction", list_of(DataType::Float32), true),
        Field::new("provenance", DataType::Utf8, false),
        Field::new("author", DataType::Utf8, false),
        Field::new("created_at", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
    ]))
}

/// One row per monitor write: a version of a definition (JSON, as `loupe_engine::monitor::Monitor`
/// serializes it), or an archival (`archived`, with the last definition repeated).
pub fn monitors() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("version", DataType::UInt32, false),
        Field::new("definition", DataType::Utf8, false),
        Field::new("archived", DataType::Boolean, false),
        Field::new("author", DataType::Utf8, false),
        Field::new("created_at", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
    ]))
}

/// One row per monitor firing. `spans` is JSON; `text` is null unless the server keeps texts.
pub fn alerts() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("alert_id", DataType::Utf8, false),
        Field::new("monitor", DataType::Utf8, false),
        Field::new("version", DataType::UInt32, false),
        Field::new("request_id", DataType::Utf8, false),
        Field::new("input_id", DataType::Utf8, false),
        Field::new("caller", DataType::Utf8, false),
        Field::new("created_at", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("action", DataType::Utf8, false),
        Field::new("score", DataType::Float32, false),
        Field::new("threshold", DataType::Float32, false),
        Field::new("first_token", DataType::UInt32, false),
        Field::new("spans", DataType::Utf8, false),
        Field::new("text_sha256", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, true),
    ]))
}

/// One row per label write (append-only: history is kept, the last committed row of a
/// feature is its label). A null `label` clears it.
pub fn labels() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("dictionary_id", DataType::Utf8, false),
        Field::new("feature", DataType::UInt32, false),
        Field::new("label", DataType::Utf8, true),
        // Who wrote it (the caller's identity once the server authenticates callers).
        Field::new("author", DataType::Utf8, false),
        Field::new("created_at", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
    ]))
}
