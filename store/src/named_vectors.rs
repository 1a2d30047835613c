//! Named vectors: directions at a hook of one model (DiffMean contrast vectors, or any
//! vector a caller stores), kept by name in the append-only `vectors` table with their
//! provenance. Steering uses them as targets and monitors (later) as probes.
//!
//! A name's vector is its last committed row; a row without a direction deletes it. The
//! table is small (one row per write), so readers fold it whole.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::builder::{Float32Builder, ListBuilder};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use loupe_schema::tables::{self, VECTORS};
use serde::Serialize;

use crate::append_only;
use crate::arrow::Columns;
use crate::error::{Result, StoreError};
use crate::location::Location;

/// Longest vector name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamedVector {
    pub name: String,
    /// The model it was computed on (its checksum, as dictionaries record it).
    pub model_checksum: String,
    pub hook: String,
    /// None: the row deletes the name.
    pub direction: Option<Vec<f32>>,
    /// JSON: how it was made (method, hook, texts' hashes and counts).
    pub provenance: serde_json::Value,
    pub author: String,
    pub created_at_us: i64,
}

impl NamedVector {
    /// A vector written now.
    pub fn now(name: &str, model_checksum: &str, hook: &str, direction: Option<Vec<f32>>, provenance: serde_json::Value, author: &str) -> Self {
        let created_at_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
        NamedVector { name: name.into(), model_checksum: model_checksum.into(), hook: hook.into(), direction, provenance, author: author.into(), created_at_us }
    }
}

/// A name: 1-128 bytes of letters, digits, `.`, `_` and `-` (safe in a terminal, a URL and
/// a shell).
pub fn check_name(name: &str) -> Result<()> {
    check_named("vector", name)
}

/// [`check_name`] for a name of `kind` (vector, monitor), which errors name.
pub fn check_named(kind: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(StoreError::InvalidRecord(format!("{kind} name must be 1 to {MAX_NAME_BYTES} bytes, got {}", name.len())));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(StoreError::InvalidRecord(format!("{kind} name {name:?} contains {c:?}: use letters, digits, '.', '_' and '-'")));
    }
    Ok(())
}

/// Appends one write (a vector, or a deletion) in one commit; durable when it returns.
pub async fn append_vector(root: &Location, vector: &NamedVector) -> Result<()> {
    check_name(&vector.name)?;
    if let Some(direction) = &vector.direction {
        if direction.is_empty() || direction.iter().any(|v| !v.is_finite()) {
            return Err(StoreError::InvalidRecord(format!("vector {:?} must be non-empty and finite", vector.name)));
        }
    }
    append_only::append(root, VECTORS, batch_of(std::slice::from_ref(vector))?).await
}

/// The live vectors by name (deleted names left out).
pub async fn named_vectors(root: &Location) -> Result<BTreeMap<String, NamedVector>> {
    let mut latest = BTreeMap::new();
    for batch in append_only::read_all(root, VECTORS, None).await? {
        for row in rows_of(&batch)? {
            latest.insert(row.name.clone(), row);
        }
    }
    latest.retain(|_, v: &mut NamedVector| v.direction.is_some());
    Ok(latest)
}

/// The live vector called `name`.
pub async fn named_vector(root: &Location, name: &str) -> Result<Option<NamedVector>> {
    check_name(name)?;
    Ok(named_vectors(root).await?.remove(name))
}

fn batch_of(rows: &[NamedVector]) -> Result<RecordBatch> {
    let strings = |f: &dyn Fn(&NamedVector) -> &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(rows.iter().map(f))) };
    let mut directions = ListBuilder::new(Float32Builder::new());
    for row in rows {
        match &row.direction {
            Some(d) => {
                directions.values().append_slice(d);
                directions.append(true);
            }
            None => directions.append(false),
        }
    }
    let provenance: Vec<String> = rows.iter().map(|r| r.provenance.to_string()).collect();
    let columns: Vec<ArrayRef> = vec![
        strings(&|r| &r.name),
        strings(&|r| &r.model_checksum),
        strings(&|r| &r.hook),
        Arc::new(directions.finish()),
        Arc::new(StringArray::from(provenance)),
        strings(&|r| &r.author),
        Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.created_at_us)).with_timezone("UTC")),
    ];
    Ok(RecordBatch::try_new(tables::vectors(), columns)?)
}

fn rows_of(batch: &RecordBatch) -> Result<Vec<NamedVector>> {
    let c = Columns::new(VECTORS, batch);
    let (names, models, hooks, authors) = (c.str("name")?, c.str("model_checksum")?, c.str("hook")?, c.str("author")?);
    let (provenance, created) = (c.str("provenance")?, c.timestamp_us("created_at")?);
    let directions = c.list("direction")?;
    (0..batch.num_rows())
        .map(|i| {
            Ok(NamedVector {
                name: names.value(i).into(),
                model_checksum: models.value(i).into(),
                hook: hooks.value(i).into(),
                direction: if directions.is_valid(i) { Some(c.list_f32("direction", i)?) } else { None },
                provenance: serde_json::from_str(provenance.value(i)).unwrap_or(serde_json::Value::Null),
                author: authors.value(i).into(),
                created_at_us: created.value(i),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn latest_write_wins_and_deletion_hides_a_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = Location::local(dir.path());
        crate::writer::StoreWriter::open_or_create(&root).await.unwrap();
        let write = |name: &str, d: Option<Vec<f32>>| NamedVector::now(name, "m", "blocks.9.hook_resid_post", d, serde_json::json!({"method": "test"}), "me");
        append_vector(&root, &write("happy", Some(vec![1.0, 2.0]))).await.unwrap();
        append_vector(&root, &write("sad", Some(vec![3.0, 4.0]))).await.unwrap();
        append_vector(&root, &write("happy", Some(vec![5.0, 6.0]))).await.unwrap();
        append_vector(&root, &write("sad", None)).await.unwrap();
        let live = named_vectors(&root).await.unwrap();
        assert_eq!(live.keys().collect::<Vec<_>>(), vec!["happy"]);
        assert_eq!(live["happy"].direction, Some(vec![5.0, 6.0]));
        assert_eq!(live["happy"].provenance["method"], "test");
        assert!(named_vector(&root, "sad").await.unwrap().is_none());
        let err = append_vector(&root, &write("bad name", Some(vec![1.0]))).await.unwrap_err().to_string();
        assert!(err.contains("bad name") && err.contains("' '"), "{err}");
        assert!(append_vector(&root, &write("nan", Some(vec![f32::NAN]))).await.is_err());
    }
}
