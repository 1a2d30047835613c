//! Each feature's dashboard as one record laid out for the read.
//!
//! Assembling a dashboard from the columnar tables costs one read per column of the
//! feature's row and of its example rows (about 40 on a real store) plus decoding; a
//! commit therefore also writes the `dashboards` table: per feature, the API's
//! `FeatureDashboard` message encoded once, in two parts (see
//! `loupe_schema::tables::dashboards`). GetFeature is then a point lookup by row address of
//! one or two values. Generations written before the table existed, and dictionaries a
//! commit of an older loupe wrote, are read through the columnar tables instead
//! ([`StoreReader::dashboard`](crate::StoreReader::dashboard)): the same message.

use std::collections::HashMap;

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, BinaryArray, LargeBinaryArray, RecordBatch, StringArray, UInt32Array};
use futures::TryStreamExt;
use lance::deps::datafusion::error::DataFusionError;
use lance::deps::datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use lance::Dataset;
use loupe_schema::proto::v1 as pb;
use loupe_schema::tables::{self, DASHBOARDS, EXAMPLES, FEATURES};
use prost::Message;

use crate::arrow::{examples_from_batch, features_from_batch};
use crate::error::{Result, StoreError};
use crate::location::Location;
use crate::locator::RowLocator;
use crate::records::{ExampleKind, ExampleRecord, FeatureRecord, LogitEffect};
use crate::tables::{of_dictionaries, replace_dictionary_rows_from_stream};
use crate::taker::PointReads;

/// Features per batch of the table's write: a real feature's examples are ~90 KB.
const FEATURES_PER_BATCH: usize = 128;

/// Top examples by rank, then interval samples by interval and rank (per feature).
pub fn sort_examples(examples: &mut [ExampleRecord]) {
    examples.sort_by_key(|e| {
        let interval = match e.kind {
            ExampleKind::Top => 0,
            ExampleKind::Interval { index, .. } => 1 + u64::from(index),
        };
        (e.feature, interval, e.rank)
    });
}

fn feature_ref(dictionary_id: &str, feature: u32) -> Option<pb::FeatureRef> {
    Some(pb::FeatureRef { dictionary_id: dictionary_id.to_string(), feature })
}

fn logits(effects: &[LogitEffect]) -> Vec<pb::LogitEffect> {
    effects.iter().map(|l| pb::LogitEffect { token_id: l.token_id, token: l.token.clone(), value: l.value }).collect()
}

/// Moves the example's token lists into the message instead of copying them.
fn example(e: ExampleRecord) -> pb::Example {
    pb::Example {
        max_activation: e.max_activation,
        max_position: e.max_position,
        token_ids: e.token_ids,
        tokens: e.tokens,
        activations: e.activations,
        document_id: e.document_id,
        document_offset: e.document_offset,
        window: e.window,
    }
}

/// A feature's whole dashboard: statistics, histogram, logit effects, neighbours and every
/// one of `examples` (the feature's, in [`sort_examples`] order), with `feature`'s label.
pub fn assemble(feature: &FeatureRecord, hook: &str, examples: Vec<ExampleRecord>) -> pb::FeatureDashboard {
    let mut top_examples = Vec::new();
    let mut interval_examples: Vec<pb::IntervalExamples> = Vec::new();
    for e in examples {
        match e.kind {
            ExampleKind::Top => top_examples.push(example(e)),
            ExampleKind::Interval { low, high, .. } => {
                if interval_examples.last().is_none_or(|i| i.low != low) {
                    interval_examples.push(pb::IntervalExamples { low, high, examples: Vec::new() });
                }
                interval_examples.last_mut().expect("pushed above").examples.push(example(e));
            }
        }
    }
    pb::FeatureDashboard {
        feature: feature_ref(&feature.dictionary_id, feature.feature),
        label: feature.label.clone(),
        max_activation: feature.max_activation,
        mean_activation: feature.mean_activation,
        density: feature.density,
        fire_count: feature.fire_count,
        histogram: Some(pb::Histogram { bin_width: feature.histogram_width, counts: feature.histogram_counts.clone() }),
        top_logits: logits(&feature.top_logits),
        bottom_logits: logits(&feature.bottom_logits),
        neighbours: feature.neighbours.iter().map(|n| pb::Neighbour { feature: feature_ref(&feature.dictionary_id, n.feature), cosine: n.cosine }).collect(),
        decoder_norm: feature.decoder_norm,
        top_examples,
        interval_examples,
        hook: hook.to_string(),
    }
}

/// Keeps at most `max_top` top examples and `max_interval` samples per interval (0: all).
pub fn limit_examples(dashboard: &mut pb::FeatureDashboard, max_top: usize, max_interval: usize) {
    if max_top > 0 {
        dashboard.top_examples.truncate(max_top);
    }
    if max_interval > 0 {
        dashboard.interval_examples.iter_mut().for_each(|i| i.examples.truncate(max_interval));
    }
}

