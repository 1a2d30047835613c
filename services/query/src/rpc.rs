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

/// A density bound of a request: a fraction of tokens, so a number in [0, 1] (NaN is not).
pub fn check_density(value: Option<f64>, field: &str) -> Result<()> {
    match value {
        Some(v) if !(0.0..=1.0).contains(&v) => Err(ServiceError::InvalidArgument(format!("{field} is {v}: a density is a fraction of tokens, from 0 to 1"))),
        _ => Ok(()),
    }
}

/// A [min, max] density range of a request: each bound valid, and min not above max.
pub fn check_density_range(min: Option<f64>, max: Option<f64>) -> Result<()> {
    check_density(min, "min_density")?;
    check_density(max, "max_density")?;
    match (min, max) {
        (Some(lo), Some(hi)) if lo > hi => Err(ServiceError::InvalidArgument(format!("min_density {lo} is above max_density {hi}: the range is empty"))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn density_bounds_refuse_nan_out_of_range_and_inverted() {
        assert!(check_density_range(Some(0.0), Some(1.0)).is_ok());
        assert!(check_density_range(None, None).is_ok());
        for (min, max, needle) in
            [(Some(f64::NAN), None, "min_density is NaN"), (None, Some(1.5), "max_density is 1.5"), (Some(0.5), Some(0.1), "above max_density"), (None, Some(f64::INFINITY), "max_density")]
        {
            let err = check_density_range(min, max).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
