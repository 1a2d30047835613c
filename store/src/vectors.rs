//! Decoder directions as searchable vectors, for SimilarFeatures.
//!
//! A vector index needs a fixed-size-list column, and dictionaries of different models or
//! hooks write directions of different widths, so there is one table per width:
//! `decoders_{width}` (dictionary_id, feature, unit-norm decoder). A server answers from an
//! int8 copy of the table scored row by row, with the best candidates re-scored exactly
//! (`decoder_scan`); Lance's exact f32 scan (`nearest` here) is the reference it is tested
//! against. No vector index is built: see `decoder_scan` for why.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt32Type};
use arrow_array::{Array, ArrayRef, Float32Array, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::TryStreamExt;
use lance::Dataset;
use lance_linalg::distance::DistanceType;

use crate::error::{Result, StoreError};
use crate::records::FeatureRecord;
use crate::tables::{of_dictionaries, scan};

const PREFIX: &str = "decoders_";
const COLUMN: &str = "decoder";

pub fn table_name(width: usize) -> String {
    format!("{PREFIX}{width}")
}

/// The width of a decoder table's vectors, or None for another table.
pub fn width_of(table: &str) -> Option<usize> {
    table.strip_prefix(PREFIX)?.parse().ok()
}

pub fn schema(width: usize) -> SchemaRef {
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    Arc::new(Schema::new(vec![
        Field::new("dictionary_id", DataType::Utf8, false),
        Field::new("feature", DataType::UInt32, false),
        Field::new(COLUMN, DataType::FixedSizeList(item, width as i32), false),
    ]))
}

/// `v / |v|`; a zero vector (a dead feature) stays zero and is never anyone's neighbour.
pub fn unit(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        return v.to_vec();
    }
    v.iter().map(|x| x / norm).collect()
}

/// The unit decoders of `rows` (all of width `width`) as one batch.
pub fn batch(rows: &[&FeatureRecord], width: usize) -> Result<RecordBatch> {
    let mut vectors = FixedSizeListBuilder::with_capacity(Float32Builder::with_capacity(rows.len() * width), width as i32, rows.len());
    for row in rows {
        if row.decoder.len() != width {
            return Err(StoreError::InvalidRecord(format!("feature {} of {:?} has a decoder of width {}, expected {width}", row.feature, row.dictionary_id, row.decoder.len())));
        }
        vectors.values().append_slice(&unit(&row.decoder));
        vectors.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.dictionary_id.as_str()))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.feature))),
        Arc::new(vectors.finish()),
    ];
    Ok(RecordBatch::try_new(schema(width), columns)?)
}

/// A neighbour found by decoder direction.
#[derive(Debug, Clone, PartialEq)]
pub struct SimilarFeature {
    pub dictionary_id: String,
    pub feature: u32,
    pub cosine: f32,
}

/// How to search: the quantized scan with an exact re-score (what servers do), or Lance's
/// exact f32 scan (the reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    Quantized,
    Exact,
}

/// The dictionaries that have rows in a decoder table.
pub async fn dictionaries_in(dataset: &Dataset, table: &str) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for batch in scan(dataset, table, None, Some(&["dictionary_id"])).await? {
        if let Some(ids) = batch.column_by_name("dictionary_id") {
            out.extend(ids.as_string::<i32>().iter().flatten().map(String::from));
        }
    }
    Ok(out)
}

/// The `k` rows whose decoders are nearest to `direction` by cosine, most similar first
/// (ties by dictionary, then feature), among the rows of `only` (None: all rows, which
/// spares the query a filter over the whole table), by Lance's exact scan in f32.
pub async fn nearest_exact(dataset: &Dataset, table: &str, direction: &[f32], only: Option<&[&str]>, k: usize) -> Result<Vec<SimilarFeature>> {
    let lance_err = |e| StoreError::lance(table, e);
    if k == 0 || only.is_some_and(|ids| ids.is_empty()) {
        return Ok(Vec::new());
    }
    let query = Float32Array::from(unit(direction));
    let mut scanner = dataset.scan();
    scanner.project(&["dictionary_id", "feature"]).map_err(lance_err)?;
    if let Some(ids) = only {
        scanner.prefilter(true);
        scanner.filter(&of_dictionaries(ids)).map_err(lance_err)?;
    }
    scanner.nearest(COLUMN, &query, k).map_err(lance_err)?;
    scanner.distance_metric(DistanceType::Cosine);
    // Stores written before the quantized scan may have an IVF index: never use it.
    scanner.use_index(false);
    let batches: Vec<RecordBatch> = scanner.try_into_stream().await.map_err(lance_err)?.try_collect().await.map_err(lance_err)?;
    let column = |batch: &RecordBatch, name: &str| {
        batch.column_by_name(name).cloned().ok_or_else(|| StoreError::Column { table: table.into(), column: name.into(), reason: "missing from a nearest-neighbour query".into() })
    };
    let mut out = Vec::new();
    for batch in &batches {
        let dictionary = column(batch, "dictionary_id")?;
        let features = column(batch, "feature")?;
        let distances = column(batch, "_distance")?;
        let (dictionary, features, distances) = (dictionary.as_string::<i32>(), features.as_primitive::<UInt32Type>(), distances.as_primitive::<Float32Type>());
        for i in 0..batch.num_rows() {
            let distance = distances.value(i);
            // A zero decoder has no direction (its cosine distance is NaN).
            if distances.is_null(i) || distance.is_nan() {
                continue;
            }
            out.push(SimilarFeature { dictionary_id: dictionary.value(i).to_string(), feature: features.value(i), cosine: 1.0 - distance });
        }
    }
    // Equal distances come back in scan order: make the order deterministic.
    out.sort_by(|a, b| b.cosine.total_cmp(&a.cosine).then_with(|| (&a.dictionary_id, a.feature).cmp(&(&b.dictionary_id, b.feature))));
    out.truncate(k);
    Ok(out)
}
