//! Monitor definitions: every version of every monitor in the append-only `monitors` table.
//! A write is a new version (definition JSON as the engine's `Monitor` serializes it) or an
//! archival; versions are numbered per name in commit order, so two servers updating one
//! monitor at once get distinct versions (the later commit reads as the later version).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array};
use loupe_schema::tables::{self, MONITORS};
use serde::Serialize;

use crate::append_only;
use crate::arrow::Columns;
use crate::error::Result;
use crate::location::Location;

/// One committed write of a monitor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonitorVersion {
    pub name: String,
    /// 1 for the first write of the name, then one more per write, in commit order.
    pub version: u32,
    /// JSON of the definition.
    pub definition: String,
    pub archived: bool,
    pub author: String,
    pub created_at_us: i64,
}

/// A write to append: a definition or an archival (`archived`, the definition repeated).
#[derive(Debug, Clone)]
pub struct MonitorWrite {
    pub name: String,
    pub definition: String,
    pub archived: bool,
    pub author: String,
}

/// Appends one write in one commit; durable when it returns. The version it gets is read
/// back with [`monitor_history`] (the number is the row's place among the name's rows in
/// commit order, not stored, so racing writers never collide).
pub async fn append_monitor(root: &Location, write: &MonitorWrite) -> Result<()> {
    crate::named_vectors::check_named("monitor", &write.name)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![write.name.as_str()])),
        // Informational: the version the writer expected; readers number rows in commit order.
        Arc::new(UInt32Array::from(vec![0u32])),
        Arc::new(StringArray::from(vec![write.definition.as_str()])),
        Arc::new(BooleanArray::from(vec![write.archived])),
        Arc::new(StringArray::from(vec![write.author.as_str()])),
        Arc::new(TimestampMicrosecondArray::from(vec![now]).with_timezone("UTC")),
    ];
    append_only::append(root, MONITORS, RecordBatch::try_new(tables::monitors(), columns)?).await
}

/// A cheap sign of the table's state (the names of its manifests, one per commit, on disk
/// or on object storage alike): followers re-read the table only when it changes. None
/// before the table's first write.
pub async fn monitors_marker(root: &Location) -> Result<Option<String>> {
    let manifests = root.list(&format!("{MONITORS}.lance/_versions")).await?;
    Ok((!manifests.is_empty()).then(|| format!("{} {:?} {:?}", manifests.len(), manifests.first(), manifests.last())))
}

/// Every version of every monitor, by name, oldest first.
pub async fn monitor_history(root: &Location) -> Result<BTreeMap<String, Vec<MonitorVersion>>> {
    let mut by_name: BTreeMap<String, Vec<MonitorVersion>> = BTreeMap::new();
    for batch in append_only::read_all(root, MONITORS, None).await? {
        let c = Columns::new(MONITORS, &batch);
        let (names, definitions, archived, authors, created) = (c.str("name")?, c.str("definition")?, c.bool("archived")?, c.str("author")?, c.timestamp_us("created_at")?);
        for i in 0..batch.num_rows() {
            let versions = by_name.entry(names.value(i).to_string()).or_default();
            versions.push(MonitorVersion {
                name: names.value(i).into(),
                version: versions.len() as u32 + 1,
                definition: definitions.value(i).into(),
                archived: archived.value(i),
                author: authors.value(i).into(),
                created_at_us: created.value(i),
            });
        }
    }
    Ok(by_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn versions_count_writes_in_commit_order_and_archival_is_a_version() {
        let dir = tempfile::tempdir().unwrap();
        let root = Location::local(dir.path());
        crate::writer::StoreWriter::open_or_create(&root).await.unwrap();
        let write = |name: &str, definition: &str, archived: bool| MonitorWrite { name: name.into(), definition: definition.into(), archived, author: "me".into() };
        append_monitor(&root, &write("pii", "{\"v\":1}", false)).await.unwrap();
        append_monitor(&root, &write("toxic", "{}", false)).await.unwrap();
        append_monitor(&root, &write("pii", "{\"v\":2}", false)).await.unwrap();
        append_monitor(&root, &write("pii", "{\"v\":2}", true)).await.unwrap();
        let history = monitor_history(&root).await.unwrap();
        let pii = &history["pii"];
        assert_eq!(pii.iter().map(|v| (v.version, v.archived)).collect::<Vec<_>>(), vec![(1, false), (2, false), (3, true)]);
        assert_eq!(pii[1].definition, "{\"v\":2}");
        assert_eq!(history["toxic"].len(), 1);
        assert!(append_monitor(&root, &write("no spaces", "{}", false)).await.is_err());
    }
}
