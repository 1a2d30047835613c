//! loupe-store: the feature store. Lance tables (`dictionaries`, `features`, `examples`,
//! `dashboards` for one-read dashboards, and `decoders_{width}` for vector search) under one root, a tantivy index over the
//! features, and generations that name one Lance version per table so that every commit is
//! atomic and stays readable; and append-only tables outside generations (`labels`, `vectors`, `monitors`, `alerts`) for
//! the many small writes that clients make.

pub mod clock;
pub mod error;
pub mod records;
pub mod search;
pub mod synthetic;

pub use error::{Result, StoreError};
pub use records::{DictionaryCommit, DictionaryRecord, ExampleKind, ExampleRecord, FeatureRecord, LabelRecord, LogitEffect, Neighbour};
pub use search::{SearchFilter, SearchHit, SearchPage, SearchResults, EXACT_TOTAL_UP_TO};

/// Items that exist with the Lance tables only (feature `tables`, on by default).
macro_rules! with_tables {
    ($($item:item)*) => { $(#[cfg(feature = "tables")] $item)* };
}

with_tables! {
    pub mod alerts;
    mod append_only;
    mod arrow;
    pub mod decoder_scan;
    pub mod dashboards;
    mod grouped_take;
    mod inline_reads;
    pub mod labels;
    pub mod layout;
    mod lease;
    pub mod local_reads;
    mod locator;
    pub mod location;
    pub mod monitors;
    pub mod named_vectors;
    mod read_cache;
    pub mod reader;
    mod tables;
    mod taker;
    pub mod vectors;
    pub mod writer;

    pub use alerts::{append_alerts, read_alerts, AlertFilter, AlertRecord};
    pub use labels::{append_labels, label_history};
    pub use layout::Generation;
    pub use local_reads::{local_reads, LocalReads};
    pub use location::Location;
    pub use monitors::{append_monitor, monitor_history, monitors_marker, MonitorVersion, MonitorWrite};
    pub use named_vectors::{append_vector, named_vector, named_vectors, NamedVector};
    pub use reader::StoreReader;
    pub use vectors::SimilarFeature;
    pub use writer::StoreWriter;
}
