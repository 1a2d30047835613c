//! Records <-> Arrow record batches, following the schemas in `loupe_schema::tables`.

use std::sync::Arc;

use arrow_array::builder::{ListBuilder, PrimitiveBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, TimestampMicrosecondType, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, ArrowPrimitiveType, Float32Array, Float64Array, ListArray, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array, UInt64Array};
use loupe_schema::tables;

use crate::error::{Result, StoreError};
use crate::records::{DictionaryRecord, ExampleKind, ExampleRecord, FeatureRecord, LabelRecord, LogitEffect, Neighbour};

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn u32s(values: impl Iterator<Item = u32>) -> ArrayRef {
    Arc::new(UInt32Array::from_iter_values(values))
}

fn u64s(values: impl Iterator<Item = u64>) -> ArrayRef {
    Arc::new(UInt64Array::from_iter_values(values))
}

fn f32s(values: impl Iterator<Item = f32>) -> ArrayRef {
    Arc::new(Float32Array::from_iter_values(values))
}

/// A list column of primitive values, one list per row.
fn list_of<T: ArrowPrimitiveType>(rows: impl Iterator<Item = Vec<T::Native>>) -> ArrayRef {
    let mut builder = ListBuilder::new(PrimitiveBuilder::<T>::new());
    for row in rows {
        builder.values().append_slice(&row);
        builder.append(true);
    }
    Arc::new(builder.finish())
}

fn list_u32(rows: impl Iterator<Item = Vec<u32>>) -> ArrayRef {
    list_of::<UInt32Type>(rows)
}

fn list_u64(rows: impl Iterator<Item = Vec<u64>>) -> ArrayRef {
    list_of::<UInt64Type>(rows)
}

fn list_f32(rows: impl Iterator<Item = Vec<f32>>) -> ArrayRef {
    list_of::<Float32Type>(rows)
}

fn list_str(rows: impl Iterator<Item = Vec<String>>) -> ArrayRef {
    let mut builder = ListBuilder::new(StringBuilder::new());
    for row in rows {
        for value in row {
            builder.values().append_value(value);
        }
        builder.append(true);
    }
    Arc::new(builder.finish())
}

pub fn dictionaries_batch(rows: &[DictionaryRecord]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| r.dictionary_id.as_str())),
        strings(rows.iter().map(|r| r.model_id.as_str())),
        strings(rows.iter().map(|r| r.model_checksum.as_str())),
        strings(rows.iter().map(|r| r.hook.as_str())),
        strings(rows.iter().map(|r| r.hook_out.as_str())),
        Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.layer))),
        strings(rows.iter().map(|r| r.architecture.as_str())),
        u32s(rows.iter().map(|r| r.d_in)),
        u32s(rows.iter().map(|r| r.d_sae)),
        strings(rows.iter().map(|r| r.source_format.as_str())),
        strings(rows.iter().map(|r| r.source_checksum.as_str())),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.manifest.to_string()))),
        strings(rows.iter().map(|r| r.created_at.as_str())),
    ];
    Ok(RecordBatch::try_new(tables::dictionaries(), columns)?)
}

