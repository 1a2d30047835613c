use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    BadCorpus { path: PathBuf, reason: String },
    #[error("{0}")]
    InvalidInput(String),
    #[error(transparent)]
    Engine(#[from] loupe_engine::EngineError),
}

impl CorpusError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CorpusError::Io { path: path.into(), source }
    }
}

pub type Result<T, E = CorpusError> = std::result::Result<T, E>;