/// The two stored parts of a dashboard: (everything but the examples, only the examples).
pub fn encode(mut dashboard: pb::FeatureDashboard) -> (Vec<u8>, Vec<u8>) {
    let examples = pb::FeatureDashboard {
        top_examples: std::mem::take(&mut dashboard.top_examples),
        interval_examples: std::mem::take(&mut dashboard.interval_examples),
        ..Default::default()
    };
    (dashboard.encode_to_vec(), examples.encode_to_vec())
}

/// A dashboard from its stored parts (without examples when `examples` is None).
pub fn decode(summary: &[u8], examples: Option<&[u8]>) -> Result<pb::FeatureDashboard> {
    let corrupt = |e: prost::DecodeError| StoreError::Column { table: DASHBOARDS.into(), column: "summary/examples".into(), reason: format!("not an encoded FeatureDashboard: {e}") };
    let mut dashboard = pb::FeatureDashboard::decode(summary).map_err(corrupt)?;
    if let Some(bytes) = examples {
        let parts = pb::FeatureDashboard::decode(bytes).map_err(corrupt)?;
        dashboard.top_examples = parts.top_examples;
        dashboard.interval_examples = parts.interval_examples;
    }
    Ok(dashboard)
}

/// The stored parts of each row of a take, concatenated: one encoded `FeatureDashboard`.
pub(crate) fn concatenated_rows(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let column_err = |column: &str, reason: &str| StoreError::Column { table: DASHBOARDS.into(), column: column.into(), reason: reason.into() };
    let summary = batch.column_by_name("summary").and_then(|c| c.as_binary_opt::<i32>()).ok_or_else(|| column_err("summary", "expected binary"))?;
    let examples = match batch.column_by_name("examples") {
        Some(column) => Some(column.as_binary_opt::<i64>().ok_or_else(|| column_err("examples", "expected large binary"))?),
        None => None,
    };
    Ok((0..batch.num_rows())
        .map(|i| {
            let tail = examples.map_or(&[][..], |e| e.value(i));
            let mut bytes = Vec::with_capacity(summary.value(i).len() + tail.len());
            bytes.extend_from_slice(summary.value(i));
            bytes.extend_from_slice(tail);
            bytes
        })
        .collect())
}

/// An encoded dashboard with a label written after its generation: appended as one more
/// `label` field (protobuf keeps the last value of a field), or, for a label cleared since
/// (an encoded field cannot be unset by appending), decoded, cleared and encoded again.
pub fn with_label(encoded: Vec<u8>, label: Option<Option<String>>) -> Result<Vec<u8>> {
    match label {
        None => Ok(encoded),
        Some(Some(label)) => {
            let mut encoded = encoded;
            prost::encoding::string::encode(LABEL_FIELD, &label, &mut encoded);
            Ok(encoded)
        }
        Some(None) => {
            let mut dashboard = decode(&encoded, None)?;
            dashboard.label = None;
            Ok(dashboard.encode_to_vec())
        }
    }
}

/// The field number of `FeatureDashboard.label` (schema/proto/loupe/v1/features.proto).
const LABEL_FIELD: u32 = 2;

/// Writes the dashboards of the dictionaries `ids` (hook of each in `hooks`) from one
/// version of the `features` and `examples` tables, replacing their rows in `dashboards`;
/// returns the table's new version. Reads a batch of features at a time, and their
/// examples by row address, so that memory stays bounded by a batch.
pub(crate) async fn write(
    root: &Location,
    committed: Option<u64>,
    ids: &[&str],
    hooks: HashMap<String, String>,
    features: &Dataset,
    examples: &Dataset,
) -> Result<Dataset> {
    let lance_err = |e| StoreError::lance(FEATURES, e);
    let locator = Arc::new(RowLocator::build(examples, EXAMPLES).await?);
    let reads = Arc::new(PointReads::new(examples, EXAMPLES)?);
    let hooks = Arc::new(hooks);
    let mut scanner = features.scan();
    scanner.filter(&of_dictionaries(ids)).map_err(lance_err)?;
    scanner.batch_size(FEATURES_PER_BATCH);
    let rows = scanner.try_into_stream().await.map_err(lance_err)?;
    let batches = rows
        .map_err(lance_err)
        .map_ok(move |batch| {
            let (locator, reads, hooks) = (locator.clone(), reads.clone(), hooks.clone());
            async move { dashboards_batch(&batch, &locator, &reads, &hooks).await }
        })
        .try_buffered(2)
        .map_err(|e| DataFusionError::External(Box::new(e)));
    let stream = Box::pin(RecordBatchStreamAdapter::new(tables::dashboards(), batches));
    replace_dictionary_rows_from_stream(root, DASHBOARDS, committed, ids, stream).await
}

