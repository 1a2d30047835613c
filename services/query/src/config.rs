//! Server settings, defined once: typed, with defaults, layered as defaults < a TOML file
//! (`--config`, `LOUPE_CONFIG`, or `$LOUPE_HOME/config.toml` when present) < `LOUPE_*`
//! environment variables < command-line flags. `loupe serve`, `loupe bench serve` and the
//! tests all build a [`ServerConfig`] from here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::access::tls::TlsSettings;
use crate::error::{Result, ServiceError};
use loupe_engine::{DeviceChoice, Precision};

/// What a running server needs, resolved.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// A local folder or `s3://bucket/prefix` (with its storage options).
    pub store: loupe_store::Location,
    pub addr: SocketAddr,
    /// The model for model-bound calls; None serves the index only.
    pub model: Option<PathBuf>,
    /// Where the model computes (steering, monitoring, search by text), and in which dtype.
    pub device: DeviceChoice,
    pub precision: Precision,
    /// Dictionary folders by id, overriding the paths recorded in the store's manifests.
    pub dictionaries: Vec<(String, PathBuf)>,
    pub limits: Limits,
    pub access: AccessConfig,
}

/// Who may connect and call, resolved.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    pub tls: TlsSettings,
    /// Callers need a token from this file; None: every caller may do everything (allowed
    /// only on loopback or with `insecure`).
    pub tokens_file: Option<PathBuf>,
    /// Serve plain text or without tokens on a non-loopback address anyway.
    pub insecure: bool,
}

/// Limits and per-request defaults of the server.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    /// Largest page of search hits (and of SimilarFeatures' k).
    pub max_page: usize,
    /// How often the server reads label writes made by others (other servers on the same
    /// store); its own are visible when the call returns.
    pub label_poll_ms: u64,
    /// How often the server looks for a new generation of the store (a re-index by a job
    /// elsewhere), which it then serves without a restart.
    pub generation_poll_ms: u64,
    /// Hits per search page when the request does not say.
    pub default_search_limit: usize,
    /// Matches a search counts exactly; its `total` is an estimate beyond (ranking the top
    /// hits skips postings that counting every match would read).
    pub search_exact_total: usize,
    /// Neighbours per SimilarFeatures call when the request does not say.
    pub default_similar_k: usize,
    /// Features per token and over the whole text in TopFeaturesForText by default.
    pub default_token_features: usize,
    pub default_text_features: usize,
    /// Most tokens a Steer call generates per completion, and the default when the
    /// request does not say.
    pub max_new_tokens: usize,
    pub default_new_tokens: usize,
    /// Most interventions per Steer call.
    pub max_interventions: usize,
    /// Most texts per side of a CreateVector call.
    pub max_vector_texts: usize,
    /// Most texts or conversations per Score call.
    pub max_score_inputs: usize,
    /// Features in a Score explanation by default, and at most.
    pub default_explain_features: usize,
    pub max_explain_features: usize,
    /// Dynamic batching of scoring: how long the batcher waits for more texts once it has
    /// one (microseconds), the most padded tokens per pass, and the most texts queued
    /// before Score answers RESOURCE_EXHAUSTED.
    pub batch_wait_us: u64,
    pub max_batch_tokens: usize,
    pub max_queued_texts: usize,
    /// Most StreamScore streams open at once (each holds a KV cache), and most tokens and
    /// bytes of text per stream.
    pub max_streams: usize,
    pub max_stream_tokens: usize,
    pub max_stream_bytes: usize,
    /// Most labelled texts per TrainProbe or EvaluateMonitor call.
    pub max_train_texts: usize,
    /// Keep each alert's text in the alerts table (off: only its SHA-256).
    pub store_alert_text: bool,
    /// Default quotas of each caller (a token, or a peer address when the server runs
    /// without tokens); a token's own quotas replace them. 0: unlimited.
    pub caller_requests_per_second: f64,
    pub caller_model_tokens_per_minute: u64,
    /// Bytes of hot dashboards (GetFeature answers, encoded) kept in memory. 0: none.
    pub dashboard_cache_bytes: u64,
    /// Bytes of hot SearchFeatures answers kept in memory. 0: none.
    pub search_cache_bytes: u64,
    /// Most threads of the runtime's blocking pool, where Lance reads a local store's files
    /// (one hop per read). Default: 4 per core, at least 8. 0: tokio's own default, a new
    /// thread per waiting read up to 512, which under 64 concurrent dashboards parks and
    /// wakes so many threads that the 2-core machine served 10-36% fewer (a capped pool's
    /// threads take the next waiting read without sleeping). Long CPU work (probe fits,
    /// evaluations) runs on threads of its own (`AppState::long_threads`), not in this pool.
    pub io_threads: usize,
    /// Whether each of the runtime's async workers is pinned to a CPU of its own (of those
    /// the process may use): `auto` (default), `true` or `false`. See [`PinWorkers`].
    pub pin_workers: PinWorkers,
}