pub fn features_batch(rows: &[FeatureRecord]) -> Result<RecordBatch> {
    let logits = |f: fn(&FeatureRecord) -> &Vec<LogitEffect>| {
        (
            list_u32(rows.iter().map(|r| f(r).iter().map(|l| l.token_id).collect())),
            list_str(rows.iter().map(|r| f(r).iter().map(|l| l.token.clone()).collect())),
            list_f32(rows.iter().map(|r| f(r).iter().map(|l| l.value).collect())),
        )
    };
    let (top_ids, top_tokens, top_values) = logits(|r| &r.top_logits);
    let (bottom_ids, bottom_tokens, bottom_values) = logits(|r| &r.bottom_logits);
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| r.dictionary_id.as_str())),
        u32s(rows.iter().map(|r| r.feature)),
        f32s(rows.iter().map(|r| r.max_activation)),
        f32s(rows.iter().map(|r| r.mean_activation)),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.density))),
        u64s(rows.iter().map(|r| r.fire_count)),
        f32s(rows.iter().map(|r| r.histogram_width)),
        list_u64(rows.iter().map(|r| r.histogram_counts.clone())),
        top_ids,
        top_tokens,
        top_values,
        bottom_ids,
        bottom_tokens,
        bottom_values,
        list_u32(rows.iter().map(|r| r.neighbours.iter().map(|n| n.feature).collect())),
        list_f32(rows.iter().map(|r| r.neighbours.iter().map(|n| n.cosine).collect())),
        list_str(rows.iter().map(|r| r.top_tokens.clone())),
        list_str(rows.iter().map(|r| r.top_contexts.clone())),
        f32s(rows.iter().map(|r| r.decoder_norm)),
        list_f32(rows.iter().map(|r| r.decoder.clone())),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.label.as_deref()))),
    ];
    Ok(RecordBatch::try_new(tables::features(), columns)?)
}

pub fn examples_batch(rows: &[ExampleRecord]) -> Result<RecordBatch> {
    let interval = |r: &ExampleRecord| match r.kind {
        ExampleKind::Top => (tables::KIND_TOP, 0, 0.0, 0.0),
        ExampleKind::Interval { index, low, high } => (tables::KIND_INTERVAL, index, low, high),
    };
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| r.dictionary_id.as_str())),
        u32s(rows.iter().map(|r| r.feature)),
        strings(rows.iter().map(|r| interval(r).0)),
        u32s(rows.iter().map(|r| interval(r).1)),
        f32s(rows.iter().map(|r| interval(r).2)),
        f32s(rows.iter().map(|r| interval(r).3)),
        u32s(rows.iter().map(|r| r.rank)),
        f32s(rows.iter().map(|r| r.max_activation)),
        u32s(rows.iter().map(|r| r.max_position)),
        u64s(rows.iter().map(|r| r.window)),
        list_u32(rows.iter().map(|r| r.token_ids.clone())),
        list_str(rows.iter().map(|r| r.tokens.clone())),
        list_f32(rows.iter().map(|r| r.activations.clone())),
        u64s(rows.iter().map(|r| r.document_id)),
        u32s(rows.iter().map(|r| r.document_offset)),
    ];
    Ok(RecordBatch::try_new(tables::examples(), columns)?)
}

/// Typed access to the columns of a batch read back from a table, with errors that name the
/// table and column instead of panicking on a foreign or damaged table.
pub struct Columns<'a> {
    table: &'a str,
    batch: &'a RecordBatch,
}

impl<'a> Columns<'a> {
    pub fn new(table: &'a str, batch: &'a RecordBatch) -> Self {
        Columns { table, batch }
    }

