//! The service's errors, and the one place that picks their gRPC status code.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// Over a quota: RESOURCE_EXHAUSTED with the wait in the `retry-after-ms` trailer.
    #[error("{message}")]
    Throttled { message: String, retry_after: std::time::Duration },
    #[error("store: {0}")]
    Store(#[from] loupe_store::StoreError),
    #[error("engine: {0}")]
    Engine(#[from] loupe_engine::EngineError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<candle_core::Error> for ServiceError {
    fn from(e: candle_core::Error) -> Self {
        ServiceError::Internal(e.to_string())
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        use loupe_engine::EngineError as E;
        use loupe_store::StoreError as S;
        let code = match &e {
            ServiceError::InvalidArgument(_) => Code::InvalidArgument,
            ServiceError::NotFound(_) => Code::NotFound,
            ServiceError::ResourceExhausted(_) => Code::ResourceExhausted,
            ServiceError::AlreadyExists(_) => Code::AlreadyExists,
            ServiceError::FailedPrecondition(_) => Code::FailedPrecondition,
            ServiceError::Unavailable(_) => Code::Unavailable,
            ServiceError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ServiceError::Unauthenticated(_) => Code::Unauthenticated,
            ServiceError::PermissionDenied(_) => Code::PermissionDenied,
            ServiceError::Throttled { .. } => Code::ResourceExhausted,
            ServiceError::Store(S::Query { .. }) | ServiceError::Store(S::InvalidRecord(_)) => Code::InvalidArgument,
            ServiceError::Store(S::Locked { .. }) => Code::Unavailable,
            ServiceError::Store(S::NoVectors { .. }) => Code::FailedPrecondition,
            ServiceError::Engine(E::Cancelled) => Code::Cancelled,
            ServiceError::Engine(E::UnknownHook(_)) | ServiceError::Engine(E::HookOutOfRange { .. }) | ServiceError::Engine(E::InvalidInput(_)) => Code::InvalidArgument,
            ServiceError::Store(_) | ServiceError::Engine(_) | ServiceError::Internal(_) => Code::Internal,
        };
        let mut status = match (&e, storage_failure(&e.to_string())) {
            (ServiceError::Store(_) | ServiceError::Internal(_), Some((code, what))) => Status::new(code, format!("{what}: {e}")),
            _ => Status::new(code, e.to_string()),
        };
        if let ServiceError::Throttled { retry_after, .. } = &e {
            let ms = retry_after.as_millis().max(1).to_string();
            if let Ok(value) = ms.parse() {
                status.metadata_mut().insert(RETRY_AFTER_MS, value);
            }
        }
        status
    }
}

/// A write that failed because of the store's file system, which the caller should hear
/// about as such (reads go on; the server stays up): a full disk is RESOURCE_EXHAUSTED, a
/// read-only one FAILED_PRECONDITION. Lance and object_store report I/O errors as text, so
/// this reads the OS's messages (and errno 28 / 30) in it.
fn storage_failure(message: &str) -> Option<(Code, &'static str)> {
    if message.contains("No space left on device") || message.contains("os error 28") {
        Some((Code::ResourceExhausted, "the store's disk is full (reads go on; writes fail until space is freed)"))
    } else if message.contains("Read-only file system") || message.contains("os error 30") {
        Some((Code::FailedPrecondition, "the store is on a read-only file system (reads go on; writes fail)"))
    } else {
        None
    }
}

/// The trailer that tells a throttled caller how long to wait, in milliseconds.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;