/// Pinning of the runtime's async workers, one per CPU.
///
/// Unpinned, the kernel was seen leaving both workers of a 2-core server taking turns on one
/// vCPU while the other idled between bursts of client work, for 50-200 ms (every request
/// due in that window finished at once: open-loop p99 of 7-15 ms where 3 ms was usual).
/// Pinned, one stalled CPU holds up one worker, and the other steals its queue.
///
/// `Auto` pins when the process may run on exactly as many CPUs as it has workers (a
/// machine, a cpuset or a container with CPUs of its own; every worker gets one and none is
/// left over) and not when it may run on more: a process limited by a CPU quota sees all of
/// the host's CPUs, and pinning its workers to the first few would stack every such process
/// on the same ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PinWorkers {
    #[default]
    Auto,
    Always,
    Never,
}

impl PinWorkers {
    /// Whether `workers` async workers pin themselves, on a process allowed `cpus` CPUs.
    pub fn pins(self, workers: usize, cpus: usize) -> bool {
        match self {
            PinWorkers::Auto => workers >= 2 && cpus == workers,
            PinWorkers::Always => true,
            PinWorkers::Never => false,
        }
    }
}

impl std::str::FromStr for PinWorkers {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text.trim() {
            "auto" => Ok(PinWorkers::Auto),
            "true" => Ok(PinWorkers::Always),
            "false" => Ok(PinWorkers::Never),
            other => Err(format!("{other:?} is not one of auto, true, false")),
        }
    }
}

impl std::fmt::Display for PinWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PinWorkers::Auto => "auto",
            PinWorkers::Always => "true",
            PinWorkers::Never => "false",
        })
    }
}

/// In a config file: `pin_workers = true`, `false` or `"auto"`.
impl Serialize for PinWorkers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            PinWorkers::Auto => serializer.serialize_str("auto"),
            PinWorkers::Always => serializer.serialize_bool(true),
            PinWorkers::Never => serializer.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for PinWorkers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Flag(bool),
            Word(String),
        }
        match Given::deserialize(deserializer).map_err(|_| serde::de::Error::custom("pin_workers: expected true, false or \"auto\""))? {
            Given::Flag(true) => Ok(PinWorkers::Always),
            Given::Flag(false) => Ok(PinWorkers::Never),
            Given::Word(word) => word.parse().map_err(|e| serde::de::Error::custom(format!("pin_workers: {e}"))),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            model_workers: 1,
            max_waiting: 32,
            max_text_bytes: 16 * 1024,
            max_tokens: 1024,
            max_hooks: 16,
            max_page: 100,
            label_poll_ms: 250,
            generation_poll_ms: 1000,
            default_search_limit: 20,
            search_exact_total: loupe_store::EXACT_TOTAL_UP_TO,
            default_similar_k: 10,
            default_token_features: 5,
            default_text_features: 20,
            max_new_tokens: 256,
            default_new_tokens: 64,
            max_interventions: 16,
            max_vector_texts: 256,
            max_score_inputs: 64,
            default_explain_features: 5,
            max_explain_features: 32,
            batch_wait_us: 1000,
            max_batch_tokens: 8192,
            max_queued_texts: 1024,
            max_streams: 32,
            max_stream_tokens: 4096,
            max_stream_bytes: 64 * 1024,
            max_train_texts: 10_000,
            store_alert_text: false,
            caller_requests_per_second: 0.0,
            caller_model_tokens_per_minute: 0,
            dashboard_cache_bytes: 256 << 20,
            search_cache_bytes: 64 << 20,
            io_threads: default_io_threads(),
            pin_workers: PinWorkers::Auto,
        }
    }
}

