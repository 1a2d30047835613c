//! Validation shared by the services: texts and token ids against the limits, authors.

use crate::config::Limits;
use crate::error::{Result, ServiceError};

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
    crate::access::charge_model_tokens(ids.len());
    Ok(ids)
}

/// The caller's name recorded with a write: the name of the caller's token when the server
/// checks tokens (a request cannot claim to be someone else), else the request's `author`
/// ("anonymous" when none is given), one line of printable text as labels are.
pub fn author_of(author: Option<&str>) -> Result<String> {
    caller_of(author, "author")
}

/// [`author_of`] for a request field named `field` (a Score call's `caller`).
pub fn caller_of(caller: Option<&str>, field: &str) -> Result<String> {
    if let Some(name) = crate::access::current_name() {
        return Ok(name);
    }
    let caller = caller.map(str::trim).filter(|a| !a.is_empty()).unwrap_or("anonymous");
    loupe_store::labels::check_label(caller).map_err(|e| ServiceError::InvalidArgument(format!("{field}: {e}")))?;
    Ok(caller.to_string())
}
