//! Errors of training and evaluation, each naming the file or setting at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Engine(#[from] loupe_engine::EngineError),
    #[error(transparent)]
    Corpus(#[from] loupe_corpus::CorpusError),
    #[error(transparent)]
    UnknownHook(#[from] loupe_schema::hook::UnknownHook),
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid {format} file: {reason}")]
    BadFile { path: PathBuf, format: &'static str, reason: String },
    #[error("{path}: tensor '{tensor}' is missing (needed by {family})")]
    MissingTensor { path: PathBuf, tensor: String, family: String },
    #[error("hook '{hook}' does not exist in this model: it has {n_layers} layers (0..={last})", last = n_layers.saturating_sub(1))]
    HookOutOfRange { hook: String, n_layers: usize },
    #[error("interrupted; run the same command again to resume from {checkpoint}")]
    Interrupted { checkpoint: PathBuf },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("tensor computation failed: {0}")]
    Compute(#[from] candle_core::Error),
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io { path: path.into(), source }
    }
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