fn default_io_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (4 * cores).max(8)
}

/// The `[serve]`-level settings as a file or the environment give them (all optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeSettings {
    /// A local folder or `s3://bucket/prefix`.
    pub store: Option<PathBuf>,
    /// Object storage settings for an `s3://` store (`aws_endpoint`, `aws_region`,
    /// `aws_allow_http`, ...), over the `AWS_*` variables.
    pub storage: BTreeMap<String, String>,
    pub addr: Option<SocketAddr>,
    pub model: Option<PathBuf>,
    /// `cpu` (default), `cuda` or `cuda:N`.
    pub device: Option<DeviceChoice>,
    /// `auto` (f32 on the CPU, bf16 on a GPU), `f32` or `bf16`.
    pub precision: Option<Precision>,
    /// Serve the index only.
    pub no_model: Option<bool>,
    /// Dictionary folders by id.
    pub dictionaries: BTreeMap<String, PathBuf>,
    pub limits: Limits,
    pub tls: TlsSettings,
    /// The token file (default: $LOUPE_HOME/tokens.json when it exists).
    pub tokens_file: Option<PathBuf>,
    pub insecure: Option<bool>,
}

/// The default listening address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:50051";

/// The embedded default model's file, which setup installs under `$LOUPE_HOME/models`.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where `loupe token create` puts tokens and `loupe serve` looks for them by default.
pub fn default_tokens_file() -> PathBuf {
    loupe_home().join("tokens.json")
}

/// `$LOUPE_HOME`, else `~/.cache/loupe`: models, corpora and the default store live here.
pub fn loupe_home() -> PathBuf {
    if let Some(home) = std::env::var_os("LOUPE_HOME") {
        return home.into();
    }
    let user_home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| ".".into());
    user_home.join(".cache").join("loupe")
}

/// Where setup puts the embedded default model.
pub fn default_model_path() -> PathBuf {
    loupe_home().join("models").join(DEFAULT_MODEL_FILE)
}

