//! loupe-store: the feature store. Lance tables (`dictionaries`, `features`, `examples`,
//! and `decoders_{width}` for vector search) under one root, a tantivy index over the
//! features, and generations that name one Lance version per table so that every commit is
//! atomic and stays readable; and append-only tables outside generations (`labels`, `vectors`, `monitors`, `alerts`) for
//! the many small writes that clients make.

#[cfg(feature = "tables")]
pub mod alerts;
#[cfg(feature = "tables")]
mod append_only;
#[cfg(feature = "tables")]
mod arrow;
pub mod error;
#[cfg(feature = "tables")]
pub mod labels;
pub mod layout;
#[cfg(feature = "tables")]
mod locator;
#[cfg(feature = "tables")]
pub mod monitors;
#[cfg(feature = "tables")]
pub mod named_vectors;
#[cfg(feature = "tables")]
pub mod reader;
pub mod records;
pub mod search;
pub mod synthetic;
#[cfg(feature = "tables")]
mod tables;
#[cfg(feature = "tables")]
mod taker;
#[cfg(feature = "tables")]
pub mod vectors;
#[cfg(feature = "tables")]
pub mod writer;

#[cfg(feature = "tables")]
pub use alerts::{append_alerts, read_alerts, AlertFilter, AlertRecord};
pub use error::{Result, StoreError};
#[cfg(feature = "tables")]
pub use labels::{append_labels, label_history};
pub use layout::Generation;
#[cfg(feature = "tables")]
pub use monitors::{append_monitor, monitor_history, monitors_marker, MonitorVersion, MonitorWrite};
#[cfg(feature = "tables")]
pub use named_vectors::{append_vector, named_vector, named_vectors, NamedVector};
#[cfg(feature = "tables")]
pub use reader::StoreReader;
pub use records::{DictionaryCommit, DictionaryRecord, ExampleKind, ExampleRecord, FeatureRecord, LabelRecord, LogitEffect, Neighbour};
pub use search::{SearchFilter, SearchHit, SearchResults};
#[cfg(feature = "tables")]
pub use vectors::SimilarFeature;
#[cfg(feature = "tables")]
pub use writer::StoreWriter;
