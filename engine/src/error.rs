//! Errors of the engine. Every variant names the file, tensor or field at fault and what was
//! expected, so that a person can act on the message.

use std::path::PathBuf;

use loupe_schema::hook::UnknownHook;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path}: not a valid {format} file: {reason}")]
    BadFile { path: PathBuf, format: &'static str, reason: String },

    #[error("{path}: tensor '{tensor}' is missing (needed by {family})")]
    MissingTensor { path: PathBuf, tensor: String, family: String },

    #[error("{path}: tensor '{tensor}' has shape {actual:?}, expected {expected:?}")]
    WrongShape { path: PathBuf, tensor: String, expected: Vec<usize>, actual: Vec<usize> },

    #[error("{path}: cannot read tensor '{tensor}': {reason}")]
    BadTensor { path: PathBuf, tensor: String, reason: String },

    #[error("{path}: metadata field '{field}' {problem}")]
    BadField { path: PathBuf, field: String, problem: String },

    #[error("{path}: unknown architecture '{architecture}' in field '{field}'; supported: {supported}")]
    UnknownArchitecture { path: PathBuf, field: &'static str, architecture: String, supported: &'static str },

    #[error("{path}: {reason}")]
    DictionaryMismatch { path: PathBuf, reason: String },

    #[error(transparent)]
    UnknownHook(#[from] UnknownHook),

    #[error("hook '{hook}' does not exist in this model: it has {n_layers} layers (0..={last})", last = n_layers.saturating_sub(1))]
    HookOutOfRange { hook: String, n_layers: usize },

    #[error("the model call was cancelled (its caller went away or its deadline passed)")]
    Cancelled,

    #[error("invalid input: {0}")]
    InvalidInput(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("tensor computation failed: {0}")]
    Compute(#[from] candle_core::Error),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io { path: path.into(), source }
    }
}
