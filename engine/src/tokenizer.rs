//! Byte-level BPE tokenizer (the `tokenizers` crate), built from GGUF metadata or a Hugging
//! Face `tokenizer.json`, and the model's chat template.

use std::path::Path;

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use crate::config::{gguf_string, gguf_value};
use crate::error::{EngineError, Result};

/// GGUF `tokenizer.ggml.token_type` values that mark tokens matched verbatim in text.
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    chat_template: Option<String>,
    /// Special (control) tokens: BOS/EOS and chat markers such as `<|im_start|>`.
    special_ids: std::collections::HashSet<u32>,
}

impl Tokenizer {
    /// Builds the tokenizer that llama.cpp's `tokenizer.ggml.*` keys describe. Only byte-level
    /// BPE (`model = gpt2`) is supported; the pre-tokenizer follows `tokenizer.ggml.pre`.
    pub fn from_gguf(path: &Path, content: &gguf_file::Content) -> Result<Self> {
        let bad = |field: &str, problem: String| EngineError::BadField { path: path.into(), field: field.into(), problem };
        let model = gguf_string(path, content, "tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(bad("tokenizer.ggml.model", format!("is '{model}'; only byte-level BPE ('gpt2') is supported")));
        }
        let tokens = string_array(path, content, "tokenizer.ggml.tokens")?;
        let merges = string_array(path, content, "tokenizer.ggml.merges")?;
        let merges = merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| bad("tokenizer.ggml.merges", format!("entry {i} ('{m}') is not two tokens separated by a space")))
            })
            .collect::<Result<Vec<_>>>()?;
        let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))?;

        let pre = match content.metadata.get("tokenizer.ggml.pre") {
            Some(_) => gguf_string(path, content, "tokenizer.ggml.pre")?,
            None => "default".into(),
        };
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
            "default" | "gpt2" => byte_level.into(),
            // SmolLM/StarCoder: every digit is its own pre-token before the GPT-2 split.
            "smollm" | "starcoder" | "refact" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
            other => return Err(bad("tokenizer.ggml.pre", format!("is '{other}'; supported pre-tokenizers: default, gpt2, smollm, starcoder, refact"))),
        };

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let special = special_tokens(path, content, &tokens)?;
        inner.add_special_tokens(special).map_err(|e| EngineError::Tokenizer(format!("{}: special tokens: {e}", path.display())))?;

        let id = |key: &str| -> Result<Option<u32>> {
            match content.metadata.get(key) {
                None => Ok(None),
                Some(v) => v.to_u32().map(Some).map_err(|_| bad(key, "should be a u32 token id".into())),
            }
        };
        let chat_template = match content.metadata.get("tokenizer.chat_template") {
            Some(_) => Some(gguf_string(path, content, "tokenizer.chat_template")?),
            None => None,
        };
        let special_ids = special_ids(&inner);
        Ok(Tokenizer { inner, bos_token_id: id("tokenizer.ggml.bos_token_id")?, eos_token_id: id("tokenizer.ggml.eos_token_id")?, chat_template, special_ids })
    }

    /// Loads `tokenizer.json` (and, when present beside it, `tokenizer_config.json` for the
    /// chat template and the BOS/EOS tokens).
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let file = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&file).map_err(|e| EngineError::Tokenizer(format!("{}: {e}", file.display())))?;
        let special_ids = special_ids(&inner);
        let mut tokenizer = Tokenizer { inner, bos_token_id: None, eos_token_id: None, chat_template: None, special_ids };
        let config_path = dir.join("tokenizer_config.json");
        if config_path.exists() {
            let text = std::fs::read_to_string(&config_path).map_err(|e| EngineError::io(&config_path, e))?;
            let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| EngineError::BadFile { path: config_path.clone(), format: "tokenizer_config.json", reason: e.to_string() })?;
            let token_id = |key: &str| config.get(key).and_then(|v| v.as_str()).and_then(|t| tokenizer.inner.token_to_id(t));
            tokenizer.bos_token_id = token_id("bos_token");
            tokenizer.eos_token_id = token_id("eos_token");
            tokenizer.chat_template = config.get("chat_template").and_then(|v| v.as_str()).map(String::from);
        }
        Ok(tokenizer)
    }

    /// Token ids of `text`. Special tokens written in the text (e.g. `<|im_start|>`) become
    /// their ids; no BOS is added (callers that want one prepend [`Self::bos_token_id`]).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode_fast(text, false).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids of `text` and each token's byte range in it (as [`Self::encode`]).
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<(usize, usize)>)> {
        let encoding = self.inner.encode(text, false).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok((encoding.get_ids().to_vec(), encoding.get_offsets().to_vec()))
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.check_ids(ids)?;
        self.inner.decode(ids, false).map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    /// One display string per token (its own decoded text; partial UTF-8 shows as U+FFFD).
    pub fn token_strings(&self, ids: &[u32]) -> Result<Vec<String>> {
        ids.iter().map(|&id| self.decode(&[id])).collect()
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab = self.vocab_size();
        match ids.iter().find(|&&id| id as usize >= vocab) {
            Some(id) => Err(EngineError::InvalidInput(format!("token id {id} is outside the vocabulary (size {vocab})"))),
            None => Ok(()),
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Whether `id` is a special token (BOS, EOS, chat markers): steering skips these
    /// positions unless asked to edit them.
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id) || Some(id) == self.bos_token_id || Some(id) == self.eos_token_id
    }
}

fn special_ids(inner: &tokenizers::Tokenizer) -> std::collections::HashSet<u32> {
    inner.get_added_tokens_decoder().into_iter().filter(|(_, token)| token.special).map(|(id, _)| id).collect()
}

fn string_array(path: &Path, content: &gguf_file::Content, key: &str) -> Result<Vec<String>> {
    let values = gguf_value(path, content, key)?.to_vec().map_err(|_| EngineError::BadField { path: path.into(), field: key.into(), problem: "should be an array of strings".into() })?;
    values.iter().map(|v| v.to_string().cloned().map_err(|_| EngineError::BadField { path: path.into(), field: key.into(), problem: "should contain only strings".into() })).collect()
}

fn special_tokens(path: &Path, content: &gguf_file::Content, tokens: &[String]) -> Result<Vec<AddedToken>> {
    let Some(types) = content.metadata.get("tokenizer.ggml.token_type") else {
        return Ok(Vec::new());
    };
    let types = types.to_vec().map_err(|_| EngineError::BadField { path: path.into(), field: "tokenizer.ggml.token_type".into(), problem: "should be an array of integers".into() })?;
    Ok(types.iter().zip(tokens).filter(|(t, _)| matches!(t.to_i32(), Ok(TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))).map(|(_, token)| AddedToken::from(token.clone(), true)).collect())
}
