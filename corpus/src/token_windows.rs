//! A corpus as fixed-length token windows in memory, for training and evaluating
//! dictionaries: the same reader and the same packing as the indexer (documents joined with
//! the end-of-text token, each window BOS first), keeping only full windows.
//!
//! Position 0 of a window is the BOS "attention sink", whose activations are orders of
//! magnitude larger than the rest; training and evaluation leave it out.

use loupe_engine::Tokenizer;

use crate::error::{CorpusError, Result};
use crate::sources::{read_documents, CorpusSource, Document, Skipped};
use crate::windows::WindowPacker;

/// Fixed-length token windows cut from a corpus.
#[derive(Debug, Clone)]
pub struct TokenWindows {
    pub context: usize,
    /// `[n_windows * context]`, window after window.
    pub tokens: Vec<u32>,
}

impl TokenWindows {
    /// Reads `source` until `max_tokens` tokens of windows (if given) and packs them.
    pub fn from_source(source: &CorpusSource, tokenizer: &Tokenizer, context: usize, max_tokens: Option<usize>) -> Result<Self> {
        if context < 2 {
            return Err(CorpusError::InvalidInput(format!("context size {context} is too small: give at least 2 tokens")));
        }
        let bos = tokenizer.bos_token_id().or(tokenizer.eos_token_id()).unwrap_or(0);
        let separator = tokenizer.eos_token_id().unwrap_or(bos);
        let mut packer = WindowPacker::new(context, bos, separator, 0);
        let mut tokens: Vec<u32> = Vec::new();
        let full = |tokens: &Vec<u32>| max_tokens.is_some_and(|max| tokens.len() >= max);
        let mut document = 0u64;
        read_documents(source, &mut Skipped::default(), |doc, _| {
            if let Document::Text(text) = doc {
                for window in packer.push_document(document, &tokenizer.encode(&text)?) {
                    if full(&tokens) {
                        break;
                    }
                    tokens.extend_from_slice(&window.tokens);
                }
            }
            document += 1;
            Ok::<_, CorpusError>(!full(&tokens))
        })?;
        if tokens.is_empty() {
            return Err(CorpusError::BadCorpus { path: source.path.clone(), reason: format!("fewer than {context} tokens of text: nothing to make a window from") });
        }
        Ok(TokenWindows { context, tokens })
    }

    /// [`from_source`](Self::from_source) for one file or folder, its format detected.
    pub fn from_file(path: &std::path::Path, tokenizer: &Tokenizer, context: usize, max_tokens: Option<usize>) -> Result<Self> {
        Self::from_source(&CorpusSource::new(path), tokenizer, context, max_tokens)
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
