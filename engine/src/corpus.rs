//! Text corpora as token windows for training and evaluating dictionaries.
//!
//! A corpus is JSONL with a `text` field per line (or plain text, one document per line).
//! Documents are tokenized, joined with the end-of-text token and cut into windows of
//! `context` tokens, each starting with BOS, as SAELens packs its training data. The first
//! position of a window is the BOS "attention sink", whose activations are orders of
//! magnitude larger than the rest; training and evaluation leave it out.

use std::io::BufRead;
use std::path::Path;

use crate::error::{EngineError, Result};
use crate::tokenizer::Tokenizer;

/// Fixed-length token windows cut from a corpus.
#[derive(Debug, Clone)]
pub struct TokenWindows {
    pub context: usize,
    /// `[n_windows * context]`, window after window.
    pub tokens: Vec<u32>,
}

impl TokenWindows {
    /// Reads documents from `path` until `max_tokens` tokens (if given) and packs them.
    pub fn from_file(path: &Path, tokenizer: &Tokenizer, context: usize, max_tokens: Option<usize>) -> Result<Self> {
        if context < 2 {
            return Err(EngineError::InvalidInput(format!("context size {context} is too small: give at least 2 tokens")));
        }
        let file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
        let separator = tokenizer.eos_token_id().or(tokenizer.bos_token_id());
        let bos = tokenizer.bos_token_id().or(separator);
        let body = if bos.is_some() { context - 1 } else { context };
        let mut stream: Vec<u32> = Vec::new();
        let is_jsonl = path.extension().is_some_and(|e| e == "jsonl" || e == "json");
        for (line_no, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| EngineError::io(path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let text = if is_jsonl { document_text(path, line_no + 1, &line)? } else { line };
            stream.extend(tokenizer.encode(&text)?);
            stream.extend(separator);
            if max_tokens.is_some_and(|max| stream.len() / body * context >= max) {
                break;
            }
        }
        let mut tokens = Vec::with_capacity(stream.len() / body * context);
        for chunk in stream.chunks_exact(body) {
            tokens.extend(bos);
            tokens.extend_from_slice(chunk);
            if max_tokens.is_some_and(|max| tokens.len() >= max) {
                break;
            }
        }
        if tokens.is_empty() {
            return Err(EngineError::BadFile {
                path: path.into(),
                format: "corpus",
                reason: format!("fewer than {context} tokens of text: nothing to make a window from"),
            });
        }
        Ok(TokenWindows { context, tokens })
    }

    pub fn len(&self) -> usize {
        self.tokens.len() / self.context
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn window(&self, i: usize) -> &[u32] {
        &self.tokens[i * self.context..(i + 1) * self.context]
    }
}

fn document_text(path: &Path, line_no: usize, line: &str) -> Result<String> {
    let bad = |reason: String| EngineError::BadFile { path: path.into(), format: "JSONL corpus", reason: format!("line {line_no}: {reason}") };
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
    match value.get("text") {
        Some(serde_json::Value::String(text)) => Ok(text.clone()),
        Some(other) => Err(bad(format!("field 'text' is {other}, expected a string"))),
        None => Err(bad("no field 'text' (each line must be an object with a \"text\" string)".into())),
    }
}
