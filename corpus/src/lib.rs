//! loupe-corpus: what the model reads. Corpus readers (JSONL, Parquet, plain text, folders
//! of these) streamed document by document, and the packing of documents into BOS-first
//! token windows that remember each token's document and offset. Indexing, training and
//! evaluation all read corpora through this crate, so one file means the same documents
//! and the same windows to every command.

pub mod error;
mod parquet_footer;
pub mod sources;
pub mod token_windows;
pub mod windows;

pub use error::{CorpusError, Result};
pub use sources::{detect_format, read_documents, CorpusFormat, CorpusSource, Document, SkipReason, Skipped};
pub use token_windows::TokenWindows;
pub use windows::{Segment, Window, WindowPacker};
