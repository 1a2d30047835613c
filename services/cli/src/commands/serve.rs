//! `loupe serve`: the gRPC query service over a store.
//!
//! Settings come from `loupe_query::config` (defaults < config file < `LOUPE_*` variables);
//! the flags here override them and have no defaults of their own.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use loupe_query::config::ServeSettings;

#[derive(clap::Args)]
pub struct Args {
    /// A TOML file of server settings (default: $LOUPE_CONFIG, else $LOUPE_HOME/config.toml
    /// if it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Store directory (default: $LOUPE_HOME/store).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Listening address (default: 127.0.0.1:50051).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Model for model-bound calls (default: the embedded SmolLM2).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Serve the index only: no model, no TopFeaturesForText/GetActivations/Tokenize.
    #[arg(long)]
    pub no_model: bool,
    /// ID=DIR: where a dictionary's files are, if not where the index run recorded them.
    #[arg(long)]
    pub dictionary: Vec<String>,
    /// Threads that run the model at once (default: 1).
    #[arg(long)]
    pub model_workers: Option<usize>,
    /// Model calls that may wait for a worker before new ones are refused (default: 32).
    #[arg(long)]
    pub max_waiting: Option<usize>,
    /// Longest text accepted, in bytes (default: 16384).
    #[arg(long)]
    pub max_text_bytes: Option<usize>,
    /// Most tokens per model call (default: 1024).
    #[arg(long)]
    pub max_tokens: Option<usize>,
}

impl Args {
    /// The layered settings with these flags on top.
    pub fn settings(&self) -> anyhow::Result<ServeSettings> {
        let mut settings = ServeSettings::load(self.config.as_deref(), |name| std::env::var(name).ok())?;
        settings.store = self.store.clone().or(settings.store);
        settings.addr = self.addr.or(settings.addr);
        settings.model = self.model.clone().or(settings.model);
        if self.no_model {
            settings.no_model = Some(true);
        }
        for entry in &self.dictionary {
            let (id, dir) = entry.split_once('=').with_context(|| format!("--dictionary {entry:?}: expected ID=DIR"))?;
            settings.dictionaries.insert(id.to_string(), PathBuf::from(dir));
        }
        let limits = &mut settings.limits;
        for (flag, slot) in [(self.model_workers, &mut limits.model_workers), (self.max_waiting, &mut limits.max_waiting), (self.max_text_bytes, &mut limits.max_text_bytes), (self.max_tokens, &mut limits.max_tokens)] {
            if let Some(value) = flag {
                *slot = value;
            }
        }
        Ok(settings)
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = args.settings()?.resolve()?;
    let store = config.store.clone();
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