    fn column(&self, name: &str) -> Result<&'a ArrayRef> {
        self.batch.column_by_name(name).ok_or_else(|| self.error(name, "is missing"))
    }

    fn error(&self, column: &str, reason: &str) -> StoreError {
        StoreError::Column { table: self.table.into(), column: column.into(), reason: reason.into() }
    }

    pub fn str(&self, name: &str) -> Result<&'a StringArray> {
        self.column(name)?.as_string_opt::<i32>().ok_or_else(|| self.error(name, "expected utf8"))
    }

    pub fn u32(&self, name: &str) -> Result<&'a UInt32Array> {
        self.column(name)?.as_primitive_opt::<UInt32Type>().ok_or_else(|| self.error(name, "expected uint32"))
    }

    pub fn u64(&self, name: &str) -> Result<&'a UInt64Array> {
        self.column(name)?.as_primitive_opt::<UInt64Type>().ok_or_else(|| self.error(name, "expected uint64"))
    }

    pub fn timestamp_us(&self, name: &str) -> Result<&'a TimestampMicrosecondArray> {
        self.column(name)?.as_primitive_opt::<TimestampMicrosecondType>().ok_or_else(|| self.error(name, "expected timestamp[us]"))
    }

    pub fn f32(&self, name: &str) -> Result<&'a Float32Array> {
        self.column(name)?.as_primitive_opt::<Float32Type>().ok_or_else(|| self.error(name, "expected float32"))
    }

    pub fn f64(&self, name: &str) -> Result<&'a Float64Array> {
        self.column(name)?.as_primitive_opt::<Float64Type>().ok_or_else(|| self.error(name, "expected float64"))
    }

    pub fn bool(&self, name: &str) -> Result<&'a arrow_array::BooleanArray> {
        self.column(name)?.as_boolean_opt().ok_or_else(|| self.error(name, "expected bool"))
    }

    pub fn list(&self, name: &str) -> Result<&'a ListArray> {
        self.column(name)?.as_list_opt::<i32>().ok_or_else(|| self.error(name, "expected a list"))
    }

    pub fn list_u32(&self, name: &str, row: usize) -> Result<Vec<u32>> {
        let values = self.list(name)?.value(row);
        let values = values.as_primitive_opt::<UInt32Type>().ok_or_else(|| self.error(name, "expected list<uint32>"))?;
        Ok(values.values().to_vec())
    }

    pub fn list_u64(&self, name: &str, row: usize) -> Result<Vec<u64>> {
        let values = self.list(name)?.value(row);
        let values = values.as_primitive_opt::<UInt64Type>().ok_or_else(|| self.error(name, "expected list<uint64>"))?;
        Ok(values.values().to_vec())
    }

    pub fn list_f32(&self, name: &str, row: usize) -> Result<Vec<f32>> {
        let values = self.list(name)?.value(row);
        let values = values.as_primitive_opt::<Float32Type>().ok_or_else(|| self.error(name, "expected list<float32>"))?;
        Ok(values.values().to_vec())
    }

    pub fn list_str(&self, name: &str, row: usize) -> Result<Vec<String>> {
        let values = self.list(name)?.value(row);
        let values = values.as_string_opt::<i32>().ok_or_else(|| self.error(name, "expected list<utf8>"))?;
        Ok(values.iter().map(|v| v.unwrap_or_default().to_string()).collect())
    }

    pub fn opt_str(&self, name: &str, row: usize) -> Result<Option<String>> {
        let column = self.str(name)?;
        Ok(column.is_valid(row).then(|| column.value(row).to_string()))
    }
}

pub fn dictionaries_from_batch(batch: &RecordBatch) -> Result<Vec<DictionaryRecord>> {
    let c = Columns::new(tables::DICTIONARIES, batch);
    let layer = c.u32("layer")?;
    (0..batch.num_rows())
        .map(|i| {
            let manifest = c.str("manifest")?.value(i);
            Ok(DictionaryRecord {
                dictionary_id: c.str("dictionary_id")?.value(i).into(),
                model_id: c.str("model_id")?.value(i).into(),
                model_checksum: c.str("model_checksum")?.value(i).into(),
                hook: c.str("hook")?.value(i).into(),
                hook_out: c.str("hook_out")?.value(i).into(),
                layer: layer.is_valid(i).then(|| layer.value(i)),
                architecture: c.str("architecture")?.value(i).into(),
                d_in: c.u32("d_in")?.value(i),
                d_sae: c.u32("d_sae")?.value(i),
                source_format: c.str("source_format")?.value(i).into(),
                source_checksum: c.str("source_checksum")?.value(i).into(),
                manifest: serde_json::from_str(manifest).map_err(|e| StoreError::Column { table: tables::DICTIONARIES.into(), column: "manifest".into(), reason: e.to_string() })?,
                created_at: c.str("created_at")?.value(i).into(),
            })
        })
        .collect()
}

fn logit_effects(c: &Columns, prefix: &str, row: usize) -> Result<Vec<LogitEffect>> {
    let ids = c.list_u32(&format!("{prefix}_logit_ids"), row)?;
    let tokens = c.list_str(&format!("{prefix}_logit_tokens"), row)?;
    let values = c.list_f32(&format!("{prefix}_logit_values"), row)?;
    Ok(ids.into_iter().zip(tokens).zip(values).map(|((token_id, token), value)| LogitEffect { token_id, token, value }).collect())
}

