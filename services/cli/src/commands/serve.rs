//! `loupe serve`: the gRPC query service over a store.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use loupe_query::{Limits, ServerConfig};

#[derive(clap::Args)]
pub struct Args {
    /// Store directory (default: $LOUPE_HOME/store).
    #[arg(long, env = "LOUPE_STORE")]
    pub store: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:50051", env = "LOUPE_ADDR")]
    pub addr: SocketAddr,
    /// Model for model-bound calls (default: the embedded SmolLM2).
    #[arg(long, env = "LOUPE_MODEL")]
    pub model: Option<PathBuf>,
    /// Serve the index only: no model, no TopFeaturesForText/GetActivations/Tokenize.
    #[arg(long)]
    pub no_model: bool,
    /// ID=DIR: where a dictionary's files are, if not where the index run recorded them.
    #[arg(long)]
    pub dictionary: Vec<String>,
    /// Threads that run the model at once.
    #[arg(long, default_value_t = 1)]
    pub model_workers: usize,
    /// Model calls that may wait for a worker before new ones are refused.
    #[arg(long, default_value_t = 32)]
    pub max_waiting: usize,
    /// Longest text accepted (bytes) and most tokens per model call.
    #[arg(long, default_value_t = 16 * 1024)]
    pub max_text_bytes: usize,
    #[arg(long, default_value_t = 1024)]
    pub max_tokens: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let store = args.store.unwrap_or_else(|| loupe_engine::loupe_home().join("store"));
    let model = if args.no_model { None } else { Some(args.model.unwrap_or_else(loupe_engine::model::default_model_path)) };
    let dictionaries = args
        .dictionary
        .iter()
        .map(|d| d.split_once('=').map(|(id, dir)| (id.to_string(), PathBuf::from(dir))).context("--dictionary takes ID=DIR"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let limits = Limits { model_workers: args.model_workers, max_waiting: args.max_waiting, max_text_bytes: args.max_text_bytes, max_tokens: args.max_tokens, ..Limits::default() };
    let config = ServerConfig { store: store.clone(), addr: args.addr, model, dictionaries, limits };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.addr).await.with_context(|| format!("binding {}", config.addr))?;
        eprintln!("loupe serving {} on {} (Ctrl-C stops)", store.display(), listener.local_addr()?);
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        loupe_query::serve(config, listener, shutdown).await.with_context(|| format!("serving store {}", store.display()))
    })
}
