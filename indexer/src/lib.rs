//! loupe-indexer: runs a model and its dictionaries over a corpus and records, for every
//! feature, max-activating examples and statistics in the store.

mod bins;
pub mod checksum;
pub mod config;
pub mod error;
pub mod finalize;
#[cfg(feature = "run")]
pub mod job;
pub mod pipeline;
pub mod reducer;
pub mod state;

pub use config::{DictionarySpec, JobConfig};
pub use error::{IndexError, Result};
#[cfg(feature = "run")]
pub use job::{BatchChoice, Job, JobHooks, Outcome, RunOptions, RunReport};
pub use pipeline::{Progress, Shard};
