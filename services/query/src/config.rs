//! Server settings: typed, with defaults; `loupe serve` fills them from flags and env.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub store: PathBuf,
    pub addr: SocketAddr,
    /// The model for model-bound calls; None serves the index only.
    pub model: Option<PathBuf>,
    /// Dictionary folders by id, overriding the paths recorded in the store's manifests.
    pub dictionaries: Vec<(String, PathBuf)>,
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Threads running the model at once.
    pub model_workers: usize,
    /// Model-bound calls that may wait for a worker before new ones are refused.
    pub max_waiting: usize,
    /// Longest text accepted, in bytes.
    pub max_text_bytes: usize,
    /// Most tokens run through the model per call.
    pub max_tokens: usize,
    /// Most hooks per GetActivations.
    pub max_hooks: usize,
    /// Largest page of search hits.
    pub max_page: usize,
    /// How often the server reads label writes made by others (other servers on the same
    /// store); its own are visible when the call returns.
    pub label_poll_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { model_workers: 1, max_waiting: 32, max_text_bytes: 16 * 1024, max_tokens: 1024, max_hooks: 16, max_page: 100, label_poll_ms: 250 }
    }
}
