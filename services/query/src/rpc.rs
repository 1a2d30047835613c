//! What every RPC shares: request ids and structured logs, deadlines, text validation.

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::{Response, Status};
use tracing::Instrument;

use crate::config::Limits;
use crate::error::{Result, ServiceError};

/// Runs a handler inside a span with its request id, and logs its outcome and latency.
pub async fn traced<T>(method: &'static str, request_id: u64, handler: impl Future<Output = Result<T>>) -> std::result::Result<Response<T>, Status> {
    let span = tracing::info_span!("rpc", request_id, method);
    async move {
        let start = Instant::now();
        let result = handler.await;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        match result {
            Ok(value) => {
                tracing::info!(ms, "ok");
                Ok(Response::new(value))
            }
            Err(e) => {
                let status = Status::from(e);
                tracing::warn!(ms, code = ?status.code(), message = status.message(), "failed");
                Err(status)
            }
        }
    }
    .instrument(span)
    .await
}

/// The caller's deadline, from the `grpc-timeout` header ("<n><unit>", unit H M S m u n).
pub fn deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Checks a caller's text against the limits.
pub fn check_text(text: &str, limits: &Limits) -> Result<()> {
    if text.trim().is_empty() {
        return Err(ServiceError::InvalidArgument("text is empty: give some text to run the model on".into()));
    }
    if text.len() > limits.max_text_bytes {
        return Err(ServiceError::ResourceExhausted(format!("text is {} bytes; this server accepts at most {}", text.len(), limits.max_text_bytes)));
    }
    Ok(())
}

/// Tokens of a request: its token ids, or its text tokenized with BOS first.
pub fn tokens_of(text: &str, token_ids: &[u32], tokenizer: &loupe_engine::Tokenizer, limits: &Limits, add_bos: bool) -> Result<Vec<u32>> {
    let ids = if token_ids.is_empty() {
        check_text(text, limits)?;
        let mut ids: Vec<u32> = if add_bos { tokenizer.bos_token_id().into_iter().collect() } else { Vec::new() };
        ids.extend(tokenizer.encode(text)?);
        ids
    } else {
        if !text.is_empty() {
            return Err(ServiceError::InvalidArgument("give text or token_ids, not both".into()));
        }
        let vocab = tokenizer.vocab_size();
        if let Some(bad) = token_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(ServiceError::InvalidArgument(format!("token id {bad} is outside the vocabulary (size {vocab})")));
        }
        token_ids.to_vec()
    };
    if ids.len() > limits.max_tokens {
        return Err(ServiceError::ResourceExhausted(format!("the input is {} tokens; this server runs at most {} per call", ids.len(), limits.max_tokens)));
    }
    Ok(ids)
}