pub fn features_from_batch(batch: &RecordBatch) -> Result<Vec<FeatureRecord>> {
    let c = Columns::new(tables::FEATURES, batch);
    (0..batch.num_rows())
        .map(|i| {
            let neighbours = c.list_u32("neighbours", i)?;
            let cosines = c.list_f32("neighbour_cosines", i)?;
            Ok(FeatureRecord {
                dictionary_id: c.str("dictionary_id")?.value(i).into(),
                feature: c.u32("feature")?.value(i),
                max_activation: c.f32("max_activation")?.value(i),
                mean_activation: c.f32("mean_activation")?.value(i),
                density: c.f64("density")?.value(i),
                fire_count: c.u64("fire_count")?.value(i),
                histogram_width: c.f32("histogram_width")?.value(i),
                histogram_counts: c.list_u64("histogram_counts", i)?,
                top_logits: logit_effects(&c, "top", i)?,
                bottom_logits: logit_effects(&c, "bottom", i)?,
                neighbours: neighbours.into_iter().zip(cosines).map(|(feature, cosine)| Neighbour { feature, cosine }).collect(),
                top_tokens: c.list_str("top_tokens", i)?,
                top_contexts: c.list_str("top_contexts", i)?,
                decoder_norm: c.f32("decoder_norm")?.value(i),
                decoder: c.list_f32("decoder", i)?,
                label: c.opt_str("label", i)?,
            })
        })
        .collect()
}

pub fn examples_from_batch(batch: &RecordBatch) -> Result<Vec<ExampleRecord>> {
    let c = Columns::new(tables::EXAMPLES, batch);
    (0..batch.num_rows())
        .map(|i| {
            let kind = match c.str("kind")?.value(i) {
                tables::KIND_TOP => ExampleKind::Top,
                tables::KIND_INTERVAL => ExampleKind::Interval { index: c.u32("interval")?.value(i), low: c.f32("interval_low")?.value(i), high: c.f32("interval_high")?.value(i) },
                other => return Err(StoreError::Column { table: tables::EXAMPLES.into(), column: "kind".into(), reason: format!("unknown kind {other:?}") }),
            };
            Ok(ExampleRecord {
                dictionary_id: c.str("dictionary_id")?.value(i).into(),
                feature: c.u32("feature")?.value(i),
                kind,
                rank: c.u32("rank")?.value(i),
                max_activation: c.f32("max_activation")?.value(i),
                max_position: c.u32("max_position")?.value(i),
                window: c.u64("window")?.value(i),
                token_ids: c.list_u32("token_ids", i)?,
                tokens: c.list_str("tokens", i)?,
                activations: c.list_f32("activations", i)?,
                document_id: c.u64("document_id")?.value(i),
                document_offset: c.u32("document_offset")?.value(i),
            })
        })
        .collect()
}

pub fn labels_batch(rows: &[LabelRecord]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| r.dictionary_id.as_str())),
        u32s(rows.iter().map(|r| r.feature)),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.label.as_deref()))),
        strings(rows.iter().map(|r| r.author.as_str())),
        Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.created_at_us)).with_timezone("UTC")),
    ];
    Ok(RecordBatch::try_new(tables::labels(), columns)?)
}

pub fn labels_from_batch(batch: &RecordBatch) -> Result<Vec<LabelRecord>> {
    let c = Columns::new(tables::LABELS, batch);
    let (ids, features, authors) = (c.str("dictionary_id")?, c.u32("feature")?, c.str("author")?);
    let created = c.timestamp_us("created_at")?;
    (0..batch.num_rows())
        .map(|i| Ok(LabelRecord { dictionary_id: ids.value(i).into(), feature: features.value(i), label: c.opt_str("label", i)?, author: authors.value(i).into(), created_at_us: created.value(i) }))
        .collect()
}