impl ServeSettings {
    /// Defaults, then `file` (or `$LOUPE_HOME/config.toml` when it exists), then `LOUPE_*`
    /// variables from `env`.
    pub fn load(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let implicit = loupe_home().join("config.toml");
        let file = file.map(Path::to_path_buf).or_else(|| env("LOUPE_CONFIG").map(PathBuf::from)).or_else(|| implicit.exists().then_some(implicit));
        let mut settings = match &file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ServiceError::InvalidArgument(format!("config file {}: {e}", path.display())))?;
                toml::from_str(&text).map_err(|e| ServiceError::InvalidArgument(format!("config file {}: {e}", path.display())))?
            }
            None => ServeSettings::default(),
        };
        settings.apply_env(env)?;
        Ok(settings)
    }

    /// `LOUPE_STORE`, `LOUPE_ADDR`, `LOUPE_MODEL`, `LOUPE_NO_MODEL` and one `LOUPE_<LIMIT>`
    /// per limit (e.g. `LOUPE_MAX_TOKENS`).
    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<()> {
        fn parse<T: std::str::FromStr>(name: &str, value: String) -> Result<T> {
            value.trim().parse().map_err(|_| ServiceError::InvalidArgument(format!("environment variable {name}={value:?} is not a valid value")))
        }
        if let Some(v) = env("LOUPE_STORE") {
            self.store = Some(v.into());
        }
        if let Some(v) = env("LOUPE_ADDR") {
            self.addr = Some(parse("LOUPE_ADDR", v)?);
        }
        if let Some(v) = env("LOUPE_MODEL") {
            self.model = Some(v.into());
        }
        if let Some(v) = env("LOUPE_DEVICE") {
            self.device = Some(v.parse().map_err(|e| ServiceError::InvalidArgument(format!("environment variable LOUPE_DEVICE: {e}")))?);
        }
        if let Some(v) = env("LOUPE_PRECISION") {
            self.precision = Some(v.parse().map_err(|e| ServiceError::InvalidArgument(format!("environment variable LOUPE_PRECISION: {e}")))?);
        }
        if let Some(v) = env("LOUPE_NO_MODEL") {
            self.no_model = Some(parse("LOUPE_NO_MODEL", v)?);
        }
        for (name, slot) in
            [("LOUPE_TLS_CERT", &mut self.tls.cert), ("LOUPE_TLS_KEY", &mut self.tls.key), ("LOUPE_TLS_CLIENT_CA", &mut self.tls.client_ca), ("LOUPE_TOKENS_FILE", &mut self.tokens_file)]
        {
            if let Some(v) = env(name) {
                *slot = Some(v.into());
            }
        }
        if let Some(v) = env("LOUPE_INSECURE") {
            self.insecure = Some(parse("LOUPE_INSECURE", v)?);
        }
        let l = &mut self.limits;
        let usize_limits: [(&str, &mut usize); 25] = [
            ("LOUPE_MODEL_WORKERS", &mut l.model_workers),
            ("LOUPE_MAX_WAITING", &mut l.max_waiting),
            ("LOUPE_MAX_TEXT_BYTES", &mut l.max_text_bytes),
            ("LOUPE_MAX_TOKENS", &mut l.max_tokens),
            ("LOUPE_MAX_HOOKS", &mut l.max_hooks),
            ("LOUPE_MAX_PAGE", &mut l.max_page),
            ("LOUPE_DEFAULT_SEARCH_LIMIT", &mut l.default_search_limit),
            ("LOUPE_SEARCH_EXACT_TOTAL", &mut l.search_exact_total),
            ("LOUPE_DEFAULT_SIMILAR_K", &mut l.default_similar_k),
            ("LOUPE_DEFAULT_TOKEN_FEATURES", &mut l.default_token_features),
            ("LOUPE_DEFAULT_TEXT_FEATURES", &mut l.default_text_features),
            ("LOUPE_MAX_NEW_TOKENS", &mut l.max_new_tokens),
            ("LOUPE_DEFAULT_NEW_TOKENS", &mut l.default_new_tokens),
            ("LOUPE_MAX_INTERVENTIONS", &mut l.max_interventions),
            ("LOUPE_MAX_VECTOR_TEXTS", &mut l.max_vector_texts),
            ("LOUPE_MAX_SCORE_INPUTS", &mut l.max_score_inputs),
            ("LOUPE_DEFAULT_EXPLAIN_FEATURES", &mut l.default_explain_features),
            ("LOUPE_MAX_EXPLAIN_FEATURES", &mut l.max_explain_features),
            ("LOUPE_MAX_BATCH_TOKENS", &mut l.max_batch_tokens),
            ("LOUPE_MAX_QUEUED_TEXTS", &mut l.max_queued_texts),
            ("LOUPE_MAX_STREAMS", &mut l.max_streams),
            ("LOUPE_MAX_STREAM_TOKENS", &mut l.max_stream_tokens),
            ("LOUPE_MAX_STREAM_BYTES", &mut l.max_stream_bytes),
            ("LOUPE_MAX_TRAIN_TEXTS", &mut l.max_train_texts),
            ("LOUPE_IO_THREADS", &mut l.io_threads),
        ];
        for (name, slot) in usize_limits {
            if let Some(v) = env(name) {
                *slot = parse(name, v)?;
            }
        }
        if let Some(v) = env("LOUPE_LABEL_POLL_MS") {
            l.label_poll_ms = parse("LOUPE_LABEL_POLL_MS", v)?;
        }
        if let Some(v) = env("LOUPE_GENERATION_POLL_MS") {
            l.generation_poll_ms = parse("LOUPE_GENERATION_POLL_MS", v)?;
        }
        if let Some(v) = env("LOUPE_BATCH_WAIT_US") {
            l.batch_wait_us = parse("LOUPE_BATCH_WAIT_US", v)?;
        }
        if let Some(v) = env("LOUPE_PIN_WORKERS") {
            l.pin_workers = v.parse().map_err(|e| ServiceError::InvalidArgument(format!("environment variable LOUPE_PIN_WORKERS: {e}")))?;
        }
        if let Some(v) = env("LOUPE_STORE_ALERT_TEXT") {
            l.store_alert_text = parse("LOUPE_STORE_ALERT_TEXT", v)?;
        }
        if let Some(v) = env("LOUPE_CALLER_REQUESTS_PER_SECOND") {
            l.caller_requests_per_second = parse("LOUPE_CALLER_REQUESTS_PER_SECOND", v)?;
        }
        if let Some(v) = env("LOUPE_CALLER_MODEL_TOKENS_PER_MINUTE") {
            l.caller_model_tokens_per_minute = parse("LOUPE_CALLER_MODEL_TOKENS_PER_MINUTE", v)?;
        }
        for (name, slot) in [("LOUPE_DASHBOARD_CACHE_BYTES", &mut l.dashboard_cache_bytes), ("LOUPE_SEARCH_CACHE_BYTES", &mut l.search_cache_bytes)] {
            if let Some(v) = env(name) {
                *slot = parse(name, v)?;
            }
        }
        Ok(())
    }

    /// The server configuration, with the engine's default model when none is named.
    pub fn resolve(self) -> Result<ServerConfig> {
        let limits = self.limits;
        for (name, value) in [
            ("model_workers", limits.model_workers),
            ("max_page", limits.max_page),
            ("max_tokens", limits.max_tokens),
            ("max_text_bytes", limits.max_text_bytes),
            ("max_new_tokens", limits.max_new_tokens),
            ("max_score_inputs", limits.max_score_inputs),
            ("max_batch_tokens", limits.max_batch_tokens),
            ("max_queued_texts", limits.max_queued_texts),
        ] {
            if value == 0 {
                return Err(ServiceError::InvalidArgument(format!("limits.{name} is 0: it must be at least 1")));
            }
        }
        if limits.default_new_tokens > limits.max_new_tokens {
            return Err(ServiceError::InvalidArgument(format!("limits.default_new_tokens ({}) is above limits.max_new_tokens ({})", limits.default_new_tokens, limits.max_new_tokens)));
        }
        if !(limits.caller_requests_per_second.is_finite() && limits.caller_requests_per_second >= 0.0) {
            return Err(ServiceError::InvalidArgument(format!("limits.caller_requests_per_second is {}: expected 0 (unlimited) or a positive number", limits.caller_requests_per_second)));
        }
        let model = if self.no_model.unwrap_or(false) { None } else { Some(self.model.unwrap_or_else(default_model_path)) };
        let addr: SocketAddr = self.addr.unwrap_or_else(|| DEFAULT_ADDR.parse().expect("a valid default address"));
        let tokens_file = self.tokens_file.or_else(|| Some(default_tokens_file()).filter(|f| f.exists()));
        let access = AccessConfig { tls: self.tls, tokens_file, insecure: self.insecure.unwrap_or(false) };
        if !addr.ip().is_loopback() && !access.insecure {
            if !access.tls.enabled()? {
                return Err(ServiceError::InvalidArgument(format!(
                    "{addr} is not a loopback address and no TLS is set: give tls.cert and tls.key (--tls-cert, --tls-key; `loupe tls create` makes a set), or --insecure to serve plain text on a trusted network"
                )));
            }
            if access.tokens_file.is_none() {
                return Err(ServiceError::InvalidArgument(format!(
                    "{addr} is not a loopback address and no token file is set: anyone who reaches it could call every method; create tokens (`loupe token create`) or pass --insecure"
                )));
            }
        }
        let store = self.store.unwrap_or_else(|| loupe_home().join("store"));
        let store = loupe_store::Location::from_arg(&store, &self.storage).map_err(|e| ServiceError::InvalidArgument(format!("store: {e}")))?;
        let (device, precision) = (self.device.unwrap_or_default(), self.precision.unwrap_or_default());
        Ok(ServerConfig { store, addr, model, device, precision, dictionaries: self.dictionaries.into_iter().collect(), limits, access })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn file_then_environment_override_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("loupe.toml");
        std::fs::write(&file, "store = \"/data/store\"\nno_model = true\n[limits]\nmax_tokens = 512\nmax_page = 50\n[dictionaries]\nres-9 = \"/d/res9\"\n").unwrap();
        let settings = ServeSettings::load(Some(&file), env_of(&[("LOUPE_MAX_PAGE", "7"), ("LOUPE_ADDR", "0.0.0.0:9000"), ("LOUPE_INSECURE", "true")])).unwrap();
        let config = settings.resolve().unwrap();
        assert_eq!(config.store.local_path(), Some(Path::new("/data/store")));
        assert_eq!(config.addr, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(config.model, None);
        assert_eq!(config.dictionaries, vec![("res-9".to_string(), PathBuf::from("/d/res9"))]);
        assert_eq!((config.limits.max_tokens, config.limits.max_page), (512, 7), "file, then environment");
        assert_eq!(config.limits.max_waiting, Limits::default().max_waiting, "defaults fill the rest");
        assert!(config.limits.io_threads >= 8, "4 per core, at least 8");
        let threads = ServeSettings::load(Some(&file), env_of(&[("LOUPE_IO_THREADS", "3")])).unwrap();
        assert_eq!(threads.limits.io_threads, 3);
        assert_eq!(config.limits.pin_workers, PinWorkers::Auto, "auto by default");
        for (value, expected) in [("true", PinWorkers::Always), ("false", PinWorkers::Never), ("auto", PinWorkers::Auto)] {
            let pinned = ServeSettings::load(Some(&file), env_of(&[("LOUPE_PIN_WORKERS", value)])).unwrap();
            assert_eq!(pinned.limits.pin_workers, expected, "LOUPE_PIN_WORKERS={value}");
        }
        let err = ServeSettings::load(Some(&file), env_of(&[("LOUPE_PIN_WORKERS", "yes please")])).unwrap_err().to_string();
        assert!(err.contains("LOUPE_PIN_WORKERS") && err.contains("auto, true, false"), "{err}");
    }

    #[test]
    fn pin_workers_reads_a_flag_or_auto_from_the_file_and_auto_pins_only_a_cpu_per_worker() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("loupe.toml");
        for (line, expected) in [("pin_workers = true", PinWorkers::Always), ("pin_workers = false", PinWorkers::Never), ("pin_workers = \"auto\"", PinWorkers::Auto)] {
            std::fs::write(&file, format!("[limits]\n{line}\n")).unwrap();
            assert_eq!(ServeSettings::load(Some(&file), env_of(&[])).unwrap().limits.pin_workers, expected, "{line}");
        }
        for bad in ["pin_workers = \"sometimes\"", "pin_workers = 2"] {
            std::fs::write(&file, format!("[limits]\n{bad}\n")).unwrap();
            let err = ServeSettings::load(Some(&file), env_of(&[])).unwrap_err().to_string();
            assert!(err.contains("pin_workers"), "{bad}: {err}");
        }
        // Auto: a CPU per worker and none left over (a cpuset of its own) pins; more CPUs than
        // workers (a quota on a bigger host) or a single worker does not.
        assert!(PinWorkers::Auto.pins(2, 2));
        assert!(PinWorkers::Auto.pins(16, 16));
        assert!(!PinWorkers::Auto.pins(2, 64));
        assert!(!PinWorkers::Auto.pins(1, 1));
        assert!(PinWorkers::Always.pins(2, 64));
        assert!(!PinWorkers::Never.pins(2, 2));
    }

    #[test]
    fn a_non_loopback_address_needs_tls_and_tokens_or_insecure() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("loupe.toml");
        std::fs::write(&file, "").unwrap();
        let tokens = dir.path().join("tokens.json").display().to_string();
        let resolve = |pairs: &[(&str, &str)]| ServeSettings::load(Some(&file), env_of(pairs)).and_then(ServeSettings::resolve);
        let err = resolve(&[("LOUPE_ADDR", "0.0.0.0:9000"), ("LOUPE_TOKENS_FILE", &tokens)]).unwrap_err().to_string();
        assert!(err.contains("tls.cert") && err.contains("--insecure"), "{err}");
        let tls = [("LOUPE_ADDR", "0.0.0.0:9000"), ("LOUPE_TLS_CERT", "s.pem"), ("LOUPE_TLS_KEY", "s.key")];
        let err = resolve(&tls).unwrap_err().to_string();
        assert!(err.contains("token"), "{err}");
        let config = resolve(&[tls[0], tls[1], tls[2], ("LOUPE_TOKENS_FILE", &tokens)]).unwrap();
        assert_eq!(config.access.tokens_file.as_deref(), Some(Path::new(&tokens)));
        assert!(resolve(&[("LOUPE_ADDR", "0.0.0.0:9000"), ("LOUPE_INSECURE", "1")]).is_err(), "a bool is true or false");
        assert!(resolve(&[("LOUPE_ADDR", "0.0.0.0:9000"), ("LOUPE_INSECURE", "true")]).unwrap().access.insecure);
        assert!(resolve(&[("LOUPE_ADDR", "127.0.0.1:9000")]).is_ok(), "loopback may stay plain");
        let err = resolve(&[("LOUPE_CALLER_REQUESTS_PER_SECOND", "NaN")]).unwrap_err().to_string();
        assert!(err.contains("caller_requests_per_second"), "{err}");
    }

    #[test]
    fn bad_settings_name_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("loupe.toml");
        std::fs::write(&file, "[limits]\nmax_tokenz = 5\n").unwrap();
        let err = ServeSettings::load(Some(&file), env_of(&[])).unwrap_err().to_string();
        assert!(err.contains("max_tokenz") && err.contains("loupe.toml"), "{err}");
        let err = ServeSettings::load(None, env_of(&[("LOUPE_CONFIG", "/nonexistent.toml")])).unwrap_err().to_string();
        assert!(err.contains("/nonexistent.toml"), "{err}");
        let err = ServeSettings::load(Some(&dir.path().join("none.toml")), env_of(&[])).unwrap_err().to_string();
        assert!(err.contains("none.toml"), "{err}");
        std::fs::write(&file, "").unwrap();
        let err = ServeSettings::load(Some(&file), env_of(&[("LOUPE_MAX_TOKENS", "lots")])).unwrap_err().to_string();
        assert!(err.contains("LOUPE_MAX_TOKENS") && err.contains("lots"), "{err}");
        let settings = ServeSettings { limits: Limits { model_workers: 0, ..Limits::default() }, ..ServeSettings::default() };
        assert!(settings.resolve().unwrap_err().to_string().contains("model_workers"));
    }
}