/// The dashboards of one batch of `features` rows.
async fn dashboards_batch(batch: &RecordBatch, locator: &RowLocator, reads: &PointReads, hooks: &HashMap<String, String>) -> Result<RecordBatch> {
    let features = features_from_batch(batch)?;
    // Examples by dictionary: a take fills in one dictionary id.
    let mut by_feature: HashMap<(&str, u32), Vec<ExampleRecord>> = HashMap::new();
    let mut dictionaries: Vec<&str> = features.iter().map(|f| f.dictionary_id.as_str()).collect();
    dictionaries.dedup();
    for id in dictionaries {
        let addresses: Vec<u64> = features.iter().filter(|f| f.dictionary_id == id).flat_map(|f| locator.addresses(id, f.feature)).collect();
        let mut rows = examples_from_batch(&reads.take(id, &addresses).await?)?;
        sort_examples(&mut rows);
        for row in rows {
            by_feature.entry((id, row.feature)).or_default().push(row);
        }
    }
    let (mut summaries, mut example_parts) = (Vec::with_capacity(features.len()), Vec::with_capacity(features.len()));
    for feature in &features {
        let hook = hooks.get(&feature.dictionary_id).map_or("", String::as_str);
        let examples = by_feature.remove(&(feature.dictionary_id.as_str(), feature.feature)).unwrap_or_default();
        let (summary, examples) = encode(assemble(feature, hook, examples));
        summaries.push(summary);
        example_parts.push(examples);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(features.iter().map(|f| f.dictionary_id.as_str()))),
        Arc::new(UInt32Array::from_iter_values(features.iter().map(|f| f.feature))),
        Arc::new(BinaryArray::from_iter_values(summaries.iter())),
        Arc::new(LargeBinaryArray::from_iter_values(example_parts.iter())),
    ];
    Ok(RecordBatch::try_new(tables::dashboards(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::synthetic_dictionary;

    #[test]
    fn the_two_stored_parts_decode_to_the_assembled_dashboard() {
        let commit = synthetic_dictionary("d", 3, 4, 7);
        for feature in &commit.features {
            let mut examples: Vec<ExampleRecord> = commit.examples.iter().filter(|e| e.feature == feature.feature).cloned().collect();
            sort_examples(&mut examples);
            let whole = assemble(feature, "blocks.0.hook_resid_post", examples);
            assert!(!whole.top_examples.is_empty() && !whole.interval_examples.is_empty());
            let (summary, examples) = encode(whole.clone());
            assert_eq!(decode(&summary, Some(&examples)).unwrap(), whole);
            let head = decode(&summary, None).unwrap();
            assert!(head.top_examples.is_empty() && head.interval_examples.is_empty());
            assert_eq!(head.top_logits, whole.top_logits);
            assert_eq!(head.label, feature.label);
        }
    }

    #[test]
    fn a_label_written_later_is_the_label_of_the_encoded_dashboard() {
        let commit = synthetic_dictionary("d", 1, 4, 7);
        let mut whole = assemble(&commit.features[0], "h", commit.examples.clone());
        whole.label = Some("as built".into());
        let (summary, examples) = encode(whole.clone());
        let stored: Vec<u8> = [summary, examples].concat();
        assert_eq!(pb::FeatureDashboard::decode(stored.as_slice()).unwrap(), whole, "concatenated parts are the whole message");
        let unchanged = with_label(stored.clone(), None).unwrap();
        assert_eq!(pb::FeatureDashboard::decode(unchanged.as_slice()).unwrap(), whole);
        let relabelled = with_label(stored.clone(), Some(Some("cats".into()))).unwrap();
        assert_eq!(pb::FeatureDashboard::decode(relabelled.as_slice()).unwrap(), pb::FeatureDashboard { label: Some("cats".into()), ..whole.clone() });
        let cleared = with_label(relabelled, Some(None)).unwrap();
        assert_eq!(pb::FeatureDashboard::decode(cleared.as_slice()).unwrap(), pb::FeatureDashboard { label: None, ..whole });
    }

    #[test]
    fn a_damaged_record_is_an_error_naming_the_table() {
        let error = decode(&[0xff, 0xff, 0xff], None).unwrap_err().to_string();
        assert!(error.contains("dashboards") && error.contains("FeatureDashboard"), "{error}");
    }

    #[test]
    fn limits_keep_the_strongest_examples() {
        let commit = synthetic_dictionary("d", 1, 4, 7);
        let mut dashboard = assemble(&commit.features[0], "h", commit.examples.clone());
        dashboard.top_examples = vec![dashboard.top_examples[0].clone(); 5];
        limit_examples(&mut dashboard, 2, 0);
        assert_eq!(dashboard.top_examples.len(), 2);
        limit_examples(&mut dashboard, 0, 1);
        assert!(dashboard.interval_examples.iter().all(|i| i.examples.len() <= 1));
    }
}
