use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path} is not a loupe store: {reason}")]
    NotAStore { path: String, reason: String },
    #[error("store {path} has no committed index yet: run `loupe index --store {path}` first")]
    Empty { path: String },
    #[error("store {path} has no generation {generation} (latest is {latest})")]
    NoSuchGeneration { path: String, generation: u64, latest: u64 },
    #[error("another writer holds {path} ({holder}): wait for it to finish (one indexing job commits at a time)")]
    Locked { path: String, holder: String },
    #[error("{path}: {reason}")]
    Conflict { path: String, reason: String },
    #[error("{name}: {reason}")]
    Setting { name: &'static str, reason: String },
    #[error("store location {location:?}: {reason}")]
    InvalidLocation { location: String, reason: String },
    #[cfg(feature = "tables")]
    #[error("{location}: {source}")]
    ObjectStore { location: String, source: Box<object_store::Error> },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Corrupt { path: String, reason: String },
    #[cfg(feature = "tables")]
    #[error("lance table {table}: {source}")]
    Lance { table: String, source: lance::Error },
    #[error("table {table}, column {column}: {reason}")]
    Column { table: String, column: String, reason: String },
    #[error("search index: {0}")]
    Search(#[from] tantivy::TantivyError),
    #[error("search query {query:?}: {reason}")]
    Query { query: String, reason: String },
    #[error("{0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("store {path} holds no decoder vectors of width {width}; a store written before loupe stored them needs `loupe index` again")]
    NoVectors { path: String, width: usize },
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// The caller's example stream failed (its message, since its type is the caller's).
    #[error("preparing examples: {0}")]
    ExampleSource(String),
}

impl StoreError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io { path: path.into(), source }
    }

    #[cfg(feature = "tables")]
    pub fn lance(table: &str, source: lance::Error) -> Self {
        StoreError::Lance { table: table.to_string(), source }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
