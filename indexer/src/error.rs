use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Engine(#[from] loupe_engine::EngineError),
    #[error(transparent)]
    Store(#[from] loupe_store::StoreError),
    #[error(transparent)]
    Corpus(#[from] loupe_corpus::CorpusError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    BadCorpus { path: PathBuf, reason: String },
    #[error("job config {path}: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error("{0}")]
    InvalidJob(String),
    #[error("checkpoint {path}: {reason}")]
    BadCheckpoint { path: String, reason: String },
    #[error("interrupted; run the same command again to resume from the last checkpoint")]
    Interrupted,
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl IndexError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IndexError::Io { path: path.into(), source }
    }
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;
