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
    /// Store: a folder or s3://bucket/prefix (default: $LOUPE_HOME/store).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Listening address (default: 127.0.0.1:50051).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Model for model-bound calls (default: the embedded SmolLM2).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Where the model computes: cpu, cuda or cuda:N (default: cpu; cuda needs the CUDA
    /// build, scripts/build_cuda.sh).
    #[arg(long)]
    pub device: Option<loupe_engine::DeviceChoice>,
    /// auto (f32 on the CPU, bf16 on a GPU), f32 or bf16.
    #[arg(long)]
    pub precision: Option<loupe_engine::Precision>,
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
    /// TLS: the server's certificate chain and private key (PEM; `loupe tls create` makes
    /// a set).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: accept only clients with a certificate this CA (PEM) signed.
    #[arg(long)]
    pub tls_client_ca: Option<PathBuf>,
    /// Callers need a token from this file (default: $LOUPE_HOME/tokens.json when it
    /// exists; `loupe token create` writes it).
    #[arg(long)]
    pub tokens_file: Option<PathBuf>,
    /// Serve plain text, or without tokens, on an address other than loopback.
    #[arg(long)]
    pub insecure: bool,
}

impl Args {
    /// The layered settings with these flags on top.
    pub fn settings(&self) -> anyhow::Result<ServeSettings> {
        let mut settings = ServeSettings::load(self.config.as_deref(), |name| std::env::var(name).ok())?;
        settings.store = self.store.clone().or(settings.store);
        settings.addr = self.addr.or(settings.addr);
        settings.model = self.model.clone().or(settings.model);
        settings.device = self.device.or(settings.device);
        settings.precision = self.precision.or(settings.precision);
        if self.no_model {
            settings.no_model = Some(true);
        }
        for entry in &self.dictionary {
            let (id, dir) = entry.split_once('=').with_context(|| format!("--dictionary {entry:?}: expected ID=DIR"))?;
            settings.dictionaries.insert(id.to_string(), PathBuf::from(dir));
        }
        settings.tls.cert = self.tls_cert.clone().or(settings.tls.cert);
        settings.tls.key = self.tls_key.clone().or(settings.tls.key);
        settings.tls.client_ca = self.tls_client_ca.clone().or(settings.tls.client_ca);
        settings.tokens_file = self.tokens_file.clone().or(settings.tokens_file);
        if self.insecure {
            settings.insecure = Some(true);
        }
        let limits = &mut settings.limits;
        for (flag, slot) in
            [(self.model_workers, &mut limits.model_workers), (self.max_waiting, &mut limits.max_waiting), (self.max_text_bytes, &mut limits.max_text_bytes), (self.max_tokens, &mut limits.max_tokens)]
        {
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
    let runtime = loupe_query::server::runtime(&config.limits, "loupe-server")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.addr).await.with_context(|| format!("binding {}", config.addr))?;
        loupe_query::workers::lower_model_priority();
        let state = std::sync::Arc::new(loupe_query::state::AppState::load(&config).await.with_context(|| format!("serving store {store}"))?);
        eprintln!("loupe serving {store} on {} (Ctrl-C stops)", listener.local_addr()?);
        eprintln!("{}", access_summary(&config, state.access.live_tokens()));
        eprintln!("{}", loupe_query::server::describe_workers(&config.limits));
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        loupe_query::serve_state(state, listener, shutdown).await.with_context(|| format!("serving store {store}"))
    })
}

/// What the server says at start about who may connect and call.
fn access_summary(config: &loupe_query::ServerConfig, live_tokens: usize) -> String {
    let access = &config.access;
    let transport = match (&access.tls.cert, &access.tls.client_ca) {
        (Some(_), Some(_)) => "TLS with client certificates (mutual TLS)".to_string(),
        (Some(_), None) => "TLS".to_string(),
        (None, _) if config.addr.ip().is_loopback() => "plain text (loopback only)".to_string(),
        (None, _) => "PLAIN TEXT on a network address (--insecure): anyone on the path can read and change calls".to_string(),
    };
    let callers = match &access.tokens_file {
        Some(file) => format!("callers need a token ({live_tokens} live in {})", file.display()),
        None => "NO TOKENS: every caller may do everything (create one with `loupe token create`)".to_string(),
    };
    format!("access: {transport}; {callers}")
}
