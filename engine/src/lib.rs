//! loupe-engine: tokenizer, model families with hook points, weight loading (GGUF,
//! safetensors), generation, dictionary formats with encode/decode, and the feature lens
//! (model + dictionaries: one call from tokens to sparse codes). Nothing here knows about
//! corpora, storage or gRPC. Steering edits (`steering`) and monitor reads (`monitor`) plug
//! into the lens.

pub mod chat;
pub mod config;
pub mod device;
pub mod dictionary;
pub mod error;
pub mod generate;
pub mod hooks;
pub mod lens;
pub mod memory;
pub mod model;
pub mod monitor;
pub mod perf;
pub mod steering;
pub mod tokenizer;
pub mod weights;

pub use config::ModelConfig;
pub use device::{Compute, DeviceChoice, Precision};
pub use dictionary::{Dictionary, DictionaryInfo, Encoding, SparseActs};
pub use error::{EngineError, Result};
pub use hooks::{ForwardContext, Hooks, Intervention};
pub use lens::{FeatureLens, LensOutput, Read, Rows};
pub use loupe_schema::hook::{BlockSite, HookPoint};
pub use model::{ForwardOutput, KvCache, LanguageModel, Logits, Model, TokenBatch};
pub use tokenizer::Tokenizer;
