//! The index job's config: `loupe index --config job.toml`, every field overridable by a
//! flag. Apart from the job that runs it, so that parsing it needs no store (the libFuzzer
//! build of the job config parser, fuzz/libfuzzer, builds the indexer without Lance).

use std::path::{Path, PathBuf};

use loupe_corpus::CorpusSource;
use loupe_engine::{DeviceChoice, Precision};
use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DictionarySpec {
    pub path: PathBuf,
    /// Name in the store (default: the dictionary's folder name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl DictionarySpec {
    pub fn id(&self) -> String {
        if let Some(id) = &self.id {
            return id.clone();
        }
        let named = if self.path.is_file() { self.path.parent() } else { Some(self.path.as_path()) };
        named.and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "dictionary".into())
    }
}

/// `loupe index --config job.toml`; every field can be overridden by a flag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// A local folder or `s3://bucket/prefix`.
    pub store: PathBuf,
    /// Object storage settings for an `s3://` store (`aws_endpoint`, `aws_region`,
    /// `aws_allow_http`, ...), over the `AWS_*` variables.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub storage: std::collections::BTreeMap<String, String>,
    /// GGUF file or Hugging Face folder (default: the embedded SmolLM2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    /// Where the model and dictionaries compute: `cpu` (default), `cuda` or `cuda:N`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub device: DeviceChoice,
    /// `auto` (f32 on the CPU, bf16 on a GPU), `f32` or `bf16`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub precision: Precision,
    #[serde(default, rename = "corpus")]
    pub corpus: Vec<CorpusSource>,
    #[serde(default, rename = "dictionary")]
    pub dictionaries: Vec<DictionarySpec>,
    #[serde(default = "defaults::context")]
    pub context: usize,
    /// Windows per forward pass. Default: 8 on the CPU; on a GPU, as many as half of its free
    /// memory holds (at most 131,072 tokens; `loupe_engine::memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    #[serde(default = "defaults::top_k")]
    pub top_k: usize,
    #[serde(default = "defaults::interval_samples")]
    pub interval_samples: usize,
    #[serde(default)]
    pub seed: u64,
    /// Batches between checkpoints.
    #[serde(default = "defaults::checkpoint_every")]
    pub checkpoint_every: usize,
    /// Index only the first tokens of the corpus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
}

mod defaults {
    pub fn context() -> usize {
        128
    }
    pub fn top_k() -> usize {
        32
    }
    pub fn interval_samples() -> usize {
        5
    }
    pub fn checkpoint_every() -> usize {
        16
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

impl JobConfig {
    /// Windows per batch on the CPU when none is given.
    pub const CPU_BATCH_SIZE: usize = 8;

    pub fn new(store: PathBuf) -> Self {
        toml::from_str(&format!("store = {}", toml::Value::String(store.to_string_lossy().into_owned()))).expect("defaults parse")
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| IndexError::io(path, e))?;
        toml::from_str(&text).map_err(|e| IndexError::BadConfig { path: path.into(), reason: e.to_string() })
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(IndexError::InvalidJob(reason));
        if self.corpus.is_empty() {
            return bad("no corpus: give --corpus FILE (JSONL, Parquet, text or a folder) or [[corpus]] in the config".into());
        }
        if self.dictionaries.is_empty() {
            return bad("no dictionary: give --dictionary DIR or [[dictionary]] in the config".into());
        }
        if !(2..=65_535).contains(&self.context) {
            return bad(format!("context {} is out of range: give 2..=65535 tokens", self.context));
        }
        if self.batch_size == Some(0) || self.top_k == 0 || self.checkpoint_every == 0 {
            return bad("batch_size, top_k and checkpoint_every must be at least 1".into());
        }
        let mut ids: Vec<String> = self.dictionaries.iter().map(DictionarySpec::id).collect();
        ids.sort();
        if let Some(pair) = ids.windows(2).find(|p| p[0] == p[1]) {
            return bad(format!("two dictionaries are named {:?}: give them distinct ids", pair[0]));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> JobConfig {
        toml::from_str(&format!("store = \"s\"\n{extra}\n[[corpus]]\npath = \"c.jsonl\"\n[[dictionary]]\npath = \"d\"\n")).unwrap()
    }

    #[test]
    fn an_unset_batch_size_is_left_to_the_device_and_zero_is_refused() {
        let auto = parse("");
        assert_eq!(auto.batch_size, None, "unset: 8 on the CPU, planned from free memory on a GPU");
        assert!(!toml::to_string(&auto).unwrap().contains("batch_size"), "an unset batch size is not written back as a number");
        assert_eq!(parse("batch_size = 64").batch_size, Some(64));
        let err = parse("batch_size = 0").validate().unwrap_err().to_string();
        assert!(err.contains("batch_size") && err.contains("at least 1"), "{err}");
        let err = toml::from_str::<JobConfig>("store = \"s\"\nbatch_size = -1").unwrap_err().to_string();
        assert!(err.contains("batch_size"), "{err}");
    }
}
